"""The synthetic raw datasets (data_pipelines/synthetic/raw_*.py) and their simulated detections
(the renderer itself: test_render.py).

Small sizes, temporary folders. The checks recompute what a dataset reader computes, with
extpose_jax.body_models (not with the generator's own helpers), so a convention slip in the
generator shows up as a mismatch here.
"""

import glob
import json
import os
import pickle
import re

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from data_pipelines.synthetic import raw_3dpw, raw_freihand, raw_hint, render
from extpose_jax import body_models as bm
from extpose_jax import skeletons

W3, H3 = 135, 240  # small portrait 3DPW frames
SEQS = {'train': 1, 'test': 1}
FRAMES = 5
FH_TRAIN, FH_EVAL = 3, 2
HINT_PER_FOLDER = 2


def _write_small(root, body_model_dir, seed):
    out = {
        '3dpw': raw_3dpw.write_3dpw(
            os.path.join(root, '3DPW'),
            body_model_dir,
            seed=seed,
            sequences=SEQS,
            frames=FRAMES,
            image_size=(W3, H3),
        ),
        'freihand': raw_freihand.write_freihand(
            os.path.join(root, 'FreiHAND'),
            body_model_dir,
            seed=seed,
            train=FH_TRAIN,
            evaluation=FH_EVAL,
        ),
        'hint': raw_hint.write_hint(
            os.path.join(root, 'HInt'), body_model_dir, seed=seed, per_folder=HINT_PER_FOLDER
        ),
    }
    return out


@pytest.fixture(scope='module')
def synth(tmp_path_factory, body_model_dir):
    root = str(tmp_path_factory.mktemp('synth'))
    info = _write_small(root, str(body_model_dir), seed=0)
    info['root'] = root
    return info


def _files(root):
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            with open(p, 'rb') as f:
                out[os.path.relpath(p, root)] = f.read()
    return out


def _pkls(synth):
    paths = sorted(glob.glob(os.path.join(synth['3dpw']['root'], 'sequenceFiles', '*', '*.pkl')))
    assert len(paths) == sum(SEQS.values())
    out = []
    for p in paths:
        with open(p, 'rb') as f:
            out.append((p, pickle.load(f, encoding='latin1')))
    return out


def _gender(g):
    return {'m': 'male', 'f': 'female'}[g]


# ============================================================================ determinism


@pytest.mark.slow
def test_same_bytes_for_the_same_seed(synth, body_model_dir, tmp_path):
    again = _write_small(str(tmp_path / 'again'), str(body_model_dir), seed=0)
    del again
    a, b = _files(synth['root']), _files(str(tmp_path / 'again'))
    assert sorted(a) == sorted(b)
    differ = [k for k in a if a[k] != b[k]]
    assert not differ, differ[:5]


@pytest.mark.slow
def test_other_seed_other_data(synth, body_model_dir, tmp_path):
    out = raw_3dpw.write_3dpw(
        str(tmp_path / '3DPW'),
        str(body_model_dir),
        seed=1,
        sequences={'test': 1},
        frames=2,
        image_size=(W3, H3),
    )
    (name,) = out['sequences']['test']
    with open(tmp_path / '3DPW' / 'sequenceFiles' / 'test' / f'{name}.pkl', 'rb') as f:
        other = pickle.load(f, encoding='latin1')
    ours = dict(_pkls(synth))
    assert all(not np.allclose(other['poses'][0][:2], d['poses'][0][:2]) for d in ours.values())


# ============================================================================ 3DPW


@pytest.mark.slow
def test_3dpw_pickle_needs_latin1(synth):
    for path, _ in _pkls(synth):
        with open(path, 'rb') as f:
            raw = f.read()
        assert raw[:2] == b'\x80\x02'  # protocol 2
        with pytest.raises(UnicodeDecodeError):
            pickle.loads(raw)  # Python 3's default: ASCII


@pytest.mark.slow
def test_3dpw_layout_keys_and_shapes(synth):
    root = synth['3dpw']['root']
    assert sorted(os.listdir(os.path.join(root, 'sequenceFiles'))) == sorted(SEQS)
    n_actor_counts, some_invalid = set(), False
    for path, d in _pkls(synth):
        name = os.path.basename(path)[:-4]
        assert re.fullmatch(r'[a-z]+_synth_\d\d', name)
        expected = {
            'sequence',
            'genders',
            'betas',
            'betas_clothed',
            'v_template_clothed',
            'texture_maps',
            'poses',
            'trans',
            'poses_60Hz',
            'trans_60Hz',
            'img_frame_ids',
            'jointPositions',
            'poses2d',
            'cam_poses',
            'cam_intrinsics',
            'campose_valid',
        }
        assert set(d) == expected
        assert d['sequence'] == name and isinstance(d['sequence'], str)
        A = len(d['poses'])
        n_actor_counts.add(A)
        N = len(d['img_frame_ids'])
        assert N == FRAMES
        for key in (
            'genders',
            'betas',
            'betas_clothed',
            'v_template_clothed',
            'texture_maps',
            'poses',
            'trans',
            'poses_60Hz',
            'trans_60Hz',
            'jointPositions',
            'poses2d',
            'campose_valid',
        ):
            assert isinstance(d[key], list) and len(d[key]) == A, key
        assert all(g in ('m', 'f') for g in d['genders'])
        for k in range(A):
            b = d['betas'][k]
            assert b.shape == ((10,) if k == 0 else (300,))
            assert not b[10:].any()
            assert d['betas_clothed'][k].shape == (10,)
            assert d['v_template_clothed'][k].shape == (6890, 3)
            assert d['texture_maps'][k].dtype == np.uint8 and d['texture_maps'][k].ndim == 3
            assert d['poses'][k].shape == (N, 72) and d['poses'][k].dtype == np.float64
            assert d['trans'][k].shape == (N, 3)
            assert d['poses_60Hz'][k].shape == (2 * N, 72)
            assert d['trans_60Hz'][k].shape == (2 * N, 3)
            assert d['jointPositions'][k].shape == (N, 72)
            assert d['poses2d'][k].shape == (N, 3, 18)
            assert d['campose_valid'][k].shape == (N,)
            some_invalid |= not np.asarray(d['campose_valid'][k]).astype(bool).all()
            ids = d['img_frame_ids']
            np.testing.assert_array_equal(d['poses'][k], d['poses_60Hz'][k][ids])
            np.testing.assert_array_equal(d['trans'][k], d['trans_60Hz'][k][ids])
        ids = d['img_frame_ids']
        assert ids.dtype.kind == 'i' and (np.diff(ids) > 0).all() and ids.max() < 2 * N
        assert d['cam_poses'].shape == (N, 4, 4)
        R = d['cam_poses'][:, :3, :3]
        np.testing.assert_allclose(
            R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-9
        )
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-9)
        np.testing.assert_array_equal(d['cam_poses'][:, 3], np.broadcast_to([0, 0, 0, 1.0], (N, 4)))
        K = d['cam_intrinsics']
        assert K.shape == (3, 3) and K[0, 2] == W3 / 2 and K[1, 2] == H3 / 2
        assert K[0, 1] == 0 and K[1, 0] == 0 and tuple(K[2]) == (0, 0, 1)
        images = sorted(glob.glob(os.path.join(root, 'imageFiles', name, '*.jpg')))
        assert [os.path.basename(p) for p in images] == [f'image_{i:05d}.jpg' for i in range(N)]
        for p in images:
            img = cv2.imread(p)
            assert img is not None and img.shape == (2 * K[1, 2], 2 * K[0, 2], 3)
    assert n_actor_counts == {1, 2}
    assert some_invalid


@pytest.mark.slow
def test_3dpw_joint_positions_are_the_gendered_smpl_joints(synth, body_model_dir):
    for _, d in _pkls(synth):
        for k, g in enumerate(d['genders']):
            model = bm.load_smpl(str(body_model_dir), _gender(g))
            out = bm.forward(
                model,
                np.asarray(d['poses'][k], np.float32),
                np.asarray(d['betas'][k][:10], np.float32),
            )
            joints = np.asarray(out['joints'], np.float64) + d['trans'][k][:, None]
            np.testing.assert_allclose(joints.reshape(-1, 72), d['jointPositions'][k], atol=1e-5)
            # the other gender does not fit: the gender matters
            other = bm.load_smpl(str(body_model_dir), 'female' if g == 'm' else 'male')
            wrong = np.asarray(
                bm.forward(
                    other,
                    np.asarray(d['poses'][k], np.float32),
                    np.asarray(d['betas'][k][:10], np.float32),
                )['joints']
            )
            assert np.abs(wrong + d['trans'][k][:, None] - joints).max() > 1e-3


@pytest.mark.slow
def test_3dpw_world_is_y_up_with_people_on_the_ground(synth, body_model_dir):
    for _, d in _pkls(synth):
        for k, g in enumerate(d['genders']):
            model = bm.load_smpl(str(body_model_dir), _gender(g))
            verts = np.asarray(
                bm.forward(
                    model,
                    np.asarray(d['poses'][k], np.float32),
                    np.asarray(d['betas'][k][:10], np.float32),
                )['vertices']
            )
            verts = verts + d['trans'][k][:, None]
            np.testing.assert_allclose(verts[..., 1].min(1), 0.0, atol=1e-4)  # feet on y = 0
            J = d['jointPositions'][k].reshape(-1, 24, 3)
            assert (J[:, 15, 1] > J[:, 0, 1] + 0.3).all()  # head above pelvis
            # ... and the head is drawn above the pelvis: the camera maps world up to image up
            R, t = d['cam_poses'][:, :3, :3], d['cam_poses'][:, :3, 3]
            cam = np.einsum('fij,fpj->fpi', R, J) + t[:, None]
            uv = render.project(d['cam_intrinsics'], cam)
            assert (uv[:, 15, 1] < uv[:, 0, 1]).all()


@pytest.mark.slow
def test_3dpw_poses2d_are_simulated_detections_of_the_openpose18_keypoints(synth, body_model_dir):
    """poses2d hold what a detector would report (synthetic/detector.py, whose own tests
    measure each error of the model), not the exact projections: checked here are the wiring
    (the right keypoints, the person's box as the error scale, the image's bounds) and the
    overall statistics, with bounds wide enough for the mix of visible and occluded joints."""
    flip = skeletons.get_layout('openpose18').flip
    errs, confs, reported_inside, reported_outside = [], [], [], []
    for _, d in _pkls(synth):
        K = d['cam_intrinsics']
        R, t = d['cam_poses'][:, :3, :3], d['cam_poses'][:, :3, 3]
        for k, g in enumerate(d['genders']):
            model = bm.load_smpl(str(body_model_dir), _gender(g))
            out = bm.forward(
                model,
                np.asarray(d['poses'][k], np.float32),
                np.asarray(d['betas'][k][:10], np.float32),
            )
            op18 = skeletons.convert(
                np.asarray(out['keypoints'], np.float64), 'body25', 'openpose18'
            )
            cam = np.einsum('fij,fpj->fpi', R, op18 + d['trans'][k][:, None]) + t[:, None]
            uv = render.project(K, cam)
            inside = render.inside_image(uv, (W3, H3), cam[..., 2])
            verts = np.asarray(out['vertices'], np.float64)[:, ::7] + d['trans'][k][:, None]
            uv_v = render.project(K, np.einsum('fij,fpj->fpi', R, verts) + t[:, None])
            side = (uv_v.max(1) - uv_v.min(1)).max(-1)
            p2d = np.transpose(d['poses2d'][k], (0, 2, 1))  # (N, 18, 3)
            rep = p2d[..., 2] > 0
            assert not p2d[~rep].any()  # a joint not reported is (0, 0, 0), as OpenPose writes it
            assert (p2d[..., 2] <= 1).all()
            assert not p2d[inside.sum(1) < 6].any()  # 3DPW's rule: < 6 joints, all zeros
            assert (p2d[rep, 0] <= W3 - 1).all() and (p2d[rep, 1] <= H3 - 1).all()
            reported_inside.append(rep[inside])
            reported_outside.append(rep[~inside])
            # A reported joint's error relative to its own projection, or to its flip partner's
            # (a left/right swap reports one where the other is).
            own = np.linalg.norm(p2d[..., :2] - uv, axis=-1)
            partner = np.linalg.norm(p2d[..., :2] - uv[:, flip], axis=-1)
            ok = rep & inside
            errs.append((np.minimum(own, partner) / side[:, None])[ok])
            confs.append(p2d[ok, 2])
    errs, confs = np.concatenate(errs), np.concatenate(confs)
    # Visible joints err by 0.02 box sides per axis (a 2D error's median is 1.18 of that),
    # occluded ones by 0.06: the median of the mix lies between the two.
    assert 0.5 * 0.0235 < np.median(errs) < 0.0706, np.median(errs)
    assert np.quantile(errs, 0.9) < 0.3  # gross outliers (0.5%) aside, errors are local
    assert 0.4 < confs.mean() < 0.85, confs.mean()
    assert np.concatenate(reported_inside).mean() > 0.6  # misses: 1% visible, 40% occluded
    outside = np.concatenate(reported_outside)  # the default world keeps people in view
    assert not outside.size or outside.mean() < 0.05  # off the image: only by a swap


# ============================================================================ FreiHAND


def _json(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.slow
def test_freihand_layout_and_counts(synth):
    pub = os.path.join(synth['freihand']['root'], 'FreiHAND_pub_v2')
    ev = os.path.join(synth['freihand']['root'], 'FreiHAND_pub_v2_eval')
    rgb = sorted(os.listdir(os.path.join(pub, 'training', 'rgb')))
    assert rgb == [f'{i:08d}.jpg' for i in range(4 * FH_TRAIN)]
    masks = sorted(os.listdir(os.path.join(pub, 'training', 'mask')))
    assert masks == [f'{i:08d}.jpg' for i in range(FH_TRAIN)]
    for d in (pub, ev):
        assert sorted(os.listdir(os.path.join(d, 'evaluation', 'rgb'))) == [
            f'{i:08d}.jpg' for i in range(FH_EVAL)
        ]
    for name, n in (('training', FH_TRAIN), ('evaluation', FH_EVAL)):
        folder = pub if name == 'training' else ev
        K = np.array(_json(os.path.join(pub, f'{name}_K.json')))
        scale = np.array(_json(os.path.join(pub, f'{name}_scale.json')))
        mano = _json(os.path.join(folder, f'{name}_mano.json'))
        xyz = np.array(_json(os.path.join(folder, f'{name}_xyz.json')))
        verts = np.array(_json(os.path.join(folder, f'{name}_verts.json')))
        assert K.shape == (n, 3, 3) and scale.shape == (n,)
        assert len(mano) == n and all(len(m) == 1 and len(m[0]) == 61 for m in mano)
        assert xyz.shape == (n, 21, 3) and verts.shape == (n, 778, 3)
        np.testing.assert_allclose(scale, np.linalg.norm(xyz[:, 9] - xyz[:, 10], axis=-1))
        assert (xyz[..., 2] > 0.2).all()  # camera frame, metres
    assert sorted(f for f in os.listdir(pub) if f.endswith('.json')) == sorted(
        [f'training_{k}.json' for k in ('K', 'mano', 'xyz', 'verts', 'scale')]
        + ['evaluation_K.json', 'evaluation_scale.json', 'detections.json']
    )
    assert sorted(f for f in os.listdir(ev) if f.endswith('.json')) == sorted(
        f'evaluation_{k}.json' for k in ('xyz', 'verts', 'mano')
    )
    for p in glob.glob(os.path.join(pub, 'training', '*', '*.jpg')):
        img = cv2.imread(p, cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape[:2] == (224, 224)
    for i in range(FH_TRAIN):
        m = cv2.imread(os.path.join(pub, 'training', 'mask', f'{i:08d}.jpg'), cv2.IMREAD_GRAYSCALE)
        assert 0.02 < (m > 127).mean() < 0.9


@pytest.mark.slow
@pytest.mark.parametrize('name', ['training', 'evaluation'])
def test_freihand_mano_reproduces_xyz_and_verts(synth, body_model_dir, name):
    pub = os.path.join(synth['freihand']['root'], 'FreiHAND_pub_v2')
    folder = (
        pub
        if name == 'training'
        else os.path.join(synth['freihand']['root'], 'FreiHAND_pub_v2_eval')
    )
    K = np.array(_json(os.path.join(pub, f'{name}_K.json')))
    mano = np.array(_json(os.path.join(folder, f'{name}_mano.json')))[:, 0]
    xyz = np.array(_json(os.path.join(folder, f'{name}_xyz.json')))
    verts = np.array(_json(os.path.join(folder, f'{name}_verts.json')))
    raw = bm.load_model_file(os.path.join(str(body_model_dir), 'mano', 'MANO_RIGHT.pkl'))
    hands_mean = np.asarray(raw['hands_mean'], np.float64)
    model = bm.load_mano(str(body_model_dir), is_right=True)

    def rebuild(with_mean):
        pose = mano[:, :48].copy()
        if with_mean:
            pose[:, 3:] += hands_mean
        out = bm.forward(
            model, np.asarray(pose, np.float32), np.asarray(mano[:, 48:58], np.float32)
        )
        kp, v = np.asarray(out['keypoints'], np.float64), np.asarray(out['vertices'], np.float64)
        uv, s = mano[:, 58:60], mano[:, 60]
        f = (K[:, 0, 0] + K[:, 1, 1]) / 2
        root = np.stack([(uv[:, 0] - K[:, 0, 2]) / s, (uv[:, 1] - K[:, 1, 2]) / s, f / s], 1)
        shift = root - kp[:, 9]
        return kp + shift[:, None], v + shift[:, None]

    kp, v = rebuild(True)
    non_tip = [j for j in range(21) if j not in (4, 8, 12, 16, 20)]
    np.testing.assert_allclose(kp[:, non_tip], xyz[:, non_tip], atol=1e-5)
    np.testing.assert_allclose(v, verts, atol=1e-5)
    # tips: the FreiHAND toolbox's vertices (ring 555, pinky 672), not smplx's 554 / 671
    np.testing.assert_allclose(
        xyz[:, [4, 8, 12, 16, 20]], verts[:, [744, 320, 443, 555, 672]], atol=1e-12
    )
    assert np.abs(xyz[:, 16] - verts[:, 554]).max() > 1e-4
    # uv_root is the projection of keypoint 9 (fx == fy here)
    uv9 = np.stack([render.project(k, p) for k, p in zip(K, xyz[:, 9])])
    np.testing.assert_allclose(uv9, mano[:, 58:60], atol=1e-6)
    # the finger pose is relative to hands_mean: reading it as flat-hand-relative is wrong
    kp_naive, _ = rebuild(False)
    assert np.abs(kp_naive[:, non_tip] - xyz[:, non_tip]).max() > 5e-3
    # the hand is on the image
    uvv = np.stack([render.project(k, p) for k, p in zip(K, verts)])
    assert (uvv > -0.5).all() and (uvv < 223.5).all()


# ============================================================================ HInt

_STEM = {
    'newdays': r'ND_[A-Za-z0-9_-]{11}_frame\d{6}_[lr]',
    'epick': r'EK_\d{4}_P\d{2}_\d{2}_frame_\d{10}_[lr]',
    'ego4d': r'[0-9a-f-]{36}_[0-9a-f-]{36}_\d+_(pre|pnr|post)_(frame|15|30|45)_[lr]',
}


def _chirality(kp3d):
    """+ for one handedness, - for the other: thumb base against the palm plane (rigid joints)."""
    w = kp3d[0]
    return float(np.dot(kp3d[1] - w, np.cross(kp3d[5] - w, kp3d[17] - w)))


@pytest.mark.slow
def test_hint_layout_names_and_json(synth):
    root = synth['hint']['root']
    assert os.path.basename(root) == 'HInt_annotation_partial'
    folders = sorted(f for f in os.listdir(root) if f != 'detections.json')
    assert folders == sorted(
        f'{s}_{src}_img' for s in ('TRAIN', 'VAL', 'TEST') for src in ('newdays', 'epick', 'ego4d')
    )
    two_hand_images, sides = 0, set()
    for folder in folders:
        source = folder.split('_')[1]
        files = os.listdir(os.path.join(root, folder))
        stems = sorted(f[:-5] for f in files if f.endswith('.json'))
        assert sorted(f[:-4] for f in files if f.endswith('.jpg')) == stems
        assert len({s[:-2] for s in stems}) == HINT_PER_FOLDER
        for stem in stems:
            assert re.fullmatch(_STEM[source], stem), stem
            sides.add(stem[-2:])
            ann = _json(os.path.join(root, folder, stem + '.json'))
            assert isinstance(ann, list) and len(ann) == 1
            a = ann[0]
            assert set(a) == {'bbox', 'keypoints', 'occlusion'}
            assert len(a['bbox']) == 1 and len(a['bbox'][0]) == 4
            x1, y1, x2, y2 = a['bbox'][0]
            kp = np.array(a['keypoints'])
            assert kp.shape == (21, 2)
            assert set(a['occlusion']) <= {0, 1} and len(a['occlusion']) == 21
            img = cv2.imread(os.path.join(root, folder, stem + '.jpg'))
            assert img is not None
            h, w = img.shape[:2]
            assert 0 <= x1 < x2 <= w - 1 and 0 <= y1 < y2 <= h - 1
            assert (kp[:, 0] >= x1).all() and (kp[:, 0] <= x2).all()
            assert (kp[:, 1] >= y1).all() and (kp[:, 1] <= y2).all()
        pairs = {}
        for s in stems:
            pairs.setdefault(s[:-2], []).append(s)
        for base, group in pairs.items():
            if len(group) == 2:
                two_hand_images += 1
                assert sorted(g[-2:] for g in group) == ['_l', '_r']
                jpgs = [open(os.path.join(root, folder, g + '.jpg'), 'rb').read() for g in group]
                assert jpgs[0] == jpgs[1]
    assert two_hand_images > 0 and sides == {'_l', '_r'}


@pytest.mark.slow
def test_hint_keypoints_and_side_match_the_rendered_hands(synth, body_model_dir):
    # the reference chirality: the right MANO hand, any pose
    right = bm.load_mano(str(body_model_dir), is_right=True)
    left = bm.load_mano(str(body_model_dir), is_right=False)
    pose = np.asarray(Rotation.random(3, random_state=0).as_rotvec(), np.float32)
    pose = np.concatenate([pose, np.zeros((3, 45), np.float32)], 1)
    zeros = np.zeros((3, 10), np.float32)
    ref_r = [_chirality(k) for k in np.asarray(bm.forward(right, pose, zeros)['keypoints'])]
    ref_l = [_chirality(k) for k in np.asarray(bm.forward(left, pose, zeros)['keypoints'])]
    assert all(c > 0 for c in ref_r) and all(c < 0 for c in ref_l)
    hands = synth['hint']['hands']
    assert len(hands) >= 9 * HINT_PER_FOLDER
    occluded = 0
    for stem_path, h in hands.items():
        a = _json(stem_path + '.json')[0]
        uv = render.project(h['K'], h['kp3d'])
        np.testing.assert_allclose(np.array(a['keypoints']), uv, atol=1e-9)
        side = {'_r': 'right', '_l': 'left'}[stem_path[-2:]]
        assert h['side'] == side
        assert (_chirality(h['kp3d']) > 0) == (side == 'right')
        img = cv2.imread(stem_path + '.jpg')
        assert img.shape[:2] == (2 * h['K'][1, 2], 2 * h['K'][0, 2])
        occluded += sum(a['occlusion'])
    n = 21 * len(hands)
    assert 0.03 * n < occluded < 0.7 * n


@pytest.mark.slow
def test_hint_ego4d_json_only(body_model_dir, tmp_path):
    out = raw_hint.write_hint(
        str(tmp_path), str(body_model_dir), seed=3, per_folder=1, ego4d_images=False
    )
    detections = _json(os.path.join(out['root'], 'detections.json'))
    for folder in os.listdir(out['root']):
        if folder == 'detections.json':
            continue
        files = os.listdir(os.path.join(out['root'], folder))
        has_jpg = any(f.endswith('.jpg') for f in files)
        assert any(f.endswith('.json') for f in files)
        assert has_jpg == ('ego4d' not in folder)
        # no image, nothing to run a detector on
        assert any(k.startswith(folder + '/') for k in detections) == has_jpg


# ============================================================================ hand detections

# detector.DetectorModel's defaults: per-axis jitter / box side of a visible and an occluded
# keypoint; a 2D Gaussian error's median is sqrt(2 ln 2) = 1.18 of its per-axis std.
_JITTER, _OCC_JITTER, _RAYLEIGH_MEDIAN = 0.02, 0.06, 1.1774


def _check_detection(det, uv, inside):
    """One hand's (21, 3) detection against its exact projections -> errors of the reported
    keypoints (px) and which those are; off-image keypoints must not be reported."""
    det = np.asarray(det)
    assert det.shape == (21, 3)
    rep = det[:, 2] > 0
    assert not det[~rep].any()  # not detected: a zero row
    assert not rep[~inside].any()  # truncation: never reported
    return np.linalg.norm(det[:, :2] - uv, axis=-1), rep


@pytest.mark.slow
def test_freihand_detections_are_simulated_from_the_annotated_keypoints(synth):
    """Every image has an entry keyed by its path; the reported points err around the projected
    xyz by detector.py's model, scaled by the hand's projected extent: between the visible and
    the occluded jitter (FreiHAND has no occlusion labels to split them), never exact."""
    root = synth['freihand']['root']
    pub = os.path.join(root, 'FreiHAND_pub_v2')
    det = _json(os.path.join(pub, 'detections.json'))
    keys = [f'training/rgb/{i:08d}.jpg' for i in range(4 * FH_TRAIN)]
    keys += [f'evaluation/rgb/{i:08d}.jpg' for i in range(FH_EVAL)]
    assert sorted(det) == sorted(keys)
    rel = []
    for key in keys:
        split, n = key.split('/')[0], FH_TRAIN if key.startswith('training') else FH_EVAL
        folder = pub if split == 'training' else os.path.join(root, 'FreiHAND_pub_v2_eval')
        idx = int(key[-12:-4]) % n
        K = np.array(_json(os.path.join(pub, f'{split}_K.json'))[idx])
        xyz = np.array(_json(os.path.join(folder, f'{split}_xyz.json'))[idx])
        verts = np.array(_json(os.path.join(folder, f'{split}_verts.json'))[idx])
        uv, uv_v = render.project(K, xyz), render.project(K, verts)
        err, rep = _check_detection(det[key], uv, render.inside_image(uv, (224, 224), xyz[:, 2]))
        rel.append(err[rep] / (uv_v.max(0) - uv_v.min(0)).max())
    rel = np.concatenate(rel)
    assert len(rel) > 0.5 * 21 * len(keys) and (rel > 0).all()
    med = np.median(rel)
    assert 0.7 * _RAYLEIGH_MEDIAN * _JITTER < med < _RAYLEIGH_MEDIAN * _OCC_JITTER, med
    # the four versions of a sample are four images: four draws of the detector
    assert det[keys[0]] != det[keys[FH_TRAIN]]


@pytest.mark.slow
def test_hint_detections_follow_occlusion_and_the_box_side(synth):
    """Per annotated hand with an image, its detection: visible keypoints err by the visible
    jitter x the box side the writer used, occluded ones (the json's own labels) clearly more."""
    root = synth['hint']['root']
    det = _json(os.path.join(root, 'detections.json'))
    hands = synth['hint']['hands']
    assert sorted(det) == sorted(os.path.relpath(p, root) + '.jpg' for p in hands)
    rel = {0: [], 1: []}
    for stem_path, h in hands.items():
        a = _json(stem_path + '.json')[0]
        uv = np.array(a['keypoints'])
        img = cv2.imread(stem_path + '.jpg')
        inside = render.inside_image(uv, img.shape[1::-1], h['kp3d'][:, 2])
        err, rep = _check_detection(det[os.path.relpath(stem_path, root) + '.jpg'], uv, inside)
        occ = np.array(a['occlusion'])
        for o in (0, 1):
            rel[o].append(err[rep & (occ == o)] / h['box_side'])
    vis, occ = np.concatenate(rel[0]), np.concatenate(rel[1])
    assert len(vis) > 100 and len(occ) > 10 and (vis > 0).all()
    med = np.median(vis)
    assert 0.6 * _RAYLEIGH_MEDIAN * _JITTER < med < 1.5 * _RAYLEIGH_MEDIAN * _JITTER, med
    assert np.median(occ) > 1.8 * med, (np.median(occ), med)
