"""ExtPose on 3DPW-style video clips (the paper's setting, T = 16, extpose mask).

python run_train.py --config=configs/video.py            # ViT-H, the paper
python run_train.py --config=configs/video.py:small      # tiny ViT, T = 4, 2 CPU cores
python run_train.py --config=configs/video.py:base,frames=8

paper / base train on the full body mixture (configs/mixtures.py: 3DPW clips + HMR 2.0's image
datasets); --config.data.drop=mpii_train,ava_train trains without the named ones.
"""

from configs import common, mixtures


def get_config(arg=None):
    opts = common.parse_arg(arg, 'configs/video.py', frames=None)
    frames = int(opts['frames']) if opts['frames'] else (4 if opts['variant'] == 'small' else 16)
    c = common.base('smpl', opts['variant'], frames)
    if opts['variant'] != 'small':  # small: the synthetic default's 3DPW only
        mixtures.set_paper_mixture(c, mixtures.BODY, video='3dpw')
    return c
