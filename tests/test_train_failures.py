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

from data_pipelines import records
from extpose_jax.train import checkpoint, inputs, writers


def _run(data, workdir, *extra, root=None):
    cmd = [sys.executable, os.path.join(REPO, 'tests', 'train_job.py'), '--workdir', str(workdir),
           '--data', root or data['root'], '--body_models', data['body_models'], '--steps', '6',
           *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=job_env(data),
                          timeout=900)
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


def test_nonfinite_step_stops_the_run_and_keeps_the_last_good_checkpoint(synthetic_default,
                                                                          tmp_path):
    # log_every 5: step 3's flag is read one step late (at step 4), as on an accelerator.
    rc, out, err = _run(synthetic_default, tmp_path, '--nan_at', '3',
                        '--set', 'train.log_every=5')
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
    reader = records.RecordReader(root / '3dpw', 'train')
    first = None
    for i in range(0, len(reader), 3):
        shard = int(np.searchsorted(reader._starts, i, side='right')) - 1
        local = i - int(reader._starts[shard])
        offset = int(reader._offsets[shard][local]) + 20   # inside the payload
        with open(reader.paths[shard], 'r+b') as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        first = first or (reader.paths[shard], local)
    return str(root), first


def test_corrupt_record_stops_training_naming_shard_and_record(synthetic_default, corrupt_root,
                                                               tmp_path):
    root, _ = corrupt_root
    rc, out, err = _run(synthetic_default, tmp_path / 'w', root=root)
    assert rc == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and 'Traceback' not in err, err
    assert 'corrupt record' in lines[0] and '3dpw-train.tfrecord' in lines[0], lines[0]


def test_skip_options_finish_and_count_what_they_skipped(synthetic_default, corrupt_root,
                                                         tmp_path):
    """train.skip_nonfinite and data.skip_corrupt together (one job: each is a minute on CPU)."""
    root, _ = corrupt_root
    rc, out, err = _run(synthetic_default, tmp_path, '--nan_at', '3', '--set',
                        'train.skip_nonfinite=True,data.skip_corrupt=True', root=root)
    assert rc == 0, out + err
    rows = _strict_rows(tmp_path)
    assert [r['step'] for r in rows if r.get('skipped_nonfinite')] == [3]
    assert sum(r.get('skipped_nonfinite', 0) for r in rows) == 1
    assert next(r for r in rows if r['step'] == 3)['loss'] is None   # NaN written as null
    skipped = sum(r.get('skipped_records', 0) for r in rows)
    assert skipped >= 1 and all('skipped_records' in r for r in rows if 'loss' in r)
    assert _finite_params(tmp_path) == (6, True)


# ------------------------------------------------------------------ inputs, before any model


def _small():
    import importlib
    cfg = importlib.import_module('configs.image').get_config('small')
    cfg.train.eval_every = -1
    return cfg


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


def test_empty_records_root_fails_before_the_model(synthetic_default, no_model, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    _train_fails(_small(), tmp_path / 'w', synthetic_default['body_models'], str(empty),
                 r"config\.data\.datasets: unknown dataset '3dpw'.*" + str(empty))


def test_missing_split_fails_before_the_model(synthetic_default, no_model, tmp_path):
    cfg = _small()
    cfg.data.split = 'holdout'
    _train_fails(cfg, tmp_path / 'w', synthetic_default['body_models'], synthetic_default['root'],
                 r"config\.data\.datasets: split 'holdout' not in .*dataset_info\.json")


def test_missing_eval_split_fails_before_the_model(synthetic_default, no_model, tmp_path):
    cfg = _small()
    cfg.eval.split = 'heldout'
    _train_fails(cfg, tmp_path / 'w', synthetic_default['body_models'], synthetic_default['root'],
                 r"config\.eval\.dataset: split 'heldout'")


def test_split_without_records_fails_before_the_model(synthetic_default, no_model, tmp_path):
    root = tmp_path / 'records'
    shutil.copytree(synthetic_default['root'], root)
    info_path = root / '3dpw' / records.DATASET_INFO
    info = json.loads(info_path.read_text())
    info['splits']['train'].update(shards=[], num_records=0)   # a consistent, empty split
    info_path.write_text(json.dumps(info))
    _train_fails(_small(), tmp_path / 'w', synthetic_default['body_models'], str(root),
                 r"config\.data\.datasets: split 'train' of .*3dpw has no records")


@pytest.mark.parametrize('missing', ['SMPL_to_J19.pkl', 'SMPL_FEMALE'])
def test_missing_body_model_file_fails_before_the_model(synthetic_default, no_model, tmp_path,
                                                        missing):
    bm = tmp_path / 'bm'
    shutil.copytree(synthetic_default['body_models'], bm)
    for d, _, files in os.walk(bm):
        for f in files:
            if f.startswith(missing):
                os.remove(os.path.join(d, f))
    _train_fails(_small(), tmp_path / 'w', str(bm), synthetic_default['root'],
                 rf"config\.body_models=.*no {missing}")


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
