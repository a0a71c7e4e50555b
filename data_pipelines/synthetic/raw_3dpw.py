"""A synthetic raw 3DPW folder in the real layout, rendered from the synthetic body models.

    sequenceFiles/{train,validation,test}/<seq>.pkl + imageFiles/<seq>/image_%05d.jpg

Every key, shape, dtype and encoding is the real dataset's, so convert_3dpw runs on it
unchanged. One or two people walk, stand, wave, phone or point in front of textured ground and
walls seen by a moving camera, now and then behind a pillar or a box or filmed so close that
their legs leave the image, with motion / defocus blur and sensor noise.

World frame: SMPL's own frame, metres, y UP, the ground is the plane y = 0. Bodies are
placed by SMPL's global orientation (a yaw about +y plus a small lean) and `trans`; the world
vertices are `forward(poses, betas)['vertices'] + trans` (the rotation is about the rest root
joint J0), with trans_y chosen per frame so that the lowest vertex touches the ground.
Camera frame: OpenCV (x right, y DOWN, z forward). `cam_poses[i]` = [[R, t], [0, 0, 0, 1]] maps
world to camera (X_cam = R X_world + t); R is a look-at rotation built from the world up
vector, so the y-up -> y-down flip lives in R, never in the renderer.

Sequence pickles: written like Python 2's cPickle, protocol 2 with Python-2 `str` opcodes
(BINSTRING / SHORT_BINSTRING) for strings and ndarray payloads, arrays through
`numpy.core.multiarray._reconstruct` (`legacy_pickle`, as the body-model files). Python 3
therefore needs `pickle.load(f, encoding='latin1')`; the default ASCII decoding raises
UnicodeDecodeError.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.spatial.transform import Rotation

from data_pipelines.synthetic import detector, imaging, legacy_pickle, render
from data_pipelines.synthetic.motion import HEAD, L_KNEE, SPINE2, actor_track, body_motion
from data_pipelines.synthetic.raw_common import (
    SKIN_TONES,
    Models,
    encode_jpg,
    item_rng,
    makedirs,
    map_items,
    mesh_faces,
    progress_bar,
    unit,
    wobble,
    write_bytes,
)
from extpose_jax import skeletons

THREEDPW_SPLITS = ('train', 'validation', 'test')
_PLACES = ('courtyard', 'downtown', 'outdoors', 'flat', 'office')
_HAIR = np.array(
    [(30, 24, 20), (60, 40, 25), (110, 75, 40), (170, 140, 90), (90, 90, 90)], np.float64
)


# A joint seen through its own body's surface more than this far in front of it is hidden (a
# limb or the torso between it and the camera); nearer, that surface is its own limb's skin.
_MAX_SELF_DEPTH = 0.2  # metres
_OP18_FLIP = skeletons.get_layout('openpose18').flip


def _on_image(kp_cam, K, size_wh):
    """(..., 18, 3) camera-frame keypoints -> pixels (..., 18, 2) and whether each lies on the
    image in front of the camera."""
    z = kp_cam[..., 2]
    uv = render.project(K, np.where(z[..., None] > 1e-6, kp_cam, [0.0, 0.0, 1.0]))
    return uv, render.inside_image(uv, size_wh, z)


def _body_colors(rng, model) -> np.ndarray:
    """Per-vertex clothing colours (V, 3) from the skinning weights' dominant joint."""
    W = np.asarray(model.weights)
    part = W.argmax(1)
    V = np.asarray(model.v_template, np.float64)
    J = np.asarray(model.j_regressor) @ V
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.05)
    shirt = imaging.random_color(rng, 25, 230)
    pants = imaging.random_color(rng, 20, 160) if rng.random() < 0.8 else imaging.random_color(rng)
    shoes = imaging.random_color(rng, 10, 90)
    hair = _HAIR[rng.integers(len(_HAIR))]
    long_sleeves = rng.random() < 0.55
    shorts = rng.random() < 0.2
    col = np.empty((len(V), 3))
    region = {
        0: pants,
        1: pants,
        2: pants,
        4: skin if shorts else pants,
        5: skin if shorts else pants,
        7: shoes,
        8: shoes,
        10: shoes,
        11: shoes,
        3: shirt,
        6: shirt,
        9: shirt,
        13: shirt,
        14: shirt,
        16: shirt,
        17: shirt,
        18: shirt if long_sleeves else skin,
        19: shirt if long_sleeves else skin,
        12: skin,
        15: skin,
        20: skin,
        21: skin,
        22: skin,
        23: skin,
    }
    for j in range(24):
        col[part == j] = region[j]
    head = J[HEAD]
    on_head = part == HEAD
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
    z = unit(np.asarray(target, np.float64) - c)
    x = unit(np.cross(z, up))
    y = np.cross(z, x)
    R = np.stack([x, y, z])
    if roll:
        R = Rotation.from_rotvec([0, 0, roll]).as_matrix() @ R
    return R, -R @ c


def _fit_camera(rng, pts_world, centers, size_wh, K, t, fill, truncate=False):
    """A smoothly moving camera that keeps every point of pts_world (F, P, 3) in view (unless
    `truncate`: then points may leave the image).

    The camera orbits the per-frame centre (F, 3) at a slowly changing azimuth and height; its
    distance is solved so that the people fill about `fill` of the image height.
    """
    W, H = size_wh
    az0 = rng.uniform(-2.3, 2.3)
    az_rate = rng.uniform(-0.25, 0.25)
    height = rng.uniform(0.9, 1.8)
    roll = wobble(rng, t, 0.015)
    shake = np.stack([wobble(rng, t, 0.02, 0.5, 2.0) for _ in range(3)], 1)
    tgt_shake = np.stack([wobble(rng, t, 0.03, 0.3, 1.5) for _ in range(3)], 1)
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
        over = max(
            ((uv[..., 0] - K[0, 2]) / (W / 2 - margin)).max(),
            ((K[0, 2] - uv[..., 0]) / (W / 2 - margin)).max(),
            ((uv[..., 1] - K[1, 2]) / (H / 2 - margin)).max(),
            ((K[1, 2] - uv[..., 1]) / (H / 2 - margin)).max(),
        )
        scale = tall / (fill * H) if truncate else max(tall / (fill * H), over * 1.02)
        if abs(scale - 1) < 0.02 and (truncate or over <= 1.0):
            break
        dist = float(np.clip(dist * scale, 1.5, 40.0))
    return Rs, ts


# ----------------------------------------------------------------------------- 3DPW: scene


class _Scene:
    """Ground, walls and sky of one 3DPW sequence (textures drawn once, seen by every frame)."""

    def __init__(self, rng, center_xz, view_dir_xz):
        self.sky_top = np.array(
            [rng.uniform(60, 140), rng.uniform(110, 170), rng.uniform(180, 250)]
        )
        self.sky_low = np.clip(self.sky_top + rng.uniform(40, 90), 0, 255)
        if rng.random() < 0.3:  # overcast
            g = rng.uniform(150, 220)
            self.sky_top = np.array([g, g, g + 5])
            self.sky_low = np.clip(self.sky_top + 20, 0, 255)
        self.clouds = imaging.smooth_noise(rng, 128, 128, 5, 3)
        self.ground = imaging.random_texture(
            rng, 256, 256, ['noise', 'checker', 'cells'][rng.integers(3)]
        )
        self.ground_tile = rng.uniform(2.5, 8.0)
        self.walls = []
        d = unit(np.array([view_dir_xz[0], 0.0, view_dir_xz[1]]))  # away from the camera
        c = np.array([center_xz[0], 0.0, center_xz[1]])
        for k in range(int(rng.integers(1, 4))):
            ang = [0.0, rng.uniform(0.9, 1.5), -rng.uniform(0.9, 1.5)][k]
            n = Rotation.from_rotvec([0, ang, 0]).apply(d)  # from the centre to the wall
            dist = rng.uniform(7, 18)
            along = np.cross([0.0, 1.0, 0.0], n)  # horizontal, in the wall
            height = rng.uniform(3, 12)
            kind = ['cells', 'noise', 'stripes', 'gradient'][rng.integers(4)]
            tex = imaging.random_texture(rng, 256, 256, kind)
            imaging.add_random_shapes(rng, tex, int(rng.integers(0, 6)))
            self.walls.append(
                dict(
                    origin=c + dist * n + np.array([0.0, height, 0.0]),
                    u=along,
                    v=np.array([0.0, -1.0, 0.0]),
                    tex=tex,
                    height=height,
                    tile=(rng.uniform(3, 10), height),
                    shade=rng.uniform(0.7, 1.05),
                )
            )
        self.sun = unit(np.array([rng.normal(), rng.uniform(0.6, 1.5), rng.normal()]))
        self.fog = self.sky_low

    def draw(self, K, R, t, size_wh) -> np.ndarray:
        W, H = size_wh
        rays = imaging.pixel_rays(K, R, size_wh)
        elev = rays[..., 1] / np.linalg.norm(rays, axis=-1)
        f = np.clip(elev / 0.5, 0, 1)[..., None]
        img = np.clip(self.sky_low * (1 - f) + self.sky_top * f, 0, 255).astype(np.uint8)
        depth = np.full((H, W), np.inf)
        cloud_tex = np.repeat((self.clouds[..., None] * 255).astype(np.uint8), 3, axis=2)
        sky = img.copy()
        imaging.render_plane(
            sky,
            K,
            R,
            t,
            [0, 300.0, 0],
            [1.0, 0, 0],
            [0, 0, 1.0],
            cloud_tex,
            (900.0, 900.0),
            fog_color=self.sky_low,
            fog_distance=2500.0,
            rays=rays,
        )
        img = (0.65 * img + 0.35 * sky).astype(np.uint8)
        for w in self.walls:
            imaging.render_plane(
                img,
                K,
                R,
                t,
                w['origin'],
                w['u'],
                w['v'],
                w['tex'],
                w['tile'],
                extent=(-60, 60, 0, w['height']),
                depth=depth,
                fog_color=self.fog,
                fog_distance=60.0,
                shade=w['shade'],
                rays=rays,
            )
        imaging.render_plane(
            img,
            K,
            R,
            t,
            [0, 0.0, 0],
            [1.0, 0, 0],
            [0, 0, 1.0],
            self.ground,
            (self.ground_tile, self.ground_tile),
            depth=depth,
            fog_color=self.fog,
            fog_distance=45.0,
            shade=0.95,
            rays=rays,
        )
        return img


# ----------------------------------------------------------------------------- 3DPW: writer


def _make_sequence(seed, models, name, index, n_frames, size_wh):
    rng = item_rng(seed, '3dpw', name)
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
        arng = item_rng(seed, '3dpw', name, 'actor', k)
        gender = 'm' if arng.random() < 0.5 else 'f'
        model = models.smpl('male' if gender == 'm' else 'female')
        betas10 = np.clip(arng.normal(0, 0.8, 10), -2.0, 2.0)
        gesture = 'none' if walking else ['none', 'wave', 'phone', 'point'][arng.integers(4)]
        h0, st, sp, wk, tr = heading0, start, speed, walk, turn
        if k == 1:
            if together or walking:
                st = start + lateral * arng.uniform(0.9, 1.3) * (1 if arng.random() < 0.5 else -1)
                h0 = heading0 + arng.normal(0, 0.05)
            else:  # facing each other, talking
                st = start + fwd * arng.uniform(1.2, 1.8)
                h0 = heading0 + np.pi + arng.normal(0, 0.35)
            wk = float(np.clip(walk + arng.normal(0, 0.05), 0.02, 1.0))
        body = body_motion(arng, t60, wk, gesture)
        go, xz = actor_track(arng, t60, st, h0, tr, wk, sp)
        body[:, 0] = go
        poses60 = body.reshape(n60, 72)
        out = models.forward(model, poses60, np.broadcast_to(betas10, (n60, 10)))
        trans60 = np.zeros((n60, 3))
        trans60[:, 0], trans60[:, 2] = xz[:, 0], xz[:, 1]
        trans60[:, 1] = -out['vertices'][..., 1].min(1)  # lowest vertex on the ground y = 0
        betas = betas10 if k == 0 else np.concatenate([betas10, np.zeros(290)])  # a 300-d track
        actors.append(
            dict(
                gender=gender,
                model=model,
                betas=betas,
                betas10=betas10,
                poses60=poses60,
                trans60=trans60,
                out=out,
                rng=arng,
            )
        )

    # camera: orbit the people's centre, people fill `fill` of the image height
    ids = img_frame_ids
    pts = np.concatenate(
        [a['out']['vertices'][ids][:, ::7] + a['trans60'][ids][:, None] for a in actors], axis=1
    )
    centers = np.stack([a['out']['joints'][ids][:, 0] + a['trans60'][ids] for a in actors]).mean(0)
    centers[:, 1] = 0.88
    f = W * rng.uniform(1.78, 1.86)
    K = np.array([[f, 0, W / 2.0], [0, f * rng.uniform(1.0, 1.006), H / 2.0], [0, 0, 1.0]])
    fill = rng.uniform(0.5, 0.72)
    # A close-up (every fifth sequence, from the fourth: never in the tests' tiny world; its own
    # stream, so the other sequences keep their bytes): the camera aims at the upper body and
    # the people are taller than the image, so legs (now and then the head) leave it.
    close_up = index % 5 == 3
    if close_up:
        framing = item_rng(seed, '3dpw', name, 'framing')
        centers[:, 1] = framing.uniform(1.15, 1.4)
        fill = framing.uniform(1.1, 1.4)
    Rs, ts = _fit_camera(rng, pts, centers, size_wh, K, t30, fill, truncate=close_up)
    cam_poses = np.tile(np.eye(4), (n_frames, 1, 1))
    cam_poses[:, :3, :3], cam_poses[:, :3, 3] = Rs, ts

    cam0 = -Rs[0].T @ ts[0]
    view = centers[0] - cam0
    scene = _Scene(rng, centers[0, [0, 2]], view[[0, 2]])
    meshes_static = []
    if rng.random() < 0.4:  # a pillar or a box between the camera and the people
        frac = rng.uniform(0.35, 0.6)
        p = cam0 + frac * (centers[n_frames // 2] - cam0)
        p += np.cross(unit(view), [0, 1.0, 0]) * rng.normal(0, 0.35)
        if rng.random() < 0.5:
            size = (rng.uniform(0.15, 0.35), rng.uniform(1.5, 3.0), rng.uniform(0.15, 0.35))
        else:
            size = (rng.uniform(0.4, 1.0), rng.uniform(0.5, 1.1), rng.uniform(0.4, 1.0))
        v, fc = render.box_mesh(
            [p[0], size[1] / 2, p[2]],
            size,
            Rotation.from_rotvec([0, rng.uniform(0, np.pi), 0]).as_matrix(),
        )
        meshes_static.append((v, fc, imaging.random_color(rng, 40, 220)))

    colors = [_body_colors(a['rng'], a['model']) for a in actors]
    faces = mesh_faces(actors[0]['model'])
    kp_cams = []  # per actor (N, 18, 3): OpenPose-18 keypoints in the camera frame
    for a in actors:
        world = skeletons.convert(a['out']['keypoints'][ids], 'body25', 'openpose18')
        kp_cams.append(
            np.einsum('fij,fpj->fpi', Rs, world + a['trans60'][ids][:, None]) + ts[:, None]
        )
    occluded = [np.zeros((n_frames, 18), bool) for _ in actors]
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
        img, mask, depth = render.render_meshes(
            bg, meshes, K, light_dir=R @ scene.sun, ambient=0.5, diffuse=0.62, supersample=2
        )
        for k, kp_cam in enumerate(kp_cams):  # actor k is mesh k
            uv, _ = _on_image(kp_cam[i], K, size_wh)
            occ = detector.keypoint_occlusion(kp_cam[i], uv, mask, depth, k, _MAX_SELF_DEPTH)
            occluded[k][i] = occ.astype(bool)
        frng = item_rng(seed, '3dpw', name, 'frame', i)
        img = imaging.random_blur(frng, img, 0.08, 0.06)
        frames.append(encode_jpg(imaging.sensor_noise(frng, img, (0.5, 2.5))))

    # annotations
    poses2d, joint_positions, valid = [], [], []
    for k, a in enumerate(actors):
        out = a['out']
        # poses2d as a detector reports them (detector.py's error model), not the exact
        # projections: real 3DPW stores OpenPose's detections. The box side scales the errors.
        uv, on_image = _on_image(kp_cams[k], K, size_wh)
        verts = np.einsum(
            'fij,fpj->fpi', Rs, out['vertices'][ids][:, ::7] + a['trans60'][ids][:, None]
        )
        uv_v = render.project(K, verts + ts[:, None])
        side = (uv_v.max(1) - uv_v.min(1)).max(-1)
        det = detector.detect(
            uv,
            on_image,
            occluded[k],
            side,
            size_wh,
            _OP18_FLIP,
            item_rng(seed, '3dpw', name, 'detector', k),
        )
        poses2d.append(det.transpose(0, 2, 1))  # (N, 3, 18): x, y, confidence rows
        joint_positions.append(
            (out['joints'][ids] + a['trans60'][ids][:, None]).reshape(n_frames, 72)
        )
        v = np.ones(n_frames, bool)
        if k == 0 or a['rng'].random() < 0.5:  # a few frames whose camera pose is not aligned
            run = int(a['rng'].integers(1, max(2, n_frames // 6) + 1))
            lo = int(a['rng'].integers(0, n_frames - run + 1))
            v[lo : lo + run] = False
        valid.append(v)
    tex_maps = []
    for a, col in zip(actors, colors):  # a tiny 'texture': shirt over trousers
        part = np.asarray(a['model'].weights).argmax(1)
        tm = np.zeros((16, 16, 3), np.uint8)
        tm[:8] = np.median(col[part == SPINE2], axis=0).astype(np.uint8)
        tm[8:] = np.median(col[part == L_KNEE], axis=0).astype(np.uint8)
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


def _write_sequence(job) -> tuple:
    """One sequence's frames and pickle, written under root; -> (split, name, frames). A
    module-level function of plain data, so that map_items can run it in a worker process."""
    root, body_models_dir, seed, split, index, frames, size_wh = job
    if body_models_dir not in _MODELS:
        _MODELS[body_models_dir] = Models(body_models_dir)
    place = _PLACES[item_rng(seed, '3dpw-place', index).integers(len(_PLACES))]
    name = f'{place}_synth_{index:02d}'
    data, jpgs = _make_sequence(seed, _MODELS[body_models_dir], name, index, frames, size_wh)
    img_dir = makedirs(os.path.join(root, 'imageFiles', name))
    for i, jpg in enumerate(jpgs):
        write_bytes(os.path.join(img_dir, f'image_{i:05d}.jpg'), jpg)
    seq_dir = makedirs(os.path.join(root, 'sequenceFiles', split))
    write_bytes(os.path.join(seq_dir, name + '.pkl'), legacy_pickle.dumps(data))
    return split, name, frames


_MODELS = {}  # body_models_dir -> Models, one per process (workers keep theirs between jobs)


def write_3dpw(
    root,
    body_models_dir,
    seed: int = 0,
    sequences=None,
    frames: int = 24,
    image_size=(270, 480),
    workers: int = 1,
) -> dict:
    """Writes a 3DPW-layout folder under `root`; returns a summary.

    sequences: {split: count} over 'train', 'validation', 'test' (default one each).
    frames: image frames N per sequence (the 60 Hz arrays have 2N rows). image_size: (W, H);
    cam_intrinsics has cx = W / 2, cy = H / 2. Sequence k (counted over the splits in that
    order) has two actors when k is even, one when odd, and is a close-up (people truncated) when
    k % 5 == 3; actor 0's betas are (10,), actor 1's (300,) zero-padded. workers: processes rendering sequences side by side (the files do not
    depend on it). Returns {'root', 'sequences': {split: [names]}, 'frames', 'image_size'}.
    """
    root = os.fspath(root)
    sequences = dict.fromkeys(THREEDPW_SPLITS, 1) if sequences is None else dict(sequences)
    for split in sequences:
        if split not in THREEDPW_SPLITS:
            raise ValueError(f'unknown 3DPW split {split!r}; expected one of {THREEDPW_SPLITS}')
    W, H = (int(x) for x in image_size)
    if frames < 1:
        raise ValueError('frames must be >= 1')
    splits = [s for s in THREEDPW_SPLITS for _ in range(sequences.get(s, 0))]
    body_models_dir = os.path.abspath(os.fspath(body_models_dir))
    jobs = [
        (root, body_models_dir, seed, split, index, frames, (W, H))
        for index, split in enumerate(splits)
    ]
    with progress_bar(len(jobs) * frames, '3DPW') as bar:
        done = map_items(_write_sequence, jobs, workers, lambda r: bar.update(r[2]))
    names = {split: [n for s, n, _ in done if s == split] for split in THREEDPW_SPLITS}
    names = {split: v for split, v in names.items() if split in sequences}
    return {'root': root, 'sequences': names, 'frames': frames, 'image_size': (W, H)}
