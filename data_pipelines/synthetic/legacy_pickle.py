"""Pickles in the byte format of the official SMPL / MANO and 3DPW files.

The licensed SMPL / MANO model files and the 3DPW sequence files were written by
Python 2's cPickle: protocol 2, strings as Python-2 ``str`` (so Python 3 must
load them with ``encoding='latin1'``; the default ASCII decoding fails on the
binary array payloads), ndarrays through ``numpy.core.multiarray._reconstruct``,
and objects of the libraries of the day (``chumpy.ch.Ch`` arrays, the old
``scipy.sparse.csc.csc_matrix`` path).  The synthetic stand-ins are written the
same way, so that every loader (ours, smplx, the datasets' own tools) meets the
real files' quirks on a machine with nothing licensed on it.  Those classes are
only named (GLOBAL opcodes), never imported: chumpy need not be installed, and
the old scipy paths need not exist.

    dumps(obj)                     Python-2 pickle, as the official files
    dumps(obj, py2_strings=False)  Python-3 pickle (bytes payloads, numpy.core
                                   paths), as numpy 1.x wrote: any encoding loads it
    ChumpyArray(x)                 wraps an array to be written as a chumpy.ch.Ch
"""

from __future__ import annotations

import io
import pickle
import struct

import numpy as np
import scipy.sparse


class ChumpyArray:
    """Marks an array to be pickled as a chumpy.ch.Ch object."""

    def __init__(self, x):
        self.x = np.asarray(x)


class _Global:
    """A reference to module.name, written as a GLOBAL opcode without
    importing anything."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class _LegacyPickler(pickle._Pickler):
    """Pure-Python pickler that writes what Python 2's cPickle wrote for the
    official model files (protocol 2):

    * str / bytes as Python-2 ``str`` (SHORT_BINSTRING / BINSTRING);
    * ndarrays through ``numpy.core.multiarray._reconstruct`` plus a BUILD
      state (version 1, shape, dtype, fortran flag, raw bytes), dtypes through
      ``numpy.dtype`` with their version-3 state;
    * chumpy arrays as ``copy_reg._reconstructor(chumpy.ch.Ch, object, None)``
      with a state dict whose 'x' is the array;
    * csc matrices as ``scipy.sparse.csc.csc_matrix`` (NEWOBJ) with the
      old-scipy state dict.

    With ``py2_strings=False`` (and protocol 3) it writes a Python-3 pickle
    with bytes payloads instead.
    """

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, py2_strings=True):
        super().__init__(file, protocol=2 if py2_strings else 3)
        self.py2_strings = py2_strings
        self._markers = {}  # keeps globals / dtypes unique, so they are memoised

    def _marker(self, key, factory):
        if key not in self._markers:
            self._markers[key] = factory()
        return self._markers[key]

    def global_ref(self, module, name):
        return self._marker(('global', module, name), lambda: _Global(module, name))

    def save_global_ref(self, obj):
        self.write(
            pickle.GLOBAL + obj.module.encode('ascii') + b'\n' + obj.name.encode('ascii') + b'\n'
        )
        self.memoize(obj)

    dispatch[_Global] = save_global_ref

    def save_py2_str(self, obj):
        if not self.py2_strings:
            if isinstance(obj, str):
                return pickle._Pickler.save_str(self, obj)
            return pickle._Pickler.save_bytes(self, obj)
        data = obj.encode('latin1') if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack('<I', len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str

    def save_dtype(self, dt):
        dt = np.dtype(dt)
        marker = self._marker(('dtype', dt.str), lambda: object())
        if id(marker) in self.memo:
            self.save(marker)
            return
        order = '|' if dt.itemsize == 1 else '<'
        self.save(self.global_ref('numpy', 'dtype'))
        self.save((dt.str[1:], 0, 1))
        self.write(pickle.REDUCE)
        self.memoize(marker)
        self.save((3, order, None, None, None, -1, -1, 0))
        self.write(pickle.BUILD)

    def save_ndarray(self, arr):
        data = np.ascontiguousarray(arr)
        if data.dtype.byteorder == '>':
            data = data.astype(data.dtype.newbyteorder('<'))
        self.save(self.global_ref('numpy.core.multiarray', '_reconstruct'))
        self.save((self.global_ref('numpy', 'ndarray'), (0,), 'b' if self.py2_strings else b'b'))
        self.write(pickle.REDUCE)
        self.memoize(arr)
        self.write(pickle.MARK)
        self.save(1)
        self.save(tuple(int(n) for n in data.shape))
        self.save_dtype(data.dtype)
        self.save(False)
        self.save(data.tobytes())
        self.write(pickle.TUPLE)
        self.write(pickle.BUILD)

    dispatch[np.ndarray] = save_ndarray

    def save_chumpy(self, ch):
        self.save(self.global_ref('copy_reg', '_reconstructor'))
        self.save(
            (self.global_ref('chumpy.ch', 'Ch'), self.global_ref('__builtin__', 'object'), None)
        )
        self.write(pickle.REDUCE)
        self.memoize(ch)
        # A few of the attributes a pickled chumpy array carries.
        self.save(
            {
                'x': ch.x,
                '_cache': {'r': None, 'drs': {}},
                '_itr': None,
                '_depends_on_deps': {},
                'label': None,
            }
        )
        self.write(pickle.BUILD)

    dispatch[ChumpyArray] = save_chumpy

    def save_csc(self, m):
        m = scipy.sparse.csc_matrix(m)
        self.save(self.global_ref('scipy.sparse.csc', 'csc_matrix'))
        self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
        self.memoize(m)
        self.save(
            {
                '_shape': tuple(int(n) for n in m.shape),
                'maxprint': 50,
                'format': 'csc',
                'data': np.asarray(m.data, np.float64),
                'indices': np.asarray(m.indices, np.int32),
                'indptr': np.asarray(m.indptr, np.int32),
            }
        )
        self.write(pickle.BUILD)

    dispatch[scipy.sparse.csc_matrix] = save_csc

    def save_np_scalar(self, x):
        self.save(x.item())

    for _t in (np.float64, np.float32, np.int64, np.int32, np.bool_, np.str_):
        dispatch[_t] = save_np_scalar
    del _t


def dumps(obj, py2_strings=True) -> bytes:
    """``obj`` pickled like the official Python-2 files (see the module doc);
    with ``py2_strings=False``, a Python-3 pickle that loads with any encoding."""
    buf = io.BytesIO()
    _LegacyPickler(buf, py2_strings=py2_strings).dump(obj)
    return buf.getvalue()
