"""One model over one video: detections -> tracks -> crops -> windows -> people in the full image.

    result = run(cfg, variables, body_models_dir, frames, detections, K=None, ...)

Three passes, so that memory stays bounded by the crops (JPEG, ~30 kB each), not the frames:
decode the video once and crop every tracked detection (people.make_crop); run the model over
every track's windows in fixed-size batches (one compilation; the batch is split over the local
devices along 'data', the model laid out as in training); map each owned frame back to the full
image (people.to_full_image). Rendering the overlay is a separate pass (overlay.py) that decodes
the video again.

The result's `rows` are per person and frame, sorted by (frame, track); see `ROW_FIELDS`.
"""

from __future__ import annotations

import collections
import dataclasses
import time

import jax
import numpy as np
from tqdm import tqdm

from data_pipelines.keypoint_files import KeypointFileError
from extpose_jax import errors
from extpose_jax.infer import camera, people, tracking
from extpose_jax.train import evaluate
from extpose_jax.train import sharding as shd
from extpose_jax.train import task as task_lib

# Per row: (name, what). Poses are axis-angle with the global orientation first (SMPL 72, MANO
# 48); a left hand's is the mirror-conjugate of the right MANO the model predicts (HaMeR's
# convention: pose it with the right MANO and negate x of the vertices).
ROW_FIELDS = (
    ('frame', 'frame index in the video'),
    ('track', 'track id: 0, 1, ... in order of first appearance'),
    ('person_id', "the file's person / track id (-1: none; a person's hands share it)"),
    (
        'person',
        'the body track the row belongs to: its own track for a body; for a hand, the '
        'track of the body in the same OpenPose entry (-1: none), so both hands stay together',
    ),
    ('is_right', 'True for bodies and right hands'),
    ('score', "the detection's score"),
    ('box', 'x0, y0, x1, y1 of the person box the crop was made from (pixels)'),
    ('box_center', "centre of HMR 2.0's square box the camera refers to (pixels)"),
    ('box_size', 'its side (pixels)'),
    ('pose', 'axis-angle pose (SMPL 72 / MANO 48)'),
    ('betas', 'shape (10)'),
    ('pred_cam', 'the crop camera (s, tx, ty) the model predicted'),
    ('cam_t', "the body's translation in the full image's camera (metres)"),
    ('joints_3d', "3D joints in the camera frame (metres): HMR 2.0's 44 / hand-21"),
    ('joints_2d', 'the same projected to the full image (pixels)'),
)


@dataclasses.dataclass
class Result:
    rows: dict  # ROW_FIELDS -> (N, ...) arrays (+ 'vertices' (N, V, 3) float32)
    tracks: list  # tracking.Track, the ones processed
    num_frames: int
    timings: dict  # seconds: decode_crop, model, total
    skipped: dict  # why -> count (detections the model's kind does not take)


def select_detections(detections: dict, kind: str) -> tuple[dict, dict]:
    """The detections a `kind` model takes ({frame: [...]}, every frame kept) and what it left."""
    parts = people.PARTS[kind]
    kept, skipped = {}, collections.Counter()
    for f, dets in detections.items():
        kept[f] = [d for d in dets if d.part in parts]
        for d in dets:
            if d.part not in parts:
                skipped[f'part {d.part}'] += 1
    return kept, dict(skipped)


def hand_owners(detections: dict, max_gap: int) -> dict:
    """(frame, entry) -> body track id. OpenPose lists a person's body and hands in one entry;
    linking the bodies (as a body model's run would) names the person each hand belongs to."""
    bodies = {
        f: [d for d in dets if d.part == 'body' and d.entry is not None]
        for f, dets in detections.items()
    }
    return {
        (d.frame, d.entry): tr.id
        for tr in tracking.link(bodies, max_gap=max_gap)
        for d in tr.detections
    }


def _check_frames(detections: dict, num_frames: int, source: str) -> None:
    late = [f for f, dets in detections.items() if dets and f >= num_frames]
    if late:
        raise KeypointFileError(
            f'{source}: detections for frame {min(late)} (and {len(late) - 1} more frames), '
            f'but the video has {num_frames} frames (0 .. {num_frames - 1})'
        )


def model_predict_fn(cfg, variables, body_models_dir: str):
    """The config's model as batch -> head outputs: jitted, the batch split over this process's
    devices along 'data', the variables laid out as in training (a mismatch names --checkpoint).
    Batches must hold a multiple of jax.local_device_count() windows (run() pads them so)."""
    task = task_lib.Task(cfg, body_models_dir)
    mesh = shd.make_mesh({'data': -1}, jax.local_devices())
    try:
        placed, shardings = task.place_variables(variables, mesh, source='--checkpoint')
    except ValueError as e:  # the variables are not this config's model: the user's input
        raise errors.UserError(str(e)) from None
    return task_lib.make_sharded_predict_fn(cfg, placed, shardings, mesh, task)


def run(
    cfg,
    variables,
    body_models_dir: str,
    frames,
    detections: dict,
    *,
    K=None,
    keypoints_source: str = 'keypoints',
    batch_size: int = 8,
    hop: int | None = None,
    box_scale: float = people.KEYPOINT_BOX_SCALE,
    max_gap: int = 2,
    keep_vertices: bool = True,
    progress: bool = True,
    predict_fn=None,
) -> Result:
    """frames: video_io.Frames; detections: keypoint_files.read_keypoints output.

    predict_fn: model_predict_fn's (built here when None; pass one to reuse its compilation), or
    a stand-in (the tests' oracle): batch -> head outputs (B, T, ...). The batch holds
    augment_clip's fields and 'frame' (B, T), the video frame (-1: padding).
    """
    t_start = time.perf_counter()
    kind, num_t = cfg.model.kind, int(cfg.data.num_frames)
    hop = hop or max(1, num_t // 2)
    K = camera.intrinsics(frames.size_wh, K)
    owners = hand_owners(detections, max_gap) if kind == 'mano' else {}
    detections, skipped = select_detections(detections, kind)
    tracks = tracking.link(detections, max_gap=max_gap)
    where = {}  # id(detection) -> (track index, position in the track)
    for ti, tr in enumerate(tracks):
        for pos, det in enumerate(tr.detections):
            where[id(det)] = (ti, pos)
    crops = [[None] * len(tr.detections) for tr in tracks]

    # Pass 1: decode, crop every tracked detection.
    num_frames = 0
    by_frame = {f: dets for f, dets in detections.items() if dets}
    bar = tqdm(frames, desc='decode + crop', unit='frame', disable=not progress, leave=False)
    for f, rgb in bar:
        num_frames = f + 1
        for det in by_frame.get(f, ()):
            ti, pos = where[id(det)]
            crops[ti][pos] = people.make_crop(rgb, det, kind, box_scale)
    _check_frames(by_frame, num_frames, keypoints_source)
    t_crops = time.perf_counter()

    # Pass 2: windows -> model -> full image.
    if predict_fn is None:
        predict_fn = model_predict_fn(cfg, variables, body_models_dir)
    devices = jax.local_device_count()
    batch_size = -(-batch_size // devices) * devices
    bodies = evaluate.JaxBodies(kind, body_models_dir)
    windows = [
        w
        for ti, tr in enumerate(tracks)
        for w in people.track_windows(ti, len(tr.detections), num_t, hop)
    ]
    rows = collections.defaultdict(list)
    t_model = 0.0
    bar = tqdm(
        total=sum(len(tr.detections) for tr in tracks),
        desc='model',
        unit='frame',
        disable=not progress,
        leave=False,
    )
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        inputs = [people.window_inputs(crops[w.track], w, kind) for w in chunk]
        for x, w in zip(inputs, chunk):
            x['frame'] = np.array([crops[w.track][i].frame if i >= 0 else -1 for i in w.crops])
        pad = {k: np.zeros_like(v) for k, v in inputs[0].items()}
        pad['frame'] = np.full_like(inputs[0]['frame'], -1)
        batch = {
            k: np.stack([x[k] for x in inputs] + [pad[k]] * (batch_size - len(chunk)))
            for k in inputs[0]
        }
        t0 = time.perf_counter()
        out = predict_fn(batch)
        posed = bodies.predicted(out)
        t_model += time.perf_counter() - t0
        for b, w in enumerate(chunk):
            tr = tracks[w.track]
            for t, (pos, owned) in enumerate(zip(w.crops, w.owned)):
                if not owned:
                    continue
                det = tr.detections[pos]
                center, side = people.full_image_box(inputs[b], t)
                person = people.to_full_image(
                    {k: v[b, t] for k, v in out.items()},
                    {k: v[b, t] for k, v in posed.items()},
                    center,
                    side,
                    bool(inputs[b]['flipped'][t]),
                    K,
                    kind,
                )
                rows['frame'].append(det.frame)
                rows['track'].append(tr.id)
                rows['person_id'].append(-1 if det.track_id is None else det.track_id)
                rows['person'].append(
                    tr.id if kind == 'smpl' else owners.get((det.frame, det.entry), -1)
                )
                rows['is_right'].append(det.part != 'left_hand')
                rows['score'].append(det.score)
                rows['box'].append(crops[w.track][pos].record['box'])
                rows['box_center'].append(center)
                rows['box_size'].append(side)
                rows['pred_cam'].append(out['pred_cam'][b, t])
                for k in ('pose', 'betas', 'cam_t', 'joints_3d', 'joints_2d'):
                    rows[k].append(person[k])
                if keep_vertices:
                    rows['vertices'].append(person['vertices'])
                bar.update()
    bar.close()
    return Result(
        _as_arrays(rows, kind, keep_vertices),
        tracks,
        num_frames,
        {
            'decode_crop': t_crops - t_start,
            'model': t_model,
            'total': time.perf_counter() - t_start,
        },
        skipped,
    )


_EMPTY = {  # (trailing shape, dtype) of each field when nobody was found
    'frame': ((), np.int64),
    'track': ((), np.int64),
    'person_id': ((), np.int64),
    'person': ((), np.int64),
    'is_right': ((), np.bool_),
    'score': ((), np.float32),
    'box': ((4,), np.float32),
    'box_center': ((2,), np.float32),
    'box_size': ((), np.float32),
    'betas': ((10,), np.float32),
    'pred_cam': ((3,), np.float32),
    'cam_t': ((3,), np.float32),
}


def _as_arrays(rows: dict, kind: str, keep_vertices: bool) -> dict:
    j = 44 if kind == 'smpl' else 21
    shapes = {
        **_EMPTY,
        'pose': (((72 if kind == 'smpl' else 48),), np.float32),
        'joints_3d': ((j, 3), np.float32),
        'joints_2d': ((j, 2), np.float32),
    }
    if keep_vertices:
        shapes['vertices'] = (((6890 if kind == 'smpl' else 778), 3), np.float32)
    out = {}
    for k, (tail, dtype) in shapes.items():
        out[k] = np.asarray(rows[k], dtype) if rows[k] else np.zeros((0,) + tail, dtype)
    order = np.lexsort((out['track'], out['frame']))
    return {k: v[order] for k, v in out.items()}


def track_jitter(rows: dict) -> dict:
    """Per track: the mean acceleration (mm / frame^2) of its root-relative 3D joints (pose
    jitter) and of its translation (the jitter a video model is judged by), over frames whose
    neighbours are detected too."""
    out = {}
    for tid in np.unique(rows['track']):
        sel = np.flatnonzero(rows['track'] == tid)
        frames = rows['frame'][sel]
        joints = rows['joints_3d'][sel].astype(np.float64)
        rel = joints - joints.mean(1, keepdims=True)
        t = rows['cam_t'][sel].astype(np.float64)
        ok = (frames[2:] - frames[1:-1] == 1) & (frames[1:-1] - frames[:-2] == 1)
        acc = lambda x: np.linalg.norm(x[2:] - 2 * x[1:-1] + x[:-2], axis=-1)
        n = int(ok.sum())
        out[int(tid)] = {
            'frames': int(len(sel)),
            'first': int(frames[0]),
            'last': int(frames[-1]),
            'accel_mm': float(acc(rel).mean(-1)[ok].mean() * 1000) if n else None,
            'root_accel_mm': float(acc(t)[ok].mean() * 1000) if n else None,
        }
    return out
