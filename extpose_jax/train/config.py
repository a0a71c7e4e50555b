"""Training-config validation and the typed objects built from it (configs/common.py fields).

`validate(cfg)` runs before any data is built or any array allocated: every bad value fails
here with its dotted field name. The builders turn the ConfigDict into the typed configs of
the modules that consume them (ExtPoseConfig, OptimConfig, PipelineConfig, LossWeights).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Optional

import jax.numpy as jnp

from data_pipelines import augment, pipeline
from data_pipelines.synthetic import raw_common
from extpose_jax import errors, losses
from extpose_jax.models import attention, baselines, extpose, heads, masks, vit
from extpose_jax.train import eval_protocols, optim

VARIANTS = ('paper', 'small', 'base')  # configs/common.py's variants
ARCHS = tuple(baselines.CONFIG_VARIANTS) + tuple(baselines.BASELINES)
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
KEYPOINT_LAYOUT = {'smpl': 'openpose18', 'mano': 'hand21'}  # what the skeleton image draws
RECORD_LAYOUT = {'smpl': 'hmr44', 'mano': 'hand21'}  # what the records hold

_CHOICES = {
    'model.kind': extpose.KINDS,
    'model.size': tuple(vit.SIZES),
    'model.head_size': tuple(heads.SIZES),
    'model.arch': ARCHS,
    'model.mask': masks.STRATEGIES,
    'model.head_context': extpose.HEAD_CONTEXTS,
    'model.pose_form': extpose.POSE_FORMS,
    'model.dtype': tuple(DTYPES),
    'model.attention': attention.CHOICES,
    'data.pose_source': pipeline.POSE_SOURCES,
    'synthetic_size': tuple(raw_common.SIZES),
    'data.image_fill': pipeline.IMAGE_FILLS,
    'optim.schedule': optim.SCHEDULES,
    'optim.trainable': optim.STRATEGIES,
    'loss.normalize': losses.NORMALIZATIONS,
}
_POSITIVE_INTS = (
    'data.num_frames',
    'data.stride',
    'data.clip_hop',
    'data.batch_size',
    'data.num_threads',
    'data.read_buffer',
    'train.steps',
    'train.log_every',
    'train.checkpoint_every',
    'train.keep',
)
_AUTO_INTS = ('train.grad_accum', 'eval.batch_size')  # None: resolved by the preflight
# None: off / the default, named in the message; else an int >= the bound.
_OPTIONAL_INTS = {'model.window': (0, 'the whole clip'), 'eval.hop': (1, 'data.num_frames // 2')}
_EVALUATOR_FIELDS = ('dataset', 'split', 'every', 'max_frames', 'pose_source')
_EVALUATOR_NAME = re.compile(r'^[A-Za-z0-9_]+$')  # a folder name and a TensorBoard tag part
_NON_NEGATIVE = (
    'optim.lr',
    'optim.weight_decay',
    'optim.warmup_steps',
    'data.num_workers',
    'loss.kp3d',
    'loss.kp2d',
    'loss.global_orient',
    'loss.body_pose',
    'loss.betas',
    'loss.adversarial',
    'eval.overlays',
)
_INTS = ('seed', 'optim.warmup_steps', 'data.num_workers', 'eval.overlays')
_BOOLS = (
    'data.pad_short',
    'data.augment',
    'data.skip_corrupt',
    'model.causal',
    'model.remat',
    'loss.use_adversarial',
    'train.skip_nonfinite',
    'preflight.enabled',
)
_NAMES = ('data_dir', 'data.split')  # non-empty strings
# (field, directory?) of the paths a run reads; each must exist before any data is built.
_PATHS = (
    ('body_models', True),
    ('data.root', True),
    ('init.checkpoint', None),
    ('model.mean_params', False),
)
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
            _fail(
                field,
                v,
                'must be a finite number > 0' + (', or None' if field.endswith('gb') else ''),
            )
    for field in _NON_NEGATIVE:
        v = _get(cfg, field)
        if not _is_number(v) or v < 0:
            _fail(field, v, 'must be a finite number >= 0')
    for field, (low, default) in _OPTIONAL_INTS.items():
        v = _get(cfg, field)
        if v is not None and (not _is_int(v) or v < low):
            _fail(field, v, f'must be an int >= {low}, or None for {default}')
    t = _get(cfg, 'data.num_frames')
    if cfg.eval.hop is not None and cfg.eval.hop > t:
        _fail(
            'eval.hop',
            cfg.eval.hop,
            f'must be at most data.num_frames={t} (every frame in a window)',
        )
    p = _get(cfg, 'model.modality_dropout')
    if not _is_number(p) or not 0.0 <= p <= 1.0:
        _fail('model.modality_dropout', p, 'is a probability: use a value in [0, 1]')
    dpr = _get(cfg, 'model.drop_path_rate')
    if dpr is not None and (not _is_number(dpr) or not 0.0 <= dpr < 1.0):
        _fail('model.drop_path_rate', dpr, 'use a rate in [0, 1), or None for the size default')
    clip = _get(cfg, 'optim.clip_norm')
    if clip is not None and (not _is_number(clip) or not clip > 0):
        _fail('optim.clip_norm', clip, 'must be a finite number > 0, or None for no clipping')
    _validate_evaluators(cfg)
    _validate_data(cfg)
    for axis in _MESH_AXES:
        v = _get(cfg, f'mesh.{axis}')
        if not _is_int(v) or (v < 1 and v != -1):
            _fail(f'mesh.{axis}', v, 'must be an int >= 1, or -1 for the remaining devices')
    rest = [a for a in _MESH_AXES if cfg.mesh[a] == -1]
    if len(rest) > 1:
        _fail(f'mesh.{rest[1]}', -1, f'at most one axis may be -1 (mesh.{rest[0]} is -1 too)')
    if cfg.train.grad_accum is not None and cfg.data.batch_size % cfg.train.grad_accum:
        _fail(
            'train.grad_accum',
            cfg.train.grad_accum,
            f'must divide data.batch_size={cfg.data.batch_size}',
        )
    if cfg.optim.schedule == 'warmup_cosine' and cfg.optim.warmup_steps >= cfg.train.steps:
        _fail(
            'optim.warmup_steps',
            cfg.optim.warmup_steps,
            f'must be below train.steps={cfg.train.steps} for warmup_cosine',
        )
    if cfg.model.arch == 'temporal_head' and cfg.model.mask not in ('frame', 'multimodal'):
        _fail(
            'model.mask',
            cfg.model.mask,
            'temporal_head needs a within-frame mask: '
            "'frame' or 'multimodal' (frames meet only in the temporal module)",
        )
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


def _validate_evaluators(cfg) -> None:
    if 'evaluators' not in cfg:
        raise ConfigError('config.evaluators: missing (configs/common.py defines every field)')
    for name, e in cfg.evaluators.items():
        field = f'evaluators.{name}'
        if not _EVALUATOR_NAME.match(name):
            _fail(field, name, 'an evaluator name uses letters, digits and _ only')
        if not hasattr(e, 'keys') or sorted(e.keys()) != sorted(_EVALUATOR_FIELDS):
            _fail(
                field,
                e,
                f'must have exactly the fields {_EVALUATOR_FIELDS} '
                '(configs/common.py: evaluator())',
            )
        protocol = eval_protocols.PROTOCOLS.get(e.dataset)
        if protocol is None:
            _fail(f'{field}.dataset', e.dataset, f'use one of {tuple(eval_protocols.PROTOCOLS)}')
        if protocol.kind != cfg.model.kind:
            _fail(
                f'{field}.dataset',
                e.dataset,
                f'scores {protocol.kind} models; '
                f'model.kind={cfg.model.kind!r} needs one of '
                f'{[n for n, p in eval_protocols.PROTOCOLS.items() if p.kind == cfg.model.kind]}',
            )
        if not isinstance(e.split, str) or not e.split:
            _fail(f'{field}.split', e.split, 'must be a non-empty string')
        if e.every is not None and (not _is_int(e.every) or e.every < 0):
            _fail(
                f'{field}.every',
                e.every,
                'must be an int >= 0 (0: never), or None for the start and the end of the run',
            )
        if e.max_frames is not None and (not _is_int(e.max_frames) or e.max_frames < 1):
            _fail(
                f'{field}.max_frames',
                e.max_frames,
                'must be an int >= 1, or None for the whole split',
            )
        if e.pose_source is not None and e.pose_source not in pipeline.POSE_SOURCES:
            _fail(
                f'{field}.pose_source',
                e.pose_source,
                f"use one of {pipeline.POSE_SOURCES}, or None for the protocol's "
                f'({protocol.pose_source!r} for {e.dataset})',
            )


def _validate_data(cfg) -> None:
    if not cfg.data.datasets:
        _fail('data.datasets', cfg.data.datasets, 'the mixture needs at least one (name, weight)')
    names = []
    for i, entry in enumerate(cfg.data.datasets):
        if (
            len(entry) != 2
            or not isinstance(entry[0], str)
            or not entry[0]
            or not _is_number(entry[1])
            or not entry[1] > 0
        ):
            _fail(f'data.datasets[{i}]', entry, 'must be a (name, finite weight > 0) pair')
        names.append(entry[0])
    if len(set(names)) != len(names):
        _fail('data.datasets', cfg.data.datasets, 'names a dataset twice')
    for name in cfg.data.as_images:
        if name not in names:
            _fail('data.as_images', name, f'is not in data.datasets {names}')
    if not isinstance(cfg.data.drop, str):
        _fail('data.drop', cfg.data.drop, "must be comma-separated names in one string, or ''")
    for name in dropped(cfg):
        if name not in names:
            _fail('data.drop', name, f'is not in data.datasets {names}')
    if not mixture(cfg):
        _fail('data.drop', cfg.data.drop, 'drops every dataset of data.datasets')


# What each config-rewrite arch sets (baselines.CONFIG_VARIANTS), by the config field it owns.
_ARCH_FIELDS = (
    ('model.mask', lambda c: c.mask.strategy),
    ('model.window', lambda c: c.mask.window),
    ('model.causal', lambda c: c.mask.causal),
    ('model.head_context', lambda c: c.head_context),
    ('model.pose_form', lambda c: c.pose_form),
)


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
            _fail(
                field,
                _get(cfg, field),
                f'conflicts with model.arch={cfg.model.arch!r}, which '
                f'sets it to {_shown(field, get(implied))}; leave {field} at its default',
            )


def _shown(field: str, value):
    return repr(value)


def check_paths_exist(cfg) -> None:
    """Every path field names something that exists (cheap; run before any data is built)."""
    if bool(cfg.body_models) != bool(cfg.data.root):
        have, missing = (
            ('body_models', 'data.root') if cfg.body_models else ('data.root', 'body_models')
        )
        _fail(
            missing,
            _get(cfg, missing),
            f'set both body_models and data.root, or neither '
            f'for the synthetic default (config.{have} is set)',
        )
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


def dropped(cfg) -> tuple:
    """data.drop's names: 'h36m_train, coco' -> ('h36m_train', 'coco')."""
    return tuple(n.strip() for n in cfg.data.drop.split(',') if n.strip())


def mixture(cfg) -> tuple:
    """What the run trains on: data.datasets' (name, weight) pairs less the data.drop names."""
    drop = set(dropped(cfg))
    return tuple((name, w) for name, w in cfg.data.datasets if name not in drop)


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
    return masks.MaskSpec(m.mask, window=m.window, causal=bool(m.causal))


def model_config(cfg, body_models_dir=None) -> extpose.ExtPoseConfig:
    """body_models_dir: where an unset model.mean_params is looked for (HMR 2.0's
    <kind>_mean_params.npz beside the body models); only the head's starting values depend on it."""
    m = cfg.model
    overrides = {'dtype': DTYPES[m.dtype], 'attention': m.attention, 'remat': bool(m.remat)}
    if m.drop_path_rate is not None:
        overrides['drop_path_rate'] = float(m.drop_path_rate)
    return extpose.ExtPoseConfig(
        vit=vit.ViTConfig.of(m.size, **overrides),
        kind=m.kind,
        mask=_mask_spec(cfg),
        head_context=m.head_context,
        pose_form=m.pose_form,
        keypoint_layout=KEYPOINT_LAYOUT[m.kind],
        mean_params_path=m.mean_params or heads.find_mean_params(body_models_dir, m.kind),
        head_size=m.head_size,
    )


def build_model(cfg, body_models_dir=None):
    """The flax module of config.model.arch (ExtPose or an ablation baseline)."""
    return baselines.build(cfg.model.arch, model_config(cfg, body_models_dir))


def optim_config(cfg) -> optim.OptimConfig:
    o = cfg.optim
    return optim.OptimConfig(
        lr=float(o.lr),
        weight_decay=float(o.weight_decay),
        schedule=o.schedule,
        warmup_steps=int(o.warmup_steps),
        total_steps=int(cfg.train.steps),
        clip_norm=None if o.clip_norm is None else float(o.clip_norm),
        trainable=o.trainable,
        extra_trainable=tuple(_new_param_patterns(cfg)),
    )


def disc_optim_config(cfg) -> optim.OptimConfig:
    """The discriminator's own AdamW (as HMR 2.0's: same lr and weight decay as the generator's).

    It always trains fully and is never clipped: the trainable strategy and clip_norm describe
    the pose model. The schedule is shared, so both learning rates move together.
    """
    return dataclasses.replace(
        optim_config(cfg), clip_norm=None, trainable='full', extra_trainable=()
    )


def new_param_prefixes(arch: str) -> tuple:
    """Top-level parameter names a baseline adds beside backbone / head ('x_' = a prefix)."""
    return baselines.NEW_PARAM_PREFIXES.get(arch, ())


def _new_param_patterns(cfg):
    # A baseline's own new parameters always train, whatever the strategy for the old ones.
    return [f'^{p}' if p.endswith('_') else f'^{p}/' for p in new_param_prefixes(cfg.model.arch)]


def loss_weights(cfg) -> losses.LossWeights:
    names = [f.name for f in dataclasses.fields(losses.LossWeights)]
    return losses.LossWeights(**{n: float(cfg.loss[n]) for n in names})


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """One entry of cfg.evaluators: a protocol's dataset / split scored at a cadence."""

    name: str
    dataset: str
    split: str
    every: Optional[int]  # None: the start and the end; n: also every n steps; 0: never
    max_frames: Optional[int]
    pose_source: Optional[str] = None  # None: the protocol's (eval_protocols)

    def due(self, step: int, total_steps: int) -> bool:
        """Evaluate after `step` of `total_steps` training steps (0: before the first)?"""
        if self.every == 0:
            return False
        return step in (0, total_steps) or bool(self.every) and step % self.every == 0

    @property
    def headline(self) -> str:
        """The metrics key of the protocol's one summary number."""
        return f'{self.dataset}/{eval_protocols.PROTOCOLS[self.dataset].headline}'

    def tag(self, key: str) -> str:
        """A metrics key as a TensorBoard tag: eval/<evaluator name>/<metric>."""
        prefix = f'{self.dataset}/'
        return f'eval/{self.name}/{key[len(prefix) :] if key.startswith(prefix) else key}'


def evaluators(cfg, *, active_only: bool = True) -> list[Evaluator]:
    """cfg.evaluators in config order; active_only drops those with every == 0."""
    out = [
        Evaluator(name, e.dataset, e.split, e.every, e.max_frames, e.pose_source)
        for name, e in cfg.evaluators.items()
    ]
    return [e for e in out if e.every != 0] if active_only else out


def evaluator(cfg, name: Optional[str] = None) -> Evaluator:
    """The named evaluator (any cadence), or the config's first one when name is None."""
    every = evaluators(cfg, active_only=False)
    if not every:
        raise ConfigError(
            'config.evaluators: empty; name a held-out evaluation (configs/common.py: evaluator())'
        )
    if name is None:
        return every[0]
    for e in every:
        if e.name == name:
            return e
    raise ConfigError(
        f'config.evaluators.{name}: no such evaluator; the config has {[e.name for e in every]}'
    )


def eval_kwargs(
    cfg, ev: Evaluator, *, max_frames: Optional[int] = None, pose_source: Optional[str] = None
) -> dict:
    """evaluate.evaluate's window and input settings from cfg.eval / the evaluator, for every
    entry point alike (a command-line max_frames / pose_source overrides the config's). The 2D
    input is the evaluator's pose_source, else its protocol's: detections where the dataset has
    them, never the training's data.pose_source (noisy ground truth is not a test-time input)."""
    return dict(
        num_frames=cfg.data.num_frames,
        hop=cfg.eval.hop,
        max_frames=max_frames or ev.max_frames,
        pose_source=pose_source
        or ev.pose_source
        or eval_protocols.PROTOCOLS[ev.dataset].pose_source,
        skip_corrupt=bool(cfg.data.skip_corrupt),
    )


def pipeline_config(
    cfg, data_root: str, *, process_count: int = 1, train: bool = True, seed: Optional[int] = None
) -> pipeline.PipelineConfig:
    """This process's PipelineConfig: the global batch split evenly over processes."""
    d = cfg.data
    if d.batch_size % process_count:
        raise ConfigError(
            f'config.data.batch_size={d.batch_size}: must be divisible by the '
            f'{process_count} processes (it is the global batch)'
        )
    specs = tuple(
        pipeline.DatasetSpec(name, float(w), split=d.split, as_images=name in d.as_images)
        for name, w in mixture(cfg)
    )
    return pipeline.PipelineConfig(
        data_root=data_root,
        datasets=specs,
        num_frames=d.num_frames,
        stride=d.stride,
        clip_hop=d.clip_hop,
        pad_short=d.pad_short,
        image_fill=d.image_fill,
        augment=augment.AugmentConfig(enabled=bool(d.augment) and train),
        pose_source=d.pose_source,
        batch_size=d.batch_size // process_count,
        seed=cfg.seed if seed is None else seed,
        shuffle=train,
        num_workers=d.num_workers,
        num_threads=d.num_threads,
        read_buffer=d.read_buffer,
        skip_corrupt=d.skip_corrupt,
    )
