"""data_pipelines/synthetic/demo_video.py: the synthetic default's demo video and OpenPose JSON.

The demo the session's synthetic default wrote (tiny world) against the raw 3DPW sequence it was
cut from: the video's frames, the keypoint folder as read_keypoints parses it, the camera and the
ground truth; and that a complete folder is kept, a stale one replaced, bad input named.
"""

import glob
import json
import os
import re

import cv2
import numpy as np
import pytest

from data_pipelines import convert_3dpw
from data_pipelines.keypoint_files import read_keypoints
from data_pipelines.synthetic import demo_video

# mp4v (MPEG-4 part 2 at OpenCV's default bitrate) is lossy: on the tiny world's frames the mean
# absolute difference to the JPEG is ~2.6 of 255. 6 leaves room for other OpenCV / FFmpeg
# builds; a wrong frame, a colour swap or a shifted image is tens.
MAX_MEAN_ABS_DIFF = 6.0


@pytest.fixture(scope='module')
def demo(synthetic_default):
    """{'paths': the demo's files, 'seq': the sequence it shows, 'images': its JPEG folder,
    'raw': the raw 3DPW folder, 'dir': the demo folder}."""
    raw = os.path.join(os.path.dirname(synthetic_default['body_models']), '3DPW')
    paths = {k: os.path.join(synthetic_default['demo'], v) for k, v in demo_video.FILES.items()}
    name = json.load(open(paths['camera']))['sequence']
    seq = convert_3dpw.load_sequence(os.path.join(raw, 'sequenceFiles', 'test', f'{name}.pkl'))
    images = os.path.join(raw, 'imageFiles', name)
    return dict(paths=paths, seq=seq, images=images, raw=raw, dir=synthetic_default['demo'])


def _video_frames(path):
    cap = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_the_tiny_world_shows_its_two_person_test_sequence(demo):
    seq = demo['seq']
    assert os.path.basename(seq['path']) == 'outdoors_synth_02.pkl'
    assert (seq['num_actors'], seq['num_frames']) == (2, 24)


def test_video_has_every_frame_at_the_jpegs_size(demo):
    frames = _video_frames(demo['paths']['video'])
    first = cv2.imread(os.path.join(demo['images'], 'image_00000.jpg'))
    assert len(frames) == demo['seq']['num_frames']
    assert frames[0].shape == first.shape
    assert np.abs(frames[0].astype(np.float64) - first).mean() < MAX_MEAN_ABS_DIFF
    assert cv2.VideoCapture(demo['paths']['video']).get(cv2.CAP_PROP_FPS) == demo_video.FPS


def test_openpose_folder_reads_back_as_the_pkls_detections(demo):
    seq, n = demo['seq'], demo['seq']['num_frames']
    order = np.load(demo['paths']['ground_truth'])['person_order']
    found = read_keypoints(demo['paths']['keypoints'], num_frames=n)
    assert order.shape == (n, seq['num_actors']) and sorted(found) == list(range(n))
    for frame, detections in found.items():
        actors = order[frame][order[frame] >= 0]
        assert (order[frame][len(actors) :] == -1).all()  # padding only at the end
        assert len(set(actors)) == len(actors) == len(detections)
        for det, actor in zip(detections, actors):
            assert (det.track_id, det.layout, det.part) == (None, 'openpose18', 'body')
            want = seq['poses2d'][actor][frame].copy()
            want[want[:, 2] <= 0] = 0.0  # undetected: a zero row, as OpenPose and the reader
            np.testing.assert_allclose(det.keypoints, want, atol=1e-3)
        for actor in set(range(seq['num_actors'])) - set(actors):  # left out: < 2 joints seen
            assert (seq['poses2d'][actor][frame][:, 2] > 0).sum() < 2
    # Shuffled per frame: with two people over 24 frames, both orders occur.
    assert len({tuple(row) for row in order}) > 1


def test_openpose_files_are_openpose_13(demo):
    folder, n = demo['paths']['keypoints'], demo['seq']['num_frames']
    assert sorted(os.listdir(folder)) == [f'clip_{i:012d}_keypoints.json' for i in range(n)]
    data = json.load(open(os.path.join(folder, 'clip_000000000000_keypoints.json')))
    assert data['version'] == 1.3
    person = data['people'][0]
    assert person['person_id'] == [-1] and len(person['pose_keypoints_2d']) == 54
    assert person['face_keypoints_2d'] == person['hand_left_keypoints_2d'] == []


def test_camera_and_ground_truth_are_the_pkls(demo):
    seq = demo['seq']
    camera = json.load(open(demo['paths']['camera']))
    H, W = cv2.imread(os.path.join(demo['images'], 'image_00000.jpg')).shape[:2]
    assert camera['K'] == seq['K'].tolist()  # JSON round-trips float64 exactly
    assert camera['image_size'] == [W, H] and camera['fps'] == demo_video.FPS
    with np.load(demo['paths']['ground_truth']) as gt:  # no allow_pickle: plain arrays only
        np.testing.assert_array_equal(gt['pose'], np.stack(seq['poses']))
        np.testing.assert_array_equal(gt['betas'], np.stack(seq['betas']))
        np.testing.assert_array_equal(gt['trans'], np.stack(seq['trans']))
        np.testing.assert_array_equal(gt['cam_poses'], seq['cam_poses'])
        np.testing.assert_array_equal(gt['valid'], np.stack(seq['valid']))
        assert list(gt['genders']) == seq['genders']


def test_a_complete_folder_is_kept(demo):
    files = glob.glob(os.path.join(demo['dir'], '**', '*'), recursive=True)
    stamps = {p: os.stat(p).st_mtime_ns for p in files}
    lines = []
    assert demo_video.write_demo(demo['raw'], demo['dir'], log=lines.append) == demo['paths']
    assert {p: os.stat(p).st_mtime_ns for p in files} == stamps
    assert lines == [f'demo video: cached in {demo["dir"]}']


def _raw_split(root, demo, links):
    """A raw 3DPW folder under root whose test split links {name: (split, pkl path)} of the
    tiny world (the image folder too)."""
    os.makedirs(os.path.join(root, 'sequenceFiles', 'test'))
    os.makedirs(os.path.join(root, 'imageFiles'))
    for name, pkl in links.items():
        os.symlink(pkl, os.path.join(root, 'sequenceFiles', 'test', f'{name}.pkl'))
        images = os.path.join(demo['raw'], 'imageFiles', os.path.basename(pkl)[: -len('.pkl')])
        os.symlink(images, os.path.join(root, 'imageFiles', name))
    return str(root)


def _shown(paths) -> str:
    return json.load(open(paths['camera']))['sequence']


def test_most_people_first_name_on_ties_and_a_stale_folder_replaced(tmp_path, demo):
    (one,) = glob.glob(os.path.join(demo['raw'], 'sequenceFiles', 'validation', '*.pkl'))
    two = demo['seq']['path']
    assert convert_3dpw.load_sequence(one)['num_actors'] == 1
    raw = _raw_split(tmp_path / 'raw', demo, {'a_one': one, 'c_two': two})
    out = tmp_path / 'demo'
    out.mkdir()
    (out / 'clip.mp4').write_text('not a video')  # an incomplete folder (not ours): replaced
    paths = demo_video.write_demo(raw, str(out), log=lambda *_: None)
    assert _shown(paths) == 'c_two'  # two people beat one whose name comes first
    assert len(_video_frames(paths['video'])) == demo['seq']['num_frames']
    assert sorted(os.listdir(tmp_path)) == ['demo', 'raw']  # no temporary folder left
    raw = _raw_split(tmp_path / 'tie', demo, {'d': two, 'b': two})
    assert (
        _shown(demo_video.write_demo(raw, str(tmp_path / 'tie_demo'), log=lambda *_: None)) == 'b'
    )


def test_bad_input_names_the_path(tmp_path, demo):
    nowhere = str(tmp_path / 'nowhere')
    with pytest.raises(FileNotFoundError, match=re.escape(nowhere)):
        demo_video.write_demo(nowhere, str(tmp_path / 'demo'))
    raw = _raw_split(tmp_path / 'raw', demo, {'s': demo['seq']['path']})
    os.unlink(os.path.join(raw, 'imageFiles', 's'))
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(raw, 'imageFiles', 's'))):
        demo_video.write_demo(raw, str(tmp_path / 'demo'))
    assert os.listdir(tmp_path) == ['raw']  # nothing written, no temporary folder left
