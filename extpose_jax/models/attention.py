"""Masked multi-head attention: one entry point, `attend`, five implementations and 'auto'.

    out = attend(q, k, v, structure=masks.structure(layout, spec, layer), key_valid=kv,
                 impl='dense' | 'blockwise' | 'cudnn' | 'grouped' | 'grouped_cudnn' | 'auto',
                 block_size=128, layout=layout)

q, k, v are (B, N, H, D) (BTNH, as jax.nn.dot_product_attention). The mask is the static
`structure` (numpy bool (Nq, Nk), known while tracing) AND the dynamic `key_valid`
(bool (B, Nk) or None). A query row with no allowed key outputs exactly 0 and passes no
gradient (XLA would otherwise return the mean of V).

'dense'      jax.nn.dot_product_attention with the boolean mask: the reference. Memory
             O(B H Nq Nk): fine for one frame (384 tokens), 2.25 GiB per block at 6144.
'blockwise'  flash-style online softmax over (query block, key block) pairs. Which key blocks
             each query block visits is read off the static structure, so ruled-out blocks
             cost neither compute nor memory; all query blocks advance together in a
             lax.scan, and ragged patterns (causal, windows) run in a few segments over the
             still-busy query blocks (`schedule`). The backward pass (custom_vjp) recomputes
             block scores from the saved (out, logsumexp): memory O(N x block), never O(N^2).
             Statistics and accumulators are fp32 for any input dtype. N must be a multiple
             of block_size (a clear error suggests one that divides N); block_size is capped
             at N, so short sequences run as one block. Pick blocks that tile the layout's
             streams (64 or 192 for 192-token streams): a 128 block straddles two streams and
             inherits the union of their key blocks.
'cudnn'      jax.nn.dot_product_attention(implementation='cudnn') with the mask (turned into
             a dense bias by JAX: flash-style, but no block skipping in JAX 0.10).
             GPU only and bf16/fp16 only: asked for elsewhere it RAISES (a silent fallback
             would hide that a run is not using the kernel it was configured for).
'grouped'    the layout strategies as dense attentions over regrouped tokens, merged by
             log-sum-exp (grouped_attention.py); needs `layout`. Exactly the allowed pairs
             are computed, no mask tile or bias; memory O(queries x keys) per group (about
             1/M of dense for 'extpose'). A mask it cannot express (a window narrower than the
             clip, causal, cross-view pairs between only some views) RAISES NotGroupable.
'grouped_cudnn'  the same groups, each served by cuDNN flash attention (no mask unless keys
             are invalid), its log-sum-exp from an fp32 key-chunked scan. GPU, bf16/fp16.
'auto'       resolved per call by `choose` (the rule is there); falls back, never raises, for
             a mask the grouped kernels cannot express.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from extpose_jax.models import grouped_attention, masks

IMPLS = ('dense', 'blockwise', 'cudnn', 'grouped', 'grouped_cudnn')
CHOICES = IMPLS + ('auto',)  # what a config may name
_LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def attend(
    q, k, v, *, structure, key_valid=None, impl='dense', block_size=128, scale=None, layout=None
):
    """Masked attention; see the module docstring. Returns (B, Nq, H, D) in q's dtype.

    layout: the masks.TokenLayout of the tokens; the grouped kernels (and 'auto', to consider
    them) need it to regroup tokens by frame, view and modality.
    """
    if impl == 'auto':
        impl = choose(structure, layout, q.dtype)[0]
    structure = _check(q, k, v, structure, key_valid, impl)
    key_valid = None if key_valid is None else jnp.asarray(key_valid).astype(bool)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if impl in ('grouped', 'grouped_cudnn'):
        if layout is None:
            raise ValueError(
                f'attend(impl={impl!r}) needs the token layout (layout=...) to regroup tokens'
            )
        return grouped_attention.attend(
            q,
            k,
            v,
            layout=layout,
            structure=structure,
            key_valid=key_valid,
            scale=scale,
            kernel='einsum' if impl == 'grouped' else 'dpa',
            implementation=None if impl == 'grouped' else 'cudnn',
        )
    if impl == 'dense':
        return _dense(q, k, v, structure, key_valid, scale, implementation=None)
    if impl == 'cudnn':
        return _dense(q, k, v, structure, key_valid, scale, implementation='cudnn')
    sched = schedule(structure, *_block_sizes(structure.shape, block_size))
    if key_valid is None:
        key_valid = jnp.ones((1, k.shape[1]), bool)
    return _blockwise_fn(sched, float(scale))(q, k, v, key_valid)


def choose(structure, layout, dtype, backend=None):
    """(impl, why) that 'auto' runs for one layer's mask on `backend` (default: JAX's).

    The rule, by platform:
      cpu          'blockwise', even where grouped applies: measured on XLA:CPU
                   (docs/performance.md), its stream-sized tiles stay in cache while the
                   grouped kernel's whole groups do not; grouped was slower at every size.
      gpu, bf16/fp16  'grouped_cudnn' where the mask is a union of frame / modality / view
                   groups (cuDNN flash per group, no mask), else 'cudnn'.
      gpu fp32, tpu   'grouped' where it applies (exactly the allowed pairs as large
                   matmuls rather than a scan over small tiles), else 'blockwise'.
    The accelerator branches follow from the kernels' design and are not yet measured
    (bench/gpu_suite.sh measures them).
    """
    backend = backend or jax.default_backend()
    if layout is None:
        why = 'no token layout given, so the grouped kernels cannot regroup the tokens'
    else:
        try:
            grouped_attention.plan(layout, np.asarray(structure))
            why = None
        except grouped_attention.NotGroupable as e:
            why = str(e)
    impl = auto_impl(why is None, dtype, backend)
    if backend == 'cpu':
        why = 'on a CPU blockwise is the fastest that expresses every mask (measured)'
    return impl, why or f'the mask is a union of frame / modality / view groups: {impl}'


def describe_auto(layout, spec, depth: int, dtype, backend=None) -> str:
    """One line for a run's log: what 'auto' runs in each block, and why where it falls back."""
    picks = [choose(masks.structure(layout, spec, i), layout, dtype, backend) for i in range(depth)]
    runs = []  # (first block, last block, impl, why)
    for i, (impl, why) in enumerate(picks):
        if runs and runs[-1][2] == impl and runs[-1][3] == why:
            runs[-1][1] = i
        else:
            runs.append([i, i, impl, why])
    parts = [
        f'blocks {a}-{b}: {impl}' + ('' if impl.startswith('grouped') else f' ({why})')
        for a, b, impl, why in runs
    ]
    return f"attention 'auto' on {backend or jax.default_backend()}: " + '; '.join(parts)


def auto_impl(groupable: bool, dtype, backend: str) -> str:
    """`choose`'s rule once groupability is known (train/estimate.py applies it too)."""
    if backend == 'cpu':
        return 'blockwise'
    cudnn_ok = backend == 'gpu' and jnp.dtype(dtype) in _LOW_PRECISION
    if groupable:
        return 'grouped_cudnn' if cudnn_ok else 'grouped'
    return 'cudnn' if cudnn_ok else 'blockwise'


def _check(q, k, v, structure, key_valid, impl):
    if impl not in IMPLS:
        raise ValueError(f'attend: unknown impl {impl!r}; allowed: {", ".join(map(repr, CHOICES))}')
    if (
        q.ndim != 4
        or k.shape != v.shape
        or k.ndim != 4
        or q.shape[::3] != k.shape[::3]
        or q.shape[2] != k.shape[2]
    ):
        raise ValueError(
            f'attend: q, k, v must be (B, N, H, D) with matching B, H, D; '
            f'got {q.shape}, {k.shape}, {v.shape}'
        )
    if isinstance(structure, jax.core.Tracer):
        raise TypeError(
            'attend: structure must be static (numpy), not a traced array; per-sample '
            'masking goes through key_valid'
        )
    structure = structure if isinstance(structure, np.ndarray) else np.asarray(structure)
    if structure.dtype != bool or structure.shape != (q.shape[1], k.shape[1]):
        raise ValueError(
            f'attend: structure must be bool (Nq, Nk) = ({q.shape[1]}, {k.shape[1]}), '
            f'got {structure.dtype} {structure.shape}'
        )
    if key_valid is not None and (
        key_valid.ndim != 2
        or key_valid.shape[1] != k.shape[1]
        or key_valid.shape[0] not in (1, k.shape[0])
    ):
        raise ValueError(
            f'attend: key_valid must be (B, Nk) = ({k.shape[0]}, {k.shape[1]}), '
            f'got {key_valid.shape}'
        )
    if impl in ('cudnn', 'grouped_cudnn'):
        other = 'blockwise' if impl == 'cudnn' else 'grouped'
        if jax.default_backend() != 'gpu':
            raise ValueError(
                f'attend(impl={impl!r}) needs a GPU, the backend is {jax.default_backend()!r}; '
                f'use impl={other!r} (same result, any platform)'
            )
        if q.dtype not in _LOW_PRECISION:
            raise ValueError(
                f'attend(impl={impl!r}) takes bf16/fp16 inputs, got {q.dtype}; set the '
                f"model's compute dtype to bfloat16 or use impl={other!r}"
            )
    return structure


# ----------------------------------------------------------------------------- dense


def _dense(q, k, v, structure, key_valid, scale, implementation):
    mask = masks.dense_mask(structure, key_valid)
    out = jax.nn.dot_product_attention(
        q, k, v, mask=mask, scale=scale, implementation=implementation
    )
    # Empty rows: zero them; the where also stops their (meaningless) gradient.
    has_key = jnp.any(mask, axis=-1)[:, 0, :, None, None]  # (B, Nq, 1, 1)
    return jnp.where(has_key, out, 0).astype(q.dtype)


# ----------------------------------------------------------------------------- blockwise schedule


def _block_sizes(shape, block_size):
    sizes = []
    for name, n in zip(('query', 'key'), shape):
        b = min(block_size, n)
        if n % b:
            divisors = [d for d in range(b, 0, -1) if n % d == 0]
            hint = next((d for d in divisors if d % 8 == 0), divisors[0])
            raise ValueError(
                f"attend(impl='blockwise'): {n} {name} tokens is not a multiple of "
                f'block_size={block_size}; use a block size that divides {n}, e.g. {hint}'
            )
        sizes.append(b)
    return sizes


class Schedule(NamedTuple):
    """Static (numpy) description of which blocks the kernel visits.

    Query blocks are processed in `order` (most allowed key blocks first). Step s handles, for
    each query block j of that order at once, key block key_block[s, j] under the element mask
    tiles[tile[s, j]]. Because counts only decrease along `order`, the query blocks still busy at
    step s are a prefix; `segments` (start, stop, active) run steps start..stop-1 on the first
    `active` of them, so padding (tile 0: all False) is only computed where segments were merged
    to keep the number of loops small.
    """

    block_q: int
    block_k: int
    order: np.ndarray  # (nq,) query block indices
    key_block: np.ndarray  # (steps, nq) int32, columns in `order`
    tile: np.ndarray  # (steps, nq) int32; 0 = padding
    tiles: np.ndarray  # (n_tiles, block_q, block_k) bool; tiles[0] all False
    segments: tuple  # ((start, stop, active), ...)

    @property
    def steps(self):
        return self.key_block.shape[0]

    @property
    def visited(self):
        """(query block, key block) pairs the mask allows."""
        return int((self.tile > 0).sum())

    @property
    def computed(self):
        """(query block, key block) pairs the kernel computes (allowed + merged padding)."""
        return sum((stop - start) * active for start, stop, active in self.segments)


@masks.cache_by_identity
def schedule(structure: np.ndarray, block_q: int, block_k: int, max_segments: int = 8) -> Schedule:
    nq, nk = structure.shape[0] // block_q, structure.shape[1] // block_k
    blocks = structure.reshape(nq, block_q, nk, block_k).transpose(0, 2, 1, 3)
    allowed = blocks.any(axis=(2, 3))
    order = np.argsort(-allowed.sum(1), kind='stable')
    allowed, blocks = allowed[order], blocks[order]
    counts = allowed.sum(1)
    steps = int(counts.max()) if nq else 0
    # Deduplicate the element masks of visited blocks: with layout masks almost all are all-True.
    # The all-False tile goes first, so tile 0 is the padding tile.
    empty = np.zeros((1, block_q, block_k), bool)
    tiles, inverse = masks.unique_rows(np.concatenate([empty, blocks[allowed]]))
    key_block = np.zeros((steps, nq), np.int32)
    tile = np.zeros((steps, nq), np.int32)
    rows, cols = np.nonzero(allowed)  # row-major: each query block's key blocks in order
    slot = np.arange(len(rows)) - np.searchsorted(rows, rows)
    key_block[slot, rows] = cols
    tile[slot, rows] = inverse[1:]
    active = (counts[None, :] > np.arange(steps)[:, None]).sum(1)  # busy query blocks per step
    return Schedule(
        block_q, block_k, order, key_block, tile, tiles, _segments(active, max_segments)
    )


def _segments(active, max_segments):
    """Splits steps into <= max_segments runs minimising computed blocks (each run computes its
    first step's `active` query blocks throughout; `active` never increases). Tiny DP."""
    n = len(active)
    k_max = min(max_segments, n)
    if n == 0:
        return ()
    # best[k][j]: least cost of steps 0..j-1 in k runs; cut[k][j]: where the last run starts.
    inf = float('inf')
    best = [[inf] * (n + 1) for _ in range(k_max + 1)]
    cut = [[0] * (n + 1) for _ in range(k_max + 1)]
    best[0][0] = 0
    for k in range(1, k_max + 1):
        for j in range(1, n + 1):
            for i in range(j):
                cost = best[k - 1][i] + int(active[i]) * (j - i)
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    k = min(range(1, k_max + 1), key=lambda k: (best[k][n], k))
    bounds, j = [], n
    while j > 0:
        bounds.append((cut[k][j], j))
        j, k = cut[k][j], k - 1
    return tuple((a, b, int(active[a])) for a, b in reversed(bounds))


# ----------------------------------------------------------------------------- blockwise kernel
# Internal layout is head-major and blocked: (B, H, n_blocks, block, D). Query-side arrays are
# permuted into the schedule's `order`.


def _to_blocks(x, block, order=None):
    b, n, h, d = x.shape
    x = x.reshape(b, n // block, block, h, d).transpose(0, 3, 1, 2, 4)
    return x if order is None else jnp.take(x, order, axis=2)


def _from_blocks(x, order=None):
    x = x if order is None else jnp.take(x, np.argsort(order), axis=2)
    b, h, nb, block, d = x.shape
    return x.transpose(0, 2, 3, 1, 4).reshape(b, nb * block, h, d)


def _loop(sched, step, q_side, carry):
    """Runs step(active, q_side, carry, (key_block, tile)) -> carry over the schedule.

    Arrays in q_side and carry whose axis 2 runs over query blocks (marked by a leading True
    in the (flag, array) pairs) are cut to the segment's active prefix and written back.
    """

    def cut(pairs, active):
        return [x[:, :, :active] if per_q else x for per_q, x in pairs]

    for start, stop, active in sched.segments:
        q_cut = cut(q_side, active)
        xs = (sched.key_block[start:stop, :active], sched.tile[start:stop, :active])
        sub, _ = jax.lax.scan(
            lambda c, x, q_cut=q_cut: (step(q_cut, c, x), None), cut(carry, active), xs
        )
        carry = [
            (per_q, x.at[:, :, :active].set(y) if per_q else y) for (per_q, x), y in zip(carry, sub)
        ]
    return [x for _, x in carry]


def _step_inputs(sched, kb, vb, kvb, key_block, tile):
    """Gathers one step's key/value blocks and their (B, 1, nq', bq, bk) mask."""
    ks = jnp.take(kb, key_block, axis=2)  # (B, H, nq', bk, D)
    vs = jnp.take(vb, key_block, axis=2)
    allowed = jnp.take(jnp.asarray(sched.tiles), tile, axis=0)[None, None]  # (1, 1, nq', bq, bk)
    allowed = allowed & jnp.take(kvb, key_block, axis=1)[:, None, :, None, :]  # key validity
    return ks, vs, allowed


def _scores(qb, ks, scale):
    return jnp.einsum('bhqid,bhqjd->bhqij', qb, ks, preferred_element_type=jnp.float32) * scale


def _forward(sched, scale, q, k, v, key_valid):
    qb = _to_blocks(q, sched.block_q, sched.order)
    kb, vb = _to_blocks(k, sched.block_k), _to_blocks(v, sched.block_k)
    kvb = key_valid.reshape(key_valid.shape[0], -1, sched.block_k)
    b, h, nq, bq, d = qb.shape

    def step(q_side, carry, xs):
        (qb,), (acc, m, l) = q_side, carry
        ks, vs, allowed = _step_inputs(sched, kb, vb, kvb, *xs)
        s = jnp.where(allowed, _scores(qb, ks, scale), -jnp.inf)
        m_new = jnp.maximum(m, s.max(-1))
        m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)  # no key seen yet: avoid inf - inf
        p = jnp.exp(s - m_safe[..., None])
        corr = jnp.exp(m - m_safe)
        pv = jnp.einsum(
            'bhqij,bhqjd->bhqid', p.astype(v.dtype), vs, preferred_element_type=jnp.float32
        )
        return [acc * corr[..., None] + pv, m_new, l * corr + p.sum(-1)]

    init = [
        (True, jnp.zeros((b, h, nq, bq, d), jnp.float32)),
        (True, jnp.full((b, h, nq, bq), -jnp.inf, jnp.float32)),
        (True, jnp.zeros((b, h, nq, bq), jnp.float32)),
    ]
    acc, m, l = _loop(sched, step, [(True, qb)], init)
    seen = l > 0
    out = jnp.where(seen[..., None], acc / jnp.where(seen, l, 1.0)[..., None], 0.0)
    # +inf logsumexp for empty rows makes exp(s - lse) = 0 in the backward pass. Kept in `order`.
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), jnp.inf)
    return _from_blocks(out, sched.order).astype(q.dtype), lse


def _backward(sched, scale, res, g):
    q, k, v, key_valid, out, lse = res
    qb, gb, ob = (_to_blocks(x, sched.block_q, sched.order) for x in (q, g, out))
    kb, vb = _to_blocks(k, sched.block_k), _to_blocks(v, sched.block_k)
    kvb = key_valid.reshape(key_valid.shape[0], -1, sched.block_k)
    # delta_i = sum_j p_ij dp_ij = dO_i . O_i (flash-attention 2).
    delta = jnp.einsum('bhqid,bhqid->bhqi', gb, ob, preferred_element_type=jnp.float32)

    def step(q_side, carry, xs):
        (qb, gb, lse, delta), (dq, dk, dv) = q_side, carry
        key_block = xs[0]
        ks, vs, allowed = _step_inputs(sched, kb, vb, kvb, *xs)
        s = _scores(qb, ks, scale)
        p = jnp.exp(jnp.where(allowed, s - lse[..., None], -jnp.inf))
        dp = jnp.einsum('bhqid,bhqjd->bhqij', gb, vs, preferred_element_type=jnp.float32)
        ds = p * (dp - delta[..., None]) * scale
        dq = dq + jnp.einsum(
            'bhqij,bhqjd->bhqid', ds.astype(k.dtype), ks, preferred_element_type=jnp.float32
        )
        # Several query blocks may share a key block within a step: scatter-ADD (duplicates sum).
        dk = dk.at[:, :, key_block].add(
            jnp.einsum(
                'bhqij,bhqid->bhqjd', ds.astype(q.dtype), qb, preferred_element_type=jnp.float32
            )
        )
        dv = dv.at[:, :, key_block].add(
            jnp.einsum(
                'bhqij,bhqid->bhqjd', p.astype(g.dtype), gb, preferred_element_type=jnp.float32
            )
        )
        return [dq, dk, dv]

    dq, dk, dv = _loop(
        sched,
        step,
        [(True, qb), (True, gb), (True, lse), (True, delta)],
        [
            (True, jnp.zeros(qb.shape, jnp.float32)),
            (False, jnp.zeros(kb.shape, jnp.float32)),
            (False, jnp.zeros(vb.shape, jnp.float32)),
        ],
    )
    return (
        _from_blocks(dq, sched.order).astype(q.dtype),
        _from_blocks(dk).astype(k.dtype),
        _from_blocks(dv).astype(v.dtype),
        None,
    )


def _blockwise_fn(sched: Schedule, scale: float):
    """A custom_vjp attention closed over the static schedule (numpy, so not an argument)."""

    @jax.custom_vjp
    def fn(q, k, v, key_valid):
        return _forward(sched, scale, q, k, v, key_valid)[0]

    def fwd(q, k, v, key_valid):
        out, lse = _forward(sched, scale, q, k, v, key_valid)
        return out, (q, k, v, key_valid, out, lse)

    fn.defvjp(fwd, lambda res, g: _backward(sched, scale, res, g))
    return fn
