"""The synthetic body models as files, in the layout and byte format of the official ones.

    python -m data_pipelines.synthetic.body_files --out DIR [--seed S]

writes smpl/SMPL_{NEUTRAL,MALE,FEMALE}.{pkl,npz}, mano/MANO_RIGHT.{pkl,npz} and
SMPL_to_J19.pkl from the model dicts of bodies.py.

Files (write_body_models): the .pkl files are Python-2 pickles like the
official ones (load with ``encoding='latin1'``; shapedirs, v_template, J and
weights are ``chumpy.ch.Ch`` objects, J_regressor(_prior) are
``scipy.sparse.csc.csc_matrix``), each with an .npz of plain dense arrays
beside it.  smplx reads the npz files as follows: ``smplx.MANO(model_path=npz,
ext='npz', ...)``; ``smplx.SMPL`` opens a model path with pickle only, so pass
``data_struct=smplx.utils.Struct(**np.load(npz))``.  SMPL_to_J19.pkl is a plain
(19, 6890) float64 array pickled the Python-3 way (loads with any encoding).
"""

from __future__ import annotations

import os
import time

import numpy as np
import scipy.sparse

from data_pipelines import atomic_file
from data_pipelines.synthetic import legacy_pickle
from data_pipelines.synthetic.bodies import make_j19_regressor, make_smpl
from data_pipelines.synthetic.mano_model import make_mano
from extpose_jax import errors

# Arrays stored as chumpy objects in our .pkl files (the real SMPL files
# have at least shapedirs as chumpy; v_template, J and weights are too here).
CHUMPY_KEYS = ('shapedirs', 'v_template', 'J', 'weights')


def _write_file(path, write_fn):
    """Atomic write (a reader never sees a half-written model), making the
    folder first."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_file.atomic_write(path, write_fn)


def write_model_pkl(path, model):
    """Write ``model`` as the official Python-2 pickle: keys and array
    payloads as Python-2 str, CHUMPY_KEYS as chumpy.ch.Ch objects, sparse
    regressors as scipy.sparse.csc.csc_matrix.  Needs encoding='latin1'."""
    obj = {
        k: legacy_pickle.ChumpyArray(v) if k in CHUMPY_KEYS and isinstance(v, np.ndarray) else v
        for k, v in model.items()
    }
    data = legacy_pickle.dumps(obj)
    _write_file(path, lambda f: f.write(data))


def write_array_pkl(path, array):
    """Pickle a plain ndarray the way Python 3 / numpy 1.x did (bytes payload,
    numpy.core path): loads with or without encoding='latin1'."""
    data = legacy_pickle.dumps(np.asarray(array), py2_strings=False)
    _write_file(path, lambda f: f.write(data))


def _dense_model(model):
    out = {}
    for k, v in model.items():
        if scipy.sparse.issparse(v):
            out[k] = np.asarray(v.todense(), dtype=np.float64)
        elif isinstance(v, np.ndarray):
            out[k] = v
        elif isinstance(v, str):
            out[k] = np.array(v)
        # dicts (pose_training_info) are not arrays: left out of the npz
    return out


def write_model_npz(path, model):
    """Write ``model`` as an uncompressed npz of plain dense arrays (sparse
    regressors densified, strings as 0-d unicode arrays), loadable without
    pickle and by smplx."""
    arrays = _dense_model(model)
    _write_file(path, lambda f: np.savez(f, **arrays))


BODY_MODEL_FILES = tuple(
    f'smpl/SMPL_{g}.{e}' for g in ('NEUTRAL', 'MALE', 'FEMALE') for e in ('pkl', 'npz')
) + ('mano/MANO_RIGHT.pkl', 'mano/MANO_RIGHT.npz', 'SMPL_to_J19.pkl')


def body_models_complete(out_dir):
    """True if ``out_dir`` already holds every file write_body_models writes
    (the writes are atomic, so a present file is a complete file)."""
    return all(os.path.isfile(os.path.join(os.fspath(out_dir), rel)) for rel in BODY_MODEL_FILES)


def write_body_models(out_dir, seed=0):
    """Generate and write the whole set; returns {relative path: absolute path}:
    smpl/SMPL_{NEUTRAL,MALE,FEMALE}.{pkl,npz}, mano/MANO_RIGHT.{pkl,npz},
    SMPL_to_J19.pkl."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    paths = {}

    def put(rel, writer, obj):
        full = os.path.join(out_dir, rel)
        writer(full, obj)
        paths[rel] = full

    neutral = None
    for gender in ('neutral', 'male', 'female'):
        model = make_smpl(gender, seed)
        put(f'smpl/SMPL_{gender.upper()}.pkl', write_model_pkl, model)
        put(f'smpl/SMPL_{gender.upper()}.npz', write_model_npz, model)
        if gender == 'neutral':
            neutral = model
    hand = make_mano(seed)
    put('mano/MANO_RIGHT.pkl', write_model_pkl, hand)
    put('mano/MANO_RIGHT.npz', write_model_npz, hand)
    put('SMPL_to_J19.pkl', write_array_pkl, make_j19_regressor(neutral))
    return paths


def main(argv=None):
    ap = errors.ArgumentParser(
        description='Write synthetic SMPL / MANO model files in the official layout.'
    )
    ap.add_argument('--out', required=True, help='output folder')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)  # an unusable --out fails now, not after the models
    t0 = time.time()
    paths = write_body_models(args.out, seed=args.seed)
    for rel in sorted(paths):
        print(paths[rel])
    print(f'wrote {len(paths)} files in {time.time() - t0:.1f} s')


if __name__ == '__main__':
    errors.guard(main)
