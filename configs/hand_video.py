"""ExtPose for hands on clips (HInt's Ego4D sequences are the video part of the mixture).

FreiHAND (and at paper / base scale the rest of HaMeR's image datasets: configs/mixtures.py)
enter as single frames (data.as_images), padded to T; HInt's image folders have one frame per
track. The synthetic default has no hand video: there every clip is a padded single frame,
which still exercises the video path end to end.
"""

from configs import common, mixtures


def get_config(arg=None):
    opts = common.parse_arg(arg, 'configs/hand_video.py', frames=None)
    frames = int(opts['frames']) if opts['frames'] else (4 if opts['variant'] == 'small' else 16)
    c = common.base('mano', opts['variant'], frames)
    if opts['variant'] == 'small':
        c.data.datasets = (('hint', 0.5), ('freihand', 0.5))
        c.data.as_images = ('freihand',)
    else:
        mixtures.set_paper_mixture(c, mixtures.HAND_VIDEO, video='hint')
    c.evaluators = {'hint': common.evaluator('hint')}
    return c
