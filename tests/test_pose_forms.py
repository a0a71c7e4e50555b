"""Tests for extpose_jax.models.pose_forms.

The skeleton renderer is checked against OpenCV (cv2.line / cv2.circle with LINE_AA, the
rasteriser behind ControlNet's and HaMeR's skeleton drawings) in the same palette and sizes.
"""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from extpose_jax import skeletons as sk
from extpose_jax.models import pose_forms as pf

H, W = 256, 192

# A standing person in a 256 x 192 crop, OpenPose-18 order (integer pixels so OpenCV, which
# takes integer points, draws exactly the same geometry).
BODY18 = np.array(
    [
        [96, 40],
        [96, 70],
        [70, 72],
        [58, 110],
        [52, 145],
        [122, 72],
        [134, 110],
        [142, 146],
        [80, 140],
        [78, 190],
        [76, 236],
        [112, 140],
        [116, 190],
        [118, 236],
        [90, 34],
        [102, 34],
        [84, 38],
        [108, 38],
    ],
    np.float32,
)
# BODY_25 = OpenPose-18 joints + mid-hip + feet.
_FEET = np.array(
    [[96, 140], [126, 246], [132, 244], [112, 242], [66, 246], [60, 244], [80, 242]], np.float32
)  # mid_hip, L big toe, L small toe, L heel, R ...
BODY25 = np.concatenate([BODY18[:8], _FEET[:1], BODY18[8:], _FEET[1:]])
# An open right hand, hand-21 order (wrist; thumb, index, middle, ring, pinky base -> tip).
HAND21 = np.array(
    [
        [96, 230],
        [70, 210],
        [52, 185],
        [40, 160],
        [30, 140],
        [80, 150],
        [76, 110],
        [74, 85],
        [72, 62],
        [98, 145],
        [100, 100],
        [101, 72],
        [102, 48],
        [115, 150],
        [122, 108],
        [126, 82],
        [129, 60],
        [130, 160],
        [142, 128],
        [150, 108],
        [156, 90],
    ],
    np.float32,
)


def _with_conf(xy, conf=1.0):
    return np.concatenate([xy, np.full((len(xy), 1), conf, np.float32)], axis=1)


def opencv_skeleton(kp, layout, thickness, radius, conf_threshold=pf.DEFAULT_CONF_THRESHOLD):
    """The reference: OpenCV strokes in layout order, limb colour x 0.6, then joint discs."""
    img = np.zeros((H, W, 3), np.uint8)
    visible = kp[:, 2] >= conf_threshold
    pt = lambda j: (int(kp[j, 0]), int(kp[j, 1]))
    for (a, b), color in zip(layout.limbs, layout.limb_colors):
        if visible[a] and visible[b]:
            cv2.line(img, pt(a), pt(b), tuple(0.6 * c for c in color), thickness, cv2.LINE_AA)
    for j, color in enumerate(layout.joint_colors):
        if visible[j]:
            cv2.circle(img, pt(j), radius, tuple(float(c) for c in color), -1, cv2.LINE_AA)
    return img


render = jax.jit(
    pf.render_skeleton,
    static_argnames=(
        'layout',
        'height',
        'width',
        'thickness',
        'joint_radius',
        'conf_threshold',
        'conf_alpha',
    ),
)


def _iou(a, b):
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    'name,xy,layout',
    [
        ('openpose18', BODY18, sk.OPENPOSE18),
        ('body25', BODY25, sk.BODY25),
        ('hand21', HAND21, sk.HAND21),
    ],
)
@pytest.mark.parametrize('thickness', [4, 6])
def test_matches_opencv(name, xy, layout, thickness):
    kp = _with_conf(xy)
    radius = thickness // 2
    ours = np.asarray(render(kp, layout, thickness=thickness, joint_radius=radius))
    assert ours.shape == (H, W, 3) and ours.dtype == np.float32
    assert ours.min() >= 0 and ours.max() <= 1
    ref = opencv_skeleton(kp, layout, thickness, radius)
    ours8 = np.round(ours * 255).astype(np.uint8)
    # Non-black = any channel non-zero in 8 bits, for both images.
    iou = _iou(ours8.max(-1) > 0, ref.max(-1) > 0)
    assert iou >= 0.9, (name, thickness, iou)
    # Same colours and the same amount of ink, not just the same footprint.
    ref_f = ref.astype(np.float32) / 255
    assert abs(ours.sum() / ref_f.sum() - 1) < 0.06
    core = (ours.max(-1) > 0.5) & (ref_f.max(-1) > 0.5)
    assert np.abs(ours - ref_f)[core].mean() < 0.02


def test_low_confidence_joints_are_not_drawn():
    kp = _with_conf(BODY18)
    lw, le = sk.OPENPOSE18.index('left_wrist'), sk.OPENPOSE18.index('left_elbow')
    full = np.asarray(render(kp, sk.OPENPOSE18))
    kp_low = kp.copy()
    kp_low[lw, 2] = 0.1  # below the default threshold 0.3
    low = np.asarray(render(kp_low, sk.OPENPOSE18))
    x, y = BODY18[lw].astype(int)
    mx, my = ((BODY18[lw] + BODY18[le]) / 2).astype(int)
    assert full[y, x].max() > 0.9 and full[my, mx].max() > 0.5
    assert low[y - 4 : y + 5, x - 4 : x + 5].max() == 0  # the joint disc is gone
    assert low[my, mx].max() == 0  # and so is the forearm
    # Exactly the image of conf 0 (nothing of the joint leaks), and the rest is unchanged.
    kp_zero = kp.copy()
    kp_zero[lw, 2] = 0.0
    np.testing.assert_array_equal(low, np.asarray(render(kp_zero, sk.OPENPOSE18)))
    ref = opencv_skeleton(kp_low, sk.OPENPOSE18, 6, 3)
    ours8 = np.round(
        np.asarray(render(kp_low, sk.OPENPOSE18, thickness=6, joint_radius=3)) * 255
    ).astype(np.uint8)
    assert _iou(ours8.max(-1) > 0, ref.max(-1) > 0) >= 0.9
    # A lower threshold draws it again.
    again = np.asarray(render(kp_low, sk.OPENPOSE18, conf_threshold=0.05))
    np.testing.assert_array_equal(again, full)


@pytest.mark.slow
def test_batched_jit_and_vmap():
    rng = np.random.default_rng(0)
    kp = np.broadcast_to(_with_conf(HAND21), (2, 3, 21, 3)).copy()
    kp[..., :2] += rng.normal(scale=3.0, size=(2, 3, 21, 2))
    kp[..., 2] = rng.uniform(0.0, 1.0, size=(2, 3, 21))
    batched = np.asarray(render(kp, sk.HAND21))
    assert batched.shape == (2, 3, H, W, 3)
    vmapped = np.asarray(
        jax.jit(jax.vmap(jax.vmap(lambda k: pf.render_skeleton(k, sk.HAND21))))(kp)
    )
    np.testing.assert_allclose(vmapped, batched, atol=1e-6)
    np.testing.assert_allclose(np.asarray(render(kp[1, 2], sk.HAND21)), batched[1, 2], atol=1e-6)
    # The layout can be given by name; a wrong joint count fails loudly.
    np.testing.assert_allclose(
        np.asarray(pf.render_skeleton(kp[0, 0], 'hand21')), batched[0, 0], atol=1e-6
    )
    with pytest.raises(ValueError):
        pf.render_skeleton(kp[0, 0], sk.OPENPOSE18)


def test_confidence_alpha():
    kp = _with_conf(BODY18, 0.5)
    img = np.asarray(render(kp, sk.OPENPOSE18, conf_alpha=True))
    ref = np.asarray(render(_with_conf(BODY18), sk.OPENPOSE18))
    # Mid-thigh: one limb only, fully covered -> exactly half the opaque colour on black.
    x, y = ((BODY18[8] + BODY18[9]) / 2).astype(int)
    np.testing.assert_allclose(img[y, x], 0.5 * ref[y, x], atol=1e-6)
    assert ref[y, x].max() > 0.5


@pytest.mark.slow
def test_gradients_are_finite():
    """d image / d keypoints is finite everywhere, including on segments (integer keypoints put
    pixel centres exactly on bones), at coincident joints, and for noisy keypoints."""
    kp = _with_conf(BODY18)
    kp[15, :2] = kp[0, :2]  # a zero-length limb (nose -> left eye)
    weights = jnp.asarray(np.random.default_rng(1).uniform(size=(H, W, 3)).astype(np.float32))

    @jax.jit
    def grad(k):
        return jax.grad(lambda k: jnp.sum(weights * pf.render_skeleton(k, sk.OPENPOSE18)))(k)

    for noisy in (
        kp,
        kp
        + np.concatenate(
            [np.random.default_rng(2).normal(scale=2.0, size=(18, 2)), np.zeros((18, 1))], 1
        ).astype(np.float32),
    ):
        g = np.asarray(grad(noisy))
        assert np.isfinite(g).all()
        assert np.abs(g[:, :2]).sum(-1).min() > 0  # every joint moves the image
        assert (g[:, 2] == 0).all()  # the confidence gate is not differentiable


def test_gaussian_heatmaps():
    kp = np.array([[[40.0, 64.0, 0.7], [10.3, 20.6, 1.0], [100.0, 100.0, 0.2]]], np.float32)
    hm = np.asarray(
        jax.jit(pf.gaussian_heatmaps, static_argnames=('height', 'width', 'stride'))(
            kp, H, W, sigma=2.0, stride=1, conf_threshold=0.3
        )
    )
    assert hm.shape == (1, H, W, 3)
    assert np.unravel_index(hm[0, ..., 0].argmax(), (H, W)) == (64, 40)
    np.testing.assert_allclose(hm[0, 64, 40, 0], 0.7, rtol=1e-6)
    assert np.unravel_index(hm[0, ..., 1].argmax(), (H, W)) == (21, 10)  # nearest cell
    assert hm[0, ..., 2].max() == 0  # conf below threshold
    np.testing.assert_allclose(hm[0, 64, 42, 0], 0.7 * np.exp(-4 / 8), rtol=1e-5)
    # ViTPose-style 64 x 48 grid: cell = keypoint / stride, sigma in cells.
    hm4 = np.asarray(pf.gaussian_heatmaps(np.broadcast_to(kp, (2, 5, 3, 3)), H, W, stride=4))
    assert hm4.shape == (2, 5, 64, 48, 3)
    assert np.unravel_index(hm4[1, 4, ..., 0].argmax(), (64, 48)) == (16, 10)
    np.testing.assert_allclose(hm4[1, 4, 16, 10, 0], 0.7, rtol=1e-6)
    rgb3 = sk.Layout(
        name='rgb3',
        joints=('a', 'b', 'c'),
        limbs=(),
        flip=(0, 1, 2),
        joint_colors=((255, 0, 0), (0, 255, 0), (0, 0, 255)),
    )
    img = np.asarray(pf.heatmap_image(hm, rgb3))
    assert img.shape == (1, H, W, 3)
    np.testing.assert_allclose(img[0, 64, 40], [0.7, 0, 0], rtol=1e-6)


def test_keypoint_tokens():
    kp = np.array(
        [[96.0, 128.0, 0.9], [0.0, 0.0, 1.0], [192.0, 256.0, 0.5], [50.0, 60.0, 0.1]], np.float32
    )
    tok = np.asarray(pf.keypoint_tokens(kp, H, W, conf_threshold=0.3))
    np.testing.assert_allclose(
        tok, [[0, 0, 0.9], [-0.375, -0.5, 1.0], [0.375, 0.5, 0.5], [0, 0, 0]], atol=1e-7
    )
    # In the 256 x 192 view of a 256 crop these are HMR 2.0's units: crop pixel / 256 - 0.5.
    x256 = kp[:, 0] + 32
    np.testing.assert_allclose(tok[:3, 0], x256[:3] / 256 - 0.5, atol=1e-7)
    assert pf.keypoint_tokens(np.zeros((4, 2, 17, 3)), H, W).shape == (4, 2, 17, 3)


def test_normalize_image():
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=(2, 4, 5, 3)).astype(np.float32)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(
        np.asarray(pf.normalize_image(img)), (img - 255 * mean) / (255 * std), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(pf.normalize_image(img / 255, scale=1.0)),
        np.asarray(pf.normalize_image(img)),
        rtol=1e-5,
        atol=1e-5,
    )
