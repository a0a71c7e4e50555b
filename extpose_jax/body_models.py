"""SMPL and MANO in JAX: loading the official files and linear blend skinning.

The math follows smplx's `lbs` step for step (shape blend, joint regression, pose blend from
(R - I), kinematic chain, skinning), so outputs agree with smplx's SMPL/MANO layers to float
rounding. On top of the skeleton joints a model can pick vertices (smplx's vertex joints),
reorder everything through a joint map and append regressed extra joints; that is how HMR 2.0's
44 body keypoints and HaMeR's 21 hand keypoints are made.

Official `.pkl` files are Python-2 pickles that reference chumpy and old scipy.sparse classes.
They are read by safe_pickle, which never imports chumpy and refuses any class that a model
file has no business holding, so a foreign pickle is an error, not code execution.
"""

from __future__ import annotations

import functools
import os
import zipfile
from typing import Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from extpose_jax import errors, geometry, safe_pickle, skeletons

# smplx's vertex joints for SMPL (face, then feet) and MANO (fingertips); the joint maps of
# HMR 2.0 and HaMeR index into [skeleton joints, these vertices].
SMPL_VERTEX_JOINTS = (332, 6260, 2800, 4071, 583, 3216, 3226, 3387, 6617, 6624, 6787)
MANO_TIP_VERTICES = (744, 320, 443, 554, 671)  # thumb, index, middle, ring, pinky

_REQUIRED = ('v_template', 'shapedirs', 'posedirs', 'J_regressor', 'weights', 'kintree_table', 'f')


class BodyModelFileError(errors.DataFileError):
    """A body-model file that is missing, truncated, foreign or inconsistent."""


class ModelFileNotFound(BodyModelFileError, FileNotFoundError):
    """No file of a body model in the folder the user gave; names the folder and the names tried."""

    exit_code = 2  # a path the user got wrong, as for every missing path


# The names each file goes by, preferred first: smplx's (HMR 2.0's, HaMeR's), then the official
# downloads' (SMPL 1.1.0 and 1.0.0, SMPLify's neutral model), which people often keep unrenamed.
# Compared ignoring case: the downloads themselves mix basicModel_ and basicmodel_.
MODEL_FILES = {
    'SMPL_NEUTRAL': (
        'SMPL_NEUTRAL.pkl',
        'SMPL_NEUTRAL.npz',
        'basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl',
        'basicModel_neutral_lbs_10_207_0_v1.0.0.pkl',
    ),
    'SMPL_MALE': (
        'SMPL_MALE.pkl',
        'SMPL_MALE.npz',
        'basicmodel_m_lbs_10_207_0_v1.1.0.pkl',
        'basicmodel_m_lbs_10_207_0_v1.0.0.pkl',
    ),
    'SMPL_FEMALE': (
        'SMPL_FEMALE.pkl',
        'SMPL_FEMALE.npz',
        'basicmodel_f_lbs_10_207_0_v1.1.0.pkl',
        'basicModel_f_lbs_10_207_0_v1.0.0.pkl',
    ),
    'MANO_RIGHT': ('MANO_RIGHT.pkl', 'MANO_RIGHT.npz'),
    'SMPL_to_J19': ('SMPL_to_J19.pkl',),
}
# Where a body-model folder may keep them: flat, or as the smplx and HMR 2.0 layouts do.
_SUBFOLDERS = ('', 'smpl', 'mano')


def find_model_file(models_dir: str, name: str) -> str:
    """The path of body-model file `name` (a MODEL_FILES key) in `models_dir` or its smpl/ or
    mano/ folder; ModelFileNotFound names the folder and every file name tried."""
    if name not in MODEL_FILES:
        raise ValueError(f'unknown body-model file {name!r}; expected one of {sorted(MODEL_FILES)}')
    models_dir, names = os.fspath(models_dir), MODEL_FILES[name]
    if not os.path.isdir(models_dir):
        raise ModelFileNotFound(
            f'body-model folder {models_dir} does not exist (it should hold {names[0]})'
        )
    for sub in _SUBFOLDERS:
        folder = os.path.join(models_dir, sub)
        try:
            present = {entry.lower(): entry for entry in os.listdir(folder)}
        except OSError:  # no such subfolder (or not one): the others may still hold it
            continue
        for wanted in names:
            path = os.path.join(folder, present.get(wanted.lower(), wanted))
            if os.path.isfile(path):
                return path
    raise ModelFileNotFound(
        f'no {" / ".join(names)} in {models_dir} nor in its smpl/ or mano/ folder'
    )


# ----------------------------------------------------------------------------- loading


# What _to_numpy gives for a chumpy expression it does not evaluate (see load_model_file).
_NOT_EVALUATED = object()


def _chumpy_value(value: safe_pickle.StandIn, path: str, key: str):
    """A chumpy expression's array: `Ch` holds it as 'x'; MANO's shapedirs is a `Select` of a Ch
    (evaluated as chumpy's compute_r does); other nodes are _NOT_EVALUATED."""
    state = value.pickled_state if isinstance(value.pickled_state, dict) else {}
    try:
        if value.pickled_name == 'chumpy.ch.Ch' and 'x' in state:
            return np.asarray(state['x'])
        if value.pickled_name == 'chumpy.reordering.Select':
            source = state['a']
            if isinstance(source, safe_pickle.StandIn):
                source = _to_numpy(source, path, key)
            flat = np.asarray(source).ravel()[np.asarray(state['idxs'])]
            return flat.reshape(state['preferred_shape'])
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as e:
        raise BodyModelFileError(
            f"{path}: key '{key}' is a {value.pickled_name} with unreadable state ({e!r})"
        ) from e
    return _NOT_EVALUATED


def _to_numpy(value, path: str, key: str):
    """Unwraps chumpy and sparse stand-ins into plain numpy arrays (or _NOT_EVALUATED)."""
    if isinstance(value, safe_pickle.StandIn) and value.pickled_name.startswith('chumpy.'):
        return _chumpy_value(value, path, key)
    if isinstance(value, safe_pickle.StandIn):  # old or new scipy.sparse csc / csr path
        fmt = value.pickled_name.rpartition('.')[2][:3]
        state = value.pickled_state if isinstance(value.pickled_state, dict) else {}
        try:
            shape = tuple(state.get('_shape', state.get('shape')))
            import scipy.sparse  # only sparse J_regressors need it

            cls = scipy.sparse.csc_matrix if fmt == 'csc' else scipy.sparse.csr_matrix
            matrix = cls((state['data'], state['indices'], state['indptr']), shape=shape)
            matrix.check_format(full_check=True)  # toarray trusts the indices: out of bounds crash
            return matrix.toarray()
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, MemoryError) as e:
            raise BodyModelFileError(
                f"{path}: key '{key}' is a {fmt} sparse matrix with unreadable state ({e!r})"
            ) from e
    if hasattr(value, 'toarray'):  # a modern scipy sparse object in an .npz
        return value.toarray()
    return value


def _load_numpy_file(path: str, what: str):
    """np.load without pickles: an .npz as a dict, an .npy as its array; damage names the file."""
    try:
        with open(path, 'rb') as f:
            got = np.load(f, allow_pickle=False)
            return {k: got[k] for k in got.files} if isinstance(got, np.lib.npyio.NpzFile) else got
    except (zipfile.BadZipFile, *safe_pickle.DAMAGE) as e:
        raise BodyModelFileError(
            f'{path}: not a readable {what} (truncated or damaged: {type(e).__name__}: {e})'
        ) from e


def load_model_file(path: str) -> dict:
    """Reads a SMPL/MANO `.pkl` (official, chumpy or clean) or `.npz` into numpy arrays.

    A key holding a chumpy expression other than an array (`Ch`) or MANO's `Select` of one (an
    old file's derived J or v_shaped) is left out: the loader recomputes what those held."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'body model file not found: {path}')
    what = 'SMPL/MANO model file'
    if path.endswith('.npz'):
        raw = _load_numpy_file(path, what)
    else:
        raw = safe_pickle.load(path, BodyModelFileError, what)
    if not isinstance(raw, dict):
        raise BodyModelFileError(
            f'{path}: expected a dict of model arrays, got {type(raw).__name__}'
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise BodyModelFileError(f'{path}: not a {what}, missing keys {missing}')
    arrays = {k: _to_numpy(v, path, k) for k, v in raw.items()}
    for key in _REQUIRED:
        value = arrays[key]
        if value is _NOT_EVALUATED:
            raise BodyModelFileError(
                f"{path}: key '{key}' is a {raw[key].pickled_name} expression, not an array"
            )
        if not isinstance(value, np.ndarray) or value.dtype.kind not in 'fiub':
            got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
            raise BodyModelFileError(f"{path}: key '{key}' is not a numeric array ({got})")
    return {k: v for k, v in arrays.items() if v is not _NOT_EVALUATED}


def _check_shapes(arrays: dict, path: str) -> None:
    def bad(key, expected):
        raise BodyModelFileError(
            f"{path}: key '{key}' has shape {np.shape(arrays[key])}, expected {expected}"
        )

    v = np.shape(arrays['v_template'])
    if len(v) != 2 or v[1] != 3:
        bad('v_template', '(V, 3)')
    n_verts = v[0]
    n_joints = np.shape(arrays['kintree_table'])[-1]
    if np.shape(arrays['kintree_table']) != (2, n_joints):
        bad('kintree_table', '(2, J)')
    sd = np.shape(arrays['shapedirs'])
    if len(sd) != 3 or sd[:2] != (n_verts, 3):
        bad('shapedirs', f'({n_verts}, 3, num_betas)')
    expected = {
        'posedirs': (n_verts, 3, 9 * (n_joints - 1)),
        'J_regressor': (n_joints, n_verts),
        'weights': (n_verts, n_joints),
    }
    for key, shape in expected.items():
        if np.shape(arrays[key]) != shape:
            bad(key, shape)
    f = np.shape(arrays['f'])
    if len(f) != 2 or f[1] != 3:
        bad('f', '(F, 3)')


# ----------------------------------------------------------------------------- the model


@flax.struct.dataclass
class BodyModel:
    """Arrays of one body model; a pytree, so it can be passed into jit and vmap."""

    v_template: jax.Array  # (V, 3)
    shapedirs: jax.Array  # (V, 3, B)
    posedirs: jax.Array  # (9 (J-1), 3V): smplx's layout, pose feature @ posedirs
    j_regressor: jax.Array  # (J, V)
    weights: jax.Array  # (V, J)
    faces: jax.Array  # (F, 3) int32
    vertex_joints: jax.Array  # (K,) int32 vertices appended to the skeleton joints
    joint_map: jax.Array  # (M,) int32 into [J skeleton joints, K vertex joints]
    extra_regressor: Optional[jax.Array] = None  # (E, V) appended after the joint map
    parents: tuple = flax.struct.field(pytree_node=False, default=())
    kind: str = flax.struct.field(pytree_node=False, default='smpl')
    mirrored: bool = flax.struct.field(pytree_node=False, default=False)

    @property
    def num_betas(self) -> int:
        return self.shapedirs.shape[-1]

    @property
    def num_joints(self) -> int:
        return len(self.parents)


def _build(
    arrays: dict,
    path: str,
    *,
    kind: str,
    vertex_joints,
    joint_map,
    extra_regressor=None,
    mirrored=False,
    num_betas=None,
    dtype=jnp.float32,
) -> BodyModel:
    _check_shapes(arrays, path)
    n_verts = arrays['v_template'].shape[0]
    if vertex_joints and max(vertex_joints) >= n_verts:
        raise BodyModelFileError(
            f'{path}: has {n_verts} vertices, but {kind} vertex joints need index {max(vertex_joints)}'
        )
    shapedirs = np.asarray(arrays['shapedirs'], np.float64)
    if num_betas is not None:
        if num_betas > shapedirs.shape[-1]:
            raise BodyModelFileError(
                f"{path}: key 'shapedirs' holds {shapedirs.shape[-1]} betas, {num_betas} requested"
            )
        shapedirs = shapedirs[..., :num_betas]
    parents = np.asarray(arrays['kintree_table'])[0].astype(np.int64)
    parents = tuple(int(p) for p in parents)
    parents = (-1,) + parents[1:]  # the root's parent is stored as 2**32 - 1
    if any(not 0 <= p < j for j, p in enumerate(parents) if j):
        raise BodyModelFileError(
            f"{path}: key 'kintree_table' is not a tree with parents before children"
        )
    posedirs = np.asarray(arrays['posedirs'], np.float64)
    posedirs = posedirs.reshape(n_verts * 3, -1).T
    extra = None
    if extra_regressor is not None:
        extra = jnp.asarray(extra_regressor, dtype)
    f = lambda a: jnp.asarray(np.asarray(a, np.float64), dtype)
    return BodyModel(
        v_template=f(arrays['v_template']),
        shapedirs=f(shapedirs),
        posedirs=f(posedirs),
        j_regressor=f(arrays['J_regressor']),
        weights=f(arrays['weights']),
        faces=jnp.asarray(np.asarray(arrays['f'], np.int64), jnp.int32),
        vertex_joints=jnp.asarray(vertex_joints, jnp.int32),
        joint_map=jnp.asarray(joint_map, jnp.int32),
        extra_regressor=extra,
        parents=parents,
        kind=kind,
        mirrored=mirrored,
    )


def _model_path(path_or_dir: str, name: str) -> str:
    path_or_dir = os.fspath(path_or_dir)
    return path_or_dir if os.path.isfile(path_or_dir) else find_model_file(path_or_dir, name)


def load_j19_regressor(path: str) -> np.ndarray:
    """HMR 2.0's `SMPL_to_J19.pkl`: a pickled (19, 6890) array (or the same as .npy / .npz)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'extra joint regressor not found: {path}')
    what = 'joint regressor file'
    if path.endswith('.npy') or path.endswith('.npz'):
        arr = _load_numpy_file(path, what)
        arr = next(iter(arr.values()), None) if isinstance(arr, dict) else arr
    else:
        arr = _to_numpy(safe_pickle.load(path, BodyModelFileError, what), path, 'J_regressor_extra')
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in 'fiub' or arr.ndim != 2:
        got = (
            f'shape {arr.shape} {arr.dtype}' if isinstance(arr, np.ndarray) else type(arr).__name__
        )
        raise BodyModelFileError(f'{path}: expected a numeric (E, V) regressor array, got {got}')
    return arr


def load_smpl(
    path_or_dir: str,
    gender: str = 'neutral',
    j19_path: Optional[str] = None,
    num_betas: Optional[int] = None,
) -> BodyModel:
    """SMPL as HMR 2.0 uses it: 24 joints, OpenPose-25 keypoints, + 19 extra with `j19_path`."""
    if gender not in ('neutral', 'male', 'female'):
        raise ValueError(f"gender must be 'neutral', 'male' or 'female', got {gender!r}")
    path = _model_path(path_or_dir, f'SMPL_{gender.upper()}')
    arrays = load_model_file(path)
    extra = None
    if j19_path is not None:
        extra = load_j19_regressor(j19_path)
        if extra.shape[1] != arrays['v_template'].shape[0]:
            raise BodyModelFileError(
                f'{j19_path}: regressor has {extra.shape[1]} columns, {path} has '
                f'{arrays["v_template"].shape[0]} vertices'
            )
    return _build(
        arrays,
        path,
        kind='smpl',
        vertex_joints=SMPL_VERTEX_JOINTS,
        joint_map=skeletons.SMPL_TO_OPENPOSE25,
        extra_regressor=extra,
        num_betas=num_betas,
    )


def load_mano(
    path_or_dir: str, is_right: bool = True, num_betas: Optional[int] = None
) -> BodyModel:
    """MANO as HaMeR uses it, from the right-hand file; a left hand is its mirror image."""
    path = _model_path(path_or_dir, 'MANO_RIGHT')
    return _build(
        load_model_file(path),
        path,
        kind='mano',
        vertex_joints=MANO_TIP_VERTICES,
        joint_map=skeletons.MANO_TO_OPENPOSE21,
        mirrored=not is_right,
        num_betas=num_betas,
    )


def load_from_dir(models_dir: str, kind: str, gender: str = 'neutral') -> BodyModel:
    """The model that runs and converters pose, from a body-model folder: SMPL of `gender` with
    HMR 2.0's 44 keypoints (its J19 regressor from the same folder), or the right MANO with
    HaMeR's 21 (`gender` unused). Loaded once per process and folder: converters ask for it per
    sequence, evaluation per batch."""
    if kind not in ('smpl', 'mano'):
        raise ValueError(f"kind must be 'smpl' or 'mano', got {kind!r}")
    return _load_cached(os.path.abspath(models_dir), kind, gender if kind == 'smpl' else 'right')


@functools.lru_cache(maxsize=None)
def _load_cached(models_dir: str, kind: str, gender: str) -> BodyModel:
    # Often first called while a step is traced: without this the cached arrays would be that
    # trace's tracers, and leak into the next one.
    with jax.ensure_compile_time_eval():
        if kind == 'mano':
            return load_mano(models_dir)
        return load_smpl(models_dir, gender, find_model_file(models_dir, 'SMPL_to_J19'))


def stand_in(kind: str, seed: int = 0) -> BodyModel:
    """Random arrays in the official SMPL (with J19) / MANO shapes: for shape-only traces.

    The preflight lowers the training step, body-model loss included, before any model file
    exists (it runs before the synthetic default is built): FLOPs and buffer sizes depend on the
    shapes only. Random rather than zero values, so that nothing folds away when compiled.
    """
    r = np.random.default_rng(seed)
    if kind == 'smpl':
        n_verts, n_faces, parents, extra = 6890, 13776, skeletons.SMPL24_PARENTS, 19
        vertex_joints, joint_map = SMPL_VERTEX_JOINTS, skeletons.SMPL_TO_OPENPOSE25
    elif kind == 'mano':
        n_verts, n_faces, parents, extra = 778, 1538, skeletons.MANO16_PARENTS, 0
        vertex_joints, joint_map = MANO_TIP_VERTICES, skeletons.MANO_TO_OPENPOSE21
    else:
        raise ValueError(f"stand_in: kind must be 'smpl' or 'mano', got {kind!r}")
    n_joints = len(parents)
    weights = r.uniform(size=(n_verts, n_joints))
    arrays = {
        'v_template': r.normal(size=(n_verts, 3)),
        'shapedirs': r.normal(size=(n_verts, 3, 10)),
        'posedirs': r.normal(size=(n_verts, 3, 9 * (n_joints - 1))),
        'J_regressor': r.uniform(size=(n_joints, n_verts)) / n_verts,
        'weights': weights / weights.sum(1, keepdims=True),
        'kintree_table': np.stack([np.r_[2**32 - 1, parents[1:]], np.arange(n_joints)]),
        'f': r.integers(0, n_verts, (n_faces, 3)),
    }
    extra_regressor = r.uniform(size=(extra, n_verts)) / n_verts if extra else None
    return _build(
        arrays,
        f'stand-in {kind}',
        kind=kind,
        vertex_joints=vertex_joints,
        joint_map=joint_map,
        extra_regressor=extra_regressor,
    )


# ----------------------------------------------------------------------------- skinning


def _rigid_chain(rotmats, joints, parents):
    """Global joint positions and the skinning transforms relative to the rest pose."""
    rel = joints.at[:, 1:].add(-joints[:, jnp.array(parents[1:])])  # the root keeps J_0
    local = jnp.concatenate([rotmats, rel[..., None]], axis=-1)  # (N, J, 3, 4)
    bottom = jnp.broadcast_to(
        jnp.array([0.0, 0.0, 0.0, 1.0], rotmats.dtype), local.shape[:-2] + (1, 4)
    )
    local = jnp.concatenate([local, bottom], axis=-2)  # (N, J, 4, 4)
    chain = [local[:, 0]]
    for j in range(1, len(parents)):
        chain.append(chain[parents[j]] @ local[:, j])
    world = jnp.stack(chain, axis=1)
    posed_joints = world[..., :3, 3]
    # Skinning moves rest-pose vertices, so remove each joint's rest position first.
    offset = jnp.einsum('njab,njb->nja', world[..., :3, :3], joints)
    rel_transforms = world.at[..., :3, 3].add(-offset)
    return posed_joints, rel_transforms


def lbs(model: BodyModel, betas: jax.Array, rotmats: jax.Array):
    """smplx's linear blend skinning for flat batches: betas (N, B), rotmats (N, J, 3, 3)."""
    n_betas = betas.shape[-1]
    v_shaped = model.v_template + jnp.einsum('nl,vkl->nvk', betas, model.shapedirs[..., :n_betas])
    joints = jnp.einsum('jv,nvk->njk', model.j_regressor, v_shaped)
    eye = jnp.eye(3, dtype=rotmats.dtype)
    pose_feature = (rotmats[:, 1:] - eye).reshape(rotmats.shape[0], -1)
    v_posed = v_shaped + (pose_feature @ model.posedirs).reshape(v_shaped.shape)
    posed_joints, transforms = _rigid_chain(rotmats, joints, model.parents)
    per_vertex = jnp.einsum('vj,njab->nvab', model.weights, transforms[..., :3, :])
    vertices = jnp.einsum('nvab,nvb->nva', per_vertex[..., :3], v_posed) + per_vertex[..., 3]
    return vertices, posed_joints


_MIRROR = np.diag([-1.0, 1.0, 1.0])


def forward(model: BodyModel, pose: jax.Array, betas: jax.Array) -> dict:
    """Poses a body model.

    pose: rotation matrices (..., J, 3, 3), or axis-angle (..., J, 3) or (..., 3 J), with the
      global orientation first. betas: (..., B) with B up to what the file holds. Leading
      dimensions (batch, time, ...) are shared by pose and betas.
    Returns vertices (..., V, 3), joints (..., J, 3) (the skeleton) and keypoints (..., M, 3):
      OpenPose-25 (+ the extra regressor's joints, HMR 2.0's 44) for SMPL, OpenPose-21 for MANO.
    """
    n_joints = model.num_joints
    if pose.shape[-2:] != (3, 3):
        # A last axis of 3 J is the flat form whatever the other axes are ((J, 3J) is J poses).
        if pose.shape[-1] == 3 * n_joints:
            pose = pose.reshape(pose.shape[:-1] + (n_joints, 3))
        pose = geometry.axis_angle_to_matrix(pose)
    if pose.shape[-3] != n_joints:
        raise ValueError(f'{model.kind} pose has {pose.shape[-3]} joints, the model has {n_joints}')
    if betas.shape[-1] > model.num_betas:
        raise ValueError(
            f'{betas.shape[-1]} betas given, the {model.kind} model holds {model.num_betas}'
        )
    lead = jnp.broadcast_shapes(pose.shape[:-3], betas.shape[:-1])
    pose = jnp.broadcast_to(pose, lead + pose.shape[-3:]).reshape((-1, n_joints, 3, 3))
    betas = jnp.broadcast_to(betas, lead + betas.shape[-1:]).reshape((-1, betas.shape[-1]))
    if model.mirrored:
        # A left hand is the right model seen in a mirror x -> -x: conjugate the rotations by
        # the reflection, pose the right hand, reflect the result.
        mirror = jnp.asarray(_MIRROR, pose.dtype)
        pose = mirror @ pose @ mirror
    vertices, joints = lbs(model, betas.astype(pose.dtype), pose)
    keypoints = jnp.concatenate([joints, vertices[:, model.vertex_joints]], axis=1)[
        :, model.joint_map
    ]
    if model.extra_regressor is not None:
        extra = jnp.einsum('ev,nvk->nek', model.extra_regressor, vertices)
        keypoints = jnp.concatenate([keypoints, extra], axis=1)
    out = {'vertices': vertices, 'joints': joints, 'keypoints': keypoints}
    if model.mirrored:
        out = {k: v * jnp.asarray([-1.0, 1.0, 1.0], v.dtype) for k, v in out.items()}
    return {k: v.reshape(lead + v.shape[1:]) for k, v in out.items()}


def faces(model: BodyModel) -> np.ndarray:
    """Triangles with outward winding; a mirrored model reverses the order."""
    f = np.asarray(model.faces)
    return f[:, ::-1] if model.mirrored else f
