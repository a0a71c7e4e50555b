"""A tiny training run in its own process, for the loop tests (kill / resume / multi-process).

    python tests/train_job.py --workdir W --data ROOT --body_models DIR --steps 6 \
        [--signal_at 3 --signal KILL|TERM [--signal_process I]] [--coordinator localhost:P
        --num_processes 2 --process_id I] [--devices 8 --mesh data=2,fsdp=4]

--nan_at N makes step N's batch non-finite (its targets and 2D inputs NaN); --set k=v,k=v sets
config fields (ints, floats, True / False as such). Errors go through extpose_jax.errors.guard,
as in every entry point: a user error or a diverged run is one line and its exit code.

--signal_at sends the signal to this process from inside the metric writer, right after step
N's metrics are logged and before its checkpoint decision: a deterministic point to die at.
"""

import argparse
import os
import signal

import job_process  # tests/ is this script's directory, so it is on sys.path

p = argparse.ArgumentParser()
p.add_argument('--workdir', required=True)
p.add_argument('--data', required=True)
p.add_argument('--body_models', required=True)
p.add_argument('--steps', type=int, default=6)
p.add_argument('--checkpoint_every', type=int, default=2)
p.add_argument('--config', default='image')
p.add_argument('--batch_size', type=int, default=2)
p.add_argument('--signal_at', type=int, default=-1)
p.add_argument('--signal', default='KILL')
p.add_argument('--signal_process', type=int, default=-1, help='only this process signals itself')
p.add_argument('--mesh', default='')
p.add_argument('--nan_at', type=int, default=-1)
p.add_argument('--set', default='')
p.add_argument('--datasets', default='', help='the mixture: name:weight,name:weight')
p.add_argument('--as_images', default='', help='datasets fed as single frames: name,name')
p.add_argument('--evaluate', action='store_true', help="keep the config's evaluators")
job_process.add_args(p)
args = p.parse_args()
jax = job_process.start(args)

import importlib  # noqa: E402

import numpy as np  # noqa: E402

from extpose_jax import errors  # noqa: E402
from extpose_jax.train import loop, writers  # noqa: E402
from extpose_jax.train import task as task_lib  # noqa: E402

cfg = importlib.import_module(f'configs.{args.config}').get_config('small')
cfg.train.steps = args.steps
cfg.train.checkpoint_every = args.checkpoint_every
cfg.train.log_every = 1
if not args.evaluate:
    cfg.evaluators = {}  # no evaluation: the jobs compare training
if args.datasets:
    cfg.data.datasets = tuple(
        (n, float(w)) for n, w in (kv.split(':') for kv in args.datasets.split(','))
    )
cfg.data.as_images = tuple(filter(None, args.as_images.split(',')))
cfg.data.batch_size = args.batch_size
for kv in filter(None, args.mesh.split(',')):
    k, v = kv.split('=')
    cfg.mesh[k] = int(v)


def _typed(v: str):
    if v in ('True', 'False'):
        return v == 'True'
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


for kv in filter(None, args.set.split(',')):
    k, v = kv.split('=')
    group, key = k.split('.')
    cfg[group][key] = _typed(v)

# The curves PNG (the loop's last act) costs ~2 s of CPU a job in matplotlib; these jobs compare
# training. tests/test_writers.py checks the plot, and the in-process runs of test_evaluators.py
# and test_ablations.py and test_overfit.py's run_train.py draw it at the end of a real loop.
writers.plot_curves = lambda *_, **__: None

if args.nan_at > 0:
    device_batch, calls = task_lib.device_batch, []

    def nan_batch(batch, *a, **kw):
        out = dict(device_batch(batch, *a, **kw))
        calls.append(1)
        if len(calls) == args.nan_at:  # the loop asks once per step
            for k in ('kp2d', 'kp3d', 'pose', 'betas', 'kp2d_input'):
                out[k] = np.full_like(out[k], np.nan)
        return out

    task_lib.device_batch = nan_batch

if args.signal_at >= 0:
    write = writers.MetricWriter.write_scalars

    def write_then_signal(self, step, scalars):
        write(self, step, scalars)
        if step == args.signal_at and args.signal_process in (-1, jax.process_index()):
            os.kill(os.getpid(), getattr(signal, f'SIG{args.signal}'))

    writers.MetricWriter.write_scalars = write_then_signal

result = errors.guard(
    lambda: loop.train(cfg, args.workdir, args.body_models, args.data), prog='train_job'
)
print('RESULT', result['step'], result['stopped_early'])
