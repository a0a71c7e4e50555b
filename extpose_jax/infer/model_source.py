"""Which model to run, from what a checkpoint records about itself.

    cfg, variables, description = load(path, base_config, overrides)

`path` is
  - a training workdir (run_train.py's): the run's own config is in the checkpoint; its latest
    step is used;
  - a variables directory of an imported HMR 2.0 / HaMeR checkpoint (convert.from_torch): its
    meta gives the kind (SMPL / MANO), the ViT and head sizes; the model is theirs, an image
    model on RGB alone (model.arch = 'rgb_only', T = 1);
  - anything else, a backbone-only import (ViTPose) included, is refused with the reason.

`base_config(kind)` makes the project's config for an imported checkpoint (run_infer.py passes
configs/common.base), so the settings a checkpoint does not record are the project's defaults.
Overrides ('model.attention=dense', 'data.num_frames=8', ...) are applied last, typed like the
field they replace; the model's arch and sizes are the checkpoint's and cannot be overridden
(its variables would not fit).
"""

from __future__ import annotations

import os

import ml_collections

from extpose_jax import errors
from extpose_jax.train import checkpoint as ckpt_lib
from extpose_jax.train import config as config_lib

# Fields the weights fix: overriding one would build a model the variables do not fit.
FIXED = ('model.kind', 'model.size', 'model.head_size', 'model.arch', 'model.pose_form')


class CheckpointKindError(errors.UserError):
    """A checkpoint that holds no runnable pose model (e.g. a backbone without a head)."""


def _apply_overrides(cfg, overrides, path: str):
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    for item in overrides or ():
        key, sep, value = item.partition('=')
        if not sep:
            raise errors.UserError(
                f'--set {item!r}: expected field=value, e.g. model.dtype=float32'
            )
        if key in FIXED:
            raise errors.UserError(
                f'--set {key}: fixed by the checkpoint {path} (its weights are that model)'
            )
        node, *parents = cfg, key.split('.')
        *parents, leaf = parents
        for p in parents:
            if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
                raise errors.UserError(f'--set {key}: no config field {key!r}')
            node = node[p]
        if leaf not in node:
            raise errors.UserError(f'--set {key}: no config field {key!r}')
        old = node[leaf]
        if isinstance(old, bool):
            if value.lower() not in ('true', 'false', '1', '0'):
                raise errors.UserError(f'--set {key}={value}: expected true or false')
            new = value.lower() in ('true', '1')
        elif old is None:
            new = None if value.lower() == 'none' else value
        else:
            try:
                new = type(old)(value) if value.lower() != 'none' else None
            except ValueError:
                raise errors.UserError(
                    f'--set {key}={value}: expected {type(old).__name__}'
                ) from None
        node[leaf] = new
    return cfg


def _imported_config(meta: dict, base_config, path: str):
    kind, size = meta.get('kind'), meta.get('vit_size')
    if kind not in ('smpl', 'mano'):
        what = meta.get('source_kind') or 'unknown'
        raise CheckpointKindError(
            f'{path}: a {what} import with no pose head (parts {meta.get("parts")}); '
            'train a model from it (config.init.checkpoint) and run that'
        )
    if size is None:
        raise CheckpointKindError(
            f'{path}: its ViT ({meta.get("vit")}) is none of the sizes models/vit.py builds'
        )
    cfg = base_config(kind)
    cfg.model.size = size
    cfg.model.head_size = meta.get('head_size') or cfg.model.head_size
    cfg.model.arch = 'rgb_only'  # HMR 2.0 / HaMeR: one image, RGB alone
    cfg.model.dtype = 'float32'
    cfg.model.remat = False
    cfg.data.num_frames = 1
    return cfg


def load(path: str, base_config, overrides=()):
    """-> (config, host variables, one-line description of the checkpoint)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f'--checkpoint {path}: no such directory')
    if ckpt_lib.is_variables_dir(path):
        variables, meta = ckpt_lib.load_variables(path)
        cfg = _imported_config(meta, base_config, path)
        what = f'{meta.get("source_kind", "imported")} import of {meta.get("source", path)}'
    elif os.path.isdir(ckpt_lib.checkpoint_dir(path)):
        variables, cfg, step = ckpt_lib.restore_variables(path)
        if cfg is None:
            raise CheckpointKindError(f'{path}: its checkpoint records no config')
        what = f'training run {path}, step {step}'
    else:
        raise CheckpointKindError(
            f'--checkpoint {path}: neither a training workdir (checkpoints/) nor a variables '
            'directory (convert.from_torch output)'
        )
    cfg = _apply_overrides(cfg, overrides, path)
    # A model runs on what is here: no mesh, no gradients, one process's devices.
    config_lib.validate(cfg, check_paths=False)
    return cfg, variables, what
