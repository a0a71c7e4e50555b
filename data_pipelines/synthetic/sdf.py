"""Signed distance functions: the smooth shapes procedural meshes are pulled onto.

A shape is a smooth union of parts (round cones, ellipsoids, rounded boxes, a
lofted superellipse tube) plus hard half-space cuts.  Parts are combined with
the polynomial smooth minimum, which rounds every junction (armpit, crotch,
neck) by about the part's blend radius k.  Every function returns the distance
and its gradient: the mesh fitter steps along the gradient.  Distances are
first-order approximations away from the surface, exact enough for Newton
steps that start near it.

Each part has a bounding sphere, so it is only evaluated at the points it can
influence (fingers are tiny, bodies big).
"""

from __future__ import annotations

import numpy as np
import scipy.interpolate


def norm(x):
    """Row norms (faster than np.linalg.norm for many short rows)."""
    return np.sqrt(np.einsum('ij,ij->i', x, x))


def normalized(x):
    return x / np.maximum(norm(x), 1e-12)[:, None]


def _sd_round_cone(P, a, b, ra, rb):
    """Capsule with linearly varying radius: (approximate distance, gradient)."""
    ba = b - a
    t = np.clip((P - a) @ ba / (ba @ ba), 0.0, 1.0)
    diff = P - (a + t[:, None] * ba)
    return norm(diff) - (ra + t * (rb - ra)), normalized(diff)


def _sd_ellipsoid(P, c, r):
    """Axis-aligned ellipsoid: Quilez's first-order distance approximation,
    gradient along the ellipsoid normal."""
    q = P - c
    k0 = norm(q / r)
    k1 = np.maximum(norm(q / (r * r)), 1e-12)
    return k0 * (k0 - 1.0) / k1, normalized(q / (r * r))


def _sd_round_box(P, c, axes, half, radius):
    """Box with rounded edges in the frame ``axes`` (rows are unit axes)."""
    loc = (P - c) @ axes.T
    q = np.abs(loc) - (np.asarray(half) - radius)
    qp = np.maximum(q, 0.0)
    outside = norm(qp)
    inside = np.minimum(q.max(axis=1), 0.0)
    g_out = qp / np.maximum(outside, 1e-12)[:, None]
    g_in = np.zeros_like(q)
    g_in[np.arange(len(q)), q.argmax(axis=1)] = 1.0
    g = np.where((outside > 0)[:, None], g_out, g_in) * np.sign(loc)
    return outside + inside - radius, g @ axes


def _sd_loft(P, ys, a, b, cz, n_exp=2.4):
    """Superellipse cross-sections (half width a, half depth b, depth centre
    cz) interpolated smoothly (monotone cubic) along y between the control
    heights ``ys``; the two ends are cut flat and left to the neighbouring
    parts to blend.  Monotone, so the sections never overshoot the controls."""
    y = np.clip(P[:, 1], ys[0], ys[-1])
    A, B, C = (scipy.interpolate.PchipInterpolator(ys, v)(y) for v in (a, b, cz))
    u = np.abs(P[:, 0]) / A
    w = np.abs(P[:, 2] - C) / B
    rho = np.maximum((u**n_exp + w**n_exp) ** (1.0 / n_exp), 1e-9)
    # gradient of rho in the cross-section plane
    gx = rho ** (1 - n_exp) * u ** (n_exp - 1) * np.sign(P[:, 0]) / A
    gz = rho ** (1 - n_exp) * w ** (n_exp - 1) * np.sign(P[:, 2] - C) / B
    gn = np.maximum(np.sqrt(gx * gx + gz * gz), 1e-9)
    d = (rho - 1.0) / gn
    g = np.stack([gx / gn, np.zeros_like(gx), gz / gn], axis=1)
    for dy, sgn in ((ys[0] - P[:, 1], -1.0), (P[:, 1] - ys[-1], 1.0)):  # flat ends
        cut = dy > d
        d = np.where(cut, dy, d)
        g[cut] = (0.0, sgn, 0.0)
    return d, g


def _smin(a, b, k, ga, gb):
    """Polynomial smooth minimum (k = 0: plain minimum) and its gradient,
    which is exactly h * grad a + (1 - h) * grad b."""
    if k <= 0.0:
        h = (a < b).astype(float)
    else:
        h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    d = b * (1.0 - h) + a * h - k * h * (1.0 - h)
    return d, h[:, None] * ga + (1.0 - h)[:, None] * gb


class SDF:
    """Smooth union of parts (evaluated with bounding-sphere culling)."""

    def __init__(self):
        self.parts = []  # (fn, k, centre, radius)
        self.planes = []  # (point, outward normal): smooth-free half-space cuts

    def _add(self, fn, k, centre, radius):
        self.parts.append((fn, float(k), np.asarray(centre, float), float(radius)))

    def cone(self, a, b, ra, rb, k):
        a, b = np.asarray(a, float), np.asarray(b, float)
        self._add(
            lambda P: _sd_round_cone(P, a, b, ra, rb),
            k,
            0.5 * (a + b),
            0.5 * np.linalg.norm(b - a) + max(ra, rb),
        )

    def ellipsoid(self, c, r, k):
        c, r = np.asarray(c, float), np.asarray(r, float)
        self._add(lambda P: _sd_ellipsoid(P, c, r), k, c, r.max())

    def loft(self, ys, a, b, cz, k):
        ys, a, b, cz = (np.asarray(v, float) for v in (ys, a, b, cz))
        mid = np.array([0.0, 0.5 * (ys[0] + ys[-1]), cz.mean()])
        self._add(
            lambda P: _sd_loft(P, ys, a, b, cz),
            k,
            mid,
            np.hypot(0.5 * (ys[-1] - ys[0]), max(a.max(), b.max())),
        )

    def box(self, c, axes, half, radius, k):
        c, axes = np.asarray(c, float), np.asarray(axes, float)
        self._add(lambda P: _sd_round_box(P, c, axes, half, radius), k, c, np.linalg.norm(half))

    def near_sets(self, P, margin=0.08):
        """For each part, the ids of the points it can influence."""
        cs = np.array([c for _, _, c, _ in self.parts])
        reach = np.array([r + k + margin for _, k, _, r in self.parts])
        # squared distances of all points to all part centres in one product
        d2 = (P * P).sum(axis=1)[:, None] + (cs * cs).sum(axis=1)[None] - 2.0 * P @ cs.T
        near = d2 < reach[None] ** 2
        return [np.nonzero(near[:, i])[0] for i in range(len(self.parts))]

    def __call__(self, P, near=None):
        """(distance, gradient) at points P.  ``near`` (from near_sets,
        possibly computed for slightly different points) saves the culling."""
        if near is None:
            near = self.near_sets(P)
        d = np.full(len(P), 1e3)
        g = np.zeros((len(P), 3))
        for (fn, k, _, _), idx in zip(self.parts, near):
            if len(idx):
                dp, gp = fn(P[idx])
                d[idx], g[idx] = _smin(d[idx], dp, k, g[idx], gp)
        for c, n in self.planes:
            dp = (P - c) @ n
            cut = dp > d
            d[cut] = dp[cut]
            g[cut] = n
        # Points far from every part: head back towards the nearest part.
        far = d >= 1e3
        if far.any():
            cs = np.array([c for _, _, c, _ in self.parts])
            rs = np.array([r for _, _, _, r in self.parts])
            dist = np.linalg.norm(P[far, None] - cs[None], axis=2) - rs
            j = dist.argmin(axis=1)
            d[far] = dist[np.arange(len(j)), j]
            g[far] = normalized(P[far] - cs[j])
        return d, g
