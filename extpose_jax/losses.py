"""HMR 2.0 / HaMeR training losses (4D-Humans hmr2.py / losses.py), per frame over [B, T].

Upstream sums every term over joints, parameters AND the batch (no averaging); only the
adversarial terms divide by the batch size. Here each image of upstream's batch is one valid
frame of the [B, T] clip batch:

  2D keypoints  sum_j c_j * |x_hat_j - x_j|_1         normalised crop units (below), c = GT conf
  3D keypoints  sum_j c_j * |(X_hat_j - X_hat_r) - (X_j - X_r)|_1   root r = 39 (SMPL) / 0 (MANO)
                c = the record's per-joint 3D confidence; 0 for a frame whose root has c_r = 0
                (our choice: upstream would centre on the unlabelled root's stored values)
  parameters    has * sum (R_hat - R)^2 over the 9 entries of every rotation matrix (GT axis-angle
                -> matrix); global orient and body / hand pose are separate terms
  betas         has * sum (beta_hat - beta)^2
  generator adv sum_frames sum_scores (D(fake) - 1)^2 / N
  discriminator w_adv * [sum D(fake)^2 / N + sum (D(real) - 1)^2 / N]   (LSGAN)
with N the number of (valid) fake samples, as upstream divides both by the image batch size.

2D units. Upstream normalises 256 x 256 crop pixels as p / 256 - 0.5. The pipeline's window is
the central 256 x 192 (H x W) of that crop, so x_crop256 = x_window + 32 and y is unchanged:
x_norm = (x_window + 32) / 256 - 0.5, y_norm = y_window / 256 - 0.5 (`keypoint_2d_loss`'s
`x_offset` = (crop_size - 192) / 2). Predictions from `extpose.posed_keypoints` are already
in these units (principal point 0 = crop centre = window centre).

Masks. Every per-frame term is multiplied by its has_* flag (GT arrays are zeros when absent)
and selected with `jnp.where(frame_valid, term, 0)`: padded frames add exactly 0 to the loss
and get exactly 0 gradient, provided the model's outputs on them are finite.

Normalisation (`total_loss(normalize=...)`):
  'sum'            upstream: per-frame sums added over all valid frames of the batch (the
                   adversarial term still divides by N_valid).
  'mean_per_frame' every non-adversarial term divided by N_valid = max(sum(frame_valid), 1),
                   i.e. upstream's per-image sum averaged over frames (independent of B * T).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import jax.numpy as jnp

from extpose_jax import body_models, geometry, skeletons
from extpose_jax.models import extpose

ROOT_JOINT = {'smpl': skeletons.HMR44_PELVIS, 'mano': 0}
POSE_KEY = {'smpl': 'body_pose', 'mano': 'hand_pose'}
WINDOW_WIDTH = 192
NORMALIZATIONS = ('sum', 'mean_per_frame')


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """LOSS_WEIGHTS of HMR 2.0 (the same values for HaMeR; `body_pose` weighs hand_pose there)."""

    kp3d: float = 0.05
    kp2d: float = 0.01
    global_orient: float = 0.001
    body_pose: float = 0.001
    betas: float = 0.0005
    adversarial: float = 0.0005


# ------------------------------------------------------------------------------ single terms
# Each returns the per-sample sum over its own axes, shape (...,) = the leading dims.


def keypoint_2d_loss(
    pred_norm, gt_px, crop_size: float = 256.0, x_offset: float = (256.0 - WINDOW_WIDTH) / 2.0
):
    """sum_j conf_j * |pred - gt|_1: pred (..., J, 2) normalised, gt (..., J, 3) window pixels + conf.

    gt is normalised as ((x + x_offset) / crop_size - 0.5, y / crop_size - 0.5); pass
    x_offset=0 for GT already in 256 x 256 crop pixels.
    """
    xy = gt_px[..., :2]
    gt_norm = jnp.stack([(xy[..., 0] + x_offset) / crop_size, xy[..., 1] / crop_size], -1) - 0.5
    conf = gt_px[..., 2:3]
    return jnp.sum(conf * jnp.abs(pred_norm - gt_norm), axis=(-2, -1))


def keypoint_3d_loss(pred, gt, root: int):
    """sum_j conf_j * |root-centred pred - root-centred gt|_1, and 0 where the root's conf is 0.

    pred (..., J, 3); gt (..., J, 4) with confidence last, or (..., J, 3) (confidence 1).
    """
    if gt.shape[-1] == 4:
        conf, gt = gt[..., 3:4], gt[..., :3]
    else:
        conf = jnp.ones(gt.shape[:-1] + (1,), gt.dtype)
    pred_c = pred - pred[..., root : root + 1, :]
    gt_c = gt - gt[..., root : root + 1, :]
    per_sample = jnp.sum(conf * jnp.abs(pred_c - gt_c), axis=(-2, -1))
    # Upstream centres on the stored root whatever its confidence; an unlabelled root is a zero
    # row in the records, so that would pull every joint toward an arbitrary origin instead.
    return jnp.where(conf[..., root, 0] > 0, per_sample, 0.0)


def parameter_loss(pred_rotmats, gt_axis_angle, has=None):
    """has * sum (R_hat - R)^2: pred (..., K, 3, 3), gt axis-angle (..., K, 3) or (..., 3 K)."""
    k = pred_rotmats.shape[-3]
    if gt_axis_angle.shape[-2:] != (k, 3):
        gt_axis_angle = gt_axis_angle.reshape(gt_axis_angle.shape[:-1] + (k, 3))
    gt = geometry.axis_angle_to_matrix(gt_axis_angle)
    loss = jnp.sum((pred_rotmats - gt) ** 2, axis=(-3, -2, -1))
    return loss if has is None else loss * has.astype(loss.dtype)


def betas_loss(pred, gt, has=None):
    """has * sum (beta_hat - beta)^2 over the last axis."""
    loss = jnp.sum((pred - gt) ** 2, axis=-1)
    return loss if has is None else loss * has.astype(loss.dtype)


def _masked_count(scores, mask):
    if mask is None:
        return jnp.ones(scores.shape[:-1], scores.dtype), max(int(scores[..., 0].size), 1)
    m = mask.astype(scores.dtype)
    return m, jnp.maximum(jnp.sum(m), 1.0)


def generator_adv_loss(disc_fake, mask=None):
    """sum (D(fake) - 1)^2 / N over samples (...) and scores; disc_fake (..., J + 2).

    mask (...): samples that count (N = their number, at least 1); others contribute exactly 0.
    """
    m, n = _masked_count(disc_fake, mask)
    per = jnp.sum((disc_fake - 1.0) ** 2, axis=-1)
    return jnp.sum(jnp.where(m > 0, per, 0.0)) / n


def discriminator_loss(
    disc_fake,
    disc_real,
    fake_mask=None,
    weight: float = LossWeights.adversarial,
    num_samples=None,
    real_mask=None,
):
    """LSGAN discriminator loss, weighted as upstream: w * [sum D(fake)^2 / N + sum (D(real)-1)^2 / N].

    disc_fake (..., J + 2) on the (stop-gradient) predictions, disc_real (..., J + 2) on MoCap
    samples. N = num_samples, or the number of (valid) fake samples. real_mask (leading dims of
    disc_real): real samples that count (others add exactly 0; N is unchanged, as upstream
    divides the real term by the fake batch size too). Returns (loss, terms).
    """
    m, n = _masked_count(disc_fake, fake_mask)
    if num_samples is not None:
        n = num_samples
    fake = jnp.sum(jnp.where(m > 0, jnp.sum(disc_fake**2, axis=-1), 0.0)) / n
    real_per = jnp.sum((disc_real - 1.0) ** 2, axis=-1)
    if real_mask is not None:
        real_per = jnp.where(real_mask, real_per, 0.0)
    real = jnp.sum(real_per) / n
    return weight * (fake + real), {'loss_disc_fake': fake, 'loss_disc_real': real}


# ------------------------------------------------------------------------------ combined


def _frames_first(outputs: dict, lead: Tuple[int, ...]) -> dict:
    """Drop a singleton view axis: (B, T, 1, ...) -> (B, T, ...)."""
    go = outputs['global_orient']
    if go.shape[: len(lead)] != lead:
        raise ValueError(f'outputs lead {go.shape[:-3]} do not start with the batch dims {lead}')
    extra = go.ndim - 3 - len(lead)
    if extra == 0:
        return outputs
    if extra == 1 and go.shape[len(lead)] == 1:
        return {k: jnp.squeeze(v, axis=len(lead)) for k, v in outputs.items()}
    raise ValueError(
        f'outputs have leading dims {go.shape[:-3]}; expected {lead} (or a single view)'
    )


def total_loss(
    outputs: dict,
    batch: dict,
    body_model: body_models.BodyModel,
    weights: LossWeights = LossWeights(),
    kind: str = 'smpl',
    *,
    discriminator: Optional[Callable] = None,
    normalize: str = 'sum',
    crop_size: float = 256.0,
    focal_length: float = 5000.0,
):
    """Generator loss of one [B, T] batch. Returns (loss, terms).

    outputs: head outputs with leading dims (B, T) (or (B, T, 1)): global_orient (.., 1, 3, 3),
      body_pose (.., 23, 3, 3) / hand_pose (.., 15, 3, 3), betas (.., 10), pred_cam (.., 3).
    batch: kp2d [B,T,J,3] window pixels + conf, kp3d [B,T,J,4] (conf last; [B,T,J,3]: conf 1),
      pose [B,T,P] axis-angle (global first), betas [B,T,10], has_kp2d / has_kp3d / has_pose /
      has_betas [B,T] and frame_valid [B,T] (missing flags default to True).
    discriminator: optional callable (rotmats (..., J, 3, 3), betas (..., 10)) -> (..., J + 2),
      e.g. `lambda r, b: Discriminator(kind).apply(d_vars, r, b)`; without it the adversarial
      term is 0. terms hold the unweighted sums ('loss_kp2d', ...) and 'loss'.
    """
    if kind not in ROOT_JOINT:
        raise ValueError(f"kind must be 'smpl' or 'mano', got {kind!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f'normalize must be one of {NORMALIZATIONS}, got {normalize!r}')
    lead = tuple(batch['kp2d'].shape[:2])
    outputs = _frames_first(outputs, lead)
    ones = jnp.ones(lead, bool)
    valid = jnp.asarray(batch.get('frame_valid', ones), bool)
    flag = lambda name: jnp.asarray(batch.get(name, ones), bool) & valid  # noqa: E731
    dtype = outputs['betas'].dtype

    posed = extpose.posed_keypoints(outputs, body_model, focal_length, crop_size)
    pose_key = POSE_KEY[kind]
    n_rest = outputs[pose_key].shape[-3]
    gt_pose = batch['pose'].reshape(lead + (-1, 3))
    per_frame = {
        'loss_kp2d': keypoint_2d_loss(
            posed['keypoints_2d'], batch['kp2d'], crop_size, (crop_size - WINDOW_WIDTH) / 2.0
        )
        * flag('has_kp2d'),
        'loss_kp3d': keypoint_3d_loss(posed['keypoints_3d'], batch['kp3d'], ROOT_JOINT[kind])
        * flag('has_kp3d'),
        'loss_global_orient': parameter_loss(
            outputs['global_orient'], gt_pose[..., :1, :], flag('has_pose')
        ),
        'loss_' + pose_key: parameter_loss(
            outputs[pose_key], gt_pose[..., 1 : 1 + n_rest, :], flag('has_pose')
        ),
        'loss_betas': betas_loss(outputs['betas'], batch['betas'], flag('has_betas')),
    }
    n_valid = jnp.maximum(jnp.sum(valid.astype(dtype)), 1.0)
    scale = 1.0 if normalize == 'sum' else 1.0 / n_valid
    terms = {
        k: jnp.sum(jnp.where(valid, v.astype(dtype), 0.0)) * scale for k, v in per_frame.items()
    }
    w = {
        'loss_kp2d': weights.kp2d,
        'loss_kp3d': weights.kp3d,
        'loss_global_orient': weights.global_orient,
        'loss_' + pose_key: weights.body_pose,
        'loss_betas': weights.betas,
    }
    loss = sum(w[k] * terms[k] for k in per_frame)
    if discriminator is not None:
        terms['loss_adv'] = generator_adv_loss(
            discriminator(outputs[pose_key], outputs['betas']), valid
        )
        loss = loss + weights.adversarial * terms['loss_adv']
    else:
        terms['loss_adv'] = jnp.zeros((), dtype)
    terms['loss'] = loss
    return loss, terms
