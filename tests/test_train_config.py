"""Configs: every file and variant validates; builders. (Bad values: test_config_fields.py.)"""

import importlib

import jax
import numpy as np
import pytest

from extpose_jax.train import config as config_lib
from extpose_jax.train import task as task_lib

FILES = ('image', 'video', 'hand', 'hand_video')


@pytest.mark.parametrize('name', FILES)
@pytest.mark.parametrize('variant', ('paper', 'small', 'base'))
def test_every_config_validates(name, variant):
    cfg = importlib.import_module(f'configs.{name}').get_config(variant)
    config_lib.validate(cfg)
    mc = config_lib.model_config(cfg)
    assert mc.kind == ('mano' if name.startswith('hand') else 'smpl')
    pc = config_lib.pipeline_config(
        cfg, '/records', process_count=2 if cfg.data.batch_size % 2 == 0 else 1
    )
    assert pc.num_frames == cfg.data.num_frames


def test_paper_video_settings():
    cfg = importlib.import_module('configs.video').get_config()
    assert (cfg.data.num_frames, cfg.data.batch_size, cfg.train.steps) == (16, 32, 50_000)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.model.size, cfg.model.mask) == (
        1e-5,
        1e-3,
        'huge',
        'extpose',
    )
    oc = config_lib.optim_config(cfg)
    assert oc.trainable == 'full' and oc.clip_norm is None
    assert config_lib.loss_weights(cfg).kp3d == 0.05


def test_variant_arguments():
    video = importlib.import_module('configs.video')
    assert video.get_config('base,frames=8').data.num_frames == 8
    assert video.get_config('small').model.size == 'tiny'
    with pytest.raises(ValueError, match='unknown variant'):
        video.get_config('gigantic')
    with pytest.raises(ValueError, match="unknown option 'fames'"):
        video.get_config('small,fames=8')


def test_temporal_head_needs_within_frame_mask():
    cfg = importlib.import_module('configs.video').get_config('small')
    cfg.model.arch = 'temporal_head'
    with pytest.raises(config_lib.ConfigError, match=r'config\.model\.mask'):
        config_lib.validate(cfg)
    cfg.model.mask = 'multimodal'
    config_lib.validate(cfg)


def test_ablation_switches_reach_the_model_and_optimizer():
    cfg = importlib.import_module('configs.video').get_config('small')
    cfg.model.arch, cfg.model.window, cfg.model.causal = 'controlnet', 1, True
    cfg.optim.trainable = 'qk_only'
    cfg.data.pose_source = 'detections'
    config_lib.validate(cfg)
    assert type(config_lib.build_model(cfg)).__name__ == 'ControlNetBranch'
    mc = config_lib.model_config(cfg)
    assert (mc.mask.window, mc.mask.causal) == (1, True)
    oc = config_lib.optim_config(cfg)
    assert oc.trainable == 'qk_only' and any('control_blocks_' in r for r in oc.extra_trainable)
    assert config_lib.pipeline_config(cfg, '/r').pose_source == 'detections'


def test_modality_dropout_drops_at_most_one_modality():
    keep = np.asarray(task_lib.draw_modality_keep(jax.random.key(0), 20000, 2, 0.5))
    assert keep.any(axis=1).all()
    dropped = ~keep.all(axis=1)
    assert abs(dropped.mean() - 0.5) < 0.02
    assert abs((~keep[:, 0]).mean() - 0.25) < 0.02  # the dropped one is uniform over modalities
    assert np.asarray(task_lib.draw_modality_keep(jax.random.key(0), 8, 2, 0.0)).all()


def test_task_inputs_convert_records_layout_to_the_skeleton_layout():
    cfg = importlib.import_module('configs.video').get_config('small')
    task = task_lib.Task(cfg)
    kp = np.random.default_rng(0).normal(size=(2, 4, 44, 3)).astype(np.float32)
    batch = {'image': np.zeros((2, 4, 256, 192, 3), np.uint8), 'kp2d_input': kp}
    frames, keypoints = task.inputs(batch)
    assert frames.shape == (2, 4, 1, 256, 192, 3) and keypoints.shape == (2, 4, 1, 18, 3)
    # OpenPose-18's neck (1) and right wrist (4) are BODY_25's 1 and 4, the first 25 of the 44.
    np.testing.assert_array_equal(keypoints[:, :, 0, [1, 4]], kp[:, :, [1, 4]])


@pytest.mark.parametrize('arch', ['rgb_only', 'late_fusion'])
def test_config_variant_archs_trace_their_training_loss(arch):
    """A config-variant arch rewrites the model (rgb_only: one stream): the task's modality
    dropout must draw for the streams the built model has. It once drew for two, and an
    rgb_only run failed at its first step."""
    from extpose_jax import body_models
    from extpose_jax.train import setup as setup_lib
    from extpose_jax.train import sharding as shd

    cfg = importlib.import_module('configs.video').get_config('small,frames=1')
    cfg.model.arch = arch
    cfg = config_lib.resolved(cfg)  # grad_accum / eval batch: the preflight's, else 1
    task = task_lib.Task(cfg, body_model=body_models.stand_in('smpl'))
    assert task.model_config == task.model.config
    setup = setup_lib.TrainSetup.build(task, shd.make_mesh({'data': 1, 'fsdp': 1, 'tensor': 1}))
    state = setup.abstract_state()
    variables = {'params': state.params, **state.constants}
    loss, _ = jax.eval_shape(task.loss_fn, variables, setup.abstract_batch(2), jax.random.key(0))
    assert loss.shape == ()
