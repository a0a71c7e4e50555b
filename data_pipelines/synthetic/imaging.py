"""Image synthesis around the meshes (OpenCV + numpy only): the parts of a synthetic image that
`render.render_meshes` does not draw.

Smooth-noise textures and random colours, random backgrounds, a textured plane seen by a
perspective camera (ground / backdrop), 2D occluders, motion / defocus blur and sensor noise.
Camera frame, pixel centres and colour order follow the conventions in `render.py`.
add_occluders marks its pixels OCCLUDER_ID (beside render.BACKGROUND_ID) in a render_meshes
mask, with depth 0. All randomness comes from a `numpy.random.Generator` passed in.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

OCCLUDER_ID = -2


# ----------------------------------------------------------------------------- textures


def smooth_noise(
    rng: np.random.Generator,
    h: int,
    w: int,
    octaves: int = 4,
    base_cells: int = 3,
    persistence: float = 0.55,
) -> np.ndarray:
    """Fractal value noise in [0, 1], (h, w) float32: random grids upsampled bicubically."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    cells = base_cells
    for _ in range(octaves):
        gh = max(2, int(round(cells * h / max(h, w))) + 1)
        gw = max(2, int(round(cells * w / max(h, w))) + 1)
        grid = rng.random((gh, gw)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= persistence
        cells *= 2
    out /= total
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def random_color(rng: np.random.Generator, lo: float = 20, hi: float = 235) -> np.ndarray:
    return rng.uniform(lo, hi, 3)


def _palette_map(t: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Maps t in [0, 1] (h, w) through a piecewise-linear palette (k, 3)."""
    k = len(colors)
    x = np.clip(t, 0, 1) * (k - 1)
    i = np.minimum(x.astype(np.int64), k - 2)
    f = (x - i)[..., None]
    return colors[i] * (1 - f) + colors[i + 1] * f


def random_texture(
    rng: np.random.Generator, h: int, w: int, kind: Optional[str] = None
) -> np.ndarray:
    """A random (h, w, 3) uint8 texture: 'noise', 'gradient', 'stripes', 'checker' or 'cells'."""
    kinds = ('noise', 'gradient', 'stripes', 'checker', 'cells')
    kind = kind or kinds[int(rng.integers(len(kinds)))]
    colors = np.stack([random_color(rng) for _ in range(int(rng.integers(2, 5)))])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == 'noise':
        t = smooth_noise(
            rng, h, w, octaves=int(rng.integers(3, 6)), base_cells=int(rng.integers(2, 6))
        )
    elif kind == 'gradient':
        ang = rng.uniform(0, 2 * np.pi)
        t = np.cos(ang) * xx / max(w, 1) + np.sin(ang) * yy / max(h, 1)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        t = 0.8 * t + 0.2 * smooth_noise(rng, h, w, 3, 4)
    elif kind == 'stripes':
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(0.05, 0.3) * max(h, w)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(ang) * xx + np.sin(ang) * yy) / period)
        t = 0.75 * t + 0.25 * smooth_noise(rng, h, w, 3, 6)
    elif kind == 'checker':
        cell = rng.uniform(0.04, 0.2) * max(h, w)
        t = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2).astype(np.float32)
        t = 0.8 * t + 0.2 * smooth_noise(rng, h, w, 3, 8)
    elif kind == 'cells':  # tiles / bricks / windows
        cw, ch = rng.uniform(0.05, 0.25, 2) * max(h, w)
        gap = rng.uniform(0.05, 0.2)
        fx, fy = (xx / cw) % 1.0, (yy / ch) % 1.0
        t = ((fx > gap) & (fy > gap)).astype(np.float32)
        t = 0.7 * t + 0.3 * smooth_noise(rng, h, w, 4, 6)
    else:
        raise ValueError(f'unknown texture kind {kind!r}')
    img = _palette_map(t, colors)
    grain = rng.normal(0, rng.uniform(1, 6), (h, w, 1))
    return np.clip(img + grain, 0, 255).astype(np.uint8)


def add_random_shapes(rng: np.random.Generator, image: np.ndarray, count: int) -> np.ndarray:
    """Draws `count` random filled rectangles, circles, ellipses and thick lines (in place)."""
    h, w = image.shape[:2]
    for _ in range(count):
        color = tuple(float(c) for c in random_color(rng))
        kind = int(rng.integers(4))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = int(rng.uniform(0.04, 0.3) * max(h, w))
        if kind == 0:
            cv2.rectangle(image, (x, y), (x + size, y + int(size * rng.uniform(0.3, 2))), color, -1)
        elif kind == 1:
            cv2.circle(image, (x, y), max(2, size // 2), color, -1, cv2.LINE_AA)
        elif kind == 2:
            cv2.ellipse(
                image,
                (x, y),
                (max(2, size // 2), max(2, int(size * rng.uniform(0.1, 0.5)))),
                float(rng.uniform(0, 180)),
                0,
                360,
                color,
                -1,
                cv2.LINE_AA,
            )
        else:
            x2, y2 = int(rng.integers(0, w)), int(rng.integers(0, h))
            cv2.line(image, (x, y), (x2, y2), color, int(rng.integers(1, 6)), cv2.LINE_AA)
    return image


def random_background(
    rng: np.random.Generator, size_wh, shapes: Optional[int] = None
) -> np.ndarray:
    """A (H, W, 3) uint8 background: a random texture, some shapes, a soft vignette."""
    w, h = size_wh
    img = random_texture(rng, h, w)
    n = int(rng.integers(0, 8)) if shapes is None else shapes
    add_random_shapes(rng, img, n)
    if n:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.3, 1.5)))
    light = 0.75 + 0.4 * smooth_noise(rng, h, w, 2, 2)
    return np.clip(img * light[..., None], 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- textured planes


def pixel_rays(K: np.ndarray, R: np.ndarray, size_wh) -> np.ndarray:
    """World-frame ray directions (H, W, 3) of every pixel centre, scaled so that camera z = 1."""
    W, H = size_wh
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float64)
    cam = np.stack([xs, ys, np.ones_like(xs)], -1) @ np.linalg.inv(np.asarray(K, np.float64)).T
    return cam @ np.asarray(R, np.float64)  # R^T d for every pixel


def _remap_points(tex: np.ndarray, mx: np.ndarray, my: np.ndarray) -> np.ndarray:
    """Bilinear, wrapped texture lookups at N points: (N, C). (cv2.remap wants maps < 32767 wide.)"""
    n = len(mx)
    cols = 1024
    rows = -(-n // cols)
    pad = rows * cols - n
    mx = np.concatenate([mx, np.zeros(pad, np.float32)]).reshape(rows, cols)
    my = np.concatenate([my, np.zeros(pad, np.float32)]).reshape(rows, cols)
    out = cv2.remap(tex, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    return out.reshape(rows * cols, -1)[:n]


def render_plane(
    image: np.ndarray,
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    origin,
    axis_u,
    axis_v,
    texture: np.ndarray,
    tile_size_m,
    extent=None,
    depth: Optional[np.ndarray] = None,
    fog_color=None,
    fog_distance: float = 40.0,
    shade: float = 1.0,
    rays: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Draws an infinite (or `extent`-limited) textured plane into `image` (in place).

    The plane is {origin + a axis_u + b axis_v} in the world frame, seen by a camera with
    X_cam = R X_world + t and intrinsics K. axis_u / axis_v are orthonormal; the texture repeats
    every tile_size_m = (su, sv) metres (texture column = a / su, row = b / sv). extent =
    (a0, a1, b0, b1) limits the plane. Only pixels whose ray hits the plane in front of the
    camera, and nearer than `depth` where given, are drawn; `depth` is updated. Far texels come
    from coarser mip levels (no moire) and fade towards fog_color. `rays`: pixel_rays(K, R, ...)
    when several planes share a camera. Returns the per-pixel plane depth (+inf: not drawn).
    """
    H, W = image.shape[:2]
    R = np.asarray(R, np.float64)
    C = -R.T @ np.asarray(t, np.float64)
    o, u, v = (np.asarray(x, np.float64) for x in (origin, axis_u, axis_v))
    n = np.cross(u, v)
    if rays is None:
        rays = pixel_rays(K, R, (W, H))
    denom = rays @ n
    num = (o - C) @ n
    with np.errstate(divide='ignore', invalid='ignore'):
        s_all = num / denom  # = camera z of the hit
    hit = np.isfinite(s_all) & (s_all > 1e-3)
    if depth is not None:
        hit &= s_all < depth
    out_depth = np.full((H, W), np.inf, np.float32)
    ys, xs = np.nonzero(hit)
    if not len(ys):
        return out_depth
    d = rays[ys, xs]
    s = s_all[ys, xs]
    rel = C - o + s[:, None] * d
    a, b = rel @ u, rel @ v
    if extent is not None:
        a0, a1, b0, b1 = extent
        keep = (a >= a0) & (a <= a1) & (b >= b0) & (b <= b1)
        ys, xs, d, s, a, b = ys[keep], xs[keep], d[keep], s[keep], a[keep], b[keep]
        if not len(ys):
            return out_depth
    th, tw = texture.shape[:2]
    su, sv = (float(x) for x in np.broadcast_to(np.asarray(tile_size_m, np.float64), (2,)))
    # texels per pixel = pixel footprint on the plane (grazing angles stretch it) / texel size
    dn = np.linalg.norm(d, axis=1)
    cos_inc = np.abs(denom[ys, xs]) / dn
    footprint = s * dn / (0.5 * (K[0, 0] + K[1, 1])) / np.maximum(cos_inc, 0.05)
    level = np.log2(np.maximum(footprint * max(tw / su, th / sv), 1e-6))
    pyramid = [texture.astype(np.float32)]
    while len(pyramid) < 6 and min(pyramid[-1].shape[:2]) >= 8:
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    level = np.clip(level, 0, len(pyramid) - 1)
    lo = np.minimum(np.floor(level).astype(np.int64), len(pyramid) - 1)
    frac = (level - lo)[:, None].astype(np.float32)
    mu = (a / su * tw).astype(np.float32)
    mv = (b / sv * th).astype(np.float32)
    col = np.zeros((len(ys), 3), np.float32)
    for k in np.unique(lo):
        sel = np.flatnonzero(lo == k)
        for lev, wgt in ((k, 1 - frac[sel]), (min(k + 1, len(pyramid) - 1), frac[sel])):
            tex = pyramid[lev]
            sx, sy = tex.shape[1] / tw, tex.shape[0] / th
            sample = _remap_points(
                tex, mu[sel] * sx - 0.5 * (1 - sx), mv[sel] * sy - 0.5 * (1 - sy)
            )
            col[sel] += wgt * sample
    col *= shade
    if fog_color is not None:
        f = (1.0 - np.exp(-s / fog_distance))[:, None].astype(np.float32)
        col = col * (1 - f) + np.asarray(fog_color, np.float32) * f
    image[ys, xs] = np.clip(np.round(col), 0, 255).astype(np.uint8)
    out_depth[ys, xs] = s
    if depth is not None:
        depth[ys, xs] = s
    return out_depth


# ----------------------------------------------------------------------------- occluders and blur


def add_occluders(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    depth: np.ndarray,
    box,
    count: int = 1,
    coverage=(0.15, 0.5),
) -> np.ndarray:
    """Pastes `count` textured rectangles / ellipses partly over `box` = (x0, y0, x1, y1).

    Updates image, mask (OCCLUDER_ID) and depth (0: in front of everything) in place; returns the
    bool (H, W) occluder pixels. `coverage` bounds the occluder size as a fraction of the box.
    """
    H, W = image.shape[:2]
    x0, y0, x1, y1 = (float(c) for c in box)
    bw, bh = max(x1 - x0, 2.0), max(y1 - y0, 2.0)
    occ = np.zeros((H, W), np.uint8)
    for _ in range(count):
        shape = np.zeros((H, W), np.uint8)
        fw = rng.uniform(*coverage) * bw * 1.4
        fh = rng.uniform(*coverage) * bh * 1.4
        # the centre sits on the box border or inside it, so part of the box is covered
        cx = rng.uniform(x0, x1) if rng.random() < 0.5 else (x0 if rng.random() < 0.5 else x1)
        cy = rng.uniform(y0, y1)
        if rng.random() < 0.5:
            ang = rng.uniform(-30, 30)
            rect = ((float(cx), float(cy)), (float(fw), float(fh)), float(ang))
            cv2.fillConvexPoly(shape, np.round(cv2.boxPoints(rect)).astype(np.int32), 1, cv2.LINE_8)
        else:
            cv2.ellipse(
                shape,
                (int(round(cx)), int(round(cy))),
                (max(2, int(fw / 2)), max(2, int(fh / 2))),
                float(rng.uniform(0, 180)),
                0,
                360,
                1,
                -1,
                cv2.LINE_8,
            )
        sel = shape.astype(bool)
        if not sel.any():
            continue
        tex = random_texture(rng, H, W)
        shade = 0.6 + 0.5 * smooth_noise(rng, H, W, 2, 2)
        image[sel] = np.clip(tex[sel] * shade[sel][:, None], 0, 255).astype(np.uint8)
        occ |= shape
    sel = occ.astype(bool)
    mask[sel] = OCCLUDER_ID
    depth[sel] = 0.0
    return sel


def motion_blur(image: np.ndarray, length: float, angle_deg: float) -> np.ndarray:
    """Linear motion blur of `length` pixels along `angle_deg`."""
    n = max(3, int(np.ceil(length)) | 1)
    k = np.zeros((n, n), np.float32)
    c = n // 2
    d = np.array([np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))]) * length / 2
    cv2.line(
        k,
        (int(round(c - d[0] * 16)), int(round(c - d[1] * 16))),
        (int(round(c + d[0] * 16)), int(round(c + d[1] * 16))),
        1.0,
        1,
        cv2.LINE_AA,
        4,
    )
    k /= max(k.sum(), 1e-6)
    return cv2.filter2D(image, -1, k, borderType=cv2.BORDER_REFLECT)


def defocus_blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Disk-kernel (out of focus) blur of `radius` pixels."""
    r = max(1, int(np.ceil(radius)))
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    cv2.circle(k, (r * 16, r * 16), int(round(radius * 16)), 1.0, -1, cv2.LINE_AA, 4)
    k /= max(k.sum(), 1e-6)
    return cv2.filter2D(image, -1, k, borderType=cv2.BORDER_REFLECT)


def random_blur(
    rng: np.random.Generator, image: np.ndarray, p_motion: float = 0.1, p_defocus: float = 0.1
) -> np.ndarray:
    """Now and then a motion or defocus blur (sizes relative to the image diagonal)."""
    diag = float(np.hypot(*image.shape[:2]))
    r = rng.random()
    if r < p_motion:
        return motion_blur(image, rng.uniform(0.006, 0.02) * diag, rng.uniform(0, 180))
    if r < p_motion + p_defocus:
        return defocus_blur(image, rng.uniform(0.003, 0.008) * diag)
    return image


def sensor_noise(rng: np.random.Generator, image: np.ndarray, sigma=(0.5, 3.0)) -> np.ndarray:
    """Additive Gaussian noise with a random strength."""
    noisy = image.astype(np.float32) + rng.normal(0, rng.uniform(*sigma), image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


__all__ = [
    'OCCLUDER_ID',
    'smooth_noise',
    'random_color',
    'random_texture',
    'add_random_shapes',
    'random_background',
    'pixel_rays',
    'render_plane',
    'add_occluders',
    'motion_blur',
    'defocus_blur',
    'random_blur',
    'sensor_noise',
]
