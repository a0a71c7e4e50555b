"""Tests of extpose_jax/train/writers.py. Event files (written with tensorboardX) are read back by
tensorboard's own reader and protos and by tfrecord.py's CRC-checking scanner; curve PNGs are
checked by their pixels; the progress bar by its text."""

import io
import json
import os
import subprocess
import sys

import cv2
import ml_dtypes
import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.compat.proto import event_pb2

from data_pipelines import records, tfrecord
from extpose_jax.train import writers as W


def _accumulate(logdir):
    acc = event_accumulator.EventAccumulator(
        os.fspath(logdir), size_guidance={'scalars': 0, 'images': 0}
    )
    acc.Reload()
    return acc


def _scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def _event_files(logdir):
    return sorted(f for f in os.listdir(logdir) if f.startswith('events.out.tfevents.'))


# ---------------------------------------------------------------- TensorBoard


def test_scalars_and_image_round_trip_through_tensorboard(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (13, 17, 3), dtype=np.uint8)  # odd sizes catch h/w swaps
    big_step = 2**33 + 5  # a multi-byte varint
    with W.TensorBoardWriter(tmp_path) as tb:
        for step in range(4):
            tb.scalars(step, {'loss': 1.0 / (step + 1), 'lr': np.float32(1e-5 * step)})
        tb.scalars(2, {'eval/pa_mpjpe': np.asarray(51.234567)})
        tb.scalars(big_step, {'loss': -3.25})
        tb.image(3, 'val/overlay', image)
        tb.image(3, 'val/grey', image[..., 0])
        tb.image(4, 'val/rgba', np.dstack([image, image[..., :1]]))
        tb.scalars(5, {'bf16': np.asarray(1.5, ml_dtypes.bfloat16)})  # a common loss dtype

    (name,) = _event_files(tmp_path)
    assert name.startswith('events.out.tfevents.') and name.endswith(os.uname().nodename)
    acc = _accumulate(tmp_path)
    assert set(acc.Tags()['scalars']) == {'loss', 'lr', 'eval/pa_mpjpe', 'bf16'}
    expected = [(s, np.float32(1.0 / (s + 1))) for s in range(4)] + [(big_step, -3.25)]
    assert _scalars(acc, 'loss') == expected
    assert _scalars(acc, 'lr') == [(s, np.float32(1e-5 * s)) for s in range(4)]
    assert _scalars(acc, 'eval/pa_mpjpe') == [(2, np.float32(51.234567))]

    (ev,) = acc.Images('val/overlay')
    assert (ev.step, ev.height, ev.width) == (3, 13, 17)
    bgr = cv2.imdecode(np.frombuffer(ev.encoded_image_string, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(bgr[..., ::-1], image)  # PNG: lossless, channels in order
    (grey,) = acc.Images('val/grey')
    decoded = cv2.imdecode(np.frombuffer(grey.encoded_image_string, np.uint8), cv2.IMREAD_UNCHANGED)
    assert (grey.height, grey.width) == (13, 17)
    np.testing.assert_array_equal(decoded, np.dstack([image[..., 0]] * 3))  # stored as RGB
    (rgba,) = acc.Images('val/rgba')
    decoded = cv2.imdecode(np.frombuffer(rgba.encoded_image_string, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(decoded[..., [2, 1, 0, 3]], np.dstack([image, image[..., :1]]))
    assert _scalars(acc, 'bf16') == [(5, 1.5)]


def test_event_framing_crcs_and_file_version(tmp_path):
    with W.TensorBoardWriter(tmp_path) as tb:
        tb.scalars(7, {'loss': 0.5})
    path = os.path.join(tmp_path, _event_files(tmp_path)[0])
    events = [event_pb2.Event.FromString(p) for _, p in tfrecord.iter_framed(path)]  # checks CRCs
    assert events[0].file_version == 'brain.Event:2'
    assert events[1].step == 7 and events[1].summary.value[0].tag == 'loss'
    assert abs(events[1].wall_time - events[0].wall_time) < 60

    with open(path, 'r+b') as f:  # flip a byte inside the last payload
        f.seek(-6, os.SEEK_END)
        byte = f.read(1)[0]
        f.seek(-6, os.SEEK_END)
        f.write(bytes([byte ^ 0xFF]))
    with pytest.raises(records.CorruptRecordError, match='data CRC mismatch'):
        list(tfrecord.iter_framed(path))


def test_killed_writer_leaves_readable_events(tmp_path):
    tb = W.TensorBoardWriter(tmp_path)  # never closed, as after SIGKILL
    tb.scalars(1, {'loss': 2.0})
    tb.scalars(2, {'loss': 1.0})
    path = os.path.join(tmp_path, _event_files(tmp_path)[0])
    with open(path, 'ab') as f:  # and a record torn mid-write
        f.write(tfrecord.frame_record(b'\x08' * 40)[:20])
    assert _scalars(_accumulate(tmp_path), 'loss') == [(1, 2.0), (2, 1.0)]
    tb.close()


def test_resume_hides_stale_steps_in_tensorboard(tmp_path):
    with W.TensorBoardWriter(tmp_path) as tb:  # a run that reached step 8, checkpointed at 5
        for step in range(1, 9):
            tb.scalars(step, {'loss': float(step)})
    with W.TensorBoardWriter(tmp_path, start_step=5) as tb:  # same second: name must still sort
        for step in range(6, 8):
            tb.scalars(step, {'loss': 100.0 + step})
    files = _event_files(tmp_path)
    assert len(files) == 2 and files[0] < files[1]
    first = [
        event_pb2.Event.FromString(p)
        for _, p in tfrecord.iter_framed(os.path.join(tmp_path, files[1]))
    ][:2]
    assert first[0].file_version == 'brain.Event:2'
    assert first[1].step == 6 and first[1].session_log.status == event_pb2.SessionLog.START
    expected = [(s, float(s)) for s in range(1, 6)] + [(6, 106.0), (7, 107.0)]
    assert _scalars(_accumulate(tmp_path), 'loss') == expected


def test_tensorboard_writer_rejects_bad_input(tmp_path):
    with W.TensorBoardWriter(tmp_path) as tb:
        with pytest.raises(ValueError, match="'val/x' must be uint8"):
            tb.image(0, 'val/x', np.zeros((4, 4, 3), np.float32))
        with pytest.raises(ValueError, match="'loss' must be a real scalar"):
            tb.scalars(0, {'loss': np.ones(2)})
        with pytest.raises(ValueError, match='non-empty str'):
            tb.scalars(0, {'': 1.0})
    with pytest.raises(ValueError, match='closed'):
        tb.scalars(1, {'loss': 1.0})


# ---------------------------------------------------------------- JSONL


def test_jsonl_round_trip_append_and_torn_line(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    w = W.JsonlWriter(path)
    w.write(1, {'loss': np.float32(0.5), 'lr': 1e-4})
    w.write(2, {'loss': float('nan')})
    w.close()
    w = W.JsonlWriter(path)  # a resumed run appends
    w.write(3, {'loss': 0.25})
    w.close()
    rows = W.read_jsonl(path)
    assert [r['step'] for r in rows] == [1, 2, 3]
    assert rows[0] == {'step': 1, 'loss': 0.5, 'lr': 1e-4}
    assert rows[1]['loss'] is None  # NaN as null: strict JSON

    with open(path, 'a') as f:  # SIGKILL mid-write
        f.write('{"step": 4, "lo')
    assert [r['step'] for r in W.read_jsonl(path)] == [1, 2, 3]
    w = W.JsonlWriter(path)  # reopening cuts the torn line instead of gluing onto it
    w.write(4, {'loss': 0.125})
    w.close()
    assert [r['step'] for r in W.read_jsonl(path)] == [1, 2, 3, 4]


def test_jsonl_dedupe_and_resume(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    lines = [
        {'step': 10, 'loss': 1.0},
        {'step': 20, 'loss': 0.9},
        {'step': 20, 'eval/mpjpe': 80.0},
        {'step': 30, 'loss': 0.8},
        {'step': 20, 'loss': 0.7},
        {'step': 15, 'loss': 0.95},
    ]
    path.write_text(''.join(json.dumps(x) + '\n' for x in lines))
    assert W.read_jsonl(path, dedupe=True) == [
        {'step': 10, 'loss': 1.0},
        {'step': 15, 'loss': 0.95},
        {'step': 20, 'loss': 0.7, 'eval/mpjpe': 80.0},
        {'step': 30, 'loss': 0.8},
    ]

    W.JsonlWriter(path, start_step=20).close()  # resumed from a checkpoint at step 20
    assert [r['step'] for r in W.read_jsonl(path)] == [10, 20, 20, 20, 15]
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_jsonl_errors_name_the_file(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r'metrics\.jsonl: line 2 is not JSON'):
        W.read_jsonl(path)
    path.write_text('{"loss": 1}\n')
    with pytest.raises(ValueError, match='line 1 is not an object with an int "step"'):
        W.read_jsonl(path)
    with pytest.raises(ValueError, match="'step' is reserved"):
        W.JsonlWriter(tmp_path / 'b.jsonl').write(0, {'step': 1.0})


# ---------------------------------------------------------------- MetricWriter


def test_metric_writer_process_zero_only(tmp_path):
    other = W.MetricWriter(tmp_path / 'p1', process_index=1)
    other.write_scalars(1, {'loss': 1.0})
    other.write_image(1, 'img', np.zeros((2, 2, 3), np.uint8))
    other.close()
    assert not (tmp_path / 'p1').exists()

    with W.MetricWriter(tmp_path, process_index=0) as mw:
        mw.write_scalars(1, {'loss': np.asarray(1.5, np.float32)})
        mw.write_image(1, 'val/overlay', np.full((3, 5, 3), 200, np.uint8))
    assert W.read_jsonl(mw.jsonl_path) == [{'step': 1, 'loss': 1.5}]
    assert mw.jsonl_path == os.path.join(tmp_path, 'metrics.jsonl')
    acc = _accumulate(tmp_path / 'tensorboard')
    assert _scalars(acc, 'loss') == [(1, 1.5)] and acc.Tags()['images'] == ['val/overlay']


def test_metric_writer_resume_drops_stale_steps_in_both_logs(tmp_path):
    with W.MetricWriter(tmp_path, 0) as mw:  # killed after logging step 30, checkpoint at 20
        for step in (10, 20, 30):
            mw.write_scalars(step, {'loss': float(step)})
    with W.MetricWriter(tmp_path, 0, start_step=20) as mw:
        mw.write_scalars(30, {'loss': 3.0})
    assert W.read_jsonl(mw.jsonl_path) == [
        {'step': 10, 'loss': 10.0},
        {'step': 20, 'loss': 20.0},
        {'step': 30, 'loss': 3.0},
    ]
    assert _scalars(_accumulate(mw.tensorboard_dir), 'loss') == [(10, 10.0), (20, 20.0), (30, 3.0)]


# ---------------------------------------------------------------- plots


def _curve_mask(img):
    # The curve is matplotlib's tab:blue (BGR 180, 119, 31), antialiased into the white; ink,
    # grid and background are grey, with blue and red equal.
    return img[..., 0].astype(int) - img[..., 2] > 60


def _has_curve(cell):
    return _curve_mask(cell).sum() > 20


def _cells(img, h, w):
    return [
        img[r : r + h, c : c + w]
        for r in range(0, img.shape[0], h)
        for c in range(0, img.shape[1], w)
    ]


def _training_log(path):
    w = W.JsonlWriter(path)
    for step in range(0, 500, 10):
        w.write(
            step,
            {
                'loss': 2.0 * np.exp(-step / 100) + 0.01,
                'loss_adv': 0.0,
                'num_frames': 16,
                'lr': 1e-4 * min(1.0, step / 100),
            },
        )
        if step % 100 == 0:
            w.write(step, {'eval/pa_mpjpe': 90.0 - step / 10, 'eval/num_windows': 12})
    w.write(500, {'loss': float('nan'), 'loss_adv': float('inf')})
    w.close()


def test_moving_metrics_drop_flat_series(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    _training_log(path)
    assert W.moving_metrics(W.read_jsonl(path, dedupe=True)) == ['loss', 'lr', 'eval/pa_mpjpe']
    assert W.moving_metrics([{'step': 1, 'a': 1.0}, {'step': 2, 'a': None}]) == []


def test_plot_curves_one_panel_per_moving_metric(tmp_path):
    path, png = tmp_path / 'metrics.jsonl', tmp_path / 'curves.png'
    _training_log(path)
    shape = W.plot_curves(path, png, panel_size=(300, 200), cols=2)
    img = cv2.imread(os.fspath(png))
    # 3 of the 6 series move (flat num_frames / num_windows and an all-zero loss_adv are left
    # out): 3 panels in 2 columns, 2 rows; with all 6 it would be 3 rows.
    assert img is not None and img.shape[:2] == shape == (400, 600)
    cells = _cells(img, 200, 300)
    assert [_has_curve(c) for c in cells] == [True, True, True, False]
    for c in cells[:3]:  # each panel has dark ink (frame, ticks, title)
        assert (c.max(-1) < 80).sum() > 200
    assert (cells[3] == 255).all()  # the unused fourth cell stays blank

    shape = W.plot_curves(path, png, keys=['num_frames'], log_y=False)  # asked for: drawn flat
    img = cv2.imread(os.fspath(png))
    assert shape == img.shape[:2] == (260, 420) and _has_curve(img)
    with pytest.raises(ValueError, match="no finite values of metric 'nope'"):
        W.plot_curves(path, png, keys=['nope'])
    assert not [p for p in os.listdir(tmp_path) if p.endswith('.tmp')]


def test_plot_curves_log_scale_spans_decades(tmp_path):
    # A loss from 1e3 down to 1e-1: on a log axis the curve is a straight line, so its pixel
    # rows at 0%, 50% and 100% of the steps are evenly spaced; on a linear axis they are not.
    path = tmp_path / 'metrics.jsonl'
    w = W.JsonlWriter(path)
    for step in range(0, 401):
        w.write(step, {'loss': 1e3 * 10 ** (-step / 100)})
    w.close()

    def rows_at_thirds(log_y):
        png = tmp_path / f'{log_y}.png'
        W.plot_curves(path, png, log_y=log_y, panel_size=(600, 400))
        img = cv2.imread(os.fspath(png))
        mask = _curve_mask(img)
        cols = np.flatnonzero(mask.any(0))
        at = [cols[0] + 2, (cols[0] + cols[-1]) // 2, cols[-1] - 2]
        return [np.flatnonzero(mask[:, c]).mean() for c in at]

    top, mid, bottom = rows_at_thirds('auto')
    assert abs((mid - top) - (bottom - mid)) < 4
    top, mid, bottom = rows_at_thirds(False)
    assert (bottom - mid) < 0.1 * (mid - top)


def test_plot_curves_when_nothing_moves(tmp_path):
    path, png = tmp_path / 'metrics.jsonl', tmp_path / 'curves.png'
    path.write_text('{"step": 1, "loss": 1.0, "lr": 0.1}\n')
    assert W.plot_curves(path, png) == (260, 420)  # a note instead of a failed run's end
    img = cv2.imread(os.fspath(png))
    assert (img.max(-1) < 80).any() and not _has_curve(img)
    path.write_text('')
    with pytest.raises(ValueError, match='no metrics to plot'):
        W.plot_curves(path, png)


def test_headless_and_without_torch(tmp_path):
    # A fresh interpreter: no pyplot (a display backend that cannot load must not matter) and no
    # torch pulled in by tensorboardX.
    code = f"""if True:
        import sys
        from extpose_jax.train import writers as W
        with W.MetricWriter({os.fspath(tmp_path)!r}, 0) as mw:
            for s in range(3):
                mw.write_scalars(s, {{'loss': 1.0 / (s + 1)}})
        print(W.plot_curves(mw.jsonl_path, {os.fspath(tmp_path / 'c.png')!r}))
        print(sorted(m for m in ('torch', 'matplotlib.pyplot') if m in sys.modules))
    """
    env = {**os.environ, 'MPLBACKEND': 'module://no_such_backend', 'DISPLAY': ''}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, '-c', code],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split('\n')
    assert out[:2] == ['(260, 420)', '[]']
    assert _scalars(_accumulate(tmp_path / 'tensorboard'), 'loss') == [
        (0, 1.0),
        (1, np.float32(0.5)),
        (2, np.float32(1 / 3)),
    ]


# ---------------------------------------------------------------- progress


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_format_duration():
    assert W.format_duration(0) == '0:00:00'
    assert W.format_duration(3725.4) == '1:02:05'
    assert W.format_duration(90000) == '25:00:00'
    assert W.format_duration(float('inf')) == '?'


def test_progress_in_a_log_file_rate_and_eta():
    clock, out = _Clock(), io.StringIO()
    p = W.Progress(1001, start_step=100, every_s=5.0, stream=out, clock=clock)
    clock.t = 30.0  # the first (compiling) step took 30 s: excluded from the rate
    p.update(101, loss=np.float32(1.5))
    for step in range(102, 121):  # then 0.5 s per step
        clock.t += 0.5
        p.update(step, loss=None if step < 111 else 1.25)
    text = out.getvalue()
    lines = text.splitlines()
    assert '\r' not in text and len(lines) == 2  # the first update, then step 111 at t = 35
    assert '101/1001' in lines[0] and 'loss 1.5' in lines[0] and '?' in lines[0]
    # 2 steps/s; 890 steps left -> 445 s = 07:25; 5 s since the first update.
    assert '111/1001' in lines[1] and 'loss 1.25' in lines[1]
    assert '2.00step/s' in lines[1] and '[00:05<07:25' in lines[1]
    assert p.sec_per_step == pytest.approx(0.5)
    p.close()
    assert (
        out.getvalue().splitlines()[-1].startswith('train:  12%')
        and '120/1001' in (out.getvalue().splitlines()[-1])
    )


def test_progress_redraws_on_a_terminal():
    clock, out = _Clock(), _Tty()
    p = W.Progress(10, every_s=0.0, stream=out, clock=clock)
    for step in range(1, 11):
        clock.t += 1.0
        p.update(step, loss=10.0 / step)
    text = out.getvalue()
    assert text.endswith('\n') and text.count('\n') == 1  # reaching the end closed the bar
    assert text.count('\r') >= 10  # redrawn in place at every report
    last = text.rsplit('\r', 1)[1]
    assert '10/10' in last and '100%' in last and 'loss 1' in last
    p.update(10, loss=0.5)  # after the end: nothing more
    p.close()
    assert out.getvalue() == text
