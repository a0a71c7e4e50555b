"""Evaluation runs around the metrics (extpose_jax/train/evaluate.py, overlays.py, run_eval.py):
several (simulated) processes merging to the single-process result, overlays and metrics.json,
bad input and corrupt records, run_eval.py's output layout.

The records with exactly known ground truth, truth_predictor and the evaluate helpers come from
test_evaluate.py (see its docstring).
"""

import concurrent.futures
import json
import os
import shutil
import threading

import cv2
import numpy as np
import pytest
import test_evaluate
from test_evaluate import (
    BODY_TRACKS,
    HINT_BOX,
    B,
    T,
    _evaluate,
    _noise,
    _record,
    _write,
    truth_predictor,
)

from data_pipelines import augment as aug
from data_pipelines import record_reader, records
from extpose_jax.train import collectives, overlays
from extpose_jax.train import evaluate as ev

# The records fixture of test_evaluate.py (module scope: built once for this module too).
data = test_evaluate.data


# ------------------------------------------------------------------------------ several processes


def _simulated_processes(n, run):
    """run(process_index, allgather) in n threads whose allgather exchanges like n processes
    (through collectives' npz bytes, as the real one); -> the n return values."""
    barrier, slots = threading.Barrier(n, timeout=300), [None] * n
    # One decode at a time: np.load parses each .npy header with ast.literal_eval, and CPython
    # 3.11's AST construction is not safe in two threads at once (it failed here once with
    # "SystemError: AST constructor recursion depth mismatch"). Real processes do not share it.
    decoding = threading.Lock()

    def allgather_of(i):
        def allgather(arrays):
            slots[i] = collectives.encode(arrays)
            barrier.wait()
            with decoding:
                out = [collectives.decode(x) for x in slots]
            barrier.wait()  # nobody overwrites a slot before everyone has read it
            return out

        return allgather

    def process(i):
        try:
            return run(i, allgather_of(i))
        except BaseException:
            barrier.abort()  # the others fail now instead of waiting out the timeout
            raise

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(process, range(n)))


@pytest.mark.slow
@pytest.mark.parametrize(
    'name, perturb, kw',
    [
        ('3dpw/gendered', _noise(0.05), {'hop': 1, 'pose_source': 'noisy_gt'}),
        ('freihand', _noise(0.15, seed=1), {}),
        ('hint', _noise(0.3, seed=2), {}),
    ],
)
def test_processes_share_the_windows_and_merge_to_the_single_process_result(
    data, name, perturb, kw
):
    """3 simulated processes: each scores only its share (p, p + 3, ...) with the same 2D
    input per window as one process; merged sums (3DPW's accel across the shares' frames, HInt's
    per-source counts with sources that differ between processes) give one process's metrics."""
    kind = 'smpl' if name.startswith('3dpw') else 'mano'
    truth = data['truth'][name]

    def run(index=None, allgather=None, count=None):
        seen = {}
        predict = truth_predictor(truth, kind, perturb)

        def predict_fn(batch):
            for position, kp in zip(batch['position'], batch['kp2d_input']):
                if position >= 0:
                    seen[int(position)] = kp
            return predict(batch)

        lines = []
        metrics = _evaluate(
            data,
            name,
            predict_fn,
            process_index=index,
            process_count=count,
            allgather=allgather,
            log=lines.append,
            **kw,
        )
        return metrics, seen, lines

    want, want_seen, _ = run()
    results = _simulated_processes(3, lambda i, allgather: run(i, allgather, 3))
    for i, (got, seen, lines) in enumerate(results):
        assert sorted(seen) == list(range(i, want['num_windows'], 3)), lines
        for position, kp in seen.items():  # 'noisy_gt' is seeded by the global window index
            np.testing.assert_array_equal(kp, want_seen[position])
        assert got.keys() == want.keys()
        for key, value in want.items():  # float64 sums in another order: ~1e-16 relative
            if isinstance(value, float) and 'pck' not in key:
                assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
            else:
                assert got[key] == value, key
    if name == 'hint':
        assert {k for k in want if k.endswith('/num_frames')} >= {
            'hint/epick/num_frames',
            'hint/newdays/num_frames',
        }


# ------------------------------------------------------------------------------ files, errors


@pytest.mark.slow
def test_overlays_and_metrics_json(data, tmp_path):
    out = tmp_path / 'overlays'
    m = _evaluate(
        data,
        '3dpw/test',
        truth_predictor(data['truth']['3dpw/test'], 'smpl'),
        overlays=3,
        overlay_dir=str(out),
    )
    pngs = sorted(os.listdir(out))
    assert len(pngs) == 3 and pngs[0].startswith('0000_seq_a_t0_f0')
    img = cv2.cvtColor(cv2.imread(str(out / pngs[0])), cv2.COLOR_BGR2RGB)
    assert img.shape == (aug.OUT_H, aug.OUT_W, 3)
    for color in (overlays.GT_COLOR, overlays.PRED_COLOR, overlays.MESH_COLOR):
        assert np.all(img == color, axis=-1).sum() > 10, color

    path = tmp_path / 'eval' / 'metrics.json'
    ev.write_metrics_json(str(path), {**m, 'hint/pck@0.05/occ': float('nan'), 'step': np.int64(3)})
    back = json.loads(path.read_text())
    assert back['hint/pck@0.05/occ'] is None and back['step'] == 3
    assert back['3dpw/num_frames_joints'] == m['3dpw/num_frames_joints']
    assert os.listdir(path.parent) == ['metrics.json']  # no temporary file left behind


def test_mesh_silhouette_is_the_union_of_triangles():
    # Two overlapping triangles: cv2.fillPoly's even-odd rule would leave the overlap empty.
    pts = np.array([[10, 10], [60, 10], [10, 60], [30, 30], [80, 30], [30, 80]], np.float64)
    mask = overlays.mesh_silhouette(pts, np.array([[0, 1, 2], [3, 4, 5]]), (100, 100))
    assert mask[35, 35] == 255 and mask[15, 15] == 255 and mask[90, 90] == 0
    pts[0] = np.nan  # a vertex behind the camera drops its triangle, not the image
    assert overlays.mesh_silhouette(pts, np.array([[0, 1, 2], [3, 4, 5]]), (100, 100))[15, 15] == 0


@pytest.mark.slow
def test_noisy_gt_input_is_deterministic(data):
    runs = []
    for _ in range(2):
        calls = []
        _evaluate(
            data,
            '3dpw/test',
            truth_predictor(data['truth']['3dpw/test'], 'smpl', calls=calls),
            pose_source='noisy_gt',
            max_frames=6,
        )
        runs.append(np.stack([c['kp2d_input'] for c in calls]))
        assert not np.allclose(runs[-1], np.stack([c['kp2d'] for c in calls]))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.slow
def test_bad_input_is_a_clear_error(data, tmp_path):
    good = truth_predictor(data['truth']['3dpw/test'], 'smpl')
    drop = lambda batch: {k: v for k, v in good(batch).items() if k != 'pred_cam'}
    with pytest.raises(KeyError, match='pred_cam'):
        _evaluate(data, '3dpw/test', drop, max_frames=2)
    squeeze = lambda batch: {**good(batch), 'betas': good(batch)['betas'][:, 0]}
    with pytest.raises(ValueError, match="'betas' has shape"):
        _evaluate(data, '3dpw/test', squeeze, max_frames=2)
    with pytest.raises(ValueError, match='hop'):
        _evaluate(data, '3dpw/test', good, hop=T + 1)
    with pytest.raises(ValueError, match='pose_source'):
        _evaluate(data, '3dpw/test', good, pose_source='oracle')
    rec = _record(
        np.zeros((21, 3)),
        np.zeros(48, np.float32),
        np.zeros(10, np.float32),
        np.array([0, 0, 7.0]),
        HINT_BOX,
        {'hand_side': 'right'},
        ('s', 0, 0),
    )
    _write(str(tmp_path / 'body'), 'body', 'test', 'mano', [rec])
    with pytest.raises(ValueError, match="no evaluation protocol for dataset 'body'"):
        ev.evaluate(
            good,
            records_dir=str(tmp_path / 'body'),
            split='test',
            body_models_dir=data['bm'],
            num_frames=1,
            batch_size=1,
        )


# ------------------------------------------------------------------------------ 2D input


def test_every_protocol_defaults_to_detections():
    """Test-time 2D poses are detections (3DPW's shipped ones, FreiHAND's and HInt's from a
    detections file), whatever the training input; an evaluator's own pose_source still wins."""
    from configs import video
    from extpose_jax.train import config as config_lib
    from extpose_jax.train import eval_protocols

    assert {n: p.pose_source for n, p in eval_protocols.PROTOCOLS.items()} == {
        '3dpw': 'detections',
        'freihand': 'detections',
        'hint': 'detections',
    }
    cfg = video.get_config('small')
    for dataset in ('freihand', 'hint'):
        e = config_lib.Evaluator('hands', dataset, 'test', 1, None, None)
        assert config_lib.eval_kwargs(cfg, e)['pose_source'] == 'detections'
        e = config_lib.Evaluator('hands', dataset, 'test', 1, None, 'noisy_gt')
        assert config_lib.eval_kwargs(cfg, e)['pose_source'] == 'noisy_gt'


@pytest.mark.slow
@pytest.mark.parametrize('name', ['freihand', 'hint'])
def test_detections_on_records_without_any_is_one_clear_error(data, name):
    """Records converted without a detections file: evaluating on detections stops before the
    model runs, naming the records and both ways out; another input is scored and labelled."""
    from extpose_jax.train import eval_protocols

    calls = []
    predict = truth_predictor(data['truth'][name], 'mano', calls=calls)
    with pytest.raises(eval_protocols.NoDetections) as e:
        _evaluate(data, name, predict, pose_source='detections')
    message = str(e.value)
    assert '\n' not in message and data['dirs'][name] in message
    assert '--detections FILE' in message and '.pose_source=noisy_gt' in message
    assert not calls  # no model call, no score
    out = _evaluate(data, name, predict, pose_source='noisy_gt')
    assert out['pose_source'] == 'noisy_gt' and out['input_2d'].startswith('simulated')


def test_training_refuses_at_start_an_evaluator_whose_records_have_no_detections(data):
    """inputs.check (before any model is built) runs the same check for every evaluator whose 2D
    input is detections, naming the evaluator's config field; another input passes."""
    import importlib

    from extpose_jax.train import eval_protocols, inputs

    cfg = importlib.import_module('configs.hand').get_config('small')
    cfg.data.datasets, cfg.data.split = (('freihand', 1.0),), 'test'
    name = 'freihand'
    cfg.evaluators[name].split = 'test'
    cfg.evaluators['hint'].every = 0  # off: only the freihand evaluator is checked
    root = str(data['root'])
    with pytest.raises(eval_protocols.NoDetections) as e:
        inputs.check(cfg, data['bm'], root)
    assert f'--config.evaluators.{name}.pose_source=noisy_gt' in str(e.value)
    assert data['dirs']['freihand'] in str(e.value)
    cfg.evaluators[name].pose_source = 'noisy_gt'
    inputs.check(cfg, data['bm'], root)


# ------------------------------------------------------------------------------ run_eval.py


@pytest.mark.slow
def test_run_eval_writes_the_training_layout(data, tmp_path, monkeypatch):
    import run_eval
    import run_train
    from configs import video
    from extpose_jax.train import checkpoint, task

    cfg = video.get_config('small')
    cfg.eval.overlays, cfg.eval.batch_size = 2, B
    assert cfg.data.pose_source == 'noisy_gt'  # training's input, which evaluation must not take
    restored = []

    def restore(path, step=None):  # a training workdir has steps, a variables directory none
        restored.append(path)
        return {}, None, (None if path.endswith('converted') else 7)

    monkeypatch.setattr(checkpoint, 'restore_variables', restore)
    # No model: the variables stay as restored and predictions are the truth.
    monkeypatch.setattr(task.Task, 'place_variables', lambda self, v, mesh, source: (v, None))
    monkeypatch.setattr(
        task,
        'make_sharded_predict_fn',
        lambda *args: truth_predictor(data['truth']['3dpw/test'], 'smpl'),
    )
    monkeypatch.setattr(
        run_train, 'prepare_data', lambda cfg: (data['bm'], str(data['root'] / 'test'))
    )
    lines = []
    res = run_eval.run(cfg, str(tmp_path), max_frames=6, log=lines.append)
    step_dir = tmp_path / 'eval' / 'pw3d' / 'step_7'
    assert res['step'] == 7 and res['out_dir'] == str(step_dir) and restored == [str(tmp_path)]
    written = json.loads((step_dir / 'metrics.json').read_text())
    assert written['num_frames'] == 6
    # The 2D input by default: the dataset's detections, and the file says so.
    assert written['pose_source'] == 'detections'
    assert written['input_2d'] == "2D detections (the records' kp2d_det)"
    latest = json.loads((tmp_path / 'eval' / 'pw3d' / 'metrics.json').read_text())
    assert latest['step'] == 7 and latest['3dpw/mpjpe'] < 0.01
    assert len(os.listdir(step_dir / 'overlays')) == 2
    assert any('3dpw/mpjpe' in line for line in lines)

    cfg.evaluators.pw3d.pose_source = 'gt'  # asked for: scored, and labelled as such
    res = run_eval.run(
        cfg,
        str(tmp_path),
        checkpoint_path='/x/converted',
        max_frames=2,
        overlays=0,
        log=lines.append,
    )
    assert res['out_dir'] == str(tmp_path / 'eval' / 'pw3d' / 'variables')
    written = json.loads((tmp_path / 'eval' / 'pw3d' / 'variables' / 'metrics.json').read_text())
    assert written['num_frames'] == 2 and written['pose_source'] == 'gt'
    assert written['input_2d'].startswith('GROUND-TRUTH 2D keypoints')
    assert any('input_2d: GROUND-TRUTH' in line for line in lines)  # printed too
    assert (
        json.loads((tmp_path / 'eval' / 'pw3d' / 'metrics.json').read_text()) == latest
    )  # untouched


@pytest.mark.slow
def test_corrupt_record_is_named_or_skipped_and_counted(data, tmp_path):
    """One record of 3dpw/test with a flipped payload byte: evaluation stops naming it, or with
    skip_corrupt scores every other frame (still exactly) and counts the skipped one once."""
    records_dir = tmp_path / '3dpw'
    shutil.copytree(data['dirs']['3dpw/test'], records_dir)
    reader = record_reader.RecordReader(records_dir, 'test')
    shard = next(k for k, o in enumerate(reader._offsets) if len(o) > 3)
    with open(reader.paths[shard], 'r+b') as f:
        f.seek(int(reader._offsets[shard][2]) + 20)  # inside record 2's payload
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    predict = truth_predictor(data['truth']['3dpw/test'], 'smpl')
    kw = dict(num_frames=T, batch_size=B, body_models_dir=data['bm'])
    with pytest.raises(records.CorruptRecordError, match='record 2 of shard'):
        ev.evaluate(predict, records_dir=str(records_dir), split='test', **kw)
    m = ev.evaluate(predict, records_dir=str(records_dir), split='test', skip_corrupt=True, **kw)
    n = sum(len(f) for tracks in BODY_TRACKS.values() for _, f in tracks)
    assert m['skipped_records'] == 1 and m['num_frames'] == n - 1
    for k in ('mpjpe', 'pa_mpjpe', 'pve'):
        assert abs(m[f'3dpw/{k}']) < 0.01, (k, m)
