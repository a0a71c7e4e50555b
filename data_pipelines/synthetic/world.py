"""The whole synthetic world in one call: body models and the three raw datasets.

    python -m data_pipelines.synthetic.world --out DIR [--seed S] [--size tiny|small|large]
                                             [--workers N]

writes, under DIR,

    body_models/   procedural SMPL / MANO model files (body_files.py)
    3DPW/          sequenceFiles/{train,validation,test}/<seq>.pkl + imageFiles/<seq>/image_%05d.jpg
    FreiHAND/      FreiHAND_pub_v2/{training,evaluation}/... + FreiHAND_pub_v2_eval/...
    HInt/          HInt_annotation_partial/{TRAIN,VAL,TEST}_{newdays,epick,ego4d}_img/
                   <stem>.{jpg,json}

so that the raw -> record converters run on it unchanged (raw_3dpw.py, raw_freihand.py and
raw_hint.py say how each is made). The sizes (raw_common.SIZES): `tiny` for the tests, `small`
for the README's default run, `large` (thousands of training frames) for the ablations.
"""

from __future__ import annotations

import os
import time

from data_pipelines.synthetic import body_files, raw_3dpw, raw_freihand, raw_hint
from data_pipelines.synthetic.raw_common import SIZES, default_workers
from extpose_jax import errors

# Bumped whenever the same seed writes different files (default_data.py rebuilds caches made by
# another version). 2: 3DPW's poses2d are simulated detections (detector.py), not projections.
# 3: the hand datasets carry simulated detections (FreiHAND / HInt detections.json), and every
# fifth 3DPW sequence from the fourth is a close-up with truncated people.
VERSION = 3


def write_all(root, seed: int = 0, size: str = 'small', workers: int = 1) -> dict:
    """Body models + the three raw datasets under root; returns their paths.

    {'body_models': root/body_models, '3dpw': root/3DPW, 'freihand': root/FreiHAND,
     'hint': root/HInt}. size: a key of raw_common.SIZES. workers: processes rendering 3DPW
    sequences side by side (the files are the same for any number).
    """
    if size not in SIZES:
        raise ValueError(f'unknown world size {size!r}; expected one of {tuple(SIZES)}')
    root = os.path.abspath(os.fspath(root))
    sizes = SIZES[size]
    paths = {
        'body_models': os.path.join(root, 'body_models'),
        '3dpw': os.path.join(root, '3DPW'),
        'freihand': os.path.join(root, 'FreiHAND'),
        'hint': os.path.join(root, 'HInt'),
    }
    body_files.write_body_models(paths['body_models'], seed=seed)
    raw_3dpw.write_3dpw(
        paths['3dpw'], paths['body_models'], seed=seed, workers=workers, **sizes['3dpw']
    )
    raw_freihand.write_freihand(
        paths['freihand'], paths['body_models'], seed=seed, **sizes['freihand']
    )
    raw_hint.write_hint(paths['hint'], paths['body_models'], seed=seed, **sizes['hint'])
    return paths


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(
        description='Write synthetic 3DPW / FreiHAND / HInt raw datasets '
        '(and the body models they use).'
    )
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--size', choices=tuple(SIZES), default='small', help='raw_common.SIZES')
    ap.add_argument(
        '--workers', type=int, default=default_workers(), help='processes (default: the cores)'
    )
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f'--workers must be >= 1, got {args.workers}')
    os.makedirs(args.out, exist_ok=True)  # an unusable --out fails now, not after the models
    t0 = time.time()
    paths = write_all(args.out, seed=args.seed, size=args.size, workers=args.workers)
    for k, v in paths.items():
        print(f'{k}: {v}')
    print(f'done in {time.time() - t0:.1f} s')
    return paths


if __name__ == '__main__':
    errors.guard(main)
