"""ExtPose on a user's video: frames + 2D keypoints -> per-person SMPL / MANO tracks + an overlay.

    python run_infer.py --video clip.mp4 --keypoints openpose_json/ --checkpoint runs/video_small \\
        --out out/

--video        a video file OpenCV decodes, or a folder of images (sorted by name)
--keypoints    an OpenPose --write_json folder, a COCO-style results .json or a 3DPW .pkl
               (data_pipelines/keypoint_files.py documents each)
--checkpoint   a training workdir (run_train.py's) or an imported HMR 2.0 / HaMeR variables
               directory (python -m extpose_jax.convert.from_torch)
--body_models  the folder with smpl/ or mano/ (default: the checkpoint config's, else the
               synthetic default's under data/)
--intrinsics   a JSON file {"K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]} (default: HMR 2.0's
               focal 5000 / 256 x the image's long side, principal point at the centre)
--set f=v      config overrides, e.g. --set model.attention=dense --set eval.hop=2

Writes into --out: people.npz (one row per person and frame: runner.ROW_FIELDS, + vertices with
--save_vertices), summary.json (inputs, model, tracks with their jitter, timings) and
overlay.mp4 (unless --no_render; --png also writes every frame as a PNG). Every file appears
complete or not at all. docs/inference.md has the details.
"""

from __future__ import annotations

import json
import os

import numpy as np

from extpose_jax import errors


def parse_args(argv):
    ap = errors.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--video', required=True)
    ap.add_argument('--keypoints', required=True)
    ap.add_argument('--checkpoint', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--body_models', default=None)
    ap.add_argument('--intrinsics', default=None)
    ap.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE')
    ap.add_argument('--batch_size', type=int, default=8, help='windows per model call')
    ap.add_argument('--hop', type=int, default=None, help='frames between windows (T // 2)')
    ap.add_argument('--box_scale', type=float, default=None, help='keypoint box growth (1.15)')
    ap.add_argument('--max_gap', type=int, default=2, help='missing frames a track survives')
    ap.add_argument('--no_render', action='store_true')
    ap.add_argument('--png', action='store_true', help='also write overlay frames as PNGs')
    ap.add_argument('--draw_keypoints', action='store_true', help='input skeletons on the overlay')
    ap.add_argument('--save_vertices', action='store_true', help='mesh vertices in people.npz')
    ap.add_argument('--quiet', action='store_true', help='no progress bars')
    a = ap.parse_args(argv)
    for name in ('batch_size', 'hop'):
        v = getattr(a, name)
        if v is not None and v < 1:
            ap.error(f'--{name} must be >= 1, got {v}')
    if a.box_scale is not None and not a.box_scale > 0:
        ap.error(f'--box_scale must be > 0, got {a.box_scale}')
    if a.max_gap < 0:
        ap.error(f'--max_gap must be >= 0, got {a.max_gap}')
    return a


def read_intrinsics(path: str):
    from data_pipelines import convert_common

    data = convert_common.load_json(path)
    try:
        return np.asarray(data['K'], np.float64)
    except (KeyError, TypeError, ValueError):
        raise errors.DataFileError(f'{path}: expected {{"K": 3x3 numbers}}') from None


def body_models_dir(given, cfg) -> str:
    if given:
        return given
    if cfg.get('body_models'):
        return cfg.body_models
    synthetic = os.path.join(cfg.data_dir, 'synthetic', cfg.synthetic_size, 'raw', 'body_models')
    if os.path.isdir(synthetic):
        return synthetic
    raise errors.UserError(
        f'--body_models: the checkpoint names no body models and {synthetic} does not exist; '
        'give the folder holding smpl/ (or mano/)'
    )


def write_outputs(out_dir: str, result, summary: dict, save_vertices: bool) -> None:
    from data_pipelines.atomic_file import atomic_write

    rows = {k: v for k, v in result.rows.items() if save_vertices or k != 'vertices'}
    atomic_write(os.path.join(out_dir, 'people.npz'), lambda f: np.savez(f, **rows))
    text = json.dumps(summary, indent=1).encode()
    atomic_write(os.path.join(out_dir, 'summary.json'), lambda f: f.write(text))


def main(argv=None) -> dict:
    a = parse_args(argv)
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # orbax's notes on every restore are not for users
    from configs import common
    from data_pipelines import keypoint_files
    from extpose_jax.infer import camera, model_source, overlay, people, runner, video_io
    from extpose_jax.train import evaluate

    frames = video_io.Frames(a.video)  # unreadable input fails before the model loads
    detections = keypoint_files.read_keypoints(a.keypoints)
    K = camera.intrinsics(frames.size_wh, read_intrinsics(a.intrinsics) if a.intrinsics else None)
    cfg, variables, what = model_source.load(
        a.checkpoint, lambda kind: common.base(kind, 'paper', 1), a.set
    )
    models = body_models_dir(a.body_models, cfg)
    os.makedirs(a.out, exist_ok=True)
    print(
        f'{what}: {cfg.model.kind} {cfg.model.arch} ViT-{cfg.model.size}, T = '
        f'{cfg.data.num_frames}; {len(detections)} frames with keypoints in {a.keypoints}'
    )
    result = runner.run(
        cfg,
        variables,
        models,
        frames,
        detections,
        K=K,
        keypoints_source=a.keypoints,
        batch_size=a.batch_size,
        hop=a.hop,
        box_scale=a.box_scale or people.KEYPOINT_BOX_SCALE,
        max_gap=a.max_gap,
        progress=not a.quiet,
    )
    jitter = runner.track_jitter(result.rows)
    n_rows = len(result.rows['frame'])
    summary = {
        'video': os.path.abspath(a.video),
        'keypoints': os.path.abspath(a.keypoints),
        'checkpoint': what,
        'model': {k: cfg.model[k] for k in ('kind', 'arch', 'size', 'mask', 'pose_form')},
        'num_frames_model': int(cfg.data.num_frames),
        'frames': result.num_frames,
        'fps': frames.fps,
        'image_size': list(frames.size_wh),
        'K': np.asarray(K).tolist(),
        'rows': n_rows,
        'frames_with_people': int(len(np.unique(result.rows['frame']))),
        'skipped_detections': result.skipped,
        'tracks': {str(k): v for k, v in jitter.items()},
        'fields': dict(runner.ROW_FIELDS),
        'timings_s': result.timings,
    }
    if not a.no_render:
        faces = evaluate.JaxBodies(cfg.model.kind, models).faces
        png = os.path.join(a.out, 'frames') if a.png else None
        if png:
            os.makedirs(png, exist_ok=True)
        rendered = overlay.write_video(
            os.path.join(a.out, 'overlay.mp4'),
            frames,
            result.rows,
            faces,
            K,
            detections=detections if a.draw_keypoints else None,
            png_dir=png,
            double_sided=cfg.model.kind == 'mano',
            progress=not a.quiet,
        )
        summary['timings_s']['render'] = rendered['seconds']
    write_outputs(a.out, result, summary, a.save_vertices)
    fps = result.num_frames / max(summary['timings_s']['total'], 1e-9)
    print(
        f'{n_rows} person-frames in {len(jitter)} tracks over {result.num_frames} frames '
        f'({fps:.1f} frames/s without rendering) -> {a.out}'
    )
    return summary


if __name__ == '__main__':
    errors.guard(main)
