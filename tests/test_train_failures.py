"""Runs that meet bad numbers or bad inputs: a non-finite step stops the run (or is skipped and
counted), a corrupt record stops it naming shard and record (or is skipped and counted), and a
wrong records root or body-model folder fails before any model or output exists.

The jobs are tests/train_job.py (tiny ViT, T = 1, batch 2) on the synthetic default.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_train_loop import REPO, job_env

from data_pipelines import record_reader, shards
from extpose_jax.train import checkpoint, inputs, writers


def _run(data, workdir, *extra, root=None):
    cmd = [
        sys.executable,
        os.path.join(REPO, 'tests', 'train_job.py'),
        '--workdir',
        str(workdir),
        '--data',
        root or data['root'],
        '--body_models',
        data['body_models'],
        '--steps',
        '6',
        *extra,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd=REPO, env=job_env(data), timeout=900
    )
    return proc.returncode, proc.stdout, proc.stderr


def _strict_rows(workdir):
    """metrics.jsonl parsed as strict JSON: NaN / Infinity are refused."""

    def refuse(name):
        raise ValueError(f'non-JSON constant {name} in metrics.jsonl')

    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [json.loads(line, parse_constant=refuse) for line in f if line.strip()]


def _finite_params(workdir):
    variables, _, step = checkpoint.restore_variables(str(workdir))
    import jax

    return step, all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(variables))


@pytest.mark.slow
def test_nonfinite_step_stops_the_run_and_keeps_the_last_good_checkpoint(
    synthetic_default, tmp_path
):
    # log_every 5: step 3's flag is read one step late (at step 4), as on an accelerator.
    rc, out, err = _run(synthetic_default, tmp_path, '--nan_at', '3', '--set', 'train.log_every=5')
    assert rc == 3, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert 'step 3:' in lines[0] and 'not finite' in lines[0], lines[0]
    assert 'Last good checkpoint: step 2' in lines[0], lines[0]
    step, finite = _finite_params(tmp_path)
    assert step == 2 and finite
    _strict_rows(tmp_path)
    # The same command without the bad batch resumes from step 2 and finishes.
    rc, out, err = _run(synthetic_default, tmp_path)
    assert rc == 0, out + err
    assert 'resumed' in out and 'RESULT 6 False' in out, out
    assert _finite_params(tmp_path) == (6, True)


@pytest.fixture
def corrupt_root(synthetic_default, tmp_path):
    """A copy of the records with every 3rd record of 3DPW's train split corrupted (one flipped
    payload byte: the CRC check catches it); -> (root, the first corrupt shard and index)."""
    root = tmp_path / 'records'
    shutil.copytree(synthetic_default['root'], root)
    reader = record_reader.RecordReader(root / '3dpw', 'train')
    first = None
    for i in range(0, len(reader), 3):
        shard = int(np.searchsorted(reader._starts, i, side='right')) - 1
        local = i - int(reader._starts[shard])
        offset = int(reader._offsets[shard][local]) + 20  # inside the payload
        with open(reader.paths[shard], 'r+b') as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        first = first or (reader.paths[shard], local)
    return str(root), first


@pytest.mark.slow
def test_corrupt_record_stops_training_naming_shard_and_record(
    synthetic_default, corrupt_root, tmp_path
):
    root, _ = corrupt_root
    rc, out, err = _run(synthetic_default, tmp_path / 'w', root=root)
    assert rc == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert 'corrupt record' in lines[0] and '3dpw-train.tfrecord' in lines[0], lines[0]


@pytest.mark.slow
def test_skip_corrupt_finishes_and_counts_skipped_records(
    synthetic_default, corrupt_root, tmp_path
):
    root, _ = corrupt_root
    rc, out, err = _run(synthetic_default, tmp_path, '--set', 'data.skip_corrupt=True', root=root)
    assert rc == 0, out + err
    rows = _strict_rows(tmp_path)
    skipped = sum(r.get('skipped_records', 0) for r in rows)
    assert skipped >= 1 and all('skipped_records' in r for r in rows if 'loss' in r)
    assert _finite_params(tmp_path) == (6, True)


# ------------------------------------------------------------------ the step and the loop's watch


def _dense_step(skip: bool):
    """A one-layer model through the real make_train_step (compiles in a second)."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from extpose_jax.train import sharding, state

    model, tx = nn.Dense(3), optax.adamw(1e-2)
    mesh = sharding.make_mesh({'data': 1}, devices=jax.devices()[:1])
    st, sh = state.create_train_state(model, tx, jax.random.PRNGKey(0), (np.zeros((1, 4)),), mesh)

    def loss_fn(variables, batch, rng):
        return jnp.mean((model.apply(variables, batch['x']) - batch['y']) ** 2), {}

    step = state.make_train_step(
        loss_fn, tx, mesh, sh, sharding.batch_sharding(mesh), skip_nonfinite=skip
    )
    return st, step


@pytest.mark.parametrize('skip', [False, True])
def test_step_reports_finiteness_and_skips_a_nonfinite_update_when_asked(skip):
    import jax

    st, step = _dense_step(skip)
    good = {'x': np.ones((2, 4), np.float32), 'y': np.zeros((2, 3), np.float32)}
    bad = {'x': good['x'], 'y': np.full((2, 3), np.nan, np.float32)}
    before = jax.device_get(st)
    st, m = step(st, bad, jax.random.PRNGKey(1))
    assert not bool(m['finite']) and int(st.step) == 1
    after = jax.device_get(st)
    same = [
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(before.params))
    ]
    if skip:  # params and Adam moments untouched: the next good step is the first real one
        assert all(same)
        assert all(
            np.array_equal(a, b)
            for a, b in zip(jax.tree.leaves(after.opt_state), jax.tree.leaves(before.opt_state))
        )
        st, m = step(st, good, jax.random.PRNGKey(1))
        assert bool(m['finite'])
        assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(st.params)))
    else:  # the update went through: the loop must stop the run before saving it
        assert not any(np.isfinite(x).all() for x in jax.tree.leaves(after.params))


class _Checkpoints:
    directory = '/ckpt'

    def latest_step(self):
        return 4


def test_divergence_watch_reads_late_counts_and_stops():
    from extpose_jax import errors
    from extpose_jax.train import loop

    flags = {1: True, 2: False, 3: True, 4: False}

    def metrics(step):
        return {'finite': np.bool_(flags[step]), 'loss': np.float32(np.nan), 'grad_norm': 1.0}

    watch = loop._Divergence(True, _Checkpoints())
    for step in (1, 2, 3):
        watch.add(step, metrics(step))
    assert watch.take() == 1  # step 2, read when step 3 arrived
    watch.add(4, metrics(4))
    watch.flush()
    assert watch.take() == 1 and watch.take() == 0
    watch = loop._Divergence(False, _Checkpoints())
    watch.add(1, metrics(1))
    watch.add(2, metrics(2))  # nothing read yet for step 2: the device may run ahead
    with pytest.raises(errors.Diverged, match=r'step 2: .*not finite.*step 4 in /ckpt'):
        watch.flush()


# ------------------------------------------------------------------ inputs, before any model


def _small():
    import importlib

    return importlib.import_module('configs.image').get_config('small')


@pytest.fixture
def no_model(monkeypatch):
    """Building the task (body models, model) fails the test: the check must come first."""
    from extpose_jax.train import task as task_lib

    def refuse(*a, **k):
        raise AssertionError('the model was built before the inputs were checked')

    monkeypatch.setattr(task_lib, 'Task', refuse)


def _train_fails(cfg, workdir, body_models, root, match):
    from extpose_jax.train import loop

    with pytest.raises(inputs.InputError, match=match):
        loop.train(cfg, str(workdir), body_models, root, log=lambda *_: None)
    assert not os.path.exists(workdir), 'a failed check left a workdir behind'


@pytest.mark.slow
def test_empty_records_root_fails_before_the_model(synthetic_default, no_model, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    _train_fails(
        _small(),
        tmp_path / 'w',
        synthetic_default['body_models'],
        str(empty),
        r"config\.data\.datasets: no records for '3dpw' in " + str(empty),
    )


@pytest.mark.slow
def test_missing_split_fails_before_the_model(synthetic_default, no_model, tmp_path):
    cfg = _small()
    cfg.data.split = 'holdout'
    _train_fails(
        cfg,
        tmp_path / 'w',
        synthetic_default['body_models'],
        synthetic_default['root'],
        r"config\.data\.datasets: split 'holdout' not in .*dataset_info\.json",
    )


@pytest.mark.slow
def test_missing_eval_split_fails_before_the_model(synthetic_default, no_model, tmp_path):
    cfg = _small()
    cfg.evaluators['pw3d'].split = 'heldout'
    _train_fails(
        cfg,
        tmp_path / 'w',
        synthetic_default['body_models'],
        synthetic_default['root'],
        r"config\.evaluators\.pw3d: split 'heldout'",
    )


@pytest.mark.slow
def test_split_without_records_fails_before_the_model(synthetic_default, no_model, tmp_path):
    root = tmp_path / 'records'
    shutil.copytree(synthetic_default['root'], root)
    info_path = root / '3dpw' / shards.DATASET_INFO
    info = json.loads(info_path.read_text())
    info['splits']['train'].update(shards=[], num_records=0)  # a consistent, empty split
    info_path.write_text(json.dumps(info))
    _train_fails(
        _small(),
        tmp_path / 'w',
        synthetic_default['body_models'],
        str(root),
        r"config\.data\.datasets: split 'train' of .*3dpw has no records",
    )


@pytest.mark.slow
@pytest.mark.parametrize('missing', ['SMPL_to_J19.pkl', 'SMPL_FEMALE'])
def test_missing_body_model_file_fails_before_the_model(
    synthetic_default, no_model, tmp_path, missing
):
    bm = tmp_path / 'bm'
    shutil.copytree(synthetic_default['body_models'], bm)
    for d, _, files in os.walk(bm):
        for f in files:
            if f.startswith(missing):
                os.remove(os.path.join(d, f))
    _train_fails(
        _small(),
        tmp_path / 'w',
        str(bm),
        synthetic_default['root'],
        rf'config\.body_models=.*no {missing}',
    )


@pytest.mark.slow
def test_converter_without_j19_writes_nothing(synthetic_default, tmp_path):
    from data_pipelines import convert_3dpw

    bm = tmp_path / 'bm'
    shutil.copytree(synthetic_default['body_models'], bm)
    for d, _, files in os.walk(bm):
        if 'SMPL_to_J19.pkl' in files:
            os.remove(os.path.join(d, 'SMPL_to_J19.pkl'))
    raw = os.path.join(os.path.dirname(synthetic_default['root']), 'raw', '3dpw')
    out = tmp_path / 'out'
    with pytest.raises(FileNotFoundError, match='SMPL_to_J19.pkl'):
        convert_3dpw.convert(raw, str(bm), str(out), workers=0, quiet=True)
    assert not out.exists()


def test_writer_keeps_metrics_strict_json(tmp_path):
    w = writers.JsonlWriter(tmp_path / 'metrics.jsonl')
    w.write(1, {'loss': float('nan'), 'grad_norm': float('inf'), 'lr': 1e-4})
    w.close()
    assert _strict_rows(tmp_path) == [{'step': 1, 'loss': None, 'grad_norm': None, 'lr': 1e-4}]
