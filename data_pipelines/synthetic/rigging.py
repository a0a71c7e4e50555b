"""Rigging a procedural mesh the way SMPL-family models are rigged.

Skinning weights, joint regressors and the pose blend shapes of a linear blend
skinning model, from a mesh whose vertices carry part tags and a skeleton
given as bones (one segment per joint: the part of the body that turns with
it).  Each construction mimics a property of the learned models that code
downstream relies on: weights are smooth along the surface and never jump
between parts that touch; regressor rows are convex combinations of vertices
around the joint (so the joints move with the surface); pose correctives stay
small and local to each joint.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.sparse

from data_pipelines.synthetic import mesh as pm


def _offsets_from_segment(P, a, b):
    """P minus its closest point on the segment a-b."""
    ba = b - a
    t = np.clip((P - a) @ ba / max(ba @ ba, 1e-12), 0.0, 1.0)
    return P - (a + t[:, None] * ba)


def smooth_field(F, X, iters):
    """Per-vertex values X averaged with their mesh neighbours ``iters`` times."""
    M = pm.adjacency(F, len(X))
    for _ in range(iters):
        X = 0.5 * X + 0.5 * (M @ X)
    return X


def skinning_weights(V, F, tags, bones, part_joints, iters, max_influences=4):
    """(V, K) weights.  Each vertex first belongs to the nearest bone among
    those that may drive its part (``part_joints``: tag -> joint ids), so
    parts that touch never take weight from each other; the one-hot labels
    are then diffused over the mesh graph (weights follow the surface), only
    the strongest few are kept (SMPL has a few per vertex), renormalised."""
    labels = np.zeros(len(V), dtype=np.int64)
    for part, joints in part_joints.items():
        ids = np.nonzero(tags == part)[0]
        if not len(ids):
            continue
        dist = np.stack(
            [np.linalg.norm(_offsets_from_segment(V[ids], *bones[j]), axis=1) for j in joints],
            axis=1,
        )
        labels[ids] = np.array(joints)[dist.argmin(axis=1)]
    W = np.zeros((len(V), len(bones)))
    W[np.arange(len(V)), labels] = 1.0
    W = smooth_field(F, W, iters)
    drop = np.argsort(W, axis=1)[:, :-max_influences]
    np.put_along_axis(W, drop, 0.0, axis=1)
    W[W < 1e-4] = 0.0
    return W / W.sum(axis=1, keepdims=True)


def joint_candidates(tags, part_joints, n_joints):
    """(K, V) masks: per joint, the vertices of the parts that joint drives."""
    masks = np.zeros((n_joints, len(tags)), bool)
    for part, joints in part_joints.items():
        for j in joints:
            masks[j] |= tags == part
    return masks


def _convex_weights(V, target, cand, smooth=1.0):
    """Convex weights w over the vertices ``cand`` with sum(w V) ~ target.

    Non-negative least squares on the stacked system [position residual
    (weighted so that 1 mm costs 1); sum-to-one (very stiff); small ridge
    term that spreads the weight over many vertices, like the real
    regressors].  Returns (ids, weights)."""
    A = V[cand].T
    n = len(cand)
    rows = np.vstack([1e3 * A, 1e4 * np.ones((1, n)), np.sqrt(smooth) * np.eye(n)])
    rhs = np.concatenate([1e3 * target, [1e4], np.zeros(n)])
    w, _ = scipy.optimize.nnls(rows, rhs, maxiter=50 * n)
    keep = w > 1e-5
    w = w[keep] / w[keep].sum()
    return cand[keep], w


def _surrounding_vertices(V, target, allowed, k):
    """The ``k`` allowed vertices nearest to ``target``, plus the nearest one
    in each of 14 directions so that the target lies inside their hull."""
    ids = np.nonzero(allowed)[0]
    d = V[ids] - target
    dist = np.linalg.norm(d, axis=1)
    chosen = set(ids[np.argsort(dist)[:k]].tolist())
    dirs = np.array(
        [[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
        + [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)],
        float,
    )
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    cosang = (d / np.maximum(dist[:, None], 1e-9)) @ dirs.T
    for i in range(len(dirs)):
        ok = cosang[:, i] > 0.8
        if ok.any():
            chosen.add(int(ids[ok][np.argmin(dist[ok])]))
    return np.array(sorted(chosen))


def regressor_rows(V, targets, allowed_masks, k=40, smooth=1.0):
    """(R, V) csr regressor: row r holds convex weights over about ``k``
    allowed vertices around targets[r] that reproduce it on V."""
    rows, cols, vals = [], [], []
    for r, (t, allowed) in enumerate(zip(targets, allowed_masks)):
        ids, w = _convex_weights(V, t, _surrounding_vertices(V, t, allowed, k), smooth)
        rows += [r] * len(ids)
        cols += ids.tolist()
        vals += w.tolist()
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(targets), len(V)))


def radial_offsets(V, W, bones):
    """Per vertex, the skinning-weighted offset from its bones' axes (points
    outwards, length = local limb / trunk radius): the direction in which
    girth-like shape modes move the surface."""
    out = np.zeros_like(V)
    for j, (a, b) in enumerate(bones):
        w = W[:, j]
        ids = np.nonzero(w)[0]
        if len(ids):
            out[ids] += w[ids, None] * _offsets_from_segment(V[ids], a, b)
    return out


def pose_correctives(V, N, W, J, parents, scale=0.08, bulge=0.006):
    """Pose blend shapes (V,3,9(K-1)): for each non-root joint j and each entry
    (a,b) of (R_j - I), a smooth offset confined to the region blended between
    j and its parent: a partial counter-rotation about the joint (keeps the
    blend region from collapsing) plus an outward bulge driven by the diagonal
    (trace(R - I) = 2(cos t - 1) < 0 for a bend of angle t).  A 90 degree bend
    moves vertices by a few millimetres to about a centimetre."""
    K = len(parents)
    P = np.zeros((len(V), 3, 9 * (K - 1)))
    for j in range(1, K):
        m = np.clip(4.0 * W[:, j] * W[:, parents[j]], 0.0, 1.0)
        rel = V - J[j]
        for a in range(3):
            for b in range(3):
                c = 9 * (j - 1) + 3 * a + b
                P[:, a, c] = -scale * m * rel[:, b]
                if a == b:
                    P[:, :, c] += -bulge * m[:, None] * N
    return P
