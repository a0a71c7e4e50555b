"""Two processes meet in train/collectives, for test_collectives.py.

    python tests/collectives_job.py --coordinator localhost:P --num_processes 2 --process_id I \
        [--late_s 40]

Process 1 arrives --late_s seconds after process 0 at its first collective (a slow host); each
then gathers a dict whose shape differs by process. Prints `RESULT {json}`.
"""

import argparse
import json
import time

import job_process

p = argparse.ArgumentParser()
p.add_argument('--late_s', type=float, default=0.0)
job_process.add_args(p)
args = p.parse_args()
jax = job_process.start(args)

import numpy as np  # noqa: E402

from extpose_jax.train import collectives  # noqa: E402

if jax.process_index() == 1:
    time.sleep(args.late_s)
rank = jax.process_index()
rows = collectives.allgather_arrays(
    {'rows': np.arange(rank + 2, dtype=np.float32), 'name': np.array([f'p{rank}'])}
)
total = collectives.process_sum(rank + 5)
print(
    'RESULT',
    json.dumps(
        {
            'rows': [r['rows'].tolist() for r in rows],
            'names': [r['name'].tolist() for r in rows],
            'sum': total,
        }
    ),
)
