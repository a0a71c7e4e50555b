"""ExtPose video training on 3DPW-style clips (the paper's setting).

Fields are added as the training system lands; `--config=configs/video.py:small` is the
2-CPU variant on the built-in synthetic data.
"""
import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    variant = arg or 'paper'
    if variant not in ('paper', 'small'):
        raise ValueError(f"configs/video.py: unknown variant {variant!r}; use 'paper' or 'small'")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    # Empty: build the synthetic default (procedural SMPL/MANO files, later the raw datasets)
    # under data_dir. Otherwise the directory holding smpl/SMPL_{NEUTRAL,MALE,FEMALE}.pkl.
    c.body_models = config_dict.placeholder(str)
    c.data_dir = 'data'
    c.num_frames = 16 if variant == 'paper' else 4
    return c
