"""Raw -> record converters (3DPW, FreiHAND, HInt) on synthetic raw data in the real layouts.

The raw data come from data_pipelines.synthetic (small sizes, generated once per session by
tests/converter_raw.py); every record is checked against what the raw files say, and random
access, reruns, worker processes and the CLI give the same records. Bad input (which must fail
with an error naming the path while leaving no complete-looking shard behind) is in
test_converters_bad_input.py.
"""

import glob
import json
import os
import pickle
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
from converter_raw import N_FH_EVAL, N_FH_TRAIN, SEQS_3DPW
from scipy.spatial.transform import Rotation

from data_pipelines import (
    convert_3dpw,
    convert_common,
    convert_freihand,
    convert_hint,
    cropping,
    record_reader,
    shards,
)
from extpose_jax import body_models as bm
from extpose_jax import skeletons

# Every test converts (or reads) the rendered raw datasets: ~30 s of CPU before the first.
pytestmark = pytest.mark.slow

SUBPIXEL = 0.5  # px: projected kp3d vs stored kp2d
NUM_SHARDS = 3


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope='session')
def converted(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp('records')
    res = {}
    for name, mod in (
        ('3dpw', convert_3dpw),
        ('freihand', convert_freihand),
        ('hint', convert_hint),
    ):
        res[name] = (
            str(out / name),
            mod.convert(
                raw[name],
                raw['body_models'],
                str(out / name),
                workers=0,
                num_shards=NUM_SHARDS,
                fsync=False,
                quiet=True,
            ),
        )
    return res


def _readers(converted, name):
    out, summary = converted[name]
    return {split: record_reader.RecordReader(out, split) for split in summary['splits']}


def _load_pkl(path):
    with open(path, 'rb') as f:
        return pickle.load(f, encoding='latin1')


def _pkls(root):
    return {
        split: sorted(glob.glob(os.path.join(root, 'sequenceFiles', split, '*.pkl')))
        for split in convert_3dpw.SPLITS
    }


def _project_to_crop(rec):
    uv, _ = convert_common.project(rec['K'], rec['kp3d'][:, :3])
    return cropping.apply_affine(rec['crop_affine'], uv)


def _to_full(rec, xy):
    A = rec['crop_affine'].astype(np.float64)
    return (np.asarray(xy, np.float64) - A[:, 2]) @ np.linalg.inv(A[:, :2]).T


def _assert_detection(rec, det):
    """kp2d_det is `det` (the image's entry in the detections file, full-image pixels) mapped
    into the crop: checked by mapping kp2d_det back with the inverse affine."""
    conf = np.asarray(det)[:, 2]
    found = conf > 0
    assert rec['has_kp2d_det'] == (found.sum() >= convert_common.MIN_DETECTED_JOINTS)
    if not rec['has_kp2d_det']:
        assert not rec['kp2d_det'].any()
        return
    np.testing.assert_allclose(
        _to_full(rec, rec['kp2d_det'][found, :2]), np.asarray(det)[found, :2], atol=2e-3
    )
    np.testing.assert_allclose(rec['kp2d_det'][:, 2], np.clip(conf, 0, 1), atol=1e-6)
    assert not rec['kp2d_det'][~found].any()  # undetected: zero rows


def _detections(root):
    with open(os.path.join(root, convert_common.DETECTIONS_FILE)) as f:
        return json.load(f)


def _shard_files(out):
    return sorted(p for p in glob.glob(os.path.join(out, '*.tfrecord-*')))


# ---------------------------------------------------------------- 3DPW


def test_3dpw_counts_and_keys(raw, converted):
    readers = _readers(converted, '3dpw')
    _, summary = converted['3dpw']
    for split, paths in _pkls(raw['3dpw']).items():
        assert len(paths) == SEQS_3DPW[split]
        expected = set()
        for p in paths:
            seq = _load_pkl(p)
            name = os.path.basename(p)[:-4]
            for k, valid in enumerate(seq['campose_valid']):
                expected |= {(name, k, int(i)) for i in np.flatnonzero(np.asarray(valid, bool))}
        r = readers[split]
        got = {(rec['sequence'], int(rec['track']), int(rec['frame'])) for rec in r}
        assert got == expected  # valid 3DPW frames = sum of campose_valid
        assert len(r) == summary['splits'][split]['valid_frames'] == len(expected)
        assert summary['splits'][split].get('skipped_offscreen', 0) == 0
        assert r.num_joints == 44 and r.body_model == 'smpl'


def test_3dpw_records_match_raw(raw, converted):
    readers = _readers(converted, '3dpw')
    smpl_to_op = np.asarray(skeletons.SMPL_TO_OPENPOSE25)
    op18_to_44 = skeletons.mapping('openpose18', 'hmr44')
    for split, paths in _pkls(raw['3dpw']).items():
        for p in paths:
            seq = _load_pkl(p)
            name = os.path.basename(p)[:-4]
            K = np.asarray(seq['cam_intrinsics'])
            for rec in readers[split]:
                if rec['sequence'] != name:
                    continue
                k, i = int(rec['track']), int(rec['frame'])
                assert rec['dataset'] == '3dpw' and rec['split'] == split
                assert rec['gender'] == {'m': 'male', 'f': 'female'}[seq['genders'][k]]
                assert rec['hand_side'] == ''
                np.testing.assert_allclose(
                    rec['betas'], np.asarray(seq['betas'][k])[:10], atol=1e-6
                )
                np.testing.assert_allclose(rec['K'], K, rtol=1e-6)
                jpg = cv2.imread(
                    os.path.join(raw['3dpw'], 'imageFiles', name, f'image_{i:05d}.jpg')
                )
                assert (
                    tuple(rec['image_size'])
                    == jpg.shape[:2]
                    == (round(2 * K[1, 2]), round(2 * K[0, 2]))
                )
                assert all(rec[f] for f in ('has_kp2d', 'has_kp3d', 'has_pose', 'has_betas'))
                # pose: body unchanged, global orientation rotated into the camera
                Rc, tc = seq['cam_poses'][i][:3, :3], seq['cam_poses'][i][:3, 3]
                pose_w = np.asarray(seq['poses'][k][i])
                np.testing.assert_allclose(rec['pose'][3:], pose_w[3:], atol=1e-6)
                go = Rotation.from_rotvec(rec['pose'][:3]).as_matrix()
                np.testing.assert_allclose(
                    go, Rc @ Rotation.from_rotvec(pose_w[:3]).as_matrix(), atol=1e-5
                )
                # kp3d: the body-25 slots that are SMPL skeleton joints = camera-frame jointPositions
                jp = np.asarray(seq['jointPositions'][k][i]).reshape(24, 3) @ Rc.T + tc
                slots = np.flatnonzero(smpl_to_op < 24)
                np.testing.assert_allclose(rec['kp3d'][slots, :3], jp[smpl_to_op[slots]], atol=1e-4)
                np.testing.assert_array_equal(rec['kp3d'][:, 3], 1.0)  # every joint labelled
                # kp2d = projection with K, then the crop affine; conf = on the image
                crop_xy = _project_to_crop(rec)
                assert np.abs(crop_xy - rec['kp2d'][:, :2]).max() < SUBPIXEL
                full = _to_full(rec, rec['kp2d'][:, :2])
                h, w = rec['image_size']
                inside = (
                    (full[:, 0] >= -0.5)
                    & (full[:, 0] < w - 0.5)
                    & (full[:, 1] >= -0.5)
                    & (full[:, 1] < h - 0.5)
                )
                np.testing.assert_array_equal(rec['kp2d'][:, 2], inside.astype(np.float32))
                # box: the person (its body keypoints) lies in the box
                x0, y0, x1, y1 = rec['box']
                body = convert_common.project(K, rec['kp3d'][:25, :3])[0]
                assert (body[:, 0] > x0 - 2).all() and (body[:, 0] < x1 + 2).all()
                assert (body[:, 1] > y0 - 2).all() and (body[:, 1] < y1 + 2).all()
                # kp2d_det: poses2d (3, 18) -> OpenPose-18 -> the 44 layout, through the affine
                det = np.asarray(seq['poses2d'][k][i]).T
                assert rec['has_kp2d_det'] == bool(det[:, 2].any())
                for j44, j18 in enumerate(op18_to_44):
                    if j18 >= 0 and det[j18, 2] > 0:
                        xy = cropping.apply_affine(rec['crop_affine'], det[j18, :2])
                        np.testing.assert_allclose(rec['kp2d_det'][j44, :2], xy, atol=1e-3)
                        assert rec['kp2d_det'][j44, 2] == pytest.approx(det[j18, 2])
                    else:
                        assert not rec['kp2d_det'][j44].any()
                crop = cropping.decode_image(rec['image'])
                assert crop.shape == (384, 384, 3)


# ---------------------------------------------------------------- FreiHAND


def _fh_json(raw, split, what):
    sub, prefix = (
        ('FreiHAND_pub_v2', 'training')
        if split == 'train'
        else ('FreiHAND_pub_v2_eval', 'evaluation')
    )
    path = os.path.join(raw['freihand'], sub, f'{prefix}_{what}.json')
    if not os.path.isfile(path):
        path = os.path.join(raw['freihand'], 'FreiHAND_pub_v2', f'{prefix}_{what}.json')
    with open(path) as f:
        return json.load(f)


def test_freihand_records_match_raw(raw, converted):
    readers = _readers(converted, 'freihand')
    hands_mean = bm.load_model_file(os.path.join(raw['body_models'], 'mano', 'MANO_RIGHT.pkl'))[
        'hands_mean'
    ]
    detections = _detections(os.path.join(raw['freihand'], 'FreiHAND_pub_v2'))
    assert converted['freihand'][1]['detections'].endswith('detections.json')
    for split, n, versions in (('train', N_FH_TRAIN, 4), ('test', N_FH_EVAL, 1)):
        K_all, mano_all, xyz_all = (_fh_json(raw, split, w) for w in ('K', 'mano', 'xyz'))
        prefix = 'training' if split == 'train' else 'evaluation'
        with_det = 0
        r = readers[split]
        assert len(r) == n * versions  # 4n training records
        assert r.num_joints == 21 and r.body_model == 'mano'
        keys = {(rec['sequence'], int(rec['track']), int(rec['frame'])) for rec in r}
        assert keys == {
            (f'{split}_{i:08d}', v, i + n * v) for i in range(n) for v in range(versions)
        }
        for rec in r:
            idx = int(rec['frame']) % n
            mano = np.asarray(mano_all[idx]).reshape(61)
            assert rec['hand_side'] == 'right' and rec['gender'] == ''
            np.testing.assert_allclose(rec['pose'][:3], mano[:3], atol=1e-6)
            np.testing.assert_allclose(rec['pose'][3:], mano[3:48] + hands_mean, atol=1e-5)
            np.testing.assert_allclose(rec['betas'], mano[48:58], atol=1e-6)
            np.testing.assert_allclose(rec['K'], np.asarray(K_all[idx]), rtol=1e-6)
            xyz = np.asarray(xyz_all[idx])
            non_ring_pinky_tip = [j for j in range(21) if j not in (16, 20)]
            np.testing.assert_allclose(
                rec['kp3d'][non_ring_pinky_tip, :3], xyz[non_ring_pinky_tip], atol=1e-5
            )
            assert np.abs(_project_to_crop(rec) - rec['kp2d'][:, :2]).max() < SUBPIXEL
            assert (rec['kp2d'][:, 2] == 1).all()
            assert tuple(rec['image_size']) == (224, 224)
            uv = convert_common.project(rec['K'], xyz)[0]
            x0, y0, x1, y1 = rec['box']
            assert (uv[:, 0] > x0 - 1).all() and (uv[:, 0] < x1 + 1).all()
            assert (uv[:, 1] > y0 - 1).all() and (uv[:, 1] < y1 + 1).all()
            assert rec['has_pose'] and rec['has_betas'] and rec['has_kp3d']
            _assert_detection(rec, detections[f'{prefix}/rgb/{int(rec["frame"]):08d}.jpg'])
            with_det += bool(rec['has_kp2d_det'])
        assert with_det > len(r) // 2  # the synthetic hands are seldom missed


# ---------------------------------------------------------------- HInt


def _hint_stems(root):
    """{(split, sequence, track): json path} for every stem whose image exists."""
    out = {}
    for path in sorted(glob.glob(os.path.join(root, 'HInt_annotation_partial', '*', '*.json'))):
        folder = os.path.basename(os.path.dirname(path))
        prefix, source, kind = folder.split('_')
        stem = os.path.basename(path)[:-5]
        if not os.path.isfile(path[:-5] + '.jpg'):
            continue
        split = {'TRAIN': 'train', 'VAL': 'val', 'TEST': 'test'}[prefix]
        out[(split, f'{source}_{kind}/{stem[:-2]}', 1 if stem.endswith('_r') else 0)] = path
    return out


def test_hint_records_match_raw(raw, converted):
    readers = _readers(converted, 'hint')
    stems = _hint_stems(raw['hint'])
    root = os.path.join(raw['hint'], 'HInt_annotation_partial')
    detections = _detections(root)
    assert set(readers) == {'train', 'val', 'test'}
    got = {(split, rec['sequence'], int(rec['track'])) for split, r in readers.items() for rec in r}
    assert got == set(stems)  # one record per stem
    for split, r in readers.items():
        assert r.num_joints == 21 and r.body_model == 'mano'
        for rec in r:
            path = stems[(split, rec['sequence'], int(rec['track']))]
            with open(path) as f:
                ann = json.load(f)[0]
            assert rec['dataset'] == 'hint' and rec['split'] == split and rec['frame'] == 0
            assert rec['hand_side'] == ('right' if path.endswith('_r.json') else 'left')
            assert not (rec['has_kp3d'] or rec['has_pose'] or rec['has_betas'])
            _assert_detection(rec, detections[os.path.relpath(path, root)[:-5] + '.jpg'])
            assert rec['has_kp2d'] and rec['has_kp2d_occluded']
            np.testing.assert_allclose(rec['box'], ann['bbox'][0], atol=1e-3)
            occ = np.asarray(ann['occlusion'], np.float32)
            np.testing.assert_array_equal(rec['kp2d'][:, 2], 1 - occ)
            np.testing.assert_array_equal(rec['kp2d_occluded'], occ)
            np.testing.assert_allclose(
                _to_full(rec, rec['kp2d'][:, :2]), ann['keypoints'], atol=2e-3
            )
            jpg = cv2.imread(path[:-5] + '.jpg')
            assert tuple(rec['image_size']) == jpg.shape[:2]
            # the camera behind the synthetic annotation: its kp3d lands on kp2d
            hand = raw['hint_manifest'][path[:-5]]
            uv = convert_common.project(hand['K'], hand['kp3d'])[0]
            assert (
                np.abs(cropping.apply_affine(rec['crop_affine'], uv) - rec['kp2d'][:, :2]).max()
                < SUBPIXEL
            )


def test_detections_file_elsewhere_or_none(raw, tmp_path):
    """Without a detections file the records carry none (as before); `detections=` points at
    one anywhere; an image without an entry has none."""
    base = tmp_path / 'HInt'
    shutil.copytree(raw['hint'], base)
    root = base / 'HInt_annotation_partial'
    moved = tmp_path / 'my_detector.json'
    detections = _detections(root)
    os.remove(root / convert_common.DETECTIONS_FILE)
    kw = dict(splits=['val'], num_shards=1, fsync=False, quiet=True)
    s = convert_hint.convert(str(base), None, str(tmp_path / 'none'), **kw)
    assert s['detections'] is None and 'with_detection' not in s['splits']['val']
    r = record_reader.RecordReader(str(tmp_path / 'none'), 'val')
    assert not any(rec['has_kp2d_det'] or rec['kp2d_det'].any() for rec in r)
    dropped = sorted(k for k in detections if k.startswith('VAL_'))[0]
    del detections[dropped]
    moved.write_text(json.dumps(detections))
    s = convert_hint.convert(str(base), None, str(tmp_path / 'moved'), detections=str(moved), **kw)
    assert s['detections'] == str(moved)
    r = record_reader.RecordReader(str(tmp_path / 'moved'), 'val')
    for rec in r:
        # sequence '<source>_img/<image id>' of folder VAL_<source>_img, stem <image id>_r / _l
        key = f'VAL_{rec["sequence"]}{"_r" if rec["track"] == 1 else "_l"}.jpg'
        if key == dropped:
            assert not rec['has_kp2d_det'] and not rec['kp2d_det'].any()
        else:
            _assert_detection(rec, detections[key])
    assert s['splits']['val']['with_detection'] == sum(bool(rec['has_kp2d_det']) for rec in r)


# ---------------------------------------------------------------- all datasets


@pytest.mark.parametrize('name', ['3dpw', 'freihand', 'hint'])
def test_random_access_matches_sequential(converted, name):
    for split, r in _readers(converted, name).items():
        payloads = [r.read_payload(i) for i in range(len(r))]
        for i, rec in enumerate(r):
            j = r.index_of(rec['sequence'], rec['track'], rec['frame'])
            assert j == i and r.read_payload(j) == payloads[i]
            assert (
                r.lookup(rec['sequence'], rec['track'], rec['frame'])['kp2d'].tobytes()
                == rec['kp2d'].tobytes()
            )
        for path in r.paths:
            shards.verify_shard(path)


def test_rerun_skips_finished_shards(raw, converted, tmp_path):
    out = str(tmp_path / 'hint')
    first = convert_hint.convert(
        raw['hint'],
        None,
        out,
        splits=['train'],
        workers=0,
        num_shards=NUM_SHARDS,
        fsync=False,
        quiet=True,
    )
    files = _shard_files(out)
    mtimes = {p: os.stat(p).st_mtime_ns for p in files}
    again = convert_hint.convert(
        raw['hint'],
        None,
        out,
        splits=['train'],
        workers=0,
        num_shards=NUM_SHARDS,
        fsync=False,
        quiet=True,
    )
    s1, s2 = first['splits']['train'], again['splits']['train']
    assert s2['shards_written'] == 0 and s2['shards_skipped'] == s1['shards_written'] > 0
    assert s2['num_records'] == s1['num_records']
    assert {p: os.stat(p).st_mtime_ns for p in _shard_files(out)} == mtimes
    # an unfinished shard (index gone) is the only one rewritten
    victim = next(p for p in files if p.endswith(shards.INDEX_SUFFIX) and len(np.load(p)['frame']))
    os.remove(victim)
    third = convert_hint.convert(
        raw['hint'],
        None,
        out,
        splits=['train'],
        workers=0,
        num_shards=NUM_SHARDS,
        fsync=False,
        quiet=True,
    )
    assert third['splits']['train']['shards_written'] == 1
    assert third['splits']['train']['num_records'] == s1['num_records']
    changed = {p for p in _shard_files(out) if os.stat(p).st_mtime_ns != mtimes.get(p)}
    assert changed == {victim, victim.removesuffix(shards.INDEX_SUFFIX)}


def test_worker_processes_match_inline(raw, converted, tmp_path):
    out = str(tmp_path / 'fh')
    convert_freihand.convert(
        raw['freihand'],
        raw['body_models'],
        out,
        splits=['train'],
        workers=2,
        num_shards=NUM_SHARDS,
        fsync=False,
        quiet=True,
    )
    inline = record_reader.RecordReader(converted['freihand'][0], 'train')
    multi = record_reader.RecordReader(out, 'train')
    assert len(multi) == len(inline)
    for rec in inline:
        other = multi.lookup(rec['sequence'], rec['track'], rec['frame'])
        for key in ('image', 'crop_affine', 'box', 'kp2d', 'pose', 'betas'):
            assert np.array_equal(np.asarray(other[key]), np.asarray(rec[key])), key
        np.testing.assert_allclose(other['kp3d'], rec['kp3d'], atol=1e-6)


def test_cli(raw, tmp_path):
    out = str(tmp_path / 'cli')
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    res = subprocess.run(
        [
            sys.executable,
            '-m',
            'data_pipelines.convert_hint',
            '--root',
            raw['hint'],
            '--out',
            out,
            '--splits',
            'test',
            '--workers',
            '0',
            '--num_shards',
            '2',
            '--quiet',
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    num_records = len(record_reader.RecordReader(out, 'test'))
    assert summary['splits']['test']['num_records'] == num_records > 0
    bad = str(tmp_path / 'nowhere')
    res = subprocess.run(
        [
            sys.executable,
            '-m',
            'data_pipelines.convert_3dpw',
            '--root',
            bad,
            '--body_models',
            raw['body_models'],
            '--out',
            out + '2',
            '--quiet',
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert res.returncode != 0 and bad in res.stderr
