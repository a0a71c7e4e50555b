"""The field's evaluation protocols as accumulators over batches of evaluated frames.

Each protocol receives, per batch, arrays shaped (B, T, ...): the pipeline batch (ground truth
in the deterministic crop), the predicted geometry (`keypoints_3d`, `vertices`, `cam_t` from any
body-model forward: JAX here, smplx in the PyTorch evaluation), the ground-truth mesh where the
protocol needs one, a `count` mask (frames owned by this window, see evaluate.py) and per-frame
record fields the batch does not carry. Nothing here knows about models or windows, so two
implementations that feed the same geometry print the same numbers.

| dataset  | metrics (mm unless said)                                         | origin                  |
|----------|------------------------------------------------------------------|-------------------------|
| 3dpw     | MPJPE, PA-MPJPE (HMR 2.0: 14 joints of the 44, pelvis 39 centred); PVE (pelvis-centred, GT mesh of the GENDERED model); accel (mm/frame^2, the same 14 joints, per track over consecutive frames) | 4D-Humans eval.py; PVE, accel: VIBE-style |
| freihand | PA-MPJPE (21 joints), PA-MPVPE (778 vertices; each aligned on its own), F@5mm / F@15mm (fractions, aligned mesh) | HaMeR eval.py, FreiHAND's scoring |
| hint     | PCK @ 0.05 / 0.1 / 0.15 x the annotated box's longer side (fractions), ALL / VIS / OCC, overall and per source | HaMeR's HInt evaluation |

Means are over counted frames (PCK: per joint over counted keypoints, then over joints, as
HaMeR's kpAvg). `num_frames_*` entries say how many frames each mean is over. GT joints whose
kp3d confidence is 0 neither count in a joint error nor enter its Procrustes fit, so records
with 3D on some joints only can be scored; with every joint labelled (3DPW, FreiHAND) the
numbers are the unmasked protocol's.

Each protocol's `pose_source` is the 2D input a deployed model has there: 'detections' for all
three (3DPW ships OpenPose's; FreiHAND and HInt ship none, so their converters read a
detections file, simulated in the synthetic world). Evaluating with detections on records that
carry none stops with `require_detections`' error rather than scoring a model without 2D input.

Several processes: each scores its share of the windows, then

    protocol.merge_states(collectives.allgather_arrays(protocol.state()))
    protocol.result()        # what one process scoring every window gives

`state()` is a dict of plain numpy arrays (numbers and fixed-width strings: sums, counts and,
for 3DPW's acceleration error, which needs consecutive frames that may sit on different
processes, the per-frame 14 joints); `merge_states(states)` replaces the accumulators by the
combination of several such states. Sums and counts travel, never per-process means.
"""

from __future__ import annotations

import collections

import jax
import numpy as np

from data_pipelines import augment
from extpose_jax import errors, metrics
from extpose_jax.skeletons import HMR44_EVAL14, HMR44_PELVIS

FOCAL_LENGTH = 5000.0  # HMR 2.0 / HaMeR crop camera, for a crop of UPSTREAM_CROP pixels
F_SCORE_CHUNK = 8  # frames per step of the (778 x 778) F-score distance matrices


def project_to_window(points, cam_t, focal_length: float = FOCAL_LENGTH):
    """Model-frame points (..., N, 3) seen by the crop camera -> pipeline window pixels (..., N, 2).

    The crop camera's principal point is the crop centre, which is also the centre of the
    256 x 192 window (the window is the crop's central columns), and its focal length is in
    crop pixels, which are window pixels.
    """
    p = np.asarray(points, np.float64) + np.asarray(cam_t, np.float64)[..., None, :]
    centre = np.array([augment.OUT_W / 2.0, augment.OUT_H / 2.0])
    return focal_length * p[..., :2] / p[..., 2:3] + centre


def _flat(x):
    """(B, T, ...) -> (B * T, ...): the jitted metric functions see one frame axis."""
    x = np.asarray(x)
    return x.reshape((-1,) + x.shape[2:])


class _Means:
    """Sums and counts of per-frame values, float64 on the host."""

    def __init__(self):
        self.total = collections.defaultdict(float)
        self.count = collections.defaultdict(int)

    def add(self, name: str, values, mask) -> None:
        values, mask = np.asarray(values, np.float64), np.asarray(mask, bool)
        mask = mask.reshape(mask.shape + (1,) * (values.ndim - mask.ndim))
        mask = np.broadcast_to(mask, values.shape)
        self.total[name] += float(np.where(mask, values, 0.0).sum())
        self.count[name] += int(mask.sum())

    def mean(self, name: str) -> float:
        n = self.count.get(name, 0)
        return self.total[name] / n if n else float('nan')

    def state(self) -> dict:
        names = sorted(self.total)
        return {
            'means/names': np.array(names, str),
            'means/total': np.array([self.total[n] for n in names], np.float64),
            'means/count': np.array([self.count[n] for n in names], np.int64),
        }

    def merge_states(self, states) -> None:
        self.total.clear()
        self.count.clear()
        for s in states:
            for name, total, count in zip(s['means/names'], s['means/total'], s['means/count']):
                self.total[str(name)] += float(total)
                self.count[str(name)] += int(count)


# ---------------------------------------------------------------------------------- 3DPW


def _kp3d_valid(gt_kp):
    """Joints with a 3D label: (..., J) from kp3d (..., J, 4) (confidence last)."""
    return np.asarray(gt_kp)[..., 3] > 0


@jax.jit
def _body_frame_metrics(pred_kp, gt_kp, pred_verts, gt_verts, gt_model_kp):
    gt_kp, labelled = gt_kp[..., :3], gt_kp[..., 3] > 0
    scores = metrics.hmr2_3dpw_eval(pred_kp, gt_kp, labelled)
    pve = 1000.0 * metrics.pve(
        pred_verts, gt_verts, pred_kp[:, HMR44_PELVIS], gt_model_kp[:, HMR44_PELVIS]
    )
    eval14 = lambda kp: metrics.center(kp, HMR44_PELVIS)[:, HMR44_EVAL14]
    return scores['mpjpe'], scores['pa_mpjpe'], pve, eval14(pred_kp), eval14(gt_kp)


class ThreeDPW:
    """3DPW. GT joints are the records' kp3d (the gendered model's 44 keypoints); GT vertices
    come from the gendered model at the record's pose and betas (`gt_mesh`), predictions from
    the neutral model, as HMR 2.0 evaluates. The acceleration error is averaged over every
    frame whose two neighbours are consecutive frames of the same track with GT joints."""

    name = '3dpw'
    kind = 'smpl'  # the model kind it scores
    headline = 'pa_mpjpe'  # the one number a run's summary line shows (<name>/<headline>)
    # The 2D-pose input a deployed model has here: 3DPW ships OpenPose detections (poses2d).
    pose_source = 'detections'
    needs_gt_mesh = True
    record_fields = ('gender',)
    _ROWS = {
        'accel/track': ((2,), np.int64),
        'accel/frame': ((), np.int64),
        'accel/pred14': ((14, 3), np.float32),
        'accel/gt14': ((14, 3), np.float32),
    }

    def __init__(self):
        self.means = _Means()
        # Per counted frame with GT joints, appended per batch: (sequence id, track), frame and
        # the pelvis-centred 14 joints, kept float32 as computed (float64 only in _accel).
        self.rows = {k: [] for k in self._ROWS}

    def update(self, batch, pred, gt_mesh, count, fields) -> None:
        labelled = _kp3d_valid(batch['kp3d'])
        eval14 = labelled[..., HMR44_EVAL14]
        # Scores need the pelvis (both sets are centred on it) and a scored joint; the
        # acceleration error compares the same 14 joints across frames, so it takes a frame
        # only with all of them (a partial frame breaks its run, as a missing frame does).
        joints = count & batch['has_kp3d'] & labelled[..., HMR44_PELVIS] & eval14.any(-1)
        mesh = count & batch['has_pose'] & batch['has_betas']
        mpjpe, pa, pve, pred14, gt14 = _body_frame_metrics(
            _flat(pred['keypoints_3d']),
            _flat(batch['kp3d']),
            _flat(pred['vertices']),
            _flat(gt_mesh['vertices']),
            _flat(gt_mesh['keypoints']),
        )
        self.means.add('mpjpe', mpjpe, _flat(joints))
        self.means.add('pa_mpjpe', pa, _flat(joints))
        self.means.add('pve', pve, _flat(mesh))
        keep = _flat(joints & eval14.all(-1))
        track = np.stack([_flat(batch['sequence_id']), _flat(batch['track'])], -1)
        for key, value in (
            ('accel/track', track),
            ('accel/frame', _flat(batch['frame'])),
            ('accel/pred14', pred14),
            ('accel/gt14', gt14),
        ):
            self.rows[key].append(np.asarray(value)[keep].astype(self._ROWS[key][1]))

    def state(self) -> dict:
        rows = {
            k: (np.concatenate(v) if v else np.zeros((0,) + self._ROWS[k][0], self._ROWS[k][1]))
            for k, v in self.rows.items()
        }
        return {**self.means.state(), **rows}

    def merge_states(self, states) -> None:
        self.means.merge_states(states)
        self.rows = {k: [np.asarray(s[k], self._ROWS[k][1]) for s in states] for k in self._ROWS}

    def _accel(self):
        rows = self.state()
        track, frame = rows['accel/track'], rows['accel/frame']
        # Every frame is scored once, so (track, frame) is unique and this order is the same
        # whichever process scored which frame.
        order = np.lexsort((frame, track[:, 1], track[:, 0]))
        track, frame = track[order], frame[order]
        pred = rows['accel/pred14'][order].astype(np.float64)
        gt = rows['accel/gt14'][order].astype(np.float64)
        new_run = (np.diff(frame) != 1) | np.any(np.diff(track, axis=0) != 0, axis=1)
        cuts = np.flatnonzero(new_run) + 1
        total, count = 0.0, 0
        for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(frame)]):
            if hi - lo < 3:
                continue
            err, _ = metrics.accel_error_per_frame(pred[lo:hi], gt[lo:hi])
            total += 1000.0 * float(np.sum(err))
            count += len(err)
        return (total / count if count else float('nan')), count

    def result(self) -> dict[str, float]:
        accel, n_accel = self._accel()
        m = self.means
        return {
            '3dpw/mpjpe': m.mean('mpjpe'),
            '3dpw/pa_mpjpe': m.mean('pa_mpjpe'),
            '3dpw/pve': m.mean('pve'),
            '3dpw/accel': accel,
            '3dpw/num_frames_joints': m.count['mpjpe'],
            '3dpw/num_frames_mesh': m.count['pve'],
            '3dpw/num_frames_accel': n_accel,
        }


# ------------------------------------------------------------------------------ FreiHAND


@jax.jit
def _hand_frame_metrics(pred_kp, gt_kp, pred_verts, gt_verts):
    pa_joints = 1000.0 * metrics.pa_mpjpe(pred_kp, gt_kp[..., :3], gt_kp[..., 3] > 0)
    pa_verts = 1000.0 * metrics.pa_pve(pred_verts, gt_verts)
    # One frame at a time in chunks: the nearest-neighbour matrices are 778 x 778 per frame.
    f = jax.lax.map(
        lambda pg: metrics.f_score(pg[0], pg[1], metrics.FREIHAND_F_THRESHOLDS, align=True).f,
        (pred_verts, gt_verts),
        batch_size=F_SCORE_CHUNK,
    )
    return pa_joints, pa_verts, f


class FreiHAND:
    """FreiHAND. GT joints are the records' kp3d (21, OpenPose order); GT vertices come from the
    right MANO at the record's pose and betas (left hands arrive mirrored, as predicted)."""

    name = 'freihand'
    kind = 'mano'
    headline = 'pa_mpjpe'
    # No detections ship with it: convert_freihand reads a detections file (docs/data.md).
    pose_source = 'detections'
    needs_gt_mesh = True
    record_fields = ()

    def __init__(self):
        self.means = _Means()

    def update(self, batch, pred, gt_mesh, count, fields) -> None:
        joints = _flat(count & batch['has_kp3d'] & _kp3d_valid(batch['kp3d']).any(-1))
        mesh = _flat(count & batch['has_pose'] & batch['has_betas'])
        pa_j, pa_v, f = _hand_frame_metrics(
            _flat(pred['keypoints_3d']),
            _flat(batch['kp3d']),
            _flat(pred['vertices']),
            _flat(gt_mesh['vertices']),
        )
        self.means.add('pa_mpjpe', pa_j, joints)
        self.means.add('pa_mpvpe', pa_v, mesh)
        f = np.asarray(f)
        for i, th in enumerate(metrics.FREIHAND_F_THRESHOLDS):
            self.means.add(f'f@{th * 1000:g}mm', f[:, i], mesh)

    def state(self) -> dict:
        return self.means.state()

    def merge_states(self, states) -> None:
        self.means.merge_states(states)

    def result(self) -> dict[str, float]:
        m = self.means
        out = {'freihand/pa_mpjpe': m.mean('pa_mpjpe'), 'freihand/pa_mpvpe': m.mean('pa_mpvpe')}
        for th in metrics.FREIHAND_F_THRESHOLDS:
            out[f'freihand/f@{th * 1000:g}mm'] = m.mean(f'f@{th * 1000:g}mm')
        out['freihand/num_frames_joints'] = m.count['pa_mpjpe']
        out['freihand/num_frames_mesh'] = m.count['pa_mpvpe']
        return out


# ---------------------------------------------------------------------------------- HInt


def hint_source(sequence: str) -> str:
    """'epick_img/EK_0064_...' -> 'epick' (convert_hint names sequences '<source>_<kind>/<id>')."""
    return sequence.split('/', 1)[0].rsplit('_', 1)[0]


class HInt:
    """HInt PCK in window pixels. The window is a similarity of the full image (no augmentation),
    so distances and the threshold (t x the annotated box's longer side, carried through the
    batch's affine) keep their ratio. VIS: keypoints with visible GT (kp2d conf > 0.5); OCC:
    annotated but occluded (kp2d_occluded > 0.5); ALL: either."""

    name = 'hint'
    kind = 'mano'
    headline = 'pck@0.1/all'
    pose_source = 'detections'  # as FreiHAND (convert_hint's detections file)
    needs_gt_mesh = False
    record_fields = ('box', 'kp2d_occluded', 'sequence')
    subsets = ('all', 'vis', 'occ')

    def __init__(self, thresholds=metrics.HINT_PCK_THRESHOLDS):
        self.thresholds = tuple(thresholds)
        self.counts = {}  # (source, subset) -> [correct (T, J), counted (J,)]
        self.frames = collections.Counter()

    def update(self, batch, pred, gt_mesh, count, fields) -> None:
        pred2d = project_to_window(pred['keypoints_3d'], pred['cam_t'])
        gt = batch['kp2d']
        vis = gt[..., 2] > 0.5
        occ = fields['kp2d_occluded'] > 0.5
        box = fields['box']
        side = np.maximum(box[..., 2] - box[..., 0], box[..., 3] - box[..., 1])
        side = side * np.sqrt(np.abs(np.linalg.det(batch['affine'][..., :2, :2])))
        sources = np.vectorize(hint_source, otypes=[object])(fields['sequence'])
        for source in sorted(set(sources[count])):
            frames = count & (sources == source)
            self.frames[source] += int(frames.sum())
            for subset, joints in (('all', vis | occ), ('vis', vis), ('occ', occ)):
                mask = (joints & frames[..., None]).astype(np.float32)
                correct, counted = metrics.pck_counts(
                    pred2d[frames], gt[frames], mask[frames], side[frames], self.thresholds
                )
                acc = self.counts.setdefault((source, subset), [0, 0])
                acc[0] = acc[0] + np.asarray(correct, np.int64)
                acc[1] = acc[1] + np.asarray(counted, np.int64)

    def state(self) -> dict:
        """Per source (the sources differ between processes): frames, and per subset the PCK
        counts: correct (S, subsets, thresholds, J), counted (S, subsets, J)."""
        sources = sorted(self.frames)
        pick = lambda i: np.array(
            [[self.counts[(s, sub)][i] for sub in self.subsets] for s in sources], np.int64
        )
        return {
            'hint/sources': np.array(sources, str),
            'hint/frames': np.array([self.frames[s] for s in sources], np.int64),
            'hint/correct': pick(0),
            'hint/counted': pick(1),
        }

    def merge_states(self, states) -> None:
        self.counts, self.frames = {}, collections.Counter()
        for s in states:
            for i, source in enumerate(map(str, s['hint/sources'])):
                self.frames[source] += int(s['hint/frames'][i])
                for k, subset in enumerate(self.subsets):
                    acc = self.counts.setdefault((source, subset), [0, 0])
                    acc[0] = acc[0] + s['hint/correct'][i, k]
                    acc[1] = acc[1] + s['hint/counted'][i, k]

    def result(self) -> dict[str, float]:
        out = {}
        sources = sorted(self.frames)
        for subset in self.subsets:
            accs = {s: self.counts[(s, subset)] for s in sources}
            groups = [('hint', list(accs.values()))] + [(f'hint/{s}', [accs[s]]) for s in sources]
            for prefix, group in groups:
                correct = sum((a[0] for a in group), np.zeros((len(self.thresholds), 1), np.int64))
                counted = sum((a[1] for a in group), np.zeros((1,), np.int64))
                pck = metrics.pck_from_counts(correct, counted, self.thresholds)
                for th in self.thresholds:
                    out[f'{prefix}/pck@{th:g}/{subset}'] = float(pck[float(th)])
                out[f'{prefix}/num_keypoints/{subset}'] = int(counted.sum())
        out['hint/num_frames'] = int(sum(self.frames.values()))
        for source in sources:
            out[f'hint/{source}/num_frames'] = self.frames[source]
        return out


PROTOCOLS = {p.name: p for p in (ThreeDPW, FreiHAND, HInt)}

# metrics.json's `input_2d`: where the scored model's 2D poses came from, in words.
INPUT_2D = {
    # shipped with the dataset (3DPW) or read from a detections file by the converter
    'detections': "2D detections (the records' kp2d_det)",
    'noisy_gt': 'simulated detections: the ground truth through the detector-noise model',
    'gt': 'GROUND-TRUTH 2D keypoints: an upper bound, not what a deployed model has',
}


class NoDetections(errors.UserError):
    """Detections asked for as the 2D input of records that carry none."""


def require_detections(reader, indices, evaluator: str = '<name>') -> None:
    """NoDetections unless one of the records `indices` of `reader` has a detection.

    Reads stop at the first record with one, so records that carry detections cost a read or
    two; only detection-less records are read through, just before failing, so the error comes
    before any model runs instead of a score without 2D input."""
    for i in indices:
        record = reader[int(i)]
        if record is not None and record['has_kp2d_det']:
            return
    raise NoDetections(
        f"pose_source='detections' but no evaluated record of {reader.data_dir} (dataset "
        f'{reader.name!r}, split {reader.split!r}) has a 2D detection (has_kp2d_det): convert '
        f'the dataset again with --detections FILE (docs/data.md), or evaluate on another 2D '
        f'input, e.g. --config.evaluators.{evaluator}.pose_source=noisy_gt (metrics.json labels it)'
    )


def make(dataset: str):
    """The protocol object of a dataset name (the records' dataset_info name)."""
    if dataset not in PROTOCOLS:
        raise ValueError(
            f'no evaluation protocol for dataset {dataset!r}; known: {sorted(PROTOCOLS)}'
        )
    return PROTOCOLS[dataset]()
