"""People (or hands) followed through a video: per-frame 2D detections linked into tracks.

A keypoint file either names its tracks (OpenPose's person_id, a COCO result's track_id, 3DPW's
actor index), and those ids are kept, or it does not, and detections are linked frame to frame:
each live track predicts where its person is now (constant velocity of every keypoint and of the
box since its last two detections), and an optimal one-to-one assignment (Hungarian, scipy's
linear_sum_assignment) pairs tracks with detections by

    similarity = (box IoU + keypoint similarity) / 2,

the keypoint similarity being an OKS-like mean of exp(-d^2 / (2 (k s)^2)) over the joints both
report, d the pixel distance, s the square root of the box area and k = KP_FALLOFF. Pairs below
`min_similarity` are not linked. The prediction is what keeps two people apart where they cross
(their boxes overlap, their poses look alike, but they move in opposite directions). Only
detections of the same part (body, left hand, right hand) are linked.

Either way a track ends when its person is missing for more than `max_gap` frames; a detection
after that starts a new track, so a track's frames may have holes of at most max_gap frames.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment

KP_FALLOFF = 0.1  # keypoint distance scale, as a fraction of the box's size (sqrt(area))


@dataclasses.dataclass
class Track:
    """One person (or hand) through the video: detections in increasing frame order."""

    id: int
    part: str
    detections: list = dataclasses.field(default_factory=list)

    @property
    def frames(self) -> list:
        return [d.frame for d in self.detections]


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two x0, y0, x1, y1 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def keypoint_similarity(a: np.ndarray, b: np.ndarray, box: np.ndarray) -> float:
    """OKS-like similarity in [0, 1] of two (J, 3) keypoint sets (0 when no joint is shared)."""
    both = (a[:, 2] > 0) & (b[:, 2] > 0)
    if not both.any():
        return 0.0
    scale = KP_FALLOFF * np.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 1.0))
    d2 = ((a[both, :2] - b[both, :2]) ** 2).sum(-1)
    return float(np.exp(-d2 / (2 * scale**2)).mean())


def similarity(predicted: tuple, det) -> float:
    kp, box = predicted
    return 0.5 * box_iou(box, det.box) + 0.5 * keypoint_similarity(kp, det.keypoints, det.box)


def _predict(track: Track, frame: int) -> tuple:
    """(keypoints, box) the track's person should have at `frame`: constant velocity from its
    last two detections (a one-detection track stays put). Undetected joints stay undetected."""
    last = track.detections[-1]
    kp, box = last.keypoints.copy(), np.asarray(last.box, np.float64).copy()
    if len(track.detections) < 2:
        return kp, box
    prev = track.detections[-2]
    dt = (frame - last.frame) / (last.frame - prev.frame)
    both = (last.keypoints[:, 2] > 0) & (prev.keypoints[:, 2] > 0)
    kp[both, :2] += dt * (last.keypoints[both, :2] - prev.keypoints[both, :2])
    box += dt * (np.asarray(last.box) - np.asarray(prev.box))
    return kp, box


def _by_given_ids(frames: dict, max_gap: int) -> list:
    tracks, live = [], {}
    for f in sorted(frames):
        for det in frames[f]:
            key = (det.part, det.track_id)
            t = live.get(key)
            if t is None or f - t.detections[-1].frame > max_gap + 1:
                t = live[key] = Track(len(tracks), det.part)
                tracks.append(t)
            t.detections.append(det)
    return tracks


def _linked(frames: dict, max_gap: int, min_similarity: float) -> list:
    tracks = []
    for f in sorted(frames):
        dets = frames[f]
        for part in sorted({d.part for d in dets}):
            mine = [d for d in dets if d.part == part]
            live = [
                t for t in tracks if t.part == part and f - t.detections[-1].frame <= max_gap + 1
            ]
            sim = np.zeros((len(live), len(mine)))
            for i, t in enumerate(live):
                pred = _predict(t, f)
                for j, d in enumerate(mine):
                    sim[i, j] = similarity(pred, d)
            rows, cols = linear_sum_assignment(-sim) if sim.size else ((), ())
            taken = set()
            for i, j in zip(rows, cols):
                if sim[i, j] >= min_similarity:
                    live[i].detections.append(mine[j])
                    taken.add(j)
            for j, d in enumerate(mine):
                if j not in taken:
                    tracks.append(Track(len(tracks), part, [d]))
    return tracks


def link(frames: dict, max_gap: int = 2, min_similarity: float = 0.2) -> list:
    """{frame: [Detection]} -> [Track], ids 0, 1, ... in order of first appearance.

    The file's track ids when every detection has one, else frame-to-frame linking (module
    docstring). Detections need .frame, .part, .box (x0, y0, x1, y1), .keypoints (J, 3) and
    .track_id (data_pipelines.keypoint_files.Detection).
    """
    if max_gap < 0:
        raise ValueError(f'max_gap must be >= 0, got {max_gap}')
    all_dets = [d for f in frames for d in frames[f]]
    if all_dets and all(d.track_id is not None for d in all_dets):
        return _by_given_ids(frames, max_gap)
    return _linked(frames, max_gap, min_similarity)
