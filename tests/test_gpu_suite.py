"""bench/gpu_suite.sh's dry mode (CPU, ViT-tiny): it runs, and its JSON lines carry the
documented fields, so a GPU run does not die on a typo.

The video case and the T search only (--only): the image case runs the same code with another
config name (bench/train_step.run_case), and each case compiles a whole bf16 train step
(37 s of CPU less without it, measured on a slow 2-core machine)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OK_FIELDS = {
    'case',
    'attention',
    'status',
    'wall_s',
    'step_s',
    'images_per_s',
    'frames_per_s',
    'model_tflops_per_step',
    'mfu_model',
    'peak_tflops',
    'attention_resolved',
    'preflight_analytic_gib',
    'preflight_compiled_gib',
    'compiled_temp_gib',
    'peak_rss_gib',
    'measured_peak_gib',
    'analytic_over_measured',
    'compiled_over_measured',
}


@pytest.mark.slow
def test_dry_run_writes_the_documented_lines(tmp_path, body_model_dir):
    out = tmp_path / 'suite'
    env = {**os.environ, 'GPU_SUITE_DRY': '1', 'PYTHON': sys.executable}
    env.pop('XLA_FLAGS', None)
    proc = subprocess.run(
        ['bash', os.path.join(ROOT, 'bench', 'gpu_suite.sh'), str(out)]
        + [
            '--impls',
            'grouped_cudnn',
            'grouped',
            '--only',
            'video',
            'max_frames',
            '--body_models',
            str(body_model_dir),
            # The suite's own time limits are for a GPU machine; a loaded CI machine must not
            # turn them into skipped cases (the test checks what runs, not how fast).
            '--budget',
            '3000',
            '--case_cap',
            '1200',
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / 'suite.jsonl').read_text().splitlines()]
    by = {}
    for r in rows:
        by.setdefault(r['bench'], []).append(r)
    start, end = by['suite_start'][0], by['suite_end'][0]
    assert start['dry'] and start['backend'] == 'cpu' and start['dtype'] == 'bfloat16'
    assert start['cases'] == {'video': 'video:tiny:2:1', 'image': 'image:tiny:1:2'}
    steps = {(r['case'], r['attention']): r for r in by['train_step']}
    assert set(steps) == {(start['cases']['video'], i) for i in ('grouped_cudnn', 'grouped')}
    for (case, impl), r in steps.items():
        if impl == 'grouped_cudnn':  # no GPU here: said so, not attempted
            assert r['status'] == 'not_applicable' and 'needs a GPU' in r['reason']
            continue
        assert r['status'] == 'ok', r
        assert OK_FIELDS <= set(r), OK_FIELDS - set(r)
        assert r['attention_resolved'] == [impl] and r['remat'] and r['dtype'] == 'bfloat16'
        t, clips = (int(x) for x in case.split(':')[2:])
        assert r['images_per_s'] == pytest.approx(2 * t * clips / r['step_s'], rel=0.02)
        assert 0 < r['mfu_model'] < 1 and r['model_tflops_per_step'] > 0
    mf = by['max_frames'][0]
    # On this host's memory ViT-tiny fits any T: the prediction stops at the dry cap, the
    # video case's T = 2 (whose compiled program the run at the cap reuses).
    assert mf['attention'] == 'grouped' and mf['predicted_max_frames'] == 2 and mf['capped']
    assert mf['tried'] == {'2': 'ok'} and mf['max_frames_fit'] == 2 and mf['step_s_at_max'] > 0
    assert end['counts'] == {'ok': 1, 'not_applicable': 1}
    assert (out / 'logs').is_dir()


def test_usage_without_a_folder():
    proc = subprocess.run(
        ['bash', os.path.join(ROOT, 'bench', 'gpu_suite.sh')],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and 'usage: bash bench/gpu_suite.sh OUT_DIR' in proc.stderr
