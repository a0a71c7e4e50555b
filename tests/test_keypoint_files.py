"""data_pipelines/keypoint_files.py: every format written by hand, values checked exactly."""

import json
import os
import pickle

import numpy as np
import pytest

from data_pipelines.keypoint_files import Detection, KeypointFileError, read_keypoints
from extpose_jax import errors


def _points(num_joints, offset=0.0, missing=()):
    """(J, 3) distinct x, y, confidence; `missing` joints are (0, 0, 0) as detectors write them."""
    j = np.arange(num_joints, dtype=np.float64)
    kp = np.stack([10.0 + offset + 2 * j, 20.0 + offset + 3 * j, 0.5 + j / 100], axis=1)
    kp[list(missing)] = 0.0
    return kp


def _tight_box(kp):
    seen = kp[kp[:, 2] > 0, :2]
    return np.concatenate([seen.min(axis=0), seen.max(axis=0)])


def _write(path, data):
    path.write_text(json.dumps(data))
    return path


def _person(body=None, left=None, right=None, person_id=(-1,)):
    person = {'person_id': list(person_id), 'face_keypoints_2d': [0.0] * 210}
    for key, kp in (
        ('pose_keypoints_2d', body),
        ('hand_left_keypoints_2d', left),
        ('hand_right_keypoints_2d', right),
    ):
        person[key] = [] if kp is None else kp.reshape(-1).tolist()
    return person


def _openpose_file(folder, name, people):
    return _write(folder / name, {'version': 1.3, 'people': people})


def _only(detections):
    assert len(detections) == 1
    return detections[0]


def _assert_detection(d, frame, kp, layout, part, track_id, box=None, score=None):
    assert isinstance(d, Detection)
    assert (d.frame, d.layout, d.part, d.track_id) == (frame, layout, part, track_id)
    np.testing.assert_array_equal(d.keypoints, kp)
    np.testing.assert_array_equal(d.box, _tight_box(kp) if box is None else box)
    expected_score = kp[kp[:, 2] > 0, 2].mean() if score is None else score
    assert d.score == pytest.approx(expected_score, rel=0, abs=1e-12)
    assert d.keypoints.dtype == d.box.dtype == np.float64
    assert not d.keypoints.flags.writeable and not d.box.flags.writeable


# ---------------------------------------------------------------------------- OpenPose


def test_openpose_folder(tmp_path):
    body25 = _points(25, missing=(3, 19))
    left, right = _points(21, offset=100, missing=(0,)), _points(21, offset=300)
    coco18 = _points(18, offset=50, missing=(14, 15, 16, 17))
    _openpose_file(tmp_path, 'video_000000000012_keypoints.json', [_person(body25, left, right)])
    _openpose_file(
        tmp_path,
        'video_000000000003_keypoints.json',
        [_person(coco18, person_id=[4]), _person(body=None, right=right, person_id=[7])],
    )
    _openpose_file(tmp_path, 'video_000000000005_keypoints.json', [])
    (tmp_path / 'notes.txt').write_text('not a keypoint file')

    frames = read_keypoints(tmp_path)

    assert list(frames) == [3, 5, 12]
    body, hand = frames[3]
    _assert_detection(body, 3, coco18, 'openpose18', 'body', 4)
    _assert_detection(hand, 3, right, 'hand21', 'right_hand', 7)
    assert frames[5] == []
    body, lh, rh = frames[12]
    _assert_detection(body, 12, body25, 'body25', 'body', None)
    _assert_detection(lh, 12, left, 'hand21', 'left_hand', None)
    _assert_detection(rh, 12, right, 'hand21', 'right_hand', None)
    # The undetected joints stay zeros and stay out of the box and the score.
    assert not body.keypoints[[3, 19]].any()
    assert body.box[0] == 10.0 and lh.box[0] == 112.0  # left hand's joint 0 is missing


def test_openpose_frame_from_last_digits_and_int_person_id(tmp_path):
    kp = _points(25)
    person = _person(kp)
    person['person_id'] = 2  # an int instead of OpenPose's one-element list
    _openpose_file(tmp_path, 'cam2_take3_000000000007_keypoints.json', [person])
    d = _only(read_keypoints(tmp_path)[7])
    _assert_detection(d, 7, kp, 'body25', 'body', 2)


def test_openpose_names_without_numbers_use_sorted_order(tmp_path):
    a, b = _points(25), _points(25, offset=5)
    _openpose_file(tmp_path, 'b_keypoints.json', [_person(b)])
    _openpose_file(tmp_path, 'a_keypoints.json', [_person(a)])
    frames = read_keypoints(tmp_path)
    assert list(frames) == [0, 1]
    np.testing.assert_array_equal(_only(frames[0]).keypoints, a)
    np.testing.assert_array_equal(_only(frames[1]).keypoints, b)


def test_num_frames_fills_empty_frames_and_drops_one_joint_detections(tmp_path):
    one_joint = _points(25, missing=range(1, 25))
    hand = _points(21)
    _openpose_file(tmp_path, 'v_2_keypoints.json', [_person(one_joint, left=hand)])
    frames = read_keypoints(tmp_path, num_frames=4)
    assert list(frames) == [0, 1, 2, 3]
    assert frames[0] == frames[1] == frames[3] == []
    _assert_detection(_only(frames[2]), 2, hand, 'hand21', 'left_hand', None)


# ---------------------------------------------------------------------------- COCO-style


def test_coco_results_list(tmp_path):
    body = _points(17, missing=(1, 2))
    hand = _points(21, offset=40, missing=(20,))
    records = [
        {
            'image_id': 9,
            'category_id': 1,
            'keypoints': body.reshape(-1).tolist(),
            'bbox': [5.0, 6.0, 30.0, 70.0],
            'score': 0.875,
            'track_id': 3,
        },
        {'image_id': 9, 'keypoints': hand.reshape(-1).tolist(), 'hand': 'left'},
        {'image_id': 2, 'frame': 4, 'keypoints': hand.reshape(-1).tolist(), 'is_right': 1},
        {'image_id': 2, 'keypoints': hand.reshape(-1).tolist(), 'is_right': 0, 'score': 1},
        {'image_id': 1, 'keypoints': hand.reshape(-1).tolist()},
        {'image_id': 0, 'keypoints': [0.0] * 51, 'bbox': [0, 0, 1, 1], 'score': 0.1},
    ]
    frames = read_keypoints(_write(tmp_path / 'results.json', records))

    assert list(frames) == [0, 1, 2, 4, 9]
    assert frames[0] == []  # the record without a detected joint is dropped, its frame kept
    _assert_detection(_only(frames[1]), 1, hand, 'hand21', 'hand', None)
    _assert_detection(_only(frames[2]), 2, hand, 'hand21', 'left_hand', None, score=1.0)
    _assert_detection(_only(frames[4]), 4, hand, 'hand21', 'right_hand', None)
    b, h = frames[9]
    _assert_detection(b, 9, body, 'coco17', 'body', 3, box=[5, 6, 35, 76], score=0.875)
    _assert_detection(h, 9, hand, 'hand21', 'left_hand', None)


def test_coco_string_image_ids_use_sorted_order(tmp_path):
    kp = _points(17)
    records = [
        {'image_id': name, 'keypoints': (kp + i).reshape(-1).tolist()}
        for i, name in enumerate(['frame_b.jpg', 'frame_a.jpg', 'frame_b.jpg'])
    ]
    frames = read_keypoints(_write(tmp_path / 'r.json', records), num_frames=3)
    assert [len(v) for v in frames.values()] == [1, 2, 0]
    np.testing.assert_array_equal(frames[0][0].keypoints, kp + 1)  # frame_a.jpg
    np.testing.assert_array_equal(frames[1][1].keypoints, kp + 2)


def test_coco_dataset_dict(tmp_path):
    kp = _points(17, missing=(0,))
    data = {
        'images': [{'id': 5, 'file_name': 'x.jpg'}],
        'annotations': [
            {'image_id': 5, 'keypoints': kp.reshape(-1).tolist(), 'bbox': [1, 2, 3, 4]},
        ],
        'categories': [{'id': 1, 'name': 'person'}],
    }
    frames = read_keypoints(_write(tmp_path / 'person_keypoints.json', data))
    _assert_detection(_only(frames[5]), 5, kp, 'coco17', 'body', None, box=[1, 2, 4, 6])


# ---------------------------------------------------------------------------- 3DPW


def test_3dpw_sequence(tmp_path, body_model_dir):
    from data_pipelines import convert_3dpw
    from data_pipelines.synthetic.raw_3dpw import write_3dpw

    summary = write_3dpw(
        tmp_path, body_model_dir, sequences={'train': 1}, frames=3, image_size=(54, 96)
    )
    name = summary['sequences']['train'][0]
    path = tmp_path / 'sequenceFiles' / 'train' / f'{name}.pkl'
    seq = convert_3dpw.load_sequence(str(path))

    frames = read_keypoints(path)

    assert list(frames) == [0, 1, 2]
    expected = [
        (i, k, kp)
        for i in range(3)
        for k, poses2d in enumerate(seq['poses2d'])
        if ((kp := poses2d[i])[:, 2] > 0).sum() >= 2
    ]
    got = [(d.frame, d.track_id, d) for i in range(3) for d in frames[i]]
    assert [(i, k) for i, k, _ in expected] == [(i, k) for i, k, _ in got]
    assert len(got) >= 3 and {k for _, k, _ in got} == set(range(seq['num_actors']))
    for (i, k, kp), (_, _, d) in zip(expected, got):
        _assert_detection(d, i, kp, 'openpose18', 'body', k)
    with pytest.raises(KeypointFileError, match=r'frame 2 is beyond the video \(2 frames'):
        read_keypoints(path, num_frames=2)


# ---------------------------------------------------------------------------- errors


def _error(path, num_frames=None):
    with pytest.raises(KeypointFileError) as info:
        read_keypoints(path, num_frames)
    message = str(info.value)
    assert isinstance(info.value, errors.UserError)
    assert str(path) in message and '\n' not in message
    return message


def test_error_invalid_json(tmp_path):
    path = tmp_path / 'r.json'
    path.write_text('[{"keypoints": [1, 2,')
    assert 'not valid JSON' in _error(path)


def test_error_invalid_json_in_openpose_folder(tmp_path):
    bad = tmp_path / 'v_000000000001_keypoints.json'
    bad.write_bytes(b'\xff\xfe garbage')
    assert str(bad) in _error(tmp_path)


def test_error_openpose_keypoint_count(tmp_path):
    person = _person(_points(25))
    person['pose_keypoints_2d'] = person['pose_keypoints_2d'][:72]
    path = _openpose_file(tmp_path, 'v_0_keypoints.json', [_person(_points(25)), person])
    message = _error(tmp_path)
    assert f"{path}: people[1], key 'pose_keypoints_2d': 72 numbers" in message
    assert '75 (body25), 54 (openpose18)' in message


def test_error_coco_keypoint_count(tmp_path):
    records = [{'image_id': 0, 'keypoints': [1.0] * 51}, {'image_id': 0, 'keypoints': [1.0] * 60}]
    message = _error(_write(tmp_path / 'r.json', records))
    assert "record 1, key 'keypoints': 60 numbers" in message
    assert '51 (coco17), 63 (hand21)' in message


def test_error_non_finite(tmp_path):
    hand = _points(21).reshape(-1).tolist()
    hand[4] = float('nan')  # json.dumps writes NaN, which json.load reads back
    _write(tmp_path / 'v_0_keypoints.json', {'people': [{'hand_right_keypoints_2d': hand}]})
    message = _error(tmp_path)
    assert "people[0], key 'hand_right_keypoints_2d': has non-finite values" in message


def test_error_non_numeric(tmp_path):
    records = [{'image_id': 0, 'keypoints': [1.0] * 50 + [None]}]
    assert "record 0, key 'keypoints': expected a flat list of numbers" in _error(
        _write(tmp_path / 'r.json', records)
    )


def test_error_folder_without_keypoint_files(tmp_path):
    (tmp_path / 'frame_0.json').write_text('{}')
    assert 'no *_keypoints.json files' in _error(tmp_path)


def test_error_unknown_file_type(tmp_path):
    path = tmp_path / 'poses.csv'
    path.write_text('1,2,3')
    assert "unknown keypoint file type '.csv'" in _error(path)


def test_error_missing_path(tmp_path):
    assert 'no such keypoint file or folder' in _error(tmp_path / 'nothing.json')


def test_error_frame_beyond_num_frames(tmp_path):
    records = [{'image_id': 1, 'keypoints': [1.0] * 51}, {'frame': 8, 'keypoints': [1.0] * 51}]
    message = _error(_write(tmp_path / 'r.json', records), num_frames=5)
    assert 'record 1: frame 8 is beyond the video (5 frames: 0 .. 4)' in message


def test_error_duplicate_openpose_frame(tmp_path):
    _openpose_file(tmp_path, 'a_000000000001_keypoints.json', [])
    _openpose_file(tmp_path, 'b_000000000001_keypoints.json', [])
    assert 'frame 1 again (also in a_000000000001_keypoints.json)' in _error(tmp_path)


def test_error_bad_coco_fields(tmp_path):
    kp = [1.0] * 63
    cases = [
        ({'image_id': 0, 'keypoints': kp, 'hand': 'both'}, "key 'hand': 'both'"),
        ({'image_id': 0, 'keypoints': kp, 'bbox': [0, 0, -1, 2]}, "key 'bbox'"),
        ({'image_id': 0, 'keypoints': kp, 'score': 'high'}, "key 'score'"),
        ({'image_id': 0.5, 'keypoints': kp}, "key 'image_id': expected an integer"),
        ({'image_id': 0, 'keypoints': kp, 'track_id': 'x'}, "key 'track_id'"),
        ({'image_id': 0}, "no key 'keypoints'"),
    ]
    for record, expected in cases:
        message = _error(_write(tmp_path / 'r.json', [record]))
        assert f'record 0, {expected}' in message or f'record 0: {expected}' in message


def test_error_single_openpose_file_given_as_json(tmp_path):
    path = _openpose_file(tmp_path, 'v_0_keypoints.json', [])
    assert 'one OpenPose frame? pass its folder' in _error(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_error_pickle_goes_through_the_safe_reader(tmp_path):
    marker = tmp_path / 'ran'
    path = tmp_path / 'seq.pkl'
    path.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    _error(path)
    assert not marker.exists()


def test_error_mixed_image_id_kinds(tmp_path):
    records = [{'image_id': 'a.jpg', 'keypoints': [1.0] * 51}, {'image_id': 3, 'keypoints': []}]
    assert 'image_id mixes integers and strings' in _error(_write(tmp_path / 'r.json', records))
