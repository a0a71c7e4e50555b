"""Raw -> record converters (3DPW, FreiHAND, HInt) on synthetic raw data in the real layouts.

The raw data come from data_pipelines.synthetic (small sizes, generated once per session); every
record is checked against what the raw files say, and bad input must fail with an error naming
the path while leaving no complete-looking shard behind.
"""

import glob
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
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
SEQS_3DPW = {'train': 1, 'validation': 1, 'test': 1}
FRAMES_3DPW = 8
N_FH_TRAIN, N_FH_EVAL = 4, 2
HINT_PER_FOLDER = 2


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope='session')
def raw(tmp_path_factory, body_model_dir):
    from data_pipelines.synthetic import raw_3dpw, raw_freihand, raw_hint

    root = tmp_path_factory.mktemp('raw')
    bmd = str(body_model_dir)
    info = {
        'body_models': bmd,
        '3dpw': str(root / '3DPW'),
        'freihand': str(root / 'FreiHAND'),
        'hint': str(root / 'HInt'),
    }
    raw_3dpw.write_3dpw(info['3dpw'], bmd, seed=0, sequences=SEQS_3DPW, frames=FRAMES_3DPW)
    raw_freihand.write_freihand(
        info['freihand'], bmd, seed=0, train=N_FH_TRAIN, evaluation=N_FH_EVAL
    )
    info['hint_manifest'] = raw_hint.write_hint(
        info['hint'], bmd, seed=0, per_folder=HINT_PER_FOLDER
    )['hands']
    return info


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
    uv, _ = convert_common.project(rec['K'], rec['kp3d'])
    return cropping.apply_affine(rec['crop_affine'], uv)


def _to_full(rec, xy):
    A = rec['crop_affine'].astype(np.float64)
    return (np.asarray(xy, np.float64) - A[:, 2]) @ np.linalg.inv(A[:, :2]).T


def _assert_not_written(out, name, split, sequence, num_shards=NUM_SHARDS):
    """The failed split is not finalized, the bad sequence's shard is not complete (other shards,
    finished before the error, may be: a rerun keeps them), and no temporary file is left."""
    assert not os.path.exists(os.path.join(out, shards.DATASET_INFO))
    shard = shards.shard_for(sequence, num_shards)
    assert not shards.shard_complete(
        os.path.join(out, shards.shard_name(name, split, shard, num_shards))
    )
    for path in glob.glob(os.path.join(out, '*')):
        assert not path.endswith(shards.TMP_SUFFIX), f'temporary file left behind: {path}'


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
                np.testing.assert_allclose(rec['kp3d'][slots], jp[smpl_to_op[slots]], atol=1e-4)
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
                body = convert_common.project(K, rec['kp3d'][:25])[0]
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
    for split, n, versions in (('train', N_FH_TRAIN, 4), ('test', N_FH_EVAL, 1)):
        K_all, mano_all, xyz_all = (_fh_json(raw, split, w) for w in ('K', 'mano', 'xyz'))
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
                rec['kp3d'][non_ring_pinky_tip], xyz[non_ring_pinky_tip], atol=1e-5
            )
            assert np.abs(_project_to_crop(rec) - rec['kp2d'][:, :2]).max() < SUBPIXEL
            assert (rec['kp2d'][:, 2] == 1).all()
            assert tuple(rec['image_size']) == (224, 224)
            uv = convert_common.project(rec['K'], xyz)[0]
            x0, y0, x1, y1 = rec['box']
            assert (uv[:, 0] > x0 - 1).all() and (uv[:, 0] < x1 + 1).all()
            assert (uv[:, 1] > y0 - 1).all() and (uv[:, 1] < y1 + 1).all()
            assert (
                rec['has_pose'] and rec['has_betas'] and rec['has_kp3d'] and not rec['has_kp2d_det']
            )


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
            assert not (
                rec['has_kp3d'] or rec['has_pose'] or rec['has_betas'] or rec['has_kp2d_det']
            )
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


# ---------------------------------------------------------------- bad input


def test_missing_folders(raw, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    bmd = raw['body_models']
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'missing'))):
        convert_3dpw.convert(str(tmp_path / 'missing'), bmd, str(tmp_path / 'o1'))
    with pytest.raises(
        FileNotFoundError, match=re.escape(os.path.join(str(empty), 'sequenceFiles'))
    ):
        convert_3dpw.convert(str(empty), bmd, str(tmp_path / 'o1'))
    with pytest.raises(
        FileNotFoundError, match=re.escape(os.path.join(str(empty), 'FreiHAND_pub_v2'))
    ):
        convert_freihand.convert(str(empty), bmd, str(tmp_path / 'o2'))
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
        convert_hint.convert(str(empty), None, str(tmp_path / 'o3'))
    # a 3DPW pkl without its image folder
    root = tmp_path / '3dpw'
    (root / 'sequenceFiles' / 'test').mkdir(parents=True)
    (root / 'imageFiles').mkdir()
    pkl = _pkls(raw['3dpw'])['test'][0]
    shutil.copy(pkl, root / 'sequenceFiles' / 'test')
    seq = os.path.basename(pkl)[:-4]
    with pytest.raises(
        FileNotFoundError, match=re.escape(os.path.join(str(root), 'imageFiles', seq))
    ):
        convert_3dpw.convert(str(root), bmd, str(tmp_path / 'o4'), splits=['test'])
    with pytest.raises(FileNotFoundError, match='validation'):
        convert_3dpw.convert(str(root), bmd, str(tmp_path / 'o4'), splits=['validation'])
    for out in ('o1', 'o2', 'o3', 'o4'):
        assert not os.path.exists(tmp_path / out / shards.DATASET_INFO)


def _broken_3dpw(raw, tmp_path, edit):
    """A one-sequence 3DPW copy whose pkl went through edit(dict) (images linked, not copied)."""
    root = tmp_path / '3dpw_bad'
    (root / 'sequenceFiles' / 'test').mkdir(parents=True)
    (root / 'imageFiles').mkdir()
    pkl = _pkls(raw['3dpw'])['test'][0]
    seq = os.path.basename(pkl)[:-4]
    data = _load_pkl(pkl)
    edit(data)
    path = root / 'sequenceFiles' / 'test' / (seq + '.pkl')
    with open(path, 'wb') as f:
        pickle.dump(data, f, protocol=2)
    os.symlink(os.path.join(raw['3dpw'], 'imageFiles', seq), root / 'imageFiles' / seq)
    return str(root), str(path), seq


@pytest.mark.parametrize('case', ['missing_key', 'lengths', 'gender', 'image_size'])
def test_3dpw_bad_pkl(raw, tmp_path, case):
    def edit(d):
        if case == 'missing_key':
            del d['genders']
        elif case == 'lengths':
            d['trans'][0] = d['trans'][0][:-1]
        elif case == 'gender':  # wrong gender: caught by the jointPositions cross-check
            d['genders'] = ['f' if g == 'm' else 'm' for g in d['genders']]
        else:  # K of images twice as large as the jpgs
            d['cam_intrinsics'] = d['cam_intrinsics'] * np.array([[2.0], [2.0], [1.0]])

    root, path, seq = _broken_3dpw(raw, tmp_path, edit)
    out = str(tmp_path / 'out')
    match = {
        'missing_key': "missing key 'genders'",
        'lengths': 'array lengths disagree',
        'gender': 'jointPositions',
        'image_size': 'cam_intrinsics',
    }[case]
    with pytest.raises(convert_common.ConversionError, match=match) as err:
        convert_3dpw.convert(
            root,
            raw['body_models'],
            out,
            splits=['test'],
            num_shards=NUM_SHARDS,
            fsync=False,
            quiet=True,
        )
    assert path in str(err.value)
    _assert_not_written(out, '3dpw', 'test', seq)


def test_3dpw_corrupt_jpg(raw, tmp_path):
    root, path, seq = _broken_3dpw(raw, tmp_path, lambda d: None)
    link = os.path.join(root, 'imageFiles', seq)
    os.remove(link)
    shutil.copytree(os.path.join(raw['3dpw'], 'imageFiles', seq), link)
    used = np.flatnonzero(np.any(_load_pkl(path)['campose_valid'], axis=0))
    bad = os.path.join(link, f'image_{used[-1]:05d}.jpg')
    with open(bad, 'r+b') as f:
        f.write(b'\x00' * 64)  # header destroyed
    out = str(tmp_path / 'out')
    with pytest.raises(convert_common.ConversionError, match=re.escape(bad)):
        convert_3dpw.convert(
            root,
            raw['body_models'],
            out,
            splits=['test'],
            num_shards=NUM_SHARDS,
            fsync=False,
            quiet=True,
        )
    _assert_not_written(out, '3dpw', 'test', seq)


def test_freihand_flat_hand_mean_pitfall(raw, tmp_path):
    root = tmp_path / 'fh' / 'FreiHAND_pub_v2'
    src = os.path.join(raw['freihand'], 'FreiHAND_pub_v2')
    root.mkdir(parents=True)
    (root / 'training').mkdir()
    os.symlink(os.path.join(src, 'training', 'rgb'), root / 'training' / 'rgb')
    for what in ('K', 'xyz', 'mano'):
        shutil.copy(os.path.join(src, f'training_{what}.json'), root)
    hands_mean = bm.load_model_file(os.path.join(raw['body_models'], 'mano', 'MANO_RIGHT.pkl'))[
        'hands_mean'
    ]
    with open(root / 'training_mano.json') as f:
        mano = json.load(f)
    mano[1][0] = list(
        np.asarray(mano[1][0]) + np.concatenate([[0, 0, 0], hands_mean, np.zeros(13)])
    )
    with open(root / 'training_mano.json', 'w') as f:
        json.dump(mano, f)
    out = str(tmp_path / 'out')
    with pytest.raises(
        convert_common.ConversionError,
        match=re.escape(f'{root / "training_xyz.json"}: sample 1:') + '.*flat_hand_mean',
    ):
        convert_freihand.convert(
            str(tmp_path / 'fh'),
            raw['body_models'],
            out,
            splits=['train'],
            num_shards=1,
            fsync=False,
            quiet=True,
        )
    _assert_not_written(out, 'freihand', 'train', 'train_00000001', num_shards=1)


def _hint_copy(raw, tmp_path):
    root = tmp_path / 'hint'
    shutil.copytree(raw['hint'], root)
    return root / 'HInt_annotation_partial'


def test_hint_folder_without_images_is_skipped(raw, tmp_path):
    base = _hint_copy(raw, tmp_path)
    jsons = glob.glob(str(base / 'TRAIN_ego4d_img' / '*.json'))
    for p in glob.glob(str(base / 'TRAIN_ego4d_img' / '*.jpg')):
        os.remove(p)
    out = str(tmp_path / 'out')
    s = convert_hint.convert(
        str(base.parent),
        None,
        out,
        splits=['train'],
        num_shards=NUM_SHARDS,
        fsync=False,
        quiet=True,
    )['splits']['train']
    assert s['skipped_folders'] == {'TRAIN_ego4d_img': len(jsons)}
    assert 'TRAIN_ego4d_img' not in s['folders']
    num_records = len(record_reader.RecordReader(out, 'train'))
    assert s['num_records'] == sum(s['folders'].values()) == num_records


def test_hint_bad_input(raw, tmp_path):
    base = _hint_copy(raw, tmp_path)
    # a json without 'occlusion'
    path = sorted(glob.glob(str(base / 'VAL_newdays_img' / '*.json')))[0]
    with open(path) as f:
        ann = json.load(f)
    del ann[0]['occlusion']
    with open(path, 'w') as f:
        json.dump(ann, f)
    out = str(tmp_path / 'out_val')
    with pytest.raises(
        convert_common.ConversionError, match=re.escape(f"{path}: missing key 'occlusion'")
    ):
        convert_hint.convert(
            str(base), None, out, splits=['val'], num_shards=NUM_SHARDS, fsync=False, quiet=True
        )
    _assert_not_written(out, 'hint', 'val', 'newdays_img/' + os.path.basename(path)[:-7])
    # a corrupt jpg, found by a worker process: same error, no complete shard for it
    jpg = sorted(glob.glob(str(base / 'TEST_epick_img' / '*.jpg')))[0]
    with open(jpg, 'wb') as f:
        f.write(b'not a jpeg')
    out = str(tmp_path / 'out_test')
    with pytest.raises(convert_common.ConversionError, match=re.escape(jpg)):
        convert_hint.convert(
            str(base), None, out, splits=['test'], workers=2, num_shards=1, fsync=False, quiet=True
        )
    _assert_not_written(out, 'hint', 'test', 'epick_img/' + os.path.basename(jpg)[:-6], 1)
    # a partly missing folder is an error unless allowed
    os.remove(jpg)
    with pytest.raises(FileNotFoundError, match=re.escape(jpg)):
        convert_hint.convert(str(base), None, out, splits=['test'], fsync=False, quiet=True)
    s = convert_hint.convert(
        str(base), None, out, splits=['test'], allow_missing_images=True, fsync=False, quiet=True
    )['splits']['test']
    assert s['missing_images'] == 1


def test_freihand_without_evaluation_gt_skips_test(raw, tmp_path):
    root = tmp_path / 'fh' / 'FreiHAND_pub_v2'
    root.mkdir(parents=True)
    src = os.path.join(raw['freihand'], 'FreiHAND_pub_v2')
    os.symlink(os.path.join(src, 'evaluation'), root / 'evaluation')
    shutil.copy(os.path.join(src, 'evaluation_K.json'), root)
    s = convert_freihand.convert(
        str(tmp_path / 'fh'), raw['body_models'], str(tmp_path / 'out'), splits=['test'], quiet=True
    )
    assert 'evaluation_xyz.json' in s['splits']['test']['skipped']


def test_3dpw_frame_without_detection(raw, tmp_path):
    """An all-zero poses2d frame (fewer than 6 joints detected) -> has_kp2d_det False, zeros."""
    state = {}

    def edit(d):
        i = int(np.flatnonzero(d['campose_valid'][0])[0])
        d['poses2d'][0][i] = 0.0
        state['frame'] = i

    root, _, seq = _broken_3dpw(raw, tmp_path, edit)
    out = str(tmp_path / 'out')
    s = convert_3dpw.convert(
        root, raw['body_models'], out, splits=['test'], num_shards=1, fsync=False, quiet=True
    )['splits']['test']
    assert s['frames_without_detection'] == 1
    rec = record_reader.RecordReader(out, 'test').lookup(seq, 0, state['frame'])
    assert not rec['has_kp2d_det'] and not rec['kp2d_det'].any() and rec['has_kp2d']
