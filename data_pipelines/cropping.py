"""The image side of a record: the square person crop, its affine, JPEG in and out.

A record holds a JPEG crop around the person plus the 2x3 affine from full-image pixels to crop
pixels, so that labels given in full-image pixels (keypoints, boxes) can be mapped into the crop
(apply_affine) by the converters, and the augmentation can compose its own affine after it.
"""

from __future__ import annotations

import cv2
import numpy as np


def encode_image(rgb: np.ndarray, quality: int = 95) -> bytes:
    """uint8 HxWx3 RGB -> JPEG bytes."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'image must be uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}')
    ok, buf = cv2.imencode(
        '.jpg', cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError('cv2.imencode failed to encode the crop as JPEG')
    return buf.tobytes()


def decode_image(jpeg: bytes) -> np.ndarray:
    """JPEG bytes -> uint8 HxWx3 RGB."""
    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f'cannot decode image ({len(jpeg)} bytes, not a valid JPEG)')
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def crop_person(
    image: np.ndarray, box, crop_size: int = 384, margin: float = 0.25
) -> tuple[np.ndarray, np.ndarray]:
    """Square crop around a person box, resized so its side is `crop_size` pixels.

    The crop covers the box's long side plus `margin` of it on each side (so 1.5x at 0.25), leaving
    pixels for later scale/rotation augmentation; area outside the image is black. Returns
    (crop uint8 [crop_size, crop_size, 3], affine 2x3 float32 mapping full-image pixels to crop
    pixels). Pixel centres are at integer coordinates (OpenCV convention) in both frames.
    """
    image = np.asarray(image)
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f'box must have x1 > x0 and y1 > y0, got {tuple(box)}')
    # An integer source window, then one resize: INTER_AREA averages properly when shrinking
    # (warpAffine with a large scale-down would alias), and the affine stays exact.
    side = int(np.ceil(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    ox = int(round((x0 + x1) / 2 - side / 2))
    oy = int(round((y0 + y1) / 2 - side / 2))
    h, w = image.shape[:2]
    window = np.zeros((side, side) + image.shape[2:], image.dtype)
    sx0, sy0, sx1, sy1 = max(ox, 0), max(oy, 0), min(ox + side, w), min(oy + side, h)
    if sx1 > sx0 and sy1 > sy0:
        window[sy0 - oy : sy1 - oy, sx0 - ox : sx1 - ox] = image[sy0:sy1, sx0:sx1]
    interp = cv2.INTER_AREA if side > crop_size else cv2.INTER_LINEAR
    crop = cv2.resize(window, (crop_size, crop_size), interpolation=interp)
    # cv2.resize maps destination pixel d to source (d + 0.5) * side / crop_size - 0.5; invert it.
    s = crop_size / side
    affine = np.array([[s, 0, (0.5 - ox) * s - 0.5], [0, s, (0.5 - oy) * s - 0.5]], np.float32)
    return crop, affine


def crop_and_encode(
    image: np.ndarray, box, crop_size: int = 384, margin: float = 0.25, quality: int = 95
) -> tuple[bytes, np.ndarray]:
    """crop_person + encode_image: returns (JPEG bytes, 2x3 float32 affine full -> crop)."""
    crop, affine = crop_person(image, box, crop_size, margin)
    return encode_image(crop, quality), affine


def apply_affine(affine: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Maps [..., 2] points with a 2x3 affine (e.g. full-image keypoints into crop pixels)."""
    xy = np.asarray(xy, np.float32)
    return xy @ affine[:, :2].T + affine[:, 2]
