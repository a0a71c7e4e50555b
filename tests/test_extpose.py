"""ExtPose end to end: no new parameters, what the mask isolates, modality dropout."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_calls import apply as _apply

from extpose_jax.models import extpose, masks, vit

# HMR 2.0's checkpoint layout (key -> shape), dumped from the upstream PyTorch modules.
UPSTREAM_LAYOUT = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference_state_dicts.json')
TINY = vit.ViTConfig.of('tiny', image_size=(64, 48))  # 4 x 3 patches: fast on CPU
# Every test here compiles the full model; at ViT-tiny it has the tiny decoder head (what the
# mask lets through does not depend on the head's size), at ViT-H HMR 2.0's. Each model call is
# one jitted program: op-by-op, a first call compiles every primitive at its shapes, 2-4x slower.
pytestmark = pytest.mark.slow


def _model(strategy='extpose', modalities=('rgb', 'skeleton'), context='both', size=TINY):
    cfg = extpose.ExtPoseConfig(
        vit=size,
        modalities=modalities,
        mask=masks.MaskSpec(strategy),
        head_context=context,
        head_size='tiny' if size is TINY else 'hmr2',
    )
    return extpose.ExtPose(cfg)


def _inputs(b=1, t=2, seed=0):
    rng = np.random.default_rng(seed)
    frames = jnp.asarray(rng.uniform(0, 255, size=(b, t, 1, 64, 48, 3)), jnp.float32)
    kp = rng.uniform([4, 4, 0.6], [44, 60, 1.0], size=(b, t, 1, 18, 3))
    return frames, jnp.asarray(kp, jnp.float32)


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope='module')
def tiny_variables():
    frames, kp = _inputs()
    return jax.jit(_model().init)(jax.random.PRNGKey(0), frames, kp)


def test_vit_h_parameter_count_equals_hmr2_and_needs_no_new_parameters():
    with open(UPSTREAM_LAYOUT) as f:
        ref = json.load(f)['hmr2']
    want = sum(int(np.prod(s)) for k, s in ref.items() if not k.startswith('discriminator.'))
    frames = jax.ShapeDtypeStruct((1, 2, 1, 256, 192, 3), jnp.float32)
    kp = jax.ShapeDtypeStruct((1, 2, 1, 18, 3), jnp.float32)
    huge = vit.ViTConfig.of('huge')
    shapes = {}
    for mods in (('rgb',), ('rgb', 'skeleton')):
        model = _model(modalities=mods, context='rgb', size=huge)
        shapes[mods] = jax.eval_shape(model.init, jax.random.PRNGKey(0), frames, kp)
    assert _count(shapes[('rgb',)]) == want == 630_912_000 + 39_547_194  # params + init_* buffers
    assert _count(shapes[('rgb', 'skeleton')]) == want
    mano = extpose.ExtPose(extpose.ExtPoseConfig(vit=huge, kind='mano', keypoint_layout='hand21'))
    kp21 = jax.ShapeDtypeStruct((1, 2, 1, 21, 3), jnp.float32)
    assert (
        _count(jax.eval_shape(mano.init, jax.random.PRNGKey(0), frames, kp21))
        == 630_912_000 + 39_497_946
    )


def test_output_shapes(tiny_variables):
    frames, kp = _inputs()
    out = _apply(_model(), tiny_variables, frames, kp)
    assert out['global_orient'].shape == (1, 2, 1, 1, 3, 3)
    assert out['body_pose'].shape == (1, 2, 1, 23, 3, 3)
    assert out['betas'].shape == (1, 2, 1, 10) and out['pred_cam'].shape == (1, 2, 1, 3)


def test_frame_strategy_equals_independent_single_frame_runs(tiny_variables):
    """Under 'frame' a clip is T separate images: equal to running each frame alone (T = 1)."""
    frames, kp = _inputs(t=3)
    model = _model('frame')
    clip = _apply(model, tiny_variables, frames, kp)
    # Same math, other float32 rounding: the clip's attention rows also hold the other frames'
    # masked keys (exact zeros after the softmax), so its sums associate differently, a few ulps
    # (eps = 1.2e-7) per attention layer; 4 blocks + the head's 6 cross-attentions carry that
    # to the O(1) outputs, and body_pose's Gram-Schmidt (dividing by a 6D column's norm)
    # amplifies it. Measured: 1.1e-6 (9 eps) on pred_cam, 5.5e-6 (46 eps) on body_pose, 8e-6 on
    # CI's CPU. Bound 5e-5 (~400 eps): 6x that; one frame seeing another moves them by >1e-2.
    for t in range(3):
        single = _apply(model, tiny_variables, frames[:, t : t + 1], kp[:, t : t + 1])
        for k in ('pred_cam', 'body_pose'):
            np.testing.assert_allclose(clip[k][:, t], single[k][:, 0], atol=5e-5, err_msg=k)


def _grad_wrt(model, variables, frames, kp, wrt, frame_out=0, **kw):
    def f(frames, kp):
        out = model.apply(variables, frames, kp, **kw)
        return jnp.sum(out['pred_cam'][:, frame_out] ** 2) + jnp.sum(
            out['betas'][:, frame_out] ** 2
        )

    return jax.jit(jax.grad(f, argnums={'frames': 0, 'keypoints': 1}[wrt]))(frames, kp)


def test_cross_frame_influence_follows_the_mask(tiny_variables):
    frames, kp = _inputs(t=2)
    g_frame = _grad_wrt(_model('frame'), tiny_variables, frames, kp, 'frames')
    g_ext = _grad_wrt(_model('extpose'), tiny_variables, frames, kp, 'frames')
    assert float(jnp.abs(g_frame[:, 1]).max()) == 0.0  # frame 1 invisible to frame 0
    assert float(jnp.abs(g_frame[:, 0]).max()) > 0.0
    assert float(jnp.abs(g_ext[:, 1]).max()) > 0.0  # cross-frame attention reaches it


def test_rgb_head_under_frame_mask_never_sees_the_skeleton(tiny_variables):
    frames, kp = _inputs(t=1)
    g = _grad_wrt(_model('frame', context='rgb'), tiny_variables, frames, kp, 'keypoints')
    assert float(jnp.abs(g).max()) == 0.0
    g = _grad_wrt(_model('multimodal', context='rgb'), tiny_variables, frames, kp, 'keypoints')
    assert float(jnp.abs(g).max()) > 0.0


def test_modality_dropout_removes_the_skeleton_everywhere(tiny_variables):
    frames, kp = _inputs(t=2)
    model = _model('extpose')
    drop = jnp.array([[True, False]])  # keep rgb, drop skeleton
    g = _grad_wrt(model, tiny_variables, frames, kp, 'keypoints', modality_keep=drop)
    assert float(jnp.abs(g).max()) == 0.0
    a = _apply(model, tiny_variables, frames, kp, modality_keep=drop)
    b = _apply(model, tiny_variables, frames, kp * 0.5, modality_keep=drop)
    np.testing.assert_array_equal(a['pred_cam'], b['pred_cam'])
    kept = _apply(model, tiny_variables, frames, kp * 0.5)
    assert float(jnp.abs(kept['pred_cam'] - a['pred_cam']).max()) > 0


def test_padded_frame_is_invisible(tiny_variables):
    frames, kp = _inputs(t=2)
    g = _grad_wrt(
        _model('extpose'),
        tiny_variables,
        frames,
        kp,
        'frames',
        frame_valid=jnp.array([[True, False]]),
    )
    assert float(jnp.abs(g[:, 1]).max()) == 0.0


def test_bad_config_and_inputs_fail_before_tracing(tiny_variables):
    with pytest.raises(ValueError, match='head_context'):
        extpose.ExtPoseConfig(modalities=('rgb',), head_context='both')
    with pytest.raises(ValueError, match='pose_form'):
        extpose.ExtPoseConfig(pose_form='depth')
    with pytest.raises(ValueError, match='unknown strategy'):
        masks.MaskSpec('sometimes')
    frames, kp = _inputs(t=2)
    with pytest.raises(ValueError, match='keypoints must be'):
        _model().apply(tiny_variables, frames, kp[:, :1])


def test_posed_keypoints_project_like_the_weak_perspective_camera(body_model_dir):
    from extpose_jax import body_models

    smpl = body_models.load_smpl(
        str(body_model_dir), j19_path=str(body_model_dir / 'SMPL_to_J19.pkl')
    )
    eye = jnp.broadcast_to(jnp.eye(3), (2, 1, 3, 3))
    out = {
        'global_orient': eye,
        'body_pose': jnp.broadcast_to(jnp.eye(3), (2, 23, 3, 3)),
        'betas': jnp.zeros((2, 10)),
        'pred_cam': jnp.array([[0.9, 0.0, 0.1], [1.2, -0.1, 0.0]]),
    }
    res = jax.jit(extpose.posed_keypoints)(out, smpl)
    assert res['keypoints_3d'].shape == (2, 44, 3) and res['keypoints_2d'].shape == (2, 44, 2)
    # HMR 2.0's camera written out: depth 2 f / (256 s), focal f / 256, normalised crop units;
    # far away it is nearly weak perspective, x ~= s (X + tx) / 2.
    cam = np.asarray(out['pred_cam'], np.float64)[:, None]
    kp = np.asarray(res['keypoints_3d'], np.float64)
    depth = kp[..., 2] + 2 * 5000 / (256 * cam[..., 0])
    exact = (
        np.stack([(kp[..., 0] + cam[..., 1]), (kp[..., 1] + cam[..., 2])], -1)
        * (5000 / 256)
        / depth[..., None]
    )
    # float32 x / depth with x <= 0.7, depth ~ 40: a few ulps of 0.7, measured 7e-8; 1e-6 is 14x.
    np.testing.assert_allclose(res['keypoints_2d'], exact, atol=1e-6)
    weak = np.stack([kp[..., 0] + cam[..., 1], kp[..., 1] + cam[..., 2]], -1) * cam[..., :1] / 2
    # Not rounding but the approximation: exact = weak * D / (D + Z), D = 2 f / (256 s) >= 32.5
    # here, so |exact - weak| = |weak| |Z| / (D + Z) <= 0.7 * 0.2 / 32.3 = 4.3e-3 for this body
    # (|Z| <= 0.2 m); 1e-2 holds for any |Z| up to 0.45 m.
    np.testing.assert_allclose(res['keypoints_2d'], weak, atol=1e-2)
