"""One record's bytes (data_pipelines/records.py, cropping.py): the schema version and field
checks, the same bytes in every process, and the crop that records carry. Shards, framing and
the reader are in test_records.py."""

import glob
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from test_records import J_BODY, J_HAND, make_record

from data_pipelines import cropping, record_reader, shards
from data_pipelines import records as R

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _encoded_digest(hash_seed: str) -> str:
    """sha256 of one record's bytes, encoded in a fresh process with this string-hash seed."""
    code = (
        'import hashlib, sys, numpy as np; sys.path[:0] = ["tests", "."]; '
        'from test_records import make_record; from data_pipelines import records as R; '
        'rec = make_record(np.random.default_rng(0), "s", 0, 1); '
        'print(hashlib.sha256(R.encode_record(rec, num_joints=44, body_model="smpl")).hexdigest())'
    )
    env = {**os.environ, 'PYTHONHASHSEED': hash_seed, 'JAX_PLATFORMS': 'cpu'}
    out = subprocess.run(
        [sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_a_record_has_the_same_bytes_in_every_process():
    # The Example's feature map would otherwise be written in string-hash order, which
    # PYTHONHASHSEED changes: records, shards and their checksums would differ run to run.
    digests = {_encoded_digest(seed) for seed in ('1', '2', '3')}
    assert len(digests) == 1, digests


def test_record_with_other_schema_version_is_refused():
    rng = np.random.default_rng(0)
    payload = R.encode_record(make_record(rng, 's', 0, 0), num_joints=J_BODY, body_model='smpl')
    example = R._parser.parse_example(payload)
    example['schema_version'] = R.SCHEMA_VERSION + 1
    with pytest.raises(R.SchemaVersionError, match='schema_version'):
        R.decode_record(R._serializer.serialize_example(example))


def _encode(rec, body_model='smpl'):
    return R.encode_record(rec, num_joints=J_BODY, body_model=body_model)


def _as_v2(payload: bytes) -> bytes:
    """The bytes a schema-2 writer made of the same record: version 2, kp3d (J, 3) flattened.
    The Example spec is otherwise the same (every array is a flat list in both versions)."""
    example = R._parser.parse_example(payload)
    example['schema_version'] = 2
    example['kp3d'] = example['kp3d'].reshape(-1, 4)[:, :3].reshape(-1)
    return R._serializer.serialize_example(example)


def test_kp3d_round_trips_with_per_joint_confidence():
    rng = np.random.default_rng(0)
    rec = make_record(rng, 's', 0, 0)
    xyz = rec['kp3d']
    conf = np.zeros(J_BODY, np.float32)
    conf[25:] = 1.0  # 3D on the 19 extra joints only, as H36M / MPI-INF in HMR 2.0's tars
    conf[30] = 0.5
    rec['kp3d'] = np.concatenate([xyz, conf[:, None]], 1)
    back = R.decode_record(_encode(rec))
    assert back['kp3d'].shape == (J_BODY, 4) and back['kp3d'].dtype == np.float32
    np.testing.assert_array_equal(back['kp3d'], rec['kp3d'])
    assert back['has_kp3d'] and back['schema_version'] == R.SCHEMA_VERSION == 3
    # (J, 3), as every writer before schema 3 passed it: every joint labelled
    back = R.decode_record(_encode(dict(rec, kp3d=xyz)))
    np.testing.assert_array_equal(back['kp3d'], np.concatenate([xyz, np.ones((J_BODY, 1))], 1))
    # no confident joint: has_kp3d defaults to False; an explicit False is kept with its array
    back = R.decode_record(_encode(dict(rec, kp3d=np.zeros((J_BODY, 4)))))
    assert not back['has_kp3d']
    back = R.decode_record(_encode(dict(rec, has_kp3d=False)))
    assert not back['has_kp3d'] and np.array_equal(back['kp3d'], rec['kp3d'])


@pytest.mark.parametrize('has_kp3d', [True, False])
def test_schema_2_records_decode_with_confidence_from_has_kp3d(has_kp3d):
    rng = np.random.default_rng(1)
    rec = make_record(rng, 's', 0, 0)
    if not has_kp3d:
        del rec['kp3d']
    back = R.decode_record(_as_v2(_encode(rec)))
    assert back['schema_version'] == 2 and back['has_kp3d'] == has_kp3d
    assert back['kp3d'].shape == (J_BODY, 4) and back['kp3d'].dtype == np.float32
    xyz = rec['kp3d'] if has_kp3d else np.zeros((J_BODY, 3), np.float32)
    np.testing.assert_array_equal(back['kp3d'][:, :3], xyz)
    np.testing.assert_array_equal(back['kp3d'][:, 3], float(has_kp3d))
    # every other field as a schema-3 decode gives it
    now = R.decode_record(_encode(rec))
    for key in set(now) - {'kp3d', 'schema_version'}:
        np.testing.assert_array_equal(back[key], now[key], err_msg=key)


def test_schema_2_dataset_is_read_and_extended(tmp_path, monkeypatch):
    """A dataset written by schema-2 code (records, indexes, dataset_info.json) reads; a split
    written into it now is schema 3 beside it."""
    out = str(tmp_path / 'ds')
    rng = np.random.default_rng(2)
    old = [make_record(rng, f's{i}', 0, 0, partial=i == 2) for i in range(3)]
    with monkeypatch.context() as m:
        encode = shards.encode_record
        m.setattr(shards, 'encode_record', lambda *a, **k: _as_v2(encode(*a, **k)))
        m.setattr(shards, 'SCHEMA_VERSION', 2)
        with shards.RecordWriter(
            out, 'toy', 'old', num_shards=2, num_joints=J_BODY, body_model='smpl', fsync=False
        ) as w:
            for rec in old:
                w.write(rec)
    info_path = os.path.join(out, shards.DATASET_INFO)
    assert json.load(open(info_path))['schema_version'] == 2
    for path in glob.glob(os.path.join(out, '*.index')):
        assert int(np.load(path)['schema_version']) == 2
    reader = record_reader.RecordReader(out, 'old')
    for rec in old:
        back = reader.lookup(rec['sequence'], 0, 0)
        assert back['schema_version'] == 2 and back['has_kp3d'] == ('kp3d' in rec)
        np.testing.assert_array_equal(back['kp3d'][:, 3], float('kp3d' in rec))
    with shards.RecordWriter(
        out, 'toy', 'new', num_shards=1, num_joints=J_BODY, body_model='smpl', fsync=False
    ) as w:
        w.write(make_record(rng, 'n', 0, 0))
    assert json.load(open(info_path))['schema_version'] == 3
    assert len(record_reader.RecordReader(out, 'old')) == 3
    assert record_reader.RecordReader(out, 'new')[0]['schema_version'] == 3


@pytest.mark.parametrize('version', [1, 4])
def test_other_schema_versions_are_refused_everywhere(tmp_path, version):
    out = str(tmp_path / 'ds')
    with shards.RecordWriter(
        out, 'toy', 'train', num_shards=1, num_joints=J_BODY, body_model='smpl', fsync=False
    ) as w:
        w.write(make_record(np.random.default_rng(3), 's', 0, 0))
    (index,) = glob.glob(os.path.join(out, '*.index'))
    z = dict(np.load(index))
    with open(index, 'wb') as f:
        np.savez(f, **{**z, 'schema_version': np.int64(version)})
    with pytest.raises(R.SchemaVersionError, match=f'index .* has schema_version {version}, '):
        record_reader.RecordReader(out, 'train')
    info_path = os.path.join(out, shards.DATASET_INFO)
    info = json.load(open(info_path))
    with open(info_path, 'w') as f:
        json.dump({**info, 'schema_version': float(version)}, f)
    with pytest.raises(R.SchemaVersionError, match=rf'has schema_version {version}\.0, this'):
        record_reader.RecordReader(out, 'train')


@pytest.mark.parametrize(
    'change, match',
    [
        (lambda r: r.update(kp2d=np.zeros((J_HAND, 3))), r"'kp2d' has shape \(21, 3\)"),
        (lambda r: r.update(betas=np.full(10, np.nan)), "'betas' has non-finite"),
        (lambda r: r.update(gender='robot'), "'gender' must be one of"),
        (lambda r: r.update(hand_side='left'), "'hand_side' does not apply"),
        (lambda r: r.update(kp_3d=1), r"unknown fields \['kp_3d'\]"),
        (lambda r: r.pop('K'), "missing required field 'K'"),
        (lambda r: (r.pop('pose'), r.update(has_pose=True)), "has_pose=True but field 'pose'"),
        (lambda r: r.update(image=b'not a jpeg'), "'image' must be JPEG"),
        (lambda r: r.update(frame=1.0), "'frame' must be an int"),
        (lambda r: r.update(box=[5, 5, 1, 9]), "'box' must be"),
        (lambda r: r.update(image_size=np.array([0, 5])), "'image_size'"),
        (lambda r: r.update(kp3d=np.zeros((J_BODY, 5))), r"'kp3d' has shape \(44, 5\)"),
        (lambda r: r.update(kp3d=np.zeros(J_BODY * 4)), r"'kp3d' has shape \(176,\)"),
        (lambda r: r.update(kp3d=np.zeros((J_HAND, 4))), r"'kp3d' has shape \(21, 4\)"),
        (lambda r: r.update(kp3d=np.full((J_BODY, 4), -1.0)), "'kp3d' has negative conf"),
        (
            lambda r: r.update(kp3d=np.zeros((J_BODY, 4)), has_kp3d=True),
            "has_kp3d=True but every 'kp3d' confidence is 0",
        ),
    ],
)
def test_invalid_records_name_the_field(change, match):
    rec = make_record(np.random.default_rng(0), 's', 0, 0)
    change(rec)
    with pytest.raises(ValueError, match=match):
        R.encode_record(rec, num_joints=J_BODY, body_model='smpl')


def test_duplicate_key_and_split_mismatch_rejected(tmp_path):
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"duplicate record \('s', 0, 0\)"):
        with shards.ShardWriter(str(tmp_path / 'a'), num_joints=J_BODY, body_model='smpl') as w:
            w.write(make_record(rng, 's', 0, 0))
            w.write(make_record(rng, 's', 0, 0))
    with pytest.raises(ValueError, match="'split' is 'test', writer is for 'train'"):
        with shards.ShardWriter(
            str(tmp_path / 'b'), num_joints=J_BODY, body_model='smpl', split='train'
        ) as w:
            w.write(dict(make_record(rng, 's', 0, 0), split='test'))


# ---------------------------------------------------------------- crop helper


@pytest.mark.parametrize(
    'box',
    [
        (300, 200, 340, 300),  # small person: crop upsamples
        (50, 10, 1250, 700),  # big person: crop downsamples
        (-40, -30, 100, 200),
    ],
)  # box leaves the image: padding
def test_crop_affine_maps_image_points_to_crop(box):
    h, w = 720, 1280
    image = np.zeros((h, w, 3), np.uint8)
    dot = np.array([(box[0] + box[2]) / 2 + 7, (box[1] + box[3]) / 2 - 5])
    dot = np.clip(dot, 3, [w - 4, h - 4]).round()
    cv2.circle(image, (int(dot[0]), int(dot[1])), 3, (255, 255, 255), -1)
    crop, affine = cropping.crop_person(image, box, crop_size=128, margin=0.25)
    assert crop.shape == (128, 128, 3) and affine.dtype == np.float32
    gray = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[:128, :128]
    centroid = np.array([(gray * xs).sum(), (gray * ys).sum()]) / gray.sum()
    np.testing.assert_allclose(centroid, cropping.apply_affine(affine, dot), atol=0.35)
    # the whole box (with its margin) is inside the crop
    corners = cropping.apply_affine(
        affine, np.array([[box[0], box[1]], [box[2], box[3]]], np.float32)
    )
    assert (corners >= -0.5).all() and (corners <= 127.5).all()
    jpeg, affine2 = cropping.crop_and_encode(image, box, crop_size=128)
    assert jpeg[:2] == b'\xff\xd8' and np.array_equal(affine, affine2)
