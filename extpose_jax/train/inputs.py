"""What a run will read, checked before any model is built or any output written.

A wrong records root or a missing body-model file used to surface at the first batch, after the
model was built (minutes at ViT-H) and the workdir created; here it costs a few index reads and
fails with one line naming the config field and the path.

    inputs.check(cfg, body_models_dir, records_root)   # raises InputError
"""
from __future__ import annotations

import os

from data_pipelines import convert_common, pipeline, records
from extpose_jax import body_models, errors


class InputError(errors.UserError):
    """A configured input that is missing or empty; the message names the field and the path."""


def _body_model_files(kind: str, evaluate: bool) -> list:
    """(what, resolver) per file the run loads: the model predictions go through, HMR 2.0's
    extra joints, and 3DPW's gendered ground-truth bodies when evaluating."""
    if kind == 'mano':
        return [('MANO_RIGHT', lambda d: body_models._resolve(d, ['MANO_RIGHT']))]
    genders = ('neutral', 'male', 'female') if evaluate else ('neutral',)
    files = [(f'SMPL_{g.upper()}', lambda d, g=g: body_models._resolve(d, [f'SMPL_{g.upper()}']))
             for g in genders]
    return files + [('SMPL_to_J19.pkl', lambda d: convert_common._find_file(d, ['SMPL_to_J19.pkl']))]


def check_body_models(cfg, body_models_dir: str) -> None:
    field = 'body_models'
    if not os.path.isdir(body_models_dir):
        raise InputError(f'config.{field}={body_models_dir!r}: no such directory')
    for what, find in _body_model_files(cfg.model.kind, cfg.train.eval_every != 0):
        try:
            find(body_models_dir)
        except FileNotFoundError:
            raise InputError(f'config.{field}={body_models_dir!r}: no {what} model file in it '
                             f'(nor in its smpl/ or mano/ folder); model.kind={cfg.model.kind!r} '
                             'needs it') from None


def check_split(records_root: str, name: str, split: str, field: str) -> int:
    """-> the number of records of `name`/`split`; InputError naming `field` if there are none."""
    spec = pipeline.DatasetSpec(name, split=split)
    try:
        reader = pipeline.open_reader(records_root, spec)
    except (ValueError, KeyError, OSError, records.RecordError) as e:
        why = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError quotes its text
        raise InputError(f'config.{field}: {errors.one_line(why)}') from None
    if len(reader) == 0:
        raise InputError(f'config.{field}: split {split!r} of {reader.data_dir} has no records')
    return len(reader)


def check(cfg, body_models_dir: str, records_root: str) -> None:
    """Every training dataset has cfg.data.split with records (and the evaluation dataset its
    cfg.eval.split, when the run evaluates); the body-model folder has what cfg needs."""
    if not os.path.isdir(records_root):
        raise InputError(f'config.data.root={records_root!r}: no such directory')
    for name, _ in cfg.data.datasets:
        check_split(records_root, name, cfg.data.split, 'data.datasets')
    if cfg.train.eval_every != 0:
        check_split(records_root, cfg.eval.dataset, cfg.eval.split, 'eval.dataset')
    check_body_models(cfg, body_models_dir)
