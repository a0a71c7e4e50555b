"""ViT backbone: upstream equivalence (PyTorch re-implementation), mask isolation through the whole
network, ViT-H parameter shapes against the reference state dict, and implementation switches."""

import dataclasses
import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from torch.nn import functional as F

from extpose_jax.convert import keymap
from extpose_jax.models import masks, vit
from extpose_jax.models.masks import MaskSpec, TokenLayout

# HMR 2.0's checkpoint layout (key -> shape), dumped from the upstream PyTorch modules.
UPSTREAM_LAYOUT = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference_state_dicts.json')
TWO = ('rgb', 'skeleton')
TINY = vit.ViTConfig.of('tiny')
# 64x48 images -> 4 x 3 = 12 tokens per stream: the backward tests stay fast on a CPU.
SMALL = vit.ViTConfig(width=64, depth=2, heads=2, mlp_dim=128, image_size=(64, 48))
# 32x32 images -> (32 + 4 - 16) // 16 + 1 = 2 x 2 tokens: cheap enough for Jacobian-style tests.
MICRO = vit.ViTConfig(width=16, depth=2, heads=2, mlp_dim=32, image_size=(32, 32))


@functools.cache
def _init(config, seed=0):
    """Parameters do not depend on the layout (one stream is enough to create them)."""
    images = jnp.zeros((1, 1, *config.image_size, 3))
    init = jax.jit(vit.ViT(config).init, static_argnums=(2, 3))
    return nn.unbox(
        init(
            jax.random.key(seed), images, TokenLayout(patches=config.num_patches), MaskSpec('frame')
        )
    )


def _apply(config, params, images, layout, spec, key_valid=None, **kwargs):
    fn = jax.jit(functools.partial(vit.ViT(config).apply, **kwargs), static_argnums=(2, 3))
    return fn(params, images, layout, spec, key_valid)


def _images(config, layout, batch, seed=1):
    shape = (batch, layout.streams, *config.image_size, 3)
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.fixture(scope='module')
def tiny_params():
    return _init(TINY)


# ----------------------------------------------------------------------------- PyTorch reference


def vit_rows(config, torch_prefix=''):
    """The converter's key table for a bare ViT (params at the root, not under 'backbone')."""
    return keymap.vit_rows(**keymap.vit_dims(config), torch_prefix=torch_prefix, root=('params',))


class TorchViT(torch.nn.Module if torch else object):
    """The upstream ViT forward (4D-Humans hmr2/models/backbones/vit.py), written anew."""

    def __init__(self, c):
        super().__init__()
        nn_ = torch.nn
        self.c = c
        self.patch_embed = nn_.Module()
        self.patch_embed.proj = nn_.Conv2d(3, c.width, c.patch, stride=c.patch, padding=c.padding)
        self.pos_embed = nn_.Parameter(torch.zeros(1, 1 + c.num_patches, c.width))
        self.blocks = nn_.ModuleList()
        for _ in range(c.depth):
            b = nn_.Module()
            b.norm1, b.norm2 = nn_.LayerNorm(c.width, eps=1e-6), nn_.LayerNorm(c.width, eps=1e-6)
            b.attn = nn_.Module()
            b.attn.qkv, b.attn.proj = nn_.Linear(c.width, 3 * c.width), nn_.Linear(c.width, c.width)
            b.mlp = nn_.Module()
            b.mlp.fc1, b.mlp.fc2 = nn_.Linear(c.width, c.mlp_dim), nn_.Linear(c.mlp_dim, c.width)
            self.blocks.append(b)
        self.last_norm = nn_.LayerNorm(c.width, eps=1e-6)

    def forward(self, x):  # (B, 3, H, W) -> (B, C, Hp, Wp) as upstream
        c = self.c
        x = self.patch_embed.proj(x)
        hp, wp = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        x = x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        for b in self.blocks:
            B, N, C = x.shape
            qkv = (
                b.attn.qkv(b.norm1(x))
                .reshape(B, N, 3, c.heads, C // c.heads)
                .permute(2, 0, 3, 1, 4)
            )
            q, k, v = qkv[0], qkv[1], qkv[2]
            attn = ((q * (C // c.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = x + b.attn.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
            x = x + b.mlp.fc2(F.gelu(b.mlp.fc1(b.norm2(x))))
        x = self.last_norm(x)
        return x.permute(0, 2, 1).reshape(x.shape[0], -1, hp, wp)


def torch_model(config, params):
    model = TorchViT(config)
    state = {k: torch.from_numpy(v) for k, v in keymap.to_torch(params, vit_rows(config)).items()}
    model.load_state_dict(state, strict=True)  # names and shapes map 1:1
    return model.eval()


def torch_tokens(model, images):
    """(B, S, H, W, 3) -> (B, S, N, C), every image on its own."""
    b, s = images.shape[:2]
    x = torch.from_numpy(
        np.asarray(images).reshape(b * s, *images.shape[2:]).transpose(0, 3, 1, 2).copy()
    )
    with torch.no_grad():
        out = model(x).flatten(2).transpose(1, 2).numpy()
    return out.reshape(b, s, *out.shape[1:])


@pytest.mark.slow
def test_single_image_frame_mask_is_the_upstream_vit(tiny_params):
    layout = TokenLayout()
    images = _images(TINY, layout, batch=2)
    got = _apply(TINY, tiny_params, images, layout, MaskSpec('frame'))
    assert got.shape == (2, 1, 192, TINY.width)
    np.testing.assert_allclose(
        got, torch_tokens(torch_model(TINY, tiny_params), images), atol=2e-5, rtol=1e-4
    )


@pytest.mark.slow
def test_frame_mask_keeps_every_stream_alone(tiny_params):
    layout = TokenLayout(frames=2, modalities=TWO)
    images = _images(TINY, layout, batch=1)
    for impl in ('dense', 'blockwise'):
        cfg = vit.ViTConfig.of('tiny', attention=impl)
        got = _apply(cfg, tiny_params, images, layout, MaskSpec('frame'))
        np.testing.assert_allclose(
            got, torch_tokens(torch_model(TINY, tiny_params), images), atol=2e-5, rtol=1e-4
        )


# ----------------------------------------------------------------------------- mask isolation


def _stream_dependence(config, layout, spec, key_valid=None):
    """(S, S) bool: does output stream i depend at all on the pixels of input stream j."""
    params = _init(dataclasses.replace(config, depth=MICRO.depth))  # depth-1 models use a prefix
    params = {
        'params': {
            k: v
            for k, v in params['params'].items()
            if not k.startswith('blocks_') or int(k[7:]) < config.depth
        }
    }
    images = _images(config, layout, batch=1)
    model = vit.ViT(config)

    def grads_for(i):
        _, vjp = jax.vjp(lambda x: model.apply(params, x, layout, spec, key_valid), images)
        cot = jnp.zeros((1, layout.streams, layout.patches, config.width)).at[:, i].set(1.0)
        return jnp.abs(vjp(cot)[0]).sum(axis=(0, 2, 3, 4))  # (S,)

    return np.asarray(jax.jit(jax.vmap(grads_for))(jnp.arange(layout.streams))) > 0


def _reachable(layout, spec, depth, stream_keys=None):
    """Which streams can reach which after `depth` blocks: the boolean product of the layer masks
    (plus the identity: the residual path and the per-token MLP)."""
    eye = np.eye(layout.streams, dtype=bool)
    reach = eye
    for layer in range(depth):
        a = masks.stream_structure(layout, spec, layer)
        if stream_keys is not None:
            a = a & stream_keys[None, :]
        reach = ((a | eye).astype(int) @ reach.astype(int)) > 0
    return reach


ISOLATION_CASES = [
    MaskSpec('frame'),
    MaskSpec('multimodal'),
    MaskSpec('extpose'),
    MaskSpec('full'),
    MaskSpec('extpose', window=1),
    MaskSpec('extpose', causal=True),
    MaskSpec('extpose', window=0),
    MaskSpec(layers=('frame', 'extpose')),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    'spec', ISOLATION_CASES, ids=lambda s: f'{s.strategy}-w{s.window}-c{s.causal}-{len(s.layers)}'
)
def test_tokens_depend_exactly_on_what_the_masks_reach(spec):
    """Through the whole ViT (2 blocks), a stream's gradient w.r.t. another stream's pixels is exactly
    zero unless the composed per-layer masks connect them, and non-zero when they do."""
    layout = TokenLayout(frames=3, modalities=TWO, patches=MICRO.num_patches)  # R0 S0 R1 S1 R2 S2
    got = _stream_dependence(MICRO, layout, spec)
    np.testing.assert_array_equal(got, _reachable(layout, spec, MICRO.depth))


@pytest.mark.slow
def test_extpose_isolation_per_block_and_composition():
    layout = TokenLayout(frames=2, modalities=TWO, patches=MICRO.num_patches)  # R0 S0 R1 S1
    r0, s1 = 0, 3
    one_block = dataclasses.replace(MICRO, depth=1)
    # One block: RGB of frame 0 gets nothing from the skeleton of frame 1 under 'extpose' ...
    assert not _stream_dependence(one_block, layout, MaskSpec('extpose'))[r0, s1]
    # ... but does under 'full'.
    assert _stream_dependence(one_block, layout, MaskSpec('full'))[r0, s1]
    # Two blocks: masks compose, S1 -> R1 -> R0 (or S1 -> S0 -> R0), so 'extpose' isolates only per block.
    assert _stream_dependence(MICRO, layout, MaskSpec('extpose'))[r0, s1]
    # Causality survives composition: frame 0 never depends on frame 1, through every block.
    dep = _stream_dependence(MICRO, layout, MaskSpec('full', causal=True))
    assert not dep[:2, 2:].any() and dep[2:, :2].all()


@pytest.mark.slow
def test_modality_dropout_hides_the_dropped_modality():
    layout = TokenLayout(frames=2, modalities=TWO, patches=MICRO.num_patches)
    kv = masks.key_valid(layout, modality_keep=np.array([[True, False]]))  # skeleton dropped
    got = _stream_dependence(MICRO, layout, MaskSpec('full'), kv)
    np.testing.assert_array_equal(
        got, _reachable(layout, MaskSpec('full'), MICRO.depth, np.array([1, 0, 1, 0], bool))
    )
    assert not got[0::2, 1::2].any()  # RGB streams get nothing from any skeleton pixel


# ----------------------------------------------------------------------------- ViT-H parameters


def test_vit_huge_parameters_match_the_reference_state_dict():
    layout = TokenLayout()
    boxed = jax.eval_shape(
        lambda: vit.ViT(vit.ViTConfig.of('huge')).init(
            jax.random.key(0), jnp.zeros((1, 1, 256, 192, 3)), layout, MaskSpec('frame')
        )
    )
    flat = traverse_util.flatten_dict(nn.unbox(boxed)['params'])
    assert sum(int(np.prod(v.shape)) for v in flat.values()) == 630_912_000
    with open(UPSTREAM_LAYOUT) as f:
        ref = {k: tuple(v) for k, v in json.load(f)['hmr2'].items() if k.startswith('backbone.')}
    assert len(ref) == 389
    ours = {
        k: v.shape
        for k, v in keymap.to_torch(
            nn.unbox(boxed), vit_rows(vit.ViTConfig.of('huge'), 'backbone.')
        ).items()
    }
    assert ours == ref
    # Every parameter carries one logical axis name (or None) per dimension, from a small vocabulary.
    for path, leaf in traverse_util.flatten_dict(boxed['params']).items():
        assert isinstance(leaf, nn.LogicallyPartitioned), path
        assert len(leaf.names) == len(leaf.value.shape), path
        assert set(leaf.names) <= {'embed', 'qkv', 'heads', 'mlp', None}, path


# ----------------------------------------------------------------------------- switches


@pytest.mark.slow
def test_blockwise_equals_dense_through_the_vit():
    layout = TokenLayout(frames=2, modalities=TWO, patches=SMALL.num_patches)
    images = _images(SMALL, layout, batch=2)
    params = _init(SMALL)
    kv = masks.key_valid(
        layout,
        modality_keep=np.array([[1, 1], [0, 1]], bool),
        frame_valid=np.array([[1, 1], [1, 0]], bool),
    )
    spec = MaskSpec(layers=('frame', 'extpose'))  # 'frame' + dropout: empty rows inside the ViT

    def run(impl, block_size=None):
        model = vit.ViT(dataclasses.replace(SMALL, attention=impl, block_size=block_size))
        out, vjp = jax.vjp(lambda p: model.apply(p, images, layout, spec, kv), params)
        return out, vjp(jnp.ones_like(out))[0]

    want, want_grads = jax.jit(lambda: run('dense'))()
    got, grads = jax.jit(lambda: run('blockwise', 8))()  # blocks straddling the 12-token streams
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-3), grads, want_grads
    )


@pytest.mark.slow
def test_bf16_compute_with_fp32_params():
    layout = TokenLayout(frames=2, modalities=TWO, patches=SMALL.num_patches)
    images = _images(SMALL, layout, batch=1)
    params = _init(SMALL)
    want = _apply(SMALL, params, images, layout, MaskSpec('extpose'))
    for impl in ('dense', 'blockwise'):
        cfg = dataclasses.replace(SMALL, dtype=jnp.bfloat16, attention=impl)
        abstract = jax.eval_shape(
            functools.partial(vit.ViT(cfg).init, layout=layout, mask_spec=MaskSpec()),
            jax.random.key(0),
            images,
        )
        assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.unbox(abstract)))
        got = _apply(cfg, params, images, layout, MaskSpec('extpose'))
        assert got.dtype == jnp.bfloat16
        err = np.abs(np.asarray(got, np.float32) - want)
        assert np.all(np.isfinite(err)) and err.mean() < 0.05, err.mean()


@pytest.mark.slow
@pytest.mark.parametrize('impl', ['dense', 'blockwise'])
def test_remat_is_numerically_transparent(impl):
    layout = TokenLayout(frames=2, modalities=TWO, patches=SMALL.num_patches)
    images = _images(SMALL, layout, batch=1)
    params = _init(SMALL)

    def loss_and_grads(remat):
        model = vit.ViT(dataclasses.replace(SMALL, remat=remat, attention=impl))
        return jax.jit(
            jax.value_and_grad(lambda p: model.apply(p, images, layout, MaskSpec()).sum())
        )(params)

    (v0, g0), (v1, g1) = loss_and_grads(False), loss_and_grads(True)
    np.testing.assert_allclose(v1, v0, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g1, g0)


@pytest.mark.slow
def test_drop_path_rises_linearly_and_is_off_when_deterministic():
    np.testing.assert_allclose(
        vit.drop_path_rates(vit.ViTConfig(depth=4, drop_path_rate=0.3)), [0, 0.1, 0.2, 0.3]
    )
    assert vit.drop_path_rates(vit.ViTConfig.of('huge'))[-1] == 0.55
    cfg = dataclasses.replace(SMALL, drop_path_rate=0.3)
    layout = TokenLayout(frames=1, patches=SMALL.num_patches)
    params = _init(SMALL)
    assert [b.drop_path for b in vit.ViT(cfg).bind(params).blocks] == vit.drop_path_rates(cfg)
    images = _images(cfg, layout, batch=4)
    det = _apply(cfg, params, images, layout, MaskSpec('frame'))
    np.testing.assert_array_equal(det, _apply(SMALL, params, images, layout, MaskSpec('frame')))
    train = _apply(
        cfg,
        params,
        images,
        layout,
        MaskSpec('frame'),
        deterministic=False,
        rngs={'dropout': jax.random.key(0)},
    )
    assert np.all(np.isfinite(train)) and not np.allclose(train, det)


@pytest.mark.slow
def test_bad_inputs_raise(tiny_params):
    model = vit.ViT(TINY)
    params = tiny_params
    layout = TokenLayout(frames=2, modalities=TWO)
    with pytest.raises(
        ValueError,
        match=r'images \(1, 3, 256, 192, 3\) do not match the layout: expected '
        r'\(B, 4 streams = 2 frames x 1 views x 2 modalities',
    ):
        model.apply(params, jnp.zeros((1, 3, 256, 192, 3)), layout, MaskSpec())
    with pytest.raises(ValueError, match='MaskSpec.layers has 2 entries for 4 blocks'):
        model.apply(
            params, jnp.zeros((1, 4, 256, 192, 3)), layout, MaskSpec(layers=('frame', 'full'))
        )
    with pytest.raises(
        ValueError, match=r'layout.patches=100 but a \(256, 192\) image gives 16x12 = 192 tokens'
    ):
        model.apply(params, jnp.zeros((1, 1, 256, 192, 3)), TokenLayout(patches=100), MaskSpec())
    with pytest.raises(ValueError, match='tokens do not match the layout'):
        model.apply(
            params, jnp.zeros((1, 4, 256, 192, 3)), layout, MaskSpec(), jnp.ones((1, 100), bool)
        )
    with pytest.raises(ValueError, match="ViTConfig.of: unknown size 'giant'"):
        vit.ViTConfig.of('giant')
