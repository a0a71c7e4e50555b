"""Inference on a video, end to end, with an oracle in the model's place (geometry only).

A test-made clip with known SMPL / MANO parameters and camera is rendered to image files, its
2D joints written as OpenPose JSON without person ids (people shuffled in every file), and the
whole path runs: reading the files, linking, the training crops, windows, the model's outputs
back to the full image, the overlay. The oracle returns, for each crop, the ground truth of the
person it shows (found by the crop's keypoints) in the model's terms: the crop camera of HMR
2.0's box (camera.full_to_crop) and, for a mirrored left hand, the right hand the model sees.
Tolerances: everything is float32 through 256-px windows: 1e-3 px and 1e-6 m are the round-off;
1 px and 1 mm are the issue's bounds.
"""

import json

import numpy as np
import pytest

from configs import common
from data_pipelines import augment
from data_pipelines.keypoint_files import read_keypoints
from data_pipelines.synthetic import render
from extpose_jax import geometry, skeletons
from extpose_jax.infer import camera, overlay, runner, video_io
from extpose_jax.train import config as config_lib
from extpose_jax.train import evaluate, overlays

W, H = 320, 240


def _posed(bodies, kind, pose, betas):
    """Model-frame (joints, vertices) of axis-angle pose (P,) and betas (10,)."""
    rot = np.asarray(geometry.axis_angle_to_matrix(pose.reshape(-1, 3)))[None, None]
    key = 'body_pose' if kind == 'smpl' else 'hand_pose'
    out = bodies.predicted(
        {
            'global_orient': rot[:, :, :1],
            key: rot[:, :, 1:],
            'betas': betas[None, None],
            'pred_cam': np.array([[[1.0, 0, 0]]]),
        }
    )
    return out['keypoints_3d'][0, 0].astype(np.float64), out['vertices'][0, 0].astype(np.float64)


def _clip(tmp_path, bodies, kind, people_gt, K, n_frames):
    """Renders people_gt (list of dicts: pose, betas, mirror, t (n_frames, 3)) and writes the
    frames + OpenPose JSON (no ids, shuffled). -> (frames dir, keypoints dir, truth)."""
    frames_dir, kp_dir = tmp_path / 'frames', tmp_path / 'openpose'
    frames_dir.mkdir()
    kp_dir.mkdir()
    rng = np.random.default_rng(0)
    faces = bodies.faces
    truth = []  # per person: joints (F, J, 3), vertices (F, V, 3) in the camera frame
    for p in people_gt:
        joints, verts = _posed(bodies, kind, p['model_pose'], p['betas'])
        d = np.diag([-1.0, 1.0, 1.0]) if p['mirror'] else np.eye(3)
        truth.append(
            {
                'joints': joints @ d + p['t'][:, None],
                'vertices': verts @ d + p['t'][:, None],
                'faces': faces[:, ::-1] if p['mirror'] else faces,
            }
        )
    for f in range(n_frames):
        meshes = [
            render.Mesh(tr['vertices'][f], tr['faces'], np.array([200.0, 180, 160]), True)
            for tr in truth
        ]
        image = render.render_meshes(np.full((H, W, 3), 60, np.uint8), meshes, K)[0]
        overlays.write_png(str(frames_dir / f'{f:04d}.png'), image)
        persons = []
        for i in rng.permutation(len(truth)):
            uv = render.project(K, truth[i]['joints'][f])
            kp = np.concatenate([uv, np.ones((len(uv), 1))], 1)
            if kind == 'smpl':
                flat = skeletons.convert(kp, 'hmr44', 'openpose18').ravel().tolist()
                persons.append({'person_id': [-1], 'pose_keypoints_2d': flat})
            else:
                side = 'left' if people_gt[i]['mirror'] else 'right'
                persons.append(
                    {'person_id': [-1], f'hand_{side}_keypoints_2d': kp.ravel().tolist()}
                )
        (kp_dir / f'clip_{f:012d}_keypoints.json').write_text(json.dumps({'people': persons}))
    return str(frames_dir), str(kp_dir), truth


def _oracle(kind, people_gt, truth, K):
    """batch -> head outputs: each crop's own person (nearest projected joints to the crop's
    keypoints, mapped back to the full image), in the model's terms (module docstring)."""
    layout = skeletons.get_layout(config_lib.RECORD_LAYOUT[kind])

    def predict(batch):
        b_len, t_len = batch['frame'].shape
        j = 23 if kind == 'smpl' else 15
        out = {
            'global_orient': np.tile(np.eye(3), (b_len, t_len, 1, 1, 1)),
            ('body_pose' if kind == 'smpl' else 'hand_pose'): np.tile(
                np.eye(3), (b_len, t_len, j, 1, 1)
            ),
            'betas': np.zeros((b_len, t_len, 10)),
            'pred_cam': np.tile([1.0, 0, 0], (b_len, t_len, 1)),
        }
        for b in range(b_len):
            for t in np.flatnonzero(batch['frame'][b] >= 0):
                f = int(batch['frame'][b, t])
                a = np.linalg.inv(augment.as3x3(batch['affine'][b, t]))
                kp = batch['kp2d_input'][b, t]
                seen = kp[:, 2] > 0
                perm = layout.flip_array if batch['flipped'][b, t] else np.arange(len(kp))
                full = augment.apply(a, kp[:, :2].astype(np.float64))[np.argsort(perm)]
                seen = seen[np.argsort(perm)]
                if kind == 'smpl':
                    full = skeletons.convert(np.c_[full, seen], 'hmr44', 'openpose18')
                    seen, full = full[:, 2] > 0, full[:, :2]
                dist = []
                for tr in truth:
                    uv = render.project(K, tr['joints'][f])
                    if kind == 'smpl':
                        uv = skeletons.convert(np.c_[uv, np.ones(len(uv))], 'hmr44', 'openpose18')
                        uv = uv[:, :2]
                    dist.append(np.abs(uv[seen] - full[seen]).max())
                i = int(np.argmin(dist))
                assert dist[i] < 1e-2, dist  # the crop's keypoints are that person's
                p = people_gt[i]
                # The model's box is always the window's: centred, 256 px (HMR 2.0's square).
                center = augment.apply(a, np.array([augment.OUT_W / 2, augment.OUT_H / 2]))
                side = augment.OUT_H * np.sqrt(abs(np.linalg.det(a[:2, :2])))  # a: window -> full
                cam = camera.full_to_crop(p['t'][f], center, side, K)
                pose = p['model_pose']
                if batch['flipped'][b, t]:
                    cam[1] = -cam[1]
                rot = np.asarray(geometry.axis_angle_to_matrix(pose.reshape(-1, 3)))
                key = 'body_pose' if kind == 'smpl' else 'hand_pose'
                out['global_orient'][b, t] = rot[:1]
                out[key][b, t] = rot[1:]
                out['betas'][b, t] = p['betas']
                out['pred_cam'][b, t] = cam
        return out

    return predict


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _check(result, truth, people_gt, K, faces, kind, n_frames):
    rows = result.rows
    assert len(rows['frame']) == n_frames * len(truth)  # everyone, every frame
    owner_of_track = {}
    for r in range(len(rows['frame'])):
        f = int(rows['frame'][r])
        # whose row: the person its 2D joints are (a swap would show up here)
        errs = [
            np.abs(render.project(K, tr['joints'][f]) - rows['joints_2d'][r]).max() for tr in truth
        ]
        i = int(np.argmin(errs))
        owner_of_track.setdefault(int(rows['track'][r]), []).append(i)
        assert errs[i] < 1.0, errs  # full-image 2D joints within 1 px
        assert np.abs(rows['joints_3d'][r] - truth[i]['joints'][f]).max() < 1e-3  # 1 mm
        assert rows['is_right'][r] == (not people_gt[i]['mirror'])
        if people_gt[i]['mirror']:  # a left hand comes out in the left-hand convention
            np.testing.assert_allclose(rows['pose'][r], people_gt[i]['pose'], atol=1e-4)
        gt_mask = (
            render.render_meshes(
                np.zeros((H, W, 3), np.uint8),
                [
                    render.Mesh(
                        truth[i]['vertices'][f], truth[i]['faces'], np.array([255.0] * 3), True
                    )
                ],
                K,
            )[1]
            >= 0
        )
        drawn = overlay.draw_frame(
            np.zeros((H, W, 3), np.uint8), rows, [r], faces, K, double_sided=True
        ).any(-1)
        assert _iou(drawn, gt_mask) > 0.9
    # identities: every track is one person on >= 95% of its frames
    for track, owners in owner_of_track.items():
        assert np.bincount(owners).max() >= 0.95 * len(owners), (track, owners)
    assert len(owner_of_track) == len(truth)


def _person(pose, betas, t, mirror=False):
    """Ground truth of one person: `pose` in its own convention (a left hand's: the mirror
    conjugate), the right-MANO / SMPL pose the model would predict, betas, translation (F, 3)."""
    model_pose = augment.mirror_pose(pose.astype(np.float32), 'mano') if mirror else pose
    return {'pose': pose, 'model_pose': np.asarray(model_pose, np.float64), 'betas': betas,
            'mirror': mirror, 't': t}  # fmt: skip


def _run_and_check(tmp_path, body_model_dir, kind, num_frames_model, people_gt, K, n, batch):
    bodies = evaluate.JaxBodies(kind, str(body_model_dir))
    frames_dir, kp_dir, truth = _clip(tmp_path, bodies, kind, people_gt, K, n)
    result = runner.run(
        common.base(kind, 'small', num_frames_model),
        None,
        str(body_model_dir),
        video_io.Frames(frames_dir),
        read_keypoints(kp_dir),
        K=K,
        batch_size=batch,
        progress=False,
        predict_fn=_oracle(kind, people_gt, truth, K),
    )
    _check(result, truth, people_gt, K, bodies.faces, kind, n)


@pytest.mark.slow
def test_oracle_bodies_crossing_through_the_whole_path(tmp_path, body_model_dir):
    """Two people walk past each other (boxes overlapping mid-clip), no ids in the file."""
    K = np.array([[400.0, 0, W / 2], [0, 400.0, H / 2], [0, 0, 1]])
    n = 16
    rng = np.random.default_rng(1)
    s = np.linspace(-1, 1, n)
    people_gt = [
        _person(
            np.r_[np.pi, 0, 0, 0.15 * rng.standard_normal(69)],  # upright, facing the camera
            0.5 * rng.standard_normal(10),
            np.c_[-x0 * s, np.full(n, 0.1), np.full(n, z)],
        )
        for x0, z in ((-1.4, 5.0), (1.4, 6.0))
    ]
    _run_and_check(tmp_path, body_model_dir, 'smpl', 4, people_gt, K, n, batch=3)


@pytest.mark.slow
def test_oracle_left_and_right_hands_through_the_mirror_path(tmp_path, body_model_dir):
    """A left hand (the mirror image of a right MANO) and a right hand: the left one is mirrored
    into the model's right-hand crop and back, its pose reported in the left-hand convention."""
    K = np.array([[300.0, 0, W / 2], [0, 300.0, H / 2], [0, 0, 1]])
    n = 6
    rng = np.random.default_rng(2)
    people_gt = [
        _person(
            np.r_[0.4 * rng.standard_normal(3), 0.3 * rng.standard_normal(45)],
            0.5 * rng.standard_normal(10),
            np.c_[np.full(n, x) + 0.01 * np.arange(n), np.full(n, 0.02), np.full(n, 0.7)],
            mirror,
        )
        for x, mirror in ((-0.12, True), (0.12, False))
    ]
    _run_and_check(tmp_path, body_model_dir, 'mano', 2, people_gt, K, n, batch=2)


def test_both_hands_of_a_person_stay_together(tmp_path):
    """Untracked OpenPose entries (body + both hands each, shuffled per frame): each hand is
    attributed to its body's track, the same person on every frame."""
    from extpose_jax.infer import tracking

    rng = np.random.default_rng(0)
    xs = {0: 60.0, 1: 220.0}  # two people, apart, drifting right
    order = []
    for f in range(5):
        entries = []
        for p in rng.permutation(2):
            x = xs[p] + 3 * f
            body = np.c_[x + 20 * rng.random(18), 40 + 150 * rng.random(18), np.ones(18)]
            hand = lambda dx: np.c_[x + dx + 5 * rng.random(21), 120 + 5 * rng.random(21),
                                    np.ones(21)]  # fmt: skip
            entries.append({'person_id': [-1], 'pose_keypoints_2d': body.ravel().tolist(),
                            'hand_left_keypoints_2d': hand(-10).ravel().tolist(),
                            'hand_right_keypoints_2d': hand(30).ravel().tolist()})  # fmt: skip
            order.append((f, len(entries) - 1, int(p)))
        (tmp_path / f'v_{f:012d}_keypoints.json').write_text(json.dumps({'people': entries}))
    detections = read_keypoints(tmp_path)
    owners = runner.hand_owners(detections, max_gap=2)
    truth = {(f, e): p for f, e, p in order}
    hands = [d for dets in detections.values() for d in dets if d.part != 'body']
    assert len(hands) == 20
    by_person = {}
    for d in hands:
        by_person.setdefault(truth[(d.frame, d.entry)], set()).add(owners[(d.frame, d.entry)])
    assert all(len(v) == 1 for v in by_person.values())  # one body track per person
    assert by_person[0] != by_person[1]
    # The hand tracks themselves (linked per side) follow the same people.
    for tr in tracking.link(
        {f: [d for d in ds if d.part != 'body'] for f, ds in detections.items()}
    ):
        assert len({truth[(d.frame, d.entry)] for d in tr.detections}) == 1
