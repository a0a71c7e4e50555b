"""Analytic per-device memory and FLOPs of a training step: the preflight's first answer.

    dims = Dims.of(cfg)
    mem = memory(dims, abstract_state, abstract_batch, mesh_shape, batch_size=32, grad_accum=4)
    fl = flops(dims, batch_size=32)                 # FLOPs per step, global

Compiling ViT-H at T = 16 takes minutes on a CPU; these formulas take microseconds, so the
front door can refuse a config that is far over its budget at once and leave only the close
cases to the compiled figures (preflight.py). They describe ExtPose's layout (T frames x M
modalities of N patch tokens through one ViT, a per-frame head, the body-model loss); the
ablation baselines with extra parameters are approximated by it (their compiled figures are
exact).

Memory, per device, for one micro-batch of m clips (n = m T M N tokens, b bytes per value of
the compute dtype, t = tensor-parallel ways where heads / the MLP width divide):
  parameters, optimizer state   exact: the abstract state's shard sizes
  gradients                     one more copy of the parameter shards (+ one with grad_accum > 1)
  activations   per block and token b (5 C + (4 C + 2 mlp) / t) + 4 H / t (logsumexp), saved
                for every block; with remat only each block's input (C per token) is saved and
                one block's worth is live while it is recomputed
  attention     dense: the (queries x keys) probabilities of every head; grouped: those of
                the keys the mask allows; blockwise, cudnn, grouped_cudnn: one key block (one
                stream's patches) per query at a time; 'auto' as attention.auto_impl resolves
                it on the platform
  fsdp          one block's gathered weights in the forward and backward (fsdp > 1)
  inputs        exact: the whole step's batch shard (the micro-batches are slices of it)
FLOPs, global, per step (2 per multiply-add): per token and block 2 (4 C^2 + 2 C mlp) for the
projections and the MLP, 4 K C for attention over the K keys the mask lets it see (exact,
from the mask), the patch embedding, the head's decoder per frame, the body model per frame;
training is 3x the forward (backward = 2x), remat re-runs the backbone's forward once more.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np

from extpose_jax import skeletons
from extpose_jax.models import attention, grouped_attention, heads, masks
from extpose_jax.train import config as config_lib

DTYPE_BYTES = {'float32': 4, 'bfloat16': 2}
# SMPL / MANO sizes (vertices, skeleton joints, pose-blend features) for the loss's forward.
_BODY = {'smpl': (6890, 24, 207), 'mano': (778, 16, 135)}


@dataclasses.dataclass(frozen=True)
class Dims:
    """What the formulas need of a config."""

    width: int
    depth: int
    heads: int
    mlp: int
    patches: int  # N tokens per image
    patch_pixels: int  # patch * patch * channels
    image_pixels: int  # H * W
    frames: int  # T
    modalities: int  # M streams per frame (views are 1 in training)
    head_modalities: int  # streams the head reads per frame
    kind: str
    head_size: str  # heads.SIZES name
    value_bytes: int  # compute dtype
    remat: bool
    attention: str
    block_keys: int  # blockwise key block
    keys_per_query: float  # tokens a query may attend to, averaged over queries and layers
    dense_keys: int  # keys a dense kernel computes per query (all of them)
    limbs: int  # skeleton strokes drawn per frame
    groupable: bool = False  # every layer's mask has a grouped plan (for 'auto')
    overhead: float = (
        1.0  # activation bytes actually kept / the formula's (XLA:CPU: see on_platform)
    )

    @classmethod
    def of(cls, cfg) -> Dims:
        mc = config_lib.model_config(cfg)
        v = mc.vit
        layout = mc.layout(cfg.data.num_frames)
        per_stream = masks.TokenLayout(
            frames=layout.frames, views=layout.views, modalities=layout.modalities, patches=1
        )
        counts = [masks.structure(per_stream, mc.mask, i).sum(1).mean() for i in range(v.depth)]
        head_modalities = 2 if mc.head_context == 'both' else 1
        kp_layout = skeletons.get_layout(mc.keypoint_layout)
        return cls(
            width=v.width,
            depth=v.depth,
            heads=v.heads,
            mlp=v.mlp_dim,
            patches=v.num_patches,
            patch_pixels=v.patch * v.patch * v.channels,
            image_pixels=v.image_size[0] * v.image_size[1],
            frames=cfg.data.num_frames,
            modalities=len(mc.modalities),
            head_modalities=min(head_modalities, len(mc.modalities)),
            kind=mc.kind,
            head_size=mc.head_size,
            value_bytes=DTYPE_BYTES[cfg.model.dtype],
            remat=bool(cfg.model.remat),
            attention=cfg.model.attention,
            block_keys=v.block_size or v.num_patches,
            keys_per_query=float(np.mean(counts)) * v.num_patches,
            dense_keys=layout.streams * v.num_patches,
            limbs=len(kp_layout.limbs) + kp_layout.num_joints,
            groupable=all(
                grouped_attention.pieces_of(per_stream, mc.mask, i)[0] is not None
                for i in range(v.depth)
            ),
        )

    @property
    def tokens_per_clip(self) -> int:
        return self.frames * self.modalities * self.patches


# XLA:CPU keeps about twice the formula's fp32 activations: measured 2026-12-05 on jax 0.10.2,
# ViT-B backbone forward + backward at 6,144 tokens 7.55 GiB temp vs 3.85 GiB counted; with this
# factor the model over-predicts XLA:CPU's compiled ViT-H train steps by 8-24% (docs/scaling.md).
XLA_CPU_OVERHEAD = 2.0


def on_platform(d: Dims, platform: str) -> Dims:
    """The memory model of a platform. GPU / TPU: the formulas as written. CPU: XLA:CPU computes
    bf16 in fp32 and its scheduler undoes remat (measured: the same temp with and without), so
    activations are fp32, every block's is kept, and XLA_CPU_OVERHEAD more on top. 'auto'
    attention becomes what it runs there."""
    d = dataclasses.replace(d, attention=attention_on(d, platform))
    if platform != 'cpu':
        return d
    return dataclasses.replace(d, value_bytes=4, remat=False, overhead=XLA_CPU_OVERHEAD)


def attention_on(d: Dims, platform: str) -> str:
    if d.attention != 'auto':
        return d.attention
    dtype = 'bfloat16' if d.value_bytes == 2 else 'float32'
    return attention.auto_impl(d.groupable, dtype, platform)


# ------------------------------------------------------------------------------ memory


def shard_bytes(tree) -> int:
    """Bytes one device holds of a tree of ShapeDtypeStructs with shardings (or arrays)."""
    total = 0
    for x in jax.tree.leaves(tree):
        shape = (
            x.sharding.shard_shape(x.shape) if getattr(x, 'sharding', None) is not None else x.shape
        )
        total += math.prod(shape) * np.dtype(x.dtype).itemsize
    return total


def _split(n: int, ways: int) -> int:
    return ways if n % ways == 0 else 1


def activation_bytes(d: Dims, clips: float, tensor: int = 1) -> float:
    """Per device, for `clips` clips of the micro-batch on this device (see the module docstring)."""
    b, c = d.value_bytes, d.width
    n = clips * d.tokens_per_clip
    th, tm = _split(d.heads, tensor), _split(d.mlp, tensor)
    per_token = b * (5 * c + 4 * c / th + 2 * d.mlp / tm) + 4 * d.heads / th
    impl = attention_on(d, jax.default_backend())
    materialised = {'dense': d.dense_keys, 'grouped': d.keys_per_query}.get(impl)
    if materialised:
        per_token += 4 * d.heads / th * materialised  # softmax probabilities, fp32
    block = n * per_token
    saved = d.depth * n * c * b + 2 * block if d.remat else d.depth * block
    # Blockwise / flash: scores / probabilities / their gradient for one key block of every query.
    attn_transient = 0 if materialised else 3 * n * d.block_keys * 4 * d.heads / th
    frames = clips * d.frames
    # Pose images (rendered fp32, one stroke at a time) and the normalised streams.
    images = frames * d.image_pixels * 3 * (3 * 4 + d.modalities * b)
    # Head context, decoder and the body model (vertices, per-vertex transforms) with gradients.
    head = frames * (d.head_modalities * d.patches * c * b * 3 + 3 * _BODY[d.kind][0] * 40 * 4)
    return d.overhead * (saved + attn_transient) + images + head


def eval_activation_bytes(d: Dims, clips: float, tensor: int = 1) -> float:
    """Per device, forward only: nothing is kept for a backward pass, so about two blocks'
    worth is live at a time (plus the images and the head), whatever the depth."""
    return activation_bytes(dataclasses.replace(d, remat=True, depth=1), clips, tensor)


def block_param_bytes(d: Dims) -> float:
    """One ViT block's parameters in fp32 (what FSDP gathers at a time)."""
    c = d.width
    return 4 * (4 * c * c + 2 * c * d.mlp + 9 * c + d.mlp)


def memory(
    d: Dims, abstract_state, abstract_batch, mesh_shape: dict, batch_size: int, grad_accum: int
) -> dict:
    """Per-device bytes by part; 'total' is their sum. batch_size: the global batch (clips);
    abstract_batch: the step's batch as sharded ShapeDtypeStructs (setup.abstract_batch)."""
    shards = mesh_shape['data'] * mesh_shape['fsdp']
    params = shard_bytes((abstract_state.params, abstract_state.constants))
    optimizer = shard_bytes(abstract_state.opt_state)
    if hasattr(abstract_state, 'disc_params'):
        optimizer += shard_bytes((abstract_state.disc_params, abstract_state.disc_opt_state))
    grads = shard_bytes(abstract_state.params) * (2 if grad_accum > 1 else 1)
    clips = batch_size / grad_accum / shards
    activations = activation_bytes(d, clips, mesh_shape['tensor'])
    if mesh_shape['fsdp'] > 1:
        activations += 3 * block_param_bytes(d)
    inputs = shard_bytes(abstract_batch)
    out = {
        'params': params,
        'optimizer': optimizer,
        'gradients': grads,
        'activations': activations,
        'inputs': inputs,
    }
    out['total'] = sum(out.values())
    return out


# ------------------------------------------------------------------------------ FLOPs


def forward_flops(d: Dims, clips: float) -> dict:
    """Forward FLOPs of `clips` clips by part: backbone (blocks), embed, head, body."""
    c = d.width
    tokens = clips * d.tokens_per_clip
    frames = clips * d.frames
    blocks = d.depth * tokens * (2 * (4 * c * c + 2 * c * d.mlp) + 4 * d.keys_per_query * c)
    embed = tokens * 2 * d.patch_pixels * c + frames * d.limbs * d.image_pixels * 20
    ctx = d.head_modalities * d.patches
    s = heads.head_size(d.head_size)
    inner = s.heads * s.dim_head
    layer = (
        2 * s.dim * 3 * inner
        + 2 * inner * s.dim  # self-attention, 1 query
        + 2 * s.dim * inner
        + 2 * ctx * c * 2 * inner
        + 4 * ctx * inner  # cross-attention
        + 2 * inner * s.dim
        + 4 * s.dim * s.mlp_dim
    )  # out, feed-forward
    head = frames * s.depth * layer
    v, j, p = _BODY[d.kind]
    body = frames * (2 * v * 3 * (p + 10) + 2 * v * j * 16 + 2 * v * 16)
    return {'blocks': blocks, 'embed': embed, 'head': head, 'body': body}


def flops(d: Dims, batch_size: int) -> dict:
    """Global FLOPs per training step: 'model' (3x forward, the MFU convention) and 'executed'
    (plus the remat recompute of the blocks), and the forward parts."""
    fwd = forward_flops(d, batch_size)
    model = 3 * sum(fwd.values())
    executed = model + (fwd['blocks'] if d.remat else 0)
    return {'model': model, 'executed': executed, 'forward': fwd}


def eval_flops(d: Dims, batch_size: int) -> float:
    """Global FLOPs of one evaluation batch (forward only)."""
    return sum(forward_flops(d, batch_size).values())
