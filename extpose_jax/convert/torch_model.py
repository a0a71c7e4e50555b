"""ExtPose in PyTorch: a mirror that runs exported weights outside JAX.

    model = TorchExtPose(ExtPoseConfig(...)).load(torch.load('extpose.ckpt')['state_dict'])
    out = model(frames, keypoints, modality_keep=keep, frame_valid=valid)   # torch.no_grad()
    # frames (B, T, V, H, W, 3) uint8 / [0, 255]; keypoints (B, T, V, J, 3) crop pixels
    # -> global_orient (B, T, V, 1, 3, 3), body_pose | hand_pose, betas, pred_cam, pose_6d

Module and parameter names are upstream's (backbone.blocks.3.attn.qkv.weight, smpl_head.
transformer.transformer.layers.0.1.fn.to_kv.weight, ...), so an exported checkpoint loads with
load_state_dict as HMR 2.0 / HaMeR load it. Everything that computes is written here again in
torch from upstream's design, not translated from the Flax code: patch embedding, blocks, masked
attention, the decoder head, 6D rotations and the skeleton image. That makes it a check on the
JAX model and on the converter. It takes from the JAX code only what is not arithmetic: the
attention mask as masks.py builds it (which token sees which is a property of the token
layout, not of either framework, so both sides attend under the same mask by construction),
the keypoint layouts (skeletons.py: joint order, limbs, colours), the skeleton image's limb
brightness and default thickness (pose_forms.py), the checkpoint key names (keymap.py) and the
head's sizes (heads.SIZES).

The mask semantics matter where rows go empty (modality dropout under 'frame'): a query with no
visible key outputs zeros, in the ViT and in the head's cross-attention.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from extpose_jax import skeletons
from extpose_jax.convert import keymap
from extpose_jax.models import heads, masks, pose_forms

_MEAN = (0.485, 0.456, 0.406)  # ImageNet, [0, 1] scale (HMR 2.0 / HaMeR normalisation)
_STD = (0.229, 0.224, 0.225)
_BETAS = 10
_JOINTS = {'smpl': (24, 'body_pose', 'init_body_pose'), 'mano': (16, 'hand_pose', 'init_hand_pose')}


def _masked_softmax_attention(q, k, v, allowed):
    """q (B, H, Q, D), k/v (B, H, K, D), allowed bool broadcastable to (B, H, Q, K) or None.

    A query row with no allowed key returns zeros (not a mean of v, not NaN).
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if allowed is None:
        return torch.matmul(scores.softmax(-1), v)
    weights = scores.masked_fill(~allowed, float('-inf')).softmax(-1)
    weights = torch.where(
        allowed.any(-1, keepdim=True), weights, torch.zeros((), dtype=weights.dtype)
    )
    return torch.matmul(weights, v)


# ------------------------------------------------------------------------------ the ViT


class _Attention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x, allowed):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = _masked_softmax_attention(q, k, v, allowed)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, width, heads, mlp_dim, eps):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = _Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = _Mlp(width, mlp_dim)

    def forward(self, x, allowed):
        x = x + self.attn(self.norm1(x), allowed)
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, channels, width, patch, padding):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, patch, stride=patch, padding=padding)

    def forward(self, x):  # (B', 3, H, W) -> (B', N, C), row-major over the grid
        return self.proj(x).flatten(2).transpose(1, 2)


class TorchViT(nn.Module):
    """ViTPose backbone over many streams: images (B, S, 3, H, W), one mask per block."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.patch_embed = _PatchEmbed(c.channels, c.width, c.patch, c.padding)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.width))
        self.blocks = nn.ModuleList(
            _Block(c.width, c.heads, c.mlp_dim, c.ln_eps) for _ in range(c.depth)
        )
        self.last_norm = nn.LayerNorm(c.width, eps=c.ln_eps)

    def forward(self, images, allowed_per_block):
        """allowed_per_block: depth bool tensors (B or 1, 1, S*N, S*N) -> tokens (B, S, N, C)."""
        b, s = images.shape[:2]
        x = self.patch_embed(images.flatten(0, 1))
        x = (
            x + self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        )  # the unused cls slot shifts every token
        n, c = x.shape[1:]
        x = x.reshape(b, s * n, c)
        for block, allowed in zip(self.blocks, allowed_per_block):
            x = block(x, allowed)
        return self.last_norm(x).reshape(b, s, n, c)


# ------------------------------------------------------------------------------ the head


class _PreNorm(nn.Module):
    def __init__(self, fn, dim):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn


class _SelfAttn(nn.Module):
    def __init__(self, s):
        super().__init__()
        self.heads, inner = s.heads, s.heads * s.dim_head
        self.to_qkv = nn.Linear(s.dim, 3 * inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, s.dim), nn.Dropout(0.0))

    def forward(self, x):
        q, k, v = (_split_heads(t, self.heads) for t in self.to_qkv(x).chunk(3, dim=-1))
        return self.to_out(_merge_heads(_masked_softmax_attention(q, k, v, None)))


class _CrossAttn(nn.Module):
    def __init__(self, s, context_dim):
        super().__init__()
        self.heads, inner = s.heads, s.heads * s.dim_head
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)  # registered first, as upstream
        self.to_q = nn.Linear(s.dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, s.dim), nn.Dropout(0.0))

    def forward(self, x, context, valid):
        k, v = (_split_heads(t, self.heads) for t in self.to_kv(context).chunk(2, dim=-1))
        allowed = None if valid is None else valid[:, None, None, :]
        q = _split_heads(self.to_q(x), self.heads)
        return self.to_out(_merge_heads(_masked_softmax_attention(q, k, v, allowed)))


class _FeedForward(nn.Module):
    def __init__(self, s):
        super().__init__()
        d, h = s.dim, s.mlp_dim
        self.net = nn.Sequential(
            nn.Linear(d, h), nn.GELU(), nn.Dropout(0.0), nn.Linear(h, d), nn.Dropout(0.0)
        )

    def forward(self, x):
        return self.net(x)


def _split_heads(t, heads):  # (M, N, H*D) -> (M, H, N, D), head-major columns
    return t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)


def _merge_heads(t):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], -1)


class _Stack(nn.Module):
    def __init__(self, s, context_dim):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    _PreNorm(_SelfAttn(s), s.dim),
                    _PreNorm(_CrossAttn(s, context_dim), s.dim),
                    _PreNorm(_FeedForward(s), s.dim),
                ]
            )
            for _ in range(s.depth)
        )


class _Decoder(nn.Module):
    """transformer.*: one query token, depth pre-norm [self, cross, ff] layers, no final norm."""

    def __init__(self, s, context_dim):
        super().__init__()
        self.to_token_embedding = nn.Linear(1, s.dim)
        self.pos_embedding = nn.Parameter(torch.zeros(1, 1, s.dim))
        self.transformer = _Stack(s, context_dim)

    def forward(self, context, valid):
        x = self.to_token_embedding(context.new_zeros(context.shape[0], 1, 1)) + self.pos_embedding
        for attn, cross, ff in self.transformer.layers:
            x = x + attn.fn(attn.norm(x))
            x = x + cross.fn(cross.norm(x), context, valid)
            x = x + ff.fn(ff.norm(x))
        return x[:, 0]


def rot6d_to_rotmat(x):
    """(..., 6) -> (..., 3, 3): Gram-Schmidt on the contiguous halves, results as columns."""
    b1 = F.normalize(x[..., 0:3], dim=-1)
    a2 = x[..., 3:6]
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    return torch.stack([b1, b2, torch.cross(b1, b2, dim=-1)], dim=-1)


class TorchPoseHead(nn.Module):
    """SMPL / MANO transformer-decoder head: context (M, N, C) [+ valid (M, N)] -> parameters."""

    def __init__(self, kind='smpl', context_dim=1280, size='hmr2'):
        super().__init__()
        s = heads.head_size(size)
        self.kind = kind
        joints, self.pose_key, init_name = _JOINTS[kind]
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]).repeat(joints)[None]
        self.register_buffer(init_name, identity)
        self.register_buffer('init_betas', torch.zeros(1, _BETAS))
        self.register_buffer('init_cam', torch.tensor([[0.9, 0.0, 0.0]]))
        self.init_pose_name = init_name
        self.transformer = _Decoder(s, context_dim)
        self.decpose = nn.Linear(s.dim, 6 * joints)
        self.decshape = nn.Linear(s.dim, _BETAS)
        self.deccam = nn.Linear(s.dim, 3)

    def forward(self, context, valid=None):
        token = self.transformer(context, valid)
        pose_6d = (self.decpose(token) + getattr(self, self.init_pose_name)).reshape(
            token.shape[0], -1, 6
        )
        rot = rot6d_to_rotmat(pose_6d)
        return {
            'global_orient': rot[:, :1],
            self.pose_key: rot[:, 1:],
            'betas': self.decshape(token) + self.init_betas,
            'pred_cam': self.deccam(token) + self.init_cam,
            'pose_6d': pose_6d,
        }


# ------------------------------------------------------------------------------ skeleton image


def render_skeleton(
    keypoints,
    layout,
    height,
    width,
    thickness=None,
    conf_threshold=0.3,
    limb_brightness=pose_forms.CONTROLNET_LIMB_BRIGHTNESS,
):
    """(M, J, 3) crop-pixel keypoints -> (M, H, W, 3) on [0, 1], the look pose_forms documents.

    Black canvas; each limb, then each joint, composited 'over' in layout order; pixel (i, j)
    has its centre at (x, y) = (j, i); coverage is clip(radius + 1.2 - distance, 0, 1), limbs
    of half-width thickness / 2 with round caps, joints discs of radius thickness / 2; limbs
    and joints below conf_threshold are not drawn; limb colours dimmed by limb_brightness.
    """
    layout = skeletons.get_layout(layout)
    if thickness is None:  # the drawing convention is shared; the drawing is not
        thickness = pose_forms.default_thickness(height, width)
    radius = thickness / 2.0
    kp = keypoints.to(torch.float32)
    xy, visible = kp[..., :2], (kp[..., 2] >= conf_threshold).to(torch.float32)
    ys = torch.arange(height, dtype=torch.float32)[None, :, None]
    xs = torch.arange(width, dtype=torch.float32)[None, None, :]
    image = kp.new_zeros(kp.shape[0], height, width, 3)

    def coverage(a, b, r):  # distance of every pixel centre to the segment a-b, as coverage
        ab = b - a
        px, py = xs - a[:, 0, None, None], ys - a[:, 1, None, None]
        abx, aby = ab[:, 0, None, None], ab[:, 1, None, None]
        t = ((px * abx + py * aby) / (abx * abx + aby * aby).clamp_min(1e-12)).clamp(0, 1)
        dx, dy = px - t * abx, py - t * aby
        return (r + 1.2 - (dx * dx + dy * dy).clamp_min(1e-12).sqrt()).clamp(0, 1)

    def over(image, alpha, color):
        alpha = alpha[..., None]
        return image * (1 - alpha) + alpha * color

    palette = lambda colors, n: (
        torch.tensor(np.asarray(colors, np.float32).reshape(n, 3) / 255.0)
        if len(colors)
        else torch.ones(n, 3)
    )
    limb_colors = palette(layout.limb_colors, len(layout.limbs)) * limb_brightness
    for (i, j), color in zip(layout.limbs, limb_colors):
        w = torch.minimum(visible[:, i], visible[:, j])[:, None, None]
        image = over(image, coverage(xy[:, i], xy[:, j], radius) * w, color)
    for j, color in enumerate(palette(layout.joint_colors, layout.num_joints)):
        image = over(image, coverage(xy[:, j], xy[:, j], radius) * visible[:, j, None, None], color)
    return image


def normalize(image, scale):
    """[0, scale] RGB (..., H, W, 3) -> (p - scale mean) / (scale std)."""
    mean = torch.tensor(_MEAN) * scale
    std = torch.tensor(_STD) * scale
    return (image.to(torch.float32) - mean) / std


# ------------------------------------------------------------------------------ the model


def _tensor(x):
    return x if torch.is_tensor(x) else torch.from_numpy(np.array(x))  # a writable copy


class TorchExtPose(nn.Module):
    """ExtPose (extpose.ExtPoseConfig) in PyTorch; state_dict keys = the exported checkpoint's."""

    def __init__(self, config):
        super().__init__()
        if config.pose_form != 'skeleton':
            raise NotImplementedError(
                f'TorchExtPose: pose_form {config.pose_form!r}; the mirror '
                "draws the default 'skeleton' only"
            )
        self.config = config
        self.backbone = TorchViT(config.vit)
        self.add_module(
            keymap.HEAD_PREFIX[config.kind][:-1],
            TorchPoseHead(config.kind, config.vit.width, config.head_size),
        )

    @property
    def head(self) -> TorchPoseHead:
        return getattr(self, keymap.HEAD_PREFIX[self.config.kind][:-1])

    def load(self, state_dict):
        """Loads an exported state dict; every backbone / head key must match, the rest of the
        file (discriminator.*, body-model buffers) is left alone. Returns self."""
        ours = self.state_dict()
        given = {
            k: v
            for k, v in state_dict.items()
            if k.startswith(('backbone.', keymap.HEAD_PREFIX[self.config.kind]))
        }
        bad = [
            (k, tuple(v.shape), tuple(ours[k].shape))
            for k, v in given.items()
            if k in ours and tuple(v.shape) != tuple(ours[k].shape)
        ]
        missing, unexpected = set(ours) - set(given), set(given) - set(ours)
        if missing or unexpected or bad:
            raise keymap.ConversionError('TorchExtPose.load', missing, unexpected, bad)
        self.load_state_dict({k: _tensor(v) for k, v in given.items()}, strict=True)
        return self

    def allowed(self, layout, modality_keep=None, frame_valid=None):
        """Per block: the mask masks.py builds for the JAX model, as a bool tensor."""
        kv = masks.key_valid(layout, modality_keep, frame_valid)
        built = {}  # layers with one spec share one structure object, and so one tensor
        out = []
        for layer in range(self.config.vit.depth):
            structure = masks.structure(layout, self.config.mask, layer)
            if id(structure) not in built:
                built[id(structure)] = torch.from_numpy(np.array(masks.dense_mask(structure, kv)))
            out.append(built[id(structure)])
        return out

    def forward(self, frames, keypoints=None, modality_keep=None, frame_valid=None):
        c = self.config
        frames = _tensor(frames)
        b, t, v = frames.shape[:3]
        h, w = c.vit.image_size
        streams = []
        for m in c.modalities:
            if m == 'rgb':
                streams.append(normalize(frames, 255.0))
            else:
                kp = _tensor(keypoints)
                image = render_skeleton(
                    kp.reshape(-1, *kp.shape[3:]),
                    c.keypoint_layout,
                    h,
                    w,
                    conf_threshold=c.conf_threshold,
                )
                streams.append(normalize(image.reshape(b, t, v, h, w, 3), 1.0))
        layout = c.layout(t, v)
        images = (
            torch.stack(streams, dim=3).reshape(b, layout.streams, h, w, 3).permute(0, 1, 4, 2, 3)
        )
        keep = None if modality_keep is None else np.asarray(modality_keep, bool)
        valid = None if frame_valid is None else np.asarray(frame_valid, bool)
        tokens = self.backbone(images, self.allowed(layout, keep, valid))
        tokens = tokens.reshape(b, t, v, len(c.modalities), *tokens.shape[2:])
        read = {'rgb': ['rgb'], 'skeleton': ['skeleton'], 'both': ['rgb', 'skeleton']}[
            c.head_context
        ]
        idx = [c.modalities.index(m) for m in read]
        context = torch.cat([tokens[:, :, :, i] for i in idx], dim=-2).flatten(0, 2)
        ctx_valid = None
        if keep is not None:
            n = tokens.shape[-2]
            per_token = np.concatenate(
                [np.repeat(keep[:, i, None], n, axis=1) for i in idx], axis=1
            )
            ctx_valid = torch.from_numpy(np.repeat(per_token, t * v, axis=0))
        out = self.head(context, ctx_valid)
        return {k: x.reshape(b, t, v, *x.shape[1:]) for k, x in out.items()}


__all__ = [
    'TorchExtPose',
    'TorchViT',
    'TorchPoseHead',
    'render_skeleton',
    'rot6d_to_rotmat',
    'normalize',
]
