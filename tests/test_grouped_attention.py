"""Grouped attention (regrouped dense attentions merged by log-sum-exp) against the dense
reference, its plans and refusals, and the 'auto' rule."""

import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_vit import SMALL, TWO, _images, _init

from extpose_jax.models import attention, grouped_attention, masks, vit
from extpose_jax.models.masks import MaskSpec, TokenLayout
from extpose_jax.train import config as config_lib

ONE_VIEW = TokenLayout(frames=3, modalities=TWO, patches=4)  # 24 tokens
TWO_VIEWS = TokenLayout(frames=3, views=2, modalities=TWO, patches=4)  # 48 tokens

CASES = [(ONE_VIEW, MaskSpec(s)) for s in masks.STRATEGIES] + [
    (TWO_VIEWS, MaskSpec('extpose')),
    (TWO_VIEWS, MaskSpec('extpose', cross_view=True)),
    (TWO_VIEWS, MaskSpec('multimodal', cross_view=True)),
    (TWO_VIEWS, MaskSpec('full', cross_view=True)),
    (TokenLayout(frames=2, modalities=('rgb', 'skeleton', 'depth'), patches=4), MaskSpec()),
]


def _inputs(layout, heads=2, dim=8, dtype=jnp.float32):
    """Four samples: all keys; skeleton dropped (and view 1 missing); RGB dropped and the last
    frame padded; every modality dropped (every row empty)."""
    rng = np.random.default_rng(0)
    q, k, v, g = (
        jnp.asarray(rng.normal(size=(4, layout.n_tokens, heads, dim)), dtype) for _ in range(4)
    )
    m = len(layout.modalities)
    keep = np.ones((4, m), bool)
    keep[1, 1], keep[2, 0], keep[3] = False, False, False
    frames = np.ones((4, layout.frames), bool)
    frames[2, -1] = False
    views = np.ones((4, layout.views), bool)
    views[1, 1:] = False
    kv = masks.key_valid(layout, modality_keep=keep, frame_valid=frames, view_valid=views)
    return q, k, v, g, kv


def _out_and_grads(fn, g):
    def run(q, k, v):
        out, vjp = jax.vjp(fn, q, k, v)
        return out, vjp(g)

    return jax.jit(run)


def _dense(s, kv):
    return lambda q, k, v: attention.attend(q, k, v, structure=s, key_valid=kv)


def _grouped(layout, s, kv, kernel):
    return lambda q, k, v: grouped_attention.attend(
        q, k, v, layout=layout, structure=s, key_valid=kv, kernel=kernel
    )


@pytest.mark.slow
@pytest.mark.parametrize('kernel', grouped_attention.KERNELS)
@pytest.mark.parametrize(
    'layout,spec',
    CASES,
    ids=[
        f'{s.strategy}-v{lay.views}-m{len(lay.modalities)}-cv{s.cross_view:d}' for lay, s in CASES
    ],
)
def test_matches_dense(layout, spec, kernel):
    q, k, v, g, kv = _inputs(layout)
    s = masks.structure(layout, spec)
    want, want_grads = _out_and_grads(_dense(s, kv), g)(q, k, v)
    got, grads = _out_and_grads(_grouped(layout, s, kv, kernel), g)(q, k, v)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    for name, a, b in zip('qkv', grads, want_grads):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5, err_msg=f'd{name}')


@pytest.mark.parametrize('kernel', grouped_attention.KERNELS)
@pytest.mark.parametrize('strategy', ['frame', 'extpose'])
def test_empty_rows_are_zero_with_zero_gradient(strategy, kernel):
    q, k, v, g, kv = _inputs(TWO_VIEWS)
    s = masks.structure(TWO_VIEWS, MaskSpec(strategy))
    empty = ~np.asarray(masks.dense_mask(s, kv)).any(-1)[:, 0]  # (B, N)
    # Sample 3 drops everything; under 'extpose' sample 2's RGB queries of the padded frame see
    # neither RGB (dropped) nor their frame's skeleton (padded).
    assert empty[3].all() and empty[2].any() and not empty[0].any()
    out, (dq, dk, dv) = _out_and_grads(_grouped(TWO_VIEWS, s, kv, kernel), g)(q, k, v)
    assert np.all(np.asarray(out)[empty] == 0)
    assert all(np.isfinite(d).all() for d in (dq, dk, dv))
    assert np.all(np.asarray(dq)[empty] == 0)
    invalid = ~np.asarray(kv)
    assert np.all(np.asarray(dk)[invalid] == 0) and np.all(np.asarray(dv)[invalid] == 0)


@pytest.mark.parametrize('kernel', grouped_attention.KERNELS)
def test_no_key_valid_and_broadcast_key_valid(kernel):
    q, k, v, _, _ = _inputs(ONE_VIEW)
    s = masks.structure(ONE_VIEW, MaskSpec('extpose'))
    for kv in (None, jnp.ones((1, ONE_VIEW.n_tokens), bool)):
        np.testing.assert_allclose(
            jax.jit(_grouped(ONE_VIEW, s, kv, kernel))(q, k, v),
            jax.jit(_dense(s, kv))(q, k, v),
            atol=1e-5,
        )


@pytest.mark.slow
def test_bf16_inputs():
    q, k, v, _, kv = _inputs(ONE_VIEW, dtype=jnp.bfloat16)
    s = masks.structure(ONE_VIEW, MaskSpec('extpose'))
    ref = jax.jit(_dense(s, kv))(*(x.astype(jnp.float32) for x in (q, k, v)))
    for kernel in grouped_attention.KERNELS:
        fn = _grouped(ONE_VIEW, s, kv, kernel)
        out = jax.jit(fn)(q, k, v)
        assert out.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2)
        grads = jax.jit(jax.grad(lambda q: fn(q, k, v).astype(jnp.float32).sum()))(q)
        assert grads.dtype == jnp.bfloat16 and np.isfinite(np.asarray(grads, np.float32)).all()


# ----------------------------------------------------------------------------- plans


@pytest.mark.parametrize(
    'layout,spec,name,pieces',
    [
        (ONE_VIEW, MaskSpec('frame'), 'frame', ['own stream']),
        (ONE_VIEW, MaskSpec('extpose'), 'extpose', ['every frame', 'other modalities']),
        # Equivalent masks reduce: a window as wide as the clip, window 0, causal over 1 frame.
        (ONE_VIEW, MaskSpec('extpose', window=2), 'extpose', None),
        (ONE_VIEW, MaskSpec('extpose', window=0), 'multimodal', None),
        (ONE_VIEW, MaskSpec('frame', window=1, causal=True), 'frame', None),
        (
            TokenLayout(modalities=TWO, patches=4),
            MaskSpec('extpose', causal=True),
            'multimodal',
            None,
        ),
        (TokenLayout(frames=3, patches=4), MaskSpec('extpose'), 'full', None),  # one modality
        # Views are separate groups unless cross-view pairs join every pair of them.
        (TWO_VIEWS, MaskSpec('full'), 'full', None),
        (TWO_VIEWS, MaskSpec('frame', cross_view=True), 'frame+cross_view', ['every view']),
        (
            TokenLayout(frames=2, views=2, modalities=TWO, patches=4, parts=(0, 1)),
            MaskSpec('extpose', cross_part=True),
            'extpose+cross_view',
            None,
        ),
    ],
)
def test_plans(layout, spec, name, pieces):
    plan = grouped_attention.plan(layout, masks.structure(layout, spec))
    assert plan.name == name
    if pieces is not None:
        assert [p.describe() for p in plan.pieces] == pieces


@pytest.mark.parametrize(
    'layout,spec,pair',
    [
        (ONE_VIEW, MaskSpec('extpose', window=1), r'\(t=0, rgb\) -> \(t=2, rgb\)'),
        (ONE_VIEW, MaskSpec('extpose', causal=True), r'\(t=0, rgb\) -> \(t=1, rgb\)'),
        (ONE_VIEW, MaskSpec('full', causal=True), r"'full' with some stream pairs removed"),
        # Cross-view pairs between only some views: parts (0, 1, 0) with cross_view.
        (
            TokenLayout(frames=1, views=3, modalities=TWO, patches=4, parts=(0, 1, 0)),
            MaskSpec('extpose', cross_view=True),
            r'\(t=0, v=0, rgb\) -> \(t=0, v=1, rgb\)',
        ),
    ],
)
def test_refuses_what_it_cannot_express(layout, spec, pair):
    s = masks.structure(layout, spec)
    with pytest.raises(grouped_attention.NotGroupable, match=pair):
        grouped_attention.plan(layout, s)
    q = jnp.zeros((1, layout.n_tokens, 2, 8))
    # Through attend: a ValueError before anything is computed, naming the way out.
    with pytest.raises(ValueError, match='not a union of whole frame / modality / view groups'):
        attention.attend(q, q, q, structure=s, impl='grouped', layout=layout)
    with pytest.raises(ValueError, match=r'need a mask kernel \(blockwise'):
        attention.attend(q, q, q, structure=s, impl='grouped', layout=layout)


def test_bad_calls_raise():
    q = jnp.zeros((1, ONE_VIEW.n_tokens, 2, 8))
    s = masks.structure(ONE_VIEW, MaskSpec())
    with pytest.raises(ValueError, match=r"impl='grouped'\) needs the token layout"):
        attention.attend(q, q, q, structure=s, impl='grouped')
    with pytest.raises(ValueError, match='tokens do not match the layout'):
        attention.attend(q, q, q, structure=s, impl='grouped', layout=TWO_VIEWS)
    if jax.default_backend() != 'gpu':
        with pytest.raises(ValueError, match=r"impl='grouped_cudnn'\) needs a GPU.*'grouped'"):
            attention.attend(q, q, q, structure=s, impl='grouped_cudnn', layout=ONE_VIEW)
    with pytest.raises(ValueError, match="unknown kernel 'flash'"):
        grouped_attention.attend(q, q, q, layout=ONE_VIEW, structure=s, kernel='flash')


# ----------------------------------------------------------------------------- auto


@pytest.mark.parametrize(
    'backend,dtype,groupable,other',
    [
        ('cpu', jnp.float32, 'blockwise', 'blockwise'),
        ('cpu', jnp.bfloat16, 'blockwise', 'blockwise'),
        ('gpu', jnp.bfloat16, 'grouped_cudnn', 'cudnn'),
        ('gpu', jnp.float16, 'grouped_cudnn', 'cudnn'),
        ('gpu', jnp.float32, 'grouped', 'blockwise'),
        ('tpu', jnp.bfloat16, 'grouped', 'blockwise'),
    ],
)
def test_auto_rule(backend, dtype, groupable, other):
    ok = masks.structure(ONE_VIEW, MaskSpec('extpose'))
    causal = masks.structure(ONE_VIEW, MaskSpec('extpose', causal=True))
    assert attention.choose(ok, ONE_VIEW, dtype, backend)[0] == groupable
    impl, why = attention.choose(causal, ONE_VIEW, dtype, backend)
    assert impl == other
    if backend != 'cpu':
        assert 'not a union of whole frame / modality / view groups' in why
        assert attention.choose(ok, None, dtype, backend)[0] == other  # no layout: no regrouping


def test_auto_runs_and_equals_dense():
    q, k, v, _, kv = _inputs(ONE_VIEW)
    for spec in (MaskSpec('extpose'), MaskSpec('extpose', causal=True)):
        s = masks.structure(ONE_VIEW, spec)
        got = jax.jit(
            lambda q, k, v: attention.attend(
                q, k, v, structure=s, key_valid=kv, impl='auto', layout=ONE_VIEW
            )
        )(q, k, v)
        np.testing.assert_allclose(got, jax.jit(_dense(s, kv))(q, k, v), atol=1e-5)


def test_auto_is_a_config_choice():
    cfg = importlib.import_module('configs.video').get_config('small')
    cfg.model.attention = 'auto'
    config_lib.validate(cfg, check_paths=False)
    assert config_lib.model_config(cfg).vit.attention == 'auto'
    with pytest.raises(ValueError, match="ViTConfig.attention: unknown impl 'flash'.*'auto'"):
        vit.ViTConfig(attention='flash')


# ----------------------------------------------------------------------------- through the ViT


@pytest.mark.slow
def test_grouped_and_auto_equal_dense_through_the_vit(monkeypatch):
    layout = TokenLayout(frames=2, modalities=TWO, patches=SMALL.num_patches)
    images = _images(SMALL, layout, batch=2)
    params = _init(SMALL)
    kv = masks.key_valid(
        layout,
        modality_keep=np.array([[1, 1], [0, 1]], bool),
        frame_valid=np.array([[1, 1], [1, 0]], bool),
    )
    spec = MaskSpec(layers=('frame', 'extpose'))  # 'frame' + dropout: empty rows inside the ViT

    def run(impl, spec=spec):
        model = vit.ViT(dataclasses.replace(SMALL, attention=impl))
        out, vjp = jax.vjp(lambda p: model.apply(p, images, layout, spec, kv), params)
        return out, vjp(jnp.ones_like(out))[0]

    def check(got, want):
        np.testing.assert_allclose(got[0], want[0], atol=1e-4, rtol=1e-4)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-3), got[1], want[1]
        )

    check(jax.jit(lambda: run('grouped'))(), jax.jit(lambda: run('dense'))())
    # 'auto' decides per block: on an accelerator (not a CPU, where it is always blockwise) a
    # causal block goes to blockwise while the others are grouped.
    mixed = MaskSpec(layers=('extpose', MaskSpec('extpose', causal=True)))
    monkeypatch.setattr(jax, 'default_backend', lambda: 'tpu')
    assert [
        attention.choose(masks.structure(layout, mixed, i), layout, jnp.float32)[0]
        for i in range(2)
    ] == ['grouped', 'blockwise']
    check(jax.jit(lambda: run('auto', mixed))(), jax.jit(lambda: run('dense', mixed))())


def test_describe_auto_names_each_run_of_blocks():
    lay = TokenLayout(frames=4, modalities=TWO, patches=4)
    spec = MaskSpec(layers=('frame', 'extpose', MaskSpec('extpose', window=1)))
    line = attention.describe_auto(lay, spec, 3, jnp.bfloat16, 'gpu')
    assert line.startswith(
        "attention 'auto' on gpu: blocks 0-1: grouped_cudnn; blocks 2-2: cudnn ("
    )
    assert "the mask is 'extpose' with some stream pairs removed" in line
    assert attention.describe_auto(lay, spec, 3, jnp.float32, 'cpu').startswith(
        "attention 'auto' on cpu: blocks 0-2: blockwise ("
    )


def test_the_estimate_resolves_auto_per_platform():
    from extpose_jax.train import estimate

    cfg = importlib.import_module('configs.video').get_config('small')
    cfg.model.attention = 'auto'
    d = estimate.Dims.of(cfg)
    assert d.groupable and d.attention == 'auto'
    assert estimate.on_platform(d, 'cpu').attention == 'blockwise'
    assert estimate.on_platform(d, 'tpu').attention == 'grouped'  # fp32 in the small config
    bf16 = dataclasses.replace(d, value_bytes=2)
    assert estimate.on_platform(bf16, 'gpu').attention == 'grouped_cudnn'
    # grouped keeps the probabilities of the allowed keys, between blockwise and dense.
    per = {
        impl: estimate.activation_bytes(dataclasses.replace(d, attention=impl), 1)
        for impl in ('blockwise', 'grouped', 'dense')
    }
    assert per['blockwise'] < per['grouped'] < per['dense']
    cfg.model.causal = True
    assert not estimate.Dims.of(cfg).groupable
