"""extpose_jax/infer/camera.py: the model's crop camera back to the full image.

Against HMR 2.0's demo conversion (geometry.cam_crop_to_full, the ported upstream function) for
the nominal camera, its own inverse, and an oracle on a synthetic 3DPW sequence: the crop camera
that reproduces each person's true translation, taken back to the frame through the person's
detected box, gives the ground-truth 3D joints (camera frame) and their pixels.
"""

import glob
import os

import numpy as np
import pytest

from data_pipelines import augment, convert_3dpw
from data_pipelines import convert_common as cc
from extpose_jax import body_models, geometry
from extpose_jax.infer import camera


def _random_cams(rng, n):
    cams = np.stack([rng.uniform(0.3, 1.5, n), rng.normal(0, 0.2, n), rng.normal(0, 0.2, n)], 1)
    sizes = rng.uniform(50, 600, n)
    centres = rng.uniform(0, 1000, (n, 2))
    return cams, centres, sizes


def test_nominal_camera_is_hmr2s_demo_conversion():
    rng = np.random.default_rng(0)
    cams, centres, sizes = _random_cams(rng, 64)
    wh = np.array([1920.0, 1080.0])
    K = camera.intrinsics(wh)
    assert K[0, 0] == K[1, 1] == 5000 / 256 * 1920 and (K[:2, 2] == wh / 2).all()
    want, focal = geometry.cam_crop_to_full(cams, centres, sizes, np.broadcast_to(wh, (64, 2)))
    got = camera.crop_to_full(cams, centres, sizes, K)
    np.testing.assert_allclose(focal, K[0, 0], rtol=1e-6)
    # geometry runs in float32: relative 1e-5 covers its rounding on translations of ~1-200 m
    np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=1e-5, atol=1e-5)


def test_full_to_crop_inverts_crop_to_full():
    rng = np.random.default_rng(1)
    cams, centres, sizes = _random_cams(rng, 64)
    K = np.array([[900.0, 0, 610.0], [0, 905.0, 350.0], [0, 0, 1]])  # off-centre, fx != fy
    t = camera.crop_to_full(cams, centres, sizes, K)
    np.testing.assert_allclose(camera.full_to_crop(t, centres, sizes, K), cams, rtol=1e-10)


def test_bad_intrinsics_are_refused():
    with pytest.raises(ValueError, match='intrinsics'):
        camera.intrinsics((640, 480), np.eye(2))
    with pytest.raises(ValueError, match='intrinsics'):
        camera.intrinsics((640, 480), np.diag([0.0, 500.0, 1.0]))


@pytest.mark.slow
def test_oracle_crop_cameras_give_back_the_true_joints_and_pixels(synthetic_default):
    """Each person-frame of the synthetic 3DPW test split: box from the simulated detections
    (HMR 2.0's 3:4 square box), the oracle's crop camera from the true translation, back through
    crop_to_full: 3D joints within 1 mm, full-image pixels within 1 px of the truth."""
    raw = os.path.join(os.path.dirname(synthetic_default['body_models']), '3DPW')
    (path,) = glob.glob(os.path.join(raw, 'sequenceFiles', 'test', '*.pkl'))
    seq = convert_3dpw.load_sequence(path)
    K = camera.intrinsics(None, seq['K'])
    checked = 0
    for k in range(seq['num_actors']):
        model = body_models.load_smpl(synthetic_default['body_models'], seq['genders'][k])
        frames = np.arange(seq['num_frames'])
        j0 = convert_3dpw.rest_root_joint(model, seq['betas'][k])
        _, transl, out = convert_3dpw.camera_frame_params(model, seq, k, frames, j0)
        truth_3d = out['joints'] + transl[:, None]
        truth_2d = cc.project(K, truth_3d)[0]
        for f in frames:
            det = seq['poses2d'][k][f]
            seen = det[det[:, 2] > 0, :2]
            if len(seen) < 6:
                continue
            centre, _, _, side = augment.hmr_box(np.r_[seen.min(0), seen.max(0)])
            oracle = camera.full_to_crop(transl[f], centre, side, K)
            t = camera.crop_to_full(oracle, centre, side, K)
            joints = out['joints'][f] + t
            assert np.abs(joints - truth_3d[f]).max() < 1e-3
            assert np.abs(cc.project(K, joints)[0] - truth_2d[f]).max() < 1.0
            checked += 1
    assert checked >= 20
