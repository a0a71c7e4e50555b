"""The one reader of every pickle the project opens: nothing in a file is imported or run.

Two kinds of pickle arrive. Legacy pickles (the official SMPL / MANO model files, HMR 2.0's J19
regressor, the 3DPW sequence files) hold numpy arrays, plain containers and a few classes of
libraries we do not install (chumpy, the scipy.sparse of their day). PyTorch checkpoints hold
tensors, and around them whatever Lightning pickled (the run's yacs / omegaconf config).

A global named in the file is resolved from a fixed table of objects taken from modules that are
already imported, never through `pickle.Unpickler.find_class` or `__import__`: unpickling imports
nothing, so no module's import side effects can run (importing `numpy.f2py.__main__`, for one,
runs f2py's command line). The table is exact (module, name) pairs:

* numpy's array reconstruction under the numpy 1.x (`numpy.core...`) and 2.x (`numpy._core...`)
  paths, `numpy.ndarray`, `numpy.dtype`; `copyreg._reconstructor`; `object`, `set`,
  `frozenset`, `bytes()` and `collections.OrderedDict` under their Python 2 and 3 names;
  `_codecs.encode`, limited to latin-1 text (how Python 3 writes bytes in a protocol-2 pickle);
* for checkpoints, in addition, torch's own weights_only allow-list.

Classes of libraries a file may name but we never import become inert stand-ins (`StandIn`): they
keep the pickled arguments, items and state and run nothing. Legacy pickles get an exact list of
them (LEGACY_STAND_INS). A checkpoint gets one for any class outside the standard library, numpy,
scipy and torch: a real HMR 2.0 / HaMeR .ckpt pickles its yacs CfgNode under `hyper_parameters`,
so refusing foreign classes would make the very checkpoints we import unreadable, while a stand-in
costs nothing. Every other name (`os.system`, `builtins.eval`, `subprocess.Popen`, any numpy or
torch name not in the table) is refused, and a truncated or garbled file fails the same way:
with the caller's error class, naming the file.
"""

from __future__ import annotations

import collections
import copyreg
import io
import pickle
import struct
import sys
import types

import numpy as np

# The classes official model files name (chumpy expressions, old and new scipy.sparse paths).
LEGACY_STAND_INS = frozenset(
    {
        'chumpy.ch.Ch',
        'chumpy.reordering.Select',
        'chumpy.reordering.transpose',
        'chumpy.ch_ops.add',
        'scipy.sparse.csc.csc_matrix',
        'scipy.sparse._csc.csc_matrix',
        'scipy.sparse.csr.csr_matrix',
        'scipy.sparse._csr.csr_matrix',
    }
)
# Standard-library data types a checkpoint's config may hold: stood in for, like foreign classes.
_CHECKPOINT_STAND_INS = frozenset(
    {
        'argparse.Namespace',
        'typing.Any',
        'pathlib.PosixPath',
        'pathlib.PurePosixPath',
        'pathlib.WindowsPath',
        'pathlib.PureWindowsPath',
    }
)
# Code a checkpoint has no business naming beyond the table: refused, never stood in for.
_CODE_PACKAGES = frozenset(sys.stdlib_module_names) | {
    '__builtin__',
    'copy_reg',
    'numpy',
    'scipy',
    'torch',
}

# How a truncated or garbled pickle fails inside the unpickler and the constructors it calls.
# (numpy's scalar() refuses some states with RuntimeError, of which RecursionError is one too.)
DAMAGE = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    AttributeError,
    LookupError,
    struct.error,
    OverflowError,
    MemoryError,
    RuntimeError,
)


class Refused(Exception):
    """A global outside the allow-list; turned into the caller's error by `load` / `load_torch`."""

    def __init__(self, module: str, name: str):
        super().__init__(f'{module}.{name}')
        self.module, self.name = module, name


class StandIn:
    """A pickled object of a class that is never imported: keeps what the pickle gave, runs nothing.

    `pickled_name` is the class's module.name; `pickled_args` the constructor arguments,
    `pickled_state` the BUILD state, `pickled_items` what a dict / list subclass held.
    """

    pickled_name = ''
    pickled_args = ()
    pickled_state = None

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.pickled_args = args
        return obj

    def __init__(self, *args, **kwargs):
        del args, kwargs

    def __setstate__(self, state):
        self.pickled_state = state

    def _items(self, kind):
        if 'pickled_items' not in self.__dict__:
            self.pickled_items = kind()
        return self.pickled_items

    def __setitem__(self, key, value):
        self._items(dict)[key] = value

    def append(self, value):
        self._items(list).append(value)

    def extend(self, values):
        self._items(list).extend(values)


_STAND_IN_CLASSES: dict[str, type] = {}


def stand_in(full_name: str) -> type:
    """The StandIn subclass for module.name (one per name, so isinstance and `is` work)."""
    if full_name not in _STAND_IN_CLASSES:
        module, _, name = full_name.rpartition('.')
        _STAND_IN_CLASSES[full_name] = type(
            name,
            (StandIn,),
            {'__module__': module, '__qualname__': name, 'pickled_name': full_name},
        )
    return _STAND_IN_CLASSES[full_name]


def _latin1_encode(text, encoding='utf-8'):
    # A general _codecs.encode would look the codec up, which can import an encodings module.
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(
            f'_codecs.encode({type(text).__name__}, {encoding!r}) is not how a pickle writes bytes'
        )
    return text.encode('latin1')


def _empty_bytes(*args):
    if args:  # bytes(n) would allocate n zero bytes on the file's say-so
        raise pickle.UnpicklingError('bytes() with arguments is not how a pickle writes bytes')
    return b''


def _legacy_table() -> dict:
    """(module, name) -> object, resolved from numpy itself (its reduce functions), not imported."""
    array = np.zeros(1)
    numpy_fns = {
        'multiarray._reconstruct': array.__reduce__()[0],
        'multiarray.scalar': np.float64(0).__reduce__()[0],
        'numeric._frombuffer': array.__reduce_ex__(5)[0],
    }
    table = {
        (f'{core}.{fn.rpartition(".")[0]}', fn.rpartition('.')[2]): obj
        for fn, obj in numpy_fns.items()
        for core in ('numpy.core', 'numpy._core')
    }
    table.update(
        {
            ('numpy', 'ndarray'): np.ndarray,
            ('numpy', 'dtype'): np.dtype,
            ('copy_reg', '_reconstructor'): copyreg._reconstructor,
            ('copyreg', '_reconstructor'): copyreg._reconstructor,
            ('collections', 'OrderedDict'): collections.OrderedDict,
            ('_codecs', 'encode'): _latin1_encode,
        }
    )
    for builtins_name in ('__builtin__', 'builtins'):
        table.update(
            {
                (builtins_name, 'object'): object,
                (builtins_name, 'set'): set,
                (builtins_name, 'frozenset'): frozenset,
                (builtins_name, 'bytes'): _empty_bytes,
            }
        )
    return table


_LEGACY = _legacy_table()
_TORCH: dict = {}


def _torch_table() -> dict:
    """torch's weights_only globals plus the legacy table; `_codecs.encode` stays latin-1 only."""
    if not _TORCH:
        from torch._weights_only_unpickler import _get_allowed_globals

        for full, obj in _get_allowed_globals().items():
            module, _, name = full.rpartition('.')
            _TORCH[(module, name)] = obj
        _TORCH.update(_LEGACY)
    return _TORCH


def _check_dtype_state(dtype: np.dtype, state) -> None:
    """A dtype's BUILD may set its byte order (and metadata), nothing that says what its bytes hold.

    numpy's dtype.__setstate__ trusts the pickled flags, size and fields: an object dtype whose
    flags are cleared takes raw bytes as object pointers (a crash, or worse). The state is tried
    on a copy first; structured and subarray states are refused (no file we read holds them)."""
    if not isinstance(state, tuple) or len(state) < 8 or any(x is not None for x in state[2:5]):
        raise pickle.UnpicklingError(f'dtype {dtype} with a structured or malformed state')
    probe = np.dtype(*dtype.__reduce__()[1])  # a fresh copy: np.dtype(dtype, copy=True) is dtype
    probe.__setstate__(state)
    if (probe.flags, probe.itemsize, probe.alignment) != (
        dtype.flags,
        dtype.itemsize,
        dtype.alignment,
    ):
        raise pickle.UnpicklingError(f'dtype {dtype}: its pickled state changes its flags or size')


class _Reader(pickle._Unpickler):
    """Resolves globals from the legacy table; everything else outside LEGACY_STAND_INS is refused.

    The pure-Python unpickler, because its BUILD can be checked (`_check_dtype_state`); the files
    hold few opcodes (arrays are single byte strings), so speed is not at stake."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, **kwargs):
        kwargs.setdefault('encoding', 'latin1')  # Python 2 str payloads are raw bytes
        super().__init__(file, **kwargs)

    def load_build(self):
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(inst, np.dtype):
            _check_dtype_state(inst, self.stack[-1])
        elif not isinstance(inst, self.buildable()):  # as torch's weights_only loader rules
            raise pickle.UnpicklingError(
                f'setting the state of a {type(inst).__name__} is not part of this kind of pickle'
            )
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def buildable(self) -> tuple:
        """The types whose state a pickle may set (BUILD)."""
        return StandIn, np.ndarray, collections.OrderedDict

    def table(self) -> dict:
        return _LEGACY

    def foreign(self, module: str, name: str) -> bool:
        return f'{module}.{name}' in LEGACY_STAND_INS

    def find_class(self, module, name):
        obj = self.table().get((module, name))
        if obj is not None:
            return obj
        if self.foreign(module, name):
            return stand_in(f'{module}.{name}')
        raise Refused(module, name)


class _CheckpointReader(_Reader):
    """torch.load's Unpickler (torch subclasses it and passes the arguments): see module doc."""

    def table(self) -> dict:
        return _torch_table()

    def buildable(self) -> tuple:
        import torch

        return super().buildable() + (torch.Tensor,)

    def foreign(self, module: str, name: str) -> bool:
        full = f'{module}.{name}'
        return full in _CHECKPOINT_STAND_INS or module.split('.')[0] not in _CODE_PACKAGES


# What torch.load takes as pickle_module: it subclasses Unpickler, and calls load for old files.
CHECKPOINT_PICKLE = types.SimpleNamespace(
    __name__='extpose_safe_pickle',
    Unpickler=_CheckpointReader,
    load=lambda f, **kw: _CheckpointReader(f, **kw).load(),
)


def _refusal(path: str, error: type, what: str, refused: Refused) -> Exception:
    return error(f'{path}: refusing to unpickle {refused}; not a {what}')


def load(path: str, error: type, what: str):
    """Unpickles a legacy pickle at `path`. A refused global or a damaged file raises
    `error` naming the file (and the global); `what` says what the file should be, e.g.
    'SMPL/MANO model file'. A missing file is FileNotFoundError as usual."""
    with open(path, 'rb') as f:
        return _read(f, path, error, what)


def loads(data: bytes, where: str, error: type, what: str):
    """`load` for a pickle held in memory (a tar member such as WebDataset's data.pyd); `where`
    names it in errors, e.g. 'shard.tar: <key>.data.pyd'."""
    return _read(io.BytesIO(data), where, error, what)


def _read(f, where: str, error: type, what: str):
    try:
        return _Reader(f).load()
    except Refused as e:
        raise _refusal(where, error, what, e) from None
    except DAMAGE as e:
        raise error(
            f'{where}: not a readable {what} (truncated or damaged: {type(e).__name__}: {e})'
        ) from e


def load_torch(path: str, error: type, what: str = 'PyTorch checkpoint'):
    """torch.load on CPU through CHECKPOINT_PICKLE: tensors as torch.load(weights_only=True) gives
    them, foreign config objects as stand-ins; refusals and damage raise `error` naming the file."""
    import torch

    try:
        return torch.load(
            path, map_location='cpu', weights_only=False, pickle_module=CHECKPOINT_PICKLE
        )
    except Refused as e:
        raise _refusal(path, error, what, e) from None
    except Exception as e:  # noqa: BLE001 - torch's zip reader fails with RuntimeError and others
        raise error(
            f'{path}: not a readable {what} (truncated or not written by torch.save?): '
            f'{type(e).__name__}: {e}'
        ) from e
