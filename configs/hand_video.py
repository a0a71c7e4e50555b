"""ExtPose for hands on clips (HInt's Ego4D sequences are the video part of the mixture).

FreiHAND and the HInt image folders have one frame per track; they enter as single frames
(data.as_images), padded to T. The synthetic default has no hand video: there every clip is a
padded single frame, which still exercises the video path end to end.
"""

from configs import common


def get_config(arg=None):
    opts = common.parse_arg(arg, 'configs/hand_video.py', frames=None)
    frames = int(opts['frames']) if opts['frames'] else (4 if opts['variant'] == 'small' else 16)
    c = common.base('mano', opts['variant'], frames)
    c.data.datasets = (('hint', 0.5), ('freihand', 0.5))
    c.data.as_images = ('freihand',)
    c.evaluators = {'hint': common.evaluator('hint')}
    return c
