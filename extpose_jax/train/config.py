"""Training-config validation and the typed objects built from it (configs/common.py fields).

`validate(cfg)` runs before any data is built or any array allocated: every bad value fails
here with its dotted field name. The builders turn the ConfigDict into the typed configs of
the modules that consume them (ExtPoseConfig, OptimConfig, PipelineConfig, LossWeights).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional

import jax.numpy as jnp

from data_pipelines import augment, pipeline
from extpose_jax import errors, losses
from extpose_jax.models import baselines, extpose, masks, vit
from extpose_jax.train import optim

VARIANTS = ('paper', 'small', 'base')  # configs/common.py's variants
ARCHS = tuple(baselines.CONFIG_VARIANTS) + tuple(baselines.BASELINES)
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
KEYPOINT_LAYOUT = {'smpl': 'openpose18', 'mano': 'hand21'}   # what the skeleton image draws
RECORD_LAYOUT = {'smpl': 'hmr44', 'mano': 'hand21'}          # what the records hold

_CHOICES = {
    'model.kind': ('smpl', 'mano'),
    'model.size': tuple(vit.SIZES),
    'model.arch': ARCHS,
    'model.mask': masks.STRATEGIES,
    'model.head_context': ('rgb', 'skeleton', 'both'),
    'model.pose_form': extpose.POSE_FORMS,
    'model.dtype': tuple(DTYPES),
    'model.attention': ('dense', 'blockwise', 'cudnn'),
    'data.pose_source': pipeline.POSE_SOURCES,
    'data.image_fill': pipeline.IMAGE_FILLS,
    'optim.schedule': optim.SCHEDULES,
    'optim.trainable': optim.STRATEGIES,
    'loss.normalize': ('sum', 'mean_per_frame'),
    'eval.dataset': ('3dpw', 'freihand', 'hint'),
}
_POSITIVE_INTS = ('data.num_frames', 'data.stride', 'data.clip_hop', 'data.batch_size',
                  'data.num_threads', 'data.read_buffer', 'train.steps',
                  'train.log_every', 'train.checkpoint_every', 'train.keep')
_AUTO_INTS = ('train.grad_accum', 'eval.batch_size')  # None: resolved by the preflight
_NON_NEGATIVE = ('optim.lr', 'optim.weight_decay', 'optim.warmup_steps', 'data.num_workers',
                 'loss.kp3d', 'loss.kp2d', 'loss.global_orient', 'loss.body_pose', 'loss.betas',
                 'loss.adversarial', 'eval.overlays')
_INTS = ('seed', 'optim.warmup_steps', 'data.num_workers', 'eval.overlays')
_BOOLS = ('data.pad_short', 'data.augment', 'data.skip_corrupt', 'model.causal', 'model.remat',
          'loss.use_adversarial', 'train.skip_nonfinite', 'preflight.enabled')
_NAMES = ('data_dir', 'data.split', 'eval.split')    # non-empty strings
# (field, directory?) of the paths a run reads; each must exist before any data is built.
_PATHS = (('body_models', True), ('data.root', True), ('init.checkpoint', None),
          ('model.mean_params', False))
_MESH_AXES = ('data', 'fsdp', 'tensor')
PREFLIGHT_COMPILE = ('auto', 'always', 'never')


class ConfigError(errors.UserError):
    """A config value that cannot work; the message starts with the dotted field name."""


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split('.'):
        if part not in node:
            raise ConfigError(f'config.{dotted}: missing (configs/common.py defines every field)')
        node = node[part]
    return node


def _fail(field: str, value, why: str):
    raise ConfigError(f'config.{field}={value!r}: {why}')


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    """A finite int or float: NaN and inf pass every `v < 0` test, so they are refused first."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate(cfg, *, check_paths: bool = True) -> None:
    """Raises ConfigError naming the first bad field. Cheap: no data, no arrays.

    check_paths: the path fields must exist (off for tools that describe a config elsewhere,
    e.g. the preflight simulating another machine).
    """
    if _get(cfg, 'variant') not in VARIANTS:
        _fail('variant', cfg.variant, f'use one of {VARIANTS}')
    for field, allowed in _CHOICES.items():
        v = _get(cfg, field)
        if v not in allowed:
            _fail(field, v, f'use one of {", ".join(map(repr, allowed))}')
    for field in _POSITIVE_INTS:
        v = _get(cfg, field)
        if not _is_int(v) or v < 1:
            _fail(field, v, 'must be an int >= 1')
    for field in _AUTO_INTS:
        v = _get(cfg, field)
        if v is not None and (not _is_int(v) or v < 1):
            _fail(field, v, 'must be an int >= 1, or None (chosen for the devices)')
    for field in _INTS:
        if not _is_int(_get(cfg, field)):
            _fail(field, _get(cfg, field), 'must be an int')
    for field in _BOOLS:
        if not isinstance(_get(cfg, field), bool):
            _fail(field, _get(cfg, field), 'must be True or False')
    for field in _NAMES:
        if not isinstance(_get(cfg, field), str) or not _get(cfg, field):
            _fail(field, _get(cfg, field), 'must be a non-empty string')
    if _get(cfg, 'preflight.compile') not in PREFLIGHT_COMPILE:
        _fail('preflight.compile', cfg.preflight.compile, f'use one of {PREFLIGHT_COMPILE}')
    for field in ('preflight.memory_gb', 'preflight.max_run_hours'):
        v = _get(cfg, field)
        if v is not None and (not _is_number(v) or not v > 0):
            _fail(field, v, 'must be a finite number > 0' + (', or None' if field.endswith('gb') else ''))
    for field in _NON_NEGATIVE:
        v = _get(cfg, field)
        if not _is_number(v) or v < 0:
            _fail(field, v, 'must be a finite number >= 0')
    for field in ('model.window', 'train.eval_every'):
        v = _get(cfg, field)
        if not _is_int(v) or v < -1:
            _fail(field, v, 'must be an int >= 0, or -1 for off / the default')
    t = _get(cfg, 'data.num_frames')
    hop = _get(cfg, 'eval.hop')
    if not _is_int(hop) or not (hop == -1 or 1 <= hop <= t):
        _fail('eval.hop', hop, f'must be an int in [1, data.num_frames={t}] (every frame in a '
              'window), or -1 for T // 2')
    v = _get(cfg, 'eval.max_frames')
    if not _is_int(v) or not (v == -1 or v >= 1):
        _fail('eval.max_frames', v, 'must be an int >= 1, or -1 for the whole split')
    p = _get(cfg, 'model.modality_dropout')
    if not _is_number(p) or not 0.0 <= p <= 1.0:
        _fail('model.modality_dropout', p, 'is a probability: use a value in [0, 1]')
    dpr = _get(cfg, 'model.drop_path_rate')
    if not _is_number(dpr) or not (dpr == -1 or 0.0 <= dpr < 1.0):
        _fail('model.drop_path_rate', dpr, 'use a rate in [0, 1), or -1 for the size default')
    clip = _get(cfg, 'optim.clip_norm')
    if not _is_number(clip):
        _fail('optim.clip_norm', clip, 'must be a finite number (<= 0: no clipping)')
    _validate_data(cfg)
    for axis in _MESH_AXES:
        v = _get(cfg, f'mesh.{axis}')
        if not _is_int(v) or (v < 1 and v != -1):
            _fail(f'mesh.{axis}', v, 'must be an int >= 1, or -1 for the remaining devices')
    rest = [a for a in _MESH_AXES if cfg.mesh[a] == -1]
    if len(rest) > 1:
        _fail(f'mesh.{rest[1]}', -1, f'at most one axis may be -1 (mesh.{rest[0]} is -1 too)')
    if cfg.train.grad_accum is not None and cfg.data.batch_size % cfg.train.grad_accum:
        _fail('train.grad_accum', cfg.train.grad_accum,
              f'must divide data.batch_size={cfg.data.batch_size}')
    if cfg.optim.schedule == 'warmup_cosine' and cfg.optim.warmup_steps >= cfg.train.steps:
        _fail('optim.warmup_steps', cfg.optim.warmup_steps,
              f'must be below train.steps={cfg.train.steps} for warmup_cosine')
    if cfg.model.arch == 'temporal_head' and cfg.model.mask not in ('frame', 'multimodal'):
        _fail('model.mask', cfg.model.mask, "temporal_head needs a within-frame mask: "
              "'frame' or 'multimodal' (frames meet only in the temporal module)")
    if cfg.model.kind == 'mano' and cfg.eval.dataset == '3dpw':
        _fail('eval.dataset', cfg.eval.dataset, "is a body dataset; model.kind='mano' needs "
              "'freihand' or 'hint'")
    if cfg.model.kind == 'smpl' and cfg.eval.dataset != '3dpw':
        _fail('eval.dataset', cfg.eval.dataset, "model.kind='smpl' is evaluated on '3dpw'")
    try:
        config = model_config(cfg)
        optim_config(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f'config.model / config.optim: {e}') from e
    _check_arch(cfg, config)
    if check_paths:
        check_paths_exist(cfg)


def _validate_data(cfg) -> None:
    if not cfg.data.datasets:
        _fail('data.datasets', cfg.data.datasets, 'the mixture needs at least one (name, weight)')
    names = []
    for i, entry in enumerate(cfg.data.datasets):
        if (len(entry) != 2 or not isinstance(entry[0], str) or not entry[0]
                or not _is_number(entry[1]) or not entry[1] > 0):
            _fail(f'data.datasets[{i}]', entry, 'must be a (name, finite weight > 0) pair')
        names.append(entry[0])
    if len(set(names)) != len(names):
        _fail('data.datasets', cfg.data.datasets, 'names a dataset twice')
    for name in cfg.data.as_images:
        if name not in names:
            _fail('data.as_images', name, f'is not in data.datasets {names}')


# What each config-rewrite arch sets (baselines.CONFIG_VARIANTS), by the config field it owns.
_ARCH_FIELDS = (('model.mask', lambda c: c.mask.strategy), ('model.window', lambda c: c.mask.window),
                ('model.causal', lambda c: c.mask.causal),
                ('model.head_context', lambda c: c.head_context),
                ('model.pose_form', lambda c: c.pose_form))


def _check_arch(cfg, config: extpose.ExtPoseConfig) -> None:
    """An arch that implies settings refuses a conflicting explicit value rather than silently
    replacing it: a field the rewrite changes must be left at ExtPose's default."""
    rewrite = baselines.CONFIG_VARIANTS.get(cfg.model.arch)
    if rewrite is None:
        return
    default = extpose.ExtPoseConfig(kind=config.kind)
    implied = rewrite(config)
    for field, get in _ARCH_FIELDS:
        if get(implied) != get(config) and get(config) != get(default):
            _fail(field, _get(cfg, field), f'conflicts with model.arch={cfg.model.arch!r}, which '
                  f'sets it to {_shown(field, get(implied))}; leave {field} at its default')


def _shown(field: str, value):
    return -1 if field == 'model.window' and value is None else repr(value)


def check_paths_exist(cfg) -> None:
    """Every path field names something that exists (cheap; run before any data is built)."""
    if bool(cfg.body_models) != bool(cfg.data.root):
        have, missing = ('body_models', 'data.root') if cfg.body_models else ('data.root', 'body_models')
        _fail(missing, _get(cfg, missing), f'set both body_models and data.root, or neither '
              f'for the synthetic default (config.{have} is set)')
    for field, is_dir in _PATHS:
        path = _get(cfg, field)
        if path is None:
            continue
        if not isinstance(path, str) or not path:
            _fail(field, path, 'must be a path, or None')
        if is_dir is True and not os.path.isdir(path):
            _fail(field, path, 'no such directory')
        if is_dir is False and not os.path.isfile(path):
            _fail(field, path, 'no such file')
        if is_dir is None and not os.path.exists(path):
            _fail(field, path, 'no such file or directory')


# ------------------------------------------------------------------------------ builders


def resolved(cfg, *, grad_accum: Optional[int] = None, eval_batch_size: Optional[int] = None):
    """A copy with the automatic fields set: the given values, else the config's own, else
    grad_accum 1 and an eval batch of twice the training micro-batch (forward only needs less
    memory per clip). The preflight passes what it measured to fit the devices."""
    out = cfg.copy_and_resolve_references()
    with out.unlocked():
        out.train.grad_accum = int(grad_accum or cfg.train.grad_accum or 1)
        micro = cfg.data.batch_size // out.train.grad_accum
        out.eval.batch_size = int(eval_batch_size or cfg.eval.batch_size or 2 * micro)
    return out


def is_resolved(cfg) -> bool:
    return all(_get(cfg, f) is not None for f in _AUTO_INTS)


def _mask_spec(cfg) -> masks.MaskSpec:
    m = cfg.model
    return masks.MaskSpec(m.mask, window=None if m.window < 0 else int(m.window), causal=bool(m.causal))


def model_config(cfg) -> extpose.ExtPoseConfig:
    m = cfg.model
    overrides = {'dtype': DTYPES[m.dtype], 'attention': m.attention, 'remat': bool(m.remat)}
    if m.drop_path_rate >= 0:
        overrides['drop_path_rate'] = float(m.drop_path_rate)
    return extpose.ExtPoseConfig(
        vit=vit.ViTConfig.of(m.size, **overrides), kind=m.kind, mask=_mask_spec(cfg),
        head_context=m.head_context, pose_form=m.pose_form,
        keypoint_layout=KEYPOINT_LAYOUT[m.kind], mean_params_path=m.mean_params)


def build_model(cfg):
    """The flax module of config.model.arch (ExtPose or an ablation baseline)."""
    return baselines.build(cfg.model.arch, model_config(cfg))


def optim_config(cfg) -> optim.OptimConfig:
    o = cfg.optim
    return optim.OptimConfig(
        lr=float(o.lr), weight_decay=float(o.weight_decay), schedule=o.schedule,
        warmup_steps=int(o.warmup_steps), total_steps=int(cfg.train.steps),
        clip_norm=float(o.clip_norm) if o.clip_norm > 0 else None, trainable=o.trainable,
        extra_trainable=tuple(_new_param_patterns(cfg)))


def disc_optim_config(cfg) -> optim.OptimConfig:
    """The discriminator's own AdamW (spec §5.2: same lr and weight decay as the generator's).

    It always trains fully and is never clipped: the trainable strategy and clip_norm describe
    the pose model. The schedule is shared, so both learning rates move together.
    """
    return dataclasses.replace(optim_config(cfg), clip_norm=None, trainable='full', extra_trainable=())


def new_param_prefixes(arch: str) -> tuple:
    """Top-level parameter names a baseline adds beside backbone / head ('x_' = a prefix)."""
    return baselines.NEW_PARAM_PREFIXES.get(arch, ())


def _new_param_patterns(cfg):
    # A baseline's own new parameters always train, whatever the strategy for the old ones.
    return [f'^{p}' if p.endswith('_') else f'^{p}/' for p in new_param_prefixes(cfg.model.arch)]


def loss_weights(cfg) -> losses.LossWeights:
    names = [f.name for f in dataclasses.fields(losses.LossWeights)]
    return losses.LossWeights(**{n: float(cfg.loss[n]) for n in names})


def eval_kwargs(cfg, *, max_frames: Optional[int] = None, pose_source: Optional[str] = None) -> dict:
    """evaluate.evaluate's window and input settings from cfg.eval / cfg.data, for every entry
    point alike (a command-line max_frames / pose_source overrides the config's)."""
    e = cfg.eval
    if max_frames is None and e.max_frames > 0:
        max_frames = int(e.max_frames)
    return dict(num_frames=cfg.data.num_frames, hop=None if e.hop < 0 else int(e.hop),
                max_frames=max_frames, pose_source=pose_source or cfg.data.pose_source,
                skip_corrupt=bool(cfg.data.skip_corrupt))


def pipeline_config(cfg, data_root: str, *, process_count: int = 1, train: bool = True,
                    seed: Optional[int] = None) -> pipeline.PipelineConfig:
    """This process's PipelineConfig: the global batch split evenly over processes."""
    d = cfg.data
    if d.batch_size % process_count:
        raise ConfigError(f'config.data.batch_size={d.batch_size}: must be divisible by the '
                          f'{process_count} processes (it is the global batch)')
    specs = tuple(pipeline.DatasetSpec(name, float(w), split=d.split, as_images=name in d.as_images)
                  for name, w in d.datasets)
    return pipeline.PipelineConfig(
        data_root=data_root, datasets=specs, num_frames=d.num_frames, stride=d.stride,
        clip_hop=d.clip_hop, pad_short=d.pad_short, image_fill=d.image_fill,
        augment=augment.AugmentConfig(enabled=bool(d.augment) and train),
        pose_source=d.pose_source, batch_size=d.batch_size // process_count,
        seed=cfg.seed if seed is None else seed, shuffle=train, num_workers=d.num_workers,
        num_threads=d.num_threads, read_buffer=d.read_buffer, skip_corrupt=d.skip_corrupt)
