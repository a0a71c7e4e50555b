"""HInt (HaMeR's Hand Interactions in the wild) annotations -> records.

    python -m data_pipelines.convert_hint --root RAW --out DIR \
        [--splits train val test] [--workers N] [--num_shards K] [--crop_size 384] \
        [--detections FILE]

or `convert(root, None, out, ...)`, which returns a summary dict. (`body_models` /
`--body_models` is accepted and ignored: HInt has no 3D labels.)

Input: RAW is `HInt_annotation[_partial]/` or a folder holding it. Every folder
`{TRAIN,VAL,TEST}_<source>_{img,seq}` (sources: newdays, epick, ego4d) of the requested splits
is read; it holds `<stem>.jpg` + `<stem>.json` pairs, one annotated hand per json. A folder with
json files but no jpg at all (Ego4D before the frames are retrieved) is skipped with a message
and counted in the summary (`skipped_folders`, with its json count). Some but not all images
missing is an error naming the first missing file, unless `allow_missing_images` (then those
stems are skipped and counted in `missing_images`).

JSON (a list holding one dict): `bbox` = [[x1, y1, x2, y2]] (nested once), `keypoints` = 21 x
[u, v] full-image pixels (OpenPose hand order), `occlusion` = 21 x 0/1 (1 = occluded), optional
`existence` = 21 x 0/1 (0 = keypoint not annotated; treated as all ones when absent).

Record keys (one record per stem): sequence = f'{source}_{kind}/{image id}' with the image id the
stem without its `_l` / `_r` suffix (e.g. `epick_img/EK_0064_P03_10_frame_0000000249`), track =
1 for a right hand, 0 for a left hand (HaMeR's `right` flag; the two hands of one image share the
sequence), frame = 0 (HInt frames are independent images).

| record field | value |
|---|---|
| dataset / split | `hint` / `train`, `val`, `test` (folders TRAIN_, VAL_, TEST_) |
| hand_side | from the stem suffix only: `_r` -> `right`, `_l` -> `left` (no mirroring here) |
| box | the annotated bbox (if degenerate: the tight box of the annotated keypoints) |
| kp2d | keypoints through crop_affine; conf = (1 - occlusion) * existence, HInt's own reading (`draw_hand.py`): the visible keypoints. Occluded keypoints keep their annotated position with conf 0; non-existent ones are zero rows |
| kp2d_occluded | occlusion * existence (has_kp2d_occluded True): 1 where the keypoint is annotated but occluded |
| kp2d_det | the hand's entry in the detections file (below) through crop_affine; undetected joints are zero rows; has_kp2d_det False (zeros) without an entry or with fewer than 6 detected joints, and for every record when there is no file |
| K | none in HInt: the nominal HMR 2.0 camera, f = 5000/256 * max(H, W), centre (W/2, H/2) |
| kp3d / pose / betas | absent (has_kp3d / has_pose / has_betas False) |

Evaluation subsets (HaMeR's TEST_*_{all,vis,occ}): VIS = kp2d conf > 0.5; OCC = kp2d_occluded >
0.5; ALL = either (every annotated keypoint, at its kp2d x, y).

2D detections (HInt ships none): `<HInt root>/detections.json` (beside the
`{TRAIN,VAL,TEST}_*` folders) when present, or the file given as `--detections FILE` /
`detections=`, is one JSON object mapping a hand's image path relative to the HInt root,
`<folder>/<stem>.jpg` (e.g. `TEST_epick_img/EK_0064_P03_10_frame_0000000249_r.jpg`: the stem's
`_l` / `_r` says which hand), to 21 x [x, y, confidence] in full-image pixels, OpenPose hand
order, confidence 0 = not detected. Run any 2D hand detector over the images (matching its
hands to the annotated ones) to make one; the synthetic world writes simulated ones
(synthetic/raw_hint.py). Hands without an entry get no detection; a malformed file stops the
conversion naming the file and the key.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

from data_pipelines import convert_common as cc
from data_pipelines import cropping
from extpose_jax import errors

NAME = 'hint'
SPLITS = ('train', 'val', 'test')
SPLIT_PREFIX = {'train': 'TRAIN', 'val': 'VAL', 'test': 'TEST'}
NUM_JOINTS = 21
_FOLDER_RE = re.compile(r'^(TRAIN|VAL|TEST)_([A-Za-z0-9]+)_(img|seq)$')
SIDES = {'_r': ('right', 1), '_l': ('left', 0)}


def find_root(root: str) -> str:
    cc.require_dir(root, 'HInt root')
    for cand in (
        root,
        os.path.join(root, 'HInt_annotation'),
        os.path.join(root, 'HInt_annotation_partial'),
    ):
        if os.path.isdir(cand) and any(
            _FOLDER_RE.match(f) and os.path.isdir(os.path.join(cand, f)) for f in os.listdir(cand)
        ):
            return cand
    raise FileNotFoundError(
        f'no HInt folders ({{TRAIN,VAL,TEST}}_<source>_img) in {root} nor in '
        f'{os.path.join(root, "HInt_annotation")}[_partial]'
    )


def list_jobs(root: str, split: str, allow_missing_images: bool = False, detections=None):
    """(jobs, info) for one split; info has skipped_folders {folder: json count}, missing images.
    With `detections` (load_detections' dict) each hand carries its entry (None: none)."""
    prefix = SPLIT_PREFIX[split]
    folders = sorted(
        f
        for f in os.listdir(root)
        if _FOLDER_RE.match(f)
        and f.startswith(prefix + '_')
        and os.path.isdir(os.path.join(root, f))
    )
    if not folders:
        raise FileNotFoundError(f'no HInt folder {prefix}_<source>_img in {root}')
    groups: dict[str, list] = {}
    info = {'folders': {}, 'skipped_folders': {}, 'missing_images': 0}
    for folder in folders:
        _, source, kind = _FOLDER_RE.match(folder).groups()
        path = os.path.join(root, folder)
        names = os.listdir(path)
        stems = sorted(n[:-5] for n in names if n.endswith('.json'))
        have_jpg = {n[:-4] for n in names if n.endswith('.jpg')}
        if stems and not have_jpg:
            print(
                f'hint: skipping {path}: {len(stems)} json files but no images '
                '(Ego4D frames not retrieved yet? see the HInt README)',
                file=sys.stderr,
            )
            info['skipped_folders'][folder] = len(stems)
            continue
        missing = {s for s in stems if s not in have_jpg}
        if missing and not allow_missing_images:
            raise FileNotFoundError(
                f'{len(missing)} of {len(stems)} HInt images missing in {path}, e.g. '
                f'{os.path.join(path, min(missing) + ".jpg")} (allow_missing_images=True skips them)'
            )
        info['missing_images'] += len(missing)
        n = 0
        for stem in stems:
            if stem in missing:
                continue
            side = SIDES.get(stem[-2:])
            if side is None:
                raise cc.ConversionError(
                    f'{os.path.join(path, stem + ".json")}: file name does not end '
                    'in _l or _r (the only place HInt records handedness)'
                )
            sequence = f'{source}_{kind}/{stem[:-2]}'
            det = detections.get(f'{folder}/{stem}.jpg') if detections is not None else None
            groups.setdefault(sequence, []).append(
                (os.path.join(path, stem + '.json'), os.path.join(path, stem + '.jpg'), side, det)
            )
            n += 1
        info['folders'][folder] = n
    jobs = []
    for sequence, items in groups.items():
        sides = [s[2][0] for s in items]
        if len(set(sides)) != len(sides):  # only possible with a duplicated stem
            raise cc.ConversionError(f'two {sides[0]} hands for one image: {items[0][0]}')
        jobs.append(cc.Job(sequence, items, units=len(items)))
    return jobs, info


def read_annotation(path: str) -> dict:
    """The one hand of a HInt json: bbox (4,), keypoints (21, 2), occlusion (21,), existence (21,)."""
    data = cc.load_json(path)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or len(data) != 1 or not isinstance(data[0], dict):
        what = f'a list of {len(data)}' if isinstance(data, list) else type(data).__name__
        raise cc.ConversionError(f'{path}: expected a list holding one dict, got {what}')
    d = data[0]
    for key in ('bbox', 'keypoints', 'occlusion'):
        if key not in d:
            raise cc.ConversionError(f'{path}: missing key {key!r}')
    try:
        bbox = np.asarray(d['bbox'], np.float64)
        kp = np.asarray(d['keypoints'], np.float64)
        occ = np.asarray(d['occlusion'], np.float64).reshape(-1)
        exist = np.asarray(d.get('existence', np.ones(21)), np.float64).reshape(-1)
    except (ValueError, TypeError, OverflowError) as e:  # OverflowError: an int beyond float
        raise cc.ConversionError(
            f'{path}: bbox / keypoints / occlusion are not numeric ({e})'
        ) from e
    if bbox.shape == (1, 4):
        bbox = bbox[0]
    if bbox.shape != (4,):
        raise cc.ConversionError(
            f"{path}: key 'bbox' has shape {bbox.shape}, expected [[x1, y1, x2, y2]]"
        )
    if kp.ndim != 2 or kp.shape[0] != NUM_JOINTS or kp.shape[1] not in (2, 3):
        raise cc.ConversionError(f"{path}: key 'keypoints' has shape {kp.shape}, expected (21, 2)")
    for key, a in (('occlusion', occ), ('existence', exist)):
        if a.shape != (NUM_JOINTS,):
            raise cc.ConversionError(f'{path}: key {key!r} has {a.size} values, expected 21')
    for key, a in (('bbox', bbox), ('keypoints', kp), ('occlusion', occ), ('existence', exist)):
        if not np.all(np.isfinite(a)):
            raise cc.ConversionError(f'{path}: key {key!r} has non-finite values')
    return {
        'bbox': bbox,
        'keypoints': kp[:, :2],
        'occlusion': (occ > 0.5).astype(np.float32),
        'existence': (exist > 0.5).astype(np.float32),
    }


def process_image(job: cc.Job, opt, progress):
    """Yields the records of one image (one per annotated hand)."""
    for json_path, image_path, (side, track), det in job.payload:
        ann = read_annotation(json_path)
        image = cc.read_image(image_path)
        hw = image.shape[:2]
        box = ann['bbox'].astype(np.float32)
        exist = ann['existence']
        if not (box[2] > box[0] and box[3] > box[1]):
            pts = ann['keypoints'][exist > 0]
            box = cc.points_box(pts) if len(pts) else box
            if not (box[2] > box[0] and box[3] > box[1]):
                raise cc.ConversionError(
                    f'{json_path}: degenerate bbox {ann["bbox"].tolist()} and no '
                    'keypoint extent to fall back on'
                )
            opt['stats']['bbox_from_keypoints'] = opt['stats'].get('bbox_from_keypoints', 0) + 1
        jpeg, affine = cropping.crop_and_encode(
            image, box, opt['crop_size'], opt['margin'], opt['jpeg_quality']
        )
        kp2d = cc.keypoints_to_crop(ann['keypoints'], (1.0 - ann['occlusion']) * exist, affine)
        kp2d[exist <= 0] = 0.0
        record = {
            'image': jpeg,
            'crop_affine': affine,
            'image_size': np.asarray(hw, np.int64),
            'K': cc.nominal_K(hw),
            'box': box,
            'kp2d': kp2d,
            'has_kp2d': True,
            'kp2d_occluded': ann['occlusion'] * exist,
            'has_kp2d_occluded': True,
            'hand_side': side,
            'sequence': job.sequence,
            'track': int(track),
            'frame': 0,
        }
        if opt['with_detections']:
            record['kp2d_det'], record['has_kp2d_det'] = cc.detections_to_crop(
                det, affine, NUM_JOINTS
            )
            stats = opt['stats']
            stats['with_detection'] = stats.get('with_detection', 0) + record['has_kp2d_det']
        opt['stats']['occluded_keypoints'] = opt['stats'].get('occluded_keypoints', 0) + int(
            (ann['occlusion'] * exist).sum()
        )
        yield record
        progress(1)


def convert(
    root: str,
    body_models: str | None,
    out: str,
    *,
    splits=SPLITS,
    workers: int = 0,
    num_shards: int = 16,
    crop_size: int = 384,
    margin: float = 0.25,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    allow_missing_images: bool = False,
    fsync: bool = True,
    quiet: bool = False,
    detections: str | None = None,
) -> dict:
    """Converts the requested HInt splits; returns {'dataset', 'out', 'root', 'detections',
    'splits': {split: summary}} ('detections': the file read, or None).

    Same signature as the other converters; body_models is ignored (may be None). Each split's
    summary adds `folders` (records listed per folder), `skipped_folders` ({folder: json count}
    for folders without images) and `missing_images`. detections: a detections file (module
    docstring); None: detections.json in the HInt root if it exists, else none.
    """
    del body_models
    root = find_root(os.fspath(root))
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f'unknown HInt split {split!r}; expected one of {SPLITS}')
    det_path = cc.find_detections(root, detections)
    dets = cc.load_detections(det_path, NUM_JOINTS) if det_path else None
    listed = {split: list_jobs(root, split, allow_missing_images, dets) for split in splits}
    options = dict(
        crop_size=crop_size,
        margin=margin,
        jpeg_quality=jpeg_quality,
        with_detections=dets is not None,
    )
    summary = {
        'dataset': NAME,
        'out': os.fspath(out),
        'root': root,
        'detections': det_path,
        'splits': {},
    }
    with cc.WorkerPool(workers) as pool:
        for split in splits:
            jobs, info = listed[split]
            s = cc.convert_split(
                name=NAME,
                split=split,
                out=out,
                jobs=jobs,
                process=process_image,
                options=options,
                num_shards=num_shards,
                workers=pool,
                num_joints=NUM_JOINTS,
                body_model='mano',
                jpeg_quality=jpeg_quality,
                overwrite=overwrite,
                fsync=fsync,
                unit='hand',
                quiet=quiet,
            )
            s.update(info)
            summary['splits'][split] = s
    return summary


def main(argv=None) -> dict:
    parser = errors.ArgumentParser(description=__doc__.split('\n')[0])
    cc.add_common_args(parser, splits=list(SPLITS), num_shards=16, body_models=False)
    parser.add_argument('--body_models', default=None, help='ignored (HInt has no 3D labels)')
    parser.add_argument(
        '--allow_missing_images',
        action='store_true',
        help='skip (and count) stems whose jpg is missing in a folder that has some images',
    )
    cc.add_detections_arg(parser, 'the HInt root')
    a = parser.parse_args(argv)
    summary = convert(
        a.root,
        None,
        a.out,
        splits=a.splits,
        workers=a.workers,
        num_shards=a.num_shards,
        crop_size=a.crop_size,
        margin=a.margin,
        jpeg_quality=a.jpeg_quality,
        overwrite=a.overwrite,
        allow_missing_images=a.allow_missing_images,
        quiet=a.quiet,
        detections=a.detections,
    )
    cc.print_summary(summary)
    return summary


if __name__ == '__main__':
    from data_pipelines import convert_hint as _self

    errors.guard(_self.main)
