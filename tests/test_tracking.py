"""extpose_jax/infer/tracking.py: detections linked into tracks. Hand-made scenes: two people
crossing with no ids in the file, a person missing for a few frames, ids from the file, hands
kept apart from bodies."""

import dataclasses

import numpy as np
import pytest

from extpose_jax.infer import tracking


@dataclasses.dataclass(frozen=True)
class Det:  # the fields tracking reads (keypoint_files.Detection has them all)
    frame: int
    keypoints: np.ndarray
    box: np.ndarray
    part: str = 'body'
    track_id: int | None = None
    truth: int = -1  # the person it is, for the test only


def _person(rng, height):
    """A standing stick figure: 25 joints relative to its centre, `height` pixels tall."""
    y = np.linspace(-0.5, 0.5, 25) * height
    x = rng.normal(0, 0.12, 25) * height
    return np.stack([x, y], 1)


def _detect(frame, shape, centre, rng, truth, missing=0.1, **kw):
    xy = shape + centre + rng.normal(0, 2.0, shape.shape)  # ~2 px detector jitter
    conf = np.where(rng.random(len(xy)) < missing, 0.0, rng.uniform(0.5, 1.0, len(xy)))
    kp = np.concatenate([xy, conf[:, None]], 1)
    kp[conf == 0] = 0.0
    seen = kp[conf > 0, :2]
    box = np.r_[seen.min(0), seen.max(0)]
    return Det(frame, kp, box, truth=truth, **kw)


def _crossing(seed=0, frames=30, drop=()):
    """Two people of the same build, person 0 walking right, person 1 left (5 px lower), crossing
    at frame 15; person 1 is missing on the frames in `drop`; each frame's detections come in a
    random order."""
    rng = np.random.default_rng(seed)
    shapes = [_person(rng, 200.0)] * 2  # look-alikes: only their motion tells them apart
    out = {}
    for f in range(frames):
        dets = [_detect(f, shapes[0], [100.0 + 12 * f, 300.0], rng, 0)]
        if f not in drop:
            dets.append(_detect(f, shapes[1], [460.0 - 12 * f, 305.0], rng, 1))
        rng.shuffle(dets)
        out[f] = dets
    return out


def _purity(tracks) -> float:
    """Share of detections whose track's majority person is theirs."""
    right = total = 0
    for t in tracks:
        truth = [d.truth for d in t.detections]
        right += max(truth.count(0), truth.count(1))
        total += len(truth)
    return right / total


@pytest.mark.parametrize('seed', range(5))
def test_two_people_crossing_keep_their_identities(seed):
    tracks = tracking.link(_crossing(seed))
    assert len(tracks) == 2
    assert _purity(tracks) >= 0.95
    assert sorted(len(t.detections) for t in tracks) == [30, 30]


def test_without_the_prediction_the_crossing_would_swap():
    """The scene is hard enough to need the motion model: matching each frame to the previous
    detections as they are (no velocity) mixes the two people up."""
    original = tracking._predict
    try:
        tracking._predict = lambda t, f: (t.detections[-1].keypoints, t.detections[-1].box)
        purities = [_purity(tracking.link(_crossing(seed))) for seed in range(5)]
    finally:
        tracking._predict = original
    assert min(purities) < 0.95, purities


def test_a_short_gap_continues_the_track_and_a_long_one_starts_a_new_one():
    scene = _crossing(0, drop=(20, 21))
    tracks = tracking.link(scene, max_gap=2)
    assert len(tracks) == 2 and _purity(tracks) >= 0.95
    one = [t for t in tracks if t.detections[0].truth == 1][0]
    assert 20 not in one.frames and 19 in one.frames and 22 in one.frames
    tracks = tracking.link(_crossing(0, drop=(20, 21, 22, 23)), max_gap=2)
    assert len(tracks) == 3  # person 1 before and after the gap


def test_ids_from_the_file_are_kept_and_split_at_gaps():
    rng = np.random.default_rng(0)
    shape = _person(rng, 150.0)
    frames = {f: [] for f in range(12)}
    for f in list(range(0, 5)) + list(range(9, 12)):  # a gap of 4 frames
        frames[f].append(_detect(f, shape, [200.0, 200.0], rng, 0, track_id=7))
    for f in range(12):  # a second id at the same place: ids win over geometry
        frames[f].append(_detect(f, shape, [201.0, 200.0], rng, 1, track_id=3))
    tracks = tracking.link(frames, max_gap=2)
    assert [(t.id, t.frames[0], len(t.frames)) for t in tracks] == [
        (0, 0, 5),
        (1, 0, 12),
        (2, 9, 3),
    ]
    assert {d.truth for d in tracks[1].detections} == {1}


def test_hands_are_never_linked_with_bodies():
    rng = np.random.default_rng(1)
    shape = _person(rng, 60.0)
    frames = {
        f: [
            _detect(f, shape, [100.0 + f, 100.0], rng, 0, part='body'),
            _detect(f, shape, [100.0 + f, 100.0], rng, 1, part='right_hand'),
        ]
        for f in range(6)
    }
    tracks = tracking.link(frames)
    assert sorted((t.part, len(t.frames)) for t in tracks) == [('body', 6), ('right_hand', 6)]
    assert _purity(tracks) == 1.0


def test_geometry_helpers():
    a, b = np.array([0.0, 0, 10, 10]), np.array([5.0, 0, 15, 10])
    assert tracking.box_iou(a, b) == pytest.approx(50 / 150)
    assert tracking.box_iou(a, np.array([20.0, 20, 30, 30])) == 0.0
    kp = np.array([[0.0, 0, 1], [10, 0, 1], [0, 0, 0]])
    assert tracking.keypoint_similarity(kp, kp, a) == 1.0
    moved = kp + [[1.0, 0, 0], [1.0, 0, 0], [0, 0, 0]]
    # d = 1 px, scale = 0.1 * 10 = 1 px: exp(-1/2) for both shared joints
    assert tracking.keypoint_similarity(kp, moved, a) == pytest.approx(np.exp(-0.5))
    assert tracking.keypoint_similarity(kp, np.zeros((3, 3)), a) == 0.0
    with pytest.raises(ValueError, match='max_gap'):
        tracking.link({}, max_gap=-1)


def test_links_the_detections_read_from_an_openpose_folder(tmp_path):
    """keypoint_files' Detections are what link takes: two people, no ids, read and linked."""
    import json

    from data_pipelines import keypoint_files

    scene = _crossing(2, frames=8)
    for f, dets in scene.items():
        people = []
        for d in dets:
            kp = d.keypoints.copy()
            people.append({'person_id': [-1], 'pose_keypoints_2d': kp.ravel().tolist()})
        (tmp_path / f'clip_{f:012d}_keypoints.json').write_text(json.dumps({'people': people}))
    tracks = tracking.link(keypoint_files.read_keypoints(str(tmp_path)))
    assert len(tracks) == 2 and [len(t.frames) for t in tracks] == [8, 8]
    for t in tracks:  # one walks right, the other left, every step of the way
        x = [np.median(d.keypoints[d.keypoints[:, 2] > 0, 0]) for d in t.detections]
        steps = np.sign(np.diff(x))
        assert (steps == steps[0]).all()
