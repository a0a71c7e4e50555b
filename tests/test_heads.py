"""Tests for extpose_jax.models.heads.

The numerical reference is an independent PyTorch re-implementation of the upstream decoder head,
written below from upstream's design (4D-Humans pose_transformer.py: PreNorm, Attention,
CrossAttention, FeedForward, one query token, one IEF step, HMR 2.0 6D). Its modules carry the
upstream key names, so its state_dict must equal reference_state_dicts.json key for key, and the
weights reach JAX only through `from_torch_state_dict` (transpose / copy), which is tested with it.
"""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn as tnn

from extpose_jax.models import head_keymap, heads

# The upstream checkpoints' layouts (key -> shape), dumped from the upstream PyTorch modules.
UPSTREAM_LAYOUT = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference_state_dicts.json')
KINDS = {
    'smpl': ('hmr2', 'smpl_head.', 24, 'body_pose'),
    'mano': ('hamer', 'mano_head.', 16, 'hand_pose'),
}
TOL = dict(rtol=1e-5, atol=1e-5)


# ============================================================================ PyTorch reference


class PreNorm(tnn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm = tnn.LayerNorm(dim)  # eps 1e-5
        self.fn = fn

    def forward(self, x, **kwargs):
        return self.fn(self.norm(x), **kwargs)


def _split_heads(t, heads):
    b, n, hd = t.shape
    return t.reshape(b, n, heads, hd // heads).transpose(1, 2)  # b h n d


def _merge_heads(t):
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


class Attention(tnn.Module):
    def __init__(self, dim, heads=8, dim_head=64):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_qkv = tnn.Linear(dim, 3 * heads * dim_head, bias=False)
        self.to_out = tnn.Sequential(tnn.Linear(heads * dim_head, dim), tnn.Dropout(0.0))

    def forward(self, x):
        q, k, v = (_split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out(_merge_heads(attn @ v))


class CrossAttention(tnn.Module):
    def __init__(self, dim, context_dim, heads=8, dim_head=64):
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        # to_kv is created first, as upstream (the state_dict order in the json shows it).
        self.to_kv = tnn.Linear(context_dim, 2 * heads * dim_head, bias=False)
        self.to_q = tnn.Linear(dim, heads * dim_head, bias=False)
        self.to_out = tnn.Sequential(tnn.Linear(heads * dim_head, dim), tnn.Dropout(0.0))

    def forward(self, x, context):
        q = _split_heads(self.to_q(x), self.heads)
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(context).chunk(2, dim=-1))
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1)
        return self.to_out(_merge_heads(attn @ v))


class FeedForward(tnn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = tnn.Sequential(
            tnn.Linear(dim, hidden),
            tnn.GELU(),
            tnn.Dropout(0.0),
            tnn.Linear(hidden, dim),
            tnn.Dropout(0.0),
        )

    def forward(self, x):
        return self.net(x)


class TransformerCrossAttn(tnn.Module):
    def __init__(self, dim, depth, context_dim, mlp_dim, heads, dim_head):
        super().__init__()
        self.layers = tnn.ModuleList(
            [
                tnn.ModuleList(
                    [
                        PreNorm(dim, Attention(dim, heads, dim_head)),
                        PreNorm(dim, CrossAttention(dim, context_dim, heads, dim_head)),
                        PreNorm(dim, FeedForward(dim, mlp_dim)),
                    ]
                )
                for _ in range(depth)
            ]
        )

    def forward(self, x, context):
        for self_attn, cross_attn, ff in self.layers:
            x = self_attn(x) + x
            x = cross_attn(x, context=context) + x
            x = ff(x) + x
        return x


class TransformerDecoder(tnn.Module):
    def __init__(self, dim, depth, context_dim, mlp_dim, heads, dim_head):
        super().__init__()
        self.to_token_embedding = tnn.Linear(1, dim)
        self.pos_embedding = tnn.Parameter(torch.randn(1, 1, dim))
        self.transformer = TransformerCrossAttn(dim, depth, context_dim, mlp_dim, heads, dim_head)

    def forward(self, inp, context):
        x = self.to_token_embedding(inp)
        x = x + self.pos_embedding[:, : x.shape[1]]
        return self.transformer(x, context)


def torch_rot6d(x):
    """HMR 2.0 rot6d_to_rotmat: (..., 6) -> (B*J, 3, 3), columns b1, b2, b3."""
    x = x.reshape(-1, 2, 3).permute(0, 2, 1)
    a1, a2 = x[:, :, 0], x[:, :, 1]
    b1 = tnn.functional.normalize(a1)
    b2 = tnn.functional.normalize(a2 - torch.einsum('bi,bi->b', b1, a2).unsqueeze(-1) * b1)
    return torch.stack((b1, b2, torch.cross(b1, b2, dim=-1)), dim=-1)


class TorchHead(tnn.Module):
    # Upstream's sizes: dim 1024, depth 6, mlp 1024, 8 heads of 64, context 1280.
    def __init__(self, num_joints, pose_buffer, dim=1024, depth=6, mlp=1024, heads=8, dim_head=64):
        super().__init__()
        self.num_joints, self.pose_buffer = num_joints, pose_buffer
        self.transformer = TransformerDecoder(dim, depth, 1280, mlp, heads, dim_head)
        self.decpose = tnn.Linear(dim, 6 * num_joints)
        self.decshape = tnn.Linear(dim, 10)
        self.deccam = tnn.Linear(dim, 3)
        # Random (not mean-file) buffers, so the test notices if they are dropped or swapped.
        self.register_buffer(pose_buffer, torch.randn(1, 6 * num_joints))
        self.register_buffer('init_betas', torch.randn(1, 10))
        self.register_buffer('init_cam', torch.randn(1, 3))

    def forward(self, context):
        b = context.shape[0]
        token = self.transformer(torch.zeros(b, 1, 1), context).squeeze(1)
        pose = self.decpose(token) + getattr(self, self.pose_buffer)
        betas = self.decshape(token) + self.init_betas
        cam = self.deccam(token) + self.init_cam
        rot = torch_rot6d(pose).view(b, self.num_joints, 3, 3)
        return dict(
            global_orient=rot[:, :1],
            pose=rot[:, 1:],
            betas=betas,
            pred_cam=cam,
            pose_6d=pose.view(b, self.num_joints, 6),
        )


def make_torch_head(kind, seed=0, **sizes):
    torch.manual_seed(seed)
    _, _, joints, _ = KINDS[kind]
    return TorchHead(joints, heads._KINDS[kind]['init_pose'], **sizes).eval()


# ============================================================================ fixtures


@pytest.fixture(scope='module')
def reference():
    with open(UPSTREAM_LAYOUT) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def smpl_torch():
    return make_torch_head('smpl')


@pytest.fixture(scope='module')
def smpl_vars(smpl_torch):
    return jax.tree.map(
        jnp.asarray, head_keymap.from_torch_state_dict(smpl_torch.state_dict(), 'smpl', prefix='')
    )


@pytest.fixture(scope='module')
def smpl_apply():
    return jax.jit(heads.PoseHead(kind='smpl').apply)


def _ctx(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


# ============================================================================ structure


@pytest.mark.parametrize('kind', ['smpl', 'mano'])
def test_keys_and_shapes_match_reference(kind, reference):
    model_name, prefix, _, _ = KINDS[kind]
    ref = {
        k[len(prefix) :]: tuple(v) for k, v in reference[model_name].items() if k.startswith(prefix)
    }
    rows = head_keymap.head_key_map(kind)
    assert len(ref) == len(rows) == 114
    assert [r[0] for r in rows] == list(ref)  # same keys, same (registration) order
    assert {r[0]: r[2] for r in rows} == ref

    # The Flax tree, built abstractly, has exactly the mapped leaves and shapes (conversion rules).
    boxed = jax.eval_shape(
        heads.PoseHead(kind=kind).init, jax.random.key(0), jnp.zeros((1, 192, 1280))
    )
    flat = {
        tuple(k.key for k in p): leaf.shape
        for p, leaf in jax.tree_util.tree_leaves_with_path(nn.unbox(boxed))
    }
    assert flat == {r[1]: r[3] for r in rows}
    for _, _, tshape, fshape, rule in rows:  # linear: flax kernel == W.T up to a reshape
        assert int(np.prod(tshape)) == int(np.prod(fshape))
        if rule == 'linear':
            assert fshape[0] * int(np.prod(fshape[1:])) == tshape[1] * tshape[0]
    total = sum(int(np.prod(s)) for s in flat.values())
    assert total == {'smpl': 39_547_194, 'mano': 39_497_946}[kind]
    assert total == sum(int(np.prod(s)) for s in ref.values())

    # Every parameter carries logical axis names, one per dim.
    specs = nn.get_partition_spec(boxed)['params']
    for path, leaf in jax.tree_util.tree_leaves_with_path(nn.unbox(boxed)['params']):
        spec = specs
        for k in path:
            spec = spec[k.key]
        assert isinstance(spec, jax.sharding.PartitionSpec) and len(spec) == len(leaf.shape), path


def test_torch_reference_state_dict_matches_json(smpl_torch, reference):
    ref = {
        k[len('smpl_head.') :]: v
        for k, v in reference['hmr2'].items()
        if k.startswith('smpl_head.')
    }
    got = {k: list(v.shape) for k, v in smpl_torch.state_dict().items()}
    assert list(got) == list(ref) and got == ref


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['smpl', 'mano'])
def test_matches_pytorch_reference(kind, smpl_torch, smpl_vars, smpl_apply):
    """fp32 outputs equal the independent PyTorch head to 1e-5, weights loaded by key name."""
    if kind == 'smpl':
        th, variables, apply = smpl_torch, smpl_vars, smpl_apply
    else:
        th = make_torch_head('mano', seed=1)
        variables = jax.tree.map(
            jnp.asarray, head_keymap.from_torch_state_dict(th.state_dict(), 'mano', prefix='')
        )
        apply = jax.jit(heads.PoseHead(kind='mano').apply)
    ctx = np.random.default_rng(3).normal(size=(2, 192, 1280)).astype(np.float32)
    with torch.no_grad():
        want = {k: v.numpy() for k, v in th(torch.from_numpy(ctx)).items()}
    got = apply(variables, jnp.asarray(ctx))
    pose_key = KINDS[kind][3]
    assert set(got) == {'global_orient', pose_key, 'betas', 'pred_cam', 'pose_6d'}
    assert got['global_orient'].shape == (2, 1, 3, 3)
    assert got[pose_key].shape == (2, KINDS[kind][2] - 1, 3, 3)
    assert got['betas'].shape == (2, 10) and got['pred_cam'].shape == (2, 3)
    for ours, theirs in (
        ('global_orient', 'global_orient'),
        (pose_key, 'pose'),
        ('betas', 'betas'),
        ('pred_cam', 'pred_cam'),
        ('pose_6d', 'pose_6d'),
    ):
        np.testing.assert_allclose(np.asarray(got[ours]), want[theirs], **TOL, err_msg=ours)


def test_conversion_round_trip_is_exact(smpl_torch, smpl_vars):
    sd = {k: v.numpy() for k, v in smpl_torch.state_dict().items()}
    back = head_keymap.to_torch_state_dict(smpl_vars, 'smpl', prefix='')
    assert list(back) == list(sd)
    for k in sd:
        assert back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]), k
    # With the checkpoint prefix, other top-level entries are ignored on import.
    full = {'smpl_head.' + k: v for k, v in sd.items()}
    full['backbone.pos_embed'] = np.zeros((1, 193, 1280), np.float32)
    v2 = head_keymap.from_torch_state_dict(full, 'smpl')
    assert head_keymap.to_torch_state_dict(v2, 'smpl').keys() == {'smpl_head.' + k for k in sd}


def test_tiny_size_matches_the_reference_at_its_shape():
    """The 'tiny' decoder is the same computation at another shape: the reference built with
    its numbers (4 heads of 32, width 256, 2 layers) agrees, and export / import finds the size."""
    s = heads.SIZES['tiny']
    th = make_torch_head(
        'smpl', seed=2, dim=s.dim, depth=s.depth, mlp=s.mlp_dim, heads=s.heads, dim_head=s.dim_head
    )
    sd = {k: v.numpy() for k, v in th.state_dict().items()}
    variables = head_keymap.from_torch_state_dict(sd, 'smpl', prefix='', size='tiny')
    back = head_keymap.to_torch_state_dict(variables, 'smpl', prefix='', size='tiny')
    assert all(np.array_equal(back[k], sd[k]) for k in sd) and list(back) == list(sd)
    ctx = np.random.default_rng(4).normal(size=(2, 12, 1280)).astype(np.float32)
    with torch.no_grad():
        want = th(torch.from_numpy(ctx))
    got = heads.PoseHead(kind='smpl', size='tiny').apply(variables, jnp.asarray(ctx))
    for ours, theirs in (('body_pose', 'pose'), ('betas', 'betas'), ('pred_cam', 'pred_cam')):
        np.testing.assert_allclose(np.asarray(got[ours]), want[theirs].numpy(), **TOL)
    with pytest.raises(ValueError, match='mis-shaped'):  # hmr2's table refuses tiny weights
        head_keymap.from_torch_state_dict(sd, 'smpl', prefix='')
    with pytest.raises(ValueError, match='unknown head size'):
        heads.PoseHead(kind='smpl', size='huge').init(jax.random.key(0), jnp.zeros((1, 2, 1280)))


def test_conversion_fails_loudly(smpl_torch):
    sd = {k: v.numpy() for k, v in smpl_torch.state_dict().items()}
    sd.pop('deccam.bias')
    sd['extra.weight'] = np.zeros(1)
    sd['decshape.weight'] = np.zeros((11, 1024), np.float32)
    with pytest.raises(ValueError) as e:
        head_keymap.from_torch_state_dict(sd, 'smpl', prefix='')
    msg = str(e.value)
    assert 'deccam.bias' in msg and 'extra.weight' in msg and 'decshape.weight' in msg


# ============================================================================ behaviour


@pytest.mark.slow
def test_single_token_self_attention_is_to_out_of_v():
    """With one query token the softmax is exactly 1, so self-attention == to_out(v)."""
    mod = heads.SelfAttention()
    x = _ctx((3, 1, 1024), seed=1)
    variables = mod.init(jax.random.key(1), x)
    p = nn.unbox(variables)['params']
    h = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False).apply({'params': p['norm']}, x)
    v = jnp.einsum('mnc,chd->mnhd', h, p['to_qkv']['kernel'][:, 2])
    want = jnp.einsum('mnhd,hdc->mnc', v, p['to_out']['kernel']) + p['to_out']['bias']
    np.testing.assert_allclose(np.asarray(mod.apply(variables, x)), np.asarray(want), **TOL)


@pytest.mark.slow
def test_context_length_and_masking(smpl_vars, smpl_apply):
    """Same parameters for 192 and 384 tokens; masks remove tokens exactly; all-masked is finite."""
    x, y = _ctx((2, 192, 1280), 4), _ctx((2, 192, 1280), 5)
    out_x = smpl_apply(smpl_vars, x)
    both = jnp.concatenate([x, y], axis=1)
    out_xy = smpl_apply(smpl_vars, both)
    assert out_xy['pose_6d'].shape == (2, 24, 6)
    assert not np.allclose(out_xy['pose_6d'], out_x['pose_6d'], atol=1e-3)  # y matters
    # Duplicated keys leave a softmax-weighted mean unchanged: [x, x] == x.
    out_xx = smpl_apply(smpl_vars, jnp.concatenate([x, x], axis=1))
    np.testing.assert_allclose(out_xx['pose_6d'], out_x['pose_6d'], **TOL)
    # A dropped modality: masking y's tokens gives exactly the x-only result.
    valid = jnp.concatenate([jnp.ones((2, 192), bool), jnp.zeros((2, 192), bool)], axis=1)
    out_masked = smpl_apply(smpl_vars, both, valid)
    np.testing.assert_allclose(out_masked['pose_6d'], out_x['pose_6d'], **TOL)
    # Everything masked for sample 1: defined (cross-attention adds only to_out's bias),
    # finite, independent of the context values, and sample 0 is unaffected.
    valid = valid.at[1].set(False)
    a = smpl_apply(smpl_vars, both, valid)
    b = smpl_apply(smpl_vars, both * 7.0 + 1.0, valid)
    assert all(np.isfinite(np.asarray(v)).all() for v in a.values())
    np.testing.assert_allclose(a['pose_6d'][1], b['pose_6d'][1], **TOL)
    np.testing.assert_allclose(a['pose_6d'][0], out_x['pose_6d'][0], **TOL)


@pytest.mark.slow
def test_all_masked_gradient_is_finite():
    """The all-masked definition is smooth too: finite parameter gradients, none to the context.
    (One cross-attention block: the masking lives there, and it compiles in a fraction.)"""
    mod = heads.CrossAttention()
    x, ctx = _ctx((2, 1, 1024), 12), _ctx((2, 8, 1280), 6)
    valid = jnp.asarray([[False] * 8, [True, False] * 4])
    params = mod.init(jax.random.key(2), x, ctx, valid)

    def loss(params, x, ctx):
        return jnp.sum(mod.apply(params, x, ctx, valid) ** 2)

    g_params, g_x, g_ctx = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(params, x, ctx)
    assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree.leaves(g_params))
    assert np.isfinite(np.asarray(g_x)).all()
    g_ctx = np.asarray(g_ctx)
    assert (g_ctx[0] == 0).all() and (g_ctx[1, 1::2] == 0).all()  # nothing from masked tokens
    assert np.abs(g_ctx[1, 0::2]).sum() > 0
    # The all-masked sample's block output is exactly to_out's bias.
    out = mod.apply(params, x, ctx, valid)
    np.testing.assert_allclose(
        out[0], jnp.broadcast_to(nn.unbox(params)['params']['to_out']['bias'], (1, 1024)), atol=1e-6
    )


@pytest.mark.slow
def test_per_frame_equals_loop(smpl_vars, smpl_apply):
    b, t, n = 2, 3, 16
    ctx = _ctx((b, t, n, 1280), 7)
    valid = jnp.asarray(np.random.default_rng(8).random((b, t, n)) > 0.3)
    out = smpl_apply(smpl_vars, ctx, valid)
    assert out['body_pose'].shape == (b, t, 23, 3, 3) and out['betas'].shape == (b, t, 10)
    for i in range(t):
        frame = smpl_apply(smpl_vars, ctx[:, i], valid[:, i])
        for k in out:
            np.testing.assert_allclose(out[k][:, i], frame[k], **TOL, err_msg=k)


@pytest.mark.slow
def test_bfloat16_compute(smpl_vars, smpl_apply):
    """bf16 matmuls (fp32 params, norms, softmax, readout residual) stay close to fp32."""
    ctx = _ctx((2, 8, 1280), 11)
    ref = smpl_apply(smpl_vars, ctx)
    out = jax.jit(heads.PoseHead(kind='smpl', dtype=jnp.bfloat16).apply)(smpl_vars, ctx)
    for k in ref:
        assert out[k].dtype == jnp.float32
        np.testing.assert_allclose(out[k], ref[k], atol=0.1, err_msg=k)


def test_select_context():
    rgb, sk = _ctx((2, 3, 4, 1280), 9), _ctx((2, 3, 4, 1280), 10)
    ctx, valid = heads.select_context(rgb, sk, 'rgb')
    assert ctx.shape == (2, 3, 4, 1280) and valid is None
    ctx, valid = heads.select_context(rgb, sk, 'both', rgb_present=jnp.array([[1, 0, 1]] * 2, bool))
    assert ctx.shape == (2, 3, 8, 1280) and valid.shape == (2, 3, 8)
    np.testing.assert_array_equal(ctx[..., 4:, :], sk)
    assert valid[:, 1, :4].sum() == 0 and valid[:, 1, 4:].all() and valid[:, 0].all()
    ctx, valid = heads.select_context(
        None, sk, 'skeleton', skeleton_present=jnp.zeros((2, 3), bool)
    )
    assert not valid.any()
    with pytest.raises(ValueError):
        heads.select_context(rgb, None, 'both')


@pytest.mark.parametrize('kind', ['smpl', 'mano'])
def test_mean_constants(kind, tmp_path):
    c = heads.mean_constants(kind)
    name = heads._KINDS[kind]['init_pose']
    joints = KINDS[kind][2]
    assert c[name].shape == (1, 6 * joints)
    np.testing.assert_allclose(
        np.asarray(
            jax.jit(jax.vmap(lambda p: heads.geometry.rot6d_to_matrix(p.reshape(-1, 6))))(c[name])[
                0
            ]
        ),
        np.broadcast_to(np.eye(3), (joints, 3, 3)),
    )
    np.testing.assert_array_equal(c['init_cam'], np.float32([[0.9, 0, 0]]))
    # From an npz (the mean-params file layout), also via the module at init.
    rng = np.random.default_rng(0)
    path = os.path.join(tmp_path, 'mean.npz')
    np.savez(
        path,
        pose=rng.normal(size=6 * joints),
        shape=rng.normal(size=10),
        cam=np.array([1.0, 0.1, 0.2]),
    )
    shapes = jax.eval_shape(
        heads.PoseHead(kind=kind, mean_params_path=path).init,
        jax.random.key(0),
        jnp.zeros((1, 4, 1280)),
    )
    assert set(shapes['constants']) == {name, 'init_betas', 'init_cam'}
    consts = heads.mean_constants(kind, path)
    np.testing.assert_allclose(consts['init_cam'], [[1.0, 0.1, 0.2]])
    with pytest.raises(ValueError):
        heads.mean_constants(kind, {'pose': np.zeros(5), 'shape': np.zeros(10), 'cam': np.zeros(3)})
