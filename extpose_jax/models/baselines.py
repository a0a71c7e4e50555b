"""Ablation baselines that need parameters ExtPose does not have (the ExtPose paper's ablations).

Every model here subclasses `ExtPose`: same `ExtPoseConfig`, same call signature

    out = model.apply(variables, frames (B,T,V,H,W,3), keypoints (B,T,V,J,3),
                      modality_keep=None, frame_valid=None, deterministic=True)

and the same per-frame head outputs (global_orient (B,T,V,1,3,3), body_pose / hand_pose, betas,
pred_cam, pose_6d). The backbone and head live under the SAME parameter names as ExtPose's
(`params/backbone/...`, `params/head/...`, `constants/head/...`), so an HMR 2.0 / HaMeR
checkpoint (or a trained ExtPose) loads into them unchanged; the new parameters sit beside them
under their own names (`new_param_names(name)`), which makes "freeze the old, train the new"
a path filter. Pick one by name with `build(name, config, **kwargs)`.

Variants that need NO new parameters are plain ExtPoseConfig settings, not code here
(`build` knows them by name too, as config rewrites of ExtPose):
  'rgb_only'     modalities=('rgb',), head_context='rgb' (HMR 2.0 / HaMeR itself; with
                 mask 'frame' per image, with 'extpose' / 'full' cross-frame within RGB)
  'heatmap'      pose_form='heatmap' (the heatmap pose form through the RGB patch embedding)
  'late_fusion'  mask=MaskSpec('frame'), head_context='both': each stream alone through the
                 shared ViT, the head fuses the two token sets by cross-attention
  'image'        the image model: T = 1, or MaskSpec('multimodal') (no cross-frame attention)
  'extpose'      the default (multi-modal + cross-frame attention, MaskSpec('extpose'))

Baselines built here (what exactly each does):

ChannelConcat ('channel_concat')
    RGB and the skeleton image (both ImageNet-normalised as in ExtPose) concatenated as 6 input
    channels of the patch embedding. Implemented as the backbone's own 3-channel patch embedding
    on RGB plus a new bias-free conv `skeleton_patch_embed/kernel` (16x16x3xC, ZERO-initialised)
    on the skeleton image, summed: conv([rgb; skel], concat(W_rgb, W_skel, axis=2)) is exactly
    that sum, so this IS the 6-channel embedding with zero-initialised extra input slices
    (`six_channel_patch_kernel` assembles the (16,16,6,C) kernel). One token stream per frame
    (layout modalities ('rgb',)), the config's mask over it, the head reads those tokens. At
    init it equals RGB-only ExtPose. modality_keep's skeleton column zeroes the skeleton term
    (= a skeleton channel of zeros); its rgb column is ignored (RGB cannot be dropped here).

KeypointTokens ('keypoint_tokens', the 1D pose form)
    keypoint_tokens(...) (normalised (x, y, conf), low-confidence joints -> (0,0,0)) -> new
    Dense(3 -> C) `keypoint_embed` + a new learned joint-index embedding `joint_embed` (J, C)
    (trunc-normal 0.02, like pos_embed). Per frame and view the stream is ONE token sequence
    [N RGB patch tokens (backbone patch + position embedding); J keypoint tokens], run through
    the backbone's blocks and last_norm under TokenLayout(frames=T, views=V,
    modalities=('rgb+keypoints',), patches=N+J) and the config's MaskSpec. With one (merged)
    modality the strategies reduce to: 'frame' == 'multimodal' (RGB and keypoints of a frame
    attend to each other, nothing across frames); 'extpose' == 'full' (everything of every
    frame; for ExtPose proper cross-frame attention is only within a modality, here keypoint
    tokens of frame t also see RGB of frame t' -- a superset). Key validity: frame_valid drops
    padded frames' tokens, modality_keep drops the RGB or keypoint tokens as keys (columns by
    config.modalities, 'skeleton' = the keypoint tokens) and the head context follows
    head_context ('rgb' / 'skeleton' = keypoint tokens / 'both') via heads.select_context.
    Without 'rgb' in modalities (keypoints without image) the stream is the J tokens alone.

ControlNetBranch ('controlnet')
    The main ViT is the RGB-only model (backbone on RGB, layout ('rgb',), config mask). A
    trainable copy of its first K blocks (`control_blocks_{i}`, K = control_depth, default
    depth // 2) reads the skeleton image's tokens (from the backbone's shared patch + position
    embedding, same mask over a ('skeleton',) layout). After copied block i, a ZERO-initialised
    Dense(C -> C) `control_proj_{i}` of the branch's residual stream is added to the main
    stream's residual right after main block i. The copy is initialised from the backbone with
    `init_control_from_backbone(variables)` (as ControlNet does); the zero projections make the
    output equal the RGB-only model at init whatever the copy holds. modality_keep's skeleton
    column zeroes the branch's contribution per sample; its rgb column is ignored.

TemporalHead ('temporal_head', video-method style temporal module on frame features)
    The image model is ExtPose itself restricted to within-frame attention (each MaskSpec
    layer's strategy must be 'frame' or 'multimodal'; no window / cross-frame). Per frame and
    view the head context (as ExtPose: select_context by head_context) is mean-pooled over its
    valid tokens -> (B, T, V, C); a new `temporal` module (sinusoidal time encoding, then
    `temporal_layers` (default 2) pre-norm ViT blocks -- vit.Block over a TokenLayout of T
    one-token streams, MaskSpec('full'), padded frames masked as keys, views folded into the
    batch -- then LayerNorm and a ZERO-initialised Dense(C -> C)) makes one summary token per
    frame, which is appended to that frame's head context (valid where the frame is). New
    parameters only in `temporal`. NOT exactly the image model at init: the head's
    cross-attention sees one extra (zero) token, which shifts its softmax slightly.

Missing (not built): the training-strategy ablations (only Q,K / first-half training) are
optimiser masks over these same parameter trees and belong to train/, not here.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from extpose_jax import skeletons
from extpose_jax.models import extpose, heads, masks, pose_forms, vit

_ZEROS = nn.initializers.zeros
_TRUNC = nn.initializers.truncated_normal(0.02)


def _logical(init, names):
    return nn.with_logical_partitioning(init, names)


def _zero_dense(config: vit.ViTConfig, name: str) -> nn.Dense:
    return nn.Dense(
        config.width,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        name=name,
        kernel_init=_logical(_ZEROS, ('embed', 'embed')),
        bias_init=_logical(_ZEROS, ('embed',)),
    )


def _drop_path_rates(c: vit.ViTConfig):
    return [c.drop_path_rate * i / max(c.depth - 1, 1) for i in range(c.depth)]  # as vit.ViT


class _Baseline(extpose.ExtPose):
    """ExtPose's backbone + head (same names) and the helpers the baselines share."""

    def _inputs(self, frames, keypoints, need_keypoints=True):
        c = self.config
        if frames.ndim != 6:
            raise ValueError(
                f'{type(self).__name__}: frames must be (B, T, V, H, W, 3), got {frames.shape}'
            )
        b, t, v = frames.shape[:3]
        if need_keypoints and (
            keypoints is None or keypoints.shape[:3] != (b, t, v) or keypoints.shape[-1] != 3
        ):
            raise ValueError(
                f'{type(self).__name__}: keypoints must be (B, T, V, J, 3) = ({b}, {t}, {v}, J, 3), '
                f'got {None if keypoints is None else keypoints.shape}'
            )
        if c.mask.layers and len(c.mask.layers) != c.vit.depth:
            raise ValueError(
                f'{type(self).__name__}: MaskSpec.layers has {len(c.mask.layers)} entries '
                f'for {c.vit.depth} blocks'
            )
        return b, t, v

    def _rgb(self, frames):
        b, t, v = frames.shape[:3]
        return pose_forms.normalize_image(frames).reshape(b, t * v, *frames.shape[3:])

    def _skeleton(self, keypoints):
        b, t, v = keypoints.shape[:3]
        img = pose_forms.normalize_image(self.pose_image(keypoints), scale=1.0)
        return img.reshape(b, t * v, *img.shape[3:])

    def _keep(self, modality_keep, name):
        """(B,) float: the modality_keep column of `name` (config.modalities order), or None."""
        if modality_keep is None or name not in self.config.modalities:
            return None
        modality_keep = jnp.asarray(modality_keep)
        if modality_keep.ndim != 2 or modality_keep.shape[1] != len(self.config.modalities):
            raise ValueError(
                f'{type(self).__name__}: modality_keep must be (B, {len(self.config.modalities)}) '
                f'for modalities {self.config.modalities}, got {modality_keep.shape}'
            )
        return modality_keep[:, self.config.modalities.index(name)]

    def _blocks(self, x, layout, key_valid, deterministic, after_block=None):
        """The backbone's blocks and last_norm over an already embedded (B, S*N, C) sequence."""
        for i, blk in enumerate(self.backbone.blocks):
            x = blk(x, key_valid, layout, self.config.mask, deterministic)
            if after_block is not None:
                x = after_block(i, x)
        return self.backbone.last_norm(x)

    def _need(self, *names):
        missing = [m for m in names if m not in self.config.modalities]
        if missing:
            raise ValueError(
                f'{type(self).__name__} needs modalities {names}; config has {self.config.modalities}'
            )


def _rgb_layout(config, t, v, name='rgb'):
    return masks.TokenLayout(frames=t, views=v, modalities=(name,), patches=config.vit.num_patches)


# ----------------------------------------------------------------------------- channel concat


class ChannelConcat(_Baseline):
    """6-channel input [RGB; skeleton image]; extra patch-embedding slices zero-initialised."""

    def setup(self):
        super().setup()
        c = self.config.vit
        self.skeleton_patch_embed = nn.Conv(
            c.width,
            (c.patch, c.patch),
            strides=(c.patch, c.patch),
            padding=((c.padding, c.padding), (c.padding, c.padding)),
            use_bias=False,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            kernel_init=_logical(_ZEROS, (None, None, None, 'embed')),
        )

    def __call__(
        self,
        frames,
        keypoints=None,
        *,
        modality_keep=None,
        frame_valid=None,
        deterministic: bool = True,
    ):
        self._need('rgb', 'skeleton')
        b, t, v = self._inputs(frames, keypoints)
        c = self.config.vit
        layout = _rgb_layout(self.config, t, v)
        x = self.backbone.embed(self._rgb(frames))  # (B, S*N, C)
        skel = self._skeleton(keypoints)
        extra = self.skeleton_patch_embed(skel.reshape(-1, *skel.shape[2:]).astype(c.dtype))
        extra = extra.reshape(b, layout.n_tokens, c.width)
        keep = self._keep(modality_keep, 'skeleton')
        if keep is not None:
            extra = extra * keep.astype(extra.dtype)[:, None, None]
        key_valid = masks.key_valid(layout, None, frame_valid)
        tokens = self._blocks(x + extra, layout, key_valid, deterministic)
        return self.head(tokens.reshape(b, t, v, c.num_patches, c.width))


def six_channel_patch_kernel(params) -> jax.Array:
    """(16, 16, 6, C) kernel of the equivalent 6-channel patch conv ([RGB; skeleton] channels)."""
    rgb = params['backbone']['patch_embed']['proj']['kernel']
    skel = params['skeleton_patch_embed']['kernel']
    unbox = lambda a: a.value if isinstance(a, nn.Partitioned) else a
    return jnp.concatenate([unbox(rgb), unbox(skel)], axis=2)


# ----------------------------------------------------------------------------- 1D keypoints


class KeypointTokens(_Baseline):
    """1D pose form: J embedded keypoint tokens appended to each frame's RGB patch tokens."""

    def setup(self):
        super().setup()
        c = self.config.vit
        j = skeletons.get_layout(self.config.keypoint_layout).num_joints
        self.keypoint_embed = nn.Dense(
            c.width,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            kernel_init=_logical(_TRUNC, (None, 'embed')),
            bias_init=_logical(_ZEROS, ('embed',)),
        )
        self.joint_embed = self.param(
            'joint_embed', _logical(_TRUNC, (None, 'embed')), (j, c.width), c.param_dtype
        )

    def __call__(
        self,
        frames,
        keypoints=None,
        *,
        modality_keep=None,
        frame_valid=None,
        deterministic: bool = True,
    ):
        self._need('skeleton')
        cfg, c = self.config, self.config.vit
        b, t, v = self._inputs(frames, keypoints)
        j = self.joint_embed.shape[0]
        if keypoints.shape[-2] != j:
            raise ValueError(
                f'KeypointTokens: {keypoints.shape[-2]} joints given, layout '
                f'{cfg.keypoint_layout!r} has {j}'
            )
        h, w = c.image_size
        kp = pose_forms.keypoint_tokens(
            keypoints, height=h, width=w, conf_threshold=cfg.conf_threshold
        )
        kp_tok = self.keypoint_embed(kp.astype(c.dtype)) + self.joint_embed.astype(
            c.dtype
        )  # (B,T,V,J,C)
        parts = []  # (name, (B, T, V, n, C)) in stream order
        if 'rgb' in cfg.modalities:
            rgb = self.backbone.embed(self._rgb(frames))
            parts.append(('rgb', rgb.reshape(b, t, v, c.num_patches, c.width)))
        parts.append(('skeleton', kp_tok))
        sizes = [p.shape[3] for _, p in parts]
        x = jnp.concatenate([p for _, p in parts], axis=3)
        n = x.shape[3]
        layout = masks.TokenLayout(frames=t, views=v, modalities=('rgb+keypoints',), patches=n)
        # Key validity per token: frame_valid x the modality_keep column of the token's part.
        valid = jnp.ones((b, t, v, n), bool)
        if frame_valid is not None:
            valid = valid & jnp.asarray(frame_valid, bool)[:, :, None, None]
        pieces, start = [], 0
        for (name, _), size in zip(parts, sizes):
            keep = self._keep(modality_keep, name)
            piece = valid[..., start : start + size]
            if keep is not None:
                piece = piece & keep.astype(bool)[:, None, None, None]
            pieces.append(piece)
            start += size
        valid = jnp.concatenate(pieces, axis=-1)
        any_mask = frame_valid is not None or modality_keep is not None
        key_valid = valid.reshape(b, layout.n_tokens) if any_mask else None
        x = x.reshape(b, layout.n_tokens, c.width)
        tokens = self._blocks(x, layout, key_valid, deterministic).reshape(b, t, v, n, c.width)
        split = dict(
            zip(
                [name for name, _ in parts],
                jnp.split(tokens, [sizes[0]], axis=3) if len(parts) == 2 else [tokens],
            )
        )
        present = {}
        for name in split:
            keep = self._keep(modality_keep, name)
            if keep is not None:
                present[name] = jnp.broadcast_to(keep.astype(bool)[:, None, None], (b, t, v))
        context, context_valid = heads.select_context(
            split.get('rgb'),
            split.get('skeleton'),
            cfg.head_context,
            rgb_present=present.get('rgb'),
            skeleton_present=present.get('skeleton'),
        )
        return self.head(context, context_valid)


# ----------------------------------------------------------------------------- ControlNet


class ControlNetBranch(_Baseline):
    """RGB ViT + trainable copy of its first K blocks on the skeleton, zero projections in."""

    control_depth: Optional[int] = None  # K; None = depth // 2

    @property
    def depth_k(self) -> int:
        k = self.config.vit.depth // 2 if self.control_depth is None else self.control_depth
        if not 1 <= k <= self.config.vit.depth:
            raise ValueError(
                f'ControlNetBranch: control_depth {k} outside 1..{self.config.vit.depth}'
            )
        return k

    def setup(self):
        super().setup()
        c = self.config.vit
        block = nn.remat(vit.Block, static_argnums=(3, 4, 5)) if c.remat else vit.Block
        rates = _drop_path_rates(c)
        self.control_blocks = [block(c, layer=i, drop_path=rates[i]) for i in range(self.depth_k)]
        self.control_proj = [_zero_dense(c, None) for _ in range(self.depth_k)]

    def __call__(
        self,
        frames,
        keypoints=None,
        *,
        modality_keep=None,
        frame_valid=None,
        deterministic: bool = True,
    ):
        self._need('rgb', 'skeleton')
        b, t, v = self._inputs(frames, keypoints)
        c = self.config.vit
        layout = _rgb_layout(self.config, t, v)
        skel_layout = _rgb_layout(self.config, t, v, 'skeleton')
        key_valid = masks.key_valid(layout, None, frame_valid)
        keep = self._keep(modality_keep, 'skeleton')
        # Branch first (it only reads the skeleton), then the main stream with the injections.
        h = self.backbone.embed(self._skeleton(keypoints))
        injections = []
        for blk, proj in zip(self.control_blocks, self.control_proj):
            h = blk(h, key_valid, skel_layout, self.config.mask, deterministic)
            y = proj(h)
            if keep is not None:
                y = y * keep.astype(y.dtype)[:, None, None]
            injections.append(y)

        def inject(i, x):
            return x + injections[i] if i < len(injections) else x

        x = self.backbone.embed(self._rgb(frames))
        tokens = self._blocks(x, layout, key_valid, deterministic, after_block=inject)
        return self.head(tokens.reshape(b, t, v, c.num_patches, c.width))


def init_control_from_backbone(variables):
    """Copy backbone blocks_i into control_blocks_i (ControlNet's 'trainable copy' init)."""
    params = dict(variables['params'])
    for name in [k for k in params if k.startswith('control_blocks_')]:
        params[name] = params['backbone'][name.replace('control_blocks_', 'blocks_')]
    return {**variables, 'params': params}


# ----------------------------------------------------------------------------- temporal head


def _sinusoid(t: int, width: int, dtype):
    pos = jnp.arange(t, dtype=jnp.float32)[:, None]
    freq = jnp.exp(-math.log(10000.0) * jnp.arange(0, width, 2, dtype=jnp.float32) / width)
    enc = jnp.zeros((t, width), jnp.float32)
    enc = (
        enc.at[:, 0::2]
        .set(jnp.sin(pos * freq))
        .at[:, 1::2]
        .set(jnp.cos(pos * freq)[:, : width // 2])
    )
    return enc.astype(dtype)


class TemporalModule(nn.Module):
    """(B', T, C) per-frame features -> (B', T, C) summary tokens (zero at init)."""

    config: vit.ViTConfig
    layers: int = 2

    @nn.compact
    def __call__(self, x, frame_valid=None, deterministic: bool = True):
        c = dataclasses.replace(
            self.config, drop_path_rate=0.0, attention='dense', block_size=None, remat=False
        )
        t = x.shape[1]
        layout = masks.TokenLayout(frames=t, views=1, modalities=('time',), patches=1)
        spec = masks.MaskSpec('full')
        x = x.astype(c.dtype) + _sinusoid(t, c.width, c.dtype)
        for i in range(self.layers):
            x = vit.Block(c, layer=i, name=f'blocks_{i}')(
                x, frame_valid, layout, spec, deterministic
            )
        x = nn.LayerNorm(epsilon=c.ln_eps, dtype=c.dtype, param_dtype=c.param_dtype, name='norm')(x)
        return _zero_dense(c, 'out')(x)


class TemporalHead(_Baseline):
    """Image model (within-frame attention) + temporal transformer summary token for the head."""

    temporal_layers: int = 2

    def setup(self):
        super().setup()
        self.temporal = TemporalModule(self.config.vit, self.temporal_layers)

    def _check_mask(self):
        spec = self.config.mask
        for i in range(self.config.vit.depth):
            s = spec.at_layer(i)
            if s.strategy not in ('frame', 'multimodal'):
                raise ValueError(
                    f'TemporalHead: the image model must not attend across frames; layer {i} '
                    f'has strategy {s.strategy!r} (use frame or multimodal)'
                )

    def image_context(
        self,
        frames,
        keypoints=None,
        *,
        modality_keep=None,
        frame_valid=None,
        deterministic: bool = True,
    ):
        """ExtPose's forward up to the head: (context (B,T,V,N,C), context_valid or None)."""
        c = self.config
        b, t, v = self._inputs(frames, keypoints, need_keypoints='skeleton' in c.modalities)
        streams = {
            'rgb': lambda: pose_forms.normalize_image(frames),
            'skeleton': lambda: pose_forms.normalize_image(self.pose_image(keypoints), scale=1.0),
        }
        images = jnp.stack([streams[m]() for m in c.modalities], axis=3)
        layout = c.layout(t, v)
        images = images.reshape(b, layout.streams, *images.shape[4:])
        key_valid = masks.key_valid(layout, modality_keep, frame_valid)
        tokens = self.backbone(images, layout, c.mask, key_valid, deterministic=deterministic)
        tokens = tokens.reshape(b, t, v, len(c.modalities), *tokens.shape[2:])
        per_modality = {m: tokens[:, :, :, i] for i, m in enumerate(c.modalities)}
        present = {}
        for m in c.modalities:
            keep = self._keep(modality_keep, m)
            if keep is not None:
                present[m] = jnp.broadcast_to(keep.astype(bool)[:, None, None], (b, t, v))
        return heads.select_context(
            per_modality.get('rgb'),
            per_modality.get('skeleton'),
            c.head_context,
            rgb_present=present.get('rgb'),
            skeleton_present=present.get('skeleton'),
        )

    def image_outputs(self, frames, keypoints=None, **kwargs):
        """The image model's outputs alone (= ExtPose with the same config and params)."""
        return self.head(*self.image_context(frames, keypoints, **kwargs))

    def __call__(
        self,
        frames,
        keypoints=None,
        *,
        modality_keep=None,
        frame_valid=None,
        deterministic: bool = True,
    ):
        self._check_mask()
        context, context_valid = self.image_context(
            frames,
            keypoints,
            modality_keep=modality_keep,
            frame_valid=frame_valid,
            deterministic=deterministic,
        )
        b, t, v, n, width = context.shape
        if context_valid is None:
            pooled = context.mean(axis=3)
        else:
            wts = context_valid.astype(context.dtype)[..., None]
            pooled = (context * wts).sum(3) / jnp.maximum(wts.sum(3), 1.0)
        seq = jnp.moveaxis(pooled, 2, 1).reshape(b * v, t, width)  # views into the batch
        fv = None
        if frame_valid is not None:
            fv = jnp.repeat(jnp.asarray(frame_valid, bool), v, axis=0)  # (B*V, T), b-major
        summary = self.temporal(seq, fv, deterministic=deterministic)
        summary = jnp.moveaxis(summary.reshape(b, v, t, width), 1, 2)[:, :, :, None]  # (B,T,V,1,C)
        context = jnp.concatenate([context, summary.astype(context.dtype)], axis=3)
        if context_valid is not None or frame_valid is not None:
            base = (
                jnp.ones((b, t, v, n), bool)
                if context_valid is None
                else jnp.broadcast_to(context_valid, (b, t, v, n))
            )
            extra = (
                jnp.ones((b, t, v, 1), bool)
                if frame_valid is None
                else jnp.broadcast_to(
                    jnp.asarray(frame_valid, bool)[:, :, None, None], (b, t, v, 1)
                )
            )
            context_valid = jnp.concatenate([base, extra], axis=3)
        return self.head(context, context_valid)


# ----------------------------------------------------------------------------- registry


BASELINES = {
    'channel_concat': ChannelConcat,
    'keypoint_tokens': KeypointTokens,
    'controlnet': ControlNetBranch,
    'temporal_head': TemporalHead,
}

# Ablations that are ExtPoseConfig settings of ExtPose (no new parameters).
CONFIG_VARIANTS = {
    'extpose': lambda cfg: cfg,
    'rgb_only': lambda cfg: dataclasses.replace(cfg, modalities=('rgb',), head_context='rgb'),
    'heatmap': lambda cfg: dataclasses.replace(cfg, pose_form='heatmap'),
    'late_fusion': lambda cfg: dataclasses.replace(
        cfg, mask=masks.MaskSpec('frame'), head_context='both'
    ),
    'image': lambda cfg: dataclasses.replace(cfg, mask=masks.MaskSpec('multimodal')),
}

# Top-level parameter names each baseline adds beside 'backbone' and 'head'.
NEW_PARAM_PREFIXES = {
    'channel_concat': ('skeleton_patch_embed',),
    'keypoint_tokens': ('keypoint_embed', 'joint_embed'),
    'controlnet': ('control_blocks_', 'control_proj_'),
    'temporal_head': ('temporal',),
}


def new_param_names(name: str, params) -> list:
    """Top-level names in `params` that baseline `name` adds (prefix match)."""
    prefixes = NEW_PARAM_PREFIXES.get(name, ())
    return [
        k for k in params if any(k == p or (p.endswith('_') and k.startswith(p)) for p in prefixes)
    ]


def build(name: str, config: extpose.ExtPoseConfig, **kwargs) -> nn.Module:
    """A model by ablation name: a baseline here, or ExtPose under a config rewrite."""
    if name in BASELINES:
        return BASELINES[name](config, **kwargs)
    if name in CONFIG_VARIANTS:
        if kwargs:
            raise ValueError(
                f'build: {name!r} is an ExtPoseConfig variant and takes no kwargs, got {kwargs}'
            )
        return extpose.ExtPose(CONFIG_VARIANTS[name](config))
    raise ValueError(
        f'build: unknown model {name!r}; allowed: '
        f'{", ".join(map(repr, [*BASELINES, *CONFIG_VARIANTS]))}'
    )
