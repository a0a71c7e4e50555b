"""A small CPU mesh rasteriser (OpenCV + numpy only).

Used by the raw-dataset writers of `data_pipelines.synthetic` to draw SMPL / MANO meshes into
images that then go through the real dataset converters. Nothing here knows about bodies or
datasets. The rest of a synthetic image (textures, backgrounds, planes, occluders, blur, noise)
comes from `imaging.py`.

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
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

import cv2
import numpy as np

BACKGROUND_ID = -1
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


__all__ = [
    'BACKGROUND_ID',
    'DEFAULT_LIGHT',
    'Mesh',
    'render_meshes',
    'vertex_normals',
    'project',
    'inside_image',
    'box_mesh',
    'tube_mesh',
]
