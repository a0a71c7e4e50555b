"""Mask structures against hand-written expectations; blockwise attention against the dense reference."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from extpose_jax.models import attention, masks
from extpose_jax.models.masks import MaskSpec, TokenLayout

# ----------------------------------------------------------------------------- layout


def test_layout_token_attributes():
    lay = TokenLayout(frames=2, modalities=('rgb', 'skeleton'), patches=3)
    assert lay.streams == 4 and lay.n_tokens == 12
    np.testing.assert_array_equal(lay.frame, [0] * 6 + [1] * 6)
    np.testing.assert_array_equal(lay.modality, [0, 0, 0, 1, 1, 1] * 2)
    np.testing.assert_array_equal(lay.view, [0] * 12)
    np.testing.assert_array_equal(lay.select(frame=1, modality='skeleton'), [9, 10, 11])
    lay = TokenLayout(frames=1, views=3, modalities=('rgb',), patches=2, parts=(0, 1, 1))
    np.testing.assert_array_equal(lay.part, [0, 0, 1, 1, 1, 1])
    assert hash(lay) == hash(TokenLayout(1, 3, ['rgb'], 2, [0, 1, 1]))  # lists are normalised


# ----------------------------------------------------------------------------- structures

# T=2, M=2, streams in order R0, S0, R1, S1 (R = rgb, S = skeleton).
EXPECTED_T2M2 = {
    'frame': [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]],
    'multimodal': [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]],
    # R0 sees R0, S0 (same frame) and R1 (same modality), not S1.
    'extpose': [[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]],
    'full': [[1, 1, 1, 1]] * 4,
}


@pytest.mark.parametrize('strategy', masks.STRATEGIES)
def test_strategies_small_layout(strategy):
    lay = TokenLayout(frames=2, modalities=('rgb', 'skeleton'), patches=3)
    want = np.array(EXPECTED_T2M2[strategy], bool)
    np.testing.assert_array_equal(masks.stream_structure(lay, MaskSpec(strategy)), want)
    # Token level: constant over each 3 x 3 patch block.
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec(strategy)), np.kron(want, np.ones((3, 3), bool))
    )


def test_window_and_causal():
    lay = TokenLayout(frames=4, modalities=('rgb',), patches=1)
    band = np.abs(np.subtract.outer(np.arange(4), np.arange(4))) <= 1
    lower = np.tril(np.ones((4, 4), bool))
    np.testing.assert_array_equal(masks.structure(lay, MaskSpec('extpose', window=1)), band)
    np.testing.assert_array_equal(masks.structure(lay, MaskSpec('full', causal=True)), lower)
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec('extpose', window=1, causal=True)), band & lower
    )
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec('extpose', window=0)), np.eye(4, dtype=bool)
    )
    # With two modalities: window restricts the cross-frame (same-modality) pairs only.
    lay = TokenLayout(frames=3, modalities=('rgb', 'skeleton'), patches=1)  # R0 S0 R1 S1 R2 S2
    got = masks.structure(lay, MaskSpec('extpose', window=1))
    np.testing.assert_array_equal(got[0], [1, 1, 1, 0, 0, 0])  # R0: R0 S0 R1
    np.testing.assert_array_equal(got[3], [0, 1, 1, 1, 0, 1])  # S1: S0 R1 S1 S2
    got = masks.structure(lay, MaskSpec('extpose', causal=True))
    np.testing.assert_array_equal(got[2], [1, 0, 1, 1, 0, 0])  # R1: R0 R1 S1, nothing of frame 2


def test_cross_view():
    lay = TokenLayout(
        frames=1, views=2, modalities=('rgb', 'skeleton'), patches=1
    )  # v0R v0S v1R v1S
    off = masks.structure(lay, MaskSpec('extpose'))
    np.testing.assert_array_equal(off, [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    on = masks.structure(lay, MaskSpec('extpose', cross_view=True))  # + same (t, m) across views
    np.testing.assert_array_equal(on, [[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]])
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec('full', cross_view=True)), np.ones((4, 4))
    )
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec('full')), off
    )  # full within views only
    # Cross-view pairs need the same frame.
    lay = TokenLayout(frames=2, views=2, modalities=('rgb',), patches=1)  # t0v0 t0v1 t1v0 t1v1
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec('extpose', cross_view=True)),
        [[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]],
    )


def test_cross_part():
    # Two cameras x (body, hand): views 0 and 2 are the body, 1 and 3 the hand.
    lay = TokenLayout(frames=1, views=4, modalities=('rgb',), patches=1, parts=(0, 1, 0, 1))
    eye = np.eye(4, dtype=bool)
    np.testing.assert_array_equal(masks.structure(lay, MaskSpec('extpose')), eye)
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec('extpose', cross_view=True)),
        eye | np.array([[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]], bool),
    )
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec('extpose', cross_part=True)),
        eye | np.array([[0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]], bool),
    )
    # Body + hands with skeletons: across parts only same frame and same modality.
    lay = TokenLayout(frames=1, views=2, modalities=('rgb', 'skeleton'), patches=1, parts=(0, 1))
    np.testing.assert_array_equal(
        masks.structure(lay, MaskSpec('multimodal', cross_part=True)),
        [[1, 1, 1, 0], [1, 1, 0, 1], [1, 0, 1, 1], [0, 1, 1, 1]],
    )


def _brute_force(lay, spec):
    """The module docstring's rules, token pair by token pair."""
    t, v, m, p = lay.frame, lay.view, lay.modality, lay.part
    n = lay.n_tokens
    out = np.zeros((n, n), bool)
    for i, j in itertools.product(range(n), range(n)):
        same_t, same_m = t[i] == t[j], m[i] == m[j]
        if v[i] == v[j]:
            ok = {
                'frame': same_t and same_m,
                'multimodal': same_t,
                'extpose': same_t or same_m,
                'full': True,
            }[spec.strategy]
        else:
            switch = spec.cross_view if p[i] == p[j] else spec.cross_part
            ok = switch and (spec.strategy == 'full' or (same_t and same_m))
        if spec.window is not None:
            ok = ok and abs(t[i] - t[j]) <= spec.window
        if spec.causal:
            ok = ok and t[j] <= t[i]
        out[i, j] = ok
    return out


@pytest.mark.parametrize('strategy', masks.STRATEGIES)
def test_structure_matches_brute_force(strategy):
    lay = TokenLayout(frames=3, views=3, modalities=('rgb', 'skeleton'), patches=2, parts=(0, 1, 0))
    for window, causal, cross_view, cross_part in itertools.product(
        (None, 1), (False, True), (False, True), (False, True)
    ):
        spec = MaskSpec(
            strategy, window=window, causal=causal, cross_view=cross_view, cross_part=cross_part
        )
        np.testing.assert_array_equal(
            masks.structure(lay, spec), _brute_force(lay, spec), err_msg=str(spec)
        )


def test_per_layer_schedule():
    lay = TokenLayout(frames=2, modalities=('rgb', 'skeleton'), patches=1)
    spec = MaskSpec(window=0, layers=('frame', 'extpose', MaskSpec('full')))
    np.testing.assert_array_equal(masks.structure(lay, spec, 0), EXPECTED_T2M2['frame'])
    # A name inherits window=0 from the parent: extpose without the cross-frame pairs.
    np.testing.assert_array_equal(masks.structure(lay, spec, 1), EXPECTED_T2M2['multimodal'])
    np.testing.assert_array_equal(
        masks.structure(lay, spec, 2), EXPECTED_T2M2['full']
    )  # a full spec stands alone
    assert spec.at_layer(1) == MaskSpec('extpose', window=0)
    with pytest.raises(ValueError, match='layer 3 is outside the MaskSpec schedule of 3 layers'):
        masks.structure(lay, spec, 3)
    hash(spec)  # usable as a static argument
    # Layers with the same effective spec share one array (kernels cache schedules per array).
    assert masks.structure(lay, MaskSpec(layers=('extpose',) * 2), 1) is masks.structure(
        lay, MaskSpec('extpose')
    )


def test_structure_is_cached_and_read_only():
    lay = TokenLayout(frames=2, modalities=('rgb', 'skeleton'), patches=3)
    a = masks.structure(lay, MaskSpec('extpose'))
    assert a is masks.structure(TokenLayout(2, 1, ('rgb', 'skeleton'), 3), MaskSpec('extpose'))
    with pytest.raises(ValueError):
        a[0, 0] = False


def test_key_valid_and_dense_mask():
    lay = TokenLayout(frames=2, modalities=('rgb', 'skeleton'), patches=2)
    kv = masks.key_valid(
        lay,
        modality_keep=np.array([[True, False], [True, True]]),
        frame_valid=np.array([[True, True], [True, False]]),
    )
    np.testing.assert_array_equal(kv, [[1, 1, 0, 0, 1, 1, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]])
    assert masks.key_valid(lay) is None
    s = masks.structure(lay, MaskSpec('extpose'))
    mask = masks.dense_mask(s, kv)
    assert mask.shape == (2, 1, 8, 8)
    np.testing.assert_array_equal(mask[:, 0], s[None] & np.asarray(kv)[:, None, :])
    np.testing.assert_array_equal(masks.dense_mask(s)[0, 0], s)
    with pytest.raises(ValueError, match=r'frame_valid must be \(batch, 2\)'):
        masks.key_valid(lay, frame_valid=np.ones((2, 3), bool))


def test_block_pattern():
    lay = TokenLayout(frames=2, modalities=('rgb', 'skeleton'), patches=3)
    s = masks.structure(lay, MaskSpec('extpose'))
    np.testing.assert_array_equal(masks.block_pattern(s, 3), EXPECTED_T2M2['extpose'])
    # Blocks of 6 = one frame: every frame pair shares a modality, so all four blocks are computed.
    np.testing.assert_array_equal(masks.block_pattern(s, 6), np.ones((2, 2)))
    # Blocks of 4 straddle streams: a block is computed iff ANY of its entries is allowed.
    np.testing.assert_array_equal(
        masks.block_pattern(masks.structure(lay, MaskSpec('frame')), 4),
        [[1, 1, 0], [1, 1, 1], [0, 1, 1]],
    )
    with pytest.raises(ValueError, match='12 query tokens are not a multiple of block size 5'):
        masks.block_pattern(s, 5)


def test_factorize():
    lay = TokenLayout(frames=3, views=2, modalities=('rgb', 'skeleton'), patches=4)
    s = masks.structure(lay, MaskSpec('extpose', cross_view=True, window=1))
    core, rows, cols = masks.factorize(s)
    assert core.shape[0] <= lay.streams and core.shape[1] <= lay.streams
    np.testing.assert_array_equal(core[rows][:, cols], s)


@pytest.mark.parametrize('block', [4, 6, 8, 12])
def test_schedule_visits_exactly_the_allowed_blocks(block):
    lay = TokenLayout(frames=3, modalities=('rgb', 'skeleton'), patches=4)
    s = masks.structure(lay, MaskSpec('extpose', causal=True))
    sched = attention.schedule(s, block, block)
    pattern = masks.block_pattern(s, block)
    visited = np.zeros_like(pattern)
    for step, j in zip(*np.nonzero(sched.tile)):
        qi, ki = sched.order[j], sched.key_block[step, j]
        assert not visited[qi, ki], 'a block is visited twice'
        visited[qi, ki] = True
        # The tile's element mask is the structure's block.
        np.testing.assert_array_equal(
            sched.tiles[sched.tile[step, j]],
            s[qi * block : (qi + 1) * block, ki * block : (ki + 1) * block],
        )
    np.testing.assert_array_equal(visited, pattern)
    assert sched.visited == pattern.sum() and not sched.tiles[0].any()
    # Segments cover every step and every busy query block.
    assert [seg[0] for seg in sched.segments[1:]] == [seg[1] for seg in sched.segments[:-1]]
    assert sched.segments[-1][1] == sched.steps
    for start, stop, active in sched.segments:
        assert not sched.tile[start:stop, active:].any()


def test_schedule_computes_only_allowed_blocks_for_ragged_patterns():
    # Causal over 16 frames: query blocks see 2..17 key blocks. Without segments every query block
    # would run max(count) = 17 steps (32 x 17 = 544 blocks, as many as non-causal 'extpose').
    lay = TokenLayout(frames=16, modalities=('rgb', 'skeleton'), patches=4)
    s = masks.structure(lay, MaskSpec('extpose', causal=True))
    sched = attention.schedule(s, 4, 4)
    assert sched.visited == 2 * sum(t + 2 for t in range(16)) == 304 and len(sched.segments) <= 8
    assert sched.visited <= sched.computed <= 1.15 * sched.visited
    exact = attention.schedule(s, 4, 4, 32)  # enough segments: no padding at all
    assert exact.computed == exact.visited


# ----------------------------------------------------------------------------- attention

LAYOUT = TokenLayout(frames=3, modalities=('rgb', 'skeleton'), patches=4)  # 24 tokens
MV_LAYOUT = TokenLayout(
    frames=2, views=2, modalities=('rgb', 'skeleton'), patches=4, parts=(0, 1)
)  # 32

SPECS = [(LAYOUT, MaskSpec(s)) for s in masks.STRATEGIES] + [
    (LAYOUT, MaskSpec('extpose', window=1)),
    (LAYOUT, MaskSpec('extpose', causal=True)),
    (MV_LAYOUT, MaskSpec('extpose', cross_part=True)),
    (MV_LAYOUT, MaskSpec('full', cross_part=True, causal=True)),
]


def _inputs(layout, batch=3, heads=2, dim=8, dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v, g = (
        jnp.asarray(rng.normal(size=(batch, layout.n_tokens, heads, dim)), dtype) for _ in range(4)
    )
    # Sample 0: everything; sample 1: skeleton dropped; sample 2: RGB dropped and last frame padded.
    keep = np.array([[1, 1], [1, 0], [0, 1]], bool)[:batch]
    frames = np.ones((batch, layout.frames), bool)
    frames[2:, -1] = False
    kv = masks.key_valid(layout, modality_keep=keep, frame_valid=frames)
    return q, k, v, g, kv


def _out_and_grads(impl, s, kv, g, block):
    """jit: (q, k, v) -> (out, (dq, dk, dv)) for the cotangent g; one compile per kernel."""

    def fn(q, k, v):
        out, vjp = jax.vjp(
            lambda q, k, v: attention.attend(
                q, k, v, structure=s, key_valid=kv, impl=impl, block_size=block
            ),
            q,
            k,
            v,
        )
        return out, vjp(g)

    return jax.jit(fn)


@pytest.mark.slow
@pytest.mark.parametrize(
    'layout,spec', SPECS, ids=[f'{s.strategy}-{i}' for i, (_, s) in enumerate(SPECS)]
)
def test_blockwise_matches_dense(layout, spec):
    q, k, v, g, kv = _inputs(layout)
    s = masks.structure(layout, spec)
    want, want_grads = _out_and_grads('dense', s, kv, g, 0)(q, k, v)
    # Blocks aligned with the 4-token streams, and straddling them (6) or spanning several (8).
    for block in (4, 6 if layout.n_tokens % 6 == 0 else 8):
        got, grads = _out_and_grads('blockwise', s, kv, g, block)(q, k, v)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f'block {block}')
        for name, a, b in zip('qkv', grads, want_grads):
            np.testing.assert_allclose(
                a, b, atol=1e-5, rtol=1e-5, err_msg=f'd{name}, block {block}'
            )


@pytest.mark.parametrize('impl', ['dense', 'blockwise'])
def test_empty_rows_are_zero_with_zero_gradient(impl):
    # 'frame': a query sees only its own stream, so dropped / padded streams leave empty rows.
    q, k, v, g, kv = _inputs(LAYOUT)
    s = masks.structure(LAYOUT, MaskSpec('frame'))
    empty = ~np.asarray(masks.dense_mask(s, kv)).any(-1)[:, 0]  # (B, N)
    assert (
        empty.sum() == 4 * 3 + 4 * 3 + 4
    )  # sample 1: 3 skeleton streams; sample 2: 3 RGB + padded skeleton
    out, (dq, dk, dv) = _out_and_grads(impl, s, kv, g, 8)(q, k, v)
    assert np.all(np.asarray(out)[empty] == 0)
    for d in (dq, dk, dv):
        assert np.all(np.isfinite(d))
    assert np.all(np.asarray(dq)[empty] == 0)
    invalid_keys = ~np.asarray(kv)
    assert np.all(np.asarray(dk)[invalid_keys] == 0) and np.all(np.asarray(dv)[invalid_keys] == 0)


@pytest.mark.slow
def test_no_key_valid_and_broadcast_key_valid():
    q, k, v, _, _ = _inputs(LAYOUT)
    s = masks.structure(LAYOUT, MaskSpec('extpose'))
    for kv in (None, jnp.ones((1, LAYOUT.n_tokens), bool)):
        np.testing.assert_allclose(
            attention.attend(q, k, v, structure=s, key_valid=kv, impl='blockwise', block_size=8),
            attention.attend(q, k, v, structure=s, key_valid=kv),
            atol=1e-5,
        )
    # 'full' without key_valid is plain attention.
    s = masks.structure(LAYOUT, MaskSpec('full'))
    np.testing.assert_allclose(
        attention.attend(q, k, v, structure=s, impl='blockwise', block_size=8),
        jax.nn.dot_product_attention(q, k, v),
        atol=1e-5,
    )


@pytest.mark.slow
def test_bf16_inputs():
    q, k, v, _, kv = _inputs(LAYOUT, dtype=jnp.bfloat16)
    s = masks.structure(LAYOUT, MaskSpec('extpose'))
    ref = attention.attend(*(x.astype(jnp.float32) for x in (q, k, v)), structure=s, key_valid=kv)
    for impl in ('dense', 'blockwise'):
        out = attention.attend(q, k, v, structure=s, key_valid=kv, impl=impl, block_size=8)
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2)
    grads = jax.grad(
        lambda q: (
            attention.attend(q, k, v, structure=s, key_valid=kv, impl='blockwise', block_size=8)
            .astype(jnp.float32)
            .sum()
        )
    )(q)
    assert grads.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grads, np.float32)))


# ----------------------------------------------------------------------------- errors


def test_bad_specs_and_layouts_raise():
    with pytest.raises(
        ValueError,
        match=r"MaskSpec.strategy: unknown strategy 'temporal'; allowed: 'frame', "
        r"'multimodal', 'extpose', 'full'",
    ):
        MaskSpec('temporal')
    with pytest.raises(ValueError, match=r'MaskSpec.layers\[1\]: unknown strategy'):
        MaskSpec(layers=('frame', 'bogus'))
    with pytest.raises(ValueError, match='MaskSpec.window must be None or an int >= 0'):
        MaskSpec(window=-1)
    with pytest.raises(ValueError, match='give one part index per view'):
        TokenLayout(views=2, parts=(0,))
    with pytest.raises(ValueError, match='TokenLayout.frames must be a positive int'):
        TokenLayout(frames=0)
    with pytest.raises(
        ValueError,
        match=r'385 tokens do not match the layout: 1 frames x 1 views x 2 '
        r"modalities \('rgb', 'skeleton'\) x 192 patches = 384 tokens",
    ):
        masks.check_tokens(TokenLayout(modalities=('rgb', 'skeleton')), 385)


def test_bad_attention_inputs_raise_before_tracing():
    q, k, v, _, kv = _inputs(LAYOUT)
    s = masks.structure(LAYOUT, MaskSpec('extpose'))
    # Raised while tracing (Python-level checks on static shapes), before any computation.
    with pytest.raises(
        ValueError,
        match=r'24 query tokens is not a multiple of block_size=16; use a block size '
        r'that divides 24, e.g. 8',
    ):
        jax.jit(lambda q: attention.attend(q, k, v, structure=s, impl='blockwise', block_size=16))(
            q
        )
    lay = TokenLayout(frames=3, modalities=('rgb', 'skeleton'), patches=192)
    with pytest.raises(ValueError, match=r'1152 query tokens .* block_size=256; .* e.g. 192'):
        attention.attend(
            *(jnp.zeros((1, 1152, 1, 8)),) * 3,
            structure=masks.structure(lay, MaskSpec()),
            impl='blockwise',
            block_size=256,
        )
    with pytest.raises(ValueError, match="unknown impl 'flash'"):
        attention.attend(q, k, v, structure=s, impl='flash')
    with pytest.raises(ValueError, match=r'structure must be bool \(Nq, Nk\) = \(24, 24\)'):
        attention.attend(q, k, v, structure=s[:12])
    with pytest.raises(ValueError, match=r'key_valid must be \(B, Nk\)'):
        attention.attend(q, k, v, structure=s, key_valid=kv[:, :12])
    with pytest.raises(TypeError, match='structure must be static'):
        jax.jit(lambda s: attention.attend(q, k, v, structure=s))(s)
    if jax.default_backend() != 'gpu':
        with pytest.raises(ValueError, match=r"impl='cudnn'\) needs a GPU"):
            attention.attend(q, k, v, structure=s, impl='cudnn')
