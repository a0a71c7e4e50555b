"""Overlay images for evaluation: prediction against ground truth on the model's input crop.

Each PNG is the 256 x 192 window the model saw with the ground-truth 2D skeleton, the
predicted skeleton (its 3D keypoints through the predicted crop camera) and the outline of the
predicted mesh's silhouette, in fixed colours named by a legend. Colours mark the source, not
the limb: a palette per limb would make GT and prediction hard to tell apart.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from data_pipelines.atomic_file import atomic_write

GT_COLOR = (40, 220, 40)  # RGB
PRED_COLOR = (255, 60, 60)
MESH_COLOR = (255, 210, 0)
_SHIFT = 4  # fixed-point bits for sub-pixel triangle fills
_FAR = 1e4  # pixel coordinates are clipped here (int overflow in cv2)


def mesh_silhouette(points_2d: np.ndarray, faces: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 mask, 255 where any triangle of the projected mesh covers the pixel.

    Triangles are filled one by one: cv2.fillPoly on many polygons leaves overlaps empty
    (even-odd rule), and a silhouette is the union. Triangles with a vertex that did not
    project (behind the camera: non-finite) are left out.
    """
    mask = np.zeros(hw, np.uint8)
    tri = np.asarray(points_2d, np.float64)[np.asarray(faces)]  # (F, 3, 2)
    tri = tri[np.isfinite(tri).all(axis=(1, 2))]
    fixed = np.round(np.clip(tri, -_FAR, _FAR) * (1 << _SHIFT)).astype(np.int32)
    for t in fixed:
        cv2.fillConvexPoly(mask, t, 255, lineType=cv2.LINE_8, shift=_SHIFT)
    return mask


def _point(xy) -> tuple[int, int]:
    x, y = np.clip(np.asarray(xy, np.float64), -_FAR, _FAR).tolist()
    return round(x), round(y)


def draw_skeleton(
    image: np.ndarray,
    kp2d: np.ndarray,
    visible: np.ndarray,
    limbs: Sequence[tuple[int, int]],
    color,
) -> None:
    """Draws limbs between visible joints and the visible joints, in place."""
    ok = np.asarray(visible, bool) & np.isfinite(kp2d[:, :2]).all(-1)
    for a, b in limbs:
        if ok[a] and ok[b]:
            cv2.line(image, _point(kp2d[a, :2]), _point(kp2d[b, :2]), color, 1, cv2.LINE_AA)
    for j in np.flatnonzero(ok):
        cv2.circle(image, _point(kp2d[j, :2]), 2, color, -1, cv2.LINE_AA)


def draw_legend(image: np.ndarray, entries: Sequence[tuple[str, tuple]]) -> None:
    """Colour swatches and names in the top-left corner, on a darkened strip, in place."""
    line_h, x0 = 12, 4
    h = line_h * len(entries) + 4
    image[:h, :80] = (image[:h, :80] * 0.4).astype(np.uint8)
    for i, (name, color) in enumerate(entries):
        y = 2 + i * line_h
        cv2.rectangle(image, (x0, y + 2), (x0 + 8, y + 9), color, -1)
        cv2.putText(
            image,
            name,
            (x0 + 12, y + 9),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.32,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )


def render_overlay(
    image: np.ndarray,
    gt_kp2d: np.ndarray,
    pred_kp2d: np.ndarray,
    limbs: Sequence[tuple[int, int]],
    mesh_2d: np.ndarray | None = None,
    faces: np.ndarray | None = None,
) -> np.ndarray:
    """The RGB crop (H, W, 3) with GT (gt_kp2d (J, 3): x, y, conf; conf > 0 drawn) and predicted
    (pred_kp2d (J, 2)) skeletons, and the predicted mesh outline (mesh_2d (V, 2) + faces)."""
    out = np.ascontiguousarray(image, np.uint8).copy()
    entries = [('GT 2D', GT_COLOR), ('pred 2D', PRED_COLOR)]
    if mesh_2d is not None and faces is not None:
        mask = mesh_silhouette(mesh_2d, faces, out.shape[:2])
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, MESH_COLOR, 1, cv2.LINE_AA)
        entries.append(('pred mesh', MESH_COLOR))
    draw_skeleton(out, gt_kp2d, gt_kp2d[:, 2] > 0, limbs, GT_COLOR)
    draw_skeleton(out, pred_kp2d, np.ones(len(pred_kp2d), bool), limbs, PRED_COLOR)
    draw_legend(out, entries)
    return out


def write_png(path: str, image_rgb: np.ndarray) -> None:
    """An RGB uint8 image as a PNG, written atomically."""
    ok, data = cv2.imencode('.png', cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f'{path}: cannot encode a {image_rgb.shape} image as PNG')
    atomic_write(path, lambda f: f.write(data.tobytes()), fsync=False)


def write_overlay(path: str, image, gt_kp2d, pred_kp2d, limbs, mesh_2d=None, faces=None) -> None:
    """render_overlay(...) saved as a PNG at path (its folder is created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_png(path, render_overlay(image, gt_kp2d, pred_kp2d, limbs, mesh_2d, faces))
