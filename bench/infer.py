"""Inference speed on this machine: run_infer's path on the synthetic default's demo clip.

    python bench/infer.py [--data_dir data] [--size small] [--config video] [--repeats 2]

JSON lines:
  - one line per stage of the whole path for the small model (video.py:small, T = 4, ViT-tiny;
    random weights: speed does not depend on them): decode (frames only), crop (the converters'
    crop + JPEG of every detection), model (windows -> augment_clip -> jitted predict -> body
    model -> full image; compilation excluded: the best of `repeats` runs after a first),
    render (the overlay video), each as seconds and frames/s, and the whole as frames/s;
  - the renderer alone: one SMPL mesh (the neutral model at the mean pose, 3 m in front of the
    camera, filling about half the image height) over a 1280 x 720 frame, frames/s.
The demo clip is built with the synthetic default when missing (data_dir/synthetic/<size>).
"""

import argparse
import json
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _emit(line: dict) -> None:
    print(json.dumps({**line, 'machine': platform.node(), 'cpus': os.cpu_count()}), flush=True)


def _random_variables(cfg):
    from extpose_jax.convert import keymap
    from extpose_jax.models import vit

    rows = keymap.model_rows(
        cfg.model.kind, keymap.vit_dims(vit.ViTConfig.of(cfg.model.size)), head_size='tiny'
    )
    return keymap.from_torch(keymap.random_state_dict(rows, seed=0), rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data_dir', default='data')
    ap.add_argument('--size', default='small')
    ap.add_argument('--config', default='video')
    ap.add_argument('--repeats', type=int, default=2)
    a = ap.parse_args()

    import importlib

    import numpy as np

    from data_pipelines import keypoint_files
    from data_pipelines.synthetic import default_data, render
    from extpose_jax.infer import camera, overlay, people, runner, video_io
    from extpose_jax.train import evaluate

    paths = default_data.ensure(os.path.join(a.data_dir, 'synthetic', a.size), size=a.size)
    demo, models = paths['demo'], paths['body_models']
    cfg = importlib.import_module(f'configs.{a.config}').get_config('small')
    variables = _random_variables(cfg)
    frames = video_io.Frames(os.path.join(demo, 'clip.mp4'))
    detections = keypoint_files.read_keypoints(os.path.join(demo, 'openpose'))
    n_frames = sum(1 for _ in frames)
    common = {'frames': n_frames, 'size_wh': list(frames.size_wh), 'config': f'{a.config}:small'}

    t0 = time.perf_counter()
    decoded = [rgb for _, rgb in frames]
    t_decode = time.perf_counter() - t0
    selected, _ = runner.select_detections(detections, cfg.model.kind)
    t0 = time.perf_counter()
    n_crops = 0
    for f, rgb in enumerate(decoded):
        for det in selected.get(f, ()):
            people.make_crop(rgb, det, cfg.model.kind, people.KEYPOINT_BOX_SCALE)
            n_crops += 1
    t_crop = time.perf_counter() - t0

    results = []
    for _ in range(a.repeats + 1):  # the first compiles
        results.append(runner.run(cfg, variables, models, frames, detections, progress=False))
    best = min(results[1:], key=lambda r: r.timings['model'])
    K = camera.intrinsics(frames.size_wh)
    faces = evaluate.JaxBodies(cfg.model.kind, models).faces
    out = os.path.join(ROOT, 'runs', 'bench_infer_overlay.mp4')
    os.makedirs(os.path.dirname(out), exist_ok=True)
    rendered = overlay.write_video(out, frames, best.rows, faces, K, progress=False)
    stages = {
        'decode': t_decode,
        'crop': t_crop,
        'model': best.timings['model'],
        'render': rendered['seconds'],
    }
    for stage, seconds in stages.items():
        _emit({'bench': 'infer', 'stage': stage, 'seconds': seconds,
               'frames_per_s': n_frames / seconds, 'crops': n_crops, **common})  # fmt: skip
    total = sum(stages.values())
    _emit({'bench': 'infer', 'stage': 'total', 'seconds': total,
           'frames_per_s': n_frames / total, 'person_frames': len(best.rows['frame']),
           'compile_and_first_run_s': results[0].timings['total'], **common})  # fmt: skip

    # The renderer alone: one SMPL mesh at 1280 x 720.
    bodies = evaluate.JaxBodies('smpl', models)
    eye = np.tile(np.eye(3), (1, 1, 1, 1, 1))
    posed = bodies.predicted(
        {
            'global_orient': np.array([[[[[1.0, 0, 0], [0, -1, 0], [0, 0, -1]]]]]),
            'body_pose': np.tile(eye, (1, 1, 23, 1, 1)),
            'betas': np.zeros((1, 1, 10)),
            'pred_cam': np.array([[[1.0, 0, 0]]]),
        }
    )
    verts = posed['vertices'][0, 0] + np.array([0.0, 0.0, 3.0])
    W, H = 1280, 720
    K = camera.intrinsics((W, H), np.array([[600.0, 0, W / 2], [0, 600.0, H / 2], [0, 0, 1]]))
    image = np.full((H, W, 3), 90, np.uint8)
    mesh = render.Mesh(verts, faces, overlay.track_color(0))
    render.render_meshes(image, [mesh], K)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 3.0:
        render.render_meshes(image, [mesh], K)
        n += 1
    seconds = time.perf_counter() - t0
    _emit({'bench': 'render', 'mesh': 'smpl 6890 vertices', 'size_wh': [W, H],
           'frames': n, 'frames_per_s': n / seconds})  # fmt: skip


if __name__ == '__main__':
    main()
