"""Export ExtPose weights as an HMR 2.0 / HaMeR PyTorch checkpoint.

    python -m extpose_jax.convert.to_torch --workdir DIR --out PATH [--step N]

DIR is a training workdir (its latest orbax checkpoint, or --step) or a directory written by
from_torch / train.checkpoint.save_variables. PATH gets a Lightning-style checkpoint:

  {'state_dict': backbone.*, smpl_head.* | mano_head.* (with the init_* buffers),
                 discriminator.* when one was trained,
   'pytorch-lightning_version', 'epoch', 'global_step', 'extpose': meta}

with exactly upstream's keys, shapes and order (reference_state_dicts.json), so HMR 2.0's
load_hmr2 / HaMeR's load_hamer match every key of those prefixes; the smpl.* / mano.* body-model
buffers are not written (upstream loads non-strictly and builds them from the model files).
ExtPose adds no parameters: the mask is not a weight, so nothing else is needed.
The kind (SMPL / MANO) and the ViT's size are read off the tree itself. The file appears
whole or not at all.
"""

from __future__ import annotations

import collections
import os

from data_pipelines.atomic_file import atomic_write
from extpose_jax import errors
from extpose_jax.convert import keymap
from extpose_jax.models.discriminator import DISCRIMINATOR

# Lightning's load_from_checkpoint wants this entry and migrates files older than its targets;
# the pre-2.0 migrations read training-loop entries we do not write, and 2.0.0 skips them.
# (Which entries upstream's loaders need was not verified by running them.)
LIGHTNING_VERSION = '2.0.0'


def export_state_dict(variables) -> collections.OrderedDict:
    """{'params', 'constants'[, 'discriminator']} -> {torch key: numpy array} in upstream order.

    Arrays or jax.ShapeDtypeStructs (then only shapes are computed, nothing is allocated).
    """
    kind = keymap.kind_from_variables(variables)
    rows = keymap.model_rows(
        kind,
        keymap.dims_from_variables(variables),
        discriminator=DISCRIMINATOR in variables,
        head_size=keymap.head_size_from_variables(variables),
    )
    return keymap.to_torch(variables, rows, what=f'export ({kind})')


def write_checkpoint(path: str, state_dict, meta: dict | None = None, step: int = 0) -> None:
    """Atomically torch.save a Lightning-style checkpoint of the numpy state dict."""
    import torch

    obj = {
        'state_dict': collections.OrderedDict(
            (k, torch.from_numpy(v)) for k, v in state_dict.items()
        ),
        'pytorch-lightning_version': LIGHTNING_VERSION,
        'epoch': 0,
        'global_step': int(step),
        'extpose': dict(meta or {}),
    }
    atomic_write(path, lambda f: torch.save(obj, f))


def load_source(directory: str, step: int | None = None):
    """(variables, meta, step) from a training workdir or a variables directory."""
    from extpose_jax.train import checkpoint

    if not os.path.isdir(directory):
        raise FileNotFoundError(f'--workdir {directory}: no such directory')
    if checkpoint.is_variables_dir(directory):
        if step is not None:
            raise errors.UserError(
                f'--step {step}: {directory} is a variables directory, not a training workdir'
            )
        variables, meta = checkpoint.load_variables(directory)
        return variables, dict(meta), 0
    variables, cfg, step = checkpoint.restore_variables(directory, step)
    meta = {'workdir': os.path.abspath(directory)}
    if cfg is not None:
        meta['config'] = cfg.to_json()
    return variables, meta, int(step or 0)


def main(argv=None) -> collections.OrderedDict:
    ap = errors.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--workdir', required=True, help='training workdir or from_torch output')
    ap.add_argument('--out', required=True, help='output .ckpt path')
    ap.add_argument('--step', type=int, default=None, help='checkpoint step (default: latest)')
    a = ap.parse_args(argv)
    variables, meta, step = load_source(a.workdir, a.step)
    state_dict = export_state_dict(variables)
    meta.update(step=int(step), kind=keymap.kind_from_variables(variables))
    write_checkpoint(a.out, state_dict, meta, step)
    n = sum(v.size for v in state_dict.values())
    print(f'{a.workdir} (step {step}): {len(state_dict)} tensors, {n:,} numbers -> {a.out}')
    return state_dict


if __name__ == '__main__':
    errors.guard(main)
