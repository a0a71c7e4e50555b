"""FreiHAND v2 raw download -> records (MANO-vector and fingertip pitfalls: see below).

    python -m data_pipelines.convert_freihand --root RAW --body_models DIR --out DIR \
        [--splits train test] [--workers N] [--num_shards K] [--crop_size 384] \
        [--detections FILE]

or `convert(root, body_models, out, ...)`, which returns a summary dict.

Input: RAW is `FreiHAND_pub_v2/` itself or a folder holding it (and optionally the separate
evaluation-GT download `FreiHAND_pub_v2_eval/`, looked for in RAW and beside
`FreiHAND_pub_v2`).

- split `train`: `training/rgb/%08d.jpg` for the 4 versions (id = idx + n v; v = 0 gs, 1 hom,
  2 sample, 3 auto) and `training_{K,mano,xyz}.json` of length n (annotation idx = id % n).
- split `test`: FreiHAND's *evaluation* set (`gs` images only): `evaluation/rgb/%08d.jpg`
  (under `FreiHAND_pub_v2` or `FreiHAND_pub_v2_eval`), `evaluation_K.json` and the GT
  `evaluation_{mano,xyz}.json` (from either folder). Without the GT json the split is skipped
  with a message (summary: `skipped`).

Record keys (records are per person per frame; FreiHAND is per image, one right hand each):
sequence = f'{split}_{idx:08d}' (one annotated sample), track = version v (0 for `test`), frame =
the image id (the jpg number, idx + n v). So the 4 versions of a sample share a sequence and
therefore a shard, and (sequence, track, frame) names the exact image file.

| record field | value |
|---|---|
| pose (48) | `mano[0:3]` global orientation (camera frame) + `mano[3:48] + hands_mean`: the 45 finger values are relative to MANO's mean hand (flat_hand_mean=False), the record's pose is relative to a flat hand |
| betas | `mano[48:58]` |
| kp3d | the JAX MANO's 21 OpenPose-order keypoints (smplx / HaMeR tips: ring 554, pinky 671), translated so that joint 9 (middle MCP) sits at the root recovered from `uv_root = mano[58:60]`, `s = mano[60]`: [(u - cx)/s, (v - cy)/s, f/s], f = (fx + fy)/2 |
| K / image_size | `*_K.json[idx]` / (H, W) of the jpg (224 x 224) |
| box | tight box of the projected MANO mesh; the crop adds `margin` on each side |
| kp2d | kp3d projected with K, through crop_affine; conf 1 on the image, else 0 |
| kp2d_det | the image's entry in the detections file (below) through crop_affine; undetected joints are zero rows; has_kp2d_det False (zeros) without an entry or with fewer than 6 detected joints, and for every record when there is no file |
| hand_side | `right` |

Check: the 16 non-tip keypoints must match `*_xyz.json` within `xyz_tol` metres (default 1 mm),
else an error names the json file and the sample (typically the flat_hand_mean pitfall, or the
uv_root/scale misread as a translation). Tips are not compared: FreiHAND's own tips are ring 555 /
pinky 672 (thumb, index, middle agree but are left out too).

2D detections (FreiHAND ships none): `FreiHAND_pub_v2/detections.json` when present, or the file
given as `--detections FILE` / `detections=`, is one JSON object mapping an image's path
relative to FreiHAND_pub_v2, `training/rgb/%08d.jpg` or `evaluation/rgb/%08d.jpg` (the jpg
number is the record's frame), to 21 x [x, y, confidence] in full-image pixels, OpenPose hand
order, confidence 0 = not detected. Run any 2D hand detector over the images to make one; the
synthetic world writes simulated ones (synthetic/raw_freihand.py). Images without an entry get
no detection; a malformed file stops the conversion naming the file and the key.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from data_pipelines import convert_common as cc
from data_pipelines import cropping
from extpose_jax import errors

NAME = 'freihand'
SPLITS = ('train', 'test')
NUM_JOINTS = 21
NUM_VERSIONS = 4
TIP_JOINTS = (4, 8, 12, 16, 20)
NON_TIP = tuple(j for j in range(21) if j not in TIP_JOINTS)


# ---------------------------------------------------------------------------- finding files


def find_dirs(root: str) -> tuple[str, str | None]:
    """(FreiHAND_pub_v2 folder, FreiHAND_pub_v2_eval folder or None)."""
    cc.require_dir(root, 'FreiHAND root')
    marker = ('training_K.json', 'evaluation_K.json')
    if any(os.path.isfile(os.path.join(root, m)) for m in marker):
        pub = root
    else:
        pub = os.path.join(root, 'FreiHAND_pub_v2')
        cc.require_dir(pub, 'FreiHAND_pub_v2 folder (training_K.json not in the root either)')
    evals = [
        os.path.join(root, 'FreiHAND_pub_v2_eval'),
        os.path.normpath(pub) + '_eval',
        os.path.join(os.path.dirname(os.path.normpath(pub)), 'FreiHAND_pub_v2_eval'),
    ]
    ev = next((d for d in evals if os.path.isdir(d)), None)
    return pub, ev


def _first_file(dirs, name) -> str | None:
    for d in dirs:
        if d is not None and os.path.isfile(os.path.join(d, name)):
            return os.path.join(d, name)
    return None


def _array(path: str, data, shape: tuple) -> np.ndarray:
    try:
        a = np.asarray(data, np.float64)
    except (ValueError, TypeError, OverflowError) as e:  # OverflowError: an int beyond float
        raise cc.ConversionError(
            f'{path}: entries are not numeric arrays of one shape ({e})'
        ) from e
    if shape == (61,) and a.shape[1:] == (1, 61):
        a = a.reshape(len(a), 61)  # `*_mano.json` entries are [[61 floats]]
    if a.ndim != len(shape) + 1 or a.shape[1:] != shape:
        raise cc.ConversionError(f'{path}: entries have shape {a.shape[1:]}, expected {shape}')
    if not np.all(np.isfinite(a)):
        raise cc.ConversionError(f'{path}: non-finite values')
    return a


def load_annotations(split: str, pub: str, ev: str | None) -> dict | None:
    """K (n,3,3), mano (n,61), xyz (n,21,3), image dir; None if the test GT is absent."""
    prefix = 'training' if split == 'train' else 'evaluation'
    dirs = [pub] if split == 'train' else [ev, pub]
    paths = {k: _first_file(dirs, f'{prefix}_{k}.json') for k in ('K', 'mano', 'xyz')}
    if split == 'test' and (paths['mano'] is None or paths['xyz'] is None):
        return None
    for k, p in paths.items():
        if p is None:
            raise FileNotFoundError(
                f'FreiHAND annotation file not found: '
                f'{os.path.join(dirs[0] or pub, f"{prefix}_{k}.json")}'
            )
    ann = {
        'K': _array(paths['K'], cc.load_json(paths['K']), (3, 3)),
        'mano': _array(paths['mano'], cc.load_json(paths['mano']), (61,)),
        'xyz': _array(paths['xyz'], cc.load_json(paths['xyz']), (21, 3)),
        'paths': paths,
    }
    n = len(ann['K'])
    for k in ('mano', 'xyz'):
        if len(ann[k]) != n:
            raise cc.ConversionError(
                f'array lengths disagree: {paths[k]} has {len(ann[k])} samples, '
                f'{paths["K"]} has {n}'
            )
    image_dirs = [os.path.join(d, prefix, 'rgb') for d in dirs if d is not None]
    image_dir = next((d for d in image_dirs if os.path.isdir(d)), None)
    if image_dir is None:
        raise FileNotFoundError(f'FreiHAND image folder not found: {" or ".join(image_dirs)}')
    ann['image_dir'] = image_dir
    return ann


def detection_key(split: str, image_id: int) -> str:
    """The detections file's key of an image: its path relative to FreiHAND_pub_v2."""
    prefix = 'training' if split == 'train' else 'evaluation'
    return f'{prefix}/rgb/{image_id:08d}.jpg'


def list_jobs(split: str, ann: dict, detections: dict | None = None) -> list[cc.Job]:
    """One job per sample; each image carries its detection (None: no entry), or no
    detections at all (None) when there is no file."""
    n = len(ann['K'])
    versions = NUM_VERSIONS if split == 'train' else 1
    present = set(os.listdir(ann['image_dir']))
    missing = [f'{i:08d}.jpg' for i in range(n * versions) if f'{i:08d}.jpg' not in present]
    if missing:
        raise FileNotFoundError(
            f'{len(missing)} of {n * versions} FreiHAND images missing in {ann["image_dir"]} '
            f'(expected {versions} version(s) x {n} samples), e.g. '
            f'{os.path.join(ann["image_dir"], missing[0])}'
        )
    jobs = []
    for idx in range(n):
        images = [
            (
                v,
                idx + n * v,
                os.path.join(ann['image_dir'], f'{idx + n * v:08d}.jpg'),
                None if detections is None else detections.get(detection_key(split, idx + n * v)),
            )
            for v in range(versions)
        ]
        jobs.append(
            cc.Job(
                f'{split}_{idx:08d}',
                {
                    'idx': idx,
                    'K': ann['K'][idx],
                    'mano': ann['mano'][idx],
                    'xyz': ann['xyz'][idx],
                    'images': images,
                    'xyz_path': ann['paths']['xyz'],
                    'mano_path': ann['paths']['mano'],
                    'with_detections': detections is not None,
                },
                units=versions,
            )
        )
    return jobs


# ---------------------------------------------------------------------------- geometry


def mano_to_record_params(mano: np.ndarray, hands_mean: np.ndarray):
    """(N, 61) FreiHAND vectors -> pose (N, 48) relative to a flat hand, betas (N, 10),
    uv_root (N, 2), scale (N,)."""
    pose = mano[:, :48].copy()
    pose[:, 3:] += hands_mean
    return pose, mano[:, 48:58], mano[:, 58:60], mano[:, 60]


def recover_root(uv_root: np.ndarray, scale: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Root (joint 9) position from the weak-perspective uv_root + scale and K: (N, 3)."""
    f = (K[:, 0, 0] + K[:, 1, 1]) / 2.0
    s = scale
    if np.any(s <= 0):
        raise ValueError('non-positive scale')
    return np.stack([(uv_root[:, 0] - K[:, 0, 2]) / s, (uv_root[:, 1] - K[:, 1, 2]) / s, f / s], 1)


def prepare_shard(jobs: list[cc.Job], opt) -> dict:
    """One batched MANO pass over the shard's samples, checked against *_xyz.json."""
    if not jobs:
        return {}
    model, hands_mean = cc.mano_model(opt['body_models'])
    mano = np.stack([j.payload['mano'] for j in jobs])
    K = np.stack([j.payload['K'] for j in jobs])
    xyz = np.stack([j.payload['xyz'] for j in jobs])
    pose, betas, uv_root, scale = mano_to_record_params(mano, hands_mean)
    bad = np.flatnonzero(scale <= 0)
    if len(bad):
        j = jobs[bad[0]].payload
        raise cc.ConversionError(
            f'{j["mano_path"]}: sample {j["idx"]}: scale mano[60] = {scale[bad[0]]} is not positive'
        )
    root = recover_root(uv_root, scale, K)
    out = cc.model_forward(model, pose, betas, chunk=256)
    shift = root - out['keypoints'][:, 9]
    kp3d = out['keypoints'] + shift[:, None]
    verts = out['vertices'] + shift[:, None]
    err = np.linalg.norm(kp3d[:, NON_TIP] - xyz[:, NON_TIP], axis=-1)  # (N, 16)
    per_sample = err.max(axis=1)
    opt['stats']['max_xyz_error_m'] = max(
        opt['stats'].get('max_xyz_error_m', 0.0), float(per_sample.max())
    )
    tol = opt.get('xyz_tol')
    if tol is not None and per_sample.max() > tol:
        i = int(np.argmax(per_sample))
        j = jobs[i].payload
        joint = NON_TIP[int(np.argmax(err[i]))]
        raise cc.ConversionError(
            f'{j["xyz_path"]}: sample {j["idx"]}: MANO keypoints from {j["mano_path"]} differ from '
            f'the annotated xyz by {per_sample[i] * 1000:.2f} mm (joint {joint}; tolerance '
            f'{tol * 1000:.2f} mm): finger pose not relative to hands_mean (flat_hand_mean=False), '
            'uv_root/scale misread, or wrong MANO file? (xyz_tol / --xyz_tol sets the tolerance; '
            'negative skips the check)'
        )
    prepared = {}
    for n, job in enumerate(jobs):
        uv_v, z_v = cc.project(K[n], verts[n])
        front = z_v > 1e-6
        box = cc.points_box(uv_v[front]) if front.any() else None
        prepared[job.sequence] = (pose[n], betas[n], kp3d[n], box)
    return prepared


# ---------------------------------------------------------------------------- process


def process_sample(job: cc.Job, opt, progress):
    pose, betas, kp3d, box = opt['prepared'][job.sequence]
    K = job.payload['K']
    for version, image_id, path, det in job.payload['images']:
        image = cc.read_image(path)
        hw = image.shape[:2]
        if box is None or not cc.box_overlaps_image(box, hw):
            opt['stats']['skipped_offscreen'] = opt['stats'].get('skipped_offscreen', 0) + 1
            progress(1)
            continue
        jpeg, affine = cropping.crop_and_encode(
            image, box, opt['crop_size'], opt['margin'], opt['jpeg_quality']
        )
        uv, z = cc.project(K, kp3d)
        record = {
            'image': jpeg,
            'crop_affine': affine,
            'image_size': np.asarray(hw, np.int64),
            'K': K.astype(np.float32),
            'box': box,
            'kp2d': cc.keypoints_to_crop(uv, cc.inside_image(uv, hw, z), affine),
            'kp3d': kp3d.astype(np.float32),
            'pose': pose.astype(np.float32),
            'betas': betas.astype(np.float32),
            'hand_side': 'right',
            'sequence': job.sequence,
            'track': int(version),
            'frame': int(image_id),
        }
        if job.payload['with_detections']:
            record['kp2d_det'], record['has_kp2d_det'] = cc.detections_to_crop(
                det, affine, NUM_JOINTS
            )
            stats = opt['stats']
            stats['with_detection'] = stats.get('with_detection', 0) + record['has_kp2d_det']
        yield record
        progress(1)


# ---------------------------------------------------------------------------- entry points


def convert(
    root: str,
    body_models: str,
    out: str,
    *,
    splits=SPLITS,
    workers: int = 0,
    num_shards: int = 32,
    crop_size: int = 384,
    margin: float = 0.25,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    xyz_tol: float | None = 0.001,
    fsync: bool = True,
    quiet: bool = False,
    detections: str | None = None,
) -> dict:
    """Converts the requested FreiHAND splits; returns {'dataset', 'out', 'detections', 'splits':
    {...}} ('detections': the file read, or None).

    xyz_tol: metres allowed between the MANO keypoints and *_xyz.json (None: no check). A `test`
    split without its GT json is reported as {'skipped': reason} instead of being converted.
    detections: a detections file (module docstring); None: FreiHAND_pub_v2/detections.json if
    it exists, else records without detections.
    """
    root, body_models = os.fspath(root), os.fspath(body_models)
    cc.mano_model(body_models)  # checked (and cached) before anything is written
    for split in splits:
        if split not in SPLITS:
            raise ValueError(
                f'unknown FreiHAND split {split!r}; expected one of {SPLITS} '
                "('test' is FreiHAND's evaluation set)"
            )
    pub, ev = find_dirs(root)
    anns = {split: load_annotations(split, pub, ev) for split in splits}
    det_path = cc.find_detections(pub, detections)
    dets = cc.load_detections(det_path, NUM_JOINTS) if det_path else None
    jobs = {split: list_jobs(split, ann, dets) for split, ann in anns.items() if ann is not None}
    options = dict(
        body_models=body_models,
        crop_size=crop_size,
        margin=margin,
        jpeg_quality=jpeg_quality,
        xyz_tol=xyz_tol,
    )
    summary = {'dataset': NAME, 'out': os.fspath(out), 'detections': det_path, 'splits': {}}
    with cc.WorkerPool(workers) as pool:
        for split in splits:
            if anns[split] is None:
                reason = (
                    f'no evaluation GT (evaluation_mano.json / evaluation_xyz.json) in '
                    f'{ev or os.path.normpath(pub) + "_eval"} or {pub}'
                )
                print(f'freihand: skipping split {split!r}: {reason}', file=sys.stderr)
                summary['splits'][split] = {'skipped': reason}
                continue
            summary['splits'][split] = cc.convert_split(
                name=NAME,
                split=split,
                out=out,
                jobs=jobs[split],
                process=process_sample,
                prepare=prepare_shard,
                options=options,
                num_shards=num_shards,
                workers=pool,
                num_joints=NUM_JOINTS,
                body_model='mano',
                jpeg_quality=jpeg_quality,
                overwrite=overwrite,
                fsync=fsync,
                unit='img',
                quiet=quiet,
            )
    return summary


def main(argv=None) -> dict:
    parser = errors.ArgumentParser(description=__doc__.split('\n')[0])
    cc.add_common_args(parser, splits=list(SPLITS), num_shards=32)
    parser.add_argument(
        '--xyz_tol',
        type=float,
        default=0.001,
        help='max metres between MANO keypoints and *_xyz.json (negative: no check)',
    )
    cc.add_detections_arg(parser, 'FreiHAND_pub_v2')
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
        xyz_tol=None if a.xyz_tol < 0 else a.xyz_tol,
        quiet=a.quiet,
        detections=a.detections,
    )
    cc.print_summary(summary)
    return summary


if __name__ == '__main__':
    from data_pipelines import convert_freihand as _self

    errors.guard(_self.main)
