"""docs/ablations.md from bench/ablations.py's results: per axis, mean +- std over seeds of the
held-out 3DPW metrics, a plot, the paper's numbers beside, and what the numbers say.

    python bench/ablation_report.py [--results runs/ablations/cpu/results.jsonl]
                                    [--out docs/ablations.md]

The verdict per axis is computed, not written by hand: the paper's choice (each axis' first run)
against every other run on PA-MPJPE (and, for the time axis, the acceleration error). A
difference counts when it exceeds twice its standard error over seeds (Welch); otherwise the
axis is "not resolved" at this many seeds. Whichever way it comes out is what the page says.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.ablations import AXES, METRICS, RUNS, SPECS, read_results  # noqa: E402

NAMES = {
    '3dpw/mpjpe': 'MPJPE',
    '3dpw/pa_mpjpe': 'PA-MPJPE',
    '3dpw/pve': 'PVE',
    '3dpw/accel': 'accel',
}

# What the paper reports on each axis (../shared/spec/paper.md section 6; numbers as printed).
PAPER = {
    '2D pose form': (
        'Skeleton images beat 1D coordinates and heatmaps, and converge fastest. Poster table '
        '(a), FreiHAND, PA-MPJPE / PA-MPVPE / F@5 / F@15 (some cells lost on the poster): '
        '1D / heatmap 6.5 / 6.6 / 0.724 / 0.983; skeleton image without RGB 6.3 / 6.3 / 0.747 / '
        '0.984 and 6.2 / 6.3 / 0.742 / 0.985; with RGB 6.0 / 5.7 / 0.783 / 0.991 and ExtPose '
        '4.9 / 5.1 / 0.823 / 0.993.'
    ),
    'fusion': (
        'Multi-modal attention beats late fusion, channel concat and ControlNet. Poster table '
        '(b), HInt NewDays PCK @0.05 / @0.1 / @0.15: HaMeR 48.0 / 78.0 / 88.8; late fusion '
        '50.5 / 82.4 / 92.5; channel concat 56.3 / 83.6 / 92.2; ControlNet 55.6 / 83.5 / 92.3; '
        'ExtPose 59.6 / 84.8 / 92.7.'
    ),
    'training strategy': (
        'Full fine-tuning from the HMR-family checkpoint beats a ViTPose start, training only '
        'Q, K, and training the first half of the blocks. Poster table (b), NewDays PCK @0.05 / '
        '@0.1 / @0.15: from ViTPose 49.9 / 82.2 / 92.2; only Q, K 50.0 / 81.9 / 92.3; 1st half '
        '50.8 / 82.2 / 92.3; ExtPose 59.6 / 84.8 / 92.7.'
    ),
    'time': (
        'Cross-frame attention in every block beats video methods with a temporal module on '
        'frame features, and longer clips help up to T = 16 (T in {1, 8, 16, 32}); no table '
        'with a temporal head was confirmed.'
    ),
    '2D source at training': (
        'The paper compares ground-truth with detected 2D (3.7 vs 4.9 mm on FreiHAND); here '
        'the comparison is the training input (ground truth vs noisy ground truth), both scored '
        'on the same simulated detections.'
    ),
}


def summarise(rows: list) -> dict:
    """{run: {metric: (mean, std, n)}} over seeds (the latest row per run and seed)."""
    latest = {}
    for r in rows:
        latest[(r['run'], r['seed'])] = r
    by_run = collections.defaultdict(list)
    for (run, _), r in sorted(latest.items()):
        by_run[run].append(r['end'])
    out = {}
    for run, ends in by_run.items():
        out[run] = {}
        for m in METRICS:
            v = np.array([e[m] for e in ends], np.float64)
            out[run][m] = (v.mean(), v.std(ddof=1) if len(v) > 1 else float('nan'), len(v))
    return out


def compare(a, b) -> tuple:
    """(b - a, 2 standard errors) for two (mean, std, n); the margin is nan under 2 seeds."""
    (ma, sa, na), (mb, sb, nb) = a, b
    if na < 2 or nb < 2:
        return mb - ma, float('nan')
    return mb - ma, 2.0 * np.sqrt(sa**2 / na + sb**2 / nb)


def verdict(axis: str, stats: dict) -> str:
    runs = [r for r in AXES[axis] if r in stats]
    if len(runs) < 2 or runs[0] != AXES[axis][0]:
        return 'Not enough runs on this axis to compare.'
    ours = runs[0]
    metrics = ['3dpw/pa_mpjpe'] + (['3dpw/accel'] if axis == 'time' else [])
    parts = []
    for m in metrics:
        better, worse, unresolved = [], [], []
        for other in runs[1:]:
            diff, margin = compare(stats[ours][m], stats[other][m])  # > 0: ours lower (better)
            if np.isnan(margin):
                unresolved.append(f'{other} ({diff:+.1f}, one seed)')
            elif diff > margin:
                better.append(f'{other} (+{diff:.1f} +- {margin / 2:.1f})')
            elif -diff > margin:
                worse.append(f'{other} ({diff:.1f} +- {margin / 2:.1f})')
            else:
                unresolved.append(f'{other} ({diff:+.1f} +- {margin / 2:.1f})')
        name = NAMES[m]
        line = f'On {name}, {ours} is'
        if better:
            line += f' better than {", ".join(better)}'
        if worse:
            line += ('; but' if better else '') + f' worse than {", ".join(worse)}'
        if unresolved:
            line += ('; and' if better or worse else '') + (
                f' not separated from {", ".join(unresolved)}'
            )
        held = not worse and not unresolved
        parts.append(
            line
            + '. '
            + (
                "The paper's direction holds here."
                if held
                else "The paper's direction is contradicted here."
                if worse and not better
                else "The paper's direction is not resolved at this many seeds."
            )
        )
    return ' '.join(parts) + ' (Differences: the other run minus ours, mm; +- one standard error.)'


def plot(axis: str, stats: dict, path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    runs = [r for r in AXES[axis] if r in stats]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, m in zip(axes, ('3dpw/pa_mpjpe', '3dpw/mpjpe')):
        mean = [stats[r][m][0] for r in runs]
        std = [np.nan_to_num(stats[r][m][1]) for r in runs]
        ax.bar(range(len(runs)), mean, yerr=std, capsize=4, color=['C2'] + ['C0'] * (len(runs) - 1))
        ax.set_xticks(range(len(runs)), runs, rotation=20, ha='right', fontsize=8)
        ax.set_ylabel(f'{NAMES[m]} (mm)')
    fig.suptitle(f"{axis}: held-out 3DPW, mean +- std over seeds (green: the paper's choice)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def cell(stat) -> str:
    mean, std, _ = stat
    return f'{mean:.1f}' if np.isnan(std) else f'{mean:.1f} +- {std:.1f}'


def write(results: str, out: str) -> str:
    rows = read_results(results)
    if not rows:
        raise SystemExit(f'ablation_report: no results in {results}')
    stats = summarise(rows)
    figs = os.path.join(os.path.dirname(os.path.abspath(out)), 'ablations')
    os.makedirs(figs, exist_ok=True)
    specs = sorted({r['spec'] for r in rows})
    seeds = sorted({r['seed'] for r in rows})
    lines = [
        '# Ablations (bench/ablations.py)',
        '',
        f'Written by `python bench/ablation_report.py` on {datetime.date.today()} from '
        f'`{os.path.relpath(results, ROOT)}`: spec {", ".join(specs)}, world '
        f'{", ".join(sorted({r["world"] for r in rows}))}, seeds {seeds}, '
        f'{sorted({r["steps"] for r in rows})} steps per run from the base, commit(s) '
        f'{", ".join(sorted({r["commit"] for r in rows}))}, '
        f'{sum(r["wall_s"] for r in rows) / 60:.0f} min of run time '
        f'({len(rows)} runs, the base not counted).',
        'Held-out synthetic 3DPW test split, 2D input the simulated detections; metrics in mm '
        '(accel in mm/frame^2), mean +- std over seeds.',
    ]
    expected = sum(len(RUNS) * SPECS[name].seeds for name in specs)
    done = len({(r['spec'], r['run'], r['seed']) for r in rows})
    if done < expected:
        lines += [
            '',
            f'**Partial: {done} of the {expected} runs of the spec have finished; '
            'the harness resumes where it stopped.**',
        ]
    if 'quick' in specs:
        lines += [
            '',
            '**Quick mode: a couple of steps per run. The numbers test the harness, '
            'they do not measure the ablations.**',
        ]
    for axis in AXES:
        runs = [r for r in AXES[axis] if r in stats]
        if not runs:
            continue
        png = os.path.join(figs, axis.replace(' ', '_') + '.png')
        plot(axis, stats, png)
        lines += ['', f'## {axis}', '', f'Paper: {PAPER[axis]}', '']
        lines += ['| run | what | seeds | ' + ' | '.join(NAMES[m] for m in METRICS) + ' |']
        lines += ['|' + '---|' * (3 + len(METRICS))]
        for r in runs:
            n = stats[r][METRICS[0]][2]
            cells = ' | '.join(cell(stats[r][m]) for m in METRICS)
            lines += [f'| {r} | {RUNS[r][0]} | {n} | {cells} |']
        lines += ['', f'![{axis}](ablations/{os.path.basename(png)})', '', verdict(axis, stats)]
    with open(out, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    # The rows beside the page: the harness resumes from them on another machine.
    for name in specs:
        with open(os.path.join(figs, f'results-{name}.jsonl'), 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows if r['spec'] == name)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        '--results', default=os.path.join(ROOT, 'runs', 'ablations', 'cpu', 'results.jsonl')
    )
    ap.add_argument('--out', default=os.path.join(ROOT, 'docs', 'ablations.md'))
    args = ap.parse_args(argv)
    print(write(args.results, args.out))


if __name__ == '__main__':
    main()
