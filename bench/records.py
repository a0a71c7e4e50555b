"""Throughput of the record files (data_pipelines/shards.py, record_reader.py): write,
sequential read, random read.

Prints one JSON line per measurement. Crops are realistic-size JPEGs (384x384, quality 95) cut
from synthetic 1080p frames with texture at several scales, so JPEG sizes resemble real photos.
Reads run right after writing, so the shards are in the page cache ("cache": "warm"): the
figures measure this code (pread, CRC, Example parse, JPEG decode), not the disk.

  python bench/records.py [--records 2000] [--shards 8] [--distinct 200] [--dir /tmp]
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from data_pipelines import cropping, record_reader, shards  # noqa: E402

J, BODY_MODEL = 44, 'smpl'


def synthetic_frame(rng, h=1080, w=1920):
    """Smooth shapes + multi-scale noise: compresses roughly like a real video frame."""
    img = np.zeros((h, w, 3), np.float32)
    for scale, amplitude in ((64, 40), (16, 20), (4, 8)):
        small = rng.normal(0, amplitude, (h // scale + 1, w // scale + 1, 3)).astype(np.float32)
        img += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[:h, :w]
    for _ in range(12):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.circle(
            img,
            (int(rng.integers(0, w)), int(rng.integers(0, h))),
            int(rng.integers(20, 200)),
            c,
            -1,
        )
    img += rng.normal(0, 2, img.shape)  # sensor noise
    return np.clip(img + 110, 0, 255).astype(np.uint8)


def emit(**kw):
    print(json.dumps({'bench': 'records', 'image': '384x384 jpeg', **kw}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--records', type=int, default=2000, help='records written and read')
    ap.add_argument('--shards', type=int, default=8)
    ap.add_argument('--distinct', type=int, default=200, help='distinct crops (reused cyclically)')
    ap.add_argument('--crop-size', type=int, default=384)
    ap.add_argument('--quality', type=int, default=95)
    ap.add_argument('--random-reads', type=int, default=2000)
    ap.add_argument('--dir', default=None, help='parent of the scratch dataset (default: tmp)')
    ap.add_argument('--keep', action='store_true', help='keep the written dataset')
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    image = f'{args.crop_size}x{args.crop_size} jpeg'

    # Crop + encode (converter-side cost), on distinct frames and boxes.
    frames = [synthetic_frame(rng) for _ in range(min(args.distinct, 8))]
    crops = []
    t = time.perf_counter()
    for k in range(args.distinct):
        x0, y0 = rng.uniform(100, 1300), rng.uniform(50, 300)
        box = (x0, y0, x0 + rng.uniform(150, 500), y0 + rng.uniform(400, 750))
        crops.append(
            cropping.crop_and_encode(
                frames[k % len(frames)], box, args.crop_size, quality=args.quality
            )
        )
    dt = time.perf_counter() - t
    jpeg_kb = float(np.mean([len(c[0]) for c in crops]) / 1024)
    emit(
        op='crop_encode',
        records_per_s=round(args.distinct / dt, 1),
        n=args.distinct,
        image=image,
        source='1080x1920 frame',
        jpeg_kb=round(jpeg_kb, 1),
    )

    recs = []
    for i in range(args.records):
        jpeg, affine = crops[i % len(crops)]
        recs.append(
            {
                'image': jpeg,
                'crop_affine': affine,
                'image_size': np.array([1080, 1920]),
                'K': np.array([[1500, 0, 960], [0, 1500, 540], [0, 0, 1]], np.float32),
                'box': np.array([100, 100, 400, 800], np.float32),
                'kp2d': rng.uniform(0, 384, (J, 3)).astype(np.float32),
                'kp3d': rng.normal(0, 0.5, (J, 3)).astype(np.float32),
                'pose': rng.normal(0, 0.2, 72).astype(np.float32),
                'betas': rng.normal(0, 1, 10).astype(np.float32),
                'gender': 'neutral',
                'sequence': f'seq_{i // 500:03d}',
                'track': (i // 250) % 2,
                'frame': i % 250,
            }
        )

    root = tempfile.mkdtemp(prefix='bench_records_', dir=args.dir)
    out = os.path.join(root, 'ds')
    try:
        t = time.perf_counter()
        with shards.RecordWriter(
            out, 'bench', 'train', num_shards=args.shards, num_joints=J, body_model=BODY_MODEL
        ) as w:
            for rec in recs:
                w.write(rec)
        dt = time.perf_counter() - t
        size = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
        emit(
            op='write',
            records_per_s=round(args.records / dt, 1),
            n=args.records,
            image=image,
            mb_per_s=round(size / dt / 2**20, 1),
            shards=args.shards,
            fsync=True,
            bytes_per_record=size // args.records,
        )

        reader = record_reader.RecordReader(out, 'train')
        for decode, fn in (('crc_only', reader.read_payload), ('example', reader.__getitem__)):
            t = time.perf_counter()
            for i in range(len(reader)):
                fn(i)
            dt = time.perf_counter() - t
            emit(
                op='read_sequential',
                records_per_s=round(len(reader) / dt, 1),
                n=len(reader),
                image=image,
                decode=decode,
                cache='warm',
            )
        decoding = record_reader.RecordReader(out, 'train', decode_images=True)
        n = min(len(reader), 500)
        t = time.perf_counter()
        for i in range(n):
            decoding[i]
        dt = time.perf_counter() - t
        emit(
            op='read_sequential',
            records_per_s=round(n / dt, 1),
            n=n,
            image=image,
            decode='example+jpeg',
            cache='warm',
        )

        order = rng.integers(0, len(reader), args.random_reads)
        for decode, fn in (('crc_only', reader.read_payload), ('example', reader.__getitem__)):
            t = time.perf_counter()
            for i in order:
                fn(int(i))
            dt = time.perf_counter() - t
            emit(
                op='read_random',
                records_per_s=round(len(order) / dt, 1),
                n=len(order),
                image=image,
                decode=decode,
                cache='warm',
            )
        keys = [
            (r['sequence'], r['track'], r['frame']) for r in (recs[int(i)] for i in order[:500])
        ]
        t = time.perf_counter()
        for key in keys:
            reader.lookup(*key)
        dt = time.perf_counter() - t
        emit(
            op='read_random',
            records_per_s=round(len(keys) / dt, 1),
            n=len(keys),
            image=image,
            decode='example',
            access='lookup(sequence, track, frame)',
            cache='warm',
        )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == '__main__':
    main()
