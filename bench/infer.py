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
  - with --checkpoint DIR (a trained workdir, e.g. the README's): that model on the demo clip
    against the clip's ground truth (ground_truth.npz, the gendered SMPL in the true camera):
    HMR 2.0's 3DPW MPJPE / PA-MPJPE of the 14 joints, the 2D error of the 44 keypoints in
    pixels (median), the root's depth error, each row matched to the actor whose 2D joints it
    is nearest (the demo's people are untracked in its OpenPose files).
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
    ap.add_argument('--checkpoint', default=None, help='also: accuracy of this model on the demo')
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

    if a.checkpoint:
        _emit({'bench': 'infer_accuracy', **_accuracy(a.checkpoint, demo, models)})

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


def _accuracy(checkpoint: str, demo: str, models: str) -> dict:
    """run_infer.py on the demo clip with `checkpoint`, scored against the clip's truth."""
    import tempfile

    import numpy as np

    import run_infer
    from data_pipelines import convert_3dpw
    from data_pipelines import convert_common as cc
    from extpose_jax import body_models, metrics

    with open(os.path.join(demo, 'camera.json')) as f:
        sequence = json.load(f)['sequence']
    raw = os.path.join(os.path.dirname(models), '3DPW', 'sequenceFiles', 'test', sequence + '.pkl')
    seq = convert_3dpw.load_sequence(raw)
    K = np.asarray(seq['K'], np.float64)
    truth = []  # per actor: (frames, 44, 3) camera-frame keypoints
    for k in range(seq['num_actors']):
        model = body_models.load_from_dir(models, 'smpl', seq['genders'][k])
        frames = np.arange(seq['num_frames'])
        j0 = convert_3dpw.rest_root_joint(model, seq['betas'][k])
        _, transl, out = convert_3dpw.camera_frame_params(model, seq, k, frames, j0)
        truth.append(out['keypoints'] + transl[:, None])
    with tempfile.TemporaryDirectory() as out_dir:
        run_infer.main(['--video', os.path.join(demo, 'clip.mp4'), '--keypoints',
                        os.path.join(demo, 'openpose'), '--checkpoint', checkpoint, '--body_models',
                        models, '--intrinsics', os.path.join(demo, 'camera.json'), '--out',
                        out_dir, '--no_render', '--quiet'])  # fmt: skip
        rows = dict(np.load(os.path.join(out_dir, 'people.npz')))
    pred, gt, px, depth = [], [], [], []
    for r in range(len(rows['frame'])):
        f = int(rows['frame'][r])
        uv = [cc.project(K, t[f])[0] for t in truth]
        err = [np.median(np.linalg.norm(u - rows['joints_2d'][r], axis=-1)) for u in uv]
        k = int(np.argmin(err))
        px.append(err[k])
        pred.append(rows['joints_3d'][r])
        gt.append(truth[k][f])
        depth.append(abs(rows['joints_3d'][r][:, 2].mean() - truth[k][f][:, 2].mean()))
    m = metrics.hmr2_3dpw_eval(np.stack(pred), np.stack(gt))
    return {
        'checkpoint': checkpoint,
        'person_frames': len(pred),
        'mpjpe_mm': float(np.mean(m['mpjpe'])),
        'pa_mpjpe_mm': float(np.mean(m['pa_mpjpe'])),
        'joints_2d_median_px': float(np.median(px)),
        'depth_error_m': float(np.median(depth)),
    }


if __name__ == '__main__':
    main()
