"""Shared fixtures: everything a test needs is generated here, nothing is downloaded."""

import contextlib
import fcntl
import os

import pytest
from converter_raw import raw  # noqa: F401  (the converter tests' raw data: one copy per run)

# The longest files first (wall seconds on a lightly loaded 2-core machine, from --durations): with
# `--dist loadfile --no-loadscope-reorder` (tests/run.sh) xdist hands files out in this order, so
# the long ones overlap and the short ones fill the gaps at the end instead of one long file
# running alone. xdist's own reorder sorts by test count, which puts these few-test files last.
_LONGEST_FIRST = (
    'test_train_loop.py',  # ~340 s: subprocess training jobs, 2-process runs
    'test_adversarial.py',  # ~300
    'test_overfit.py',  # ~260: 160 training steps in a subprocess
    'test_train_failures.py',  # ~160
    'test_train_sharding.py',  # ~150
    'test_gpu_suite.py',  # ~70: the GPU suite's dry mode compiles a bf16 train step
    'test_infer_cli.py',  # ~140: a 2-step training job, then inference runs that compile
    'test_train_tar_mixture.py',  # ~110: a 2-step video run on 3DPW + tar images, evaluated
    'test_baselines.py',  # ~130
    'test_ablations.py',  # ~80: the harness' quick mode, 3 short trainings
    'test_extpose.py',  # ~100
    'test_evaluators.py',  # ~90
    'test_losses.py',  # ~90
    'test_preflight.py',  # ~80
    'test_evaluate_sharded.py',  # ~75
    'test_torch_mirror.py',  # ~70
    'test_vit.py',  # ~70
    'test_cli_errors.py',  # ~65 (most of it waiting for the synthetic default)
    'test_collectives.py',  # ~50 (mostly a process sleeping 40 s)
    'test_convert.py',  # ~50
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


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

    -> {'body_models': dir, '3dpw': records dir, 'freihand': ..., 'hint': ..., 'root': records root,
        'demo': the demo video folder (demo_video.py)}
    """
    from data_pipelines.synthetic import default_data

    # One build per run (ensure builds only what is missing); the train jobs' compilation cache
    # beside it (tests/test_train_loop.py's job_env) is shared too.
    with _run_dir(tmp_path_factory, 'synthetic_default') as out:
        # tiny: the world the tests' counts are written for; one process beside xdist's workers
        paths = default_data.ensure(str(out), seed=0, size='tiny', workers=1, log=lambda *_: None)
    return {**paths, 'root': os.path.dirname(paths['3dpw'])}
