"""configs/video.py:small on a mixture of synthetic 3DPW clips and a converted WebDataset tar
dataset fed as single images (data.as_images): the batches mix both, and a short run trains and
evaluates (tests/train_job.py in a subprocess, the loop tests' shared compilation cache)."""

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
from test_train_loop import REPO, job_env

from configs import video
from data_pipelines import convert_webdataset as cw
from data_pipelines import pipeline as pl
from data_pipelines.synthetic import raw_tars
from extpose_jax.train import config as config_lib

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def mixed_root(synthetic_default, tmp_path_factory):
    """A records root with the synthetic default's 3dpw (linked) and a tar body dataset."""
    root = tmp_path_factory.mktemp('mixed')
    os.symlink(synthetic_default['3dpw'], root / '3dpw')
    src = str(root.parent / 'mixed_tars')
    raw_tars.write_tars(src, synthetic_default['body_models'], kind='hmr2', per_tar=6)
    cw.convert(src, str(root / 'tars'), kind='hmr2', quiet=True, fsync=False)
    return {**synthetic_default, 'root': str(root)}


def test_batches_mix_clips_and_single_images(mixed_root):
    cfg = video.get_config('small')
    cfg.data.datasets = (('3dpw', 1.0), ('tars', 1.0))
    cfg.data.as_images = ('tars',)
    pcfg = config_lib.pipeline_config(cfg, mixed_root['root'])
    pcfg = dataclasses.replace(pcfg, batch_size=8)
    batch = next(pl.make_iterator(pcfg, 0, 1))
    ids = batch['dataset_id'][:, 0]
    assert set(ids.tolist()) == {0, 1}
    t = cfg.data.num_frames
    # an image is frame 0 of its unit, the other T - 1 frames padding; 3DPW clips are whole
    np.testing.assert_array_equal(batch['frame_valid'][ids == 1, 0], True)
    np.testing.assert_array_equal(batch['frame_valid'][ids == 1, 1:], False)
    assert batch['frame_valid'][ids == 0].sum() > (ids == 0).sum() * (t - 1)


def test_video_small_trains_and_evaluates_on_the_mixture(mixed_root, tmp_path):
    work = tmp_path / 'w'
    cmd = [
        sys.executable,
        os.path.join(REPO, 'tests', 'train_job.py'),
        '--workdir',
        str(work),
        '--data',
        mixed_root['root'],
        '--body_models',
        mixed_root['body_models'],
        '--config',
        'video',
        '--steps',
        '2',
        '--datasets',
        '3dpw:0.5,tars:0.5',
        '--as_images',
        'tars',
        '--evaluate',
    ]
    env = job_env({'root': os.path.dirname(mixed_root['3dpw'])})
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert 'RESULT 2 False' in r.stdout
    metrics = [
        os.path.join(d, f) for d, _, fs in os.walk(work / 'eval') for f in fs if f == 'metrics.json'
    ]
    assert metrics, f'no evaluation written under {work}'
