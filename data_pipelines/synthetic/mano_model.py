"""The procedural MANO right hand: its topology and vertex ids (decided once on a canonical hand),
rigging, shape blend shapes and pose prior, and the model dict (make_mano); bodies.py's recipe
(module docstring there) applied to the hand, with the wrist cap left open.

Only numpy and scipy are used; the result is a deterministic function of the seed.
"""

from __future__ import annotations

import functools

import numpy as np

from data_pipelines.synthetic import anatomy, rigging
from data_pipelines.synthetic import mesh as pm
from data_pipelines.synthetic.anatomy import FINGERS, MANO_PARENTS
from data_pipelines.synthetic.bodies import (
    FREIHAND_TIP_IDS,
    MANO_NUM_VERTS,
    MANO_VERTEX_IDS,
    _fingertips,
    _kintree,
)

# --------------------------------------------------------------------------
# Topology and vertex ids
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _mano_topology():
    """Fixed MANO topology: faces, splits, wrist loop, vertex order, tags."""
    V, Q, qtags = anatomy.hand_quads(1.0)
    F = pm.triangulate(V, Q)
    tags = pm.vertex_tags(Q, qtags, len(V))
    rim = pm.boundary_vertices(F)
    F, splits = pm.plan_splits(V, F, MANO_NUM_VERTS - len(V), frozen=rim)
    tags = np.concatenate([tags, [tags[a] for a, _ in splits]])
    V = _fit_mano(pm.apply_splits(V, splits), F, rim, 1.0)
    picks = _fingertips(V, tags, 'R', anatomy.mano_frame(), 1.0)
    wanted = {MANO_VERTEX_IDS[k]: v for k, v in picks.items()}
    # FreiHAND's ring / pinky tips: the nearest neighbour of the smplx tip.
    e = pm.edges(F)
    for finger, fid in FREIHAND_TIP_IDS.items():
        t = picks[finger]
        nb = np.r_[e[e[:, 0] == t, 1], e[e[:, 1] == t, 0]]
        wanted[fid] = nb[np.argmin(np.linalg.norm(V[nb] - V[t], axis=1))]
    order, inverse = pm.permutation(len(V), wanted)
    return {
        'splits': splits,
        'faces_old': F,
        'rim': rim,
        'order': order,
        'faces': inverse[F].astype(np.uint32),
        'tags': tags[order],
    }


def _fit_mano(V, F, rim, scale):
    # the wrist loop stays in its cutting plane while the rest is fitted
    plane = (V[rim].mean(axis=0), np.array([1.0, 0.0, 0.0]), rim)
    return pm.fit_to_sdf(V, F, anatomy.hand_sdf(scale), fixed_plane=plane)


def _mano_template(scale):
    topo = _mano_topology()
    V, _, _ = anatomy.hand_quads(scale)
    V = _fit_mano(pm.apply_splits(V, topo['splits']), topo['faces_old'], topo['rim'], scale)
    return V[topo['order']]


# --------------------------------------------------------------------------
# Rigging, blend shapes, pose prior, the model dict
# --------------------------------------------------------------------------


def _mano_bones(J, tips_world):
    bones = [(J[0], J[4])]  # wrist: to the middle knuckle
    for f in range(5):
        chain = anatomy.finger_chain(J, tips_world, f)
        bones += [(chain[k], chain[k + 1]) for k in range(3)]
    # MANO order: wrist, index, middle, pinky, ring, thumb (FINGERS order)
    return bones


def _mano_part_joints():
    palm = [0, 1, 4, 7, 10, 13]
    parts = {'R_palm': palm, 'R_palm_tip': palm, 'R_thumb_base': [0, 13, 14]}
    for f, finger in enumerate(FINGERS):
        parts['R_' + finger] = [0] + [1 + 3 * f + k for k in range(3)]
    return parts


def _hand_pose_prior(rng, n):
    """Synthetic hand poses (n, 45) for the PCA stand-ins: a shared grasp
    factor curls all fingers, per-finger curls, spread, thumb opposition, a
    little noise on every joint.  Flexion is about +z in MANO's frame (the
    fingers point along -x and curl towards the palm at -y)."""
    grasp = rng.standard_normal(n)[:, None]
    curl = rng.standard_normal((n, 5))
    spread = rng.standard_normal(n)[:, None]
    P = 0.05 * rng.standard_normal((n, 15, 3))
    for f in range(4):
        for k in range(3):
            P[:, 3 * f + k, 2] += 0.30 + 0.35 * grasp[:, 0] + 0.25 * curl[:, f] * (1 + 0.3 * k)
        # spread fans the knuckles (about y) by their place across the hand
        P[:, 3 * f, 1] += 0.08 * spread[:, 0] * (1.0, 0.0, -2.0, -1.0)[f]
    for k in range(3):  # thumb: opposition about x, flexion about -y
        P[:, 12 + k, 0] += 0.20 * grasp[:, 0] + 0.15 * curl[:, 4]
        P[:, 12 + k, 1] += -0.15 - 0.2 * grasp[:, 0] * (k + 1) / 3
    return P.reshape(n, 45)


def _mano_shapedirs(V, F, W, J, tips_world, num_betas, seed):
    """Hand shape modes: 0 size, 1 finger length, 2 palm width, 3 thickness,
    4 finger girth, 5 thumb length, 6 palm length, then smooth random
    part-wise mixtures."""
    wrist = J[0]
    fingers = W[:, 1:13].sum(axis=1)
    thumb = W[:, 13:16].sum(axis=1)
    radial = rigging.radial_offsets(V, W, _mano_bones(J, tips_world))
    S = np.zeros((len(V), 3, max(num_betas, 7)))
    S[:, :, 0] = 0.05 * (V - wrist)
    along = np.zeros_like(V)  # offset of each finger vertex from its knuckle
    for f in range(4):
        mcp = J[1 + 3 * f]
        wf = W[:, 1 + 3 * f : 4 + 3 * f].sum(axis=1)
        along += wf[:, None] * (V - mcp)
    S[:, 0, 1] = 0.06 * along[:, 0]
    S[:, 2, 2] = 0.06 * (V[:, 2] - wrist[2]) * rigging.smooth_field(F, 1.0 - thumb, 5)
    S[:, 1, 3] = 0.10 * (V[:, 1] - wrist[1]) * (1.0 - fingers - thumb)
    S[:, :, 4] = 0.12 * radial * (fingers + thumb)[:, None]
    S[:, :, 5] = 0.06 * (V - J[13]) * rigging.smooth_field(F, thumb, 3)[:, None]
    S[:, 0, 6] = 0.04 * (V[:, 0] - wrist[0]) * (1.0 - 0.5 * fingers)
    rng = np.random.default_rng([seed, 13])
    for k in range(7, num_betas):
        mix = rng.standard_normal(W.shape[1]) @ W.T
        S[:, :, k] = (
            0.004
            * 0.9 ** (k - 7)
            * (mix[:, None] * radial / 0.01 + 0.5 * mix[:, None] * rng.standard_normal(3))
        )
    return S[:, :, :num_betas]


def make_mano(seed=0):
    """A synthetic MANO right hand as the dict MANO_RIGHT.pkl holds.

    Keys: v_template (778,3), f (1538,3) uint32 (open at the wrist: a
    16-vertex boundary loop), J (16,3), J_regressor (16,778) csc_matrix,
    weights (778,16), kintree_table (2,16) int64, shapedirs (778,3,10),
    posedirs (778,3,135), hands_components (45,45) orthonormal rows,
    hands_mean (45,), hands_coeffs (1554,45), bs_type, bs_style.
    """
    rng = np.random.default_rng([seed, 5])
    scale = 1.0 + 0.02 * float(np.clip(rng.standard_normal(), -2, 2))
    topo = _mano_topology()
    F = topo['faces'].astype(np.int64)
    tags = topo['tags']
    V = _mano_template(scale)
    frame = anatomy.mano_frame()
    joints, tips = anatomy.hand_skeleton(scale)
    J = frame.to_world(joints)
    tips_world = frame.to_world(tips)
    bones = _mano_bones(J, tips_world)
    part_joints = _mano_part_joints()
    W = rigging.skinning_weights(V, F, tags, bones, part_joints, iters=6)
    allowed = rigging.joint_candidates(tags, part_joints, 16)
    Jreg = rigging.regressor_rows(V, J, allowed, k=20, smooth=0.3).tocsc()
    poses = _hand_pose_prior(rng, 1554)
    mean = poses.mean(axis=0)
    # PCA: rows of vt are orthonormal, ordered by decreasing variance
    _, _, vt = np.linalg.svd(poses - mean, full_matrices=False)
    N = pm.vertex_normals(V, F)
    return {
        'hands_components': vt,
        'f': topo['faces'].copy(),
        'J_regressor': Jreg,
        'kintree_table': _kintree(MANO_PARENTS),
        'J': J,
        'bs_style': 'lbs',
        'hands_coeffs': (poses - mean) @ vt.T,
        'weights': W,
        'posedirs': rigging.pose_correctives(V, N, W, J, MANO_PARENTS, scale=0.05, bulge=0.0015),
        'hands_mean': mean,
        'v_template': V,
        'shapedirs': _mano_shapedirs(V, F, W, J, tips_world, 10, seed),
        'bs_type': 'lrotmin',
    }
