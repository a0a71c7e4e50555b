"""HMR 2.0 / HaMeR WebDataset tar shards -> records (image datasets).

    python -m data_pipelines.convert_webdataset --kind hmr2|hamer --root DATASET_DIR --out DIR \
        [--name NAME] [--split train] [--workers N] [--skip_bad] [--min_keypoints 5]

or `convert(root, out, kind=...)`, which returns a summary dict.

Input (spec datasets.md §4.1): DATASET_DIR is one dataset folder of 4D-Humans' or HaMeR's
`dataset_tars/`, e.g. `hmr2_training_data/dataset_tars/coco-train-2014-pruned/` holding
`000000.tar ... 000017.tar`. A tar holds samples; a sample is the members sharing a key (the
member path up to the first '.' of its file name, WebDataset's rule): `<key>.jpg` (or .jpeg /
.png; the FULL image) and `<key>.data.pyd`, a pickled list of person dicts, read by
extpose_jax.safe_pickle (never plain pickle: a tar from elsewhere could run code). Other members
(`detection.npz`) are ignored. Person dict keys:

| kind | keys |
|---|---|
| hmr2 | keypoints_2d (44, 3), keypoints_3d (44, 4), center (2,), scale (2,) or (), body_pose (72,), betas (10,), has_body_pose, has_betas |
| hamer | keypoints_2d (21, 3), keypoints_3d (21, 4), center, scale, hand_pose (48,), betas (10,), has_hand_pose, has_betas, right |

`extra_info` and `personid` are read past (the record schema has no place for them).

One record per person (person_record; shared with convert_hmr_npz):

| record field | value |
|---|---|
| sequence / track / frame | the sample key (e.g. `coco-train-2014-pruned/000000123456`) / the person's index in data.pyd / 0: one image is one "sequence", its people are tracks, as HInt's hands |
| box | the UNEXPANDED person box: centre ± scale·200/2 per axis (scale (w, h); a scalar is a square). The 3:4 expansion and the square side max(w·4/3, h) happen in augment.hmr_box, as upstream's expand_to_aspect_ratio at load time |
| image / crop_affine | cropping.crop_and_encode around that box (crop_size, margin) |
| kp2d | keypoints_2d through crop_affine, conf clipped to [0, 1]; rows with conf 0 are zero rows |
| kp3d | (J, 4): keypoints_3d[:, :3] as stored (metres; root-relative for most sets, so K need not project it) and its confidence clipped to [0, 1]; rows with conf 0 are zero rows. has_kp3d when ANY joint's conf is > 0: H36M / MPI-INF-3DHP bodies (3D on the 19 extra joints only) keep their 3D joints, the others weigh 0 in the loss. Persons with some but not all joints labelled are counted (`kp3d_partial`) |
| pose / betas | body_pose (72) / hand_pose (48), axis-angle, global orientation first; has_pose = has_body_pose / has_hand_pose > 0, has_betas > 0 |
| gender / hand_side | `neutral` (HMR 2.0 trains the neutral SMPL) / `right` if right > 0.5 else `left` |
| K | none in the tars: the nominal HMR 2.0 camera of the full image (convert_common.nominal_K) |

Left hands (right = 0) are stored as they are, NOT mirrored: keypoints, pose and image of the
left hand, hand_side='left', as convert_hint stores HInt's. The pipeline mirrors every left hand
at load time (augment.mirror_left_hands: image, keypoints, pose), which is where upstream's
loader mirrors them too; mirroring here as well would flip them twice.

People with fewer than `min_keypoints` 2D keypoints of conf > 0 are dropped and counted
(`few_keypoints`); 5 is HMR 2.0's loader default (FILTER_NUM_KP = 4: more than 4), 0 keeps all.

Shards: one tar -> one record shard, written by one worker (convert_common.convert_split with
shard_of), so a rerun skips the tars finished before (unless overwrite) and a failure leaves
no half-written shard. Bad input (a tar that does not read, a member that does not decode or
unpickle, a data.pyd holding a foreign class or not a list of dicts, a person missing a key or
with a mis-shaped one) stops the conversion with one ConversionError naming the tar, the member
and the key; with `skip_bad` the sample (or the person, for a bad person dict) is skipped and
counted instead (`bad_samples`, `bad_persons`; a tar that breaks off: `bad_tar_tails`).
"""

from __future__ import annotations

import os
import tarfile

import numpy as np

from data_pipelines import convert_common as cc
from data_pipelines import cropping
from extpose_jax import errors, safe_pickle

KINDS = {
    # kind -> (body model, joints, pose key, has-pose key, pose length)
    'hmr2': ('smpl', 44, 'body_pose', 'has_body_pose', 72),
    'hamer': ('mano', 21, 'hand_pose', 'has_hand_pose', 48),
}
IMAGE_EXTS = ('jpg', 'jpeg', 'png')
PYD = 'data.pyd'
MIN_KEYPOINTS = 5
BOX_UNIT = 200.0  # tar `scale` is box size / 200


def required_keys(kind: str) -> tuple:
    _, _, pose_key, has_pose_key, _ = KINDS[kind]
    keys = ('keypoints_2d', 'keypoints_3d', 'center', 'scale', pose_key, 'betas')
    keys += (has_pose_key, 'has_betas')
    return keys + (('right',) if kind == 'hamer' else ())


def _array(person, key, shape, where):
    try:
        a = np.asarray(person[key], np.float64)
    except (ValueError, TypeError, OverflowError) as e:
        raise cc.ConversionError(f'{where}: key {key!r} is not numeric ({e})') from e
    if shape is not None and a.shape != shape:
        raise cc.ConversionError(f'{where}: key {key!r} has shape {a.shape}, expected {shape}')
    if not np.all(np.isfinite(a)):
        raise cc.ConversionError(f'{where}: key {key!r} has non-finite values')
    return a


def read_person(person, kind: str, where: str) -> dict:
    """A person dict (tar data.pyd item, or one npz row in the same keys) -> checked float64
    arrays; ConversionError naming `where` and the key for anything missing or mis-shaped."""
    if not isinstance(person, dict):
        raise cc.ConversionError(f'{where}: expected a dict, got {type(person).__name__}')
    missing = [k for k in required_keys(kind) if k not in person]
    if missing:
        raise cc.ConversionError(f'{where}: missing key {missing[0]!r} (of {missing})')
    _, j, pose_key, has_pose_key, pose_dim = KINDS[kind]
    out = {
        'keypoints_2d': _array(person, 'keypoints_2d', (j, 3), where),
        'keypoints_3d': _array(person, 'keypoints_3d', (j, 4), where),
        'center': _array(person, 'center', (2,), where),
        'pose': _array(person, pose_key, (pose_dim,), where),
        'betas': _array(person, 'betas', (10,), where),
        'has_pose': float(_array(person, has_pose_key, None, where).reshape(-1)[:1].sum()) > 0,
        'has_betas': float(_array(person, 'has_betas', None, where).reshape(-1)[:1].sum()) > 0,
    }
    scale = _array(person, 'scale', None, where).reshape(-1)
    if scale.size == 1:  # a scalar scale is a square box
        scale = np.repeat(scale, 2)
    if scale.shape != (2,) or not np.all(scale > 0):
        raise cc.ConversionError(
            f"{where}: key 'scale' must be (w, h) or one positive value, got {person['scale']!r}"
        )
    out['scale'] = scale
    if kind == 'hamer':
        out['right'] = float(_array(person, 'right', None, where).reshape(-1)[:1].sum()) > 0.5
    return out


def person_box(center: np.ndarray, size_wh: np.ndarray) -> np.ndarray:
    """Unexpanded box x0, y0, x1, y1 of a centre and a (w, h) size in pixels."""
    half = np.asarray(size_wh, np.float64) / 2.0
    c = np.asarray(center, np.float64)
    return np.concatenate([c - half, c + half]).astype(np.float32)


def person_record(image, p: dict, box_wh, kind: str, sequence: str, track: int, opt) -> dict:
    """One record from read_person's dict; box_wh is the box size in PIXELS (tars: scale·200)."""
    body_model = KINDS[kind][0]
    hw = image.shape[:2]
    box = person_box(p['center'], box_wh)
    jpeg, affine = cropping.crop_and_encode(
        image, box, opt['crop_size'], opt['margin'], opt['jpeg_quality']
    )
    conf = np.clip(p['keypoints_2d'][:, 2], 0.0, 1.0)
    kp2d = cc.keypoints_to_crop(p['keypoints_2d'][:, :2], conf, affine)
    kp2d[conf <= 0] = 0.0
    conf3 = np.clip(p['keypoints_3d'][:, 3], 0.0, 1.0)
    kp3d = np.concatenate([p['keypoints_3d'][:, :3], conf3[:, None]], 1)
    kp3d[conf3 <= 0] = 0.0
    has_kp3d = bool(np.any(conf3 > 0))
    stats = opt['stats']
    if has_kp3d and not np.all(conf3 > 0):
        _count(opt, 'kp3d_partial')
    record = {
        'image': jpeg,
        'crop_affine': affine,
        'image_size': np.asarray(hw, np.int64),
        'K': cc.nominal_K(hw),
        'box': box,
        'kp2d': kp2d,
        'has_kp2d': bool(np.any(conf > 0)),
        'pose': p['pose'],
        'has_pose': p['has_pose'],
        'betas': p['betas'],
        'has_betas': p['has_betas'],
        'sequence': sequence,
        'track': int(track),
        'frame': 0,
    }
    if has_kp3d:
        record['kp3d'] = kp3d
    if body_model == 'smpl':
        record['gender'] = 'neutral'
    else:
        record['hand_side'] = 'right' if p['right'] else 'left'
    for key in ('has_pose', 'has_betas', 'has_kp2d'):
        stats[key] = stats.get(key, 0) + int(record[key])
    stats['has_kp3d'] = stats.get('has_kp3d', 0) + int(has_kp3d)
    return record


def enough_keypoints(p: dict, opt) -> bool:
    if int((p['keypoints_2d'][:, 2] > 0).sum()) >= opt['min_keypoints']:
        return True
    _count(opt, 'few_keypoints')
    return False


# ---------------------------------------------------------------------------- tars


def sample_key(member_name: str) -> tuple[str, str]:
    """WebDataset's split of a member path into (key, extension): the extension starts at the
    first '.' of the file name, so `a/b.data.pyd` -> ('a/b', 'data.pyd')."""
    folder, _, base = member_name.rpartition('/')
    stem, dot, ext = base.partition('.')
    return (folder + '/' + stem if folder else stem), (ext if dot else '')


def iter_samples(path: str):
    """(key, {extension: bytes}) for each sample of a tar, in order; a tar that cannot be read
    (or breaks off) raises ConversionError naming the tar and the last member read."""
    current, members, last = None, {}, '(none)'
    try:
        with tarfile.open(path, 'r:*') as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = sample_key(info.name)
                if key != current:
                    if current is not None:
                        yield current, members
                    current, members = key, {}
                members[ext.lower()] = tar.extractfile(info).read()
                last = info.name
    except (tarfile.TarError, OSError, EOFError) as e:
        raise _TarBroken(
            f'{path}: not a readable tar after member {last!r} ({type(e).__name__}: {e})',
            current,
            members,
        ) from e
    if current is not None:
        yield current, members


class _TarBroken(cc.ConversionError):
    def __init__(self, message, key, members):
        super().__init__(message)
        self.key, self.members = key, members


def read_sample(path: str, key: str, members: dict, kind: str):
    """(image RGB, list of person dicts) of one sample; ConversionError naming the member."""
    image_ext = next((e for e in IMAGE_EXTS if e in members), None)
    if image_ext is None:
        raise cc.ConversionError(
            f'{path}: sample {key!r} has no image member ({"/".join(IMAGE_EXTS)}); '
            f'it has {sorted(members)}'
        )
    if PYD not in members:
        raise cc.ConversionError(f'{path}: sample {key!r} has no {PYD} member')
    where = f'{path}: {key}.{PYD}'
    persons = safe_pickle.loads(
        members[PYD], where, cc.ConversionError, 'WebDataset data.pyd (a list of person dicts)'
    )
    if isinstance(persons, dict):  # one person written bare
        persons = [persons]
    if not isinstance(persons, (list, tuple)):
        raise cc.ConversionError(
            f'{where}: expected a list of person dicts, got {type(persons).__name__}'
        )
    image = cc.decode_image_bytes(members[image_ext], f'{path}: {key}.{image_ext}')
    return image, persons


def _count(opt, key):
    opt['stats'][key] = opt['stats'].get(key, 0) + 1


def process_tar(job: cc.Job, opt, progress):
    """Yields the records of one tar (see the module docstring)."""
    path, kind, skip = job.payload, opt['kind'], opt['skip_bad']
    samples = iter_samples(path)
    while True:
        try:
            key, members = next(samples)
        except StopIteration:
            return
        except _TarBroken:
            if not skip:
                raise
            _count(opt, 'bad_tar_tails')
            return
        try:
            image, persons = read_sample(path, key, members, kind)
        except cc.ConversionError:
            if not skip:
                raise
            _count(opt, 'bad_samples')
            progress(1)
            continue
        _count(opt, 'samples')
        for i, person in enumerate(persons):
            try:
                p = read_person(person, kind, f'{path}: {key}.{PYD}: person {i}')
            except cc.ConversionError:
                if not skip:
                    raise
                _count(opt, 'bad_persons')
                continue
            if enough_keypoints(p, opt):
                yield person_record(image, p, p['scale'] * BOX_UNIT, kind, key, i, opt)
        progress(1)


def list_tars(root: str) -> list[str]:
    root = cc.require_dir(root, 'WebDataset folder')
    tars = sorted(f for f in os.listdir(root) if f.endswith('.tar'))
    if not tars:
        raise FileNotFoundError(f'no .tar files in {root}')
    return [os.path.join(root, f) for f in tars]


def default_name(path: str) -> str:
    """`.../coco-train-2014-pruned` -> `coco_train_2014_pruned` (record names allow no '-')."""
    base = os.path.basename(os.path.normpath(path))
    return ''.join(c if c.isalnum() or c in '_.' else '_' for c in base)


def convert(
    root: str,
    out: str,
    *,
    kind: str,
    name: str | None = None,
    split: str = 'train',
    workers: int = 0,
    crop_size: int = 384,
    margin: float = 0.25,
    jpeg_quality: int = 95,
    overwrite: bool = False,
    skip_bad: bool = False,
    min_keypoints: int = MIN_KEYPOINTS,
    fsync: bool = True,
    quiet: bool = False,
) -> dict:
    """Converts one folder of tars into split `split` of dataset `name` (default: the name of
    `out` with '-' -> '_', which is what the pipeline looks for: <data_root>/<name>); returns {'dataset', 'kind', 'out', 'root', 'splits': {split: summary}}.
    The summary counts samples, persons written, has_* totals and the skips (module docstring)."""
    if kind not in KINDS:
        raise ValueError(f'kind must be one of {tuple(KINDS)}, got {kind!r}')
    tars = list_tars(os.fspath(root))
    name = name or default_name(out)
    body_model, num_joints = KINDS[kind][:2]
    jobs = [cc.Job(os.path.basename(t), t) for t in tars]
    shard_index = {job.sequence: k for k, job in enumerate(jobs)}
    options = dict(
        kind=kind,
        skip_bad=skip_bad,
        min_keypoints=int(min_keypoints),
        crop_size=crop_size,
        margin=margin,
        jpeg_quality=jpeg_quality,
    )
    s = cc.convert_split(
        name=name,
        split=split,
        out=out,
        jobs=jobs,
        process=process_tar,
        options=options,
        num_shards=len(jobs),
        shard_of=lambda job: shard_index[job.sequence],
        workers=workers,
        num_joints=num_joints,
        body_model=body_model,
        jpeg_quality=jpeg_quality,
        overwrite=overwrite,
        fsync=fsync,
        unit='image',
        quiet=quiet,
        desc=f'{name}/{split} ({len(jobs)} tars)',
    )
    return {
        'dataset': name,
        'kind': kind,
        'out': os.fspath(out),
        'root': os.fspath(root),
        'splits': {split: s},
    }


def add_args(parser, default_split: str) -> None:
    """The flags convert_webdataset and convert_hmr_npz share."""
    parser.add_argument('--kind', required=True, choices=tuple(KINDS))
    parser.add_argument('--out', required=True, help='output dataset directory')
    parser.add_argument('--name', default=None, help='dataset name (default: from --out)')
    parser.add_argument('--split', default=default_split)
    parser.add_argument('--workers', type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument('--crop_size', type=int, default=384)
    parser.add_argument('--margin', type=float, default=0.25)
    parser.add_argument('--jpeg_quality', type=int, default=95)
    parser.add_argument('--overwrite', action='store_true')
    parser.add_argument(
        '--skip_bad', action='store_true', help='skip and count bad samples instead of stopping'
    )
    parser.add_argument('--min_keypoints', type=int, default=MIN_KEYPOINTS)
    parser.add_argument('--quiet', action='store_true')


def main(argv=None) -> dict:
    parser = errors.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--root', required=True, help='one dataset folder of tars (dataset_tars/<name>/)'
    )
    add_args(parser, 'train')
    a = parser.parse_args(argv)
    summary = convert(
        a.root,
        a.out,
        kind=a.kind,
        name=a.name,
        split=a.split,
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
    from data_pipelines import convert_webdataset as _self

    errors.guard(_self.main)
