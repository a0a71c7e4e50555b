"""The overlay video: every person's mesh over the full frames, with the project's CPU renderer.

data_pipelines/synthetic/render.py rasterises triangles with OpenCV (painter's algorithm: the
triangles of all meshes together sorted far to near), so several people occlude each other in
depth order, shaded by one light, with no OpenGL / EGL (the headless failures users of
pyrender-based demos hit). Each track keeps one colour. Optionally
the input 2D skeletons are drawn on top, in the layout the file gave them.
"""

from __future__ import annotations

import colorsys
import time

import numpy as np
from tqdm import tqdm

from data_pipelines.synthetic import render
from extpose_jax import skeletons
from extpose_jax.infer import video_io
from extpose_jax.train import overlays


def track_color(track: int) -> np.ndarray:
    """A light, saturated colour per track id, far apart for neighbouring ids (golden ratio)."""
    r, g, b = colorsys.hsv_to_rgb((0.11 + track * 0.618034) % 1.0, 0.45, 0.95)
    return np.array([r, g, b]) * 255.0


def draw_frame(rgb, rows: dict, sel, faces, K, detections=(), double_sided=False) -> np.ndarray:
    """Frame `rgb` with the meshes of rows[sel] (and the detections' skeletons) drawn over it."""
    # A left hand's vertices are mirrored (x negated), which turns its triangles inside out.
    meshes = [
        render.Mesh(
            rows['vertices'][i],
            faces if rows['is_right'][i] else faces[:, ::-1],
            track_color(int(rows['track'][i])),
            double_sided,
        )
        for i in sel
    ]
    out = render.render_meshes(rgb, meshes, K)[0] if meshes else np.array(rgb, copy=True)
    for det in detections:
        layout = skeletons.get_layout(det.layout)
        overlays.draw_skeleton(
            out, det.keypoints, det.keypoints[:, 2] > 0, layout.limbs, (255, 255, 0)
        )
    return out


def write_video(
    path: str,
    frames,
    rows: dict,
    faces: np.ndarray,
    K,
    *,
    detections: dict | None = None,
    png_dir: str | None = None,
    double_sided: bool = False,
    progress: bool = True,
) -> dict:
    """Renders every frame of `frames` (video_io.Frames) into the .mp4 at `path` (and PNGs
    into png_dir). -> {'frames': n, 'seconds': render time}. Nothing under `path` until done."""
    by_frame = {}
    for i, f in enumerate(rows['frame']):
        by_frame.setdefault(int(f), []).append(i)
    writer = video_io.VideoWriter(path, frames.fps, frames.size_wh)
    t0, n = time.perf_counter(), 0
    try:
        for f, rgb in tqdm(frames, desc='render', unit='frame', disable=not progress, leave=False):
            dets = (detections or {}).get(f, ())
            image = draw_frame(rgb, rows, by_frame.get(f, []), faces, K, dets, double_sided)
            writer.write(image)
            if png_dir is not None:
                overlays.write_png(f'{png_dir}/{f:06d}.png', image)
            n += 1
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return {'frames': n, 'seconds': time.perf_counter() - t0}
