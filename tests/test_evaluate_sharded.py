"""Evaluation sharded like training (train/task.make_sharded_predict_fn, evaluate's process
shares, train/collectives.py, loop.run_eval): the same metrics on 1 device, 8 devices in one
process (with and without a 'tensor' axis) and 2 processes on localhost, each scoring only its
share. The jobs (tests/eval_job.py) run at once, in subprocesses: XLA's device count is fixed
when jax is imported. The merge of every protocol's sums (3DPW, FreiHAND, HInt) with simulated
processes is in test_evaluate_runs.py.
"""

import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from test_train_loop import _finish, _free_port, job_env

from extpose_jax.train import collectives
from extpose_jax.train import task as task_lib

# Evaluation on 8 simulated devices, in subprocesses that compile the full model.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = '1:data=1'
ONE_PROCESS = ('8:data=2,fsdp=4', '8:data=2,fsdp=2,tensor=2')
TWO_PROCESSES = '0:fsdp=2,tensor=2'  # 2 x 2 devices: the batch split over the processes, each
# process's rows held twice (tensor)
MAX_FRAMES = 16  # of the 3DPW test split: 8 windows, one global batch

# Tolerance, mm. The model runs in fp32 and on another mesh its matmuls are split differently
# (fsdp all-gathers, tensor-parallel partial sums all-reduced, other per-device batch blocks),
# so they sum in another order: the outputs move by a few ulps, a predicted keypoint by about
# one ulp of a ~1 m fp32 coordinate (0.6-1.2e-4 mm), and each per-frame metric is itself an
# fp32 value (ulp 3e-5 mm at this untrained model's ~470 mm). Means over frames (MPJPE,
# PA-MPJPE, PVE) moved by <= 6e-5 mm here, the acceleration error, a second difference that
# weighs a keypoint's move up to 4 times, by 1.5e-4 mm: 1e-4 mm is within 2-4 ulps of these
# values, too tight to hold on every CPU. 5e-4 mm is a few ulps with room, and still 100x below
# what a wrong window, a frame counted twice or another 2D input costs (>= 0.05 mm).
TOL_MM = 5e-4


def _results(text: str) -> list:
    return [
        json.loads(line[len('RESULT ') :])
        for line in text.splitlines()
        if line.startswith('RESULT ')
    ]


@pytest.fixture(scope='module')
def jobs(synthetic_default, tmp_path_factory):
    """{'one': [result per mesh], 'two': [process 0's, process 1's]}, 'workdir' of the two."""
    root = tmp_path_factory.mktemp('eval_sharded')
    data = synthetic_default

    def start(workdir, *extra):
        cmd = [
            sys.executable,
            os.path.join(REPO, 'tests', 'eval_job.py'),
            '--workdir',
            str(workdir),
            '--data',
            data['root'],
            '--body_models',
            data['body_models'],
            '--max_frames',
            str(MAX_FRAMES),
            *extra,
        ]
        return subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=REPO,
            env=job_env(data),
        )

    port = _free_port()
    one = start(root / 'one', '--devices', '8', '--meshes', REFERENCE, *ONE_PROCESS)
    two = [
        start(
            root / 'two',
            '--devices',
            '2',
            '--meshes',
            TWO_PROCESSES,
            '--coordinator',
            f'localhost:{port}',
            '--num_processes',
            '2',
            '--process_id',
            str(i),
        )
        for i in range(2)
    ]
    out = {}
    for name, procs in (('one', [one]), ('two', two)):
        out[name] = []
        for proc in procs:
            rc, text = _finish(proc)
            assert rc == 0, text
            out[name] += _results(text)
    out['workdir'] = root / 'two' / '0'
    return out


def _assert_close(got: dict, want: dict, what: str):
    assert got.keys() == want.keys(), what
    for key, value in want.items():
        if isinstance(value, float):
            assert abs(got[key] - value) <= TOL_MM, (what, key, got[key], value)
        else:
            assert got[key] == value, (what, key)  # counts: exactly


def test_eight_devices_in_one_process_match_one_device(jobs):
    by_mesh = {r['mesh']: r for r in jobs['one']}
    want = by_mesh[REFERENCE]['metrics']
    assert want['num_windows'] == 8 and want['num_frames'] == MAX_FRAMES
    assert want['3dpw/num_frames_accel'] == MAX_FRAMES - 2 and np.isfinite(want['3dpw/accel'])
    for mesh in ONE_PROCESS:
        _assert_close(by_mesh[mesh]['metrics'], want, mesh)
        assert sorted(by_mesh[mesh]['windows']) == list(range(8))


def test_two_processes_score_their_shares_and_match_one(jobs):
    want = {r['mesh']: r for r in jobs['one']}[REFERENCE]['metrics']
    p0, p1 = sorted(jobs['two'], key=lambda r: r['process'])
    # Every process returns the same merged metrics, equal to one process scoring every window.
    assert p0['metrics'] == p1['metrics']
    _assert_close(p0['metrics'], want, 'two processes')
    # Each predicted only its share (windows p, p + 2, ...), and said so.
    assert p0['windows'] == [0, 2, 4, 6] and p1['windows'] == [1, 3, 5, 7]
    for i, r in enumerate((p0, p1)):
        assert any(f'process {i} of 2 scored 4 of 8 windows' in line for line in r['log']), r['log']
    # Only process 0 writes, the merged metrics; overlays come from its share.
    written = json.loads(
        (jobs['workdir'] / 'eval' / 'pw3d' / 'step_0' / 'metrics.json').read_text()
    )
    assert written == p0['metrics']
    assert len(os.listdir(jobs['workdir'] / 'eval' / 'pw3d' / 'step_0' / 'overlays')) == 2
    assert any('eval pw3d at step 0' in line for line in p0['log'])
    assert not any('eval pw3d at step 0' in line for line in p1['log'])


def test_allgather_with_one_process_runs_no_collective(monkeypatch):
    def refuse(*_):
        raise AssertionError('a collective with one process')

    monkeypatch.setattr(collectives.multihost_utils, 'process_allgather', refuse)
    arrays = {'a/b': np.arange(3), 'names': np.array(['x', 'yz'])}
    assert collectives.allgather_arrays(arrays) == [arrays]
    back = collectives.decode(collectives.encode(arrays))
    assert back['names'].tolist() == ['x', 'yz'] and back['a/b'].tolist() == [0, 1, 2]
    with pytest.raises(TypeError, match="'names' is an object array"):
        collectives.encode({'names': np.array(['x', None], object)})


def test_eval_batch_is_rounded_up_to_the_data_fsdp_devices():
    mesh = types.SimpleNamespace(shape={'data': 2, 'fsdp': 4, 'tensor': 2})
    lines = []
    assert task_lib.eval_batch_size(5, mesh, lines.append) == 8
    assert lines == ["eval.batch_size 5 -> 8: a multiple of the mesh's data x fsdp = 8 devices"]
    assert task_lib.eval_batch_size(16, mesh, lines.append) == 16 and len(lines) == 1
