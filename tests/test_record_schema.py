"""One record's bytes (data_pipelines/records.py, cropping.py): the schema version and field
checks, the same bytes in every process, and the crop that records carry. Shards, framing and
the reader are in test_records.py."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from test_records import J_BODY, J_HAND, make_record

from data_pipelines import cropping, shards
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
