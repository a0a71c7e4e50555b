"""A small CPU renderer and image-synthesis helpers (OpenCV + numpy only).

Used by the raw-dataset writers of `data_pipelines.synthetic` to draw SMPL / MANO meshes into
images that then go through the real dataset converters. Nothing here knows about bodies or
datasets.

Conventions
-----------
- Camera frame = OpenCV: x right, y down, z forward, metres. A point X projects to
  (u, v) = (K X)[:2] / z. Pixel centres are at integer coordinates, so an image of width W covers
  u in [-0.5, W - 0.5). Putting world-frame geometry into this frame (e.g. SMPL's y-up frame)
  is the caller's job: pass vertices already rotated by a world -> camera rotation.
- Faces are wound counter-clockwise seen from outside (right-hand rule gives the outward
  normal), as in SMPL / MANO. A mirrored mesh must come with reversed faces.
- Colours are 3-vectors in whatever channel order the image uses (the synthetic writers work in
  RGB and convert to BGR only when encoding a jpg).

`render_meshes` is a painter's-algorithm rasteriser: back faces are culled, the remaining
triangles are sorted far to near by mean depth and filled (cv2.fillConvexPoly, 1/16 px
precision) into a triangle-index buffer; colour, depth and normals are then interpolated per
pixel with perspective-correct barycentrics and shaded with a Lambert term plus ambient. It
returns the image, a per-pixel mesh-id mask (BACKGROUND_ID where no mesh) and a depth map (camera
z, +inf where no mesh). The depth of a pixel is that of the triangle the painter drew last, so
it is exact away from sorting errors between interpenetrating triangles: "coarse", but good for
deciding whether a keypoint is hidden.

The remaining helpers make the rest of a synthetic image: smooth-noise textures, random
backgrounds, a textured plane seen by a perspective camera (ground / backdrop), 2D occluders
and motion / defocus blur. All randomness comes from a `numpy.random.Generator` passed in.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import cv2
import numpy as np

BACKGROUND_ID = -1
OCCLUDER_ID = -2
DEFAULT_LIGHT = (-0.35, -0.55, -0.75)  # towards the light, camera frame: upper left, in front
_SHIFT = 4  # fillConvexPoly sub-pixel bits
_MAX_COORD = 1.0e5  # pixels; farther triangles are dropped


@dataclasses.dataclass
class Mesh:
    """A triangle mesh in the camera frame.

    vertices: (V, 3) metres, OpenCV camera frame. faces: (F, 3) int, counter-clockwise from
    outside. color: (3,) base colour or (V, 3) per-vertex colours, 0..255. double_sided: draw
    back faces too (their normal flipped), for open meshes such as MANO's wrist.
    """

    vertices: np.ndarray
    faces: np.ndarray
    color: np.ndarray
    double_sided: bool = False


MeshLike = Union[Mesh, Sequence]


def _as_mesh(m: MeshLike) -> Mesh:
    if isinstance(m, Mesh):
        mesh = m
    elif isinstance(m, dict):
        mesh = Mesh(**m)
    else:
        mesh = Mesh(*m)
    v = np.asarray(mesh.vertices, np.float64)
    f = np.asarray(mesh.faces, np.int64)
    c = np.asarray(mesh.color, np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f'mesh vertices must be (V, 3), got {v.shape}')
    if f.ndim != 2 or f.shape[1] != 3:
        raise ValueError(f'mesh faces must be (F, 3), got {f.shape}')
    if c.shape not in ((3,), (len(v), 3)):
        raise ValueError(f'mesh color must be (3,) or ({len(v)}, 3), got {c.shape}')
    return Mesh(v, f, c, bool(mesh.double_sided))


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (outward for counter-clockwise faces)."""
    v = np.asarray(vertices, np.float64)
    tri = v[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(v)
    for k in range(3):
        for c in range(3):
            n[:, c] += np.bincount(faces[:, k], weights=fn[:, c], minlength=len(v))
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


def project(K: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Camera-frame (..., 3) points -> pixels (..., 2)."""
    p = np.asarray(points, np.float64) @ np.asarray(K, np.float64).T
    return p[..., :2] / p[..., 2:3]


def inside_image(uv: np.ndarray, size_wh, z: Optional[np.ndarray] = None) -> np.ndarray:
    """Bool mask of points on the image: [-0.5, W - 0.5) x [-0.5, H - 0.5), and z > 0 if given."""
    w, h = size_wh
    ok = (
        (uv[..., 0] >= -0.5)
        & (uv[..., 0] < w - 0.5)
        & (uv[..., 1] >= -0.5)
        & (uv[..., 1] < h - 0.5)
    )
    if z is not None:
        ok &= np.asarray(z) > 0
    return ok


def _supersampled_K(K: np.ndarray, s: int) -> np.ndarray:
    """Intrinsics of an s-times larger image whose pixel centres subdivide the original's."""
    S = np.array([[s, 0, 0.5 * (s - 1)], [0, s, 0.5 * (s - 1)], [0, 0, 1.0]])
    return S @ np.asarray(K, np.float64)


def render_meshes(
    image: np.ndarray,
    meshes: Sequence[MeshLike],
    K: np.ndarray,
    light_dir=DEFAULT_LIGHT,
    ambient: float = 0.38,
    diffuse: float = 0.72,
    cull_back_faces: bool = True,
    supersample: int = 1,
    near: float = 1e-2,
    return_faces: bool = False,
):
    """Draws meshes over `image` (H, W, 3) uint8 with intrinsics K (3, 3).

    meshes: `Mesh` objects, or tuples / dicts (vertices, faces, color[, double_sided]). The mesh id
    in the mask is the index in this list. light_dir: direction towards the light, camera frame.
    supersample: s > 1 rasterises an s x s larger image and averages it down (anti-aliased edges
    over an untouched background); mask and depth then come from one sub-sample per pixel.
    Triangles with a vertex nearer than `near` metres are dropped.

    Returns (image (H, W, 3) uint8, mask (H, W) int32 with mesh ids / BACKGROUND_ID,
    depth (H, W) float32 camera z with +inf where no mesh); with return_faces also face_ids
    (H, W) int32: the index, within its mesh, of the face seen at each pixel (-1: none).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f'image must be (H, W, 3) uint8, got {image.shape} {image.dtype}')
    H, W = image.shape[:2]
    s = int(supersample)
    if s < 1:
        raise ValueError('supersample must be >= 1')
    Ks = _supersampled_K(K, s) if s > 1 else np.asarray(K, np.float64)
    Hs, Ws = H * s, W * s
    L = np.asarray(light_dir, np.float64)
    L = L / max(np.linalg.norm(L), 1e-12)

    meshes = [_as_mesh(m) for m in meshes]
    verts, faces, vcolor, vnormal, face_mesh, face_front, face_local = [], [], [], [], [], [], []
    offset = 0
    for mid, m in enumerate(meshes):
        verts.append(m.vertices)
        faces.append(m.faces + offset)
        vcolor.append(np.broadcast_to(m.color, m.vertices.shape))
        vnormal.append(vertex_normals(m.vertices, m.faces))
        tri = m.vertices[m.faces]
        fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        front = np.einsum('fk,fk->f', fn, tri[:, 0]) < 0  # normal points at the camera
        keep = np.ones(len(m.faces), bool) if (m.double_sided or not cull_back_faces) else front
        faces[-1] = faces[-1][keep]
        face_front.append(front[keep])
        face_local.append(np.flatnonzero(keep).astype(np.int32))
        face_mesh.append(np.full(int(keep.sum()), mid, np.int32))
        offset += len(m.vertices)
    out_img = image.copy()
    mask = np.full((H, W), BACKGROUND_ID, np.int32)
    depth = np.full((H, W), np.inf, np.float32)
    if not meshes or offset == 0:
        return (out_img, mask, depth) + ((np.full((H, W), -1, np.int32),) if return_faces else ())
    V = np.concatenate(verts)
    F = np.concatenate(faces)
    C = np.concatenate(vcolor).astype(np.float64)
    N = np.concatenate(vnormal)
    FM = np.concatenate(face_mesh)
    FF = np.concatenate(face_front)
    FL = np.concatenate(face_local)

    z = V[:, 2]
    uv = project(Ks, np.where(z[:, None] > near, V, np.array([0.0, 0.0, 1.0])))
    tri_uv = uv[F]
    ok = (z[F] > near).all(1)
    lo, hi = tri_uv.min(1), tri_uv.max(1)
    ok &= (hi[:, 0] >= -1) & (lo[:, 0] <= Ws) & (hi[:, 1] >= -1) & (lo[:, 1] <= Hs)
    ok &= (np.abs(tri_uv) < _MAX_COORD).all((1, 2))
    e0, e1 = tri_uv[:, 1] - tri_uv[:, 0], tri_uv[:, 2] - tri_uv[:, 0]
    area2 = e0[:, 0] * e1[:, 1] - e0[:, 1] * e1[:, 0]
    ok &= np.abs(area2) > 1e-9
    idx = np.flatnonzero(ok)
    # Painter's algorithm: far to near (stable, so equal depths keep the input order).
    order = idx[np.argsort(-z[F[idx]].mean(1), kind='stable')]
    buf = np.full((Hs, Ws), -1, np.int32)
    pts = np.round(tri_uv * (1 << _SHIFT)).astype(np.int32)
    fill = cv2.fillConvexPoly
    for f in order.tolist():
        fill(buf, pts[f], f, cv2.LINE_8, _SHIFT)

    ys, xs = np.nonzero(buf >= 0)
    fid = buf[ys, xs]
    a = tri_uv[fid, 0]
    p = np.stack([xs, ys], 1).astype(np.float64) - a
    d = area2[fid]
    lb = (p[:, 0] * e1[fid, 1] - p[:, 1] * e1[fid, 0]) / d
    lc = (e0[fid, 0] * p[:, 1] - e0[fid, 1] * p[:, 0]) / d
    lam = np.clip(np.stack([1.0 - lb - lc, lb, lc], 1), 0.0, 1.0)
    lam /= np.maximum(lam.sum(1, keepdims=True), 1e-12)
    tri_v = F[fid]
    w = lam / z[tri_v]  # perspective-correct weights
    zs = 1.0 / w.sum(1)
    w *= zs[:, None]
    n = np.einsum('pk,pkc->pc', w, N[tri_v])
    n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
    n[~FF[fid]] *= -1.0  # inside of an open mesh
    col = np.einsum('pk,pkc->pc', w, C[tri_v])
    shade = ambient + diffuse * np.clip(n @ L, 0.0, None)
    col = np.clip(col * shade[:, None], 0, 255)

    if s == 1:
        out_img[ys, xs] = np.round(col).astype(np.uint8)
        mask[ys, xs] = FM[fid]
        depth[ys, xs] = zs
        if return_faces:
            face_ids = np.full((H, W), -1, np.int32)
            face_ids[ys, xs] = FL[fid]
            return out_img, mask, depth, face_ids
        return out_img, mask, depth
    hi_col = np.zeros((Hs, Ws, 3), np.float32)
    hi_cov = np.zeros((Hs, Ws), np.float32)
    hi_col[ys, xs] = col
    hi_cov[ys, xs] = 1.0
    area = cv2.INTER_AREA
    cov = cv2.resize(hi_cov, (W, H), interpolation=area)[..., None]
    lo_col = cv2.resize(hi_col, (W, H), interpolation=area)
    blended = image.astype(np.float32) * (1.0 - cov) + lo_col
    out_img = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    hi_mask = np.full((Hs, Ws), BACKGROUND_ID, np.int32)
    hi_mask[ys, xs] = FM[fid]
    hi_depth = np.full((Hs, Ws), np.inf, np.float32)
    hi_depth[ys, xs] = zs
    o = s // 2
    out = (out_img, hi_mask[o::s, o::s].copy(), hi_depth[o::s, o::s].copy())
    if return_faces:
        hi_faces = np.full((Hs, Ws), -1, np.int32)
        hi_faces[ys, xs] = FL[fid]
        out += (hi_faces[o::s, o::s].copy(),)
    return out


# ----------------------------------------------------------------------------- simple meshes


def box_mesh(center, size, rotation=None):
    """An axis-aligned (then rotated) box: (vertices (8, 3), faces (12, 3) outward CCW)."""
    c = np.asarray(center, np.float64)
    h = 0.5 * np.asarray(size, np.float64)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], np.float64)
    v = corners * h
    if rotation is not None:
        v = v @ np.asarray(rotation, np.float64).T
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, cc, d in quads:
        faces += [(a, b, cc), (a, cc, d)]
    return v + c, np.asarray(faces, np.int64)


def tube_mesh(p0, p1, r0, r1, segments: int = 16, caps: bool = True):
    """A tapered cylinder from p0 (radius r0) to p1 (radius r1): (vertices, faces)."""
    p0, p1 = np.asarray(p0, np.float64), np.asarray(p1, np.float64)
    axis = p1 - p0
    length = np.linalg.norm(axis)
    a = axis / max(length, 1e-12)
    helper = np.array([1.0, 0, 0]) if abs(a[0]) < 0.9 else np.array([0, 1.0, 0])
    u = np.cross(a, helper)
    u /= np.linalg.norm(u)
    v = np.cross(a, u)
    ang = 2 * np.pi * np.arange(segments) / segments
    ring = np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v
    verts = np.concatenate([p0 + r0 * ring, p1 + r1 * ring, [p0, p1]])
    faces = []
    n = segments
    for i in range(n):
        j = (i + 1) % n
        faces += [(i, j, n + j), (i, n + j, n + i)]  # outward: (u, v, a) is right-handed
        if caps:
            faces += [(2 * n, j, i), (2 * n + 1, n + i, n + j)]
    return verts, np.asarray(faces, np.int64)


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
    'BACKGROUND_ID',
    'OCCLUDER_ID',
    'DEFAULT_LIGHT',
    'Mesh',
    'render_meshes',
    'vertex_normals',
    'project',
    'inside_image',
    'box_mesh',
    'tube_mesh',
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
