"""HMR 2.0 / HaMeR augmentation for one clip: one random draw, one affine, every frame alike.

A clip is T records of one person track (T = 1 for images). Each record holds a crop around the
person (`crop_affine`: full image -> crop pixels). One augmentation draw per clip (our choice:
ExtPose trains on clips) gives ONE 2x3 affine from record-crop pixels to the 256x192 output
window, applied to every frame with one cv2.warpAffine. Because each record crop already follows
the person, the output window tracks the person while scale, rotation, flip and colour stay fixed
over the clip.

Geometry (HMR 2.0's hmr2/datasets/utils.py), with `c` the box centre and `S` HMR's square box side
(the box expanded to 3:4 w:h, then its long side):

    out = sigma * R(-rot) * M * (p - c') + o,   sigma = 256 / (S * scale),  o = (96, 128)

`c'` is `c` shifted by the translation draw, `M` mirrors x (flip, or a left hand), `R(a)`
rotates by a in image coordinates (y down). Upstream warps into a 256x256 crop that maps the
centre to (128, 128) and feeds columns 32:224 to the ViT; the 256x192 window here is exactly
those columns, hence o = (96, 128). Upstream flips the image before the warp (x -> W - 1 - x,
and the centre with it), which is the mirror about the centre that `M` does.

3D targets move with the image: X' = Rz(-rot) D X, with D = diag(-1, 1, 1) when mirrored, and
the same rotation is applied to the global orientation. Rotating about the camera z axis leaves
depth unchanged, so the output intrinsics K' = A K (Rz D)^T (A: full image -> output, 3x3)
project the new 3D joints exactly onto the new 2D joints, for any K.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import cv2
import numpy as np

from data_pipelines import records
from extpose_jax import skeletons

OUT_H, OUT_W = 256, 192  # the ViT input window of HMR 2.0 / HaMeR
UPSTREAM_CROP = 256  # upstream's square crop; the window is its central 192 columns
BOX_ASPECT = OUT_W / OUT_H  # HMR 2.0 / HaMeR expand the box to 3:4 (w:h) before squaring it

MIRROR = np.diag([-1.0, 1.0, 1.0])

# Extreme crops (HMR 2.0, `extreme_cropping_aggressive`): zoom onto one body part. Parts are
# joint-name predicates over HMR44 (BODY_25 + the 19 regressed joints; suffixes dropped).
_HEAD = ('nose', 'left_eye', 'right_eye', 'left_ear', 'right_ear', 'head_top', 'head', 'jaw')
_SHOULDERS = ('neck', 'left_shoulder', 'right_shoulder', 'thorax')
_HIPS = ('mid_hip', 'left_hip', 'right_hip', 'pelvis', 'spine')
_ARM = ('shoulder', 'elbow', 'wrist')
_LEG = ('hip', 'knee', 'ankle', 'big_toe', 'small_toe', 'heel')
EXTREME_PARTS = {
    'upper_body': _HEAD
    + _SHOULDERS
    + _HIPS
    + tuple(f'{s}_{j}' for s in ('left', 'right') for j in ('elbow', 'wrist')),
    'shoulders_up': _HEAD + _SHOULDERS,
    'head': _HEAD,
    'torso': _SHOULDERS + _HIPS,
    'left_arm': tuple(f'left_{j}' for j in _ARM),
    'right_arm': tuple(f'right_{j}' for j in _ARM),
    'left_leg': tuple(f'left_{j}' for j in _LEG),
    'right_leg': tuple(f'right_{j}' for j in _LEG),
}
PART_NAMES = tuple(EXTREME_PARTS)
_PART_MARGIN = 1.2  # part box = keypoint bounds x 1.2
_PART_MIN_SIDE = 0.2  # ... but at least this fraction of the person's box side


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Strengths; defaults are HMR 2.0's training augmentation.

    flip_prob / extreme_crop_prob = None pick the upstream value for the body model:
    SMPL 0.5 / 0.1 (HMR 2.0), MANO 0 / 0 (HaMeR). Left hands are always mirrored
    (mirror_left_hands) so the model sees right hands only, as HaMeR does.
    """

    enabled: bool = True
    scale: float = 0.3  # scale = 1 + scale * clip(N, -1, 1)
    rot_prob: float = 0.6
    rot_deg: float = 30.0  # rot = rot_deg * clip(N, -2, 2) with probability rot_prob
    trans: float = 0.02  # shift = trans * clip(N, -1, 1) * box width / height
    color_gain: float = 0.2  # per-channel gain U(1 - g, 1 + g)
    flip_prob: Optional[float] = None
    extreme_crop_prob: Optional[float] = None
    mirror_left_hands: bool = True

    def resolved(self, body_model: str) -> 'AugmentConfig':
        """Fills the body-model-dependent defaults; checks the combination."""
        smpl = body_model == 'smpl'
        flip = (0.5 if smpl else 0.0) if self.flip_prob is None else float(self.flip_prob)
        extreme = (
            (0.1 if smpl else 0.0)
            if self.extreme_crop_prob is None
            else float(self.extreme_crop_prob)
        )
        if not smpl and flip > 0:
            # A flipped right hand is a left hand: HaMeR trains on right hands only.
            raise ValueError(
                f'augment.flip_prob={flip} for {body_model!r} records: hands are not '
                'flipped at random (HaMeR); left hands are mirrored instead'
            )
        if not smpl and extreme > 0:
            raise ValueError(
                f'augment.extreme_crop_prob={extreme}: extreme crops need the HMR44 '
                f'body joints, not {body_model!r} records'
            )
        for name, p in (
            ('flip_prob', flip),
            ('extreme_crop_prob', extreme),
            ('rot_prob', self.rot_prob),
        ):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f'augment.{name} must be in [0, 1], got {p}')
        if not 0.0 <= self.color_gain < 1.0 or self.scale < 0 or self.trans < 0:
            raise ValueError(f'bad augmentation strengths {self}')
        return dataclasses.replace(self, flip_prob=flip, extreme_crop_prob=extreme)


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """Detector-like corruption of ground-truth 2D (pose_source='noisy_gt'). Our choice of model
    (the ExtPose paper leaves it open): per frame and joint, independently."""

    jitter: float = 0.02  # Gaussian std of x, y as a fraction of the person's box side
    drop_prob: float = 0.05  # joint missing (conf 0, x = y = 0)
    swap_prob: float = 0.02  # per frame: one left/right joint pair exchanged
    outlier_prob: float = 0.01  # joint placed uniformly at random inside the output window

    def __post_init__(self):
        for name in ('drop_prob', 'swap_prob', 'outlier_prob'):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f'noise.{name} must be in [0, 1], got {getattr(self, name)}')
        if self.jitter < 0:
            raise ValueError(f'noise.jitter must be >= 0, got {self.jitter}')


@dataclasses.dataclass(frozen=True)
class ClipParams:
    """One clip's augmentation draw (upstream's rot sign: the 3D rotation is Rz(-rot))."""

    scale: float = 1.0
    rot_deg: float = 0.0
    trans: tuple = (0.0, 0.0)  # fractions of the box width, height
    gain: tuple = (1.0, 1.0, 1.0)  # R, G, B
    flip: bool = False
    extreme_part: Optional[str] = None


IDENTITY = ClipParams()


def draw_params(rng: np.random.Generator, cfg: AugmentConfig) -> ClipParams:
    """One draw per clip. cfg must be resolved. Every number is always drawn, in a fixed order,
    so switching one op off does not change what the others get."""
    n = rng.standard_normal(4)
    u = rng.random(4)
    gain = rng.uniform(1 - cfg.color_gain, 1 + cfg.color_gain, 3)
    part = PART_NAMES[int(rng.integers(len(PART_NAMES)))]
    if not cfg.enabled:
        return IDENTITY
    return ClipParams(
        scale=float(1 + cfg.scale * np.clip(n[0], -1, 1)),
        rot_deg=float(cfg.rot_deg * np.clip(n[1], -2, 2)) if u[0] < cfg.rot_prob else 0.0,
        trans=(float(cfg.trans * np.clip(n[2], -1, 1)), float(cfg.trans * np.clip(n[3], -1, 1))),
        gain=tuple(float(g) for g in gain),
        flip=bool(u[1] < cfg.flip_prob),
        extreme_part=part if u[2] < cfg.extreme_crop_prob else None,
    )


# ---------------------------------------------------------------- geometry


def as3x3(affine: np.ndarray) -> np.ndarray:
    return np.vstack([np.asarray(affine, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])


def apply(m: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """[..., 2] points through a 2x3 or 3x3 affine."""
    m = np.asarray(m, np.float64)
    return xy @ m[:2, :2].T + m[:2, 2]


def rot_z(rad: float) -> np.ndarray:
    c, s = np.cos(rad), np.sin(rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def box_in_crop(box: np.ndarray, crop_affine: np.ndarray) -> np.ndarray:
    """Full-image box x0,y0,x1,y1 -> its bounds in crop pixels (corners mapped, then bounded)."""
    x0, y0, x1, y1 = np.asarray(box, np.float64)
    corners = apply(crop_affine, np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]))
    return np.concatenate([corners.min(0), corners.max(0)])


def hmr_box(bounds: np.ndarray) -> tuple:
    """x0,y0,x1,y1 -> (centre, expanded w, h, square side) as upstream: expand to 3:4, square."""
    bounds = np.asarray(bounds, np.float64)
    center = (bounds[:2] + bounds[2:]) / 2
    w, h = bounds[2] - bounds[0], bounds[3] - bounds[1]
    w, h = max(w, h * BOX_ASPECT), max(h, w / BOX_ASPECT)
    return center, w, h, max(w, h)


def part_joints(part: str, layout: skeletons.Layout) -> list:
    """Indices of the layout's joints in an extreme-crop part (dataset suffixes ignored)."""
    names = EXTREME_PARTS[part]
    base = [
        j.rsplit('_', 1)[0] if j.endswith(('_lsp', '_mpii', '_h36m')) else j for j in layout.joints
    ]
    return [i for i, j in enumerate(base) if j in names]


def part_bounds(kp2d: np.ndarray, part: str, layout: skeletons.Layout) -> Optional[np.ndarray]:
    """Bounds of the part's visible keypoints over all frames ([T, J, 3] crop px); None if fewer
    than two are visible (then the extreme crop is skipped, as upstream does)."""
    pts = kp2d[:, part_joints(part, layout)].reshape(-1, 3)
    pts = pts[pts[:, 2] > 0, :2]
    if len(pts) < 2:
        return None
    lo, hi = pts.min(0), pts.max(0)
    mid, half = (lo + hi) / 2, (hi - lo) / 2 * _PART_MARGIN
    return np.concatenate([mid - half, mid + half])


def crop_to_output(
    center, box_w, box_h, side, params: ClipParams, mirror: bool, out_hw=(OUT_H, OUT_W)
) -> np.ndarray:
    """3x3 affine: record-crop pixels -> output-window pixels (see the module docstring)."""
    out_h, out_w = out_hw
    c = np.asarray(center, np.float64) + np.array(params.trans) * (box_w, box_h)
    sigma = out_h / (side * params.scale)
    lin = sigma * rot_z(np.deg2rad(-params.rot_deg))[:2, :2]
    if mirror:
        lin = lin @ MIRROR[:2, :2]
    o = np.array([out_w / 2, out_h / 2])
    return np.vstack([np.hstack([lin, (o - lin @ c)[:, None]]), [0.0, 0.0, 1.0]])


def rotation_3d(params: ClipParams, mirror: bool) -> np.ndarray:
    """The camera-frame map of 3D targets that matches the image transform: Rz(-rot) [D]."""
    r = rot_z(np.deg2rad(-params.rot_deg))
    return r @ MIRROR if mirror else r


def output_intrinsics(full_to_out: np.ndarray, K: np.ndarray, r3: np.ndarray) -> np.ndarray:
    """K' with K' (r3 X) = A K X: projects the transformed 3D joints onto the output pixels."""
    return full_to_out @ np.asarray(K, np.float64) @ r3.T


def mirror_pose(pose: np.ndarray, body_model: str) -> np.ndarray:
    """Axis-angle pose of the mirrored subject. SMPL: left/right joints swapped and y, z negated
    (SPIN, skeletons.flip_smpl_pose). MANO: y, z negated only (a left hand seen in a mirror is a
    right hand with the conjugated rotations; data_pipelines/synthetic/hands.py uses the same
    rule)."""
    if body_model == 'smpl':
        return skeletons.flip_smpl_pose(np.asarray(pose))
    p = np.asarray(pose).reshape(-1, 3) * np.array([1.0, -1.0, -1.0], np.float32)
    return p.reshape(np.shape(pose)).astype(np.asarray(pose).dtype)


def rotate_global_orient(pose: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Left-multiplies the global orientation (first axis-angle) by rotation r."""
    out = np.array(pose, np.float32, copy=True)
    g, _ = cv2.Rodrigues(np.asarray(pose[:3], np.float64))
    out[:3] = cv2.Rodrigues(r @ g)[0].ravel()
    return out


def transform_keypoints_2d(kp: np.ndarray, m: np.ndarray, perm: Optional[np.ndarray]) -> np.ndarray:
    """[..., J, 3] (x, y, conf) through affine m, joints reordered by perm (flip). All-zero rows
    (absent joints) stay zero; conf-0 rows with a position (HInt's occluded) keep it, moved."""
    out = kp.astype(np.float32, copy=True)
    out[..., :2] = apply(m, kp[..., :2])
    out[~np.any(kp != 0, axis=-1)] = 0.0
    return out[..., perm, :] if perm is not None else out


def color_lut(gain_rgb: Sequence[float]) -> np.ndarray:
    """A 256x1x3 BGR lookup table for cv2.LUT: v -> clip(round(v * gain), 0, 255) per channel."""
    v = np.arange(256, dtype=np.float64)[:, None]
    lut = np.clip(np.rint(v * np.asarray(gain_rgb)[::-1]), 0, 255).astype(np.uint8)
    return lut.reshape(256, 1, 3)


def warp_image(
    bgr: np.ndarray, m: np.ndarray, lut: Optional[np.ndarray], out_hw=(OUT_H, OUT_W)
) -> np.ndarray:
    """Decoded BGR crop -> the RGB output window: warp (bilinear, black border), gain, to RGB.
    Gain and colour conversion run on the small output, not on the 384-px crop."""
    out = cv2.warpAffine(
        bgr,
        m[:2],
        (out_hw[1], out_hw[0]),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(0, 0, 0),
    )
    if lut is not None:
        out = cv2.LUT(out, lut)
    return cv2.cvtColor(out, cv2.COLOR_BGR2RGB)


def detector_noise(
    kp: np.ndarray,
    rng: np.random.Generator,
    cfg: NoiseConfig,
    flip: np.ndarray,
    person_side: float,
    out_hw=(OUT_H, OUT_W),
) -> np.ndarray:
    """Corrupts [T, J, 3] output-pixel keypoints like a 2D detector would: Gaussian jitter
    (std jitter * person_side), left/right swaps, gross outliers, dropped joints. Absent joints
    stay absent. All random numbers are drawn whatever the probabilities (fixed stream)."""
    t, j = kp.shape[:2]
    out = kp.astype(np.float32, copy=True)
    present = kp[..., 2] > 0
    jit = rng.standard_normal((t, j, 2)) * (cfg.jitter * person_side)
    swap_u, swap_pick = rng.random(t), rng.random(t)
    out_u = rng.random((t, j))
    out_xy = rng.random((t, j, 2)) * (out_hw[1], out_hw[0])
    drop_u = rng.random((t, j))
    out[..., :2] += jit
    pairs = np.flatnonzero(np.asarray(flip) > np.arange(j))  # one index per left/right pair
    if len(pairs):
        for f in np.flatnonzero(swap_u < cfg.swap_prob):
            a = pairs[min(int(swap_pick[f] * len(pairs)), len(pairs) - 1)]
            b = flip[a]
            out[f, [a, b]] = out[f, [b, a]]
            present[f, [a, b]] = present[f, [b, a]]
    gross = out_u < cfg.outlier_prob
    out[..., :2] = np.where(gross[..., None], out_xy, out[..., :2])
    out[(drop_u < cfg.drop_prob) | ~present] = 0.0
    return out


# ---------------------------------------------------------------- one clip


def layout_for(body_model: str, num_joints: int) -> skeletons.Layout:
    want = {'smpl': skeletons.HMR44, 'mano': skeletons.HAND21}.get(body_model)
    if want is None or want.num_joints != num_joints:
        raise ValueError(
            f'no keypoint layout for {body_model!r} records with {num_joints} joints '
            '(expected smpl/44 = hmr44 or mano/21 = hand21)'
        )
    return want


def augment_clip(
    frames: Sequence[Optional[dict]],
    images: Sequence[Optional[np.ndarray]],
    params: ClipParams,
    *,
    body_model: str,
    layout: skeletons.Layout,
    mirror_left_hands: bool = True,
    pose_source: str = 'gt',
    noise: Optional[NoiseConfig] = None,
    noise_rng: Optional[np.random.Generator] = None,
    out_hw=(OUT_H, OUT_W),
) -> dict:
    """Augments one clip; returns per-frame arrays with a leading T axis (see docs/data.md).

    frames: T decoded records (records.decode_record fields) or None for padding; images: their
    decoded BGR crops (None for padding; the same array may repeat). The caller draws `params`
    once per clip. Padding frames come out all zero with frame_valid False.
    """
    t_len, j, p_len = len(frames), layout.num_joints, (72 if body_model == 'smpl' else 48)
    out_h, out_w = out_hw
    out = {
        'image': np.zeros((t_len, out_h, out_w, 3), np.uint8),
        'kp2d': np.zeros((t_len, j, 3), np.float32),
        'kp2d_input': np.zeros((t_len, j, 3), np.float32),
        'kp3d': np.zeros((t_len, j, 4), np.float32),  # x, y, z, confidence
        'pose': np.zeros((t_len, p_len), np.float32),
        'betas': np.zeros((t_len, 10), np.float32),
        'K': np.zeros((t_len, 3, 3), np.float32),
        'affine': np.zeros((t_len, 2, 3), np.float32),
        'box_center': np.zeros((t_len, 2), np.float32),
        'box_size': np.zeros((t_len,), np.float32),
        'image_size': np.zeros((t_len, 2), np.int32),
        **{
            k: np.zeros((t_len,), np.bool_)
            for k in (
                'has_kp2d',
                'has_kp2d_input',
                'has_kp3d',
                'has_pose',
                'has_betas',
                'frame_valid',
                'is_right',
                'flipped',
            )
        },
    }
    valid = [i for i, f in enumerate(frames) if f is not None]
    if not valid:
        return out
    first = frames[valid[0]]
    is_right = body_model != 'mano' or first['hand_side'] == 'right'
    mirror = params.flip or (body_model == 'mano' and not is_right and mirror_left_hands)
    perm = layout.flip_array if mirror else None

    # The clip's box: per-frame boxes in crop pixels, averaged (each crop follows the person).
    bounds = np.mean([box_in_crop(frames[i]['box'], frames[i]['crop_affine']) for i in valid], 0)
    center, box_w, box_h, side = hmr_box(bounds)
    person_center, person_side = center, side  # reported as box_center / box_size
    if params.extreme_part is not None:
        part = part_bounds(
            np.stack(
                [frames[i]['kp2d'] for i in valid if frames[i]['has_kp2d']]
                or [np.zeros((j, 3), np.float32)]
            ),
            params.extreme_part,
            layout,
        )
        if part is not None:
            center, box_w, box_h, side = hmr_box(part)
            side = max(side, _PART_MIN_SIDE * person_side)
    m = crop_to_output(center, box_w, box_h, side, params, mirror, out_hw)
    r3 = rotation_3d(params, mirror)
    sigma = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
    lut = None if params.gain == (1.0, 1.0, 1.0) else color_lut(params.gain)
    warped = {}  # id(image) -> output: a repeated image ('repeat' fill) is warped once

    for i in valid:
        rec = frames[i]
        key = id(images[i])
        if key not in warped:
            warped[key] = warp_image(images[i], m, lut, out_hw)
        out['image'][i] = warped[key]
        full_to_out = m @ as3x3(rec['crop_affine'])
        out['affine'][i] = full_to_out[:2]
        out['K'][i] = output_intrinsics(full_to_out, rec['K'], r3)
        out['kp2d'][i] = transform_keypoints_2d(rec['kp2d'], m, perm)
        kp3d = records.kp3d_with_confidence(rec['kp3d'])
        kp3d = np.concatenate([kp3d[:, :3] @ r3.T, kp3d[:, 3:]], 1)  # a joint keeps its confidence
        out['kp3d'][i] = kp3d[perm] if perm is not None else kp3d
        pose = mirror_pose(rec['pose'], body_model) if mirror else rec['pose']
        out['pose'][i] = rotate_global_orient(pose, rotation_3d(params, False))
        out['betas'][i] = rec['betas']
        if pose_source == 'detections':
            out['kp2d_input'][i] = transform_keypoints_2d(rec['kp2d_det'], m, perm)
            out['has_kp2d_input'][i] = rec['has_kp2d_det']
        else:
            out['kp2d_input'][i] = out['kp2d'][i]
            out['has_kp2d_input'][i] = rec['has_kp2d']
        for k in ('has_kp2d', 'has_kp3d', 'has_pose', 'has_betas'):
            out[k][i] = rec[k]
        out['image_size'][i] = rec['image_size']
        out['frame_valid'][i] = True
        out['is_right'][i] = is_right
        out['flipped'][i] = mirror
        out['box_center'][i] = apply(m, person_center)
        out['box_size'][i] = sigma * person_side
    # Labels a record lacks are zeros, whatever the transform made of them.
    for k, flag in (
        ('kp2d', 'has_kp2d'),
        ('kp3d', 'has_kp3d'),
        ('pose', 'has_pose'),
        ('betas', 'has_betas'),
        ('kp2d_input', 'has_kp2d_input'),
    ):
        out[k][~out[flag]] = 0.0
    if pose_source == 'noisy_gt':
        if noise_rng is None:
            raise ValueError("pose_source='noisy_gt' needs noise_rng (seeded per clip)")
        noisy = detector_noise(
            out['kp2d_input'],
            noise_rng,
            noise or NoiseConfig(),
            layout.flip_array,
            float(out['box_size'][valid[0]]),
            out_hw,
        )
        out['kp2d_input'] = np.where(out['has_kp2d_input'][:, None, None], noisy, 0.0).astype(
            np.float32
        )
    return out
