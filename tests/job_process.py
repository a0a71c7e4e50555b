"""Process set-up shared by the subprocess jobs (train_job.py, eval_job.py).

    p = argparse.ArgumentParser(); job_process.add_args(p); args = p.parse_args()
    jax = job_process.start(args)    # XLA's fake CPU devices, then jax.distributed if asked

--devices N fake CPU devices (XLA reads the count when jax is imported, so start() sets it
first), --coordinator host:port --num_processes P --process_id I for jax.distributed.
"""

import os
import sys


def add_args(parser) -> None:
    parser.add_argument('--devices', type=int, default=1)
    parser.add_argument('--coordinator')
    parser.add_argument('--num_processes', type=int, default=1)
    parser.add_argument('--process_id', type=int, default=0)


def start(args):
    """-> the jax module, imported with args.devices CPU devices (and initialised for several
    processes when args.coordinator is given); the repository is importable."""
    # Flags already in the environment (tests/run.sh's) are kept; the device count is this job's.
    kept = [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f]
    os.environ['XLA_FLAGS'] = ' '.join(
        [*kept, f'--xla_force_host_platform_device_count={args.devices}']
    )
    os.environ['JAX_PLATFORMS'] = 'cpu'
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax

    if args.coordinator:
        jax.distributed.initialize(
            args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    return jax
