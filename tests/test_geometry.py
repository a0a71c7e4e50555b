"""Tests for extpose_jax.geometry.

SciPy's Rotation is the independent reference for rotations (it stores
quaternions as (x, y, z, w); ours are (w, x, y, z)).  Everything runs in fp32
JAX on CPU, so tolerances are fp32-sized.
"""

import functools
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.test_util import check_grads
from scipy.spatial.transform import Rotation

from extpose_jax import geometry as g

# Eager JAX compiles every primitive separately, which makes op-heavy tests
# slow on CPU; the numerical tests call jitted wrappers instead (the batching
# test below still checks eager == jit).
jg = SimpleNamespace(
    **{
        name: jax.jit(getattr(g, name))
        for name in (
            'axis_angle_to_matrix',
            'matrix_to_axis_angle',
            'axis_angle_to_quaternion',
            'quaternion_to_axis_angle',
            'quaternion_to_matrix',
            'matrix_to_quaternion',
            'rot6d_to_matrix',
            'matrix_to_rot6d',
            'perspective_projection',
            'cam_crop_to_translation',
            'cam_crop_to_full',
        )
    }
)

ATOL = 2e-5  # a few fp32 ulps on O(1) quantities


def _f32(x):
    return jnp.asarray(np.asarray(x, dtype=np.float32))


def _rotvecs(seed=0, n=200):
    """Random rotations plus the delicate cases: exactly 0, tiny, around the
    Taylor switch (|aa| = 1e-2), and close to / at pi."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(n, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    special = np.array(
        [
            1e-8,
            1e-6,
            1e-4,
            1e-3,
            9.999e-3,
            1e-2,
            1.0001e-2,
            3e-2,
            np.pi - 1e-2,
            np.pi - 1e-3,
            np.pi - 1e-4,
            np.pi,
        ]
    )
    generic = rng.uniform(0.0, np.pi, size=n - len(special) - 1)
    angles = np.concatenate([[0.0], special, generic])
    return axes * angles[:, None]


def _wxyz(r):
    q = r.as_quat()[..., [3, 0, 1, 2]]
    return np.where(q[..., :1] < 0, -q, q)


def _skew_generators():
    """G_k = d/dt expm(t skew(e_k)) at t = 0, written out by hand."""
    return np.array(
        [
            [[0, 0, 0], [0, 0, -1], [0, 1, 0]],
            [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
            [[0, -1, 0], [1, 0, 0], [0, 0, 0]],
        ],
        dtype=np.float32,
    )


def _assert_same_rotvec(actual, expected, atol):
    """At angle pi, aa and -aa are the same rotation, so accept either sign there."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.linalg.norm(actual - expected, axis=-1)
    near_pi = np.linalg.norm(expected, axis=-1) > np.pi - 1e-3
    err_flip = np.linalg.norm(actual + expected, axis=-1)
    err = np.where(near_pi, np.minimum(err, err_flip), err)
    assert err.max() < atol, err.max()


# --------------------------------------------------------------------------- rotations vs SciPy


def test_axis_angle_to_matrix_matches_scipy():
    aa = _rotvecs()
    expected = Rotation.from_rotvec(aa).as_matrix()
    np.testing.assert_allclose(jg.axis_angle_to_matrix(_f32(aa)), expected, atol=ATOL)


def test_matrix_to_axis_angle_matches_scipy():
    aa = _rotvecs(seed=1)
    R = Rotation.from_rotvec(aa).as_matrix()
    actual = jg.matrix_to_axis_angle(_f32(R))
    _assert_same_rotvec(actual, Rotation.from_matrix(R).as_rotvec(), atol=ATOL)
    assert np.all(np.linalg.norm(actual, axis=-1) <= np.pi + 1e-6)


def test_small_angle_matrix_to_axis_angle_keeps_relative_precision():
    # fp32 can't store 1 - theta^2/2 for theta = 1e-6, but the off-diagonals
    # still carry the rotation; the result must not collapse to zero.
    aa = np.array([[1e-6, -2e-6, 3e-6], [0.0, 0.0, 1e-7]])
    R = Rotation.from_rotvec(aa).as_matrix()
    np.testing.assert_allclose(jg.matrix_to_axis_angle(_f32(R)), aa, rtol=1e-3, atol=0)


def test_axis_angle_to_quaternion_matches_scipy():
    aa = _rotvecs(seed=2)
    np.testing.assert_allclose(
        jg.axis_angle_to_quaternion(_f32(aa)), _wxyz(Rotation.from_rotvec(aa)), atol=ATOL
    )


def test_quaternion_to_matrix_and_axis_angle_match_scipy_for_unnormalised_input():
    rng = np.random.default_rng(3)
    q_wxyz = rng.normal(size=(100, 4)) * rng.uniform(0.1, 10.0, size=(100, 1))
    r = Rotation.from_quat(q_wxyz[:, [1, 2, 3, 0]])  # SciPy normalises
    np.testing.assert_allclose(jg.quaternion_to_matrix(_f32(q_wxyz)), r.as_matrix(), atol=ATOL)
    np.testing.assert_allclose(jg.quaternion_to_axis_angle(_f32(q_wxyz)), r.as_rotvec(), atol=ATOL)


def test_matrix_to_quaternion_matches_scipy_up_to_sign():
    aa = _rotvecs(seed=4)
    r = Rotation.from_rotvec(aa)
    q = np.asarray(jg.matrix_to_quaternion(_f32(r.as_matrix())))
    expected = _wxyz(r)
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-6)
    # q and -q are the same rotation; |<q, q_ref>| = 1 is the sign-free check.
    np.testing.assert_allclose(np.abs(np.sum(q * expected, axis=-1)), 1.0, atol=1e-6)
    assert np.all(q[:, 0] >= 0)
    not_pi = np.linalg.norm(aa, axis=-1) < np.pi - 1e-3
    np.testing.assert_allclose(q[not_pi], expected[not_pi], atol=ATOL)


def test_matrix_to_quaternion_each_shepperd_branch():
    # Angle pi about each axis makes x, y, z in turn the largest component
    # (w = 0), so every pivot row is exercised, not just the trace one.
    for axis in np.eye(3):
        for angle in (np.pi, np.pi - 1e-3):
            r = Rotation.from_rotvec(axis * angle)
            q = np.asarray(jg.matrix_to_quaternion(_f32(r.as_matrix())))
            assert abs(np.dot(q, _wxyz(r))) == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------- round trips


def test_round_trips():
    aa = _rotvecs(seed=5)
    aa = aa[np.linalg.norm(aa, axis=-1) < np.pi - 1e-3]  # sign of aa is ambiguous at pi
    R = jg.axis_angle_to_matrix(_f32(aa))
    np.testing.assert_allclose(jg.matrix_to_axis_angle(R), aa, atol=ATOL)
    np.testing.assert_allclose(jg.quaternion_to_matrix(jg.matrix_to_quaternion(R)), R, atol=ATOL)
    np.testing.assert_allclose(jg.rot6d_to_matrix(jg.matrix_to_rot6d(R)), R, atol=ATOL)
    q = jg.axis_angle_to_quaternion(_f32(aa))
    np.testing.assert_allclose(jg.quaternion_to_axis_angle(q), aa, atol=ATOL)
    np.testing.assert_allclose(jg.matrix_to_quaternion(jg.quaternion_to_matrix(q)), q, atol=ATOL)


# --------------------------------------------------------------------------- 6D convention


def _gram_schmidt_columns(a1, a2):
    """HMR 2.0's construction written out by hand in float64."""
    b1 = a1 / np.linalg.norm(a1)
    u = a2 - np.dot(b1, a2) * b1
    b2 = u / np.linalg.norm(u)
    b3 = np.cross(b1, b2)
    return np.column_stack([b1, b2, b3])


def test_rot6d_is_contiguous_halves_as_columns():
    x = np.array([0.3, -1.2, 0.8, 0.9, 0.4, -0.5])
    R = np.asarray(jg.rot6d_to_matrix(_f32(x)))
    expected = _gram_schmidt_columns(x[0:3], x[3:6])
    np.testing.assert_allclose(R, expected, atol=ATOL)
    # Column layout: the first column points along a1, the first row does not.
    np.testing.assert_allclose(R[:, 0], x[0:3] / np.linalg.norm(x[0:3]), atol=ATOL)
    assert np.abs(R[0, :] - R[:, 0]).max() > 0.1
    # The SPIN (interleaved) split would give a clearly different rotation, so
    # a convention swap cannot pass this test.
    spin = _gram_schmidt_columns(x[0::2], x[1::2])
    assert np.abs(R - spin).max() > 0.1
    assert np.abs(R - expected.T).max() > 0.1


def test_matrix_to_rot6d_layout_and_inverse():
    R = Rotation.from_rotvec([0.4, -0.7, 1.1]).as_matrix()
    x = np.asarray(jg.matrix_to_rot6d(_f32(R)))
    np.testing.assert_allclose(x, np.concatenate([R[:, 0], R[:, 1]]), atol=1e-7)


def test_rot6d_outputs_proper_rotations_for_arbitrary_inputs():
    x = np.random.default_rng(6).normal(size=(500, 6)) * 3.0
    R = np.asarray(jg.rot6d_to_matrix(_f32(x)), dtype=np.float64)
    np.testing.assert_allclose(
        R.swapaxes(-1, -2) @ R, np.broadcast_to(np.eye(3), R.shape), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-5)
    np.testing.assert_allclose(R, [_gram_schmidt_columns(v[:3], v[3:]) for v in x], atol=1e-5)


def test_rot6d_normalisation_matches_torch_eps_semantics():
    # A first half shorter than eps = 1e-12 is divided by eps, not by its norm,
    # exactly like torch.nn.functional.normalize.
    a1 = np.array([1e-14, 0.0, 0.0], dtype=np.float32)
    x = np.concatenate([a1, [0.0, 1.0, 0.0]]).astype(np.float32)
    expected_b1 = torch.nn.functional.normalize(torch.from_numpy(a1), dim=-1).numpy()
    np.testing.assert_allclose(jg.rot6d_to_matrix(jnp.asarray(x))[:, 0], expected_b1, rtol=1e-5)


# --------------------------------------------------------------------------- gradients


def _all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(tree))


@functools.lru_cache(maxsize=None)  # one compile per function, not per call site
def _both_jacobians(fn):
    """Forward- and reverse-mode Jacobians in one compiled call (NaN guards can
    fail in one mode only, so both are checked)."""
    return jax.jit(lambda x: (jax.jacfwd(fn)(x), jax.jacrev(fn)(x)))


@pytest.mark.slow
def test_rodrigues_gradient_at_zero_is_the_skew_generator():
    zero = jnp.zeros(3, jnp.float32)
    generators = _skew_generators()
    for J in _both_jacobians(g.axis_angle_to_matrix)(zero):  # (3, 3, 3): dR_ij / d aa_k
        assert _all_finite(J)
        np.testing.assert_allclose(np.moveaxis(np.asarray(J), -1, 0), generators, atol=0)
    weights = jnp.arange(9.0).reshape(3, 3)
    loss = lambda aa: jnp.sum(weights * g.axis_angle_to_matrix(aa))  # noqa: E731
    grad, hess = jax.jit(lambda aa: (jax.grad(loss)(aa), jax.hessian(loss)(aa)))(zero)
    np.testing.assert_allclose(grad, np.einsum('kij,ij->k', generators, weights), atol=0)
    assert _all_finite(hess)
    # Just past the Taylor switch the closed form takes over smoothly.
    J_small, _ = _both_jacobians(g.axis_angle_to_matrix)(jnp.array([1e-5, 0.0, 0.0]))
    np.testing.assert_allclose(np.moveaxis(np.asarray(J_small), -1, 0), generators, atol=1e-4)


@pytest.mark.slow
def test_matrix_to_axis_angle_gradient_at_identity():
    jacobians = _both_jacobians(g.matrix_to_axis_angle)(jnp.eye(3))  # (3, 3, 3): d aa_k / dR_ij
    for J in jacobians:
        assert _all_finite(J)
        # Moving R along exp(t G_k) from I moves aa along e_k at unit speed.
        np.testing.assert_allclose(
            np.einsum('kij,mij->mk', J, _skew_generators()), np.eye(3), atol=1e-6
        )


@pytest.mark.parametrize(
    'fn, x',
    [
        (g.axis_angle_to_quaternion, np.zeros(3)),
        (g.quaternion_to_axis_angle, np.array([1.0, 0.0, 0.0, 0.0])),
        (g.quaternion_to_axis_angle, np.array([0.0, 1.0, 0.0, 0.0])),  # angle pi
        (g.matrix_to_quaternion, np.eye(3)),
        (g.matrix_to_axis_angle, np.diag([1.0, -1.0, -1.0])),  # angle pi
        (g.rot6d_to_matrix, np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])),  # identity
        (g.rot6d_to_matrix, np.array([0.3, -1.2, 0.8, 0.9, 0.4, -0.5])),
        (g.rot6d_to_matrix, np.array([1.0, 0.0, 0.0, 2.0, 0.0, 0.0])),  # a2 parallel to a1
    ],
)
def test_jacobians_finite_at_special_points(fn, x):
    assert _all_finite(_both_jacobians(fn)(_f32(x)))


@pytest.mark.parametrize(
    'fn, x',
    [
        (g.axis_angle_to_matrix, [0.4, -0.7, 1.1]),
        (g.axis_angle_to_matrix, [0.004, -0.007, 0.001]),  # Taylor branch
        (g.matrix_to_axis_angle, Rotation.from_rotvec([0.4, -0.7, 1.1]).as_matrix()),
        (g.matrix_to_quaternion, Rotation.from_rotvec([2.5, 1.0, -1.0]).as_matrix()),
        (g.quaternion_to_axis_angle, [0.9, 0.1, -0.3, 0.2]),
        (g.rot6d_to_matrix, [0.3, -1.2, 0.8, 0.9, 0.4, -0.5]),
    ],
)
def test_gradients_match_finite_differences(fn, x):
    # Reverse mode is what training uses; check_grads validates it against
    # central finite differences (fp32, hence the loose tolerance).
    check_grads(jax.jit(fn), (_f32(x),), order=1, modes=('rev',), atol=1e-2, rtol=1e-2, eps=1e-3)


# --------------------------------------------------------------------------- cameras


def test_perspective_projection_by_hand():
    points = np.array([[0.1, -0.2, 0.3], [-0.5, 0.4, -0.1], [0.0, 0.0, 0.0]])
    t = np.array([0.05, -0.1, 12.0])
    R = Rotation.from_rotvec([0.1, 0.2, -0.3]).as_matrix()
    focal, center = np.array([1000.0, 1100.0]), np.array([320.0, 240.0])
    cam = points @ R.T + t
    expected = np.stack(
        [
            focal[0] * cam[:, 0] / cam[:, 2] + center[0],
            focal[1] * cam[:, 1] / cam[:, 2] + center[1],
        ],
        axis=-1,
    )
    actual = jg.perspective_projection(
        _f32(points), _f32(t), _f32(focal), _f32(center), rotation=_f32(R)
    )
    np.testing.assert_allclose(actual, expected, atol=1e-3)
    # Scalar focal, no rotation.
    cam = points + t
    expected = 500.0 * cam[:, :2] / cam[:, 2:] + center
    np.testing.assert_allclose(
        jg.perspective_projection(_f32(points), _f32(t), 500.0, _f32(center)), expected, atol=1e-3
    )


def test_cam_crop_to_translation_by_hand():
    cam = np.array([[0.9, 0.1, -0.2], [1.5, 0.0, 0.3]])
    expected = np.stack([cam[:, 1], cam[:, 2], 2 * 5000.0 / (256.0 * cam[:, 0])], axis=-1)
    np.testing.assert_allclose(jg.cam_crop_to_translation(_f32(cam)), expected, rtol=1e-6)
    t = jg.cam_crop_to_translation(_f32(cam), focal_length=1000.0, crop_size=224.0)
    np.testing.assert_allclose(t[:, 2], 2 * 1000.0 / (224.0 * cam[:, 0]), rtol=1e-6)


def _crop_vs_full(points, cam, box_center, box_size, image_size):
    """Project with the crop camera, map crop pixels into the image through the
    box, and project with the full-image camera; return both."""
    crop_px = jg.perspective_projection(
        points, jg.cam_crop_to_translation(cam), 5000.0, jnp.full(2, 128.0)
    )
    via_crop = box_center[:, None, :] + (crop_px - 128.0) * (box_size / 256.0)[:, None, None]
    t_full, f_full = jg.cam_crop_to_full(cam, box_center, box_size, image_size)
    np.testing.assert_allclose(
        f_full, 5000.0 / 256.0 * np.max(np.asarray(image_size), axis=-1), rtol=1e-6
    )
    direct = jg.perspective_projection(points, t_full, f_full[:, None], image_size / 2.0)
    return np.asarray(via_crop), np.asarray(direct)


def test_cam_crop_to_full_agrees_with_crop_camera():
    rng = np.random.default_rng(7)
    n = 64
    image_size = np.where(rng.random((n, 1)) < 0.5, [1920.0, 1080.0], [720.0, 1280.0])  # (W, H)
    box_size = rng.uniform(80.0, 600.0, size=n)
    box_center = rng.uniform(0.1, 0.9, size=(n, 2)) * image_size
    cam = np.stack(
        [rng.uniform(0.5, 1.3, n), rng.uniform(-0.3, 0.3, n), rng.uniform(-0.3, 0.3, n)], axis=-1
    )
    # The identity is exact only on the model-frame plane z = 0: off that
    # plane the two cameras (different distance and optical axis) differ by a
    # perspective term, a few pixels for |z| <= 0.3 m in this setup.
    points = np.concatenate(
        [rng.uniform(-1.0, 1.0, size=(n, 30, 2)), np.zeros((n, 30, 1))], axis=-1
    )
    via_crop, direct = _crop_vs_full(*map(_f32, (points, cam, box_center, box_size, image_size)))
    assert np.abs(via_crop - direct).max() < 1e-3


def test_cam_crop_to_full_is_exact_at_all_depths_when_box_is_the_image():
    # Square image = box: both cameras coincide, so even z != 0 must agree.
    rng = np.random.default_rng(8)
    n, side = 8, 512.0
    image_size = np.full((n, 2), side)
    cam = np.stack(
        [rng.uniform(0.5, 1.3, n), rng.uniform(-0.3, 0.3, n), rng.uniform(-0.3, 0.3, n)], axis=-1
    )
    points = rng.uniform(-1.0, 1.0, size=(n, 30, 3))
    via_crop, direct = _crop_vs_full(
        _f32(points), _f32(cam), _f32(image_size / 2), _f32(np.full(n, side)), _f32(image_size)
    )
    assert np.abs(via_crop - direct).max() < 1e-3


# --------------------------------------------------------------------------- batching and jit

LEAD = (2, 3)
_rng = np.random.default_rng(9)
_R = Rotation.from_rotvec(_rng.normal(size=(6, 3))).as_matrix().reshape(LEAD + (3, 3))


@pytest.mark.slow
@pytest.mark.parametrize(
    'fn, args, out_shape',
    [
        (g.axis_angle_to_matrix, (_rng.normal(size=LEAD + (3,)),), LEAD + (3, 3)),
        (g.matrix_to_axis_angle, (_R,), LEAD + (3,)),
        (g.axis_angle_to_quaternion, (_rng.normal(size=LEAD + (3,)),), LEAD + (4,)),
        (g.quaternion_to_axis_angle, (_rng.normal(size=LEAD + (4,)),), LEAD + (3,)),
        (g.quaternion_to_matrix, (_rng.normal(size=LEAD + (4,)),), LEAD + (3, 3)),
        (g.matrix_to_quaternion, (_R,), LEAD + (4,)),
        (g.rot6d_to_matrix, (_rng.normal(size=LEAD + (6,)),), LEAD + (3, 3)),
        (g.matrix_to_rot6d, (_R,), LEAD + (6,)),
        (
            g.perspective_projection,
            (
                _rng.normal(size=LEAD + (5, 3)),
                _rng.normal(size=LEAD + (3,)) + [0, 0, 10],
                _rng.uniform(900, 1100, size=LEAD + (2,)),
                _rng.uniform(100, 200, size=LEAD + (2,)),
                _R,
            ),
            LEAD + (5, 2),
        ),
        (g.cam_crop_to_translation, (_rng.uniform(0.5, 1.5, size=LEAD + (3,)),), LEAD + (3,)),
    ],
)
def test_batched_shapes_and_jit(fn, args, out_shape):
    args = tuple(_f32(a) for a in args)
    eager = fn(*args)
    assert eager.shape == out_shape
    assert eager.dtype == jnp.float32
    np.testing.assert_allclose(jax.jit(fn)(*args), eager, atol=1e-5, rtol=1e-5)
    # Batching must be element-wise: the flattened batch gives the same answer.
    flat = jax.jit(fn)(*(a.reshape((6,) + a.shape[2:]) for a in args))
    np.testing.assert_allclose(flat.reshape(out_shape), eager, atol=1e-5, rtol=1e-5)


def test_cam_crop_to_full_batched_and_jit():
    cam = _f32(_rng.uniform(0.5, 1.5, size=LEAD + (3,)))
    center = _f32(_rng.uniform(100, 500, size=LEAD + (2,)))
    size = _f32(_rng.uniform(100, 300, size=LEAD))
    image = _f32(np.broadcast_to([640.0, 480.0], LEAD + (2,)))
    t, f = g.cam_crop_to_full(cam, center, size, image)
    assert t.shape == LEAD + (3,) and f.shape == LEAD
    t_jit, f_jit = jax.jit(g.cam_crop_to_full)(cam, center, size, image)
    np.testing.assert_allclose(t_jit, t, rtol=1e-6)
    np.testing.assert_allclose(f_jit, f, rtol=1e-6)
