"""ExtPose for hands (HaMeR head, MANO) on single images.

paper / base: HaMeR's published mixture (configs/mixtures.py); small: the synthetic default's
FreiHAND + HInt records.
"""

from configs import common, mixtures


def get_config(arg=None):
    opts = common.parse_arg(arg, 'configs/hand.py')
    c = common.base('mano', opts['variant'], num_frames=1)
    if opts['variant'] == 'small':
        c.data.datasets = (('freihand', 0.7), ('hint', 0.3))
    else:
        mixtures.set_paper_mixture(c, mixtures.HAMER)
    c.data.batch_size = 8 if opts['variant'] == 'small' else 512
    c.model.mask = 'multimodal'
    c.evaluators.hint = common.evaluator('hint')  # beside freihand, at the same cadence
    return c
