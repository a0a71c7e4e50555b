"""The GPU suite's driver (run it through bench/gpu_suite.sh, whose header documents the output).

Every train step runs bench/train_step.py in a fresh subprocess: its peak memory is its own and
an out-of-memory error ends only that case. This process never touches the accelerator
(JAX_PLATFORMS=cpu here): it only plans, bisects the preflight's analytic memory over T and
writes the JSON lines.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ['JAX_PLATFORMS'] = 'cpu'  # the subprocesses get the accelerator, not this one

IMPLS = ('grouped_cudnn', 'cudnn', 'blockwise', 'dense', 'grouped')
# (name, config:size:T:clips) in priority order; the budget may end the list early.
FULL = {
    'video': 'video:huge:16:1',  # 2 modalities x 16 frames x 192 patches: 6,144 tokens
    'image': 'image:huge:1:16',
}
DRY = {'video': 'video:tiny:2:1', 'image': 'image:tiny:1:2'}
# Which (case, impl) first: the video model's candidates, then the image model's, then the
# slow references (dense at 6,144 tokens; grouped's materialised groups).
ORDER = [
    ('video', 'grouped_cudnn'),
    ('video', 'cudnn'),
    ('video', 'blockwise'),
    ('image', 'grouped_cudnn'),
    ('image', 'cudnn'),
    ('image', 'blockwise'),
    ('video', 'dense'),
    ('image', 'dense'),
    ('video', 'grouped'),
    ('image', 'grouped'),
]
OOM_MARKS = ('RESOURCE_EXHAUSTED', 'Out of memory', 'out of memory', 'OOM')


def not_applicable(impl: str, backend: str, cfg) -> str | None:
    """Why impl cannot run this case on this backend, or None."""
    from extpose_jax.models import grouped_attention

    if impl in ('cudnn', 'grouped_cudnn') and backend != 'gpu':
        return f'{impl} needs a GPU (cuDNN); the backend is {backend}'
    if impl.startswith('grouped'):
        mc = _model_config(cfg)
        layout = mc.layout(cfg.data.num_frames)
        for layer in range(mc.vit.depth):
            plan, why = grouped_attention.pieces_of(layout, mc.mask, layer)
            if plan is None:
                return f'block {layer}: {why}'
    return None


def _config(case: str):
    import importlib

    name, size, frames, clips = case.split(':')
    cfg = importlib.import_module(f'configs.{name}').get_config('small')
    cfg.model.size, cfg.data.num_frames, cfg.data.batch_size = size, int(frames), int(clips)
    cfg.model.head_size = 'tiny' if size == 'tiny' else 'hmr2'  # as bench/train_step.py
    cfg.model.dtype, cfg.model.remat = 'bfloat16', True
    return cfg


def _model_config(cfg):
    from extpose_jax.train import config as config_lib

    return config_lib.model_config(cfg)


class Suite:
    def __init__(self, args):
        self.args = args
        self.out = os.path.join(args.out, 'suite.jsonl')
        self.logs = os.path.join(args.out, 'logs')
        os.makedirs(self.logs, exist_ok=True)
        self.start = time.monotonic()
        self.previous = []  # train_step lines of the run being resumed
        if args.resume and os.path.exists(self.out):
            with open(self.out) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            self.previous = [
                r for r in rows if r.get('bench') == 'train_step' and r['status'] != 'skipped'
            ]
        self.done = {(r['case'], r['attention']) for r in self.previous}

    def left(self) -> float:
        return self.args.budget - (time.monotonic() - self.start)

    def write(self, row: dict) -> None:
        with open(self.out, 'a') as f:
            f.write(json.dumps(row) + '\n')
        print(json.dumps(row), flush=True)

    def step(self, case: str, impl: str, cap: float, runs: int | None = None) -> dict:
        """Runs one train step case in a subprocess; its JSON line with a 'status'."""
        row = {'bench': 'train_step', 'case': case, 'attention': impl}
        timeout = min(cap, self.left())
        if timeout < self.args.min_case_s:
            return {**row, 'status': 'skipped', 'reason': 'suite time budget spent'}
        cmd = [
            sys.executable,
            os.path.join(ROOT, 'bench', 'train_step.py'),
            '--cases',
            case,
            '--dtype',
            'bfloat16',
            '--remat',
            '--attention',
            impl,
            '--runs',
            str(runs or self.args.runs),
            '--body_models',
            self.args.body_models,
        ]
        env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
        if self.args.dry:
            env['JAX_PLATFORMS'] = 'cpu'
            # The tests' cheapest XLA:CPU compile (tests/run.sh): compile time dominates a dry run.
            cheap = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false '
            env['XLA_FLAGS'] = cheap + env.get('XLA_FLAGS', '')
        log = os.path.join(self.logs, f'{case.replace(":", "_")}_{impl}.log')
        t0 = time.monotonic()
        try:
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as e:
            _save(log, e.stderr)
            return {**row, 'status': 'timeout', 'reason': f'over {timeout:.0f} s', **_wall(t0)}
        _save(log, proc.stderr)
        lines = [x for x in proc.stdout.splitlines() if x.startswith('{')]
        if proc.returncode == 0 and lines:
            return {**json.loads(lines[-1]), **row, 'status': 'ok', **_wall(t0)}
        tail = (proc.stderr.strip().splitlines() or ['(no stderr)'])[-1][:300]
        status = 'oom' if any(m in proc.stderr for m in OOM_MARKS) else 'error'
        return {**row, 'status': status, 'reason': tail, **_wall(t0)}


def _save(path, text):
    with open(path, 'w') as f:
        f.write(text if isinstance(text, str) else (text or b'').decode(errors='replace'))


def _wall(t0):
    return {'wall_s': round(time.monotonic() - t0, 1)}


def predicted_max_frames(
    case: str, impl: str, limit_bytes: float, platform_name: str, cap: int
) -> dict:
    """Largest T (1 clip) with attention `impl` whose analytic per-device memory fits
    USABLE x limit_bytes.

    The preflight's estimate: parameters, optimizer and gradients do not depend on T, and are
    taken from one abstract train state; activations and inputs are recomputed per T. Memory
    grows monotonically with T, so the largest fitting T is found by doubling then bisection.
    """
    from extpose_jax import body_models
    from extpose_jax.train import config as config_lib
    from extpose_jax.train import estimate, preflight, setup
    from extpose_jax.train import sharding as shd
    from extpose_jax.train import task as task_lib

    name, size, frames, _ = case.split(':')
    cfg0 = config_lib.resolved(_config(f'{name}:{size}:{frames}:1'), grad_accum=1)
    mesh = shd.make_mesh({'data': 1})
    ts = setup.TrainSetup.build(
        task_lib.Task(cfg0, body_model=body_models.stand_in(cfg0.model.kind)), mesh
    )
    state, batch = ts.abstract_state(), ts.abstract_batch()
    sizes = {'data': 1, 'fsdp': 1, 'tensor': 1}
    base = estimate.memory(
        estimate.on_platform(estimate.Dims.of(cfg0), platform_name), state, batch, sizes, 1, 1
    )
    fixed = base['params'] + base['optimizer'] + base['gradients']
    inputs_per_frame = base['inputs'] / int(frames)
    usable = preflight.USABLE * limit_bytes

    def total(t):
        cfg = _config(f'{name}:{size}:{t}:1')
        cfg.model.attention = impl  # dense grows with T^2, the others with T
        d = estimate.on_platform(estimate.Dims.of(cfg), platform_name)
        return fixed + estimate.activation_bytes(d, 1) + inputs_per_frame * t

    if total(1) > usable:
        return {'predicted_max_frames': 0, 'usable_gib': round(usable / 2**30, 2)}
    lo, hi = 1, 2
    while hi <= cap and total(hi) <= usable:
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if total(mid) <= usable else (lo, mid)
    return {
        'predicted_max_frames': lo,
        'predicted_gib_at_max': round(total(lo) / 2**30, 2),
        'usable_gib': round(usable / 2**30, 2),
        'capped': lo == cap,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('out', help='folder for suite.jsonl and logs/')
    p.add_argument('--dry', action='store_true', help='CPU only, ViT-tiny (~40 s per case)')
    p.add_argument('--budget', type=float, default=None, help='seconds (default 450; dry 300)')
    p.add_argument('--only', nargs='+', choices=('video', 'image', 'max_frames'), default=None)
    p.add_argument('--impls', nargs='+', choices=IMPLS, default=list(IMPLS))
    p.add_argument('--resume', action='store_true', help='skip cases already in suite.jsonl')
    p.add_argument('--runs', type=int, default=None, help='timed steps (best counts; 2, dry 1)')
    p.add_argument('--case_cap', type=float, default=240.0, help='seconds per case at most')
    p.add_argument('--min_case_s', type=float, default=30.0)
    p.add_argument('--body_models', default=None)
    args = p.parse_args()
    args.dry = args.dry or os.environ.get('GPU_SUITE_DRY') == '1'
    args.budget = args.budget or (300.0 if args.dry else 450.0)
    args.runs = args.runs or (1 if args.dry else 2)
    if args.dry:
        args.min_case_s = min(args.min_case_s, 5.0)
    cases = DRY if args.dry else FULL
    only = set(args.only or ('video', 'image', 'max_frames'))
    suite = Suite(args)

    import jax

    from data_pipelines.synthetic import body_files

    if args.body_models is None:  # procedural SMPL / MANO files of the real sizes (~4 s)
        args.body_models = os.path.join(args.out, 'body_models')
        if not os.path.isdir(args.body_models):
            body_files.write_body_models(args.body_models, seed=0)
    backend = 'cpu' if args.dry else _accelerator_backend()
    suite.write(
        {
            'bench': 'suite_start',
            'dry': args.dry,
            'backend': backend,
            'budget_s': args.budget,
            'cases': cases,
            'impls': args.impls,
            'dtype': 'bfloat16',
            'remat': True,
            'host': platform.node(),
            'jax': jax.__version__,
        }
    )
    rows = []
    for which, impl in ORDER:
        if which not in only or impl not in args.impls or (cases[which], impl) in suite.done:
            continue
        case = cases[which]
        why = not_applicable(impl, backend, _config(case))
        if why:
            row = {
                'bench': 'train_step',
                'case': case,
                'attention': impl,
                'status': 'not_applicable',
                'reason': why,
            }
        else:
            row = suite.step(case, impl, args.case_cap)
            if row['status'] == 'ok':
                row.update(_memory_ratios(row))
        rows.append(row)
        suite.write(row)

    if 'max_frames' in only:
        suite.write(max_frames(suite, cases['video'], suite.previous + rows, backend))
    counts = {}
    for r in rows:
        counts[r['status']] = counts.get(r['status'], 0) + 1
    suite.write(
        {'bench': 'suite_end', 'wall_s': round(time.monotonic() - suite.start, 1), 'counts': counts}
    )


def _accelerator_backend() -> str:
    """The subprocesses' backend, asked of a subprocess (this one is pinned to the CPU)."""
    env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
    out = subprocess.run(
        [sys.executable, '-c', 'import jax; print(jax.default_backend())'],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    return (out.stdout.strip().splitlines() or ['unknown'])[-1]


def _memory_ratios(row: dict) -> dict:
    measured = row.get('peak_device_gib') or row.get('peak_rss_gib')
    if not measured:
        return {}
    return {
        'measured_peak_gib': measured,
        'measured_is': 'device peak_bytes_in_use' if 'peak_device_gib' in row else 'process RSS',
        'analytic_over_measured': round(row['preflight_analytic_gib'] / measured, 3),
        'compiled_over_measured': round(row['preflight_compiled_gib'] / measured, 3),
    }


def max_frames(suite: Suite, video_case: str, rows: list, backend: str) -> dict:
    """The largest T at 1 clip for the fastest video implementation that ran: predicted from
    the analytic estimate against the measured device limit, then compiled and run."""
    ok = [r for r in rows if r['case'] == video_case and r['status'] == 'ok']
    out = {'bench': 'max_frames', 'case': video_case}
    if not ok:
        return {**out, 'status': 'skipped', 'reason': 'no video case ran'}
    best = min(ok, key=lambda r: r['step_s'])
    impl = best['attention']
    if backend == 'gpu':
        limit = best['device_limit_gib'] * 2**30
    else:  # the host memory the CPU devices share (devices.py)
        from extpose_jax.train import devices as devices_lib

        limit = devices_lib.host_memory_bytes()[0]
    # Dry: capped at the dry video case's own T, so the run at the cap is that case's program
    # again, a compilation-cache hit (the search and the run still take the GPU run's path).
    cap = int(video_case.split(':')[2]) if suite.args.dry else 1024
    pred = predicted_max_frames(video_case, impl, limit, backend, cap)
    out.update(attention=impl, device_limit_gib=round(limit / 2**30, 2), **pred)
    name, size, _, _ = video_case.split(':')
    tried, fit, t = {}, None, pred['predicted_max_frames']
    step = 8 if t >= 32 else 1
    t = max(step, t - t % step) if t else 0
    while t >= 1 and fit is None:
        # One timed step: at the largest T a step can take a minute.
        r = suite.step(f'{name}:{size}:{t}:1', impl, suite.args.case_cap * 2, runs=1)
        tried[str(t)] = r['status']
        if r['status'] == 'ok':
            fit = t
            out.update(
                step_s_at_max=r['step_s'],
                measured_peak_gib_at_max=r.get('peak_device_gib') or r.get('peak_rss_gib'),
            )
        elif r['status'] != 'oom':
            break
        t = (t * 3) // 4 if t > 4 else t - 1
    return {**out, 'tried': tried, 'max_frames_fit': fit}


if __name__ == '__main__':
    main()
