"""The PyTorch mirror against the JAX model: exported weights, same inputs, same outputs (fp32).

The mirror's ViT, head, 6D rotations and skeleton drawing are written separately in torch, so
agreement checks both the model and the converter that carried the weights across. It takes
from the JAX code the attention mask as masks.py builds it, the keypoint layouts
(skeletons.py), the skeleton image's limb brightness and default thickness (pose_forms.py) and
the checkpoint key names (keymap.py). A mistake in those would be on both sides and pass here;
test_masks_attention, test_skeletons, test_pose_forms and test_convert check them on their own.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from extpose_jax import geometry
from extpose_jax.convert import keymap, to_torch, torch_model
from extpose_jax.models import extpose, masks, pose_forms, vit
from extpose_jax.models.masks import MaskSpec

SMALL = vit.ViTConfig.of('tiny', image_size=(64, 48))  # 4 x 3 patches per stream: fast on CPU
TOL = 1e-4

MODES = {
    # HMR 2.0 itself: one RGB image, each stream alone.
    'image': dict(
        config=dict(modalities=('rgb',), mask=MaskSpec('frame'), head_context='rgb'), frames=1
    ),
    # RGB + skeleton of one frame; sample 1 has its skeleton dropped (modality dropout).
    'multimodal': dict(config=dict(mask=MaskSpec('extpose')), frames=1, keep=[[1, 1], [1, 0]]),
    # A clip under a per-layer schedule with a window; padded frames and a dropped RGB stream.
    'video': dict(
        config=dict(mask=MaskSpec(layers=('frame', 'multimodal', 'extpose', 'full'), window=1)),
        frames=3,
        keep=[[1, 1], [0, 1]],
        valid=[[1, 1, 1], [1, 1, 0]],
    ),
}


def _config(mode, kind='smpl'):
    layout = 'openpose18' if kind == 'smpl' else 'hand21'
    return extpose.ExtPoseConfig(
        vit=SMALL, kind=kind, keypoint_layout=layout, **MODES[mode]['config']
    )


def _inputs(cfg, frames, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    h, w = cfg.vit.image_size
    images = rng.integers(0, 256, size=(batch, frames, 1, h, w, 3), dtype=np.uint8)
    j = 18 if cfg.kind == 'smpl' else 21
    kp = rng.uniform([2, 2, 0.0], [w - 2, h - 2, 1.0], size=(batch, frames, 1, j, 3)).astype(
        np.float32
    )
    return images, kp


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    """Random upstream-layout weights per kind, as the JAX tree and as an exported .ckpt read back."""
    out = {}
    for kind in ('smpl', 'mano'):
        rows = keymap.model_rows(kind, keymap.vit_dims(SMALL))
        variables = keymap.from_torch(keymap.random_state_dict(rows, seed=7), rows)
        path = str(tmp_path_factory.mktemp('ckpt') / f'{kind}.ckpt')
        to_torch.write_checkpoint(path, to_torch.export_state_dict(variables))
        out[kind] = (variables, torch.load(path, weights_only=True)['state_dict'])
    return out


def _max_diff(jax_out, torch_out):
    return {
        k: float(np.max(np.abs(np.asarray(jax_out[k]) - torch_out[k].numpy()))) for k in jax_out
    }


@pytest.mark.slow
@pytest.mark.parametrize('mode', list(MODES))
def test_mirror_agrees_with_the_jax_model(weights, mode):
    cfg = _config(mode)
    variables, state_dict = weights['smpl']
    spec = MODES[mode]
    images, kp = _inputs(cfg, spec['frames'])
    keep = None if 'keep' not in spec else np.asarray(spec['keep'], bool)
    valid = None if 'valid' not in spec else np.asarray(spec['valid'], bool)
    want = jax.jit(extpose.ExtPose(cfg).apply)(
        variables, images, kp, modality_keep=keep, frame_valid=valid
    )
    mirror = torch_model.TorchExtPose(cfg).load(state_dict).eval()
    with torch.no_grad():
        got = mirror(images, kp, modality_keep=keep, frame_valid=valid)
    diff = _max_diff(want, got)
    print(f'mirror vs JAX, {mode}: max abs diff', {k: f'{v:.1e}' for k, v in diff.items()})
    assert set(got) == set(want) and max(diff.values()) < TOL, diff
    # The inputs matter: the outputs are not the mean parameters whatever the image.
    assert np.abs(np.asarray(want['pred_cam'])[0] - np.asarray(want['pred_cam'])[1]).max() > 1e-2


@pytest.mark.slow
def test_mano_mirror_agrees(weights):
    cfg = _config('multimodal', kind='mano')
    variables, state_dict = weights['mano']
    images, kp = _inputs(cfg, 2, seed=1)
    want = jax.jit(extpose.ExtPose(cfg).apply)(variables, images, kp)
    with torch.no_grad():
        got = torch_model.TorchExtPose(cfg).load(state_dict).eval()(images, kp)
    assert 'hand_pose' in got and max(_max_diff(want, got).values()) < TOL


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['multimodal', 'video'])
def test_backbone_tokens_agree_under_the_mask(weights, mode):
    """The ViT alone, compared before the head can average differences away."""
    cfg = _config(mode)
    variables, state_dict = weights['smpl']
    spec = MODES[mode]
    layout = cfg.layout(spec['frames'])
    images = (
        np.random.default_rng(2)
        .normal(size=(2, layout.streams, *SMALL.image_size, 3))
        .astype(np.float32)
    )
    keep, valid = (
        np.asarray(spec['keep'], bool),
        np.asarray(spec.get('valid', [[1] * spec['frames']] * 2), bool),
    )
    kv = masks.key_valid(layout, keep, valid)
    want = jax.jit(vit.ViT(SMALL).apply, static_argnums=(2, 3))(
        {'params': variables['params']['backbone']}, images, layout, cfg.mask, kv
    )
    mirror = torch_model.TorchExtPose(cfg).load(state_dict)
    with torch.no_grad():
        got = mirror.backbone(
            torch.from_numpy(images).permute(0, 1, 4, 2, 3), mirror.allowed(layout, keep, valid)
        )
    err = np.abs(np.asarray(want) - got.numpy()).max()
    print(f'backbone tokens, {mode}: max abs diff {err:.1e}')
    assert err < TOL


@pytest.mark.slow
@pytest.mark.parametrize('layout,size', [('openpose18', (256, 192)), ('hand21', (64, 48))])
def test_skeleton_image_agrees(layout, size):
    h, w = size
    rng = np.random.default_rng(3)
    j = 18 if layout == 'openpose18' else 21
    kp = rng.uniform([-10, -10, 0.0], [w + 10, h + 10, 1.0], size=(3, j, 3)).astype(np.float32)
    kp[0, 1, :2] = kp[0, 2, :2]  # a zero-length limb
    kp[1, 0, :2] = [w / 2, h / 2]  # on a pixel centre
    want = pose_forms.render_skeleton(kp, layout, height=h, width=w)
    got = torch_model.render_skeleton(torch.from_numpy(kp), layout, h, w)
    assert float(np.asarray(want).max()) > 0.5  # something was drawn
    np.testing.assert_allclose(got.numpy(), want, atol=TOL)


def test_rot6d_agrees():
    x = np.random.default_rng(4).normal(size=(50, 6)).astype(np.float32)
    np.testing.assert_allclose(
        torch_model.rot6d_to_rotmat(torch.from_numpy(x)).numpy(),
        geometry.rot6d_to_matrix(jnp.asarray(x)),
        atol=1e-6,
    )


@pytest.mark.slow
def test_load_names_missing_and_mis_shaped_keys(weights):
    _, state_dict = weights['smpl']
    bad = dict(state_dict)
    del bad['backbone.last_norm.bias']
    bad['smpl_head.deccam.weight'] = torch.zeros(4, 1024)
    with pytest.raises(
        keymap.ConversionError,
        match=r'1 missing: backbone\.last_norm\.bias.*'
        r'mis-shaped: smpl_head\.deccam\.weight \(4, 1024\)',
    ):
        torch_model.TorchExtPose(_config('image')).load(bad)
    # A HaMeR checkpoint is not an HMR 2.0 one.
    with pytest.raises(keymap.ConversionError, match='missing'):
        torch_model.TorchExtPose(_config('image')).load(weights['mano'][1])


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.slow
def test_eval_torch_reports_the_metrics_of_run_eval(synthetic_default, tmp_path):
    """Same weights, same split: run_eval's path (JAX model + JAX body models) and eval_torch's
    (mirror + smplx) through the shared data iteration and protocol, within 0.1 mm."""
    import eval_torch
    from configs import video
    from extpose_jax.train import evaluate, task

    cfg = video.get_config('small,frames=2')
    cfg.body_models, cfg.data.root = synthetic_default['body_models'], synthetic_default['root']
    cfg.model.attention = 'dense'
    cfg.eval.batch_size = 2
    dims = keymap.vit_dims(vit.ViTConfig.of(cfg.model.size))
    rows = keymap.model_rows('smpl', dims, head_size=cfg.model.head_size)
    variables = keymap.from_torch(keymap.random_state_dict(rows, seed=8), rows)
    ckpt = str(tmp_path / 'extpose.ckpt')
    to_torch.write_checkpoint(ckpt, to_torch.export_state_dict(variables))

    common = dict(split='test', max_frames=6, pose_source='noisy_gt')
    want = evaluate.evaluate(
        task.make_predict_fn(cfg, variables),
        records_dir=synthetic_default['3dpw'],
        body_models_dir=cfg.body_models,
        num_frames=2,
        batch_size=2,
        **common,
    )
    got = eval_torch.run(cfg, ckpt, log=lambda *_: None, **common)
    assert got.keys() == want.keys() and got['num_frames'] == want['num_frames'] == 6
    numbers = [k for k, v in want.items() if isinstance(v, (int, float))]
    assert {k: got[k] for k in want if k not in numbers} == {  # the labels: pose_source, input_2d
        k: want[k] for k in want if k not in numbers
    }
    diff = {k: abs(got[k] - want[k]) for k in numbers}
    print(
        'eval_torch vs run_eval metrics:',
        {k: (round(want[k], 3), f'{diff[k]:.1e}') for k in numbers},
    )
    for key in ('3dpw/mpjpe', '3dpw/pa_mpjpe', '3dpw/pve', '3dpw/accel'):
        assert np.isfinite(want[key]) and want[key] > 1.0 and diff[key] < 0.1, (
            key,
            want[key],
            got[key],
        )
    assert all(got[k] == want[k] for k in want if 'num_' in k)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['smpl', 'mano'])
def test_smplx_bodies_match_the_jax_bodies(body_model_dir, kind):
    """eval_torch's smplx forward against evaluate's JAX one: predictions and gendered GT."""
    from scipy.spatial.transform import Rotation

    import eval_torch
    from extpose_jax.train import evaluate

    rng = np.random.default_rng(9)
    joints = 24 if kind == 'smpl' else 16
    aa = rng.normal(0, 0.4, size=(2, 3, joints * 3)).astype(np.float32)
    rot = (
        Rotation.from_rotvec(aa.reshape(-1, 3))
        .as_matrix()
        .reshape(2, 3, joints, 3, 3)
        .astype(np.float32)
    )
    betas = rng.normal(size=(2, 3, 10)).astype(np.float32)
    outputs = {
        'global_orient': rot[:, :, :1],
        ('body_pose' if kind == 'smpl' else 'hand_pose'): rot[:, :, 1:],
        'betas': betas,
        'pred_cam': np.float32([0.9, 0.1, -0.05]) + 0 * betas[..., :3],
    }
    jax_b, torch_b = (
        evaluate.JaxBodies(kind, str(body_model_dir)),
        eval_torch.SmplxBodies(kind, str(body_model_dir)),
    )
    want, got = jax_b.predicted(outputs), torch_b.predicted(outputs)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, rtol=1e-6, err_msg=k)
    genders = (
        np.array([['male', 'female', 'neutral'], ['female', '', 'male']], object)
        if kind == 'smpl'
        else None
    )
    want, got = jax_b.ground_truth(aa, betas, genders), torch_b.ground_truth(aa, betas, genders)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], atol=1e-5, err_msg=k)
    np.testing.assert_array_equal(torch_b.faces, jax_b.faces)
