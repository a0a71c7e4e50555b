"""ViTPose / HMR 2.0 / HaMeR backbone over any token layout (upstream backbones/vit.py).

One ViT for every stream: RGB and skeleton images, all frames and views, go through the same
patch embedding, position embedding and blocks; only the attention mask (masks.py) differs.
With T = 1, one modality and strategy 'frame' this is exactly the upstream image ViT.

    model = ViT(ViTConfig.of('huge'))
    layout = masks.TokenLayout(frames=16, modalities=('rgb', 'skeleton'))
    tokens = model.apply(params, images, layout, masks.MaskSpec('extpose'), key_valid)
    # images (B, S = T*V*M, 256, 192, 3) in the layout's stream order -> tokens (B, S, 192, C)

Upstream details kept: Conv 16x16 / stride 16 / padding 2 (256x192 -> 16x12 tokens, row-major);
no cls token, but pos_embed is (1, 1 + 192, C) and its slot 0 is added to every patch token;
pre-norm blocks, LayerNorm eps 1e-6, fused qkv Dense(3C) with [q | k | v] output columns
head-major, proj, MLP fc1 -> exact (erf) GELU -> fc2, stochastic depth linspace(0, rate, depth),
final `last_norm`. Parameter names mirror the PyTorch keys (blocks.3.attn.qkv.weight <->
blocks_3/attn/qkv/kernel), so a converter maps them 1:1 with the usual Linear / Conv transposes.

Logical axis names (every parameter; the rules table in train/ maps them to mesh axes):
  'embed'  model width C: residual stream, LayerNorm scale/bias, patch conv output, pos_embed
           channels, inputs of qkv/fc1, outputs of proj/fc2
  'qkv'    the fused 3C output of attn/qkv ([q | k | v], each head-major). Its contiguous
           shards do not line up with heads, so tensor parallelism should leave it unsharded
           (or reshard after the split)
  'heads'  the C = heads * head_dim input of attn/proj (concatenated head outputs)
  'mlp'    the MLP hidden width
  None     small axes never worth sharding: conv kernel height/width/in-channels, pos_embed's
           leading 1 and token axes
Activation constraints (models/logical.py; no-ops unless a train step is being traced under
sharding.activation_sharding): ('batch', 'seq', 'embed') on the residual stream,
('batch', 'seq', 'heads', 'kv') on q/k/v ('kv' = head_dim), ('batch', 'seq', 'mlp') on the MLP
hidden activations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from extpose_jax.models import attention, logical, masks

# ViTPose sizes (ViTPose configs/*/ViTPose_{small,base,large,huge}_coco_256x192.py); 'tiny' is
# for tests. drop_path_rate is the upstream fine-tuning value.
SIZES = {
    'tiny': {'width': 192, 'depth': 4, 'heads': 3, 'mlp_dim': 768, 'drop_path_rate': 0.0},
    'small': {'width': 384, 'depth': 12, 'heads': 6, 'mlp_dim': 1536, 'drop_path_rate': 0.1},
    'base': {'width': 768, 'depth': 12, 'heads': 12, 'mlp_dim': 3072, 'drop_path_rate': 0.3},
    'large': {'width': 1024, 'depth': 24, 'heads': 16, 'mlp_dim': 4096, 'drop_path_rate': 0.5},
    'huge': {'width': 1280, 'depth': 32, 'heads': 16, 'mlp_dim': 5120, 'drop_path_rate': 0.55},
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    width: int = 192
    depth: int = 4
    heads: int = 3
    mlp_dim: int = 768
    drop_path_rate: float = 0.0
    patch: int = 16
    padding: int = 2  # upstream: 4 + 2 * (ratio // 2 - 1) with ratio 1
    image_size: tuple[int, int] = (256, 192)
    channels: int = 3
    ln_eps: float = 1e-6
    dtype: Any = jnp.float32  # compute dtype (bf16 for training)
    param_dtype: Any = jnp.float32
    # Recompute each block in the backward pass (nn.remat). Measured on XLA:CPU: the compiled
    # temp memory of an unrolled stack barely changes (the CPU scheduler hoists recomputation).
    remat: bool = False
    # attention.attend impl: 'dense' | 'blockwise' | 'cudnn' | 'grouped' | 'grouped_cudnn', or
    # 'auto' (attention.choose, per block: a schedule may mix grouped and blockwise layers).
    attention: str = 'dense'
    # Blockwise block size; None = one stream's patches, which aligns blocks with the mask's
    # groups (a 128 block straddles 192-token groups and then visits every key block).
    block_size: int | None = None

    def __post_init__(self):
        object.__setattr__(self, 'image_size', tuple(self.image_size))
        if self.width % self.heads:
            raise ValueError(
                f'ViTConfig: width {self.width} is not divisible by heads {self.heads}'
            )
        if self.attention not in attention.CHOICES:
            raise ValueError(
                f'ViTConfig.attention: unknown impl {self.attention!r}; '
                f'allowed: {", ".join(map(repr, attention.CHOICES))}'
            )

    @classmethod
    def of(cls, size: str, **overrides) -> ViTConfig:
        if size not in SIZES:
            raise ValueError(
                f'ViTConfig.of: unknown size {size!r}; allowed: {", ".join(map(repr, SIZES))}'
            )
        return cls(**{**SIZES[size], **overrides})

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid of one image: (256 + 4 - 16) // 16 + 1 = 16 rows, 12 columns."""
        return tuple((s + 2 * self.padding - self.patch) // self.patch + 1 for s in self.image_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]


def drop_path_rates(config: ViTConfig) -> list[float]:
    """Per-block stochastic depth, linspace(0, rate, depth) as upstream: block 0 is never dropped."""
    return [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]


def _logical(init, names):
    return nn.with_logical_partitioning(init, names)


_TRUNC = nn.initializers.truncated_normal(0.02)  # ViTPose init_weights: trunc_normal(std=.02)


def _dense(features, names, config, name):
    return nn.Dense(
        features,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        name=name,
        kernel_init=_logical(_TRUNC, names),
        bias_init=_logical(nn.initializers.zeros, names[-1:]),
    )


def _norm(config, name):
    return nn.LayerNorm(
        epsilon=config.ln_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        name=name,
        scale_init=_logical(nn.initializers.ones, ('embed',)),
        bias_init=_logical(nn.initializers.zeros, ('embed',)),
    )


class PatchEmbed(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x):  # (B', H, W, 3) -> (B', N, C)
        c = self.config
        x = nn.Conv(
            c.width,
            (c.patch, c.patch),
            strides=(c.patch, c.patch),
            padding=((c.padding, c.padding), (c.padding, c.padding)),
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            name='proj',
            kernel_init=_logical(nn.initializers.lecun_normal(), (None, None, None, 'embed')),
            bias_init=_logical(nn.initializers.zeros, ('embed',)),
        )(x)
        return x.reshape(x.shape[0], -1, c.width)  # row-major over the grid, as upstream


class Attention(nn.Module):
    config: ViTConfig
    layer: int

    @nn.compact
    def __call__(self, x, key_valid, layout, mask_spec):
        c = self.config
        b, n, width = x.shape
        qkv = _dense(3 * width, ('embed', 'qkv'), c, 'qkv')(x)
        # Upstream reshape(B, N, 3, heads, head_dim): columns are [q | k | v], head-major.
        q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, c.heads, width // c.heads), 2, 0)
        q, k, v = (logical.constrain(t, ('batch', 'seq', 'heads', 'kv')) for t in (q, k, v))
        block = layout.patches if c.block_size is None else c.block_size
        out = attention.attend(
            q,
            k,
            v,
            structure=masks.structure(layout, mask_spec, self.layer),
            key_valid=key_valid,
            impl=c.attention,
            block_size=block,
            layout=layout,
        )
        return _dense(width, ('heads', 'embed'), c, 'proj')(out.reshape(b, n, width))


class Mlp(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = _dense(c.mlp_dim, ('embed', 'mlp'), c, 'fc1')(x)
        x = nn.gelu(x, approximate=False)  # torch nn.GELU() is the exact erf form
        x = logical.constrain(x, ('batch', 'seq', 'mlp'))
        return _dense(c.width, ('mlp', 'embed'), c, 'fc2')(x)


class Block(nn.Module):
    config: ViTConfig
    layer: int
    drop_path: float = 0.0

    @nn.compact
    def __call__(self, x, key_valid, layout, mask_spec, deterministic=True):
        c = self.config
        y = Attention(c, self.layer, name='attn')(
            _norm(c, 'norm1')(x), key_valid, layout, mask_spec
        )
        x = x + self._drop_path(y, deterministic)
        x = x + self._drop_path(Mlp(c, name='mlp')(_norm(c, 'norm2')(x)), deterministic)
        return logical.constrain(x, ('batch', 'seq', 'embed'))

    def _drop_path(self, y, deterministic):
        """Stochastic depth: drops the whole residual branch per sample (per clip here)."""
        if deterministic or self.drop_path == 0.0:
            return y
        keep = 1.0 - self.drop_path
        mask = jax.random.bernoulli(
            self.make_rng('dropout'), keep, (y.shape[0],) + (1,) * (y.ndim - 1)
        )
        return jnp.where(mask, y / keep, 0).astype(y.dtype)


class ViT(nn.Module):
    """images (B, S, H, W, 3), S = T*V*M streams in layout order -> tokens (B, S, N, C)."""

    config: ViTConfig

    def setup(self):
        c = self.config
        self.patch_embed = PatchEmbed(c)
        self.pos_embed = self.param(
            'pos_embed',
            _logical(_TRUNC, (None, None, 'embed')),
            (1, 1 + c.num_patches, c.width),
            c.param_dtype,
        )
        # Block's call args after self: x, key_valid, layout, mask_spec, deterministic.
        block = nn.remat(Block, static_argnums=(3, 4, 5)) if c.remat else Block
        rates = drop_path_rates(c)
        self.blocks = [block(c, layer=i, drop_path=rates[i]) for i in range(c.depth)]  # blocks_{i}
        self.last_norm = _norm(c, None)

    def embed(self, images):
        """(B, S, H, W, 3) -> (B, S*N, C): patch embedding plus position embedding per stream."""
        c = self.config
        b, s = images.shape[:2]
        x = self.patch_embed(images.reshape(b * s, *images.shape[2:]).astype(c.dtype))
        pos = self.pos_embed[:, 1:] + self.pos_embed[:, :1]  # slot 0 goes to every token (upstream)
        x = x + pos.astype(c.dtype)
        return logical.constrain(
            x.reshape(b, s * c.num_patches, c.width), ('batch', 'seq', 'embed')
        )

    def __call__(
        self,
        images,
        layout: masks.TokenLayout,
        mask_spec: masks.MaskSpec,
        key_valid=None,
        *,
        deterministic: bool = True,
    ):
        self._check(images, layout, mask_spec, key_valid)
        x = self.embed(images)
        for blk in self.blocks:
            x = blk(x, key_valid, layout, mask_spec, deterministic)
        x = self.last_norm(x)
        return x.reshape(images.shape[0], layout.streams, layout.patches, self.config.width)

    def _check(self, images, layout, mask_spec, key_valid):
        c = self.config
        want = (layout.streams, *c.image_size, c.channels)
        if images.ndim != 5 or tuple(images.shape[1:]) != want:
            raise ValueError(
                f'ViT: images {tuple(images.shape)} do not match the layout: expected (B, {want[0]} streams = '
                f'{layout.frames} frames x {layout.views} views x {len(layout.modalities)} modalities, '
                f'{want[1]}, {want[2]}, {want[3]})'
            )
        if layout.patches != c.num_patches:
            raise ValueError(
                f'ViT: layout.patches={layout.patches} but a {c.image_size} image gives '
                f'{c.grid[0]}x{c.grid[1]} = {c.num_patches} tokens'
            )
        if mask_spec.layers and len(mask_spec.layers) != c.depth:
            raise ValueError(
                f'ViT: MaskSpec.layers has {len(mask_spec.layers)} entries for {c.depth} blocks'
            )
        if key_valid is not None:
            masks.check_tokens(layout, key_valid.shape[-1])
            if key_valid.shape[0] not in (1, images.shape[0]):
                raise ValueError(
                    f'ViT: key_valid batch {key_valid.shape[0]} != images batch {images.shape[0]}'
                )
