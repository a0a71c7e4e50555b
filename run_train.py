"""ExtPose training: python run_train.py --config=configs/video.py[:variant] --workdir=DIR.

    --config.x=y           override any config field (validated before anything runs)
    --coordinator=H:P --num_processes=N --process_id=I
                           multi-host without auto-detection (TPU pods, SLURM, ... detect
                           themselves with --distributed); also read from JAX_COORDINATOR_ADDRESS,
                           JAX_NUM_PROCESSES, JAX_PROCESS_ID

With no body models / records configured it builds the built-in synthetic default (procedural
body models, rendered raw datasets, converted records) under config.data_dir and says so.
Rerunning with the same workdir resumes from its latest checkpoint.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                         lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints, logs and evaluation results go.')
flags.DEFINE_bool('distributed', False, 'Call jax.distributed.initialize() with auto-detection.')
flags.DEFINE_string('coordinator', os.environ.get('JAX_COORDINATOR_ADDRESS'),
                    'host:port of process 0, for jax.distributed.initialize.')
flags.DEFINE_integer('num_processes', int(os.environ.get('JAX_NUM_PROCESSES', '0')) or None,
                     'Number of processes (with --coordinator).')
flags.DEFINE_integer('process_id', int(os.environ.get('JAX_PROCESS_ID', '-1')), 'This process (with --coordinator).')
flags.mark_flags_as_required(['config', 'workdir'])
FLAGS = flags.FLAGS
# The number printed at the end of a run, per evaluation dataset (mm, or a fraction for PCK).
HEADLINE = {'3dpw': '3dpw/pa_mpjpe', 'freihand': 'freihand/pa_mpjpe', 'hint': 'hint/pck@0.1/all'}


def init_distributed():
    """Before any other JAX call: preemption notices and per-host data depend on it."""
    import jax
    if FLAGS.coordinator:
        if not FLAGS.num_processes or FLAGS.process_id < 0:
            raise app.UsageError('--coordinator needs --num_processes and --process_id')
        jax.distributed.initialize(FLAGS.coordinator, num_processes=FLAGS.num_processes,
                                   process_id=FLAGS.process_id)
    elif FLAGS.distributed:
        jax.distributed.initialize()


def prepare_data(cfg) -> tuple:
    """(body models dir, records root): the configured ones, or the synthetic default."""
    if cfg.body_models or cfg.data.root:
        for field, path in (('body_models', cfg.body_models), ('data.root', cfg.data.root)):
            if not path or not os.path.isdir(path):
                raise FileNotFoundError(f'config.{field}: no such directory {path!r} (set both '
                                        'body_models and data.root, or neither for the synthetic default)')
        return cfg.body_models, cfg.data.root
    import jax

    from data_pipelines import default_data
    root = os.path.join(cfg.data_dir, 'synthetic')
    if jax.process_index() == 0:
        print(f'no dataset configured: using the built-in synthetic default in {root}')
        paths = default_data.ensure(root, seed=0, log=print)
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices('synthetic default ready')
    if jax.process_index() != 0:
        paths = default_data.ensure(root, seed=0, log=logging.info)  # cached: only checks
    return paths['body_models'], os.path.dirname(paths['3dpw'])


def main(argv):
    del argv
    from extpose_jax.train import config as config_lib
    cfg = CONFIG.value
    config_lib.validate(cfg)  # before any data or device work
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    init_distributed()
    from extpose_jax.train import loop
    body_models, records = prepare_data(cfg)
    result = loop.train(cfg, FLAGS.workdir, body_models, records, log=print)
    ev = {s: m for s, m in result['eval'].items() if m}
    if ev:
        key = HEADLINE[cfg.eval.dataset]
        first, last = min(ev), max(ev)
        print(f'held-out {cfg.eval.dataset} {cfg.eval.split} {key}: step {first}: '
              f'{ev[first][key]:.2f} -> step {last}: {ev[last][key]:.2f}')
    if result['stopped_early']:
        print(f'stopped at step {result["step"]}; rerun the same command to resume')


if __name__ == '__main__':
    app.run(main)
