"""Generation speed of the synthetic world (data_pipelines/synthetic): the body models, then each
raw dataset at one of the sizes (raw_common.SIZES: tiny, small, large).

Prints one JSON line per part: images written (JPEG/PNG files: frames, and FreiHAND's masks),
seconds, images/s, and the worker processes it had (3DPW renders sequences side by side; the
hand datasets run in one process), as world.write_all runs; the renderer is numpy on the CPU.

  python bench/world.py [--size small] [--workers N] [--dir /tmp]
"""

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from data_pipelines.synthetic import body_files, raw_3dpw, raw_freihand, raw_hint  # noqa: E402
from data_pipelines.synthetic.raw_common import SIZES, default_workers  # noqa: E402

WRITERS = {
    '3dpw': raw_3dpw.write_3dpw,
    'freihand': raw_freihand.write_freihand,
    'hint': raw_hint.write_hint,
}


def _images(folder: str) -> int:
    files = glob.glob(os.path.join(folder, '**', '*'), recursive=True)
    return sum(f.endswith(('.jpg', '.png')) for f in files)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--size', choices=tuple(SIZES), default='small')
    ap.add_argument('--workers', type=int, default=default_workers(), help='3DPW processes')
    ap.add_argument('--dir', default=None, help='scratch folder (default: a temporary one)')
    args = ap.parse_args()
    size, sizes = args.size, SIZES[args.size]
    root = tempfile.mkdtemp(prefix='bench_world_', dir=args.dir)
    try:
        bm = os.path.join(root, 'body_models')
        t = time.perf_counter()
        body_files.write_body_models(bm, seed=0)
        print(
            json.dumps(
                {'part': 'body_models', 'size': size, 'seconds': round(time.perf_counter() - t, 2)}
            ),
            flush=True,
        )
        for name, write in WRITERS.items():
            t = time.perf_counter()
            workers = args.workers if name == '3dpw' else 1
            extra = {'workers': workers} if name == '3dpw' else {}
            write(os.path.join(root, name), bm, seed=0, **extra, **sizes[name])
            dt = time.perf_counter() - t
            n = _images(os.path.join(root, name))
            print(
                json.dumps(
                    {
                        'part': name,
                        'size': size,
                        'images': n,
                        'seconds': round(dt, 2),
                        'images_per_s': round(n / dt, 2),
                        'workers': workers,
                        **sizes[name],
                    }
                ),
                flush=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
