"""Masked attention on this machine: dense (XLA, the reference), blockwise (block skipping) and
grouped (dense attentions over regrouped tokens, merged by log-sum-exp).

Prints JSON lines:
  python bench/attention.py [--frames 1 4 16] [--block-size 192] [--impls dense blockwise grouped]
                            [--no-vit]
- one line per (implementation, tokens): attention forward+backward under the 'extpose' mask on
  T frames x 2 modalities x 192 patches (384, 1536, 6144 tokens), 16 heads x 80 (ViT-H), B=1, fp32,
  plus blockwise under 'extpose' + causal at the largest T (a ragged block pattern; grouped
  cannot express it);
- one line per implementation for a ViT-B video model (T=8, two modalities: 16 images, 3072
  tokens) forward+backward w.r.t. all parameters;
- a summary line at the largest token count: each implementation's temp memory and time as
  ratios to dense and to blockwise, from this one run.
Memory is XLA's compiled temp size (`memory_analysis().temp_size_in_bytes`: what the program
allocates beyond its inputs and outputs) and the peak RSS of a fresh subprocess per
configuration (which includes the ~0.3 GB of the JAX runtime). Time is the best of a few runs
after compilation; the slow configurations run once (dense at 6144 tokens takes ~20 s).
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MODALITIES = ('rgb', 'skeleton')


def _available_bytes():
    with open('/proc/meminfo') as f:
        info = dict(line.split(':', 1) for line in f)
    return int(info['MemAvailable'].split()[0]) * 1024


def _measure(fn, args, runs):
    """(temp bytes, best seconds); seconds is None when running would not fit in free memory."""
    compiled = jax.jit(fn).lower(*args).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    if (
        temp + 2 * 2**30 > _available_bytes()
    ):  # a shared 2-core box: never push it into the OOM killer
        return temp, None
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return temp, min(times)


def attention_case(impl, frames, block_size, causal=False, heads=16, head_dim=80):
    layout = masks.TokenLayout(frames=frames, modalities=MODALITIES)
    structure = masks.structure(layout, masks.MaskSpec('extpose', causal=causal))
    rng = np.random.default_rng(0)
    q, k, v, g = (
        jnp.asarray(rng.normal(size=(1, layout.n_tokens, heads, head_dim)), jnp.float32)
        for _ in range(4)
    )

    def fwd_bwd(q, k, v, g):
        out, vjp = jax.vjp(
            lambda q, k, v: attention.attend(
                q, k, v, structure=structure, impl=impl, block_size=block_size, layout=layout
            ),
            q,
            k,
            v,
        )
        return out, vjp(g)

    runs = 1 if (impl != 'blockwise' and layout.n_tokens > 4000) else 3
    temp, seconds = _measure(fwd_bwd, (q, k, v, g), runs)
    line = {
        'bench': 'attention',
        'impl': impl,
        'tokens': layout.n_tokens,
        'frames': frames,
        'heads': heads,
        'head_dim': head_dim,
        'mask': 'extpose+causal' if causal else 'extpose',
        'pass': 'fwd+bwd',
        'allowed_fraction': round(float(structure.mean()), 4),
        'seconds': seconds and round(seconds, 4),
        'xla_temp_mib': round(temp / 2**20, 1),
    }
    if impl == 'blockwise':
        sched = attention.schedule(structure, block_size, block_size)
        line.update(
            block_size=block_size,
            blocks_allowed=sched.visited,
            blocks_computed=sched.computed,
            blocks_total=(layout.n_tokens // block_size) ** 2,
        )
    if impl == 'grouped':
        plan = grouped_attention.plan(layout, structure)
        line.update(plan=plan.name, pieces=[p.describe() for p in plan.pieces])
    return line


def vit_case(impl, frames=8):
    cfg = vit.ViTConfig.of('base', attention=impl)
    layout = masks.TokenLayout(frames=frames, modalities=MODALITIES)
    model = vit.ViT(cfg)
    images = jnp.asarray(
        np.random.default_rng(0).normal(size=(1, layout.streams, 256, 192, 3)), jnp.float32
    )
    params = nn.unbox(
        jax.jit(model.init, static_argnums=(2, 3))(
            jax.random.key(0), images[:, :1], masks.TokenLayout(), masks.MaskSpec('frame')
        )
    )

    def loss_and_grads(params, images):
        return jax.value_and_grad(
            lambda p: model.apply(p, images, layout, masks.MaskSpec('extpose')).mean()
        )(params)

    temp, seconds = _measure(loss_and_grads, (params, images), runs=1)
    return {
        'bench': 'vit_step',
        'model': 'vit-base',
        'impl': impl,
        'frames': frames,
        'modalities': 2,
        'tokens': layout.n_tokens,
        'mask': 'extpose',
        'pass': 'fwd+bwd (all params)',
        'batch': 1,
        'remat': cfg.remat,
        'block_size': layout.patches if impl == 'blockwise' else None,
        'seconds': seconds and round(seconds, 2),
        'xla_temp_mib': round(temp / 2**20, 1),
        **({} if seconds else {'skipped_run': 'compiled temp exceeds available memory'}),
    }


def run_one(case):
    """Runs in a fresh subprocess so that its peak RSS is its own."""
    if case['kind'] == 'attention':
        line = attention_case(
            case['impl'], case['frames'], case['block_size'], case.get('causal', False)
        )
    else:
        line = vit_case(case['impl'])
    line['peak_rss_gib'] = round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2
    )  # KiB on Linux
    print(json.dumps(line), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, nargs='+', default=[1, 4, 16])
    parser.add_argument(
        '--block-size',
        type=int,
        default=192,
        help='blockwise block; 192 = one stream, aligned with the mask (128 straddles streams)',
    )
    parser.add_argument('--impls', nargs='+', default=['dense', 'blockwise', 'grouped'])
    parser.add_argument('--no-vit', action='store_true', help='skip the ViT-B video step')
    parser.add_argument('--one', help=argparse.SUPPRESS)  # internal: one case, as JSON
    args = parser.parse_args()
    if args.one:
        return run_one(json.loads(args.one))

    common = {
        'device': platform.processor() or platform.machine(),
        'cpus': os.cpu_count(),
        'load_avg_1m': round(os.getloadavg()[0], 2),
    }
    cases = [
        {'kind': 'attention', 'impl': impl, 'frames': t, 'block_size': args.block_size}
        for t in args.frames
        for impl in args.impls
    ]
    # Ragged block pattern (streaming): compute should follow the allowed blocks, about half.
    cases.append(
        {
            'kind': 'attention',
            'impl': 'blockwise',
            'frames': max(args.frames),
            'block_size': args.block_size,
            'causal': True,
        }
    )
    if not args.no_vit:
        cases += [{'kind': 'vit', 'impl': impl} for impl in args.impls]
    results = []
    for case in cases:
        env = {**os.environ, 'JAX_PLATFORMS': os.environ.get('JAX_PLATFORMS', 'cpu')}
        proc = subprocess.run(
            [sys.executable, __file__, '--one', json.dumps(case)],
            check=False,
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode:
            line = {**case, 'error': proc.stderr.strip().splitlines()[-1:]}
        else:
            line = {**json.loads(proc.stdout.strip().splitlines()[-1]), **common}
        results.append(line)
        print(json.dumps(line), flush=True)

    def pick(bench, impl, tokens=None):
        return next(
            (
                r
                for r in results
                if r.get('bench') == bench
                and r.get('impl') == impl
                and r.get('mask', 'extpose') == 'extpose'
                and (tokens is None or r.get('tokens') == tokens)
            ),
            None,
        )

    n = 2 * 192 * max(args.frames)
    for bench, tokens in (('attention', n), ('vit_step', None)):
        rows = {impl: pick(bench, impl, tokens) for impl in args.impls}
        rows = {impl: r for impl, r in rows.items() if r and 'error' not in r}
        if len(rows) < 2:
            continue
        summary = {'bench': f'{bench}_summary', 'tokens': next(iter(rows.values()))['tokens']}
        for ref in ('dense', 'blockwise'):
            base = rows.get(ref)
            if not base:
                continue
            for impl, r in rows.items():
                if impl in (ref, 'dense'):  # dense is the reference, never the candidate
                    continue
                summary[f'{impl}_vs_{ref}_temp'] = round(
                    r['xla_temp_mib'] / base['xla_temp_mib'], 3
                )
                if r['seconds'] and base['seconds']:
                    summary[f'{impl}_vs_{ref}_speedup'] = round(base['seconds'] / r['seconds'], 2)
        print(json.dumps({**summary, **common}), flush=True)


if __name__ == '__main__':
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np

    from extpose_jax.models import attention, grouped_attention, masks, vit

    main()
