"""Which converter makes each dataset the paper configs name, so a missing one can be made.

A run that lists a dataset whose records are not there stops before training
(extpose_jax/train/inputs.py) and prints `convert_command(name, root)`: the exact command when
the dataset is listed here, a generic one otherwise (a user's own data).

Names are the records folders the converters write: `--out <root>/<name>` (the tar and npz
converters name a dataset after its output folder, convert_webdataset.default_name). Where the
spec names the upstream tar folder (datasets.md §4.1: h36m-train, coco-train-2014-pruned,
aic-train, freihand-train) the name is that folder's, '-' -> '_'. For the other upstream datasets
the spec gives no folder name: the name is ours and the command leaves the folder as a
placeholder.
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Source:
    label: str  # what the papers call it
    converter: str  # the data_pipelines module that makes its records
    kind: str = ''  # convert_webdataset --kind: 'hmr2' | 'hamer'
    folder: str = ''  # the upstream dataset_tars/<folder>, where the spec names it


_TARS = {'hmr2': '<hmr2_training_data>/dataset_tars', 'hamer': '<hamer_training_data>/dataset_tars'}


def _tars(label: str, kind: str, folder: str = '') -> Source:
    return Source(label, 'convert_webdataset', kind, folder)


SOURCES = {
    # The project's raw-download converters (README "Datasets").
    '3dpw': Source('3DPW', 'convert_3dpw'),
    'freihand': Source('FreiHAND', 'convert_freihand'),
    'hint': Source('HInt', 'convert_hint'),
    # HMR 2.0's body tars (reference_models.md §5.4).
    'h36m_train': _tars('Human3.6M', 'hmr2', 'h36m-train'),
    'mpii_train': _tars('MPII', 'hmr2'),
    'coco_train_2014_pruned': _tars('COCO 2014', 'hmr2', 'coco-train-2014-pruned'),
    'coco_vitpose_train': _tars('COCO-ViTPose', 'hmr2'),
    'mpi_inf_train': _tars('MPI-INF-3DHP', 'hmr2'),
    'ava_train': _tars('AVA', 'hmr2'),
    'aic_train': _tars('AI Challenger', 'hmr2', 'aic-train'),
    'insta_train': _tars('InstaVariety', 'hmr2'),
    # HaMeR's hand tars (FreiHAND comes from its raw download above: its test split is the
    # freihand evaluator's, so the one download serves both).
    'freihand_train': _tars('FreiHAND', 'hamer', 'freihand-train'),
    'interhand26m_train': _tars('InterHand2.6M', 'hamer'),
    'mtc_train': _tars('MTC', 'hamer'),
    'rhd_train': _tars('RHD', 'hamer'),
    'coco_wholebody_train': _tars('COCO-WholeBody', 'hamer'),
    'halpe_train': _tars('Halpe', 'hamer'),
    'mpii_nzsl_train': _tars('MPII-NZSL', 'hamer'),
    'ho3d_train': _tars('HO3D', 'hamer'),
    'h2o3d_train': _tars('H2O3D', 'hamer'),
    'dexycb_train': _tars('DexYCB', 'hamer'),
}

_RAW_ARGS = {
    'convert_3dpw': '--root <3DPW download> --body_models <body models>',
    'convert_freihand': '--root <FreiHAND download> --body_models <body models>',
    'convert_hint': '--root <HInt download>',
}


def convert_command(name: str, records_root: str) -> str:
    """The command that writes `name`'s records where a run with `records_root` looks."""
    out = os.path.join(records_root, name)
    source = SOURCES.get(name)
    if source is None:  # not one of ours: the two routes for HMR 2.0 / HaMeR-format data
        return (
            'python -m data_pipelines.convert_webdataset --kind hmr2|hamer --root <its tar folder> '
            f'--out {out} (or data_pipelines.convert_hmr_npz for npz + images)'
        )
    if source.converter != 'convert_webdataset':
        return (
            f'python -m data_pipelines.{source.converter} {_RAW_ARGS[source.converter]} --out {out}'
        )
    folder = source.folder or f'<the {source.label} folder>'
    return (
        f'python -m data_pipelines.convert_webdataset --kind {source.kind} '
        f'--root {_TARS[source.kind]}/{folder} --out {out}'
    )
