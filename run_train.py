"""ExtPose training: python run_train.py --config=configs/video.py[:variant] [--workdir=DIR].

    --workdir=DIR          default runs/<config>_<variant> (printed at start)
    --config.x=y           override any config field (validated before anything runs)
    --force                run even when the preflight estimates an absurd run time
    --coordinator=H:P --num_processes=N --process_id=I
                           multi-host without auto-detection (TPU pods, SLURM, ... detect
                           themselves with --distributed); also read from JAX_COORDINATOR_ADDRESS,
                           JAX_NUM_PROCESSES, JAX_PROCESS_ID

Before any data is built, the preflight (extpose_jax/train/preflight.py) checks that the step
fits the devices and that the run ends in reasonable time, picks the gradient accumulation and
eval batch where the config leaves them to it, and prints its per-device table. A config that
cannot work here stops within seconds with one line naming the change that fits, exit code 2.
With no body models / records configured it builds the built-in synthetic default (procedural
body models, rendered raw datasets, converted records) under config.data_dir and says so.
Rerunning with the same workdir resumes from its latest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Training configuration file.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and evaluation results go.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() with auto-detection.')
flags.DEFINE_string(
    'coordinator',
    os.environ.get('JAX_COORDINATOR_ADDRESS'),
    'host:port of process 0, for jax.distributed.initialize.',
)
flags.DEFINE_integer(
    'num_processes',
    int(os.environ.get('JAX_NUM_PROCESSES', '0')) or None,
    'Number of processes (with --coordinator).',
)
flags.DEFINE_integer(
    'process_id', int(os.environ.get('JAX_PROCESS_ID', '-1')), 'This process (with --coordinator).'
)
flags.DEFINE_bool('force', False, 'Run even when the preflight estimates an absurd run time.')
flags.mark_flags_as_required(['config'])
FLAGS = flags.FLAGS


def init_distributed():
    """Before any other JAX call: preemption notices and per-host data depend on it."""
    import jax

    if FLAGS.coordinator:
        if not FLAGS.num_processes or FLAGS.process_id < 0:
            raise app.UsageError('--coordinator needs --num_processes and --process_id')
        jax.distributed.initialize(
            FLAGS.coordinator, num_processes=FLAGS.num_processes, process_id=FLAGS.process_id
        )
    elif FLAGS.distributed:
        jax.distributed.initialize()


def config_label() -> str:
    """The --config value as given, e.g. 'configs/video.py:base,frames=8'."""
    return config_flags.get_config_filename(FLAGS['config'])


def default_workdir(label: str) -> str:
    """'configs/video.py:base,frames=8' -> 'runs/video_base_frames8' ('_paper' without a variant)."""
    path, _, arg = label.partition(':')
    name = os.path.splitext(os.path.basename(path))[0]
    suffix = ''.join(c for c in (arg or 'paper').replace(',', '_') if c.isalnum() or c in '_-.')
    return os.path.join('runs', f'{name}_{suffix}')


def preflight(cfg):
    """-> the config with its automatic fields resolved; exits 2 with one line if it cannot run.

    Every process computes the same report; process 0's decision is broadcast, so that a
    measurement that differs between hosts (the CPU's timed matmul) cannot split the job.
    """
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from extpose_jax import errors
    from extpose_jax.train import config as config_lib
    from extpose_jax.train import preflight as preflight_lib

    if not cfg.preflight.enabled:
        return config_lib.resolved(cfg)
    refusal, report = None, None
    try:
        report = preflight_lib.check(cfg, label=config_label(), force=FLAGS.force, log=logging.info)
    except preflight_lib.Refusal as e:
        refusal = str(e)
    decision = np.array(
        [
            refusal is None,
            report.grad_accum if report else 0,
            report.config.eval.batch_size if report else 0,
        ],
        np.int64,
    )
    if jax.process_count() > 1:
        decision = multihost_utils.broadcast_one_to_all(decision)
    if not decision[0]:
        if jax.process_index() == 0:
            errors.fail(os.path.basename(sys.argv[0]), refusal, 2)  # like every user error
        sys.exit(2)
    if jax.process_index() == 0:
        print(report.table())
    return config_lib.resolved(cfg, grad_accum=int(decision[1]), eval_batch_size=int(decision[2]))


def prepare_data(cfg) -> tuple:
    """(body models dir, records root): the configured ones, or the synthetic default."""
    if cfg.body_models:  # config.validate checked both are set and exist
        return cfg.body_models, cfg.data.root
    import jax

    from data_pipelines.synthetic import default_data

    size = cfg.synthetic_size
    root = os.path.join(cfg.data_dir, 'synthetic', size)
    if jax.process_index() == 0:
        print(f'no dataset configured: using the built-in synthetic default ({size}) in {root}')
        paths = default_data.ensure(root, seed=0, size=size, log=print)
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices('synthetic default ready')
    if jax.process_index() != 0:
        paths = default_data.ensure(root, seed=0, size=size, log=logging.info)  # cached: checks
    return paths['body_models'], os.path.dirname(paths['3dpw'])


def main(argv):
    del argv
    from extpose_jax.train import config as config_lib

    cfg = CONFIG.value
    config_lib.validate(cfg)  # before any data or device work
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    init_distributed()
    cfg = preflight(cfg)  # before any data or parameters exist
    import jax

    log = print if jax.process_index() == 0 else logging.info  # one voice for the whole job
    workdir = FLAGS.workdir or default_workdir(config_label())
    log(f'workdir: {workdir}')
    from extpose_jax.train import loop

    body_models, records = prepare_data(cfg)
    result = loop.train(cfg, workdir, body_models, records, log=log)
    for evaluator in config_lib.evaluators(cfg):
        ev = {s: m for s, m in result['eval'][evaluator.name].items() if m}
        if ev:
            key, first, last = evaluator.headline, min(ev), max(ev)
            log(
                f'held-out {evaluator.name} ({evaluator.dataset} {evaluator.split}) {key}: '
                f'step {first}: {ev[first][key]:.2f} -> step {last}: {ev[last][key]:.2f}'
            )
    if result['stopped_early']:
        log(f'stopped at step {result["step"]}; rerun the same command to resume')


if __name__ == '__main__':
    from extpose_jax import errors

    errors.run(main)
