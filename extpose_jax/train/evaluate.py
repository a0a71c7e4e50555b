"""Evaluation: every frame of a split scored once, read through sliding windows of T frames.

    metrics = evaluate(predict_fn, records_dir='data/synthetic/records/3dpw', split='test',
                       body_models_dir='data/synthetic/raw/body_models', num_frames=4,
                       batch_size=4)
    write_metrics_json('eval/metrics.json', metrics)   # {'3dpw/mpjpe': ..., 'num_frames': ...}

`predict_fn(batch) -> outputs` is any model: batch is the pipeline's numpy batch (B, T, ...)
(data_pipelines/pipeline.batch_spec), outputs the head's numpy arrays with leading (B, T):
global_orient (1, 3, 3), body_pose (23, 3, 3) or hand_pose (15, 3, 3), betas (10,) and
pred_cam (3,) (HMR 2.0's crop camera). Predictions go through a body-model forward (`bodies`:
JaxBodies by default; the PyTorch evaluation passes its own) and are scored by the dataset's
protocol (eval_protocols.py), so the data iteration, the window bookkeeping and the metrics
are shared by every implementation.

Windows. Each run of consecutive frames of a (sequence, track) is covered by windows of T
frames `hop` apart (default T // 2), the last one aligned to the run's end; a run shorter than
T is one window padded at the end (frame_valid False). A frame is scored from the window whose
centre is nearest (the earlier on a tie), so every frame counts exactly once and away from
window edges where it can. Images (FreiHAND, HInt) are one-frame runs. Batches hold
`batch_size` windows, the last one padded with empty windows: a jitted predict_fn sees one
shape. Crops are the pipeline's deterministic ones (AugmentConfig(enabled=False)); the
2D-pose input is `pose_source`, 'noisy_gt' seeded by the window's global index, so the inputs
do not depend on how many processes share the windows; 'detections' on records without any is
an error (eval_protocols.require_detections).

Several processes: the plan is global and the same everywhere; process p scores windows
p, p + P, ... (process_share), and the protocols' sums are combined at the end (see evaluate).
With a model sharded like training, predict_fn is train/task.make_sharded_predict_fn.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import os
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import augment, pipeline, record_reader
from data_pipelines.atomic_file import atomic_write
from extpose_jax import body_models
from extpose_jax.models import extpose
from extpose_jax.train import collectives, eval_protocols
from extpose_jax.train import overlays as overlays_lib

POSE_KEYS = {'smpl': ('body_pose', 23), 'mano': ('hand_pose', 15)}
# Module level, so every evaluation in a process (one per training eval step) shares the
# compilations.
_posed = jax.jit(extpose.posed_keypoints)
_forward = jax.jit(body_models.forward)


# ------------------------------------------------------------------------------ windows


def window_starts(n: int, num_frames: int, hop: int):
    """Windows over a run of n frames -> (starts (W,), owner (n,)): owner[p] is the window
    frame p is scored from, the one whose centre is nearest (ties: the earlier)."""
    if n <= num_frames:
        starts = np.zeros(1, np.int64)
    else:
        starts = np.r_[np.arange(0, n - num_frames, hop), n - num_frames].astype(np.int64)
    centres = starts + (num_frames - 1) / 2.0
    owner = np.argmin(np.abs(np.arange(n)[:, None] - centres[None, :]), axis=1)
    return starts, owner


@dataclasses.dataclass
class WindowPlan:
    """The windows of a split: pipeline units (`source`) and which of their frames count."""

    source: pipeline.Source
    owned: np.ndarray  # (W, T) bool: frame k of window w is scored from window w

    def __len__(self) -> int:
        return len(self.owned)


def plan_windows(
    reader: record_reader.RecordReader,
    spec: pipeline.DatasetSpec,
    num_frames: int,
    hop: int,
    max_frames: int | None = None,
) -> WindowPlan:
    """Every frame of `reader` once, in (sequence, track, frame) order; with max_frames, only
    the first max_frames of that order (a quick evaluation during training)."""
    flat, offsets, counts, owned = [], [], [], []
    base, budget = 0, math.inf if max_frames is None else max_frames
    for seq in reader.sequences():
        for track in reader.tracks_of(seq):
            frames = reader.frames_of(seq, track)
            cuts = np.flatnonzero(np.diff(frames) > spec.max_frame_gap) + 1
            for run in np.split(frames, cuts):
                if budget <= 0:
                    break
                starts, owner = window_starts(len(run), num_frames, hop)
                flat.append([reader.index_of(seq, track, f) for f in run])
                for w, start in enumerate(starts):
                    mine = np.zeros(num_frames, bool)
                    positions = np.flatnonzero(owner == w)
                    positions = positions[: int(min(len(positions), budget))]
                    mine[positions - start] = True
                    budget -= len(positions)
                    offsets.append(base + start)
                    counts.append(min(num_frames, len(run)))
                    owned.append(mine)
                base += len(run)
    if not offsets:
        raise ValueError(
            f'{reader!r}: nothing to evaluate (no records, or max_frames={max_frames})'
        )
    keep = np.array([m.any() for m in owned])  # a capped run may leave windows with no frame
    source = pipeline.Source(
        spec,
        reader,
        np.concatenate(flat).astype(np.int64),
        np.asarray(offsets, np.int64)[keep],
        np.asarray(counts, np.int32)[keep],
        1,
        {s: i for i, s in enumerate(reader.sequences())},
    )
    return WindowPlan(source, np.stack(owned)[keep])


_ID_KEYS = ('sequence_id', 'sequence_hash', 'track', 'frame', 'record_index', 'position')


def _empty_window(like: dict) -> dict:
    """A padding window: zeros, frame_valid False, ids -1 (as the pipeline pads)."""
    out = {k: np.zeros_like(v) for k, v in like.items()}
    for k in _ID_KEYS:
        out[k] = np.full_like(like[k], -1)
    return out


def process_share(num_windows: int, process_index: int, process_count: int) -> np.ndarray:
    """The global window indices one process scores: p, p + P, p + 2P, ... (shares differ by
    at most one window, and each spreads over the whole split)."""
    return np.arange(process_index, num_windows, process_count)


def iter_batches(
    plan: WindowPlan,
    loader: pipeline.ClipLoader,
    batch_size: int,
    pool: concurrent.futures.Executor,
    units=None,
    num_batches: int | None = None,
):
    """Yields (batch, owned (B, T), how many owned frames were skipped corrupt records) over
    `units` (global window indices; default: the whole plan), padded with empty windows to
    `num_batches` batches (default: as many as the units fill); the next batch loads while one
    is scored."""
    units = np.arange(len(plan)) if units is None else np.asarray(units, np.int64)
    n = len(units)
    num_batches = -(-n // batch_size) if num_batches is None else num_batches
    empty = None

    def submit(lo):  # element = (position, dataset, unit); the GLOBAL index seeds 'noisy_gt'
        return [pool.submit(loader, (int(u), 0, int(u))) for u in units[lo : lo + batch_size]]

    pending = submit(0)
    for lo in range(0, num_batches * batch_size, batch_size):
        windows = [f.result() for f in pending]
        pending = submit(lo + batch_size)
        if empty is None:  # a share may have no window at all: take the shapes from window 0
            empty = _empty_window(windows[0] if windows else loader((0, 0, 0)))
        mine = units[lo : lo + batch_size]
        windows += [empty] * (batch_size - len(windows))
        owned = np.zeros((batch_size, plan.owned.shape[1]), bool)
        owned[: len(mine)] = plan.owned[mine]
        batch = {k: np.stack([w[k] for w in windows]) for k in windows[0]}
        # A frame owned here whose record was corrupt (skip_corrupt) is counted, not scored.
        yield batch, owned & batch['frame_valid'], int((owned & batch['record_skipped']).sum())


# ------------------------------------------------------------------------------ body models


class JaxBodies:
    """Body-model forwards for evaluation, jitted (one compilation per batch shape).

    predicted(outputs): the neutral SMPL (HMR 2.0's 44 keypoints) or the right MANO at the
    predicted parameters -> keypoints_3d, vertices (model frame), cam_t (crop camera), numpy.
    ground_truth(pose, betas, genders): the GT mesh at the batch's axis-angle pose / betas,
    the GENDERED SMPL per frame (genders (B, T) of 'male' / 'female' / 'neutral'; '' = not
    needed, left zero) or the right MANO -> vertices, keypoints (model frame), numpy.
    faces: (F, 3) triangles of the predicted mesh (overlays). Another implementation (smplx)
    passed as evaluate(bodies=...) provides the same three members.
    """

    def __init__(self, kind: str, body_models_dir: str):
        if kind not in POSE_KEYS:
            raise ValueError(f'unknown body model kind {kind!r}; use one of {sorted(POSE_KEYS)}')
        self.kind, self.body_models_dir = kind, body_models_dir
        self.model = self._model('neutral')
        self.faces = body_models.faces(self.model)

    def _model(self, gender: str):
        return body_models.load_from_dir(self.body_models_dir, self.kind, gender)

    def predicted(self, outputs: dict) -> dict:
        out = _posed({k: jnp.asarray(v, jnp.float32) for k, v in outputs.items()}, self.model)
        return {k: np.asarray(out[k]) for k in ('keypoints_3d', 'vertices', 'cam_t')}

    def ground_truth(self, pose, betas, genders=None) -> dict:
        lead = pose.shape[:-1]
        # (N, J, 3), not (N, 3 J): body_models.forward reads a flat batch of N = J poses as one
        # pose of J joints.
        pose = pose.reshape(-1, self.model.num_joints, 3)
        betas = betas.reshape(-1, betas.shape[-1])
        if self.kind == 'mano':
            out = _forward(self.model, pose, betas)
            return {
                k: np.asarray(out[k]).reshape(lead + out[k].shape[1:])
                for k in ('vertices', 'keypoints')
            }
        genders = np.asarray(genders if genders is not None else [], object).reshape(-1)
        if not (genders != '').any():
            raise ValueError("ground_truth: SMPL needs each frame's gender, none given")
        result = {}
        for gender in sorted(set(genders) - {''}):
            out = _forward(self._model(gender), pose, betas)
            pick = genders == gender
            for k in ('vertices', 'keypoints'):
                result.setdefault(k, np.zeros(out[k].shape, np.float32))[pick] = np.asarray(out[k])[
                    pick
                ]
        return {k: v.reshape(lead + v.shape[1:]) for k, v in result.items()}


def _check_outputs(outputs, kind: str, lead: tuple) -> dict:
    pose_key, n = POSE_KEYS[kind]
    expected = {'global_orient': (1, 3, 3), pose_key: (n, 3, 3), 'pred_cam': (3,)}
    if not isinstance(outputs, dict):
        raise TypeError(f'predict_fn must return a dict of arrays, got {type(outputs).__name__}')
    for key, tail in list(expected.items()) + [('betas', None)]:
        if key not in outputs:
            raise KeyError(
                f'predict_fn output lacks {key!r} (has {sorted(outputs)}); a '
                f'{kind} model returns {sorted(expected) + ["betas"]}'
            )
        shape = np.shape(outputs[key])
        if shape[:2] != lead or (tail is not None and shape[2:] != tail):
            want = lead + (tail if tail is not None else ('n_betas',))
            raise ValueError(f'predict_fn output {key!r} has shape {shape}, expected {want}')
    return {k: np.asarray(outputs[k]) for k in list(expected) + ['betas']}


# ------------------------------------------------------------------------------ evaluation


def _record_fields(reader, batch, count, names) -> dict:
    """Record fields the batch does not carry, (B, T, ...) for the counted frames."""
    out = {}
    for b, t in zip(*np.nonzero(count)):
        rec = reader[int(batch['record_index'][b, t])]
        for name in names:
            value = rec[name]
            if name not in out:
                out[name] = (
                    np.full(count.shape, '', object)
                    if isinstance(value, str)
                    else np.zeros(count.shape + np.shape(value), np.asarray(value).dtype)
                )
            out[name][b, t] = value
    return out


def _overlay_name(i: int, sequence: str, track: int, frame: int) -> str:
    safe = re.sub(r'[^A-Za-z0-9_.-]+', '_', sequence)
    return f'{i:04d}_{safe}_t{track}_f{frame}.png'


def _write_overlay(path, batch, pred, b, t, limbs, faces) -> None:
    """Frame (b, t): GT 2D, the predicted keypoints and mesh through the predicted crop camera."""
    to_window = lambda points: eval_protocols.project_to_window(points, pred['cam_t'][b, t])
    overlays_lib.write_overlay(
        path,
        batch['image'][b, t],
        batch['kp2d'][b, t],
        to_window(pred['keypoints_3d'][b, t]),
        limbs,
        to_window(pred['vertices'][b, t]),
        faces,
    )


def evaluate(
    predict_fn: Callable[[dict], dict],
    *,
    records_dir: str,
    split: str,
    body_models_dir: str | None = None,
    num_frames: int,
    batch_size: int,
    hop: int | None = None,
    max_frames: int | None = None,
    pose_source: str = 'gt',
    seed: int = 0,
    overlays: int = 0,
    overlay_dir: str | None = None,
    bodies=None,
    num_threads: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    skip_corrupt: bool = False,
    allgather: Callable[[dict], list] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Scores predict_fn on one split of a records dataset (3dpw, freihand or hint).

    Returns flat metrics {'<dataset>/<metric>': float, ..., 'num_frames': frames scored,
    'num_windows': windows run} (mm for distances; see eval_protocols for each protocol).
    `bodies`: the body-model forward (default JaxBodies(kind, body_models_dir)). `overlays`:
    PNGs of the first that many scored frames written into overlay_dir.

    Several processes (default: jax.process_index() / process_count()): each scores its
    process_share of the windows in batches of `batch_size` windows (this process's rows; the
    global batch is process_count x batch_size), padded so that every process calls predict_fn
    the same number of times (a sharded predict_fn is a collective), then the protocols' sums
    are combined with `allgather` (default collectives.allgather_arrays; pass your own only
    together with process_index / process_count, e.g. to simulate processes). Every process
    returns the same metrics, equal to one process scoring every window; overlays come from
    process 0's share, and only it writes them. `log` gets one line per process: its share.
    """
    for name, value in (('num_frames', num_frames), ('batch_size', batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f'{name} must be an int >= 1, got {value!r}')
    hop = max(1, num_frames // 2) if hop is None else hop
    if not 1 <= hop <= num_frames:
        raise ValueError(
            f'hop must be in [1, num_frames={num_frames}] (every frame covered), got {hop}'
        )
    if pose_source not in pipeline.POSE_SOURCES:
        raise ValueError(f'unknown pose_source {pose_source!r}; use one of {pipeline.POSE_SOURCES}')
    if overlays and not overlay_dir:
        raise ValueError(f'overlays={overlays} needs an overlay_dir')
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if allgather is None and count != jax.process_count():
        raise ValueError(
            f'evaluate: process_count={count} but JAX runs {jax.process_count()} '
            'processes; simulating processes needs your own allgather'
        )
    if not 0 <= index < count:
        raise ValueError(f'evaluate: process_index={index} is not in [0, {count})')
    reader = record_reader.RecordReader(records_dir, split, skip_corrupt=skip_corrupt)
    protocol = eval_protocols.make(reader.name)
    if bodies is None:
        if body_models_dir is None:
            raise ValueError('evaluate: give body_models_dir (or bodies)')
        bodies = JaxBodies(reader.body_model, body_models_dir)
    spec = pipeline.DatasetSpec(reader.name, split=split, path=records_dir)
    plan = plan_windows(reader, spec, num_frames, hop, max_frames)
    if pose_source == 'detections':  # the whole plan: every process decides alike
        eval_protocols.require_detections(reader, plan.source.flat)
    cfg = pipeline.PipelineConfig(
        data_root=os.path.dirname(os.path.abspath(records_dir)),
        datasets=(spec,),
        num_frames=num_frames,
        batch_size=batch_size,
        augment=augment.AugmentConfig(enabled=False),
        pose_source=pose_source,
        seed=seed,
        shuffle=False,
    )
    loader = pipeline.ClipLoader([plan.source], cfg)
    sequences = reader.sequences()
    units = process_share(len(plan), index, count)
    num_batches = math.ceil(math.ceil(len(plan) / count) / batch_size)  # the largest share's
    scored, drawn, skipped = 0, 0, 0
    overlays = overlays if index == 0 else 0
    with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
        for batch, owned, n_skipped in iter_batches(
            plan, loader, batch_size, pool, units, num_batches
        ):
            outputs = _check_outputs(predict_fn(batch), reader.body_model, owned.shape)
            skipped += n_skipped
            if not owned.any():
                continue
            pred = bodies.predicted(outputs)
            fields = _record_fields(reader, batch, owned, protocol.record_fields)
            gt_mesh = None
            if protocol.needs_gt_mesh:
                gt_mesh = bodies.ground_truth(batch['pose'], batch['betas'], fields.get('gender'))
            protocol.update(batch, pred, gt_mesh, owned, fields)
            scored += int(owned.sum())
            for b, t in list(zip(*np.nonzero(owned)))[: max(0, overlays - drawn)]:
                name = _overlay_name(
                    drawn,
                    sequences[batch['sequence_id'][b, t]],
                    batch['track'][b, t],
                    batch['frame'][b, t],
                )
                _write_overlay(
                    os.path.join(overlay_dir, name),
                    batch,
                    pred,
                    b,
                    t,
                    loader.layout.limbs,
                    bodies.faces,
                )
                drawn += 1
    if log is not None:
        log(
            f'evaluation: process {index} of {count} scored {len(units)} of {len(plan)} windows '
            f'({scored} frames) in {num_batches} batches of {batch_size}'
        )
    # One process too goes through state() / merge_states(): a single code path.
    state = {
        **protocol.state(),
        'evaluate/num_frames': np.int64(scored),
        'evaluate/skipped_records': np.int64(skipped),
    }
    states = [state] if count == 1 else (allgather or collectives.allgather_arrays)(state)
    protocol.merge_states(states)
    out = {
        **protocol.result(),
        'num_frames': sum(int(s['evaluate/num_frames']) for s in states),
        'num_windows': len(plan),
        'pose_source': pose_source,
        'input_2d': eval_protocols.INPUT_2D[pose_source],
    }
    if skip_corrupt:
        out['skipped_records'] = sum(int(s['evaluate/skipped_records']) for s in states)
    return out


def _jsonable(value):
    value = value.item() if isinstance(value, np.generic) else value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: a metric without a counted frame
    return value


def write_metrics_json(path: str, metrics: dict) -> None:
    """metrics as a flat JSON object (NaN -> null), written atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = json.dumps({k: _jsonable(v) for k, v in metrics.items()}, indent=1, sort_keys=True)
    atomic_write(path, lambda f: f.write(text.encode() + b'\n'))
