"""Conversion rate of HMR 2.0 WebDataset tars -> records (data_pipelines/convert_webdataset.py).

Writes synthetic body tars (synthetic/raw_tars.py), re-packed with the images upscaled to a
COCO-like size (--width, default 640 x 480: decoding the full image and encoding the crop are
most of the cost, so the tiny rendered images would flatter it), then converts them with 0
(inline) and N workers. Prints one JSON line per run: images/s and persons/s, end to end
(worker start-up included: the spawned workers import JAX).

  python bench/convert_tars.py [--tars 4] [--per_tar 24] [--width 640] [--workers 2]
"""

import argparse
import io
import json
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from data_pipelines import convert_webdataset as cw  # noqa: E402
from data_pipelines.synthetic import body_files, raw_tars  # noqa: E402


def upscale(src: str, dst: str, factor: float) -> None:
    """Every sample of src's tars with its image and pixel fields scaled by `factor`."""
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        out = io.BytesIO()
        with tarfile.open(os.path.join(src, name)) as tin, tarfile.open(fileobj=out, mode='w') as t:
            for info in tin:
                data = tin.extractfile(info).read()
                if info.name.endswith('.jpg'):
                    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                    img = cv2.resize(img, None, fx=factor, fy=factor)
                    data = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
                else:
                    people = pickle.loads(data)  # our own synthetic file
                    for p in people:
                        p['keypoints_2d'][:, :2] *= factor
                        p['center'] = p['center'] * factor
                        p['scale'] = p['scale'] * factor
                    data = pickle.dumps(people)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        with open(os.path.join(dst, name), 'wb') as f:
            f.write(out.getvalue())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--tars', type=int, default=4)
    ap.add_argument('--per_tar', type=int, default=24)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--workers', type=int, default=2)
    ap.add_argument('--dir', default=None)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(dir=a.dir)
    try:
        models = os.path.join(tmp, 'body_models')
        body_files.write_body_models(models, seed=0)
        small = os.path.join(tmp, 'small')
        truth = raw_tars.write_tars(small, models, 'hmr2', num_tars=a.tars, per_tar=a.per_tar)
        src = os.path.join(tmp, 'tars')
        upscale(small, src, a.width / raw_tars.SIZES_WH['hmr2'][0])
        for workers in (0, a.workers):
            out = os.path.join(tmp, f'out{workers}')
            t0 = time.time()
            s = cw.convert(src, out, kind='hmr2', workers=workers, quiet=True)
            dt = time.time() - t0
            n_img = a.tars * a.per_tar
            row = {
                'bench': 'convert_tars',
                'workers': workers,
                'tars': a.tars,
                'images': n_img,
                'persons': s['splits']['train']['num_records'],
                'image_wh': [a.width, a.width * 160 // 192],
                'seconds': round(dt, 2),
                'images_per_s': round(n_img / dt, 1),
                'persons_per_s': round(len(truth) / dt, 1),
            }
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
