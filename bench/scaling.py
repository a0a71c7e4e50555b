"""Preflight tables for the paper configs on simulated meshes (docs/scaling.md), JSON lines out.

    python bench/scaling.py --out bench_scaling.jsonl            # analytic, ~10 s per row
    python bench/scaling.py --out bench_scaling.jsonl --compiled # + XLA:CPU compiles (minutes each)
    python bench/scaling.py --out bench_scaling.jsonl --markdown # the tables from the file

Each row runs `python -m extpose_jax.train.preflight` in its own process with N simulated CPU
devices (the device count is fixed when JAX starts). Analytic rows ask the preflight which
gradient accumulation fits an H100 (80 GiB) and a TPU v5p chip (95 GiB) under their memory
model; compiled rows compile the step at the H100's choice on XLA:CPU with the memory limit
lifted, for XLA's own per-device figures (an upper bound there: XLA:CPU keeps fp32 activations
of every block, see estimate.on_platform), beside what the XLA:CPU memory model predicts for
them. A rerun skips rows already in --out.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30
# (name, config, global batch, devices, mesh): the global batch stays fixed as devices grow.
IMAGE = 'configs/image.py'  # T = 1, RGB + skeleton, multimodal mask; 384 = HMR 2.0's 48 x 8
VIDEO = 'configs/video.py'  # T = 16, RGB + skeleton, extpose mask, 32 clips
CASES = [
    ('image', IMAGE, 384, 1, {}),
    ('image', IMAGE, 384, 8, {'data': 8}),
    ('image', IMAGE, 384, 8, {'data': 1, 'fsdp': 8}),
    ('image', IMAGE, 384, 8, {'data': 4, 'tensor': 2}),
    ('image', IMAGE, 384, 64, {'data': 64}),
    ('image', IMAGE, 384, 64, {'data': 8, 'fsdp': 8}),
    ('image', IMAGE, 384, 64, {'data': 32, 'tensor': 2}),
    ('video', VIDEO, 32, 1, {}),
    ('video', VIDEO, 32, 8, {'data': 8}),
    ('video', VIDEO, 32, 8, {'data': 1, 'fsdp': 8}),
    ('video', VIDEO, 32, 8, {'data': 4, 'tensor': 2}),
    ('video', VIDEO, 32, 64, {'data': 32, 'tensor': 2}),
    ('video', VIDEO, 32, 64, {'data': 1, 'fsdp': 32, 'tensor': 2}),
    ('video', VIDEO, 32, 64, {'data': 16, 'fsdp': 2, 'tensor': 2}),
]
TARGETS = ('h100', 'v5p')


def mesh_str(mesh: dict) -> str:
    full = {'data': 1, 'fsdp': 1, 'tensor': 1, **mesh}
    return 'x'.join(str(full[a]) for a in ('data', 'fsdp', 'tensor'))


def tag(name, devices, mesh, target, mode) -> str:
    return f'{name}/{devices}/{mesh_str(mesh)}/{target}/{mode}'


def run(case, target, mode, out, grad_accum=None, timeout=3600):
    name, config, batch, devices, mesh = case
    t = tag(name, devices, mesh, target, mode)
    cmd = [
        sys.executable,
        '-m',
        'extpose_jax.train.preflight',
        f'--config={config}',
        f'--devices={devices}',
        f'--target={target}',
        f'--json={out}',
        f'--tag={t}',
        f'--config.data.batch_size={batch}',
        '--config.mesh.data=' + str(mesh.get('data', 1)),
        '--config.mesh.fsdp=' + str(mesh.get('fsdp', 1)),
        '--config.mesh.tensor=' + str(mesh.get('tensor', 1)),
    ]
    if mode == 'analytic':
        cmd.append('--compile=never')
    elif mode == 'cpumodel':  # what the XLA:CPU memory model predicts for the compiled row
        cmd = [c for c in cmd if not c.startswith('--target=')]
        cmd += [
            '--compile=never',
            '--config.preflight.memory_gb=1000000',
            f'--config.train.grad_accum={grad_accum}',
        ]
    else:  # XLA's figures at the analytic choice, whatever they say about fitting
        cmd += [
            '--compile=always',
            '--config.preflight.memory_gb=1000000',
            f'--config.train.grad_accum={grad_accum}',
        ]
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode not in (0, 1):  # 1 = refused, recorded by the preflight itself
            print(f'{t}: failed\n{proc.stderr[-2000:]}', file=sys.stderr)
    except subprocess.TimeoutExpired:
        with open(out, 'a') as f:
            f.write(json.dumps({'tag': t, 'timeout_s': timeout}) + '\n')


def load(out: str) -> dict:
    rows = {}
    if os.path.exists(out):
        for line in open(out):
            row = json.loads(line)
            rows[row['tag']] = row
    return rows


def markdown(rows: dict) -> str:
    lines = []
    for name in ('image', 'video'):
        lines += [
            f'\n### {name}\n',
            '| devices | mesh d x f x t | H100: grad_accum, GiB/device | v5p: grad_accum, GiB | '
            'params + opt + grads | activations | eval (H100 model) | XLA:CPU compiled (temp) | '
            'XLA:CPU model | FLOPs/step (model) | H100 s/step, h/run |',
            '|---:|---|---|---|---:|---:|---:|---:|---:|---:|---|',
        ]
        for case in CASES:
            if case[0] != name:
                continue
            _, _, _, devices, mesh = case
            h = rows.get(tag(name, devices, mesh, 'h100', 'analytic'), {})
            v = rows.get(tag(name, devices, mesh, 'v5p', 'analytic'), {})
            c = rows.get(tag(name, devices, mesh, 'h100', 'compiled'), {})

            def fit(r):
                if 'refused' in r:
                    return 'does not fit'
                if 'analytic' not in r:
                    return '-'
                return f'{r["grad_accum"]}, {r["analytic"]["total"] / GIB:.1f}'

            a = h.get('analytic')
            state = (
                '-' if a is None else f'{(a["params"] + a["optimizer"] + a["gradients"]) / GIB:.1f}'
            )
            acts = '-' if a is None else f'{a["activations"] / GIB:.1f}'
            comp = c.get('compiled')
            comp_s = (
                f'{comp["total"] / GIB:.1f} ({comp["temp"] / GIB:.1f})'
                if comp
                else 'timeout'
                if 'timeout_s' in c
                else '-'
            )
            host = c.get('analytic_host') or rows.get(
                tag(name, devices, mesh, 'cpu', 'cpumodel'), {}
            ).get('analytic')
            host_s = f'{host["total"] / GIB:.1f}' if host else '-'
            ev = (
                f'{h["eval_batch_size"]} w, {h["eval_bytes"] / GIB:.1f}'
                if h.get('eval_bytes')
                else '-'
            )
            time_s = (
                f'{h["step_seconds"]:.2f}, {h["run_hours"]:.1f}' if h.get('step_seconds') else '-'
            )
            lines.append(
                f'| {devices} | {mesh_str(mesh)} | {fit(h)} | {fit(v)} | {state} | {acts} | '
                f'{ev} | {comp_s} | {host_s} | {h.get("flops_model", 0):.3g} | {time_s} |'
            )
    return '\n'.join(lines)


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--out', default='bench_scaling.jsonl')
    p.add_argument('--compiled', action='store_true', help='also compile each case on XLA:CPU')
    p.add_argument('--only', default='', help='substring of the case tags to run')
    p.add_argument('--markdown', action='store_true', help='print the tables from --out')
    p.add_argument('--timeout', type=int, default=3600)
    args = p.parse_args()
    if args.markdown:
        print(markdown(load(args.out)))
        return
    for case in CASES:
        for target in TARGETS:
            t = tag(case[0], case[3], case[4], target, 'analytic')
            if args.only in t and t not in load(args.out):
                run(case, target, 'analytic', args.out)
                print(json.dumps(load(args.out).get(t, {'tag': t}), default=str)[:300], flush=True)
    for case in CASES:  # the XLA:CPU model's prediction of each compiled row (seconds)
        t = tag(case[0], case[3], case[4], 'cpu', 'cpumodel')
        chosen = load(args.out).get(tag(case[0], case[3], case[4], 'h100', 'analytic'), {})
        if args.only in t and t not in load(args.out) and 'grad_accum' in chosen:
            run(case, 'cpu', 'cpumodel', args.out, chosen['grad_accum'])
    if args.compiled:
        for case in CASES:
            t = tag(case[0], case[3], case[4], 'h100', 'compiled')
            chosen = load(args.out).get(tag(case[0], case[3], case[4], 'h100', 'analytic'), {})
            if args.only in t and t not in load(args.out) and 'grad_accum' in chosen:
                run(case, 'h100', 'compiled', args.out, chosen['grad_accum'], args.timeout)
                print(json.dumps(load(args.out).get(t, {'tag': t}), default=str)[:300], flush=True)


if __name__ == '__main__':
    main()
