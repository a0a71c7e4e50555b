"""Training input pipeline: records -> augmented, batched clips, deterministic and resumable.

    cfg = PipelineConfig(data_root='data', datasets=(DatasetSpec('3dpw', 0.7),
                                                     DatasetSpec('coco', 0.3, as_images=True)),
                         num_frames=16, batch_size=4, num_workers=2)
    it = make_iterator(cfg)           # this process's shard (jax.process_index / process_count)
    batch = next(it)                  # dict of numpy arrays, shapes in batch_spec(); docs/data.md
    state = it.get_state(); ...; it.set_state(state)   # exact resume (store num_workers too)

A unit is a clip: T records of one track at frame stride s (T = 1: single frames). The grain
graph follows MaxText's grain order: per dataset shuffle -> repeat; weighted mix; tag each element
with its position in the global stream; per-process slice; load + augment (map); to_iter_dataset;
batch; mp_prefetch. The augmentation draw is seeded by (seed, global position), so it does not
depend on the process count, the worker count or on which process reads the element.

Worker count is part of the reproducibility contract: grain's workers each batch their own slice,
so changing num_workers changes batch composition and the state format.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Mapping, Optional, Sequence

import cv2
import grain
import numpy as np

from data_pipelines import augment as aug
from data_pipelines import record_reader, records, shards

POSE_SOURCES = ('gt', 'noisy_gt', 'detections')
IMAGE_FILLS = ('pad', 'repeat')


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One entry of the training mixture.

    name: dataset name (its records live in `<data_root>/<name>` unless `path` is given).
    weight: sampling weight in the mixture (normalised over the mixture).
    as_images: units are single records even when num_frames > 1 (image datasets such as COCO
      in a video config); the other T - 1 frames are filled per PipelineConfig.image_fill.
    max_frame_gap: consecutive stored frames further apart than this split a track into runs;
      clips never cross a gap (e.g. frames where the person was not annotated).
    """

    name: str
    weight: float = 1.0
    split: str = 'train'
    path: Optional[str] = None
    as_images: bool = False
    max_frame_gap: int = 1


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    data_root: str
    datasets: tuple = ()
    num_frames: int = 1  # T
    stride: int = 1  # s: a clip is frames f, f + s, ..., f + (T - 1) s of one run
    clip_hop: int = 1  # distance between the first frames of successive clips
    pad_short: bool = False  # runs shorter than a clip: one padded clip (True) or skipped
    image_fill: str = 'pad'  # as_images with T > 1: 'pad' (frame_valid=False) or 'repeat'
    augment: aug.AugmentConfig = aug.AugmentConfig()
    pose_source: str = 'gt'  # kp2d_input: 'gt', 'noisy_gt' or 'detections' (kp2d_det)
    noise: aug.NoiseConfig = aug.NoiseConfig()
    batch_size: int = 8  # per process, in clips
    seed: int = 0
    shuffle: bool = True
    num_epochs: Optional[int] = None  # None: repeat forever
    num_workers: int = 0  # grain mp_prefetch processes (0: in this process)
    prefetch: int = 2  # batches buffered per worker
    num_threads: int = 2  # reader threads per process (cv2 releases the GIL)
    read_buffer: int = 8  # elements prefetched by those threads
    skip_corrupt: bool = False  # a corrupt record becomes a padded frame (record_skipped)


def config_from_dict(d: Mapping[str, Any]) -> PipelineConfig:
    """PipelineConfig from a dict / ml_collections ConfigDict with the same field names.

    datasets: a sequence of mappings with DatasetSpec fields, or of (name, weight) pairs;
    augment / noise: mappings with AugmentConfig / NoiseConfig fields.
    """
    d = dict(d.to_dict() if hasattr(d, 'to_dict') else d)
    specs = []
    for s in d.pop('datasets', ()):
        if isinstance(s, Mapping):
            specs.append(DatasetSpec(**dict(s)))
        elif isinstance(s, DatasetSpec):
            specs.append(s)
        else:
            specs.append(DatasetSpec(*s))
    if 'augment' in d and isinstance(d['augment'], Mapping):
        d['augment'] = aug.AugmentConfig(**dict(d['augment']))
    if 'noise' in d and isinstance(d['noise'], Mapping):
        d['noise'] = aug.NoiseConfig(**dict(d['noise']))
    return PipelineConfig(datasets=tuple(specs), **d)


def _check_config(cfg: PipelineConfig) -> None:
    if not cfg.datasets:
        raise ValueError(
            'PipelineConfig.datasets is empty: the mixture needs at least one '
            'DatasetSpec(name, weight)'
        )
    for name, v in (
        ('num_frames', cfg.num_frames),
        ('stride', cfg.stride),
        ('clip_hop', cfg.clip_hop),
        ('batch_size', cfg.batch_size),
        ('num_threads', cfg.num_threads),
        ('read_buffer', cfg.read_buffer),
        ('prefetch', cfg.prefetch),
    ):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f'PipelineConfig.{name} must be an int >= 1, got {v!r}')
    if cfg.num_workers < 0:
        raise ValueError(f'PipelineConfig.num_workers must be >= 0, got {cfg.num_workers}')
    if cfg.pose_source not in POSE_SOURCES:
        raise ValueError(f'unknown pose_source {cfg.pose_source!r}; use one of {POSE_SOURCES}')
    if cfg.image_fill not in IMAGE_FILLS:
        raise ValueError(f'unknown image_fill {cfg.image_fill!r}; use one of {IMAGE_FILLS}')
    if cfg.num_epochs is not None and cfg.num_epochs < 1:
        raise ValueError(f'num_epochs must be None or >= 1, got {cfg.num_epochs}')
    for s in cfg.datasets:
        if not isinstance(s, DatasetSpec):
            raise TypeError(f'datasets must hold DatasetSpec entries, got {s!r}')
        if not s.weight > 0:
            raise ValueError(f'dataset {s.name!r}: weight must be > 0, got {s.weight}')
        if s.max_frame_gap < 1:
            raise ValueError(f'dataset {s.name!r}: max_frame_gap must be >= 1')
    names = [(s.name, s.split) for s in cfg.datasets]
    if len(set(names)) != len(names):
        raise ValueError(f'a dataset split appears twice in the mixture: {names}')


# ---------------------------------------------------------------- units (clips) of one dataset


def sequence_hash(name: str) -> int:
    """Stable non-negative int64 id of a sequence name (not hash(): salted per process)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), 'little') >> 1


@dataclasses.dataclass
class Source:
    """One dataset's reader and its units. Unit u reads records flat[offset[u] + k * step] for
    k < count[u] (count < T only for padded short runs and image units)."""

    spec: DatasetSpec
    reader: record_reader.RecordReader
    flat: np.ndarray  # int64 record indices, tracks' runs back to back
    offset: np.ndarray  # int64 [U]
    count: np.ndarray  # int32 [U]
    step: int  # stride in positions within flat (1 for image units)
    seq_ids: dict  # sequence name -> index in reader.sequences()

    def __len__(self) -> int:
        return len(self.offset)

    def unit_records(self, u: int) -> np.ndarray:
        return self.flat[self.offset[u] + self.step * np.arange(self.count[u])]


def open_reader(
    root: str, spec: DatasetSpec, skip_corrupt: bool = False
) -> record_reader.RecordReader:
    """The records of one mixture entry; errors name the path and the datasets that do exist."""
    path = spec.path or os.path.join(root, spec.name)
    if not os.path.isfile(os.path.join(path, shards.DATASET_INFO)):
        known = []
        if os.path.isdir(root):
            known = sorted(
                d
                for d in os.listdir(root)
                if os.path.isfile(os.path.join(root, d, shards.DATASET_INFO))
            )
        raise ValueError(
            f'unknown dataset {spec.name!r}: no records at {path} (no '
            f'{shards.DATASET_INFO}); datasets under {root!r}: {known}'
        )
    reader = record_reader.RecordReader(path, spec.split, skip_corrupt=skip_corrupt)
    if reader.name != spec.name:
        raise ValueError(f'dataset {spec.name!r}: the records at {path} are named {reader.name!r}')
    return reader


def build_source(root: str, spec: DatasetSpec, cfg: PipelineConfig) -> Source:
    reader = open_reader(root, spec, cfg.skip_corrupt)
    if len(reader) == 0:
        raise ValueError(f'dataset {spec.name!r} split {spec.split!r} has no records')
    seqs = reader.sequences()
    seq_ids = {s: i for i, s in enumerate(seqs)}
    if spec.as_images or cfg.num_frames == 1:
        n = len(reader)
        return Source(
            spec,
            reader,
            np.arange(n, dtype=np.int64),
            np.arange(n, dtype=np.int64),
            np.ones(n, np.int32),
            1,
            seq_ids,
        )
    t, s = cfg.num_frames, cfg.stride
    span = (t - 1) * s + 1
    flat, offsets, counts, longest = [], [], [], 0
    base = 0
    for seq in seqs:
        for track in reader.tracks_of(seq):
            frames = reader.frames_of(seq, track)
            idx = np.array([reader.index_of(seq, track, f) for f in frames], np.int64)
            cuts = np.flatnonzero(np.diff(frames) > spec.max_frame_gap) + 1
            for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(frames)]):
                n = int(hi - lo)
                longest = max(longest, n)
                if n >= span:
                    starts = np.arange(0, n - span + 1, cfg.clip_hop)
                    cnt = np.full(len(starts), t, np.int32)
                elif cfg.pad_short:
                    starts, cnt = np.zeros(1, np.int64), np.array([(n - 1) // s + 1], np.int32)
                else:
                    continue
                flat.append(idx[lo:hi])
                offsets.append(base + starts)
                counts.append(cnt)
                base += n
    if not offsets:
        raise ValueError(
            f'dataset {spec.name!r} split {spec.split!r}: no track has a clip of T={t} frames at '
            f'stride {s} ({span} consecutive frames; the longest run has {longest}). Use a '
            'smaller num_frames or stride, pad_short=True, or as_images=True'
        )
    return Source(
        spec,
        reader,
        np.concatenate(flat),
        np.concatenate(offsets).astype(np.int64),
        np.concatenate(counts),
        s,
        seq_ids,
    )


def build_sources(cfg: PipelineConfig) -> list:
    """Opens every dataset of the mixture and cuts it into units; checks they can share a batch."""
    _check_config(cfg)
    sources = [build_source(cfg.data_root, spec, cfg) for spec in cfg.datasets]
    kinds = {(s.reader.body_model, s.reader.num_joints) for s in sources}
    if len(kinds) > 1:
        raise ValueError(
            'a mixture must share one body model and joint count (fixed batch '
            'shapes); got '
            + ', '.join(
                f'{s.spec.name}: {s.reader.body_model}/{s.reader.num_joints}' for s in sources
            )
        )
    body_model, j = kinds.pop()
    aug.layout_for(body_model, j)
    cfg.augment.resolved(body_model)  # raises on a combination upstream never trains
    return sources


# ---------------------------------------------------------------- batch layout


def batch_spec(cfg: PipelineConfig, num_joints: int, body_model: str) -> dict:
    """name -> (shape, dtype) of every batch array (per process). Documented in docs/data.md."""
    b, t, j = cfg.batch_size, cfg.num_frames, num_joints
    p = records.BODY_MODELS[body_model][0]
    f32, i32, i64, b8 = np.float32, np.int32, np.int64, np.bool_
    spec = {
        'image': ((b, t, aug.OUT_H, aug.OUT_W, 3), np.uint8),
        'kp2d': ((b, t, j, 3), f32),
        'kp2d_input': ((b, t, j, 3), f32),
        'kp3d': ((b, t, j, 4), f32),  # x, y, z, confidence
        'pose': ((b, t, p), f32),
        'betas': ((b, t, 10), f32),
        'K': ((b, t, 3, 3), f32),
        'affine': ((b, t, 2, 3), f32),
        'box_center': ((b, t, 2), f32),
        'box_size': ((b, t), f32),
        'image_size': ((b, t, 2), i32),
        'dataset_id': ((b, t), i32),
        'sequence_id': ((b, t), i32),
        'sequence_hash': ((b, t), i64),
        'track': ((b, t), i64),
        'frame': ((b, t), i64),
        'record_index': ((b, t), i64),
        'position': ((b,), i64),
    }
    for k in (
        'has_kp2d',
        'has_kp2d_input',
        'has_kp3d',
        'has_pose',
        'has_betas',
        'frame_valid',
        'is_right',
        'flipped',
        'record_skipped',
    ):
        spec[k] = ((b, t), b8)
    return spec


# ---------------------------------------------------------------- grain transforms
# Module-level callables (not lambdas) so the graph pickles into mp_prefetch workers.


class _Tag:
    def __init__(self, dataset_id: int):
        self.dataset_id = dataset_id

    def __call__(self, unit):
        return self.dataset_id, int(unit)


def _with_position(position, element):
    return (int(position),) + tuple(element)


class ClipLoader:
    """(position, dataset id, unit) -> one augmented clip: dict of [T, ...] arrays (+ position)."""

    def __init__(self, sources: Sequence[Source], cfg: PipelineConfig):
        self.sources, self.cfg = list(sources), cfg
        r = self.sources[0].reader
        self.body_model, self.num_joints = r.body_model, r.num_joints
        self.layout = aug.layout_for(self.body_model, self.num_joints)
        self.aug_cfg = cfg.augment.resolved(self.body_model)

    def load(self, dataset_id: int, unit: int):
        """The unit's T records (None = padding) and decoded BGR crops."""
        src, t = self.sources[dataset_id], self.cfg.num_frames
        recs, imgs = [], []
        for i in src.unit_records(unit):
            rec = src.reader[int(i)]  # None: corrupt and skipped (skip_corrupt), a padded frame
            img = (
                None
                if rec is None
                else cv2.imdecode(np.frombuffer(rec['image'], np.uint8), cv2.IMREAD_COLOR)
            )
            if rec is not None and img is None:  # CRC fine, JPEG broken: corrupt all the same
                src.reader.report_corrupt(int(i), 'cannot decode its JPEG')
                rec = None
            recs.append(rec)
            imgs.append(img)
        if src.spec.as_images and self.cfg.image_fill == 'repeat':
            recs, imgs = recs * t, imgs * t  # a still "video": every frame real and valid
        pad = t - len(recs)
        return recs + [None] * pad, imgs + [None] * pad

    def __call__(self, element):
        position, dataset_id, unit = element
        cfg, src = self.cfg, self.sources[dataset_id]
        frames, images = self.load(dataset_id, unit)
        # One seed per element of the global stream: the same draw on any process / worker.
        rng_aug, rng_noise = (
            np.random.default_rng(s) for s in np.random.SeedSequence([cfg.seed, position]).spawn(2)
        )
        params = aug.draw_params(rng_aug, self.aug_cfg)
        out = aug.augment_clip(
            frames,
            images,
            params,
            body_model=self.body_model,
            layout=self.layout,
            mirror_left_hands=self.aug_cfg.mirror_left_hands,
            pose_source=cfg.pose_source,
            noise=cfg.noise,
            noise_rng=rng_noise,
        )
        t = cfg.num_frames
        out['dataset_id'] = np.full(t, dataset_id, np.int32)
        out['sequence_id'] = np.full(t, -1, np.int32)
        out['sequence_hash'] = np.full(t, -1, np.int64)
        out['track'] = np.full(t, -1, np.int64)
        out['frame'] = np.full(t, -1, np.int64)
        out['record_index'] = np.full(t, -1, np.int64)
        idx = src.unit_records(unit)
        out['record_skipped'] = np.zeros(t, np.bool_)
        out['record_skipped'][: len(idx)] = [f is None for f in frames[: len(idx)]]
        for k, rec in enumerate(frames):
            if rec is not None:
                out['sequence_id'][k] = src.seq_ids[rec['sequence']]
                out['sequence_hash'][k] = sequence_hash(rec['sequence'])
                out['track'][k] = rec['track']
                out['frame'][k] = rec['frame']
                out['record_index'][k] = idx[min(k, len(idx) - 1)]
        out['position'] = np.int64(position)
        return out


# ---------------------------------------------------------------- the grain graph


def _derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


def unit_dataset(
    cfg: PipelineConfig, sources: Sequence[Source], process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
    """This process's stream of (position, dataset id, unit): cheap, nothing is read yet."""
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index {process_index} not in [0, {process_count})')
    per_ds = []
    for i, src in enumerate(sources):
        ds = grain.MapDataset.range(len(src)).map(_Tag(i))
        if cfg.shuffle:  # global, index-based: every process computes the same permutation
            ds = ds.shuffle(seed=_derived_seed(cfg.seed, i))
        per_ds.append(ds.repeat(cfg.num_epochs))
    if len(per_ds) == 1:
        ds = per_ds[0]
    else:
        ds = grain.MapDataset.mix(per_ds, [s.spec.weight for s in sources])
    ds = ds.map_with_index(_with_position)
    return ds[process_index::process_count]


def _process_defaults(process_index, process_count):
    if process_index is None or process_count is None:
        import jax  # only when the caller does not say; keeps workers and tests light

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return int(process_index), int(process_count)


def build_dataset(
    cfg: PipelineConfig,
    process_index: Optional[int] = None,
    process_count: Optional[int] = None,
    sources: Optional[Sequence[Source]] = None,
) -> grain.IterDataset:
    """The batched grain IterDataset of this process (defaults: jax.process_index / count)."""
    process_index, process_count = _process_defaults(process_index, process_count)
    sources = build_sources(cfg) if sources is None else sources
    ds = unit_dataset(cfg, sources, process_index, process_count).map(ClipLoader(sources, cfg))
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=cfg.read_buffer)
    )
    it = it.batch(cfg.batch_size, drop_remainder=True)  # fixed shapes: a short tail is dropped
    if cfg.num_workers > 0:
        _absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=cfg.num_workers, per_worker_buffer_size=cfg.prefetch
            )
        )
    return it


def make_iterator(
    cfg: PipelineConfig, process_index: Optional[int] = None, process_count: Optional[int] = None
):
    """iter(build_dataset(...)): a grain DatasetIterator with get_state() / set_state()."""
    return iter(build_dataset(cfg, process_index, process_count))


def _absl_flags_parsed() -> None:
    # grain's mp_prefetch reads absl flags; outside absl.app.run they are unparsed and it raises
    # UnparsedFlagAccessError. Marking them parsed keeps the defaults.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
