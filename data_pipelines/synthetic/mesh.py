"""Procedural closed meshes: box-modelled cages, subdivision, fitting to an SDF.

The recipe builds organic surfaces with a fixed, shareable topology:

1. a coarse polygon cage by box modelling (a lattice box, then region
   extrusions through rings: `Cage`, `lattice_box`, `extrude_chain`);
2. Catmull-Clark subdivision (`subdivide`), triangulation and edge splits up
   to an exact vertex count (`triangulate`, `plan_splits`, `apply_splits`);
3. every vertex pulled onto the zero set of a signed distance function,
   alternating with tangential relaxation (`fit_to_sdf`).

Extrusion and subdivision keep a closed cage a closed genus-0 manifold, so the
final triangle mesh has F = 2V - 4.  Every step depends on positions only
through choices that are made once (the split plan, the diagonals), so a mesh
built again for other positions, with the same plan, has the same faces.
Cage faces carry tags (the part they belong to) through every step.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from data_pipelines.synthetic import sdf as sdf_lib

# --------------------------------------------------------------------------
# Polygon cage: box modelling with region extrusion
# --------------------------------------------------------------------------


class Cage:
    """Closed polygon mesh under construction.

    Faces are vertex-id lists, counter-clockwise seen from outside; each face
    carries a tag (the part it belongs to, e.g. a finger) that survives
    subdivision, so that later steps can tell the parts apart.
    """

    def __init__(self, verts=None, faces=None, tags=None):
        self.v = [np.asarray(x, dtype=float) for x in (verts if verts is not None else [])]
        self.f = [list(f) for f in (faces or [])]
        self.tag = list(tags or [])

    def add_vertex(self, p):
        self.v.append(np.asarray(p, dtype=float))
        return len(self.v) - 1

    def verts(self):
        return np.array(self.v)

    def faces_with_tag(self, tag):
        return [i for i, t in enumerate(self.tag) if t == tag]

    def face_normal(self, fi):
        """Area vector (Newell's method) of a possibly non-planar polygon."""
        P = np.array([self.v[i] for i in self.f[fi]])
        Q = np.roll(P, -1, axis=0)
        return 0.5 * np.cross(P, Q).sum(axis=0)

    def face_center(self, fi):
        return np.mean([self.v[i] for i in self.f[fi]], axis=0)

    def extrude(self, region, center, axis, half_u, half_v, tag, u_hint):
        """Extrude a set of faces as one block (Blender's 'extrude region').

        The region's vertices are copied; the copies are laid out flat in the
        plane through ``center`` normal to ``axis``, keeping their relative
        arrangement but rescaled to half extents (half_u, half_v), where u is
        ``u_hint`` made orthogonal to the axis.  Side quads join the region's
        boundary to the copies.  Topology stays closed and genus 0.
        Returns the ids of the faces at the new end (same order as region).
        """
        region = list(region)
        rverts = sorted({i for fi in region for i in self.f[fi]})
        P = np.array([self.v[i] for i in rverts])
        c = P.mean(axis=0)
        nb = sum(self.face_normal(fi) for fi in region)
        nb = nb / np.linalg.norm(nb)
        u0 = np.asarray(u_hint, float) - np.dot(u_hint, nb) * nb
        u0 /= np.linalg.norm(u0)
        v0 = np.cross(nb, u0)
        lu, lv = (P - c) @ u0, (P - c) @ v0
        hu, hv = max(np.abs(lu).max(), 1e-9), max(np.abs(lv).max(), 1e-9)
        a = np.asarray(axis, float) / np.linalg.norm(axis)
        assert np.dot(a, nb) > 0.0, 'extrusion must leave the surface'
        u = u0 - np.dot(u0, a) * a
        u /= np.linalg.norm(u)
        v = np.cross(a, u)
        new_id = {}
        for k, i in enumerate(rverts):
            new_id[i] = self.add_vertex(center + lu[k] / hu * half_u * u + lv[k] / hv * half_v * v)
        directed = {
            (f[k], f[(k + 1) % len(f)])
            for fi in region
            for f in [self.f[fi]]
            for k in range(len(f))
        }
        for i, j in sorted(directed):
            if (j, i) not in directed:  # boundary edge of the region
                self.f.append([i, j, new_id[j], new_id[i]])
                self.tag.append(tag)
        for fi in region:
            self.f[fi] = [new_id[i] for i in self.f[fi]]
            self.tag[fi] = tag
        return region

    def split_face(self, fi, edge_dir):
        """Split a quad in two across the pair of edges most parallel to
        ``edge_dir``.  The neighbours across those edges get the new vertex
        inserted (they become pentagons), so no T-junction appears."""
        f = self.f[fi]
        assert len(f) == 4
        e = [np.asarray(self.v[f[(k + 1) % 4]]) - self.v[f[k]] for k in range(4)]
        k0 = int(np.argmax([abs(np.dot(x, edge_dir)) / np.linalg.norm(x) for x in e[:2]]))
        a, b, c, d = f[k0], f[(k0 + 1) % 4], f[(k0 + 2) % 4], f[(k0 + 3) % 4]
        m1 = self.add_vertex(0.5 * (self.v[a] + self.v[b]))
        m2 = self.add_vertex(0.5 * (self.v[c] + self.v[d]))
        for x, y, m in ((a, b, m1), (c, d, m2)):
            for gi, g in enumerate(self.f):
                if gi == fi:
                    continue
                for k in range(len(g)):
                    if g[k] == y and g[(k + 1) % len(g)] == x:
                        g.insert(k + 1, m)
                        break
        self.f[fi] = [a, m1, m2, d]
        self.f.append([m1, b, c, m2])
        self.tag.append(self.tag[fi])


def lattice_box(cage, n, pos, tag_fn):
    """Add a box whose six sides are quad grids (nx, ny, nz cells).

    ``pos(i, j, k)`` places lattice point (i, j, k); ``tag_fn(side, a, b)``
    tags the cell (a, b) of a side ('-x', '+x', '-y', '+y', '-z', '+z').
    Returns {(side, a, b): face id}.
    """
    nx, ny, nz = n
    ids = {}

    def vid(i, j, k):
        if (i, j, k) not in ids:
            ids[(i, j, k)] = cage.add_vertex(pos(i, j, k))
        return ids[(i, j, k)]

    cells = {}

    def quad(side, a, b, corners):
        cage.f.append([vid(*c) for c in corners])
        cage.tag.append(tag_fn(side, a, b))
        cells[(side, a, b)] = len(cage.f) - 1

    for j in range(ny):
        for k in range(nz):
            quad('+x', j, k, [(nx, j, k), (nx, j + 1, k), (nx, j + 1, k + 1), (nx, j, k + 1)])
            quad('-x', j, k, [(0, j, k), (0, j, k + 1), (0, j + 1, k + 1), (0, j + 1, k)])
    for i in range(nx):
        for k in range(nz):
            quad('+y', i, k, [(i, ny, k), (i, ny, k + 1), (i + 1, ny, k + 1), (i + 1, ny, k)])
            quad('-y', i, k, [(i, 0, k), (i + 1, 0, k), (i + 1, 0, k + 1), (i, 0, k + 1)])
    for i in range(nx):
        for j in range(ny):
            quad('+z', i, j, [(i, j, nz), (i + 1, j, nz), (i + 1, j + 1, nz), (i, j + 1, nz)])
            quad('-z', i, j, [(i, j, 0), (i, j + 1, 0), (i + 1, j + 1, 0), (i + 1, j, 0)])
    return cells


def extrude_chain(cage, region, stations, u_hint, direction=None):
    """Extrude ``region`` through stations (centre, half_u, half_v, tag), one
    ring per station, each along ``direction`` or else from the previous
    ring's centre to this one."""
    prev = np.mean([cage.face_center(f) for f in region], axis=0)
    for center, half_u, half_v, tag in stations:
        center = np.asarray(center, float)
        axis = direction if direction is not None else center - prev
        region = cage.extrude(region, center, axis, half_u, half_v, tag, u_hint)
        prev = center
    return region


def _catmull_clark(verts, faces, tags):
    """One Catmull-Clark step on a closed polygon mesh (any polygon sizes).

    Returns (verts, quads (F,4) int array, tags).  New vertex order: old
    vertices, then edge points, then face points.  Vectorised over corners.
    """
    V = np.asarray(verts, float)
    sizes = np.array([len(f) for f in faces])
    cv = np.concatenate([np.asarray(f) for f in faces])
    cf = np.repeat(np.arange(len(faces)), sizes)
    start = np.cumsum(sizes) - sizes
    local = np.arange(len(cv)) - start[cf]
    cnext = cv[start[cf] + (local + 1) % sizes[cf]]
    cprev_corner = start[cf] + (local - 1) % sizes[cf]
    fp = np.zeros((len(faces), 3))
    np.add.at(fp, cf, V[cv])
    fp /= sizes[:, None]
    key = np.minimum(cv, cnext) * len(V) + np.maximum(cv, cnext)
    ukeys, cedge = np.unique(key, return_inverse=True)
    ne = len(ukeys)
    ea, eb = ukeys // len(V), ukeys % len(V)
    efs = np.zeros((ne, 3))
    np.add.at(efs, cedge, fp[cf])
    ecount = np.bincount(cedge, minlength=ne)
    assert np.all(ecount == 2), 'mesh must be closed and manifold'
    ep = (V[ea] + V[eb] + efs) / 4.0
    nv = len(V)
    val = np.bincount(cv, minlength=nv).astype(float)
    favg = np.zeros((nv, 3))
    np.add.at(favg, cv, fp[cf])
    ravg = np.zeros((nv, 3))
    np.add.at(ravg, cv, 0.5 * (V[cv] + V[cnext]))
    favg /= val[:, None]
    ravg /= val[:, None]
    vp = (favg + 2.0 * ravg + (val[:, None] - 3.0) * V) / val[:, None]
    newV = np.concatenate([vp, ep, fp])
    quads = np.stack([cv, nv + cedge, nv + ne + cf, nv + cedge[cprev_corner]], axis=1)
    return newV, quads, [tags[i] for i in cf]


def subdivide(cage):
    """The cage after one Catmull-Clark step (a new all-quad Cage)."""
    # Region extrusion orphans the region's interior vertices: drop them.
    used = sorted({i for f in cage.f for i in f})
    remap = {old: new for new, old in enumerate(used)}
    faces = [[remap[i] for i in f] for f in cage.f]
    v, q, t = _catmull_clark(cage.verts()[used], faces, cage.tag)
    return Cage(v, [list(f) for f in q], t)


# --------------------------------------------------------------------------
# Triangle meshes
# --------------------------------------------------------------------------


def triangulate(V, quads):
    """Split each quad along its shorter diagonal."""
    q = np.asarray(quads)
    d02 = np.linalg.norm(V[q[:, 0]] - V[q[:, 2]], axis=1)
    d13 = np.linalg.norm(V[q[:, 1]] - V[q[:, 3]], axis=1)
    diag02 = d02 <= d13
    a = np.where(diag02[:, None], q[:, [0, 1, 2]], q[:, [0, 1, 3]])
    b = np.where(diag02[:, None], q[:, [0, 2, 3]], q[:, [1, 2, 3]])
    return np.concatenate([a, b])


def vertex_tags(quads, qtags, nv):
    """One part tag per vertex: the tag of the last quad that uses it (quads
    are ordered parent by parent, so this is deterministic)."""
    tags = np.empty(nv, dtype=object)
    for q, t in zip(quads, qtags):
        tags[q] = t
    return tags


def _sorted_face_edges(F):
    """The three edges of every face, each as (min id, max id): (3F, 2)."""
    return np.sort(np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]), axis=1)


def edges(F):
    """Unique undirected edges (E,2) of a triangle list, sorted."""
    e = _sorted_face_edges(F.astype(np.int64))
    n = int(e.max()) + 1
    key = np.unique(e[:, 0] * n + e[:, 1])
    return np.stack([key // n, key % n], axis=1)


def boundary_vertices(F):
    """Sorted ids of the vertices on open boundaries (edges with one face)."""
    u, c = np.unique(_sorted_face_edges(F), axis=0, return_counts=True)
    return np.unique(u[c == 1])


def vertex_normals(V, F):
    """Area-weighted vertex normals."""
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    idx = F.ravel()
    vn = np.stack(
        [np.bincount(idx, np.repeat(n[:, c], 3), minlength=len(V)) for c in range(3)], axis=1
    )
    return sdf_lib.normalized(vn)


def adjacency(F, nv):
    """Row-normalised vertex adjacency (uniform Laplacian averaging)."""
    e = edges(F)
    A = scipy.sparse.coo_matrix(
        (np.ones(2 * len(e)), (np.r_[e[:, 0], e[:, 1]], np.r_[e[:, 1], e[:, 0]])), shape=(nv, nv)
    ).tocsr()
    deg = np.asarray(A.sum(axis=1)).ravel()
    return scipy.sparse.diags(1.0 / np.maximum(deg, 1)) @ A


def feature_weights(V, centres_radii):
    """Split priority: >1 within the given balls (nose, ears, eyes...)."""
    w = np.ones(len(V))
    for c, r, f in centres_radii:
        w = np.maximum(w, np.where(np.linalg.norm(V - c, axis=1) < r, f, 1.0))
    return w


def plan_splits(V, F, count, frozen=(), importance=None):
    """Choose ``count`` edge splits, longest edges first (length times the
    mean ``importance`` of the two ends, so small features get more
    vertices), in rounds where no two split edges share a triangle.

    Splitting an edge adds one vertex and two triangles, so a closed mesh
    stays closed with F = 2V - 4.  Returns (faces, [(a, b), ...]); the new
    vertex of split k has id len(V) + k and sits at the edge midpoint."""
    F = F.copy()
    V = V.copy()
    splits = []
    frozen = set(frozen)
    while len(splits) < count:
        e = edges(F)
        ok = np.array([not (a in frozen and b in frozen) for a, b in e])
        e = e[ok]
        length = np.linalg.norm(V[e[:, 0]] - V[e[:, 1]], axis=1)
        if importance is not None:
            imp = np.r_[importance, np.ones(len(V) - len(importance))]
            length = length * 0.5 * (imp[e[:, 0]] + imp[e[:, 1]])
        used = np.zeros(len(F), bool)
        # edge -> its two faces
        key = {}
        for fi, f in enumerate(F):
            for k in range(3):
                key.setdefault(tuple(sorted((f[k], f[(k + 1) % 3]))), []).append(fi)
        round_ = []
        for ei in np.argsort(-length, kind='stable'):
            a, b = e[ei]
            fs = key[(a, b)]
            if len(fs) != 2 or used[fs].any():
                continue
            used[fs] = True
            round_.append((a, b, fs))
            if len(splits) + len(round_) >= count:
                break
        for a, b, fs in round_:
            m = len(V)
            V = np.vstack([V, 0.5 * (V[a] + V[b])])
            splits.append((int(a), int(b)))
            new = []
            for fi in fs:
                f = list(F[fi])
                k = [i for i in range(3) if {f[i], f[(i + 1) % 3]} == {a, b}][0]
                x, y, z = f[k], f[(k + 1) % 3], f[(k + 2) % 3]
                F[fi] = (x, m, z)
                new.append((m, y, z))
            F = np.vstack([F, new])
        if not round_:
            raise RuntimeError('no edge can be split')
    return F, splits


def apply_splits(V, splits):
    V = list(V)
    for a, b in splits:
        V.append(0.5 * (V[a] + V[b]))
    return np.array(V)


def permutation(n, wanted):
    """Order (new -> old) putting old vertex ``o`` at new id ``i`` for each
    (i, o) in ``wanted``; all other vertices keep their relative order.
    Returns (order, inverse)."""
    order = np.full(n, -1)
    for new, old in wanted.items():
        order[new] = old
    rest = np.setdiff1d(np.arange(n), list(wanted.values()))
    order[order < 0] = rest
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return order, inverse


# --------------------------------------------------------------------------
# Fitting to a signed distance function
# --------------------------------------------------------------------------


def fit_to_sdf(V, F, sdf, iters=24, relax=0.5, max_step=0.01, fixed_plane=None):
    """Pull vertices onto the SDF's zero set (Newton steps along the SDF
    gradient), alternating with tangential Laplacian relaxation, which keeps
    the triangles well shaped and stops vertices bunching up in creases.

    ``sdf`` is an sdf.SDF.  ``fixed_plane`` = (point, normal, vertex ids):
    those vertices (an open boundary) stay in that plane.
    """
    M = adjacency(F, len(V))
    V = V.copy()
    near = None
    for it in range(iters):
        if it % 8 == 0:  # vertices move < 8 cm between refreshes
            near = sdf.near_sets(V, margin=0.12)
        d, g = sdf(V, near=near)
        step = -d / np.maximum((g * g).sum(axis=1), 0.25)
        step = np.clip(step, -max_step, max_step)
        V = V + step[:, None] * g
        n = vertex_normals(V, F)
        lap = M @ V - V
        lap -= (lap * n).sum(axis=1, keepdims=True) * n
        V = V + relax * (1.0 - 0.5 * it / iters) * lap
        if fixed_plane is not None:
            c, nrm, ids = fixed_plane
            V[ids] -= ((V[ids] - c) @ nrm)[:, None] * nrm
    d, g = sdf(V)
    V = V - (d / np.maximum((g * g).sum(axis=1), 0.25))[:, None] * g
    return _unfold(V, F, M, fixed=None if fixed_plane is None else fixed_plane[2])


def _face_pairs(F):
    """Pairs of faces sharing an edge (interior edges only)."""
    key = _sorted_face_edges(F)
    fid = np.tile(np.arange(len(F)), 3)
    order = np.lexsort((key[:, 1], key[:, 0]))
    key, fid = key[order], fid[order]
    same = np.all(key[1:] == key[:-1], axis=1)
    return fid[:-1][same], fid[1:][same]


def _unfold(V, F, M, fixed=None, rounds=60):
    """Smooth away the few folds the projection leaves in sharp creases
    (crotch, finger webs, nose tip): where two neighbouring triangles face
    away from each other (dihedral over 90 degrees) the vertices within two
    rings are moved towards their neighbours' centroid (plain 3-D Laplacian)
    until no such pair is left."""
    V = V.copy()
    nbr = (M > 0).astype(float)
    fa, fb = _face_pairs(F)
    for _ in range(rounds):
        fn = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
        fn /= np.maximum(np.linalg.norm(fn, axis=1, keepdims=True), 1e-15)
        folded = (fn[fa] * fn[fb]).sum(axis=1) < 0.0
        if not folded.any():
            break
        bad = np.zeros(len(V))
        bad[np.unique(F[np.r_[fa[folded], fb[folded]]])] = 1.0
        region = (nbr @ (nbr @ bad + bad) + bad) > 0  # two rings around
        if fixed is not None:
            region[fixed] = False
        V[region] += 0.5 * (M @ V - V)[region]
    return V
