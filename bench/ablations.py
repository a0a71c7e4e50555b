"""ExtPose's ablations (the paper's section 6) as one resumable harness, on the synthetic world or
at paper scale.

    python bench/ablations.py                     # the CPU default: large world, 3 seeds
                                                  # (estimated ~1.5 h on 2 cores)
    python bench/ablations.py --quick             # a couple of steps per run (CI smoke test)
    python bench/ablations.py --spec paper --body_models B --data_root R --base HMR2_VARS \\
        --vitpose VITPOSE_VARS                    # ViT-H, T = 16, the real datasets
    python bench/ablation_report.py               # docs/ablations.md from the results

The protocol, the paper's scaled to the spec:

1. The base: an image model (T = 1, RGB only: HMR 2.0's stand-in) trained `base_steps` on the
   world's 3DPW training split. At paper scale the base is HMR 2.0's converted checkpoint
   (`--base`, a variables directory from extpose_jax.convert.from_torch).
2. Every run starts from the base (init.checkpoint; a baseline's own new parameters keep their
   init) and trains `steps` more, once per seed: on a CPU with the same frames per step (the
   batch in clips is frames_per_step / T), at paper scale with the paper's 32 clips. `vitpose_init` starts from the base's backbone only, the
   head fresh (at paper scale: `--vitpose`, a backbone-only import).
3. Each run is scored on the held-out 3DPW test split, 2D input the world's simulated detections
   (the evaluator's default), at step 0 (the start) and at the end.

Runs are shared between axes (ExtPose at T = 1 is the skeleton row of the pose-form axis, the
attention row of the fusion axis, ...). One JSON line per finished run goes to
<out>/results.jsonl; a rerun skips what is there and resumes an interrupted run from its
checkpoints, so the harness can be stopped at any time. Rows carry spec, world, seed, steps,
commit and wall time. To go on from results recorded elsewhere (the report commits them as
docs/ablations/results-<spec>.jsonl), copy that file to <out>/results.jsonl: its runs are
skipped, and a missing base is trained again from the same seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name -> (what it is, config overrides); T is data.num_frames (1 unless set).
RUNS = {
    'rgb_only': ('none (RGB only, the base continued)', {'model.arch': 'rgb_only'}),
    'keypoint_tokens': ('1D keypoints (a token per joint)', {'model.arch': 'keypoint_tokens'}),
    'heatmap': ('heatmap image', {'model.arch': 'heatmap'}),
    'extpose': ('ExtPose: skeleton image, multi-modal attention, full fine-tuning', {}),
    'late_fusion': (
        'late fusion (per-stream attention, merged at the head)',
        {'model.arch': 'late_fusion'},
    ),
    'channel_concat': (
        'channel concat (6-channel patch embedding)',
        {'model.arch': 'channel_concat'},
    ),
    'controlnet': ('ControlNet branch', {'model.arch': 'controlnet'}),
    'qk_only': ('train only Q, K', {'optim.trainable': 'qk_only'}),
    'first_half': ('train only the first half of the blocks', {'optim.trainable': 'first_half'}),
    'vitpose_init': ('backbone-only init (ViTPose-like), head fresh', {}),
    'temporal_head_t4': (
        'temporal head over frame features, T = 4',
        {
            'model.arch': 'temporal_head',
            'model.mask': 'multimodal',  # frames meet only in the temporal module
            'data.num_frames': 4,
        },
    ),
    'extpose_t4': ('cross-frame attention in every block, T = 4', {'data.num_frames': 4}),
    'extpose_long': ('cross-frame attention in every block, the long clip (T = t_long)', {}),
    'gt_2d': ('trained on ground-truth 2D (tested on detections)', {'data.pose_source': 'gt'}),
}

# Axis -> its runs, the paper's choice first. DESIGN section 5 / the paper's section 6.
AXES = {
    '2D pose form': ('extpose', 'rgb_only', 'keypoint_tokens', 'heatmap'),
    'fusion': ('extpose', 'late_fusion', 'channel_concat', 'controlnet'),
    'training strategy': ('extpose', 'qk_only', 'first_half', 'vitpose_init'),
    'time': ('extpose_t4', 'extpose_long', 'extpose', 'temporal_head_t4'),
    '2D source at training': ('extpose', 'gt_2d'),
}
BASE = 'base'  # the image model every run starts from
BASE_OVERRIDES = {'model.arch': 'rgb_only'}


@dataclasses.dataclass(frozen=True)
class Spec:
    """How big: the model variant, the data, the budget."""

    name: str
    variant: str  # configs/video.py's: small | base | (empty: the paper's ViT-H)
    world: str  # the synthetic default's size; '' at paper scale (real records)
    steps: int
    base_steps: int
    frames_per_step: int | None  # batch = this / T clips; None: the config's batch (clips)
    seeds: int
    t_long: int  # extpose_long's T: 8 on a CPU, the paper's 16 at paper scale
    max_eval_frames: int | None = None


SPECS = {
    # 42 runs + the base on 2 cores: ~0.9 s a step of 8 frames, ~30 s a run to compile and
    # evaluate, so 100 steps a run is ~85 min in all, plus ~6 min for the large world.
    'cpu': Spec('cpu', 'small', 'large', 100, 300, 8, 3, 8),
    'quick': Spec('quick', 'small', 'tiny', 2, 2, 8, 1, 8, max_eval_frames=8),
    # The paper's batch of 32 clips at every T; 10k steps from HMR 2.0 (--steps to change).
    'paper': Spec('paper', '', '', 10_000, 0, None, 3, 16),
}


def commit() -> str:
    try:
        out = subprocess.run(
            ['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True
        )
        return out.stdout.strip() or 'unknown'
    except OSError:
        return 'unknown'


def config_for(spec: Spec, name: str, seed: int, init: str | None):
    """The ConfigDict of one run: configs/video.py at the spec's variant plus the run's
    overrides; the batch keeps spec.frames_per_step frames per step."""
    from configs import video

    overrides = dict(BASE_OVERRIDES if name == BASE else RUNS[name][1])
    frames = int(overrides.pop('data.num_frames', 1))
    if name == 'extpose_long':
        frames = spec.t_long
    cfg = video.get_config(
        f'{spec.variant},frames={frames}' if spec.variant else f'frames={frames}'
    )
    cfg.seed = seed
    cfg.synthetic_size = spec.world or cfg.synthetic_size
    if spec.frames_per_step:
        cfg.data.batch_size = max(1, spec.frames_per_step // frames)
    cfg.train.steps = spec.base_steps if name == BASE else spec.steps
    cfg.train.checkpoint_every = max(1, min(cfg.train.steps, 100))
    cfg.eval.overlays = 0
    ev = cfg.evaluators['pw3d']
    ev.split, ev.every = 'test', cfg.train.steps
    if spec.max_eval_frames:
        ev.max_frames = spec.max_eval_frames
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split('.')
        for p in parents:
            node = node[p]
        node[leaf] = value
    if init:
        cfg.init.checkpoint = init
    return cfg


def backbone_only(base_workdir: str, dest: str) -> str:
    """The base's backbone as a variables directory without a head (what a ViTPose import is),
    written once."""
    from extpose_jax.train import checkpoint as ckpt_lib

    if not ckpt_lib.is_variables_dir(dest):
        variables, _, _ = ckpt_lib.restore_variables(base_workdir)
        keep = {
            col: {k: v for k, v in tree.items() if k != 'head'}
            for col, tree in variables.items()
            if col in ('params', 'constants')
        }
        ckpt_lib.save_variables(
            dest, keep, meta={'kind': 'smpl', 'source': base_workdir, 'parts': ['backbone']}
        )
    return dest


def finished(workdir: str, steps: int) -> bool:
    """A run's last evaluation is written once its last step is (the loop evaluates there)."""
    path = os.path.join(workdir, 'eval', 'pw3d', 'metrics.json')
    if not os.path.exists(path):
        return False
    with open(path) as f:
        return json.load(f).get('step') == steps


def read_results(path: str) -> list:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def append_result(path: str, row: dict) -> None:
    # One short line per write, flushed and synced: a stop loses at most the run in progress.
    with open(path, 'a') as f:
        f.write(json.dumps(row) + '\n')
        f.flush()
        os.fsync(f.fileno())


METRICS = ('3dpw/mpjpe', '3dpw/pa_mpjpe', '3dpw/pve', '3dpw/accel')


def run_one(spec, name, seed, init, workdir, paths, log, code: str) -> dict:
    from extpose_jax.train import loop

    cfg = config_for(spec, name, seed, init)
    t0 = time.time()
    result = loop.train(cfg, workdir, paths['body_models'], paths['records'], log=log)
    evals = result['eval']['pw3d']
    first, last = evals.get(0), evals.get(cfg.train.steps)
    if last is None:  # resumed after the last evaluation was written: read it back
        with open(os.path.join(workdir, 'eval', 'pw3d', 'metrics.json')) as f:
            last = json.load(f)
    return {
        'spec': spec.name,
        'run': name,
        'seed': seed,
        'steps': cfg.train.steps,
        'frames': cfg.data.num_frames,
        'batch_clips': cfg.data.batch_size,
        'world': spec.world or 'real',
        'input_2d': last.get('pose_source'),
        'start': {k: first[k] for k in METRICS} if first else None,
        'end': {k: last[k] for k in METRICS},
        'wall_s': round(time.time() - t0, 1),
        'commit': code,  # the commit the harness started from: its code is what ran
    }


def data_paths(spec: Spec, args) -> dict:
    if spec.world:
        from data_pipelines.synthetic import default_data

        root = os.path.join(args.data_dir, 'synthetic', spec.world)
        p = default_data.ensure(root, seed=0, size=spec.world, log=print)
        return {'body_models': p['body_models'], 'records': os.path.dirname(p['3dpw'])}
    if not (args.body_models and args.data_root):
        raise SystemExit('ablations: --spec paper needs --body_models and --data_root')
    return {'body_models': args.body_models, 'records': args.data_root}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--spec', choices=tuple(SPECS), default='cpu')
    ap.add_argument('--quick', action='store_true', help='--spec quick')
    ap.add_argument('--out', default=None, help='default: runs/ablations/<spec>')
    ap.add_argument('--data_dir', default=os.path.join(ROOT, 'data'))
    ap.add_argument('--runs', default='', help='comma-separated subset of the runs')
    ap.add_argument('--seeds', type=int, default=None, help="default: the spec's")
    ap.add_argument('--steps', type=int, default=None, help="steps a run; default: the spec's")
    ap.add_argument('--body_models', default=None)
    ap.add_argument('--data_root', default=None)
    ap.add_argument('--base', default=None, help='paper: HMR 2.0 variables dir (the base)')
    ap.add_argument('--vitpose', default=None, help='paper: ViTPose backbone variables dir')
    ap.add_argument('--verbose', action='store_true', help="the training loop's log lines")
    args = ap.parse_args(argv)
    spec = SPECS['quick' if args.quick else args.spec]
    if args.seeds:
        spec = dataclasses.replace(spec, seeds=args.seeds)
    if args.steps:
        spec = dataclasses.replace(spec, steps=args.steps)
    names = [n for n in args.runs.split(',') if n] or list(RUNS)
    unknown = sorted(set(names) - set(RUNS))
    if unknown:
        ap.error(f'--runs: unknown {unknown}; known: {", ".join(RUNS)}')
    out = args.out or os.path.join(ROOT, 'runs', 'ablations', spec.name)
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, 'results.jsonl')
    log = print if args.verbose else (lambda *_: None)

    import jax
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    # Runs of one arch and T compile the same init and evaluation programs: compile them once,
    # in the user's cache if they set one (JAX_COMPILATION_CACHE_DIR), else in the output folder.
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update('jax_compilation_cache_dir', os.path.join(out, 'jax_cache'))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
    code = commit()  # now: later commits to the checkout do not change the running code
    paths = data_paths(spec, args)
    t_all = time.time()
    if spec.name == 'paper':
        if not (args.base and args.vitpose):
            ap.error('--spec paper needs --base (HMR 2.0 variables) and --vitpose')
        base, vitpose = args.base, args.vitpose
    else:
        base = os.path.join(out, BASE)
        from extpose_jax.train import loop

        if not finished(base, spec.base_steps):
            loop.train(
                config_for(spec, BASE, 0, None),
                base,
                paths['body_models'],
                paths['records'],
                log=log,
            )
        vitpose = backbone_only(base, os.path.join(out, 'base_backbone'))
    done = {(r['run'], r['seed'], r['steps']) for r in read_results(results)}
    todo = [(n, s) for s in range(spec.seeds) for n in names if (n, s, spec.steps) not in done]
    print(f'ablations ({spec.name}): {len(todo)} runs to go in {out}', flush=True)
    for i, (name, seed) in enumerate(todo):
        init = vitpose if name == 'vitpose_init' else base
        workdir = os.path.join(out, f'{name}_s{seed}')
        row = run_one(spec, name, seed, init, workdir, paths, log, code)
        append_result(results, row)
        e = row['end']
        print(
            f'[{i + 1}/{len(todo)}] {name} seed {seed}: MPJPE {e["3dpw/mpjpe"]:.1f} '
            f'PA-MPJPE {e["3dpw/pa_mpjpe"]:.1f} accel {e["3dpw/accel"]:.2f} ({row["wall_s"]} s)',
            flush=True,
        )
    print(f'ablations ({spec.name}): done in {time.time() - t_all:.0f} s -> {results}', flush=True)
    return results


if __name__ == '__main__':
    main()
