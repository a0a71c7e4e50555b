"""The full image's camera at inference: from the model's crop camera back to the video frame.

The model predicts HMR 2.0's weak-perspective crop camera (s, tx, ty): the body, at the origin,
seen by a pinhole of focal FOCAL_LENGTH on a CROP_SIZE-pixel square crop, sits at translation
(tx, ty, 2 FOCAL_LENGTH / (CROP_SIZE s)) (geometry.cam_crop_to_translation). A crop is a square
box of side b (pixels) centred at c in the full image. In the full image's pinhole camera K
(focal f, principal point p), the same body at

    t = (2 (c_x - p_x) / (b s) + tx,  2 (c_y - p_y) / (b s) + ty,  2 f / (b s))

projects its origin to the box centre and keeps the crop's scale: HMR 2.0's demo
(geometry.cam_crop_to_full), which assumes p at the image centre and f = 5000 / 256 max(W, H),
with the user's intrinsics instead when they have them. `full_to_crop` is its exact inverse
(the crop camera a model should predict for a person at translation t).

Without calibration, `intrinsics` gives that nominal camera; the focal is the mean of fx and fy.
"""

from __future__ import annotations

import numpy as np

FOCAL_LENGTH = 5000.0  # HMR 2.0 / HaMeR's crop camera
CROP_SIZE = 256.0


def intrinsics(image_size_wh, K=None) -> np.ndarray:
    """(3, 3) float64: the given K, else HMR 2.0's nominal camera for an image of (W, H)."""
    if K is not None:
        K = np.asarray(K, np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all() or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f'intrinsics must be a finite (3, 3) matrix with fx, fy > 0, got {K}')
        return K
    w, h = (float(x) for x in image_size_wh)
    f = FOCAL_LENGTH / CROP_SIZE * max(w, h)
    return np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])


def _focal(K) -> np.ndarray:
    return 0.5 * (K[..., 0, 0] + K[..., 1, 1])


def crop_to_full(pred_cam, box_center, box_size, K) -> np.ndarray:
    """(..., 3) crop cameras (s, tx, ty) of boxes (..., 2) centre / (...,) side -> (..., 3)
    translations in the camera K (module docstring)."""
    pred_cam, c = np.asarray(pred_cam, np.float64), np.asarray(box_center, np.float64)
    K = np.asarray(K, np.float64)
    bs = np.asarray(box_size, np.float64) * pred_cam[..., 0] + 1e-9  # as upstream's 1e-9
    return np.stack(
        [
            2.0 * (c[..., 0] - K[..., 0, 2]) / bs + pred_cam[..., 1],
            2.0 * (c[..., 1] - K[..., 1, 2]) / bs + pred_cam[..., 2],
            2.0 * _focal(K) / bs,
        ],
        axis=-1,
    )


def full_to_crop(t, box_center, box_size, K) -> np.ndarray:
    """The inverse of crop_to_full: (..., 3) translations -> (..., 3) crop cameras."""
    t, c = np.asarray(t, np.float64), np.asarray(box_center, np.float64)
    K = np.asarray(K, np.float64)
    bs = 2.0 * _focal(K) / t[..., 2]  # = box_size * s
    s = bs / np.asarray(box_size, np.float64)
    return np.stack(
        [
            s,
            t[..., 0] - 2.0 * (c[..., 0] - K[..., 0, 2]) / bs,
            t[..., 1] - 2.0 * (c[..., 1] - K[..., 1, 2]) / bs,
        ],
        axis=-1,
    )
