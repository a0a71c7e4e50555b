"""Keypoint layouts, their flips and the index maps between them: one source of truth.

Every layout is an immutable `Layout` (joint names, limbs as index pairs, RGB colours, flip
permutation). Joint names share one vocabulary across layouts (lower-case, `left_*` / `right_*`),
so the same anatomical point has the same name wherever it appears; the hard-coded maps below
are checked against those names by the tests.

Layouts (facts from COCO, OpenPose, ControlNet, SPIN / HMR 2.0, smplx and HaMeR):

| name        | joints | what                                                              |
|-------------|--------|-------------------------------------------------------------------|
| `coco17`    | 17     | COCO keypoints                                                    |
| `openpose18`| 18     | OpenPose COCO-18 order (what ControlNet skeleton images use)      |
| `body25`    | 25     | OpenPose BODY_25                                                  |
| `hmr44`     | 44     | HMR 2.0's keypoints: BODY_25 + 19 regressed extra joints (SPIN)   |
| `hand21`    | 21     | OpenPose / FreiHAND / HaMeR hand order                            |
| `mano16`    | 16     | MANO's skeleton joints                                            |
| `mano21`    | 21     | MANO's 16 joints + 5 tip vertices (thumb, index, middle, ring, pinky) |
| `smpl24`    | 24     | SMPL's skeleton joints (limbs = kinematic tree)                   |

Colours (RGB uint8 tuples). A "limb colour" is the colour of the bone between `limbs[i]`.
- `openpose18`: the ControlNet palette (limb i and joint i share colour i), because ExtPose's
  skeleton images are drawn ControlNet-style (our pick). The renderer applies ControlNet's
  0.6 factor to limb colours itself; the stored values are the undimmed ones. OpenPose's own
  COCO-18 joint colours are kept in `OPENPOSE18_NATIVE_JOINT_COLORS`.
- `body25`, `hand21`: OpenPose's palettes; a limb takes the colour of its second keypoint.
- `coco17`: OUR CHOICE (no upstream palette): each joint takes the ControlNet colour of the
  same-named OpenPose-18 joint, a limb the colour of its second keypoint.
- `hmr44`: BODY_25's palette for 0-24; OUR CHOICE for the 19 extra joints: the colour of the
  corresponding BODY_25 joint (centre joints: neck / mid_hip / nose colours); limbs among
  the extra joints (LSP stick figure + H36M-style trunk) are also our choice.
- `smpl24`, `mano16`, `mano21`: no colours (empty tuples).

Flip permutations: `flipped[..., i, :] = keypoints[..., layout.flip[i], :]` after mirroring x.
Hands are separate left/right layouts, so the hand flips are the identity.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

RGB = Tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Layout:
    """An immutable keypoint layout. Hashable, so it can be a static argument under jit."""

    name: str
    joints: Tuple[str, ...]
    limbs: Tuple[Tuple[int, int], ...]
    flip: Tuple[int, ...]
    joint_colors: Tuple[RGB, ...] = ()
    limb_colors: Tuple[RGB, ...] = ()

    def __post_init__(self):
        n = len(self.joints)
        if len(set(self.joints)) != n:
            raise ValueError(f'{self.name}: duplicate joint names')
        if sorted(self.flip) != list(range(n)):
            raise ValueError(f'{self.name}: flip is not a permutation of {n} joints')
        for a, b in self.limbs:
            if not (0 <= a < n and 0 <= b < n and a != b):
                raise ValueError(f'{self.name}: bad limb {(a, b)}')
        if self.joint_colors and len(self.joint_colors) != n:
            raise ValueError(f'{self.name}: {len(self.joint_colors)} joint colours for {n} joints')
        if self.limb_colors and len(self.limb_colors) != len(self.limbs):
            raise ValueError(f'{self.name}: {len(self.limb_colors)} limb colours for '
                             f'{len(self.limbs)} limbs')
        for c in self.joint_colors + self.limb_colors:
            if len(c) != 3 or not all(0 <= v <= 255 for v in c):
                raise ValueError(f'{self.name}: bad colour {c}')

    @property
    def num_joints(self) -> int:
        return len(self.joints)

    def index(self, joint: str) -> int:
        return self.joints.index(joint)

    @property
    def flip_array(self) -> np.ndarray:
        return _frozen(self.flip)

    @property
    def limb_array(self) -> np.ndarray:
        """(L, 2) int64."""
        return _frozen(np.asarray(self.limbs).reshape(-1, 2))

    @property
    def joint_color_array(self) -> np.ndarray:
        """(J, 3) uint8 (empty when the layout has no palette)."""
        return _frozen(np.asarray(self.joint_colors).reshape(-1, 3), np.uint8)

    @property
    def limb_color_array(self) -> np.ndarray:
        """(L, 3) uint8 (empty when the layout has no palette)."""
        return _frozen(np.asarray(self.limb_colors).reshape(-1, 3), np.uint8)


def _frozen(values, dtype=np.int64) -> np.ndarray:
    a = np.array(values, dtype=dtype)
    a.flags.writeable = False
    return a


def _colors(flat) -> Tuple[RGB, ...]:
    return tuple(tuple(int(v) for v in c) for c in flat)


def _second_joint_colors(limbs, joint_colors) -> Tuple[RGB, ...]:
    """OpenPose's rule: a limb takes the colour of its second keypoint."""
    return tuple(joint_colors[b] for _, b in limbs)


def _pairs(flat) -> Tuple[Tuple[int, int], ...]:
    return tuple((int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2))


# ============================================================================ COCO-17

COCO17_JOINTS = (
    'nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear',
    'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow', 'left_wrist', 'right_wrist',
    'left_hip', 'right_hip', 'left_knee', 'right_knee', 'left_ankle', 'right_ankle')
# COCO's `skeleton`, 1-based as published in the annotations.
_COCO17_SKELETON_1BASED = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))
_COCO17_FLIP = (0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15)

# ============================================================================ OpenPose-18 (COCO-18)

OPENPOSE18_JOINTS = (
    'nose', 'neck', 'right_shoulder', 'right_elbow', 'right_wrist',
    'left_shoulder', 'left_elbow', 'left_wrist', 'right_hip', 'right_knee', 'right_ankle',
    'left_hip', 'left_knee', 'left_ankle', 'right_eye', 'left_eye', 'right_ear', 'left_ear')
# OpenPose COCO-18 render pairs = the 17 limbs ControlNet draws (its list has 19), same order.
_OPENPOSE18_LIMBS = _pairs((1, 2, 1, 5, 2, 3, 3, 4, 5, 6, 6, 7, 1, 8, 8, 9, 9, 10, 1, 11, 11, 12,
                            12, 13, 1, 0, 0, 14, 14, 16, 0, 15, 15, 17))
_OPENPOSE18_FLIP = (0, 1, 5, 6, 7, 2, 3, 4, 11, 12, 13, 8, 9, 10, 15, 14, 17, 16)
# ControlNet (controlnet_aux) palette: limb i and joint i both use colour i.
CONTROLNET_COLORS = _colors((
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)))
# OpenPose's own COCO-18 keypoint colours (poseParametersRender.hpp), not used by
# the `openpose18` layout; limbs would take the colour of their second keypoint.
OPENPOSE18_NATIVE_JOINT_COLORS = _colors((
    (255, 0, 85), (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
    (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255),
    (0, 85, 255), (0, 0, 255), (255, 0, 170), (170, 0, 255), (255, 0, 255), (85, 0, 255)))

# ============================================================================ OpenPose BODY_25

BODY25_JOINTS = (
    'nose', 'neck', 'right_shoulder', 'right_elbow', 'right_wrist',
    'left_shoulder', 'left_elbow', 'left_wrist', 'mid_hip',
    'right_hip', 'right_knee', 'right_ankle', 'left_hip', 'left_knee', 'left_ankle',
    'right_eye', 'left_eye', 'right_ear', 'left_ear',
    'left_big_toe', 'left_small_toe', 'left_heel', 'right_big_toe', 'right_small_toe',
    'right_heel')
_BODY25_LIMBS = _pairs((1, 8, 1, 2, 1, 5, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 10, 11, 8, 12,
                        12, 13, 13, 14, 1, 0, 0, 15, 15, 17, 0, 16, 16, 18, 14, 19, 19, 20,
                        14, 21, 11, 22, 22, 23, 11, 24))
# HMR 2.0's flip permutation for the first 25 keypoints (FLIP_KEYPOINT_PERMUTATION).
_BODY25_FLIP = (0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19,
                20, 21)
_BODY25_COLORS = _colors((
    (255, 0, 85), (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
    (85, 255, 0), (0, 255, 0), (255, 0, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
    (0, 170, 255), (0, 85, 255), (0, 0, 255), (255, 0, 170), (170, 0, 255), (255, 0, 255),
    (85, 0, 255), (0, 0, 255), (0, 0, 255), (0, 0, 255), (0, 255, 255), (0, 255, 255),
    (0, 255, 255)))

# ============================================================================ HMR 2.0's 44

# The 19 joints of SPIN's J19 regressor, in HMR 2.0's order (SPIN's JOINT_NAMES). They are
# different points from the same-named OpenPose ones, hence the dataset suffix.
HMR44_EXTRA_JOINTS = (
    'right_ankle_lsp', 'right_knee_lsp', 'right_hip_lsp', 'left_hip_lsp', 'left_knee_lsp',
    'left_ankle_lsp', 'right_wrist_lsp', 'right_elbow_lsp', 'right_shoulder_lsp',
    'left_shoulder_lsp', 'left_elbow_lsp', 'left_wrist_lsp', 'neck_lsp', 'head_top_lsp',
    'pelvis_mpii', 'thorax_mpii', 'spine_h36m', 'jaw_h36m', 'head_h36m')
HMR44_JOINTS = BODY25_JOINTS + HMR44_EXTRA_JOINTS
_HMR44_EXTRA_FLIP_LOCAL = (5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18)
_HMR44_FLIP = _BODY25_FLIP + tuple(25 + i for i in _HMR44_EXTRA_FLIP_LOCAL)
# OUR CHOICE: LSP stick figure plus an H36M-style trunk over the extra joints.
_HMR44_EXTRA_LIMBS = (
    (26, 25), (27, 26), (28, 29), (29, 30),          # legs: hip -> knee -> ankle
    (32, 31), (33, 32), (34, 35), (35, 36),          # arms: shoulder -> elbow -> wrist
    (37, 33), (37, 34), (37, 38),                    # neck -> shoulders, head top
    (39, 27), (39, 28), (39, 41), (41, 40), (40, 37),  # pelvis -> hips, spine, thorax, neck
    (37, 42), (42, 43))                              # neck -> jaw -> head
_HMR44_EXTRA_COLOR_OF = (  # the BODY_25 joint whose colour each extra joint borrows
    11, 10, 9, 12, 13, 14, 4, 3, 2, 5, 6, 7, 1, 0, 8, 1, 8, 0, 0)
_HMR44_COLORS = _BODY25_COLORS + tuple(_BODY25_COLORS[i] for i in _HMR44_EXTRA_COLOR_OF)

# ============================================================================ hands

# OpenPose / FreiHAND / HaMeR order: wrist; thumb, index, middle, ring, pinky, each base -> tip.
HAND21_JOINTS = ('wrist',) + tuple(
    f'{finger}{k}' for finger in ('thumb', 'index', 'middle', 'ring', 'pinky')
    for k in ('1', '2', '3', '_tip'))
_HAND21_LIMBS = tuple((0 if k == 0 else 1 + 4 * f + k - 1, 1 + 4 * f + k)
                      for f in range(5) for k in range(4))
_HAND21_COLORS = _colors((
    (100, 100, 100), (100, 0, 0), (150, 0, 0), (200, 0, 0), (255, 0, 0), (100, 100, 0),
    (150, 150, 0), (200, 200, 0), (255, 255, 0), (0, 100, 50), (0, 150, 75), (0, 200, 100),
    (0, 255, 125), (0, 50, 100), (0, 75, 150), (0, 100, 200), (0, 125, 255), (100, 0, 100),
    (150, 0, 150), (200, 0, 200), (255, 0, 255)))

# MANO's own joint order, as smplx's MANO layer returns it.
MANO16_JOINTS = ('wrist',) + tuple(
    f'{finger}{k}' for finger in ('index', 'middle', 'pinky', 'ring', 'thumb') for k in (1, 2, 3))
MANO16_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
# HaMeR / smplx fingertip order appended after the 16 joints.
MANO21_JOINTS = MANO16_JOINTS + tuple(
    f'{finger}_tip' for finger in ('thumb', 'index', 'middle', 'ring', 'pinky'))
_MANO21_PARENTS = MANO16_PARENTS + (15, 3, 6, 12, 9)

# ============================================================================ SMPL

SMPL24_JOINTS = (
    'pelvis', 'left_hip', 'right_hip', 'spine1', 'left_knee', 'right_knee', 'spine2',
    'left_ankle', 'right_ankle', 'spine3', 'left_foot', 'right_foot', 'neck', 'left_collar',
    'right_collar', 'head', 'left_shoulder', 'right_shoulder', 'left_elbow', 'right_elbow',
    'left_wrist', 'right_wrist', 'left_hand', 'right_hand')
SMPL24_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
# Left <-> right swap of the 24 SMPL joints, for flipping axis-angle poses (see flip_smpl_pose).
SMPL_FLIP_PERMUTATION = _frozen(
    (0, 2, 1, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12, 14, 13, 15, 17, 16, 19, 18, 21, 20, 23, 22))
# smplx's SMPL vertex joints that HMR 2.0's joint map reads (indices 24-34 of its 45 joints).
SMPL_VERTEX_JOINT_NAMES = (
    'nose', 'right_eye', 'left_eye', 'right_ear', 'left_ear', 'left_big_toe', 'left_small_toe',
    'left_heel', 'right_big_toe', 'right_small_toe', 'right_heel')


def _tree_limbs(parents) -> Tuple[Tuple[int, int], ...]:
    return tuple((p, j) for j, p in enumerate(parents) if p >= 0)


# ============================================================================ layouts

COCO17 = Layout(
    name='coco17', joints=COCO17_JOINTS,
    limbs=tuple((a - 1, b - 1) for a, b in _COCO17_SKELETON_1BASED), flip=_COCO17_FLIP,
    joint_colors=tuple(CONTROLNET_COLORS[OPENPOSE18_JOINTS.index(n)] for n in COCO17_JOINTS),
    limb_colors=tuple(CONTROLNET_COLORS[OPENPOSE18_JOINTS.index(COCO17_JOINTS[b - 1])]
                      for _, b in _COCO17_SKELETON_1BASED))
OPENPOSE18 = Layout(
    name='openpose18', joints=OPENPOSE18_JOINTS, limbs=_OPENPOSE18_LIMBS, flip=_OPENPOSE18_FLIP,
    joint_colors=CONTROLNET_COLORS, limb_colors=CONTROLNET_COLORS[:len(_OPENPOSE18_LIMBS)])
BODY25 = Layout(
    name='body25', joints=BODY25_JOINTS, limbs=_BODY25_LIMBS, flip=_BODY25_FLIP,
    joint_colors=_BODY25_COLORS, limb_colors=_second_joint_colors(_BODY25_LIMBS, _BODY25_COLORS))
HMR44 = Layout(
    name='hmr44', joints=HMR44_JOINTS, limbs=_BODY25_LIMBS + _HMR44_EXTRA_LIMBS, flip=_HMR44_FLIP,
    joint_colors=_HMR44_COLORS,
    limb_colors=_second_joint_colors(_BODY25_LIMBS + _HMR44_EXTRA_LIMBS, _HMR44_COLORS))
HAND21 = Layout(
    name='hand21', joints=HAND21_JOINTS, limbs=_HAND21_LIMBS, flip=tuple(range(21)),
    joint_colors=_HAND21_COLORS, limb_colors=_second_joint_colors(_HAND21_LIMBS, _HAND21_COLORS))
MANO16 = Layout(name='mano16', joints=MANO16_JOINTS, limbs=_tree_limbs(MANO16_PARENTS),
                flip=tuple(range(16)))
MANO21 = Layout(name='mano21', joints=MANO21_JOINTS, limbs=_tree_limbs(_MANO21_PARENTS),
                flip=tuple(range(21)))
SMPL24 = Layout(name='smpl24', joints=SMPL24_JOINTS, limbs=_tree_limbs(SMPL24_PARENTS),
                flip=tuple(int(i) for i in SMPL_FLIP_PERMUTATION))

LAYOUTS = {lay.name: lay for lay in (COCO17, OPENPOSE18, BODY25, HMR44, HAND21, MANO16, MANO21,
                                     SMPL24)}

# ============================================================================ constants

# smplx SMPL 45 joints (24 skeleton + vertex joints) -> OpenPose BODY_25 (HMR 2.0's joint_map).
SMPL_TO_OPENPOSE25 = _frozen(
    (24, 12, 17, 19, 21, 16, 18, 20, 0, 2, 5, 8, 1, 4, 7, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34))
# MANO 16 joints + 5 tips (thumb, index, middle, ring, pinky) -> OpenPose hand-21 (HaMeR).
MANO_TO_OPENPOSE21 = _frozen(
    (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20))
# HMR 2.0's 14 evaluation joints (3DPW, H36M) within the 44, and its root.
HMR44_EVAL14 = _frozen(tuple(range(25, 38)) + (43,))
HMR44_PELVIS = 39

# ============================================================================ mappings

# dst joint -> src joint (-1: missing). Copied from upstream; the tests re-derive each one
# from the joint names. Pairs not listed here fall back to matching joint names.
_OP18_TO_COCO17 = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
_BODY25_TO_COCO17 = (0, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 12, 9, 13, 10, 14, 11)
_BODY25_TO_OP18 = (0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18)
_MAPPINGS = {
    ('openpose18', 'coco17'): _OP18_TO_COCO17,
    ('body25', 'coco17'): _BODY25_TO_COCO17,
    ('body25', 'openpose18'): _BODY25_TO_OP18,
    # HMR 2.0's 2D supervision lives in the BODY_25 slots 0-24 (COCO, MPII, ... keypoints are
    # written there), so the 44 convert through those, not through the regressed extras.
    ('hmr44', 'coco17'): _BODY25_TO_COCO17,
    ('hmr44', 'openpose18'): _BODY25_TO_OP18,
    ('hmr44', 'body25'): tuple(range(25)),
    ('mano21', 'hand21'): tuple(int(i) for i in MANO_TO_OPENPOSE21),
}

LayoutLike = Union[Layout, str]


def get_layout(layout: LayoutLike) -> Layout:
    if isinstance(layout, Layout):
        return layout
    try:
        return LAYOUTS[layout]
    except KeyError:
        raise KeyError(f'unknown layout {layout!r}; known: {sorted(LAYOUTS)}') from None


def mapping(src: LayoutLike, dst: LayoutLike) -> np.ndarray:
    """(dst.num_joints,) int64, read-only: the src joint for each dst joint, -1 where missing.

    Uses the hard-coded tables where there is one, else the shared joint names. Raises if the two
    layouts have no joint in common.
    """
    src, dst = get_layout(src), get_layout(dst)
    if src.name == dst.name:
        return _frozen(range(src.num_joints))
    table = _MAPPINGS.get((src.name, dst.name))
    if table is None:
        table = tuple(src.joints.index(n) if n in src.joints else -1 for n in dst.joints)
    if all(i < 0 for i in table):
        raise ValueError(f'layouts {src.name} and {dst.name} share no joint')
    return _frozen(table)


def convert(keypoints, src: LayoutLike, dst: LayoutLike):
    """Reorders (..., J_src, C) keypoints into dst's layout: (..., J_dst, C).

    Joints dst has and src lacks are all-zero rows (so a confidence channel reads 0). Works on
    numpy arrays (returns numpy) and jax arrays (returns jax, jit-able: the map is static).
    """
    src, dst = get_layout(src), get_layout(dst)
    if keypoints.shape[-2] != src.num_joints:
        raise ValueError(f'expected {src.num_joints} {src.name} joints on axis -2, got shape '
                         f'{tuple(keypoints.shape)}')
    idx = mapping(src, dst)
    if (idx >= 0).all():
        return keypoints[..., idx, :]
    # Gather from the keypoints with one all-zero row appended; missing joints read that row.
    xp = jnp if isinstance(keypoints, jax.Array) else np
    zero = xp.zeros(keypoints.shape[:-2] + (1, keypoints.shape[-1]), keypoints.dtype)
    padded = xp.concatenate([keypoints, zero], axis=-2)
    return padded[..., np.where(idx >= 0, idx, src.num_joints), :]


# ============================================================================ flips


def flip_keypoint_order(keypoints, layout: LayoutLike):
    """Swaps left and right joints of (..., J, C) keypoints; mirroring the coordinates is the
    caller's job (its convention depends on the frame: x -> -x, or width - 1 - x)."""
    layout = get_layout(layout)
    return keypoints[..., layout.flip_array, :]


_AXIS_ANGLE_FLIP_SIGN = np.array([1.0, -1.0, -1.0])


def flip_smpl_pose(pose):
    """Mirror an SMPL axis-angle pose left <-> right (SPIN convention, as HMR 2.0's flip).

    pose: (..., 72) or (..., 24, 3), global orientation first. Joints are swapped with
    SMPL_FLIP_PERMUTATION and the y and z components of every axis-angle (global orientation
    included) are negated. Numpy in, numpy out; jax in, jax out. An involution.
    """
    flat = pose.shape[-1] == 72
    p = pose.reshape(pose.shape[:-1] + (24, 3)) if flat else pose
    if p.shape[-2:] != (24, 3):
        raise ValueError(f'expected (..., 72) or (..., 24, 3), got {tuple(pose.shape)}')
    out = p[..., SMPL_FLIP_PERMUTATION, :] * _AXIS_ANGLE_FLIP_SIGN.astype(p.dtype)
    return out.reshape(pose.shape) if flat else out


__all__ = [
    'Layout', 'LAYOUTS', 'get_layout', 'mapping', 'convert', 'flip_keypoint_order',
    'flip_smpl_pose',
    'COCO17', 'OPENPOSE18', 'BODY25', 'HMR44', 'HAND21', 'MANO16', 'MANO21', 'SMPL24',
    'COCO17_JOINTS', 'OPENPOSE18_JOINTS', 'BODY25_JOINTS', 'HMR44_JOINTS', 'HMR44_EXTRA_JOINTS',
    'HAND21_JOINTS', 'MANO16_JOINTS', 'MANO16_PARENTS', 'MANO21_JOINTS', 'SMPL24_JOINTS',
    'SMPL24_PARENTS', 'SMPL_FLIP_PERMUTATION', 'SMPL_VERTEX_JOINT_NAMES',
    'CONTROLNET_COLORS', 'OPENPOSE18_NATIVE_JOINT_COLORS',
    'SMPL_TO_OPENPOSE25', 'MANO_TO_OPENPOSE21', 'HMR44_EVAL14', 'HMR44_PELVIS',
]
