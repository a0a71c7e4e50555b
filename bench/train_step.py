"""The jitted train step (model + skeleton rendering + body model + losses + AdamW), per config.

    python bench/train_step.py                                   # CPU defaults below
    python bench/train_step.py --cases video:huge:16:1 image:huge:1:16 --dtype bfloat16 \
        --peak_tflops 989                                        # a GPU: ViT-H, MFU vs bf16 peak

A case is config:size:T:batch (clips); the decoder head is 'tiny' with ViT-tiny, else HMR 2.0's. Prints one JSON line per case: steps/s (best of
--runs after a warm-up), frames/s, the compiled step's FLOPs (XLA cost analysis, forward +
backward + update), MFU = FLOPs x steps/s / peak when --peak_tflops is given, XLA's compiled
temp memory, the preflight's per-device predictions (analytic, with the platform's memory
model, and XLA's arguments + outputs - donated + temporaries) and the measured peak device
memory (GPU: memory_stats) or this process's peak RSS (CPU), so that a GPU run checks the
preflight against reality. Also the model FLOPs counted analytically (estimate.flops: 3x the
forward, no remat recompute; XLA's count misses the attention loops) and `mfu_model` from
them against the device's peak (--peak_tflops, else devices.py's table; on a CPU a timed
matmul), images/s (T x modalities x clips per second), for --attention auto what each
block resolved to, and the step's build cost in process CPU seconds: lower_cpu_s (tracing and
lowering) and compile_cpu_s (XLA, under the XLA_FLAGS it reports; docs/testing.md compares the
tests' cheap-compile flags with this).
Inputs are random arrays of the pipeline's batch shapes: the input pipeline has its own
benchmark (bench/pipeline.py).
"""

import argparse
import importlib
import json
import os
import platform
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from extpose_jax.models import attention, masks  # noqa: E402
from extpose_jax.train import config as config_lib  # noqa: E402
from extpose_jax.train import devices as devices_lib  # noqa: E402
from extpose_jax.train import estimate, optim  # noqa: E402
from extpose_jax.train import sharding as shd  # noqa: E402
from extpose_jax.train import state as state_lib  # noqa: E402
from extpose_jax.train import task as task_lib  # noqa: E402

CPU_CASES = ('image:tiny:1:8', 'video:tiny:4:2', 'image:base:1:4', 'video:base:4:1')


def random_batch(cfg, rng):
    b, t = cfg.data.batch_size, cfg.data.num_frames
    j = 44 if cfg.model.kind == 'smpl' else 21
    p = 72 if cfg.model.kind == 'smpl' else 48
    kp = np.concatenate([rng.uniform(0, 192, (b, t, j, 2)), np.ones((b, t, j, 1))], -1).astype(
        np.float32
    )
    batch = {
        'image': rng.integers(0, 256, (b, t, 256, 192, 3), dtype=np.uint8),
        'kp2d_input': kp,
        'kp2d': kp,
        'kp3d': np.concatenate(  # the pipeline's layout: x, y, z, per-joint confidence
            [rng.normal(0, 0.3, (b, t, j, 3)), np.ones((b, t, j, 1))], -1
        ).astype(np.float32),
        'pose': rng.normal(0, 0.3, (b, t, p)).astype(np.float32),
        'betas': rng.normal(0, 1, (b, t, 10)).astype(np.float32),
    }
    for k in ('has_kp2d', 'has_kp3d', 'has_pose', 'has_betas', 'frame_valid'):
        batch[k] = np.ones((b, t), bool)
    return batch


def resolved_attention(cfg) -> list:
    """The implementation each ViT block runs (differs from the config only for 'auto')."""
    mc = config_lib.model_config(cfg)
    if cfg.model.attention != 'auto':
        return [cfg.model.attention]
    layout = mc.layout(cfg.data.num_frames)
    impls = [
        attention.choose(masks.structure(layout, mc.mask, i), layout, mc.vit.dtype)[0]
        for i in range(mc.vit.depth)
    ]
    return sorted(set(impls), key=impls.index)


def run_case(case: str, args) -> dict:
    name, size, frames, clips = case.split(':')
    cfg = importlib.import_module(f'configs.{name}').get_config('small')
    cfg.model.size, cfg.data.num_frames, cfg.data.batch_size = size, int(frames), int(clips)
    # The small variant's tiny decoder head goes with the tiny ViT only; larger ViTs get HMR 2.0's.
    cfg.model.head_size = 'tiny' if size == 'tiny' else 'hmr2'
    cfg.model.dtype, cfg.model.remat, cfg.model.attention = args.dtype, args.remat, args.attention
    config_lib.validate(cfg, check_paths=False)
    cfg = config_lib.resolved(cfg, grad_accum=1)
    task = task_lib.Task(cfg, args.body_models)
    mesh = shd.make_mesh({'data': -1})
    tx = optim.make_optimizer(config_lib.optim_config(cfg))
    state, shardings = state_lib.create_train_state(
        task.model,
        tx,
        jax.random.key(0),
        task.example_inputs(cfg.data.batch_size, cfg.data.num_frames),
        mesh,
    )
    step = state_lib.make_train_step(task.loss_fn, tx, mesh, shardings, shd.batch_sharding(mesh))
    batch = shd.global_batch(random_batch(cfg, np.random.default_rng(0)), mesh)
    rng = jax.random.key(1)
    # Process CPU seconds: tracing + lowering (Python), then XLA's compile (or, with
    # JAX_COMPILATION_CACHE_DIR, a cache load); what the XLA_FLAGS below cost to build.
    t0 = time.process_time()
    lowered = step.jitted.lower(state, batch, rng)
    t1 = time.process_time()
    compiled = lowered.compile()
    t2 = time.process_time()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', float('nan'))) if cost else float('nan')
    ma = compiled.memory_analysis()
    temp = ma.temp_size_in_bytes
    # The preflight's two predictions of this step's per-device memory, beside the measured peak.
    xla_total = ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes + temp
    device = jax.devices()[0]
    dims = estimate.Dims.of(cfg)
    analytic = estimate.memory(
        estimate.on_platform(dims, device.platform),
        state,
        batch,
        dict(mesh.shape),
        cfg.data.batch_size,
        1,
    )['total']
    model_flops = estimate.flops(dims, cfg.data.batch_size)['model']
    state, m = compiled(state, batch, rng)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        state, m = compiled(state, batch, rng)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    sps = 1.0 / min(times)
    stats = device.memory_stats() if device.platform != 'cpu' else None
    if args.peak_tflops:
        peak = args.peak_tflops * 1e12
    else:
        peak = devices_lib.DeviceInfo.detect(jax.devices(), args.dtype).peak_flops
    images = int(frames) * int(clips) * len(config_lib.model_config(cfg).modalities)
    out = {
        'bench': 'train_step',
        'case': case,
        'config': name,
        'vit': size,
        'head': cfg.model.head_size,
        'frames': int(frames),
        'batch_clips': int(clips),
        'dtype': args.dtype,
        'remat': args.remat,
        'attention': args.attention,
        'attention_resolved': resolved_attention(cfg),
        'params_m': round(sum(x.size for x in jax.tree.leaves(state.params)) / 1e6, 1),
        'steps_per_s': round(sps, 4),
        'frames_per_s': round(sps * int(frames) * int(clips), 2),
        'images_per_s': round(sps * images, 2),
        'step_s': round(min(times), 4),
        'tflops_per_step': round(flops / 1e12, 4),
        'model_tflops_per_step': round(model_flops / 1e12, 4),
        'mfu_model': peak and round(model_flops * sps / peak, 4),
        'peak_tflops': peak and round(peak / 1e12, 2),
        'lower_cpu_s': round(t1 - t0, 2),
        'compile_cpu_s': round(t2 - t1, 2),
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'compiled_temp_gib': round(temp / 2**30, 3),
        'preflight_analytic_gib': round(analytic / 2**30, 3),
        'preflight_compiled_gib': round(xla_total / 2**30, 3),
        'device': device.device_kind,
        'host': platform.node(),
    }
    if args.peak_tflops:
        out['mfu'] = round(flops * sps / (args.peak_tflops * 1e12), 4)
    if stats:
        out['peak_device_gib'] = round(stats.get('peak_bytes_in_use', 0) / 2**30, 3)
        out['device_limit_gib'] = round(stats.get('bytes_limit', 0) / 2**30, 3)
    else:
        out['peak_rss_gib'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    return out


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--cases', nargs='+', default=list(CPU_CASES))
    p.add_argument(
        '--body_models',
        default=os.path.join(ROOT, 'data', 'synthetic', 'raw', 'body_models'),
        help='SMPL/MANO files (default: the synthetic default, built by run_train.py)',
    )
    p.add_argument('--dtype', default='float32', choices=tuple(config_lib.DTYPES))
    p.add_argument('--remat', action='store_true')
    p.add_argument('--attention', default='blockwise', choices=attention.CHOICES)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument(
        '--peak_tflops',
        type=float,
        default=0.0,
        help='device peak for MFU (H100 SXM dense bf16: 989)',
    )
    args = p.parse_args()
    if not os.path.isdir(args.body_models):
        from data_pipelines.synthetic import default_data

        args.body_models = default_data.ensure(os.path.join(ROOT, 'data', 'synthetic'))[
            'body_models'
        ]
    for case in args.cases:
        print(json.dumps(run_case(case, args)), flush=True)


if __name__ == '__main__':
    main()
