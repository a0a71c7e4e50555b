"""Layout masks as dense attentions over regrouped tokens, merged exactly by log-sum-exp.

    out = grouped_attention.attend(q, k, v, layout, structure, key_valid, scale)
    grouped_attention.plan(layout, structure)   # the pieces, or NotGroupable(reason)

The strategies of masks.py need no mask kernel. On the stream grid (frame t, view v,
modality m) each is a union of "pieces", and a piece is a plain attention over a reshaped
batch:
  'frame'       own stream                     (B T V M) sequences of N tokens
  'multimodal'  own frame, every modality      (B T V) sequences of M N tokens
  'full'        own view, every frame and mod. (B V) sequences of T M N tokens
  'extpose'     own modality, every frame      (B V M) sequences of T N tokens
                + own frame, OTHER modalities  (B T V M) queries of N tokens against a gather
                                               of the (M - 1) N tokens of the other modalities
Cross-view pairs (the same frame and modality in every other view) add one more piece of
the second kind. Pieces are disjoint (the own stream belongs to exactly one), so the union's
softmax is the pieces' softmaxes weighted by exp(lse_piece - lse_union): exact, with no
inclusion-exclusion (a log-space subtraction would cancel catastrophically).

The plan is not read off the MaskSpec but recognised from the static structure on the
layout's stream grid: a window as wide as the clip, a causal mask over one frame or
'extpose' with T = 1 reduce to a plan; anything else (a real window or causal mask, cross-view
pairs between only some views) raises NotGroupable naming one stream pair that no plan
reproduces. Each candidate plan's own structure is rebuilt and compared, so a plan that runs
is one that computes exactly this mask.

Two per-piece kernels, both returning the fp32 output and log-sum-exp:
  'einsum'  scores, statistics and output in one XLA einsum pass, differentiated by autodiff.
            Memory O(queries x keys) per piece: about 1/M of dense for 'extpose'.
  'dpa'     the output from jax.nn.dot_product_attention (implementation=None: XLA; 'cudnn':
            flash, O(N) memory) and the log-sum-exp from `_lse`, a key-chunked scan with its
            own VJP. dot_product_attention's return_residual is no substitute: that lse is
            stop-gradient (merged gradients would be wrong) and cuDNN returns it in bf16,
            whose ~0.03 absolute error in lse would move the merge weights by ~3%.
Fully masked query rows (dropped or padded keys) output exactly 0 and pass no gradient.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from extpose_jax.models import masks

AXES = ('frame', 'view', 'modality')  # the stream grid, in token order [T, V, M, N]
KERNELS = ('einsum', 'dpa')


class NotGroupable(ValueError):
    """The mask is not a union of whole frame / modality / view groups on this layout."""


@dataclasses.dataclass(frozen=True)
class Piece:
    """Keys that agree with the query's stream on every axis not in `free`; with `others`,
    the query's own stream is left out (it belongs to another piece). `others` pieces have
    one free axis: their keys are gathered per query stream."""

    free: tuple[str, ...]
    others: bool = False

    def stream_mask(self, layout: masks.TokenLayout) -> np.ndarray:
        attrs = [layout.stream_attr(a) for a in AXES]
        agree = np.ones((layout.streams,) * 2, bool)
        for name, a in zip(AXES, attrs):
            if name not in self.free:
                agree &= a[:, None] == a[None, :]
        if self.others:
            agree &= ~np.eye(layout.streams, dtype=bool)
        return agree

    def describe(self) -> str:
        """E.g. 'every frame' (own modality and view), 'other modalities' (own frame, view)."""
        if not self.free:
            return 'own stream'
        if self.others:
            return (
                'other '
                + {'frame': 'frames', 'view': 'views', 'modality': 'modalities'}[self.free[0]]
            )
        return 'every ' + ' x '.join(self.free)


# Cheapest first: with T = 1 'extpose' is 'multimodal', and the first match runs.
_CANDIDATES = {
    'frame': (Piece(()),),
    'multimodal': (Piece(('modality',)),),
    'full': (Piece(('frame', 'modality')),),
    'extpose': (Piece(('frame',)), Piece(('modality',), others=True)),
    'frame+cross_view': (Piece(('view',)),),
    'multimodal+cross_view': (Piece(('modality',)), Piece(('view',), others=True)),
    'full+cross_view': (Piece(AXES),),
    'extpose+cross_view': (
        Piece(('frame',)),
        Piece(('modality',), others=True),
        Piece(('view',), others=True),
    ),
}


@dataclasses.dataclass(frozen=True)
class Plan:
    name: str  # the candidate it matched, e.g. 'extpose'
    pieces: tuple[Piece, ...]


def _stream_structure(layout, structure):
    """(S, S) from the token structure; NotGroupable if a stream pair is partly allowed."""
    s, n = layout.streams, layout.patches
    blocks = np.asarray(structure, bool).reshape(s, n, s, n)
    coarse = blocks[:, 0, :, 0]
    if not (blocks == coarse[:, None, :, None]).all():
        raise NotGroupable('the mask is not constant over each pair of streams')
    return coarse


@masks.cache_by_identity
def _plan_cached(structure, layout):
    # Refusals are cached too: 'auto' asks once per block and trace, and a 6144-token
    # structure takes ~0.1 s to compare.
    try:
        return _plan(layout, structure), None
    except NotGroupable as e:
        return None, str(e)


def plan(layout: masks.TokenLayout, structure: np.ndarray) -> Plan:
    """The cheapest plan whose pieces reproduce `structure` exactly; NotGroupable otherwise."""
    masks.check_tokens(layout, np.shape(structure)[0])
    found, why = _plan_cached(structure, layout)
    if found is None:
        raise NotGroupable(why)
    return found


def _plan(layout, structure):
    want = _stream_structure(layout, structure)
    nearest = None  # the smallest candidate that allows every pair the mask allows
    for name, pieces in _CANDIDATES.items():
        counts = sum(p.stream_mask(layout).astype(int) for p in pieces)
        # Disjoint by construction; checked, since a pair counted twice would be double-weighted.
        assert counts.max() <= 1, name
        got = counts > 0
        if np.array_equal(got, want):
            return Plan(name, pieces)
        extra = int((got & ~want).sum())
        if not (want & ~got).any() and (nearest is None or extra < nearest[0]):
            nearest = (extra, name, got)
    _, name, got = nearest  # 'full+cross_view' allows every pair, so there is one
    i, j = map(int, np.argwhere(got & ~want)[0])
    raise NotGroupable(
        f'the mask is {name!r} with some stream pairs removed (e.g. {_stream_name(layout, i)} '
        f'-> {_stream_name(layout, j)}), not a union of whole frame / modality / view groups: '
        'windows narrower than the clip, causal masks and cross-view pairs between only some '
        'views need a mask kernel (blockwise, dense, cudnn)'
    )


def _stream_name(layout, i):
    t, v, m = (int(layout.stream_attr(a)[i]) for a in AXES)
    view = f', v={v}' if layout.views > 1 else ''
    return f'(t={t}{view}, {layout.modalities[m]})'


# ----------------------------------------------------------------------------- regrouping
# Tokens as (B, T, V, M, N, ...): grid axes 1..3, patches axis 4, then heads and head_dim (or
# nothing, for key validity).


def _grid(x, layout):
    return x.reshape(
        x.shape[0], layout.frames, layout.views, len(layout.modalities), -1, *x.shape[2:]
    )


def _sizes(layout):
    return dict(zip(AXES, (layout.frames, layout.views, len(layout.modalities))))


def _group(x, layout, piece):
    """(B, L, ...) -> (groups, tokens per group, ...) for the piece's queries and keys."""
    g = _grid(x, layout)
    kept = [1 + i for i, a in enumerate(AXES) if a not in piece.free]
    free = [1 + i for i, a in enumerate(AXES) if a in piece.free]
    g = g.transpose(0, *kept, *free, *range(4, g.ndim))
    n_kept = int(np.prod([g.shape[i] for i in range(1, 1 + len(kept))]))
    return g.reshape(g.shape[0] * n_kept, -1, *x.shape[2:])


def _ungroup(y, layout, piece, batch):
    """Inverse of _group for the piece's outputs (groups, tokens, ...) -> (B, L, ...)."""
    sizes = _sizes(layout)
    kept = [a for a in AXES if a not in piece.free]
    free = [a for a in AXES if a in piece.free]
    rest = y.shape[2:]
    g = y.reshape(batch, *(sizes[a] for a in kept + free), layout.patches, *rest)
    order = kept + free
    perm = [0] + [1 + order.index(a) for a in AXES] + list(range(4, g.ndim))
    return g.transpose(perm).reshape(batch, layout.n_tokens, *rest)


def _others(x, layout, axis):
    """(B, L, ...) -> (B S, (n - 1) N, ...): for each stream, the streams that differ from it
    only along `axis` (n = that axis's size)."""
    n = _sizes(layout)[axis]
    a = 1 + AXES.index(axis)
    index = np.array([[y for y in range(n) if y != x] for x in range(n)], np.int32)
    g = jnp.take(_grid(x, layout), index, axis=a)  # axis a -> (n, n - 1)
    g = jnp.moveaxis(g, a + 1, 4)  # (B, T, V, M, n - 1, N, ...)
    return g.reshape(g.shape[0] * layout.streams, (n - 1) * layout.patches, *x.shape[2:])


# ----------------------------------------------------------------------------- kernels


def _einsum_kernel(q, k, v, valid, scale):
    """(out fp32 (G, Lq, H, D), lse fp32 (G, Lq, H)); -inf lse and 0 out for empty rows."""
    s = jnp.einsum('gqhd,gkhd->ghqk', q, k, preferred_element_type=jnp.float32) * scale
    if valid is not None:
        s = jnp.where(valid[:, None, None, :], s, -jnp.inf)
    m = jax.lax.stop_gradient(s.max(-1))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    e = jnp.exp(s - m[..., None])
    l = e.sum(-1)
    seen = l > 0
    l_safe = jnp.where(seen, l, 1.0)
    out = jnp.einsum('ghqk,gkhd->gqhd', e.astype(v.dtype), v, preferred_element_type=jnp.float32)
    out = out / l_safe.transpose(0, 2, 1)[..., None]
    lse = jnp.where(seen, m + jnp.log(l_safe), -jnp.inf)
    return out, lse.transpose(0, 2, 1)


def _dpa_kernel(q, k, v, valid, scale, implementation):
    mask = None
    if valid is not None:
        mask = valid[:, None, None, :]
        if implementation == 'cudnn':  # cuDNN takes the mask as a bias of full (Lq, Lk) shape
            mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[1], k.shape[1]))
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, implementation=implementation
    )
    lse = _lse(q, k, jnp.ones(k.shape[:2], bool) if valid is None else valid, scale)
    # Empty rows: dot_product_attention returns the mean of v there; their -inf lse gives them
    # weight 0 in the merge, which zeroes a row that no piece has a key for.
    return out.astype(jnp.float32), lse


def _chunks(k, valid):
    """Keys in chunks of at most 256 for the scan, (C, G, c, ...): the scores held at a time
    are (G, H, Lq, c), as in a flash kernel."""
    lk = k.shape[1]
    c = next(c for c in range(min(lk, 256), 0, -1) if lk % c == 0)
    split = lambda x: jnp.moveaxis(x.reshape(x.shape[0], lk // c, c, *x.shape[2:]), 1, 0)
    return split(k), split(valid)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _lse(q, k, valid, scale):
    return _lse_fwd(q, k, valid, scale)[0]


def _chunk_scores(q, kc, vc, scale):
    s = jnp.einsum('gqhd,gkhd->ghqk', q, kc, preferred_element_type=jnp.float32) * scale
    return jnp.where(vc[:, None, None, :], s, -jnp.inf)


def _lse_fwd(q, k, valid, scale):
    kcs, vcs = _chunks(k, valid)
    g, lq, h = q.shape[:3]

    def step(carry, xs):
        m, l = carry
        s = _chunk_scores(q, *xs, scale)
        m_new = jnp.maximum(m, s.max(-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        l = l * jnp.exp(m - m_safe) + jnp.exp(s - m_safe[..., None]).sum(-1)
        return (m_new, l), None

    init = (jnp.full((g, h, lq), -jnp.inf, jnp.float32), jnp.zeros((g, h, lq), jnp.float32))
    (m, l), _ = jax.lax.scan(step, init, (kcs, vcs))
    seen = l > 0
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), -jnp.inf).transpose(0, 2, 1)
    return lse, (q, k, valid, lse)


def _lse_bwd(scale, res, dlse):
    # d lse_i / d s_ij = p_ij: dq_i = scale dlse_i sum_j p_ij k_j, dk_j = scale sum_i p_ij dlse_i q_i.
    q, k, valid, lse = res
    kcs, vcs = _chunks(k, valid)
    # +inf for empty rows: their scores are all -inf, and -inf - (-inf) would be NaN.
    lse_b = jnp.where(jnp.isfinite(lse), lse, jnp.inf).transpose(0, 2, 1)[..., None]
    w = dlse.transpose(0, 2, 1)[..., None] * scale  # (G, H, Lq, 1)

    def step(dq, xs):
        kc, vc = xs
        pw = jnp.exp(_chunk_scores(q, kc, vc, scale) - lse_b) * w
        dq = dq + jnp.einsum('ghqk,gkhd->gqhd', pw, kc, preferred_element_type=jnp.float32)
        dk = jnp.einsum('ghqk,gqhd->gkhd', pw, q, preferred_element_type=jnp.float32)
        return dq, dk

    dq, dks = jax.lax.scan(step, jnp.zeros(q.shape, jnp.float32), (kcs, vcs))
    dk = jnp.moveaxis(dks, 0, 1).reshape(k.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), None


_lse.defvjp(_lse_fwd, _lse_bwd)


# ----------------------------------------------------------------------------- entry point


def attend(
    q,
    k,
    v,
    *,
    layout: masks.TokenLayout,
    structure: np.ndarray,
    key_valid=None,
    scale=None,
    kernel='einsum',
    implementation=None,
):
    """Masked attention over (B, L, H, D) tokens of `layout`; see the module docstring.

    key_valid: bool (B or 1, L) or None. kernel 'einsum' | 'dpa'; implementation: the 'dpa'
    kernel's jax.nn.dot_product_attention implementation (None: XLA, 'cudnn').
    """
    if kernel not in KERNELS:
        raise ValueError(f'grouped attention: unknown kernel {kernel!r}; allowed: {KERNELS}')
    the_plan = plan(layout, structure)
    b = q.shape[0]
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if key_valid is not None:
        key_valid = jnp.broadcast_to(jnp.asarray(key_valid, bool), (b, k.shape[1]))

    def run(qg, kg, vg, valid):
        if kernel == 'einsum':
            return _einsum_kernel(qg, kg, vg, valid, scale)
        return _dpa_kernel(qg, kg, vg, valid, scale, implementation)

    outs, lses = [], []
    for piece in the_plan.pieces:
        if piece.others:
            axis = piece.free[0]
            if _sizes(layout)[axis] == 1:
                continue  # nobody else along this axis
            per_stream = lambda x: x.reshape(b * layout.streams, layout.patches, *x.shape[2:])
            gather = lambda x, axis=axis: _others(x, layout, axis)
            valid = None if key_valid is None else gather(key_valid)
            out, lse = run(per_stream(q), gather(k), gather(v), valid)
            outs.append(out.reshape(q.shape))
            lses.append(lse.reshape(q.shape[:3]))
        else:
            group = lambda x, piece=piece: _group(x, layout, piece)
            valid = None if key_valid is None else group(key_valid)
            out, lse = run(group(q), group(k), group(v), valid)
            outs.append(_ungroup(out, layout, piece, b))
            lses.append(_ungroup(lse, layout, piece, b))
    return _merge(outs, lses).astype(q.dtype)


def _merge(outs, lses):
    """Softmax over the union of disjoint key sets from each set's (out, lse)."""
    lse = jnp.stack(lses)  # (P, B, L, H)
    top = jax.lax.stop_gradient(lse.max(0))  # the result does not depend on it
    seen = jnp.isfinite(top)
    top = jnp.where(seen, top, 0.0)
    w = jnp.exp(lse - top)  # 0 for a piece with no key
    den = jnp.where(seen, w.sum(0), 1.0)
    out = sum(wi[..., None] * o for wi, o in zip(w, outs)) / den[..., None]
    return jnp.where(seen[..., None], out, 0.0)


def pieces_of(layout: masks.TokenLayout, spec: masks.MaskSpec, layer: int = 0):
    """The plan for a layer of a spec, or the reason there is none: (Plan | None, str | None)."""
    try:
        return plan(layout, masks.structure(layout, spec, layer)), None
    except NotGroupable as e:
        return None, str(e)
