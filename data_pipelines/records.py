"""The pose record: its schema, its errors, and one record to and from bytes.

One record = one person (track) in one frame of one sequence: a JPEG crop around the person
plus the geometry (crop affine, intrinsics, box) and labels (2D/3D keypoints, SMPL/MANO params).
The on-disk layout and every field are documented in docs/data.md; keep the two in step.

A record's bytes are a tf.train.Example built by TFDS's numpy serializer/parser (TensorFlow is
never imported). Around this module: cropping.py makes the JPEG crop, tfrecord.py frames
records into files, shards.py writes a dataset's shards with their indexes and dataset_info.json,
and record_reader.py reads them back by index or by (sequence, track, frame).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from tensorflow_datasets.core import example_parser, example_serializer
from tensorflow_datasets.core.features.feature import TensorInfo

from data_pipelines import cropping
from extpose_jax import errors

# Bump when a field is added, removed or changes meaning; readers refuse versions outside
# READABLE_VERSIONS. 2: optional kp2d_occluded (HInt occlusion labels). 3: kp3d carries a
# per-joint confidence, (J, 4), so sets with 3D labels on some joints only (H36M, MPI-INF-3DHP
# in HMR 2.0's tars) keep them.
SCHEMA_VERSION = 3
# Version 2 stays readable: users hold days of converted data, and its kp3d maps onto v3 exactly
# (decode_record gives every joint the record's has_kp3d as its confidence).
READABLE_VERSIONS = (2, 3)

NUM_BETAS = 10
# body model -> (pose length, the string field naming the subject kind, its allowed values).
BODY_MODELS = {
    'smpl': (72, 'gender', ('neutral', 'male', 'female')),
    'mano': (48, 'hand_side', ('right', 'left')),
}
HAS_FLAGS = ('has_kp2d', 'has_kp2d_det', 'has_kp3d', 'has_pose', 'has_betas', 'has_kp2d_occluded')

# Storage spec of the tf.train.Example. An Example stores every feature as a flat list anyway, so
# fixed-size arrays are declared flat here and reshaped on decode from LOGICAL_SHAPES; the
# per-dataset joint count J travels in `num_joints` and the pose length is implied by its list.
_STORAGE = {
    'schema_version': TensorInfo(shape=(), dtype=np.int64),
    'image': TensorInfo(shape=(), dtype=np.object_),  # JPEG bytes
    'crop_affine': TensorInfo(shape=(6,), dtype=np.float32),
    'image_size': TensorInfo(shape=(2,), dtype=np.int64),
    'K': TensorInfo(shape=(9,), dtype=np.float32),
    'box': TensorInfo(shape=(4,), dtype=np.float32),
    'num_joints': TensorInfo(shape=(), dtype=np.int64),
    'kp2d': TensorInfo(shape=(None,), dtype=np.float32),
    'kp2d_det': TensorInfo(shape=(None,), dtype=np.float32),
    'kp2d_occluded': TensorInfo(shape=(None,), dtype=np.float32),
    'kp3d': TensorInfo(shape=(None,), dtype=np.float32),
    'pose': TensorInfo(shape=(None,), dtype=np.float32),
    'betas': TensorInfo(shape=(NUM_BETAS,), dtype=np.float32),
    'gender': TensorInfo(shape=(), dtype=np.object_),
    'hand_side': TensorInfo(shape=(), dtype=np.object_),
    **{flag: TensorInfo(shape=(), dtype=np.int64) for flag in HAS_FLAGS},
    'sequence': TensorInfo(shape=(), dtype=np.object_),
    'track': TensorInfo(shape=(), dtype=np.int64),
    'frame': TensorInfo(shape=(), dtype=np.int64),
    'dataset': TensorInfo(shape=(), dtype=np.object_),
    'split': TensorInfo(shape=(), dtype=np.object_),
}
# Decoded shapes; "J" = num_joints, "P" = pose length of the body model.
LOGICAL_SHAPES = {
    'crop_affine': (2, 3),
    'image_size': (2,),
    'K': (3, 3),
    'box': (4,),
    'kp2d': ('J', 3),
    'kp2d_det': ('J', 3),
    'kp2d_occluded': ('J',),
    'kp3d': ('J', 4),  # x, y, z, confidence (encode_record also takes (J, 3): confidence 1)
    'pose': ('P',),
    'betas': (NUM_BETAS,),
}
_FLOAT_FIELDS = (
    'crop_affine',
    'K',
    'box',
    'kp2d',
    'kp2d_det',
    'kp2d_occluded',
    'kp3d',
    'pose',
    'betas',
)
_STR_FIELDS = ('gender', 'hand_side', 'sequence', 'dataset', 'split')
# Fields a record may omit: labels (their has_* flag then defaults to False, the array to zeros)
# and the subject string that does not apply to its body model.
_OPTIONAL = {
    'kp2d': 'has_kp2d',
    'kp2d_det': 'has_kp2d_det',
    'kp2d_occluded': 'has_kp2d_occluded',
    'kp3d': 'has_kp3d',
    'pose': 'has_pose',
    'betas': 'has_betas',
}
_INPUT_FIELDS = set(_STORAGE) - {'schema_version', 'num_joints'}  # those two are set by the writer


class RecordError(errors.DataFileError):
    """Base class of the errors raised here."""


class SchemaVersionError(RecordError):
    pass


def check_schema_version(version, where: str, hint: str = '') -> int:
    """The version as an int if this code reads it, else SchemaVersionError naming `where`."""
    if isinstance(version, (int, np.integer)) and not isinstance(version, (bool, np.bool_)):
        version = int(version)
        if version in READABLE_VERSIONS:
            return version
    readable = ' or '.join(map(str, READABLE_VERSIONS))
    raise SchemaVersionError(
        f'{where} has schema_version {version!r}, this code reads {readable}{hint}'
    )


class IncompleteShardError(RecordError):
    pass


class MissingSplitError(RecordError, KeyError):
    """A split that dataset_info.json does not list (a KeyError too, as readers raised before)."""

    __str__ = Exception.__str__  # KeyError's would quote the message


class CorruptRecordError(RecordError):
    """A record whose bytes fail the framing/CRC checks or cannot be parsed."""

    def __init__(self, path: str, index_in_shard: int, global_index: int | None, reason: str):
        self.path, self.index_in_shard, self.global_index, self.reason = (
            path,
            index_in_shard,
            global_index,
            reason,
        )
        where = f'record {index_in_shard} of shard {path}'
        if global_index is not None:
            where += f' (global index {global_index})'
        super().__init__(f'corrupt {where}: {reason}')


# ---------------------------------------------------------------- encode / decode one record


def kp3d_with_confidence(value, where: str = 'kp3d') -> np.ndarray:
    """(J, 4) float32 x, y, z, confidence from (J, 4), or from (J, 3) with confidence 1 (how
    every writer before schema 3 passed kp3d); ValueError naming `where` for any other shape."""
    value = np.asarray(value, np.float32)
    if value.ndim != 2 or value.shape[1] not in (3, 4):
        raise ValueError(f'{where} has shape {value.shape}, expected (J, 4) or (J, 3)')
    if value.shape[1] == 3:
        value = np.concatenate([value, np.ones((len(value), 1), np.float32)], 1)
    return value


_serializer = example_serializer.ExampleSerializer(_STORAGE)
_parser = example_parser.ExampleParserNp(_STORAGE)


def record_context(record: Mapping[str, Any]) -> str:
    return 'record ' + repr(tuple(record.get(k) for k in ('sequence', 'track', 'frame')))


def encode_record(
    record: Mapping[str, Any], *, num_joints: int, body_model: str, jpeg_quality: int = 95
) -> bytes:
    """Validates one record dict (fields in docs/data.md) and serializes it as a tf.train.Example.

    `image` is JPEG bytes, or a uint8 HxWx3 RGB crop that is encoded here. Labels may be omitted:
    their has_* flag then defaults to False and the array to zeros. kp3d is (J, 4) with a
    per-joint confidence, or (J, 3) (confidence 1); has_kp3d defaults to any confidence > 0.
    Errors name the field.
    """
    if body_model not in BODY_MODELS:
        raise ValueError(f'body_model must be one of {sorted(BODY_MODELS)}, got {body_model!r}')
    pose_dim, subject_field, subject_values = BODY_MODELS[body_model]
    ctx = record_context(record)
    unknown = set(record) - _INPUT_FIELDS
    if unknown:
        raise ValueError(f'{ctx}: unknown fields {sorted(unknown)}')
    sizes = {'J': num_joints, 'P': pose_dim}
    out: dict[str, Any] = {'schema_version': SCHEMA_VERSION, 'num_joints': num_joints}

    for key in ('image', 'crop_affine', 'image_size', 'K', 'box', 'sequence', 'track', 'frame'):
        if key not in record:
            raise ValueError(f'{ctx}: missing required field {key!r}')

    image = record['image']
    if isinstance(image, np.ndarray):
        try:
            image = cropping.encode_image(image, jpeg_quality)
        except ValueError as e:
            raise ValueError(f"{ctx}: field 'image': {e}") from e
    if not isinstance(image, (bytes, bytearray)) or image[:2] != b'\xff\xd8':
        raise ValueError(f"{ctx}: field 'image' must be JPEG bytes or a uint8 HxWx3 array")
    out['image'] = bytes(image)

    for flag in HAS_FLAGS:
        if flag in record and not isinstance(record[flag], (bool, np.bool_)):
            raise ValueError(f'{ctx}: field {flag!r} must be a bool, got {record[flag]!r}')
    for key in _FLOAT_FIELDS:
        shape = tuple(sizes.get(d, d) for d in LOGICAL_SHAPES[key])
        flag = _OPTIONAL.get(key)
        if key not in record:
            if flag and record.get(flag, False):
                raise ValueError(f'{ctx}: {flag}=True but field {key!r} is missing')
            if not flag:
                raise ValueError(f'{ctx}: missing required field {key!r}')
            value = np.zeros(shape, np.float32)
        elif key == 'kp3d':
            value = kp3d_with_confidence(record[key], f"{ctx}: field 'kp3d'")
        else:
            value = np.asarray(record[key], np.float32)
        if value.shape != shape:
            raise ValueError(f'{ctx}: field {key!r} has shape {value.shape}, expected {shape}')
        # NaN/inf would survive a has_*=False mask (0 * nan = nan) and poison a loss.
        if not np.all(np.isfinite(value)):
            raise ValueError(f'{ctx}: field {key!r} has non-finite values')
        out[key] = value.reshape(-1)
        if flag:
            out[flag] = int(bool(record.get(flag, key in record)))
    conf3 = out['kp3d'].reshape(-1, 4)[:, 3]
    if np.any(conf3 < 0):
        raise ValueError(f"{ctx}: field 'kp3d' has negative confidences")
    if 'has_kp3d' not in record:  # a kp3d with no confident joint labels nothing
        out['has_kp3d'] = int(bool(np.any(conf3 > 0)))
    elif record['has_kp3d'] and not np.any(conf3 > 0):
        raise ValueError(f"{ctx}: has_kp3d=True but every 'kp3d' confidence is 0")
    x0, y0, x1, y1 = out['box']
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{ctx}: field 'box' must be x0,y0,x1,y1 with x1 > x0, y1 > y0")

    size = np.asarray(record['image_size'])
    if size.shape != (2,) or size.dtype.kind not in 'iu' or np.any(size <= 0):
        raise ValueError(
            f"{ctx}: field 'image_size' must be two positive ints (H, W), got {size!r}"
        )
    out['image_size'] = size.astype(np.int64)

    for key in ('track', 'frame'):
        if not isinstance(record[key], (int, np.integer)) or isinstance(record[key], bool):
            raise ValueError(f'{ctx}: field {key!r} must be an int, got {record[key]!r}')
        out[key] = int(record[key])
    for key in _STR_FIELDS:
        value = record.get(key, '')
        if not isinstance(value, str):
            raise ValueError(f'{ctx}: field {key!r} must be a str, got {value!r}')
        out[key] = value
    if not out['sequence']:
        raise ValueError(f"{ctx}: field 'sequence' must be a non-empty str")
    # A body record names its gender, a hand record its side; the other field stays empty.
    other = 'hand_side' if subject_field == 'gender' else 'gender'
    if out[subject_field] not in subject_values:
        raise ValueError(
            f'{ctx}: field {subject_field!r} must be one of {subject_values} for '
            f'{body_model}, got {out[subject_field]!r}'
        )
    if out[other]:
        raise ValueError(f'{ctx}: field {other!r} does not apply to {body_model} records')
    # deterministic: the Example's feature map in key order. Protobuf's default order follows
    # the string hash, which changes per process (PYTHONHASHSEED), so the same records would
    # give other bytes, shard checksums and CRCs on every run.
    return _serializer.get_tf_example(out).SerializeToString(deterministic=True)


def decode_record(payload: bytes, *, decode_image: bool = False) -> dict[str, Any]:
    """tf.train.Example bytes -> dict with fixed dtypes (see docs/data.md).

    Arrays come back as numpy float32/int64 in their logical shapes, scalars as np.int64 / np.bool_,
    strings as str, and `image` as JPEG bytes (or uint8 HxWx3 RGB with decode_image=True).
    Every readable schema version decodes to this version's fields (kp3d (J, 4)); the
    `schema_version` returned is the one the record was written with.
    """
    raw = _parser.parse_example(payload)
    # The TFDS parser silently skips spec keys absent from the payload; check them here.
    missing = set(_STORAGE) - set(raw)
    if missing:
        raise ValueError(f'record lacks fields {sorted(missing)}')
    version = check_schema_version(raw['schema_version'], 'record')
    j = int(raw['num_joints'])
    out: dict[str, Any] = {
        'schema_version': np.int64(raw['schema_version']),
        'num_joints': np.int64(j),
        'image': cropping.decode_image(raw['image']) if decode_image else raw['image'],
        'image_size': np.asarray(raw['image_size'], np.int64),
        'track': np.int64(raw['track']),
        'frame': np.int64(raw['frame']),
    }
    sizes = {'J': j, 'P': len(raw['pose'])}
    for key in _FLOAT_FIELDS:
        shape = tuple(sizes.get(d, d) for d in LOGICAL_SHAPES[key])
        if key == 'kp3d' and version == 2:
            # v2 had one has_kp3d for all joints: its joints were all labelled or none was.
            xyz = np.asarray(raw[key], np.float32).reshape(j, 3)
            conf = np.full((j, 1), 1.0 if raw['has_kp3d'] else 0.0, np.float32)
            out[key] = np.concatenate([xyz, conf], 1)
            continue
        out[key] = np.asarray(raw[key], np.float32).reshape(shape)
    for flag in HAS_FLAGS:
        out[flag] = np.bool_(raw[flag])
    for key in _STR_FIELDS:
        out[key] = raw[key].decode('utf-8')
    return out
