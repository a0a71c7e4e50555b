"""A demo input for the inference command, cut from a (synthetic) raw 3DPW split.

Inference takes what a user has: a video and a 2D detector's keypoints, here OpenPose's
`--write_json` output. A fresh machine has neither, so the synthetic default writes one from its
3DPW test split, in those users' formats (the split's sequence with the most people):

    <out_dir>/clip.mp4                                  the frames, 'mp4v' at FPS
    <out_dir>/openpose/clip_<frame:012d>_keypoints.json  the pkl's poses2d (simulated detections)
    <out_dir>/camera.json        {"K", "image_size": [W, H], "sequence", "fps"}: the true camera
    <out_dir>/ground_truth.npz   pose (A, N, 72), betas (A, 10), trans (A, N, 3), cam_poses
                                 (N, 4, 4), genders (A,), valid (A, N), person_order (N, A)

OpenPose files carry no identity: person_id is -1 (untracked) and each frame lists its people in
a seeded random order. person_order[frame, j] is the actor of the file's j-th person (-1 pads
the row); a person whose detection has fewer than two joints with confidence > 0 is left out, as
read_keypoints would drop it. The folder appears at once (written beside it, then renamed), so an
existing one is complete and is kept.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import zlib

import cv2
import numpy as np

from data_pipelines import convert_3dpw
from data_pipelines import convert_common as cc

# 3DPW's images are every other row of its 60 Hz arrays (img_frame_ids step 2): 30 fps.
FPS = 30
FILES = {
    'video': 'clip.mp4',
    'keypoints': 'openpose',
    'camera': 'camera.json',
    'ground_truth': 'ground_truth.npz',
}


def write_demo(raw_3dpw_dir: str, out_dir: str, split: str = 'test', log=print) -> dict:
    """Writes out_dir (unless complete) from raw_3dpw_dir's `split`; -> {kind: path} of FILES."""
    out_dir = os.path.normpath(os.fspath(out_dir))
    paths = {kind: os.path.join(out_dir, name) for kind, name in FILES.items()}
    if _complete(paths):
        log(f'demo video: cached in {out_dir}')
        return paths
    seq, image_dir = _pick_sequence(os.fspath(raw_3dpw_dir), split)
    frames = _read_frames(image_dir, seq['num_frames'])
    tmp = f'{out_dir}.{secrets.token_hex(4)}.tmp'  # beside it: same file system
    os.makedirs(tmp)
    try:
        _write_all(tmp, seq, frames)
        if os.path.exists(out_dir) and not _complete(paths):
            log(f'demo video: removing the incomplete {out_dir}')  # not ours: ours appear whole
            shutil.rmtree(out_dir)
        try:
            os.replace(tmp, out_dir)
        except OSError:
            if not _complete(paths):
                raise
            return paths  # another writer's folder arrived first: the same files, kept
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename
    log(
        f'demo video: {out_dir} from {_name(seq)} '
        f'({seq["num_actors"]} people, {seq["num_frames"]} frames)'
    )
    return paths


def _complete(paths: dict) -> bool:
    return all(os.path.exists(p) for p in paths.values())


def _name(seq: dict) -> str:
    return os.path.basename(seq['path'])[: -len('.pkl')]


def _pick_sequence(raw_dir: str, split: str):
    """The split's sequence with the most actors (ties: the first by name) and its image folder."""
    split_dir = convert_3dpw.find_split_dir(raw_dir, split)  # names the missing folder
    names = sorted(n for n in os.listdir(split_dir) if n.endswith('.pkl'))
    if not names:
        raise FileNotFoundError(f'no .pkl sequence files in {split_dir}')
    best = None
    for name in names:  # a few small pickles: reading them all is cheap
        seq = convert_3dpw.load_sequence(os.path.join(split_dir, name))
        if best is None or seq['num_actors'] > best['num_actors']:
            best = seq
    image_dir = os.path.join(raw_dir, 'imageFiles', _name(best))
    return best, cc.require_dir(image_dir, f'3DPW image folder of {best["path"]}')


def _read_frames(image_dir: str, n: int) -> list[np.ndarray]:
    """The sequence's n JPEGs as BGR arrays (what VideoWriter takes), all of one size."""
    frames = []
    for i in range(n):
        path = os.path.join(image_dir, f'image_{i:05d}.jpg')
        if not os.path.isfile(path):
            raise FileNotFoundError(f'3DPW frame not found: {path} (the sequence has {n} frames)')
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None:
            raise cc.ConversionError(f'{path}: not a readable image')
        if frames and img.shape != frames[0].shape:
            raise cc.ConversionError(
                f'{path}: size {img.shape[:2]}, frame 0 has {frames[0].shape[:2]}'
            )
        frames.append(img)
    return frames


def _write_all(folder: str, seq: dict, frames: list) -> None:
    H, W = frames[0].shape[:2]
    _write_video(os.path.join(folder, FILES['video']), frames)
    order = _write_openpose(os.path.join(folder, FILES['keypoints']), seq)
    camera = {
        'K': seq['K'].tolist(),
        'image_size': [W, H],
        'sequence': _name(seq),
        'fps': FPS,
    }
    with open(os.path.join(folder, FILES['camera']), 'w') as f:
        json.dump(camera, f)
    np.savez(
        os.path.join(folder, FILES['ground_truth']),
        pose=np.stack(seq['poses']),
        betas=np.stack(seq['betas']),
        trans=np.stack(seq['trans']),
        cam_poses=seq['cam_poses'],
        genders=np.array(seq['genders']),  # a unicode array: loads without pickle
        valid=np.stack(seq['valid']),
        person_order=order,
    )
    # Durable before the rename makes the folder count as complete (atomic_file's rule).
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), 'rb') as f:
                os.fsync(f.fileno())


def _write_video(path: str, frames: list) -> None:
    H, W = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), FPS, (W, H))
    if not writer.isOpened():
        raise RuntimeError(f'{path}: OpenCV cannot write mp4v video (no MPEG-4 encoder?)')
    for frame in frames:
        writer.write(frame)
    writer.release()
    # Read back: a writer that silently drops frames would shift every keypoint file's frame.
    cap = cv2.VideoCapture(path)
    count = 0
    while cap.read()[0]:
        count += 1
    cap.release()
    if count != len(frames):
        raise RuntimeError(f'{path}: wrote {len(frames)} frames, reading it back gives {count}')


def _write_openpose(folder: str, seq: dict) -> np.ndarray:
    """One OpenPose JSON per frame; -> person_order (N, A), -1 padded."""
    os.makedirs(folder)
    n, actors = seq['num_frames'], seq['num_actors']
    # Seeded by the sequence name: rewriting the demo gives the same files.
    rng = np.random.default_rng(zlib.crc32(_name(seq).encode()))
    order = np.full((n, actors), -1, np.int64)
    for frame in range(n):
        people, listed = [], []
        for actor in rng.permutation(actors):
            kp = seq['poses2d'][actor][frame].copy()  # (18, 3) x, y, confidence
            seen = kp[:, 2] > 0
            if seen.sum() < 2:
                continue
            kp[~seen] = 0.0  # OpenPose writes an undetected joint as 0, 0, 0
            listed.append(actor)
            people.append(_person(kp))
        order[frame, : len(listed)] = listed
        data = {'version': 1.3, 'people': people}
        with open(os.path.join(folder, f'clip_{frame:012d}_keypoints.json'), 'w') as f:
            json.dump(data, f)
    return order


def _person(kp: np.ndarray) -> dict:
    """OpenPose 1.3's person: the body only; the other parts are there, empty."""
    person = {'person_id': [-1], 'pose_keypoints_2d': [float(v) for v in kp.reshape(-1)]}
    for part in ('face', 'hand_left', 'hand_right'):
        person[f'{part}_keypoints_2d'] = []
    for part in ('pose', 'face', 'hand_left', 'hand_right'):
        person[f'{part}_keypoints_3d'] = []
    return person
