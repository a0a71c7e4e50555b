"""Metrics against independent float64 references and hand-made cases with known answers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.transform import Rotation

from extpose_jax import metrics as M
from extpose_jax import skeletons as sk

# ----------------------------------------------------------------------------- references


def _ref_aligned(pred, gt):
    """Scaled Kabsch in float64 via scipy's proper-rotation fit (Rotation.align_vectors)."""
    pred, gt = np.asarray(pred, np.float64), np.asarray(gt, np.float64)
    mp, mg = pred.mean(0), gt.mean(0)
    pc, gc = pred - mp, gt - mg
    rot = Rotation.align_vectors(gc, pc)[0].as_matrix()  # minimises sum |gc - rot pc|^2
    rotated = pc @ rot.T
    scale = (gc * rotated).sum() / (pc * pc).sum()
    return scale * rotated + mg


def _ref_pa_mpjpe(pred, gt):
    return np.linalg.norm(_ref_aligned(pred, gt) - gt, axis=-1).mean()


def _random_rotation(rng):
    return Rotation.random(random_state=rng.integers(1 << 31)).as_matrix()


def _mirror_case(rng, n=14):
    pred = rng.normal(size=(n, 3))
    gt = pred * np.array([-1.0, 1.0, 1.0]) @ _random_rotation(rng).T * 1.3 + rng.normal(size=3)
    return pred, gt + 0.05 * rng.normal(size=gt.shape)


# ----------------------------------------------------------------------------- Procrustes


def test_pa_mpjpe_matches_scipy_reference_including_reflections():
    rng = np.random.default_rng(0)
    preds, gts, n_improper = [], [], 0
    for i in range(24):
        if i % 2:
            pred, gt = _mirror_case(rng)
            r, _ = orthogonal_procrustes(pred - pred.mean(0), gt - gt.mean(0))
            n_improper += np.linalg.det(r) < 0  # the unconstrained optimum is a reflection
        else:
            pred, gt = rng.normal(size=(14, 3)), rng.normal(size=(14, 3))
        preds.append(pred)
        gts.append(gt)
    preds, gts = np.stack(preds), np.stack(gts)
    assert n_improper == 12
    got = np.asarray(M.pa_mpjpe(jnp.asarray(preds, jnp.float32), jnp.asarray(gts, jnp.float32)))
    want = np.array([_ref_pa_mpjpe(p, g) for p, g in zip(preds, gts)])
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
    # aligned points, too, and the rotation is always proper
    aligned = M.similarity_procrustes(preds.astype(np.float32), gts.astype(np.float32))
    np.testing.assert_allclose(
        aligned, np.stack([_ref_aligned(p, g) for p, g in zip(preds, gts)]), atol=2e-4
    )
    _, rot, _ = M.similarity_transform(preds.astype(np.float32), gts.astype(np.float32))
    np.testing.assert_allclose(np.linalg.det(np.asarray(rot, np.float64)), 1.0, atol=1e-5)


def test_procrustes_recovers_a_known_similarity():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(4, 21, 3)).astype(np.float32)
    rots = np.stack([_random_rotation(rng) for _ in range(4)])
    scales = np.array([0.5, 1.0, 2.0, 7.0])
    trans = rng.normal(size=(4, 3)) * 3
    gt = scales[:, None, None] * np.einsum('bij,bnj->bni', rots, pred) + trans[:, None]
    gt = gt.astype(np.float32)
    s, r, t = M.similarity_transform(pred, gt)
    np.testing.assert_allclose(s, scales, rtol=1e-5)
    np.testing.assert_allclose(r, rots, atol=1e-5)
    np.testing.assert_allclose(t, trans, atol=1e-4)
    np.testing.assert_allclose(M.similarity_procrustes(pred, gt), gt, atol=1e-4)
    assert float(jnp.max(M.pa_mpjpe(pred, gt))) < 1e-4
    assert float(jnp.max(M.pa_pve(pred, gt))) < 1e-4


def test_masked_procrustes_ignores_invalid_joints():
    rng = np.random.default_rng(2)
    pred, gt = _mirror_case(rng, n=10)
    valid = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], bool)
    gt_bad = gt.copy()
    gt_bad[~valid] += 100.0  # garbage where invalid
    got = M.pa_mpjpe(pred.astype(np.float32), gt_bad.astype(np.float32), valid=valid)
    np.testing.assert_allclose(got, _ref_pa_mpjpe(pred[valid], gt[valid]), rtol=2e-4)
    # the transform fitted on valid joints is applied to all joints
    s, r, t = M.similarity_transform(pred, gt_bad, valid)
    aligned = M.similarity_procrustes(pred, gt_bad, valid)
    np.testing.assert_allclose(aligned, s * pred @ np.asarray(r).T + t, atol=1e-4)
    np.testing.assert_allclose(aligned[valid], _ref_aligned(pred[valid], gt[valid]), atol=2e-4)
    assert np.isnan(float(M.pa_mpjpe(pred, gt, valid=np.zeros(10, bool))))


# ----------------------------------------------------------------------------- MPJPE / PVE


def test_mpjpe_hand_made():
    gt = np.zeros((3, 3), np.float32)
    pred = gt.copy()
    pred[0] = [3.0, 4.0, 0.0]  # 5 units off
    pred[1] = [0.0, 0.0, 2.0]  # 2 units off
    assert float(M.mpjpe(pred, gt)) == pytest.approx(7 / 3)
    assert float(M.mpjpe(pred, gt, valid=[False, True, True])) == pytest.approx(1.0)
    # centring both on joint 2 (which is exact) changes nothing; on joint 0 it does
    assert float(M.mpjpe(pred, gt, root=2)) == pytest.approx(7 / 3)
    assert float(M.mpjpe(pred, gt, root=0)) == pytest.approx((0 + np.sqrt(9 + 16 + 4) + 5) / 3)
    assert float(M.mpjpe(pred + 100, gt + 7, root=np.int64(2))) == pytest.approx(7 / 3)


def test_pve_needs_explicit_roots():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(2, 50, 3)).astype(np.float32)
    pred = gt + np.array([1.0, 2.0, 3.0], np.float32)
    pred[:, 0] += [0.0, 0.0, 5.0]
    pred_root = np.array([[1.0, 2.0, 3.0]] * 2, np.float32)
    np.testing.assert_allclose(
        M.pve(pred, gt, pred_root, np.zeros((2, 3), np.float32)), [5 / 50] * 2, rtol=1e-5
    )
    np.testing.assert_allclose(
        M.pve(pred - pred_root[:, None], gt, None, None), [5 / 50] * 2, rtol=1e-5
    )
    with pytest.raises(ValueError):
        M.pve(pred, gt, pred_root, None)
    with pytest.raises(TypeError):
        M.pve(pred, gt)  # the roots are not optional


# ----------------------------------------------------------------------------- F-score


def _f_case():
    pred = np.array([[0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0]], np.float32)
    gt = np.array(
        [
            [0.5, 0, 0],
            [10.5, 0, 0],
            [20, 0.9, 0],
            [31, 0, 0],  # (31,0,0): exactly 1 away
            [100, 0, 0],
            [200, 0, 0],
        ],
        np.float32,
    )
    return pred, gt


def test_f_score_known_fractions():
    pred, gt = _f_case()
    res = M.f_score(pred, gt, 1.0)
    assert float(res.precision) == pytest.approx(3 / 4)  # 3 of 4 pred points within 1
    assert float(res.recall) == pytest.approx(3 / 6)  # 3 of 6 gt points (distance 1 is out)
    assert float(res.f) == pytest.approx(2 * 0.75 * 0.5 / 1.25)
    # several thresholds at once: a trailing axis
    many = M.f_score(pred, gt, jnp.array([0.1, 1.0, 1.5, 1000.0]))
    np.testing.assert_allclose(many.precision, [0, 3 / 4, 1, 1])
    np.testing.assert_allclose(many.recall, [0, 3 / 6, 4 / 6, 1])
    np.testing.assert_allclose(many.f, [0, 0.6, 2 * (4 / 6) / (1 + 4 / 6), 1], rtol=1e-6)


@pytest.mark.slow
def test_f_score_with_alignment():
    rng = np.random.default_rng(4)
    pred = rng.normal(size=(3, 40, 3)).astype(np.float32) * 0.05
    rot = _random_rotation(rng)
    gt = (1.5 * pred @ rot.T + 0.2).astype(np.float32)
    assert float(M.f_score(pred, gt, 0.005).f.max()) < 1.0
    res = M.f_score(pred, gt, M.FREIHAND_F_THRESHOLDS, align=True)
    assert res.f.shape == (3, 2)
    np.testing.assert_allclose(res.f, 1.0)


# ----------------------------------------------------------------------------- PCK


def _pck_case():
    # 2 samples, 4 joints; boxes 100 and 200 px -> pixel thresholds (5,10,15) and (10,20,30)
    gt = np.zeros((2, 4, 2), np.float32)
    pred = np.zeros((2, 4, 2), np.float32)
    pred[0, 0] = [4, 0]  # right at every threshold
    pred[0, 1] = [0, 12]  # right at 0.15 only
    pred[0, 2] = [0, 0]  # perfect, but conf exactly 0.5: not counted
    pred[1, 0] = [15, 20]  # 25 px: right at 0.15 only
    pred[1, 1] = [3, 4]  # 5 px: right everywhere
    pred[1, 2] = [30, 40]  # 50 px: always wrong
    conf = np.array([[1.0, 0.9, 0.5, 0.0], [0.8, 0.6, 0.9, 0.1]], np.float32)  # joint 3 never
    box = np.array([100.0, 200.0], np.float32)
    return pred, gt, conf, box


def test_pck_hand_made():
    pred, gt, conf, box = _pck_case()
    res = M.pck(pred, gt, conf, box)
    assert sorted(res) == [0.05, 0.1, 0.15]
    # per joint: @0.05 (1/2, 1/2, 0), @0.1 (1/2, 1/2, 0), @0.15 (1, 1, 0); joint 3 left out
    assert float(res[0.05]) == pytest.approx(1 / 3)
    assert float(res[0.1]) == pytest.approx(1 / 3)
    assert float(res[0.15]) == pytest.approx(2 / 3)
    # counts accumulate over batches to the same answer
    c0, n0 = M.pck_counts(pred[:1], gt[:1], conf[:1], box[:1])
    c1, n1 = M.pck_counts(pred[1:], gt[1:], conf[1:], box[1:])
    np.testing.assert_array_equal(n0 + n1, [2, 2, 1, 0])
    acc = M.pck_from_counts(c0 + c1, n0 + n1)
    for t in res:
        assert float(acc[t]) == pytest.approx(float(res[t]))
    # gt with a confidence channel and other thresholds
    gt3 = np.concatenate([gt, conf[..., None]], -1)
    other = M.pck(pred, gt3, conf, box, thresholds=(0.2,), conf_threshold=0.05)
    # joint 3 of sample 1 (conf 0.1) is now counted and exact; joint 2 of sample 0 too
    assert float(other[0.2]) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert np.isnan(float(M.pck(pred, gt, conf * 0, box)[0.05]))


# ----------------------------------------------------------------------------- acceleration


def test_accel_constant_velocity_is_zero():
    rng = np.random.default_rng(5)
    t = np.arange(10, dtype=np.float32)[:, None, None]
    a, b = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5, 3))
    pred = (a[0] + b[0] * t).astype(np.float32)
    gt = (a[1] + b[1] * t).astype(np.float32)
    assert float(M.accel_error(pred, gt)) == pytest.approx(0.0, abs=1e-5)


def test_accel_quadratic_motion_analytic():
    t = np.arange(8, dtype=np.float32)[:, None, None]
    dirs = np.array([[1.0, 2.0, 2.0], [0.0, 0.0, 0.5]], np.float32)  # accel 2*dir: norms 6, 1
    pred = dirs * t**2 + 3.0
    gt = np.zeros_like(pred) + 1.0
    err, fv = M.accel_error_per_frame(pred, gt)
    assert err.shape == (6,) and bool(fv.all())
    np.testing.assert_allclose(err, 3.5, rtol=1e-6)
    assert float(M.accel_error(pred, gt)) == pytest.approx(3.5)


def test_accel_frame_validity():
    t = np.arange(7, dtype=np.float32)[:, None, None]
    pred = np.array([0.0, 0.0, 1.0], np.float32) * t**3  # second difference at t: 6t
    gt = np.zeros_like(pred)
    valid = np.array([1, 1, 1, 0, 1, 1, 1], bool)
    err, fv = M.accel_error_per_frame(pred, gt, valid)
    np.testing.assert_allclose(err, 6 * np.arange(1, 6), rtol=1e-6)
    np.testing.assert_array_equal(fv, [True, False, False, False, True])
    assert float(M.accel_error(pred, gt, valid)) == pytest.approx((6 + 30) / 2)
    assert np.isnan(float(M.accel_error(pred, gt, np.zeros(7, bool))))


# ----------------------------------------------------------------------------- HMR 2.0 protocol


def test_hmr2_3dpw_eval_hand_made():
    rng = np.random.default_rng(6)
    gt = rng.normal(size=(44, 3)).astype(np.float32)
    pred = gt + np.array([1.0, 2.0, 3.0], np.float32)  # pure translation: both errors 0
    res = M.hmr2_3dpw_eval(pred, gt)
    assert float(res['mpjpe']) == pytest.approx(0, abs=1e-3)
    assert float(res['pa_mpjpe']) == pytest.approx(0, abs=1e-3)
    moved = pred.copy()
    moved[0] += 5.0  # nose is not scored
    moved[25] += [0.03, 0.04, 0.0]  # R ankle (LSP): 5 cm
    res = M.hmr2_3dpw_eval(moved, gt)
    assert float(res['mpjpe']) == pytest.approx(50 / 14, rel=1e-3)
    moved = pred.copy()
    moved[sk.HMR44_PELVIS] += [0.0, 0.0, 0.1]  # the root moves: every scored joint 10 cm
    res = M.hmr2_3dpw_eval(moved, np.concatenate([gt, np.ones((44, 1), np.float32)], -1))
    assert float(res['mpjpe']) == pytest.approx(100, rel=1e-4)
    assert float(res['pa_mpjpe']) == pytest.approx(0, abs=1e-3)
    # PA-MPJPE equals the float64 reference on the 14 pelvis-centred joints
    noisy = gt + 0.02 * rng.normal(size=gt.shape).astype(np.float32)
    res = M.hmr2_3dpw_eval(noisy, gt)
    idx = sk.HMR44_EVAL14
    p14 = (noisy - noisy[39])[idx]
    g14 = (gt - gt[39])[idx]
    assert float(res['pa_mpjpe']) == pytest.approx(1000 * _ref_pa_mpjpe(p14, g14), rel=1e-3)
    assert float(res['mpjpe']) == pytest.approx(
        1000 * np.linalg.norm(p14 - g14, axis=-1).mean(), rel=1e-4
    )


# ----------------------------------------------------------------------------- jit and batching


@pytest.mark.slow
def test_jit_and_batched_shapes():
    rng = np.random.default_rng(7)
    b = (2, 3)
    p44, g44 = (rng.normal(size=b + (44, 3)).astype(np.float32) for _ in range(2))
    valid = rng.random(b + (44,)) > 0.2
    for fn, args in [
        (M.mpjpe, (p44, g44, valid)),
        (M.pa_mpjpe, (p44, g44, valid)),
        (M.pa_pve, (p44, g44)),
        (lambda p, g: M.pve(p, g, p[..., 0, :], g[..., 0, :]), (p44, g44)),
    ]:
        batched = jax.jit(fn)(*args)
        assert batched.shape == b
        looped = np.array(
            [[float(fn(*(a[i, j] for a in args))) for j in range(3)] for i in range(2)]
        )
        np.testing.assert_allclose(batched, looped, rtol=1e-5)
    res = jax.jit(M.hmr2_3dpw_eval)(p44, g44)
    assert res['mpjpe'].shape == b and res['pa_mpjpe'].shape == b
    fs = jax.jit(functools.partial(M.f_score, threshold=0.5, align=True))(p44, g44)
    assert fs.f.shape == b
    np.testing.assert_allclose(
        fs.f[1, 2], M.f_score(p44[1, 2], g44[1, 2], 0.5, align=True).f, rtol=1e-6
    )
    seq = rng.normal(size=b + (9, 5, 3)).astype(np.float32)
    acc = jax.jit(M.accel_error)(seq, seq * 0.5, np.ones(b + (9,), bool))
    assert acc.shape == b
    np.testing.assert_allclose(acc[0, 1], M.accel_error(seq[0, 1], seq[0, 1] * 0.5), rtol=1e-6)
    pred, gt, conf, box = _pck_case()
    jitted = jax.jit(functools.partial(M.pck, thresholds=(0.05, 0.15)))(pred, gt, conf, box)
    assert float(jitted[0.15]) == pytest.approx(2 / 3)
    s, r, t = jax.jit(M.similarity_transform)(p44, g44)
    assert s.shape == b and r.shape == b + (3, 3) and t.shape == b + (3,)
