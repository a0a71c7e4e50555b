"""ExtPose on 3DPW-style video clips (the paper's setting, T = 16, extpose mask).

python run_train.py --config=configs/video.py            # ViT-H, the paper
python run_train.py --config=configs/video.py:small      # tiny ViT, T = 4, 2 CPU cores
python run_train.py --config=configs/video.py:base,frames=8
"""

from configs import common


def get_config(arg=None):
    opts = common.parse_arg(arg, 'configs/video.py', frames=None)
    frames = int(opts['frames']) if opts['frames'] else (4 if opts['variant'] == 'small' else 16)
    return common.base('smpl', opts['variant'], frames)
