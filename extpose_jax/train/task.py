"""What is trained, from a config: the model, its inputs from a pipeline batch, the loss, predict.

    task = Task(cfg, body_models_dir)
    loss, aux = task.loss_fn(variables, batch, rng)      # train.state.make_train_step's contract
    outputs = task.predict(variables, batch)             # per-frame head outputs, (B, T, ...)

The pipeline's batch holds the records' keypoint layout (HMR 2.0's 44 for bodies, hand-21);
the skeleton image is drawn in the model's layout (OpenPose-18, ControlNet's look, for bodies),
so keypoints are converted here, on device, inside the jitted step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import convert_common
from extpose_jax import losses, skeletons
from extpose_jax.train import config as config_lib

# Batch keys the step reads; the rest (ids, affine, K, ...) stay on the host.
TRAIN_KEYS = ('image', 'kp2d_input', 'kp2d', 'kp3d', 'pose', 'betas', 'has_kp2d', 'has_kp3d',
              'has_pose', 'has_betas', 'frame_valid')
PREDICT_KEYS = ('image', 'kp2d_input', 'frame_valid')


def load_body_model(kind: str, body_models_dir: str):
    """The model predictions go through: neutral SMPL with the 44 keypoints, or right MANO."""
    if kind == 'smpl':
        return convert_common.smpl_model(body_models_dir, 'neutral')
    return convert_common.mano_model(body_models_dir)[0]


def device_batch(batch: dict, keys=TRAIN_KEYS) -> dict:
    """The arrays of `keys` (host numpy); a clear error names a key the pipeline did not give."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f'batch lacks {missing}; it has {sorted(batch)}')
    return {k: batch[k] for k in keys}


def draw_modality_keep(rng, batch_size: int, num_modalities: int, p_drop: float):
    """(B, M) bool: with probability p_drop one modality, chosen uniformly, is dropped per clip.

    Never both: a clip always keeps at least one modality (paper: one whole modality dropped
    with p = 0.5 during training).
    """
    if num_modalities < 2 or p_drop <= 0:
        return jnp.ones((batch_size, num_modalities), bool)
    r_drop, r_which = jax.random.split(rng)
    drop = jax.random.bernoulli(r_drop, p_drop, (batch_size,))
    which = jax.random.randint(r_which, (batch_size,), 0, num_modalities)
    dropped = drop[:, None] & (jnp.arange(num_modalities)[None, :] == which[:, None])
    return ~dropped


class Task:
    """The config's model, body model and loss, as pure functions of (variables, batch, rng)."""

    def __init__(self, cfg, body_models_dir: str | None = None):
        self.cfg = cfg
        self.kind = cfg.model.kind
        self.model_config = config_lib.model_config(cfg)
        self.model = config_lib.build_model(cfg)
        self.body_models_dir = body_models_dir
        self.weights = config_lib.loss_weights(cfg)
        # With 'sum' the loss grows with the batch; grad accumulation averages micro-batch
        # losses, so each micro-batch's sum is scaled back up to the full batch's.
        self.loss_scale = float(cfg.train.grad_accum) if cfg.loss.normalize == 'sum' else 1.0

    @functools.cached_property
    def body_model(self):
        if self.body_models_dir is None:
            raise ValueError('Task: the loss needs a body model; pass body_models_dir')
        return load_body_model(self.kind, self.body_models_dir)

    def inputs(self, batch):
        """(frames (B, T, 1, H, W, 3), keypoints (B, T, 1, J, 3) in the model's layout)."""
        frames = batch['image'][:, :, None]
        kp = skeletons.convert(batch['kp2d_input'], config_lib.RECORD_LAYOUT[self.kind],
                               self.model_config.keypoint_layout)
        return frames, kp[:, :, None]

    def example_inputs(self, batch_size: int, num_frames: int):
        """ShapeDtypeStructs of the model's inputs, for create_train_state."""
        h, w = self.model_config.vit.image_size
        j = skeletons.get_layout(self.model_config.keypoint_layout).num_joints
        return (jax.ShapeDtypeStruct((batch_size, num_frames, 1, h, w, 3), jnp.uint8),
                jax.ShapeDtypeStruct((batch_size, num_frames, 1, j, 3), jnp.float32))

    def apply(self, variables, batch, *, rng=None, modality_keep=None):
        frames, kp = self.inputs(batch)
        kwargs = {'rngs': {'dropout': rng}} if rng is not None else {}
        return self.model.apply(variables, frames, kp, modality_keep=modality_keep,
                                frame_valid=batch['frame_valid'],
                                deterministic=rng is None, **kwargs)

    def loss_fn(self, variables, batch, rng):
        r_keep, r_drop = jax.random.split(rng)
        keep = draw_modality_keep(r_keep, batch['image'].shape[0], len(self.model_config.modalities),
                                  self.cfg.model.modality_dropout)
        out = self.apply(variables, batch, rng=r_drop, modality_keep=keep)
        loss, terms = losses.total_loss(out, batch, self.body_model, self.weights, self.kind,
                                        normalize=self.cfg.loss.normalize)
        return loss * self.loss_scale, {k: v for k, v in terms.items() if k != 'loss'}

    def predict(self, variables, batch):
        """Deterministic head outputs with the view axis dropped: (B, T, ...)."""
        out = self.apply(variables, batch)
        return {k: v[:, :, 0] for k, v in out.items()}


def make_predict_fn(cfg, variables, task: Task | None = None):
    """numpy batch -> numpy head outputs (B, T, ...), jitted once per batch shape."""
    task = task or Task(cfg)
    jitted = jax.jit(task.predict)

    def predict_fn(batch):
        out = jitted(variables, device_batch(batch, PREDICT_KEYS))
        return {k: np.asarray(v) for k, v in out.items()}
    return predict_fn
