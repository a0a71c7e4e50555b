"""Synthetic HMR 2.0 / HaMeR WebDataset tar shards in the real layout (datasets.md §4.1).

    write_tars(out_dir, body_models_dir, kind='hmr2'|'hamer', seed=0, num_tars=2, per_tar=4)

writes `out_dir/000000.tar ...`: per image a `<dir>/<40-hex key>.jpg` (the full image) and a
`<dir>/<key>.data.pyd` (a pickled list of person dicts) as 4D-Humans' and HaMeR's tars hold
them, so convert_webdataset runs on them unchanged. Not part of the default world (world.VERSION
is untouched): the tests and the benchmark call it with their own folder.

Bodies: the synthetic neutral SMPL (1 or 2 people per image, a random gesture), HMR 2.0's 44
keypoints. Hands: the right MANO with a random grasp; every other image a LEFT hand, made as
the mirror image (x -> -x) of a right hand, its stored pose the mirrored design
(hands.mirror_pose) and `right` = 0, as HaMeR's tars store left hands (unmirrored).

The camera is the nominal HMR 2.0 full-image camera (convert_common.nominal_K) and keypoints_3d
are absolute camera coordinates, so a record's K projects its kp3d onto its kp2d: real tars
carry no camera, the synthetic ones pick the one a converter assumes.

The encodings vary on purpose, as real files do: data.pyd pickled with protocols 2, 4 and 5;
`scale` per axis (w, h) / 200 or one value (max side / 200, SPIN's square box); has_* flags as
float32 arrays, Python bools or numpy floats; keypoints as float32 or float64; `extra_info`
with `fitting_loss` as a 0-d object array (as upstream reads it, `.item()`) and a
`detection_npz_idx`. On every second tar the persons' 3D keypoints cover only the 19 extra
joints (OpenPose-25 with confidence 0, as the mocap sets have), and every third body has no
SMPL fit (has_body_pose = has_betas = 0, as COCO).

Returns the ground truth the tests check against: one dict per person with the tar, key,
person index, the true camera, the design pose (for a left hand: the RIGHT-hand pose it
mirrors) and the camera-frame keypoints.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile

import numpy as np
from scipy.spatial.transform import Rotation

from data_pipelines.convert_common import nominal_K
from data_pipelines.synthetic import imaging, render
from data_pipelines.synthetic.hands import HandRig, finger_pose, hand_orientation, mirror_pose
from data_pipelines.synthetic.motion import body_motion
from data_pipelines.synthetic.raw_common import (
    SKIN_TONES,
    Models,
    encode_jpg,
    item_rng,
    mesh_faces,
    unit,
    write_bytes,
)
from extpose_jax import body_models as bm

SIZES_WH = {'hmr2': (192, 160), 'hamer': (160, 160)}
DIRS = {'hmr2': 'synth-body-train', 'hamer': 'synth-hand-train'}
GESTURES = ('none', 'wave', 'phone', 'point')


def _body_design(rng):
    """SMPL pose (72,) upright facing the camera (SMPL y up -> camera y down) and betas."""
    pose = body_motion(rng, np.zeros(1), float(rng.uniform(0, 1)), GESTURES[rng.integers(4)])[0]
    yaw = Rotation.from_rotvec([0, rng.uniform(-0.6, 0.6), 0])
    pose = pose.reshape(24, 3).copy()
    pose[0] = (yaw * Rotation.from_rotvec([np.pi, 0, 0])).as_rotvec()
    return pose.reshape(72), np.clip(rng.normal(0, 0.8, 10), -2, 2)


def _hand_design(rng, rig):
    """MANO pose (48,) relative to the flat hand (HaMeR's hand_pose) and betas."""
    arm = unit([rng.normal(0, 0.5), rng.uniform(0.3, 1.0), rng.normal(0, 0.6)])
    pose = np.concatenate([hand_orientation(rng, rig, arm), finger_pose(rng, rig)])
    return pose, np.clip(rng.normal(0, 0.7, 10), -2, 2)


def _place(points, K, size_wh, fill, rng, anchor_x):
    """Translation putting root-relative points at a depth where they span `fill` of the image
    height, centred near anchor_x (fraction of the width)."""
    w, h = size_wh
    ext = np.ptp(points[:, :2], axis=0).max()
    z = K[0, 0] * ext / (fill * h)
    cx = (anchor_x * w - K[0, 2]) * z / K[0, 0] + rng.normal(0, 0.02) * ext
    cy = (0.5 * h - K[1, 2]) * z / K[1, 1] + rng.normal(0, 0.02) * ext
    centre = (points.max(0) + points.min(0)) / 2
    return np.array([cx - centre[0], cy - centre[1], z - centre[2]])


def _flag(i: int, value: bool):
    """has_* flags in the encodings real files use."""
    return (np.array(float(value), np.float32), bool(value), np.float64(value))[i % 3]


def _person(kind, i, kp_cam, verts_uv, K, size_wh, pose, betas, has_fit, partial_3d, right):
    uv = render.project(K, kp_cam)
    w, h = size_wh
    on = (uv[:, 0] >= 0) & (uv[:, 0] <= w - 1) & (uv[:, 1] >= 0) & (uv[:, 1] <= h - 1)
    kp2d = np.concatenate([uv, on[:, None]], 1)
    conf3 = np.ones(len(kp_cam))
    if partial_3d:
        conf3[:25] = 0.0
    kp3d = np.concatenate([kp_cam, conf3[:, None]], 1)
    lo, hi = verts_uv.min(0), verts_uv.max(0)
    center = (lo + hi) / 2
    wh = (hi - lo) * 1.1
    # SPIN-style square boxes on odd persons: one value, the long side
    scale = wh / 200.0 if i % 2 == 0 else np.float64(wh.max() / 200.0)
    dtype = np.float32 if i % 2 == 0 else np.float64
    d = {
        'keypoints_2d': kp2d.astype(dtype),
        'keypoints_3d': kp3d.astype(dtype),
        'center': center.astype(np.float32),
        'scale': scale,
        'betas': np.asarray(betas, np.float32),
        'has_betas': _flag(i, has_fit),
        'extra_info': {
            'fitting_loss': np.array({'reprojection_loss': float(10 + i)}, dtype=object),
            'detection_npz_idx': np.int64(i),
        },
        'personid': i,
    }
    if kind == 'hmr2':
        d.update(body_pose=np.asarray(pose, np.float32), has_body_pose=_flag(i + 1, has_fit))
    else:
        d.update(
            hand_pose=np.asarray(pose, np.float32),
            has_hand_pose=_flag(i + 1, has_fit),
            right=np.float64(1.0 if right else 0.0),
        )
    return d


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def write_tars(
    out_dir: str,
    body_models_dir: str,
    kind: str = 'hmr2',
    seed: int = 0,
    num_tars: int = 2,
    per_tar: int = 4,
) -> list[dict]:
    """Writes the tars (module docstring) and returns the per-person ground truth."""
    if kind not in SIZES_WH:
        raise ValueError(f'kind must be one of {tuple(SIZES_WH)}, got {kind!r}')
    os.makedirs(out_dir, exist_ok=True)
    models = Models(body_models_dir)
    # HMR 2.0's 44 keypoints need the J19 regressor that load_from_dir adds
    model = bm.load_from_dir(body_models_dir, 'smpl') if kind == 'hmr2' else models.mano(True)
    faces = mesh_faces(model)
    rig = HandRig(models) if kind == 'hamer' else None
    size_wh = SIZES_WH[kind]
    K = nominal_K(size_wh[::-1])
    truth = []
    for t in range(num_tars):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode='w', format=tarfile.USTAR_FORMAT) as tar:
            for s in range(per_tar):
                rng = item_rng(seed, 'tars', kind, t, s)
                n_people = 1 + int(kind == 'hmr2' and s % 2 == 1)
                designs = [
                    _body_design(rng) if kind == 'hmr2' else _hand_design(rng, rig)
                    for _ in range(n_people)
                ]
                out = models.forward(
                    model, np.stack([d[0] for d in designs]), np.stack([d[1] for d in designs])
                )
                image = imaging.random_background(rng, size_wh)
                meshes, persons = [], []
                key = f'{DIRS[kind]}/' + hashlib.sha1(f'{seed}/{kind}/{t}/{s}'.encode()).hexdigest()
                for i, (pose, betas) in enumerate(designs):
                    right = kind == 'hmr2' or s % 2 == 0
                    kp, verts = out['keypoints'][i], out['vertices'][i]
                    root = kp[0] if kind == 'hamer' else kp[39]
                    kp, verts = kp - root, verts - root
                    stored_pose = pose
                    if not right:  # the mirror image of the right hand, its pose mirrored
                        mirror = np.array([-1.0, 1.0, 1.0])
                        kp, verts, stored_pose = kp * mirror, verts * mirror, mirror_pose(pose)
                    anchor = (0.3 + 0.4 * i) if n_people == 2 else 0.5
                    fill = rng.uniform(0.5, 0.7) / (1.3 if n_people == 2 else 1.0)
                    trans = _place(verts, K, size_wh, fill, rng, anchor)
                    kp, verts = kp + trans, verts + trans
                    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))]
                    meshes.append(render.Mesh(verts, faces, skin, double_sided=True))
                    has_fit = kind == 'hamer' or (s + i) % 3 != 2
                    persons.append(
                        _person(
                            kind,
                            i,
                            kp,
                            render.project(K, verts),
                            K,
                            size_wh,
                            stored_pose,
                            betas,
                            has_fit,
                            kind == 'hmr2' and t % 2 == 1,
                            right,
                        )
                    )
                    truth.append(
                        dict(
                            tar=t,
                            key=key,
                            person=i,
                            K=K,
                            right=right,
                            design_pose=np.asarray(pose, np.float64),
                            betas=np.asarray(betas, np.float64),
                            kp3d=kp,
                            data=persons[-1],
                        )
                    )
                image = render.render_meshes(image, meshes, K, supersample=2)[0]
                _add(tar, key + '.jpg', encode_jpg(image))
                _add(tar, key + '.data.pyd', pickle.dumps(persons, protocol=(2, 4, 5)[s % 3]))
        write_bytes(os.path.join(out_dir, f'{t:06d}.tar'), buf.getvalue())
    return truth
