"""bench/ablations.py, the ablation harness, in quick mode on the tests' tiny world: the base, a
run from its training workdir and one from its backbone only, the results file, resuming, and
the report.

Quick mode over all the runs compiles each arch once (~25 s a run on 2 cores); this smoke test
takes rgb_only (the base's own arch: its programs come from the harness' compilation cache)
and vitpose_init (the backbone-only import made from the base).
"""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import ablation_report, ablations  # noqa: E402


def test_every_axis_lists_known_runs_and_starts_with_the_papers_choice():
    for axis, runs in ablations.AXES.items():
        assert set(runs) <= set(ablations.RUNS), axis
        assert runs[0] in ('extpose', 'extpose_t4'), axis
    assert set(ablations.RUNS) == {r for runs in ablations.AXES.values() for r in runs}


@pytest.mark.parametrize('name', sorted(ablations.RUNS))
def test_every_run_config_validates(name):
    """Each run's config (quick and paper specs) passes validation, keeps the frames per step,
    and sets what its row says."""
    from extpose_jax.train import config as config_lib

    for spec in (ablations.SPECS['quick'], ablations.SPECS['paper']):
        cfg = ablations.config_for(spec, name, seed=1, init='/somewhere')
        config_lib.validate(cfg, check_paths=False)
        t = cfg.data.num_frames
        if spec.frames_per_step:  # else the paper's 32 clips
            assert t * cfg.data.batch_size == max(t, spec.frames_per_step)
        else:
            assert cfg.data.batch_size == 32
        assert cfg.seed == 1 and cfg.init.checkpoint == '/somewhere'
        for key, value in ablations.RUNS[name][1].items():
            node = cfg
            for part in key.split('.'):
                node = node[part]
            assert node == value, (name, key)


@pytest.mark.slow
def test_quick_mode_runs_resumes_and_reports(synthetic_default, tmp_path, monkeypatch):
    monkeypatch.setattr(
        ablations,
        'data_paths',
        lambda spec, args: {
            'body_models': synthetic_default['body_models'],
            'records': synthetic_default['root'],
        },
    )
    out = tmp_path / 'abl'
    argv = ['--quick', '--out', str(out), '--runs', 'rgb_only,vitpose_init']
    results = ablations.main(argv)
    rows = [json.loads(line) for line in open(results)]
    assert [(r['run'], r['seed'], r['steps']) for r in rows] == [
        ('rgb_only', 0, 2),
        ('vitpose_init', 0, 2),
    ]
    for r in rows:
        assert r['spec'] == 'quick' and r['input_2d'] == 'detections'
        assert set(r['end']) == set(ablations.METRICS)
    # rgb_only starts where the base ended (same arch, every weight loaded: the same scores);
    # vitpose_init from the base's backbone without its head.
    base = json.load(open(out / 'base' / 'eval' / 'pw3d' / 'metrics.json'))
    assert base['step'] == 2
    for m in ablations.METRICS:
        assert rows[0]['start'][m] == pytest.approx(base[m], rel=1e-5), m
    assert rows[1]['start']['3dpw/mpjpe'] != pytest.approx(base['3dpw/mpjpe'], rel=1e-3)
    from extpose_jax.train import checkpoint as ckpt_lib

    backbone = str(out / 'base_backbone')
    assert ckpt_lib.load_meta(backbone)['parts'] == ['backbone']
    assert 'head' not in ckpt_lib.load_variables(backbone)[0]['params']
    # A rerun skips what is done.
    ablations.main(argv)
    assert len(open(results).readlines()) == 2
    report = ablation_report.write(results, str(tmp_path / 'docs' / 'ablations.md'))
    text = open(report).read()
    assert 'Quick mode' in text and '| vitpose_init |' in text
    assert os.path.exists(tmp_path / 'docs' / 'ablations' / 'training_strategy.png')
    kept = tmp_path / 'docs' / 'ablations' / 'results-quick.jsonl'
    assert kept.read_text() == open(results).read()
