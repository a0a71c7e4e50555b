"""Throughput of data_pipelines/pipeline.py: video batches with full augmentation.

Prints one JSON line per worker count: frames/s delivered to the training loop for batches of
[B, T=16, 256, 192, 3] with HMR 2.0's full augmentation (scale, rotation, translation, colour,
flip, extreme crops) and detector-like noise on the 2D input. The records are realistic: 384x384
JPEG crops (q95, textured like a video frame, about 50 KB) in 4 shards, page cache warm. The
first batch (worker start-up, first reads) is timed separately as `startup_s`.

  python bench/pipeline.py [--workers 0 1 2] [--threads 2] [--batch 2] [--frames 16]
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
from data_pipelines import cropping, shards  # noqa: E402
from data_pipelines import pipeline as pl  # noqa: E402

J = 44


def textured_crop(rng, size=384):
    """Smooth shapes + multi-scale noise, so the JPEG costs what a real crop costs to decode."""
    img = np.zeros((size, size, 3), np.float32)
    for scale, amplitude in ((32, 40), (8, 20), (2, 8)):
        small = rng.normal(0, amplitude, (size // scale + 1, size // scale + 1, 3))
        img += cv2.resize(small.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    for _ in range(6):
        c = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.circle(
            img, tuple(int(v) for v in rng.integers(0, size, 2)), int(rng.integers(10, 80)), c, -1
        )
    return np.clip(img + 110 + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)


def write_dataset(root, sequences, frames, distinct, seed=0):
    """`sequences` tracks of `frames` frames; a person 1.7 m tall walking in front of a camera."""
    rng = np.random.default_rng(seed)
    crops = [cropping.encode_image(textured_crop(rng)) for _ in range(distinct)]
    K = np.array([[1500.0, 0, 960], [0, 1500.0, 540], [0, 0, 1]], np.float32)
    with shards.RecordWriter(
        os.path.join(root, 'bench'),
        'bench',
        'train',
        num_shards=4,
        num_joints=J,
        body_model='smpl',
        fsync=False,
    ) as w:
        n = 0
        for s in range(sequences):
            offsets = rng.uniform(-1, 1, (J, 3)) * [0.3, 0.85, 0.15]
            for f in range(frames):
                kp3d = (np.array([0.02 * f - 0.5, 0.0, 5.0]) + offsets).astype(np.float32)
                uv = kp3d @ K.T
                full = uv[:, :2] / uv[:, 2:]
                box = np.concatenate([full.min(0), full.max(0)]).astype(np.float32)
                _, affine = cropping.crop_person(np.zeros((1, 1, 3), np.uint8), box, 384)
                kp2d = np.ones((J, 3), np.float32)
                kp2d[:, :2] = cropping.apply_affine(affine, full)
                w.write(
                    dict(
                        image=crops[n % distinct],
                        crop_affine=affine,
                        image_size=np.array([1080, 1920]),
                        K=K,
                        box=box,
                        kp2d=kp2d,
                        kp3d=kp3d,
                        pose=rng.normal(0, 0.2, 72),
                        betas=np.zeros(10),
                        gender='neutral',
                        sequence=f'seq{s:03d}',
                        track=0,
                        frame=f,
                    )
                )
                n += 1
    return n, int(np.mean([len(c) for c in crops]))


def _tree_cpu_seconds():
    """CPU seconds of this process plus its live children (grain's workers), from /proc: a
    figure that, unlike wall time, does not depend on what else the machine runs."""
    total = time.process_time()
    tick = os.sysconf('SC_CLK_TCK')
    me = os.getpid()
    kids = set()
    for tid in os.listdir(f'/proc/{me}/task'):
        try:
            with open(f'/proc/{me}/task/{tid}/children') as f:
                kids.update(f.read().split())
        except OSError:
            pass
    for pid in kids:
        try:
            with open(f'/proc/{pid}/stat') as f:
                fields = f.read().rsplit(')', 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except OSError:
            pass
    return total


def measure(cfg, batches):
    it = pl.make_iterator(cfg, 0, 1)
    t0 = time.perf_counter()
    next(it)
    startup = time.perf_counter() - t0
    t0, c0 = time.perf_counter(), _tree_cpu_seconds()
    for _ in range(batches):
        batch = next(it)
    seconds, cpu = time.perf_counter() - t0, _tree_cpu_seconds() - c0
    if hasattr(it, 'close'):
        it.close()
    assert batch['image'].shape[1:] == (cfg.num_frames, 256, 192, 3)
    return startup, seconds, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--workers', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--threads', type=int, default=2, help='reader threads per process')
    ap.add_argument('--batch', type=int, default=2, help='clips per batch')
    ap.add_argument('--frames', type=int, default=16, help='T')
    ap.add_argument('--batches', type=int, default=30, help='timed batches per setting')
    ap.add_argument('--sequences', type=int, default=8)
    ap.add_argument('--seq-frames', type=int, default=64)
    ap.add_argument('--dir', default=None, help='parent of the scratch dataset (default: tmp)')
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix='bench_pipeline_', dir=args.dir)
    try:
        n, jpeg = write_dataset(tmp, args.sequences, args.seq_frames, distinct=64)
        for workers in args.workers:
            cfg = pl.PipelineConfig(
                data_root=tmp,
                datasets=(pl.DatasetSpec('bench'),),
                num_frames=args.frames,
                batch_size=args.batch,
                num_workers=workers,
                num_threads=args.threads,
                pose_source='noisy_gt',
                seed=0,
            )
            startup, seconds, cpu = measure(cfg, args.batches)
            frames = args.batches * args.batch * args.frames
            print(
                json.dumps(
                    {
                        'bench': 'pipeline',
                        'workers': workers,
                        'threads': args.threads,
                        'batch': [args.batch, args.frames, 256, 192, 3],
                        'augment': 'full',
                        'pose_source': 'noisy_gt',
                        'records': n,
                        'jpeg_bytes': jpeg,
                        'cpus': os.cpu_count(),
                        'startup_s': round(startup, 2),
                        'seconds': round(seconds, 2),
                        'frames_per_s': round(frames / seconds, 1),
                        'clips_per_s': round(frames / seconds / args.frames, 2),
                        # CPU of this process and its workers per frame, and the frames/s that
                        # implies for all cores of an otherwise idle machine.
                        'cpu_ms_per_frame': round(cpu / frames * 1e3, 3),
                        'cpu_bound_frames_per_s': round(os.cpu_count() * frames / cpu, 1),
                        'load_avg_1m': round(os.getloadavg()[0], 2),
                    }
                ),
                flush=True,
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
