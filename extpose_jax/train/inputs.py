"""What a run will read, checked before any model is built or any output written.

A wrong records root or a missing body-model file used to surface at the first batch, after the
model was built (minutes at ViT-H) and the workdir created; here it costs a few index reads and
fails with one line naming the config field and the path.

    inputs.check(cfg, body_models_dir, records_root)   # raises InputError
"""

from __future__ import annotations

import os

from data_pipelines import known_datasets, pipeline, records, shards
from extpose_jax import body_models, errors
from extpose_jax.train import config as config_lib
from extpose_jax.train import eval_protocols


class InputError(errors.UserError):
    """A configured input that is missing or empty; the message names the field and the path."""


def _body_model_files(kind: str, evaluate: bool) -> list:
    """The body_models.MODEL_FILES the run loads: the model predictions go through, HMR 2.0's
    extra joints, and 3DPW's gendered ground-truth bodies when evaluating."""
    if kind == 'mano':
        return ['MANO_RIGHT']
    genders = ('NEUTRAL', 'MALE', 'FEMALE') if evaluate else ('NEUTRAL',)
    return [f'SMPL_{g}' for g in genders] + ['SMPL_to_J19']


def check_body_models(cfg, body_models_dir: str) -> None:
    field = 'body_models'
    if not os.path.isdir(body_models_dir):
        raise InputError(f'config.{field}={body_models_dir!r}: no such directory')
    for name in _body_model_files(cfg.model.kind, bool(config_lib.evaluators(cfg))):
        try:
            body_models.find_model_file(body_models_dir, name)
        except body_models.ModelFileNotFound as e:
            raise InputError(
                f'config.{field}={body_models_dir!r}: {e}; model.kind={cfg.model.kind!r} needs it'
            ) from None


def check_split(records_root: str, name: str, split: str, field: str):
    """-> the reader of `name`/`split`; InputError naming `field` if it has no records."""
    spec = pipeline.DatasetSpec(name, split=split)
    try:
        reader = pipeline.open_reader(records_root, spec)
    except (ValueError, KeyError, OSError, records.RecordError) as e:
        why = e.args[0] if isinstance(e, KeyError) and e.args else e  # KeyError quotes its text
        raise InputError(f'config.{field}: {errors.one_line(why)}') from None
    if len(reader) == 0:
        raise InputError(f'config.{field}: split {split!r} of {reader.data_dir} has no records')
    return reader


def check_mixture(cfg, records_root: str) -> None:
    """Every dataset the run trains on (data.datasets less data.drop) has a records folder; else
    one InputError naming, for each missing one, the folder looked in and the command that makes
    it, then the flag that trains without them all (a paper mixture lists up to 11 datasets: one
    message spares a rerun per missing one)."""
    missing = [
        name
        for name, _ in config_lib.mixture(cfg)
        if not os.path.isfile(os.path.join(records_root, name, shards.DATASET_INFO))
    ]
    if not missing:
        return
    each = '; '.join(
        f'{name!r} in {os.path.join(records_root, name)} '
        f'(make them with: {known_datasets.convert_command(name, records_root)})'
        for name in missing
    )
    if len(missing) == len(config_lib.mixture(cfg)):  # dropping them all cannot be the way out
        found = sorted(
            d
            for d in os.listdir(records_root)
            if os.path.isfile(os.path.join(records_root, d, shards.DATASET_INFO))
        )
        way_out = (
            f'none of them is there (it holds {found}): is config.data.root={records_root!r} '
            'the records root?'
        )
    else:
        drop = ','.join(config_lib.dropped(cfg) + tuple(missing))
        way_out = (
            f'or train without {"it" if len(missing) == 1 else "them"}: --config.data.drop={drop}'
        )
    raise InputError(f'config.data.datasets: no records for {each}; {way_out}')


def check(cfg, body_models_dir: str, records_root: str) -> None:
    """Every training dataset has cfg.data.split with records (and every active evaluator's
    dataset its split, with detections where the evaluator's 2D input is 'detections'); the
    body-model folder has what cfg needs."""
    if not os.path.isdir(records_root):
        raise InputError(f'config.data.root={records_root!r}: no such directory')
    check_mixture(cfg, records_root)
    for name, _ in config_lib.mixture(cfg):
        check_split(records_root, name, cfg.data.split, 'data.datasets')
    for ev in config_lib.evaluators(cfg):
        reader = check_split(records_root, ev.dataset, ev.split, f'evaluators.{ev.name}')
        if config_lib.eval_kwargs(cfg, ev)['pose_source'] == 'detections':
            eval_protocols.require_detections(reader, range(len(reader)), ev.name)
    check_body_models(cfg, body_models_dir)
