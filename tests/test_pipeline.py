"""Training pipeline (data_pipelines/pipeline.py) on small synthetic records written here."""

import dataclasses
import os

import numpy as np
import pytest
from test_augment import synthetic_track  # tests/ is on sys.path (pytest's rootdir-less import)

from data_pipelines import augment as aug
from data_pipelines import convert_3dpw, record_reader, records, shards
from data_pipelines import pipeline as pl
from data_pipelines.synthetic import raw_3dpw

# sequence -> [(track, first frame, number of frames)]; s1's track 0 has a gap at frames 6-7.
BODY_TRACKS = {
    's0': [(0, 0, 12), (1, 0, 5)],
    's1': [(0, 0, 6), (0, 8, 6)],
    's2': [(0, 3, 10)],
}


def _write(root, name, body_model, tracks, seed):
    rng = np.random.default_rng(seed)
    j = 44 if body_model == 'smpl' else 21
    with shards.RecordWriter(
        os.path.join(root, name),
        name,
        'train',
        num_shards=2,
        num_joints=j,
        body_model=body_model,
        fsync=False,
    ) as w:
        for seq, parts in tracks.items():
            for track, first, n in parts:
                side = 'left' if seq.endswith('l') else 'right'
                recs, _ = synthetic_track(
                    rng,
                    n,
                    body_model=body_model,
                    hand_side=side,
                    sequence=seq,
                    track=track,
                    first_frame=first,
                )
                for r in recs:
                    w.write(r)


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('records'))
    _write(root, 'body', 'smpl', BODY_TRACKS, 0)
    _write(root, 'stills', 'smpl', {f'img{i}': [(0, 0, 1)] for i in range(8)}, 1)
    _write(root, 'hands', 'mano', {'hr': [(0, 0, 4)], 'hl': [(0, 0, 4)]}, 2)
    return root


def _cfg(root, datasets=(pl.DatasetSpec('body'),), **kw):
    return pl.PipelineConfig(data_root=root, datasets=tuple(datasets), **kw)


def _batches(cfg, n, **kw):
    it = pl.make_iterator(cfg, kw.pop('process_index', 0), kw.pop('process_count', 1))
    try:
        return [next(it) for _ in range(n)]
    finally:
        if hasattr(it, 'close'):
            it.close()


def _runs(frames, gap=1):
    """Expected runs of a sorted frame list (a gap > `gap` starts a new run)."""
    cuts = np.flatnonzero(np.diff(frames) > gap) + 1
    return np.split(np.asarray(frames), cuts)


def test_clips_are_consecutive_frames_of_one_track(root):
    t, s = 4, 2
    cfg = _cfg(root, num_frames=t, stride=s, batch_size=5, num_epochs=1)
    reader = record_reader.RecordReader(os.path.join(root, 'body'), 'train')
    seqs = reader.sequences()
    got = set()
    for batch in _batches(cfg, 2):  # one epoch: 10 clips
        assert batch['frame_valid'].all()
        for b in range(cfg.batch_size):
            (seq,), (track,) = set(batch['sequence_id'][b]), set(batch['track'][b])
            frames = batch['frame'][b]
            assert np.all(np.diff(frames) == s)  # consecutive at stride s, never across a gap
            crop_to_out = []
            for k in range(t):  # and these are the records the batch names
                rec = reader[int(batch['record_index'][b, k])]
                assert (rec['sequence'], rec['track'], rec['frame']) == (
                    seqs[seq],
                    track,
                    frames[k],
                )
                crop_to_out.append(
                    aug.as3x3(batch['affine'][b, k]) @ np.linalg.inv(aug.as3x3(rec['crop_affine']))
                )
            for m in crop_to_out[1:]:  # one augmentation per clip: the same crop -> output map
                np.testing.assert_allclose(m, crop_to_out[0], atol=1e-3)
            got.add((int(seq), int(track), int(frames[0])))
    # Every clip start the tracks allow, and nothing else.
    want = set()
    for si, seq in enumerate(seqs):
        for tr in reader.tracks_of(seq):
            for run in _runs(reader.frames_of(seq, tr)):
                want |= {(si, tr, int(run[i])) for i in range(len(run) - (t - 1) * s)}
    assert got == want and len(want) == 10


def test_short_tracks_padded_or_skipped(root):
    t = 6  # s0/1 has 5 frames, s1's runs 6, s0/0 12, s2 10
    skipped = pl.build_sources(_cfg(root, num_frames=t))[0]
    padded = pl.build_sources(_cfg(root, num_frames=t, pad_short=True))[0]
    assert len(padded) == len(skipped) + 1
    assert sorted(set(padded.count)) == [5, 6] and set(skipped.count) == {6}
    cfg = _cfg(root, num_frames=t, pad_short=True, batch_size=len(padded), num_epochs=1)
    (batch,) = _batches(cfg, 1)
    short = np.flatnonzero(~batch['frame_valid'].all(1))
    assert len(short) == 1
    b = short[0]
    assert batch['frame_valid'][b].tolist() == [True] * 5 + [False]
    assert batch['frame'][b].tolist() == [0, 1, 2, 3, 4, -1]
    assert not batch['image'][b, 5].any() and not batch['kp3d'][b, 5].any()
    assert batch['image'][b, 4].any()


def test_image_dataset_in_video_config(root):
    specs = (pl.DatasetSpec('body', 0.5), pl.DatasetSpec('stills', 0.5, as_images=True))
    for fill in ('pad', 'repeat'):
        cfg = _cfg(root, specs, num_frames=4, batch_size=8, image_fill=fill)
        (batch,) = _batches(cfg, 1)
        still = batch['dataset_id'][:, 0] == 1
        assert still.sum() == 4  # equal weights interleave exactly
        valid = batch['frame_valid'][still]
        if fill == 'pad':
            assert valid[:, 0].all() and not valid[:, 1:].any()
        else:
            assert valid.all()
            imgs = batch['image'][still]
            assert (imgs == imgs[:, :1]).all()  # the same still, augmented alike, T times
        assert batch['frame_valid'][~still].all()


def test_mixture_weights(root):
    specs = (pl.DatasetSpec('body', 0.8), pl.DatasetSpec('stills', 0.2, as_images=True))
    cfg = _cfg(root, specs, num_frames=1)
    units = pl.unit_dataset(cfg, pl.build_sources(cfg))
    ids = np.array([units[i][1] for i in range(1000)])
    assert abs((ids == 1).mean() - 0.2) < 0.01


def test_two_processes_get_disjoint_shards_covering_the_data(root):
    cfg = _cfg(root, num_frames=2, num_epochs=1)
    sources = pl.build_sources(cfg)
    n = len(sources[0])
    shards = [pl.unit_dataset(cfg, sources, p, 2) for p in range(2)]
    units = [[shards[p][i][2] for i in range(len(shards[p]))] for p in range(2)]
    assert not set(units[0]) & set(units[1])
    assert sorted(units[0] + units[1]) == list(range(n))
    # Through the whole pipeline: the same stream positions, and the same clip at each position
    # whichever process reads it (the augmentation is seeded by the global position).
    one = _batches(dataclasses.replace(cfg, batch_size=4, num_epochs=None), 2)
    two = [
        _batches(
            dataclasses.replace(cfg, batch_size=2, num_epochs=None),
            2,
            process_index=p,
            process_count=2,
        )
        for p in range(2)
    ]
    pos = [np.concatenate([b['position'] for b in two[p]]) for p in range(2)]
    assert not set(pos[0]) & set(pos[1]) and set(pos[0]) | set(pos[1]) == set(range(8))
    by_pos = {
        int(b['position'][i]): {k: v[i] for k, v in b.items()}
        for batches in [one] + two
        for b in batches
        for i in range(len(b['position']))
    }
    for b in one:
        for i, p in enumerate(b['position']):
            two_p = by_pos[int(p)]
            for k, v in b.items():
                np.testing.assert_array_equal(v[i], two_p[k], err_msg=k)


# 2 workers: grain's worker processes start up in ~15 s.
@pytest.mark.parametrize('workers', [0, pytest.param(2, marks=pytest.mark.slow)])
def test_restored_state_reproduces_next_batches(root, workers):
    cfg = _cfg(root, num_frames=3, batch_size=2, num_workers=workers, pose_source='noisy_gt')
    it = pl.make_iterator(cfg, 0, 1)
    for _ in range(3):
        next(it)
    state = it.get_state()
    want = [next(it) for _ in range(5)]
    it.close()
    it2 = pl.make_iterator(cfg, 0, 1)
    it2.set_state(state)
    got = [next(it2) for _ in range(5)]
    it2.close()
    for w, g in zip(want, got):
        assert w.keys() == g.keys()
        for k in w:
            assert w[k].dtype == g[k].dtype
            np.testing.assert_array_equal(w[k], g[k], err_msg=k)
    assert len({int(p) for b in want for p in b['position']}) == 10


@pytest.mark.parametrize('dataset,body_model,j', [('body', 'smpl', 44), ('hands', 'mano', 21)])
@pytest.mark.parametrize('source', pl.POSE_SOURCES)
def test_batch_matches_spec(root, dataset, body_model, j, source):
    cfg = _cfg(root, (pl.DatasetSpec(dataset),), num_frames=2, batch_size=3, pose_source=source)
    (batch,) = _batches(cfg, 1)
    spec = pl.batch_spec(cfg, j, body_model)
    assert set(batch) == set(spec)
    for k, (shape, dtype) in spec.items():
        assert batch[k].shape == shape and batch[k].dtype == dtype, k
    gt, inp = batch['kp2d'], batch['kp2d_input']
    if source == 'gt':
        np.testing.assert_array_equal(inp, gt)
    elif source == 'detections':  # kp2d_det = kp2d + 0.5 px in the crop, moved by the affine
        reader = record_reader.RecordReader(os.path.join(root, dataset), 'train')
        for b, t in np.ndindex(3, 2):
            crop = reader[int(batch['record_index'][b, t])]['crop_affine']
            crop_to_out = aug.as3x3(batch['affine'][b, t]) @ np.linalg.inv(aug.as3x3(crop))
            ok = gt[b, t, :, 2] > 0
            np.testing.assert_allclose(
                (inp - gt)[b, t][ok, :2],
                np.tile(crop_to_out[:2, :2] @ [0.5, 0.5], (ok.sum(), 1)),
                atol=1e-3,
            )
    else:
        assert not np.array_equal(inp, gt)
        assert not (inp[..., 2] > 0)[gt[..., 2] == 0].any()


def test_left_hands_are_mirrored(root):
    cfg = _cfg(root, (pl.DatasetSpec('hands'),), num_frames=4, batch_size=2, num_epochs=1)
    (batch,) = _batches(cfg, 1)
    reader = record_reader.RecordReader(os.path.join(root, 'hands'), 'train')
    for b in range(2):
        rec = reader[int(batch['record_index'][b, 0])]
        right = rec['hand_side'] == 'right'
        assert batch['is_right'][b].all() == right and batch['flipped'][b].all() == (not right)
    assert sorted(batch['is_right'][:, 0].tolist()) == [False, True]


def test_bad_input_is_a_clear_error(root):
    with pytest.raises(ValueError, match=r"unknown dataset 'nope'.*\['body', 'hands', 'stills'\]"):
        pl.build_sources(_cfg(root, (pl.DatasetSpec('nope'),)))
    with pytest.raises(ValueError, match=r'no track has a clip of T=20.*longest run has 12'):
        pl.build_sources(_cfg(root, num_frames=20))
    with pytest.raises(ValueError, match='datasets is empty'):
        pl.build_sources(_cfg(root, ()))
    with pytest.raises(ValueError, match='one body model'):
        pl.build_sources(_cfg(root, (pl.DatasetSpec('body'), pl.DatasetSpec('hands'))))
    with pytest.raises(ValueError, match='pose_source'):
        pl.build_sources(_cfg(root, pose_source='keypoints'))
    with pytest.raises(ValueError, match='weight must be > 0'):
        pl.build_sources(_cfg(root, (pl.DatasetSpec('body', 0.0),)))
    with pytest.raises(ValueError, match='hands are not flipped'):
        pl.build_sources(
            _cfg(root, (pl.DatasetSpec('hands'),), augment=aug.AugmentConfig(flip_prob=0.5))
        )
    with pytest.raises(ValueError, match='process_index'):
        pl.build_dataset(_cfg(root), 2, 2)


def test_config_from_ml_collections(root):
    import ml_collections

    c = ml_collections.ConfigDict()
    c.data_root = root
    c.datasets = ({'name': 'body', 'weight': 0.7}, ('stills', 0.3, 'train', None, True))
    c.num_frames = 4
    c.augment = {'rot_prob': 0.0}
    c.noise = {'jitter': 0.05}
    cfg = pl.config_from_dict(c)
    assert cfg.datasets[1] == pl.DatasetSpec('stills', 0.3, as_images=True)
    assert cfg.augment.rot_prob == 0.0 and cfg.noise.jitter == 0.05 and cfg.num_frames == 4
    assert len(pl.build_sources(cfg)) == 2


@pytest.mark.slow
def test_end_to_end_on_converted_3dpw(body_model_dir, tmp_path):
    """Smoke: synthetic raw 3DPW -> convert_3dpw records -> clips. The augmented 3D joints,
    projected with the batch's K, land on the augmented 2D joints (the converter's conventions
    and ours agree)."""
    raw = str(tmp_path / '3DPW')
    raw_3dpw.write_3dpw(
        raw,
        str(body_model_dir),
        seed=0,
        sequences={'train': 1, 'validation': 0, 'test': 0},
        frames=8,
    )
    convert_3dpw.convert(
        raw,
        str(body_model_dir),
        str(tmp_path / 'rec' / '3dpw'),
        splits=('train',),
        workers=0,
        num_shards=1,
        fsync=False,
        quiet=True,
    )
    cfg = _cfg(
        str(tmp_path / 'rec'),
        (pl.DatasetSpec('3dpw'),),
        num_frames=4,
        batch_size=4,
        augment=aug.AugmentConfig(flip_prob=0.5, rot_prob=1.0),
    )
    (batch,) = _batches(cfg, 1)
    assert batch['has_kp3d'].all() and batch['has_pose'].all() and batch['frame_valid'].all()
    uvw = np.einsum(
        'btij,btkj->btki', batch['K'].astype(np.float64), batch['kp3d'][..., :3].astype(np.float64)
    )
    ok = batch['kp2d'][..., 2] > 0
    np.testing.assert_allclose(
        (uvw[..., :2] / uvw[..., 2:])[ok], batch['kp2d'][..., :2][ok], atol=0.05
    )


def test_undecodable_jpeg_is_a_corrupt_record(tmp_path):
    """A record whose bytes pass the CRC but whose JPEG does not decode: without skip_corrupt the
    error names shard and record; with it the frame is padding, flagged record_skipped."""
    rng = np.random.default_rng(5)
    recs, _ = synthetic_track(rng, 3, body_model='smpl', sequence='s', track=0, first_frame=0)
    recs[1] = {**recs[1], 'image': b'\xff\xd8' + bytes(64)}  # JPEG magic, then nothing valid
    with shards.RecordWriter(
        str(tmp_path / 'body'),
        'body',
        'train',
        num_shards=1,
        num_joints=44,
        body_model='smpl',
        fsync=False,
    ) as w:
        for r in recs:
            w.write(r)
    kw = dict(num_frames=3, batch_size=1, shuffle=False, augment=aug.AugmentConfig(enabled=False))
    with pytest.raises(records.CorruptRecordError, match=r'record 1 of shard .*body-train.*JPEG'):
        _batches(_cfg(str(tmp_path), **kw), 1)
    batch = _batches(_cfg(str(tmp_path), skip_corrupt=True, **kw), 1)[0]
    np.testing.assert_array_equal(batch['record_skipped'][0], [False, True, False])
    np.testing.assert_array_equal(batch['frame_valid'][0], [True, False, True])
