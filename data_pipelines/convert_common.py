"""Shared plumbing of the raw -> record converters (convert_3dpw, convert_freihand, convert_hint).

A converter lists its work as `Job`s (one per sequence, keyed by the record `sequence` name) and
hands them to `convert_split`, which

- routes every job to shard `shards.shard_for(job.sequence, num_shards)`, so a sequence lives in
  one shard and the assignment is the same on every run;
- skips shards that an earlier run finished (`shards.shard_complete`), unless `overwrite`;
- writes each remaining shard in ONE process (a `ShardWriter` context: an exception inside it
  aborts the shard, so nothing half-written ever looks complete), with `workers` processes
  (spawned, not forked: JAX is not fork-safe; a `WorkerPool` shares them between splits) or
  inline when `workers == 0`;
- shows a tqdm bar fed by the workers through a queue;
- finalizes `dataset_info.json` (`RecordWriter.close`) only when every shard is complete.

If a shard fails, shards not yet started are cancelled, those already running finish (so a rerun
keeps them), and the first error is re-raised with its original type and message.

Errors about the input are raised as `ConversionError` (a ValueError) or `FileNotFoundError`,
always naming the offending path (and the key / sample where there is one).

Common record helpers: reading an image (`read_image`), projecting camera-frame points
(`project`), in-image confidences (`inside_image`), boxes from points (`points_box`), mapping
full-image keypoints into the crop (`keypoints_to_crop`), FreiHAND's MANO with its hands_mean
(`mano_model`) and the body-model forward on numpy batches (`model_forward`); SMPL comes
straight from body_models.load_from_dir.

2D detections for datasets that ship none (FreiHAND, HInt): a user's (or the synthetic world's)
detector output in one JSON file, `DETECTIONS_FILE` in the raw dataset folder unless named
elsewhere: an object mapping an image key (the image's path relative to the dataset folder,
each converter's docstring says which) to J x [x, y, confidence] in full-image pixels,
confidence 0 = not detected (`load_detections`); `detections_to_crop` makes the record's
kp2d_det / has_kp2d_det of one entry.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import dataclasses
import json
import multiprocessing
import os
import queue as queue_lib
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import cv2
import jax
import numpy as np
from tqdm import tqdm

from data_pipelines import cropping, shards
from extpose_jax import body_models as bm
from extpose_jax import errors


class ConversionError(errors.DataFileError):
    """Raw data that cannot be converted; the message names the file (and key / sample)."""


@dataclasses.dataclass
class Job:
    """One unit of work: everything written for one record `sequence`.

    `payload` is whatever the converter's `process` function needs (picklable: it travels to a
    worker process); `units` is its weight on the progress bar.
    """

    sequence: str
    payload: Any
    units: int = 1


# A converter's process function: (job, options, progress) -> iterator of record dicts.
# `progress(n)` advances the bar by n units; the function may also update `stats` (a
# collections.Counter-like dict passed in options['stats']) for the summary.
ProcessFn = Callable[[Job, Mapping[str, Any], Callable[[int], None]], Iterator[dict]]


# ---------------------------------------------------------------------------- small helpers


def require_dir(path: str, what: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f'{what} not found: {path} is not a directory')
    return path


def read_image(path: str) -> np.ndarray:
    """uint8 HxWx3 RGB; FileNotFoundError / ConversionError naming the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'image not found: {path}')
    return decode_image_bytes(np.fromfile(path, np.uint8).tobytes(), path)


def decode_image_bytes(raw: bytes, where: str) -> np.ndarray:
    """An encoded image (JPEG / PNG bytes) -> uint8 HxWx3 RGB; ConversionError naming `where`."""
    data = np.frombuffer(raw, np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ConversionError(
            f'image does not decode (corrupt or not an image): {where} ({data.size} bytes)'
        )
    # libjpeg decodes a truncated file with only a warning (the missing rows come out grey); in a
    # complete JPEG the last scan (SOS, FFDA) is followed by the end-of-image marker (FFD9).
    if raw[:2] == b'\xff\xd8' and raw.rfind(b'\xff\xd9') < raw.rfind(b'\xff\xda'):
        raise ConversionError(
            f'image is truncated (no end-of-image marker after its last scan): '
            f'{where} ({data.size} bytes)'
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def load_json(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f'annotation file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, deep nesting
        raise ConversionError(f'{path} is not valid JSON: {e}') from e


def project(K: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame (..., 3) points -> (pixels (..., 2), z (...)); u ~ K X, divided by z."""
    points = np.asarray(points, np.float64)
    uvw = points @ np.asarray(K, np.float64).T
    z = points[..., 2]
    safe = np.where(np.abs(uvw[..., 2:3]) > 1e-12, uvw[..., 2:3], 1e-12)
    return uvw[..., :2] / safe, z


def inside_image(xy: np.ndarray, image_size, z: np.ndarray | None = None) -> np.ndarray:
    """1.0 where a full-image point lies on the image (pixel centres at integers, so the image
    covers [-0.5, W - 0.5) x [-0.5, H - 0.5)) and, if z is given, in front of the camera."""
    h, w = image_size
    ok = (
        (xy[..., 0] >= -0.5)
        & (xy[..., 0] < w - 0.5)
        & (xy[..., 1] >= -0.5)
        & (xy[..., 1] < h - 0.5)
    )
    if z is not None:
        ok &= z > 0
    return ok.astype(np.float32)


def points_box(xy: np.ndarray) -> np.ndarray:
    """Tight box x0, y0, x1, y1 (float32) of (N, 2) points."""
    xy = np.asarray(xy, np.float64)
    return np.array([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()], np.float32)


def box_overlaps_image(box, image_size) -> bool:
    h, w = image_size
    x0, y0, x1, y1 = box
    return bool(x1 > x0 and y1 > y0 and x1 > -0.5 and y1 > -0.5 and x0 < w - 0.5 and y0 < h - 0.5)


def keypoints_to_crop(xy: np.ndarray, conf: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Full-image (J, 2) + conf (J,) -> (J, 3) float32 in crop pixels; rows with conf 0 keep
    their mapped position (they may be off-image or occluded); use zero_absent for absent ones."""
    out = np.zeros((len(xy), 3), np.float32)
    out[:, :2] = cropping.apply_affine(affine, np.asarray(xy, np.float32))
    out[:, 2] = conf
    return out


DETECTIONS_FILE = 'detections.json'
# Fewer detected joints than this is no detection (3DPW's rule for OpenPose's poses2d).
MIN_DETECTED_JOINTS = 6


def find_detections(folder: str, path: str | None) -> str | None:
    """The detections file to read: `path` if given (it must exist), else DETECTIONS_FILE in the
    raw dataset folder if there is one, else None (records without detections)."""
    if path is not None:
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'detections file not found: {path}')
        return path
    default = os.path.join(folder, DETECTIONS_FILE)
    return default if os.path.isfile(default) else None


def load_detections(path: str, num_joints: int) -> dict[str, np.ndarray]:
    """A detections file (module docstring) -> {image key: (J, 3) float64 x, y, confidence}.
    Anything else is a ConversionError naming the file (and the key)."""
    data = load_json(path)
    if not isinstance(data, dict):
        raise ConversionError(
            f'{path}: expected a JSON object mapping image keys to {num_joints} x '
            f'[x, y, confidence], got a {type(data).__name__}'
        )
    out = {}
    for key, rows in data.items():
        try:
            det = np.asarray(rows, np.float64)
        except (ValueError, TypeError, OverflowError):  # ragged, non-numeric, an int beyond float
            det = np.zeros(0)
        if det.shape != (num_joints, 3):
            raise ConversionError(
                f'{path}: key {key!r}: expected {num_joints} x [x, y, confidence] numbers'
                + (f', got shape {det.shape}' if det.size else '')
            )
        if not np.all(np.isfinite(det)):
            raise ConversionError(f'{path}: key {key!r}: non-finite values')
        out[key] = det
    return out


def detections_to_crop(det: np.ndarray | None, affine: np.ndarray, num_joints: int):
    """One image's (J, 3) full-image detection (None: no entry) -> (kp2d_det (J, 3) float32 in
    crop pixels with undetected joints as zero rows, has_kp2d_det: at least MIN_DETECTED_JOINTS
    joints detected). Confidences are clipped to [0, 1]."""
    if det is None:
        return np.zeros((num_joints, 3), np.float32), False
    conf = np.clip(det[:, 2], 0.0, 1.0)
    kp2d_det = keypoints_to_crop(det[:, :2], conf, affine)
    kp2d_det[conf <= 0] = 0.0
    has = int((conf > 0).sum()) >= MIN_DETECTED_JOINTS
    return (kp2d_det if has else np.zeros_like(kp2d_det)), has


def nominal_K(image_size) -> np.ndarray:
    """HMR 2.0's full-image camera for images without calibration: f = 5000 / 256 * max(H, W),
    principal point at the image centre."""
    h, w = image_size
    f = 5000.0 / 256.0 * max(h, w)
    return np.array([[f, 0, w / 2.0], [0, f, h / 2.0], [0, 0, 1]], np.float32)


# ---------------------------------------------------------------------------- body models

_MODELS: dict = {}
_FORWARD = jax.jit(bm.forward)


def mano_model(body_models: str):
    """(right-hand MANO with HaMeR's 21 keypoints, hands_mean (45,) float64), cached per process."""
    key = ('mano', os.path.abspath(body_models))
    if key not in _MODELS:
        path = bm.find_model_file(body_models, 'MANO_RIGHT')
        raw = bm.load_model_file(path)
        if 'hands_mean' not in raw:
            raise ConversionError(
                f"{path}: missing key 'hands_mean' (needed for FreiHAND's "
                'flat_hand_mean=False poses)'
            )
        mean = np.asarray(raw['hands_mean'], np.float64).reshape(-1)
        if mean.shape != (45,):
            raise ConversionError(
                f"{path}: key 'hands_mean' has shape {mean.shape}, expected (45,)"
            )
        _MODELS[key] = (bm.load_mano(path, is_right=True), mean)
    return _MODELS[key]


def model_forward(model, pose: np.ndarray, betas: np.ndarray, chunk: int = 64) -> dict:
    """body_models.forward on numpy (N, P) axis-angle poses and (N, B) betas, in fixed-size
    chunks (one jit compilation per model); returns numpy float64 vertices/joints/keypoints."""
    pose = np.asarray(pose, np.float32)
    betas = np.asarray(betas, np.float32)
    n = len(pose)
    outs: dict[str, list] = {}
    for lo in range(0, n, chunk):
        p, b = pose[lo : lo + chunk], betas[lo : lo + chunk]
        m = len(p)
        if m < chunk:  # pad: keeps one compiled shape
            p = np.concatenate([p, np.zeros((chunk - m,) + p.shape[1:], p.dtype)])
            b = np.concatenate([b, np.zeros((chunk - m,) + b.shape[1:], b.dtype)])
        out = _FORWARD(model, p, b)
        for k in ('vertices', 'joints', 'keypoints'):
            outs.setdefault(k, []).append(np.asarray(out[k], np.float64)[:m])
    if not outs:
        return {}
    return {k: np.concatenate(v) for k, v in outs.items()}


# ---------------------------------------------------------------------------- the runner

_progress_queue = None


def _init_worker(progress_queue) -> None:
    global _progress_queue
    _progress_queue = progress_queue
    cv2.setNumThreads(1)
    # Converters run the body models on the CPU: N processes must not each grab an accelerator.
    os.environ['JAX_PLATFORMS'] = 'cpu'  # read when jax is first imported
    if 'jax' in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules['jax'].config.update('jax_platforms', 'cpu')


def _write_shard(
    process: ProcessFn,
    prepare,
    path: str,
    writer_kw: dict,
    jobs: list[Job],
    options: dict,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Writes one shard from its jobs; returns counters. Runs in a worker (or inline)."""
    if progress is None:
        q = _progress_queue
        progress = (lambda n: q.put(n)) if q is not None else (lambda n: None)
    stats: dict[str, int] = {}
    options = dict(options, stats=stats)
    n = 0
    with shards.ShardWriter(path, **writer_kw) as shard:
        if prepare is not None:  # inside the writer: a failure here aborts the shard too
            options['prepared'] = prepare(jobs, options)
        for job in jobs:
            for record in process(job, options, progress):
                shard.write(record)
                n += 1
    stats['records_written'] = stats.get('records_written', 0) + n
    stats['sequences_written'] = stats.get('sequences_written', 0) + len(jobs)
    return stats


def _remove_tmp(paths: Iterable[str]) -> None:
    for p in paths:
        for tmp in (p + shards.TMP_SUFFIX, shards.index_path(p) + shards.TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


class WorkerPool:
    """`workers` spawned processes (none when workers <= 0), shared by the splits of one
    conversion so that each process loads and compiles its body models once. A context manager."""

    def __init__(self, workers: int):
        self.workers = int(workers)
        self.executor: cf.ProcessPoolExecutor | None = None
        self.queue = None

    def __enter__(self) -> 'WorkerPool':
        if self.workers > 0:
            ctx = multiprocessing.get_context('spawn')  # JAX is not fork-safe
            self.queue = ctx.Queue()
            # Processes start on demand, so a pool larger than the work costs nothing.
            self.executor = cf.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(self.queue,),
            )
        return self

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


def convert_split(
    *,
    name: str,
    split: str,
    out: str,
    jobs: list[Job],
    process: ProcessFn,
    options: Mapping[str, Any],
    prepare: Callable | None = None,
    num_shards: int,
    workers: int | WorkerPool,
    num_joints: int,
    body_model: str,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    fsync: bool = True,
    desc: str | None = None,
    unit: str = 'it',
    quiet: bool = False,
    shard_of: Callable[[Job], int] | None = None,
) -> dict:
    """Writes one split of a dataset from its jobs (see the module docstring); returns a summary.

    `prepare(jobs, options)`, if given, runs once per shard in its worker before the first record
    (e.g. one batched body-model pass over the shard's samples); its result is options['prepared'].
    `workers`: a process count (0: inline) or a WorkerPool shared with other splits.
    `shard_of(job)`: the job's shard instead of shard_for(job.sequence); for inputs that come
    already sharded (WebDataset tars: one tar, one shard, one worker).

    Summary: num_records / num_sequences (whole split, shards of earlier runs included), shards
    written / skipped this run, seconds, and the counters the process function added (this run's
    shards only).
    """
    t0 = time.time()
    seen: dict[str, int] = {}
    for i, job in enumerate(jobs):
        if job.sequence in seen:
            raise ConversionError(f'two work items map to sequence {job.sequence!r}')
        seen[job.sequence] = i
    writer = shards.RecordWriter(
        out,
        name,
        split,
        num_shards=num_shards,
        num_joints=num_joints,
        body_model=body_model,
        jpeg_quality=jpeg_quality,
        overwrite=overwrite,
        fsync=fsync,
    )
    by_shard: dict[int, list[Job]] = {}
    for job in jobs:
        k = shard_of(job) if shard_of else shards.shard_for(job.sequence, num_shards)
        if not 0 <= k < num_shards:
            raise ValueError(f'job {job.sequence!r} maps to shard {k} of {num_shards}')
        by_shard.setdefault(k, []).append(job)
    todo = {k: v for k, v in sorted(by_shard.items()) if not writer.shard_complete(k)}
    skipped = [k for k in by_shard if k not in todo]
    writer_kw = dict(
        num_joints=num_joints,
        body_model=body_model,
        dataset=name,
        split=split,
        jpeg_quality=jpeg_quality,
        fsync=fsync,
    )
    total = sum(j.units for v in todo.values() for j in v)
    stats: dict[str, int] = {}
    bar = tqdm(
        total=total,
        desc=desc or f'{name}/{split}',
        unit=unit,
        disable=quiet,
        dynamic_ncols=True,
        file=sys.stderr,
    )

    def merge(s: dict) -> None:
        for k, v in s.items():
            if isinstance(v, (int, float, np.integer, np.floating)):
                if k.startswith('max_'):
                    stats[k] = max(stats.get(k, 0), v)
                else:
                    stats[k] = stats.get(k, 0) + v

    error: BaseException | None = None
    own_pool = not isinstance(workers, WorkerPool)
    pool = WorkerPool(min(workers, len(todo))) if own_pool else workers
    try:
        if pool.workers <= 0 or len(todo) == 0:
            for k, shard_jobs in todo.items():
                merge(
                    _write_shard(
                        process,
                        prepare,
                        writer.shard_path(k),
                        writer_kw,
                        shard_jobs,
                        dict(options),
                        progress=bar.update,
                    )
                )
        else:
            with pool if own_pool else contextlib.nullcontext(pool):
                futures = {
                    pool.executor.submit(
                        _write_shard,
                        process,
                        prepare,
                        writer.shard_path(k),
                        writer_kw,
                        v,
                        dict(options),
                    ): k
                    for k, v in todo.items()
                }
                pending = set(futures)
                while pending:
                    done, pending = cf.wait(pending, timeout=0.2, return_when=cf.FIRST_COMPLETED)
                    _drain(pool.queue, bar)
                    for f in done:
                        if f.cancelled():
                            continue
                        exc = f.exception()
                        if exc is not None:
                            if error is None:
                                error = exc
                                for (
                                    other
                                ) in pending:  # not started yet: drop; running: let them finish
                                    other.cancel()
                        else:
                            merge(f.result())
                _drain(pool.queue, bar)
    except BaseException:
        _remove_tmp(writer.shard_path(k) for k in todo if not writer.shard_complete(k))
        raise
    finally:
        bar.close()
    if error is not None:
        _remove_tmp(writer.shard_path(k) for k in todo if not writer.shard_complete(k))
        raise error
    entry = writer.close()
    summary = {
        'num_records': entry['num_records'],
        'num_sequences': len(entry['sequences']),
        'num_shards': num_shards,
        'shards_written': len(todo),
        'shards_skipped': len(skipped),
        'seconds': round(time.time() - t0, 3),
    }
    summary.update({k: (v.item() if hasattr(v, 'item') else v) for k, v in stats.items()})
    return summary


def _drain(q, bar) -> None:
    while True:
        try:
            bar.update(q.get_nowait())
        except queue_lib.Empty:
            return
        except (EOFError, OSError):
            return


# ---------------------------------------------------------------------------- CLI


def add_common_args(
    parser: argparse.ArgumentParser, *, splits: list[str], num_shards: int, body_models: bool = True
) -> None:
    # Input folders are checked while parsing: before any body model or annotation is read.
    parser.add_argument(
        '--root', required=True, type=lambda p: require_dir(p, '--root'), help='raw dataset root'
    )
    if body_models:
        parser.add_argument(
            '--body_models',
            required=True,
            type=lambda p: require_dir(p, '--body_models'),
            help='directory with smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl, '
            'mano/MANO_RIGHT.pkl and SMPL_to_J19.pkl',
        )
    parser.add_argument('--out', required=True, help='output dataset directory')
    parser.add_argument('--splits', nargs='+', default=splits, help=f'default: {" ".join(splits)}')
    parser.add_argument(
        '--workers',
        type=int,
        default=min(8, os.cpu_count() or 1),
        help='worker processes (0: run inline)',
    )
    parser.add_argument('--num_shards', type=int, default=num_shards, help='shards per split')
    parser.add_argument('--crop_size', type=int, default=384)
    parser.add_argument(
        '--margin',
        type=float,
        default=0.25,
        help="crop margin on each side, as a fraction of the box's long side",
    )
    parser.add_argument('--jpeg_quality', type=int, default=95)
    parser.add_argument(
        '--overwrite',
        action='store_true',
        help='rewrite every shard (default: keep shards finished by earlier runs)',
    )
    parser.add_argument('--quiet', action='store_true', help='no progress bar')


def add_detections_arg(parser: argparse.ArgumentParser, folder: str) -> None:
    parser.add_argument(
        '--detections',
        default=None,
        help=f'2D detections JSON (default: {folder}/{DETECTIONS_FILE} if it exists; '
        'see the module docstring for the format)',
    )


def print_summary(summary: dict) -> None:
    print(json.dumps(summary, indent=1, default=str))
