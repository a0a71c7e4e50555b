"""Clip augmentation (data_pipelines/augment.py): geometry through keypoints, pixels and 3D.

Records are made in memory: 3D joints in front of a camera, their exact projections cropped with
cropping.crop_person's affine, and crops with bright dots at the 2D joints, so every check can go
through the keypoints, the 3D projection and the pixels alike.
"""

import dataclasses

import cv2
import numpy as np
import pytest

from data_pipelines import augment as aug
from data_pipelines import cropping, records
from extpose_jax import skeletons

K_FULL = np.array([[1100.0, 0, 960], [0, 1120.0, 540], [0, 0, 1]], np.float32)  # fx != fy
CROP = 384


def synthetic_track(
    rng,
    num_frames,
    *,
    body_model='smpl',
    hand_side='right',
    sequence='seq',
    track=0,
    first_frame=0,
    dots=True,
):
    """num_frames consecutive records of one moving person; returns (record dicts, RGB crops).

    Record dicts carry exactly the fields RecordWriter.write takes. kp2d are exact projections
    of kp3d (through K and crop_affine); the crop shows a white dot on every visible joint.
    """
    j = 44 if body_model == 'smpl' else 21
    p = 72 if body_model == 'smpl' else 48
    root = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.2, 0.2), rng.uniform(3.5, 5.0)])
    extent = np.array([0.4, 0.8, 0.2]) if body_model == 'smpl' else np.array([0.08, 0.08, 0.03])
    offsets = rng.uniform(-1, 1, (j, 3)) * extent
    velocity = rng.normal(0, 0.01, 3)
    pose, betas = rng.normal(0, 0.3, p).astype(np.float32), rng.normal(0, 1, 10).astype(np.float32)
    recs, crops = [], []
    for t in range(num_frames):
        kp3d = (root + t * velocity + offsets).astype(np.float32)
        uvw = kp3d.astype(np.float64) @ K_FULL.T.astype(np.float64)
        full = uvw[:, :2] / uvw[:, 2:]
        lo, hi = full.min(0), full.max(0)
        pad = 0.1 * (hi - lo)
        box = np.concatenate([lo - pad, hi + pad]).astype(np.float32)
        _, affine = cropping.crop_person(np.zeros((1, 1, 3), np.uint8), box, CROP)
        kp2d = np.ones((j, 3), np.float32)
        kp2d[:, :2] = cropping.apply_affine(affine, full)
        kp2d[1, :] = 0.0  # one absent joint
        crop = np.full((CROP, CROP, 3), 40, np.uint8)
        if dots:
            for x, y, c in kp2d:
                if c > 0:
                    cv2.circle(
                        crop,
                        (int(round(x)), int(round(y))),
                        3,
                        (255, 255, 255),
                        -1,
                        lineType=cv2.LINE_AA,
                    )
        recs.append(
            dict(
                image=crop,
                crop_affine=affine,
                image_size=np.array([1080, 1920]),
                K=K_FULL,
                box=box,
                kp2d=kp2d,
                kp2d_det=kp2d + np.float32(0.5) * (kp2d[:, 2:] > 0),
                kp3d=kp3d,
                pose=pose,
                betas=betas,
                sequence=sequence,
                track=track,
                frame=first_frame + t,
                **({'gender': 'neutral'} if body_model == 'smpl' else {'hand_side': hand_side}),
            )
        )
        crops.append(crop)
    return recs, crops


def _decoded(recs, crops):
    """What the pipeline hands to augment_clip: record fields + has_* flags, BGR crops."""
    out = []
    for r in recs:
        d = {k: (np.asarray(v) if isinstance(v, np.ndarray) else v) for k, v in r.items()}
        d.setdefault('gender', '')
        d.setdefault('hand_side', '')
        for flag in records.HAS_FLAGS:
            d[flag] = np.bool_(flag != 'has_kp2d_occluded')
        d['kp3d'] = records.kp3d_with_confidence(d['kp3d'])  # decode_record gives (J, 4)
        out.append(d)
    return out, [cv2.cvtColor(c, cv2.COLOR_RGB2BGR) for c in crops]


def _run(recs, crops, params, body_model='smpl', **kw):
    frames, images = _decoded(recs, crops)
    layout = skeletons.HMR44 if body_model == 'smpl' else skeletons.HAND21
    return aug.augment_clip(frames, images, params, body_model=body_model, layout=layout, **kw)


STRONG = aug.ClipParams(scale=1.2, rot_deg=35.0, trans=(0.02, -0.015), gain=(1.1, 0.9, 1.0))


@pytest.mark.parametrize('flip', [False, True])
def test_same_affine_on_every_frame(flip):
    rng = np.random.default_rng(0)
    recs, crops = synthetic_track(rng, 4)
    out = _run(recs, crops, dataclasses.replace(STRONG, flip=flip))
    perm = skeletons.HMR44.flip_array if flip else np.arange(44)
    fits = []
    for t, r in enumerate(recs):
        src = r['kp2d'][perm]  # the output's joint k is the record's joint perm[k]
        ok = src[:, 2] > 0
        assert np.array_equal(out['kp2d'][t][:, 2] > 0, ok)
        design = np.hstack([src[ok, :2], np.ones((ok.sum(), 1))])
        m, *_ = np.linalg.lstsq(design, out['kp2d'][t][ok, :2], rcond=None)
        fits.append(m.T)
    for m in fits[1:]:
        np.testing.assert_allclose(m, fits[0], atol=1e-3)
    # ... and it is the affine the batch reports (full -> output, composed with crop_affine).
    for t, r in enumerate(recs):
        crop_to_out = aug.as3x3(out['affine'][t]) @ np.linalg.inv(aug.as3x3(r['crop_affine']))
        np.testing.assert_allclose(crop_to_out[:2], fits[0], atol=2e-3)
    det = np.linalg.det(fits[0][:, :2])
    assert (det < 0) == flip  # a mirror reverses orientation
    assert out['flipped'].all() == flip and out['frame_valid'].all()


@pytest.mark.parametrize(
    'body_model,side,flip',
    [('smpl', '', False), ('smpl', '', True), ('mano', 'right', False), ('mano', 'left', False)],
)
def test_rotated_3d_projects_onto_rotated_2d(body_model, side, flip):
    """The sign convention: K_out projects the augmented kp3d onto the augmented kp2d."""
    rng = np.random.default_rng(1)
    recs, crops = synthetic_track(rng, 3, body_model=body_model, hand_side=side or 'right')
    out = _run(recs, crops, dataclasses.replace(STRONG, flip=flip), body_model=body_model)
    for t in range(3):
        uvw = out['kp3d'][t, :, :3].astype(np.float64) @ out['K'][t].astype(np.float64).T
        proj = uvw[:, :2] / uvw[:, 2:]
        ok = out['kp2d'][t][:, 2] > 0
        np.testing.assert_allclose(proj[ok], out['kp2d'][t][ok, :2], atol=0.02)
        # Rotation about the optical axis keeps depth; the window centre stays the box centre.
        np.testing.assert_allclose(
            np.sort(out['kp3d'][t][:, 2]), np.sort(recs[t]['kp3d'][:, 2]), atol=1e-5
        )
    assert out['flipped'].all() == (flip or side == 'left')
    assert out['is_right'].all() == (side != 'left')


def test_pixels_follow_keypoints():
    """A dot drawn at a joint in the record crop lands where the augmented kp2d says."""
    rng = np.random.default_rng(2)
    recs, crops = synthetic_track(rng, 2, dots=False)
    j = 7
    for r, c in zip(recs, crops):
        c[:] = 40
        x, y = r['kp2d'][j, :2]
        cv2.circle(c, (int(round(x)), int(round(y))), 4, (255, 255, 255), -1)
        r['kp2d'][j, :2] = np.round([x, y])  # the dot's centre
    for flip in (False, True):
        out = _run(recs, crops, dataclasses.replace(STRONG, flip=flip, gain=(1.0, 1.0, 1.0)))
        k = int(np.flatnonzero(skeletons.HMR44.flip_array == j)[0]) if flip else j
        for t in range(2):
            mask = out['image'][t, ..., 0] > 150
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose([xs.mean(), ys.mean()], out['kp2d'][t][k, :2], atol=0.5)


def test_window_geometry_matches_upstream():
    """No augmentation: the box centre lands on (96, 128), and the 256x256 upstream crop of side
    S = max(h, 4w/3) maps to 256 px, i.e. sigma = 256 / S."""
    rng = np.random.default_rng(3)
    recs, crops = synthetic_track(rng, 1)
    out = _run(recs, crops, aug.IDENTITY)
    bounds = aug.box_in_crop(recs[0]['box'], recs[0]['crop_affine'])
    center, _, _, side = aug.hmr_box(bounds)
    m = aug.as3x3(out['affine'][0]) @ np.linalg.inv(aug.as3x3(recs[0]['crop_affine']))
    np.testing.assert_allclose(aug.apply(m, center), [96.0, 128.0], atol=1e-3)
    np.testing.assert_allclose(m[:2, :2], np.eye(2) * 256 / side, atol=1e-5)
    np.testing.assert_allclose(out['box_center'][0], [96, 128], atol=1e-3)
    np.testing.assert_allclose(out['box_size'][0], 256.0, atol=1e-3)
    np.testing.assert_allclose(out['pose'][0], recs[0]['pose'], atol=1e-6)
    np.testing.assert_allclose(out['kp3d'][0, :, :3], recs[0]['kp3d'], atol=1e-6)
    np.testing.assert_array_equal(out['kp3d'][0, :, 3], 1.0)


@pytest.mark.parametrize('flip', [False, True])
def test_kp3d_confidence_moves_with_its_joint(flip):
    rng = np.random.default_rng(5)
    recs, crops = synthetic_track(rng, 2)
    conf = np.zeros(44, np.float32)
    conf[25:] = 1.0  # H36M-style: 3D on the 19 extra joints only
    conf[[2, 5, 30]] = [0.25, 0.5, 0.75]  # and a few distinct values to follow
    for r in recs:
        r['kp3d'] = np.concatenate([r['kp3d'], conf[:, None]], 1)
    params = dataclasses.replace(STRONG, flip=flip)
    out = _run(recs, crops, params)
    perm = skeletons.HMR44.flip_array if flip else np.arange(44)
    r3 = aug.rotation_3d(params, flip)
    for t, r in enumerate(recs):
        # output joint k is the record's joint perm[k]: its confidence and rotated position
        np.testing.assert_array_equal(out['kp3d'][t, :, 3], conf[perm])
        np.testing.assert_allclose(out['kp3d'][t, :, :3], r['kp3d'][perm, :3] @ r3.T, atol=1e-5)
    assert out['has_kp3d'].all()


def test_flip_twice_is_identity():
    rng = np.random.default_rng(4)
    pose = rng.normal(0, 0.5, 72).astype(np.float32)
    np.testing.assert_array_equal(aug.mirror_pose(aug.mirror_pose(pose, 'smpl'), 'smpl'), pose)
    hand = rng.normal(0, 0.5, 48).astype(np.float32)
    np.testing.assert_array_equal(aug.mirror_pose(aug.mirror_pose(hand, 'mano'), 'mano'), hand)
    # Flipping the augmented output again (same window) returns the unflipped output.
    recs, crops = synthetic_track(rng, 2)
    plain = _run(recs, crops, aug.IDENTITY)
    flipped = _run(recs, crops, dataclasses.replace(aug.IDENTITY, flip=True))
    mirror = aug.crop_to_output(
        (96, 128), 0, 0, 256, dataclasses.replace(aug.IDENTITY, flip=True), True
    )  # the output-window mirror about the centre column
    again = aug.transform_keypoints_2d(flipped['kp2d'], mirror, skeletons.HMR44.flip_array)
    np.testing.assert_allclose(again, plain['kp2d'], atol=1e-4)
    np.testing.assert_allclose(
        flipped['kp3d'][..., skeletons.HMR44.flip_array, :] * [-1, 1, 1, 1],
        plain['kp3d'],
        atol=1e-6,
    )
    np.testing.assert_allclose(
        aug.mirror_pose(flipped['pose'][0], 'smpl'), plain['pose'][0], atol=1e-6
    )


def _rodrigues(aa):
    return cv2.Rodrigues(np.asarray(aa, np.float64))[0]


def _smpl_fk(pose, rest):
    """Forward kinematics of SMPL's 24-joint tree: world joint positions."""
    rot = [None] * 24
    pos = np.zeros((24, 3))
    for k, parent in enumerate(skeletons.SMPL24_PARENTS):
        local = _rodrigues(pose[3 * k : 3 * k + 3])
        if parent < 0:
            rot[k], pos[k] = local, rest[k]
        else:
            rot[k] = rot[parent] @ local
            pos[k] = pos[parent] + rot[parent] @ (rest[k] - rest[parent])
    return pos


def test_flipped_smpl_pose_gives_mirrored_joints():
    """With a left/right-symmetric rest skeleton, FK(flip(pose)) = mirror(FK(pose)) joint by
    joint (left <-> right swapped): the SPIN flip convention is a true mirror."""
    rng = np.random.default_rng(5)
    perm = skeletons.SMPL_FLIP_PERMUTATION
    rest = rng.normal(0, 0.3, (24, 3))
    rest = (rest + rest[perm] * [-1, 1, 1]) / 2  # symmetric: rest[perm] = mirror(rest)
    rest[0] = 0.0
    np.testing.assert_allclose(rest[perm] * [-1, 1, 1], rest, atol=1e-12)
    pose = rng.normal(0, 0.6, 72)
    a = _smpl_fk(pose, rest)
    b = _smpl_fk(aug.mirror_pose(pose.astype(np.float32), 'smpl').astype(np.float64), rest)
    np.testing.assert_allclose(b, (a * [-1, 1, 1])[perm], atol=1e-5)


def test_rotation_applies_to_global_orient_only():
    rng = np.random.default_rng(6)
    recs, crops = synthetic_track(rng, 1)
    out = _run(recs, crops, dataclasses.replace(aug.IDENTITY, rot_deg=40.0))
    np.testing.assert_allclose(out['pose'][0, 3:], recs[0]['pose'][3:], atol=1e-6)
    want = aug.rot_z(np.deg2rad(-40.0)) @ _rodrigues(recs[0]['pose'][:3])
    np.testing.assert_allclose(_rodrigues(out['pose'][0, :3]), want, atol=1e-5)


def test_colour_gain_per_channel():
    rng = np.random.default_rng(7)
    recs, crops = synthetic_track(rng, 2, dots=False)
    for c in crops:
        c[:] = (100, 150, 200)
    out = _run(recs, crops, dataclasses.replace(aug.IDENTITY, gain=(1.2, 0.8, 1.1)))
    centre = out['image'][:, 100:150, 70:120].reshape(-1, 3)
    np.testing.assert_array_equal(np.unique(centre, axis=0), [[120, 120, 220]])


def test_padding_frames_are_zero():
    rng = np.random.default_rng(8)
    recs, crops = synthetic_track(rng, 2)
    frames, images = _decoded(recs, crops)
    out = aug.augment_clip(
        frames + [None], images + [None], STRONG, body_model='smpl', layout=skeletons.HMR44
    )
    assert out['frame_valid'].tolist() == [True, True, False]
    for k, v in out.items():
        assert not np.any(v[2]), k


def test_extreme_crop_zooms_on_the_part():
    rng = np.random.default_rng(9)
    recs, crops = synthetic_track(rng, 2)
    layout = skeletons.HMR44
    idx = aug.part_joints('head', layout)
    assert layout.index('head_top_lsp') in idx and layout.index('nose') in idx
    for r in recs:  # a compact head above the box centre
        r['kp2d'][idx, :2] = [192, 120] + rng.uniform(-15, 15, (len(idx), 2))
    plain = _run(recs, crops, aug.IDENTITY)
    head = _run(recs, crops, dataclasses.replace(aug.IDENTITY, extreme_part='head'))
    spread = lambda o: np.ptp(o['kp2d'][0][idx, :2], axis=0).max()
    assert spread(head) > 1.5 * spread(plain)
    assert np.allclose(
        head['box_size'], plain['box_size'] * (spread(head) / spread(plain)), rtol=1e-3
    )  # box_size stays the person's box, in output pixels


def test_detector_noise():
    t, j = 400, 44
    kp = np.zeros((t, j, 3), np.float32)
    kp[..., :2] = 100.0
    kp[..., 2] = 1.0
    kp[:, 1] = 0.0
    cfg = aug.NoiseConfig(jitter=0.02, drop_prob=0.1, swap_prob=0.0, outlier_prob=0.0)
    out = aug.detector_noise(kp, np.random.default_rng(0), cfg, skeletons.HMR44.flip_array, 250.0)
    kept = out[..., 2] > 0
    assert not kept[:, 1].any()  # absent stays absent
    assert 0.07 < 1 - kept[:, 2:].mean() < 0.13
    np.testing.assert_allclose(np.std(out[kept][:, :2] - 100), 0.02 * 250, rtol=0.05)
    again = aug.detector_noise(kp, np.random.default_rng(0), cfg, skeletons.HMR44.flip_array, 250.0)
    np.testing.assert_array_equal(out, again)
    # swaps exchange a left/right pair; outliers leave the jitter scale
    kp2 = kp.copy()
    kp2[..., 0] = np.arange(j)
    kp2[:, 1] = 0.0
    swapped = aug.detector_noise(
        kp2,
        np.random.default_rng(1),
        aug.NoiseConfig(jitter=0, drop_prob=0, swap_prob=1, outlier_prob=0),
        skeletons.HMR44.flip_array,
        250.0,
    )
    changed = (swapped[..., 0] != kp2[..., 0]).sum(1)
    assert np.all(changed == 2)
    wild = aug.detector_noise(
        kp,
        np.random.default_rng(2),
        aug.NoiseConfig(jitter=0, drop_prob=0, swap_prob=0, outlier_prob=0.5),
        skeletons.HMR44.flip_array,
        250.0,
    )
    moved = np.abs(wild[..., :2] - 100).max(-1) > 1
    assert 0.4 < moved[:, 2:].mean() < 0.6


def test_draw_params_distribution_and_config():
    cfg = aug.AugmentConfig().resolved('smpl')
    assert (cfg.flip_prob, cfg.extreme_crop_prob) == (0.5, 0.1)
    assert aug.AugmentConfig().resolved('mano').flip_prob == 0.0
    rng = np.random.default_rng(11)
    ps = [aug.draw_params(rng, cfg) for _ in range(4000)]
    scale = np.array([p.scale for p in ps])
    rot = np.array([p.rot_deg for p in ps])
    assert scale.min() >= 0.7 - 1e-9 and scale.max() <= 1.3 + 1e-9
    assert np.abs(rot).max() <= 60 + 1e-9 and 0.36 < (rot == 0).mean() < 0.44
    assert 0.47 < np.mean([p.flip for p in ps]) < 0.53
    assert 0.08 < np.mean([p.extreme_part is not None for p in ps]) < 0.12
    gains = np.array([p.gain for p in ps])
    assert gains.min() >= 0.8 and gains.max() <= 1.2
    off = aug.AugmentConfig(enabled=False).resolved('smpl')
    assert aug.draw_params(rng, off) == aug.IDENTITY
    with pytest.raises(ValueError, match='hands are not'):
        aug.AugmentConfig(flip_prob=0.5).resolved('mano')
