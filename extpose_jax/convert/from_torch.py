"""Import HMR 2.0 / HaMeR / ViTPose PyTorch checkpoints as ExtPose variables.

    python -m extpose_jax.convert.from_torch --ckpt PATH --kind hmr2|hamer|vitpose --out DIR

--kind hmr2    HMR 2.0 Lightning .ckpt ({'state_dict': ...}): backbone.*, smpl_head.* (with its
               init_* buffers), discriminator.* when present. The smpl.* body-model buffers and
               'initialized' are left behind, as upstream's non-strict load leaves them.
--kind hamer   the same with mano_head.* / mano.*.
--kind vitpose ViTPose: an mmpose checkpoint (backbone.* + keypoint_head.*, the heatmap head is
               dropped), HMR 2.0's prefix-less vitpose_backbone.pth, or a ViTPose+ mixture of
               experts, whose fc2 is joined with the expert chosen by --expert (ViTPose's own
               model split does the same). Gives the backbone only; the head starts fresh.

DIR is written by train/checkpoint.save_variables ({'params', 'constants'[, 'discriminator']};
meta: kind, ViT dims, parts, source); run_train.py starts from it (config.init.checkpoint=DIR).
A checkpoint's discriminator is converted and checked like the rest and written too: a run
with loss.use_adversarial starts its discriminator from it, other runs ignore it.
The ViT's size is read off the tensors. Everything else in the checkpoint is an error that
names the keys; nothing is written unless the whole conversion succeeded.

Reading never runs code from the file (extpose_jax.safe_pickle): only what torch's weights_only
loader allows is resolved, the classes a Lightning checkpoint pickles besides tensors (its
hyper_parameters: yacs / omegaconf configs) become inert stand-ins, so those libraries need not
be installed, and any other global (os.system, builtins.exec, ...) is refused.
"""

from __future__ import annotations

import os
import re

import jax
import numpy as np

from extpose_jax import errors, safe_pickle
from extpose_jax.convert import keymap
from extpose_jax.models import vit

KINDS = {'hmr2': 'smpl', 'hamer': 'mano', 'vitpose': None}
# Entries upstream's strict=False load skips, and that an import therefore leaves behind.
_LEFT_BEHIND = {
    'hmr2': ('smpl.', 'initialized'),
    'hamer': ('mano.', 'initialized'),
    'vitpose': ('keypoint_head.', 'associate_keypoint_heads.'),
}
_EXPERT = re.compile(r'^(.*blocks\.\d+\.mlp\.)experts\.(\d+)\.(weight|bias)$')


class CheckpointError(errors.DataFileError):
    """A file that is not a readable PyTorch checkpoint of the kind asked for."""


# ------------------------------------------------------------------------------ reading


def read_torch_file(path: str):
    """torch.load through safe_pickle: tensors as torch.load(weights_only=True) gives them, and
    whatever else the file pickles (a Lightning checkpoint's cfg) as inert stand-ins."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such checkpoint file')
    return safe_pickle.load_torch(path, CheckpointError)


def state_dict_of(obj, path: str = '<checkpoint>') -> dict:
    """The tensors: obj['state_dict'] (Lightning, mmpose, vitpose_backbone.pth) or obj itself."""
    sd = obj.get('state_dict', obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not sd or not all(hasattr(v, 'shape') for v in sd.values()):
        top = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f'{path}: no state_dict of tensors found (top level: {top})')
    return dict(sd)


# ------------------------------------------------------------------------------ converting


def _backbone_prefix(sd, kind):
    if kind == 'vitpose' and not any(k.startswith('backbone.') for k in sd) and 'pos_embed' in sd:
        return ''  # HMR 2.0's vitpose_backbone.pth: loaded straight into self.backbone
    return 'backbone.'


def _dims(sd, prefix) -> dict:
    """ViT dims from the tensors; ViT-H's where a tensor is missing (the strict pass names it)."""
    dims = keymap.vit_dims(vit.ViTConfig.of('huge'))
    pos, conv = sd.get(prefix + 'pos_embed'), sd.get(prefix + 'patch_embed.proj.weight')
    fc1 = sd.get(prefix + 'blocks.0.mlp.fc1.weight')
    if pos is not None and len(pos.shape) == 3:
        dims.update(width=pos.shape[2], num_patches=pos.shape[1] - 1)
    if conv is not None and len(conv.shape) == 4:
        dims.update(channels=conv.shape[1], patch=conv.shape[2])
    if fc1 is not None and len(fc1.shape) == 2:
        dims['mlp_dim'] = fc1.shape[0]
    blocks = {
        int(m.group(1))
        for k in sd
        for m in [re.match(re.escape(prefix) + r'blocks\.(\d+)\.', k)]
        if m
    }
    if blocks:
        dims['depth'] = max(blocks) + 1
    return {k: int(v) for k, v in dims.items()}


def size_name(dims) -> str | None:
    """The vit.SIZES entry with these weights' shapes (heads are not in the weights)."""
    for name, s in vit.SIZES.items():
        if (s['width'], s['depth'], s['mlp_dim']) == (
            dims['width'],
            dims['depth'],
            dims['mlp_dim'],
        ):
            return name
    return None


def join_experts(sd: dict, expert: int | None) -> dict:
    """ViTPose+ -> plain ViT: fc2 (C - P, 4C) ++ experts.e (P, 4C) along the output axis."""
    found = {}
    for k in sd:
        m = _EXPERT.match(k)
        if m:
            found.setdefault(m.group(1), set()).add(int(m.group(2)))
    if not found:
        if expert is not None:
            raise CheckpointError(
                f'--expert {expert}: the checkpoint is not a ViTPose+ mixture of '
                'experts (no blocks.N.mlp.experts.* keys)'
            )
        return sd
    n = len(set.union(*found.values()))
    if expert is None or not 0 <= expert < n:
        raise CheckpointError(
            f'ViTPose+ checkpoint with {n} experts per block: pass --expert '
            f'0..{n - 1} to choose the one joined with fc2 (got {expert})'
        )
    out = {k: v for k, v in sd.items() if not _EXPERT.match(k)}
    for mlp, have in sorted(found.items()):
        for leaf in ('weight', 'bias'):
            fc2, extra = f'{mlp}fc2.{leaf}', f'{mlp}experts.{expert}.{leaf}'
            if fc2 not in sd or extra not in sd:
                raise CheckpointError(f'ViTPose+ checkpoint: {fc2} or {extra} is missing')
            out[fc2] = np.concatenate([keymap.as_numpy(sd[fc2]), keymap.as_numpy(sd[extra])], 0)
    return out


def _hint(sd, kind) -> str:
    heads_found = {k.split('.')[0] for k in sd if k.startswith(('smpl_head.', 'mano_head.'))}
    if kind != 'hamer' and 'mano_head' in heads_found:
        return 'The keys look like a HaMeR checkpoint (mano_head.*): use --kind hamer.'
    if kind != 'hmr2' and 'smpl_head' in heads_found:
        return 'The keys look like an HMR 2.0 checkpoint (smpl_head.*): use --kind hmr2.'
    if (
        kind != 'vitpose'
        and not heads_found
        and any(k.startswith(('keypoint_head.', 'pos_embed', 'backbone.pos_embed')) for k in sd)
    ):
        return 'The keys look like a ViTPose checkpoint (no pose head): use --kind vitpose.'
    return ''


def import_state_dict(sd: dict, kind: str, expert: int | None = None):
    """A PyTorch state dict -> (variables (numpy), meta). Strict; see the module docstring."""
    if kind not in KINDS:
        raise CheckpointError(f'--kind {kind!r}: use one of {", ".join(KINDS)}')
    if kind != 'vitpose' and expert is not None:
        raise CheckpointError('--expert only applies to --kind vitpose')
    body = KINDS[kind]
    if kind == 'vitpose':
        sd = join_experts(sd, expert)
    prefix = _backbone_prefix(sd, kind)
    dims = _dims(sd, prefix)
    rows = keymap.vit_rows(**dims, torch_prefix=prefix)
    has_disc = body is not None and any(k.startswith('discriminator.') for k in sd)
    head_size = None
    if body is not None:
        head_size = keymap.head_size_from_state_dict(sd, keymap.HEAD_PREFIX[body])
        rows += keymap.head_rows(body, dims['width'], head_size)
        rows += keymap.discriminator_rows(body) if has_disc else ()
    left_behind = _LEFT_BEHIND[kind]
    variables = keymap.from_torch(
        sd,
        rows,
        what=f'--kind {kind}',
        ignore=lambda k: k.startswith(left_behind),
        hint=_hint(sd, kind),
    )
    meta = {
        'kind': body,
        'source_kind': kind,
        'vit': dims,
        'vit_size': size_name(dims),
        'head_size': head_size,
        'parts': ['backbone']
        + (['head'] if body else [])
        + (['discriminator'] if has_disc else []),
        'vitpose_expert': expert,
    }
    return variables, meta


def import_checkpoint(path: str, kind: str, expert: int | None = None):
    """File -> (variables, meta); meta['source'] is the file's absolute path."""
    variables, meta = import_state_dict(state_dict_of(read_torch_file(path), path), kind, expert)
    meta['source'] = os.path.abspath(path)
    return variables, meta


# ------------------------------------------------------------------------------ CLI


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--ckpt', required=True, help='PyTorch checkpoint (.ckpt / .pth)')
    ap.add_argument('--kind', required=True, choices=list(KINDS), help='what the checkpoint is')
    ap.add_argument('--out', required=True, help='output directory (must not exist)')
    ap.add_argument(
        '--expert', type=int, default=None, help='ViTPose+ only: the expert joined with fc2'
    )
    a = ap.parse_args(argv)
    from extpose_jax.train import checkpoint  # the training stack, only when writing

    if os.path.exists(a.out):
        raise FileExistsError(f'--out {a.out} exists; choose a new directory')
    variables, meta = import_checkpoint(a.ckpt, a.kind, a.expert)
    checkpoint.save_variables(a.out, variables, meta)
    n = sum(v.size for v in jax.tree.leaves(variables))
    print(
        f'{a.ckpt} ({a.kind}): {n:,} numbers in {", ".join(meta["parts"])}; '
        f'ViT {meta["vit_size"] or meta["vit"]} -> {a.out}'
    )
    return meta


if __name__ == '__main__':
    errors.guard(main)
