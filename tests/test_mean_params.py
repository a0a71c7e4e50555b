"""The head's starting point (data_pipelines/mean_params.py): measured on training records,
found beside the body models, used by the training task; and the synthetic default's cache,
which writes the files and is rebuilt when the world that made it changed."""

import os

import numpy as np
import pytest

from data_pipelines import mean_params
from data_pipelines.record_reader import RecordReader
from extpose_jax import geometry
from extpose_jax.models import heads
from extpose_jax.train import config as config_lib


def _svd_mean(mats):
    """The chordal L2 mean, computed another way than scipy's quaternion eigenvector: the
    rotation nearest (Frobenius) to the arithmetic mean of the matrices."""
    u, _, vt = np.linalg.svd(mats.mean(0))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


@pytest.mark.parametrize('name, kind', [('3dpw', 'smpl'), ('freihand', 'mano')])
def test_synthetic_default_ships_the_mean_of_its_training_poses(synthetic_default, name, kind):
    path = heads.find_mean_params(synthetic_default['body_models'], kind)
    assert path is not None and path.endswith(heads.MEAN_PARAMS_FILES[kind])
    with np.load(path) as f:
        got = {k: f[k] for k in f.files}
    joints = {'smpl': 24, 'mano': 16}[kind]
    assert got['pose'].shape == (6 * joints,) and got['shape'].shape == (10,)
    np.testing.assert_array_equal(got['cam'], np.float32(heads.DEFAULT_CAM))

    with RecordReader(synthetic_default[name], 'train') as reader:
        recs = [r for r in reader if r['has_pose']]
    rotvecs = np.stack([r['pose'] for r in recs]).reshape(len(recs), joints, 3)
    mats = np.asarray(geometry.axis_angle_to_matrix(rotvecs), np.float64)
    want = np.stack([_svd_mean(mats[:, j]) for j in range(joints)])
    got_mats = np.asarray(geometry.rot6d_to_matrix(got['pose'].reshape(joints, 6)))
    # fp32 storage of unit vectors (~6e-8) and fp32 axis_angle_to_matrix of the inputs: 1e-5.
    np.testing.assert_allclose(got_mats, want, atol=1e-5)
    betas = np.mean([r['betas'] for r in recs if r['has_betas']], axis=0)
    np.testing.assert_allclose(got['shape'], betas, rtol=1e-5, atol=1e-6)
    if kind == 'smpl':
        # People stand upright facing the camera (y down, looking along +z): the mean global
        # orientation is close to half a turn about x, not the identity a head starts from
        # without the file.
        angle = np.degrees(np.arccos(np.clip(-got_mats[0][1, 1], -1, 1)))
        assert angle < 30, angle


def test_a_hand_computed_mean():
    """Two rotations of +-40 degrees about z on top of a common one average to the common one;
    a joint that never moves keeps its rotation exactly."""
    base = np.array([np.pi, 0.0, 0.0])
    tilt = np.radians(40.0)
    poses = []
    for s in (1.0, -1.0):
        R = np.asarray(geometry.axis_angle_to_matrix(base)) @ np.asarray(
            geometry.axis_angle_to_matrix(np.array([0.0, 0.0, s * tilt]))
        )
        poses.append(np.concatenate([np.asarray(geometry.matrix_to_axis_angle(R)), [0.3, 0, 0]]))
    six = mean_params.mean_of_rotvecs(np.array(poses).reshape(2, 2, 3))
    got = np.asarray(geometry.rot6d_to_matrix(six.reshape(2, 6)))
    np.testing.assert_allclose(got[0], np.asarray(geometry.axis_angle_to_matrix(base)), atol=1e-6)
    np.testing.assert_allclose(
        got[1], np.asarray(geometry.axis_angle_to_matrix(np.array([0.3, 0, 0]))), atol=1e-6
    )


def test_the_task_takes_the_file_beside_the_body_models(tmp_path):
    cfg = __import__('configs.image', fromlist=['x']).get_config('small')
    assert config_lib.model_config(cfg, str(tmp_path)).mean_params_path is None
    path = tmp_path / heads.MEAN_PARAMS_FILES['smpl']
    pose = np.asarray(geometry.matrix_to_rot6d(np.diag([1.0, -1.0, -1.0])), np.float32)
    mean_params.write(
        str(path), {'pose': np.tile(pose, 24), 'shape': np.zeros(10), 'cam': [0.9, 0, 0]}
    )
    assert config_lib.model_config(cfg, str(tmp_path)).mean_params_path == str(path)
    constants = heads.mean_constants('smpl', str(path))
    np.testing.assert_array_equal(constants['init_body_pose'][0, :6], pose)
    cfg.model.mean_params = '/elsewhere.npz'  # an explicit file wins
    assert config_lib.model_config(cfg, str(tmp_path)).mean_params_path == '/elsewhere.npz'


def test_a_split_without_poses_is_refused(tmp_path, monkeypatch):
    class Empty:
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return iter([{'has_pose': False, 'has_betas': False}])

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(mean_params, 'RecordReader', Empty)
    with pytest.raises(ValueError, match="split 'train': no record has a pose"):
        mean_params.mean_params(str(tmp_path))


def test_a_cached_default_from_another_world_version_is_rebuilt(tmp_path, monkeypatch):
    """The synthetic default's cache is stamped with the seed, world.VERSION and size: a cache
    written by an older world (3DPW's poses2d once were exact projections) or at another size is
    removed with everything derived from it and rendered again; a current one is kept."""
    from data_pipelines.synthetic import default_data, world

    rendered = []

    def write_all(raw_dir, seed, size, workers):
        rendered.append((seed, size))
        paths = {k: os.path.join(raw_dir, k) for k in ('body_models', '3dpw', 'freihand', 'hint')}
        for p in paths.values():
            os.makedirs(p, exist_ok=True)
        return paths

    class Converter:
        @staticmethod
        def convert(raw, body_models, dest, quiet):
            os.makedirs(dest, exist_ok=True)
            return {'splits': {}}

    monkeypatch.setattr(world, 'write_all', write_all)
    monkeypatch.setattr(
        default_data, '_CONVERTERS', dict.fromkeys(('3dpw', 'freihand', 'hint'), Converter)
    )
    monkeypatch.setattr(default_data.shards, 'load_dataset_info', lambda dest: None)
    monkeypatch.setattr(default_data.mean_params, 'mean_params', lambda dest: {})
    monkeypatch.setattr(default_data.mean_params, 'write', lambda path, p: open(path, 'w').close())
    monkeypatch.setattr(default_data.demo_video, 'write_demo', lambda *a, **k: None)
    stale = tmp_path / 'records' / '3dpw' / 'old_shard'
    stale.parent.mkdir(parents=True)
    stale.write_text('from the old world')
    (tmp_path / 'demo').mkdir()  # the demo video is cut from the old world's raw 3DPW too
    (tmp_path / 'demo' / 'clip.mp4').write_text('from the old world')
    (tmp_path / 'raw').mkdir()
    (tmp_path / 'raw' / 'COMPLETE').write_text('seed=0\n')  # the stamp before world versions
    lines = []
    default_data.ensure(str(tmp_path), seed=0, log=lines.append)
    assert rendered == [(0, 'small')] and not stale.exists()
    assert not (tmp_path / 'demo').exists()
    assert any('rebuilding it' in line for line in lines), lines
    stamp = (tmp_path / 'raw' / 'COMPLETE').read_text()
    assert stamp == f'seed=0 world={world.VERSION} size=small\n'
    default_data.ensure(str(tmp_path), seed=0, log=lines.append)
    assert rendered == [(0, 'small')]  # current: cached
    default_data.ensure(str(tmp_path), seed=0, size='tiny', log=lines.append)
    assert rendered == [(0, 'small'), (0, 'tiny')]
