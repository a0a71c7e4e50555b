"""3DPW raw download -> records (the released sequenceFiles / imageFiles layout).

    python -m data_pipelines.convert_3dpw --root RAW --body_models DIR --out DIR \
        [--splits train validation test] [--workers N] [--num_shards K] [--crop_size 384]

or `convert(root, body_models, out, ...)`, which returns a summary dict.

Input: `RAW/sequenceFiles/{train,validation,test}/<seq>.pkl` (a nested
`RAW/sequenceFiles/sequenceFiles/...` from unzipping is accepted) and
`RAW/imageFiles/<seq>/image_{i:05d}.jpg`. The pkl files are the list of sequences (an image
folder without a pkl is ignored). They are Python-2 pickles, read by extpose_jax.safe_pickle (numpy
arrays and plain containers; nothing in the file is imported or run).

One record per (actor, frame) with `campose_valid[actor][frame]`:

| record field | value |
|---|---|
| dataset / split | `3dpw` / the folder name: `train`, `validation`, `test` |
| sequence / track / frame | pkl file name without `.pkl` / actor index in the pkl / image frame index i (`image_{i:05d}.jpg`) |
| gender | from `genders`: `m` -> `male`, `f` -> `female` (the gendered SMPL is the GT) |
| betas | `betas[actor][:10]` (300-d tracks exist) |
| pose | SMPL axis-angle in the CAMERA frame: global orientation `rotvec(R @ rotmat(poses[i, :3]))`, body pose `poses[i, 3:]` unchanged; R, t = `cam_poses[i]` (world -> camera) |
| kp3d | HMR 2.0's 44 keypoints (OpenPose-25 + J19) of the gendered JAX SMPL at that pose, plus the camera-frame translation `R (trans + J0) + t - J0` (J0: rest root joint for these betas): absolute camera coordinates, metres |
| K / image_size | `cam_intrinsics` / (H, W) of the jpg, checked against (2 cy, 2 cx) (`size_mismatch`: 'error' or 'warn') |
| box | tight box of the projected SMPL mesh (vertices in front of the camera), full-image pixels; the crop adds `margin` on each side |
| kp2d | kp3d projected with K, then through crop_affine; conf 1 where the projection lies on the image (and z > 0), else 0 (the position is kept) |
| kp2d_det | `poses2d` (N, 3, 18) transposed to OpenPose-18, placed into the 44 layout (BODY_25 slots; others zero) with skeletons.convert, through crop_affine; joints with conf 0 are zero rows; has_kp2d_det False when the frame's detection is all zeros |

Checks: every key used must be present (error names the key and the file), per-actor lists must
have one entry per actor and every per-frame array the same frame count N = len(img_frame_ids),
and the recomputed world-frame skeleton joints must match `jointPositions` within `joint_tol`
metres (default 1 cm; a wrong gender or betas slice shows here). Frames whose person is wholly
off-image or behind the camera are skipped and counted (`skipped_offscreen`).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from scipy.spatial.transform import Rotation

from data_pipelines import convert_common as cc
from data_pipelines import cropping
from extpose_jax import body_models as bm
from extpose_jax import errors, safe_pickle, skeletons

NAME = '3dpw'
SPLITS = ('train', 'validation', 'test')
NUM_JOINTS = 44
GENDERS = {'m': 'male', 'f': 'female', 'male': 'male', 'female': 'female'}
PER_ACTOR_KEYS = (
    'genders',
    'betas',
    'poses',
    'trans',
    'jointPositions',
    'poses2d',
    'campose_valid',
)
REQUIRED_KEYS = PER_ACTOR_KEYS + ('cam_poses', 'cam_intrinsics', 'img_frame_ids')
FRAME_BLOCK = 256  # frames per body-model pass


# ---------------------------------------------------------------------------- reading


def _str(value) -> str:
    return value.decode('latin1') if isinstance(value, bytes) else str(value)


def _numeric(path: str, name: str, value, dtype=None) -> np.ndarray:
    """np.asarray of a pickled value, a ConversionError naming the key if it is not an array."""
    try:
        a = np.asarray(value, dtype)
    except (ValueError, TypeError, OverflowError) as e:  # ragged lists, dicts, strings
        raise cc.ConversionError(f'{path}: key {name} is not a numeric array ({e})') from e
    if a.dtype.kind not in 'fiub':
        raise cc.ConversionError(f'{path}: key {name} is not numeric ({a.dtype})')
    return a


def load_sequence(path: str) -> dict:
    """Reads and checks one sequence pkl; returns numpy arrays (see module docstring)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'3DPW sequence file not found: {path}')
    raw = safe_pickle.load(path, cc.ConversionError, '3DPW sequence file')
    if not isinstance(raw, dict):
        raise cc.ConversionError(f'{path}: expected a dict, got {type(raw).__name__}')
    for key in REQUIRED_KEYS:
        if key not in raw:
            hint = {
                'genders': " (the readme's 'gender' is wrong)",
                'poses2d': " (the readme's 'poses2D' is wrong)",
            }.get(key, '')
            raise cc.ConversionError(f'{path}: missing key {key!r}{hint}')
    for key in PER_ACTOR_KEYS:
        value = raw[key]
        if not isinstance(value, (list, tuple, np.ndarray)) or getattr(value, 'ndim', 1) == 0:
            raise cc.ConversionError(
                f'{path}: key {key!r} is a {type(value).__name__}, expected one entry per actor'
            )
    num_actors = len(raw['poses'])
    if num_actors == 0:
        raise cc.ConversionError(f"{path}: key 'poses' lists no actor")
    for key in PER_ACTOR_KEYS:
        if len(raw[key]) != num_actors:
            raise cc.ConversionError(
                f"{path}: key {key!r} has {len(raw[key])} actor entries, 'poses' has {num_actors}"
            )
    n = _numeric(path, "'img_frame_ids'", raw['img_frame_ids']).size

    def arr(key, k, shape):
        name = key if k is None else f'{key}[{k}]'
        a = _numeric(path, name, raw[key] if k is None else raw[key][k])
        if a.ndim == 0 or a.shape[0] != n and shape[0] == 'N':
            raise cc.ConversionError(
                f'{path}: array lengths disagree: {name} has {a.shape[0] if a.ndim else 0} frames, '
                f'img_frame_ids has {n}'
            )
        want = tuple(n if d == 'N' else d for d in shape)
        if a.shape != want:
            if key == 'jointPositions' and a.shape == (n, 24, 3):
                return a.reshape(n, 72).astype(np.float64)
            raise cc.ConversionError(f'{path}: key {name} has shape {a.shape}, expected {want}')
        return a.astype(np.float64) if a.dtype.kind == 'f' else a

    seq = {
        'path': path,
        'num_frames': n,
        'num_actors': num_actors,
        'cam_poses': arr('cam_poses', None, ('N', 4, 4)),
        'K': arr('cam_intrinsics', None, (3, 3)).astype(np.float64),
    }
    genders, betas = [], []
    for k in range(num_actors):
        g = _str(raw['genders'][k]).strip().lower()
        if g not in GENDERS:
            raise cc.ConversionError(f"{path}: key 'genders'[{k}] is {g!r}, expected 'm' or 'f'")
        genders.append(GENDERS[g])
        b = _numeric(path, f"'betas'[{k}]", raw['betas'][k], np.float64).reshape(-1)
        if b.size < 10:
            raise cc.ConversionError(
                f"{path}: key 'betas'[{k}] has {b.size} values, expected >= 10"
            )
        betas.append(b[:10])
    seq['genders'], seq['betas'] = genders, betas
    seq['poses'] = [arr('poses', k, ('N', 72)) for k in range(num_actors)]
    seq['trans'] = [arr('trans', k, ('N', 3)) for k in range(num_actors)]
    seq['joints'] = [
        arr('jointPositions', k, ('N', 72)).reshape(n, 24, 3) for k in range(num_actors)
    ]
    seq['poses2d'] = [
        np.transpose(arr('poses2d', k, ('N', 3, 18)), (0, 2, 1)).astype(np.float64)
        for k in range(num_actors)
    ]
    seq['valid'] = [arr('campose_valid', k, ('N',)).astype(bool) for k in range(num_actors)]
    for key in ('poses', 'trans', 'joints', 'poses2d'):
        for k, a in enumerate(seq[key]):
            if not np.all(np.isfinite(a)):
                raise cc.ConversionError(f'{path}: key {key}[{k}] has non-finite values')
    if not np.all(np.isfinite(seq['cam_poses'])) or not np.all(np.isfinite(seq['K'])):
        raise cc.ConversionError(f'{path}: cam_poses or cam_intrinsics has non-finite values')
    return seq


def find_split_dir(root: str, split: str) -> str:
    """RAW/sequenceFiles/<split>, also under a nested sequenceFiles/sequenceFiles."""
    cc.require_dir(root, '3DPW root')
    base = os.path.join(root, 'sequenceFiles')
    cc.require_dir(base, '3DPW sequenceFiles folder')
    nested = os.path.join(base, 'sequenceFiles')
    for d in (os.path.join(base, split), os.path.join(nested, split)):
        if os.path.isdir(d):
            return d
    raise FileNotFoundError(
        f'3DPW split folder not found: {os.path.join(base, split)} (splits '
        f"are {', '.join(SPLITS)}; the folder is 'validation', not 'val')"
    )


def list_jobs(root: str, split: str) -> list[cc.Job]:
    split_dir = find_split_dir(root, split)
    image_root = cc.require_dir(os.path.join(root, 'imageFiles'), '3DPW imageFiles folder')
    jobs = []
    for fname in sorted(os.listdir(split_dir)):
        if not fname.endswith('.pkl'):
            continue
        seq = fname[:-4]
        image_dir = os.path.join(image_root, seq)
        cc.require_dir(image_dir, f'3DPW image folder of {os.path.join(split_dir, fname)}')
        jobs.append(cc.Job(seq, {'pkl': os.path.join(split_dir, fname), 'image_dir': image_dir}))
    if not jobs:
        raise FileNotFoundError(f'no .pkl sequence files in {split_dir}')
    return jobs


# ---------------------------------------------------------------------------- geometry


def rest_root_joint(model, betas: np.ndarray) -> np.ndarray:
    """J0: the root joint of the shaped body in the rest pose (SMPL rotates about it)."""
    return cc.model_forward(model, np.zeros((1, 72)), betas[None])['joints'][0, 0]


def camera_frame_params(model, seq: dict, k: int, frames: np.ndarray, j0: np.ndarray):
    """Camera-frame pose and translation of actor k at `frames` (3DPW stores world-frame SMPL).

    SMPL rotates about its rest root joint J0 (`j0`), so the world -> camera (R, t) of
    `cam_poses` gives transl_cam = R (trans + J0) + t - J0; the body pose is unchanged.

    Returns (pose_cam (F, 72), transl_cam (F, 3), out) with `out` the body model outputs at
    pose_cam (keypoints/vertices/joints without translation): the camera-frame body is
    out[...] + transl_cam.
    """
    R = seq['cam_poses'][frames, :3, :3]
    t = seq['cam_poses'][frames, :3, 3]
    pose_w = seq['poses'][k][frames]
    trans_w = seq['trans'][k][frames]
    betas = np.broadcast_to(seq['betas'][k], (len(frames), 10))
    go = Rotation.from_rotvec(pose_w[:, :3]).as_matrix()
    go_cam = Rotation.from_matrix(R @ go).as_rotvec()
    pose_cam = np.concatenate([go_cam, pose_w[:, 3:]], axis=1)
    transl_cam = np.einsum('fij,fj->fi', R, trans_w + j0) + t - j0
    out = cc.model_forward(model, pose_cam, betas)
    return pose_cam, transl_cam, out


def _check_size(seq: dict, image_path: str, hw, opt) -> None:
    h, w = hw
    cx, cy = seq['K'][0, 2], seq['K'][1, 2]
    if abs(w - 2 * cx) <= 2 and abs(h - 2 * cy) <= 2:
        return
    msg = (
        f'{image_path}: image is {w}x{h} (WxH) but cam_intrinsics of {seq["path"]} imply '
        f'{2 * cx:.0f}x{2 * cy:.0f} (2cx x 2cy); resized images need a scaled K'
    )
    if opt.get('size_mismatch', 'error') == 'error':
        raise cc.ConversionError(msg + " (pass size_mismatch='warn' to convert anyway)")
    warnings.warn(msg)
    opt['stats']['size_mismatch_images'] = opt['stats'].get('size_mismatch_images', 0) + 1


def _check_joints(seq: dict, k: int, frames: np.ndarray, joints_cam: np.ndarray, opt) -> None:
    """Back in the world frame, the recomputed skeleton joints must be `jointPositions`."""
    R = seq['cam_poses'][frames, :3, :3]
    t = seq['cam_poses'][frames, :3, 3]
    joints_w = np.einsum('fji,fkj->fki', R, joints_cam - t[:, None])  # R^T (X - t)
    err = np.linalg.norm(joints_w - seq['joints'][k][frames], axis=-1)
    worst = float(err.max())
    stats = opt['stats']
    stats['max_joint_error_m'] = max(stats.get('max_joint_error_m', 0.0), worst)
    tol = opt.get('joint_tol')
    if tol is not None and worst > tol:
        f = int(frames[np.argmax(err.max(axis=1))])
        raise cc.ConversionError(
            f'{seq["path"]}: actor {k} ({seq["genders"][k]}): recomputed SMPL joints differ from '
            f'jointPositions by {worst * 1000:.1f} mm at frame {f} (tolerance {tol * 1000:.1f} mm): '
            'wrong gender, betas or body model files? (joint_tol=None / --joint_tol -1 skips '
            'this check)'
        )


# ---------------------------------------------------------------------------- process


def process_sequence(job: cc.Job, opt, progress):
    """Yields the records of one sequence (see the module docstring)."""
    stats = opt['stats']
    seq = load_sequence(job.payload['pkl'])
    K = seq['K']
    per_frame: dict[int, list] = {}  # frame -> [(actor, pose, kp3d, box or None)]
    for k in range(seq['num_actors']):
        valid = np.flatnonzero(seq['valid'][k])
        stats['valid_frames'] = stats.get('valid_frames', 0) + len(valid)
        if not len(valid):
            continue
        model = bm.load_from_dir(opt['body_models'], 'smpl', seq['genders'][k])
        j0 = rest_root_joint(model, seq['betas'][k])
        for lo in range(0, len(valid), FRAME_BLOCK):  # blocks: meshes of long sequences are big
            frames = valid[lo : lo + FRAME_BLOCK]
            pose_cam, transl_cam, out = camera_frame_params(model, seq, k, frames, j0)
            _check_joints(seq, k, frames, out['joints'] + transl_cam[:, None], opt)
            kp3d = out['keypoints'] + transl_cam[:, None]
            uv_v, z_v = cc.project(K, out['vertices'] + transl_cam[:, None])
            for n, i in enumerate(frames):
                front = z_v[n] > 1e-6
                box = cc.points_box(uv_v[n][front]) if front.any() else None
                per_frame.setdefault(int(i), []).append((k, pose_cam[n], kp3d[n], box))

    size_checked = None
    for i in sorted(per_frame):
        image_path = os.path.join(job.payload['image_dir'], f'image_{i:05d}.jpg')
        image = cc.read_image(image_path)
        hw = image.shape[:2]
        if size_checked != hw:
            _check_size(seq, image_path, hw, opt)
            size_checked = hw
        for k, pose, kp3d, box in per_frame[i]:
            if box is None or not cc.box_overlaps_image(box, hw):
                stats['skipped_offscreen'] = stats.get('skipped_offscreen', 0) + 1
                continue
            jpeg, affine = cropping.crop_and_encode(
                image, box, opt['crop_size'], opt['margin'], opt['jpeg_quality']
            )
            uv, z = cc.project(K, kp3d)
            kp2d = cc.keypoints_to_crop(uv, cc.inside_image(uv, hw, z), affine)
            det = seq['poses2d'][k][i]  # (18, 3) OpenPose-18
            det44 = skeletons.convert(det, 'openpose18', 'hmr44')
            conf = np.clip(det44[:, 2], 0.0, 1.0)
            kp2d_det = cc.keypoints_to_crop(det44[:, :2], conf, affine)
            kp2d_det[conf <= 0] = 0.0
            has_det = bool((conf > 0).any())
            stats['frames_without_detection'] = stats.get('frames_without_detection', 0) + (
                not has_det
            )
            yield {
                'image': jpeg,
                'crop_affine': affine,
                'image_size': np.asarray(hw, np.int64),
                'K': K.astype(np.float32),
                'box': box,
                'kp2d': kp2d,
                'kp2d_det': kp2d_det,
                'has_kp2d_det': has_det,
                'kp3d': kp3d.astype(np.float32),
                'pose': pose.astype(np.float32),
                'betas': seq['betas'][k].astype(np.float32),
                'gender': seq['genders'][k],
                'sequence': job.sequence,
                'track': int(k),
                'frame': int(i),
            }
    progress(1)


# ---------------------------------------------------------------------------- entry points


def convert(
    root: str,
    body_models: str,
    out: str,
    *,
    splits=SPLITS,
    workers: int = 0,
    num_shards: int = 8,
    crop_size: int = 384,
    margin: float = 0.25,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    joint_tol: float | None = 0.01,
    size_mismatch: str = 'error',
    fsync: bool = True,
    quiet: bool = False,
) -> dict:
    """Converts the requested 3DPW splits; returns {'dataset', 'out', 'splits': {split: summary}}.

    joint_tol: metres allowed between the recomputed world joints and `jointPositions` (None: no
    check). size_mismatch: 'error' or 'warn' when a jpg's size disagrees with (2cx, 2cy).
    """
    if size_mismatch not in ('error', 'warn'):
        raise ValueError(f"size_mismatch must be 'error' or 'warn', got {size_mismatch!r}")
    root, body_models = os.fspath(root), os.fspath(body_models)
    for gender in ('male', 'female'):  # every file checked before anything is written
        bm.load_from_dir(body_models, 'smpl', gender)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f'unknown 3DPW split {split!r}; expected one of {SPLITS}')
    jobs = {split: list_jobs(root, split) for split in splits}  # fail fast on missing folders
    options = dict(
        body_models=body_models,
        crop_size=crop_size,
        margin=margin,
        jpeg_quality=jpeg_quality,
        joint_tol=joint_tol,
        size_mismatch=size_mismatch,
    )
    summary = {'dataset': NAME, 'out': os.fspath(out), 'splits': {}}
    with cc.WorkerPool(workers) as pool:
        for split in splits:
            summary['splits'][split] = cc.convert_split(
                name=NAME,
                split=split,
                out=out,
                jobs=jobs[split],
                process=process_sequence,
                options=options,
                num_shards=num_shards,
                workers=pool,
                num_joints=NUM_JOINTS,
                body_model='smpl',
                jpeg_quality=jpeg_quality,
                overwrite=overwrite,
                fsync=fsync,
                unit='seq',
                quiet=quiet,
            )
    return summary


def main(argv=None) -> dict:
    parser = errors.ArgumentParser(description=__doc__.split('\n')[0])
    cc.add_common_args(parser, splits=list(SPLITS), num_shards=8)
    parser.add_argument(
        '--joint_tol',
        type=float,
        default=0.01,
        help='max metres between recomputed joints and jointPositions (negative: no check)',
    )
    parser.add_argument('--size_mismatch', choices=('error', 'warn'), default='error')
    a = parser.parse_args(argv)
    summary = convert(
        a.root,
        a.body_models,
        a.out,
        splits=a.splits,
        workers=a.workers,
        num_shards=a.num_shards,
        crop_size=a.crop_size,
        margin=a.margin,
        jpeg_quality=a.jpeg_quality,
        overwrite=a.overwrite,
        joint_tol=None if a.joint_tol < 0 else a.joint_tol,
        size_mismatch=a.size_mismatch,
        quiet=a.quiet,
    )
    cc.print_summary(summary)
    return summary


if __name__ == '__main__':
    # Run through the importable module so worker processes unpickle the same functions.
    from data_pipelines import convert_3dpw as _self

    errors.guard(_self.main)
