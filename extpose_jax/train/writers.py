"""Training logs: TensorBoard event files, a JSONL metrics file, a progress line, curve plots.

    writer = MetricWriter(workdir, jax.process_index(), start_step=restored_step)
    writer.write_scalars(step, {'loss': loss, 'lr': lr})
    writer.write_image(step, 'val/overlay', rgb_uint8)
    writer.close()
    plot_curves(f'{workdir}/metrics.jsonl', f'{workdir}/curves.png')

Neither TensorFlow nor tensorboard is needed to write: Event protos are encoded here by hand (the
few fields used) and framed as TFRecords by data_pipelines.records. Both files are flushed after
every write, so a killed run leaves readable logs up to its last write.

Resuming: pass `start_step` (the step of the restored state). Steps after it were logged by a run
that died before its next checkpoint; they are stale. TensorBoard drops them on its own when it
reads a SessionLog START event (written here at start_step + 1), and JsonlWriter removes them from
metrics.jsonl when it opens it.
"""
from __future__ import annotations

import json
import math
import os
import re
import socket
import struct
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Self

import cv2
import numpy as np

from data_pipelines import atomic_file
from data_pipelines.records import frame_record

# ---------------------------------------------------------------- protobuf wire format

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1   # negative int64 values are sent as their 64-bit two's complement
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _pb_int(field: int, n: int) -> bytes:
    return _key(field, _VARINT) + _varint(int(n))


def _pb_double(field: int, x: float) -> bytes:
    return _key(field, _FIXED64) + struct.pack('<d', x)


def _pb_float(field: int, x: float) -> bytes:
    return _key(field, _FIXED32) + struct.pack('<f', x)


def _pb_bytes(field: int, data: bytes) -> bytes:
    return _key(field, _BYTES) + _varint(len(data)) + data


# Field numbers of tensorboard's event.proto / summary.proto (the messages TensorBoard reads).
_EVENT_WALL_TIME, _EVENT_STEP, _EVENT_FILE_VERSION = 1, 2, 3
_EVENT_SUMMARY, _EVENT_SESSION_LOG = 5, 7
_SUMMARY_VALUE = 1
_VALUE_TAG, _VALUE_SIMPLE, _VALUE_IMAGE = 1, 2, 4
_IMAGE_HEIGHT, _IMAGE_WIDTH, _IMAGE_COLORSPACE, _IMAGE_ENCODED = 1, 2, 3, 4
_SESSION_LOG_STATUS, _SESSION_START = 1, 1
_COLORSPACES = {1: 1, 3: 3, 4: 4}   # channels -> Summary.Image colorspace (grey, RGB, RGBA)

_EVENT_FILE = re.compile(r'^events\.out\.tfevents\.(\d+)\.')


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


class TensorBoardWriter:
    """One TensorBoard event file in `logdir`: scalars and images, no TensorFlow needed."""

    def __init__(self, logdir, *, start_step: int | None = None):
        self.logdir = os.fspath(logdir)
        os.makedirs(self.logdir, exist_ok=True)
        # TensorBoard reads a directory's event files in name order and only purges events it has
        # already read, so this file's name must sort after every earlier run's.
        stamps = [int(m.group(1)) for m in map(_EVENT_FILE.match, os.listdir(self.logdir)) if m]
        stamp = max([int(time.time())] + [s + 1 for s in stamps])
        self.path = os.path.join(
            self.logdir, f'events.out.tfevents.{stamp:010d}.{socket.gethostname()}')
        self._f = open(self.path, 'xb')  # noqa: SIM115 (open for the writer's life)
        self._write_event(0, _pb_bytes(_EVENT_FILE_VERSION, b'brain.Event:2'))
        if start_step is not None:
            log = _pb_int(_SESSION_LOG_STATUS, _SESSION_START)
            self._write_event(int(start_step) + 1, _pb_bytes(_EVENT_SESSION_LOG, log))
        self.flush()

    def _write_event(self, step: int, what: bytes) -> None:
        if self._f is None:
            raise ValueError(f'TensorBoardWriter for {self.path} is closed')
        event = _pb_double(_EVENT_WALL_TIME, time.time()) + _pb_int(_EVENT_STEP, step) + what
        self._f.write(frame_record(event))

    def _write_values(self, step: int, values: list[bytes]) -> None:
        summary = b''.join(_pb_bytes(_SUMMARY_VALUE, v) for v in values)
        self._write_event(int(step), _pb_bytes(_EVENT_SUMMARY, summary))
        self.flush()

    def scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [_pb_bytes(_VALUE_TAG, _check_tag(k).encode())
                  + _pb_float(_VALUE_SIMPLE, _as_float(k, v))
                  for k, v in scalars.items()]
        if values:
            self._write_values(step, values)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """`image`: uint8 HxWx3 RGB (also HxW / HxWx1 grey, HxWx4 RGBA); stored as PNG."""
        img = np.asarray(image)
        if img.ndim == 2:
            img = img[..., None]
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in _COLORSPACES:
            raise ValueError(f'image {tag!r} must be uint8 HxWx3 RGB, HxW grey or HxWx4 RGBA, '
                             f'got {img.dtype} {np.shape(image)}')
        h, w, c = img.shape
        if c > 1:   # cv2 encodes BGR(A)
            img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR if c == 3 else cv2.COLOR_RGBA2BGRA)
        ok, png = cv2.imencode('.png', img)
        if not ok:
            raise ValueError(f'cv2.imencode could not encode image {tag!r} as PNG')
        im = (_pb_int(_IMAGE_HEIGHT, h) + _pb_int(_IMAGE_WIDTH, w)
              + _pb_int(_IMAGE_COLORSPACE, _COLORSPACES[c])
              + _pb_bytes(_IMAGE_ENCODED, png.tobytes()))
        self._write_values(step, [_pb_bytes(_VALUE_TAG, _check_tag(tag).encode())
                                  + _pb_bytes(_VALUE_IMAGE, im)])

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

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
            if i == len(lines) - 1:   # no newline after it: a run killed mid-write
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
        entry = {'step': int(step), **{_check_tag(k): _finite_or_none(_as_float(k, v))
                                       for k, v in scalars.items()}}
        self._f.write(json.dumps(entry, allow_nan=False) + '\n')   # one write call: a kill tears at most this line
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
            scalars = {k: _as_float(k, v) for k, v in scalars.items()}   # one device fetch each
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


# ---------------------------------------------------------------- progress line


def format_duration(seconds: float) -> str:
    """h:mm:ss (hours unbounded); '?' when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return '?'
    s = round(seconds)
    return f'{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}'


class Progress:
    """`step 1200/10000 (12.0%) | 3.41 steps/s | ETA 0:43:02 | loss 0.1234`, every `every_s`.

    The first update() only starts the clock: it comes after the step that compiled. The rate is
    an exponential moving average of seconds per step weighted by elapsed time (time constant
    `smoothing_s`), so uneven update spacing (async dispatch) does not skew it. On a terminal the
    line is redrawn with '\\r'; in a log file each report is its own line.
    """

    def __init__(self, total_steps: int, start_step: int = 0, *, every_s: float = 10.0,
                 smoothing_s: float = 30.0, stream=None,
                 clock: Callable[[], float] = time.monotonic):
        self.total, self.every_s, self.smoothing_s = int(total_steps), every_s, smoothing_s
        self.stream = sys.stderr if stream is None else stream
        self.clock = clock
        self.step = int(start_step)
        self.sec_per_step: float | None = None
        self.loss = None
        self._last_t = self._last_report = None
        self._width = 0
        isatty = getattr(self.stream, 'isatty', None)
        self._tty = bool(isatty and isatty())

    def update(self, step: int, loss=None) -> None:
        now = self.clock()
        if loss is not None:
            self.loss = loss   # kept as given: float() on a device array waits for the step
        if self._last_t is None:   # the first update comes after the compile step: no rate yet
            self._last_t, self.step = now, int(step)
        elif step > self.step:
            dt = now - self._last_t
            sample, w = dt / (step - self.step), 1.0 - math.exp(-dt / self.smoothing_s)
            self.sec_per_step = (sample if self.sec_per_step is None
                                 else self.sec_per_step + w * (sample - self.sec_per_step))
            self._last_t, self.step = now, int(step)
        if (self._last_report is None or now - self._last_report >= self.every_s
                or self.step >= self.total):
            self._last_report = now
            self._emit(self.line())

    def line(self) -> str:
        pct = 100.0 * self.step / self.total if self.total else 100.0
        parts = [f'step {self.step}/{self.total} ({pct:.1f}%)']
        if self.sec_per_step:
            eta = (self.total - self.step) * self.sec_per_step
            parts += [f'{1.0 / self.sec_per_step:.3g} steps/s', f'ETA {format_duration(eta)}']
        else:
            parts += ['? steps/s', 'ETA ?']
        if self.loss is not None:
            parts.append(f'loss {float(np.asarray(self.loss)):.4g}')
        return ' | '.join(parts)

    def _emit(self, text: str) -> None:
        if self._tty:
            self.stream.write('\r' + text.ljust(self._width))   # pad over a longer old line
            self._width = len(text)
        else:
            self.stream.write(text + '\n')
        self.stream.flush()

    def close(self) -> None:
        if self._tty and self._width:
            self.stream.write('\n')
            self.stream.flush()
            self._width = 0


# ---------------------------------------------------------------- curve plots

_INK, _GRID, _LINE = (40, 40, 40), (225, 225, 225), (180, 90, 20)   # BGR
_FONT = cv2.FONT_HERSHEY_SIMPLEX


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


def _draw_panel(img, x0, y0, w, h, title, xs, ys, log_y) -> None:
    left, right, top, bottom = x0 + 62, x0 + w - 14, y0 + 26, y0 + h - 28
    ty = np.log10(ys) if log_y else ys
    xlo, xhi = float(xs.min()), float(xs.max())
    ylo, yhi = float(ty.min()), float(ty.max())
    if xhi == xlo:
        xlo, xhi = xlo - 1, xhi + 1
    pad = (yhi - ylo) * 0.05 or max(abs(yhi) * 0.05, 1e-3)   # flat series: centre it
    ylo, yhi = ylo - pad, yhi + pad
    px = lambda x: left + (x - xlo) / (xhi - xlo) * (right - left)
    py = lambda y: bottom - (y - ylo) / (yhi - ylo) * (bottom - top)
    cv2.putText(img, title, (x0 + 8, y0 + 17), _FONT, 0.45, _INK, 1, cv2.LINE_AA)
    for t in np.linspace(ylo, yhi, 4):
        y = round(py(t))
        cv2.line(img, (left, y), (right, y), _GRID, 1)
        label = f'{10 ** t if log_y else t:.3g}'
        cv2.putText(img, label, (x0 + 4, y + 4), _FONT, 0.35, _INK, 1, cv2.LINE_AA)
    for t in np.linspace(xlo, xhi, 4):
        x = round(px(t))
        cv2.line(img, (x, top), (x, bottom), _GRID, 1)
        label = f'{t:.0f}'
        cv2.putText(img, label, (x - 4 * len(label), bottom + 16), _FONT, 0.35, _INK, 1,
                    cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (right, bottom), _INK, 1)
    pts = np.stack([px(xs), py(ty)], -1).round().astype(np.int32)
    cv2.polylines(img, [pts], False, _LINE, 1, cv2.LINE_AA)
    if len(pts) <= 40:   # sparse series (eval metrics): mark each measurement
        for p in pts:
            cv2.circle(img, tuple(int(v) for v in p), 2, _LINE, -1, cv2.LINE_AA)


def plot_curves(jsonl_path, png_path, keys: Iterable[str] | None = None, *, log_y='auto',
                cols: int = 3, panel_size: tuple[int, int] = (420, 260)) -> tuple[int, int]:
    """Draws one panel per metric key (default: every key, in order of first appearance) of a
    metrics.jsonl file into a PNG, written atomically; returns the image's (height, width).

    log_y: 'auto' (log scale for keys containing 'loss' whose values are all > 0), True (every
    all-positive key), False, or a collection of keys. Non-finite values are skipped.
    """
    jsonl_path = os.fspath(jsonl_path)
    entries = read_jsonl(jsonl_path, dedupe=True)
    if keys is None:
        keys = list(dict.fromkeys(k for e in entries for k in e if k != 'step'))
    keys = list(keys)
    if not keys:
        raise ValueError(f'{jsonl_path}: no metrics to plot')
    w, h = panel_size
    cols = min(cols, len(keys))
    rows = -(-len(keys) // cols)
    img = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i, key in enumerate(keys):
        pts = np.array([(e['step'], e[key]) for e in entries if key in e], np.float64)
        pts = pts.reshape(-1, 2)
        pts = pts[np.isfinite(pts[:, 1])]
        if not len(pts):
            known = sorted({k for e in entries for k in e} - {'step'})
            raise ValueError(f'{jsonl_path}: no finite values of metric {key!r} (has {known})')
        log = _use_log(key, pts[:, 1], log_y)
        title = f'{key}{" (log)" if log else ""}  last {pts[-1, 1]:.4g}'
        _draw_panel(img, (i % cols) * w, (i // cols) * h, w, h, title, pts[:, 0], pts[:, 1], log)
    ok, png = cv2.imencode('.png', img)
    if not ok:
        raise ValueError(f'cv2.imencode could not encode the curves for {png_path}')
    atomic_file.atomic_write(png_path, lambda f: f.write(png.tobytes()))
    return img.shape[:2]
