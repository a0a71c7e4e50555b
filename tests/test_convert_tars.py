"""HMR 2.0 / HaMeR WebDataset tars -> records -> pipeline batches (convert_webdataset.py).

The synthetic tars (synthetic/raw_tars.py) hold rendered bodies and hands with known SMPL / MANO
parameters and camera. Records must give back what the source held: keypoints through the crop
affine, the 3D keypoints projecting through the record's camera, the parameters driving the body
model to the 3D keypoints; left hands stored unmirrored and mirrored by the pipeline with their
pose; the box conventions of §4.3 against hand-computed numbers; bad input stopping with the
file and key named, nothing half-written.
"""

import glob
import io
import os
import pickle
import re
import shlex
import tarfile

import numpy as np
import pytest

from data_pipelines import augment, cropping, record_reader, shards
from data_pipelines import convert_common as cc
from data_pipelines import convert_hmr_npz as cvn
from data_pipelines import convert_webdataset as cw
from data_pipelines import pipeline as pl
from data_pipelines.synthetic import raw_tars
from extpose_jax import body_models as bm


@pytest.fixture(scope='session')
def tar_data(body_model_dir, tmp_path_factory):
    """{kind: (tar folder, records folder, truth by (key, person), summary)}."""
    root = tmp_path_factory.mktemp('tars')
    out = {}
    for kind in ('hmr2', 'hamer'):
        src = str(root / f'src_{kind}')
        truth = raw_tars.write_tars(src, str(body_model_dir), kind=kind)
        rec = str(root / f'rec_{kind}')
        summary = cw.convert(src, rec, kind=kind, name=kind, quiet=True, fsync=False)
        out[kind] = (src, rec, {(t['key'], t['person']): t for t in truth}, summary)
    return out


def _records(rec_dir, split='train'):
    return list(record_reader.RecordReader(rec_dir, split))


def _full_image(rec, xy):
    a = augment.as3x3(rec['crop_affine'])
    return augment.apply(np.linalg.inv(a)[:2], xy)


@pytest.mark.parametrize('kind', ['hmr2', 'hamer'])
def test_records_agree_with_the_source(tar_data, body_model_dir, kind):
    _, rec_dir, truth, summary = tar_data[kind]
    recs = _records(rec_dir)
    assert len(recs) == len(truth) == summary['splits']['train']['num_records']
    model = bm.load_from_dir(str(body_model_dir), 'smpl' if kind == 'hmr2' else 'mano')
    root = 39 if kind == 'hmr2' else 0
    n_kp3d = n_partial = 0
    for rec in recs:
        t = truth[(rec['sequence'], int(rec['track']))]
        src = t['data']
        assert rec['frame'] == 0
        # 2D: back through the crop affine onto the source pixels; visible ones inside the crop
        conf = np.asarray(src['keypoints_2d'], np.float64)[:, 2]
        np.testing.assert_array_equal(rec['kp2d'][:, 2], conf.astype(np.float32))
        vis = conf > 0
        np.testing.assert_allclose(
            _full_image(rec, rec['kp2d'][vis, :2]), src['keypoints_2d'][vis, :2], atol=2e-3
        )
        assert np.all(rec['kp2d'][~vis] == 0)
        assert np.all((rec['kp2d'][vis, :2] >= 0) & (rec['kp2d'][vis, :2] < 384))
        # box: centre +- scale * 200 / 2 per axis, a scalar scale a square
        wh = np.broadcast_to(np.asarray(src['scale'], np.float64) * 200.0, (2,))
        want = np.concatenate([src['center'] - wh / 2, src['center'] + wh / 2])
        np.testing.assert_allclose(rec['box'], want, rtol=1e-6)
        # parameters and flags as stored
        pose_key = 'body_pose' if kind == 'hmr2' else 'hand_pose'
        np.testing.assert_array_equal(rec['pose'], src[pose_key])
        np.testing.assert_array_equal(rec['betas'], src['betas'])
        assert bool(rec['has_pose']) == bool(float(np.asarray(src['has_' + pose_key])) > 0)
        assert bool(rec['has_betas']) == bool(float(np.asarray(src['has_betas'])) > 0)
        if kind == 'hamer':
            assert rec['hand_side'] == ('right' if t['right'] else 'left')
        else:
            assert rec['gender'] == 'neutral'
        # 3D: every labelled joint with its confidence; unlabelled rows are zero rows
        conf3 = np.clip(np.asarray(src['keypoints_3d'], np.float64)[:, 3], 0, 1)
        labelled = conf3 > 0
        assert bool(rec['has_kp3d']) == bool(labelled.any())
        np.testing.assert_array_equal(rec['kp3d'][:, 3], conf3.astype(np.float32))
        assert np.all(rec['kp3d'][~labelled] == 0)
        np.testing.assert_allclose(rec['kp3d'][labelled, :3], t['kp3d'][labelled], atol=1e-5)
        if not labelled.all():  # H36M-like: the 19 extra joints only
            np.testing.assert_array_equal(labelled, np.arange(len(conf3)) >= 25)
            n_partial += 1
            continue
        n_kp3d += 1
        uv, _ = cc.project(rec['K'], rec['kp3d'][:, :3])  # the nominal camera the world used
        crop = cropping.apply_affine(rec['crop_affine'], uv.astype(np.float32))
        np.testing.assert_allclose(crop[vis], rec['kp2d'][vis, :2], atol=0.05)
        if t['right']:  # the stored parameters drive the model to the stored joints
            out = cc.model_forward(model, rec['pose'][None], rec['betas'][None])['keypoints'][0]
            kp = rec['kp3d'][:, :3]
            np.testing.assert_allclose(out - out[root], kp - kp[root], atol=2e-4)
    assert n_kp3d > 0
    stats = summary['splits']['train']
    assert stats['has_kp3d'] == len(recs)  # partial 3D is carried, not dropped
    assert stats.get('kp3d_partial', 0) == n_partial
    if kind == 'hmr2':  # every other tar holds 3D for the 19 extra joints only
        assert n_partial > 0
        assert not all(r['has_pose'] for r in recs)  # COCO-like people without a fit


def _batches(rec_dir, name):
    cfg = pl.PipelineConfig(
        data_root=os.path.dirname(rec_dir),
        datasets=(pl.DatasetSpec(name, path=rec_dir),),
        augment=augment.AugmentConfig(enabled=False),
        batch_size=1,
        shuffle=False,
        num_epochs=1,
    )
    return list(pl.make_iterator(cfg, 0, 1))


def test_partial_3d_reaches_the_batch_with_its_confidence(tar_data):
    """An H36M-like person (3D on the 19 extra joints only) trains with 3D on those joints."""
    _, rec_dir, truth, _ = tar_data['hmr2']
    reader = record_reader.RecordReader(rec_dir, 'train')
    partial = 0
    for batch in _batches(rec_dir, 'hmr2'):
        rec = reader[int(batch['record_index'][0, 0])]
        src = truth[(rec['sequence'], int(rec['track']))]['data']
        if np.asarray(src['keypoints_3d'])[:25, 3].any():
            continue
        partial += 1
        assert batch['kp3d'].shape[-2:] == (44, 4) and batch['has_kp3d'][0, 0]
        np.testing.assert_array_equal(batch['kp3d'][0, 0, :25], 0.0)
        np.testing.assert_array_equal(batch['kp3d'][0, 0, 25:, 3], 1.0)
        # no augmentation: the camera frame is the record's
        np.testing.assert_allclose(batch['kp3d'][0, 0, 25:, :3], rec['kp3d'][25:, :3], atol=1e-6)
    assert partial > 0


def test_left_hands_come_out_mirrored_with_their_pose(tar_data, body_model_dir):
    _, rec_dir, truth, _ = tar_data['hamer']
    reader = record_reader.RecordReader(rec_dir, 'train')
    right_mano = bm.load_from_dir(str(body_model_dir), 'mano')
    sides = set()
    for batch in _batches(rec_dir, 'hamer'):
        rec = reader[int(batch['record_index'][0, 0])]
        t = truth[(rec['sequence'], int(rec['track']))]
        left = not t['right']
        sides.add(left)
        assert bool(batch['flipped'][0, 0]) == left
        assert bool(batch['is_right'][0, 0]) == (not left)
        pose, kp3d = batch['pose'][0, 0], batch['kp3d'][0, 0, :, :3]
        # the record holds the left hand's own pose; the batch the right-hand pose it mirrors
        np.testing.assert_allclose(pose, t['design_pose'], atol=1e-6)
        out = cc.model_forward(right_mano, pose[None], batch['betas'][0, :1])['keypoints'][0]
        np.testing.assert_allclose(out - out[0], kp3d - kp3d[0], atol=2e-4)
        # the batch's camera still projects its 3D keypoints onto its 2D ones
        uv, _ = cc.project(batch['K'][0, 0], kp3d)
        vis = batch['kp2d'][0, 0, :, 2] > 0
        np.testing.assert_allclose(uv[vis], batch['kp2d'][0, 0, vis, :2], atol=0.05)
        if left:  # the image is the mirror image: the thumb sits on the other side
            raw = rec['kp2d'][:, :2]
            a = np.asarray(batch['affine'][0, 0], np.float64)
            assert np.linalg.det(a[:, :2]) < 0
            np.testing.assert_allclose(
                augment.apply(a, _full_image(rec, raw)), batch['kp2d'][0, 0, :, :2], atol=1e-2
            )
    assert sides == {True, False}


# ---------------------------------------------------------------- box conventions


def _write_tar(path, samples, protocol=4):
    """samples: [(key, {ext: bytes or object to pickle})]."""
    with tarfile.open(path, 'w') as tar:
        for key, members in samples:
            for ext, data in members.items():
                if not isinstance(data, bytes):
                    data = pickle.dumps(data, protocol=protocol)
                info = tarfile.TarInfo(f'{key}.{ext}')
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def _person(center, scale, kind='hmr2', **over):
    j = 44 if kind == 'hmr2' else 21
    kp = np.zeros((j, 3), np.float32)
    kp[:, 0] = center[0] + np.linspace(-20, 20, j)
    kp[:, 1] = center[1] + np.linspace(-30, 30, j)
    kp[:, 2] = 1.0
    d = dict(
        keypoints_2d=kp,
        keypoints_3d=np.zeros((j, 4), np.float32),
        center=np.asarray(center, np.float32),
        scale=scale,
        betas=np.zeros(10, np.float32),
        has_betas=np.float32(0),
    )
    if kind == 'hmr2':
        d.update(body_pose=np.zeros(72, np.float32), has_body_pose=np.float32(0))
    else:
        d.update(hand_pose=np.zeros(48, np.float32), has_hand_pose=0.0, right=1.0)
    d.update(over)
    return d


def _jpg(h=240, w=220):
    rng = np.random.default_rng(0)
    return cropping.encode_image(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def test_box_conventions_hand_computed(tmp_path):
    src = tmp_path / 'boxes'
    src.mkdir()
    # per axis (0.5, 0.9) -> a 100 x 180 box; 3:4 -> w = max(100, 180 * 3/4) = 135, h = 180:
    # side 180. Scalar 0.9 -> a 180 x 180 box; 3:4 -> h = max(180, 180 * 4/3) = 240: side 240.
    people = [_person((100, 80), np.array([0.5, 0.9])), _person((110, 120), np.float64(0.9))]
    _write_tar(src / '000000.tar', [('s/a', {'jpg': _jpg(), 'data.pyd': people})])
    out = str(tmp_path / 'rec')
    cw.convert(str(src), out, kind='hmr2', name='boxes', quiet=True, fsync=False)
    recs = {int(r['track']): r for r in _records(out)}
    np.testing.assert_allclose(recs[0]['box'], [50, -10, 150, 170])
    np.testing.assert_allclose(recs[1]['box'], [20, 30, 200, 210])
    sides = {}
    for batch in _batches(out, 'boxes'):
        rec = recs[int(batch['track'][0, 0])]
        a = batch['affine'][0, 0]
        # the full image's box side S maps to the 256-pixel crop: 256 / S pixels per pixel
        sides[int(batch['track'][0, 0])] = 256.0 / float(np.hypot(a[0, 0], a[1, 0]))
        np.testing.assert_allclose(batch['box_center'][0, 0], [96, 128], atol=1e-3)
        centre = augment.apply(
            a.astype(np.float64), np.asarray(rec['box'][:2] + rec['box'][2:]) / 2
        )
        np.testing.assert_allclose(centre, [96, 128], atol=1e-3)
    assert sides[0] == pytest.approx(180.0, rel=1e-4)
    assert sides[1] == pytest.approx(240.0, rel=1e-4)


# ---------------------------------------------------------------- bad input


class Foreign:
    """A class the restricted unpickler must refuse (pickled by reference to this module)."""


def _assert_nothing_written(out):
    assert not os.path.exists(os.path.join(out, shards.DATASET_INFO))
    for path in glob.glob(os.path.join(out, '*')):
        assert not path.endswith(shards.TMP_SUFFIX), path


def _two_tars(tmp_path, bad_members):
    src = tmp_path / 'src'
    src.mkdir()
    good = [(f'g/{i}', {'jpg': _jpg(), 'data.pyd': [_person((100, 100), 0.5)]}) for i in range(2)]
    _write_tar(src / '000000.tar', good)
    _write_tar(src / '000001.tar', [('b/ok', good[0][1]), ('b/bad', bad_members)])
    return src


@pytest.mark.parametrize(
    'what, members, match',
    [
        (
            'corrupt image',
            {'jpg': b'\xff\xd8 not a jpeg', 'data.pyd': [_person((100, 100), 0.5)]},
            r'000001\.tar: b/bad\.jpg',
        ),
        (
            'garbled pickle',
            {'jpg': _jpg(), 'data.pyd': b'\x80\x04garbage'},
            r'000001\.tar: b/bad\.data\.pyd: not a readable',
        ),
        (
            'foreign class',
            {'jpg': _jpg(), 'data.pyd': [Foreign()]},
            r'000001\.tar: b/bad\.data\.pyd: refusing to unpickle test_convert_tars\.Foreign',
        ),
        (
            'missing key',
            {
                'jpg': _jpg(),
                'data.pyd': [{k: v for k, v in _person((1, 1), 0.5).items() if k != 'scale'}],
            },
            r"000001\.tar: b/bad\.data\.pyd: person 0: missing key 'scale'",
        ),
        (
            'mis-shaped key',
            {'jpg': _jpg(), 'data.pyd': [_person((1, 1), 0.5, betas=np.zeros(8))]},
            r"person 0: key 'betas' has shape \(8,\), expected \(10,\)",
        ),
        ('no image', {'data.pyd': [_person((1, 1), 0.5)]}, r"sample 'b/bad' has no image"),
    ],
)
def test_bad_samples_stop_naming_file_and_key_or_are_skipped(tmp_path, what, members, match):
    src = _two_tars(tmp_path, members)
    out = str(tmp_path / 'out')
    with pytest.raises(cc.ConversionError, match=match):
        cw.convert(str(src), out, kind='hmr2', name='x', quiet=True, fsync=False)
    assert not shards.shard_complete(os.path.join(out, shards.shard_name('x', 'train', 1, 2)))
    _assert_nothing_written(out)
    s = cw.convert(str(src), out, kind='hmr2', name='x', quiet=True, fsync=False, skip_bad=True)
    s = s['splits']['train']
    key = 'bad_persons' if what in ('missing key', 'mis-shaped key') else 'bad_samples'
    assert s[key] == 1, s
    assert s['num_records'] == 3  # two in the good tar, one good sample in the bad one
    assert s['shards_skipped'] == 1  # the good tar's shard was finished by the failed run


def test_truncated_tar_and_resume(tmp_path):
    src = tmp_path / 'src'
    src.mkdir()
    samples = [
        (f'k/{i}', {'jpg': _jpg(), 'data.pyd': [_person((100, 100), 0.5)]}) for i in range(3)
    ]
    _write_tar(src / '000000.tar', samples)
    _write_tar(src / '000001.tar', [(f'm/{i}', m) for i, (_, m) in enumerate(samples)])
    data = (src / '000001.tar').read_bytes()
    (src / '000001.tar').write_bytes(data[: len(data) // 2])
    out = str(tmp_path / 'out')
    with pytest.raises(cc.ConversionError, match=re.escape(str(src / '000001.tar'))):
        cw.convert(str(src), out, kind='hmr2', name='x', quiet=True, fsync=False)
    _assert_nothing_written(out)
    s = cw.convert(str(src), out, kind='hmr2', name='x', quiet=True, fsync=False, skip_bad=True)
    s = s['splits']['train']
    assert s['bad_tar_tails'] == 1 and s['shards_skipped'] == 1
    assert 3 < s['num_records'] < 6
    again = cw.convert(str(src), out, kind='hmr2', name='x', quiet=True, fsync=False)
    assert again['splits']['train']['shards_skipped'] == 2  # resumable: nothing redone


def test_sample_keys_follow_webdataset():
    assert cw.sample_key('aic-train/0a04.data.pyd') == ('aic-train/0a04', 'data.pyd')
    assert cw.sample_key('x/y.z/abc.jpg') == ('x/y.z/abc', 'jpg')
    assert cw.default_name('/records/coco-train-2014-pruned/') == 'coco_train_2014_pruned'


# ---------------------------------------------------------------- npz + image folder


def _npz_from_tars(src, truth, tmp_path, kind):
    """The tars' people as an npz (scale in PIXELS) + an image folder, as a user would write."""
    images = tmp_path / 'images'
    rows = {}
    for tar_path in sorted(glob.glob(os.path.join(src, '*.tar'))):
        with tarfile.open(tar_path) as tar:
            for info in tar:
                if info.name.endswith('.jpg'):
                    (images / os.path.dirname(info.name)).mkdir(parents=True, exist_ok=True)
                    (images / info.name).write_bytes(tar.extractfile(info).read())
    for t in truth.values():
        d = t['data']
        rows.setdefault('imgname', []).append(t['key'] + '.jpg')
        rows.setdefault('center', []).append(d['center'])
        wh = np.broadcast_to(np.asarray(d['scale'], np.float64) * 200.0, (2,))
        rows.setdefault('scale', []).append(wh)
        if kind == 'hmr2':
            rows.setdefault('body_keypoints_2d', []).append(d['keypoints_2d'][:25])
            rows.setdefault('extra_keypoints_2d', []).append(d['keypoints_2d'][25:])
            rows.setdefault('body_keypoints_3d', []).append(d['keypoints_3d'][:25])
            rows.setdefault('extra_keypoints_3d', []).append(d['keypoints_3d'][25:])
            rows.setdefault('body_pose', []).append(d['body_pose'])
            rows.setdefault('has_body_pose', []).append(float(np.asarray(d['has_body_pose'])))
        else:
            rows.setdefault('hand_keypoints_2d', []).append(d['keypoints_2d'])
            rows.setdefault('hand_keypoints_3d', []).append(d['keypoints_3d'])
            rows.setdefault('hand_pose', []).append(d['hand_pose'])
            rows.setdefault('has_hand_pose', []).append(float(np.asarray(d['has_hand_pose'])))
            rows.setdefault('right', []).append(float(d['right']))
        rows.setdefault('betas', []).append(d['betas'])
        rows.setdefault('has_betas', []).append(float(np.asarray(d['has_betas'])))
    path = str(tmp_path / f'{kind}_own.npz')
    np.savez(path, **{k: np.asarray(v) for k, v in rows.items()})
    return path, str(images)


@pytest.mark.parametrize('kind', ['hmr2', 'hamer'])
def test_npz_and_image_folder_agree_with_the_source(tar_data, tmp_path, kind):
    src, _, truth, _ = tar_data[kind]
    npz, images = _npz_from_tars(src, truth, tmp_path, kind)
    out = str(tmp_path / 'rec')
    s = cvn.convert(npz, images, out, kind=kind, quiet=True, fsync=False, num_shards=2)
    assert s['dataset'] == 'rec'  # the output folder's name: the pipeline finds it there
    recs = _records(out, 'test')
    assert len(recs) == len(truth)
    by_image = {}
    for t in truth.values():
        by_image.setdefault(t['key'], []).append(t)
    for rec in recs:
        t = by_image[rec['sequence'][: -len('.jpg')]][int(rec['track'])]
        d = t['data']
        wh = np.broadcast_to(np.asarray(d['scale'], np.float64) * 200.0, (2,))
        np.testing.assert_allclose(
            rec['box'], np.concatenate([d['center'] - wh / 2, d['center'] + wh / 2]), rtol=1e-6
        )
        vis = np.asarray(d['keypoints_2d'])[:, 2] > 0
        np.testing.assert_allclose(
            _full_image(rec, rec['kp2d'][vis, :2]), d['keypoints_2d'][vis, :2], atol=2e-3
        )
        pose_key = 'body_pose' if kind == 'hmr2' else 'hand_pose'
        np.testing.assert_array_equal(rec['pose'], d[pose_key])
        conf3 = np.asarray(d['keypoints_3d'], np.float64)[:, 3].copy()
        if kind == 'hamer':
            assert rec['hand_side'] == ('right' if t['right'] else 'left')
        else:  # upstream zeroes OpenPose joints 1-14's 3D confidence; the others are kept
            conf3[1:15] = 0.0
        np.testing.assert_array_equal(rec['kp3d'][:, 3], conf3.astype(np.float32))
        assert rec['has_kp3d']
        np.testing.assert_allclose(rec['kp3d'][conf3 > 0, :3], t['kp3d'][conf3 > 0], atol=1e-5)


def test_npz_bad_input(tar_data, tmp_path):
    src, _, truth, _ = tar_data['hamer']
    npz, images = _npz_from_tars(src, truth, tmp_path, 'hamer')
    data = dict(np.load(npz))
    out = str(tmp_path / 'out')
    bad = str(tmp_path / 'short.npz')
    np.savez(bad, **{**data, 'center': data['center'][:-1]})
    with pytest.raises(
        cc.ConversionError, match=r"short\.npz: key 'center' has 7 rows, 'imgname' has 8"
    ):
        cvn.convert(bad, images, out, kind='hamer', quiet=True, fsync=False)
    assert not os.path.exists(out) or not os.listdir(out)  # checked before anything is written
    np.savez(bad, **{k: v for k, v in data.items() if k != 'right'})
    with pytest.raises(cc.ConversionError, match=r"short\.npz: missing key 'right'"):
        cvn.convert(bad, images, out, kind='hamer', quiet=True, fsync=False)
    np.savez(bad, **{**data, 'hand_pose': data['hand_pose'][:, :45]})
    with pytest.raises(cc.ConversionError, match=r"key 'hand_pose' has shape \(8, 45\)"):
        cvn.convert(bad, images, out, kind='hamer', quiet=True, fsync=False)
    gone = os.path.join(images, data['imgname'][0])
    os.remove(gone)
    with pytest.raises(FileNotFoundError, match=re.escape(gone)):
        cvn.convert(npz, images, out, kind='hamer', quiet=True, fsync=False, num_shards=1)
    _assert_nothing_written(out)
    s = cvn.convert(
        npz, images, out, kind='hamer', quiet=True, fsync=False, num_shards=1, skip_bad=True
    )
    assert s['splits']['test']['bad_rows'] == 1 and s['splits']['test']['num_records'] == 7


# ---------------------------------------------------------------- docs/data.md's own-data example

DATA_MD = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs', 'data.md'
)


def _own_data_example():
    """The python and bash blocks of docs/data.md's "Own data" section, as the reader sees them."""
    with open(DATA_MD, encoding='utf-8') as f:
        text = f.read()
    section = text[text.index('**Own data (npz + images).**') :]
    python = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    bash = re.search(r'```bash\n(.*?)```', section, re.S).group(1)
    return python, shlex.split(bash.replace('\\\n', ' '))


def test_docs_own_data_example_converts(tmp_path, monkeypatch):
    python, argv = _own_data_example()
    assert argv[:3] == ['python', '-m', 'data_pipelines.convert_hmr_npz'], argv
    # What the example leaves to the reader: images, BODY_25 keypoints in each box, the 3D of
    # the extra joints (the second person has none), SMPL parameters.
    rng = np.random.default_rng(0)
    mine = tmp_path / 'mine'
    (mine / 'img').mkdir(parents=True)
    for name in ('0001', '0002'):
        (mine / 'img' / f'{name}.jpg').write_bytes(_jpg(480, 640))
    centre = np.array([[320, 240], [480, 250], [300, 260]], np.float64)
    size = np.array([[120, 300], [100, 280], [140, 320]], np.float64)
    kp25 = np.ones((3, 25, 3), np.float32)
    kp25[..., :2] = centre[:, None] + rng.uniform(-0.4, 0.4, (3, 25, 2)) * size[:, None]
    kp19_3d = np.zeros((3, 19, 4), np.float32)
    kp19_3d[[0, 2], :, :3] = rng.normal(0, 0.3, (2, 19, 3))
    kp19_3d[[0, 2], :, 3] = 1.0
    pose = rng.normal(0, 0.2, (3, 72)).astype(np.float32)
    betas = rng.normal(0, 1, (3, 10)).astype(np.float32)
    monkeypatch.chdir(tmp_path)
    exec(python, {'kp25': kp25, 'kp19_3d': kp19_3d, 'pose': pose, 'betas': betas})

    args = [str(mine) if a == '/data/mine' else a for a in argv[3:]]
    summary = cvn.main(args + ['--workers', '0', '--quiet'])
    assert summary['dataset'] == 'mydata' and summary['splits']['train']['num_records'] == 3
    recs = {(r['sequence'], int(r['track'])): r for r in _records('records/mydata', 'train')}
    rows = [('img/0001.jpg', 0), ('img/0001.jpg', 1), ('img/0002.jpg', 0)]
    assert sorted(recs) == rows
    for i, key in enumerate(rows):
        rec = recs[key]
        # scale is the box (w, h) in pixels here: centre +- scale / 2 (exact in fp32)
        np.testing.assert_array_equal(
            rec['box'], np.r_[centre[i] - size[i] / 2, centre[i] + size[i] / 2]
        )
        np.testing.assert_allclose(
            _full_image(rec, rec['kp2d'][:25, :2]), kp25[i, :, :2], atol=2e-3
        )
        np.testing.assert_array_equal(rec['kp2d'][25:], 0.0)  # no extra 2D joints given
        assert bool(rec['has_pose']) == bool(rec['has_betas']) == (i < 2)
        np.testing.assert_array_equal(rec['pose'], pose[i])  # kept as given, flag or not
        # 3D on the extra joints only, with the confidence given
        assert bool(rec['has_kp3d']) == (i != 1)
        np.testing.assert_array_equal(rec['kp3d'][:25], 0.0)
        np.testing.assert_array_equal(rec['kp3d'][25:], kp19_3d[i])
