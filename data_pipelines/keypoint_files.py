"""Users' 2D keypoint files -> per-frame lists of `Detection`s.

    read_keypoints(path, num_frames=None) -> {frame: [Detection, ...]}

The format follows from `path`: a folder is OpenPose output, a `.json` file COCO-style results, a
`.pkl` file a 3DPW sequence. Coordinates everywhere are full-image pixels (x right, y down), as
the files store them; nothing is rescaled. A joint is *detected* when its confidence is > 0; an
undetected joint is a zero row (0, 0, 0), whatever the file gives it, as in the records.

OpenPose folder (`--write_json`): one `<name>_<frame>_keypoints.json` per frame, e.g.
`video_000000000012_keypoints.json`. The frame index is the last run of digits in the name before
`_keypoints.json` (12 here); when some name has no digits, the files' sorted order is used
instead. Each file is `{"people": [person, ...], ...}`; a person has
  - `pose_keypoints_2d`: flat [x, y, c, ...], 75 numbers (BODY_25, layout `body25`) or 54 (COCO-18,
    layout `openpose18`); empty or missing: no body;
  - `hand_left_keypoints_2d`, `hand_right_keypoints_2d`: 63 numbers each (layout `hand21`); empty
    or missing: no hand. Each becomes its own Detection (part `left_hand` / `right_hand`);
  - `person_id`: an int or a one-element list; -1 means untracked, anything else is the track id.
Face and 3D keypoints are ignored. Boxes are the tight boxes of the detected joints; scores the
mean confidence of the detected joints.

COCO-style results `.json`: a list of records, or a dict whose `"annotations"` is that list (a
COCO dataset file). A record is
  `{"image_id": int | str, "keypoints": [x, y, v, ...], "bbox": [x, y, w, h], "score": float,
    "category_id": int, "track_id": int, "frame": int, "hand": "left" | "right", "is_right": 0 | 1}`
with only `keypoints` required (`image_id` when there is no `frame`). 17 joints are a COCO-17 body
(layout `coco17`), 21 a hand (layout `hand21`; side from `hand`, else `is_right`, else unknown:
part `hand`). `v` is taken as the confidence. `bbox` (x, y, width, height) becomes x0, y0, x1, y1;
without it the box is the joints' tight box. Without `score` the score is the mean confidence of
the detected joints (so 2.0 for a COCO ground-truth record whose labelled joints all have v = 2).
Frame index: `frame` if present, else `image_id` when it is an int, else the rank of the string
`image_id` among the file's distinct string ids, sorted.

3DPW sequence `.pkl` (`sequenceFiles/<split>/<seq>.pkl`): read by
`data_pipelines.convert_3dpw.load_sequence` (the project's restricted pickle reader; this module
never unpickles anything itself). `poses2d[actor]` is (N, 18, 3) OpenPose-18 x, y, confidence;
frame = row index, track id = actor index.

Every format: a detection with fewer than two detected joints is dropped (no box, nothing to fit).
Frames a file covers but where nobody is detected (an OpenPose file with no people, a 3DPW frame)
map to empty lists; with `num_frames` every frame 0 .. num_frames - 1 does, and a frame beyond is
an error. Every problem with the input raises KeypointFileError: one line naming the file and the
record / key.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from extpose_jax import errors, skeletons

PARTS = ('body', 'left_hand', 'right_hand', 'hand')
OPENPOSE_SUFFIX = '_keypoints.json'
# OpenPose person key -> (part, the layouts its length may denote).
_OPENPOSE_KEYS = (
    ('pose_keypoints_2d', 'body', ('body25', 'openpose18')),
    ('hand_left_keypoints_2d', 'left_hand', ('hand21',)),
    ('hand_right_keypoints_2d', 'right_hand', ('hand21',)),
)
_COCO_LAYOUTS = ('coco17', 'hand21')


class KeypointFileError(errors.DataFileError):
    """A keypoint file (or folder) that cannot be read; the message names it and the record."""


@dataclasses.dataclass(frozen=True, eq=False)
class Detection:
    """One person's body or one hand in one frame. Arrays are float64 read-only copies.

    keypoints: (J, 3) x, y, confidence in full-image pixels, J = the layout's joint count.
    box: (4,) x0, y0, x1, y1 in pixels. score: the detector's, or the mean detected confidence.
    track_id: the file's track / person id, None when untracked. part: one of PARTS.
    """

    frame: int
    keypoints: np.ndarray
    layout: str
    box: np.ndarray
    score: float
    track_id: int | None
    part: str
    box_given: bool = False  # the file's box (a person detector's), not the joints' tight box
    entry: int | None = None  # OpenPose: the frame file's person entry (a body and its hands)

    def __post_init__(self):
        joints = skeletons.get_layout(self.layout).num_joints
        kp = np.array(self.keypoints, dtype=np.float64)  # a copy nobody else can change
        if kp.shape != (joints, 3):
            raise ValueError(f'keypoints {kp.shape}, expected ({joints}, 3)')
        kp[kp[:, 2] <= 0] = 0.0  # an undetected joint is a zero row, as in the records
        for name, a in (('keypoints', kp), ('box', np.array(self.box, dtype=np.float64))):
            a.flags.writeable = False
            object.__setattr__(self, name, a)
        if self.box.shape != (4,):
            raise ValueError(f'box {self.box.shape}, expected (4,)')
        if self.part not in PARTS:
            raise ValueError(f'part {self.part!r}, expected one of {PARTS}')


def read_keypoints(path, num_frames: int | None = None) -> dict[int, list[Detection]]:
    """{frame: detections in file order}, sorted by frame (see the module docstring)."""
    path = os.fspath(path)
    if num_frames is not None and num_frames < 0:
        raise ValueError(f'num_frames must be >= 0, got {num_frames}')
    ext = os.path.splitext(path)[1].lower()
    if os.path.isdir(path):
        found, covered = _read_openpose_folder(path)
    elif not os.path.isfile(path):
        raise KeypointFileError(f'{path}: no such keypoint file or folder')
    elif ext == '.json':
        found, covered = _read_coco(path)
    elif ext == '.pkl':
        found, covered = _read_3dpw(path)
    else:
        raise KeypointFileError(
            f'{path}: unknown keypoint file type {ext or "(no extension)"!r}; expected an '
            f'OpenPose folder of *{OPENPOSE_SUFFIX}, a COCO-style .json or a 3DPW .pkl'
        )
    return _by_frame(found, covered, num_frames)


def _by_frame(found, covered, num_frames):
    """found: (where, Detection) pairs; covered: (where, frame) for every frame the file names,
    those of the found detections included."""
    frames = {} if num_frames is None else {f: [] for f in range(num_frames)}
    for where, frame in covered:
        if num_frames is not None and frame >= num_frames:
            raise KeypointFileError(
                f'{where}: frame {frame} is beyond the video ({num_frames} frames: 0 .. '
                f'{num_frames - 1})'
            )
        frames.setdefault(frame, [])
    for _, detection in found:
        frames[detection.frame].append(detection)
    return dict(sorted(frames.items()))


# ---------------------------------------------------------------------------- shared parsing


def _load_json(path: str):
    try:
        with open(path, 'rb') as f:
            return json.load(f)
    except OSError as e:
        raise KeypointFileError(f'{path}: cannot read ({e.strerror or e})') from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise KeypointFileError(f'{path}: not valid JSON ({errors.one_line(e)})') from e


def _numbers(where: str, value) -> np.ndarray:
    """A flat list of finite JSON numbers -> float64 array."""
    # No dtype: numpy would turn null into NaN and "1.5" into 1.5; the inferred dtype shows both.
    try:
        a = np.asarray(value) if isinstance(value, list) else None
    except ValueError:  # ragged nested lists
        a = None
    if a is None or a.ndim != 1 or (a.size and a.dtype.kind not in 'iuf'):
        raise KeypointFileError(f'{where}: expected a flat list of numbers')
    if not np.all(np.isfinite(a)):
        raise KeypointFileError(f'{where}: has non-finite values (NaN or infinity)')
    return a.astype(np.float64)


def _layout_for(where: str, count: int, layouts) -> str:
    """The layout whose 3 x joint count is `count`."""
    known = {3 * skeletons.get_layout(name).num_joints: name for name in layouts}
    if count not in known:
        listed = ', '.join(f'{n} ({name})' for n, name in known.items())
        raise KeypointFileError(f'{where}: {count} numbers; known lengths (3 x joints): {listed}')
    return known[count]


def _integer(where: str, value) -> int:
    # bool is an int subclass; true/false is never an id or a frame.
    if isinstance(value, bool) or not isinstance(value, int):
        raise KeypointFileError(f'{where}: expected an integer, got {value!r}')
    return value


def _frame(where: str, value) -> int:
    frame = _integer(where, value)
    if frame < 0:
        raise KeypointFileError(f'{where}: negative frame {frame}')
    return frame


def _detection(
    frame, flat, layout, part, track_id, box=None, score=None, entry=None
) -> Detection | None:
    """None when fewer than two joints are detected."""
    keypoints = flat.reshape(-1, 3)
    detected = keypoints[:, 2] > 0
    if detected.sum() < 2:
        return None
    given = box is not None
    if not given:
        xy = keypoints[detected, :2]
        box = np.concatenate([xy.min(axis=0), xy.max(axis=0)])
    if score is None:
        score = keypoints[detected, 2].mean()
    return Detection(frame, keypoints, layout, box, float(score), track_id, part, given, entry)


# ---------------------------------------------------------------------------- OpenPose


def _openpose_files(folder: str) -> list[tuple[int, str]]:
    names = sorted(n for n in os.listdir(folder) if n.endswith(OPENPOSE_SUFFIX))
    if not names:
        raise KeypointFileError(
            f'{folder}: no *{OPENPOSE_SUFFIX} files (expected an OpenPose --write_json folder)'
        )
    digits = [re.findall(r'\d+', n[: -len(OPENPOSE_SUFFIX)]) for n in names]
    if all(digits):
        frames = [int(d[-1]) for d in digits]
    else:
        frames = list(range(len(names)))
    seen = {}
    for frame, name in zip(frames, names):
        if frame in seen:
            # Two videos' outputs in one folder would otherwise interleave silently.
            raise KeypointFileError(
                f'{os.path.join(folder, name)}: frame {frame} again (also in {seen[frame]})'
            )
        seen[frame] = name
    return [(f, os.path.join(folder, n)) for f, n in zip(frames, names)]


def _read_openpose_folder(folder: str):
    found, covered = [], []
    for frame, path in _openpose_files(folder):
        covered.append((path, frame))
        found += _openpose_people(path, frame)
    return found, covered


def _openpose_track(where: str, value) -> int | None:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    track = _integer(where, value)
    return None if track == -1 else track


def _openpose_people(path: str, frame: int):
    data = _load_json(path)
    people = data.get('people') if isinstance(data, dict) else None
    if not isinstance(people, list):
        raise KeypointFileError(f"{path}: key 'people' missing or not a list")
    found = []
    for i, person in enumerate(people):
        where = f'{path}: people[{i}]'
        if not isinstance(person, dict):
            raise KeypointFileError(f'{where}: expected an object')
        track = _openpose_track(f"{where}, key 'person_id'", person.get('person_id', -1))
        for key, part, layouts in _OPENPOSE_KEYS:
            key_where = f'{where}, key {key!r}'
            flat = _numbers(key_where, person.get(key, []))
            if flat.size == 0:
                continue
            layout = _layout_for(key_where, flat.size, layouts)
            detection = _detection(frame, flat, layout, part, track, entry=i)
            if detection is not None:
                found.append((key_where, detection))
    return found


# ---------------------------------------------------------------------------- COCO-style


def _coco_records(path: str, data) -> list[tuple[str, dict]]:
    """(where, record) pairs from a result list or a dataset dict."""
    if isinstance(data, dict):
        if 'annotations' not in data:
            hint = ' (one OpenPose frame? pass its folder)' if 'people' in data else ''
            raise KeypointFileError(f"{path}: a dict without key 'annotations'{hint}")
        data, label = data['annotations'], 'annotations[{}]'
        if not isinstance(data, list):
            raise KeypointFileError(f"{path}: key 'annotations' is not a list")
    elif isinstance(data, list):
        label = 'record {}'
    else:
        raise KeypointFileError(f'{path}: expected a list of records or a COCO dataset dict')
    pairs = [(f'{path}: {label.format(i)}', r) for i, r in enumerate(data)]
    for where, record in pairs:
        if not isinstance(record, dict):
            raise KeypointFileError(f'{where}: expected an object')
    return pairs


def _coco_frames(path: str, pairs) -> list[int]:
    """Each record's frame index (rule in the module docstring)."""
    by_id = [(w, r.get('image_id')) for w, r in pairs if 'frame' not in r]
    names = sorted({i for _, i in by_id if isinstance(i, str)})
    if names and any(isinstance(i, int) for _, i in by_id):
        # A string's rank and an int id could name the same frame.
        raise KeypointFileError(f"{path}: image_id mixes integers and strings; add 'frame' keys")
    rank = {name: i for i, name in enumerate(names)}
    frames = []
    for where, record in pairs:
        if 'frame' in record:
            frames.append(_frame(f"{where}, key 'frame'", record['frame']))
        elif isinstance(record.get('image_id'), str):
            frames.append(rank[record['image_id']])
        elif 'image_id' in record:
            frames.append(_frame(f"{where}, key 'image_id'", record['image_id']))
        else:
            raise KeypointFileError(f"{where}: neither 'frame' nor 'image_id'")
    return frames


def _coco_part(where: str, record: dict, layout: str) -> str:
    if layout == 'coco17':
        return 'body'
    if 'hand' in record:
        if record['hand'] not in ('left', 'right'):
            raise KeypointFileError(
                f"{where}, key 'hand': {record['hand']!r}, expected 'left' or 'right'"
            )
        return f'{record["hand"]}_hand'
    if 'is_right' in record:
        if record['is_right'] not in (0, 1):
            raise KeypointFileError(
                f"{where}, key 'is_right': {record['is_right']!r}, expected 0 or 1"
            )
        return 'right_hand' if record['is_right'] else 'left_hand'
    return 'hand'


def _coco_box(where: str, value) -> np.ndarray:
    xywh = _numbers(f"{where}, key 'bbox'", value)
    if xywh.size != 4 or xywh[2] < 0 or xywh[3] < 0:
        raise KeypointFileError(f"{where}, key 'bbox': expected [x, y, width >= 0, height >= 0]")
    return np.concatenate([xywh[:2], xywh[:2] + xywh[2:]])


def _coco_score(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise KeypointFileError(f"{where}, key 'score': expected a finite number, got {value!r}")
    return float(value)


def _read_coco(path: str):
    pairs = _coco_records(path, _load_json(path))
    found, covered = [], []
    for (where, record), frame in zip(pairs, _coco_frames(path, pairs)):
        covered.append((where, frame))
        if 'keypoints' not in record:
            raise KeypointFileError(f"{where}: no key 'keypoints'")
        flat = _numbers(f"{where}, key 'keypoints'", record['keypoints'])
        layout = _layout_for(f"{where}, key 'keypoints'", flat.size, _COCO_LAYOUTS)
        track = record.get('track_id')
        detection = _detection(
            frame,
            flat,
            layout,
            _coco_part(where, record, layout),
            None if track is None else _integer(f"{where}, key 'track_id'", track),
            None if 'bbox' not in record else _coco_box(where, record['bbox']),
            None if 'score' not in record else _coco_score(where, record['score']),
        )
        if detection is not None:
            found.append((where, detection))
    return found, covered


# ---------------------------------------------------------------------------- 3DPW


def _read_3dpw(path: str):
    # Imported here: the converter pulls in the body models, which only .pkl input needs.
    from data_pipelines import convert_3dpw

    try:
        seq = convert_3dpw.load_sequence(path)
    except errors.DataFileError as e:
        raise KeypointFileError(errors.one_line(e)) from e
    found = []
    for actor, poses2d in enumerate(seq['poses2d']):
        for frame, keypoints in enumerate(poses2d):
            detection = _detection(frame, keypoints, 'openpose18', 'body', actor)
            if detection is not None:
                found.append((f"{path}: key 'poses2d'[{actor}][{frame}]", detection))
    return found, [(path, frame) for frame in range(seq['num_frames'])]
