"""Shared fixtures: everything a test needs is generated here, nothing is downloaded."""

import contextlib
import fcntl
import os

import pytest
from converter_raw import raw  # noqa: F401  (the converter tests' raw data: one copy per run)


@contextlib.contextmanager
def _run_dir(tmp_path_factory, name):
    """-> a directory that this test run's xdist workers share (their base temps' parent), held
    under a file lock: the first worker builds what the session fixtures need, the others wait
    and find it built."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get('PYTEST_XDIST_WORKER'):
        base = base.parent
    with open(base / f'{name}.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield base / name


@pytest.fixture(scope='session')
def body_model_dir(tmp_path_factory):
    """Procedural SMPL/MANO-format model files in the official layout (synthetic/body_files.py)."""
    from data_pipelines.synthetic import body_files

    with _run_dir(tmp_path_factory, 'body_models') as out:
        done = out.parent / 'body_models.written'  # beside it: tests list the folder
        if not done.exists():
            body_files.write_body_models(str(out), seed=0)
            done.touch()
    return out


@pytest.fixture(scope='session')
def synthetic_default(tmp_path_factory):
    """The built-in synthetic default (raw 3DPW / FreiHAND / HInt + records), ~25 s once.

    -> {'body_models': dir, '3dpw': records dir, 'freihand': ..., 'hint': ..., 'root': records root}
    """
    from data_pipelines.synthetic import default_data

    # One build per run (ensure builds only what is missing); the train jobs' compilation cache
    # beside it (tests/test_train_loop.py's job_env) is shared too.
    with _run_dir(tmp_path_factory, 'synthetic_default') as out:
        paths = default_data.ensure(str(out), seed=0, log=lambda *_: None)
    return {**paths, 'root': os.path.dirname(paths['3dpw'])}
