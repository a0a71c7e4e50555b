"""Procedural stand-ins for the licensed SMPL and MANO body-model files.

The project (JAX body models, dataset synthesis, tests against ``smplx``) needs
``SMPL_{NEUTRAL,MALE,FEMALE}.pkl``, ``MANO_RIGHT.pkl`` and ``SMPL_to_J19.pkl``.
The real files cannot be redistributed, so this module *builds* files with the
same keys, shapes, dtypes, vertex-id conventions and on-disk encodings (Python-2
pickles holding chumpy and old-scipy objects) from simple anatomy, so that
everything runs on a fresh machine with nothing downloaded.  Nothing here is
derived from the licensed models; only their public file layout is mimicked.

How a mesh is made (the same recipe for the body and the hand):

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
_pose_correctives).

Extrusion and subdivision keep the surface a single closed genus-0 manifold,
so the SMPL mesh has F = 2V - 4 = 13776 triangles, like the real one.  The MANO
mesh is the same kind of surface with the wrist cap removed: 778 vertices,
1538 triangles and a 16-vertex boundary loop at the wrist, like the real one.

Frames (as in the real models): metres, y up, the subject's left is +x, the
subject faces +z; the SMPL rest pose is a T-pose with the pelvis at y = -0.2.
The MANO right hand is the right hand of that T-pose: wrist at +x, fingers
pointing along -x, palm facing -y (down), thumb towards +z, origin near the
middle-finger knuckle.

Files (write_body_models): the .pkl files are Python-2 pickles like the
official ones (load with ``encoding='latin1'``; shapedirs, v_template, J and
weights are ``chumpy.ch.Ch`` objects, J_regressor(_prior) are
``scipy.sparse.csc.csc_matrix``), each with an .npz of plain dense arrays
beside it.  smplx reads the npz files as follows: ``smplx.MANO(model_path=npz,
ext='npz', ...)``; ``smplx.SMPL`` opens a model path with pickle only, so pass
``data_struct=smplx.utils.Struct(**np.load(npz))``.  SMPL_to_J19.pkl is a plain
(19, 6890) float64 array pickled the Python-3 way (loads with any encoding).

Only numpy and scipy are used; the result is a deterministic function of the
seed.  CLI: ``python -m data_pipelines.synthetic_bodies --out DIR [--seed S]``.
"""
from __future__ import annotations

import argparse
import functools
import io
import os
import pickle
import struct
import tempfile
import time

import numpy as np
import scipy.interpolate
import scipy.optimize
import scipy.sparse
import scipy.spatial

# --------------------------------------------------------------------------
# Conventions shared with the real models
# --------------------------------------------------------------------------

SMPL_NUM_VERTS = 6890
SMPL_NUM_FACES = 13776
MANO_NUM_VERTS = 778
MANO_NUM_FACES = 1538
ROOT_PARENT = 4294967295  # kintree_table stores the root's parent as uint32(-1)

SMPL_JOINT_NAMES = (
    'pelvis', 'L_hip', 'R_hip', 'spine1', 'L_knee', 'R_knee', 'spine2',
    'L_ankle', 'R_ankle', 'spine3', 'L_foot', 'R_foot', 'neck', 'L_collar',
    'R_collar', 'head', 'L_shoulder', 'R_shoulder', 'L_elbow', 'R_elbow',
    'L_wrist', 'R_wrist', 'L_hand', 'R_hand')
SMPL_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16,
                17, 18, 19, 20, 21)

MANO_JOINT_NAMES = (
    'wrist', 'index1', 'index2', 'index3', 'middle1', 'middle2', 'middle3',
    'pinky1', 'pinky2', 'pinky3', 'ring1', 'ring2', 'ring3', 'thumb1',
    'thumb2', 'thumb3')
MANO_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

# smplx vertex_ids['smplh'] (the picks smplx / HMR 2.0 append as joints 24..44).
SMPL_VERTEX_IDS = {
    'nose': 332, 'reye': 6260, 'leye': 2800, 'rear': 4071, 'lear': 583,
    'rthumb': 6191, 'rindex': 5782, 'rmiddle': 5905, 'rring': 6016,
    'rpinky': 6133, 'lthumb': 2746, 'lindex': 2319, 'lmiddle': 2445,
    'lring': 2556, 'lpinky': 2673, 'LBigToe': 3216, 'LSmallToe': 3226,
    'LHeel': 3387, 'RBigToe': 6617, 'RSmallToe': 6624, 'RHeel': 6787}
# smplx vertex_ids['mano'] fingertips, and the FreiHAND toolbox's ring / pinky
# tips, which are neighbours of the smplx ones.
MANO_VERTEX_IDS = {'thumb': 744, 'index': 320, 'middle': 443, 'ring': 554,
                   'pinky': 671}
FREIHAND_TIP_IDS = {'ring': 555, 'pinky': 672}

J19_NAMES = (
    'R_ankle', 'R_knee', 'R_hip', 'L_hip', 'L_knee', 'L_ankle', 'R_wrist',
    'R_elbow', 'R_shoulder', 'L_shoulder', 'L_elbow', 'L_wrist', 'neck_lsp',
    'head_top_lsp', 'pelvis_mpii', 'thorax_mpii', 'spine_h36m', 'jaw_h36m',
    'head_h36m')

FINGERS = ('index', 'middle', 'pinky', 'ring', 'thumb')  # MANO joint order

# --------------------------------------------------------------------------
# Skeletons
# --------------------------------------------------------------------------

# Per-gender proportions.  Everything is relative to the neutral body and
# multiplies the neutral numbers below; only a handful of knobs are needed for
# the three bodies to look distinct (male: taller, broad shoulders, narrow hips;
# female: shorter, narrow shoulders, wide hips, breasts).
_GENDER_PARAMS = {
    'neutral': dict(scale=1.000, shoulder=1.00, hip=1.00, girth=1.00,
                    limb=1.00, breast=0.15, waist=1.00),
    'male': dict(scale=1.035, shoulder=1.07, hip=0.96, girth=1.03,
                 limb=1.06, breast=0.0, waist=1.02),
    'female': dict(scale=0.955, shoulder=0.92, hip=1.07, girth=0.97,
                   limb=0.93, breast=1.0, waist=0.90),
}


def _body_params(gender, seed, jitter=True):
    """Proportion knobs for one body; the seed adds a small (about 2 %) jitter."""
    if gender not in _GENDER_PARAMS:
        raise ValueError(f'gender must be one of {sorted(_GENDER_PARAMS)}')
    p = dict(_GENDER_PARAMS[gender])
    if jitter:
        rng = np.random.default_rng([seed, 7, sorted(_GENDER_PARAMS).index(gender)])
        for k in ('scale', 'shoulder', 'hip', 'girth', 'limb', 'waist'):
            p[k] *= 1.0 + 0.02 * float(np.clip(rng.standard_normal(), -2, 2))
    p['gender'] = gender
    return p


def _hand_skeleton_local(scale=1.0):
    """Right-hand joints in hand-local coordinates, MANO joint order.

    Local axes: a = along the fingers (from the wrist), b = towards the back
    of the hand (dorsal), c = towards the thumb.  Returns (joints (16,3),
    tips (5,3) in FINGERS order thumb-last, i.e. index, middle, pinky, ring,
    thumb).  Numbers are adult averages (wrist to middle tip 0.19 m).
    """
    mcp = {'index': (0.090, 0.004, 0.026), 'middle': (0.095, 0.005, 0.004),
           'ring': (0.089, 0.003, -0.016), 'pinky': (0.079, -0.001, -0.034)}
    lengths = {'index': (0.040, 0.024, 0.022), 'middle': (0.044, 0.028, 0.024),
               'ring': (0.041, 0.027, 0.023), 'pinky': (0.032, 0.020, 0.021)}
    # Slight fan: the fingers spread away from the middle finger.
    spread = {'index': 0.07, 'middle': 0.0, 'ring': -0.07, 'pinky': -0.16}
    joints = [np.zeros(3)]
    tips = {}
    for name in ('index', 'middle', 'pinky', 'ring'):
        d = np.array([np.cos(spread[name]), -0.03, np.sin(spread[name])])
        d /= np.linalg.norm(d)
        p = np.array(mcp[name], dtype=float)
        chain = [p.copy()]
        for length in lengths[name]:
            p = p + length * d
            chain.append(p.copy())
        joints.extend(chain[:3])
        tips[name] = chain[3]
    # The thumb leaves the palm near the wrist, pointing forward and towards
    # the thumb side, a little to the palm side (MANO's rest thumb).
    thumb = [np.array([0.026, -0.012, 0.024]), np.array([0.052, -0.019, 0.048]),
             np.array([0.073, -0.022, 0.064])]
    joints.extend(thumb)
    tips['thumb'] = np.array([0.094, -0.024, 0.079])
    joints = np.array(joints) * scale
    tips = np.array([tips[n] for n in FINGERS]) * scale
    return joints, tips


class _HandFrame:
    """Maps hand-local (a, b, c) coordinates into the world.

    For both hands in the T-pose b = +y (back of the hand up) and c = +z
    (thumb forward); a = +x for the left hand and -x for the right hand, so the
    two hands are mirror images and the left frame is right-handed.
    """

    def __init__(self, wrist, along_x_sign):
        self.origin = np.asarray(wrist, dtype=float)
        self.axes = np.array([[along_x_sign, 0.0, 0.0], [0.0, 1.0, 0.0],
                              [0.0, 0.0, 1.0]])

    def to_world(self, local):
        return self.origin + np.asarray(local) @ self.axes

    def dir(self, local_dir):
        return np.asarray(local_dir) @ self.axes


def _smpl_joints(p):
    """Rest joints (24,3) of the T-pose body for the proportion knobs ``p``.

    Neutral numbers approximate an adult of 1.70 m: soles at y = -1.16, head top
    at 0.54, pelvis at -0.20, arms horizontal at shoulder height.
    """
    s, sh, hp = p['scale'], p['shoulder'], p['hip']
    pelvis_y = -0.20
    J = np.zeros((24, 3))

    def put(name, x, y, z, mirror=False):
        J[SMPL_JOINT_NAMES.index(name)] = (x, y, z)
        if mirror:
            J[SMPL_JOINT_NAMES.index('R' + name[1:])] = (-x, y, z)

    # Heights are scaled about the pelvis so the pelvis stays at -0.2.
    def Y(y):
        return pelvis_y + (y - pelvis_y) * s

    put('pelvis', 0.0, pelvis_y, 0.020 * s)
    put('L_hip', 0.072 * s * hp, Y(-0.290), 0.000, True)
    put('spine1', 0.0, Y(-0.085), -0.018 * s)
    put('L_knee', 0.100 * s * hp, Y(-0.680), 0.022 * s, True)
    put('spine2', 0.0, Y(0.045), -0.008 * s)
    put('L_ankle', 0.088 * s * hp, Y(-1.085), -0.018 * s, True)
    put('spine3', 0.0, Y(0.105), -0.002 * s)
    put('L_foot', 0.110 * s * hp, Y(-1.140), 0.105 * s, True)
    put('neck', 0.0, Y(0.290), -0.028 * s)
    put('L_collar', 0.072 * s * sh, Y(0.200), -0.020 * s, True)
    put('head', 0.0, Y(0.365), 0.030 * s)
    put('L_shoulder', 0.172 * s * sh, Y(0.222), -0.028 * s, True)
    # Arm bones keep their length; only the shoulder moves with the width.
    x0 = 0.172 * s * sh
    put('L_elbow', x0 + 0.262 * s, Y(0.213), -0.046 * s, True)
    put('L_wrist', x0 + 0.517 * s, Y(0.218), -0.042 * s, True)
    put('L_hand', x0 + 0.517 * s + 0.085 * s, Y(0.214), -0.048 * s, True)
    return J


def _smpl_hand_frames(J, p):
    """World frames of the left and right hands of the body."""
    left = _HandFrame(J[SMPL_JOINT_NAMES.index('L_wrist')], +1.0)
    right = _HandFrame(J[SMPL_JOINT_NAMES.index('R_wrist')], -1.0)
    return {'L': left, 'R': right}


def _body_landmarks(J, p):
    """Named anatomical points (not joints) used by the SDF, picks and J19."""
    s = p['scale']
    head = J[SMPL_JOINT_NAMES.index('head')]
    L = {}
    L['sole_y'] = -0.20 + (-1.160 + 0.20) * s
    L['head_top'] = np.array([0.0, -0.20 + (0.540 + 0.20) * s, 0.005 * s])
    L['head_center'] = head + np.array([0.0, 0.085, -0.005]) * s
    L['eye'] = head + np.array([0.032, 0.095, 0.080]) * s  # left eye
    L['nose'] = head + np.array([0.0, 0.060, 0.115]) * s
    L['mouth'] = head + np.array([0.0, 0.025, 0.095]) * s
    L['chin'] = head + np.array([0.0, -0.015, 0.085]) * s
    L['ear'] = head + np.array([0.077, 0.075, -0.010]) * s  # left ear
    return L


# --------------------------------------------------------------------------
# Polygon cage: box modelling with region extrusion
# --------------------------------------------------------------------------

class _Cage:
    """Closed polygon mesh under construction.

    Faces are vertex-id lists, counter-clockwise seen from outside; each face
    carries a tag (the body part it belongs to) that survives subdivision and
    later restricts skinning and landmark searches to the right part.
    """

    def __init__(self, verts=None, faces=None, tags=None):
        self.v = [np.asarray(x, dtype=float) for x in (verts if verts is not None else [])]
        self.f = [list(f) for f in (faces or [])]
        self.tag = list(tags or [])

    def add_vertex(self, p):
        self.v.append(np.asarray(p, dtype=float))
        return len(self.v) - 1

    def verts(self):
        return np.array(self.v)

    def faces_with_tag(self, tag):
        return [i for i, t in enumerate(self.tag) if t == tag]

    def face_normal(self, fi):
        """Area vector (Newell's method) of a possibly non-planar polygon."""
        P = np.array([self.v[i] for i in self.f[fi]])
        Q = np.roll(P, -1, axis=0)
        return 0.5 * np.cross(P, Q).sum(axis=0)

    def face_center(self, fi):
        return np.mean([self.v[i] for i in self.f[fi]], axis=0)

    def extrude(self, region, center, axis, half_u, half_v, tag, u_hint):
        """Extrude a set of faces as one block (Blender's 'extrude region').

        The region's vertices are copied; the copies are laid out flat in the
        plane through ``center`` normal to ``axis``, keeping their relative
        arrangement but rescaled to half extents (half_u, half_v), where u is
        ``u_hint`` made orthogonal to the axis.  Side quads join the region's
        boundary to the copies.  Topology stays closed and genus 0.
        Returns the ids of the faces at the new end (same order as region).
        """
        region = list(region)
        rverts = sorted({i for fi in region for i in self.f[fi]})
        P = np.array([self.v[i] for i in rverts])
        c = P.mean(axis=0)
        nb = sum(self.face_normal(fi) for fi in region)
        nb = nb / np.linalg.norm(nb)
        u0 = np.asarray(u_hint, float) - np.dot(u_hint, nb) * nb
        u0 /= np.linalg.norm(u0)
        v0 = np.cross(nb, u0)
        lu, lv = (P - c) @ u0, (P - c) @ v0
        hu, hv = max(np.abs(lu).max(), 1e-9), max(np.abs(lv).max(), 1e-9)
        a = np.asarray(axis, float) / np.linalg.norm(axis)
        assert np.dot(a, nb) > 0.0, 'extrusion must leave the surface'
        u = u0 - np.dot(u0, a) * a
        u /= np.linalg.norm(u)
        v = np.cross(a, u)
        new_id = {}
        for k, i in enumerate(rverts):
            new_id[i] = self.add_vertex(center + lu[k] / hu * half_u * u
                                        + lv[k] / hv * half_v * v)
        directed = {(f[k], f[(k + 1) % len(f)]) for fi in region
                    for f in [self.f[fi]] for k in range(len(f))}
        for (i, j) in sorted(directed):
            if (j, i) not in directed:  # boundary edge of the region
                self.f.append([i, j, new_id[j], new_id[i]])
                self.tag.append(tag)
        for fi in region:
            self.f[fi] = [new_id[i] for i in self.f[fi]]
            self.tag[fi] = tag
        return region

    def split_face(self, fi, edge_dir):
        """Split a quad in two across the pair of edges most parallel to
        ``edge_dir``.  The neighbours across those edges get the new vertex
        inserted (they become pentagons), so no T-junction appears."""
        f = self.f[fi]
        assert len(f) == 4
        e = [np.asarray(self.v[f[(k + 1) % 4]]) - self.v[f[k]] for k in range(4)]
        k0 = int(np.argmax([abs(np.dot(x, edge_dir)) / np.linalg.norm(x) for x in e[:2]]))
        a, b, c, d = f[k0], f[(k0 + 1) % 4], f[(k0 + 2) % 4], f[(k0 + 3) % 4]
        m1 = self.add_vertex(0.5 * (self.v[a] + self.v[b]))
        m2 = self.add_vertex(0.5 * (self.v[c] + self.v[d]))
        for (x, y, m) in ((a, b, m1), (c, d, m2)):
            for gi, g in enumerate(self.f):
                if gi == fi:
                    continue
                for k in range(len(g)):
                    if g[k] == y and g[(k + 1) % len(g)] == x:
                        g.insert(k + 1, m)
                        break
        self.f[fi] = [a, m1, m2, d]
        self.f.append([m1, b, c, m2])
        self.tag.append(self.tag[fi])


def _lattice_box(cage, n, pos, tag_fn):
    """Add a box whose six sides are quad grids (nx, ny, nz cells).

    ``pos(i, j, k)`` places lattice point (i, j, k); ``tag_fn(side, a, b)``
    tags the cell (a, b) of a side ('-x', '+x', '-y', '+y', '-z', '+z').
    Returns {(side, a, b): face id}.
    """
    nx, ny, nz = n
    ids = {}

    def vid(i, j, k):
        if (i, j, k) not in ids:
            ids[(i, j, k)] = cage.add_vertex(pos(i, j, k))
        return ids[(i, j, k)]

    cells = {}

    def quad(side, a, b, corners):
        cage.f.append([vid(*c) for c in corners])
        cage.tag.append(tag_fn(side, a, b))
        cells[(side, a, b)] = len(cage.f) - 1

    for j in range(ny):
        for k in range(nz):
            quad('+x', j, k, [(nx, j, k), (nx, j + 1, k), (nx, j + 1, k + 1), (nx, j, k + 1)])
            quad('-x', j, k, [(0, j, k), (0, j, k + 1), (0, j + 1, k + 1), (0, j + 1, k)])
    for i in range(nx):
        for k in range(nz):
            quad('+y', i, k, [(i, ny, k), (i, ny, k + 1), (i + 1, ny, k + 1), (i + 1, ny, k)])
            quad('-y', i, k, [(i, 0, k), (i + 1, 0, k), (i + 1, 0, k + 1), (i, 0, k + 1)])
    for i in range(nx):
        for j in range(ny):
            quad('+z', i, j, [(i, j, nz), (i + 1, j, nz), (i + 1, j + 1, nz), (i, j + 1, nz)])
            quad('-z', i, j, [(i, j, 0), (i, j + 1, 0), (i + 1, j + 1, 0), (i + 1, j, 0)])
    return cells


def _catmull_clark(verts, faces, tags):
    """One Catmull-Clark step on a closed polygon mesh (any polygon sizes).

    Returns (verts, quads (F,4) int array, tags).  New vertex order: old
    vertices, then edge points, then face points.  Vectorised over corners.
    """
    V = np.asarray(verts, float)
    sizes = np.array([len(f) for f in faces])
    cv = np.concatenate([np.asarray(f) for f in faces])
    cf = np.repeat(np.arange(len(faces)), sizes)
    start = np.cumsum(sizes) - sizes
    local = np.arange(len(cv)) - start[cf]
    cnext = cv[start[cf] + (local + 1) % sizes[cf]]
    cprev_corner = start[cf] + (local - 1) % sizes[cf]
    fp = np.zeros((len(faces), 3))
    np.add.at(fp, cf, V[cv])
    fp /= sizes[:, None]
    key = np.minimum(cv, cnext) * len(V) + np.maximum(cv, cnext)
    ukeys, cedge = np.unique(key, return_inverse=True)
    ne = len(ukeys)
    ea, eb = ukeys // len(V), ukeys % len(V)
    efs = np.zeros((ne, 3))
    np.add.at(efs, cedge, fp[cf])
    ecount = np.bincount(cedge, minlength=ne)
    assert np.all(ecount == 2), 'mesh must be closed and manifold'
    ep = (V[ea] + V[eb] + efs) / 4.0
    nv = len(V)
    val = np.bincount(cv, minlength=nv).astype(float)
    favg = np.zeros((nv, 3))
    np.add.at(favg, cv, fp[cf])
    ravg = np.zeros((nv, 3))
    np.add.at(ravg, cv, 0.5 * (V[cv] + V[cnext]))
    favg /= val[:, None]
    ravg /= val[:, None]
    vp = (favg + 2.0 * ravg + (val[:, None] - 3.0) * V) / val[:, None]
    newV = np.concatenate([vp, ep, fp])
    quads = np.stack([cv, nv + cedge, nv + ne + cf, nv + cedge[cprev_corner]], axis=1)
    return newV, quads, [tags[i] for i in cf]


def _quads_to_cage(verts, quads, tags):
    return _Cage(verts, [list(q) for q in quads], tags)


# --------------------------------------------------------------------------
# Body and hand cages
# --------------------------------------------------------------------------

# Torso cross-sections from the crotch up: (height above the pelvis joint,
# half width, half depth, depth centre).  Five cells across (right leg, crotch
# strip, left leg at the bottom; shoulder, neck, shoulder at the top), two cells
# deep, six rows; the arms leave the side faces of the top row.
_TORSO_ROWS = (
    (-0.150, 0.160, 0.100, 0.000),   # crotch / thigh roots
    (-0.075, 0.178, 0.118, -0.008),  # widest hips, buttocks
    (0.040, 0.160, 0.105, 0.005),    # iliac crest
    (0.160, 0.140, 0.098, 0.005),    # waist
    (0.300, 0.160, 0.108, 0.005),    # chest
    (0.400, 0.168, 0.100, -0.010),   # armpits
    (0.480, 0.160, 0.080, -0.025),   # shoulder tops / neck root
)
# The torso SDF's control sections: (height above the pelvis joint, half width,
# half depth, depth centre), neutral body.
_TORSO_LOFT = (
    (-0.120, 0.150, 0.100, -0.022),   # lower buttocks (the pelvis bowl closes it)
    (-0.060, 0.170, 0.112, -0.020),   # widest hips
    (0.030, 0.158, 0.104, -0.006),    # iliac crest
    (0.140, 0.138, 0.094, 0.008),     # waist
    (0.240, 0.146, 0.102, 0.012),     # lower ribs
    (0.330, 0.158, 0.108, 0.010),     # chest
    (0.410, 0.160, 0.098, -0.008),    # armpits
    (0.465, 0.140, 0.080, -0.026),    # shoulder girdle
    (0.505, 0.080, 0.058, -0.032),    # neck root
)
_TORSO_XFRAC_BOTTOM = (-1.0, -0.46, -0.07, 0.07, 0.46, 1.0)
_TORSO_XFRAC_MIDDLE = (-1.0, -0.42, -0.10, 0.10, 0.42, 1.0)
_TORSO_XFRAC_TOP = (-1.0, -0.40, -0.12, 0.12, 0.40, 1.0)


def _torso_lattice_pos(p, J):
    s, sh, hp, g, w = p['scale'], p['shoulder'], p['hip'], p['girth'], p['waist']
    pelvis_y = J[0, 1]
    rows = len(_TORSO_ROWS)

    def width_factor(j):
        # hips widen the bottom rows, shoulders the top rows, waist the middle
        return (hp, hp, 0.5 * (hp + w), w, 0.5 * (w + sh), sh, sh)[j]

    def pos(i, j, k):
        y_rel, a, b, c = _TORSO_ROWS[j]
        a = a * s * g * width_factor(j)
        b = b * s * g
        xf = (_TORSO_XFRAC_BOTTOM if j == 0 else
              _TORSO_XFRAC_TOP if j == rows - 1 else _TORSO_XFRAC_MIDDLE)[i]
        zf = (-1.0, 0.0, 1.0)[k]
        if abs(xf) == 1.0 and zf != 0.0:   # cut the box's vertical edges
            xf, zf = 0.80 * xf, 0.80 * zf
        y = pelvis_y + y_rel * s
        if j == rows - 1:                   # shoulders slope down from the neck
            y -= 0.030 * s * abs(xf)
        return np.array([xf * a, y, c * s + zf * b])
    return pos


def _torso_tag(side, a, b):
    return 'torso'


def _lerp(a, b, t):
    return a + (b - a) * t


def _leg_stations(J, side, p):
    """Extrusion rings of one leg: (centre, half x, half z, tag)."""
    sgn = 1.0 if side == 'L' else -1.0
    s, g = p['scale'], p['girth'] * p['limb']
    H = J[SMPL_JOINT_NAMES.index(side + '_hip')]
    K = J[SMPL_JOINT_NAMES.index(side + '_knee')]
    A = J[SMPL_JOINT_NAMES.index(side + '_ankle')]
    sole = _body_landmarks(J, p)['sole_y']
    st = [(_lerp(H, K, 0.40) + [sgn * 0.010 * s, 0, 0], 0.076, 0.080),
          (_lerp(H, K, 0.92), 0.055, 0.058),
          (_lerp(K, A, 0.25) + [0, 0, -0.008 * s], 0.052, 0.058),
          (_lerp(K, A, 0.62) + [0, 0, -0.004 * s], 0.040, 0.044),
          (_lerp(K, A, 0.92), 0.032, 0.036),
          (np.array([A[0], sole + 0.020 * s, A[2] - 0.012 * s]), 0.036, 0.050)]  # heel
    return [(c, hx * s * g, hz * s * g, side + '_leg') for c, hx, hz in st]


def _foot_stations(J, side, p):
    """Forward extrusion rings of one foot: (centre, half x, half y, tag)."""
    s = p['scale']
    A = J[SMPL_JOINT_NAMES.index(side + '_ankle')]
    F = J[SMPL_JOINT_NAMES.index(side + '_foot')]
    sole = _body_landmarks(J, p)['sole_y']
    mid = np.array([0.5 * (A[0] + F[0]), sole + 0.036 * s, A[2] + 0.075 * s])
    toe = np.array([F[0] + np.sign(F[0]) * 0.004 * s, sole + 0.020 * s, F[2] + 0.075 * s])
    return [(mid, 0.047 * s, 0.034 * s, side + '_foot'),
            (toe, 0.042 * s, 0.018 * s, side + '_foot')]


def _arm_stations(J, side, p):
    """Outward extrusion rings of one arm, shoulder to knuckles:
    (centre, half thickness y, half width z, tag)."""
    s, g = p['scale'], p['girth'] * p['limb']
    S = J[SMPL_JOINT_NAMES.index(side + '_shoulder')]
    E = J[SMPL_JOINT_NAMES.index(side + '_elbow')]
    W = J[SMPL_JOINT_NAMES.index(side + '_wrist')]
    fr = _smpl_hand_frames(J, p)[side]
    arm = side + '_arm'
    return [(S + fr.dir([0.020 * s, 0.004 * s, 0.0]), 0.062 * s * g, 0.060 * s * g, arm),
            (_lerp(S, E, 0.45), 0.048 * s * g, 0.050 * s * g, arm),
            (_lerp(S, E, 0.96), 0.039 * s * g, 0.041 * s * g, arm),
            (_lerp(E, W, 0.97), 0.022 * s * g, 0.031 * s * g, arm),
            (fr.to_world([0.045 * s, 0.0, 0.0]), 0.017 * s, 0.043 * s, side + '_thumb_base'),
            (fr.to_world([0.090 * s, 0.0, -0.002 * s]), 0.014 * s, 0.042 * s,
             side + '_palm_tip')]


def _head_stations(J, p):
    """Upward extrusion rings of neck and head: (centre, half x, half z, tag)."""
    s = p['scale']
    N = J[SMPL_JOINT_NAMES.index('neck')]
    Hd = J[SMPL_JOINT_NAMES.index('head')]
    top = _body_landmarks(J, p)['head_top']
    st = [((0.0, N[1] + 0.035 * s, N[2] + 0.006 * s), 0.054, 0.054, 'neck'),
          ((0.0, Hd[1] - 0.035 * s, Hd[2] - 0.030 * s), 0.052, 0.056, 'neck'),
          ((0.0, Hd[1] + 0.005 * s, Hd[2] + 0.002 * s), 0.062, 0.086, 'head'),   # jaw
          ((0.0, Hd[1] + 0.050 * s, Hd[2] - 0.005 * s), 0.073, 0.098, 'head'),   # nose
          ((0.0, Hd[1] + 0.100 * s, Hd[2] - 0.012 * s), 0.078, 0.100, 'head'),   # eyes
          ((0.0, Hd[1] + 0.145 * s, Hd[2] - 0.018 * s), 0.073, 0.094, 'head'),   # forehead
          ((0.0, top[1] - 0.018 * s, top[2] - 0.012 * s), 0.044, 0.056, 'head')]  # crown
    return [(np.array(c), hx * s, hz * s, t) for c, hx, hz, t in st]


def _extrude_chain(cage, region, stations, u_hint, direction=None):
    """Extrude ``region`` through stations (centre, half_u, half_v, tag), one
    ring per station, each along ``direction`` or else from the previous
    ring's centre to this one."""
    prev = np.mean([cage.face_center(f) for f in region], axis=0)
    for center, half_u, half_v, tag in stations:
        center = np.asarray(center, float)
        axis = direction if direction is not None else center - prev
        region = cage.extrude(region, center, axis, half_u, half_v, tag, u_hint)
        prev = center
    return region


def _retag_palm(cage, side, faces):
    """After the palm rings: only the end faces of the last ring are the palm
    tip (fingers grow there) and only the front (+z, thumb-side) face of the
    first palm ring is the thumb base; every other palm face is plain palm."""
    for f in faces:
        n = cage.face_normal(f)
        n = n / np.linalg.norm(n)
        if cage.tag[f] == side + '_palm_tip' and abs(n[0]) < 0.7:
            cage.tag[f] = side + '_palm'
        if cage.tag[f] == side + '_thumb_base' and n[2] < 0.7:
            cage.tag[f] = side + '_palm'


def _build_body_cage(J, p):
    """Coarse body cage: lattice torso, extruded legs, feet, arms, palms, head."""
    cage = _Cage()
    cells = _lattice_box(cage, (5, len(_TORSO_ROWS) - 1, 2), _torso_lattice_pos(p, J),
                         _torso_tag)
    top_row = len(_TORSO_ROWS) - 2
    for side, cols in (('L', (3, 4)), ('R', (0, 1))):
        sgn = 1.0 if side == 'L' else -1.0
        # Leg, then the foot from the front faces of the last (heel) ring.
        leg = [cells[('-y', i, k)] for i in cols for k in (0, 1)]
        n_before = len(cage.f)
        _extrude_chain(cage, leg, _leg_stations(J, side, p), (1, 0, 0))
        heel_ring = list(range(n_before, len(cage.f)))[-8:]
        front = [f for f in heel_ring
                 if cage.face_normal(f)[2] > 0.7 * np.linalg.norm(cage.face_normal(f))]
        assert len(front) == 2, front
        _extrude_chain(cage, front, _foot_stations(J, side, p), (1, 0, 0),
                       direction=np.array([0.0, 0.0, 1.0]))
        # Arm, ending with two palm rings; the thumb grows later from the
        # front face of the first palm ring.
        arm = [cells[('+x' if side == 'L' else '-x', top_row, k)] for k in (0, 1)]
        n_before = len(cage.f)
        _extrude_chain(cage, arm, _arm_stations(J, side, p), (0, 1, 0),
                       direction=np.array([sgn, 0.0, 0.0]))
        _retag_palm(cage, side, range(n_before, len(cage.f)))
    neck = [cells[('+y', i, k)] for i in (1, 2, 3) for k in (0, 1)]
    _extrude_chain(cage, neck, _head_stations(J, p), (1, 0, 0),
                   direction=np.array([0.0, 1.0, 0.0]))
    return cage


def _finger_stations(hand_joints, tips, frame, finger, scale, web_ring, side):
    """Rings of one finger (grown after the first subdivision): (centre, half
    thickness, half width, tag).  ``hand_joints``/``tips`` are hand-local and
    already scaled."""
    f = FINGERS.index(finger)
    j0 = 1 + 3 * f
    chain = [hand_joints[j0], hand_joints[j0 + 1], hand_joints[j0 + 2], tips[f]]
    if finger == 'thumb':
        radii = [(0.0125, 0.0135), (0.0105, 0.0115), (0.0092, 0.0100), (0.0070, 0.0075)]
    else:
        w = {'index': 1.0, 'middle': 1.04, 'ring': 0.96, 'pinky': 0.86}[finger]
        radii = [(0.0088 * w, 0.0098 * w), (0.0080 * w, 0.0088 * w),
                 (0.0072 * w, 0.0078 * w), (0.0056 * w, 0.0060 * w)]
    st = []
    if web_ring:   # a ring just past the knuckle shapes the finger web
        st.append((chain[0] + 0.35 * (chain[1] - chain[0]), radii[0]))
    st.append((chain[1], radii[1]))
    st.append((chain[2], radii[2]))
    d = chain[3] - chain[2]
    st.append((chain[3] - 0.004 * scale * d / np.linalg.norm(d), radii[3]))
    tag = side + '_' + finger
    return [(frame.to_world(c), hu * scale, hv * scale, tag) for c, (hu, hv) in st]


def _add_fingers(cage, side, frame, scale, web_rings=()):
    """Grow five fingers on a once-subdivided cage.

    The palm tip is then four columns (across the hand) of two faces
    (thickness); each column becomes a finger.  The thumb grows from the four
    faces of the palm's front (thumb-side) patch.
    """
    joints, tips = _hand_skeleton_local(scale)
    tip_faces = cage.faces_with_tag(side + '_palm_tip')
    assert len(tip_faces) == 8, len(tip_faces)
    across = [np.dot(cage.face_center(f) - frame.origin, frame.axes[2]) for f in tip_faces]
    order = [tip_faces[i] for i in np.argsort(across)[::-1]]   # thumb side first
    columns = {'index': order[0:2], 'middle': order[2:4], 'ring': order[4:6],
               'pinky': order[6:8], 'thumb': cage.faces_with_tag(side + '_thumb_base')}
    assert len(columns['thumb']) == 4
    for finger in FINGERS:
        st = _finger_stations(joints, tips, frame, finger, scale, finger in web_rings, side)
        _extrude_chain(cage, columns[finger], st, frame.axes[1])


def _subdivide(cage):
    # Region extrusion orphans the region's interior vertices: drop them.
    used = sorted({i for f in cage.f for i in f})
    remap = {old: new for new, old in enumerate(used)}
    faces = [[remap[i] for i in f] for f in cage.f]
    v, q, t = _catmull_clark(cage.verts()[used], faces, cage.tag)
    return _quads_to_cage(v, q, t)


# --------------------------------------------------------------------------
# Signed distance functions: the shape the subdivided cage is pulled onto
# --------------------------------------------------------------------------
#
# A part is (kind, params, blend radius k).  Parts are combined with the
# polynomial smooth minimum, which rounds every junction (armpit, crotch, neck)
# by about k.  Each part has a bounding sphere so that it is only evaluated for
# points that it can influence (fingers are tiny, bodies big).

def _norm(x):
    """Row norms (faster than np.linalg.norm for many short rows)."""
    return np.sqrt(np.einsum('ij,ij->i', x, x))


def _normalized(x):
    return x / np.maximum(_norm(x), 1e-12)[:, None]


def _sd_round_cone(P, a, b, ra, rb):
    """Capsule with linearly varying radius: (approximate distance, gradient)."""
    ba = b - a
    t = np.clip((P - a) @ ba / (ba @ ba), 0.0, 1.0)
    diff = P - (a + t[:, None] * ba)
    return _norm(diff) - (ra + t * (rb - ra)), _normalized(diff)


def _sd_ellipsoid(P, c, r):
    """Axis-aligned ellipsoid: Quilez's first-order distance approximation,
    gradient along the ellipsoid normal."""
    q = P - c
    k0 = _norm(q / r)
    k1 = np.maximum(_norm(q / (r * r)), 1e-12)
    return k0 * (k0 - 1.0) / k1, _normalized(q / (r * r))


def _sd_round_box(P, c, axes, half, radius):
    """Box with rounded edges in the frame ``axes`` (rows are unit axes)."""
    loc = (P - c) @ axes.T
    q = np.abs(loc) - (np.asarray(half) - radius)
    qp = np.maximum(q, 0.0)
    outside = _norm(qp)
    inside = np.minimum(q.max(axis=1), 0.0)
    g_out = qp / np.maximum(outside, 1e-12)[:, None]
    g_in = np.zeros_like(q)
    g_in[np.arange(len(q)), q.argmax(axis=1)] = 1.0
    g = np.where((outside > 0)[:, None], g_out, g_in) * np.sign(loc)
    return outside + inside - radius, g @ axes


def _sd_loft(P, ys, a, b, cz, n_exp=2.4):
    """Torso: superellipse cross-sections (half width a, half depth b, depth
    centre cz) interpolated smoothly (monotone cubic) along y between the
    control heights ``ys``; the two ends are cut flat and blended by the
    neighbouring parts.  Returns (approximate distance, gradient)."""
    y = np.clip(P[:, 1], ys[0], ys[-1])
    A, B, C = (scipy.interpolate.PchipInterpolator(ys, v)(y) for v in (a, b, cz))
    u = np.abs(P[:, 0]) / A
    w = np.abs(P[:, 2] - C) / B
    rho = np.maximum((u ** n_exp + w ** n_exp) ** (1.0 / n_exp), 1e-9)
    # gradient of rho in the cross-section plane
    gx = rho ** (1 - n_exp) * u ** (n_exp - 1) * np.sign(P[:, 0]) / A
    gz = rho ** (1 - n_exp) * w ** (n_exp - 1) * np.sign(P[:, 2] - C) / B
    gn = np.maximum(np.sqrt(gx * gx + gz * gz), 1e-9)
    d = (rho - 1.0) / gn
    g = np.stack([gx / gn, np.zeros_like(gx), gz / gn], axis=1)
    # flat ends
    for dy, sgn in ((ys[0] - P[:, 1], -1.0), (P[:, 1] - ys[-1], 1.0)):
        cut = dy > d
        d = np.where(cut, dy, d)
        g[cut] = (0.0, sgn, 0.0)
    return d, g


def _smin(a, b, k, ga=None, gb=None):
    """Polynomial smooth minimum (k = 0: plain minimum) and its gradient,
    which is exactly h * grad a + (1 - h) * grad b."""
    if k <= 0.0:
        h = (a < b).astype(float)
    else:
        h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    d = b * (1.0 - h) + a * h - k * h * (1.0 - h)
    if ga is None:
        return d
    return d, h[:, None] * ga + (1.0 - h)[:, None] * gb


class _SDF:
    """Smooth union of parts (evaluated with bounding-sphere culling)."""

    def __init__(self):
        self.parts = []   # (fn, k, centre, radius, group)
        self.planes = []  # (point, outward normal): smooth-free half-space cuts

    def _add(self, fn, k, centre, radius, group):
        self.parts.append((fn, float(k), np.asarray(centre, float), float(radius), group))

    def cone(self, a, b, ra, rb, k, group):
        a, b = np.asarray(a, float), np.asarray(b, float)
        self._add(lambda P: _sd_round_cone(P, a, b, ra, rb), k, 0.5 * (a + b),
                  0.5 * np.linalg.norm(b - a) + max(ra, rb), group)

    def ellipsoid(self, c, r, k, group):
        c, r = np.asarray(c, float), np.asarray(r, float)
        self._add(lambda P: _sd_ellipsoid(P, c, r), k, c, r.max(), group)

    def loft(self, ys, a, b, cz, k, group):
        ys, a, b, cz = (np.asarray(v, float) for v in (ys, a, b, cz))
        mid = np.array([0.0, 0.5 * (ys[0] + ys[-1]), cz.mean()])
        self._add(lambda P: _sd_loft(P, ys, a, b, cz), k, mid,
                  np.hypot(0.5 * (ys[-1] - ys[0]), max(a.max(), b.max())), group)

    def box(self, c, axes, half, radius, k, group):
        c, axes = np.asarray(c, float), np.asarray(axes, float)
        self._add(lambda P: _sd_round_box(P, c, axes, half, radius), k, c,
                  np.linalg.norm(half), group)

    def near_sets(self, P, margin=0.08):
        """For each part, the ids of the points it can influence."""
        cs = np.array([c for _, _, c, _, _ in self.parts])
        reach = np.array([r + k + margin for _, k, _, r, _ in self.parts])
        # squared distances of all points to all part centres in one product
        d2 = (P * P).sum(axis=1)[:, None] + (cs * cs).sum(axis=1)[None] - 2.0 * P @ cs.T
        near = d2 < reach[None] ** 2
        return [np.nonzero(near[:, i])[0] for i in range(len(self.parts))]

    def __call__(self, P, grad=False, near=None):
        """Distance (and gradient) at points P.  ``near`` (from near_sets,
        possibly computed for slightly different points) saves the culling."""
        if near is None:
            near = self.near_sets(P)
        d = np.full(len(P), 1e3)
        g = np.zeros((len(P), 3))
        for (fn, k, c, r, _), idx in zip(self.parts, near):
            if len(idx):
                dp, gp = fn(P[idx])
                d[idx], g[idx] = _smin(d[idx], dp, k, g[idx], gp)
        for c, n in self.planes:
            dp = (P - c) @ n
            cut = dp > d
            d[cut] = dp[cut]
            g[cut] = n
        # Points far from every part: head back towards the nearest part.
        far = d >= 1e3
        if far.any():
            cs = np.array([c for _, _, c, _, _ in self.parts])
            rs = np.array([r for _, _, _, r, _ in self.parts])
            dist = np.linalg.norm(P[far, None] - cs[None], axis=2) - rs
            j = dist.argmin(axis=1)
            d[far] = dist[np.arange(len(j)), j]
            g[far] = _normalized(P[far] - cs[j])
        return (d, g) if grad else d


def _add_hand_sdf(sdf, frame, scale, group, wrist_radii):
    """Palm, thenar pad and fingers of one hand (hand-local skeleton)."""
    joints, tips = _hand_skeleton_local(scale)
    W = frame.to_world
    s = scale
    # Forearm end: a flattened round cone into the palm.
    sdf.cone(W([-0.030 * s, 0, 0]), W([0.010 * s, 0, 0]), wrist_radii[0], wrist_radii[1],
             0.015 * s, group)
    sdf.box(W([0.050 * s, 0.001 * s, -0.002 * s]), frame.axes,
            np.array([0.046, 0.013, 0.041]) * s, 0.011 * s, 0.018 * s, group)
    # Thenar pad; the hand frames are axis-aligned, so local radii are world radii.
    sdf.ellipsoid(W([0.030 * s, -0.008 * s, 0.022 * s]), np.array([0.030, 0.014, 0.022]) * s,
                  0.012 * s, group)
    for f, finger in enumerate(FINGERS):
        chain = [joints[1 + 3 * f], joints[2 + 3 * f], joints[3 + 3 * f], tips[f]]
        if finger == 'thumb':
            radii = [0.0150, 0.0112, 0.0100, 0.0082]
        else:
            w = {'index': 1.0, 'middle': 1.04, 'ring': 0.96, 'pinky': 0.86}[finger]
            radii = [0.0094 * w, 0.0086 * w, 0.0076 * w, 0.0062 * w]
        for k in range(3):
            end = chain[k + 1]
            if k == 2:   # stop short of the tip so the round cap ends at it
                d = chain[3] - chain[2]
                end = chain[3] - radii[3] * s * d / np.linalg.norm(d)
            sdf.cone(W(chain[k]), W(end), radii[k] * s, radii[k + 1] * s,
                     (0.010 if k == 0 else 0.002) * s, group)


def _body_sdf(J, p):
    """Smooth-union SDF of the whole T-pose body."""
    s, sh, hp, g, lm, w = (p['scale'], p['shoulder'], p['hip'], p['girth'], p['limb'],
                           p['waist'])
    j = {n: J[i] for i, n in enumerate(SMPL_JOINT_NAMES)}
    L = _body_landmarks(J, p)
    sdf = _SDF()
    py = j['pelvis'][1]
    # Torso: a loft of superellipse sections (no creases between rows).
    rows = np.array(_TORSO_LOFT)
    wf = np.interp(rows[:, 0], [-0.2, 0.0, 0.14, 0.30, 0.5], [hp, hp, w, sh, sh])
    sdf.loft(py + rows[:, 0] * s, rows[:, 1] * s * g * wf, rows[:, 2] * s * g, rows[:, 3] * s,
             0.0, 'torso')
    # Pelvis bowl: rounds off the bottom of the loft between the thighs.
    sdf.ellipsoid([0, py - 0.100 * s, -0.012 * s], np.array([0.150 * hp, 0.100, 0.104]) * s * g,
                  0.05 * s, 'torso')
    for x in (-1, 1):   # buttocks
        sdf.ellipsoid([x * 0.066 * s * hp, py - 0.105 * s, -0.048 * s],
                      np.array([0.080, 0.088, 0.072]) * s * g, 0.04 * s, 'torso')
    if p['breast'] > 0:
        b = p['breast']
        for x in (-1, 1):
            sdf.ellipsoid([x * 0.080 * s * sh, j['spine2'][1] + 0.055 * s, 0.072 * s],
                          np.array([0.062, 0.058, 0.045 * b + 0.015]) * s, 0.04 * s, 'torso')
    # Neck and head.
    sdf.cone([0, j['neck'][1] - 0.040 * s, -0.040 * s], [0, j['head'][1] + 0.020 * s, -0.008 * s],
             0.060 * s, 0.051 * s, 0.05 * s, 'head')
    hc = L['head_center']
    sdf.ellipsoid(hc, np.array([0.077, 0.105, 0.098]) * s, 0.03 * s, 'head')
    sdf.ellipsoid(j['head'] + np.array([0, 0.010, 0.038]) * s, np.array([0.060, 0.062, 0.068]) * s,
                  0.03 * s, 'head')
    sdf.ellipsoid(L['chin'] + np.array([0, 0.006, -0.012]) * s, np.array([0.026, 0.022, 0.022]) * s,
                  0.02 * s, 'head')
    sdf.ellipsoid(L['nose'] - np.array([0, 0.012, 0.020]) * s, np.array([0.016, 0.030, 0.022]) * s,
                  0.020 * s, 'head')
    for x in (-1, 1):
        e = L['ear'] * np.array([x, 1, 1])
        sdf.ellipsoid(e, np.array([0.013, 0.032, 0.020]) * s, 0.010 * s, 'head')
    # Legs and feet.
    for side in ('L', 'R'):
        H, K, A, F = (j[side + n] for n in ('_hip', '_knee', '_ankle', '_foot'))
        x = np.sign(H[0])
        gl = g * lm
        sdf.cone(H + np.array([x * 0.010, 0.02, -0.004]) * s, K, 0.086 * s * gl, 0.053 * s * gl,
                 0.05 * s, 'leg')
        sdf.ellipsoid(K + np.array([0, 0.002, 0.012]) * s, np.array([0.048, 0.050, 0.046]) * s * gl,
                      0.02 * s, 'leg')
        sdf.cone(K, A, 0.050 * s * gl, 0.033 * s * gl, 0.02 * s, 'leg')
        sdf.ellipsoid(K + (A - K) * 0.30 + np.array([x * 0.004, 0, -0.018]) * s,
                      np.array([0.046, 0.100, 0.046]) * s * gl, 0.03 * s, 'leg')
        sole = L['sole_y']
        sdf.ellipsoid([A[0], sole + 0.040 * s, A[2] - 0.040 * s],
                      np.array([0.034, 0.042, 0.045]) * s, 0.03 * s, 'foot')
        sdf.box([0.5 * (A[0] + F[0]), sole + 0.034 * s, A[2] + 0.060 * s], np.eye(3),
                np.array([0.038, 0.034, 0.088]) * s, 0.028 * s, 0.035 * s, 'foot')
        sdf.ellipsoid([F[0] + x * 0.003 * s, sole + 0.022 * s, F[2] + 0.035 * s],
                      np.array([0.046, 0.022, 0.060]) * s, 0.02 * s, 'foot')
        sdf.ellipsoid(A + np.array([0, 0.010, 0.010]) * s, np.array([0.038, 0.045, 0.045]) * s,
                      0.04 * s, 'foot')
    sdf.planes.append((np.array([0.0, L['sole_y'], 0.0]), np.array([0.0, -1.0, 0.0])))
    # Arms and hands.
    frames = _smpl_hand_frames(J, p)
    for side in ('L', 'R'):
        S, E, Wr = (j[side + n] for n in ('_shoulder', '_elbow', '_wrist'))
        x = np.sign(S[0])
        ga = g * lm
        sdf.cone([x * 0.050 * s, j['neck'][1] - 0.030 * s, -0.035 * s],
                 S + np.array([0, 0.020, -0.005]) * s, 0.045 * s, 0.050 * s, 0.05 * s, 'torso')
        sdf.ellipsoid(S + np.array([x * 0.028, 0.006, 0.002]) * s,
                      np.array([0.068, 0.058, 0.058]) * s * ga, 0.04 * s, 'arm')
        sdf.cone(S, E, 0.050 * s * ga, 0.036 * s * ga, 0.03 * s, 'arm')
        sdf.cone(E, Wr, 0.038 * s * ga, 0.025 * s * ga, 0.02 * s, 'arm')
        sdf.ellipsoid(E + (Wr - E) * 0.28 + np.array([0, 0.002, 0.002]) * s,
                      np.array([0.075, 0.037, 0.044]) * s * ga, 0.03 * s, 'arm')
        _add_hand_sdf(sdf, frames[side], s, 'hand', (0.026 * s, 0.022 * s))
    return sdf


def _hand_sdf(frame, scale):
    sdf = _SDF()
    W = frame.to_world
    sdf.cone(W([-0.060 * scale, 0, 0]), W([-0.01 * scale, 0, 0]), 0.030 * scale,
             0.027 * scale, 0.0, 'arm')
    _add_hand_sdf(sdf, frame, scale, 'hand', (0.027 * scale, 0.023 * scale))
    return sdf


# --------------------------------------------------------------------------
# Triangle-mesh utilities
# --------------------------------------------------------------------------

def _triangulate(V, quads, diag02):
    """Split each quad along 0-2 (diag02 True) or 1-3."""
    q = np.asarray(quads)
    a = np.where(diag02[:, None], q[:, [0, 1, 2]], q[:, [0, 1, 3]])
    b = np.where(diag02[:, None], q[:, [0, 2, 3]], q[:, [1, 2, 3]])
    return np.concatenate([a, b])


def _short_diagonals(V, quads):
    q = np.asarray(quads)
    d02 = np.linalg.norm(V[q[:, 0]] - V[q[:, 2]], axis=1)
    d13 = np.linalg.norm(V[q[:, 1]] - V[q[:, 3]], axis=1)
    return d02 <= d13


def _edges(F):
    """Unique undirected edges (E,2) of a triangle list, sorted."""
    e = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]).astype(np.int64)
    e = np.sort(e, axis=1)
    n = int(e.max()) + 1
    key = np.unique(e[:, 0] * n + e[:, 1])
    return np.stack([key // n, key % n], axis=1)


def _vertex_normals(V, F):
    """Area-weighted vertex normals."""
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    idx = F.ravel()
    vn = np.stack([np.bincount(idx, np.repeat(n[:, c], 3), minlength=len(V))
                   for c in range(3)], axis=1)
    return _normalized(vn)


def _adjacency(F, nv):
    """Row-normalised vertex adjacency (uniform Laplacian averaging)."""
    e = _edges(F)
    A = scipy.sparse.coo_matrix((np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]],
                                                      np.r_[e[:, 1], e[:, 0]])),
                                shape=(nv, nv)).tocsr()
    deg = np.asarray(A.sum(axis=1)).ravel()
    return scipy.sparse.diags(1.0 / np.maximum(deg, 1)) @ A


def _plan_splits(V, F, count, frozen=(), importance=None):
    """Choose ``count`` edge splits, longest edges first (length times the
    mean ``importance`` of the two ends, so small features get more
    vertices), in rounds where no two split edges share a triangle.

    Splitting an edge adds one vertex and two triangles, so a closed mesh
    stays closed with F = 2V - 4.  Returns (faces, [(a, b), ...]); the new
    vertex of split k has id len(V) + k and sits at the edge midpoint."""
    F = F.copy()
    V = V.copy()
    splits = []
    frozen = set(frozen)
    while len(splits) < count:
        e = _edges(F)
        ok = np.array([not (a in frozen and b in frozen) for a, b in e])
        e = e[ok]
        length = np.linalg.norm(V[e[:, 0]] - V[e[:, 1]], axis=1)
        if importance is not None:
            imp = np.r_[importance, np.ones(len(V) - len(importance))]
            length = length * 0.5 * (imp[e[:, 0]] + imp[e[:, 1]])
        used = np.zeros(len(F), bool)
        # edge -> its two faces
        key = {}
        for fi, f in enumerate(F):
            for k in range(3):
                key.setdefault(tuple(sorted((f[k], f[(k + 1) % 3]))), []).append(fi)
        round_ = []
        for ei in np.argsort(-length, kind='stable'):
            a, b = e[ei]
            fs = key[(a, b)]
            if len(fs) != 2 or used[fs].any():
                continue
            used[fs] = True
            round_.append((a, b, fs))
            if len(splits) + len(round_) >= count:
                break
        for a, b, fs in round_:
            m = len(V)
            V = np.vstack([V, 0.5 * (V[a] + V[b])])
            splits.append((int(a), int(b)))
            new = []
            for fi in fs:
                f = list(F[fi])
                k = [i for i in range(3) if {f[i], f[(i + 1) % 3]} == {a, b}][0]
                x, y, z = f[k], f[(k + 1) % 3], f[(k + 2) % 3]
                F[fi] = (x, m, z)
                new.append((m, y, z))
            F = np.vstack([F, new])
        if not round_:
            raise RuntimeError('no edge can be split')
    return F, splits


def _apply_splits(V, splits):
    V = list(V)
    for a, b in splits:
        V.append(0.5 * (V[a] + V[b]))
    return np.array(V)


def _fit_to_sdf(V, F, sdf, iters=24, relax=0.5, max_step=0.01, fixed_plane=None):
    """Pull vertices onto the SDF's zero set (Newton steps along the SDF
    gradient), alternating with tangential Laplacian relaxation, which keeps
    the triangles well shaped and stops vertices bunching up in creases.

    ``fixed_plane`` = (point, normal, vertex ids): those vertices (an open
    boundary) stay in that plane.
    """
    M = _adjacency(F, len(V))
    V = V.copy()
    near = None
    for it in range(iters):
        if it % 8 == 0:   # vertices move < 8 cm between refreshes
            near = sdf.near_sets(V, margin=0.12)
        d, g = sdf(V, grad=True, near=near)
        step = -d / np.maximum((g * g).sum(axis=1), 0.25)
        step = np.clip(step, -max_step, max_step)
        V = V + step[:, None] * g
        n = _vertex_normals(V, F)
        lap = M @ V - V
        lap -= (lap * n).sum(axis=1, keepdims=True) * n
        V = V + relax * (1.0 - 0.5 * it / iters) * lap
        if fixed_plane is not None:
            c, nrm, ids = fixed_plane
            V[ids] -= ((V[ids] - c) @ nrm)[:, None] * nrm
    d, g = sdf(V, grad=True)
    V = V - (d / np.maximum((g * g).sum(axis=1), 0.25))[:, None] * g
    return _unfold(V, F, M, fixed=None if fixed_plane is None else fixed_plane[2])


def _face_pairs(F):
    """Pairs of faces sharing an edge (interior edges only)."""
    e = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
    key = np.sort(e, axis=1)
    fid = np.tile(np.arange(len(F)), 3)
    order = np.lexsort((key[:, 1], key[:, 0]))
    key, fid = key[order], fid[order]
    same = np.all(key[1:] == key[:-1], axis=1)
    return fid[:-1][same], fid[1:][same]


def _unfold(V, F, M, fixed=None, rounds=60):
    """Smooth away the few folds the projection leaves in sharp creases
    (crotch, finger webs, nose tip): where two neighbouring triangles face
    away from each other (dihedral over 90 degrees) the vertices within two
    rings are moved towards their neighbours' centroid (plain 3-D Laplacian)
    until no such pair is left."""
    V = V.copy()
    nbr = (M > 0).astype(float)
    fa, fb = _face_pairs(F)
    for _ in range(rounds):
        fn = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
        fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-15)
        folded = (fn[fa] * fn[fb]).sum(axis=1) < 0.0
        if not folded.any():
            break
        bad = np.zeros(len(V))
        bad[np.unique(F[np.r_[fa[folded], fb[folded]]])] = 1.0
        region = (nbr @ (nbr @ bad + bad) + bad) > 0       # two rings around
        if fixed is not None:
            region[fixed] = False
        V[region] += 0.5 * (M @ V - V)[region]
    return V


# --------------------------------------------------------------------------
# Mesh assembly: cage -> subdivision -> fingers -> subdivision
# --------------------------------------------------------------------------

def _body_subdivided(p):
    """Quad mesh of the body after two Catmull-Clark steps (fingers added in
    between).  Topology does not depend on ``p``; positions do."""
    J = _smpl_joints(p)
    mid = _subdivide(_build_body_cage(J, p))
    frames = _smpl_hand_frames(J, p)
    for side in ('L', 'R'):
        _add_fingers(mid, side, frames[side], p['scale'])
    fine = _subdivide(mid)
    return fine.verts(), np.array(fine.f), fine.tag


def _vertex_tags(quads, qtags, nv):
    """One part tag per vertex: the tag of the last quad that uses it (quads
    are ordered parent by parent, so this is deterministic)."""
    tags = np.empty(nv, dtype=object)
    for q, t in zip(quads, qtags):
        tags[q] = t
    return tags


def _feature_weights(V, centres_radii):
    """Split priority: >1 within the given balls (nose, ears, eyes...)."""
    w = np.ones(len(V))
    for c, r, f in centres_radii:
        w = np.maximum(w, np.where(np.linalg.norm(V - c, axis=1) < r, f, 1.0))
    return w


def _permutation(n, wanted):
    """Order (new -> old) putting old vertex ``o`` at new id ``i`` for each
    (i, o) in ``wanted``; all other vertices keep their relative order."""
    order = np.full(n, -1)
    for new, old in wanted.items():
        order[new] = old
    rest = np.setdiff1d(np.arange(n), list(wanted.values()))
    order[order < 0] = rest
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return order, inverse


def _smpl_picks(V, F, tags, J, p):
    """Old vertex ids of the smplx landmark picks on a fitted body."""
    j = {n: J[i] for i, n in enumerate(SMPL_JOINT_NAMES)}
    L = _body_landmarks(J, p)
    N = _vertex_normals(V, F)
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
    joints, tips = _hand_skeleton_local(p['scale'])
    frames = _smpl_hand_frames(J, p)
    for side in ('L', 'R'):
        fr = frames[side]
        for f, finger in enumerate(FINGERS):
            d = fr.dir(tips[f] - joints[3 + 3 * f])
            c = among(tags == side + '_' + finger)
            picks[side.lower() + finger] = c[np.argmax(V[c] @ d)]
        A, Ft = j[side + '_ankle'], j[side + '_foot']
        sgn = np.sign(A[0])
        c = among(((tags == side + '_foot') | (tags == side + '_leg'))
                  & (V[:, 1] < L['sole_y'] + 0.05))
        front = V[c, 2].max()
        targets = {'BigToe': (Ft[0] - sgn * 0.022, L['sole_y'] + 0.018, front),
                   'SmallToe': (Ft[0] + sgn * 0.030, L['sole_y'] + 0.012, front - 0.035),
                   'Heel': (A[0], L['sole_y'] + 0.020, V[c, 2].min())}
        for name, t in targets.items():
            picks[side + name] = c[np.argmin(np.linalg.norm(V[c] - np.array(t), axis=1))]
    assert len(set(picks.values())) == len(picks), 'two landmarks share a vertex'
    return picks


@functools.lru_cache(maxsize=None)
def _smpl_topology():
    """The fixed SMPL topology (faces, split plan, vertex order, part tags),
    decided once on the canonical neutral body so that all genders and seeds
    share faces and vertex ids, as the real model files do."""
    p = _body_params('neutral', 0, jitter=False)
    J = _smpl_joints(p)
    V, Q, qtags = _body_subdivided(p)
    diag = _short_diagonals(V, Q)
    F = _triangulate(V, Q, diag)
    tags = _vertex_tags(Q, qtags, len(V))
    L = _body_landmarks(J, p)
    mirror = np.array([-1.0, 1.0, 1.0])
    # Spend the extra vertices mostly on the small face features.
    imp = _feature_weights(V, [(L['nose'], 0.05, 2.5), (L['ear'], 0.04, 2.5),
                               (L['ear'] * mirror, 0.04, 2.5), (L['eye'], 0.03, 1.5),
                               (L['eye'] * mirror, 0.03, 1.5)])
    F, splits = _plan_splits(V, F, SMPL_NUM_VERTS - len(V), importance=imp)
    tags = np.concatenate([tags, [tags[a] for a, _ in splits]])
    V = _fit_to_sdf(_apply_splits(V, splits), F, _body_sdf(J, p))
    picks = _smpl_picks(V, F, tags, J, p)
    order, inverse = _permutation(len(V), {SMPL_VERTEX_IDS[k]: v for k, v in picks.items()})
    return {'diag': diag, 'splits': splits, 'faces_old': F, 'order': order,
            'faces': inverse[F].astype(np.uint32), 'tags': tags[order]}


def _smpl_template(p):
    """Rest vertices (6890,3) of the body with knobs ``p``, in final order."""
    topo = _smpl_topology()
    V, Q, _ = _body_subdivided(p)
    V = _apply_splits(V, topo['splits'])
    V = _fit_to_sdf(V, topo['faces_old'], _body_sdf(_smpl_joints(p), p))
    return V[topo['order']]


# --------------------------------------------------------------------------
# Skinning weights, joint regressors, blend shapes
# --------------------------------------------------------------------------

def _segment_distance(P, a, b):
    ba = b - a
    t = np.clip((P - a) @ ba / max(ba @ ba, 1e-12), 0.0, 1.0)
    return np.linalg.norm(P - (a + t[:, None] * ba), axis=1), t


def _diffused_weights(V, F, labels, n_joints, iters, max_influences=4):
    """Smooth skinning weights from hard part labels: diffuse the one-hot
    labels over the mesh graph (so weights follow the surface, never jump
    between touching parts), keep the strongest few, renormalise."""
    W = np.zeros((len(V), n_joints))
    W[np.arange(len(V)), labels] = 1.0
    M = _adjacency(F, len(V))
    for _ in range(iters):
        W = 0.5 * W + 0.5 * (M @ W)
    # keep the max_influences largest per vertex (SMPL has a few per vertex)
    drop = np.argsort(W, axis=1)[:, :-max_influences]
    np.put_along_axis(W, drop, 0.0, axis=1)
    W[W < 1e-4] = 0.0
    return W / W.sum(axis=1, keepdims=True)


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
    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]]
                    + [[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    cosang = (d / np.maximum(dist[:, None], 1e-9)) @ dirs.T
    for i in range(len(dirs)):
        ok = cosang[:, i] > 0.8
        if ok.any():
            chosen.add(int(ids[ok][np.argmin(dist[ok])]))
    return np.array(sorted(chosen))


def _regressor_rows(V, targets, allowed_masks, k=40, smooth=1.0):
    """Rows of a convex joint regressor: (R, V) csr matrix."""
    rows, cols, vals = [], [], []
    for r, (t, allowed) in enumerate(zip(targets, allowed_masks)):
        ids, w = _convex_weights(V, t, _surrounding_vertices(V, t, allowed, k), smooth)
        rows += [r] * len(ids)
        cols += ids.tolist()
        vals += w.tolist()
    return scipy.sparse.csr_matrix((vals, (rows, cols)), shape=(len(targets), len(V)))


# Which joints may drive each part (so that, say, the inner thigh never takes
# weight from the other leg or a hand from the hip it almost touches).
def _smpl_part_joints():
    idx = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}
    parts = {'torso': ['pelvis', 'spine1', 'spine2', 'spine3', 'L_hip', 'R_hip', 'L_collar',
                       'R_collar', 'L_shoulder', 'R_shoulder', 'neck'],
             'neck': ['spine3', 'neck', 'head'], 'head': ['neck', 'head']}
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
    L = _body_landmarks(J, p)
    _, tips = _hand_skeleton_local(s)
    frames = _smpl_hand_frames(J, p)
    # spine2 -> spine3 is short (as in SMPL); let spine2 own the lower ribs too
    rib = j['spine3'] + [0, 0.06 * s, 0]
    seg = {'pelvis': (j['pelvis'], j['pelvis'] - [0, 0.10 * s, 0.02 * s]),
           'spine1': (j['spine1'], j['spine2']), 'spine2': (j['spine2'], rib),
           'spine3': (rib, j['neck']), 'neck': (j['neck'], j['head']),
           'head': (j['head'], L['head_top'])}
    for side in 'LR':
        for a, b in (('hip', 'knee'), ('knee', 'ankle'), ('ankle', 'foot'),
                     ('collar', 'shoulder'), ('shoulder', 'elbow'), ('elbow', 'wrist'),
                     ('wrist', 'hand')):
            seg[f'{side}_{a}'] = (j[f'{side}_{a}'], j[f'{side}_{b}'])
        seg[side + '_foot'] = (j[side + '_foot'], j[side + '_foot'] + [0, -0.01 * s, 0.07 * s])
        seg[side + '_hand'] = (j[side + '_hand'],
                               frames[side].to_world(tips[FINGERS.index('middle')]))
    return [seg[n] for n in SMPL_JOINT_NAMES]


def _skinning_weights(V, F, tags, bones, part_joints, iters):
    labels = np.zeros(len(V), dtype=np.int64)
    for part, joints in part_joints.items():
        ids = np.nonzero(tags == part)[0]
        if not len(ids):
            continue
        dist = np.stack([_segment_distance(V[ids], *bones[j])[0] for j in joints], axis=1)
        labels[ids] = np.array(joints)[dist.argmin(axis=1)]
    return _diffused_weights(V, F, labels, len(bones), iters)


def _joint_candidates(tags, part_joints, n_joints):
    """Per joint, the vertices of the parts that joint can drive."""
    masks = np.zeros((n_joints, len(tags)), bool)
    for part, joints in part_joints.items():
        for j in joints:
            masks[j] |= tags == part
    return masks


def _radial_offsets(V, W, bones):
    """Per vertex, the skinning-weighted offset from its bones' axes (points
    outwards, length = local limb / trunk radius)."""
    out = np.zeros_like(V)
    for j, (a, b) in enumerate(bones):
        w = W[:, j]
        ids = np.nonzero(w)[0]
        if len(ids):
            ba = b - a
            t = np.clip((V[ids] - a) @ ba / max(ba @ ba, 1e-12), 0.0, 1.0)
            out[ids] += w[ids, None] * (V[ids] - (a + t[:, None] * ba))
    return out


def _smooth_field(F, X, iters):
    M = _adjacency(F, len(X))
    for _ in range(iters):
        X = 0.5 * X + 0.5 * (M @ X)
    return X


def _smpl_shapedirs(V, F, W, J, bones, p, num_betas, seed):
    """Shape blend shapes (V,3,num_betas), one unit = one standard deviation.

    0 overall size (about 6 % = 10 cm of height), 1 girth / weight, 2 leg
    length, 3 shoulder width, 4 hip width, 5 limb thickness, 6 arm length,
    7 head size, 8 torso length, 9 chest / belly depth; further components are
    smooth random part-wise mixtures with decreasing size.  The fields are
    built from the smooth skinning weights, so they are smooth too.
    """
    idx = {n: i for i, n in enumerate(SMPL_JOINT_NAMES)}

    def w(*names):   # summed skinning weight of some joints: a smooth part mask
        return W[:, [idx[n] for n in names]].sum(axis=1)
    radial = _radial_offsets(V, W, bones)
    pelvis = J[0]
    x, y, z = V[:, 0], V[:, 1], V[:, 2]
    trunk = w('pelvis', 'spine1', 'spine2', 'spine3')
    legs = w('L_hip', 'R_hip', 'L_knee', 'R_knee', 'L_ankle', 'R_ankle', 'L_foot', 'R_foot')
    arms = w('L_shoulder', 'R_shoulder', 'L_elbow', 'R_elbow', 'L_wrist', 'R_wrist',
             'L_hand', 'R_hand')
    head = w('head') + 0.5 * w('neck')
    S = np.zeros((len(V), 3, max(num_betas, 10)))
    S[:, :, 0] = 0.055 * (V - pelvis * [1, 1, 0])
    S[:, :, 1] = 0.16 * radial * (0.4 + 0.9 * trunk + 0.3 * legs)[:, None]
    S[:, 2, 1] += 0.02 * np.clip(z, 0, None) / 0.12 * _smooth_field(F, w('spine1', 'pelvis'), 10)
    S[:, 1, 2] = -0.05 * (pelvis[1] + 0.05 - y) * _smooth_field(F, legs, 10)
    S[:, 0, 3] = 0.02 * np.sign(x) * np.clip(np.abs(x) / 0.18, 0, 1) * \
        _smooth_field(F, arms + w('L_collar', 'R_collar'), 10)
    hips = _smooth_field(F, w('pelvis', 'L_hip', 'R_hip') * (y < pelvis[1] + 0.1), 10)
    S[:, 0, 4] = 0.10 * x * hips
    S[:, :, 5] = 0.14 * radial * (legs + arms)[:, None]
    S[:, 0, 6] = 0.05 * np.sign(x) * np.clip(np.abs(x) - 0.17 * p['scale'], 0, None) * \
        _smooth_field(F, arms + w('L_collar', 'R_collar'), 5)
    hc = _body_landmarks(J, p)['head_center']
    S[:, :, 7] = 0.07 * (V - hc) * _smooth_field(F, head, 10)[:, None]
    S[:, 1, 8] = 0.05 * np.clip(y - pelvis[1], 0, None) * _smooth_field(F, 1.0 - legs, 10)
    S[:, 2, 9] = 0.025 * np.clip(z, 0, None) / 0.12 * _smooth_field(F, w('spine1', 'spine2'), 10)
    rng = np.random.default_rng([seed, 11])
    for k in range(10, num_betas):
        mix = rng.standard_normal(len(bones)) @ W.T          # smooth part-wise scalar
        dirs = rng.standard_normal(3)
        S[:, :, k] = (0.01 * 0.9 ** (k - 10)) * (mix[:, None] * radial / 0.1 * 0.5
                                                 + 0.2 * mix[:, None] * dirs)
    return S[:, :, :num_betas]


def _pose_correctives(V, N, W, J, parents, scale=0.08, bulge=0.006):
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


# --------------------------------------------------------------------------
# MANO hand mesh
# --------------------------------------------------------------------------

# MANO's frame is the right hand of the SMPL-H T-pose: wrist at +x, fingers
# along -x, palm facing -y, thumb towards +z; the origin ends up near the
# middle-finger knuckle (as in the real MANO template).
_MANO_WRIST = np.array([0.0950, 0.0060, 0.0060])


def _mano_frame():
    return _HandFrame(_MANO_WRIST, -1.0)


def _build_hand_cage(frame, scale):
    """Coarse right-hand cage: a wrist box (its proximal face becomes the
    wrist opening), two palm rings, then the palm's end face split in two
    so that, after one subdivision, it has four columns for four fingers."""
    s = scale
    a0, a1 = -0.030 * s, -0.002 * s     # wrist box along the hand axis
    hb, hc = 0.021 * s, 0.030 * s       # half thickness / half width
    o = frame.origin

    def pos(i, j, k):   # world-aligned lattice; x runs from the fingers to the elbow
        x = o[0] - (a1, a0)[i]
        return np.array([x, o[1] + (-hb, hb)[j], o[2] + (-hc, hc)[k]])

    cage = _Cage()
    cells = _lattice_box(cage, (1, 1, 1), pos,
                         lambda side, a, b: 'wrist_cap' if side == '+x' else 'R_palm')
    n_before = len(cage.f)
    stations = [(frame.to_world([0.046 * s, 0.0, 0.0]), 0.017 * s, 0.043 * s, 'R_thumb_base'),
                (frame.to_world([0.090 * s, 0.0, -0.002 * s]), 0.014 * s, 0.042 * s,
                 'R_palm_tip')]
    _extrude_chain(cage, [cells[('-x', 0, 0)]], stations, (0, 1, 0),
                   direction=np.array([-1.0, 0.0, 0.0]))
    _retag_palm(cage, 'R', range(n_before, len(cage.f)))
    cage.split_face(cells[('-x', 0, 0)], np.array([0.0, 0.0, 1.0]))
    return cage


def _hand_subdivided(scale):
    """Closed quad mesh of the right hand after two subdivisions."""
    frame = _mano_frame()
    mid = _subdivide(_build_hand_cage(frame, scale))
    _add_fingers(mid, 'R', frame, scale, web_rings=FINGERS[:4])
    fine = _subdivide(mid)
    return fine.verts(), np.array(fine.f), fine.tag


def _open_wrist(V, Q, qtags):
    """Remove the wrist-cap patch (16 quads, 9 inner vertices) and compact."""
    keep = np.array([t != 'wrist_cap' for t in qtags])
    Q = Q[keep]
    used = np.unique(Q)
    remap = np.full(len(V), -1)
    remap[used] = np.arange(len(used))
    return V[used], remap[Q], [t for t, k in zip(qtags, keep) if k]


def _boundary_vertices(F):
    e = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
    key = np.sort(e, axis=1)
    u, c = np.unique(key, axis=0, return_counts=True)
    return np.unique(u[c == 1])


def _mano_picks(V, tags, scale):
    frame = _mano_frame()
    joints, tips = _hand_skeleton_local(scale)
    picks = {}
    for f, finger in enumerate(FINGERS):
        d = frame.dir(tips[f] - joints[3 + 3 * f])
        c = np.nonzero(tags == 'R_' + finger)[0]
        picks[finger] = c[np.argmax(V[c] @ d)]
    return picks


@functools.lru_cache(maxsize=None)
def _mano_topology():
    """Fixed MANO topology: faces, splits, wrist loop, vertex order, tags."""
    V, Q, qtags = _hand_subdivided(1.0)
    V, Q, qtags = _open_wrist(V, Q, qtags)
    diag = _short_diagonals(V, Q)
    F = _triangulate(V, Q, diag)
    tags = _vertex_tags(Q, qtags, len(V))
    rim = _boundary_vertices(F)
    F, splits = _plan_splits(V, F, MANO_NUM_VERTS - len(V), frozen=rim)
    tags = np.concatenate([tags, [tags[a] for a, _ in splits]])
    V = _fit_mano(_apply_splits(V, splits), F, rim, 1.0)
    picks = _mano_picks(V, tags, 1.0)
    wanted = {MANO_VERTEX_IDS[k]: v for k, v in picks.items()}
    # FreiHAND's ring / pinky tips: the nearest neighbour of the smplx tip.
    e = _edges(F)
    for finger, fid in FREIHAND_TIP_IDS.items():
        t = picks[finger]
        nb = np.r_[e[e[:, 0] == t, 1], e[e[:, 1] == t, 0]]
        wanted[fid] = nb[np.argmin(np.linalg.norm(V[nb] - V[t], axis=1))]
    order, inverse = _permutation(len(V), wanted)
    return {'diag': diag, 'splits': splits, 'faces_old': F, 'rim': rim, 'order': order,
            'faces': inverse[F].astype(np.uint32), 'tags': tags[order]}


def _fit_mano(V, F, rim, scale):
    # the wrist loop stays in its cutting plane while the rest is fitted
    plane = (V[rim].mean(axis=0), np.array([1.0, 0.0, 0.0]), rim)
    return _fit_to_sdf(V, F, _hand_sdf(_mano_frame(), scale), fixed_plane=plane)


def _mano_template(scale):
    topo = _mano_topology()
    V, Q, qtags = _hand_subdivided(scale)
    V, _, _ = _open_wrist(V, Q, qtags)
    V = _fit_mano(_apply_splits(V, topo['splits']), topo['faces_old'], topo['rim'], scale)
    return V[topo['order']]


# --------------------------------------------------------------------------
# Public model builders
# --------------------------------------------------------------------------

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
    p = _body_params(gender, seed)
    topo = _smpl_topology()
    F = topo['faces'].astype(np.int64)
    tags = topo['tags']
    J = _smpl_joints(p)
    V = _smpl_template(p)
    bones = _smpl_bones(J, p)
    part_joints = _smpl_part_joints()
    W = _skinning_weights(V, F, tags, bones, part_joints, iters=30)
    W_prior = _skinning_weights(V, F, tags, bones, part_joints, iters=60)
    allowed = _joint_candidates(tags, part_joints, 24)
    Jreg = _regressor_rows(V, J, allowed, k=40, smooth=1.0).tocsc()
    Jreg_prior = _regressor_rows(V, J, allowed, k=80, smooth=10.0).tocsc()
    N = _vertex_normals(V, F)
    model = {
        'J_regressor_prior': Jreg_prior,
        'f': topo['faces'].copy(),
        'J_regressor': Jreg,
        'kintree_table': _kintree(SMPL_PARENTS),
        'J': J,
        'weights_prior': W_prior,
        'weights': W,
        'vert_sym_idxs': _mirror_indices(V),
        'posedirs': _pose_correctives(V, N, W, J, SMPL_PARENTS),
        'pose_training_info': {'generator': 'extpose_jax synthetic_bodies',
                               'gender': gender, 'seed': int(seed),
                               'num_pose_blendshapes': 207, 'num_shape_blendshapes': num_betas,
                               'bs_style': 'lbs', 'bs_type': 'lrotmin'},
        'bs_style': 'lbs',
        'v_template': V,
        'shapedirs': _smpl_shapedirs(V, F, W, J, bones, p, num_betas, seed),
        'bs_type': 'lrotmin',
    }
    return model


# J19 points (SPIN / HMR 2.0 order), as offsets from SMPL joints or landmarks.
def _j19_targets(J, p):
    j = {n: J[i] for i, n in enumerate(SMPL_JOINT_NAMES)}
    L = _body_landmarks(J, p)
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
    out['thorax_mpii'] = np.array([0.0, 0.5 * (j['neck'][1] + j['L_shoulder'][1]),
                                   j['neck'][2] + 0.015 * s])
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
    p = dict(_GENDER_PARAMS['neutral'])
    p['scale'] = (V[:, 1].max() - V[:, 1].min()) / 1.70
    R = _regressor_rows(V, _j19_targets(J, p), np.ones((19, len(V)), bool), k=40, smooth=1.0)
    return np.asarray(R.todense(), dtype=np.float64)


def _mano_bones(J, tips_world):
    bones = [(J[0], J[4])]   # wrist: to the middle knuckle
    for f in range(5):
        chain = [J[1 + 3 * f], J[2 + 3 * f], J[3 + 3 * f], tips_world[f]]
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
    for k in range(3):   # thumb: opposition about x, flexion about -y
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
    radial = _radial_offsets(V, W, _mano_bones(J, tips_world))
    S = np.zeros((len(V), 3, max(num_betas, 7)))
    S[:, :, 0] = 0.05 * (V - wrist)
    along = np.zeros_like(V)   # offset of each finger vertex from its knuckle
    for f in range(4):
        mcp = J[1 + 3 * f]
        wf = W[:, 1 + 3 * f:4 + 3 * f].sum(axis=1)
        along += wf[:, None] * (V - mcp)
    S[:, 0, 1] = 0.06 * along[:, 0]
    S[:, 2, 2] = 0.06 * (V[:, 2] - wrist[2]) * _smooth_field(F, 1.0 - thumb, 5)
    S[:, 1, 3] = 0.10 * (V[:, 1] - wrist[1]) * (1.0 - fingers - thumb)
    S[:, :, 4] = 0.12 * radial * (fingers + thumb)[:, None]
    S[:, :, 5] = 0.06 * (V - J[13]) * _smooth_field(F, thumb, 3)[:, None]
    S[:, 0, 6] = 0.04 * (V[:, 0] - wrist[0]) * (1.0 - 0.5 * fingers)
    rng = np.random.default_rng([seed, 13])
    for k in range(7, num_betas):
        mix = rng.standard_normal(W.shape[1]) @ W.T
        S[:, :, k] = 0.004 * 0.9 ** (k - 7) * (mix[:, None] * radial / 0.01
                                               + 0.5 * mix[:, None] * rng.standard_normal(3))
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
    frame = _mano_frame()
    joints, tips = _hand_skeleton_local(scale)
    J = frame.to_world(joints)
    tips_world = frame.to_world(tips)
    bones = _mano_bones(J, tips_world)
    part_joints = _mano_part_joints()
    W = _skinning_weights(V, F, tags, bones, part_joints, iters=6)
    allowed = _joint_candidates(tags, part_joints, 16)
    Jreg = _regressor_rows(V, J, allowed, k=20, smooth=0.3).tocsc()
    poses = _hand_pose_prior(rng, 1554)
    mean = poses.mean(axis=0)
    # PCA: rows of vt are orthonormal, ordered by decreasing variance
    _, _, vt = np.linalg.svd(poses - mean, full_matrices=False)
    N = _vertex_normals(V, F)
    return {
        'hands_components': vt,
        'f': topo['faces'].copy(),
        'J_regressor': Jreg,
        'kintree_table': _kintree(MANO_PARENTS),
        'J': J,
        'bs_style': 'lbs',
        'hands_coeffs': (poses - mean) @ vt.T,
        'weights': W,
        'posedirs': _pose_correctives(V, N, W, J, MANO_PARENTS, scale=0.05, bulge=0.0015),
        'hands_mean': mean,
        'v_template': V,
        'shapedirs': _mano_shapedirs(V, F, W, J, tips_world, 10, seed),
        'bs_type': 'lrotmin',
    }


# --------------------------------------------------------------------------
# Writers: Python-2 era pickles (chumpy / old scipy objects) and npz
# --------------------------------------------------------------------------

class _Global:
    """A reference to module.name, written as a GLOBAL opcode without
    importing anything (chumpy need not, and old scipy paths may not,
    exist here)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class _ChumpyArray:
    """Marks an array to be pickled as a chumpy.ch.Ch object."""

    def __init__(self, x):
        self.x = np.asarray(x)


# Arrays stored as chumpy objects in our .pkl files (the real SMPL files
# have at least shapedirs as chumpy; v_template, J and weights are too here).
CHUMPY_KEYS = ('shapedirs', 'v_template', 'J', 'weights')


class _LegacyPickler(pickle._Pickler):
    """Pure-Python pickler that writes what Python 2's cPickle wrote for the
    official model files (protocol 2):

    * str / bytes as Python-2 ``str`` (SHORT_BINSTRING / BINSTRING), so that a
      Python-3 ``pickle.load`` needs ``encoding='latin1'`` (the default ASCII
      decoding fails on the binary array payloads);
    * ndarrays through ``numpy.core.multiarray._reconstruct`` plus a BUILD
      state (version 1, shape, dtype, fortran flag, raw bytes), dtypes through
      ``numpy.dtype`` with their version-3 state;
    * chumpy arrays as ``copy_reg._reconstructor(chumpy.ch.Ch, object, None)``
      with a state dict whose 'x' is the array;
    * csc matrices as ``scipy.sparse.csc.csc_matrix`` (NEWOBJ) with the
      old-scipy state dict.

    With ``py2_strings=False`` (and protocol 3) it writes a Python-3 pickle
    with bytes payloads instead, loadable with any encoding.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, py2_strings=True):
        super().__init__(file, protocol=2 if py2_strings else 3)
        self.py2_strings = py2_strings
        self._markers = {}   # keeps globals / dtypes unique, so they are memoised

    def _marker(self, key, factory):
        if key not in self._markers:
            self._markers[key] = factory()
        return self._markers[key]

    def global_ref(self, module, name):
        return self._marker(('global', module, name), lambda: _Global(module, name))

    def save_global_ref(self, obj):
        self.write(pickle.GLOBAL + obj.module.encode('ascii') + b'\n'
                   + obj.name.encode('ascii') + b'\n')
        self.memoize(obj)
    dispatch[_Global] = save_global_ref

    def save_py2_str(self, obj):
        if not self.py2_strings:
            if isinstance(obj, str):
                return pickle._Pickler.save_str(self, obj)
            return pickle._Pickler.save_bytes(self, obj)
        data = obj.encode('latin1') if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack('<I', len(data)) + data)
        self.memoize(obj)
    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_dtype(self, dt):
        dt = np.dtype(dt)
        marker = self._marker(('dtype', dt.str), lambda: object())
        if id(marker) in self.memo:
            self.save(marker)
            return
        order = '|' if dt.itemsize == 1 else '<'
        self.save(self.global_ref('numpy', 'dtype'))
        self.save((dt.str[1:], 0, 1))
        self.write(pickle.REDUCE)
        self.memoize(marker)
        self.save((3, order, None, None, None, -1, -1, 0))
        self.write(pickle.BUILD)

    def save_ndarray(self, arr):
        data = np.ascontiguousarray(arr)
        if data.dtype.byteorder == '>':
            data = data.astype(data.dtype.newbyteorder('<'))
        self.save(self.global_ref('numpy.core.multiarray', '_reconstruct'))
        self.save((self.global_ref('numpy', 'ndarray'), (0,),
                   'b' if self.py2_strings else b'b'))
        self.write(pickle.REDUCE)
        self.memoize(arr)
        self.write(pickle.MARK)
        self.save(1)
        self.save(tuple(int(n) for n in data.shape))
        self.save_dtype(data.dtype)
        self.save(False)
        self.save(data.tobytes())
        self.write(pickle.TUPLE)
        self.write(pickle.BUILD)
    dispatch[np.ndarray] = save_ndarray

    def save_chumpy(self, ch):
        self.save(self.global_ref('copy_reg', '_reconstructor'))
        self.save((self.global_ref('chumpy.ch', 'Ch'), self.global_ref('__builtin__', 'object'),
                   None))
        self.write(pickle.REDUCE)
        self.memoize(ch)
        # A few of the attributes a pickled chumpy array carries.
        self.save({'x': ch.x, '_cache': {'r': None, 'drs': {}}, '_itr': None,
                   '_depends_on_deps': {}, 'label': None})
        self.write(pickle.BUILD)
    dispatch[_ChumpyArray] = save_chumpy

    def save_csc(self, m):
        m = scipy.sparse.csc_matrix(m)
        self.save(self.global_ref('scipy.sparse.csc', 'csc_matrix'))
        self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
        self.memoize(m)
        self.save({'_shape': tuple(int(n) for n in m.shape), 'maxprint': 50, 'format': 'csc',
                   'data': np.asarray(m.data, np.float64),
                   'indices': np.asarray(m.indices, np.int32),
                   'indptr': np.asarray(m.indptr, np.int32)})
        self.write(pickle.BUILD)
    dispatch[scipy.sparse.csc_matrix] = save_csc

    def save_np_scalar(self, x):
        self.save(x.item())
    for _t in (np.float64, np.float32, np.int64, np.int32, np.bool_, np.str_):
        dispatch[_t] = save_np_scalar
    del _t


def _atomic_write(path, write_fn):
    """Write through a temporary file in the same folder, then rename, so a
    reader never sees a half-written model."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path) + '.',
                               suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)   # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _pickle_bytes(obj, py2_strings):
    buf = io.BytesIO()
    _LegacyPickler(buf, py2_strings=py2_strings).dump(obj)
    return buf.getvalue()


def write_model_pkl(path, model):
    """Write ``model`` as the official Python-2 pickle: keys and array
    payloads as Python-2 str, CHUMPY_KEYS as chumpy.ch.Ch objects, sparse
    regressors as scipy.sparse.csc.csc_matrix.  Needs encoding='latin1'."""
    obj = {k: _ChumpyArray(v) if k in CHUMPY_KEYS and isinstance(v, np.ndarray) else v
           for k, v in model.items()}
    data = _pickle_bytes(obj, py2_strings=True)
    _atomic_write(path, lambda f: f.write(data))


def write_array_pkl(path, array):
    """Pickle a plain ndarray the way Python 3 / numpy 1.x did (bytes payload,
    numpy.core path): loads with or without encoding='latin1'."""
    data = _pickle_bytes(np.asarray(array), py2_strings=False)
    _atomic_write(path, lambda f: f.write(data))


def _dense_model(model):
    out = {}
    for k, v in model.items():
        if scipy.sparse.issparse(v):
            out[k] = np.asarray(v.todense(), dtype=np.float64)
        elif isinstance(v, np.ndarray):
            out[k] = v
        elif isinstance(v, str):
            out[k] = np.array(v)
        # dicts (pose_training_info) are not arrays: left out of the npz
    return out


def write_model_npz(path, model):
    """Write ``model`` as an uncompressed npz of plain dense arrays (sparse
    regressors densified, strings as 0-d unicode arrays), loadable without
    pickle and by smplx."""
    arrays = _dense_model(model)
    _atomic_write(path, lambda f: np.savez(f, **arrays))


BODY_MODEL_FILES = tuple(f'smpl/SMPL_{g}.{e}' for g in ('NEUTRAL', 'MALE', 'FEMALE')
                         for e in ('pkl', 'npz')) + \
    ('mano/MANO_RIGHT.pkl', 'mano/MANO_RIGHT.npz', 'SMPL_to_J19.pkl')


def body_models_complete(out_dir):
    """True if ``out_dir`` already holds every file write_body_models writes
    (the writes are atomic, so a present file is a complete file)."""
    return all(os.path.isfile(os.path.join(os.fspath(out_dir), rel)) for rel in BODY_MODEL_FILES)


def write_body_models(out_dir, seed=0):
    """Generate and write the whole set; returns {relative path: absolute path}:
    smpl/SMPL_{NEUTRAL,MALE,FEMALE}.{pkl,npz}, mano/MANO_RIGHT.{pkl,npz},
    SMPL_to_J19.pkl."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    paths = {}

    def put(rel, writer, obj):
        full = os.path.join(out_dir, rel)
        writer(full, obj)
        paths[rel] = full

    neutral = None
    for gender in ('neutral', 'male', 'female'):
        model = make_smpl(gender, seed)
        put(f'smpl/SMPL_{gender.upper()}.pkl', write_model_pkl, model)
        put(f'smpl/SMPL_{gender.upper()}.npz', write_model_npz, model)
        if gender == 'neutral':
            neutral = model
    hand = make_mano(seed)
    put('mano/MANO_RIGHT.pkl', write_model_pkl, hand)
    put('mano/MANO_RIGHT.npz', write_model_npz, hand)
    put('SMPL_to_J19.pkl', write_array_pkl, make_j19_regressor(neutral))
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(
        description='Write synthetic SMPL / MANO model files in the official layout.')
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.time()
    paths = write_body_models(args.out, seed=args.seed)
    for rel in sorted(paths):
        print(paths[rel])
    print(f'wrote {len(paths)} files in {time.time() - t0:.1f} s')


if __name__ == '__main__':
    main()
