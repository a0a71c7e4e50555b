"""Anatomy of the synthetic SMPL / MANO bodies: skeletons, cages and shapes.

Everything here is a hand-made approximation of an adult body (sizes are
population averages), parameterised by a few proportion knobs per gender.  It
describes each body three times, at three levels of detail, because the mesh
recipe (mesh) needs all three: joints (the skeleton the model is
rigged on), a coarse polygon cage (whose topology becomes the model's mesh
topology) and a signed distance function (the smooth surface the subdivided
cage is pulled onto).  Cage and SDF are placed on the skeleton, so the three
agree for every gender and seed.

Frames are the real models' frames (see bodies).  Cage faces carry
part tags ('torso', 'L_leg', 'R_index', 'wrist_cap', ...), which the model
builder uses to rig each part with the right joints.
"""
from __future__ import annotations

import numpy as np

from data_pipelines.synthetic import mesh as pm
from data_pipelines.synthetic import sdf as sdf_lib

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

FINGERS = ('index', 'middle', 'pinky', 'ring', 'thumb')  # MANO joint order

# --------------------------------------------------------------------------
# Proportions and skeletons
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


def body_params(gender, seed, jitter=True):
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


def hand_skeleton(scale=1.0):
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


def finger_chain(joints, tips, f):
    """Knuckle, middle joint, end joint and tip of finger ``f`` (FINGERS index)."""
    return [joints[1 + 3 * f], joints[2 + 3 * f], joints[3 + 3 * f], tips[f]]


class HandFrame:
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


def smpl_joints(p):
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


def smpl_hand_frames(J):
    """World frames of the left and right hands of the body."""
    left = HandFrame(J[SMPL_JOINT_NAMES.index('L_wrist')], +1.0)
    right = HandFrame(J[SMPL_JOINT_NAMES.index('R_wrist')], -1.0)
    return {'L': left, 'R': right}


def body_landmarks(J, p):
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


# MANO's frame is the right hand of the SMPL-H T-pose: wrist at +x, fingers
# along -x, palm facing -y, thumb towards +z; the origin ends up near the
# middle-finger knuckle (as in the real MANO template).
_MANO_WRIST = np.array([0.0950, 0.0060, 0.0060])


def mano_frame():
    return HandFrame(_MANO_WRIST, -1.0)


# --------------------------------------------------------------------------
# Cages: box modelling on the skeleton
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


def _lerp(a, b, t):
    return a + (b - a) * t


def _leg_stations(J, side, p):
    """Extrusion rings of one leg: (centre, half x, half z, tag)."""
    sgn = 1.0 if side == 'L' else -1.0
    s, g = p['scale'], p['girth'] * p['limb']
    H = J[SMPL_JOINT_NAMES.index(side + '_hip')]
    K = J[SMPL_JOINT_NAMES.index(side + '_knee')]
    A = J[SMPL_JOINT_NAMES.index(side + '_ankle')]
    sole = body_landmarks(J, p)['sole_y']
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
    sole = body_landmarks(J, p)['sole_y']
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
    fr = smpl_hand_frames(J)[side]
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
    top = body_landmarks(J, p)['head_top']
    st = [((0.0, N[1] + 0.035 * s, N[2] + 0.006 * s), 0.054, 0.054, 'neck'),
          ((0.0, Hd[1] - 0.035 * s, Hd[2] - 0.030 * s), 0.052, 0.056, 'neck'),
          ((0.0, Hd[1] + 0.005 * s, Hd[2] + 0.002 * s), 0.062, 0.086, 'head'),   # jaw
          ((0.0, Hd[1] + 0.050 * s, Hd[2] - 0.005 * s), 0.073, 0.098, 'head'),   # nose
          ((0.0, Hd[1] + 0.100 * s, Hd[2] - 0.012 * s), 0.078, 0.100, 'head'),   # eyes
          ((0.0, Hd[1] + 0.145 * s, Hd[2] - 0.018 * s), 0.073, 0.094, 'head'),   # forehead
          ((0.0, top[1] - 0.018 * s, top[2] - 0.012 * s), 0.044, 0.056, 'head')]  # crown
    return [(np.array(c), hx * s, hz * s, t) for c, hx, hz, t in st]


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
    cage = pm.Cage()
    cells = pm.lattice_box(cage, (5, len(_TORSO_ROWS) - 1, 2), _torso_lattice_pos(p, J),
                           lambda side, a, b: 'torso')
    top_row = len(_TORSO_ROWS) - 2
    for side, cols in (('L', (3, 4)), ('R', (0, 1))):
        sgn = 1.0 if side == 'L' else -1.0
        # Leg, then the foot from the front faces of the last (heel) ring.
        leg = [cells[('-y', i, k)] for i in cols for k in (0, 1)]
        n_before = len(cage.f)
        pm.extrude_chain(cage, leg, _leg_stations(J, side, p), (1, 0, 0))
        heel_ring = list(range(n_before, len(cage.f)))[-8:]
        front = [f for f in heel_ring
                 if cage.face_normal(f)[2] > 0.7 * np.linalg.norm(cage.face_normal(f))]
        assert len(front) == 2, front
        pm.extrude_chain(cage, front, _foot_stations(J, side, p), (1, 0, 0),
                         direction=np.array([0.0, 0.0, 1.0]))
        # Arm, ending with two palm rings; the thumb grows later from the
        # front face of the first palm ring.
        arm = [cells[('+x' if side == 'L' else '-x', top_row, k)] for k in (0, 1)]
        n_before = len(cage.f)
        pm.extrude_chain(cage, arm, _arm_stations(J, side, p), (0, 1, 0),
                         direction=np.array([sgn, 0.0, 0.0]))
        _retag_palm(cage, side, range(n_before, len(cage.f)))
    neck = [cells[('+y', i, k)] for i in (1, 2, 3) for k in (0, 1)]
    pm.extrude_chain(cage, neck, _head_stations(J, p), (1, 0, 0),
                     direction=np.array([0.0, 1.0, 0.0]))
    return cage


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

    cage = pm.Cage()
    cells = pm.lattice_box(cage, (1, 1, 1), pos,
                           lambda side, a, b: 'wrist_cap' if side == '+x' else 'R_palm')
    n_before = len(cage.f)
    stations = [(frame.to_world([0.046 * s, 0.0, 0.0]), 0.017 * s, 0.043 * s, 'R_thumb_base'),
                (frame.to_world([0.090 * s, 0.0, -0.002 * s]), 0.014 * s, 0.042 * s,
                 'R_palm_tip')]
    pm.extrude_chain(cage, [cells[('-x', 0, 0)]], stations, (0, 1, 0),
                     direction=np.array([-1.0, 0.0, 0.0]))
    _retag_palm(cage, 'R', range(n_before, len(cage.f)))
    cage.split_face(cells[('-x', 0, 0)], np.array([0.0, 0.0, 1.0]))
    return cage


# Finger thickness relative to the index finger (cage rings and SDF alike).
_FINGER_GIRTH = {'index': 1.0, 'middle': 1.04, 'ring': 0.96, 'pinky': 0.86}


def _finger_stations(hand_joints, tips, frame, finger, scale, web_ring, side):
    """Rings of one finger (grown after the first subdivision): (centre, half
    thickness, half width, tag).  ``hand_joints``/``tips`` are hand-local and
    already scaled."""
    chain = finger_chain(hand_joints, tips, FINGERS.index(finger))
    if finger == 'thumb':
        radii = [(0.0125, 0.0135), (0.0105, 0.0115), (0.0092, 0.0100), (0.0070, 0.0075)]
    else:
        w = _FINGER_GIRTH[finger]
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
    joints, tips = hand_skeleton(scale)
    tip_faces = cage.faces_with_tag(side + '_palm_tip')
    assert len(tip_faces) == 8, len(tip_faces)
    across = [np.dot(cage.face_center(f) - frame.origin, frame.axes[2]) for f in tip_faces]
    order = [tip_faces[i] for i in np.argsort(across)[::-1]]   # thumb side first
    columns = {'index': order[0:2], 'middle': order[2:4], 'ring': order[4:6],
               'pinky': order[6:8], 'thumb': cage.faces_with_tag(side + '_thumb_base')}
    assert len(columns['thumb']) == 4
    for finger in FINGERS:
        st = _finger_stations(joints, tips, frame, finger, scale, finger in web_rings, side)
        pm.extrude_chain(cage, columns[finger], st, frame.axes[1])


def _fingered_quads(cage, frames, scale, web_rings=()):
    """Subdivide, grow the fingers of each hand in ``frames`` (side -> frame),
    subdivide again: (vertices, quads, quad tags).  Fingers grow between the
    two steps because only then does a palm tip have one column per finger."""
    mid = pm.subdivide(cage)
    for side, frame in frames.items():
        _add_fingers(mid, side, frame, scale, web_rings)
    fine = pm.subdivide(mid)
    return fine.verts(), np.array(fine.f), fine.tag


def body_quads(p):
    """Quad mesh (vertices, quads, quad tags) of the body with knobs ``p``.
    The topology does not depend on ``p``; positions do."""
    J = smpl_joints(p)
    return _fingered_quads(_build_body_cage(J, p), smpl_hand_frames(J), p['scale'])


def hand_quads(scale):
    """Quad mesh of the MANO right hand, open at the wrist like the real one:
    the wrist-cap patch (16 quads, 9 inner vertices) is removed."""
    frame = mano_frame()
    V, Q, qtags = _fingered_quads(_build_hand_cage(frame, scale), {'R': frame}, scale,
                                  web_rings=FINGERS[:4])
    keep = np.array([t != 'wrist_cap' for t in qtags])
    Q = Q[keep]
    used = np.unique(Q)
    remap = np.full(len(V), -1)
    remap[used] = np.arange(len(used))
    return V[used], remap[Q], [t for t, k in zip(qtags, keep) if k]


# --------------------------------------------------------------------------
# Signed distance functions: the shape the subdivided cage is pulled onto
# --------------------------------------------------------------------------

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


def _add_hand_sdf(sdf, frame, scale, wrist_radii):
    """Palm, thenar pad and fingers of one hand (hand-local skeleton)."""
    joints, tips = hand_skeleton(scale)
    W = frame.to_world
    s = scale
    # Forearm end: a flattened round cone into the palm.
    sdf.cone(W([-0.030 * s, 0, 0]), W([0.010 * s, 0, 0]), wrist_radii[0], wrist_radii[1], 0.015 * s)
    sdf.box(W([0.050 * s, 0.001 * s, -0.002 * s]), frame.axes,
            np.array([0.046, 0.013, 0.041]) * s, 0.011 * s, 0.018 * s)
    # Thenar pad; the hand frames are axis-aligned, so local radii are world radii.
    sdf.ellipsoid(W([0.030 * s, -0.008 * s, 0.022 * s]), np.array([0.030, 0.014, 0.022]) * s,
                  0.012 * s)
    for f, finger in enumerate(FINGERS):
        chain = finger_chain(joints, tips, f)
        if finger == 'thumb':
            radii = [0.0150, 0.0112, 0.0100, 0.0082]
        else:
            w = _FINGER_GIRTH[finger]
            radii = [0.0094 * w, 0.0086 * w, 0.0076 * w, 0.0062 * w]
        for k in range(3):
            end = chain[k + 1]
            if k == 2:   # stop short of the tip so the round cap ends at it
                d = chain[3] - chain[2]
                end = chain[3] - radii[3] * s * d / np.linalg.norm(d)
            sdf.cone(W(chain[k]), W(end), radii[k] * s, radii[k + 1] * s,
                     (0.010 if k == 0 else 0.002) * s)


def body_sdf(J, p):
    """Smooth-union SDF of the whole T-pose body."""
    s, sh, hp, g, lm, w = (p['scale'], p['shoulder'], p['hip'], p['girth'], p['limb'],
                           p['waist'])
    j = {n: J[i] for i, n in enumerate(SMPL_JOINT_NAMES)}
    L = body_landmarks(J, p)
    sdf = sdf_lib.SDF()
    py = j['pelvis'][1]
    # Torso: a loft of superellipse sections (no creases between rows).
    rows = np.array(_TORSO_LOFT)
    wf = np.interp(rows[:, 0], [-0.2, 0.0, 0.14, 0.30, 0.5], [hp, hp, w, sh, sh])
    sdf.loft(py + rows[:, 0] * s, rows[:, 1] * s * g * wf, rows[:, 2] * s * g, rows[:, 3] * s, 0.0)
    # Pelvis bowl: rounds off the bottom of the loft between the thighs.
    sdf.ellipsoid([0, py - 0.100 * s, -0.012 * s], np.array([0.150 * hp, 0.100, 0.104]) * s * g,
                  0.05 * s)
    for x in (-1, 1):   # buttocks
        sdf.ellipsoid([x * 0.066 * s * hp, py - 0.105 * s, -0.048 * s],
                      np.array([0.080, 0.088, 0.072]) * s * g, 0.04 * s)
    if p['breast'] > 0:
        b = p['breast']
        for x in (-1, 1):
            sdf.ellipsoid([x * 0.080 * s * sh, j['spine2'][1] + 0.055 * s, 0.072 * s],
                          np.array([0.062, 0.058, 0.045 * b + 0.015]) * s, 0.04 * s)
    # Neck and head.
    sdf.cone([0, j['neck'][1] - 0.040 * s, -0.040 * s], [0, j['head'][1] + 0.020 * s, -0.008 * s],
             0.060 * s, 0.051 * s, 0.05 * s)
    hc = L['head_center']
    sdf.ellipsoid(hc, np.array([0.077, 0.105, 0.098]) * s, 0.03 * s)
    sdf.ellipsoid(j['head'] + np.array([0, 0.010, 0.038]) * s, np.array([0.060, 0.062, 0.068]) * s,
                  0.03 * s)
    sdf.ellipsoid(L['chin'] + np.array([0, 0.006, -0.012]) * s, np.array([0.026, 0.022, 0.022]) * s,
                  0.02 * s)
    sdf.ellipsoid(L['nose'] - np.array([0, 0.012, 0.020]) * s, np.array([0.016, 0.030, 0.022]) * s,
                  0.020 * s)
    for x in (-1, 1):
        e = L['ear'] * np.array([x, 1, 1])
        sdf.ellipsoid(e, np.array([0.013, 0.032, 0.020]) * s, 0.010 * s)
    # Legs and feet.
    for side in ('L', 'R'):
        H, K, A, F = (j[side + n] for n in ('_hip', '_knee', '_ankle', '_foot'))
        x = np.sign(H[0])
        gl = g * lm
        sdf.cone(H + np.array([x * 0.010, 0.02, -0.004]) * s, K, 0.086 * s * gl, 0.053 * s * gl,
                 0.05 * s)
        sdf.ellipsoid(K + np.array([0, 0.002, 0.012]) * s, np.array([0.048, 0.050, 0.046]) * s * gl,
                      0.02 * s)
        sdf.cone(K, A, 0.050 * s * gl, 0.033 * s * gl, 0.02 * s)
        sdf.ellipsoid(K + (A - K) * 0.30 + np.array([x * 0.004, 0, -0.018]) * s,
                      np.array([0.046, 0.100, 0.046]) * s * gl, 0.03 * s)
        sole = L['sole_y']
        sdf.ellipsoid([A[0], sole + 0.040 * s, A[2] - 0.040 * s],
                      np.array([0.034, 0.042, 0.045]) * s, 0.03 * s)
        sdf.box([0.5 * (A[0] + F[0]), sole + 0.034 * s, A[2] + 0.060 * s], np.eye(3),
                np.array([0.038, 0.034, 0.088]) * s, 0.028 * s, 0.035 * s)
        sdf.ellipsoid([F[0] + x * 0.003 * s, sole + 0.022 * s, F[2] + 0.035 * s],
                      np.array([0.046, 0.022, 0.060]) * s, 0.02 * s)
        sdf.ellipsoid(A + np.array([0, 0.010, 0.010]) * s, np.array([0.038, 0.045, 0.045]) * s,
                      0.04 * s)
    sdf.planes.append((np.array([0.0, L['sole_y'], 0.0]), np.array([0.0, -1.0, 0.0])))
    # Arms and hands.
    frames = smpl_hand_frames(J)
    for side in ('L', 'R'):
        S, E, Wr = (j[side + n] for n in ('_shoulder', '_elbow', '_wrist'))
        x = np.sign(S[0])
        ga = g * lm
        sdf.cone([x * 0.050 * s, j['neck'][1] - 0.030 * s, -0.035 * s],
                 S + np.array([0, 0.020, -0.005]) * s, 0.045 * s, 0.050 * s, 0.05 * s)
        sdf.ellipsoid(S + np.array([x * 0.028, 0.006, 0.002]) * s,
                      np.array([0.068, 0.058, 0.058]) * s * ga, 0.04 * s)
        sdf.cone(S, E, 0.050 * s * ga, 0.036 * s * ga, 0.03 * s)
        sdf.cone(E, Wr, 0.038 * s * ga, 0.025 * s * ga, 0.02 * s)
        sdf.ellipsoid(E + (Wr - E) * 0.28 + np.array([0, 0.002, 0.002]) * s,
                      np.array([0.075, 0.037, 0.044]) * s * ga, 0.03 * s)
        _add_hand_sdf(sdf, frames[side], s, (0.026 * s, 0.022 * s))
    return sdf


def hand_sdf(scale):
    """SDF of the MANO right hand with a forearm stub past the wrist cut."""
    frame = mano_frame()
    sdf = sdf_lib.SDF()
    W = frame.to_world
    sdf.cone(W([-0.060 * scale, 0, 0]), W([-0.01 * scale, 0, 0]), 0.030 * scale, 0.027 * scale, 0.0)
    _add_hand_sdf(sdf, frame, scale, (0.027 * scale, 0.023 * scale))
    return sdf
