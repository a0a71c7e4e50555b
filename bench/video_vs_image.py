"""ExtPose video (T frames, 'extpose' mask) against the image model, same budget, one table.

    python bench/video_vs_image.py [--steps 160] [--workdir /tmp/extpose_vs]

Both are configs/*.py:small on the synthetic default: the same tiny ViT, the same frames per
step (video: 2 clips x T = 4; image: 8 single frames), the same steps and optimizer, evaluated
on the held-out synthetic 3DPW validation split with sliding windows (video) or per frame
(image). Prints one JSON line per run (acceleration error and PA-MPJPE at the end, in mm)
and a summary line. Small data and short runs: a smoke-level comparison, not the paper's.
"""

import argparse
import importlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import logging  # noqa: E402

from data_pipelines.synthetic import default_data  # noqa: E402
from extpose_jax.train import loop  # noqa: E402


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument('--steps', type=int, default=160)
    p.add_argument('--workdir', default='/tmp/extpose_video_vs_image')
    p.add_argument('--split', default='validation')
    args = p.parse_args()
    logging.set_verbosity(logging.WARNING)
    paths = default_data.ensure(
        os.path.join(ROOT, 'data', 'synthetic', 'small'), log=lambda *_: None
    )
    rows = {}
    for name in ('video', 'image'):
        cfg = importlib.import_module(f'configs.{name}').get_config('small')
        cfg.train.steps, cfg.evaluators['pw3d'].split = args.steps, args.split
        workdir = os.path.join(args.workdir, name)
        result = loop.train(
            cfg, workdir, paths['body_models'], os.path.dirname(paths['3dpw']), log=lambda *_: None
        )
        first, last = result['eval']['pw3d'][0], result['eval']['pw3d'][args.steps]
        rows[name] = {
            'bench': 'video_vs_image',
            'run': name,
            'mask': cfg.model.mask,
            'frames': cfg.data.num_frames,
            'batch_clips': cfg.data.batch_size,
            'steps': args.steps,
            'split': args.split,
            'pa_mpjpe_start': round(first['3dpw/pa_mpjpe'], 2),
            'pa_mpjpe': round(last['3dpw/pa_mpjpe'], 2),
            'accel_start': round(first['3dpw/accel'], 2),
            'accel': round(last['3dpw/accel'], 2),
            'mpjpe': round(last['3dpw/mpjpe'], 2),
            'num_frames': last['num_frames'],
        }
        print(json.dumps(rows[name]), flush=True)
    v, i = rows['video'], rows['image']
    print(
        json.dumps(
            {
                'bench': 'video_vs_image',
                'summary': True,
                'pa_mpjpe_video_minus_image': round(v['pa_mpjpe'] - i['pa_mpjpe'], 2),
                'accel_video_minus_image': round(v['accel'] - i['accel'], 2),
            }
        ),
        flush=True,
    )


if __name__ == '__main__':
    main()
