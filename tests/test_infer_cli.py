"""run_infer.py end to end on the synthetic default's demo clip (OpenPose JSON, no ids).

Two checkpoints: a training workdir (video.py:small, T = 4, two steps: the test is about the
path, not the accuracy) and an imported HMR 2.0-layout checkpoint (random weights through
convert.from_torch: T = 1, RGB only). Then the bad inputs, each one line or a documented empty
result, with nothing half-written.
"""

import collections
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import run_infer
from data_pipelines.keypoint_files import KeypointFileError
from extpose_jax import errors
from extpose_jax.infer import model_source, runner, video_io
from extpose_jax.train import checkpoint

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIELDS = {  # name -> trailing shape for a body model
    'frame': (),
    'track': (),
    'person_id': (),
    'person': (),
    'is_right': (),
    'score': (),
    'box': (4,),
    'box_center': (2,),
    'box_size': (),
    'pose': (72,),
    'betas': (10,),
    'pred_cam': (3,),
    'cam_t': (3,),
    'joints_3d': (44, 3),
    'joints_2d': (44, 2),
}


@pytest.fixture(scope='module')
def trained(synthetic_default, tmp_path_factory):
    from test_train_loop import job_env

    workdir = tmp_path_factory.mktemp('infer_trained')
    cmd = [
        sys.executable,
        os.path.join(REPO, 'tests', 'train_job.py'),
        '--workdir', str(workdir),
        '--data', synthetic_default['root'],
        '--body_models', synthetic_default['body_models'],
        '--config', 'video',
        '--steps', '2',
        '--checkpoint_every', '2',
    ]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=job_env(synthetic_default), timeout=900
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return str(workdir)


@pytest.fixture(scope='module')
def hmr2_import(tmp_path_factory):
    torch = pytest.importorskip('torch')
    from extpose_jax.convert import from_torch, keymap
    from extpose_jax.models import vit

    tmp = tmp_path_factory.mktemp('hmr2_import')
    rows = keymap.model_rows('smpl', keymap.vit_dims(vit.ViTConfig.of('tiny')), head_size='tiny')
    sd = keymap.random_state_dict(rows, seed=3)
    torch.save(
        {'state_dict': collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())},
        tmp / 'hmr2.ckpt',
    )
    out = str(tmp / 'vars')
    from_torch.main(['--ckpt', str(tmp / 'hmr2.ckpt'), '--kind', 'hmr2', '--out', out])
    return out


def _infer(demo, checkpoint_dir, out, body_models, *extra, keypoints=None):
    return run_infer.main(
        [
            '--video', os.path.join(demo, 'clip.mp4'),
            '--keypoints', keypoints or os.path.join(demo, 'openpose'),
            '--checkpoint', checkpoint_dir,
            '--body_models', body_models,
            '--out', str(out),
            '--quiet',
            *extra,
        ]
    )  # fmt: skip


def _check_outputs(out, num_frames, num_rows):
    rows = np.load(os.path.join(out, 'people.npz'))
    for k, tail in FIELDS.items():
        assert rows[k].shape == (num_rows,) + tail, (k, rows[k].shape)
    assert np.isfinite(rows['joints_3d']).all()
    summary = json.loads(open(os.path.join(out, 'summary.json')).read())
    assert summary['frames'] == num_frames and summary['rows'] == num_rows
    assert video_io.count_frames(os.path.join(out, 'overlay.mp4')) == num_frames
    assert not [n for n in os.listdir(out) if '.tmp' in n]
    return rows, summary


def _demo_rows(demo):
    """Person-frames the demo's OpenPose files hold."""
    gt = np.load(os.path.join(demo, 'ground_truth.npz'))
    return int((gt['person_order'] >= 0).sum()), gt['person_order'].shape[0]


def test_trained_workdir_on_the_demo_clip(synthetic_default, trained, tmp_path):
    demo = synthetic_default['demo']
    num_rows, num_frames = _demo_rows(demo)
    summary = _infer(demo, trained, tmp_path, synthetic_default['body_models'], '--save_vertices')
    rows, saved = _check_outputs(tmp_path, num_frames, num_rows)
    assert summary['num_frames_model'] == 4 and saved['model']['arch'] == 'extpose'
    assert rows['vertices'].shape == (num_rows, 6890, 3)
    # Two people, untracked in the file: linked into (at least) two tracks, each frame once.
    assert len(saved['tracks']) >= 2
    pairs = set(zip(rows['frame'].tolist(), rows['track'].tolist()))
    assert len(pairs) == num_rows and (rows['person_id'] == -1).all()


def test_imported_hmr2_checkpoint_runs_as_an_image_model(synthetic_default, hmr2_import, tmp_path):
    demo = synthetic_default['demo']
    num_rows, num_frames = _demo_rows(demo)
    summary = _infer(demo, hmr2_import, tmp_path, synthetic_default['body_models'])
    _check_outputs(tmp_path, num_frames, num_rows)
    assert summary['num_frames_model'] == 1 and summary['model']['arch'] == 'rgb_only'


def test_missing_keypoint_files_and_a_frame_with_nobody(synthetic_default, trained, tmp_path):
    """Frames whose file is missing, or whose file lists nobody, have no rows; the overlay
    still has every frame."""
    demo = synthetic_default['demo']
    kp = tmp_path / 'openpose'
    shutil.copytree(os.path.join(demo, 'openpose'), kp)
    names = sorted(os.listdir(kp))
    os.remove(kp / names[3])
    (kp / names[5]).write_text(json.dumps({'version': 1.3, 'people': []}))
    num_rows, num_frames = _demo_rows(demo)
    order = np.load(os.path.join(demo, 'ground_truth.npz'))['person_order']
    lost = int((order[3] >= 0).sum() + (order[5] >= 0).sum())
    out = tmp_path / 'out'
    # --hop T: every frame through the model once (the default hop T/2 runs each twice, and
    # which frames have rows does not depend on it).
    _infer(demo, trained, out, synthetic_default['body_models'], '--hop', '4', keypoints=str(kp))
    rows, _ = _check_outputs(out, num_frames, num_rows - lost)
    assert 3 not in rows['frame'] and 5 not in rows['frame']


def test_nobody_at_all_is_an_empty_result(synthetic_default, trained, tmp_path):
    demo = synthetic_default['demo']
    kp = tmp_path / 'openpose'
    kp.mkdir()
    (kp / 'clip_000000000000_keypoints.json').write_text(json.dumps({'people': []}))
    out = tmp_path / 'out'
    _infer(demo, trained, out, synthetic_default['body_models'], keypoints=str(kp))
    _, num_frames = _demo_rows(demo)
    rows, summary = _check_outputs(out, num_frames, 0)
    assert summary['tracks'] == {}


def test_bad_inputs_fail_in_one_line_naming_them(synthetic_default, trained, tmp_path):
    demo, models = synthetic_default['demo'], synthetic_default['body_models']
    out = tmp_path / 'out'
    bad_video = tmp_path / 'broken.mp4'
    bad_video.write_bytes(b'\x00not a video' * 50)
    with pytest.raises(video_io.VideoError, match='broken.mp4'):
        run_infer.main(['--video', str(bad_video), '--keypoints', os.path.join(demo, 'openpose'),
                        '--checkpoint', trained, '--out', str(out)])  # fmt: skip
    # Keypoints for frames the video does not have.
    kp = tmp_path / 'late'
    shutil.copytree(os.path.join(demo, 'openpose'), kp)
    first = sorted(os.listdir(kp))[0]
    shutil.copy(kp / first, kp / 'clip_000000009999_keypoints.json')
    with pytest.raises(KeypointFileError, match='frame 9999'):
        _infer(demo, trained, out, models, keypoints=str(kp))
    # A keypoint layout with the wrong joint count.
    kp = tmp_path / 'count'
    kp.mkdir()
    person = {'person_id': [-1], 'pose_keypoints_2d': [1.0] * 60}
    (kp / 'clip_000000000000_keypoints.json').write_text(json.dumps({'people': [person]}))
    with pytest.raises(KeypointFileError, match='60'):
        _infer(demo, trained, out, models, keypoints=str(kp))
    # A checkpoint of the wrong kind: a backbone-only import (ViTPose), and a plain folder.
    vitpose = tmp_path / 'vitpose'
    variables, _ = checkpoint.load_variables(_vars_of(trained, tmp_path))
    checkpoint.save_variables(
        str(vitpose),
        {'params': {'backbone': variables['params']['backbone']}},
        {'kind': None, 'source_kind': 'vitpose', 'parts': ['backbone'], 'vit_size': 'tiny'},
    )
    with pytest.raises(model_source.CheckpointKindError, match='no pose head'):
        _infer(demo, str(vitpose), out, models)
    with pytest.raises(model_source.CheckpointKindError, match='neither a training workdir'):
        _infer(demo, str(tmp_path / 'count'), out, models)
    # Variables that are not the config's model: one line naming --checkpoint.
    cfg, _, _ = model_source.load(trained, None)
    headless = {'params': {'backbone': variables['params']['backbone']}}
    with pytest.raises(errors.UserError, match='--checkpoint.*missing'):
        runner.model_predict_fn(cfg, headless, models)
    assert not (out / 'people.npz').exists() and not (out / 'overlay.mp4').exists()


def _vars_of(workdir, tmp_path):
    """The workdir's variables as a variables directory (what save_variables writes)."""
    variables, _, _ = checkpoint.restore_variables(workdir)
    path = str(tmp_path / 'vars')
    checkpoint.save_variables(path, variables, {})
    return path
