"""Training logs: TensorBoard event files, a JSONL metrics file, a progress bar, curve plots.

    writer = MetricWriter(workdir, jax.process_index(), start_step=restored_step)
    writer.write_scalars(step, {'loss': loss, 'lr': lr})
    writer.write_image(step, 'val/overlay', rgb_uint8)
    writer.close()
    plot_curves(f'{workdir}/metrics.jsonl', f'{workdir}/curves.png')

Event protos, their summaries and the TFRecord framing come from tensorboardX (no TensorFlow),
the curves from matplotlib's Agg canvas, the progress bar from tqdm. Both log files are flushed
after every write, so a killed run leaves readable logs up to its last write.

Resuming: pass `start_step` (the step of the restored state). Steps after it were logged by a run
that died before its next checkpoint; they are stale. The event file starts with TensorBoard's
purge marker (a SessionLog START at start_step + 1, what tensorboardX's `purge_step` writes), so
TensorBoard drops them on its own, and JsonlWriter removes them from metrics.jsonl when it opens it.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from types import SimpleNamespace
from typing import Self

import numpy as np
from tqdm import tqdm

from data_pipelines import atomic_file

_EVENT_FILE = re.compile(r'^events\.out\.tfevents\.(\d+)\.')


@functools.cache
def _tbx() -> SimpleNamespace:
    """tensorboardX's pieces, imported on first use: only process 0 writes events."""
    # tensorboardX imports torch when it is installed, only for a type hint: seconds of import
    # and a second framework runtime inside the JAX process. Hide it while tensorboardX loads.
    hide_torch = 'torch' not in sys.modules
    if hide_torch:
        sys.modules['torch'] = None
    try:
        from tensorboardX import summary
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.record_writer import RecordWriter
    finally:
        if hide_torch:
            del sys.modules['torch']
    return SimpleNamespace(
        summary=summary, Event=Event, SessionLog=SessionLog, RecordWriter=RecordWriter
    )


def _finite_or_none(value: float):
    return value if math.isfinite(value) else None


def _as_float(key: str, value) -> float:
    arr = np.asarray(value)
    # Kind, not np.number: bfloat16 (a common loss dtype) is kind 'V' and not a np.number.
    if arr.size == 1 and arr.dtype.kind not in 'USOMmc':
        try:
            return float(arr.reshape(()))
        except (TypeError, ValueError):
            pass
    raise ValueError(f'metric {key!r} must be a real scalar, got {arr.dtype} {arr.shape}')


def _check_tag(tag) -> str:
    if not isinstance(tag, str) or not tag:
        raise ValueError(f'a metric tag must be a non-empty str, got {tag!r}')
    return tag


# ---------------------------------------------------------------- TensorBoard


class TensorBoardWriter:
    """One TensorBoard event file in `logdir`: scalars and images, written synchronously.

    tensorboardX's SummaryWriter queues events for a background thread, and its flush() does not
    wait for that queue, so a killed run could lose its last logs; this writes each event itself.
    """

    def __init__(self, logdir, *, start_step: int | None = None):
        tbx = _tbx()
        self.logdir = os.fspath(logdir)
        os.makedirs(self.logdir, exist_ok=True)
        # TensorBoard reads a directory's event files in name order and only purges events it has
        # already read, so this file's name must sort after every earlier run's (also one started
        # in the same second, or on a host whose clock is behind).
        stamps = [int(m.group(1)) for m in map(_EVENT_FILE.match, os.listdir(self.logdir)) if m]
        stamp = max([int(time.time())] + [s + 1 for s in stamps])
        self.path = os.path.join(
            self.logdir, f'events.out.tfevents.{stamp:010d}.{socket.gethostname()}'
        )
        # RecordWriter opens with 'wb': claim the name first so no earlier file is truncated.
        with open(self.path, 'xb'):
            pass
        self._records = tbx.RecordWriter(self.path)
        self._write(tbx.Event(step=0, file_version='brain.Event:2'))
        if start_step is not None:
            start = tbx.SessionLog(status=tbx.SessionLog.START)
            self._write(tbx.Event(step=int(start_step) + 1, session_log=start))
        self.flush()

    def _write(self, event) -> None:
        if self._records is None:
            raise ValueError(f'TensorBoardWriter for {self.path} is closed')
        event.wall_time = time.time()
        self._records.write(event.SerializeToString())

    def _write_summary(self, step: int, summary) -> None:
        self._write(_tbx().Event(step=int(step), summary=summary))
        self.flush()

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._records is None:
            raise ValueError(f'TensorBoardWriter for {self.path} is closed')
        # One event for all of them, so a kill cannot leave half of one step's scalars.
        values = [
            _tbx().summary.scalar(_check_tag(k), _as_float(k, v)).value[0]
            for k, v in scalars.items()
        ]
        if values:
            self._write_summary(step, _tbx().summary.Summary(value=values))

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image`: uint8 HxWx3 RGB (also HxW / HxWx1 grey, HxWx4 RGBA); stored as PNG.

        tensorboardX stores grey images as RGB (three equal channels).
        """
        img = np.asarray(image)
        if img.ndim == 2:
            img = img[..., None]
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3, 4):
            raise ValueError(
                f'image {tag!r} must be uint8 HxWx3 RGB, HxW grey or HxWx4 RGBA, '
                f'got {img.dtype} {np.shape(image)}'
            )
        if self._records is None:
            raise ValueError(f'TensorBoardWriter for {self.path} is closed')
        self._write_summary(step, _tbx().summary.image(_check_tag(tag), img, dataformats='HWC'))

    def flush(self) -> None:
        if self._records is not None:
            self._records.flush()

    def close(self) -> None:
        if self._records is not None:
            self._records.close()
            self._records = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- JSONL


def _parse_lines(path: str, data: bytes) -> tuple[list[dict], bool]:
    """(entries, whether a torn last line was dropped); any other bad line is an error."""
    entries, lines = [], data.split(b'\n')
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as e:
            if i == len(lines) - 1:  # no newline after it: a run killed mid-write
                return entries, True
            raise ValueError(f'{path}: line {i + 1} is not JSON: {e}') from e
        if not isinstance(entry, dict) or not isinstance(entry.get('step'), int):
            raise ValueError(f'{path}: line {i + 1} is not an object with an int "step"')
        entries.append(entry)
    return entries, False


def read_jsonl(path, dedupe: bool = False) -> list[dict]:
    """The entries of a metrics file, in file order; a torn last line (killed run) is ignored.

    dedupe=True: one entry per step, sorted by step; entries for the same step are merged, later
    values winning, because a resumed run may log a step again and training and eval metrics of
    one step may be separate lines.
    """
    path = os.fspath(path)
    with open(path, 'rb') as f:
        entries, _ = _parse_lines(path, f.read())
    if not dedupe:
        return entries
    merged: dict[int, dict] = {}
    for e in entries:
        merged.setdefault(e['step'], {}).update(e)
    return [merged[s] for s in sorted(merged)]


class JsonlWriter:
    """Appends {'step': int, key: float, ...} lines to `path`, flushed after each write.

    NaN and infinities are written as null: the file stays strict JSON (jq, pandas, browsers).

    On open, a torn last line (a killed run) is cut off, and with `start_step` the entries after it
    are removed (rewritten atomically), so the file continues where the restored state is.
    """

    def __init__(self, path, *, start_step: int | None = None):
        self.path = os.fspath(path)
        if os.path.exists(self.path):
            with open(self.path, 'rb') as f:
                data = f.read()
            entries, torn = _parse_lines(self.path, data)
            kept = [e for e in entries if start_step is None or e['step'] <= start_step]
            if torn or len(kept) < len(entries) or (data and not data.endswith(b'\n')):
                body = b''.join(json.dumps(e).encode() + b'\n' for e in kept)
                atomic_file.atomic_write(self.path, lambda f: f.write(body))
        self._f = open(self.path, 'a', encoding='utf-8')  # noqa: SIM115 (as above)

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if self._f is None:
            raise ValueError(f'JsonlWriter for {self.path} is closed')
        if 'step' in scalars:
            raise ValueError(f"metric key 'step' is reserved (writing {self.path})")
        entry = {
            'step': int(step),
            **{_check_tag(k): _finite_or_none(_as_float(k, v)) for k, v in scalars.items()},
        }
        # One write call: a kill tears at most this line.
        self._f.write(json.dumps(entry, allow_nan=False) + '\n')
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# ---------------------------------------------------------------- both, on process 0


class MetricWriter:
    """TensorBoard (<workdir>/tensorboard/) + JSONL (<workdir>/metrics.jsonl), process 0 only.

    On every other process each method is a no-op, so the train loop calls them unconditionally.
    """

    def __init__(self, workdir, process_index: int, *, start_step: int | None = None):
        self.active = process_index == 0
        self.tensorboard_dir = os.path.join(os.fspath(workdir), 'tensorboard')
        self.jsonl_path = os.path.join(os.fspath(workdir), 'metrics.jsonl')
        self._tb = self._jsonl = None
        if self.active:
            self._tb = TensorBoardWriter(self.tensorboard_dir, start_step=start_step)
            self._jsonl = JsonlWriter(self.jsonl_path, start_step=start_step)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.active:
            scalars = {k: _as_float(k, v) for k, v in scalars.items()}  # one device fetch each
            self._jsonl.write(step, scalars)
            self._tb.scalars(step, scalars)

    def write_image(self, step: int, tag: str, image: np.ndarray) -> None:
        if self.active:
            self._tb.image(step, tag, image)

    def close(self) -> None:
        if self.active:
            self._tb.close()
            self._jsonl.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------- progress bar


def format_duration(seconds: float) -> str:
    """h:mm:ss (hours unbounded); '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return '?'
    s = round(seconds)
    return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


class _LineStream:
    """Turns tqdm's carriage-return redraws into one line per report, for log files."""

    def __init__(self, stream):
        self.stream = stream
        self._last = None

    def write(self, text: str) -> None:
        text = text.replace('\r', '').rstrip()  # tqdm pads with spaces over a longer old line
        # close() redraws the last report; on a terminal that overwrites it, here it would repeat.
        if text and text != self._last:
            self.stream.write(text + '\n')
            self._last = text

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """A tqdm bar over training steps with the last loss, redrawn at most every `every_s`.

    The first update() only starts the bar: it comes after the step that compiled, which would
    otherwise dominate the rate. tqdm smooths the rate per report; `smoothing_s` (a time
    constant) becomes its factor for reports `every_s` apart. On a terminal the bar is redrawn in
    place; in a log file each report is its own line.
    """

    def __init__(
        self,
        total_steps: int,
        start_step: int = 0,
        *,
        every_s: float = 10.0,
        smoothing_s: float = 30.0,
        stream=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.every_s = int(total_steps), every_s
        self.smoothing = 1.0 - math.exp(-every_s / smoothing_s) if smoothing_s > 0 else 1.0
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.step = int(start_step)
        self.loss = None
        self._bar: tqdm | None = None
        self._started = False
        isatty = getattr(self.stream, 'isatty', None)
        self._tty = bool(isatty and isatty())

    def update(self, step: int, loss=None) -> None:
        if loss is not None:
            self.loss = float(np.asarray(loss))
        if self._bar is None:
            if not self._started:
                self._started, self.step = True, int(step)
                self._bar = self._start_bar()
                self._finish_if_done()
            return
        if self.loss is not None:
            self._bar.set_postfix_str(f'loss {self.loss:.4g}', refresh=False)
        if step > self.step:
            self._bar.update(int(step) - self.step)
            self.step = int(step)
            self._finish_if_done()

    def _finish_if_done(self) -> None:
        # Closing shows the last step at once, and its rate leaves out the final eval after it.
        if self.step >= self.total:
            self.close()

    def _start_bar(self) -> tqdm:
        bar = tqdm(
            total=self.total,
            initial=self.step,
            desc='train',
            unit='step',
            file=self.stream if self._tty else _LineStream(self.stream),
            mininterval=self.every_s,
            miniters=1,
            smoothing=self.smoothing,
            dynamic_ncols=self._tty,
            delay=0,
            leave=True,
            postfix=None if self.loss is None else f'loss {self.loss:.4g}',
        )
        # tqdm reads the time through `_time` (what tqdm's own tests replace); an injected clock
        # makes rates reproducible. Its timer starts now, after the compiling step.
        bar._time = self.clock
        bar.start_t = bar.last_print_t = self.clock()
        return bar

    @property
    def sec_per_step(self) -> float | None:
        rate = self._bar.format_dict['rate'] if self._bar is not None else None
        return 1.0 / rate if rate else None

    def line(self) -> str:
        """The bar's current text (tqdm's own formatting)."""
        if self._bar is None:
            return f'train: {self.step}/{self.total} (starting)'
        return str(self._bar)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# ---------------------------------------------------------------- curve plots


def _use_log(key: str, values: np.ndarray, log_y) -> bool:
    if not (values > 0).all():
        return False
    if log_y == 'auto':
        return 'loss' in key
    if isinstance(log_y, bool):
        return log_y
    if isinstance(log_y, str):
        raise TypeError(f"log_y must be 'auto', a bool or a collection of keys, got {log_y!r}")
    return key in log_y


def _series(entries: list[dict], key: str) -> np.ndarray:
    """(n, 2) array of (step, value), non-finite values (logged as null) left out."""
    pts = np.array([(e['step'], e[key]) for e in entries if e.get(key) is not None], np.float64)
    pts = pts.reshape(-1, 2)
    return pts[np.isfinite(pts[:, 1])]


def moving_metrics(entries: list[dict]) -> list[str]:
    """Keys whose finite values change, in order of first appearance: counters that never move
    (num_frames) and a term that stays 0 throughout (an adversarial loss with weight 0) get no
    panel."""
    keys = dict.fromkeys(k for e in entries for k in e if k != 'step')
    values = {k: _series(entries, k)[:, 1] for k in keys}
    return [k for k, v in values.items() if len(v) and v.max() > v.min()]


def plot_curves(
    jsonl_path,
    png_path,
    keys: Iterable[str] | None = None,
    *,
    log_y='auto',
    cols: int = 3,
    panel_size: tuple[int, int] = (420, 260),
) -> tuple[int, int]:
    """Plots metrics of a metrics.jsonl file against the step into a PNG, one panel per metric,
    written atomically; returns the image's (height, width): panel_size times the grid.

    keys: default every metric that changes (see moving_metrics); given keys are plotted even when
    flat. log_y: 'auto' (log scale for keys containing 'loss' whose values are all > 0), True
    (every all-positive key), False, or a collection of keys. Non-finite values are skipped.
    """
    # Figure + the Agg canvas, not pyplot: no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    jsonl_path = os.fspath(jsonl_path)
    entries = read_jsonl(jsonl_path, dedupe=True)
    known = sorted({k for e in entries for k in e} - {'step'})
    if not known:
        raise ValueError(f'{jsonl_path}: no metrics to plot')
    keys = moving_metrics(entries) if keys is None else list(keys)
    series = {}
    for key in keys:
        series[key] = _series(entries, key)
        if not len(series[key]):
            raise ValueError(f'{jsonl_path}: no finite values of metric {key!r} (has {known})')
    # One step axis for all panels, so sparse eval points line up with the training curves.
    lo, hi = min(e['step'] for e in entries), max(e['step'] for e in entries)
    pad = 0.03 * (hi - lo) or 1.0
    w, h = panel_size
    cols = max(1, min(cols, len(keys)))
    rows = max(1, -(-len(keys) // cols))
    dpi = 100
    fig = Figure(figsize=(cols * w / dpi, rows * h / dpi), dpi=dpi, layout='constrained')
    canvas = FigureCanvasAgg(fig)
    for i, key in enumerate(keys):
        steps, values = series[key].T
        ax = fig.add_subplot(rows, cols, i + 1)
        sparse = len(steps) <= 40  # eval metrics: mark each measurement
        ax.plot(steps, values, color='tab:blue', lw=1.2, marker='o' if sparse else None, ms=3)
        if _use_log(key, values, log_y):
            ax.set_yscale('log')
        ax.set_title(f'{key}   last {values[-1]:.4g}', fontsize=9, loc='left')
        ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel('step', fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if not keys:  # a run too short for any metric to change: say so instead of failing
        note = f'no metric changed over {len(entries)} logged step(s)\n({", ".join(known)})'
        fig.text(0.5, 0.5, note, ha='center', va='center', fontsize=9, wrap=True)
    buf = io.BytesIO()
    canvas.print_png(buf)
    atomic_file.atomic_write(png_path, lambda f: f.write(buf.getvalue()))
    width, height = canvas.get_width_height()
    return height, width
