"""The decoder head's PyTorch <-> Flax key map and its bare-head converters (models/heads.py).

One row per upstream key: (torch key without the 'smpl_head.' / 'mano_head.' prefix, Flax path
with the collection first, torch shape, Flax shape, rule). Rows follow the upstream state_dict's
order (buffers first). rule 'linear': flax kernel = W.T.reshape(flax_shape) and back
W = kernel.reshape(torch_shape[::-1]).T; rule 'copy': same values and shape (LayerNorm weight ->
scale, the init_* buffers, pos_embedding). convert/keymap.py puts these rows under the ExtPose
tree for whole checkpoints.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import numpy as np

from extpose_jax.models.heads import CONTEXT_DIM, NUM_BETAS, _kind, head_size


def head_key_map(
    kind: str, size: str = 'hmr2'
) -> Tuple[Tuple[str, Tuple[str, ...], Tuple[int, ...], Tuple[int, ...], str], ...]:
    """(torch key without prefix, Flax path (collection first), torch shape, Flax shape, rule).

    rule 'linear': flax = W.T.reshape(flax_shape), W = flax.reshape(torch_shape[::-1]).T;
    rule 'copy': same values, same shape (LayerNorm weight -> scale, buffers, pos_embedding).
    Order follows the upstream state_dict (buffers first).
    """
    cfg, d = _kind(kind), head_size(size)
    n = 6 * cfg['num_joints']
    inner = d.heads * d.dim_head
    rows = [
        (cfg['init_pose'], ('constants', cfg['init_pose']), (1, n), (1, n), 'copy'),
        ('init_betas', ('constants', 'init_betas'), (1, NUM_BETAS), (1, NUM_BETAS), 'copy'),
        ('init_cam', ('constants', 'init_cam'), (1, 3), (1, 3), 'copy'),
        (
            'transformer.pos_embedding',
            ('params', 'transformer', 'pos_embedding'),
            (1, 1, d.dim),
            (1, 1, d.dim),
            'copy',
        ),
    ]

    def linear(tkey, path, out_in, flax_kernel, bias=True):
        rows.append((f'{tkey}.weight', path + ('kernel',), out_in, flax_kernel, 'linear'))
        if bias:
            rows.append((f'{tkey}.bias', path + ('bias',), out_in[:1], out_in[:1], 'copy'))

    def norm(tkey, path):
        rows.append((f'{tkey}.weight', path + ('scale',), (d.dim,), (d.dim,), 'copy'))
        rows.append((f'{tkey}.bias', path + ('bias',), (d.dim,), (d.dim,), 'copy'))

    linear(
        'transformer.to_token_embedding',
        ('params', 'transformer', 'to_token_embedding'),
        (d.dim, 1),
        (1, d.dim),
    )
    for i in range(d.depth):
        t, f = f'transformer.transformer.layers.{i}', ('params', 'transformer', f'layers_{i}')
        norm(f'{t}.0.norm', f + ('self_attn', 'norm'))
        linear(
            f'{t}.0.fn.to_qkv',
            f + ('self_attn', 'to_qkv'),
            (3 * inner, d.dim),
            (d.dim, 3, d.heads, d.dim_head),
            bias=False,
        )
        linear(
            f'{t}.0.fn.to_out.0',
            f + ('self_attn', 'to_out'),
            (d.dim, inner),
            (d.heads, d.dim_head, d.dim),
        )
        norm(f'{t}.1.norm', f + ('cross_attn', 'norm'))
        # Upstream registers to_kv before to_q (state_dict order; VERIFIED listing).
        linear(
            f'{t}.1.fn.to_kv',
            f + ('cross_attn', 'to_kv'),
            (2 * inner, CONTEXT_DIM),
            (CONTEXT_DIM, 2, d.heads, d.dim_head),
            bias=False,
        )
        linear(
            f'{t}.1.fn.to_q',
            f + ('cross_attn', 'to_q'),
            (inner, d.dim),
            (d.dim, d.heads, d.dim_head),
            bias=False,
        )
        linear(
            f'{t}.1.fn.to_out.0',
            f + ('cross_attn', 'to_out'),
            (d.dim, inner),
            (d.heads, d.dim_head, d.dim),
        )
        norm(f'{t}.2.norm', f + ('ff', 'norm'))
        linear(f'{t}.2.fn.net.0', f + ('ff', 'net_0'), (d.mlp_dim, d.dim), (d.dim, d.mlp_dim))
        linear(f'{t}.2.fn.net.3', f + ('ff', 'net_3'), (d.dim, d.mlp_dim), (d.mlp_dim, d.dim))
    for name, width in (('decpose', n), ('decshape', NUM_BETAS), ('deccam', 3)):
        linear(name, ('params', name), (width, d.dim), (d.dim, width))
    return tuple(rows)


def _numpy(x):
    if hasattr(x, 'detach'):  # a torch tensor; torch is not a dependency of this module
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _fail(what, missing, unexpected, bad_shapes):
    if missing or unexpected or bad_shapes:
        raise ValueError(
            f'{what}: missing {sorted(missing)}; unexpected {sorted(unexpected)}; '
            f'mis-shaped {bad_shapes}'
        )


def from_torch_state_dict(
    state_dict: Mapping[str, Any], kind: str, prefix: Optional[str] = None, size: str = 'hmr2'
) -> dict:
    """Upstream state_dict (numpy or torch values) -> {'params': ..., 'constants': ...} numpy.

    Reads the keys under `prefix` (default 'smpl_head.' / 'mano_head.'; '' for a bare head);
    other keys (backbone, discriminator, ...) are ignored. Fails listing every missing,
    unexpected (under the prefix) and mis-shaped key. Values keep their dtype (exact round trip).
    """
    prefix = f'{kind}_head.' if prefix is None else prefix
    rows = head_key_map(kind, size)
    ours = {prefix + r[0] for r in rows}
    present = {k for k in state_dict if k.startswith(prefix)}
    missing, unexpected, bad = ours - present, present - ours, []
    out: dict = {}
    for tkey, path, tshape, fshape, rule in rows:
        if prefix + tkey not in state_dict:
            continue
        w = _numpy(state_dict[prefix + tkey])
        if w.shape != tshape:
            bad.append((prefix + tkey, w.shape, tshape))
            continue
        v = w.T.reshape(fshape) if rule == 'linear' else w.copy()
        node = out
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    _fail('from_torch_state_dict', missing, unexpected, bad)
    return out


def to_torch_state_dict(
    variables: Mapping[str, Any], kind: str, prefix: Optional[str] = None, size: str = 'hmr2'
) -> dict:
    """{'params', 'constants'} (boxed or plain) -> {prefix + torch key: numpy array}, in order.

    Fails listing missing, unexpected and mis-shaped Flax leaves.
    """
    prefix = f'{kind}_head.' if prefix is None else prefix
    variables = nn.unbox(variables)
    flat = {
        tuple(getattr(k, 'key', k) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(
            {c: variables[c] for c in ('params', 'constants') if c in variables}
        )
    }
    rows = head_key_map(kind, size)
    missing = {'/'.join(r[1]) for r in rows if r[1] not in flat}
    unexpected = {'/'.join(p) for p in set(flat) - {r[1] for r in rows}}
    out, bad = {}, []
    for tkey, path, tshape, fshape, rule in rows:
        if path not in flat:
            continue
        v = np.asarray(flat[path])
        if v.shape != fshape:
            bad.append(('/'.join(path), v.shape, fshape))
            continue
        out[prefix + tkey] = v.reshape(tshape[::-1]).T.copy() if rule == 'linear' else v.copy()
    _fail('to_torch_state_dict', missing, unexpected, bad)
    return out


__all__ = ['head_key_map', 'from_torch_state_dict', 'to_torch_state_dict']
