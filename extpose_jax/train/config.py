"""Training-config validation and the typed objects built from it (configs/common.py fields).

`validate(cfg)` runs before any data is built or any array allocated: every bad value fails
here with its dotted field name. The builders turn the ConfigDict into the typed configs of
the modules that consume them (ExtPoseConfig, OptimConfig, PipelineConfig, LossWeights).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp

from data_pipelines import augment, pipeline
from extpose_jax import errors, losses
from extpose_jax.models import baselines, extpose, masks, vit
from extpose_jax.train import optim

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
_INT_OR_OFF = ('model.window', 'train.eval_every', 'eval.hop', 'eval.max_frames')  # -1 = off
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


def validate(cfg) -> None:
    """Raises ConfigError naming the first bad field. Cheap: no data, no arrays."""
    for field, allowed in _CHOICES.items():
        v = _get(cfg, field)
        if v not in allowed:
            _fail(field, v, f'use one of {", ".join(map(repr, allowed))}')
    for field in _POSITIVE_INTS:
        v = _get(cfg, field)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            _fail(field, v, 'must be an int >= 1')
    for field in _AUTO_INTS:
        v = _get(cfg, field)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            _fail(field, v, 'must be an int >= 1, or None (chosen for the devices)')
    if _get(cfg, 'preflight.compile') not in PREFLIGHT_COMPILE:
        _fail('preflight.compile', cfg.preflight.compile, f'use one of {PREFLIGHT_COMPILE}')
    for field in ('preflight.memory_gb', 'preflight.max_run_hours'):
        v = _get(cfg, field)
        if v is not None and (not isinstance(v, (int, float)) or not v > 0):
            _fail(field, v, 'must be a number > 0' + (', or None' if field.endswith('gb') else ''))
    for field in _NON_NEGATIVE:
        v = _get(cfg, field)
        if not isinstance(v, (int, float)) or v < 0:
            _fail(field, v, 'must be a number >= 0')
    for field in _INT_OR_OFF:
        v = _get(cfg, field)
        if not isinstance(v, int) or v < -1:
            _fail(field, v, 'must be an int >= 0, or -1 for off / the default')
    for field in ('loss.use_adversarial', 'preflight.enabled'):
        if not isinstance(_get(cfg, field), bool):
            _fail(field, _get(cfg, field), 'must be True or False')
    p = _get(cfg, 'model.modality_dropout')
    if not 0.0 <= p <= 1.0:
        _fail('model.modality_dropout', p, 'is a probability: use a value in [0, 1]')
    dpr = _get(cfg, 'model.drop_path_rate')
    if not (dpr == -1 or 0.0 <= dpr < 1.0):
        _fail('model.drop_path_rate', dpr, 'use a rate in [0, 1), or -1 for the size default')
    if not cfg.data.datasets:
        _fail('data.datasets', cfg.data.datasets, 'the mixture needs at least one (name, weight)')
    names = []
    for i, entry in enumerate(cfg.data.datasets):
        if len(entry) != 2 or not isinstance(entry[0], str) or not entry[1] > 0:
            _fail(f'data.datasets[{i}]', entry, 'must be a (name, weight > 0) pair')
        names.append(entry[0])
    for name in cfg.data.as_images:
        if name not in names:
            _fail('data.as_images', name, f'is not in data.datasets {names}')
    for axis in _MESH_AXES:
        v = _get(cfg, f'mesh.{axis}')
        if not isinstance(v, int) or (v < 1 and v != -1):
            _fail(f'mesh.{axis}', v, 'must be an int >= 1, or -1 for the remaining devices')
    if [cfg.mesh[a] for a in _MESH_AXES].count(-1) > 1:
        _fail('mesh', dict(cfg.mesh), 'at most one axis may be -1')
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
        model_config(cfg)
        optim_config(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f'config.model / config.optim: {e}') from e


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
        num_threads=d.num_threads, read_buffer=d.read_buffer)
