"""The record format (records, cropping, tfrecord, shards, record_reader in data_pipelines/):
schema round trip, sharding, index, CRCs, atomicity. One record's checks and bytes are in
test_record_schema.py."""

import json
import multiprocessing
import os
import pickle
import struct

import cv2
import numpy as np
import pytest

from data_pipelines import cropping, record_reader, shards, tfrecord
from data_pipelines import records as R

J_BODY, J_HAND = 44, 21


# ---------------------------------------------------------------- fixtures


def _jpeg(rng, size=48):
    img = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return cropping.encode_image(cv2.GaussianBlur(img, (5, 5), 0), quality=90)


def make_record(rng, sequence, track, frame, *, hand=False, partial=False):
    j = J_HAND if hand else J_BODY
    rec = {
        'image': _jpeg(rng),
        'crop_affine': rng.normal(size=(2, 3)).astype(np.float32),
        'image_size': np.array([1080, 1920]),
        'K': rng.normal(size=(3, 3)).astype(np.float32),
        'box': np.array([10.5, 20.25, 300.0, 700.75], np.float32),
        'kp2d': rng.normal(size=(j, 3)).astype(np.float32),
        'kp3d': rng.normal(size=(j, 3)).astype(np.float32),
        'pose': rng.normal(size=(48 if hand else 72,)).astype(np.float32),
        'betas': rng.normal(size=(10,)).astype(np.float32),
        'sequence': sequence,
        'track': track,
        'frame': frame,
    }
    rec['hand_side' if hand else 'gender'] = 'left' if hand else 'female'
    if partial:  # no 3D labels, but detections
        del rec['kp3d'], rec['pose'], rec['betas']
        rec['kp2d_det'] = rng.normal(size=(j, 3)).astype(np.float32)
    return rec


def keys_of(n_seq=3, n_track=2, n_frame=5):
    return [
        (f'seq_{s}', t, 10 * f + s)
        for s in range(n_seq)
        for t in range(n_track)
        for f in range(n_frame)
    ]


def write_dataset(out, keys, *, num_shards=3, split='train', name='toy', seed=0):
    rng = np.random.default_rng(seed)
    recs = {}
    with shards.RecordWriter(
        out, name, split, num_shards=num_shards, num_joints=J_BODY, body_model='smpl', fsync=False
    ) as w:
        for n, key in enumerate(keys):
            rec = make_record(rng, *key, partial=(n % 4 == 3))
            w.write(rec)
            recs[key] = rec
    return recs


@pytest.fixture
def dataset(tmp_path):
    out = str(tmp_path / 'ds')
    recs = write_dataset(out, keys_of())
    return out, recs


def assert_same(rec_in, rec_out, num_joints=J_BODY, name='toy', split='train'):
    assert rec_out['image'] == rec_in['image']  # images compared as bytes
    for key in ('crop_affine', 'K', 'box', 'kp2d', 'kp3d', 'kp2d_det', 'pose', 'betas'):
        expected = rec_in.get(key)
        out = rec_out[key]
        assert out.dtype == np.float32, key
        if expected is None:
            assert not rec_out[R._OPTIONAL[key]] and not out.any(), key
        else:
            if key == 'kp3d':  # written (J, 3): every joint labelled
                expected = R.kp3d_with_confidence(expected)
            np.testing.assert_array_equal(out, np.asarray(expected, np.float32), err_msg=key)
            if key in R._OPTIONAL:
                assert rec_out[R._OPTIONAL[key]], key
    assert rec_out['crop_affine'].shape == (2, 3) and rec_out['K'].shape == (3, 3)
    assert rec_out['kp2d'].shape == (num_joints, 3) and rec_out['kp3d'].shape == (num_joints, 4)
    np.testing.assert_array_equal(rec_out['image_size'], rec_in['image_size'])
    assert rec_out['image_size'].dtype == np.int64
    for key in ('sequence', 'gender', 'hand_side'):
        assert rec_out[key] == rec_in.get(key, ''), key
    for key in ('track', 'frame'):
        assert isinstance(rec_out[key], np.int64) and rec_out[key] == rec_in[key]
    for flag in R.HAS_FLAGS:
        assert isinstance(rec_out[flag], np.bool_)
    assert rec_out['dataset'] == name and rec_out['split'] == split
    assert rec_out['num_joints'] == num_joints and rec_out['schema_version'] == R.SCHEMA_VERSION


def flip_byte(path, pos):
    with open(path, 'r+b') as f:
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0x01]))


def nonempty_shard(reader):
    counts = np.diff(reader._starts)
    return int(np.flatnonzero(counts >= 2)[0])


# ---------------------------------------------------------------- CRC and framing


def _crc32c_reference(data: bytes) -> int:
    # Bitwise CRC-32C (reflected Castagnoli polynomial 0x82F63B78), independent of google_crc32c.
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def _masked_reference(data: bytes) -> int:
    c = _crc32c_reference(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _minimal_reader(path):
    """Independent TFRecord reader: yields (offset, payload), checking both masked CRCs."""
    with open(path, 'rb') as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from('<Q', data, pos)
        (len_crc,) = struct.unpack_from('<I', data, pos + 8)
        assert len_crc == _masked_reference(data[pos : pos + 8])
        payload = data[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack_from('<I', data, pos + 12 + length)
        assert data_crc == _masked_reference(payload)
        yield pos, payload
        pos += 16 + length


def test_crc32c_known_vectors():
    assert tfrecord.crc32c(b'123456789') == 0xE3069283
    assert _crc32c_reference(b'123456789') == 0xE3069283
    assert tfrecord.crc32c(b'') == 0
    rng = np.random.default_rng(0)
    for n in (1, 7, 64, 1000):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert tfrecord.crc32c(data) == _crc32c_reference(data)
        assert tfrecord.masked_crc32c(data) == _masked_reference(data)


def test_framing_readable_by_independent_reader(dataset):
    out, recs = dataset
    reader = record_reader.RecordReader(out, 'train')
    seen = 0
    for k, path in enumerate(reader.paths):
        found = list(_minimal_reader(path))
        index = np.load(shards.index_path(path))
        np.testing.assert_array_equal(
            [o for o, _ in found] + [os.path.getsize(path)], index['offsets']
        )
        for local, (_, payload) in enumerate(found):
            rec = R.decode_record(payload)
            assert_same(recs[(rec['sequence'], int(rec['track']), int(rec['frame']))], rec)
            assert payload == reader.read_payload(int(reader._starts[k]) + local)
            seen += 1
    assert seen == len(recs)


def test_reads_tensorflow_written_tfrecord():
    # grain ships a TFRecord written by TensorFlow itself: our framing reader must accept it.
    import grain

    path = os.path.join(
        os.path.dirname(grain.__file__),
        '_src',
        'python',
        'testdata',
        'morris_sequence_first_5.tfrecord',
    )
    if not os.path.exists(path):
        pytest.skip('grain test file not installed')
    payloads = [p for _, p in tfrecord.iter_framed(path)]
    assert payloads == [b'1', b'1 1', b'2 1', b'1 2 1 1', b'1 1 1 2 2 1']


def test_grain_tfrecord_reader_reads_our_shards(dataset):
    from grain._src.python.dataset.sources.tfrecord_dataset import TFRecordIterDataset

    out, recs = dataset
    reader = record_reader.RecordReader(out, 'train')
    path = reader.paths[nonempty_shard(reader)]
    ours = [p for _, p in tfrecord.iter_framed(path)]
    assert list(TFRecordIterDataset(path)) == ours


# ---------------------------------------------------------------- round trip and access


def test_every_field_round_trips(dataset):
    out, recs = dataset
    reader = record_reader.RecordReader(out, 'train')
    assert len(reader) == len(recs)
    got = list(reader)
    assert len(got) == len(recs)
    for rec in got:
        assert_same(recs[(rec['sequence'], int(rec['track']), int(rec['frame']))], rec)


def test_hand_records_and_decoded_images(tmp_path):
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[:40, :40]
    crop = np.stack([xs * 6, ys * 6, np.full_like(xs, 128)], -1).astype(np.uint8)  # R, G, B ramps
    rec = make_record(rng, 'hands', 0, 3, hand=True)
    rec['image'] = crop  # the writer encodes an array crop itself
    path = str(tmp_path / 'h' / 'x.tfrecord-00000-of-00001')
    with shards.ShardWriter(
        path, num_joints=J_HAND, body_model='mano', dataset='fh', split='val'
    ) as w:
        w.write(rec)
    payload = next(tfrecord.iter_framed(path))[1]
    back = R.decode_record(payload)
    assert back['kp3d'].shape == (J_HAND, 4) and back['pose'].shape == (48,)
    assert back['hand_side'] == 'left' and back['gender'] == ''
    img = R.decode_record(payload, decode_image=True)['image']
    assert img.dtype == np.uint8 and img.shape == (40, 40, 3)
    assert np.abs(img.astype(int) - crop).mean() < 2  # JPEG of a smooth image, RGB order kept
    np.testing.assert_array_equal(img, cropping.decode_image(back['image']))


def test_counts_match_dataset_info(dataset):
    out, recs = dataset
    with open(os.path.join(out, shards.DATASET_INFO)) as f:
        info = json.load(f)
    assert info['schema_version'] == R.SCHEMA_VERSION and info['name'] == 'toy'
    split = info['splits']['train']
    assert split['num_records'] == len(recs) == sum(s['num_records'] for s in split['shards'])
    assert (split['num_joints'], split['body_model'], split['pose_dim']) == (J_BODY, 'smpl', 72)
    for shard in split['shards']:
        path = os.path.join(out, shard['file'])
        assert shard['num_bytes'] == os.path.getsize(path)
        assert shard['num_records'] == len(list(tfrecord.iter_framed(path)))
    expected = {}
    for s, t, f in recs:
        expected.setdefault(s, {}).setdefault(str(t), []).append(f)
    assert split['sequences'] == {
        s: {t: sorted(fs) for t, fs in ts.items()} for s, ts in expected.items()
    }


def test_multiple_shards_and_naming(dataset):
    out, recs = dataset
    files = sorted(f for f in os.listdir(out) if not f.startswith('.'))
    names = [f'toy-train.tfrecord-{k:05d}-of-00003' for k in range(3)]
    assert files == sorted(names + [s + '.index' for s in names] + ['dataset_info.json'])
    reader = record_reader.RecordReader(out, 'train')
    assert sum(np.diff(reader._starts) > 0) >= 2  # records really are spread over shards
    for path in reader.paths:  # every sequence lives in exactly one shard
        seqs = {R.decode_record(p)['sequence'] for _, p in tfrecord.iter_framed(path)}
        assert all(shards.shard_for(s, 3) == reader.paths.index(path) for s in seqs)


def test_random_access_agrees_with_sequential(dataset):
    out, recs = dataset
    reader = record_reader.RecordReader(out, 'train')
    sequential = list(reader)
    for i, rec in enumerate(sequential):
        key = (rec['sequence'], int(rec['track']), int(rec['frame']))
        assert reader.index_of(*key) == i
        by_key = reader.lookup(*key)
        assert by_key['image'] == rec['image']
        np.testing.assert_array_equal(by_key['kp2d'], rec['kp2d'])
        assert reader[i - len(reader)]['frame'] == rec['frame']  # negative indices
    perm = np.random.default_rng(0).permutation(len(reader))
    for i in perm:
        assert reader[int(i)]['image'] == sequential[i]['image']
    assert reader.sequences() == ['seq_0', 'seq_1', 'seq_2']
    assert reader.tracks_of('seq_1') == [0, 1]
    frames = reader.frames_of('seq_1', 1)
    assert frames.dtype == np.int64 and list(frames) == [1, 11, 21, 31, 41]
    with pytest.raises(IndexError):
        reader[len(reader)]


def test_lookup_missing_key_names_it(dataset):
    out, _ = dataset
    reader = record_reader.RecordReader(out, 'train')
    with pytest.raises(KeyError, match=r"sequence='seq_1', track=1, frame=2\b"):
        reader.lookup('seq_1', 1, 2)
    with pytest.raises(KeyError, match='nope'):
        reader.lookup('nope', 0, 0)
    with pytest.raises(KeyError, match='track=7'):
        reader.frames_of('seq_0', 7)


def test_reader_pickles_and_reopens(dataset):
    out, recs = dataset
    reader = record_reader.RecordReader(out, 'train')
    first = reader[5]
    assert reader._fds  # a descriptor is open now
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._fds == {}
    assert clone[5]['image'] == first['image']
    # spawn, not fork: the pickled reader is what a grain worker process receives.
    ctx = multiprocessing.get_context('spawn')
    with ctx.Pool(2) as pool:
        frames = pool.map(_frame_of, [(reader, i) for i in range(len(reader))])
    assert frames == [int(r['frame']) for r in reader]


def _frame_of(args):
    reader, i = args
    return int(reader[i]['frame'])


# ---------------------------------------------------------------- corruption


def test_flipped_payload_byte_names_shard_and_record(dataset):
    out, _ = dataset
    reader = record_reader.RecordReader(out, 'train')
    shard = nonempty_shard(reader)
    path = reader.paths[shard]
    offsets = np.load(shards.index_path(path))['offsets']
    flip_byte(path, int(offsets[1]) + 12 + 100)  # inside record 1's payload
    fresh = record_reader.RecordReader(out, 'train')
    g = int(fresh._starts[shard]) + 1
    with pytest.raises(R.CorruptRecordError) as err:
        fresh[g]
    msg = str(err.value)
    assert os.path.basename(path) in msg and 'record 1 of shard' in msg
    assert f'global index {g}' in msg and 'data CRC' in msg
    assert (err.value.path, err.value.index_in_shard, err.value.global_index) == (path, 1, g)
    with pytest.raises(R.CorruptRecordError, match='record 1 of shard'):
        list(fresh)
    assert fresh[g - 1] is not None  # its neighbour in the shard still reads
    with pytest.raises(R.CorruptRecordError, match=os.path.basename(path)):
        shards.verify_shard(path)


def test_flipped_length_byte_is_caught(dataset):
    out, _ = dataset
    reader = record_reader.RecordReader(out, 'train')
    shard = nonempty_shard(reader)
    path = reader.paths[shard]
    flip_byte(path, 2)  # record 0's length field
    with pytest.raises(R.CorruptRecordError, match=r'record 0 of shard .*length CRC'):
        record_reader.RecordReader(out, 'train')[int(reader._starts[shard])]


def test_truncated_shard_names_shard_and_record(dataset):
    out, _ = dataset
    reader = record_reader.RecordReader(out, 'train')
    shard = nonempty_shard(reader)
    path = reader.paths[shard]
    n = int(np.diff(reader._starts)[shard])
    offsets = np.load(shards.index_path(path))['offsets']
    with open(path, 'r+b') as f:
        f.truncate(int(offsets[n - 1]) + 30)  # cut the last record short
    assert not shards.shard_complete(path)
    fresh = record_reader.RecordReader(out, 'train')
    g = int(fresh._starts[shard]) + n - 1
    with pytest.raises(
        R.CorruptRecordError,
        match=rf'record {n - 1} of shard {path} '
        rf'\(global index {g}\): truncated',
    ):
        fresh[g]
    fresh[g - 1]  # earlier records are intact


def test_skip_corrupt_counts_and_skips(dataset):
    out, recs = dataset
    reader = record_reader.RecordReader(out, 'train')
    shard = nonempty_shard(reader)
    path = reader.paths[shard]
    offsets = np.load(shards.index_path(path))['offsets']
    flip_byte(path, int(offsets[0]) + 40)
    flip_byte(path, int(offsets[1]) + 40)
    lenient = record_reader.RecordReader(out, 'train', skip_corrupt=True)
    got = list(lenient)
    assert len(got) == len(recs) - 2 and lenient.num_corrupt == 2
    assert lenient[int(lenient._starts[shard])] is None
    list(lenient)
    assert lenient.num_corrupt == 2  # counted once per record, not per read
    for rec in got:
        assert_same(recs[(rec['sequence'], int(rec['track']), int(rec['frame']))], rec)


# ---------------------------------------------------------------- atomicity and resumption


def test_shard_writer_exception_leaves_nothing(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / 'x-train.tfrecord-00000-of-00001')
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(path, num_joints=J_BODY, body_model='smpl') as w:
            w.write(make_record(rng, 's', 0, 0))
            raise RuntimeError('killed')
    assert os.listdir(tmp_path) == []
    assert not shards.shard_complete(path)


def test_writer_never_closed_leaves_no_complete_shard(tmp_path):
    rng = np.random.default_rng(0)
    out = str(tmp_path)
    w = shards.RecordWriter(out, 'toy', 'train', num_shards=2, num_joints=J_BODY, body_model='smpl')
    for key in keys_of(2, 1, 3):
        w.write(make_record(rng, *key))
    # "killed": close() never runs. Data sits in .tmp files only, and nothing looks finished.
    for k in range(2):
        assert not w.shard_complete(k)
        assert not os.path.exists(w.shard_path(k))
    assert not os.path.exists(os.path.join(out, shards.DATASET_INFO))
    with pytest.raises(FileNotFoundError, match=shards.DATASET_INFO):
        record_reader.RecordReader(out, 'train')


def test_record_writer_exception_aborts(tmp_path):
    rng = np.random.default_rng(0)
    out = str(tmp_path)
    with pytest.raises(ValueError, match="'kp3d'"):
        with shards.RecordWriter(
            out, 'toy', 'train', num_shards=2, num_joints=J_BODY, body_model='smpl'
        ) as w:
            w.write(make_record(rng, 'a', 0, 0))
            bad = make_record(rng, 'a', 0, 1)
            bad['kp3d'] = bad['kp3d'][:5]
            w.write(bad)
    assert [f for f in os.listdir(out) if not f.startswith('.')] == []


def test_crash_between_index_and_rename(dataset):
    # Index written but shard never renamed (killed in between): not complete.
    out, _ = dataset
    path = record_reader.RecordReader(out, 'train').paths[0]
    os.rename(path, path + shards.TMP_SUFFIX)
    assert not shards.shard_complete(path)
    with pytest.raises(R.IncompleteShardError, match=path):
        record_reader.RecordReader(out, 'train')


def test_reader_refuses_shard_without_index(dataset):
    out, _ = dataset
    path = record_reader.RecordReader(out, 'train').paths[1]
    os.remove(shards.index_path(path))
    assert not shards.shard_complete(path)
    with pytest.raises(R.IncompleteShardError, match=shards.index_path(path)):
        record_reader.RecordReader(out, 'train')


def test_rerun_skips_finished_shards(tmp_path):
    rng = np.random.default_rng(0)
    out = str(tmp_path)
    keys = keys_of(6, 1, 3)
    by_shard = {}
    for key in keys:
        by_shard.setdefault(shards.shard_for(key[0], 3), []).append(key)

    def run(crash_at):
        w = shards.RecordWriter(
            out, 'toy', 'train', num_shards=3, num_joints=J_BODY, body_model='smpl'
        )
        done = []
        for k in range(3):
            if w.shard_complete(k):
                continue
            if k == crash_at:
                sw = w.open_shard(k)
                sw.write(make_record(rng, *by_shard[k][0]))
                return done  # killed mid-shard
            with w.open_shard(k) as sw:
                for key in by_shard.get(k, []):
                    sw.write(make_record(rng, *key))
            done.append(k)
        w.close()
        return done

    assert run(crash_at=2) == [0, 1]
    mtime = os.path.getmtime(os.path.join(out, shards.shard_name('toy', 'train', 0, 3)))
    assert run(crash_at=None) == [2]  # shards 0 and 1 are recognised as finished
    assert os.path.getmtime(os.path.join(out, shards.shard_name('toy', 'train', 0, 3))) == mtime
    reader = record_reader.RecordReader(out, 'train')
    assert len(reader) == len(keys)
    assert sorted((r['sequence'], int(r['track']), int(r['frame'])) for r in reader) == sorted(keys)


def test_write_after_open_shard_and_failed_first_write(tmp_path):
    rng = np.random.default_rng(0)
    with shards.RecordWriter(
        str(tmp_path), 'toy', 'train', num_shards=1, num_joints=J_BODY, body_model='smpl'
    ) as w:
        w.open_shard(0)  # still empty when write() routes to it
        with pytest.raises(ValueError, match='gender'):
            w.write(dict(make_record(rng, 's', 0, 0), gender='x'))
        w.write(make_record(rng, 's', 0, 0))
    assert len(record_reader.RecordReader(str(tmp_path), 'train')) == 1


def test_empty_split(tmp_path):
    with shards.RecordWriter(
        str(tmp_path), 'toy', 'val', num_shards=2, num_joints=J_HAND, body_model='mano'
    ):
        pass
    reader = record_reader.RecordReader(str(tmp_path), 'val')
    assert len(reader) == 0 and list(reader) == [] and reader.sequences() == []
    assert all(shards.shard_complete(p) for p in reader.paths) and len(reader.paths) == 2


def test_two_splits_share_dataset_info(tmp_path):
    out = str(tmp_path)
    train = write_dataset(out, keys_of(2, 1, 2), split='train', num_shards=2)
    test = write_dataset(out, keys_of(1, 1, 3), split='test', num_shards=1)
    info = shards.load_dataset_info(out)
    assert sorted(info['splits']) == ['test', 'train']
    assert len(record_reader.RecordReader(out, 'train')) == len(train)
    assert len(record_reader.RecordReader(out, 'test')) == len(test)
    with pytest.raises(KeyError, match="'val'.*test.*train"):
        record_reader.RecordReader(out, 'val')


# ---------------------------------------------------------------- bad input


def test_missing_directory_and_info_name_the_path(tmp_path):
    missing = str(tmp_path / 'nope')
    with pytest.raises(FileNotFoundError, match=missing):
        record_reader.RecordReader(missing, 'train')
    with pytest.raises(FileNotFoundError, match=os.path.join(str(tmp_path), shards.DATASET_INFO)):
        record_reader.RecordReader(str(tmp_path), 'train')


def test_wrong_schema_version(dataset):
    out, _ = dataset
    path = os.path.join(out, shards.DATASET_INFO)
    with open(path) as f:
        info = json.load(f)
    info['schema_version'] = R.SCHEMA_VERSION + 1
    with open(path, 'w') as f:
        json.dump(info, f)
    with pytest.raises(
        R.SchemaVersionError, match=rf'{path}.*schema_version {R.SCHEMA_VERSION + 1}'
    ):
        record_reader.RecordReader(out, 'train')
