"""ExtPose training entry point: python run_train.py --config=configs/video.py[:variant].

Status: the training system (mesh, train step, checkpoints, evaluation) arrives with issue 6.
Today this entry point loads and validates the config and prepares the part of the synthetic
default that exists: procedural SMPL/MANO-format body models, cached under `data_dir`.
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.',
                                         lock_config=True)
flags.DEFINE_string('workdir', None, 'Where checkpoints and logs go.')
flags.mark_flags_as_required(['config'])


def prepare_body_models(cfg) -> str:
    """The configured body-model directory, or the synthetic one (generated once, then cached)."""
    if cfg.body_models:
        if not os.path.isdir(cfg.body_models):
            raise FileNotFoundError(f'config.body_models: no such directory {cfg.body_models}')
        return cfg.body_models
    from data_pipelines import synthetic_bodies
    out = os.path.join(cfg.data_dir, 'synthetic', 'body_models')
    if synthetic_bodies.body_models_complete(out):
        logging.info('synthetic body models: using the cache at %s', out)
    else:
        logging.info('no body models configured: generating the synthetic default in %s', out)
        synthetic_bodies.write_body_models(out, seed=cfg.seed)
    return out


def main(argv):
    del argv
    cfg = CONFIG.value
    path = prepare_body_models(cfg)
    print(f'body models ready: {path}')
    print('training: not implemented yet (issue 6); nothing else to run.')


if __name__ == '__main__':
    app.run(main)
