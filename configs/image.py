"""ExtPose on single images (T = 1): RGB + skeleton image, multi-modal attention.

The image counterpart of video.py with the same data (configs/mixtures.py's BODY at paper / base
scale) and budget, so the two compare directly.
"""

from configs import common, mixtures


def get_config(arg=None):
    opts = common.parse_arg(arg, 'configs/image.py')
    c = common.base('smpl', opts['variant'], num_frames=1)
    if opts['variant'] == 'small':
        c.data.batch_size = 8  # the same frames per step as video.py:small (2 clips x 4)
    else:
        c.data.batch_size = 512  # 32 clips x 16 frames
        mixtures.set_paper_mixture(c, mixtures.BODY)  # video.py's, every dataset as frames
    c.model.mask = 'multimodal'
    return c
