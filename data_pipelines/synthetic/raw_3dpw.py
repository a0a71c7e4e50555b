"""Synthetic raw datasets in the REAL 3DPW, FreiHAND v2 and HInt layouts (DESIGN.md §4.8).

    python -m data_pipelines.synthetic.raw_3dpw --out DIR [--seed S] [--large]

writes, under DIR,

    body_models/   procedural SMPL / MANO model files (data_pipelines.synthetic.bodies)
    3DPW/          sequenceFiles/{train,validation,test}/<seq>.pkl + imageFiles/<seq>/image_%05d.jpg
    FreiHAND/      FreiHAND_pub_v2/{training,evaluation}/... + FreiHAND_pub_v2_eval/...
    HInt/          HInt_annotation_partial/{TRAIN,VAL,TEST}_{newdays,epick,ego4d}_img/<stem>.{jpg,json}

so that the raw -> record converters run on it unchanged. Every key, shape, dtype, encoding and
convention follows spec/datasets.md §1-§3 (the numbers below refer to it). Everything is a
deterministic function of the seed (same bytes on every run on one machine): each item draws
from its own `numpy.random.Generator` keyed by (seed, dataset, item), so sizes can change
without reshuffling the other items.

Conventions chosen here
-----------------------
World frame (3DPW): SMPL's own frame, metres, y UP, the ground is the plane y = 0. Bodies are
placed by SMPL's global orientation (a yaw about +y plus a small lean) and `trans`; the world
vertices are `forward(poses, betas)['vertices'] + trans` (the rotation is about the rest root
joint J0, §1.6), with trans_y chosen per frame so that the lowest vertex touches the ground.
Camera frame: OpenCV (x right, y DOWN, z forward). `cam_poses[i]` = [[R, t], [0, 0, 0, 1]] maps
world to camera (X_cam = R X_world + t); R is a look-at rotation built from the world up
vector, so the y-up -> y-down flip lives in R, never in the renderer.

Hands: the MANO right hand is the model file; a LEFT hand is `load_mano(is_right=False)`, the
mirror image x -> -x of the right model. Hand scenes are designed as right hands in the camera
frame; a left hand is the mirror of such a design through the camera's y-z plane: its pose is
the right pose conjugated by diag(-1, 1, 1) (axis-angle (x, y, z) -> (x, -y, -z)), which the
mirrored model turns back into exactly the mirrored right-hand mesh.

3DPW pickles (§1.3): written like Python 2's cPickle, protocol 2 with Python-2 `str` opcodes
(BINSTRING / SHORT_BINSTRING) for strings and ndarray payloads, arrays through
`numpy.core.multiarray._reconstruct` (`legacy_pickle`, as the body-model files). Python 3 therefore
needs `pickle.load(f, encoding='latin1')`; the default ASCII decoding raises UnicodeDecodeError.

Randomness in the images: textured ground and wall planes seen through the moving camera
(3DPW), random textured backgrounds (FreiHAND, HInt), 3D pillars (3DPW) and 2D textured
occluders (HInt, FreiHAND evaluation), motion / defocus blur and sensor noise now and then.
"""
from __future__ import annotations

import json
import os
import sys
import time
import zlib

import cv2
import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from data_pipelines import atomic_file
from data_pipelines.synthetic import bodies, legacy_pickle, render
from extpose_jax import errors, skeletons

# ----------------------------------------------------------------------------- sizes

THREEDPW_SPLITS = ('train', 'validation', 'test')
SMALL = {
    '3dpw': dict(sequences={'train': 1, 'validation': 1, 'test': 1}, frames=24),
    'freihand': dict(train=16, evaluation=8),
    'hint': dict(per_folder=4),
}
LARGE = {
    '3dpw': dict(sequences={'train': 4, 'validation': 2, 'test': 4}, frames=60),
    'freihand': dict(train=256, evaluation=64),
    'hint': dict(per_folder=24),
}
JPEG_QUALITY = 92

FREIHAND_VERSIONS = ('gs', 'hom', 'sample', 'auto')   # §2.2, image id = idx + n * v
FREIHAND_TIPS = (744, 320, 443, 555, 672)             # toolbox tips (§2.5, pitfall 13)
HAND_TIP_SLOTS = (4, 8, 12, 16, 20)                   # thumb, index, middle, ring, pinky
HINT_SPLITS = ('TRAIN', 'VAL', 'TEST')
HINT_SOURCES = ('newdays', 'epick', 'ego4d')

_PLACES = ('courtyard', 'downtown', 'outdoors', 'flat', 'office')
_SKIN = np.array([(236, 196, 172), (226, 178, 146), (205, 146, 110), (176, 120, 86),
                  (134, 90, 62), (98, 66, 48)], np.float64)
_HAIR = np.array([(30, 24, 20), (60, 40, 25), (110, 75, 40), (170, 140, 90), (90, 90, 90)],
                 np.float64)


# ----------------------------------------------------------------------------- small helpers


def _key(x) -> int:
    return zlib.crc32(x.encode()) if isinstance(x, str) else int(x)


def _rng(seed: int, *keys) -> np.random.Generator:
    """An independent generator for one item: keyed by the seed and names / indices."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF] + [_key(k) for k in keys])


def _makedirs(path: str) -> str:
    os.makedirs(path, exist_ok=True)
    return path


def _write_bytes(path: str, data: bytes) -> None:
    # no fsync: hundreds of small files, regenerated on demand
    atomic_file.atomic_write(path, lambda f: f.write(data), fsync=False)


def _encode_jpg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB (H, W, 3) or grey (H, W) uint8 -> jpg bytes."""
    img = image[..., ::-1] if image.ndim == 3 else image
    ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError('jpg encoding failed')
    return buf.tobytes()


def _write_json(path: str, obj) -> None:
    _write_bytes(path, json.dumps(obj).encode())


def _progress(total: int, desc: str):
    return tqdm(total=total, desc=desc, unit='img', leave=False,
                disable=not sys.stderr.isatty())


def _rot(axis, angle) -> Rotation:
    """Rotation(s) about a fixed unit axis by angle(s)."""
    angle = np.asarray(angle, np.float64)
    return Rotation.from_rotvec(angle[..., None] * np.asarray(axis, np.float64))


def _unit(v):
    v = np.asarray(v, np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def _align(a, b) -> np.ndarray:
    """The smallest rotation matrix taking unit vector a to unit vector b."""
    a, b = _unit(a), _unit(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1 + 1e-9:   # opposite: turn by pi about any axis perpendicular to a
        p = _unit(np.cross(a, [1.0, 0, 0] if abs(a[0]) < 0.9 else [0, 1.0, 0]))
        return Rotation.from_rotvec(np.pi * p).as_matrix()
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def _wobble(rng, t, amp, fmin=0.15, fmax=1.0, n=3):
    """A smooth random 1D signal (sum of sinusoids), about amp in size, over times t."""
    out = np.zeros_like(np.asarray(t, np.float64))
    for _ in range(n):
        out += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * rng.uniform(fmin, fmax) * t
                                              + rng.uniform(0, 2 * np.pi))
    return amp * out / n * 1.6


def openpose18_2d(kp_cam: np.ndarray, K: np.ndarray, size_wh, min_visible: int = 6) -> np.ndarray:
    """3DPW `poses2d` rows for one frame from camera-frame OpenPose-18 keypoints (18, 3).

    Returns (3, 18): x, y, confidence. A keypoint on the image ([-0.5, W - 0.5) x [-0.5, H - 0.5),
    in front of the camera) gets its exact projection and confidence 1, any other keypoint
    (0, 0, 0), as OpenPose writes an undetected joint; with fewer than `min_visible` keypoints on
    the image the whole frame is zero (§1.4: "all zeros when fewer than 6 joints were detected").
    """
    kp_cam = np.asarray(kp_cam, np.float64)
    z = kp_cam[:, 2]
    uv = render.project(K, np.where(z[:, None] > 1e-6, kp_cam, [0.0, 0.0, 1.0]))
    vis = render.inside_image(uv, size_wh, z)
    out = np.zeros((3, 18))
    if vis.sum() >= min_visible:
        out[0, vis] = uv[vis, 0]
        out[1, vis] = uv[vis, 1]
        out[2, vis] = 1.0
    return out


# ----------------------------------------------------------------------------- body models


class _Models:
    """Lazily loaded body models and one jitted, fixed-shape forward per model kind."""

    CHUNK = 64
    _fn = None   # jax.jit(body_models.forward), shared by every instance

    def __init__(self, body_models_dir: str):
        self.dir = os.fspath(body_models_dir)
        self._cache = {}

    def smpl(self, gender: str):
        from extpose_jax import body_models as bm
        key = ('smpl', gender)
        if key not in self._cache:
            self._cache[key] = bm.load_smpl(self.dir, gender)
        return self._cache[key]

    def mano(self, is_right: bool = True):
        from extpose_jax import body_models as bm
        key = ('mano', bool(is_right))
        if key not in self._cache:
            self._cache[key] = bm.load_mano(self.dir, is_right=is_right)
        return self._cache[key]

    def hands_mean(self) -> np.ndarray:
        from extpose_jax import body_models as bm
        if 'hands_mean' not in self._cache:
            path = os.path.join(self.dir, 'mano', 'MANO_RIGHT.pkl')
            if not os.path.isfile(path):
                path = os.path.join(self.dir, 'MANO_RIGHT.pkl')
            raw = bm.load_model_file(path)
            self._cache['hands_mean'] = np.asarray(raw['hands_mean'], np.float64).reshape(45)
        return self._cache['hands_mean']

    def forward(self, model, pose: np.ndarray, betas: np.ndarray) -> dict:
        """body_models.forward on (N, P) axis-angle and (N, B) betas -> numpy float64 dict."""
        import jax
        from extpose_jax import body_models as bm
        if _Models._fn is None:
            _Models._fn = jax.jit(bm.forward)
        pose = np.asarray(pose, np.float32).reshape(len(pose), -1)
        betas = np.asarray(betas, np.float32).reshape(len(pose), -1)
        outs = {}
        for lo in range(0, len(pose), self.CHUNK):
            p, b = pose[lo:lo + self.CHUNK], betas[lo:lo + self.CHUNK]
            m = len(p)
            if m < self.CHUNK:
                p = np.concatenate([p, np.zeros((self.CHUNK - m,) + p.shape[1:], p.dtype)])
                b = np.concatenate([b, np.zeros((self.CHUNK - m,) + b.shape[1:], b.dtype)])
            out = _Models._fn(model, p, b)
            for k, v in out.items():
                outs.setdefault(k, []).append(np.asarray(v, np.float64)[:m])
        return {k: np.concatenate(v) for k, v in outs.items()}


def _faces(model) -> np.ndarray:
    from extpose_jax import body_models as bm
    return bm.faces(model)


# ----------------------------------------------------------------------------- 3DPW: motion

# SMPL joint ids
_L_HIP, _R_HIP, _SPINE1, _L_KNEE, _R_KNEE, _SPINE2, _L_ANKLE, _R_ANKLE, _SPINE3 = 1, 2, 3, 4, 5, 6, 7, 8, 9
_NECK, _L_COLLAR, _R_COLLAR, _HEAD, _L_SHOULDER, _R_SHOULDER = 12, 13, 14, 15, 16, 17
_L_ELBOW, _R_ELBOW, _L_WRIST, _R_WRIST = 18, 19, 20, 21
_X, _Y, _Z = np.eye(3)

# (lower, upper) bounds per joint and axis of the local axis-angle, radians: a coarse
# anatomical box the motions stay in (checked after composing the rotations).
_LIMITS = {
    _L_HIP: ((-1.4, -0.5, -0.3), (0.6, 0.5, 0.8)), _R_HIP: ((-1.4, -0.5, -0.8), (0.6, 0.5, 0.3)),
    _L_KNEE: ((-0.05, -0.2, -0.2), (2.2, 0.2, 0.2)), _R_KNEE: ((-0.05, -0.2, -0.2), (2.2, 0.2, 0.2)),
    _L_ANKLE: ((-0.5, -0.3, -0.3), (0.6, 0.3, 0.3)), _R_ANKLE: ((-0.5, -0.3, -0.3), (0.6, 0.3, 0.3)),
}


def _body_motion(rng: np.random.Generator, t: np.ndarray, walk: float, gesture: str) -> np.ndarray:
    """Local SMPL axis-angle (T, 24, 3) of body joints 1..23 (the root is set by the caller).

    Local rotations are expressed in the rest (T-pose) frame: x = subject's left, y up, z
    forward. Hip flexion is about -x, knee flexion about +x, arms are lowered about z and swing
    about x, elbows bend about y (left: -y, right: +y). `walk` in [0, 1] scales the gait.
    """
    T = len(t)
    P = np.zeros((T, 24, 3))
    phase = 2 * np.pi * rng.uniform(0.8, 1.0) * t + rng.uniform(0, 2 * np.pi)
    s, c = np.sin(phase), np.cos(phase)
    a = walk

    def put(j, rot):
        P[:, j] = rot.as_rotvec()

    hip = 0.42 * a
    put(_L_HIP, _rot(_X, -hip * s - 0.04 + _wobble(rng, t, 0.04)) * _rot(_Z, 0.05 + _wobble(rng, t, 0.03)))
    put(_R_HIP, _rot(_X, hip * s - 0.04 + _wobble(rng, t, 0.04)) * _rot(_Z, -0.05 + _wobble(rng, t, 0.03)))
    knee_l = 0.08 + a * (0.15 + 0.95 * np.maximum(0.0, c) ** 2) + np.abs(_wobble(rng, t, 0.04))
    knee_r = 0.08 + a * (0.15 + 0.95 * np.maximum(0.0, -c) ** 2) + np.abs(_wobble(rng, t, 0.04))
    put(_L_KNEE, _rot(_X, knee_l))
    put(_R_KNEE, _rot(_X, knee_r))
    put(_L_ANKLE, _rot(_X, 0.12 * a * np.sin(phase + 1.2) + _wobble(rng, t, 0.04)))
    put(_R_ANKLE, _rot(_X, -0.12 * a * np.sin(phase + 1.2) + _wobble(rng, t, 0.04)))
    for j, share in ((_SPINE1, 0.4), (_SPINE2, 0.3), (_SPINE3, 0.3)):
        put(j, _rot(_Y, share * (0.12 * a * s + _wobble(rng, t, 0.1)))
            * _rot(_X, share * (0.1 + _wobble(rng, t, 0.06)))
            * _rot(_Z, share * _wobble(rng, t, 0.06)))
    put(_NECK, _rot(_Y, _wobble(rng, t, 0.12, 0.1, 0.5)) * _rot(_X, 0.05 + _wobble(rng, t, 0.05)))
    put(_HEAD, _rot(_Y, _wobble(rng, t, 0.2, 0.1, 0.5)) * _rot(_X, _wobble(rng, t, 0.08)))
    put(_L_COLLAR, _rot(_Z, _wobble(rng, t, 0.04)))
    put(_R_COLLAR, _rot(_Z, _wobble(rng, t, 0.04)))
    # arms hang (rotation about z) and swing against the legs (about x; + = backwards)
    down_l = 1.22 + _wobble(rng, t, 0.06)
    down_r = 1.22 + _wobble(rng, t, 0.06)
    swing = 0.35 * a
    sw_l = swing * s + _wobble(rng, t, 0.06)
    sw_r = -swing * s + _wobble(rng, t, 0.06)
    elb_l = 0.25 + 0.3 * a * (1 + s) / 2 + np.abs(_wobble(rng, t, 0.1))
    elb_r = 0.25 + 0.3 * a * (1 - s) / 2 + np.abs(_wobble(rng, t, 0.1))
    elbow_r_z = np.zeros(T)
    if gesture == 'wave':        # right arm raised to the side, forearm up, waving
        down_r = 0.25 + _wobble(rng, t, 0.05)
        sw_r = -0.3 + 0.0 * t
        elb_r = 0.2 + 0.0 * t
        elbow_r_z = -1.3 + 0.35 * np.sin(2 * np.pi * rng.uniform(1.0, 1.6) * t)
    elif gesture == 'phone':     # right hand at the ear
        down_r = 1.05 + _wobble(rng, t, 0.03)
        sw_r = -0.35 + _wobble(rng, t, 0.03)
        elb_r = 2.1 + _wobble(rng, t, 0.05)
    elif gesture == 'point':     # left arm pointing forward
        down_l = 1.1 + _wobble(rng, t, 0.05)
        sw_l = -1.1 + _wobble(rng, t, 0.08)
        elb_l = 0.15 + np.abs(_wobble(rng, t, 0.05))
    put(_L_SHOULDER, _rot(_X, sw_l) * _rot(_Z, -down_l))
    put(_R_SHOULDER, _rot(_X, sw_r) * _rot(_Z, down_r))
    put(_L_ELBOW, _rot(_Y, -elb_l))
    put(_R_ELBOW, _rot(_Z, elbow_r_z) * _rot(_Y, elb_r))
    put(_L_WRIST, _rot(_Z, _wobble(rng, t, 0.1)) * _rot(_Y, _wobble(rng, t, 0.1)))
    put(_R_WRIST, _rot(_Z, _wobble(rng, t, 0.1)) * _rot(_Y, _wobble(rng, t, 0.1)))
    for j, (lo, hi) in _LIMITS.items():
        P[:, j] = np.clip(P[:, j], lo, hi)
    return P


def _actor_track(rng, t, start_xz, heading0, turn_rate, walk, speed):
    """Global orientation (T, 3) and ground-plane position (T, 2) of one actor (y up)."""
    heading = heading0 + turn_rate * t
    yaw = heading - 0.06 * walk * np.sin(2 * np.pi * 0.9 * t) + _wobble(rng, t, 0.03)
    lean = 0.04 * walk + _wobble(rng, t, 0.02)
    go = (_rot(_Y, yaw) * _rot(_X, lean)).as_rotvec()
    dt = np.diff(t, prepend=t[0])
    vel = speed * np.stack([np.sin(heading), np.cos(heading)], 1)   # the body faces +z
    xz = np.asarray(start_xz, np.float64) + np.cumsum(vel * dt[:, None], axis=0)
    return go, xz


def _body_colors(rng, model) -> np.ndarray:
    """Per-vertex clothing colours (V, 3) from the skinning weights' dominant joint."""
    W = np.asarray(model.weights)
    part = W.argmax(1)
    V = np.asarray(model.v_template, np.float64)
    J = np.asarray(model.j_regressor) @ V
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.92, 1.05)
    shirt = render.random_color(rng, 25, 230)
    pants = render.random_color(rng, 20, 160) if rng.random() < 0.8 else render.random_color(rng)
    shoes = render.random_color(rng, 10, 90)
    hair = _HAIR[rng.integers(len(_HAIR))]
    long_sleeves = rng.random() < 0.55
    shorts = rng.random() < 0.2
    col = np.empty((len(V), 3))
    region = {0: pants, 1: pants, 2: pants, 4: skin if shorts else pants,
              5: skin if shorts else pants, 7: shoes, 8: shoes, 10: shoes, 11: shoes,
              3: shirt, 6: shirt, 9: shirt, 13: shirt, 14: shirt, 16: shirt, 17: shirt,
              18: shirt if long_sleeves else skin, 19: shirt if long_sleeves else skin,
              12: skin, 15: skin, 20: skin, 21: skin, 22: skin, 23: skin}
    for j in range(24):
        col[part == j] = region[j]
    head = J[_HEAD]
    on_head = part == _HEAD
    crown = V[:, 1] > head[1] + 0.045
    back = (V[:, 2] < head[2] - 0.01) & (V[:, 1] > head[1] - 0.03)
    hairy = on_head & (crown | back)
    if rng.random() < 0.9:
        col[hairy] = hair
    col *= rng.uniform(0.94, 1.06, (len(V), 1))
    return np.clip(col, 0, 255)


# ----------------------------------------------------------------------------- 3DPW: camera


def look_at(cam_pos, target, roll: float = 0.0, up=(0.0, 1.0, 0.0)):
    """World -> OpenCV camera (R, t) for a camera at cam_pos looking at target in a y-up world.

    The camera's z axis points at the target, x is horizontal to the right, y points down (the
    world's up maps to -y); `roll` turns the image about the optical axis.
    """
    c = np.asarray(cam_pos, np.float64)
    z = _unit(np.asarray(target, np.float64) - c)
    x = _unit(np.cross(z, up))
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    if roll:
        R = Rotation.from_rotvec([0, 0, roll]).as_matrix() @ R
    return R, -R @ c


def _fit_camera(rng, pts_world, centers, size_wh, K, t, fill):
    """A smoothly moving camera that keeps every point of pts_world (F, P, 3) in view.

    The camera orbits the per-frame centre (F, 3) at a slowly changing azimuth and height; its
    distance is solved so that the people fill about `fill` of the image height.
    """
    W, H = size_wh
    az0 = rng.uniform(-2.3, 2.3)
    az_rate = rng.uniform(-0.25, 0.25)
    height = rng.uniform(0.9, 1.8)
    roll = _wobble(rng, t, 0.015)
    shake = np.stack([_wobble(rng, t, 0.02, 0.5, 2.0) for _ in range(3)], 1)
    tgt_shake = np.stack([_wobble(rng, t, 0.03, 0.3, 1.5) for _ in range(3)], 1)
    margin = 0.05 * W
    dist = 4.0
    for _ in range(6):
        Rs, ts = [], []
        for i in range(len(t)):
            az = az0 + az_rate * t[i]
            c = centers[i] + dist * np.array([np.sin(az), 0.0, np.cos(az)])
            c[1] = height
            c = c + shake[i]
            R, tt = look_at(c, centers[i] + tgt_shake[i], roll[i])
            Rs.append(R)
            ts.append(tt)
        Rs, ts = np.stack(Rs), np.stack(ts)
        cam = np.einsum('fij,fpj->fpi', Rs, pts_world) + ts[:, None]
        if (cam[..., 2] < 0.5).any():
            dist *= 1.3
            continue
        uv = render.project(K, cam)
        tall = (uv[..., 1].max(1) - uv[..., 1].min(1)).max()
        over = max(((uv[..., 0] - K[0, 2]) / (W / 2 - margin)).max(),
                   ((K[0, 2] - uv[..., 0]) / (W / 2 - margin)).max(),
                   ((uv[..., 1] - K[1, 2]) / (H / 2 - margin)).max(),
                   ((K[1, 2] - uv[..., 1]) / (H / 2 - margin)).max())
        scale = max(tall / (fill * H), over * 1.02)
        if abs(scale - 1) < 0.02 and over <= 1.0:
            break
        dist = float(np.clip(dist * scale, 1.5, 40.0))
    return Rs, ts


# ----------------------------------------------------------------------------- 3DPW: scene


class _Scene:
    """Ground, walls and sky of one 3DPW sequence (textures drawn once, seen by every frame)."""

    def __init__(self, rng, center_xz, view_dir_xz):
        self.sky_top = np.array([rng.uniform(60, 140), rng.uniform(110, 170), rng.uniform(180, 250)])
        self.sky_low = np.clip(self.sky_top + rng.uniform(40, 90), 0, 255)
        if rng.random() < 0.3:   # overcast
            g = rng.uniform(150, 220)
            self.sky_top = np.array([g, g, g + 5])
            self.sky_low = np.clip(self.sky_top + 20, 0, 255)
        self.clouds = render.smooth_noise(rng, 128, 128, 5, 3)
        self.ground = render.random_texture(rng, 256, 256, ['noise', 'checker', 'cells'][rng.integers(3)])
        self.ground_tile = rng.uniform(2.5, 8.0)
        self.walls = []
        d = _unit(np.array([view_dir_xz[0], 0.0, view_dir_xz[1]]))   # away from the camera
        c = np.array([center_xz[0], 0.0, center_xz[1]])
        for k in range(int(rng.integers(1, 4))):
            ang = [0.0, rng.uniform(0.9, 1.5), -rng.uniform(0.9, 1.5)][k]
            n = Rotation.from_rotvec([0, ang, 0]).apply(d)          # from the centre to the wall
            dist = rng.uniform(7, 18)
            along = np.cross([0.0, 1.0, 0.0], n)                    # horizontal, in the wall
            height = rng.uniform(3, 12)
            kind = ['cells', 'noise', 'stripes', 'gradient'][rng.integers(4)]
            tex = render.random_texture(rng, 256, 256, kind)
            render.add_random_shapes(rng, tex, int(rng.integers(0, 6)))
            self.walls.append(dict(origin=c + dist * n + np.array([0.0, height, 0.0]), u=along,
                                   v=np.array([0.0, -1.0, 0.0]), tex=tex, height=height,
                                   tile=(rng.uniform(3, 10), height), shade=rng.uniform(0.7, 1.05)))
        self.sun = _unit(np.array([rng.normal(), rng.uniform(0.6, 1.5), rng.normal()]))
        self.fog = self.sky_low

    def draw(self, K, R, t, size_wh) -> np.ndarray:
        W, H = size_wh
        rays = render.pixel_rays(K, R, size_wh)
        elev = rays[..., 1] / np.linalg.norm(rays, axis=-1)
        f = np.clip(elev / 0.5, 0, 1)[..., None]
        img = np.clip(self.sky_low * (1 - f) + self.sky_top * f, 0, 255).astype(np.uint8)
        depth = np.full((H, W), np.inf)
        cloud_tex = np.repeat((self.clouds[..., None] * 255).astype(np.uint8), 3, axis=2)
        sky = img.copy()
        render.render_plane(sky, K, R, t, [0, 300.0, 0], [1.0, 0, 0], [0, 0, 1.0], cloud_tex,
                            (900.0, 900.0), fog_color=self.sky_low, fog_distance=2500.0, rays=rays)
        img = (0.65 * img + 0.35 * sky).astype(np.uint8)
        for w in self.walls:
            render.render_plane(img, K, R, t, w['origin'], w['u'], w['v'], w['tex'], w['tile'],
                                extent=(-60, 60, 0, w['height']), depth=depth, fog_color=self.fog,
                                fog_distance=60.0, shade=w['shade'], rays=rays)
        render.render_plane(img, K, R, t, [0, 0.0, 0], [1.0, 0, 0], [0, 0, 1.0], self.ground,
                            (self.ground_tile, self.ground_tile), depth=depth, fog_color=self.fog,
                            fog_distance=45.0, shade=0.95, rays=rays)
        return img


# ----------------------------------------------------------------------------- 3DPW: writer


def _make_sequence(seed, models, name, index, n_frames, size_wh, progress=None):
    rng = _rng(seed, '3dpw', name)
    W, H = size_wh
    n60 = 2 * n_frames
    t60 = np.arange(n60) / 60.0
    offset = int(rng.integers(0, 2))
    img_frame_ids = np.arange(n_frames, dtype=np.int64) * 2 + offset
    t30 = t60[img_frame_ids]
    n_actors = 2 if index % 2 == 0 else 1
    together = rng.random() < 0.6
    heading0 = rng.uniform(-np.pi, np.pi)
    turn = rng.uniform(-0.35, 0.35)
    walking = rng.random() < 0.7
    walk = rng.uniform(0.55, 1.0) if walking else rng.uniform(0.03, 0.12)
    speed = 1.3 * walk if walking else 0.0
    start = rng.uniform(-3, 3, 2)
    fwd = np.array([np.sin(heading0), np.cos(heading0)])
    lateral = np.array([np.cos(heading0), -np.sin(heading0)])

    actors = []
    for k in range(n_actors):
        arng = _rng(seed, '3dpw', name, 'actor', k)
        gender = 'm' if arng.random() < 0.5 else 'f'
        model = models.smpl('male' if gender == 'm' else 'female')
        betas10 = np.clip(arng.normal(0, 0.8, 10), -2.0, 2.0)
        gesture = 'none' if walking else ['none', 'wave', 'phone', 'point'][arng.integers(4)]
        h0, st, sp, wk, tr = heading0, start, speed, walk, turn
        if k == 1:
            if together or walking:
                st = start + lateral * arng.uniform(0.9, 1.3) * (1 if arng.random() < 0.5 else -1)
                h0 = heading0 + arng.normal(0, 0.05)
            else:   # facing each other, talking
                st = start + fwd * arng.uniform(1.2, 1.8)
                h0 = heading0 + np.pi + arng.normal(0, 0.35)
            wk = float(np.clip(walk + arng.normal(0, 0.05), 0.02, 1.0))
        body = _body_motion(arng, t60, wk, gesture)
        go, xz = _actor_track(arng, t60, st, h0, tr, wk, sp)
        body[:, 0] = go
        poses60 = body.reshape(n60, 72)
        out = models.forward(model, poses60, np.broadcast_to(betas10, (n60, 10)))
        trans60 = np.zeros((n60, 3))
        trans60[:, 0], trans60[:, 2] = xz[:, 0], xz[:, 1]
        trans60[:, 1] = -out['vertices'][..., 1].min(1)      # lowest vertex on the ground y = 0
        betas = betas10 if k == 0 else np.concatenate([betas10, np.zeros(290)])  # a 300-d track
        actors.append(dict(gender=gender, model=model, betas=betas, betas10=betas10,
                           poses60=poses60, trans60=trans60, out=out, rng=arng))

    # camera: orbit the people's centre, people fill `fill` of the image height
    ids = img_frame_ids
    pts = np.concatenate([a['out']['vertices'][ids][:, ::7] + a['trans60'][ids][:, None]
                          for a in actors], axis=1)
    centers = np.stack([a['out']['joints'][ids][:, 0] + a['trans60'][ids] for a in actors]).mean(0)
    centers[:, 1] = 0.88
    f = W * rng.uniform(1.78, 1.86)
    K = np.array([[f, 0, W / 2.0], [0, f * rng.uniform(1.0, 1.006), H / 2.0], [0, 0, 1.0]])
    Rs, ts = _fit_camera(rng, pts, centers, size_wh, K, t30, rng.uniform(0.5, 0.72))
    cam_poses = np.tile(np.eye(4), (n_frames, 1, 1))
    cam_poses[:, :3, :3], cam_poses[:, :3, 3] = Rs, ts

    cam0 = -Rs[0].T @ ts[0]
    view = centers[0] - cam0
    scene = _Scene(rng, centers[0, [0, 2]], view[[0, 2]])
    meshes_static = []
    if rng.random() < 0.4:   # a pillar or a box between the camera and the people
        frac = rng.uniform(0.35, 0.6)
        p = cam0 + frac * (centers[n_frames // 2] - cam0)
        p += np.cross(_unit(view), [0, 1.0, 0]) * rng.normal(0, 0.35)
        if rng.random() < 0.5:
            size = (rng.uniform(0.15, 0.35), rng.uniform(1.5, 3.0), rng.uniform(0.15, 0.35))
        else:
            size = (rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.1), rng.uniform(0.4, 1.0))
        v, fc = render.box_mesh([p[0], size[1] / 2, p[2]], size,
                                Rotation.from_rotvec([0, rng.uniform(0, np.pi), 0]).as_matrix())
        meshes_static.append((v, fc, render.random_color(rng, 40, 220)))

    colors = [_body_colors(a['rng'], a['model']) for a in actors]
    faces = _faces(actors[0]['model'])
    frames = []
    for i in range(n_frames):
        R, tt = Rs[i], ts[i]
        bg = scene.draw(K, R, tt, size_wh)
        meshes = []
        for a, col in zip(actors, colors):
            vw = a['out']['vertices'][ids[i]] + a['trans60'][ids[i]]
            meshes.append(render.Mesh(vw @ R.T + tt, faces, col))
        for v, fc, col in meshes_static:
            meshes.append(render.Mesh(v @ R.T + tt, fc, col))
        img, _, _ = render.render_meshes(bg, meshes, K, light_dir=R @ scene.sun, ambient=0.5,
                                         diffuse=0.62, supersample=2)
        frng = _rng(seed, '3dpw', name, 'frame', i)
        img = render.random_blur(frng, img, 0.08, 0.06)
        frames.append(_encode_jpg(render.sensor_noise(frng, img, (0.5, 2.5))))
        if progress is not None:
            progress.update(1)

    # annotations
    poses2d, joint_positions, valid = [], [], []
    for k, a in enumerate(actors):
        out = a['out']
        kp_world = (skeletons.convert(out['keypoints'][ids], 'body25', 'openpose18')
                    + a['trans60'][ids][:, None])
        kp_cam = np.einsum('fij,fpj->fpi', Rs, kp_world) + ts[:, None]
        poses2d.append(np.stack([openpose18_2d(kp_cam[i], K, size_wh) for i in range(n_frames)]))
        joint_positions.append((out['joints'][ids] + a['trans60'][ids][:, None]).reshape(n_frames, 72))
        v = np.ones(n_frames, bool)
        if k == 0 or a['rng'].random() < 0.5:   # a few frames whose camera pose is not aligned
            run = int(a['rng'].integers(1, max(2, n_frames // 6) + 1))
            lo = int(a['rng'].integers(0, n_frames - run + 1))
            v[lo:lo + run] = False
        valid.append(v)
    tex_maps = []
    for a, col in zip(actors, colors):   # a tiny 'texture': shirt over trousers
        part = np.asarray(a['model'].weights).argmax(1)
        tm = np.zeros((16, 16, 3), np.uint8)
        tm[:8] = np.median(col[part == _SPINE2], axis=0).astype(np.uint8)
        tm[8:] = np.median(col[part == _L_KNEE], axis=0).astype(np.uint8)
        tex_maps.append(tm)
    v_clothed = []
    for a in actors:
        rest = models.forward(a['model'], np.zeros((1, 72)), a['betas10'][None])['vertices'][0]
        v_clothed.append(rest + 0.012 * render.vertex_normals(rest, faces))
    data = {
        'sequence': name,
        'genders': [a['gender'] for a in actors],
        'betas': [np.asarray(a['betas'], np.float64) for a in actors],
        'betas_clothed': [a['betas10'] + a['rng'].normal(0, 0.05, 10) for a in actors],
        'v_template_clothed': v_clothed,
        'texture_maps': tex_maps,
        'poses': [a['poses60'][ids].copy() for a in actors],
        'trans': [a['trans60'][ids].copy() for a in actors],
        'poses_60Hz': [a['poses60'] for a in actors],
        'trans_60Hz': [a['trans60'] for a in actors],
        'img_frame_ids': img_frame_ids,
        'jointPositions': joint_positions,
        'poses2d': poses2d,
        'cam_poses': cam_poses,
        'cam_intrinsics': K,
        'campose_valid': valid,
    }
    return data, frames


def write_3dpw(root, body_models_dir, seed: int = 0, sequences=None, frames: int = 24,
               image_size=(270, 480)) -> dict:
    """Writes a 3DPW-layout folder (§1) under `root`; returns a summary.

    sequences: {split: count} over 'train', 'validation', 'test' (default one each).
    frames: image frames N per sequence (the 60 Hz arrays have 2N rows). image_size: (W, H);
    cam_intrinsics has cx = W / 2, cy = H / 2. Sequence k (counted over the splits in that
    order) has two actors when k is even, one when odd; actor 0's betas are (10,), actor 1's
    (300,) zero-padded. Returns {'root', 'sequences': {split: [names]}, 'frames', 'image_size'}.
    """
    root = os.fspath(root)
    sequences = dict(SMALL['3dpw']['sequences'] if sequences is None else sequences)
    for split in sequences:
        if split not in THREEDPW_SPLITS:
            raise ValueError(f'unknown 3DPW split {split!r}; expected one of {THREEDPW_SPLITS}')
    W, H = (int(x) for x in image_size)
    if frames < 1:
        raise ValueError('frames must be >= 1')
    models = _Models(body_models_dir)
    names = {}
    index = 0
    total = sum(sequences.values()) * frames
    with _progress(total, '3DPW') as bar:
        for split in THREEDPW_SPLITS:
            names[split] = []
            for _ in range(sequences.get(split, 0)):
                place = _PLACES[_rng(seed, '3dpw-place', index).integers(len(_PLACES))]
                name = f'{place}_synth_{index:02d}'
                data, jpgs = _make_sequence(seed, models, name, index, frames, (W, H), bar)
                img_dir = _makedirs(os.path.join(root, 'imageFiles', name))
                for i, jpg in enumerate(jpgs):
                    _write_bytes(os.path.join(img_dir, f'image_{i:05d}.jpg'), jpg)
                seq_dir = _makedirs(os.path.join(root, 'sequenceFiles', split))
                _write_bytes(os.path.join(seq_dir, name + '.pkl'), legacy_pickle.dumps(data))
                names[split].append(name)
                index += 1
    return {'root': root, 'sequences': names, 'frames': frames, 'image_size': (W, H)}


# ----------------------------------------------------------------------------- hands


class _HandRig:
    """Rest-pose facts of the right MANO model used to design hand poses."""

    def __init__(self, models: _Models):
        right = models.mano(True)
        out = models.forward(right, np.zeros((1, 48)), np.zeros((1, 10)))
        self.joints = out['joints'][0]
        self.verts = out['vertices'][0]
        F = _faces(right)
        e = np.sort(np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]), 1)
        uniq, cnt = np.unique(e, axis=0, return_counts=True)
        self.rim = np.unique(uniq[cnt == 1])                 # the open wrist loop
        wrist = self.joints[0]
        rim_c = self.verts[self.rim].mean(0)
        self.arm_axis = _unit(rim_c - wrist)                   # wrist -> forearm (rest)
        self.rim_radius = float(np.linalg.norm(self.verts[self.rim] - rim_c, axis=1).mean())
        palm_n = _unit(np.cross(self.joints[4] - wrist, self.joints[7] - wrist))  # middle1, pinky1
        if palm_n @ (self.joints[13] - wrist) < 0:             # the thumb sits on the palm side
            palm_n = -palm_n
        self.palm_normal = palm_n
        # curl axes of the 5 fingers (MANO order: index, middle, pinky, ring, thumb)
        self.curl_axes = []
        for f in range(5):
            j1, j2 = 1 + 3 * f, 2 + 3 * f
            d = _unit(self.joints[j2] - self.joints[j1])
            self.curl_axes.append(_unit(np.cross(d, palm_n)))


def _finger_pose(rng, rig: _HandRig) -> np.ndarray:
    """45 finger values (15 joints x axis-angle), relative to a FLAT hand: a random grasp."""
    grasp = rng.uniform(0.0, 1.0) ** 1.3
    pose = np.zeros((15, 3))
    for f in range(5):
        thumb = f == 4
        base = (0.9 if not thumb else 0.5) * grasp + rng.normal(0, 0.18)
        base = float(np.clip(base, -0.05 if not thumb else -0.1, 1.5))
        spread = rng.normal(0, 0.08) + (0.0 if thumb else (-0.08, 0.0, 0.12, 0.05)[f] * rng.uniform(0, 1.5))
        for k, share in enumerate((0.9, 1.1, 0.75) if not thumb else (0.5, 0.8, 0.9)):
            curl = base * share + rng.normal(0, 0.06)
            r = _rot(rig.curl_axes[f], max(curl, -0.1))
            if k == 0:
                r = r * _rot(rig.palm_normal, spread)
                if thumb:
                    r = r * _rot(_unit(rig.joints[14] - rig.joints[13]), rng.uniform(-0.3, 0.5))
            pose[3 * f + k] = r.as_rotvec()
    return pose.reshape(45)


def _hand_orientation(rng, rig: _HandRig, arm_dir_cam) -> np.ndarray:
    """Global orientation (3,) that points the rest forearm axis along arm_dir_cam, random twist."""
    R = _align(rig.arm_axis, arm_dir_cam)
    twist = Rotation.from_rotvec(_unit(arm_dir_cam) * rng.uniform(-np.pi, np.pi)).as_matrix()
    return Rotation.from_matrix(twist @ R).as_rotvec()


def _mirror_pose(pose: np.ndarray) -> np.ndarray:
    """Right-hand axis-angle design -> the left-hand pose of its mirror image (x -> -x)."""
    p = np.asarray(pose, np.float64).reshape(-1, 3) * np.array([1.0, -1.0, -1.0])
    return p.reshape(np.shape(pose))


def _arm_meshes(rig, verts, wrist, rng, skin, length=0.35):
    """A forearm (two tubes: skin, then sometimes a sleeve) continuing the open wrist loop."""
    rim_c = verts[rig.rim].mean(0)
    d = _unit(rim_c - wrist)
    r0 = rig.rim_radius
    start = rim_c - 0.006 * d
    # keep the far end in front of the camera
    if d[2] < 0:
        length = min(length, max(0.05, (start[2] - 0.08) / -d[2]))
    bare = length * (rng.uniform(0.35, 0.7) if rng.random() < 0.5 else 1.0)
    out = []
    v, f = render.tube_mesh(start, start + bare * d, r0, r0 * (1 + 0.5 * bare / 0.3), 20)
    out.append(render.Mesh(v, f, skin))
    if bare < length:
        rs = r0 * (1 + 0.5 * bare / 0.3) + 0.008
        v, f = render.tube_mesh(start + (bare - 0.01) * d, start + length * d, rs, rs * 1.25, 20)
        out.append(render.Mesh(v, f, render.random_color(rng, 20, 220)))
    return out


def _tint(rng, color, amount):
    return np.clip(np.asarray(color) * (1 - amount) + render.random_color(rng) * amount, 0, 255)


# ----------------------------------------------------------------------------- FreiHAND


def _green_screen(rng, size):
    g = np.array([rng.uniform(30, 70), rng.uniform(140, 200), rng.uniform(40, 90)])
    light = 0.75 + 0.35 * render.smooth_noise(rng, size, size, 2, 2)
    img = g * light[..., None] + rng.normal(0, 2, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _freihand_samples(seed, models, rig, split, n, size=224):
    """n annotated right hands: dicts with K, mano (61,), xyz (21,3), verts (778,3), scale."""
    hands_mean = models.hands_mean()
    right = models.mano(True)
    plans = []
    for idx in range(n):
        rng = _rng(seed, 'freihand', split, idx)
        f = rng.uniform(480, 650)
        K = np.array([[f, 0, size / 2 + rng.uniform(-4, 4)], [0, f, size / 2 + rng.uniform(-4, 4)],
                      [0, 0, 1.0]])
        arm = _unit([rng.normal(0, 0.5), rng.uniform(0.3, 1.0), rng.normal(0, 0.6)])
        flat = np.concatenate([_hand_orientation(rng, rig, arm), _finger_pose(rng, rig)])
        rel = flat.copy()
        rel[3:] -= hands_mean                      # flat_hand_mean=False: relative to the mean
        betas = np.clip(rng.normal(0, 0.7, 10), -2, 2)
        plans.append(dict(rng=rng, K=K, rel=rel, betas=betas))
    if not plans:
        return []
    pose = np.stack([p['rel'] for p in plans])
    pose[:, 3:] += hands_mean                       # exactly what a reader does
    out = models.forward(right, pose, np.stack([p['betas'] for p in plans]))
    samples = []
    for i, p in enumerate(plans):
        rng, K = p['rng'], p['K']
        kp, verts, joints = out['keypoints'][i], out['vertices'][i], out['joints'][i]
        v9 = verts - kp[9]
        # depth: the hand box spans `fill` of the image; then a random shift that keeps it inside
        fill = rng.uniform(0.45, 0.75)
        z = 0.6
        for _ in range(4):
            uv = render.project(K, v9 + [0, 0, z])
            ext = (uv.max(0) - uv.min(0)).max()
            z *= ext / (fill * size)
        root = np.array([0.0, 0.0, z])
        uv = render.project(K, v9 + root)
        lo, hi = 6 - uv.min(0), size - 7 - uv.max(0)          # allowed pixel shifts
        shift = np.where(lo <= hi, lo + rng.random(2) * (hi - lo), (lo + hi) / 2)
        root[:2] = shift * z / np.array([K[0, 0], K[1, 1]])
        for _ in range(5):                                     # perspective: settle the shift
            uv = render.project(K, v9 + root)
            over = np.maximum(6 - uv.min(0), 0) - np.maximum(uv.max(0) - (size - 7), 0)
            if not over.any():
                break
            root[:2] += over * z / np.array([K[0, 0], K[1, 1]])
        fm = 0.5 * (K[0, 0] + K[1, 1])
        s = fm / root[2]
        uv_root = np.array([K[0, 2] + s * root[0], K[1, 2] + s * root[1]])
        root = np.array([(uv_root[0] - K[0, 2]) / s, (uv_root[1] - K[1, 2]) / s, fm / s])
        shift3 = root - kp[9]
        xyz = kp + shift3
        verts = verts + shift3
        xyz[list(HAND_TIP_SLOTS)] = verts[list(FREIHAND_TIPS)]   # the toolbox's own tips
        mano = np.concatenate([p['rel'], p['betas'], uv_root, [s]])
        samples.append(dict(rng=rng, K=K, mano=mano, xyz=xyz, verts=verts,
                            wrist=joints[0] + shift3, scale=float(np.linalg.norm(xyz[9] - xyz[10]))))
    return samples


def _render_freihand(seed, split, idx, sample, rig, faces, version: str, size=224):
    """Renders one version of a FreiHAND sample: (rgb, mesh-id mask)."""
    rng = _rng(seed, 'freihand', split, idx, 'look', version)
    skin = sample['skin']
    if version == 'gs':
        bg = _green_screen(rng, size)
        color = skin
    else:
        bg = render.random_background(rng, (size, size))
        color = skin if version in ('hom', 'eval') else _tint(rng, skin, 0.25 if version == 'sample' else 0.4)
    meshes = [render.Mesh(sample['verts'], faces, color, double_sided=True)]
    arm_rng = _rng(seed, 'freihand', split, idx, 'arm')    # the same forearm in every version
    meshes += _arm_meshes(rig, sample['verts'], sample['wrist'], arm_rng, color)
    img, mask, depth = render.render_meshes(bg, meshes, sample['K'], light_dir=sample['light'],
                                            ambient=0.4, diffuse=0.7, supersample=2)
    if version == 'eval' and rng.random() < 0.3:          # something in front of the hand
        ys, xs = np.nonzero(mask == 0)
        if len(xs):
            render.add_occluders(rng, img, mask, depth, (xs.min(), ys.min(), xs.max(), ys.max()),
                                 1, (0.15, 0.35))
    img = render.sensor_noise(rng, render.random_blur(rng, img, 0.05, 0.05), (0.5, 2.0))
    return img, mask


def write_freihand(root, body_models_dir, seed: int = 0, train: int = 16,
                   evaluation: int = 8) -> dict:
    """Writes FreiHAND_pub_v2/ and FreiHAND_pub_v2_eval/ (§2) under `root`; returns a summary.

    training: rgb/%08d.jpg for 4 versions (gs, hom, sample, auto: the same hand over a green
    screen / different backgrounds and hand colourisations; id = idx + train * v), mask/%08d.jpg
    (hand + forearm, grey 0/255) for the `train` unique ids, training_{K,mano,xyz,verts,scale}.json.
    evaluation: rgb (one version, a random background) + evaluation_{K,scale}.json in
    FreiHAND_pub_v2, evaluation_{xyz,verts,mano}.json (+ the same rgb) in FreiHAND_pub_v2_eval.
    The hand is the right MANO hand; xyz uses the toolbox's tips (ring 555, pinky 672).
    """
    root = os.fspath(root)
    models = _Models(body_models_dir)
    rig = _HandRig(models)
    faces = _faces(models.mano(True))
    pub = os.path.join(root, 'FreiHAND_pub_v2')
    ev = os.path.join(root, 'FreiHAND_pub_v2_eval')
    total = 4 * train + evaluation
    with _progress(total, 'FreiHAND') as bar:
        for split, n in (('training', train), ('evaluation', evaluation)):
            samples = _freihand_samples(seed, models, rig, split, n)
            rgb_dir = _makedirs(os.path.join(pub, split, 'rgb'))
            versions = FREIHAND_VERSIONS if split == 'training' else ('eval',)
            if split == 'training':
                mask_dir = _makedirs(os.path.join(pub, split, 'mask'))
            else:
                eval_rgb = _makedirs(os.path.join(ev, split, 'rgb'))
            for idx, smp in enumerate(samples):
                rng = smp['rng']
                smp['skin'] = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.92, 1.05)
                smp['light'] = _unit([rng.normal(0, 0.6), rng.normal(-0.5, 0.5), -1.0])
                for v, version in enumerate(versions):
                    img, mask = _render_freihand(seed, split, idx, smp, rig, faces, version)
                    jpg = _encode_jpg(img)
                    image_id = idx + n * v
                    _write_bytes(os.path.join(rgb_dir, f'{image_id:08d}.jpg'), jpg)
                    if split == 'evaluation':
                        _write_bytes(os.path.join(eval_rgb, f'{image_id:08d}.jpg'), jpg)
                    if v == 0 and split == 'training':   # hand + forearm foreground
                        fg = (mask >= 0).astype(np.uint8) * 255
                        _write_bytes(os.path.join(mask_dir, f'{idx:08d}.jpg'), _encode_jpg(fg))
                    bar.update(1)
            K = [s['K'].tolist() for s in samples]
            mano = [[s['mano'].tolist()] for s in samples]
            xyz = [s['xyz'].tolist() for s in samples]
            verts = [s['verts'].tolist() for s in samples]
            scale = [s['scale'] for s in samples]
            _write_json(os.path.join(pub, f'{split}_K.json'), K)
            _write_json(os.path.join(pub, f'{split}_scale.json'), scale)
            if split == 'training':
                _write_json(os.path.join(pub, 'training_mano.json'), mano)
                _write_json(os.path.join(pub, 'training_xyz.json'), xyz)
                _write_json(os.path.join(pub, 'training_verts.json'), verts)
            else:
                _write_json(os.path.join(ev, 'evaluation_mano.json'), mano)
                _write_json(os.path.join(ev, 'evaluation_xyz.json'), xyz)
                _write_json(os.path.join(ev, 'evaluation_verts.json'), verts)
    return {'root': root, 'pub': pub, 'eval': ev, 'train': train, 'evaluation': evaluation}


# ----------------------------------------------------------------------------- HInt

_HINT_IMAGE = {'newdays': ((360, 270), (384, 216)), 'epick': ((456, 256),), 'ego4d': ((384, 288),)}
_YT = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_'


def _uuid(rng) -> str:
    h = ''.join('0123456789abcdef'[i] for i in rng.integers(0, 16, 32))
    return f'{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}'


def _hint_image_id(rng, source: str) -> str:
    """An image id in the source's real naming style (the stem without _l / _r)."""
    if source == 'newdays':
        yt = ''.join(_YT[i] for i in rng.integers(0, len(_YT), 11))
        return f'ND_{yt}_frame{int(rng.integers(0, 10 ** 6)):06d}'
    if source == 'epick':
        return (f'EK_{int(rng.integers(0, 10000)):04d}_P{int(rng.integers(1, 38)):02d}_'
                f'{int(rng.integers(1, 30)):02d}_frame_{int(rng.integers(0, 10 ** 6)):010d}')
    if source == 'ego4d':
        stage = ['pre', 'pnr', 'post'][rng.integers(3)]
        which = ['frame', '15', '30', '45'][rng.integers(4)]
        return f'{_uuid(rng)}_{_uuid(rng)}_{int(rng.integers(0, 20000))}_{stage}_{which}'
    raise ValueError(f'unknown HInt source {source!r}')


def _hint_hand_design(rng, rig, K, size_wh, source, on_right_half):
    """A right-hand design in the camera frame: pose (48,), betas, wrist target, arm direction."""
    W, H = size_wh
    ego = source != 'newdays'
    z = rng.uniform(0.32, 0.55) if ego else rng.uniform(0.45, 0.9)
    u = rng.uniform(0.55, 0.8) * W if on_right_half else rng.uniform(0.3, 0.7) * W
    v = rng.uniform(0.45, 0.75) * H
    if ego:   # the arm comes from the bottom (right) towards the camera
        arm = _unit([rng.uniform(0.1, 0.6), rng.uniform(0.5, 1.0), -rng.uniform(0.1, 0.6)])
    else:
        arm = _unit([rng.normal(0.3, 0.4), rng.uniform(0.2, 1.0), rng.normal(0.0, 0.5)])
    wrist = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
    pose = np.concatenate([_hand_orientation(rng, rig, arm), _finger_pose(rng, rig)])
    return dict(pose=pose, betas=np.clip(rng.normal(0, 0.7, 10), -2, 2), wrist=wrist)


_TIP_JOINT = (15, 3, 6, 12, 9)   # MANO joint under each tip vertex: thumb, index, middle, ring, pinky


def _hand_parts(model):
    """Per face: the dominant MANO joint; per OpenPose keypoint: the joints whose skin counts as
    its own surface (its joint, the parent, the children)."""
    W = np.asarray(model.weights)
    F = _faces(model)
    face_part = W[F].sum(1).argmax(1)
    parents = model.parents
    mano21 = np.asarray(skeletons.MANO_TO_OPENPOSE21)
    own = []
    for j in range(21):
        m = int(mano21[j])
        m = _TIP_JOINT[m - 16] if m >= 16 else m
        near = {m} | {c for c, p in enumerate(parents) if p == m}
        if parents[m] >= 0:
            near.add(parents[m])
        own.append(near)
    return face_part, own


def _keypoint_occlusion(kp_cam, uv, mask, depth, face_ids, mesh_id, face_part, own,
                        max_skin=0.035):
    """21 x 0/1, 1 = occluded, for the hand drawn as mesh `mesh_id`.

    At the keypoint's pixel: a 2D occluder, or another mesh in front of the keypoint, hides it;
    its own hand hides it when the surface seen there belongs to a different part of the hand
    (e.g. a curled finger over the palm) or lies more than `max_skin` metres in front. Pixels
    off the hand (the keypoint projects just outside the silhouette) count as visible.
    """
    H, W = mask.shape
    occ = np.zeros(len(kp_cam), np.int64)
    for j, (u, v) in enumerate(uv):
        x, y = int(round(u)), int(round(v))
        if not (0 <= x < W and 0 <= y < H):
            continue
        m, d = mask[y, x], depth[y, x]
        if m == render.OCCLUDER_ID:
            occ[j] = 1
        elif m == mesh_id:
            part = face_part[face_ids[y, x]]
            occ[j] = int(part not in own[j] or d < kp_cam[j, 2] - max_skin)
        elif m != render.BACKGROUND_ID and d < kp_cam[j, 2]:
            occ[j] = 1
    return occ


def _render_hint_image(seed, models, rig, split, source, n):
    """One HInt image: (rgb, [hand dicts with side, keypoints, kp3d, occlusion, bbox]), K."""
    rng = _rng(seed, 'hint', split, source, n)
    sizes = _HINT_IMAGE[source]
    W, H = sizes[rng.integers(len(sizes))]
    f = W * rng.uniform(0.75, 1.15)
    K = np.array([[f, 0, W / 2.0], [0, f, H / 2.0], [0, 0, 1.0]])
    two = rng.random() < 0.45
    sides = ['left', 'right'] if two else [['left', 'right'][rng.integers(2)]]
    hands = []
    for side in sides:
        d = _hint_hand_design(rng, rig, K, (W, H), source, on_right_half=two)
        if side == 'left':   # the mirror image of a right-hand design through the y-z plane
            d['pose'] = _mirror_pose(d['pose'])
            d['wrist'] = d['wrist'] * np.array([-1.0, 1.0, 1.0])
        model = models.mano(side == 'right')
        out = models.forward(model, d['pose'][None], d['betas'][None])
        shift = d['wrist'] - out['joints'][0, 0]
        hands.append(dict(side=side, model=model, verts=out['vertices'][0] + shift,
                          kp3d=out['keypoints'][0] + shift, wrist=d['wrist']))
    # keep every hand on the image: shrink towards the centre / push back if needed
    for h in hands:
        for _ in range(6):
            uv = render.project(K, h['verts'])
            if (uv.min(0) >= [3, 3]).all() and (uv.max(0) <= [W - 4, H - 4]).all():
                break
            c = h['verts'].mean(0)
            move = np.array([-0.25 * c[0], -0.25 * c[1], 0.08])
            h['verts'] = h['verts'] + move
            h['kp3d'] = h['kp3d'] + move
            h['wrist'] = h['wrist'] + move
    bg = render.random_background(rng, (W, H))
    skin = _SKIN[rng.integers(len(_SKIN))] * rng.uniform(0.92, 1.05)
    meshes = []
    for h in hands:
        meshes.append(render.Mesh(h['verts'], _faces(h['model']), skin, double_sided=True))
    for h in hands:   # a mirrored mesh keeps the vertex ids, so the wrist loop is the same
        meshes += _arm_meshes(rig, h['verts'], h['wrist'], rng, skin)
    light = _unit([rng.normal(0, 0.6), rng.normal(-0.6, 0.4), -1.0])
    img, mask, depth, face_ids = render.render_meshes(bg, meshes, K, light_dir=light,
                                                      supersample=2, return_faces=True)
    face_part, own = _hand_parts(models.mano(True))   # mirroring keeps the vertex / face ids
    results = []
    for k, h in enumerate(hands):
        uv_v = render.project(K, h['verts'])
        uv = render.project(K, h['kp3d'])
        if rng.random() < 0.3:
            lo, hi = uv_v.min(0), uv_v.max(0)
            render.add_occluders(rng, img, mask, depth, (lo[0], lo[1], hi[0], hi[1]), 1)
        h['uv'], h['uv_v'] = uv, uv_v
    for k, h in enumerate(hands):
        occ = _keypoint_occlusion(h['kp3d'], h['uv'], mask, depth, face_ids, k, face_part, own)
        pts = np.concatenate([h['uv_v'], h['uv']])
        lo, hi = pts.min(0), pts.max(0)
        pad = rng.uniform(0.0, 0.06) * (hi - lo) + 1.0
        lo = np.maximum(lo - pad, 0.0)
        hi = np.minimum(hi + pad, [W - 1.0, H - 1.0])
        results.append(dict(side=h['side'], keypoints=h['uv'], kp3d=h['kp3d'], occlusion=occ,
                            bbox=np.concatenate([lo, hi])))
    img = render.random_blur(rng, img, 0.1, 0.08)
    img = render.sensor_noise(rng, img, (0.5, 3.0))
    return img, results, K


def write_hint(root, body_models_dir, seed: int = 0, per_folder: int = 4,
               ego4d_images: bool = True) -> dict:
    """Writes HInt_annotation_partial/{TRAIN,VAL,TEST}_{newdays,epick,ego4d}_img/ (§3).

    per_folder images per folder; an image shows one or two hands (a left and a right one) and a
    hand is one `<stem>.jpg` + `<stem>.json` pair, the stem being the image id in the source's
    naming style + `_l` / `_r` (two hands: two stems, the same jpg twice). The JSON is a list
    holding one dict: bbox [[x1, y1, x2, y2]], keypoints 21 x [u, v] (OpenPose hand order, exact
    projections of the MANO keypoints; smplx tips), occlusion 21 x 0/1 (1 = hidden by another
    mesh, a 2D occluder or the hand itself, from the renderer's depth map). ego4d_images=False
    leaves the ego4d folders with json only (as before the frames are retrieved).

    Returns {'root', 'hands': {stem path (no extension): {'side', 'K', 'kp3d'}}}: the camera
    and 3D keypoints behind every annotation (for tests; not part of the layout).
    """
    root = os.path.join(os.fspath(root), 'HInt_annotation_partial')
    models = _Models(body_models_dir)
    rig = _HandRig(models)
    manifest = {}
    total = len(HINT_SPLITS) * len(HINT_SOURCES) * per_folder
    with _progress(total, 'HInt') as bar:
        for split in HINT_SPLITS:
            for source in HINT_SOURCES:
                folder = _makedirs(os.path.join(root, f'{split}_{source}_img'))
                for n in range(per_folder):
                    img, hands, K = _render_hint_image(seed, models, rig, split, source, n)
                    image_id = _hint_image_id(_rng(seed, 'hint-name', split, source, n), source)
                    jpg = _encode_jpg(img)
                    for h in hands:
                        stem = f"{image_id}_{h['side'][0]}"
                        ann = [{'bbox': [[float(x) for x in h['bbox']]],
                                'keypoints': [[float(u), float(v)] for u, v in h['keypoints']],
                                'occlusion': [int(o) for o in h['occlusion']]}]
                        _write_json(os.path.join(folder, stem + '.json'), ann)
                        if source != 'ego4d' or ego4d_images:
                            _write_bytes(os.path.join(folder, stem + '.jpg'), jpg)
                        manifest[os.path.join(folder, stem)] = dict(side=h['side'], K=K, kp3d=h['kp3d'])
                    bar.update(1)
    return {'root': root, 'hands': manifest}


# ----------------------------------------------------------------------------- everything


def write_all(root, seed: int = 0, small: bool = True) -> dict:
    """Body models + the three raw datasets under root; returns their paths.

    {'body_models': root/body_models, '3dpw': root/3DPW, 'freihand': root/FreiHAND,
     'hint': root/HInt}. small=True is the default size (SMALL), else LARGE.
    """
    root = os.path.abspath(os.fspath(root))
    sizes = SMALL if small else LARGE
    paths = {'body_models': os.path.join(root, 'body_models'), '3dpw': os.path.join(root, '3DPW'),
             'freihand': os.path.join(root, 'FreiHAND'), 'hint': os.path.join(root, 'HInt')}
    bodies.write_body_models(paths['body_models'], seed=seed)
    write_3dpw(paths['3dpw'], paths['body_models'], seed=seed, **sizes['3dpw'])
    write_freihand(paths['freihand'], paths['body_models'], seed=seed, **sizes['freihand'])
    write_hint(paths['hint'], paths['body_models'], seed=seed, **sizes['hint'])
    return paths


def main(argv=None) -> dict:
    ap = errors.ArgumentParser(description='Write synthetic 3DPW / FreiHAND / HInt raw datasets '
                                           '(and the body models they use).')
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--large', action='store_true', help='the LARGE sizes instead of SMALL')
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)  # an unusable --out fails now, not after the models
    t0 = time.time()
    paths = write_all(args.out, seed=args.seed, small=not args.large)
    for k, v in paths.items():
        print(f'{k}: {v}')
    print(f'done in {time.time() - t0:.1f} s')
    return paths


if __name__ == '__main__':
    errors.guard(main)
