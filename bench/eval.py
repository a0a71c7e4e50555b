"""Sharded evaluation throughput: windows/s over the synthetic 3DPW test split, by process count.

    python bench/eval.py                          # 1 process x 2 devices vs 2 processes x 1
    python bench/eval.py --cases 1x1 1x2 2x1 --batch_size 8
    python bench/eval.py --cases 1x1 2x1 --cores_per_process 1   # each process its own core

A case is PROCESSESxDEVICES (devices per process); the mesh is data = all devices, so the two
default cases run the same mesh and the same per-device work, and differ in the host work (the
windows' loading, body-model forwards and metrics) being split over two processes or not.
Each case runs tests/eval_job.py (the tiny video model, T = 4, random variables, loop.run_eval,
'noisy_gt' 2D input, no overlays) in fresh processes on localhost (jax.distributed with a free
port when PROCESSES > 1) and evaluates the split twice: the first evaluation compiles (the
sharded predict, body models, metrics) and is not counted; the second, compiled code only, is
timed from run_eval's call to its return on every process (loading, predict, body models,
metrics, the cross-process merge, process 0's metrics.json), the slowest process counting.
Process start-up, imports and placing the variables are excluded too. Prints one JSON line per
case, then one with the ratio of the last case's windows/s to the first's. With
--cores_per_process each process is pinned to its own cores, as on hosts with their own
compute; without it, all processes share this machine's cores (and their compute).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
JOB = os.path.join(ROOT, 'tests', 'eval_job.py')

from data_pipelines.synthetic import default_data  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


def run_case(case: str, args, workdir: str) -> dict:
    processes, devices = (int(x) for x in case.split('x'))
    common = [
        sys.executable,
        JOB,
        '--workdir',
        os.path.join(workdir, case),
        '--data',
        args.records,
        '--body_models',
        args.body_models,
        '--devices',
        str(devices),
        '--meshes',
        '0:data=-1',
        '--batch_size',
        str(args.batch_size),
        '--overlays',
        '0',
        '--repeat',
        '2',
    ]
    distributed = []
    if processes > 1:
        port = _free_port()
        distributed = ['--coordinator', f'localhost:{port}', '--num_processes', str(processes)]

    def pin(i):  # process i on its own cores, as a host with its own compute
        if not args.cores_per_process:
            return None
        n = args.cores_per_process
        return lambda: os.sched_setaffinity(0, range(i * n, (i + 1) * n))

    procs = [
        subprocess.Popen(
            common + distributed + (['--process_id', str(i)] if distributed else []),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
            preexec_fn=pin(i),
        )
        for i in range(processes)
    ]
    runs = []
    for proc in procs:
        out, _ = proc.communicate(timeout=1800)
        if proc.returncode:
            raise RuntimeError(f'{case}: eval_job.py exited with {proc.returncode}:\n{out[-3000:]}')
        runs.append(
            [json.loads(line[7:]) for line in out.splitlines() if line.startswith('RESULT ')]
        )
    timed = max(r[1]['seconds'] for r in runs)
    windows = runs[0][1]['metrics']['num_windows']
    return {
        'bench': 'eval',
        'case': case,
        'processes': processes,
        'devices_per_process': devices,
        'mesh': {'data': processes * devices},
        'global_batch_windows': args.batch_size,
        'frames_per_window': 4,
        'windows': windows,
        'frames': runs[0][1]['metrics']['num_frames'],
        'first_eval_s': round(max(r[0]['seconds'] for r in runs), 2),
        'timed_eval_s': round(timed, 2),
        'windows_per_s': round(windows / timed, 3),
        'pa_mpjpe': round(runs[0][1]['metrics']['3dpw/pa_mpjpe'], 4),
        'cores_per_process': args.cores_per_process or 'shared',
        'cpus': os.cpu_count(),
        'load_avg_1m': round(os.getloadavg()[0], 2),
    }


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--cases', nargs='+', default=['1x2', '2x1'])
    p.add_argument('--batch_size', type=int, default=8, help='global windows per step')
    p.add_argument(
        '--cores_per_process',
        type=int,
        default=0,
        help='pin process i to cores [i n, (i + 1) n) (hosts with their own compute); '
        '0: all processes share every core',
    )
    p.add_argument(
        '--data_dir',
        default=os.path.join(ROOT, 'data', 'synthetic', 'small'),
        help='the synthetic default (built here if missing, as run_train.py does)',
    )
    args = p.parse_args()
    paths = default_data.ensure(args.data_dir, seed=0, log=lambda *_: None)
    args.records, args.body_models = os.path.dirname(paths['3dpw']), paths['body_models']
    results = []
    with tempfile.TemporaryDirectory(prefix='bench_eval_') as workdir:
        for case in args.cases:
            results.append(run_case(case, args, workdir))
            print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        first, last = results[0], results[-1]
        print(
            json.dumps(
                {
                    'bench': 'eval',
                    'ratio': f'{last["case"]} / {first["case"]}',
                    'windows_per_s_ratio': round(last['windows_per_s'] / first['windows_per_s'], 3),
                }
            ),
            flush=True,
        )


if __name__ == '__main__':
    main()
