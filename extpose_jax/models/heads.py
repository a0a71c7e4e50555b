"""HMR 2.0 / HaMeR transformer-decoder heads (SMPL and MANO) in Flax linen.

Architecture (upstream's heads): one learned query token (to_token_embedding(0) +
pos_embedding, i.e. that Linear's bias plus the embedding) runs through 6 pre-norm decoder
layers [self-attention, cross-attention to the backbone tokens, feed-forward], each with a
residual and no final norm. Linear readouts add a residual to the mean parameters (one IEF
step); the 6D pose becomes rotation matrices with `geometry.rot6d_to_matrix` (HMR 2.0 halves).

ExtPose adds no parameters, so (our reading) the same head runs per frame and its context may
be the frame's RGB tokens, skeleton tokens or both (192 or 384 tokens); cross-attention takes
any context length. `__call__` accepts any leading dims, so (B, T, N, C) context gives (B, T, ...)
outputs, frame by frame. `select_context` builds rgb / skeleton / both contexts with masks.

The decoder's shape is a SIZES entry: 'hmr2' (the checkpoints'; the shapes below) or 'tiny'
(the same tree, narrower and 2 layers deep, for CPU runs).

Parameter tree: one leaf per PyTorch key (`head_keymap.head_key_map` lists the pairs; L = 0..5; torch keys
below drop the 'smpl_head.' / 'mano_head.' prefix, and T = 'transformer.transformer.layers.L'):

  params/transformer/pos_embedding (1, 1, 1024)           transformer.pos_embedding
  params/transformer/to_token_embedding/{kernel (1, 1024), bias}
                                                          transformer.to_token_embedding.*
  params/transformer/layers_L/self_attn/norm/{scale, bias}       T.0.norm.{weight, bias}
  params/transformer/layers_L/self_attn/to_qkv/kernel (1024, 3, 8, 64)   T.0.fn.to_qkv.weight
  params/transformer/layers_L/self_attn/to_out/{kernel (8, 64, 1024), bias}  T.0.fn.to_out.0.*
  params/transformer/layers_L/cross_attn/norm/{scale, bias}      T.1.norm.*
  params/transformer/layers_L/cross_attn/to_q/kernel (1024, 8, 64)      T.1.fn.to_q.weight
  params/transformer/layers_L/cross_attn/to_kv/kernel (1280, 2, 8, 64)  T.1.fn.to_kv.weight
  params/transformer/layers_L/cross_attn/to_out/{kernel (8, 64, 1024), bias} T.1.fn.to_out.0.*
  params/transformer/layers_L/ff/norm/{scale, bias}              T.2.norm.*
  params/transformer/layers_L/ff/net_0/{kernel (1024, 1024), bias}       T.2.fn.net.0.*
  params/transformer/layers_L/ff/net_3/{kernel (1024, 1024), bias}       T.2.fn.net.3.*
  params/{decpose, decshape, deccam}/{kernel (1024, n), bias}    {decpose, decshape, deccam}.*
  constants/{init_body_pose | init_hand_pose, init_betas, init_cam} (1, n)   the buffers

Kernels are split per head so the 'heads' axis can be sharded without resharding in the forward
pass. Every Linear converts with ONE rule (transpose plus a row-major reshape):
  flax kernel = W.T.reshape(flax_shape);  W = kernel.reshape(W.shape[::-1]).T
which is exact because PyTorch lays the fused outputs out as [q | k | v] and, inside each,
head-major (rearrange 'b n (h d) -> b h n d'). Everything else is copied (LayerNorm weight ->
scale). head_keymap.py's `from_torch_state_dict` / `to_torch_state_dict` do this and round-trip
bit for bit.

Logical axis names (flax `nn.with_logical_partitioning`; map them in a rules table):
  'embed' 1024 token width, 'context' 1280 backbone width (the ViT calls that width 'embed'),
  'heads' 8, 'kv' 64 head_dim (as vit.py's activation constraints), 'qkv' the stacked 3
  (to_qkv) / 2 (to_kv) -- keep it unsharded, 'mlp' 1024 feed-forward hidden,
  'token_in' 1 (to_token_embedding input), 'query' 1 (pos_embedding token axis),
  'pose_6d' npose, 'betas' 10, 'cam' 3 (readout outputs). pos_embedding's leading 1 is None.
The mean-parameter buffers in 'constants' are plain (unboxed) arrays: tiny, replicated, never
optimised.

Precision: parameters in `param_dtype`, matmuls in `dtype`, but LayerNorm, softmax, the readout
residual and the 6D -> matrix step always run in float32.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from extpose_jax import geometry

# Per-kind constants (as upstream): joints incl. the global orientation, output key, buffer.
_KINDS = {
    'smpl': dict(num_joints=24, pose_key='body_pose', init_pose='init_body_pose'),
    'mano': dict(num_joints=16, pose_key='hand_pose', init_pose='init_hand_pose'),
}


@dataclasses.dataclass(frozen=True)
class HeadSize:
    depth: int  # decoder layers
    dim: int  # the query token's width
    heads: int
    dim_head: int
    mlp_dim: int


# 'hmr2' is HMR 2.0's and HaMeR's decoder, fixed by their checkpoints. 'tiny' is for runs on a
# CPU (the small variant, tests): the decoder's shape, not its idea, changes; at hmr2's size it
# holds ~25M of a tiny model's ~28M parameters and most of its checkpoint bytes.
SIZES = {'hmr2': HeadSize(6, 1024, 8, 64, 1024), 'tiny': HeadSize(2, 256, 4, 32, 256)}
CONTEXT_DIM = 1280
NUM_BETAS = 10
LN_EPS = 1e-5  # PyTorch default; NOT flax's 1e-6 and NOT the ViT's 1e-6.
# SPIN's mean camera (not checked against its npz); only the fallback when no mean file is given.
DEFAULT_CAM = (0.9, 0.0, 0.0)


def head_size(name: str) -> HeadSize:
    if name not in SIZES:
        raise ValueError(f'unknown head size {name!r}; expected one of {sorted(SIZES)}')
    return SIZES[name]


def size_name(depth: int, dim: int, inner: int, mlp_dim: int) -> Optional[str]:
    """The SIZES entry with these weight shapes (inner = heads * dim_head), or None."""
    for name, s in SIZES.items():
        if (s.depth, s.dim, s.heads * s.dim_head, s.mlp_dim) == (depth, dim, inner, mlp_dim):
            return name
    return None


def _kind(kind: str) -> dict:
    if kind not in _KINDS:
        raise ValueError(f'unknown head kind {kind!r}; expected one of {sorted(_KINDS)}')
    return _KINDS[kind]


def npose(kind: str) -> int:
    return 6 * _kind(kind)['num_joints']


# ------------------------------------------------------------------------------ initialisers


def _torch_uniform(fan_in: int):
    """PyTorch's default Linear init for weight and bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    Only matters when a head is trained from scratch; ExtPose always loads a checkpoint.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _dense(features, axis, fan_in, kernel_axes, *, use_bias, name, cfg):
    """A PyTorch Linear as DenseGeneral: kernel (in dims..., out dims...), named logical axes."""
    n_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=use_bias,
        name=name,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        precision=cfg.precision,
        kernel_init=nn.with_logical_partitioning(_torch_uniform(fan_in), kernel_axes),
        bias_init=nn.with_logical_partitioning(_torch_uniform(fan_in), kernel_axes[-n_out:]),
    )


def _layer_norm(cfg, name='norm'):
    # float32 whatever the compute dtype: the statistics of a 1024-wide token are not bf16-safe.
    return nn.LayerNorm(
        epsilon=LN_EPS,
        dtype=jnp.float32,
        param_dtype=cfg.param_dtype,
        name=name,
        use_fast_variance=False,  # two-pass variance, as PyTorch
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ('embed',)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)),
    )


# ------------------------------------------------------------------------------ decoder blocks


class _Cfg(nn.Module):
    """Mixin for the dtype settings every block shares."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    precision: Any = None
    size: str = 'hmr2'  # a SIZES name

    @property
    def dims(self) -> HeadSize:
        return head_size(self.size)


def _attend(q, k, v, valid, precision):
    """softmax(q k^T / sqrt(d)) v per head; q (M, Q, H, D), k/v (M, N, H, D), valid (M, N) or None.

    Masked keys get zero weight. A row with NO valid key gets all-zero weights (the empty sum), so
    the attention read-out is 0 and the sub-block returns only to_out's bias: finite values and
    finite gradients, never NaN. (jax.nn.dot_product_attention would silently average all V.)
    """
    logits = jnp.einsum(
        'mqhd,mkhd->mhqk', q, k, precision=precision, preferred_element_type=jnp.float32
    )
    logits = logits * (q.shape[-1] ** -0.5)
    if valid is None:
        weights = jax.nn.softmax(logits, axis=-1)
    else:
        mask = valid[:, None, None, :]
        # A finite fill (not -inf) keeps an all-masked row finite: softmax of equal values.
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1) * mask
    return jnp.einsum('mhqk,mkhd->mqhd', weights.astype(v.dtype), v, precision=precision)


class SelfAttention(_Cfg):
    """PreNorm(Attention): layers.L.0. to_qkv has no bias; heads 8 x 64."""

    @nn.compact
    def __call__(self, x):
        d = self.dims
        h = _layer_norm(self)(x).astype(self.dtype)
        qkv = _dense(
            (3, d.heads, d.dim_head),
            -1,
            d.dim,
            ('embed', 'qkv', 'heads', 'kv'),
            use_bias=False,
            name='to_qkv',
            cfg=self,
        )(h)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        out = _attend(q, k, v, None, self.precision)
        return _dense(
            d.dim,
            (-2, -1),
            d.heads * d.dim_head,
            ('heads', 'kv', 'embed'),
            use_bias=True,
            name='to_out',
            cfg=self,
        )(out)


class CrossAttention(_Cfg):
    """PreNorm(CrossAttention): layers.L.1. Only the query is normed; the context is used as is."""

    @nn.compact
    def __call__(self, x, context, context_valid=None):
        d = self.dims
        h = _layer_norm(self)(x).astype(self.dtype)
        q = _dense(
            (d.heads, d.dim_head),
            -1,
            d.dim,
            ('embed', 'heads', 'kv'),
            use_bias=False,
            name='to_q',
            cfg=self,
        )(h)
        # fan_in follows the backbone (1280 for ViT-H upstream; smaller ViTs work the same way).
        kv = _dense(
            (2, d.heads, d.dim_head),
            -1,
            context.shape[-1],
            ('context', 'qkv', 'heads', 'kv'),
            use_bias=False,
            name='to_kv',
            cfg=self,
        )(context.astype(self.dtype))
        out = _attend(q, kv[..., 0, :, :], kv[..., 1, :, :], context_valid, self.precision)
        return _dense(
            d.dim,
            (-2, -1),
            d.heads * d.dim_head,
            ('heads', 'kv', 'embed'),
            use_bias=True,
            name='to_out',
            cfg=self,
        )(out)


class FeedForward(_Cfg):
    """PreNorm(FeedForward): layers.L.2; net.0 -> exact GELU -> net.3 (dropouts are 0)."""

    @nn.compact
    def __call__(self, x):
        d = self.dims
        h = _layer_norm(self)(x).astype(self.dtype)
        h = _dense(d.mlp_dim, -1, d.dim, ('embed', 'mlp'), use_bias=True, name='net_0', cfg=self)(h)
        h = nn.gelu(h, approximate=False)  # nn.GELU() upstream is the erf form
        return _dense(
            d.dim, -1, d.mlp_dim, ('mlp', 'embed'), use_bias=True, name='net_3', cfg=self
        )(h)


class _Layer(_Cfg):
    """layers_L: the three pre-norm residual sub-blocks, named self_attn / cross_attn / ff."""

    @nn.compact
    def __call__(self, x, context, context_valid):
        kw = dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            size=self.size,
        )
        # The residual stream stays float32 whatever the compute dtype.
        x = x + SelfAttention(name='self_attn', **kw)(x).astype(jnp.float32)
        x = x + CrossAttention(name='cross_attn', **kw)(x, context, context_valid).astype(
            jnp.float32
        )
        return x + FeedForward(name='ff', **kw)(x).astype(jnp.float32)


class TransformerDecoder(_Cfg):
    """transformer.*: query token -> depth layers, no final norm; (M, N, C) -> (M, 1, dim)."""

    @nn.compact
    def __call__(self, context, context_valid=None):
        d = self.dims
        # Upstream feeds zeros(B, 1, 1) through to_token_embedding; the Linear is kept (its weight
        # is in the checkpoint though it multiplies zero) so the tree maps 1:1 to the keys.
        zeros = jnp.zeros((context.shape[0], 1, 1), self.dtype)
        x = _dense(
            d.dim, -1, 1, ('token_in', 'embed'), use_bias=True, name='to_token_embedding', cfg=self
        )(zeros)
        pos = self.param(
            'pos_embedding',
            nn.with_logical_partitioning(
                nn.initializers.normal(1.0),  # torch.randn
                (None, 'query', 'embed'),
            ),
            (1, 1, d.dim),
            self.param_dtype,
        )
        x = x.astype(jnp.float32) + pos.astype(jnp.float32)
        kw = dict(
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            size=self.size,
        )
        for i in range(d.depth):
            x = _Layer(name=f'layers_{i}', **kw)(x, context, context_valid)
        return x


# ------------------------------------------------------------------------------ mean parameters

# HMR 2.0 / HaMeR keep these beside the body models (their data/ folder holds smpl/ and the npz);
# data_pipelines/mean_params.py measures them on a records split.
MEAN_PARAMS_FILES = {'smpl': 'smpl_mean_params.npz', 'mano': 'mano_mean_params.npz'}


def find_mean_params(body_models_dir, kind: str):
    """<body_models_dir>/<kind>_mean_params.npz when it exists, else None."""
    if not body_models_dir:
        return None
    path = os.path.join(os.fspath(body_models_dir), MEAN_PARAMS_FILES[kind])
    return path if os.path.isfile(path) else None


def mean_constants(kind: str, mean_params=None) -> dict:
    """The 'constants' collection: {init_body_pose | init_hand_pose, init_betas, init_cam}, (1, n).

    mean_params: None -> identity 6D rotation for every joint, zero betas, cam (0.9, 0, 0);
    a path to smpl_mean_params.npz / mano_mean_params.npz; or a mapping with the npz's keys
    'pose' (npose,), 'shape' (10,), 'cam' (3,). A released checkpoint carries its own buffers
    (the init_* buffers); `head_keymap.from_torch_state_dict` takes those instead.
    """
    cfg = _kind(kind)
    n = 6 * cfg['num_joints']
    if mean_params is None:
        # 6D of the identity: first column (1, 0, 0), second column (0, 1, 0) (HMR 2.0 halves).
        pose = np.tile(np.array([1, 0, 0, 0, 1, 0], np.float32), cfg['num_joints'])
        shape, cam = np.zeros(NUM_BETAS, np.float32), np.array(DEFAULT_CAM, np.float32)
    else:
        if isinstance(mean_params, str):
            with np.load(mean_params) as f:
                mean_params = {k: f[k] for k in ('pose', 'shape', 'cam')}
        pose, shape, cam = (
            np.asarray(mean_params[k], np.float32).reshape(-1) for k in ('pose', 'shape', 'cam')
        )
    for name, a, size in (('pose', pose, n), ('shape', shape, NUM_BETAS), ('cam', cam, 3)):
        if a.size != size:
            raise ValueError(f'{kind} mean {name}: expected {size} values, got {a.size}')
    return {cfg['init_pose']: pose[None], 'init_betas': shape[None], 'init_cam': cam[None]}


# ------------------------------------------------------------------------------ the head


class PoseHead(_Cfg):
    """SMPLTransformerDecoderHead (kind='smpl') / MANOTransformerDecoderHead (kind='mano').

    __call__(context (..., N, 1280), context_valid (..., N) bool or None) -> dict with leading
    dims (...):
      global_orient (..., 1, 3, 3); body_pose (..., 23, 3, 3) [smpl] or hand_pose (..., 15, 3, 3)
      [mano]; betas (..., 10); pred_cam (..., 3) = (s, tx, ty); pose_6d (..., J, 6) the raw 6D
      pose (decpose + mean), J = 24 / 16.
    Leading dims are flattened and restored, so (B, T, N, C) context applies the head to every
    frame independently (there is no temporal mixing in the head). N may be anything: 192 (one
    modality) or 384 (RGB + skeleton). context_valid masks tokens out of the cross-attention (a
    dropped modality, padding). A sample whose tokens are ALL masked gets a zero attention
    read-out in every layer (see `_attend`): defined, finite, and equal to running the decoder on
    its learned query with cross-attention contributing only to_out's bias.

    mean_params_path: optional smpl/mano_mean_params.npz for the 'constants' at init; else
    identity pose / zero betas / (0.9, 0, 0). Replace the collection with `mean_constants` or
    `head_keymap.from_torch_state_dict` to use other values. Apply with {'params': ..., 'constants': ...}.
    """

    kind: str = 'smpl'
    mean_params_path: Optional[str] = None
    context_dim: int = CONTEXT_DIM  # the backbone's width

    @nn.compact
    def __call__(self, context, context_valid=None):
        d = self.dims
        cfg = _kind(self.kind)
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f'PoseHead: context width {context.shape[-1]} != context_dim {self.context_dim}'
            )
        lead, n_ctx = context.shape[:-2], context.shape[-2]
        context = context.reshape((-1, n_ctx, self.context_dim))
        if context_valid is not None:
            context_valid = jnp.broadcast_to(context_valid, lead + (n_ctx,)).reshape((-1, n_ctx))
            context_valid = context_valid.astype(bool)

        def const(name):
            # Lazy: the npz is read only when the collection is created (init), never in apply.
            return self.variable(
                'constants',
                name,
                lambda: jnp.asarray(mean_constants(self.kind, self.mean_params_path)[name]),
            )

        init_pose, init_betas, init_cam = (
            const(cfg['init_pose']).value,
            const('init_betas').value,
            const('init_cam').value,
        )

        token = TransformerDecoder(
            name='transformer',
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            precision=self.precision,
            size=self.size,
        )(context, context_valid)[:, 0]
        token = token.astype(self.dtype)

        def readout(features, axis_name, name, init):
            y = _dense(
                features, -1, d.dim, ('embed', axis_name), use_bias=True, name=name, cfg=self
            )(token)
            # Residual on the means (one IEF step) in float32.
            return y.astype(jnp.float32) + init.astype(jnp.float32)

        pose = readout(6 * cfg['num_joints'], 'pose_6d', 'decpose', init_pose)
        betas = readout(NUM_BETAS, 'betas', 'decshape', init_betas)
        cam = readout(3, 'cam', 'deccam', init_cam)

        pose_6d = pose.reshape((-1, cfg['num_joints'], 6))
        rotmats = geometry.rot6d_to_matrix(pose_6d)
        out = {
            'global_orient': rotmats[:, :1],
            cfg['pose_key']: rotmats[:, 1:],
            'betas': betas,
            'pred_cam': cam,
            'pose_6d': pose_6d,
        }
        return {k: v.reshape(lead + v.shape[1:]) for k, v in out.items()}


def smpl_head(**kwargs) -> PoseHead:
    return PoseHead(kind='smpl', **kwargs)


def mano_head(**kwargs) -> PoseHead:
    return PoseHead(kind='mano', **kwargs)


def select_context(
    rgb=None, skeleton=None, mode: str = 'both', rgb_present=None, skeleton_present=None
):
    """Per-frame head context from the backbone's final tokens: 'rgb', 'skeleton' or 'both'.

    rgb / skeleton: (..., N, C) tokens of each modality (same leading dims); *_present: optional
    (...,) bool, False where that modality was dropped for the sample (modality dropout).
    Returns (context, context_valid): 'both' concatenates [rgb, skeleton] on the token axis;
    context_valid is (..., N_ctx) bool, or None when no presence flag was given.
    """
    parts = {
        'rgb': [(rgb, rgb_present)],
        'skeleton': [(skeleton, skeleton_present)],
        'both': [(rgb, rgb_present), (skeleton, skeleton_present)],
    }
    if mode not in parts:
        raise ValueError(f'mode must be rgb, skeleton or both, got {mode!r}')
    chosen = parts[mode]
    if any(t is None for t, _ in chosen):
        raise ValueError(f'mode {mode!r} needs the tokens of every modality it reads')
    context = jnp.concatenate([t for t, _ in chosen], axis=-2)
    if all(p is None for _, p in chosen):
        return context, None
    valid = [
        jnp.broadcast_to(
            jnp.ones((), bool) if p is None else jnp.asarray(p, bool)[..., None], t.shape[:-1]
        )
        for t, p in chosen
    ]
    return context, jnp.concatenate(valid, axis=-1)


__all__ = [
    'PoseHead',
    'smpl_head',
    'mano_head',
    'select_context',
    'mean_constants',
    'npose',
    'TransformerDecoder',
    'SelfAttention',
    'CrossAttention',
    'FeedForward',
]
