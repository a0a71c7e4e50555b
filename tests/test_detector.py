"""The simulated 2D detector (data_pipelines/synthetic/detector.py): each error of its model
measured on a seeded sample against the number the model states.

Every bound is a few standard errors of the estimate at the sample's size (stated beside it), so
a correct model fails with probability far below 1e-5 and a wrong factor (jitter not scaled by
the box, occlusion ignored, swaps per joint instead of per frame) fails by many more.
"""

import dataclasses

import numpy as np
import pytest

from data_pipelines.synthetic import detector
from extpose_jax import skeletons

FLIP = skeletons.get_layout('openpose18').flip
J = 18
SIZE_WH = (1000, 800)
QUIET = detector.DetectorModel(
    jitter=0.0, occluded_jitter=0.0, temporal=0.0, miss_visible=0.0, miss_occluded=0.0,
    swap=0.0, outlier=0.0, min_joints=0,
)  # fmt: skip


def _track(t_len, side=200.0, seed=123):
    """(T, J, 2) keypoints: one fixed pose of distinct joints, centred in the image."""
    base = np.array([500.0, 400.0]) + np.random.default_rng(seed).uniform(
        -side / 2, side / 2, (J, 2)
    )
    return np.broadcast_to(base, (t_len, J, 2)).copy()


def _detect(kp, model, occluded=False, on_image=True, side=200.0, seed=0):
    shape = kp.shape[:2]
    return detector.detect(
        kp,
        np.broadcast_to(on_image, shape),
        np.broadcast_to(occluded, shape),
        side,
        SIZE_WH,
        FLIP,
        np.random.default_rng(seed),
        model,
    )


def _binomial_bound(p, n, sigmas=5.0):
    return sigmas * np.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize('side', [100.0, 300.0])
@pytest.mark.parametrize('occluded', [False, True])
def test_jitter_is_the_stated_fraction_of_the_box_side(side, occluded):
    model = dataclasses.replace(QUIET, jitter=0.02, occluded_jitter=0.06)
    kp = _track(2000, side)
    out = _detect(kp, model, occluded=occluded, side=side)
    ratio = (out[..., :2] - kp).std() / side
    # 72,000 normal samples: the std's relative standard error is 1 / sqrt(2 N) = 0.26%; 2% is
    # 7.6 of them. Occlusion's jitter is 3x the visible one's, pixels scale 3x with the box.
    want = 0.06 if occluded else 0.02
    np.testing.assert_allclose(ratio, want, rtol=0.02)


def test_jitter_of_consecutive_frames_is_correlated_and_stationary():
    model = dataclasses.replace(QUIET, jitter=0.02, temporal=0.6)
    kp = _track(4000)
    err = (_detect(kp, model)[..., :2] - kp) / 200.0
    lag1 = np.mean(err[1:] * err[:-1]) / np.mean(err * err)
    # ~144,000 products: the standard error of the lag-1 correlation of an AR(1) with rho 0.6 is
    # about sqrt((1 - rho^2) / N) = 0.0021; 0.015 is 7 of them. Its marginal std stays the
    # stated jitter in every frame (first and last thousand frames alike).
    assert abs(lag1 - 0.6) < 0.015, lag1
    for part in (err[:1000], err[-1000:]):
        np.testing.assert_allclose(part.std(), 0.02, rtol=0.03)  # 36,000 samples: 0.37% s.e.


def test_misses_follow_occlusion_and_off_image_joints_are_never_reported():
    model = dataclasses.replace(QUIET, miss_visible=0.01, miss_occluded=0.4)
    kp = _track(3000)
    occluded = np.zeros(kp.shape[:2], bool)
    occluded[:, ::2] = True  # half the joints hidden in every frame
    on_image = np.ones(kp.shape[:2], bool)
    on_image[:, 1] = False  # one visible joint always off the image (truncation)
    out = _detect(kp, model, occluded=occluded, on_image=on_image)
    missed = out[..., 2] == 0
    assert missed[:, 1].all()
    n_occ = occluded.sum()
    visible = ~occluded & on_image
    assert abs(missed[occluded].mean() - 0.4) < _binomial_bound(0.4, n_occ)
    assert abs(missed[visible].mean() - 0.01) < _binomial_bound(0.01, visible.sum())
    assert (out[missed] == 0).all()  # (0, 0, 0), as OpenPose writes a missing joint


def test_a_frame_with_too_few_joints_is_dropped_whole():
    model = dataclasses.replace(QUIET, min_joints=6)
    kp = _track(2)
    on_image = np.zeros(kp.shape[:2], bool)
    on_image[0, :5] = True  # 5 joints: below the rule, the frame is all zeros
    on_image[1, :6] = True  # 6: kept
    out = _detect(kp, model, on_image=on_image)
    assert (out[0] == 0).all()
    assert (out[1, :6, 2] > 0).all() and (out[1, 6:] == 0).all()
    np.testing.assert_allclose(out[1, :6, :2], kp[1, :6])  # no jitter in this model


def test_swaps_exchange_one_left_right_pair_per_affected_frame():
    model = dataclasses.replace(QUIET, swap=0.3)
    kp = _track(4000)
    out = _detect(kp, model)
    moved = np.any(out[..., :2] != kp, axis=-1)  # (T, J): the joints reported elsewhere
    swapped = moved.any(-1)
    assert abs(swapped.mean() - 0.3) < _binomial_bound(0.3, len(kp))
    for f in np.flatnonzero(swapped):
        a, b = np.flatnonzero(moved[f])  # exactly two joints, a left/right pair, exchanged
        assert FLIP[a] == b
        np.testing.assert_array_equal(out[f, [a, b], :2], kp[f, [b, a]])


def test_outliers_land_in_the_grown_box_with_low_confidence():
    model = dataclasses.replace(QUIET, outlier=0.05)
    kp = _track(3000)
    out = _detect(kp, model)
    gross = np.any(out[..., :2] != kp, axis=-1)
    assert abs(gross.mean() - 0.05) < _binomial_bound(0.05, gross.size)
    centre = (kp[0].min(0) + kp[0].max(0)) / 2
    assert (np.abs(out[gross][:, :2] - centre) <= 200.0 + 1e-9).all()  # box side 200, grown 2x
    # Beta(1.5, 6): mean 0.2, std 0.136; ~2,700 outliers give a standard error of 0.0026.
    assert abs(out[gross][:, 2].mean() - 0.2) < 0.015
    assert out[~gross][:, 2].mean() > 0.7


@pytest.mark.parametrize('occluded, a, b', [(False, 8.0, 2.0), (True, 3.0, 4.0)])
def test_confidence_means_follow_visibility(occluded, a, b):
    conf = _detect(_track(2000), QUIET, occluded=occluded)[..., 2]
    mean, var = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    assert abs(conf.mean() - mean) < 5 * np.sqrt(var / conf.size), conf.mean()


def test_points_stay_on_the_image():
    model = dataclasses.replace(QUIET, jitter=0.5)  # huge jitter pushes points past the edges
    out = _detect(_track(200), model)
    assert (out[..., 0] >= 0).all() and (out[..., 0] <= SIZE_WH[0] - 1).all()
    assert (out[..., 1] >= 0).all() and (out[..., 1] <= SIZE_WH[1] - 1).all()


def test_seeded():
    kp, model = _track(50), detector.DetectorModel()
    np.testing.assert_array_equal(_detect(kp, model, seed=3), _detect(kp, model, seed=3))
    assert not np.array_equal(_detect(kp, model, seed=3), _detect(kp, model, seed=4))


@pytest.mark.parametrize(
    'field, value',
    [('swap', 1.5), ('jitter', -0.1), ('temporal', 1.0), ('conf_visible', (0.0, 2.0))],
)
def test_bad_model_fields_are_named(field, value):
    with pytest.raises(ValueError, match=f'DetectorModel.{field}'):
        detector.DetectorModel(**{field: value})
