"""Evaluation metrics per protocol (extpose_jax/train/evaluate.py, eval_protocols.py): windows,
3DPW, FreiHAND, HInt. Several processes, overlays, metrics.json, bad input and run_eval.py are in
test_evaluate_runs.py, on the records built here.

The records are written here with exactly known ground truth: each frame's camera is chosen so
that, after the pipeline's deterministic crop, the batch's camera IS HMR 2.0's crop camera
(f = 5000, principal point at the window centre). A predict_fn that returns a frame's true
parameters (looked up by its record key) then reproduces its 3D joints, mesh and 2D joints
exactly, so every metric has a known value; perturbed predictions are checked against an
independent computation (smplx meshes, scipy Procrustes and nearest neighbours, numpy).
"""

import os

import numpy as np
import pytest
from scipy import linalg
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation
from test_body_models import _smplx_smpl, _torch_mano, _torch_smpl_keypoints

from data_pipelines import augment as aug
from data_pipelines import convert_common, cropping, record_reader, shards
from data_pipelines import pipeline as pl
from extpose_jax import body_models, geometry, metrics, skeletons
from extpose_jax.train import eval_protocols as ep
from extpose_jax.train import evaluate as ev

K_CROP = np.array([[5000.0, 0, aug.OUT_W / 2], [0, 5000.0, aug.OUT_H / 2], [0, 0, 1]])
IMAGE_HW = (480, 640)
CROP = 64
HINT_BOX = [250.0, 150, 390, 330]  # every hand's annotated box: 140 x 180 px
T, B = 4, 2  # clip length and batch size of the video tests
# 3DPW-style tracks: sequence -> [(track, frames)]: a long track, a short one (< T), a gap.
BODY_TRACKS = {
    'seq_a': [(0, range(10)), (1, range(3))],
    'seq_b': [(0, list(range(5)) + list(range(7, 13)))],
}


def _camera(box, mirror=False):
    """(crop_affine, K, full-image -> window affine) of a record whose deterministic window
    camera is K_CROP (see the module docstring): the pipeline's window K is A K R3^T."""
    _, crop_affine = cropping.crop_person(np.zeros((1, 1, 3), np.uint8), box, CROP)
    center, w, h, side = aug.hmr_box(aug.box_in_crop(box, crop_affine))
    m = aug.crop_to_output(center, w, h, side, aug.IDENTITY, mirror)
    full_to_out = m @ aug.as3x3(crop_affine)
    K = np.linalg.inv(full_to_out) @ K_CROP @ aug.rotation_3d(aug.IDENTITY, mirror)
    return crop_affine, K, full_to_out


def _keypoints(model, poses, betas):
    """The model's keypoints (N, K, 3) at axis-angle poses (N, P), betas (N, 10), jitted. Poses go
    in as (N, J, 3): a flat (N, 3 J) batch of N = J poses would be read as one pose of J joints."""
    poses = np.stack(poses).reshape(len(poses), -1, 3)
    return convert_common.model_forward(model, poses, np.stack(betas), chunk=16)['keypoints']


def _record(kp_model, pose, betas, transl, box, kind_field, key, mirror=False, occluded=None):
    """kp_model: the GT model's keypoints at pose / betas, without translation."""
    kp3d = kp_model + transl
    crop_affine, K, _ = _camera(box, mirror)
    uvw = kp3d @ K.T
    kp2d = np.ones((len(kp3d), 3), np.float32)
    kp2d[:, :2] = cropping.apply_affine(crop_affine, uvw[:, :2] / uvw[:, 2:])
    rec = dict(
        image=np.full((CROP, CROP, 3), 90, np.uint8),
        crop_affine=crop_affine,
        image_size=np.array(IMAGE_HW),
        K=K.astype(np.float32),
        box=np.float32(box),
        kp2d=kp2d,
        kp3d=kp3d.astype(np.float32),
        pose=pose,
        betas=betas,
        sequence=key[0],
        track=key[1],
        frame=key[2],
        **kind_field,
    )
    if occluded is not None:  # HInt: occluded keypoints keep their position with conf 0
        kp2d[occluded > 0, 2] = 0.0
        kp2d[-1] = 0.0  # one keypoint not annotated at all
        rec['kp2d_occluded'] = occluded
    return rec


def _write(out, name, split, kind, recs):
    with shards.RecordWriter(
        out,
        name,
        split,
        num_shards=2,
        num_joints=44 if kind == 'smpl' else 21,
        body_model=kind,
        fsync=False,
    ) as w:
        for r in recs:
            w.write(r)


@pytest.fixture(scope='module')
def data(body_model_dir, tmp_path_factory):
    """Records of 3dpw (split 'test': neutral genders; 'gendered': male / female), freihand and
    hint, plus truth[name][(sequence hash, track, frame)] = (pose, betas, transl, gender or
    hand side)."""
    root = tmp_path_factory.mktemp('eval_records')
    bm = str(body_model_dir)
    rng = np.random.default_rng(0)
    truth = {}

    def remember(name, key, params):
        truth.setdefault(name, {})[(pl.sequence_hash(key[0]), key[1], key[2])] = params

    for split, genders in (('test', ('neutral',)), ('gendered', ('male', 'female'))):
        recs = []
        for s, (seq, tracks) in enumerate(BODY_TRACKS.items()):
            for track, frames in tracks:
                gender = genders[(s + track) % len(genders)]
                pose0, vel = rng.normal(0, 0.2, 72), rng.normal(0, 0.03, 72)
                pose0[:3] = [np.pi, 0, 0]  # upright in the camera frame (y down)
                betas = rng.normal(0, 1, 10).astype(np.float32)
                box = np.array([220.0, 60, 420, 420]) + 20 * track
                poses = [
                    (pose0 + f * vel + 0.02 * rng.normal(size=72)).astype(np.float32)
                    for f in frames
                ]
                model = body_models.load_from_dir(bm, 'smpl', gender)
                kps = _keypoints(model, poses, [betas] * len(poses))
                for f, pose, kp in zip(frames, poses, kps):
                    transl = np.array([0.02 * f, 0.01, 40.0 + 0.1 * f])
                    key = (seq, track, f)
                    rec = _record(kp, pose, betas, transl, box, {'gender': gender}, key)
                    # 3DPW ships detections, the protocol's default 2D input: here exact ones
                    # (the hand records carry none, as a hand dataset converted without a file)
                    rec['kp2d_det'] = rec['kp2d']
                    recs.append(rec)
                    remember(f'3dpw/{split}', key, (pose, betas, transl, gender))
        _write(str(root / split / '3dpw'), '3dpw', split, 'smpl', recs)

    models = {
        'right': body_models.load_from_dir(bm, 'mano'),
        'left': body_models.load_mano(os.path.join(bm, 'mano'), is_right=False),
    }
    hand_sets = {
        'freihand': [(f'test_{i:08d}', 0, i, 'right') for i in range(5)],
        'hint': [(f'newdays_img/ND_v{i}_frame{i:06d}', 1, 0, 'right') for i in range(3)]
        + [('epick_img/EK_0001_P01_frame_0000000100', 0, 0, 'left')],
    }
    for name, keys in hand_sets.items():
        recs = []
        for seq, track, frame, side in keys:
            pose = rng.normal(0, 0.3, 48).astype(np.float32)
            betas = rng.normal(0, 1, 10).astype(np.float32)
            transl = np.array([0.01, -0.02, 7.0])
            occ = None
            if name == 'hint':
                occ = np.zeros(21, np.float32)
                occ[rng.choice(np.arange(1, 20), 5, replace=False)] = 1.0
            kp = _keypoints(models[side], [pose], [betas])[0]
            recs.append(
                _record(
                    kp,
                    pose,
                    betas,
                    transl,
                    HINT_BOX,
                    {'hand_side': side},
                    (seq, track, frame),
                    mirror=side == 'left',
                    occluded=occ,
                )
            )
            remember(name, (seq, track, frame), (pose, betas, transl, side))
        _write(str(root / name), name, 'test', 'mano', recs)
    return {
        'root': root,
        'bm': bm,
        'truth': truth,
        'dirs': {
            '3dpw/test': str(root / 'test' / '3dpw'),
            '3dpw/gendered': str(root / 'gendered' / '3dpw'),
            'freihand': str(root / 'freihand'),
            'hint': str(root / 'hint'),
        },
    }


def truth_predictor(truth, kind, perturb=None, calls=None):
    """predict_fn returning each frame's true parameters (by its record key), optionally
    perturb(key, pose, betas, transl) -> (pose, betas, transl); records the batches in calls."""

    def predict_fn(batch):
        if calls is not None:
            calls.append(batch)
        lead = batch['frame_valid'].shape
        pose = np.zeros(lead + (72 if kind == 'smpl' else 48,), np.float32)
        betas = np.zeros(lead + (10,), np.float32)
        cam = np.tile(np.float32([1.0, 0.0, 0.0]), lead + (1,))
        for b, t in zip(*np.nonzero(batch['frame_valid'])):
            key = (
                int(batch['sequence_hash'][b, t]),
                int(batch['track'][b, t]),
                int(batch['frame'][b, t]),
            )
            p, be, tr = truth[key][:3]
            if perturb is not None:
                p, be, tr = perturb(key, p, be, tr)
            if batch['flipped'][b, t]:  # the model sees (and predicts) the mirrored subject
                p, tr = aug.mirror_pose(p, kind), tr * np.array([-1.0, 1.0, 1.0])
            pose[b, t], betas[b, t] = p, be
            cam[b, t] = [2 * K_CROP[0, 0] / (256 * tr[2]), tr[0], tr[1]]  # inverts cam_t
        rot = np.asarray(geometry.axis_angle_to_matrix(pose.reshape(lead + (-1, 3))))
        out = {'global_orient': rot[:, :, :1], 'betas': betas, 'pred_cam': cam}
        out['body_pose' if kind == 'smpl' else 'hand_pose'] = rot[:, :, 1:]
        return out

    return predict_fn


def _evaluate(data, name, predict_fn, **kw):
    kw = {'num_frames': T if name.startswith('3dpw') else 1, 'batch_size': B, **kw}
    return ev.evaluate(
        predict_fn,
        records_dir=data['dirs'][name],
        split=name.split('/')[-1] if name.startswith('3dpw') else 'test',
        body_models_dir=data['bm'],
        **kw,
    )


def _noise(scale, seed=0):
    def perturb(key, pose, betas, transl):
        rng = np.random.default_rng([seed, key[1], key[2], key[0] % 1000])
        return (
            pose + np.float32(scale) * rng.normal(size=pose.shape).astype(np.float32),
            betas,
            transl,
        )

    return perturb


def _rotate_root(deg):
    def perturb(key, pose, betas, transl):
        p = pose.copy()
        p[:3] = (
            Rotation.from_euler('y', deg, degrees=True) * Rotation.from_rotvec(pose[:3])
        ).as_rotvec()
        return p, betas, transl

    return perturb


# ------------------------------------------------------------------------------ windows


def test_window_starts_cover_every_frame_from_its_most_central_window():
    starts, owner = ev.window_starts(7, 4, 2)
    assert starts.tolist() == [0, 2, 3]  # the last window ends at the run's end
    assert owner.tolist() == [0, 0, 0, 1, 1, 2, 2]  # frame 4: tie between windows 1, 2 -> 1
    for n, t, hop in [(1, 4, 2), (3, 4, 2), (4, 4, 2), (16, 4, 1), (17, 5, 5), (9, 1, 1)]:
        starts, owner = ev.window_starts(n, t, hop)
        assert starts[-1] == max(0, n - t) and np.all(np.diff(starts) <= hop)
        pos = np.arange(n) - starts[owner]
        assert np.all((pos >= 0) & (pos < t))  # scored from a window holding it
        centre_dist = np.abs(np.arange(n)[:, None] - (starts[None] + (t - 1) / 2))
        contains = (np.arange(n)[:, None] >= starts) & (np.arange(n)[:, None] < starts + t)
        best = np.where(contains, centre_dist, np.inf).min(1)
        np.testing.assert_array_equal(centre_dist[np.arange(n), owner], best)


@pytest.mark.slow
def test_plan_scores_every_record_once(data):
    reader = record_reader.RecordReader(data['dirs']['3dpw/test'], 'test')
    plan = ev.plan_windows(reader, pl.DatasetSpec('3dpw', split='test'), T, 2)
    scored = np.concatenate(
        [
            plan.source.unit_records(u)[plan.owned[u, : plan.source.count[u]]]
            for u in range(len(plan))
        ]
    )
    assert sorted(scored.tolist()) == list(range(len(reader)))
    for u in range(len(plan)):  # clips never cross the gap; the short track is one padded window
        recs = [reader[int(i)] for i in plan.source.unit_records(u)]
        assert len({(r['sequence'], r['track']) for r in recs}) == 1
        assert np.all(np.diff([r['frame'] for r in recs]) == 1)
    assert sorted(plan.source.count.tolist()).count(3) == 1
    capped = ev.plan_windows(reader, pl.DatasetSpec('3dpw', split='test'), T, 2, max_frames=5)
    assert capped.owned.sum() == 5


# ------------------------------------------------------------------------------ 3DPW


@pytest.mark.slow
def test_3dpw_ground_truth_scores_zero_and_batches_match_the_pipeline(data):
    calls = []
    m = _evaluate(
        data, '3dpw/test', truth_predictor(data['truth']['3dpw/test'], 'smpl', calls=calls)
    )
    n = sum(len(f) for tracks in BODY_TRACKS.values() for _, f in tracks)
    assert m['num_frames'] == m['3dpw/num_frames_joints'] == m['3dpw/num_frames_mesh'] == n
    assert m['3dpw/num_frames_accel'] == (10 - 2) + (3 - 2) + (5 - 2) + (6 - 2)
    for k in ('mpjpe', 'pa_mpjpe', 'pve', 'accel'):
        assert abs(m[f'3dpw/{k}']) < 0.01, (k, m)
    spec = pl.batch_spec(pl.PipelineConfig(data_root='', num_frames=T, batch_size=B), 44, 'smpl')
    for batch in calls:  # every call has the same shapes: a jitted predict_fn compiles once
        assert {k: (v.shape, v.dtype) for k, v in batch.items()} == spec
    assert len(calls) == -(-m['num_windows'] // B)


def _rotmats(axis_angle, joints):
    """(N, joints * 3) axis-angle -> (N, joints, 3, 3) float32 by scipy."""
    aa = np.reshape(axis_angle, (-1, 3)).astype(np.float64)
    return Rotation.from_rotvec(aa).as_matrix().reshape(-1, joints, 3, 3).astype(np.float32)


def _smpl_reference(body_model_dir, gender, pose, betas):
    """44 keypoints and vertices by smplx (independent of the JAX model)."""
    rot = _rotmats(pose, 24)
    j19 = body_models.load_j19_regressor(os.path.join(body_model_dir, 'SMPL_to_J19.pkl'))
    layer = _smplx_smpl(os.path.join(body_model_dir, 'smpl', f'SMPL_{gender.upper()}.npz'))
    verts, _, kp = _torch_smpl_keypoints(layer, rot, betas.astype(np.float32), j19)
    return kp.astype(np.float64), verts.astype(np.float64)


def _similarity_aligned(pred, gt):
    """pred aligned onto gt by scale + rotation + translation (scipy's orthogonal Procrustes)."""
    mp, mg = pred.mean(0), gt.mean(0)
    rot, sv = linalg.orthogonal_procrustes(pred - mp, gt - mg)
    return (sv / ((pred - mp) ** 2).sum()) * (pred - mp) @ rot + mg


@pytest.mark.slow
def test_3dpw_matches_an_independent_computation_with_gendered_ground_truth(data):
    truth = data['truth']['3dpw/gendered']
    perturb = _noise(0.05)
    m = _evaluate(data, '3dpw/gendered', truth_predictor(truth, 'smpl', perturb), hop=1)
    keys = sorted(truth)
    pose, betas, transl = (np.stack([truth[k][i] for k in keys]) for i in range(3))
    genders = np.array([truth[k][3] for k in keys])
    pred_kp, pred_v = _smpl_reference(
        data['bm'], 'neutral', np.stack([perturb(k, *truth[k][:3])[0] for k in keys]), betas
    )
    gt_kp, gt_v = np.zeros_like(pred_kp), np.zeros_like(pred_v)
    for g in set(genders):
        gt_kp[genders == g], gt_v[genders == g] = _smpl_reference(
            data['bm'], g, pose[genders == g], betas[genders == g]
        )
    centred = lambda kp: kp - kp[:, skeletons.HMR44_PELVIS, None]
    p14 = centred(pred_kp)[:, skeletons.HMR44_EVAL14]
    g14 = centred(gt_kp + transl[:, None])[:, skeletons.HMR44_EVAL14]
    err = {
        'mpjpe': np.linalg.norm(p14 - g14, axis=-1).mean(-1),
        'pa_mpjpe': [
            np.linalg.norm(_similarity_aligned(p, g) - g, axis=-1).mean() for p, g in zip(p14, g14)
        ],
        'pve': np.linalg.norm(
            (pred_v - pred_kp[:, skeletons.HMR44_PELVIS, None])
            - (gt_v - gt_kp[:, skeletons.HMR44_PELVIS, None]),
            axis=-1,
        ).mean(-1),
    }
    per_track = {}
    for k, p, g in zip(keys, p14, g14):
        per_track.setdefault(k[:2], []).append((k[2], p, g))
    accel = []
    for items in per_track.values():
        frames = np.array([f for f, _, _ in items])
        for run in np.split(np.arange(len(items)), np.flatnonzero(np.diff(frames) > 1) + 1):
            p = np.stack([items[i][1] for i in run])
            g = np.stack([items[i][2] for i in run])
            acc = lambda x: x[:-2] - 2 * x[1:-1] + x[2:]
            accel.extend(np.linalg.norm(acc(p) - acc(g), axis=-1).mean(-1))
    for k, v in err.items():
        assert m[f'3dpw/{k}'] == pytest.approx(1000 * np.mean(v), abs=0.02), k
    assert m['3dpw/accel'] == pytest.approx(1000 * np.mean(accel), abs=0.02)
    assert m['3dpw/pve'] > 1.0 and m['3dpw/num_frames_accel'] == len(accel)


@pytest.mark.slow
def test_3dpw_root_rotation_moves_mpjpe_but_not_pa_mpjpe(data):
    m = _evaluate(
        data, '3dpw/test', truth_predictor(data['truth']['3dpw/test'], 'smpl', _rotate_root(10.0))
    )
    assert m['3dpw/pa_mpjpe'] < 0.05
    assert m['3dpw/mpjpe'] > 10 and m['3dpw/pve'] > 10


# ------------------------------------------------------- per-joint 3D confidence (schema 3)


def _scored(protocol, conf, seed=0):
    """One track of T frames through a protocol: (result, GT (T, J, 3), prediction (T, J, 3)).
    GT joints with conf 0 get far-off coordinates: they must change nothing."""
    rng = np.random.default_rng(seed)
    t, j = conf.shape
    gt = rng.normal(0, 0.3, (t, j, 3)) + [0.0, 0.0, 4.0]
    pred = (gt + rng.normal(0, 0.03, gt.shape)).astype(np.float32)
    gt = np.where(conf[..., None] > 0, gt, 1e3).astype(np.float32)
    verts = rng.normal(0, 0.3, (1, t, 30, 3)).astype(np.float32)
    batch = {
        'kp3d': np.concatenate([gt, conf[..., None]], -1)[None].astype(np.float32),
        **{k: np.ones((1, t), bool) for k in ('has_kp3d', 'has_pose', 'has_betas')},
        'sequence_id': np.zeros((1, t), np.int32),
        'track': np.zeros((1, t), np.int64),
        'frame': np.arange(t, dtype=np.int64)[None],
    }
    pred_geo = {'keypoints_3d': pred[None], 'vertices': verts}
    p = protocol()
    p.update(batch, pred_geo, {'vertices': verts, 'keypoints': gt[None]}, np.ones((1, t), bool), {})
    return p.result(), gt.astype(np.float64), pred.astype(np.float64)


def test_3dpw_scores_only_labelled_joints():
    t = 7
    res, gt, pred = _scored(ep.ThreeDPW, np.ones((t, 44), np.float32))
    # all labelled: the unmasked protocol's numbers (fp32 sums in another order: a few ulps)
    ref = metrics.hmr2_3dpw_eval(pred.astype(np.float32), gt.astype(np.float32))
    assert res['3dpw/mpjpe'] == pytest.approx(float(np.mean(ref['mpjpe'])), rel=1e-5)
    assert res['3dpw/pa_mpjpe'] == pytest.approx(float(np.mean(ref['pa_mpjpe'])), rel=1e-5)
    assert res['3dpw/num_frames_joints'] == t and res['3dpw/num_frames_accel'] == t - 2

    conf = np.ones((t, 44), np.float32)
    unlabelled = skeletons.HMR44_EVAL14[:3]
    conf[1, unlabelled] = 0.0  # frame 1: three scored joints without 3D
    conf[2, skeletons.HMR44_PELVIS] = 0.0  # frame 2: no pelvis to centre on: not scored
    res, gt, pred = _scored(ep.ThreeDPW, conf)
    mpjpe, pa = [], []
    for f in (0, 1, 3, 4, 5, 6):
        keep = conf[f, skeletons.HMR44_EVAL14] > 0
        c = lambda kp: (kp - kp[skeletons.HMR44_PELVIS])[skeletons.HMR44_EVAL14][keep]  # noqa: E731
        p14, g14 = c(pred[f]), c(gt[f])
        mpjpe.append(np.linalg.norm(p14 - g14, axis=-1).mean())
        pa.append(np.linalg.norm(_similarity_aligned(p14, g14) - g14, axis=-1).mean())
    # fp32 metres (~1 m, ulp 1e-7 m) against a float64 reference: 1e-3 mm is ample
    assert res['3dpw/mpjpe'] == pytest.approx(1000 * np.mean(mpjpe), abs=1e-3)
    assert res['3dpw/pa_mpjpe'] == pytest.approx(1000 * np.mean(pa), abs=1e-3)
    assert res['3dpw/num_frames_joints'] == 6
    # the acceleration error needs all 14 joints: frames 3-6 are the one run left
    assert res['3dpw/num_frames_accel'] == 2


def test_freihand_scores_only_labelled_joints():
    t = 3
    res, gt, pred = _scored(ep.FreiHAND, np.ones((t, 21), np.float32))
    ref = metrics.pa_mpjpe(pred.astype(np.float32), gt.astype(np.float32))
    assert res['freihand/pa_mpjpe'] == pytest.approx(1000 * float(np.mean(ref)), rel=1e-5)
    conf = np.ones((t, 21), np.float32)
    conf[0, [3, 7, 20]] = 0.0
    conf[2] = 0.0  # nothing labelled: not scored
    res, gt, pred = _scored(ep.FreiHAND, conf)
    pa = []
    for f in (0, 1):
        keep = conf[f] > 0
        pa.append(
            np.linalg.norm(
                _similarity_aligned(pred[f][keep], gt[f][keep]) - gt[f][keep], axis=-1
            ).mean()
        )
    assert res['freihand/pa_mpjpe'] == pytest.approx(1000 * np.mean(pa), abs=1e-3)
    assert res['freihand/num_frames_joints'] == 2


# ------------------------------------------------------------------------------ FreiHAND


@pytest.mark.slow
def test_freihand_ground_truth_and_an_independent_computation(data):
    truth = data['truth']['freihand']
    # 16 frames a batch: a flat (16, 48) pose batch is where a 16-joint model could misread it.
    m = _evaluate(data, 'freihand', truth_predictor(truth, 'mano'), batch_size=16)
    assert m['freihand/pa_mpjpe'] < 0.01 and m['freihand/pa_mpvpe'] < 0.01
    assert m['freihand/f@5mm'] == 1.0 and m['freihand/f@15mm'] == 1.0
    assert m['freihand/num_frames_joints'] == m['freihand/num_frames_mesh'] == len(truth) == 5

    perturb = _noise(0.15, seed=1)
    m = _evaluate(data, 'freihand', truth_predictor(truth, 'mano', perturb), batch_size=3)
    keys = sorted(truth)
    rot = lambda p: _rotmats(p, 16)
    betas = np.stack([truth[k][1] for k in keys])
    npz = os.path.join(data['bm'], 'mano', 'MANO_RIGHT.npz')
    pred_v, _, pred_k = _torch_mano(npz, rot([perturb(k, *truth[k][:3])[0] for k in keys]), betas)
    gt_v, _, gt_k = _torch_mano(npz, rot([truth[k][0] for k in keys]), betas)
    rows = []
    for pv, pk, gv, gk in zip(pred_v, pred_k, gt_v, gt_k):
        av, ak = _similarity_aligned(pv.astype(np.float64), gv), _similarity_aligned(pk, gk)
        f = []
        for th in (0.005, 0.015):
            precision = (cKDTree(gv).query(av)[0] < th).mean()
            recall = (cKDTree(av).query(gv)[0] < th).mean()
            f.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        rows.append(
            [
                np.linalg.norm(ak - gk, axis=-1).mean() * 1000,
                np.linalg.norm(av - gv, axis=-1).mean() * 1000,
            ]
            + f
        )
    want = np.mean(rows, 0)
    assert m['freihand/pa_mpjpe'] == pytest.approx(want[0], abs=0.02)
    assert m['freihand/pa_mpvpe'] == pytest.approx(want[1], abs=0.02)
    assert m['freihand/f@5mm'] == pytest.approx(want[2], abs=1e-3)
    assert m['freihand/f@15mm'] == pytest.approx(want[3], abs=1e-3)
    assert 0 < want[2] < 1 and want[1] > 1.0


# ------------------------------------------------------------------------------ HInt


def _hint_counts(data):
    reader = record_reader.RecordReader(data['dirs']['hint'], 'test')
    vis = sum(int((r['kp2d'][:, 2] > 0.5).sum()) for r in reader)
    occ = sum(int((r['kp2d_occluded'] > 0.5).sum()) for r in reader)
    return vis, occ


@pytest.mark.slow
def test_hint_pck_ground_truth_and_a_known_shift(data):
    truth = data['truth']['hint']
    m = _evaluate(data, 'hint', truth_predictor(truth, 'mano'))
    vis, occ = _hint_counts(data)
    assert (m['hint/num_keypoints/vis'], m['hint/num_keypoints/occ']) == (vis, occ)
    assert m['hint/num_keypoints/all'] == vis + occ and m['hint/num_frames'] == 4
    assert m['hint/epick/num_frames'] == 1 and m['hint/newdays/num_frames'] == 3
    for subset in ('all', 'vis', 'occ'):
        for th in (0.05, 0.1, 0.15):
            assert m[f'hint/pck@{th:g}/{subset}'] == 1.0

    # Every keypoint moved sideways by 7.5 % of the box's longer side (nearly: depth varies by
    # < 1 % over a hand): wrong at 0.05, right at 0.1 and 0.15. Boxes are 140 x 180 px in the
    # full image; the window scales them by 256 / side of the 3:4 box.
    box_side_window = 180.0 * 256 / 180
    shift = lambda key, p, b, tr: (
        p,
        b,
        tr + np.array([0.075 * box_side_window * tr[2] / 5000, 0, 0]),
    )
    m = _evaluate(data, 'hint', truth_predictor(truth, 'mano', shift))
    for subset in ('all', 'vis', 'occ'):
        assert [m[f'hint/pck@{th:g}/{subset}'] for th in (0.05, 0.1, 0.15)] == [0.0, 1.0, 1.0]
