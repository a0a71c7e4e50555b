"""Named evaluators (config.evaluators): cadence, TensorBoard tags, and a run that scores two
hand datasets at their own cadences."""

import json
import os

import cv2
import pytest

from configs import common, hand
from extpose_jax.train import config as config_lib

# A training run with two evaluators: it compiles the full model and its evaluation.
pytestmark = pytest.mark.slow


def _ev(every, name='hint', dataset='hint'):
    return config_lib.Evaluator(name, dataset, 'test', every, None)


def test_cadence():
    total = 10
    assert [s for s in range(total + 1) if _ev(None).due(s, total)] == [0, 10]
    assert [s for s in range(total + 1) if _ev(4).due(s, total)] == [0, 4, 8, 10]
    assert not any(_ev(0).due(s, total) for s in range(total + 1))


def test_tags_and_headline_come_from_the_protocol():
    ev = _ev(None, name='hint_val')
    assert ev.tag('hint/pck@0.1/all') == 'eval/hint_val/pck@0.1/all'
    assert ev.tag('num_frames') == 'eval/hint_val/num_frames'
    assert ev.headline == 'hint/pck@0.1/all'
    assert _ev(None, '3dpw', '3dpw').headline == '3dpw/pa_mpjpe'


def test_active_evaluators_and_lookup():
    cfg = hand.get_config('small')
    assert [e.name for e in config_lib.evaluators(cfg)] == ['freihand', 'hint']
    cfg.evaluators.hint.every = 0
    assert [e.name for e in config_lib.evaluators(cfg)] == ['freihand']
    assert config_lib.evaluator(cfg, 'hint').every == 0  # explicit use still finds it
    assert config_lib.evaluator(cfg).name == 'freihand'
    with pytest.raises(config_lib.ConfigError, match=r'config\.evaluators\.coco: no such'):
        config_lib.evaluator(cfg, 'coco')


@pytest.mark.slow
def test_two_evaluators_write_at_their_own_cadences(synthetic_default, tmp_path):
    from extpose_jax.train import loop

    cfg = hand.get_config('small')
    cfg.train.steps, cfg.train.log_every, cfg.train.checkpoint_every = 4, 2, 4
    cfg.data.batch_size, cfg.eval.overlays = 2, 1
    cfg.evaluators.freihand.every, cfg.evaluators.freihand.max_frames = 2, 2
    cfg.evaluators.hint = common.evaluator('hint', every=3)
    cfg.evaluators.hint.max_frames = 2
    result = loop.train(
        cfg,
        str(tmp_path),
        synthetic_default['body_models'],
        synthetic_default['root'],
        log=lambda *_: None,
    )
    want = {'freihand': [0, 2, 4], 'hint': [0, 3, 4]}
    assert {k: sorted(v) for k, v in result['eval'].items()} == want
    for name, steps in want.items():
        folder = tmp_path / 'eval' / name
        assert sorted(os.listdir(folder)) == sorted(['metrics.json'] + [f'step_{s}' for s in steps])
        latest = json.loads((folder / 'metrics.json').read_text())
        assert latest['step'] == 4
        assert len(os.listdir(folder / 'step_0' / 'overlays')) == 1
    logged = {}
    with open(tmp_path / 'metrics.jsonl') as f:
        for line in f:
            row = json.loads(line)
            for tag in ('eval/freihand/pa_mpjpe', 'eval/hint/pck@0.1/all'):
                if tag in row:
                    logged.setdefault(tag, []).append(row['step'])
    assert logged == {'eval/freihand/pa_mpjpe': [0, 2, 4], 'eval/hint/pck@0.1/all': [0, 3, 4]}
    # The run's last act: the curves of what moved (the subprocess jobs of the loop tests skip it).
    assert cv2.imread(str(tmp_path / 'curves.png')).ndim == 3
