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
    import fcntl
    import os

    from data_pipelines.synthetic import default_data

    # One build per run, not per xdist worker: the workers share their base temp's parent (and
    # with it the train jobs' compilation cache, tests/test_train_loop.py's job_env).
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent
    with open(base / 'synthetic_default.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        paths = default_data.ensure(str(base / 'synthetic_default'), seed=0, log=lambda *_: None)
    return {**paths, 'root': os.path.dirname(paths['3dpw'])}
