"""SMPL forward throughput, JAX (jit) against smplx (PyTorch), on this machine.

Prints one JSON line per (implementation, batch) and one ratio line per batch:
  python bench/body_model.py [--batches 1 64 1024] [--seconds 2]
Both sides run the same work: rotation matrices and 10 betas in, vertices and the 24 skeleton
joints out, fp32, on the procedural SMPL-format model (same vertex and joint counts as SMPL).
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from data_pipelines.synthetic import body_files  # noqa: E402
from extpose_jax import body_models  # noqa: E402


def _rate(fn, batch, seconds):
    fn()  # warm-up (and compile)
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 3:
            return batch * n / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--batches', type=int, nargs='+', default=[1, 64, 1024])
    parser.add_argument('--seconds', type=float, default=2.0)
    args = parser.parse_args()

    import smplx
    import torch
    from scipy.spatial.transform import Rotation
    from smplx.utils import Struct

    with tempfile.TemporaryDirectory() as tmp:
        body_files.write_body_models(tmp, seed=0)
        model = body_models.load_smpl(os.path.join(tmp, 'smpl', 'SMPL_NEUTRAL.pkl'))
        npz = os.path.join(tmp, 'smpl', 'SMPL_NEUTRAL.npz')
        with np.load(npz) as z:  # smplx reads only pickles from a path
            layer = smplx.SMPLLayer(
                model_path=npz, data_struct=Struct(**{k: z[k] for k in z.files})
            )

    def jax_forward(m, r, b):
        out = body_models.forward(m, r, b)
        return out['vertices'], out['joints']

    jax_fn = jax.jit(jax_forward)
    common = {
        'bench': 'body_model',
        'model': 'smpl',
        'device': platform.processor() or 'cpu',
        'threads_torch': torch.get_num_threads(),
        'jax_backend': jax.default_backend(),
    }
    rng = np.random.default_rng(0)
    for batch in args.batches:
        rot = Rotation.from_rotvec(rng.normal(scale=0.5, size=(batch * 24, 3)))
        rotmats = rot.as_matrix().reshape(batch, 24, 3, 3).astype(np.float32)
        betas = rng.normal(size=(batch, 10)).astype(np.float32)
        jr, jb = jnp.asarray(rotmats), jnp.asarray(betas)
        tr, tb = torch.from_numpy(rotmats), torch.from_numpy(betas)

        def run_jax():
            jax.block_until_ready(jax_fn(model, jr, jb))

        def run_torch():
            with torch.no_grad():
                layer(global_orient=tr[:, :1], body_pose=tr[:, 1:], betas=tb)

        rates = {
            'jax': _rate(run_jax, batch, args.seconds),
            'smplx_torch': _rate(run_torch, batch, args.seconds),
        }
        for impl, rate in rates.items():
            print(
                json.dumps({**common, 'impl': impl, 'batch': batch, 'meshes_per_s': round(rate, 1)})
            )
        print(
            json.dumps(
                {
                    **common,
                    'impl': 'ratio_jax_over_torch',
                    'batch': batch,
                    'ratio': round(rates['jax'] / rates['smplx_torch'], 3),
                }
            ),
            flush=True,
        )


if __name__ == '__main__':
    main()
