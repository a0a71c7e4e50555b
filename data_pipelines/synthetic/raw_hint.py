"""A synthetic raw HInt folder in the real layout, rendered from the synthetic MANO hands.

    HInt_annotation_partial/{TRAIN,VAL,TEST}_{newdays,epick,ego4d}_img/<stem>.{jpg,json}

Every key and encoding is the real dataset's, so convert_hint runs on it unchanged. One or two
hands (third-person for newdays, egocentric for epick and ego4d) over a random background, now
and then behind a 2D occluder; each keypoint's occlusion label comes from the renderer's depth
map and face ids.

Beside the annotations, `HInt_annotation_partial/detections.json` (convert_common.DETECTIONS_FILE)
holds what a 2D hand detector reports for every annotated hand, in the layout convert_hint reads
(and a user can write for the real dataset with their own detector): one JSON object mapping
`<folder>/<stem>.jpg` (the hand's image, relative to HInt_annotation_partial) to 21 x [x, y,
confidence] in full-image pixels, confidence 0 = not detected. The detections are simulated
(detector.py's error model via hands.detect_hand, one frame per hand, its own seed per hand):
jitter scaled by the hand's projected extent, larger and often missed where the keypoint is
occluded (the `occlusion` label), nothing for keypoints off the image. Hands of json-only
folders (ego4d_images=False) have no image to detect on and no entry.
"""

from __future__ import annotations

import os

import numpy as np

from data_pipelines.convert_common import DETECTIONS_FILE
from data_pipelines.synthetic import imaging, render
from data_pipelines.synthetic.hands import (
    HandRig,
    arm_meshes,
    box_side,
    detect_hand,
    finger_pose,
    hand_orientation,
    hand_parts,
    keypoint_occlusion,
    mirror_pose,
)
from data_pipelines.synthetic.raw_common import (
    SKIN_TONES,
    Models,
    encode_jpg,
    item_rng,
    makedirs,
    mesh_faces,
    progress_bar,
    unit,
    write_bytes,
    write_json,
)

HINT_SPLITS = ('TRAIN', 'VAL', 'TEST')
HINT_SOURCES = ('newdays', 'epick', 'ego4d')


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
        return f'ND_{yt}_frame{int(rng.integers(0, 10**6)):06d}'
    if source == 'epick':
        return (
            f'EK_{int(rng.integers(0, 10000)):04d}_P{int(rng.integers(1, 38)):02d}_'
            f'{int(rng.integers(1, 30)):02d}_frame_{int(rng.integers(0, 10**6)):010d}'
        )
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
    if ego:  # the arm comes from the bottom (right) towards the camera
        arm = unit([rng.uniform(0.1, 0.6), rng.uniform(0.5, 1.0), -rng.uniform(0.1, 0.6)])
    else:
        arm = unit([rng.normal(0.3, 0.4), rng.uniform(0.2, 1.0), rng.normal(0.0, 0.5)])
    wrist = np.array([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z])
    pose = np.concatenate([hand_orientation(rng, rig, arm), finger_pose(rng, rig)])
    return dict(pose=pose, betas=np.clip(rng.normal(0, 0.7, 10), -2, 2), wrist=wrist)


def _render_hint_image(seed, models, rig, split, source, n):
    """One HInt image: (rgb, [hand dicts with side, keypoints, kp3d, occlusion, bbox]), K."""
    rng = item_rng(seed, 'hint', split, source, n)
    sizes = _HINT_IMAGE[source]
    W, H = sizes[rng.integers(len(sizes))]
    f = W * rng.uniform(0.75, 1.15)
    K = np.array([[f, 0, W / 2.0], [0, f, H / 2.0], [0, 0, 1.0]])
    two = rng.random() < 0.45
    sides = ['left', 'right'] if two else [['left', 'right'][rng.integers(2)]]
    hands = []
    for side in sides:
        d = _hint_hand_design(rng, rig, K, (W, H), source, on_right_half=two)
        if side == 'left':  # the mirror image of a right-hand design through the y-z plane
            d['pose'] = mirror_pose(d['pose'])
            d['wrist'] = d['wrist'] * np.array([-1.0, 1.0, 1.0])
        model = models.mano(side == 'right')
        out = models.forward(model, d['pose'][None], d['betas'][None])
        shift = d['wrist'] - out['joints'][0, 0]
        hands.append(
            dict(
                side=side,
                model=model,
                verts=out['vertices'][0] + shift,
                kp3d=out['keypoints'][0] + shift,
                wrist=d['wrist'],
            )
        )
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
    bg = imaging.random_background(rng, (W, H))
    skin = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.05)
    meshes = []
    for h in hands:
        meshes.append(render.Mesh(h['verts'], mesh_faces(h['model']), skin, double_sided=True))
    for h in hands:  # a mirrored mesh keeps the vertex ids, so the wrist loop is the same
        meshes += arm_meshes(rig, h['verts'], h['wrist'], rng, skin)
    light = unit([rng.normal(0, 0.6), rng.normal(-0.6, 0.4), -1.0])
    img, mask, depth, face_ids = render.render_meshes(
        bg, meshes, K, light_dir=light, supersample=2, return_faces=True
    )
    parts = hand_parts(models.mano(True))  # mirroring keeps the vertex / face ids
    results = []
    for k, h in enumerate(hands):
        uv_v = render.project(K, h['verts'])
        uv = render.project(K, h['kp3d'])
        if rng.random() < 0.3:
            lo, hi = uv_v.min(0), uv_v.max(0)
            imaging.add_occluders(rng, img, mask, depth, (lo[0], lo[1], hi[0], hi[1]), 1)
        h['uv'], h['uv_v'] = uv, uv_v
    for k, h in enumerate(hands):
        occ = keypoint_occlusion(h['kp3d'], h['uv'], mask, depth, face_ids, k, parts)
        pts = np.concatenate([h['uv_v'], h['uv']])
        lo, hi = pts.min(0), pts.max(0)
        pad = rng.uniform(0.0, 0.06) * (hi - lo) + 1.0
        side = box_side(h['uv_v'])
        lo = np.maximum(lo - pad, 0.0)
        hi = np.minimum(hi + pad, [W - 1.0, H - 1.0])
        results.append(
            dict(
                side=h['side'],
                keypoints=h['uv'],
                kp3d=h['kp3d'],
                occlusion=occ,
                bbox=np.concatenate([lo, hi]),
                # its own generator: the image's other draws stay as they were
                detection=detect_hand(
                    item_rng(seed, 'hint', split, source, n, 'detector', h['side']),
                    h['uv'],
                    h['kp3d'][:, 2],
                    occ,
                    side,
                    (W, H),
                ),
                box_side=side,
            )
        )
    img = imaging.random_blur(rng, img, 0.1, 0.08)
    img = imaging.sensor_noise(rng, img, (0.5, 3.0))
    return img, results, K


def write_hint(
    root, body_models_dir, seed: int = 0, per_folder: int = 4, ego4d_images: bool = True
) -> dict:
    """Writes HInt_annotation_partial/{TRAIN,VAL,TEST}_{newdays,epick,ego4d}_img/.

    per_folder images per folder; an image shows one or two hands (a left and a right one) and a
    hand is one `<stem>.jpg` + `<stem>.json` pair, the stem being the image id in the source's
    naming style + `_l` / `_r` (two hands: two stems, the same jpg twice). The JSON is a list
    holding one dict: bbox [[x1, y1, x2, y2]], keypoints 21 x [u, v] (OpenPose hand order, exact
    projections of the MANO keypoints; smplx tips), occlusion 21 x 0/1 (1 = hidden by another
    mesh, a 2D occluder or the hand itself, from the renderer's depth map). ego4d_images=False
    leaves the ego4d folders with json only (as before the frames are retrieved).
    detections.json: the simulated detections of every hand with an image (module docstring).

    Returns {'root', 'hands': {stem path (no extension): {'side', 'K', 'kp3d', 'box_side'}}}:
    the camera and 3D keypoints behind every annotation and the box side that scaled its
    detection's errors (for tests; not part of the layout).
    """
    root = os.path.join(os.fspath(root), 'HInt_annotation_partial')
    models = Models(body_models_dir)
    rig = HandRig(models)
    manifest, detections = {}, {}
    total = len(HINT_SPLITS) * len(HINT_SOURCES) * per_folder
    with progress_bar(total, 'HInt') as bar:
        for split in HINT_SPLITS:
            for source in HINT_SOURCES:
                folder = makedirs(os.path.join(root, f'{split}_{source}_img'))
                for n in range(per_folder):
                    img, hands, K = _render_hint_image(seed, models, rig, split, source, n)
                    image_id = _hint_image_id(item_rng(seed, 'hint-name', split, source, n), source)
                    jpg = encode_jpg(img)
                    for h in hands:
                        stem = f'{image_id}_{h["side"][0]}'
                        ann = [
                            {
                                'bbox': [[float(x) for x in h['bbox']]],
                                'keypoints': [[float(u), float(v)] for u, v in h['keypoints']],
                                'occlusion': [int(o) for o in h['occlusion']],
                            }
                        ]
                        write_json(os.path.join(folder, stem + '.json'), ann)
                        if source != 'ego4d' or ego4d_images:
                            write_bytes(os.path.join(folder, stem + '.jpg'), jpg)
                            key = f'{os.path.basename(folder)}/{stem}.jpg'
                            detections[key] = h['detection'].tolist()
                        manifest[os.path.join(folder, stem)] = dict(
                            side=h['side'], K=K, kp3d=h['kp3d'], box_side=h['box_side']
                        )
                    bar.update(1)
    write_json(os.path.join(root, DETECTIONS_FILE), detections)
    return {'root': root, 'hands': manifest}
