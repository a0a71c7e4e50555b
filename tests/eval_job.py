"""Sharded evaluation (train/loop.run_eval) in its own process, for test_evaluate_sharded.py and
bench/eval.py.

    python tests/eval_job.py --workdir W --data ROOT --body_models DIR --devices 8 \
        --meshes 1:data=1 8:data=2,fsdp=4 8:data=2,fsdp=2,tensor=2 [--max_frames 16] \
        [--coordinator localhost:P --num_processes 2 --process_id I] [--repeat 2]

A tiny video model (configs/video.py:small, T = 4) with the same deterministic random variables
in every process and for every mesh (convert/keymap's random checkpoint, numpy, laid out by
Task.place_variables), evaluated by loop.run_eval as the training loop does, on the 3DPW test
split under ROOT with 'noisy_gt' 2D input. A mesh is `K:axes`: the first K devices (K = 0:
all of them, every process's). Evaluation n of a mesh writes W/<mesh index>/eval/step_<n>/.
Prints one line per evaluation, `RESULT {json}`: the metrics, this process's index, the global
window indices its predict_fn was given (the padding left out), the log lines and the seconds
the evaluation took (with --repeat 2, the second one runs compiled code only).
"""

import argparse
import json
import os
import time

import job_process

p = argparse.ArgumentParser()
p.add_argument('--workdir', required=True)
p.add_argument('--data', required=True)
p.add_argument('--body_models', required=True)
p.add_argument('--meshes', nargs='+', default=['0:data=-1'])
p.add_argument('--max_frames', type=int, default=-1)
p.add_argument('--batch_size', type=int, default=8, help='config eval.batch_size (global)')
p.add_argument('--overlays', type=int, default=2)
p.add_argument('--repeat', type=int, default=1, help='evaluations per mesh')
job_process.add_args(p)
args = p.parse_args()
jax = job_process.start(args)

from configs import video  # noqa: E402
from extpose_jax.convert import keymap  # noqa: E402
from extpose_jax.models import vit  # noqa: E402
from extpose_jax.train import config as config_lib  # noqa: E402
from extpose_jax.train import loop, writers  # noqa: E402
from extpose_jax.train import sharding as shd  # noqa: E402
from extpose_jax.train import state as state_lib  # noqa: E402
from extpose_jax.train import task as task_lib  # noqa: E402

cfg = video.get_config('small')
cfg.eval.batch_size, cfg.eval.overlays = args.batch_size, args.overlays
cfg.evaluators['pw3d'].max_frames = args.max_frames if args.max_frames > 0 else None
cfg.data.pose_source = 'noisy_gt'
cfg.train.grad_accum = 1  # Task wants it set; evaluation has no use for it
task = task_lib.Task(cfg)
rows = keymap.model_rows(
    'smpl', keymap.vit_dims(vit.ViTConfig.of(cfg.model.size)), head_size=cfg.model.head_size
)
host_variables = keymap.from_torch(keymap.random_state_dict(rows, seed=0), rows)

# Record which windows this process's predict_fn is given: the share evaluate promises.
seen = []
make_predict = task_lib.make_sharded_predict_fn


def recording_predict_fn(*a, **k):
    predict = make_predict(*a, **k)

    def predict_fn(batch):
        seen.extend(int(u) for u in batch['position'] if u >= 0)
        return predict(batch)

    return predict_fn


task_lib.make_sharded_predict_fn = recording_predict_fn

for m, spec in enumerate(args.meshes):
    count, axes = spec.split(':')
    devices = jax.devices()[: int(count)] if int(count) else jax.devices()
    mesh = shd.make_mesh({k: int(v) for k, v in (kv.split('=') for kv in axes.split(','))}, devices)
    variables, _ = task.place_variables(host_variables, mesh)
    state = state_lib.TrainState(
        step=0,
        params=variables['params'],
        opt_state=None,
        constants={k: v for k, v in variables.items() if k != 'params'},
    )
    workdir = os.path.join(args.workdir, str(m))
    with writers.MetricWriter(workdir, jax.process_index()) as writer:
        for step in range(args.repeat):
            seen.clear()
            lines = []
            start = time.perf_counter()
            metrics = loop.run_eval(
                cfg,
                config_lib.evaluator(cfg),
                task,
                state,
                step,
                workdir,
                args.body_models,
                args.data,
                writer,
                lines.append,
            )
            seconds = time.perf_counter() - start
            print(
                'RESULT '
                + json.dumps(
                    {
                        'mesh': spec,
                        'process': jax.process_index(),
                        'metrics': metrics,
                        'windows': list(seen),
                        'log': lines,
                        'seconds': seconds,
                    }
                ),
                flush=True,
            )
