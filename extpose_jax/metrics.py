"""Evaluation metrics for 3D body and hand pose, in jax.numpy.

Conventions, for every function here:
- Units: distances come out in the units that went in. Feed metres and multiply by 1000 for
  mm. The only exception is `hmr2_3dpw_eval`, which reproduces HMR 2.0's numbers and so takes
  metres and returns mm. Thresholds (`f_score`) are in the input units.
- Shapes: points are (..., N, 3) with any leading batch dims; per-sample metrics return (...,).
  Averaging over a dataset is the caller's job (`jnp.nanmean` if masks may empty a sample).
- Masks: `valid` is a per-joint (..., N) bool/0-1 array. A masked metric averages over valid
  joints only; Procrustes is then fitted on valid joints only (and applied to all). A sample
  with no valid joint gives NaN.
- Everything is jit-able; Python-valued options (thresholds tuples, flags) must be static.

Protocols: HMR 2.0's 3DPW evaluation (4D-Humans eval.py), HaMeR's FreiHAND and HInt ones.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np

from extpose_jax.skeletons import HMR44_EVAL14, HMR44_PELVIS

FREIHAND_F_THRESHOLDS = (0.005, 0.015)  # metres: F@5mm, F@15mm
HINT_PCK_THRESHOLDS = (0.05, 0.1, 0.15)  # fractions of the hand box size

Root = Union[None, int, jnp.ndarray]  # see center()


# ----------------------------------------------------------------------------- helpers


def _float(x):
    """As a jax float array (integer pixel or index-valued inputs become float32)."""
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _safe_div(num, den):
    """num / den, NaN where den == 0."""
    ok = den > 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), jnp.nan)


def _weights(valid, like):
    """(..., N) float weights from an optional mask, broadcast to like[..., :, 0]."""
    shape = like.shape[:-1]
    if valid is None:
        return jnp.ones(shape, like.dtype)
    return jnp.broadcast_to(jnp.asarray(valid).astype(like.dtype), shape)


def _mean_dist(a, b, valid=None):
    a, b = jnp.broadcast_arrays(_float(a), _float(b))
    dist = jnp.linalg.norm(a - b, axis=-1)
    if valid is None:
        return dist.mean(-1)
    w = _weights(valid, a)
    return _safe_div((dist * w).sum(-1), w.sum(-1))


def center(points, root: Root):
    """Subtracts a root from (..., N, 3) points.

    root: None (points returned unchanged: already root-centred), an int (a joint index into
    `points` itself), or a (..., 3) position (e.g. the pelvis joint when `points` are vertices).
    """
    points = _float(points)
    if root is None:
        return points
    if isinstance(root, (int, np.integer)):
        return points - points[..., root : root + 1, :]
    return points - jnp.asarray(root)[..., None, :]


# ----------------------------------------------------------------------------- Procrustes


def similarity_transform(pred, gt, valid=None) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Least-squares similarity (scale, rotation, translation) taking pred onto gt.

    pred, gt: (..., N, 3). Returns scale (...,), rot (..., 3, 3) with det +1 (a reflection is
    never returned: the last singular direction is flipped when the best orthogonal map would
    be improper), trans (..., 3), such that  aligned = scale * pred @ rot.T + trans.
    With `valid`, only valid points enter the fit. Degenerate input (all fitted pred points
    equal) gives scale 0.
    """
    pred, gt = jnp.broadcast_arrays(_float(pred), _float(gt))
    w = _weights(valid, pred)[..., None]  # (..., N, 1)
    wsum = jnp.maximum(w.sum(-2, keepdims=True), jnp.finfo(pred.dtype).tiny)
    mu_p = (w * pred).sum(-2, keepdims=True) / wsum
    mu_g = (w * gt).sum(-2, keepdims=True) / wsum
    x, y = pred - mu_p, gt - mu_g
    cross = jnp.einsum('...ni,...nj->...ij', w * x, y)  # sum_n x_n y_n^T
    var = (w * x * x).sum((-2, -1))
    u, s, vt = jnp.linalg.svd(cross)
    # best orthogonal map is V U^T; if improper, flip the least significant direction
    d = jnp.where(jnp.linalg.det(u) * jnp.linalg.det(vt) < 0, -1.0, 1.0).astype(pred.dtype)
    z = jnp.concatenate([jnp.ones_like(s[..., :-1]), d[..., None]], -1)
    rot = jnp.einsum('...ji,...j,...kj->...ik', vt, z, u)  # V diag(z) U^T
    scale = jnp.where(var > 0, (s * z).sum(-1) / jnp.where(var > 0, var, 1), 0)
    rotated_mean = jnp.einsum('...ij,...j->...i', rot, mu_p[..., 0, :])
    trans = mu_g[..., 0, :] - scale[..., None] * rotated_mean
    return scale, rot, trans


def similarity_procrustes(pred, gt, valid=None):
    """pred (..., N, 3) aligned onto gt by the best scale + rotation + translation (see
    `similarity_transform`; with `valid`, fitted on valid points, applied to all)."""
    pred = _float(pred)
    scale, rot, trans = similarity_transform(pred, gt, valid)
    rotated = jnp.einsum('...ij,...nj->...ni', rot, pred)
    return scale[..., None, None] * rotated + trans[..., None, :]


# -------------------------------------------------------------------- joint and vertex errors


def mpjpe(pred, gt, valid=None, root: Optional[int] = None):
    """Mean per-joint position error, (...,). root: optional joint index both sets are
    centred on first (None: compared as given)."""
    return _mean_dist(center(pred, root), center(gt, root), valid)


def pa_mpjpe(pred, gt, valid=None):
    """MPJPE after similarity Procrustes alignment of pred onto gt, (...,)."""
    return _mean_dist(similarity_procrustes(pred, gt, valid), gt, valid)


def pve(pred_verts, gt_verts, pred_root, gt_root):
    """Per-vertex error (MPVPE) after root alignment, (...,).

    The root must be stated: pred_root / gt_root are (..., 3) root positions (usually the
    pelvis joint of each model's own joints) subtracted from the vertices, or both None when
    the vertices are already root-centred.
    """
    if (pred_root is None) != (gt_root is None):
        raise ValueError('give both roots or neither')
    return _mean_dist(center(pred_verts, pred_root), center(gt_verts, gt_root))


def pa_pve(pred_verts, gt_verts):
    """Per-vertex error after similarity Procrustes alignment of the vertices, (...,)."""
    return pa_mpjpe(pred_verts, gt_verts)


# ----------------------------------------------------------------------------- F-score (FreiHAND)


class FScore(NamedTuple):
    f: jnp.ndarray
    precision: jnp.ndarray  # fraction of pred points whose nearest gt point is within threshold
    recall: jnp.ndarray  # fraction of gt points whose nearest pred point is within threshold


def f_score(pred_verts, gt_verts, threshold, align: bool = False) -> FScore:
    """F-score between point sets pred (..., N, 3) and gt (..., M, 3).

    A point counts when its nearest neighbour in the other set is strictly closer than
    `threshold`; F = 2PR / (P + R), 0 when P + R = 0. `threshold` may be a scalar or an array
    of thresholds: results have shape (...) + threshold.shape, e.g. FREIHAND_F_THRESHOLDS
    for F@5mm and F@15mm on metres. align=True first aligns pred onto gt by similarity
    Procrustes, as the FreiHAND protocol does for meshes.
    Memory: builds the (..., N, M) distance matrix; chunk large batches.
    """
    pred, gt = _float(pred_verts), _float(gt_verts)
    if align:
        pred = similarity_procrustes(pred, gt)
    d2 = ((pred[..., :, None, :] - gt[..., None, :, :]) ** 2).sum(-1)  # (..., N, M)
    th = jnp.asarray(threshold, pred.dtype)
    th2 = th * th

    def fraction(nearest):  # (..., K) -> (...) + th.shape
        near = nearest.reshape(nearest.shape + (1,) * th.ndim) < th2
        return near.astype(pred.dtype).mean(nearest.ndim - 1)

    precision = fraction(d2.min(-1))
    recall = fraction(d2.min(-2))
    total = precision + recall
    f = jnp.where(total > 0, 2 * precision * recall / jnp.where(total > 0, total, 1), 0)
    return FScore(f, precision, recall)


# ----------------------------------------------------------------------------- PCK (HInt)


def pck_counts(
    pred2d,
    gt2d,
    gt_conf,
    box_size,
    thresholds: Sequence[float] = HINT_PCK_THRESHOLDS,
    conf_threshold: float = 0.5,
):
    """Per-joint counts for PCK, summed over all leading dims (for accumulating over batches).

    pred2d, gt2d: (..., J, 2) pixels (gt may carry extra channels, only x, y are read);
    gt_conf: (..., J); box_size: (...,) pixels. Returns (correct (T, J), counted (J,)): a joint
    is counted when gt_conf > conf_threshold and correct when also its distance is strictly
    below t * box_size.
    """
    pred2d, gt2d = _float(pred2d), _float(gt2d)
    dist = jnp.linalg.norm(pred2d[..., :2] - gt2d[..., :2], axis=-1)  # (..., J)
    counted = jnp.asarray(gt_conf) > conf_threshold
    box = jnp.asarray(box_size, dist.dtype)[..., None]
    n_joints = dist.shape[-1]
    counted_flat = counted.reshape(-1, n_joints)
    correct = jnp.stack(
        [((dist < t * box) & counted).reshape(-1, n_joints).sum(0) for t in thresholds]
    )
    return correct, counted_flat.sum(0)


def pck_from_counts(correct, counted, thresholds: Sequence[float] = HINT_PCK_THRESHOLDS) -> dict:
    """kpAvg PCK: per-joint PCK (correct / counted over samples), averaged over the joints that
    were counted at least once. Returns {threshold: scalar} (NaN if no joint was counted)."""
    per_joint = _safe_div(correct.astype(jnp.float32), counted.astype(jnp.float32))  # (T, J)
    present = counted > 0
    avg = _safe_div(jnp.where(present, per_joint, 0).sum(-1), present.sum().astype(jnp.float32))
    return {float(t): avg[i] for i, t in enumerate(thresholds)}


def pck(
    pred2d,
    gt2d,
    gt_conf,
    box_size,
    thresholds: Sequence[float] = HINT_PCK_THRESHOLDS,
    conf_threshold: float = 0.5,
) -> dict:
    """HInt PCK (HaMeR protocol): {t: kpAvg PCK} over all samples of the batch.

    box_size is the max side of the original hand box in pixels (not the expanded crop), with
    pred2d / gt2d in the same pixels. See pck_counts / pck_from_counts for the details and for
    accumulating over several batches.
    """
    correct, counted = pck_counts(pred2d, gt2d, gt_conf, box_size, thresholds, conf_threshold)
    return pck_from_counts(correct, counted, thresholds)


# ----------------------------------------------------------------------------- acceleration (video)


def _second_difference(x):
    return x[..., :-2, :, :] - 2 * x[..., 1:-1, :, :] + x[..., 2:, :, :]


def accel_error_per_frame(pred, gt, valid=None):
    """Per-frame acceleration error for (..., T, J, 3) sequences.

    Returns (err (..., T-2), frame_valid (..., T-2)): err[t-1] is the mean over joints of
    |(x[t-1] - 2x[t] + x[t+1])_pred - (same)_gt|, in input units per frame^2; with a frame
    mask `valid` (..., T) it counts only when frames t-1, t, t+1 are all valid.
    """
    pred, gt = _float(pred), _float(gt)
    err = jnp.linalg.norm(_second_difference(pred) - _second_difference(gt), axis=-1).mean(-1)
    if valid is None:
        frame_valid = jnp.ones(err.shape, bool)
    else:
        v = jnp.broadcast_to(jnp.asarray(valid).astype(bool), pred.shape[:-2])
        frame_valid = v[..., :-2] & v[..., 1:-1] & v[..., 2:]
    return err, frame_valid


def accel_error(pred, gt, valid=None):
    """Acceleration error (3DPW video protocol): accel_error_per_frame averaged over the
    counted frames of each sequence, (...,). NaN for a sequence without a counted frame."""
    err, frame_valid = accel_error_per_frame(pred, gt, valid)
    return _safe_div(jnp.where(frame_valid, err, 0).sum(-1), frame_valid.sum(-1).astype(err.dtype))


# ----------------------------------------------------------------------------- HMR 2.0 protocol


def hmr2_3dpw_eval(pred44, gt44, valid=None) -> dict:
    """HMR 2.0's 3DPW / H36M evaluation (4D-Humans eval.py, pose_utils.Evaluator).

    pred44, gt44: (..., 44, C >= 3) HMR 2.0 keypoints in metres (a 4th confidence channel is
    ignored). Both sets are centred on the pelvis (joint 39), the 14 HMR44_EVAL14 joints are
    scored. valid (..., 44): optional, joints outside it neither count nor enter the Procrustes
    fit (the caller decides what an unlabelled pelvis means). Returns {'mpjpe': (...,),
    'pa_mpjpe': (...,)} in mm.
    """
    pred = center(_float(pred44)[..., :3], HMR44_PELVIS)[..., HMR44_EVAL14, :]
    gt = center(_float(gt44)[..., :3], HMR44_PELVIS)[..., HMR44_EVAL14, :]
    if valid is not None:
        valid = jnp.asarray(valid)[..., HMR44_EVAL14]
    return {
        'mpjpe': 1000.0 * mpjpe(pred, gt, valid),
        'pa_mpjpe': 1000.0 * pa_mpjpe(pred, gt, valid),
    }


__all__ = [
    'FREIHAND_F_THRESHOLDS',
    'HINT_PCK_THRESHOLDS',
    'center',
    'similarity_transform',
    'similarity_procrustes',
    'mpjpe',
    'pa_mpjpe',
    'pve',
    'pa_pve',
    'FScore',
    'f_score',
    'pck_counts',
    'pck_from_counts',
    'pck',
    'accel_error_per_frame',
    'accel_error',
    'hmr2_3dpw_eval',
]
