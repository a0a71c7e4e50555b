"""train/collectives: the host-side gathers of evaluation, in one process and in two."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from extpose_jax.train import collectives

JOB = os.path.join(os.path.dirname(__file__), 'collectives_job.py')


def test_encode_decode_round_trip_and_refuse_objects():
    arrays = {'total': np.array([3.5, -1.0], np.float32), 'names': np.array(['mpjpe', 'pve'])}
    back = collectives.decode(collectives.encode(arrays))
    assert back.keys() == arrays.keys()
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
        assert back[k].dtype == arrays[k].dtype
    with pytest.raises(TypeError, match="'bad' is an object array"):
        collectives.encode({'bad': np.array([{}], dtype=object)})


def test_one_process_needs_no_collective():
    arrays = {'x': np.ones(3)}
    assert collectives.allgather_arrays(arrays) == [arrays]
    assert collectives.process_sum(7) == 7
    collectives.barrier('alone')  # returns at once


def _free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_process_arriving_40s_late_still_gathers():
    # On CPU the first collective sets up a Gloo context whose rendezvous gives up after 30 s;
    # a loaded CI machine once started one training process that much later than the other.
    # collectives.barrier waits on the coordination service first, with our own timeout.
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                JOB,
                '--coordinator',
                f'localhost:{port}',
                '--num_processes',
                '2',
                '--process_id',
                str(i),
                '--late_s',
                '40',
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        result = json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])
        assert result == {
            'rows': [[0.0, 1.0], [0.0, 1.0, 2.0]],
            'names': [['p0'], ['p1']],
            'sum': 11,
        }
