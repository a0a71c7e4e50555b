"""One table per model part: PyTorch key <-> Flax path, both shapes and the rule between them.

A row says everything about one tensor (the PyTorch <-> Flax conversion rules):

  'copy'     same values, same shape (biases, LayerNorm weight -> scale, pos_embed, buffers)
  'linear'   flax = W.T.reshape(flax_shape); W = flax.reshape(torch_shape[::-1]).T -- nn.Linear,
             and the head's per-head DenseGeneral kernels (PyTorch lays fused outputs out
             [q | k | v], head-major, so a row-major reshape of W.T is exact)
  'conv'     Conv2d (O, I, kh, kw) <-> NHWC kernel (kh, kw, I, O)
  'conv1x1'  1x1 Conv2d (O, I, 1, 1) <-> Dense kernel (I, O) (the discriminator)

The ViT table is written here (vit.py names its parameters after the PyTorch keys); the head
and discriminator tables come from head_keymap.head_key_map / discriminator.discriminator_key_map and
are only re-rooted under the ExtPose tree. `from_torch` / `to_torch` apply any table strictly:
every row must be matched, every key or leaf must have a row, every shape must agree, and one
ConversionError lists all that is wrong at once. Pure moves of bits: round trips are exact.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from extpose_jax import errors
from extpose_jax.models import discriminator as disc_lib
from extpose_jax.models import head_keymap, heads

RULES = ('copy', 'linear', 'conv', 'conv1x1')
HEAD_PREFIX = {'smpl': 'smpl_head.', 'mano': 'mano_head.'}
_LISTED = 20  # keys named per category in an error message; the exception keeps them all


class Row(NamedTuple):
    torch_key: str
    path: tuple[str, ...]  # Flax path, collection first
    torch_shape: tuple[int, ...]
    flax_shape: tuple[int, ...]
    rule: str


class ConversionError(errors.UserError):
    """A conversion that cannot be complete; lists missing, unexpected and mis-shaped entries."""

    def __init__(self, what: str, missing=(), unexpected=(), mis_shaped=(), hint: str = ''):
        self.missing, self.unexpected = sorted(missing), sorted(unexpected)
        self.mis_shaped = list(mis_shaped)
        parts = [f'{what}:']
        for name, items in (
            ('missing', self.missing),
            ('unexpected', self.unexpected),
            ('mis-shaped', [f'{k} {got} != expected {want}' for k, got, want in self.mis_shaped]),
        ):
            if items:
                more = f' ... and {len(items) - _LISTED} more' if len(items) > _LISTED else ''
                parts.append(f'{len(items)} {name}: {", ".join(map(str, items[:_LISTED]))}{more}.')
        if hint:
            parts.append(hint)
        super().__init__(' '.join(parts))


# ------------------------------------------------------------------------------ tables


def vit_dims(config) -> dict:
    """The numbers a ViT table depends on, from a vit.ViTConfig."""
    return dict(
        width=config.width,
        depth=config.depth,
        mlp_dim=config.mlp_dim,
        num_patches=config.num_patches,
        patch=config.patch,
        channels=config.channels,
    )


def vit_rows(
    width,
    depth,
    mlp_dim,
    num_patches,
    patch=16,
    channels=3,
    *,
    torch_prefix='backbone.',
    root=('params', 'backbone'),
) -> tuple[Row, ...]:
    """The backbone (`backbone.*`: 389 tensors for ViT-H), in the upstream state_dict order."""
    rows = [
        Row(
            torch_prefix + 'pos_embed',
            root + ('pos_embed',),
            (1, 1 + num_patches, width),
            (1, 1 + num_patches, width),
            'copy',
        ),
        Row(
            torch_prefix + 'patch_embed.proj.weight',
            root + ('patch_embed', 'proj', 'kernel'),
            (width, channels, patch, patch),
            (patch, patch, channels, width),
            'conv',
        ),
        Row(
            torch_prefix + 'patch_embed.proj.bias',
            root + ('patch_embed', 'proj', 'bias'),
            (width,),
            (width,),
            'copy',
        ),
    ]

    def norm(tkey, path):
        rows.extend(
            Row(f'{torch_prefix}{tkey}.{t}', root + path + (f,), (width,), (width,), 'copy')
            for t, f in (('weight', 'scale'), ('bias', 'bias'))
        )

    def linear(tkey, path, n_in, n_out):
        rows.append(
            Row(
                f'{torch_prefix}{tkey}.weight',
                root + path + ('kernel',),
                (n_out, n_in),
                (n_in, n_out),
                'linear',
            )
        )
        rows.append(
            Row(f'{torch_prefix}{tkey}.bias', root + path + ('bias',), (n_out,), (n_out,), 'copy')
        )

    for i in range(depth):
        t, f = f'blocks.{i}', (f'blocks_{i}',)
        norm(f'{t}.norm1', f + ('norm1',))
        linear(f'{t}.attn.qkv', f + ('attn', 'qkv'), width, 3 * width)  # fused [q | k | v]
        linear(f'{t}.attn.proj', f + ('attn', 'proj'), width, width)
        norm(f'{t}.norm2', f + ('norm2',))
        linear(f'{t}.mlp.fc1', f + ('mlp', 'fc1'), width, mlp_dim)
        linear(f'{t}.mlp.fc2', f + ('mlp', 'fc2'), mlp_dim, width)
    norm('last_norm', ('last_norm',))
    return tuple(rows)


def head_rows(
    kind: str, context_dim: int = heads.CONTEXT_DIM, size: str = 'hmr2'
) -> tuple[Row, ...]:
    """head_keymap.head_key_map under 'smpl_head.' / 'mano_head.' and the ExtPose tree ('head').

    head_key_map fixes the cross-attention's context width at ViT-H's 1280; ExtPose's head reads
    whatever width the backbone has, so to_kv's input dimension is set from context_dim.
    """
    prefix = HEAD_PREFIX[kind]
    rows = []
    for tkey, path, tshape, fshape, rule in head_keymap.head_key_map(kind, size):
        if tkey.endswith('.fn.to_kv.weight'):
            tshape, fshape = (tshape[0], context_dim), (context_dim,) + fshape[1:]
        rows.append(Row(prefix + tkey, (path[0], 'head') + path[1:], tshape, fshape, rule))
    return tuple(rows)


def discriminator_rows(kind: str) -> tuple[Row, ...]:
    root = (disc_lib.DISCRIMINATOR,)
    return tuple(
        Row('discriminator.' + tkey, root + path, tshape, fshape, rule)
        for tkey, path, tshape, fshape, rule in disc_lib.discriminator_key_map(kind)
    )


def model_rows(
    kind: str, dims: Mapping[str, int], discriminator: bool = False, head_size: str = 'hmr2'
) -> tuple[Row, ...]:
    """An ExtPose (= HMR 2.0 for 'smpl', HaMeR for 'mano') checkpoint: backbone, head, [disc]."""
    rows = vit_rows(**dims) + head_rows(kind, dims['width'], head_size)
    return rows + (discriminator_rows(kind) if discriminator else ())


def dims_from_variables(variables: Mapping[str, Any]) -> dict:
    """vit_rows' numbers read off a Flax ExtPose tree (arrays or ShapeDtypeStructs)."""
    try:
        bb = nn.unbox(variables['params']['backbone'])
        pos, conv = bb['pos_embed'], bb['patch_embed']['proj']['kernel']
        depth = sum(1 for k in bb if k.startswith('blocks_'))
        mlp = bb['blocks_0']['mlp']['fc1']['kernel'].shape[1]
    except (KeyError, TypeError) as e:
        raise ConversionError(
            'not an ExtPose parameter tree', missing=[f'params/backbone/... ({e})']
        )
    return dict(
        width=pos.shape[-1],
        depth=depth,
        mlp_dim=mlp,
        num_patches=pos.shape[1] - 1,
        patch=conv.shape[0],
        channels=conv.shape[2],
    )


def kind_from_variables(variables: Mapping[str, Any]) -> str:
    """'smpl' or 'mano', from the head's init_* buffer."""
    consts = variables.get('constants', {}).get('head', {})
    for kind, name in (('smpl', 'init_body_pose'), ('mano', 'init_hand_pose')):
        if name in consts:
            return kind
    raise ConversionError(
        'cannot tell SMPL from MANO',
        missing=['constants/head/init_body_pose or constants/head/init_hand_pose'],
    )


def _head_size(depth, dim, inner, mlp_dim, where: str) -> str:
    name = heads.size_name(depth, dim, inner, mlp_dim)
    if name is None:
        raise ConversionError(
            f'{where}: a head of depth {depth}, width {dim}, attention width {inner} and MLP '
            f'{mlp_dim} is none of heads.SIZES ({", ".join(heads.SIZES)})'
        )
    return name


def head_size_from_variables(variables: Mapping[str, Any]) -> str:
    """The heads.SIZES name of a Flax ExtPose tree's head (arrays or ShapeDtypeStructs)."""
    try:
        t = nn.unbox(variables['params']['head']['transformer'])
        dim = t['pos_embedding'].shape[-1]
        inner = int(np.prod(t['layers_0']['cross_attn']['to_q']['kernel'].shape[1:]))
        mlp = t['layers_0']['ff']['net_0']['kernel'].shape[1]
    except (KeyError, TypeError) as e:
        raise ConversionError('not an ExtPose parameter tree', missing=[f'params/head/... ({e})'])
    depth = sum(1 for k in t if k.startswith('layers_'))
    return _head_size(depth, dim, inner, mlp, 'params/head')


def head_size_from_state_dict(sd: Mapping[str, Any], prefix: str) -> str:
    """The heads.SIZES name of a PyTorch head under `prefix` ('smpl_head.'); 'hmr2' when the
    keys that tell are missing (the strict pass then names them)."""
    t = prefix + 'transformer.'
    pos, to_q = sd.get(t + 'pos_embedding'), sd.get(t + 'transformer.layers.0.1.fn.to_q.weight')
    fc = sd.get(t + 'transformer.layers.0.2.fn.net.0.weight')
    if pos is None or to_q is None or fc is None:
        return 'hmr2'
    stem = t + 'transformer.layers.'
    depth = len({k[len(stem) :].split('.')[0] for k in sd if k.startswith(stem)})
    return _head_size(depth, pos.shape[-1], to_q.shape[0], fc.shape[0], prefix[:-1])


def random_state_dict(rows: Iterable[Row], seed: int = 0) -> collections.OrderedDict:
    """A fake checkpoint in the upstream layout (tests, dry runs): float32 numpy per row.

    Weights ~ N(0, 1 / fan_in) so activations stay O(1) through deep stacks; LayerNorm weights
    near 1; everything else (biases, embeddings, buffers) N(0, 0.1^2).
    """
    rng = np.random.default_rng(seed)
    out = collections.OrderedDict()
    for r in rows:
        x = rng.standard_normal(r.torch_shape, dtype=np.float32)
        if r.rule != 'copy':
            x *= np.float32(1 / np.sqrt(np.prod(r.torch_shape[1:])))
        elif r.path[-1] == 'scale':
            x = 1 + np.float32(0.1) * x
        else:
            x *= np.float32(0.1)
        out[r.torch_key] = x
    return out


# ------------------------------------------------------------------------------ applying a table


def as_numpy(x):
    """A torch tensor, jax array or array-like -> numpy, same dtype (bfloat16 -> float32)."""
    if hasattr(x, 'detach'):  # torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) == 'torch.bfloat16':  # numpy has no bfloat16; fp32 holds it exactly
            x = x.float()
        return x.numpy()
    return np.asarray(jax.device_get(x))


def _move(x, rule: str, src_shape, dst_shape, to_flax: bool):
    if isinstance(x, jax.ShapeDtypeStruct):  # shapes only: nothing is allocated
        return jax.ShapeDtypeStruct(tuple(dst_shape), x.dtype)
    if rule == 'copy':
        y = np.array(x)  # a writable copy: device_get arrays are read-only (torch.from_numpy warns)
    elif rule == 'linear':
        y = x.T.reshape(dst_shape) if to_flax else x.reshape(dst_shape[::-1]).T
    elif rule == 'conv':
        y = x.transpose(2, 3, 1, 0) if to_flax else x.transpose(3, 2, 0, 1)
    elif rule == 'conv1x1':
        y = x[:, :, 0, 0].T if to_flax else x.T[:, :, None, None]
    else:
        raise ValueError(f'unknown conversion rule {rule!r}; known: {RULES}')
    return np.ascontiguousarray(y)


def from_torch(
    state_dict: Mapping[str, Any],
    rows: Iterable[Row],
    *,
    what: str = 'PyTorch -> JAX',
    ignore=lambda key: False,
    hint: str = '',
) -> dict:
    """{torch key: tensor or array} -> nested {collection: {...}} numpy, strict over `rows`.

    Every key must be in a row or satisfy `ignore(key)`; values keep their dtype.
    """
    rows = tuple(rows)
    wanted = {r.torch_key for r in rows}
    missing = [k for k in wanted if k not in state_dict]
    unexpected = [k for k in state_dict if k not in wanted and not ignore(k)]
    flat, bad = {}, []
    for r in rows:
        if r.torch_key not in state_dict:
            continue
        x = state_dict[r.torch_key]
        x = x if isinstance(x, jax.ShapeDtypeStruct) else as_numpy(x)
        if tuple(x.shape) != r.torch_shape:
            bad.append((r.torch_key, tuple(x.shape), r.torch_shape))
            continue
        flat[r.path] = _move(x, r.rule, r.torch_shape, r.flax_shape, to_flax=True)
    if missing or unexpected or bad:
        raise ConversionError(what, missing, unexpected, bad, hint)
    return traverse_util.unflatten_dict(flat)


def to_torch(
    variables: Mapping[str, Any], rows: Iterable[Row], *, what: str = 'JAX -> PyTorch'
) -> collections.OrderedDict:
    """Nested Flax variables (boxed or plain; arrays or ShapeDtypeStructs) -> ordered state dict.

    Every leaf must have a row and every row a leaf. Output order is the table's (upstream's).
    """
    rows = tuple(rows)
    flat = {
        tuple(getattr(k, 'key', k) for k in p): v
        for p, v in jax.tree_util.tree_leaves_with_path(nn.unbox(variables))
    }
    paths = {r.path for r in rows}
    missing = ['/'.join(r.path) for r in rows if r.path not in flat]
    unexpected = ['/'.join(p) for p in flat if p not in paths]
    out, bad = collections.OrderedDict(), []
    for r in rows:
        if r.path not in flat:
            continue
        x = flat[r.path]
        x = x if isinstance(x, jax.ShapeDtypeStruct) else as_numpy(x)
        if tuple(x.shape) != r.flax_shape:
            bad.append(('/'.join(r.path), tuple(x.shape), r.flax_shape))
            continue
        out[r.torch_key] = _move(x, r.rule, r.flax_shape, r.torch_shape, to_flax=False)
    if missing or unexpected or bad:
        raise ConversionError(what, missing, unexpected, bad)
    return out


__all__ = [
    'Row',
    'ConversionError',
    'as_numpy',
    'HEAD_PREFIX',
    'vit_dims',
    'vit_rows',
    'head_rows',
    'discriminator_rows',
    'model_rows',
    'dims_from_variables',
    'kind_from_variables',
    'head_size_from_variables',
    'head_size_from_state_dict',
    'random_state_dict',
    'from_torch',
    'to_torch',
]
