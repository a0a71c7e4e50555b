"""A synthetic raw FreiHAND v2 folder in the real layout, rendered from the synthetic MANO hand.

    FreiHAND_pub_v2/{training,evaluation}/rgb/%08d.jpg, training/mask/%08d.jpg,
    {training,evaluation}_{K,scale}.json, training_{mano,xyz,verts}.json
    FreiHAND_pub_v2_eval/evaluation/rgb/%08d.jpg, evaluation_{mano,xyz,verts}.json

Every key, shape and encoding is the real dataset's, so convert_freihand runs on it unchanged.
One right hand with a forearm per image; training images come in the dataset's four versions
(green screen, then random textured backgrounds and hand colourisations), evaluation images
over a random background, now and then behind a 2D occluder.

Beside the annotations, `FreiHAND_pub_v2/detections.json` (convert_common.DETECTIONS_FILE) holds
what a 2D hand detector reports for every image, in the layout convert_freihand reads (and a
user can write for the real dataset with their own detector): one JSON object mapping the
image's path relative to FreiHAND_pub_v2 (`training/rgb/%08d.jpg`, `evaluation/rgb/%08d.jpg`)
to 21 x [x, y, confidence] in full-image pixels, confidence 0 = not detected. The detections
are simulated (detector.py's error model via hands.detect_hand, one frame per image, seeded per
image, so the four training versions of a sample err differently) around the annotated xyz's
projections. A keypoint counts as occluded when, at its pixel in that image's render, a 2D
occluder, the forearm, or the hand's own surface of another part (a curled finger over the
palm) or more than hands.MAX_SKIN in front of it is seen (hands.keypoint_occlusion on the
render's mask, depth and face ids); FreiHAND ships no occlusion labels, so this label lives only
in the detections' error model. Keypoints off the image are not reported.
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
    tint,
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

FREIHAND_VERSIONS = ('gs', 'hom', 'sample', 'auto')  # image id = idx + n * v
FREIHAND_TIPS = (744, 320, 443, 555, 672)  # toolbox tips, not smplx's 554 / 671
HAND_TIP_SLOTS = (4, 8, 12, 16, 20)  # thumb, index, middle, ring, pinky


def _green_screen(rng, size):
    g = np.array([rng.uniform(30, 70), rng.uniform(140, 200), rng.uniform(40, 90)])
    light = 0.75 + 0.35 * imaging.smooth_noise(rng, size, size, 2, 2)
    img = g * light[..., None] + rng.normal(0, 2, (size, size, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _freihand_samples(seed, models, rig, split, n, size=224):
    """n annotated right hands: dicts with K, mano (61,), xyz (21,3), verts (778,3), scale."""
    hands_mean = models.hands_mean()
    right = models.mano(True)
    plans = []
    for idx in range(n):
        rng = item_rng(seed, 'freihand', split, idx)
        f = rng.uniform(480, 650)
        K = np.array(
            [
                [f, 0, size / 2 + rng.uniform(-4, 4)],
                [0, f, size / 2 + rng.uniform(-4, 4)],
                [0, 0, 1.0],
            ]
        )
        arm = unit([rng.normal(0, 0.5), rng.uniform(0.3, 1.0), rng.normal(0, 0.6)])
        flat = np.concatenate([hand_orientation(rng, rig, arm), finger_pose(rng, rig)])
        rel = flat.copy()
        rel[3:] -= hands_mean  # flat_hand_mean=False: relative to the mean
        betas = np.clip(rng.normal(0, 0.7, 10), -2, 2)
        plans.append(dict(rng=rng, K=K, rel=rel, betas=betas))
    if not plans:
        return []
    pose = np.stack([p['rel'] for p in plans])
    pose[:, 3:] += hands_mean  # exactly what a reader does
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
        lo, hi = 6 - uv.min(0), size - 7 - uv.max(0)  # allowed pixel shifts
        shift = np.where(lo <= hi, lo + rng.random(2) * (hi - lo), (lo + hi) / 2)
        root[:2] = shift * z / np.array([K[0, 0], K[1, 1]])
        for _ in range(5):  # perspective: settle the shift
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
        xyz[list(HAND_TIP_SLOTS)] = verts[list(FREIHAND_TIPS)]  # the toolbox's own tips
        mano = np.concatenate([p['rel'], p['betas'], uv_root, [s]])
        samples.append(
            dict(
                rng=rng,
                K=K,
                mano=mano,
                xyz=xyz,
                verts=verts,
                wrist=joints[0] + shift3,
                scale=float(np.linalg.norm(xyz[9] - xyz[10])),
            )
        )
    return samples


def _render_freihand(seed, split, idx, sample, rig, faces, version: str, size=224):
    """Renders one version of a FreiHAND sample: (rgb, mesh-id mask, depth, face ids); the hand
    is mesh 0."""
    rng = item_rng(seed, 'freihand', split, idx, 'look', version)
    skin = sample['skin']
    if version == 'gs':
        bg = _green_screen(rng, size)
        color = skin
    else:
        bg = imaging.random_background(rng, (size, size))
        color = (
            skin
            if version in ('hom', 'eval')
            else tint(rng, skin, 0.25 if version == 'sample' else 0.4)
        )
    meshes = [render.Mesh(sample['verts'], faces, color, double_sided=True)]
    arm_rng = item_rng(seed, 'freihand', split, idx, 'arm')  # the same forearm in every version
    meshes += arm_meshes(rig, sample['verts'], sample['wrist'], arm_rng, color)
    img, mask, depth, face_ids = render.render_meshes(
        bg,
        meshes,
        sample['K'],
        light_dir=sample['light'],
        ambient=0.4,
        diffuse=0.7,
        supersample=2,
        return_faces=True,
    )
    if version == 'eval' and rng.random() < 0.3:  # something in front of the hand
        ys, xs = np.nonzero(mask == 0)
        if len(xs):
            imaging.add_occluders(
                rng, img, mask, depth, (xs.min(), ys.min(), xs.max(), ys.max()), 1, (0.15, 0.35)
            )
    img = imaging.sensor_noise(rng, imaging.random_blur(rng, img, 0.05, 0.05), (0.5, 2.0))
    return img, mask, depth, face_ids


def _detect_freihand(seed, split, idx, version, sample, render_out, parts, size=224):
    """The simulated detection of the hand in one rendered version: (21, 3) (module docstring)."""
    _, mask, depth, face_ids = render_out
    uv = render.project(sample['K'], sample['xyz'])
    occ = keypoint_occlusion(sample['xyz'], uv, mask, depth, face_ids, 0, parts)
    side = box_side(render.project(sample['K'], sample['verts']))
    rng = item_rng(seed, 'freihand', split, idx, 'detector', version)  # its own: nothing shifts
    return detect_hand(rng, uv, sample['xyz'][:, 2], occ, side, (size, size))


def write_freihand(
    root, body_models_dir, seed: int = 0, train: int = 16, evaluation: int = 8
) -> dict:
    """Writes FreiHAND_pub_v2/ and FreiHAND_pub_v2_eval/ under `root`; returns a summary.

    training: rgb/%08d.jpg for 4 versions (gs, hom, sample, auto: the same hand over a green
    screen / different backgrounds and hand colourisations; id = idx + train * v), mask/%08d.jpg
    (hand + forearm, grey 0/255) for the `train` unique ids, training_{K,mano,xyz,verts,scale}.json.
    evaluation: rgb (one version, a random background) + evaluation_{K,scale}.json in
    FreiHAND_pub_v2, evaluation_{xyz,verts,mano}.json (+ the same rgb) in FreiHAND_pub_v2_eval.
    The hand is the right MANO hand; xyz uses the toolbox's tips (ring 555, pinky 672).
    FreiHAND_pub_v2/detections.json: simulated detections of every image (module docstring).
    """
    root = os.fspath(root)
    models = Models(body_models_dir)
    rig = HandRig(models)
    faces = mesh_faces(models.mano(True))
    parts = hand_parts(models.mano(True))
    detections = {}
    pub = os.path.join(root, 'FreiHAND_pub_v2')
    ev = os.path.join(root, 'FreiHAND_pub_v2_eval')
    total = 4 * train + evaluation
    with progress_bar(total, 'FreiHAND') as bar:
        for split, n in (('training', train), ('evaluation', evaluation)):
            samples = _freihand_samples(seed, models, rig, split, n)
            rgb_dir = makedirs(os.path.join(pub, split, 'rgb'))
            versions = FREIHAND_VERSIONS if split == 'training' else ('eval',)
            if split == 'training':
                mask_dir = makedirs(os.path.join(pub, split, 'mask'))
            else:
                eval_rgb = makedirs(os.path.join(ev, split, 'rgb'))
            for idx, smp in enumerate(samples):
                rng = smp['rng']
                smp['skin'] = SKIN_TONES[rng.integers(len(SKIN_TONES))] * rng.uniform(0.92, 1.05)
                smp['light'] = unit([rng.normal(0, 0.6), rng.normal(-0.5, 0.5), -1.0])
                for v, version in enumerate(versions):
                    out = _render_freihand(seed, split, idx, smp, rig, faces, version)
                    img, mask = out[:2]
                    jpg = encode_jpg(img)
                    image_id = idx + n * v
                    detections[f'{split}/rgb/{image_id:08d}.jpg'] = _detect_freihand(
                        seed, split, idx, version, smp, out, parts
                    ).tolist()
                    write_bytes(os.path.join(rgb_dir, f'{image_id:08d}.jpg'), jpg)
                    if split == 'evaluation':
                        write_bytes(os.path.join(eval_rgb, f'{image_id:08d}.jpg'), jpg)
                    if v == 0 and split == 'training':  # hand + forearm foreground
                        fg = (mask >= 0).astype(np.uint8) * 255
                        write_bytes(os.path.join(mask_dir, f'{idx:08d}.jpg'), encode_jpg(fg))
                    bar.update(1)
            K = [s['K'].tolist() for s in samples]
            mano = [[s['mano'].tolist()] for s in samples]
            xyz = [s['xyz'].tolist() for s in samples]
            verts = [s['verts'].tolist() for s in samples]
            scale = [s['scale'] for s in samples]
            write_json(os.path.join(pub, f'{split}_K.json'), K)
            write_json(os.path.join(pub, f'{split}_scale.json'), scale)
            if split == 'training':
                write_json(os.path.join(pub, 'training_mano.json'), mano)
                write_json(os.path.join(pub, 'training_xyz.json'), xyz)
                write_json(os.path.join(pub, 'training_verts.json'), verts)
            else:
                write_json(os.path.join(ev, 'evaluation_mano.json'), mano)
                write_json(os.path.join(ev, 'evaluation_xyz.json'), xyz)
                write_json(os.path.join(ev, 'evaluation_verts.json'), verts)
    write_json(os.path.join(pub, DETECTIONS_FILE), detections)
    return {'root': root, 'pub': pub, 'eval': ev, 'train': train, 'evaluation': evaluation}
