"""Raw -> record converters (3DPW, FreiHAND, HInt) on bad or incomplete raw input.

Bad input must fail with an error naming the path while leaving no complete-looking shard
behind; what a converter may skip (a HInt folder without images, FreiHAND without the evaluation
ground truth, a 3DPW frame without a detection) is skipped and counted. Each test edits a copy
of the session's synthetic raw data (tests/converter_raw.py) in its own temporary folder.
"""

import glob
import json
import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_converters import NUM_SHARDS, _load_pkl, _pkls

from data_pipelines import (
    convert_3dpw,
    convert_common,
    convert_freihand,
    convert_hint,
    record_reader,
    shards,
)
from extpose_jax import body_models as bm

# Every test converts (or reads) the rendered raw datasets: ~30 s of CPU before the first.
pytestmark = pytest.mark.slow


def _assert_not_written(out, name, split, sequence, num_shards=NUM_SHARDS):
    """The failed split is not finalized, the bad sequence's shard is not complete (other shards,
    finished before the error, may be: a rerun keeps them), and no temporary file is left."""
    assert not os.path.exists(os.path.join(out, shards.DATASET_INFO))
    shard = shards.shard_for(sequence, num_shards)
    assert not shards.shard_complete(
        os.path.join(out, shards.shard_name(name, split, shard, num_shards))
    )
    for path in glob.glob(os.path.join(out, '*')):
        assert not path.endswith(shards.TMP_SUFFIX), f'temporary file left behind: {path}'


# ---------------------------------------------------------------- bad input


def test_missing_folders(raw, tmp_path):
    empty = tmp_path / 'empty'
    empty.mkdir()
    bmd = raw['body_models']
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / 'missing'))):
        convert_3dpw.convert(str(tmp_path / 'missing'), bmd, str(tmp_path / 'o1'))
    with pytest.raises(
        FileNotFoundError, match=re.escape(os.path.join(str(empty), 'sequenceFiles'))
    ):
        convert_3dpw.convert(str(empty), bmd, str(tmp_path / 'o1'))
    with pytest.raises(
        FileNotFoundError, match=re.escape(os.path.join(str(empty), 'FreiHAND_pub_v2'))
    ):
        convert_freihand.convert(str(empty), bmd, str(tmp_path / 'o2'))
    with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
        convert_hint.convert(str(empty), None, str(tmp_path / 'o3'))
    # a 3DPW pkl without its image folder
    root = tmp_path / '3dpw'
    (root / 'sequenceFiles' / 'test').mkdir(parents=True)
    (root / 'imageFiles').mkdir()
    pkl = _pkls(raw['3dpw'])['test'][0]
    shutil.copy(pkl, root / 'sequenceFiles' / 'test')
    seq = os.path.basename(pkl)[:-4]
    with pytest.raises(
        FileNotFoundError, match=re.escape(os.path.join(str(root), 'imageFiles', seq))
    ):
        convert_3dpw.convert(str(root), bmd, str(tmp_path / 'o4'), splits=['test'])
    with pytest.raises(FileNotFoundError, match='validation'):
        convert_3dpw.convert(str(root), bmd, str(tmp_path / 'o4'), splits=['validation'])
    for out in ('o1', 'o2', 'o3', 'o4'):
        assert not os.path.exists(tmp_path / out / shards.DATASET_INFO)


def _broken_3dpw(raw, tmp_path, edit):
    """A one-sequence 3DPW copy whose pkl went through edit(dict) (images linked, not copied)."""
    root = tmp_path / '3dpw_bad'
    (root / 'sequenceFiles' / 'test').mkdir(parents=True)
    (root / 'imageFiles').mkdir()
    pkl = _pkls(raw['3dpw'])['test'][0]
    seq = os.path.basename(pkl)[:-4]
    data = _load_pkl(pkl)
    edit(data)
    path = root / 'sequenceFiles' / 'test' / (seq + '.pkl')
    with open(path, 'wb') as f:
        pickle.dump(data, f, protocol=2)
    os.symlink(os.path.join(raw['3dpw'], 'imageFiles', seq), root / 'imageFiles' / seq)
    return str(root), str(path), seq


def _convert_test_split(raw, root, out):
    convert_3dpw.convert(
        root,
        raw['body_models'],
        out,
        splits=['test'],
        num_shards=NUM_SHARDS,
        fsync=False,
        quiet=True,
    )


@pytest.mark.parametrize('case', ['missing_key', 'lengths', 'gender', 'image_size'])
def test_3dpw_bad_pkl(raw, tmp_path, case):
    def edit(d):
        if case == 'missing_key':
            del d['genders']
        elif case == 'lengths':
            d['trans'][0] = d['trans'][0][:-1]
        elif case == 'gender':  # wrong gender: caught by the jointPositions cross-check
            d['genders'] = ['f' if g == 'm' else 'm' for g in d['genders']]
        else:  # K of images twice as large as the jpgs
            d['cam_intrinsics'] = d['cam_intrinsics'] * np.array([[2.0], [2.0], [1.0]])

    root, path, seq = _broken_3dpw(raw, tmp_path, edit)
    out = str(tmp_path / 'out')
    match = {
        'missing_key': "missing key 'genders'",
        'lengths': 'array lengths disagree',
        'gender': 'jointPositions',
        'image_size': 'cam_intrinsics',
    }[case]
    with pytest.raises(convert_common.ConversionError, match=match) as err:
        _convert_test_split(raw, root, out)
    assert path in str(err.value)
    _assert_not_written(out, '3dpw', 'test', seq)


def test_3dpw_corrupt_jpg(raw, tmp_path):
    root, path, seq = _broken_3dpw(raw, tmp_path, lambda d: None)
    link = os.path.join(root, 'imageFiles', seq)
    os.remove(link)
    shutil.copytree(os.path.join(raw['3dpw'], 'imageFiles', seq), link)
    used = np.flatnonzero(np.any(_load_pkl(path)['campose_valid'], axis=0))
    bad = os.path.join(link, f'image_{used[-1]:05d}.jpg')
    with open(bad, 'r+b') as f:
        f.write(b'\x00' * 64)  # header destroyed
    out = str(tmp_path / 'out')
    with pytest.raises(convert_common.ConversionError, match=re.escape(bad)):
        _convert_test_split(raw, root, out)
    _assert_not_written(out, '3dpw', 'test', seq)


def test_freihand_flat_hand_mean_pitfall(raw, tmp_path):
    root = tmp_path / 'fh' / 'FreiHAND_pub_v2'
    src = os.path.join(raw['freihand'], 'FreiHAND_pub_v2')
    root.mkdir(parents=True)
    (root / 'training').mkdir()
    os.symlink(os.path.join(src, 'training', 'rgb'), root / 'training' / 'rgb')
    for what in ('K', 'xyz', 'mano'):
        shutil.copy(os.path.join(src, f'training_{what}.json'), root)
    hands_mean = bm.load_model_file(os.path.join(raw['body_models'], 'mano', 'MANO_RIGHT.pkl'))[
        'hands_mean'
    ]
    with open(root / 'training_mano.json') as f:
        mano = json.load(f)
    mano[1][0] = list(
        np.asarray(mano[1][0]) + np.concatenate([[0, 0, 0], hands_mean, np.zeros(13)])
    )
    with open(root / 'training_mano.json', 'w') as f:
        json.dump(mano, f)
    out = str(tmp_path / 'out')
    with pytest.raises(
        convert_common.ConversionError,
        match=re.escape(f'{root / "training_xyz.json"}: sample 1:') + '.*flat_hand_mean',
    ):
        convert_freihand.convert(
            str(tmp_path / 'fh'),
            raw['body_models'],
            out,
            splits=['train'],
            num_shards=1,
            fsync=False,
            quiet=True,
        )
    _assert_not_written(out, 'freihand', 'train', 'train_00000001', num_shards=1)


def _hint_copy(raw, tmp_path):
    root = tmp_path / 'hint'
    shutil.copytree(raw['hint'], root)
    return root / 'HInt_annotation_partial'


def test_hint_folder_without_images_is_skipped(raw, tmp_path):
    base = _hint_copy(raw, tmp_path)
    jsons = glob.glob(str(base / 'TRAIN_ego4d_img' / '*.json'))
    for p in glob.glob(str(base / 'TRAIN_ego4d_img' / '*.jpg')):
        os.remove(p)
    out = str(tmp_path / 'out')
    s = convert_hint.convert(
        str(base.parent),
        None,
        out,
        splits=['train'],
        num_shards=NUM_SHARDS,
        fsync=False,
        quiet=True,
    )['splits']['train']
    assert s['skipped_folders'] == {'TRAIN_ego4d_img': len(jsons)}
    assert 'TRAIN_ego4d_img' not in s['folders']
    num_records = len(record_reader.RecordReader(out, 'train'))
    assert s['num_records'] == sum(s['folders'].values()) == num_records


def test_hint_bad_input(raw, tmp_path):
    base = _hint_copy(raw, tmp_path)
    # a json without 'occlusion'
    path = sorted(glob.glob(str(base / 'VAL_newdays_img' / '*.json')))[0]
    with open(path) as f:
        ann = json.load(f)
    del ann[0]['occlusion']
    with open(path, 'w') as f:
        json.dump(ann, f)
    out = str(tmp_path / 'out_val')
    with pytest.raises(
        convert_common.ConversionError, match=re.escape(f"{path}: missing key 'occlusion'")
    ):
        convert_hint.convert(
            str(base), None, out, splits=['val'], num_shards=NUM_SHARDS, fsync=False, quiet=True
        )
    _assert_not_written(out, 'hint', 'val', 'newdays_img/' + os.path.basename(path)[:-7])
    # a corrupt jpg, found by a worker process: same error, no complete shard for it
    jpg = sorted(glob.glob(str(base / 'TEST_epick_img' / '*.jpg')))[0]
    with open(jpg, 'wb') as f:
        f.write(b'not a jpeg')
    out = str(tmp_path / 'out_test')
    with pytest.raises(convert_common.ConversionError, match=re.escape(jpg)):
        convert_hint.convert(
            str(base), None, out, splits=['test'], workers=2, num_shards=1, fsync=False, quiet=True
        )
    _assert_not_written(out, 'hint', 'test', 'epick_img/' + os.path.basename(jpg)[:-6], 1)
    # a partly missing folder is an error unless allowed
    os.remove(jpg)
    with pytest.raises(FileNotFoundError, match=re.escape(jpg)):
        convert_hint.convert(str(base), None, out, splits=['test'], fsync=False, quiet=True)
    s = convert_hint.convert(
        str(base), None, out, splits=['test'], allow_missing_images=True, fsync=False, quiet=True
    )['splits']['test']
    assert s['missing_images'] == 1


def test_freihand_without_evaluation_gt_skips_test(raw, tmp_path):
    root = tmp_path / 'fh' / 'FreiHAND_pub_v2'
    root.mkdir(parents=True)
    src = os.path.join(raw['freihand'], 'FreiHAND_pub_v2')
    os.symlink(os.path.join(src, 'evaluation'), root / 'evaluation')
    shutil.copy(os.path.join(src, 'evaluation_K.json'), root)
    s = convert_freihand.convert(
        str(tmp_path / 'fh'), raw['body_models'], str(tmp_path / 'out'), splits=['test'], quiet=True
    )
    assert 'evaluation_xyz.json' in s['splits']['test']['skipped']


def test_3dpw_frame_without_detection(raw, tmp_path):
    """An all-zero poses2d frame (fewer than 6 joints detected) -> has_kp2d_det False, zeros."""
    state = {}

    def edit(d):
        i = int(np.flatnonzero(d['campose_valid'][0])[0])
        d['poses2d'][0][i] = 0.0
        state['frame'] = i

    root, _, seq = _broken_3dpw(raw, tmp_path, edit)
    out = str(tmp_path / 'out')
    s = convert_3dpw.convert(
        root, raw['body_models'], out, splits=['test'], num_shards=1, fsync=False, quiet=True
    )['splits']['test']
    assert s['frames_without_detection'] == 1
    rec = record_reader.RecordReader(out, 'test').lookup(seq, 0, state['frame'])
    assert not rec['has_kp2d_det'] and not rec['kp2d_det'].any() and rec['has_kp2d']


_ROW = [1.0, 2.0, 0.9]


@pytest.mark.parametrize(
    'content, why',
    [
        ('[]', 'expected a JSON object'),
        ('{"a.jpg": [[1, 2, 0.9]]}', "key 'a.jpg': expected 21 x [x, y, confidence]"),
        ('{"a.jpg": ' + json.dumps([_ROW] * 20 + [[1, 'x', 0.5]]) + '}', "key 'a.jpg'"),
        ('{"a.jpg": ' + json.dumps([_ROW] * 20 + [[1, 2]]) + '}', "key 'a.jpg'"),
        (
            '{"a.jpg": ' + json.dumps([_ROW] * 20).replace('0.9', 'NaN', 1)[:-1] + ', [1, 2, 3]]}',
            "key 'a.jpg': non-finite",
        ),
        ('{"a.jpg": [', 'is not valid JSON'),
    ],
)
def test_malformed_detections_file_is_named(raw, tmp_path, content, why):
    """A detections file given to a converter that is not 21 x [x, y, confidence] per key
    fails before anything is written, naming the file (and the key)."""
    path = tmp_path / 'dets.json'
    path.write_text(content)
    for name, mod, body_models in (
        ('hint', convert_hint, None),
        ('freihand', convert_freihand, raw['body_models']),
    ):
        out = tmp_path / name
        with pytest.raises(
            convert_common.ConversionError, match=re.escape(str(path)) + '.*' + re.escape(why)
        ):
            mod.convert(raw[name], body_models, str(out), detections=str(path), quiet=True)
        assert not out.exists()
    with pytest.raises(FileNotFoundError, match='detections file not found: .*nowhere.json'):
        convert_hint.convert(
            raw['hint'], None, str(tmp_path / 'o'), detections=str(tmp_path / 'nowhere.json')
        )


def test_malformed_detections_file_is_one_line_on_the_command_line(raw, tmp_path):
    path = tmp_path / 'dets.json'
    path.write_text('{"TEST_x/y_r.jpg": [1, 2, 3]}')
    res = subprocess.run(
        [
            sys.executable,
            '-m',
            'data_pipelines.convert_hint',
            '--root',
            raw['hint'],
            '--out',
            str(tmp_path / 'out'),
            '--detections',
            str(path),
            '--quiet',
        ],
        capture_output=True,
        text=True,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and "'TEST_x/y_r.jpg'" in lines[0], lines
