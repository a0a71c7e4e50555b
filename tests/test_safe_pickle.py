"""extpose_jax.safe_pickle under every loader: hostile globals are refused before anything is
imported or run; Python 2 and Python 3 encodings of the official formats read exactly."""

import io
import json
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import scipy.sparse

from data_pipelines import convert_3dpw, convert_common
from data_pipelines.synthetic import body_files, legacy_pickle
from extpose_jax import body_models, errors, safe_pickle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- hand-built pickles


class _Call:
    """Pickled as `module.name(*args)` (then BUILD `state`), the global named without importing
    it: pickle's own save_global would import the module to check the name."""

    def __init__(self, module, name, args=(), state=None):
        self.module, self.name, self.args, self.state = module, name, args, state


class _Ref(_Call):
    """Pickled as the bare global module.name."""


class _CallPickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def save_ref(self, obj):
        self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode())

    dispatch[_Ref] = save_ref

    def save_call(self, obj):
        self.save_ref(obj)
        self.save(tuple(obj.args))
        self.write(pickle.REDUCE)
        if obj.state is not None:
            self.save(obj.state)
            self.write(pickle.BUILD)

    dispatch[_Call] = save_call


# What torch.save takes as pickle_module to write a checkpoint holding _Call / _Ref objects.
_TORCH_PICKLE = types.SimpleNamespace(__name__='call_pickle', Pickler=_CallPickler)


def _dumps(obj, protocol=2) -> bytes:
    buf = io.BytesIO()
    _CallPickler(buf, protocol=protocol).dump(obj)
    return buf.getvalue()


class _Reduces:
    """What an attacker pickles with plain pickle: its __reduce__ names the callable."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _payloads(marker: str) -> dict:
    """name -> the object to embed; every one would import or run something if resolved."""
    touch = f'open({marker!r}, "w").close()'
    return {
        'f2py_main': _Call('numpy.f2py.__main__', 'main'),  # importing it runs f2py's CLI
        'os_system': _Call('os', 'system', (f'touch {marker}',)),
        'builtins_eval': _Call('builtins', 'eval', (touch,)),
        'subprocess_popen': _Call('subprocess', 'Popen', (['touch', marker],)),
        'numpy_testing': _Call('numpy.testing', 'assert_equal', (1, 1)),
        'numpy_testing_foo': _Call('numpy.testing.foo', 'bar'),
        'numpy_load': _Call('numpy', 'load', (marker,)),
        'reduce_os_system': _Reduces(os.system, (f'touch {marker}',)),
        'reduce_exec': _Reduces(exec, (touch,)),
    }


_GLOBAL_OF = {
    'f2py_main': 'numpy.f2py.__main__.main',
    'os_system': 'os.system',
    'builtins_eval': 'builtins.eval',
    'subprocess_popen': 'subprocess.Popen',
    'numpy_testing': 'numpy.testing.assert_equal',
    'numpy_testing_foo': 'numpy.testing.foo.bar',
    'numpy_load': 'numpy.load',
    'reduce_os_system': 'posix.system',
    'reduce_exec': '__builtin__.exec',
}  # protocol 2 spells builtins the Python 2 way


def _write_hostile_files(tmp_path, marker) -> list:
    """(loader, payload, path) for every loader x payload."""
    import torch

    cases = []
    for name, payload in _payloads(marker).items():
        raw = {
            'model': {'v_template': payload, 'f': np.zeros((1, 3), np.int64)},
            'j19': payload,
            '3dpw': {'poses': [payload], 'genders': ['m']},
        }
        for loader, obj in raw.items():
            path = tmp_path / f'{loader}_{name}.pkl'
            path.write_bytes(_dumps(obj))
            cases.append((loader, name, str(path)))
        path = tmp_path / f'torch_{name}.ckpt'
        ckpt = {'state_dict': {'w': torch.zeros(2)}, 'hyper_parameters': payload}
        torch.save(
            ckpt, path, pickle_module=_TORCH_PICKLE
        )  # a real zip checkpoint, payload in data.pkl
        cases.append(('torch', name, str(path)))
    return cases


# Runs in a fresh interpreter: warms each loader up on a good file, drops the modules a hostile
# global would import, then checks that no attempt brings any module back or adds a new one.
_ATTEMPTS = r"""
import json, sys
from data_pipelines import convert_3dpw, convert_common
from extpose_jax import body_models
from extpose_jax.convert import from_torch
cases, good = json.loads(sys.argv[1]), json.loads(sys.argv[2])
loaders = {'model': body_models.load_model_file, 'j19': body_models.load_j19_regressor,
           '3dpw': convert_3dpw.load_sequence, 'torch': from_torch.read_torch_file}
for loader, path in good.items():
    loaders[loader](path)
dropped = [m for m in sys.modules if m.split('.')[:2] in (['numpy', 'testing'], ['numpy', 'f2py'])
           or m.split('.')[0] in ('subprocess', 'chumpy')]
for m in dropped:
    del sys.modules[m]
before = set(sys.modules)
out = []
for loader, name, path in cases:
    try:
        loaders[loader](path)
        result = {'error': None}
    except Exception as e:
        result = {'error': type(e).__name__, 'message': str(e), 'exit_code': getattr(e, 'exit_code', None)}
    result.update(loader=loader, name=name, path=path, new_modules=sorted(set(sys.modules) - before))
    out.append(result)
print('RESULTS ' + json.dumps({'dropped': dropped, 'results': out}))
"""


def _good_files(tmp_path) -> dict:
    import torch

    model, j19, seq, ckpt = (
        tmp_path / n for n in ('good.pkl', 'good_j19.pkl', 'good_3dpw.pkl', 'good.ckpt')
    )
    body_files.write_model_pkl(str(model), tiny_model())
    body_files.write_array_pkl(str(j19), np.ones((2, 5)))
    seq.write_bytes(legacy_pickle.dumps(tiny_3dpw_sequence()))
    torch.save({'state_dict': {'w': torch.zeros(2)}}, ckpt)
    return {'model': str(model), 'j19': str(j19), '3dpw': str(seq), 'torch': str(ckpt)}


@pytest.mark.slow
def test_every_loader_refuses_hostile_globals_without_importing_or_running_anything(tmp_path):
    marker = str(tmp_path / 'MARKER')
    cases = _write_hostile_files(tmp_path, marker)
    proc = subprocess.run(
        [sys.executable, '-c', _ATTEMPTS, json.dumps(cases), json.dumps(_good_files(tmp_path))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.split('RESULTS ', 1)[1])
    assert {'numpy.testing', 'numpy.f2py'} <= set(
        report['dropped']
    )  # the check below means something
    assert len(report['results']) == len(cases) == 4 * len(_GLOBAL_OF)
    errors_of = {
        'model': 'BodyModelFileError',
        'j19': 'BodyModelFileError',
        '3dpw': 'ConversionError',
        'torch': 'CheckpointError',
    }
    for r in report['results']:
        where = f'{r["loader"]} / {r["name"]}'
        assert r['error'] == errors_of[r['loader']], (where, r)
        assert r['exit_code'] == 1, where
        assert r['message'].startswith(f'{r["path"]}: refusing to unpickle '), (where, r['message'])
        assert _GLOBAL_OF[r['name']] in r['message'], (where, r['message'])
        assert r['new_modules'] == [], (where, r['new_modules'])
    assert not os.path.exists(marker)


def test_refusal_names_the_file_and_the_global(tmp_path):
    path = tmp_path / 'x.pkl'
    path.write_bytes(_dumps({'a': _Call('numpy.f2py.__main__', 'main')}))
    with pytest.raises(convert_common.ConversionError) as err:
        safe_pickle.load(str(path), convert_common.ConversionError, '3DPW sequence file')
    assert (
        str(err.value)
        == f'{path}: refusing to unpickle numpy.f2py.__main__.main; not a 3DPW sequence file'
    )
    assert isinstance(err.value, errors.DataFileError)


def test_loads_reads_webdataset_person_lists_and_refuses_like_load():
    """data.pyd as webdataset writes it (pickle.dumps, protocols 2 to 5): arrays, numpy scalars,
    a 0-d object array holding a dict (HMR 2.0's extra_info fitting_loss)."""
    people = [
        {
            'keypoints_2d': np.arange(132, dtype=np.float32).reshape(44, 3),
            'scale': np.float64(0.9),
            'has_body_pose': np.float32(1),
            'extra_info': {'fitting_loss': np.array({'reprojection_loss': 3.5}, dtype=object)},
        }
    ]
    for protocol in (2, 3, 4, 5):
        got = safe_pickle.loads(pickle.dumps(people, protocol=protocol), 'w', ValueError, 'p')
        np.testing.assert_array_equal(got[0]['keypoints_2d'], people[0]['keypoints_2d'])
        assert got[0]['extra_info']['fitting_loss'].item() == {'reprojection_loss': 3.5}
    with pytest.raises(ValueError, match=r'^a.tar: k.data.pyd: refusing to unpickle numpy.f2py'):
        safe_pickle.loads(
            _dumps([_Call('numpy.f2py.__main__', 'main')]),
            'a.tar: k.data.pyd',
            ValueError,
            'data.pyd',
        )


@pytest.mark.parametrize('cut', [1, 2, 10, -1, -5])
def test_truncated_pickle_is_the_callers_error(tmp_path, cut):
    data = legacy_pickle.dumps({'a': np.arange(50.0), 's': {1, 2}})
    path = tmp_path / 'cut.pkl'
    path.write_bytes(data[:cut])
    with pytest.raises(body_models.BodyModelFileError, match=rf'{path}: not a readable thing'):
        safe_pickle.load(str(path), body_models.BodyModelFileError, 'thing')


def test_codecs_encode_is_latin1_text_only(tmp_path):
    path = tmp_path / 'codec.pkl'
    path.write_bytes(_dumps(_Call('_codecs', 'encode', ('x', 'idna'))))  # a codec lookup imports
    with pytest.raises(convert_common.ConversionError, match='not how a pickle writes bytes'):
        safe_pickle.load(str(path), convert_common.ConversionError, 'file')
    path.write_bytes(_dumps(_Call('__builtin__', 'bytes', (10**9,))))
    with pytest.raises(convert_common.ConversionError, match='not how a pickle writes bytes'):
        safe_pickle.load(str(path), convert_common.ConversionError, 'file')


# Files that crashed the interpreter before (numpy / scipy trust what they are given): run in a
# child process, so that a regression fails this test instead of killing the session.
_CRASHERS = r"""
import sys
from extpose_jax import body_models
for path in sys.argv[1:]:
    try:
        body_models.load_model_file(path)
        print('LOADED', path)
    except body_models.BodyModelFileError as e:
        print('REFUSED', e)
"""


@pytest.mark.slow
def test_files_that_would_crash_numpy_or_scipy_are_refused(tmp_path):
    model = tiny_model()
    # An object array whose dtype state clears numpy's object flags: its bytes become pointers.
    objects = tmp_path / 'object_dtype.pkl'
    objects.write_bytes(
        legacy_pickle.dumps({**model, 'v_template': np.array([1, 2], dtype=object)})
    )
    # A sparse regressor with a row index past its shape: scipy's toarray writes out of bounds.
    sparse = model['J_regressor'].copy()
    sparse.indices[0] = 10**6
    out_of_bounds = tmp_path / 'sparse.pkl'
    out_of_bounds.write_bytes(legacy_pickle.dumps({**model, 'J_regressor': sparse}))
    proc = subprocess.run(
        [sys.executable, '-c', _CRASHERS, str(objects), str(out_of_bounds)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith('REFUSED') for line in lines), proc.stdout
    assert 'changes its flags or size' in lines[0] and str(objects) in lines[0]
    assert "key 'J_regressor' is a csc sparse matrix with unreadable state" in lines[1]


def test_state_is_set_only_on_array_config_and_container_types(tmp_path):
    path = tmp_path / 'build.pkl'
    path.write_bytes(_dumps({'a': _Call('__builtin__', 'object', state={'x': 1})}))
    with pytest.raises(convert_common.ConversionError, match='setting the state of a object'):
        safe_pickle.load(str(path), convert_common.ConversionError, 'file')


# ---------------------------------------------------------------- what must read


def tiny_model(num_verts=6, num_joints=3, seed=0) -> dict:
    """A SMPL-layout model (not a meaningful body): the loader checks keys, not anatomy."""
    rng = np.random.default_rng(seed)
    regressor = rng.random((num_joints, num_verts)) * (rng.random((num_joints, num_verts)) < 0.5)
    return {
        'v_template': rng.normal(size=(num_verts, 3)),
        'shapedirs': rng.normal(size=(num_verts, 3, 2)),
        'posedirs': rng.normal(size=(num_verts, 3, 9 * (num_joints - 1))),
        'J_regressor': scipy.sparse.csc_matrix(regressor),
        'weights': rng.random((num_verts, num_joints)),
        'kintree_table': np.array(
            [[2**32 - 1] + list(range(num_joints - 1)), list(range(num_joints))], np.int64
        ),
        'f': rng.integers(0, num_verts, (4, 3)).astype(np.uint32),
        'bs_style': 'lbs',
    }


def tiny_3dpw_sequence(n=2, seed=0) -> dict:
    """One actor, n frames, in the 3DPW pkl layout (values arbitrary but of the right shapes)."""
    rng = np.random.default_rng(seed)
    return {
        'sequence': 'tiny',
        'genders': ['m'],
        'betas': [rng.normal(size=10)],
        'poses': [rng.normal(size=(n, 72))],
        'trans': [rng.normal(size=(n, 3))],
        'jointPositions': [rng.normal(size=(n, 72))],
        'poses2d': [rng.random((n, 3, 18))],
        'campose_valid': [np.ones(n, bool)],
        'cam_poses': np.tile(np.eye(4), (n, 1, 1)),
        'cam_intrinsics': np.diag([500.0, 500.0, 1.0]),
        'img_frame_ids': np.arange(n),
    }


def _assert_model_equal(got, model):
    for key in body_models._REQUIRED:
        want = model[key].toarray() if scipy.sparse.issparse(model[key]) else model[key]
        np.testing.assert_array_equal(got[key], want, err_msg=key)


_ENCODINGS = {
    'python2': lambda obj: legacy_pickle.dumps(obj),
    'python3_legacy_writer': lambda obj: legacy_pickle.dumps(obj, py2_strings=False),
    'python3_protocol2': lambda obj: pickle.dumps(obj, protocol=2),
    'python3_protocol5': lambda obj: pickle.dumps(obj, protocol=5),
}


@pytest.mark.parametrize('encoding', sorted(_ENCODINGS))
def test_model_and_j19_pickles_read_in_every_encoding(tmp_path, encoding):
    model, j19 = tiny_model(), np.random.default_rng(1).random((19, 6))
    # Plain pickle writes the modern scipy.sparse path, and protocol 2 bytes through _codecs.
    (tmp_path / 'm.pkl').write_bytes(_ENCODINGS[encoding](model))
    (tmp_path / 'j19.pkl').write_bytes(_ENCODINGS[encoding](j19))
    _assert_model_equal(body_models.load_model_file(str(tmp_path / 'm.pkl')), model)
    got = body_models.load_j19_regressor(str(tmp_path / 'j19.pkl'))
    np.testing.assert_array_equal(got, j19)
    assert got.dtype == j19.dtype


def test_official_chumpy_layout_reads(tmp_path):
    """Ch arrays (SMPL), MANO's shapedirs as a Select over a Ch, and an old file's derived
    chumpy expressions (left out: the loader recomputes them)."""
    model = tiny_model()
    full = model['shapedirs']
    wide = np.concatenate([full, np.zeros_like(full)], axis=2)  # MANO: a Select of the first betas
    idxs = np.arange(wide.size).reshape(wide.shape)[..., :2].ravel()
    ch = _Call(
        'copy_reg',
        '_reconstructor',
        (_Ref('chumpy.ch', 'Ch'), _Ref('__builtin__', 'object'), None),
        state={'x': wide},
    )
    select = _Call(
        'copy_reg',
        '_reconstructor',
        (_Ref('chumpy.reordering', 'Select'), _Ref('__builtin__', 'object'), None),
        state={'a': ch, 'idxs': idxs, 'preferred_shape': full.shape},
    )
    derived = _Call(
        'copy_reg',
        '_reconstructor',
        (_Ref('chumpy.ch_ops', 'add'), _Ref('__builtin__', 'object'), None),
        state={'a': ch},
    )
    obj = {
        **model,
        'shapedirs': select,
        'v_shaped': derived,
        'J_regressor': model['J_regressor'].toarray(),
    }
    (tmp_path / 'MANO_RIGHT.pkl').write_bytes(_dumps(obj))
    got = body_models.load_model_file(str(tmp_path / 'MANO_RIGHT.pkl'))
    _assert_model_equal(got, model)
    assert 'v_shaped' not in got
    obj['weights'] = derived  # a required key must be an array
    (tmp_path / 'MANO_RIGHT.pkl').write_bytes(_dumps(obj))
    with pytest.raises(
        body_models.BodyModelFileError, match="key 'weights' is a chumpy.ch_ops.add expression"
    ):
        body_models.load_model_file(str(tmp_path / 'MANO_RIGHT.pkl'))


def test_3dpw_sequence_reads_in_both_encodings(tmp_path):
    seq = tiny_3dpw_sequence()
    for name, data in (('py2', legacy_pickle.dumps(seq)), ('py3', pickle.dumps(seq, protocol=2))):
        path = tmp_path / f'{name}.pkl'
        path.write_bytes(data)
        got = convert_3dpw.load_sequence(str(path))
        np.testing.assert_array_equal(got['poses'][0], seq['poses'][0])
        np.testing.assert_array_equal(got['poses2d'][0], seq['poses2d'][0].transpose(0, 2, 1))
        assert got['genders'] == ['male']


def test_checkpoint_config_classes_are_inert_stand_ins(tmp_path):
    import torch

    from extpose_jax.convert import from_torch

    cfg = _Call('yacs.config', 'CfgNode', state={'__immutable__': True})
    args = _Call('argparse', 'Namespace', state={'lr': 1e-4})
    ckpt = {'state_dict': {'w': torch.arange(3.0)}, 'hyper_parameters': {'cfg': cfg, 'args': args}}
    torch.save(ckpt, tmp_path / 'x.ckpt', pickle_module=_TORCH_PICKLE)
    got = from_torch.read_torch_file(str(tmp_path / 'x.ckpt'))
    np.testing.assert_array_equal(got['state_dict']['w'].numpy(), [0.0, 1.0, 2.0])
    node = got['hyper_parameters']['cfg']
    assert isinstance(node, safe_pickle.StandIn) and node.pickled_name == 'yacs.config.CfgNode'
    assert node.pickled_state == {'__immutable__': True}
    assert got['hyper_parameters']['args'].pickled_state == {'lr': 1e-4}
    assert 'yacs' not in sys.modules
