"""Per-person, per-frame pose records in TFRecord shards with an offset index.

One record = one person (track) in one frame of one sequence: a JPEG crop around the person
plus the geometry (crop affine, intrinsics, box) and labels (2D/3D keypoints, SMPL/MANO params).
The on-disk layout and every field are documented in docs/data.md; keep the two in step.

Layout of a dataset directory:

    dataset_info.json                                   written last; lists the finished shards
    <name>-<split>.tfrecord-00000-of-00004              TFRecord framing, tf.train.Example payloads
    <name>-<split>.tfrecord-00000-of-00004.index        npz: record offsets + (sequence, track, frame)

TensorFlow is never imported: payloads are tf.train.Example protos built by TFDS's numpy
serializer/parser, and the TFRecord framing (length, masked CRC32C, data, masked CRC32C) is
written and checked here with google-crc32c.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import struct
import threading
from typing import Any, Iterator, Mapping

import cv2
import google_crc32c
import numpy as np
from tensorflow_datasets.core import example_parser, example_serializer
from tensorflow_datasets.core.features.feature import TensorInfo

from data_pipelines import atomic_file
from extpose_jax import errors

# Bump when a field is added, removed or changes meaning; readers refuse other versions.
SCHEMA_VERSION = 2  # 2: optional kp2d_occluded (HInt occlusion labels)

DATASET_INFO = "dataset_info.json"
INDEX_SUFFIX = ".index"
TMP_SUFFIX = ".tmp"

NUM_BETAS = 10
# body model -> (pose length, the string field naming the subject kind, its allowed values).
BODY_MODELS = {
    "smpl": (72, "gender", ("neutral", "male", "female")),
    "mano": (48, "hand_side", ("right", "left")),
}
HAS_FLAGS = ("has_kp2d", "has_kp2d_det", "has_kp3d", "has_pose", "has_betas", "has_kp2d_occluded")

# Storage spec of the tf.train.Example. An Example stores every feature as a flat list anyway, so
# fixed-size arrays are declared flat here and reshaped on decode from LOGICAL_SHAPES; the
# per-dataset joint count J travels in `num_joints` and the pose length is implied by its list.
_STORAGE = {
    "schema_version": TensorInfo(shape=(), dtype=np.int64),
    "image": TensorInfo(shape=(), dtype=np.object_),  # JPEG bytes
    "crop_affine": TensorInfo(shape=(6,), dtype=np.float32),
    "image_size": TensorInfo(shape=(2,), dtype=np.int64),
    "K": TensorInfo(shape=(9,), dtype=np.float32),
    "box": TensorInfo(shape=(4,), dtype=np.float32),
    "num_joints": TensorInfo(shape=(), dtype=np.int64),
    "kp2d": TensorInfo(shape=(None,), dtype=np.float32),
    "kp2d_det": TensorInfo(shape=(None,), dtype=np.float32),
    "kp2d_occluded": TensorInfo(shape=(None,), dtype=np.float32),
    "kp3d": TensorInfo(shape=(None,), dtype=np.float32),
    "pose": TensorInfo(shape=(None,), dtype=np.float32),
    "betas": TensorInfo(shape=(NUM_BETAS,), dtype=np.float32),
    "gender": TensorInfo(shape=(), dtype=np.object_),
    "hand_side": TensorInfo(shape=(), dtype=np.object_),
    **{flag: TensorInfo(shape=(), dtype=np.int64) for flag in HAS_FLAGS},
    "sequence": TensorInfo(shape=(), dtype=np.object_),
    "track": TensorInfo(shape=(), dtype=np.int64),
    "frame": TensorInfo(shape=(), dtype=np.int64),
    "dataset": TensorInfo(shape=(), dtype=np.object_),
    "split": TensorInfo(shape=(), dtype=np.object_),
}
# Decoded shapes; "J" = num_joints, "P" = pose length of the body model.
LOGICAL_SHAPES = {
    "crop_affine": (2, 3),
    "image_size": (2,),
    "K": (3, 3),
    "box": (4,),
    "kp2d": ("J", 3),
    "kp2d_det": ("J", 3),
    "kp2d_occluded": ("J",),
    "kp3d": ("J", 3),
    "pose": ("P",),
    "betas": (NUM_BETAS,),
}
_FLOAT_FIELDS = (
    "crop_affine",
    "K",
    "box",
    "kp2d",
    "kp2d_det",
    "kp2d_occluded",
    "kp3d",
    "pose",
    "betas",
)
_STR_FIELDS = ("gender", "hand_side", "sequence", "dataset", "split")
# Fields a record may omit: labels (their has_* flag then defaults to False, the array to zeros)
# and the subject string that does not apply to its body model.
_OPTIONAL = {
    "kp2d": "has_kp2d",
    "kp2d_det": "has_kp2d_det",
    "kp2d_occluded": "has_kp2d_occluded",
    "kp3d": "has_kp3d",
    "pose": "has_pose",
    "betas": "has_betas",
}
_INPUT_FIELDS = set(_STORAGE) - {"schema_version", "num_joints"}  # those two are set by the writer

_NAME_RE = re.compile(r"^[A-Za-z0-9_.]+$")  # no '-' or '/': keeps file names unambiguous


class RecordError(errors.DataFileError):
    """Base class of the errors raised here."""


class SchemaVersionError(RecordError):
    pass


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
        where = f"record {index_in_shard} of shard {path}"
        if global_index is not None:
            where += f" (global index {global_index})"
        super().__init__(f"corrupt {where}: {reason}")


# ---------------------------------------------------------------- CRC32C + TFRecord framing


def crc32c(data: bytes) -> int:
    return google_crc32c.value(bytes(data))


def masked_crc32c(data: bytes) -> int:
    # TFRecord stores a rotated+offset CRC so that a CRC of data that itself contains CRCs
    # does not degenerate.
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
    """TFRecord framing: uint64 length, masked CRC of those 8 bytes, payload, masked CRC of it."""
    head = struct.pack("<Q", len(payload))
    return b"".join(
        (
            head,
            struct.pack("<I", masked_crc32c(head)),
            payload,
            struct.pack("<I", masked_crc32c(payload)),
        )
    )


def _unframe(buf: bytes, expected_len: int | None = None) -> tuple[bytes, str | None]:
    """Checks one framed record held entirely in `buf`; returns (payload, None) or (b'', why)."""
    if len(buf) < 16:
        return b"", f"truncated: {len(buf)} bytes, a record needs at least 16"
    head = buf[:8]
    if struct.unpack("<I", buf[8:12])[0] != masked_crc32c(head):
        return b"", "length CRC mismatch"
    (length,) = struct.unpack("<Q", head)
    if expected_len is not None and length != expected_len:
        return b"", f"length field {length} disagrees with the index ({expected_len})"
    if len(buf) < 16 + length:
        return b"", f"truncated: record needs {16 + length} bytes, {len(buf)} available"
    payload = buf[12 : 12 + length]
    if struct.unpack("<I", buf[12 + length : 16 + length])[0] != masked_crc32c(payload):
        return b"", "data CRC mismatch"
    return payload, None


def iter_framed(path: str) -> Iterator[tuple[int, bytes]]:
    """Scans any TFRecord file (ours or TensorFlow's) without an index: yields (offset, payload).

    Every CRC is checked; a bad record raises CorruptRecordError naming the file and record.
    """
    with open(path, "rb") as f:
        i, offset = 0, 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise CorruptRecordError(path, i, None, f"truncated header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            rest = (
                f.read(length + 4)
                if struct.unpack("<I", header[8:])[0] == masked_crc32c(header[:8])
                else b""
            )
            payload, why = _unframe(header + rest)
            if why:
                raise CorruptRecordError(path, i, None, f"{why} (at byte {offset})")
            yield offset, payload
            i, offset = i + 1, offset + 16 + length


# ---------------------------------------------------------------- images


def encode_image(rgb: np.ndarray, quality: int = 95) -> bytes:
    """uint8 HxWx3 RGB -> JPEG bytes."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"image must be uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError("cv2.imencode failed to encode the crop as JPEG")
    return buf.tobytes()


def decode_image(jpeg: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 HxWx3 RGB."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot decode image ({len(jpeg)} bytes, not a valid JPEG)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def crop_person(
    image: np.ndarray, box, crop_size: int = 384, margin: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around a person box, resized so its side is `crop_size` pixels.

    The crop covers the box's long side plus `margin` of it on each side (so 1.5x at 0.25), leaving
    pixels for later scale/rotation augmentation; area outside the image is black. Returns
    (crop uint8 [crop_size, crop_size, 3], affine 2x3 float32 mapping full-image pixels to crop
    pixels). Pixel centres are at integer coordinates (OpenCV convention) in both frames.
    """
    image = np.asarray(image)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box must have x1 > x0 and y1 > y0, got {tuple(box)}")
    # An integer source window, then one resize: INTER_AREA averages properly when shrinking
    # (warpAffine with a large scale-down would alias), and the affine stays exact.
    side = int(np.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    ox = int(round((x0 + x1) / 2 - side / 2))
    oy = int(round((y0 + y1) / 2 - side / 2))
    h, w = image.shape[:2]
    window = np.zeros((side, side) + image.shape[2:], image.dtype)
    sx0, sy0, sx1, sy1 = max(ox, 0), max(oy, 0), min(ox + side, w), min(oy + side, h)
    if sx1 > sx0 and sy1 > sy0:
        window[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = image[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > crop_size else cv2.INTER_LINEAR
    crop = cv2.resize(window, (crop_size, crop_size), interpolation=interp)
    # cv2.resize maps destination pixel d to source (d + 0.5) * side / crop_size - 0.5; invert it.
    s = crop_size / side
    affine = np.array([[s, 0, (0.5 - ox) * s - 0.5], [0, s, (0.5 - oy) * s - 0.5]], np.float32)
    return crop, affine


def crop_and_encode(
    image: np.ndarray, box, crop_size: int = 384, margin: float = 0.25, quality: int = 95
) -> tuple[bytes, np.ndarray]:
    """crop_person + encode_image: returns (JPEG bytes, 2x3 float32 affine full -> crop)."""
    crop, affine = crop_person(image, box, crop_size, margin)
    return encode_image(crop, quality), affine


def apply_affine(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Maps [..., 2] points with a 2x3 affine (e.g. full-image keypoints into crop pixels)."""
    xy = np.asarray(xy, np.float32)
    return xy @ affine[:, :2].T + affine[:, 2]


# ---------------------------------------------------------------- encode / decode one record

_serializer = example_serializer.ExampleSerializer(_STORAGE)
_parser = example_parser.ExampleParserNp(_STORAGE)


def _context(record: Mapping[str, Any]) -> str:
    return "record " + repr(tuple(record.get(k) for k in ("sequence", "track", "frame")))


def encode_record(
    record: Mapping[str, Any], *, num_joints: int, body_model: str, jpeg_quality: int = 95
) -> bytes:
    """Validates one record dict (fields in docs/data.md) and serializes it as a tf.train.Example.

    `image` is JPEG bytes, or a uint8 HxWx3 RGB crop that is encoded here. Labels may be omitted:
    their has_* flag then defaults to False and the array to zeros. Errors name the field.
    """
    if body_model not in BODY_MODELS:
        raise ValueError(f"body_model must be one of {sorted(BODY_MODELS)}, got {body_model!r}")
    pose_dim, subject_field, subject_values = BODY_MODELS[body_model]
    ctx = _context(record)
    unknown = set(record) - _INPUT_FIELDS
    if unknown:
        raise ValueError(f"{ctx}: unknown fields {sorted(unknown)}")
    sizes = {"J": num_joints, "P": pose_dim}
    out: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "num_joints": num_joints}

    for key in ("image", "crop_affine", "image_size", "K", "box", "sequence", "track", "frame"):
        if key not in record:
            raise ValueError(f"{ctx}: missing required field {key!r}")

    image = record["image"]
    if isinstance(image, np.ndarray):
        try:
            image = encode_image(image, jpeg_quality)
        except ValueError as e:
            raise ValueError(f"{ctx}: field 'image': {e}") from e
    if not isinstance(image, (bytes, bytearray)) or image[:2] != b"\xff\xd8":
        raise ValueError(f"{ctx}: field 'image' must be JPEG bytes or a uint8 HxWx3 array")
    out["image"] = bytes(image)

    for flag in HAS_FLAGS:
        if flag in record and not isinstance(record[flag], (bool, np.bool_)):
            raise ValueError(f"{ctx}: field {flag!r} must be a bool, got {record[flag]!r}")
    for key in _FLOAT_FIELDS:
        shape = tuple(sizes.get(d, d) for d in LOGICAL_SHAPES[key])
        flag = _OPTIONAL.get(key)
        if key not in record:
            if flag and record.get(flag, False):
                raise ValueError(f"{ctx}: {flag}=True but field {key!r} is missing")
            if not flag:
                raise ValueError(f"{ctx}: missing required field {key!r}")
            value = np.zeros(shape, np.float32)
        else:
            value = np.asarray(record[key], np.float32)
        if value.shape != shape:
            raise ValueError(f"{ctx}: field {key!r} has shape {value.shape}, expected {shape}")
        # NaN/inf would survive a has_*=False mask (0 * nan = nan) and poison a loss.
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{ctx}: field {key!r} has non-finite values")
        out[key] = value.reshape(-1)
        if flag:
            out[flag] = int(bool(record.get(flag, key in record)))
    x0, y0, x1, y1 = out["box"]
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"{ctx}: field 'box' must be x0,y0,x1,y1 with x1 > x0, y1 > y0")

    size = np.asarray(record["image_size"])
    if size.shape != (2,) or size.dtype.kind not in "iu" or np.any(size <= 0):
        raise ValueError(
            f"{ctx}: field 'image_size' must be two positive ints (H, W), got {size!r}"
        )
    out["image_size"] = size.astype(np.int64)

    for key in ("track", "frame"):
        if not isinstance(record[key], (int, np.integer)) or isinstance(record[key], bool):
            raise ValueError(f"{ctx}: field {key!r} must be an int, got {record[key]!r}")
        out[key] = int(record[key])
    for key in _STR_FIELDS:
        value = record.get(key, "")
        if not isinstance(value, str):
            raise ValueError(f"{ctx}: field {key!r} must be a str, got {value!r}")
        out[key] = value
    if not out["sequence"]:
        raise ValueError(f"{ctx}: field 'sequence' must be a non-empty str")
    # A body record names its gender, a hand record its side; the other field stays empty.
    other = "hand_side" if subject_field == "gender" else "gender"
    if out[subject_field] not in subject_values:
        raise ValueError(
            f"{ctx}: field {subject_field!r} must be one of {subject_values} for "
            f"{body_model}, got {out[subject_field]!r}"
        )
    if out[other]:
        raise ValueError(f"{ctx}: field {other!r} does not apply to {body_model} records")
    return _serializer.serialize_example(out)


def decode_record(payload: bytes, *, decode_image: bool = False) -> dict[str, Any]:
    """tf.train.Example bytes -> dict with fixed dtypes (see docs/data.md).

    Arrays come back as numpy float32/int64 in their logical shapes, scalars as np.int64 / np.bool_,
    strings as str, and `image` as JPEG bytes (or uint8 HxWx3 RGB with decode_image=True).
    """
    raw = _parser.parse_example(payload)
    # The TFDS parser silently skips spec keys absent from the payload; check them here.
    missing = set(_STORAGE) - set(raw)
    if missing:
        raise ValueError(f"record lacks fields {sorted(missing)}")
    if raw["schema_version"] != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"record has schema_version {raw['schema_version']}, this code reads {SCHEMA_VERSION}"
        )
    j = int(raw["num_joints"])
    out: dict[str, Any] = {
        "schema_version": np.int64(raw["schema_version"]),
        "num_joints": np.int64(j),
        "image": _decode_jpeg(raw["image"]) if decode_image else raw["image"],
        "image_size": np.asarray(raw["image_size"], np.int64),
        "track": np.int64(raw["track"]),
        "frame": np.int64(raw["frame"]),
    }
    sizes = {"J": j, "P": len(raw["pose"])}
    for key in _FLOAT_FIELDS:
        shape = tuple(sizes.get(d, d) for d in LOGICAL_SHAPES[key])
        out[key] = np.asarray(raw[key], np.float32).reshape(shape)
    for flag in HAS_FLAGS:
        out[flag] = np.bool_(raw[flag])
    for key in _STR_FIELDS:
        out[key] = raw[key].decode("utf-8")
    return out


_decode_jpeg = decode_image  # decode_record's keyword shadows the function name


# ---------------------------------------------------------------- naming and atomic files


def shard_name(name: str, split: str, shard: int, num_shards: int) -> str:
    return f"{name}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}"


def index_path(shard_path: str) -> str:
    return shard_path + INDEX_SUFFIX


def shard_for(sequence: str, num_shards: int) -> int:
    """Stable shard of a sequence (CRC32C, not hash(): that is salted per process)."""
    return crc32c(sequence.encode("utf-8")) % num_shards


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f"{kind} must match {_NAME_RE.pattern} (used in file names), got {value!r}"
        )


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_index(path: str) -> dict[str, np.ndarray]:
    ipath = index_path(path)
    try:
        with np.load(ipath, allow_pickle=False) as z:
            index = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise IncompleteShardError(
            f"shard {path} has no index {ipath}: it was never finished "
            "(writer killed or still running)"
        ) from None
    except Exception as e:
        raise IncompleteShardError(f"cannot read shard index {ipath}: {e}") from e
    if int(index.get("schema_version", -1)) != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"index {ipath} has schema_version "
            f"{int(index.get('schema_version', -1))}, this code reads "
            f"{SCHEMA_VERSION}"
        )
    missing = sorted({"offsets", "seq_ids", "seq_names", "track", "frame", "num_joints",
                      "body_model"} - set(index))
    if missing:
        raise IncompleteShardError(f"shard index {ipath} lacks {missing}")
    return index


def shard_complete(path: str) -> bool:
    """True iff `path` is a finished shard: the shard and its index exist and agree in size.

    A shard is renamed to its final name only after its index is written, so a writer killed at
    any point leaves this False. CRCs are not read here (see verify_shard).
    """
    if not (os.path.isfile(path) and os.path.isfile(index_path(path))):
        return False
    try:
        index = _load_index(path)
    except RecordError:
        return False
    return int(index["offsets"][-1]) == os.path.getsize(path)


def verify_shard(path: str) -> int:
    """Reads every record of a finished shard, checking CRCs and the index; returns the count."""
    index = _load_index(path)
    offsets = [int(o) for o in index["offsets"]]
    n = 0
    for n, (offset, _) in enumerate(iter_framed(path), start=1):
        if n > len(offsets) - 1 or offset != offsets[n - 1]:
            raise CorruptRecordError(path, n - 1, None, "record offsets disagree with the index")
    if n != len(offsets) - 1:
        raise CorruptRecordError(
            path, n, None, f"index lists {len(offsets) - 1} records, file has {n}"
        )
    return n


# ---------------------------------------------------------------- writing


class ShardWriter:
    """Writes one shard atomically: `path.tmp`, then `path.index`, then rename to `path`.

    Use as a context manager; an exception inside the block (or abort()) removes the temporary
    file, and an object dropped without close() is never finalized, so nothing half-written ever
    looks complete. Opening removes a previous finished shard at `path` first, for the same reason.
    """

    def __init__(
        self,
        path: str,
        *,
        num_joints: int,
        body_model: str,
        dataset: str | None = None,
        split: str | None = None,
        jpeg_quality: int = 95,
        fsync: bool = True,
    ):
        self.path = os.fspath(path)
        self.num_joints, self.body_model = int(num_joints), body_model
        self.dataset, self.split, self.jpeg_quality, self.fsync = (
            dataset,
            split,
            jpeg_quality,
            fsync,
        )
        if body_model not in BODY_MODELS:
            raise ValueError(f"body_model must be one of {sorted(BODY_MODELS)}, got {body_model!r}")
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        for stale in (index_path(self.path), self.path):  # index first: never "complete" meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        self._tmp = self.path + TMP_SUFFIX
        self._file = open(self._tmp, "wb")
        self._offsets = [0]
        self._seq_ids: list[int] = []
        self._seq_table: dict[str, int] = {}
        self._tracks: list[int] = []
        self._frames: list[int] = []
        self._keys: set[tuple[str, int, int]] = set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def write(self, record: Mapping[str, Any]) -> int:
        """Appends one record; returns its index within the shard."""
        if self.closed:
            raise RecordError(f"shard {self.path} is already closed")
        record = dict(record)
        for key, want in (("dataset", self.dataset), ("split", self.split)):
            if want is not None:
                got = record.setdefault(key, want)
                if got != want:
                    raise ValueError(
                        f"{_context(record)}: field {key!r} is {got!r}, writer is for {want!r}"
                    )
        payload = encode_record(
            record,
            num_joints=self.num_joints,
            body_model=self.body_model,
            jpeg_quality=self.jpeg_quality,
        )
        key = (record["sequence"], int(record["track"]), int(record["frame"]))
        if key in self._keys:  # (sequence, track, frame) is the lookup key: it must be unique
            raise ValueError(f"duplicate record {key} in shard {self.path}")
        self._keys.add(key)
        data = frame_record(payload)
        self._file.write(data)
        self._offsets.append(self._offsets[-1] + len(data))
        self._seq_ids.append(self._seq_table.setdefault(key[0], len(self._seq_table)))
        self._tracks.append(key[1])
        self._frames.append(key[2])
        return len(self._frames) - 1

    def close(self) -> None:
        """Finishes the shard: data synced, index written, then the shard renamed into place."""
        if self.closed:
            return
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())
        self._file.close()
        index = {
            "schema_version": np.int64(SCHEMA_VERSION),
            "offsets": np.asarray(self._offsets, np.int64),
            "seq_names": np.asarray(list(self._seq_table), dtype=np.str_),
            "seq_ids": np.asarray(self._seq_ids, np.int32),
            "track": np.asarray(self._tracks, np.int64),
            "frame": np.asarray(self._frames, np.int64),
            "num_joints": np.int64(self.num_joints),
            "body_model": np.asarray(self.body_model),
        }
        if not len(self._seq_table):
            index["seq_names"] = np.zeros((0,), "<U1")
        atomic_file.atomic_write(index_path(self.path), lambda f: np.savez(f, **index))
        os.replace(self._tmp, self.path)
        if self.fsync:
            _fsync_dir(os.path.dirname(self.path) or ".")
        self.closed = True

    def abort(self) -> None:
        """Drops the shard being written; nothing at `path` is left."""
        if self.closed:
            return
        self.closed = True
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._tmp)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def __del__(self):
        # Dropped without close(): abort, never finalize (the data may be partial).
        try:
            self.abort()
        except Exception:  # e.g. __init__ failed early, or interpreter shutdown
            pass


def load_dataset_info(data_dir: str) -> dict:
    """Reads and checks <data_dir>/dataset_info.json; errors name the path."""
    data_dir = os.fspath(data_dir)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"dataset directory {data_dir} does not exist")
    path = os.path.join(data_dir, DATASET_INFO)
    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} not found: not a dataset directory, or its writer never finished"
        ) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise RecordError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(info, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(info).__name__}")
    if info.get("schema_version") != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has schema_version {info.get('schema_version')!r}, this "
            f"code reads {SCHEMA_VERSION}; reconvert the dataset"
        )
    if not isinstance(info.get("name"), str) or not isinstance(info.get("splits"), dict):
        raise RecordError(f"{path}: needs a 'name' string and a 'splits' object")
    return info


def _split_entry(info: dict, split: str, path: str) -> dict:
    """One split of a dataset_info.json, with the fields a reader uses checked (errors name it)."""
    entry = info["splits"].get(split)
    if entry is None:
        raise MissingSplitError(f"split {split!r} not in {path} (has {sorted(info['splits'])})")

    def bad(what):
        raise RecordError(f"{path}: split {split!r}: {what}")

    if not isinstance(entry, dict) or not isinstance(entry.get("shards"), list):
        bad("needs a 'shards' list")
    counts = []
    for shard in entry["shards"]:
        file, count = (shard.get(k) if isinstance(shard, dict) else None
                       for k in ("file", "num_records"))
        if not isinstance(file, str) or os.path.basename(file) != file or not file:
            bad(f"shard entry {shard!r} lacks a file name (a name, not a path)")
        if type(count) is not int or count < 0:
            bad(f"shard {file!r} has num_records {count!r}")
        counts.append(count)
    if entry.get("num_records") != sum(counts):
        bad(f"num_records {entry.get('num_records')!r} is not its shards' sum ({sum(counts)})")
    # An empty split has neither (finalize_split); the shard indexes must agree with both.
    empty = entry["num_records"] == 0
    body_model = entry.get("body_model")
    if not (isinstance(body_model, str) and body_model in BODY_MODELS
            or empty and body_model is None):
        bad(f"body_model {body_model!r} is not one of {sorted(BODY_MODELS)}")
    if not (type(entry.get("num_joints")) is int or empty and entry.get("num_joints") is None):
        bad(f"num_joints {entry.get('num_joints')!r} is not an int")
    return entry


def finalize_split(out_dir: str, name: str, split: str, num_shards: int) -> dict:
    """Records a split whose shards are all finished in dataset_info.json; returns its entry.

    The entry is rebuilt from the shard indexes alone, so shards written by earlier runs or by
    other processes count. Other splits in the file are kept; a lock serializes concurrent writers.
    """
    out_dir = os.fspath(out_dir)
    paths = [
        os.path.join(out_dir, shard_name(name, split, k, num_shards)) for k in range(num_shards)
    ]
    unfinished = [p for p in paths if not shard_complete(p)]
    if unfinished:
        raise IncompleteShardError(
            f"cannot finalize split {split!r}: unfinished shards {unfinished}"
        )
    shards, sequences, owner = [], {}, {}
    meta = None
    for path in paths:
        index = _load_index(path)
        this = (int(index["num_joints"]), str(index["body_model"]))
        if meta is not None and this != meta:
            raise ValueError(
                f"shard {path} has (num_joints, body_model) {this}, others have {meta}"
            )
        meta = this
        names = index["seq_names"]
        for sid, track, frame in zip(index["seq_ids"], index["track"], index["frame"]):
            key = (str(names[sid]), int(track), int(frame))
            if key in owner:
                raise ValueError(f"record {key} is in both {owner[key]} and {path}")
            owner[key] = path
            sequences.setdefault(key[0], {}).setdefault(str(key[1]), []).append(key[2])
        shards.append(
            {
                "file": os.path.basename(path),
                "num_records": len(index["frame"]),
                "num_bytes": int(index["offsets"][-1]),
            }
        )
    for tracks in sequences.values():
        for frames in tracks.values():
            frames.sort()
    num_joints, body_model = meta if meta else (None, None)
    entry = {
        "num_records": sum(s["num_records"] for s in shards),
        "num_shards": num_shards,
        "num_joints": num_joints,
        "body_model": body_model,
        "pose_dim": BODY_MODELS[body_model][0] if body_model else None,
        "shards": shards,
        "sequences": {s: sequences[s] for s in sorted(sequences)},
    }
    path = os.path.join(out_dir, DATASET_INFO)
    with open(os.path.join(out_dir, "." + DATASET_INFO + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = {"schema_version": SCHEMA_VERSION, "name": name, "splits": {}}
        if os.path.exists(path):
            info = load_dataset_info(out_dir)
            if info.get("name") != name:
                raise ValueError(f"{path} belongs to dataset {info.get('name')!r}, not {name!r}")
        info["splits"][split] = entry
        atomic_file.atomic_write(path, lambda f: f.write(json.dumps(info, indent=1).encode()))
    return entry


class RecordWriter:
    """Writes one split of a dataset as `num_shards` shards, then updates dataset_info.json.

    write(record) routes each record by shard_for(sequence), so a sequence lives in one shard.
    Converters that resume use shard_complete(k) / open_shard(k) per shard instead. close()
    finishes every open shard, writes empty shards for indices never opened and not already
    complete, and only then records the split in dataset_info.json (last, atomically).
    Shards completed by an earlier run are kept unless overwrite=True.
    """

    def __init__(
        self,
        out_dir: str,
        name: str,
        split: str,
        *,
        num_shards: int,
        num_joints: int,
        body_model: str,
        jpeg_quality: int = 95,
        overwrite: bool = False,
        fsync: bool = True,
    ):
        _check_name("name", name)
        _check_name("split", split)
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.out_dir, self.name, self.split, self.num_shards = (
            os.fspath(out_dir),
            name,
            split,
            num_shards,
        )
        self._kw = dict(
            num_joints=num_joints,
            body_model=body_model,
            dataset=name,
            split=split,
            jpeg_quality=jpeg_quality,
            fsync=fsync,
        )
        if body_model not in BODY_MODELS:
            raise ValueError(f"body_model must be one of {sorted(BODY_MODELS)}, got {body_model!r}")
        os.makedirs(self.out_dir, exist_ok=True)
        if overwrite:
            prefix = f"{name}-{split}.tfrecord-"
            for f in os.listdir(self.out_dir):
                if f.startswith(prefix):
                    os.remove(os.path.join(self.out_dir, f))
        self._open: dict[int, ShardWriter] = {}
        self.closed = False

    def shard_path(self, shard: int) -> str:
        return os.path.join(self.out_dir, shard_name(self.name, self.split, shard, self.num_shards))

    def shard_complete(self, shard: int) -> bool:
        return shard_complete(self.shard_path(shard))

    def open_shard(self, shard: int) -> ShardWriter:
        """A ShardWriter for shard `shard` (rewritten from scratch); close() also closes it."""
        if not 0 <= shard < self.num_shards:
            raise ValueError(f"shard {shard} out of range [0, {self.num_shards})")
        if shard in self._open:
            raise RecordError(f"shard {self.shard_path(shard)} is already open in this writer")
        self._open[shard] = ShardWriter(self.shard_path(shard), **self._kw)
        return self._open[shard]

    def write(self, record: Mapping[str, Any]) -> None:
        shard = shard_for(record["sequence"], self.num_shards)
        writer = self._open.get(shard)  # not `or`: an empty ShardWriter is falsy (len 0)
        if writer is None:
            writer = self.open_shard(shard)
        writer.write(record)

    def close(self) -> dict:
        """Finishes all shards and records the split in dataset_info.json; returns its entry."""
        if self.closed:
            raise RecordError("writer already closed")
        for writer in self._open.values():
            writer.close()
        for k in range(self.num_shards):
            if k not in self._open and not self.shard_complete(k):
                ShardWriter(self.shard_path(k), **self._kw).close()
        self.closed = True
        return finalize_split(self.out_dir, self.name, self.split, self.num_shards)

    def abort(self) -> None:
        for writer in self._open.values():
            writer.abort()
        self.closed = True

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# ---------------------------------------------------------------- reading


class RecordReader:
    """Random access to one split: len(), reader[i], lookup(sequence, track, frame), iteration.

    Global index i runs over the shards in dataset_info order, records in write order. Every read
    checks both CRCs and that the record's key matches the index. Files are opened on first use
    and kept open (one descriptor per shard touched; reads use os.pread, so threads can share
    them); pickling drops them and the copy reopens lazily, which makes the reader usable as a
    grain RandomAccessDataSource in multiprocessing workers.

    skip_corrupt=True: a corrupt record is counted in `num_corrupt` (per process) and skipped by
    iteration; reader[i] / lookup() return None for it instead of raising.
    """

    def __init__(
        self, data_dir: str, split: str, *, skip_corrupt: bool = False, decode_images: bool = False
    ):
        self.data_dir, self.split = os.fspath(data_dir), split
        self.skip_corrupt, self.decode_images = skip_corrupt, decode_images
        info = load_dataset_info(self.data_dir)
        info_path = os.path.join(self.data_dir, DATASET_INFO)
        self.name = info["name"]
        self.info = _split_entry(info, split, info_path)
        self.num_joints, self.body_model = self.info["num_joints"], self.info["body_model"]
        self.paths: list[str] = []
        offsets, seq_names, seq_ids, tracks, frames = [], [], [], [], []
        for shard in self.info["shards"]:
            path = os.path.join(self.data_dir, shard["file"])
            if not os.path.isfile(path):
                raise IncompleteShardError(f"shard {path} listed in {info_path} is missing")
            index = _load_index(path)  # refuses a shard without its finished index
            if len(index["frame"]) != shard["num_records"]:
                raise IncompleteShardError(
                    f"index {index_path(path)} lists {len(index['frame'])} records, "
                    f"{info_path} says {shard['num_records']}"
                )
            indexed = (int(index["num_joints"]), str(index["body_model"]))
            if indexed != (self.num_joints, self.body_model):
                raise IncompleteShardError(
                    f"index {index_path(path)} has (num_joints, body_model) {indexed}, "
                    f"{info_path} says {(self.num_joints, self.body_model)}"
                )
            self.paths.append(path)
            offsets.append(index["offsets"])
            seq_ids.append(index["seq_ids"].astype(np.int64) + len(seq_names))
            seq_names.extend(str(s) for s in index["seq_names"])
            tracks.append(index["track"])
            frames.append(index["frame"])
        self._offsets = offsets
        counts = np.array([len(o) - 1 for o in offsets], np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])  # global index of each shard's 1st
        self._build_key_index(seq_names, seq_ids, tracks, frames)
        self.num_corrupt = 0
        self._corrupt: set[int] = set()
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()

    def _build_key_index(self, seq_names, seq_ids, tracks, frames) -> None:
        # (sequence, track) -> (sorted frames, their global indices). Compact numpy arrays instead of
        # a dict per record: cheap to pickle into every worker.
        names = np.asarray(seq_names, dtype=np.str_) if seq_names else np.zeros((0,), "<U1")
        seq = names[np.concatenate(seq_ids)] if seq_ids else names
        track = np.concatenate(tracks) if tracks else np.zeros((0,), np.int64)
        frame = np.concatenate(frames) if frames else np.zeros((0,), np.int64)
        order = np.lexsort((frame, track, seq))
        seq, track, frame = seq[order], track[order], frame[order]
        self._groups: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
        if len(order):
            new = np.flatnonzero((seq[1:] != seq[:-1]) | (track[1:] != track[:-1])) + 1
            for lo, hi in zip(np.concatenate([[0], new]), np.concatenate([new, [len(order)]])):
                f = frame[lo:hi]
                if np.any(f[1:] == f[:-1]):
                    dup = int(f[1:][f[1:] == f[:-1]][0])
                    raise ValueError(
                        f"duplicate record ({seq[lo]!r}, {int(track[lo])}, {dup}) in split "
                        f"{self.split!r} of {self.data_dir}"
                    )
                self._groups[(str(seq[lo]), int(track[lo]))] = (f, order[lo:hi].astype(np.int64))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return (
            f"RecordReader({self.data_dir!r}, {self.split!r}, records={len(self)}, "
            f"shards={len(self.paths)})"
        )

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            with self._lock:
                fd = self._fds.get(shard)
                if fd is None:
                    fd = self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY)
        return fd

    def _locate(self, i: int) -> tuple[int, int, int]:
        """Global index (negative allowed) -> (global index, shard, index within the shard)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(
                f"record index {i} out of range for {n} records in split {self.split!r}"
            )
        i = int(i) % n
        shard = int(np.searchsorted(self._starts, i, side="right")) - 1
        return i, shard, i - int(self._starts[shard])

    def read_payload(self, i: int) -> bytes | None:
        """The CRC-checked tf.train.Example bytes of global record i (None if corrupt and skipped)."""
        i, shard, local = self._locate(i)
        start, end = int(self._offsets[shard][local]), int(self._offsets[shard][local + 1])
        buf = os.pread(self._fd(shard), end - start, start)
        payload, why = _unframe(buf, expected_len=end - start - 16)
        if why:
            return self._corrupt_record(shard, local, i, why)
        return payload

    def report_corrupt(self, i: int, why: str) -> None:
        """For a reader of record i's contents (e.g. its JPEG) that found them broken: raises
        CorruptRecordError naming shard and record, or with skip_corrupt counts it (-> None)."""
        i, shard, local = self._locate(i)
        return self._corrupt_record(shard, local, i, why)

    def _corrupt_record(self, shard: int, local: int, i: int, why: str) -> None:
        if not self.skip_corrupt:
            raise CorruptRecordError(self.paths[shard], local, i, why)
        if i not in self._corrupt:
            self._corrupt.add(i)
            self.num_corrupt = len(self._corrupt)
        return None

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        i, shard, local = self._locate(i)
        payload = self.read_payload(i)
        if payload is None:
            return None
        try:
            record = decode_record(payload, decode_image=self.decode_images)
        except SchemaVersionError:
            raise
        except Exception as e:  # CRC fine but unparseable: report it like any corrupt record
            return self._corrupt_record(shard, local, i, f"cannot parse: {e}")
        key = (record["sequence"], int(record["track"]), int(record["frame"]))
        if self._find(*key) != i:  # shard and index out of step
            return self._corrupt_record(
                shard, local, i, f"record key {key} disagrees with the index"
            )
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for i in range(len(self)):
            record = self[i]
            if record is not None:
                yield record

    def sequences(self) -> list[str]:
        return sorted({s for s, _ in self._groups})

    def tracks_of(self, sequence: str) -> list[int]:
        return sorted(t for s, t in self._groups if s == sequence)

    def frames_of(self, sequence: str, track: int) -> np.ndarray:
        """Sorted frame numbers (int64) of one person track; KeyError if the track is unknown."""
        group = self._groups.get((sequence, int(track)))
        if group is None:
            raise KeyError(
                f"no track (sequence={sequence!r}, track={track}) in split "
                f"{self.split!r} of {self.data_dir}"
            )
        return group[0].copy()

    def _find(self, sequence: str, track: int, frame: int) -> int | None:
        group = self._groups.get((sequence, int(track)))
        if group is not None:
            pos = int(np.searchsorted(group[0], frame))
            if pos < len(group[0]) and group[0][pos] == frame:
                return int(group[1][pos])
        return None

    def index_of(self, sequence: str, track: int, frame: int) -> int:
        """Global index of (sequence, track, frame); KeyError naming the key if absent."""
        i = self._find(sequence, track, frame)
        if i is not None:
            return i
        raise KeyError(
            f"no record (sequence={sequence!r}, track={track}, frame={frame}) in split "
            f"{self.split!r} of {self.data_dir}"
        )

    def lookup(self, sequence: str, track: int, frame: int) -> dict[str, Any] | None:
        return self[self.index_of(sequence, track, frame)]

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"], state["_lock"] = {}, None  # descriptors and locks do not cross processes
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
