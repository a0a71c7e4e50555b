"""ExtPose training entry point: python run_train.py --config=configs/video.py[:variant].

Status: the training system (mesh, train step, checkpoints, evaluation) arrives with issue 6.
Today this entry point loads the config and prepares the data: with no body models configured it
builds the synthetic default (procedural body models, rendered raw 3DPW / FreiHAND / HInt folders,
converted to records), cached under `data_dir`.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                         lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')
flags.mark_flags_as_required(['config'])


def prepare_data(cfg) -> dict:
    """The configured body models, or the synthetic default (built once, then cached)."""
    if cfg.body_models:
        if not os.path.isdir(cfg.body_models):
            raise FileNotFoundError(f'config.body_models: no such directory {cfg.body_models}')
        return {'body_models': cfg.body_models}
    from data_pipelines import default_data
    return default_data.ensure(os.path.join(cfg.data_dir, 'synthetic'), seed=cfg.seed,
                               log=logging.info)


def main(argv):
    del argv
    cfg = CONFIG.value
    for name, path in prepare_data(cfg).items():
        print(f'{name}: {path}')
    print('training: not implemented yet (issue 6); nothing else to run.')


if __name__ == '__main__':
    app.run(main)
