"""Learning sanity: the small model memorises a handful of frames, the whole pose included.

If the camera, the 2D loss, the global orientation or the losses' frames were wrong, PA-MPJPE
(which aligns rotation and scale away) could still fall while MPJPE (pelvis-aligned only) would
not; so the bound is on MPJPE. The run goes through run_train.py as a user's does: the training
split of the converter tests' raw 3DPW (one sequence of 8 frames, 14 person-frames), converted,
its mean pose as the head's start, no augmentation, ground-truth 2D input (the point is fitting,
and the evaluator is labelled as such), scored on the frames it trained on.
"""

import json
import os
import subprocess
import sys

import pytest

from data_pipelines import convert_3dpw, mean_params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 160


@pytest.mark.slow
def test_small_model_overfits_a_handful_of_frames_to_mpjpe_well_below_50mm(raw, tmp_path):
    records = tmp_path / 'records'
    convert_3dpw.convert(raw['3dpw'], raw['body_models'], str(records / '3dpw'), quiet=True)
    mean = tmp_path / 'smpl_mean_params.npz'
    mean_params.write(str(mean), mean_params.mean_params(str(records / '3dpw')))
    workdir = tmp_path / 'run'
    flags = {
        'data.root': records,
        'body_models': raw['body_models'],
        'model.mean_params': mean,
        'data.augment': False,
        'data.pose_source': 'gt',
        'model.modality_dropout': 0.0,
        # Memorising, not generalising: a larger step than the from-scratch 1e-4, batch 4.
        'optim.lr': 5e-4,
        'data.batch_size': 4,
        'train.steps': STEPS,
        'train.checkpoint_every': STEPS,
        'evaluators.pw3d.split': 'train',
        'evaluators.pw3d.pose_source': 'gt',
        'eval.overlays': 0,
    }
    # XLA's default compile: this test runs 160 steps, which tests/run.sh's cheap-compile flags
    # make ~2.8x slower (bench/train_step.py: 1.01 vs 0.36 s a step), against ~12 s more
    # compiling (16.4 vs 4.6 s).
    env = dict(os.environ, JAX_PLATFORMS='cpu')
    cheap = ('backend_optimization_level', 'use_fusion_emitters')
    xla = [f for f in env.pop('XLA_FLAGS', '').split() if not any(c in f for c in cheap)]
    if xla:
        env['XLA_FLAGS'] = ' '.join(xla)  # an empty or blank XLA_FLAGS is read as a file name
    proc = subprocess.run(
        [
            sys.executable,
            'run_train.py',
            '--config=configs/image.py:small',
            f'--workdir={workdir}',
            *[f'--config.{k}={v}' for k, v in flags.items()],
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((workdir / 'eval' / 'pw3d' / 'step_0' / 'metrics.json').read_text())
    last = json.loads((workdir / 'eval' / 'pw3d' / f'step_{STEPS}' / 'metrics.json').read_text())
    assert last['input_2d'].startswith('GROUND-TRUTH')  # and labelled so
    assert first['num_frames'] == last['num_frames'] >= 8
    # Measured (2-core CPU, jax 0.10 CPU): MPJPE 545 -> 35.7 mm, PA-MPJPE 368 -> 30.8 mm over the
    # 14 frames. Other CPUs round differently and the trajectory is not smooth (61-79 mm at
    # steps 60-80 in a sibling run), so the bounds are the 50 mm and 45 mm, not the run's
    # numbers. A bug in the camera or orientation path leaves MPJPE far above PA-MPJPE.
    assert last['3dpw/mpjpe'] < 50.0, (first, last)
    assert last['3dpw/pa_mpjpe'] < 45.0, (first, last)
    assert last['3dpw/mpjpe'] < 0.15 * first['3dpw/mpjpe'], (first, last)
