"""Shared fixtures: everything a test needs is generated here, nothing is downloaded."""

import pytest


@pytest.fixture(scope='session')
def body_model_dir(tmp_path_factory):
    """Procedural SMPL/MANO-format model files in the official layout (synthetic/body_files.py)."""
    from data_pipelines.synthetic import body_files

    out = tmp_path_factory.mktemp('body_models')
    body_files.write_body_models(str(out), seed=0)
    return out


@pytest.fixture(scope='session')
def synthetic_default(tmp_path_factory):
    """The built-in synthetic default (raw 3DPW / FreiHAND / HInt + records), ~25 s once.

    -> {'body_models': dir, '3dpw': records dir, 'freihand': ..., 'hint': ..., 'root': records root}
    """
    import os

    from data_pipelines.synthetic import default_data

    paths = default_data.ensure(
        str(tmp_path_factory.mktemp('synthetic_default')), seed=0, log=lambda *_: None
    )
    return {**paths, 'root': os.path.dirname(paths['3dpw'])}
