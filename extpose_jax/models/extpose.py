"""ExtPose: frames x views x modalities -> tokens -> one ViT under a mask -> per-frame heads.

    model = ExtPose(ExtPoseConfig(vit=ViTConfig.of('huge'), mask=MaskSpec('extpose')))
    out = model.apply(variables, frames, keypoints, modality_keep=keep, frame_valid=valid)
    # frames (B, T, V, 256, 192, 3) uint8 or [0, 255] floats; keypoints (B, T, V, J, 3) in the
    # same crop pixels (x, y, conf) -> out['body_pose'] (B, T, V, 23, 3, 3), betas, pred_cam, ...

The 2D pose becomes an image on the accelerator (skeleton or heatmap, `pose_form`) and enters
through the RGB patch embedding; every stream gets the same position embedding and nothing says
which modality or frame a token came from but the mask. So the parameters are exactly HMR 2.0's
(SMPL) or HaMeR's (MANO): backbone + head, nothing else. With T = V = 1, modalities ('rgb',) and
strategy 'frame', this is HMR 2.0 / HaMeR itself.

Modality dropout (paper: one whole modality dropped with p = 0.5) is `modality_keep` (B, M):
a dropped modality's keys vanish from every block and its tokens leave the head's context, but
its pixels are never zeroed, so the backbone sees no out-of-distribution input.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from extpose_jax import body_models, geometry, skeletons
from extpose_jax.models import heads, masks, pose_forms, vit

POSE_FORMS = ('skeleton', 'heatmap')
KINDS = ('smpl', 'mano')  # HMR 2.0's body head, HaMeR's hand head
HEAD_CONTEXTS = ('rgb', 'skeleton', 'both')  # which of a frame's tokens the head reads


@dataclasses.dataclass(frozen=True)
class ExtPoseConfig:
    vit: vit.ViTConfig = vit.ViTConfig()
    kind: str = 'smpl'  # 'smpl' (HMR 2.0 head) | 'mano' (HaMeR head)
    modalities: Tuple[str, ...] = ('rgb', 'skeleton')
    mask: masks.MaskSpec = masks.MaskSpec('extpose')
    head_context: str = 'both'  # which of a frame's tokens the head reads
    pose_form: str = 'skeleton'  # how the 2D pose becomes an image
    keypoint_layout: str = 'openpose18'  # skeletons layout of the keypoints given
    conf_threshold: float = 0.3  # joints below it are not drawn
    heatmap_sigma: float = 4.0
    mean_params_path: Optional[str] = None  # smpl/mano_mean_params.npz for the head's init_*
    head_size: str = 'hmr2'  # a heads.SIZES name

    def __post_init__(self):
        object.__setattr__(self, 'modalities', tuple(self.modalities))
        allowed = {'rgb', 'skeleton'}
        if (
            not self.modalities
            or not set(self.modalities) <= allowed
            or len(set(self.modalities)) != len(self.modalities)
        ):
            raise ValueError(
                f'ExtPoseConfig.modalities: {self.modalities!r}; use distinct names from {sorted(allowed)}'
            )
        if self.kind not in KINDS:
            raise ValueError(f'ExtPoseConfig.kind: {self.kind!r}; allowed: {KINDS}')
        if self.head_context not in HEAD_CONTEXTS:
            raise ValueError(
                f'ExtPoseConfig.head_context: {self.head_context!r}; allowed: {HEAD_CONTEXTS}'
            )
        needed = {'rgb': ('rgb',), 'skeleton': ('skeleton',), 'both': ('rgb', 'skeleton')}[
            self.head_context
        ]
        missing = [m for m in needed if m not in self.modalities]
        if missing:
            raise ValueError(
                f'ExtPoseConfig.head_context={self.head_context!r} reads {missing}, '
                f'which is not in modalities={self.modalities}'
            )
        if self.pose_form not in POSE_FORMS:
            raise ValueError(f'ExtPoseConfig.pose_form: {self.pose_form!r}; allowed: {POSE_FORMS}')
        skeletons.get_layout(self.keypoint_layout)  # unknown names fail here, not while tracing
        heads.head_size(self.head_size)

    def layout(self, frames: int, views: int = 1) -> masks.TokenLayout:
        return masks.TokenLayout(
            frames=frames, views=views, modalities=self.modalities, patches=self.vit.num_patches
        )


class ExtPose(nn.Module):
    config: ExtPoseConfig

    def setup(self):
        self.backbone = vit.ViT(self.config.vit)
        self.head = heads.PoseHead(
            kind=self.config.kind,
            mean_params_path=self.config.mean_params_path,
            context_dim=self.config.vit.width,
            dtype=self.config.vit.dtype,
            size=self.config.head_size,
        )

    def pose_image(self, keypoints):
        """(..., J, 3) crop-pixel keypoints -> (..., H, W, 3) on [0, 1], drawn on device."""
        c = self.config
        h, w = c.vit.image_size
        layout = skeletons.get_layout(c.keypoint_layout)
        if c.pose_form == 'skeleton':
            return pose_forms.render_skeleton(
                keypoints, layout, height=h, width=w, conf_threshold=c.conf_threshold
            )
        maps = pose_forms.gaussian_heatmaps(
            keypoints, height=h, width=w, sigma=c.heatmap_sigma, conf_threshold=c.conf_threshold
        )
        return pose_forms.heatmap_image(maps, layout)

    def __call__(
        self,
        frames,
        keypoints=None,
        *,
        modality_keep=None,
        frame_valid=None,
        deterministic: bool = True,
    ):
        c = self.config
        if frames.ndim != 6:
            raise ValueError(f'ExtPose: frames must be (B, T, V, H, W, 3), got {frames.shape}')
        b, t, v = frames.shape[:3]
        if 'skeleton' in c.modalities:
            if keypoints is None or keypoints.shape[:3] != (b, t, v) or keypoints.shape[-1] != 3:
                raise ValueError(
                    f'ExtPose: keypoints must be (B, T, V, J, 3) = ({b}, {t}, {v}, J, 3) '
                    f'when modalities include skeleton, got '
                    f'{None if keypoints is None else keypoints.shape}'
                )
        streams = {
            'rgb': lambda: pose_forms.normalize_image(frames),
            'skeleton': lambda: pose_forms.normalize_image(self.pose_image(keypoints), scale=1.0),
        }
        images = jnp.stack([streams[m]() for m in c.modalities], axis=3)  # (B, T, V, M, H, W, 3)
        layout = c.layout(t, v)
        images = images.reshape(b, layout.streams, *images.shape[4:])
        key_valid = masks.key_valid(layout, modality_keep, frame_valid)
        tokens = self.backbone(images, layout, c.mask, key_valid, deterministic=deterministic)
        tokens = tokens.reshape(b, t, v, len(c.modalities), *tokens.shape[2:])
        per_modality, present = {}, {}
        for i, m in enumerate(c.modalities):
            per_modality[m] = tokens[:, :, :, i]
            if modality_keep is not None:
                present[m] = jnp.broadcast_to(
                    modality_keep[:, i, None, None].astype(bool), (b, t, v)
                )
        context, context_valid = heads.select_context(
            per_modality.get('rgb'),
            per_modality.get('skeleton'),
            c.head_context,
            rgb_present=present.get('rgb'),
            skeleton_present=present.get('skeleton'),
        )
        return self.head(context, context_valid)


def posed_keypoints(
    out: dict, model: body_models.BodyModel, focal_length: float = 5000.0, crop_size: float = 256.0
) -> dict:
    """Head outputs -> body model -> 3D keypoints and their crop projection (HMR 2.0's losses).

    Returns keypoints_3d (..., K, 3) in the body frame (no translation, as the 3D loss wants),
    vertices, cam_t (..., 3) and keypoints_2d (..., K, 2) in normalised crop units (pixel/256 -
    0.5), projected with focal f/crop_size as upstream.
    """
    rest = out['body_pose'] if 'body_pose' in out else out['hand_pose']
    rotmats = jnp.concatenate([out['global_orient'], rest], axis=-3)
    posed = body_models.forward(model, rotmats, out['betas'])
    cam_t = geometry.cam_crop_to_translation(out['pred_cam'], focal_length, crop_size)
    kp = posed['keypoints']
    zero = jnp.zeros(kp.shape[:-2] + (2,), kp.dtype)
    kp2d = geometry.perspective_projection(kp, cam_t, focal_length / crop_size, zero)
    return {'keypoints_3d': kp, 'vertices': posed['vertices'], 'cam_t': cam_t, 'keypoints_2d': kp2d}
