"""Seeded fuzz over every reader of an input file.

Each reader gets small files written by the project's own writers, then a few hundred damaged
copies: random byte flips and truncations, and for the pickle / JSON formats also well-formed
files of the wrong structure (a value replaced by None, a string, a ragged list, an int too large
for a float, a list that contains itself, a key dropped). Every case must either load or raise
the project's own error (an errors.UserError) whose message names the file; any other exception,
or a case running past its time limit, fails. Formats with checksums (TFRecord shards and their
indexes, orbax's variables/) must load exactly what was written or fail; pickles and JSON carry
no checksum, so a flipped digit there loads as a different value, and only the kind of outcome
is checked.
"""

import contextlib
import copy
import glob
import json
import os
import pickle
import signal

import numpy as np
import pytest
from test_records import make_record
from test_safe_pickle import tiny_3dpw_sequence, tiny_model

from data_pipelines import convert_3dpw, convert_freihand, convert_hint, record_reader, shards
from data_pipelines.synthetic import body_files, legacy_pickle
from extpose_jax import body_models, errors
from extpose_jax.train import checkpoint

# A damaged object dtype can make numpy warn while it is being refused.
pytestmark = pytest.mark.filterwarnings('ignore::numpy.exceptions.VisibleDeprecationWarning')

CASE_SECONDS = 10  # far above any case's time (milliseconds): only a hang reaches it


# ---------------------------------------------------------------- mutations


def flip_or_truncate(data: bytes, rng) -> tuple[bytes, str]:
    """1-3 random bytes XOR-ed with a random non-zero value, a truncation, or both."""
    buf, kind, what = bytearray(data), int(rng.integers(3)), []
    if kind != 1 and buf:
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(len(buf)))
            buf[pos] ^= int(rng.integers(1, 256))
            what.append(f'flip@{pos}')
    if kind != 0:
        cut = int(rng.integers(len(buf) + 1))
        buf, what = buf[:cut], what + [f'cut@{cut}']
    return bytes(buf), ' '.join(what)


def _odd_value(rng):
    """A value of the wrong kind (made fresh: a shared one could end up inside itself)."""
    looped = [0.0]
    looped.append(looped)
    choices = [
        None,
        True,
        'x',
        {},
        [],
        {'a': 1},
        [[1.0, 2.0], [3.0]],
        10**400,
        [None] * 21,
        looped,
        np.zeros(0),
        np.zeros((2, 0)),
        np.array(['a', 'b']),
        np.zeros((3, 3, 3)),
        np.array(5.0),
    ]
    return choices[int(rng.integers(len(choices)))]


def restructure(obj, rng) -> tuple[object, str]:
    """A deep copy of `obj` (nested dicts / lists / arrays) with one node replaced or dropped."""
    obj = copy.deepcopy(obj)
    paths = [()]
    for path in paths:  # grows while iterating: a breadth-first walk
        node = obj
        for key in path:
            node = node[key]
        if isinstance(node, dict):
            paths.extend(path + (k,) for k in node)
        elif isinstance(node, list):
            paths.extend(path + (i,) for i in range(len(node)))
    path = paths[int(rng.integers(len(paths)))]
    if not path:
        return _odd_value(rng), 'root replaced'
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.3:
        del parent[path[-1]]
        return obj, f'{path} dropped'
    parent[path[-1]] = _odd_value(rng)
    return obj, f'{path} replaced'


# ---------------------------------------------------------------- the harness


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds, what):
    def expire(*_):
        raise _Hang(f'{what}: still running after {seconds} s')

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def equal(a, b) -> bool:
    """Exact equality of nested dicts / lists / arrays that never raises on odd values."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b)
        )
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def run_case(what: str, load, names) -> tuple[str, object]:
    """('loaded', value) or ('error', message); fails on anything but a UserError naming a file
    in `names`."""
    try:
        with _time_limit(CASE_SECONDS, what):
            return 'loaded', load()
    except errors.UserError as e:
        assert any(n in str(e) for n in names), f'{what}: the error does not name {names}: {e}'
        return 'error', str(e)
    except Exception as e:  # noqa: BLE001 - exactly what the fuzz is looking for
        pytest.fail(f'{what}: {type(e).__name__} instead of the project error: {e}')


def fuzz(name, files, load, want, cases, seed, *, checked=(), structured=None, names=None):
    """`cases` damaged versions of one of `files` each (restored after): byte flips and
    truncations, and for files in `structured` ({path: (object, writer)}) also restructured
    objects written by `writer`. Files in `checked` must load equal to `want` or fail.
    Returns the counts of outcomes."""
    rng = np.random.default_rng(seed)
    originals = {path: open(path, 'rb').read() for path in files}
    structured = structured or {}
    counts = {'error': 0, 'equal': 0, 'different': 0}
    try:
        for i in range(cases):
            path = files[int(rng.integers(len(files)))]
            if path in structured and rng.random() < 0.5:
                obj, how = restructure(structured[path][0], rng)
                structured[path][1](path, obj)
            else:
                data, how = flip_or_truncate(originals[path], rng)
                with open(path, 'wb') as f:
                    f.write(data)
            what = f'{name} case {i} ({os.path.basename(path)}: {how})'
            outcome, value = run_case(what, load, (names or {}).get(path, [path]))
            if outcome == 'loaded':
                outcome = 'equal' if equal(value, want) else 'different'
                assert outcome == 'equal' or path not in checked, f'{what}: loaded different data'
            counts[outcome] += 1
            with open(path, 'wb') as f:
                f.write(originals[path])
    finally:
        for path, data in originals.items():
            with open(path, 'wb') as f:
                f.write(data)
    assert counts['error'] > cases // 4, counts  # the damage was noticed, not all flipped padding
    return counts


def _write_pickle(path, obj):
    with open(path, 'wb') as f:
        f.write(legacy_pickle.dumps(obj))


# ---------------------------------------------------------------- pickles


def test_body_model_pickles(tmp_path):
    model = tiny_model()
    want = {k: (v.toarray() if hasattr(v, 'toarray') else v) for k, v in model.items()}
    py2, py3 = str(tmp_path / 'SMPL_NEUTRAL.pkl'), str(tmp_path / 'MANO_RIGHT.pkl')
    body_files.write_model_pkl(py2, model)
    with open(py3, 'wb') as f:
        f.write(pickle.dumps(model, protocol=2))

    def write_any(path, obj):  # the official writer, or plain pickle where it cannot take obj
        try:
            body_files.write_model_pkl(path, obj)
        except (AttributeError, TypeError):
            _write_pickle(path, obj)

    for path in (py2, py3):
        fuzz(
            'model',
            [path],
            lambda p=path: body_models.load_model_file(p),
            want,
            250,
            seed=1,
            structured={path: (want, write_any)},
        )


def test_j19_regressor_pickle(tmp_path):
    want = np.random.default_rng(0).random((3, 5))
    path = str(tmp_path / 'SMPL_to_J19.pkl')
    body_files.write_array_pkl(path, want)
    fuzz(
        'j19',
        [path],
        lambda: body_models.load_j19_regressor(path),
        want,
        300,
        seed=2,
        structured={path: (want, _write_pickle)},
    )


def test_3dpw_sequence_pickle(tmp_path):
    seq = tiny_3dpw_sequence()
    path = str(tmp_path / 'courtyard_tiny_00.pkl')
    _write_pickle(path, seq)
    want = convert_3dpw.load_sequence(path)
    fuzz(
        '3dpw',
        [path],
        lambda: convert_3dpw.load_sequence(path),
        want,
        400,
        seed=3,
        structured={path: (seq, _write_pickle)},
    )


# ---------------------------------------------------------------- JSON annotations


def _write_json(path, obj):
    """JSON of `obj`; a list that contains itself is written 50000 levels deep instead."""

    def unloop(x, inside=()):
        if isinstance(x, list) and any(x is y for y in inside):
            return '__DEEP__'
        if isinstance(x, list):
            return [unloop(v, inside + (x,)) for v in x]
        if isinstance(x, dict):
            return {k: unloop(v, inside) for k, v in x.items()}
        return x.tolist() if isinstance(x, np.ndarray) else x

    text = json.dumps(unloop(obj)).replace('"__DEEP__"', '[' * 50000 + ']' * 50000)
    with open(path, 'w') as f:
        f.write(text)


def test_freihand_annotations(tmp_path):
    rng = np.random.default_rng(4)
    pub = tmp_path / 'FreiHAND_pub_v2'
    (pub / 'training' / 'rgb').mkdir(parents=True)
    objs = {}
    for key, shape in (('K', (3, 3)), ('mano', (1, 61)), ('xyz', (21, 3))):
        objs[str(pub / f'training_{key}.json')] = rng.normal(size=(2, *shape)).round(5).tolist()
    for path, obj in objs.items():
        _write_json(path, obj)
    load = lambda: {
        k: v
        for k, v in convert_freihand.load_annotations('train', str(pub), None).items()
        if k in ('K', 'mano', 'xyz')
    }
    fuzz(
        'freihand',
        sorted(objs),
        load,
        load(),
        300,
        seed=5,
        structured={p: (o, _write_json) for p, o in objs.items()},
    )


def test_hint_annotation(tmp_path):
    rng = np.random.default_rng(6)
    ann = [
        {
            'bbox': [[10.0, 20.5, 90.25, 130.0]],
            'keypoints': rng.normal(size=(21, 3)).round(4).tolist(),
            'occlusion': rng.integers(0, 2, 21).tolist(),
            'existence': [1] * 21,
        }
    ]
    path = str(tmp_path / 'TRAIN_newdays_img' / '0001_right.json')
    os.makedirs(os.path.dirname(path))
    _write_json(path, ann)
    load = lambda: convert_hint.read_annotation(path)
    fuzz('hint', [path], load, load(), 300, seed=7, structured={path: (ann, _write_json)})


# ---------------------------------------------------------------- records and variables


def test_record_shard_index_and_dataset_info(tmp_path):
    out = str(tmp_path / 'toy')
    rng = np.random.default_rng(8)
    with shards.RecordWriter(
        out, 'toy', 'train', num_shards=1, num_joints=44, body_model='smpl', fsync=False
    ) as writer:
        for frame in range(3):
            writer.write(make_record(rng, 'seq_0', 0, frame, partial=frame == 2))

    def load():  # the name is a free label: a flipped letter there loads
        with record_reader.RecordReader(out, 'train') as reader:
            return reader.num_joints, reader.body_model, [reader[i] for i in range(len(reader))]

    info = os.path.join(out, shards.DATASET_INFO)
    shard = glob.glob(os.path.join(out, '*.tfrecord-*-of-*[0-9]'))[0]
    files = [info, shard, shards.index_path(shard)]
    with open(info) as f:
        info_obj = json.load(f)
    # What the reader returns comes from the CRC-checked shard and the zip-checked index, which
    # dataset_info.json must agree with.
    fuzz(
        'records',
        files,
        load,
        load(),
        400,
        seed=9,
        checked=files,
        structured={info: (info_obj, _write_json)},
    )


@pytest.mark.slow
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')  # orbax's threads
def test_variables_directory(tmp_path):
    rng = np.random.default_rng(10)
    variables = {
        'params': {
            'dense': {
                'kernel': rng.normal(size=(3, 4)).astype(np.float32),
                'bias': np.arange(4, dtype=np.float32),
            }
        },
        'constants': {'head': {'init_pose': np.arange(6.0).reshape(2, 3)}},
    }
    directory = str(tmp_path / 'vars')
    checkpoint.save_variables(directory, variables, {'kind': 'smpl', 'source': 'x.ckpt'})
    want = checkpoint.load_variables(directory)
    meta = os.path.join(directory, 'meta.json')
    stored = sorted(
        p
        for p in glob.glob(os.path.join(directory, 'variables', '**'), recursive=True)
        if os.path.isfile(p)
    )
    load = lambda: checkpoint.load_variables(directory)
    # orbax's files checksum the arrays; meta.json is plain JSON (a flipped letter loads).
    fuzz(
        'variables',
        [meta] + stored,
        load,
        want,
        250,
        seed=11,
        checked=stored,
        structured={meta: (want[1], _write_json)},
        names={p: [directory] for p in stored},
    )
