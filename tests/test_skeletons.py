"""Layouts, flips and maps, checked against upstream's published numbers and the joint names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from extpose_jax import skeletons as sk

ALL = sorted(sk.LAYOUTS)
# (src, dst) pairs the brief requires a map for.
REQUIRED_PAIRS = [
    ('openpose18', 'coco17'),
    ('body25', 'coco17'),
    ('body25', 'openpose18'),
    ('hmr44', 'coco17'),
    ('hmr44', 'openpose18'),
    ('mano21', 'hand21'),
]


def _swap_side(name):
    """'left_x' <-> 'right_x', written independently of the module."""
    for a, b in (('left', 'right'), ('right', 'left')):
        if name.startswith(a + '_'):
            return b + name[len(a) :]
    return name


def _map_by_name(src_names, dst_names, aliases=None):
    aliases = aliases or {}
    out = []
    for name in dst_names:
        name = aliases.get(name, name)
        out.append(src_names.index(name) if name in src_names else -1)
    return out


@pytest.mark.parametrize('name', ALL)
def test_flip_is_an_involution_that_maps_limbs_to_limbs(name):
    lay = sk.LAYOUTS[name]
    flip = np.asarray(lay.flip)
    np.testing.assert_array_equal(np.sort(flip), np.arange(lay.num_joints))
    np.testing.assert_array_equal(flip[flip], np.arange(lay.num_joints))
    limbs = {frozenset(l) for l in lay.limbs}
    assert len(limbs) == len(lay.limbs), 'duplicate limb'
    assert {frozenset((int(flip[a]), int(flip[b]))) for a, b in lay.limbs} == limbs


@pytest.mark.parametrize('name', ALL)
def test_flip_swaps_left_and_right_names(name):
    lay = sk.LAYOUTS[name]
    for i, j in enumerate(lay.flip):
        assert lay.joints[j] == _swap_side(lay.joints[i]), (name, lay.joints[i], lay.joints[j])
    # and every name has its mirror partner in the layout
    assert {_swap_side(n) for n in lay.joints} == set(lay.joints)


def test_hand_flips_are_identity_and_body_flips_are_not():
    for lay in (sk.HAND21, sk.MANO16, sk.MANO21):
        assert lay.flip == tuple(range(lay.num_joints))
    for lay in (sk.COCO17, sk.OPENPOSE18, sk.BODY25, sk.HMR44, sk.SMPL24):
        assert lay.flip != tuple(range(lay.num_joints))


def test_hmr44_flip_equals_spec():
    body = [
        0,
        1,
        5,
        6,
        7,
        2,
        3,
        4,
        8,
        12,
        13,
        14,
        9,
        10,
        11,
        16,
        15,
        18,
        17,
        22,
        23,
        24,
        19,
        20,
        21,
    ]
    extra = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18]
    assert list(sk.HMR44.flip) == body + [25 + i for i in extra]
    assert list(sk.BODY25.flip) == body


@pytest.mark.parametrize('src,dst', REQUIRED_PAIRS)
def test_required_maps_agree_with_joint_names(src, dst):
    s, d = sk.LAYOUTS[src], sk.LAYOUTS[dst]
    got = sk.mapping(src, dst)
    assert got.shape == (d.num_joints,) and got.dtype == np.int64
    # HMR 2.0's 2D keypoints live in the BODY_25 part: match names there only.
    src_names = s.joints[:25] if src == 'hmr44' else s.joints
    assert got.tolist() == _map_by_name(list(src_names), list(d.joints))
    for i, j in enumerate(got):
        assert j < 0 or s.joints[j] == d.joints[i]


def test_openpose18_to_coco17_equals_spec():
    assert sk.mapping(sk.OPENPOSE18, sk.COCO17).tolist() == [
        0,
        15,
        14,
        17,
        16,
        5,
        2,
        6,
        3,
        7,
        4,
        11,
        8,
        12,
        9,
        13,
        10,
    ]


def test_fallback_maps_by_name_and_marks_missing():
    m = sk.mapping('coco17', 'openpose18')
    assert m[sk.OPENPOSE18.index('neck')] == -1
    assert (m >= 0).sum() == 17
    assert sk.mapping('body25', 'body25').tolist() == list(range(25))
    with pytest.raises(ValueError):
        sk.mapping('hand21', 'coco17')
    with pytest.raises(KeyError):
        sk.mapping('nope', 'coco17')
    with pytest.raises(ValueError):  # read-only
        m[0] = 3


def test_smpl_to_openpose25_agrees_with_names():
    # smplx's 45 SMPL joints: 24 skeleton joints, then vertex joints taken from the mesh (nose,
    # eyes, ears, feet; the 10 fingertips after them are unused), written out again here.
    smpl45 = list(sk.SMPL24_JOINTS) + [
        'nose',
        'right_eye',
        'left_eye',
        'right_ear',
        'left_ear',
        'left_big_toe',
        'left_small_toe',
        'left_heel',
        'right_big_toe',
        'right_small_toe',
        'right_heel',
    ]
    expected = _map_by_name(smpl45, list(sk.BODY25_JOINTS), aliases={'mid_hip': 'pelvis'})
    assert sk.SMPL_TO_OPENPOSE25.tolist() == expected
    assert sk.SMPL_TO_OPENPOSE25.tolist() == [
        24,
        12,
        17,
        19,
        21,
        16,
        18,
        20,
        0,
        2,
        5,
        8,
        1,
        4,
        7,
        25,
        26,
        27,
        28,
        29,
        30,
        31,
        32,
        33,
        34,
    ]


def test_mano_to_openpose21_agrees_with_names_and_freihand_toolbox():
    assert sk.MANO_TO_OPENPOSE21.tolist() == _map_by_name(
        list(sk.MANO21_JOINTS), list(sk.HAND21_JOINTS)
    )
    assert sk.mapping('mano21', 'hand21').tolist() == sk.MANO_TO_OPENPOSE21.tolist()
    # FreiHAND toolbox: MANO joint m goes to OpenPose slot toolbox[m] (its own table).
    toolbox = {
        0: 0,
        1: 5,
        2: 6,
        3: 7,
        4: 9,
        5: 10,
        6: 11,
        7: 17,
        8: 18,
        9: 19,
        10: 13,
        11: 14,
        12: 15,
        13: 1,
        14: 2,
        15: 3,
    }
    for m, slot in toolbox.items():
        assert sk.MANO_TO_OPENPOSE21[slot] == m
    # tips are appended thumb, index, middle, ring, pinky and land on 4, 8, 12, 16, 20
    assert [int(sk.MANO_TO_OPENPOSE21[s]) for s in (4, 8, 12, 16, 20)] == [16, 17, 18, 19, 20]


def test_hand_and_mano_layouts():
    assert sk.MANO16_JOINTS == (
        'wrist',
        'index1',
        'index2',
        'index3',
        'middle1',
        'middle2',
        'middle3',
        'pinky1',
        'pinky2',
        'pinky3',
        'ring1',
        'ring2',
        'ring3',
        'thumb1',
        'thumb2',
        'thumb3',
    )
    assert sk.MANO21.joints[:16] == sk.MANO16_JOINTS
    # hand-21: 0 wrist, then 4 joints per finger in thumb, index, middle, ring, pinky order
    for f, finger in enumerate(('thumb', 'index', 'middle', 'ring', 'pinky')):
        assert all(sk.HAND21_JOINTS[1 + 4 * f + k].startswith(finger) for k in range(4))
    flat = [v for pair in sk.HAND21.limbs for v in pair]
    assert flat == [
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        0,
        5,
        5,
        6,
        6,
        7,
        7,
        8,
        0,
        9,
        9,
        10,
        10,
        11,
        11,
        12,
        0,
        13,
        13,
        14,
        14,
        15,
        15,
        16,
        0,
        17,
        17,
        18,
        18,
        19,
        19,
        20,
    ]
    # MANO kinematic tree: every finger chain hangs off the wrist, joint k-1 -> k
    for j, p in enumerate(sk.MANO16_PARENTS[1:], start=1):
        assert p == (0 if (j - 1) % 3 == 0 else j - 1)


def test_hmr44_eval_joints_and_pelvis():
    names = [sk.HMR44_JOINTS[i] for i in sk.HMR44_EVAL14]
    assert sk.HMR44_EVAL14.tolist() == list(range(25, 38)) + [43]
    assert names[-2:] == ['neck_lsp', 'head_h36m']
    assert sk.HMR44_JOINTS[sk.HMR44_PELVIS] == 'pelvis_mpii'
    assert sk.HMR44_JOINTS[:25] == sk.BODY25_JOINTS


def test_smpl_tree_and_pose_flip_permutation():
    names, parents = sk.SMPL24_JOINTS, sk.SMPL24_PARENTS
    assert len(names) == len(parents) == 24 and parents[0] == -1
    assert all(0 <= p < j for j, p in enumerate(parents) if j)
    perm = sk.SMPL_FLIP_PERMUTATION
    np.testing.assert_array_equal(perm[perm], np.arange(24))
    for i, j in enumerate(perm):
        if names[i].startswith('left_'):
            assert names[j] == 'right_' + names[i][5:]
        elif names[i].startswith('right_'):
            assert names[j] == 'left_' + names[i][6:]
        else:
            assert j == i
    # the tree is mirror-symmetric: parent of a flipped joint = flipped parent
    for j in range(1, 24):
        assert parents[perm[j]] == perm[parents[j]]


def test_flip_smpl_pose_mirrors_rotations():
    rng = np.random.default_rng(0)
    pose = rng.normal(size=(5, 24, 3))
    flipped = sk.flip_smpl_pose(pose)
    mirror = np.diag([-1.0, 1.0, 1.0])  # reflection x -> -x
    for j in range(24):
        src = sk.SMPL_FLIP_PERMUTATION[j]
        want = mirror @ Rotation.from_rotvec(pose[:, src]).as_matrix() @ mirror
        np.testing.assert_allclose(
            Rotation.from_rotvec(flipped[:, j]).as_matrix(), want, atol=1e-12
        )
    np.testing.assert_allclose(sk.flip_smpl_pose(flipped), pose)
    flat = sk.flip_smpl_pose(pose.reshape(5, 72))
    np.testing.assert_allclose(flat, flipped.reshape(5, 72))
    out = jax.jit(sk.flip_smpl_pose)(jnp.asarray(pose, jnp.float32))
    assert isinstance(out, jax.Array)
    np.testing.assert_allclose(out, flipped, atol=1e-6)
    with pytest.raises(ValueError):
        sk.flip_smpl_pose(np.zeros((23, 3)))


def test_convert_fills_missing_with_zeros_and_batches():
    rng = np.random.default_rng(1)
    kp = rng.uniform(1, 2, size=(2, 3, 18, 3)).astype(np.float32)  # conf > 0 everywhere
    body = sk.convert(kp, 'openpose18', 'body25')
    assert body.shape == (2, 3, 25, 3) and isinstance(body, np.ndarray)
    for i, name in enumerate(sk.BODY25_JOINTS):
        if name in sk.OPENPOSE18_JOINTS:
            np.testing.assert_array_equal(body[..., i, :], kp[..., sk.OPENPOSE18.index(name), :])
        else:
            assert (body[..., i, :] == 0).all()  # mid_hip and the feet
    # round trip through the hard-coded maps
    back = sk.convert(sk.convert(kp, 'openpose18', 'body25'), 'body25', 'openpose18')
    np.testing.assert_array_equal(back, kp)
    coco = jax.jit(lambda x: sk.convert(x, sk.OPENPOSE18, sk.COCO17))(jnp.asarray(kp))
    np.testing.assert_array_equal(coco, kp[..., sk.mapping('openpose18', 'coco17'), :])
    # a NaN in a present joint never leaks into a missing one
    kp[..., 0, :] = np.nan
    assert (sk.convert(kp, 'openpose18', 'body25')[..., 8, :] == 0).all()
    j = sk.convert(jnp.asarray(kp), 'openpose18', 'body25')
    assert (np.asarray(j[..., 8, :]) == 0).all()
    with pytest.raises(ValueError):
        sk.convert(kp, 'body25', 'coco17')


def test_flip_keypoint_order():
    kp = np.arange(17 * 2).reshape(17, 2)
    out = sk.flip_keypoint_order(kp, 'coco17')
    assert sk.COCO17_JOINTS[1] == 'left_eye'
    np.testing.assert_array_equal(out[1], kp[2])


def test_palettes():
    for lay in sk.LAYOUTS.values():
        assert lay.joint_color_array.shape in ((lay.num_joints, 3), (0, 3))
        assert lay.limb_color_array.dtype == np.uint8
        assert lay.limb_array.shape == (len(lay.limbs), 2)
    for name in ('coco17', 'openpose18', 'body25', 'hmr44', 'hand21'):
        lay = sk.LAYOUTS[name]
        assert len(lay.joint_colors) == lay.num_joints and len(lay.limb_colors) == len(lay.limbs)
    # ControlNet: limb i and joint i share colour i; 17 limbs drawn, first [255,0,0]
    op = sk.OPENPOSE18
    assert len(op.limbs) == 17 and op.joint_colors[0] == (255, 0, 0)
    assert op.limb_colors == op.joint_colors[:17] and op.joint_colors[17] == (255, 0, 85)
    # ControlNet limbs are 1-based [2,3], [2,6], ... , [16,18]
    assert op.limbs[0] == (1, 2) and op.limbs[1] == (1, 5) and op.limbs[-1] == (15, 17)
    # OpenPose: a limb takes its second keypoint's colour
    for lay in (sk.BODY25, sk.HAND21):
        assert lay.limb_colors == tuple(lay.joint_colors[b] for _, b in lay.limbs)
    assert sk.BODY25.joint_colors[0] == (255, 0, 85) and sk.BODY25.joint_colors[8] == (255, 0, 0)
    assert sk.HAND21.joint_colors[0] == (100, 100, 100)
    assert sk.HAND21.joint_colors[20] == (255, 0, 255)
    assert sk.OPENPOSE18_NATIVE_JOINT_COLORS[0] == (255, 0, 85)
    # COCO-17 joints borrow the same-named OpenPose-18 joint's colour
    for i, n in enumerate(sk.COCO17_JOINTS):
        assert sk.COCO17.joint_colors[i] == op.joint_colors[op.index(n)]


def test_layouts_are_immutable_and_validated():
    with pytest.raises(Exception):
        sk.COCO17.name = 'x'
    hash(sk.HMR44)
    with pytest.raises(ValueError):
        sk.Layout(name='bad', joints=('a', 'b'), limbs=((0, 1),), flip=(0, 0))
    with pytest.raises(ValueError):
        sk.Layout(name='bad', joints=('a', 'b'), limbs=((0, 2),), flip=(0, 1))
    with pytest.raises(ValueError):
        sk.Layout(name='bad', joints=('a', 'a'), limbs=(), flip=(0, 1))
