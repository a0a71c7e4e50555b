"""HMR 2.0 / HaMeR npz metadata + an image folder -> records (their evaluation files, and the
route for a user's own data).

    python -m data_pipelines.convert_hmr_npz --kind hmr2|hamer --npz FILE.npz --images DIR \
        --out DIR [--name NAME] [--split test] [--num_shards 8] [--workers N] [--skip_bad]

or `convert(npz, images, out, kind=...)`. Layout (datasets.md §4.2), N rows = N people:

| key | shape | |
|---|---|---|
| imgname | (N,) str | image path relative to DIR; people of one image share it |
| center | (N, 2) | box centre, pixels |
| scale | (N,) or (N, 2) | box size in PIXELS (w, h), NOT / 200 as in the tars; one value: a square |
| hmr2: body_keypoints_2d, extra_keypoints_2d | (N, 25, 3), (N, 19, 3) | x, y, conf in pixels: the 44 keypoints, OpenPose-25 then the 19 extra |
| hmr2: body_keypoints_3d, extra_keypoints_3d | (N, 25, 4), (N, 19, 4) | x, y, z, conf, metres |
| hmr2: body_pose, has_body_pose | (N, 72), (N,) | SMPL axis-angle, global orientation first |
| hamer: hand_keypoints_2d, hand_keypoints_3d | (N, 21, 3), (N, 21, 4) | OpenPose hand order |
| hamer: hand_pose, has_hand_pose, right | (N, 48), (N,), (N,) | MANO axis-angle; right 1 / left 0 (required: no side is guessed) |
| betas, has_betas | (N, 10), (N,) | |

imgname, center and scale are required (and `right` for hands); any other key missing reads
as zeros, i.e. absent (upstream's rule). As upstream's loader, the 3D confidence of OpenPose
joints 1-14 is zeroed for bodies: a body row's kp3d keeps the other joints' 3D labels with
their per-joint confidence (has_kp3d when any is > 0; see convert_webdataset). `extra_info` /
`part` are not read, so the file loads with allow_pickle=False.

Records as convert_webdataset.person_record makes them, with box size = scale (pixels);
sequence = imgname, track = the row's rank among the rows of its image, frame = 0. Bad input:
a key of the wrong length or shape, a missing required key, an image that is missing or does not
decode: one ConversionError naming the file and the key (row / image); with `skip_bad` a bad
row or image is skipped and counted (`bad_rows`) instead. Lengths are checked before anything
is written.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from data_pipelines import convert_common as cc
from data_pipelines import convert_webdataset as cw
from extpose_jax import errors

# kind -> {npz key: (trailing shape, person-dict key, slice of the joint axis)}
_KEYS = {
    'hmr2': {
        'body_keypoints_2d': ((25, 3), 'keypoints_2d', slice(0, 25)),
        'extra_keypoints_2d': ((19, 3), 'keypoints_2d', slice(25, 44)),
        'body_keypoints_3d': ((25, 4), 'keypoints_3d', slice(0, 25)),
        'extra_keypoints_3d': ((19, 4), 'keypoints_3d', slice(25, 44)),
        'body_pose': ((72,), 'body_pose', None),
        'has_body_pose': ((), 'has_body_pose', None),
    },
    'hamer': {
        'hand_keypoints_2d': ((21, 3), 'keypoints_2d', None),
        'hand_keypoints_3d': ((21, 4), 'keypoints_3d', None),
        'hand_pose': ((48,), 'hand_pose', None),
        'has_hand_pose': ((), 'has_hand_pose', None),
        'right': ((), 'right', None),
    },
}
_COMMON = {'betas': ((10,), 'betas', None), 'has_betas': ((), 'has_betas', None)}
REQUIRED = {
    'hmr2': ('imgname', 'center', 'scale'),
    'hamer': ('imgname', 'center', 'scale', 'right'),
}
OPENPOSE_NO_3D = slice(1, 15)  # upstream zeroes these joints' 3D confidence (bodies)


def read_npz(path: str, kind: str) -> tuple[np.ndarray, list[dict]]:
    """(imgname (N,), one person dict per row in the tars' keys); ConversionError naming the
    file and the key for a missing required key, a length or shape that does not fit."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'npz file not found: {path}')
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            missing = [k for k in REQUIRED[kind] if k not in keys]
            if missing:
                raise cc.ConversionError(f'{path}: missing key {missing[0]!r} (of {missing})')
            data = {
                k: z[k] for k in ('imgname', 'center', 'scale', *_KEYS[kind], *_COMMON) if k in keys
            }
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        if isinstance(e, cc.ConversionError):
            raise
        raise cc.ConversionError(f'{path}: not a readable npz ({type(e).__name__}: {e})') from e
    names = data['imgname']
    if names.ndim != 1 or names.dtype.kind not in 'US':
        raise cc.ConversionError(
            f"{path}: key 'imgname' must be (N,) strings, got {names.dtype} {names.shape}"
        )
    n = len(names)
    names = np.array([x.decode() if isinstance(x, bytes) else str(x) for x in names])
    shapes = {'center': (2,), **{k: v[0] for k, v in {**_KEYS[kind], **_COMMON}.items()}}
    for key, a in data.items():
        if key == 'imgname':
            continue
        rows = len(a) if a.ndim else 0
        if rows != n:
            raise cc.ConversionError(
                f"{path}: key {key!r} has {rows} rows, 'imgname' has {n}: "
                'the arrays disagree in length'
            )
        trailing = a.shape[1:]
        allowed = ((), (1,), (2,)) if key == 'scale' else (shapes[key],)
        if shapes.get(key) == ():
            allowed += ((1,),)
        if trailing not in allowed:
            raise cc.ConversionError(
                f'{path}: key {key!r} has shape {a.shape}, expected (N, *{shapes[key]})'
            )
    j, pose_dim = cw.KINDS[kind][1], cw.KINDS[kind][4]
    people = []
    for i in range(n):
        p = {
            'center': data['center'][i],
            'scale': data['scale'][i],
            'keypoints_2d': np.zeros((j, 3)),
            'keypoints_3d': np.zeros((j, 4)),
            cw.KINDS[kind][2]: np.zeros(pose_dim),
            cw.KINDS[kind][3]: 0.0,
            'betas': np.zeros(10),
            'has_betas': 0.0,
        }
        for key, (_, field, joints) in {**_KEYS[kind], **_COMMON}.items():
            if key in data:
                if joints is None:
                    p[field] = data[key][i]
                else:
                    p[field][joints] = data[key][i]
        if kind == 'hmr2':
            p['keypoints_3d'][OPENPOSE_NO_3D, 3] = 0.0
        people.append(p)
    return names, people


def process_image(job: cc.Job, opt, progress):
    """Yields the records of one image (its rows)."""
    image_path, rows = job.payload
    try:
        image = cc.read_image(image_path)
    except (cc.ConversionError, FileNotFoundError):
        if not opt['skip_bad']:
            raise
        opt['stats']['bad_rows'] = opt['stats'].get('bad_rows', 0) + len(rows)
        progress(len(rows))
        return
    for track, (row, person) in enumerate(rows):
        try:
            p = cw.read_person(person, opt['kind'], f'{opt["npz"]}: row {row}')
        except cc.ConversionError:
            if not opt['skip_bad']:
                raise
            opt['stats']['bad_rows'] = opt['stats'].get('bad_rows', 0) + 1
            continue
        if cw.enough_keypoints(p, opt):
            yield cw.person_record(image, p, p['scale'], opt['kind'], job.sequence, track, opt)
        progress(1)


def convert(
    npz: str,
    images: str,
    out: str,
    *,
    kind: str,
    name: str | None = None,
    split: str = 'test',
    num_shards: int = 8,
    workers: int = 0,
    crop_size: int = 384,
    margin: float = 0.25,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    skip_bad: bool = False,
    min_keypoints: int = cw.MIN_KEYPOINTS,
    fsync: bool = True,
    quiet: bool = False,
) -> dict:
    """Converts one npz into split `split` of dataset `name` (default: the name of `out`,
    '-' -> '_'); returns {'dataset', 'kind', 'out', 'npz', 'images', 'splits': {split: summary}}."""
    if kind not in cw.KINDS:
        raise ValueError(f'kind must be one of {tuple(cw.KINDS)}, got {kind!r}')
    npz = os.fspath(npz)
    images = cc.require_dir(images, 'image folder')
    names, people = read_npz(npz, kind)
    by_image: dict[str, list] = {}
    for i, (imgname, p) in enumerate(zip(names, people)):
        by_image.setdefault(imgname, []).append((i, p))
    jobs = [
        cc.Job(imgname, (os.path.join(images, imgname), rows), units=len(rows))
        for imgname, rows in by_image.items()
    ]
    name = name or cw.default_name(out)
    options = dict(
        kind=kind,
        npz=npz,
        skip_bad=skip_bad,
        min_keypoints=int(min_keypoints),
        crop_size=crop_size,
        margin=margin,
        jpeg_quality=jpeg_quality,
    )
    body_model, num_joints = cw.KINDS[kind][:2]
    s = cc.convert_split(
        name=name,
        split=split,
        out=out,
        jobs=jobs,
        process=process_image,
        options=options,
        num_shards=num_shards,
        workers=workers,
        num_joints=num_joints,
        body_model=body_model,
        jpeg_quality=jpeg_quality,
        overwrite=overwrite,
        fsync=fsync,
        unit='person',
        quiet=quiet,
    )
    return {
        'dataset': name,
        'kind': kind,
        'out': os.fspath(out),
        'npz': npz,
        'images': images,
        'splits': {split: s},
    }


def main(argv=None) -> dict:
    parser = errors.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--npz', required=True, help='the metadata file')
    parser.add_argument('--images', required=True, help='folder that imgname is relative to')
    parser.add_argument('--num_shards', type=int, default=8)
    cw.add_args(parser, 'test')
    a = parser.parse_args(argv)
    summary = convert(
        a.npz,
        a.images,
        a.out,
        kind=a.kind,
        name=a.name,
        split=a.split,
        num_shards=a.num_shards,
        workers=a.workers,
        crop_size=a.crop_size,
        margin=a.margin,
        jpeg_quality=a.jpeg_quality,
        overwrite=a.overwrite,
        skip_bad=a.skip_bad,
        min_keypoints=a.min_keypoints,
        quiet=a.quiet,
    )
    cc.print_summary(summary)
    return summary


if __name__ == '__main__':
    from data_pipelines import convert_hmr_npz as _self

    errors.guard(_self.main)
