"""Reading a split back: random access by global index or by (sequence, track, frame).

RecordReader opens a dataset written by shards.py, checks its dataset_info.json against every
shard's index before the first read, and checks both CRCs and the record's key on every read.
It pickles without its file descriptors, so grain's worker processes can each reopen it.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator

import numpy as np

from data_pipelines.records import (
    CorruptRecordError,
    IncompleteShardError,
    SchemaVersionError,
    decode_record,
)
from data_pipelines.shards import (
    DATASET_INFO,
    index_path,
    load_dataset_info,
    load_index,
    split_entry,
)
from data_pipelines.tfrecord import unframe


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
        self.name = info['name']
        self.info = split_entry(info, split, info_path)
        self.num_joints, self.body_model = self.info['num_joints'], self.info['body_model']
        self.paths: list[str] = []
        offsets, seq_names, seq_ids, tracks, frames = [], [], [], [], []
        for shard in self.info['shards']:
            path = os.path.join(self.data_dir, shard['file'])
            if not os.path.isfile(path):
                raise IncompleteShardError(f'shard {path} listed in {info_path} is missing')
            index = load_index(path)  # refuses a shard without its finished index
            if len(index['frame']) != shard['num_records']:
                raise IncompleteShardError(
                    f'index {index_path(path)} lists {len(index["frame"])} records, '
                    f'{info_path} says {shard["num_records"]}'
                )
            indexed = (int(index['num_joints']), str(index['body_model']))
            if indexed != (self.num_joints, self.body_model):
                raise IncompleteShardError(
                    f'index {index_path(path)} has (num_joints, body_model) {indexed}, '
                    f'{info_path} says {(self.num_joints, self.body_model)}'
                )
            self.paths.append(path)
            offsets.append(index['offsets'])
            seq_ids.append(index['seq_ids'].astype(np.int64) + len(seq_names))
            seq_names.extend(str(s) for s in index['seq_names'])
            tracks.append(index['track'])
            frames.append(index['frame'])
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
        names = np.asarray(seq_names, dtype=np.str_) if seq_names else np.zeros((0,), '<U1')
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
                        f'duplicate record ({seq[lo]!r}, {int(track[lo])}, {dup}) in split '
                        f'{self.split!r} of {self.data_dir}'
                    )
                self._groups[(str(seq[lo]), int(track[lo]))] = (f, order[lo:hi].astype(np.int64))

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        return (
            f'RecordReader({self.data_dir!r}, {self.split!r}, records={len(self)}, '
            f'shards={len(self.paths)})'
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
                f'record index {i} out of range for {n} records in split {self.split!r}'
            )
        i = int(i) % n
        shard = int(np.searchsorted(self._starts, i, side='right')) - 1
        return i, shard, i - int(self._starts[shard])

    def read_payload(self, i: int) -> bytes | None:
        """The CRC-checked tf.train.Example bytes of global record i (None if corrupt and skipped)."""
        i, shard, local = self._locate(i)
        start, end = int(self._offsets[shard][local]), int(self._offsets[shard][local + 1])
        buf = os.pread(self._fd(shard), end - start, start)
        payload, why = unframe(buf, expected_len=end - start - 16)
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
            return self._corrupt_record(shard, local, i, f'cannot parse: {e}')
        key = (record['sequence'], int(record['track']), int(record['frame']))
        if self._find(*key) != i:  # shard and index out of step
            return self._corrupt_record(
                shard, local, i, f'record key {key} disagrees with the index'
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
                f'no track (sequence={sequence!r}, track={track}) in split '
                f'{self.split!r} of {self.data_dir}'
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
            f'no record (sequence={sequence!r}, track={track}, frame={frame}) in split '
            f'{self.split!r} of {self.data_dir}'
        )

    def lookup(self, sequence: str, track: int, frame: int) -> dict[str, Any] | None:
        return self[self.index_of(sequence, track, frame)]

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def __enter__(self) -> 'RecordReader':
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
        state['_fds'], state['_lock'] = {}, None  # descriptors and locks do not cross processes
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
