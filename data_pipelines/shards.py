"""A dataset on disk: record shards, their offset indexes, and dataset_info.json.

Layout of a dataset directory:

    dataset_info.json                               written last; lists the finished shards
    <name>-<split>.tfrecord-00000-of-00004          TFRecord framing, tf.train.Example payloads
    <name>-<split>.tfrecord-00000-of-00004.index    npz: record offsets + (sequence, track, frame)

Every file is written atomically, so a writer killed at any point never leaves a shard or a split
that looks finished: a shard is renamed into place only after its index is written, and a split
enters dataset_info.json only after all its shards are finished. record_reader.py reads what
this module writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from typing import Any, Mapping

import numpy as np

from data_pipelines import atomic_file
from data_pipelines.records import (
    BODY_MODELS,
    SCHEMA_VERSION,
    CorruptRecordError,
    IncompleteShardError,
    MissingSplitError,
    RecordError,
    check_schema_version,
    encode_record,
    record_context,
)
from data_pipelines.tfrecord import crc32c, frame_record, iter_framed

DATASET_INFO = 'dataset_info.json'
INDEX_SUFFIX = '.index'
TMP_SUFFIX = '.tmp'

_NAME_RE = re.compile(r'^[A-Za-z0-9_.]+$')  # no '-' or '/': keeps file names unambiguous


# ---------------------------------------------------------------- naming, index, checks


def shard_name(name: str, split: str, shard: int, num_shards: int) -> str:
    return f'{name}-{split}.tfrecord-{shard:05d}-of-{num_shards:05d}'


def index_path(shard_path: str) -> str:
    return shard_path + INDEX_SUFFIX


def shard_for(sequence: str, num_shards: int) -> int:
    """Stable shard of a sequence (CRC32C, not hash(): that is salted per process)."""
    return crc32c(sequence.encode('utf-8')) % num_shards


def _check_name(kind: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(
            f'{kind} must match {_NAME_RE.pattern} (used in file names), got {value!r}'
        )


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_index(path: str) -> dict[str, np.ndarray]:
    ipath = index_path(path)
    try:
        with np.load(ipath, allow_pickle=False) as z:
            index = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise IncompleteShardError(
            f'shard {path} has no index {ipath}: it was never finished '
            '(writer killed or still running)'
        ) from None
    except Exception as e:
        raise IncompleteShardError(f'cannot read shard index {ipath}: {e}') from e
    check_schema_version(int(index.get('schema_version', -1)), f'index {ipath}')
    missing = sorted(
        {'offsets', 'seq_ids', 'seq_names', 'track', 'frame', 'num_joints', 'body_model'}
        - set(index)
    )
    if missing:
        raise IncompleteShardError(f'shard index {ipath} lacks {missing}')
    return index


def shard_complete(path: str) -> bool:
    """True iff `path` is a finished shard: the shard and its index exist and agree in size.

    A shard is renamed to its final name only after its index is written, so a writer killed at
    any point leaves this False. CRCs are not read here (see verify_shard).
    """
    if not (os.path.isfile(path) and os.path.isfile(index_path(path))):
        return False
    try:
        index = load_index(path)
    except RecordError:
        return False
    return int(index['offsets'][-1]) == os.path.getsize(path)


def verify_shard(path: str) -> int:
    """Reads every record of a finished shard, checking CRCs and the index; returns the count."""
    index = load_index(path)
    offsets = [int(o) for o in index['offsets']]
    n = 0
    for n, (offset, _) in enumerate(iter_framed(path), start=1):
        if n > len(offsets) - 1 or offset != offsets[n - 1]:
            raise CorruptRecordError(path, n - 1, None, 'record offsets disagree with the index')
    if n != len(offsets) - 1:
        raise CorruptRecordError(
            path, n, None, f'index lists {len(offsets) - 1} records, file has {n}'
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
            raise ValueError(f'body_model must be one of {sorted(BODY_MODELS)}, got {body_model!r}')
        os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
        for stale in (index_path(self.path), self.path):  # index first: never "complete" meanwhile
            with contextlib.suppress(FileNotFoundError):
                os.remove(stale)
        self._tmp = self.path + TMP_SUFFIX
        self._file = open(self._tmp, 'wb')
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
            raise RecordError(f'shard {self.path} is already closed')
        record = dict(record)
        for key, want in (('dataset', self.dataset), ('split', self.split)):
            if want is not None:
                got = record.setdefault(key, want)
                if got != want:
                    raise ValueError(
                        f'{record_context(record)}: field {key!r} is {got!r}, '
                        f'writer is for {want!r}'
                    )
        payload = encode_record(
            record,
            num_joints=self.num_joints,
            body_model=self.body_model,
            jpeg_quality=self.jpeg_quality,
        )
        key = (record['sequence'], int(record['track']), int(record['frame']))
        if key in self._keys:  # (sequence, track, frame) is the lookup key: it must be unique
            raise ValueError(f'duplicate record {key} in shard {self.path}')
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
            'schema_version': np.int64(SCHEMA_VERSION),
            'offsets': np.asarray(self._offsets, np.int64),
            'seq_names': np.asarray(list(self._seq_table), dtype=np.str_),
            'seq_ids': np.asarray(self._seq_ids, np.int32),
            'track': np.asarray(self._tracks, np.int64),
            'frame': np.asarray(self._frames, np.int64),
            'num_joints': np.int64(self.num_joints),
            'body_model': np.asarray(self.body_model),
        }
        if not len(self._seq_table):
            index['seq_names'] = np.zeros((0,), '<U1')
        atomic_file.atomic_write(index_path(self.path), lambda f: np.savez(f, **index))
        os.replace(self._tmp, self.path)
        if self.fsync:
            _fsync_dir(os.path.dirname(self.path) or '.')
        self.closed = True

    def abort(self) -> None:
        """Drops the shard being written; nothing at `path` is left."""
        if self.closed:
            return
        self.closed = True
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self._tmp)

    def __enter__(self) -> 'ShardWriter':
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
        raise FileNotFoundError(f'dataset directory {data_dir} does not exist')
    path = os.path.join(data_dir, DATASET_INFO)
    try:
        with open(path, encoding='utf-8') as f:
            info = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(
            f'{path} not found: not a dataset directory, or its writer never finished'
        ) from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise RecordError(f'{path} is not valid JSON: {e}') from e
    if not isinstance(info, dict):
        raise RecordError(f'{path}: expected a JSON object, got {type(info).__name__}')
    check_schema_version(info.get('schema_version'), path, '; reconvert the dataset')
    if not isinstance(info.get('name'), str) or not isinstance(info.get('splits'), dict):
        raise RecordError(f"{path}: needs a 'name' string and a 'splits' object")
    return info


def split_entry(info: dict, split: str, path: str) -> dict:
    """One split of a dataset_info.json, with the fields a reader uses checked (errors name it)."""
    entry = info['splits'].get(split)
    if entry is None:
        raise MissingSplitError(f'split {split!r} not in {path} (has {sorted(info["splits"])})')

    def bad(what):
        raise RecordError(f'{path}: split {split!r}: {what}')

    if not isinstance(entry, dict) or not isinstance(entry.get('shards'), list):
        bad("needs a 'shards' list")
    counts = []
    for shard in entry['shards']:
        file, count = (
            shard.get(k) if isinstance(shard, dict) else None for k in ('file', 'num_records')
        )
        if not isinstance(file, str) or os.path.basename(file) != file or not file:
            bad(f'shard entry {shard!r} lacks a file name (a name, not a path)')
        if type(count) is not int or count < 0:
            bad(f'shard {file!r} has num_records {count!r}')
        counts.append(count)
    if entry.get('num_records') != sum(counts):
        bad(f"num_records {entry.get('num_records')!r} is not its shards' sum ({sum(counts)})")
    # An empty split has neither (finalize_split); the shard indexes must agree with both.
    empty = entry['num_records'] == 0
    body_model = entry.get('body_model')
    if not (
        isinstance(body_model, str) and body_model in BODY_MODELS or empty and body_model is None
    ):
        bad(f'body_model {body_model!r} is not one of {sorted(BODY_MODELS)}')
    if not (type(entry.get('num_joints')) is int or empty and entry.get('num_joints') is None):
        bad(f'num_joints {entry.get("num_joints")!r} is not an int')
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
            f'cannot finalize split {split!r}: unfinished shards {unfinished}'
        )
    shards, sequences, owner = [], {}, {}
    meta = None
    for path in paths:
        index = load_index(path)
        this = (int(index['num_joints']), str(index['body_model']))
        if meta is not None and this != meta:
            raise ValueError(
                f'shard {path} has (num_joints, body_model) {this}, others have {meta}'
            )
        meta = this
        names = index['seq_names']
        for sid, track, frame in zip(index['seq_ids'], index['track'], index['frame']):
            key = (str(names[sid]), int(track), int(frame))
            if key in owner:
                raise ValueError(f'record {key} is in both {owner[key]} and {path}')
            owner[key] = path
            sequences.setdefault(key[0], {}).setdefault(str(key[1]), []).append(key[2])
        shards.append(
            {
                'file': os.path.basename(path),
                'num_records': len(index['frame']),
                'num_bytes': int(index['offsets'][-1]),
            }
        )
    for tracks in sequences.values():
        for frames in tracks.values():
            frames.sort()
    num_joints, body_model = meta if meta else (None, None)
    entry = {
        'num_records': sum(s['num_records'] for s in shards),
        'num_shards': num_shards,
        'num_joints': num_joints,
        'body_model': body_model,
        'pose_dim': BODY_MODELS[body_model][0] if body_model else None,
        'shards': shards,
        'sequences': {s: sequences[s] for s in sorted(sequences)},
    }
    path = os.path.join(out_dir, DATASET_INFO)
    with open(os.path.join(out_dir, '.' + DATASET_INFO + '.lock'), 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        info = {'schema_version': SCHEMA_VERSION, 'name': name, 'splits': {}}
        if os.path.exists(path):
            info = load_dataset_info(out_dir)
            if info.get('name') != name:
                raise ValueError(f'{path} belongs to dataset {info.get("name")!r}, not {name!r}')
            # Splits of older readable versions stay as they are (their shards say their own
            # version); the file names the newest one written into it.
            info['schema_version'] = SCHEMA_VERSION
        info['splits'][split] = entry
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
        _check_name('name', name)
        _check_name('split', split)
        if num_shards < 1:
            raise ValueError(f'num_shards must be >= 1, got {num_shards}')
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
            raise ValueError(f'body_model must be one of {sorted(BODY_MODELS)}, got {body_model!r}')
        os.makedirs(self.out_dir, exist_ok=True)
        if overwrite:
            prefix = f'{name}-{split}.tfrecord-'
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
            raise ValueError(f'shard {shard} out of range [0, {self.num_shards})')
        if shard in self._open:
            raise RecordError(f'shard {self.shard_path(shard)} is already open in this writer')
        self._open[shard] = ShardWriter(self.shard_path(shard), **self._kw)
        return self._open[shard]

    def write(self, record: Mapping[str, Any]) -> None:
        shard = shard_for(record['sequence'], self.num_shards)
        writer = self._open.get(shard)  # not `or`: an empty ShardWriter is falsy (len 0)
        if writer is None:
            writer = self.open_shard(shard)
        writer.write(record)

    def close(self) -> dict:
        """Finishes all shards and records the split in dataset_info.json; returns its entry."""
        if self.closed:
            raise RecordError('writer already closed')
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

    def __enter__(self) -> 'RecordWriter':
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
