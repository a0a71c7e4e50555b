"""What every raw-dataset writer of the synthetic world shares.

Determinism: every item (a sequence, an image, an actor) draws from its own
`numpy.random.Generator` keyed by (seed, dataset, item names / indices), so the output is a
deterministic function of the seed (same bytes on every run on one machine) and a size can
change without reshuffling the other items. Beside that: the world's sizes, a worker pool, file
writes (atomic, no fsync), JPEG encoding, small rotation helpers, the skin tones, and the body models
posed on the CPU through the same JAX forward that training uses.
"""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import sys
import zlib

import cv2
import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from data_pipelines import atomic_file

# ----------------------------------------------------------------------------- sizes

# The world's sizes (world.py --size). tiny: the test suite's world, built in seconds. small:
# the README's default run, a dozen actors in 8 training sequences, built in about a minute on 2
# cores. large: thousands of training frames for the ablation harness, a few minutes on 2
# cores. Every item has its own generator (item_rng), so a larger size only adds items (the
# first 8 training sequences and 64 FreiHAND hands of `large` are `small`'s).
SIZES = {
    'tiny': {
        '3dpw': dict(sequences={'train': 1, 'validation': 1, 'test': 1}, frames=24),
        'freihand': dict(train=16, evaluation=8),
        'hint': dict(per_folder=4),
    },
    'small': {
        '3dpw': dict(sequences={'train': 8, 'validation': 1, 'test': 2}, frames=24),
        'freihand': dict(train=64, evaluation=16),
        'hint': dict(per_folder=4),
    },
    'large': {
        '3dpw': dict(sequences={'train': 40, 'validation': 4, 'test': 8}, frames=60),
        'freihand': dict(train=512, evaluation=128),
        'hint': dict(per_folder=24),
    },
}
JPEG_QUALITY = 92

SKIN_TONES = np.array(
    [
        (236, 196, 172),
        (226, 178, 146),
        (205, 146, 110),
        (176, 120, 86),
        (134, 90, 62),
        (98, 66, 48),
    ],
    np.float64,
)


# ----------------------------------------------------------------------------- small helpers


def _key(x) -> int:
    return zlib.crc32(x.encode()) if isinstance(x, str) else int(x)


def item_rng(seed: int, *keys) -> np.random.Generator:
    """An independent generator for one item: keyed by the seed and names / indices."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF] + [_key(k) for k in keys])


def makedirs(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def write_bytes(path: str, data: bytes) -> None:
    # no fsync: hundreds of small files, regenerated on demand
    atomic_file.atomic_write(path, lambda f: f.write(data), fsync=False)


def encode_jpg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB (H, W, 3) or grey (H, W) uint8 -> jpg bytes."""
    img = image[..., ::-1] if image.ndim == 3 else image
    ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError('jpg encoding failed')
    return buf.tobytes()


def write_json(path: str, obj) -> None:
    write_bytes(path, json.dumps(obj).encode())


def progress_bar(total: int, desc: str):
    return tqdm(total=total, desc=desc, unit='img', leave=False, disable=not sys.stderr.isatty())


def default_workers() -> int:
    """The cores this process may use (a container's limit, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


def _worker_init():
    # Workers render with numpy and pose bodies with JAX on the CPU: an accelerator in the
    # parent must not be claimed by every worker, and one core each is the point of the pool.
    os.environ['JAX_PLATFORMS'] = 'cpu'
    cv2.setNumThreads(1)


def map_items(fn, jobs: list, workers: int, done=None) -> list:
    """[fn(job) for job in jobs], in `workers` processes when workers > 1; returns the results
    in job order (so the output does not depend on the number of workers) and calls done(result)
    as each finishes. fn and the jobs must be picklable (module-level functions, plain data).

    The pool is spawned, not forked: the parent may hold JAX's threads, which fork does not copy.
    """
    workers = max(1, min(int(workers), len(jobs)))
    if workers == 1:
        out = []
        for job in jobs:
            out.append(fn(job))
            if done is not None:
                done(out[-1])
        return out
    ctx = multiprocessing.get_context('spawn')
    pool = concurrent.futures.ProcessPoolExecutor(workers, ctx, initializer=_worker_init)
    try:
        futures = [pool.submit(fn, job) for job in jobs]
        for f in concurrent.futures.as_completed(futures):
            if done is not None:
                done(f.result())
        return [f.result() for f in futures]
    finally:  # on an error, the jobs not yet started are dropped, not run to no end
        pool.shutdown(wait=True, cancel_futures=True)


def rot(axis, angle) -> Rotation:
    """Rotation(s) about a fixed unit axis by angle(s)."""
    angle = np.asarray(angle, np.float64)
    return Rotation.from_rotvec(angle[..., None] * np.asarray(axis, np.float64))


def unit(v):
    v = np.asarray(v, np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def align(a, b) -> np.ndarray:
    """The smallest rotation matrix taking unit vector a to unit vector b."""
    a, b = unit(a), unit(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1 + 1e-9:  # opposite: turn by pi about any axis perpendicular to a
        p = unit(np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0]))
        return Rotation.from_rotvec(np.pi * p).as_matrix()
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def wobble(rng, t, amp, fmin=0.15, fmax=1.0, n=3):
    """A smooth random 1D signal (sum of sinusoids), about amp in size, over times t."""
    out = np.zeros_like(np.asarray(t, np.float64))
    for _ in range(n):
        out += rng.uniform(0.3, 1.0) * np.sin(
            2 * np.pi * rng.uniform(fmin, fmax) * t + rng.uniform(0, 2 * np.pi)
        )
    return amp * out / n * 1.6


# ----------------------------------------------------------------------------- body models


class Models:
    """Lazily loaded body models and one jitted, fixed-shape forward per model kind."""

    CHUNK = 64
    _fn = None  # jax.jit(body_models.forward), shared by every instance

    def __init__(self, body_models_dir: str):
        self.dir = os.fspath(body_models_dir)
        self._cache = {}

    def smpl(self, gender: str):
        from extpose_jax import body_models as bm

        key = ('smpl', gender)
        if key not in self._cache:
            self._cache[key] = bm.load_smpl(self.dir, gender)
        return self._cache[key]

    def mano(self, is_right: bool = True):
        from extpose_jax import body_models as bm

        key = ('mano', bool(is_right))
        if key not in self._cache:
            self._cache[key] = bm.load_mano(self.dir, is_right=is_right)
        return self._cache[key]

    def hands_mean(self) -> np.ndarray:
        from extpose_jax import body_models as bm

        if 'hands_mean' not in self._cache:
            path = os.path.join(self.dir, 'mano', 'MANO_RIGHT.pkl')
            if not os.path.isfile(path):
                path = os.path.join(self.dir, 'MANO_RIGHT.pkl')
            raw = bm.load_model_file(path)
            self._cache['hands_mean'] = np.asarray(raw['hands_mean'], np.float64).reshape(45)
        return self._cache['hands_mean']

    def forward(self, model, pose: np.ndarray, betas: np.ndarray) -> dict:
        """body_models.forward on (N, P) axis-angle and (N, B) betas -> numpy float64 dict."""
        import jax

        from extpose_jax import body_models as bm

        if Models._fn is None:
            Models._fn = jax.jit(bm.forward)
        pose = np.asarray(pose, np.float32).reshape(len(pose), -1)
        betas = np.asarray(betas, np.float32).reshape(len(pose), -1)
        outs = {}
        for lo in range(0, len(pose), self.CHUNK):
            p, b = pose[lo : lo + self.CHUNK], betas[lo : lo + self.CHUNK]
            m = len(p)
            if m < self.CHUNK:
                p = np.concatenate([p, np.zeros((self.CHUNK - m,) + p.shape[1:], p.dtype)])
                b = np.concatenate([b, np.zeros((self.CHUNK - m,) + b.shape[1:], b.dtype)])
            out = Models._fn(model, p, b)
            for k, v in out.items():
                outs.setdefault(k, []).append(np.asarray(v, np.float64)[:m])
        return {k: np.concatenate(v) for k, v in outs.items()}


def mesh_faces(model) -> np.ndarray:
    from extpose_jax import body_models as bm

    return bm.faces(model)
