"""A simulated 2D keypoint detector: what the synthetic world stores where a real dataset stores
a detector's output (3DPW's `poses2d` are OpenPose's), so that a model evaluated on the world
reads 2D evidence with a detector's errors instead of the exact projections.

The error model is ours (the paper and the datasets do not specify one); every number is a
`DetectorModel` field, and all of it is seeded:

- Localisation jitter, Gaussian per axis, with a standard deviation proportional to the person's
  box side (a detector's pixel error scales with the person's size): `jitter` for a visible
  joint, the larger `occluded_jitter` for an occluded one (the detector guesses it from
  context). Consecutive video frames err alike: per joint the jitter is an AR(1) process over
  frames with lag-1 correlation `temporal` and the stated standard deviation in every frame.
- Misses: a joint off the image (truncation) is never reported; an occluded joint is missed with
  probability `miss_occluded`, a visible one with `miss_visible`.
- Left/right confusion: in a frame, with probability `swap`, one left/right pair (drawn
  uniformly among the layout's pairs) is reported the wrong way round.
- Gross outliers: a reported joint, with probability `outlier`, lands anywhere in the person's
  box grown to twice its side (clutter, another person's limb), with a low confidence.
- Confidences: Beta draws, high for visible joints, lower for occluded ones, low for outliers.
- A frame with fewer than `min_joints` reported joints is dropped whole (3DPW writes all zeros
  when fewer than 6 joints were detected). A joint not reported is (0, 0, 0), as OpenPose
  writes it; reported points are clipped to the image, where a detector's output lies.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines.synthetic import imaging, render


@dataclasses.dataclass(frozen=True)
class DetectorModel:
    jitter: float = 0.02  # std per axis / box side, visible joint (~5 px for a 250 px person)
    occluded_jitter: float = 0.06  # ... occluded joint
    temporal: float = 0.6  # lag-1 correlation of a joint's jitter between consecutive frames
    miss_visible: float = 0.01
    miss_occluded: float = 0.4
    swap: float = 0.02  # per frame
    outlier: float = 0.005  # per reported joint
    conf_visible: tuple = (8.0, 2.0)  # Beta(a, b); mean a / (a + b) = 0.8
    conf_occluded: tuple = (3.0, 4.0)  # mean 0.43
    conf_outlier: tuple = (1.5, 6.0)  # mean 0.2
    min_joints: int = 6

    def __post_init__(self):
        for name in ('miss_visible', 'miss_occluded', 'swap', 'outlier'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f'DetectorModel.{name} must be in [0, 1], got {getattr(self, name)}'
                )
        for name in ('jitter', 'occluded_jitter'):
            if getattr(self, name) < 0:
                raise ValueError(f'DetectorModel.{name} must be >= 0, got {getattr(self, name)}')
        if not 0.0 <= self.temporal < 1.0:
            raise ValueError(f'DetectorModel.temporal must be in [0, 1), got {self.temporal}')
        for name in ('conf_visible', 'conf_occluded', 'conf_outlier'):
            a, b = getattr(self, name)
            if a <= 0 or b <= 0:
                raise ValueError(f'DetectorModel.{name}: Beta parameters must be > 0, got {a, b}')
        if self.min_joints < 0:
            raise ValueError(f'DetectorModel.min_joints must be >= 0, got {self.min_joints}')


def keypoint_occlusion(
    kp_cam, uv, mask, depth, mesh_id, max_skin, face_ids=None, face_part=None, own=None
):
    """(J,) 0/1, 1 = occluded, for the keypoints of the mesh drawn as `mesh_id` (render_meshes'
    mask and depth, camera-frame keypoints kp_cam and their pixels uv).

    At the keypoint's pixel: a 2D occluder, or another mesh in front of the keypoint, hides it;
    its own mesh hides it when the surface seen there lies more than `max_skin` metres in front
    of it (a limb or the torso between it and the camera), or, given face_ids, face_part (part
    of each face) and own (per keypoint, the parts it belongs to), when that surface belongs to
    another part (a curled finger over the palm). Pixels off the mesh (the keypoint projects
    just outside the silhouette) and off the image count as visible: truncation is the caller's.
    """
    H, W = mask.shape
    occ = np.zeros(len(kp_cam), np.int64)
    for j, (u, v) in enumerate(uv):
        x, y = int(round(u)), int(round(v))
        if not (0 <= x < W and 0 <= y < H):
            continue
        m, d = mask[y, x], depth[y, x]
        if m == imaging.OCCLUDER_ID:
            occ[j] = 1
        elif m == mesh_id:
            other_part = face_part is not None and face_part[face_ids[y, x]] not in own[j]
            occ[j] = int(other_part or d < kp_cam[j, 2] - max_skin)
        elif m != render.BACKGROUND_ID and d < kp_cam[j, 2]:
            occ[j] = 1
    return occ


def _ar1(white: np.ndarray, rho: float) -> np.ndarray:
    """Unit-variance AR(1) over the leading (frame) axis from i.i.d. unit normals."""
    out = np.empty_like(white)
    out[0] = white[0]
    keep = np.sqrt(1.0 - rho * rho)
    for t in range(1, len(white)):
        out[t] = rho * out[t - 1] + keep * white[t]
    return out


def detect(
    kp2d,
    on_image,
    occluded,
    box_side,
    size_wh,
    flip,
    rng: np.random.Generator,
    model: DetectorModel = DetectorModel(),
) -> np.ndarray:
    """One person track's detections: (T, J, 3) x, y, confidence in image pixels.

    kp2d: (T, J, 2) exact projections of the track's joints, frames in video order. on_image:
    (T, J) bool, the joint projects into the image in front of the camera. occluded: (T, J)
    bool, the joint is hidden (by another person, an object, or the body itself). box_side:
    (T,) or scalar, the person's box side in pixels. size_wh: the image's (W, H). flip: the
    layout's left/right permutation (skeletons.Layout.flip). Every random number is drawn
    whatever the model's probabilities, so one seed gives one stream.
    """
    kp2d = np.asarray(kp2d, np.float64)
    t_len, j = kp2d.shape[:2]
    on_image, occluded = np.asarray(on_image, bool), np.asarray(occluded, bool)
    side = np.broadcast_to(np.asarray(box_side, np.float64), (t_len,))
    white = rng.standard_normal((t_len, j, 2))
    miss_u, out_u = rng.random((t_len, j)), rng.random((t_len, j))
    out_xy = rng.random((t_len, j, 2))
    swap_u, swap_pick = rng.random(t_len), rng.random(t_len)
    conf = {
        k: rng.beta(*getattr(model, k), (t_len, j))
        for k in ('conf_visible', 'conf_occluded', 'conf_outlier')
    }

    std = np.where(occluded, model.occluded_jitter, model.jitter) * side[:, None]
    xy = kp2d + _ar1(white, model.temporal) * std[..., None]
    c = np.where(occluded, conf['conf_occluded'], conf['conf_visible'])
    reported = on_image & (miss_u >= np.where(occluded, model.miss_occluded, model.miss_visible))

    # Outliers: anywhere in the box (grown 2x) around the frame's reported joints.
    lo = np.where(reported[..., None], kp2d, np.inf).min(1)
    hi = np.where(reported[..., None], kp2d, -np.inf).max(1)
    with np.errstate(invalid='ignore'):  # a frame with nothing reported: NaN centre, unused
        centre = (lo + hi) / 2
    gross = reported & (out_u < model.outlier)
    anywhere = centre[:, None] + (out_xy - 0.5) * 2.0 * side[:, None, None]
    xy = np.where(gross[..., None], anywhere, xy)
    c = np.where(gross, conf['conf_outlier'], c)

    w, h = size_wh
    out = np.concatenate([np.clip(xy, 0.0, [w - 1.0, h - 1.0]), c[..., None]], -1)
    out[~reported] = 0.0
    pairs = [a for a in range(j) if flip[a] > a]
    if pairs:
        for f in np.flatnonzero(swap_u < model.swap):
            a = pairs[min(int(swap_pick[f] * len(pairs)), len(pairs) - 1)]
            b = flip[a]
            out[f, [a, b]] = out[f, [b, a]]
    out[(out[..., 2] > 0).sum(-1) < model.min_joints] = 0.0
    return out
