"""ExtPose on single images (T = 1): RGB + skeleton image, multi-modal attention.

The image counterpart of video.py with the same data and budget, so the two compare directly.
"""

from configs import common


def get_config(arg=None):
    opts = common.parse_arg(arg, 'configs/image.py')
    c = common.base('smpl', opts['variant'], num_frames=1)
    if opts['variant'] == 'small':
        c.data.batch_size = 8  # the same frames per step as video.py:small (2 clips x 4)
    else:
        c.data.batch_size = 512  # 32 clips x 16 frames
    c.model.mask = 'multimodal'
    return c
