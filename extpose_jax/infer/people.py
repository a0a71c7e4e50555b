"""People in a user's video -> the model's inputs, and the model's outputs -> the full image.

The model must see a user's frames exactly as it saw its training records, so nothing here
re-implements the crop: each detection becomes a *pseudo-record* (what a converter writes for a
labelled frame, minus the labels) and goes through the training code itself:

  1. the person's box (`person_box`): the detection's box, grown by `box_scale` when it is the
     tight box of the keypoints (a keypoint box misses the head top, the hands' and feet's
     ends; the converters' boxes bound the whole mesh);
  2. the converters' crop (cropping.crop_and_encode: a square 384-px JPEG with a 25% margin and
     its full -> crop affine), stored JPEG-encoded, as a record holds it, so a long video's
     crops fit in memory;
  3. augment.augment_clip with the identity draw and pose_source='detections': the 256 x 192
     window, the keypoints in the records' layout (HMR 2.0's 44 or hand-21) through the same
     affine, left hands mirrored as HaMeR does.

Per track, windows of the model's T frames cover its detections as evaluation's do
(evaluate.window_starts: each frame is taken from the window whose centre is nearest). A track's
holes (at most tracking's max_gap frames) are skipped: the window holds its detections in order.

Back to the full image (`to_full_image`): the crop camera (s, tx, ty) refers to HMR 2.0's square
box of the window (augment's box_center / box_size, in window pixels), mapped back through the
inverse of the window's affine to a box in the full image, then camera.crop_to_full. A mirrored
(left) hand is un-mirrored first, as HaMeR's demo does: x of the vertices and joints and tx of
the camera negated, the pose conjugated (augment.mirror_pose).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from data_pipelines import augment, cropping
from extpose_jax import geometry, skeletons
from extpose_jax.infer import camera
from extpose_jax.train import config as config_lib
from extpose_jax.train import evaluate  # the one definition of the window tiling

CROP_SIZE, CROP_MARGIN, JPEG_QUALITY = 384, 0.25, 95  # the converters' defaults
# Keypoint box -> person box: the median ratio of the mesh box's side to the OpenPose-18
# detections' box side (both expanded to 3:4) on the synthetic 3DPW test split is 1.13
# (10-90%: 1.07-1.18); the boxes of a person detector need no growth.
KEYPOINT_BOX_SCALE = 1.15
PARTS = {'smpl': ('body',), 'mano': ('left_hand', 'right_hand')}


def person_box(det, box_scale: float = KEYPOINT_BOX_SCALE) -> np.ndarray:
    """x0, y0, x1, y1 of the person: a detector's box as given, a keypoint box grown about its
    centre by box_scale (and to at least 8 px, so that two joints on a line still crop)."""
    box = np.asarray(det.box, np.float64)
    scale = 1.0 if det.box_given else box_scale
    center, half = (box[:2] + box[2:]) / 2, np.maximum((box[2:] - box[:2]) / 2 * scale, 4.0)
    return np.concatenate([center - half, center + half])


@dataclasses.dataclass
class Crop:
    """One detection as a converter would have stored it (no labels)."""

    frame: int
    jpeg: bytes
    record: dict


def make_crop(frame_rgb: np.ndarray, det, kind: str, box_scale: float) -> Crop:
    """A detection in a decoded frame -> its pseudo-record (module docstring, steps 1-2)."""
    box = person_box(det, box_scale)
    jpeg, affine = cropping.crop_and_encode(frame_rgb, box, CROP_SIZE, CROP_MARGIN, JPEG_QUALITY)
    layout = config_lib.RECORD_LAYOUT[kind]
    kp = skeletons.convert(det.keypoints.astype(np.float32), det.layout, layout)
    kp_crop = np.zeros_like(kp)
    seen = kp[:, 2] > 0
    kp_crop[seen, :2] = cropping.apply_affine(affine, kp[seen, :2])
    kp_crop[seen, 2] = kp[seen, 2]
    j, p = skeletons.get_layout(layout).num_joints, (72 if kind == 'smpl' else 48)
    record = {
        'box': box.astype(np.float32),
        'crop_affine': affine,
        'K': np.eye(3, dtype=np.float32),  # only feeds the labels' intrinsics, unused here
        'kp2d': np.zeros((j, 3), np.float32),
        'kp3d': np.zeros((j, 4), np.float32),
        'pose': np.zeros((p,), np.float32),
        'betas': np.zeros((10,), np.float32),
        'kp2d_det': kp_crop,
        'has_kp2d_det': bool(seen.any()),
        'image_size': np.asarray(frame_rgb.shape[:2], np.int64),
        'hand_side': 'left' if det.part == 'left_hand' else 'right',
        **{k: False for k in ('has_kp2d', 'has_kp3d', 'has_pose', 'has_betas')},
    }
    return Crop(det.frame, jpeg, record)


@dataclasses.dataclass(frozen=True)
class Window:
    """T positions of one track: indices into the track's crops (-1: padding), and which of
    them this window reports (owned)."""

    track: int
    crops: tuple
    owned: tuple


def track_windows(track_id: int, n: int, num_frames: int, hop: int) -> list[Window]:
    """Windows over a track of n crops (evaluation's tiling; short tracks padded at the end)."""
    starts, owner = evaluate.window_starts(n, num_frames, hop)
    out = []
    for w, s in enumerate(starts):
        idx = tuple(int(s + k) if s + k < n else -1 for k in range(num_frames))
        owned = tuple(i >= 0 and owner[i] == w for i in idx)
        out.append(Window(track_id, idx, owned))
    return out


def window_inputs(crops: list, window: Window, kind: str) -> dict:
    """augment_clip on the window's pseudo-records (module docstring, step 3)."""
    frames = [crops[i].record if i >= 0 else None for i in window.crops]
    images = [
        cv2.imdecode(np.frombuffer(crops[i].jpeg, np.uint8), cv2.IMREAD_COLOR) if i >= 0 else None
        for i in window.crops
    ]
    return augment.augment_clip(
        frames,
        images,
        augment.IDENTITY,
        body_model=kind,
        layout=skeletons.get_layout(config_lib.RECORD_LAYOUT[kind]),
        pose_source='detections',
    )


def full_image_box(inputs: dict, t: int) -> tuple[np.ndarray, float]:
    """(centre (2,), side) of HMR 2.0's square box of frame t in full-image pixels."""
    a = augment.as3x3(inputs['affine'][t])
    center = augment.apply(np.linalg.inv(a), inputs['box_center'][t].astype(np.float64))
    sigma = float(np.sqrt(abs(np.linalg.det(a[:2, :2]))))
    return center, float(inputs['box_size'][t]) / sigma


def to_full_image(pred: dict, posed: dict, center, side: float, mirrored: bool, K, kind: str):
    """One frame's head outputs (`pred`: global_orient (1, 3, 3), body/hand pose (J, 3, 3),
    betas, pred_cam) and their posed model (`posed`: keypoints_3d, vertices in the model frame)
    -> the person in the full image's camera K (module docstring). Returns a dict of numpy
    float32 arrays: pose (axis-angle, 72 / 48), betas, cam_t (3,), joints_3d (J, 3) and vertices
    (V, 3) in the camera frame (metres), joints_2d (J, 2) pixels."""
    pose_key = 'body_pose' if kind == 'smpl' else 'hand_pose'
    rot = np.concatenate([pred['global_orient'], pred[pose_key]], 0)
    pose = np.asarray(geometry.matrix_to_axis_angle(rot), np.float64).reshape(-1)
    cam = np.asarray(pred['pred_cam'], np.float64).copy()
    joints = np.asarray(posed['keypoints_3d'], np.float64).copy()
    verts = np.asarray(posed['vertices'], np.float64).copy()
    if mirrored:  # the model saw the mirror image: a right hand
        cam[1] = -cam[1]
        joints[:, 0], verts[:, 0] = -joints[:, 0], -verts[:, 0]
        pose = augment.mirror_pose(pose.astype(np.float32), kind).astype(np.float64)
    t = camera.crop_to_full(cam, center, side, K)
    joints, verts = joints + t, verts + t
    uv = joints @ np.asarray(K, np.float64).T
    return {
        'pose': pose.astype(np.float32),
        'betas': np.asarray(pred['betas'], np.float32),
        'cam_t': t.astype(np.float32),
        'joints_3d': joints.astype(np.float32),
        'joints_2d': (uv[:, :2] / uv[:, 2:]).astype(np.float32),
        'vertices': verts.astype(np.float32),
    }
