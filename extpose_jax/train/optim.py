"""AdamW with a schedule, optional clipping, and which parameters train (the poster's ablations).

    tx = make_optimizer(OptimConfig(lr=1e-5, weight_decay=1e-4, trainable='qk_only'))

`tx` sees only the 'params' collection; 'constants' (init_* buffers) live outside the optimizer.

Trainable strategies (paths are '/'-joined keys of the params tree, e.g. backbone/blocks_3/attn/qkv/kernel):
  'full'             every parameter.
  'qk_only'          only the q and k parts of the backbone's fused attn/qkv kernel and bias. The
                     fused output axis is [q | k | v] (vit.py), so this cannot be a per-leaf label:
                     the qkv leaves are labelled trainable and their v third is masked to zero both
                     in the gradient (so clipping's norm ignores it) and in the final update (so
                     AdamW's decoupled weight decay cannot move it). Everything else is frozen,
                     the head included (the ablation starts from a trained HMR 2.0 / HaMeR).
  'first_half'       the backbone blocks_0 .. blocks_{depth//2 - 1}, whole; nothing else.
  'frozen_backbone'  everything under head/; the ViT is frozen.
`extra_trainable` adds regexes (re.search on the path) whose leaves train fully on top of the
strategy, e.g. ('^head/',) for 'first_half + head'. Frozen leaves go through optax.set_to_zero,
so they carry no Adam moments and stay bit-identical.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import optax

STRATEGIES = ('full', 'qk_only', 'first_half', 'frozen_backbone')
SCHEDULES = ('constant', 'warmup_cosine')
_QKV = re.compile(r'^backbone/blocks_\d+/attn/qkv/(kernel|bias)$')
_BLOCK = re.compile(r'^backbone/blocks_(\d+)/')


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5  # HMR 2.0 fine-tuning value
    weight_decay: float = 1e-4  # applied to every trainable leaf, as torch AdamW upstream
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    schedule: str = 'constant'  # 'constant' | 'warmup_cosine'
    warmup_steps: int = 0
    total_steps: int = 1  # cosine length (warmup included)
    end_lr_factor: float = 0.0  # cosine ends at lr * end_lr_factor
    clip_norm: Optional[float] = None  # global-norm clipping over the trainable gradients
    trainable: str = 'full'
    extra_trainable: Tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, 'extra_trainable', tuple(self.extra_trainable))
        if self.trainable not in STRATEGIES:
            raise ValueError(f'OptimConfig.trainable: {self.trainable!r}; allowed: {STRATEGIES}')
        if self.schedule not in SCHEDULES:
            raise ValueError(f'OptimConfig.schedule: {self.schedule!r}; allowed: {SCHEDULES}')
        if self.schedule == 'warmup_cosine' and self.total_steps <= self.warmup_steps:
            raise ValueError(
                f'OptimConfig.total_steps={self.total_steps} must exceed '
                f'warmup_steps={self.warmup_steps} for warmup_cosine'
            )


def path_str(path) -> str:
    """Key path -> 'a/b/c', keeping only dict keys (box attributes such as .value are skipped)."""
    return '/'.join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def _depth(params) -> int:
    blocks = params.get('backbone', {}) if hasattr(params, 'get') else {}
    return sum(1 for k in blocks if _BLOCK.match(f'backbone/{k}/'))


def trainable_kind(path: str, cfg: OptimConfig, depth: int) -> str:
    """'train' (whole leaf), 'qk' (leaf trains except its v third) or 'frozen'."""
    if any(re.search(r, path) for r in cfg.extra_trainable) or cfg.trainable == 'full':
        return 'train'
    if cfg.trainable == 'qk_only':
        return 'qk' if _QKV.match(path) else 'frozen'
    if cfg.trainable == 'first_half':
        m = _BLOCK.match(path)
        return 'train' if m and int(m.group(1)) < depth // 2 else 'frozen'
    return 'train' if path.startswith('head/') else 'frozen'  # frozen_backbone


def param_labels(params, cfg: OptimConfig):
    """Tree of 'train' / 'frozen' labels for optax.multi_transform ('qk' leaves count as train)."""
    depth = _depth(params)

    def one(path, _):
        return 'frozen' if trainable_kind(path_str(path), cfg, depth) == 'frozen' else 'train'

    return jax.tree_util.tree_map_with_path(one, params)


def v_slice_mask(path: str, shape) -> jnp.ndarray | None:
    """For a fused qkv leaf, a {0, 1} mask over its last axis that is 0 on the v third."""
    if not _QKV.match(path):
        return None
    n = shape[-1] // 3
    return jnp.arange(shape[-1]) < 2 * n  # broadcasts over the kernel's input axis


def _zero_v(cfg: OptimConfig) -> optax.GradientTransformation:
    """Zeroes the v third of fused qkv leaves (a no-op unless the strategy is 'qk_only').

    Path-based and stateless, so it works inside multi_transform's masked subtrees.
    """
    if cfg.trainable != 'qk_only':
        return optax.identity()

    def update(updates, state, params=None):
        del params

        def one(path, u):
            p = path_str(path)
            if any(re.search(r, p) for r in cfg.extra_trainable):
                return u
            m = v_slice_mask(p, u.shape)
            return u if m is None else jnp.where(m, u, jnp.zeros_like(u))

        return jax.tree_util.tree_map_with_path(one, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_schedule(cfg: OptimConfig):
    if cfg.schedule == 'constant':
        return optax.constant_schedule(cfg.lr)
    return optax.warmup_cosine_decay_schedule(
        0.0, cfg.lr, cfg.warmup_steps, cfg.total_steps, end_value=cfg.lr * cfg.end_lr_factor
    )


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    chain = [_zero_v(cfg)]  # before clipping: v's gradient is not in the norm
    if cfg.clip_norm is not None:
        chain.append(optax.clip_by_global_norm(cfg.clip_norm))
    chain += [
        optax.adamw(make_schedule(cfg), cfg.b1, cfg.b2, cfg.eps, weight_decay=cfg.weight_decay),
        _zero_v(cfg),
    ]  # after AdamW: weight decay must not move v either
    train = optax.chain(*chain)
    if cfg.trainable == 'full' and not cfg.extra_trainable:
        return train
    return optax.multi_transform(
        {'train': train, 'frozen': optax.set_to_zero()}, lambda params: param_labels(params, cfg)
    )
