"""Procedural stand-ins for the licensed SMPL and MANO body-model files.

The project (JAX body models, dataset synthesis, tests against ``smplx``) needs
``SMPL_{NEUTRAL,MALE,FEMALE}.pkl``, ``MANO_RIGHT.pkl`` and ``SMPL_to_J19.pkl``.
The real files cannot be redistributed, so this module (with body_files)
*builds* files with the same keys, shapes, dtypes, vertex-id conventions and
on-disk encodings (Python-2 pickles holding chumpy and old-scipy objects) from
simple anatomy, so that everything runs on a fresh machine with nothing
downloaded.  Nothing here is derived from the licensed models; only their
public file layout is mimicked.

How a mesh is made (the same recipe for the body and the hand; the generic
steps are in mesh and sdf, the body's shapes in anatomy, skinning and
regressors in rigging; this module fixes the body's topology and vertex ids
and builds its model dicts, mano_model does the same for the hand, body_files
writes them):

1. a coarse polygon *cage* is built by box modelling: a lattice box for the
   torso (or palm), then region extrusions for limbs, neck/head and palm;
2. one Catmull-Clark step, then the fingers are extruded from the palm's tip
   (at this level the palm tip has four columns of faces, one per finger);
3. a second Catmull-Clark step, triangulation, a few edge splits to hit the
   exact vertex count (6890 / 778);
4. every vertex is moved onto the zero level set of a smooth signed distance
   function (a lofted torso and a smooth union of ellipsoids / round cones /
   rounded boxes placed on the skeleton), alternating with tangential
   Laplacian relaxation; a last pass smooths out the odd fold in sharp creases.

The topology (faces, vertex order) is decided once on the canonical neutral
body and shared by all genders and seeds, like the real model files; vertex
ids are then permuted so that the picks smplx / HMR 2.0 / HaMeR use (nose 332,
toes, heels, fingertips, MANO tips 744/320/443/554/671 and FreiHAND's 555/672)
sit at the right anatomical spot.  Skinning weights diffuse hard per-part bone
labels over the mesh; joint regressors are convex (non-negative least squares
with a sum-to-one row) over a ring of vertices around each joint; shape and
pose blend shapes are smooth analytic fields (see _smpl_shapedirs and
rigging.pose_correctives).

Extrusion and subdivision keep the surface a single closed genus-0 manifold,
so the SMPL mesh has F = 2V - 4 = 13776 triangles, like the real one.  The MANO
mesh is the same kind of surface with the wrist cap removed: 778 vertices,
1538 triangles and a 16-vertex boundary loop at the wrist, like the real one.

Frames (as in the real models): metres, y up, the subject's left is +x, the
subject faces +z; the SMPL rest pose is a T-pose with the pelvis at y = -0.2.
The MANO right hand is the right hand of that T-pose: wrist at +x, fingers
pointing along -x, palm facing -y (down), thumb towards +z, origin near the
middle-finger knuckle.

Only numpy and scipy are used; the result is a deterministic function of the
seed.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.spatial

from data_pipelines.synthetic import anatomy, rigging
from data_pipelines.synthetic import mesh as pm

# The skeletons are part of this module's API (the real files' joint order).
from data_pipelines.synthetic.anatomy import (  # noqa: F401
    FINGERS,
    MANO_JOINT_NAMES,
    MANO_PARENTS,
    SMPL_JOINT_NAMES,
    SMPL_PARENTS,
)

# --------------------------------------------------------------------------
# Conventions shared with the real models
# --------------------------------------------------------------------------

SMPL_NUM_VERTS = 6890
SMPL_NUM_FACES = 13776
MANO_NUM_VERTS = 778
MANO_NUM_FACES = 1538
ROOT_PARENT = 4294967295  # kintree_table stores the root's parent as uint32(-1)

# smplx vertex_ids['smplh'] (the picks smplx / HMR 2.0 append as joints 24..44).
SMPL_VERTEX_IDS = {
    'nose': 332,
    'reye': 6260,
    'leye': 2800,
    'rear': 4071,
    'lear': 583,
    'rthumb': 6191,
    'rindex': 5782,
    'rmiddle': 5905,
    'rring': 6016,
    'rpinky': 6133,
    'lthumb': 2746,
    'lindex': 2319,
    'lmiddle': 2445,
    'lring': 2556,
    'lpinky': 2673,
    'LBigToe': 3216,
    'LSmallToe': 3226,
    'LHeel': 3387,
    'RBigToe': 6617,
    'RSmallToe': 6624,
    'RHeel': 6787,
}
# smplx vertex_ids['mano'] fingertips, and the FreiHAND toolbox's ring / pinky
# tips, which are neighbours of the smplx ones.
MANO_VERTEX_IDS = {'thumb': 744, 'index': 320, 'middle': 443, 'ring': 554, 'pinky': 671}
FREIHAND_TIP_IDS = {'ring': 555, 'pinky': 672}

J19_NAMES = (
    'R_ankle',
    'R_knee',
    'R_hip',
    'L_hip',
    'L_knee',
    'L_ankle',
    'R_wrist',
    'R_elbow',
    'R_shoulder',
    'L_shoulder',
    'L_elbow',
    'L_wrist',
    'neck_lsp',
    'head_top_lsp',
    'pelvis_mpii',
    'thorax_mpii',
    'spine_h36m',
    'jaw_h36m',
    'head_h36m',
)


# --------------------------------------------------------------------------
# Mesh topology and vertex ids, decided once on a canonical body
# --------------------------------------------------------------------------


def _fingertips(V, tags, side, frame, scale):
    """Per finger, the vertex of that finger furthest along its last bone."""
    joints, tips = anatomy.hand_skeleton(scale)
    out = {}
    for f, finger in enumerate(FINGERS):
        _, _, end_joint, tip = anatomy.finger_chain(joints, tips, f)
        d = frame.dir(tip - end_joint)
        c = np.nonzero(tags == side + '_' + finger)[0]
        out[finger] = c[np.argmax(V[c] @ d)]
    return out


def _smpl_picks(V, F, tags, J, p):
    """Old vertex ids of the smplx landmark picks on a fitted body."""
    j = {n: J[i] for i, n in enumerate(SMPL_JOINT_NAMES)}
    L = anatomy.body_landmarks(J, p)
    N = pm.vertex_normals(V, F)
    picks = {}

    def among(mask):
        ids = np.nonzero(mask)[0]
        assert len(ids), 'empty landmark candidate set'
        return ids

    head = tags == 'head'
    c = among(head & (np.abs(V[:, 0]) < 0.02) & (np.abs(V[:, 1] - L['nose'][1]) < 0.04))
    picks['nose'] = c[np.argmax(V[c, 2])]
    for side, sgn in (('l', 1.0), ('r', -1.0)):
        e = L['eye'] * [sgn, 1, 1]
        c = among(head & (N[:, 2] > 0.5))
        picks[side + 'eye'] = c[np.argmin(np.linalg.norm(V[c, :2] - e[:2], axis=1))]
        c = among(head & (np.abs(V[:, 1] - L['ear'][1]) < 0.03) & (V[:, 0] * sgn > 0))
        picks[side + 'ear'] = c[np.argmax(V[c, 0] * sgn)]
    frames = anatomy.smpl_hand_frames(J)
    for side in ('L', 'R'):
        for finger, v in _fingertips(V, tags, side, frames[side], p['scale']).items():
            picks[side.lower() + finger] = v
        A, Ft = j[side + '_ankle'], j[side + '_foot']
        sgn = np.sign(A[0])
        c = among(
            ((tags == side + '_foot') | (tags == side + '_leg')) & (V[:, 1] < L['sole_y'] + 0.05)
        )
        front = V[c, 2].max()
        targets = {
            'BigToe': (Ft[0] - sgn * 0.022, L['sole_y'] + 0.018, front),
            'SmallToe': (Ft[0] + sgn * 0.030, L['sole_y'] + 0.012, front - 0.035),
            'Heel': (A[0], L['sole_y'] + 0.020, V[c, 2].min()),
        }
        for name, t in targets.items():
            picks[side + name] = c[np.argmin(np.linalg.norm(V[c] - np.array(t), axis=1))]
    assert len(set(picks.values())) == len(picks), 'two landmarks share a vertex'
    return picks


@functools.lru_cache(maxsize=None)
def _smpl_topology():
    """The fixed SMPL topology (faces, split plan, vertex order, part tags),
    decided once on the canonical neutral body so that all genders and seeds
    share faces and vertex ids, as the real model files do."""
    p = anatomy.body_params('neutral', 0, jitter=False)
    J = anatomy.smpl_joints(p)
    V, Q, qtags = anatomy.body_quads(p)
    F = pm.triangulate(V, Q)
    tags = pm.vertex_tags(Q, qtags, len(V))
    L = anatomy.body_landmarks(J, p)
    mirror = np.array([-1.0, 1.0, 1.0])
    # Spend the extra vertices mostly on the small face features.
    imp = pm.feature_weights(
        V,
        [
            (L['nose'], 0.05, 2.5),
            (L['ear'], 0.04, 2.5),
            (L['ear'] * mirror, 0.04, 2.5),
            (L['eye'], 0.03, 1.5),
            (L['eye'] * mirror, 0.03, 1.5),
        ],
    )
    F, splits = pm.plan_splits(V, F, SMPL_NUM_VERTS - len(V), importance=imp)
    tags = np.concatenate([tags, [tags[a] for a, _ in splits]])
    V = pm.fit_to_sdf(pm.apply_splits(V, splits), F, anatomy.body_sdf(J, p))
    picks = _smpl_picks(V, F, tags, J, p)
    order, inverse = pm.permutation(len(V), {SMPL_VERTEX_IDS[k]: v for k, v in picks.items()})
    return {
        'splits': splits,
        'faces_old': F,
        'order': order,
        'faces': inverse[F].astype(np.uint32),
        'tags': tags[order],
    }


def _smpl_template(p):
    """Rest vertices (6890,3) of the body with knobs ``p``, in final order."""
    topo = _smpl_topology()
    V, _, _ = anatomy.body_quads(p)
    V = pm.apply_splits(V, topo['splits'])
    V = pm.fit_to_sdf(V, topo['faces_old'], anatomy.body_sdf(anatomy.smpl_joints(p), p))
    return V[topo['order']]


# --------------------------------------------------------------------------
# SMPL: rigging, blend shapes, the model dict
# --------------------------------------------------------------------------


# Which joints may drive each part (so that, say, the inner thigh never takes
# weight from the other leg or a hand from the hip it almost touches).
def _smpl_part_joints():
    idx = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
    parts = {
        'torso': [
            'pelvis',
            'spine1',
            'spine2',
            'spine3',
            'L_hip',
            'R_hip',
            'L_collar',
            'R_collar',
            'L_shoulder',
            'R_shoulder',
            'neck',
        ],
        'neck': ['spine3', 'neck', 'head'],
        'head': ['neck', 'head'],
    }
    for s in 'LR':
        parts[s + '_leg'] = ['pelvis', s + '_hip', s + '_knee', s + '_ankle']
        parts[s + '_foot'] = [s + '_ankle', s + '_foot']
        parts[s + '_arm'] = ['spine3', s + '_collar', s + '_shoulder', s + '_elbow', s + '_wrist']
        for t in ('_palm', '_palm_tip', '_thumb_base') + tuple('_' + f for f in FINGERS):
            parts[s + t] = [s + '_wrist', s + '_hand']
    return {k: [idx[n] for n in v] for k, v in parts.items()}


def _smpl_bones(J, p):
    """Segment owned by each joint: the part of the body that turns with it."""
    j = {n: J[i] for i, n in enumerate(SMPL_JOINT_NAMES)}
    s = p['scale']
    L = anatomy.body_landmarks(J, p)
    _, tips = anatomy.hand_skeleton(s)
    frames = anatomy.smpl_hand_frames(J)
    # spine2 -> spine3 is short (as in SMPL); let spine2 own the lower ribs too
    rib = j['spine3'] + [0, 0.06 * s, 0]
    seg = {
        'pelvis': (j['pelvis'], j['pelvis'] - [0, 0.10 * s, 0.02 * s]),
        'spine1': (j['spine1'], j['spine2']),
        'spine2': (j['spine2'], rib),
        'spine3': (rib, j['neck']),
        'neck': (j['neck'], j['head']),
        'head': (j['head'], L['head_top']),
    }
    for side in 'LR':
        for a, b in (
            ('hip', 'knee'),
            ('knee', 'ankle'),
            ('ankle', 'foot'),
            ('collar', 'shoulder'),
            ('shoulder', 'elbow'),
            ('elbow', 'wrist'),
            ('wrist', 'hand'),
        ):
            seg[f'{side}_{a}'] = (j[f'{side}_{a}'], j[f'{side}_{b}'])
        seg[side + '_foot'] = (j[side + '_foot'], j[side + '_foot'] + [0, -0.01 * s, 0.07 * s])
        seg[side + '_hand'] = (
            j[side + '_hand'],
            frames[side].to_world(tips[FINGERS.index('middle')]),
        )
    return [seg[n] for n in SMPL_JOINT_NAMES]


def _smpl_shapedirs(V, F, W, J, bones, p, num_betas, seed):
    """Shape blend shapes (V,3,num_betas), one unit = one standard deviation.

    0 overall size (about 6 % = 10 cm of height), 1 girth / weight, 2 leg
    length, 3 shoulder width, 4 hip width, 5 limb thickness, 6 arm length,
    7 head size, 8 torso length, 9 chest / belly depth; further components are
    smooth random part-wise mixtures with decreasing size.  The fields are
    built from the smooth skinning weights, so they are smooth too.
    """
    idx = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}

    def w(*names):  # summed skinning weight of some joints: a smooth part mask
        return W[:, [idx[n] for n in names]].sum(axis=1)

    def smooth(x, iters):
        return rigging.smooth_field(F, x, iters)

    radial = rigging.radial_offsets(V, W, bones)
    pelvis = J[0]
    x, y, z = V[:, 0], V[:, 1], V[:, 2]
    trunk = w('pelvis', 'spine1', 'spine2', 'spine3')
    legs = w('L_hip', 'R_hip', 'L_knee', 'R_knee', 'L_ankle', 'R_ankle', 'L_foot', 'R_foot')
    arms = w(
        'L_shoulder', 'R_shoulder', 'L_elbow', 'R_elbow', 'L_wrist', 'R_wrist', 'L_hand', 'R_hand'
    )
    head = w('head') + 0.5 * w('neck')
    S = np.zeros((len(V), 3, max(num_betas, 10)))
    S[:, :, 0] = 0.055 * (V - pelvis * [1, 1, 0])
    S[:, :, 1] = 0.16 * radial * (0.4 + 0.9 * trunk + 0.3 * legs)[:, None]
    S[:, 2, 1] += 0.02 * np.clip(z, 0, None) / 0.12 * smooth(w('spine1', 'pelvis'), 10)
    S[:, 1, 2] = -0.05 * (pelvis[1] + 0.05 - y) * smooth(legs, 10)
    S[:, 0, 3] = (
        0.02
        * np.sign(x)
        * np.clip(np.abs(x) / 0.18, 0, 1)
        * smooth(arms + w('L_collar', 'R_collar'), 10)
    )
    hips = smooth(w('pelvis', 'L_hip', 'R_hip') * (y < pelvis[1] + 0.1), 10)
    S[:, 0, 4] = 0.10 * x * hips
    S[:, :, 5] = 0.14 * radial * (legs + arms)[:, None]
    S[:, 0, 6] = (
        0.05
        * np.sign(x)
        * np.clip(np.abs(x) - 0.17 * p['scale'], 0, None)
        * smooth(arms + w('L_collar', 'R_collar'), 5)
    )
    hc = anatomy.body_landmarks(J, p)['head_center']
    S[:, :, 7] = 0.07 * (V - hc) * smooth(head, 10)[:, None]
    S[:, 1, 8] = 0.05 * np.clip(y - pelvis[1], 0, None) * smooth(1.0 - legs, 10)
    S[:, 2, 9] = 0.025 * np.clip(z, 0, None) / 0.12 * smooth(w('spine1', 'spine2'), 10)
    rng = np.random.default_rng([seed, 11])
    for k in range(10, num_betas):
        mix = rng.standard_normal(len(bones)) @ W.T  # smooth part-wise scalar
        dirs = rng.standard_normal(3)
        S[:, :, k] = (0.01 * 0.9 ** (k - 10)) * (
            mix[:, None] * radial / 0.1 * 0.5 + 0.2 * mix[:, None] * dirs
        )
    return S[:, :, :num_betas]


def _kintree(parents):
    k = np.zeros((2, len(parents)), dtype=np.int64)
    k[0] = [ROOT_PARENT if q < 0 else q for q in parents]
    k[1] = np.arange(len(parents))
    return k


def _mirror_indices(V):
    """Index of each vertex's left/right mirror image (nearest neighbour)."""
    tree = scipy.spatial.cKDTree(V)
    return tree.query(V * [-1.0, 1.0, 1.0])[1].astype(np.int64)


def make_smpl(gender='neutral', seed=0, num_betas=10):
    """A synthetic SMPL model as the dict the official .pkl holds.

    Keys: v_template (6890,3), f (13776,3) uint32, J (24,3), J_regressor
    (24,6890) scipy.sparse.csc_matrix, J_regressor_prior (same kind), weights
    and weights_prior (6890,24), kintree_table (2,24) int64 (root parent
    4294967295), shapedirs (6890,3,num_betas), posedirs (6890,3,207),
    vert_sym_idxs (6890,), bs_type 'lrotmin', bs_style 'lbs',
    pose_training_info (dict).  All floats are float64.
    """
    p = anatomy.body_params(gender, seed)
    topo = _smpl_topology()
    F = topo['faces'].astype(np.int64)
    tags = topo['tags']
    J = anatomy.smpl_joints(p)
    V = _smpl_template(p)
    bones = _smpl_bones(J, p)
    part_joints = _smpl_part_joints()
    W = rigging.skinning_weights(V, F, tags, bones, part_joints, iters=30)
    W_prior = rigging.skinning_weights(V, F, tags, bones, part_joints, iters=60)
    allowed = rigging.joint_candidates(tags, part_joints, 24)
    Jreg = rigging.regressor_rows(V, J, allowed, k=40, smooth=1.0).tocsc()
    Jreg_prior = rigging.regressor_rows(V, J, allowed, k=80, smooth=10.0).tocsc()
    N = pm.vertex_normals(V, F)
    model = {
        'J_regressor_prior': Jreg_prior,
        'f': topo['faces'].copy(),
        'J_regressor': Jreg,
        'kintree_table': _kintree(SMPL_PARENTS),
        'J': J,
        'weights_prior': W_prior,
        'weights': W,
        'vert_sym_idxs': _mirror_indices(V),
        'posedirs': rigging.pose_correctives(V, N, W, J, SMPL_PARENTS),
        'pose_training_info': {
            'generator': 'extpose_jax synthetic_bodies',
            'gender': gender,
            'seed': int(seed),
            'num_pose_blendshapes': 207,
            'num_shape_blendshapes': num_betas,
            'bs_style': 'lbs',
            'bs_type': 'lrotmin',
        },
        'bs_style': 'lbs',
        'v_template': V,
        'shapedirs': _smpl_shapedirs(V, F, W, J, bones, p, num_betas, seed),
        'bs_type': 'lrotmin',
    }
    return model


# J19 points (SPIN / HMR 2.0 order), as offsets from SMPL joints or landmarks.
def _j19_targets(J, p):
    j = {n: J[i] for i, n in enumerate(SMPL_JOINT_NAMES)}
    L = anatomy.body_landmarks(J, p)
    s = p['scale']
    out = {}
    for side, sgn in (('R', -1.0), ('L', 1.0)):
        out[side + '_ankle'] = j[side + '_ankle'] + np.array([0.0, -0.008, 0.005]) * s
        out[side + '_knee'] = j[side + '_knee'] + np.array([0.0, -0.010, 0.000]) * s
        # LSP hips sit lower and further out than SMPL's hip joints
        out[side + '_hip'] = j[side + '_hip'] + np.array([sgn * 0.012, -0.040, 0.0]) * s
        out[side + '_wrist'] = j[side + '_wrist'] + np.array([sgn * 0.008, 0.0, 0.0]) * s
        out[side + '_elbow'] = j[side + '_elbow'] + np.array([0.0, 0.0, 0.005]) * s
        out[side + '_shoulder'] = j[side + '_shoulder'] + np.array([sgn * 0.010, 0.012, 0.005]) * s
    out['neck_lsp'] = j['neck'] + np.array([0.0, 0.005, 0.020]) * s
    out['head_top_lsp'] = L['head_top'] - np.array([0.0, 0.012, 0.0]) * s
    out['pelvis_mpii'] = 0.5 * (j['L_hip'] + j['R_hip'])
    out['thorax_mpii'] = np.array(
        [0.0, 0.5 * (j['neck'][1] + j['L_shoulder'][1]), j['neck'][2] + 0.015 * s]
    )
    out['spine_h36m'] = 0.5 * (out['pelvis_mpii'] + out['thorax_mpii']) + [0, 0, -0.02 * s]
    out['jaw_h36m'] = L['mouth'] - np.array([0.0, 0.012, 0.045]) * s
    out['head_h36m'] = L['head_center'] + np.array([0.0, 0.025, 0.010]) * s
    return np.array([out[n] for n in J19_NAMES])


def make_j19_regressor(smpl):
    """Dense (19, 6890) regressor for the SPIN / HMR 2.0 extra joints.

    Each row holds convex weights over surface vertices around the matching
    anatomical point of ``smpl`` (a dict from make_smpl).  The skeleton is
    read back from smpl['J'] and the proportions from the template height.
    """
    V = np.asarray(smpl['v_template'], dtype=np.float64)
    J = np.asarray(smpl['J'], dtype=np.float64)
    # recover the size knob from the body height (neutral: 1.70 m)
    p = anatomy.body_params('neutral', 0, jitter=False)
    p['scale'] = (V[:, 1].max() - V[:, 1].min()) / 1.70
    R = rigging.regressor_rows(V, _j19_targets(J, p), np.ones((19, len(V)), bool), k=40, smooth=1.0)
    return np.asarray(R.todense(), dtype=np.float64)
