"""Ablation baselines: ExtPose's signature and outputs, RGB-only at init, new parameters train."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_calls import apply as _apply

from extpose_jax.models import baselines as bl
from extpose_jax.models import extpose, masks, vit

TINY = vit.ViTConfig.of('tiny', image_size=(64, 48))  # 4 x 3 patches: fast on CPU
HEAD = 'tiny'  # the baselines change the backbone's input, never the head
CFG = extpose.ExtPoseConfig(vit=TINY, mask=masks.MaskSpec('frame'), head_size=HEAD)
RGB_ONLY = extpose.ExtPoseConfig(
    vit=TINY, modalities=('rgb',), head_context='rgb', mask=masks.MaskSpec('frame'), head_size=HEAD
)
NAMES = list(bl.BASELINES)


def _inputs(b=1, t=2, seed=0):
    rng = np.random.default_rng(seed)
    frames = jnp.asarray(rng.uniform(0, 255, size=(b, t, 1, 64, 48, 3)), jnp.float32)
    kp = rng.uniform([4, 4, 0.6], [44, 60, 1.0], size=(b, t, 1, 18, 3))
    return frames, jnp.asarray(kp, jnp.float32)


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _struct(tree):
    return jax.tree_util.tree_map(lambda x: (x.shape, x.dtype), tree)


def _loss(model, variables, frames, kp, **kw):
    out = model.apply(variables, frames, kp, **kw)
    return jnp.sum(out['pred_cam'] ** 2) + jnp.sum(out['betas'] ** 2) + jnp.sum(out['pose_6d'] ** 2)


def _perturb(params, names, scale=0.05, seed=1):
    """Small random noise on the new parameters (zero-initialised ones block gradients)."""
    params = dict(params)
    for i, name in enumerate(names):
        leaves, tree = jax.tree_util.tree_flatten(params[name])
        keys = jax.random.split(jax.random.PRNGKey(seed + i), len(leaves))
        params[name] = jax.tree_util.tree_unflatten(
            tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
        )
    return params


@pytest.fixture(scope='module')
def rgb_only():
    frames, kp = _inputs()
    model = extpose.ExtPose(RGB_ONLY)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), frames, kp)
    return model, variables, _apply(model, variables, frames, kp)


@pytest.fixture(scope='module')
def built():
    """name -> (model, variables with the RGB-only ExtPose's backbone/head/constants copied in)."""
    return {}


def _get(built, rgb_only, name):
    if name not in built:
        frames, kp = _inputs()
        model = bl.build(name, CFG)
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(1), frames, kp)
        ref = rgb_only[1]
        assert _struct(shapes['params']['backbone']) == _struct(ref['params']['backbone'])
        assert _struct(shapes['params']['head']) == _struct(ref['params']['head'])
        assert _struct(shapes['constants']) == _struct(ref['constants'])
        new = bl.new_param_names(name, shapes['params'])

        def init_new(key):  # only the new parameters: XLA drops the (slow) head/backbone init
            params = model.init(key, frames, kp)['params']
            return {k: params[k] for k in new}

        params = {
            **jax.jit(init_new)(jax.random.PRNGKey(1)),
            'backbone': ref['params']['backbone'],
            'head': ref['params']['head'],
        }
        assert _struct(params) == _struct(shapes['params'])
        built[name] = (model, {**shapes, 'params': params, 'constants': ref['constants']})
    return built[name]


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_runs_with_extpose_outputs_and_adds_parameters(name, built, rgb_only):
    frames, kp = _inputs()
    model, variables = _get(built, rgb_only, name)
    out = _apply(model, variables, frames, kp)
    ref_out = rgb_only[2]
    assert set(out) == set(ref_out)
    for k in ref_out:
        assert out[k].shape == ref_out[k].shape, k
        assert bool(jnp.all(jnp.isfinite(out[k]))), k
    new = bl.new_param_names(name, variables['params'])
    assert new and set(variables['params']) == {'backbone', 'head', *new}
    added = _count({k: variables['params'][k] for k in new})
    assert added > 0
    assert _count(variables['params']) == _count(rgb_only[1]['params']) + added


def test_extpose_adds_no_parameters():
    frames, kp = _inputs()
    counts = [
        _count(jax.eval_shape(extpose.ExtPose(cfg).init, jax.random.PRNGKey(0), frames, kp))
        for cfg in (RGB_ONLY, CFG)
    ]
    assert counts[0] == counts[1]


@pytest.mark.slow
@pytest.mark.parametrize('name', ['channel_concat', 'controlnet'])
def test_equals_rgb_only_extpose_at_init(name, built, rgb_only):
    frames, kp = _inputs()
    model, variables = _get(built, rgb_only, name)
    out = _apply(model, variables, frames, kp)
    for k, ref in rgb_only[2].items():
        np.testing.assert_allclose(out[k], ref, atol=5e-5, rtol=1e-5, err_msg=k)
    # Once the new parameters move, the skeleton changes the output.
    moved = {
        **variables,
        'params': _perturb(variables['params'], bl.new_param_names(name, variables['params'])),
    }
    a = _apply(model, moved, frames, kp)['pred_cam']
    b = _apply(model, moved, frames, kp * jnp.array([0.7, 0.7, 1.0]))['pred_cam']
    assert float(jnp.abs(a - b).max()) > 1e-6


@pytest.mark.slow
def test_controlnet_copy_init_and_control_depth(built, rgb_only):
    frames, kp = _inputs()
    model, variables = _get(built, rgb_only, 'controlnet')
    assert sum(k.startswith('control_blocks_') for k in variables['params']) == TINY.depth // 2
    copied = bl.init_control_from_backbone(variables)
    for i in range(TINY.depth // 2):
        assert _struct(copied['params'][f'control_blocks_{i}']) == _struct(
            variables['params']['backbone'][f'blocks_{i}']
        )
        np.testing.assert_array_equal(
            jax.tree_util.tree_leaves(copied['params'][f'control_blocks_{i}'])[0],
            jax.tree_util.tree_leaves(variables['params']['backbone'][f'blocks_{i}'])[0],
        )
    np.testing.assert_allclose(
        _apply(model, copied, frames, kp)['pred_cam'], rgb_only[2]['pred_cam'], atol=1e-5
    )
    one = bl.build('controlnet', CFG, control_depth=1)
    shapes = jax.eval_shape(one.init, jax.random.PRNGKey(0), frames, kp)['params']
    assert [k for k in shapes if k.startswith('control_')] == ['control_blocks_0', 'control_proj_0']


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_gradients_reach_new_parameters(name, built, rgb_only):
    frames, kp = _inputs()
    model, variables = _get(built, rgb_only, name)
    new = bl.new_param_names(name, variables['params'])
    # Zero-initialised projections block the gradient to what lies behind them at init, so move
    # the new parameters a little first; then every new leaf must get gradient.
    params = _perturb(variables['params'], new)
    frames, kp = frames[:, :1], kp[:, :1]  # one frame: cheaper backward
    grads = jax.jit(jax.grad(lambda p: _loss(model, {**variables, 'params': p}, frames, kp)))(
        params
    )
    for k in new:
        for path, g in jax.tree_util.tree_leaves_with_path(grads[k]):
            assert float(jnp.abs(g).max()) > 0, (k, jax.tree_util.keystr(path))
    # And the backbone/head still train.
    assert float(jnp.abs(jax.tree_util.tree_leaves(grads['backbone'])[0]).max()) > 0


@pytest.mark.slow
def test_temporal_head_image_model_is_extpose_and_mixes_frames(built, rgb_only):
    frames, kp = _inputs(t=2)
    model, variables = _get(built, rgb_only, 'temporal_head')
    ext = extpose.ExtPose(CFG)
    ext_vars = {
        'params': {k: variables['params'][k] for k in ('backbone', 'head')},
        'constants': variables['constants'],
    }
    img = _apply(model, variables, frames, kp, method=bl.TemporalHead.image_outputs)
    np.testing.assert_allclose(
        img['pred_cam'], _apply(ext, ext_vars, frames, kp)['pred_cam'], atol=1e-5
    )
    moved = {**variables, 'params': _perturb(variables['params'], ['temporal'])}

    other = frames.at[:, 1].set(255.0 - frames[:, 1])  # change frame 1 only
    same = lambda x, y: float(jnp.abs(x['pred_cam'][:, 0] - y['pred_cam'][:, 0]).max()) < 1e-6
    assert not same(
        _apply(model, moved, frames, kp), _apply(model, moved, other, kp)
    )  # reaches frame 0
    fv = jnp.array([[True, False]])  # ... unless frame 1 is padding
    assert same(
        _apply(model, moved, frames, kp, frame_valid=fv),
        _apply(model, moved, other, kp, frame_valid=fv),
    )
    with pytest.raises(ValueError, match='across frames'):
        bl.TemporalHead(extpose.ExtPoseConfig(vit=TINY, head_size=HEAD)).init(
            jax.random.PRNGKey(0), frames, kp
        )


@pytest.mark.slow
def test_keypoint_tokens_follow_mask_and_modality_keep(built, rgb_only):
    frames, kp = _inputs(t=2)
    model, variables = _get(built, rgb_only, 'keypoint_tokens')

    other = kp.at[:, 1, :, :2].add(5.0)  # move frame 1's keypoints
    same = lambda m, **kw: (
        float(
            jnp.abs(
                _apply(m, variables, frames, kp, **kw)['pred_cam'][:, 0]
                - _apply(m, variables, frames, other, **kw)['pred_cam'][:, 0]
            ).max()
        )
        < 1e-6
    )
    assert same(model)  # 'frame': frame 0 cannot see frame 1
    cross = bl.KeypointTokens(
        extpose.ExtPoseConfig(vit=TINY, mask=masks.MaskSpec('extpose'), head_size=HEAD)
    )
    assert not same(cross)  # cross-frame attention does
    assert same(cross, modality_keep=jnp.array([[True, False]]))  # dropped keypoints are never seen
    # Keypoints without the image: J tokens per frame, head reads them.
    solo = bl.KeypointTokens(
        extpose.ExtPoseConfig(
            vit=TINY, modalities=('skeleton',), head_context='skeleton', head_size=HEAD
        )
    )
    out = _apply(solo, variables, frames, kp)
    assert out['pred_cam'].shape == (1, 2, 1, 3)


@pytest.mark.slow
def test_channel_concat_six_channel_kernel_and_dropout(built, rgb_only):
    frames, kp = _inputs()
    model, variables = _get(built, rgb_only, 'channel_concat')
    k6 = bl.six_channel_patch_kernel(variables['params'])
    assert k6.shape == (16, 16, 6, TINY.width) and float(jnp.abs(k6[:, :, 3:]).max()) == 0.0
    moved = {**variables, 'params': _perturb(variables['params'], ['skeleton_patch_embed'])}
    drop = _apply(model, moved, frames, kp, modality_keep=jnp.array([[True, False]]))
    np.testing.assert_allclose(drop['pred_cam'], rgb_only[2]['pred_cam'], atol=1e-5)


def test_build_registry():
    assert type(bl.build('late_fusion', CFG)) is extpose.ExtPose
    assert bl.build('rgb_only', CFG).config.modalities == ('rgb',)
    assert bl.build('heatmap', CFG).config.pose_form == 'heatmap'
    with pytest.raises(ValueError, match='unknown model'):
        bl.build('nope', CFG)
