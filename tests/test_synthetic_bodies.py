"""Tests for data_pipelines.synthetic.bodies and body_files (CPU, a few seconds).

The whole default set is generated once per module (write_body_models) and
the tests read it back, in memory (npz) and through the legacy pickles.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse

from data_pipelines.synthetic import bodies as sb
from data_pipelines.synthetic import body_files, mano_model

GENDERS = ('neutral', 'male', 'female')
SMPL_KEYS = {
    'J_regressor_prior',
    'f',
    'J_regressor',
    'kintree_table',
    'J',
    'weights_prior',
    'weights',
    'vert_sym_idxs',
    'posedirs',
    'pose_training_info',
    'bs_style',
    'v_template',
    'shapedirs',
    'bs_type',
}
MANO_KEYS = {
    'hands_components',
    'f',
    'J_regressor',
    'kintree_table',
    'J',
    'bs_style',
    'hands_coeffs',
    'weights',
    'posedirs',
    'hands_mean',
    'v_template',
    'shapedirs',
    'bs_type',
}


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp('bodies')
    return body_files.write_body_models(out, seed=0)


@pytest.fixture(scope='module')
def npz(written):
    """{'neutral': {...}, ..., 'mano': {...}} of the written npz files."""
    out = {}
    for g in GENDERS:
        with np.load(written[f'smpl/SMPL_{g.upper()}.npz']) as d:
            out[g] = {k: d[k] for k in d.files}
    with np.load(written['mano/MANO_RIGHT.npz']) as d:
        out['mano'] = {k: d[k] for k in d.files}
    return out


@pytest.fixture(scope='module')
def smpl():
    return sb.make_smpl('neutral', seed=0)


@pytest.fixture(scope='module')
def mano():
    return mano_model.make_mano(seed=0)


# ---------------------------------------------------------------- structure


@pytest.mark.slow
def test_written_files(written, tmp_path):
    expected = {f'smpl/SMPL_{g}.{e}' for g in ('NEUTRAL', 'MALE', 'FEMALE') for e in ('pkl', 'npz')}
    expected |= {'mano/MANO_RIGHT.pkl', 'mano/MANO_RIGHT.npz', 'SMPL_to_J19.pkl'}
    assert set(written) == expected == set(body_files.BODY_MODEL_FILES)
    assert body_files.body_models_complete(os.path.dirname(written['SMPL_to_J19.pkl']))
    assert not body_files.body_models_complete(tmp_path)
    for rel, path in written.items():
        assert os.path.isfile(path) and path.endswith(rel)
    leftovers = [
        n
        for r, _, fs in os.walk(os.path.dirname(written['SMPL_to_J19.pkl']))
        for n in fs
        if n.endswith('.tmp')
    ]
    assert not leftovers


@pytest.mark.slow
def test_smpl_keys_shapes_dtypes(smpl, npz):
    assert set(smpl) == SMPL_KEYS
    assert smpl['v_template'].shape == (6890, 3)
    assert smpl['f'].shape == (13776, 3) and smpl['f'].dtype == np.uint32
    assert smpl['f'].max() == 6889
    assert smpl['J'].shape == (24, 3)
    for k in ('J_regressor', 'J_regressor_prior'):
        assert isinstance(smpl[k], scipy.sparse.csc_matrix) and smpl[k].shape == (24, 6890)
    assert smpl['weights'].shape == smpl['weights_prior'].shape == (6890, 24)
    assert smpl['shapedirs'].shape == (6890, 3, 10)
    assert smpl['posedirs'].shape == (6890, 3, 207)
    assert smpl['vert_sym_idxs'].shape == (6890,)
    kt = smpl['kintree_table']
    assert kt.shape == (2, 24) and kt.dtype == np.int64
    assert kt[0, 0] == 4294967295
    assert list(kt[0, 1:]) == list(sb.SMPL_PARENTS[1:]) and list(kt[1]) == list(range(24))
    assert smpl['bs_type'] == 'lrotmin' and smpl['bs_style'] == 'lbs'
    for k in ('v_template', 'J', 'weights', 'shapedirs', 'posedirs'):
        assert smpl[k].dtype == np.float64
    for g in GENDERS:  # all genders share the topology, like the real files
        assert np.array_equal(npz[g]['f'], smpl['f'])
        assert npz[g]['v_template'].shape == (6890, 3)
    assert sb.make_smpl('neutral', num_betas=16)['shapedirs'].shape == (6890, 3, 16)


def test_mano_keys_shapes_dtypes(mano):
    assert set(mano) == MANO_KEYS
    assert mano['v_template'].shape == (778, 3)
    assert mano['f'].shape == (1538, 3) and mano['f'].dtype == np.uint32
    assert mano['J'].shape == (16, 3)
    assert isinstance(mano['J_regressor'], scipy.sparse.csc_matrix)
    assert mano['J_regressor'].shape == (16, 778)
    assert mano['weights'].shape == (778, 16)
    assert mano['shapedirs'].shape == (778, 3, 10)
    assert mano['posedirs'].shape == (778, 3, 135)
    assert mano['hands_components'].shape == (45, 45)
    assert mano['hands_mean'].shape == (45,)
    assert mano['hands_coeffs'].ndim == 2 and mano['hands_coeffs'].shape[1] == 45
    C = mano['hands_components']
    assert np.allclose(C @ C.T, np.eye(45), atol=1e-10)
    kt = mano['kintree_table']
    assert kt[0, 0] == 4294967295 and list(kt[0, 1:]) == list(sb.MANO_PARENTS[1:])
    # fingers chain from the wrist
    assert [kt[0, 1 + 3 * f] for f in range(5)] == [0] * 5


@pytest.mark.parametrize('which', ['smpl', 'mano'])
def test_weights_and_regressor(which, smpl, mano):
    m = smpl if which == 'smpl' else mano
    W = m['weights']
    assert np.all(W >= 0) and np.allclose(W.sum(axis=1), 1.0)
    assert (W > 0).sum(axis=1).max() <= 4
    R = m['J_regressor'].toarray()
    assert np.all(R >= 0) and np.allclose(R.sum(axis=1), 1.0)
    assert (R > 0).sum(axis=1).min() >= 8  # spread over a ring of vertices
    err = np.linalg.norm(R @ m['v_template'] - m['J'], axis=1)
    assert err.max() < 0.003  # a few mm at most
    if which == 'smpl':
        Rp = m['J_regressor_prior'].toarray()
        assert np.allclose(Rp.sum(axis=1), 1.0) and np.all(Rp >= 0)
        assert np.allclose(m['weights_prior'].sum(axis=1), 1.0)
        # every joint drives some vertices
        assert np.all(W.max(axis=0) > 0.5)


def _edge_counts(F):
    e = np.sort(np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]), axis=1)
    return np.unique(e, axis=0, return_counts=True)


def _directed_edges_unique(F):
    d = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
    return len(np.unique(d, axis=0)) == len(d)


def _components(F, n):
    e, _ = _edge_counts(F)
    A = scipy.sparse.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return scipy.sparse.csgraph.connected_components(A, directed=False)[0]


def test_smpl_closed_genus0_surface(smpl):
    F = smpl['f'].astype(np.int64)
    V = smpl['v_template']
    edges, counts = _edge_counts(F)
    assert np.all(counts == 2)  # closed, manifold
    assert _directed_edges_unique(F)  # consistently oriented
    assert len(V) - len(edges) + len(F) == 2  # genus 0
    assert _components(F, len(V)) == 1
    assert len(np.unique(F)) == len(V)
    vol = np.einsum('ij,ij->i', V[F[:, 0]], np.cross(V[F[:, 1]], V[F[:, 2]])).sum() / 6.0
    assert 0.04 < vol < 0.12  # outward normals, human volume (m^3)
    areas = np.linalg.norm(np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]]), axis=1)
    assert areas.min() > 1e-9


def test_mano_open_at_wrist(mano):
    F = mano['f'].astype(np.int64)
    V = mano['v_template']
    edges, counts = _edge_counts(F)
    assert set(np.unique(counts)) == {1, 2}
    rim = edges[counts == 1]
    assert len(rim) == 16 and len(np.unique(rim)) == 16  # one 16-vertex loop
    assert np.all(np.bincount(rim.ravel())[np.unique(rim)] == 2)
    assert _directed_edges_unique(F)
    assert len(V) - len(edges) + len(F) == 1  # a disc
    assert _components(F, len(V)) == 1
    # the loop is the wrist end: the most proximal (largest x) vertices
    rim_ids = np.unique(rim)
    assert V[rim_ids, 0].min() > V[:, 0].max() - 0.01
    assert V[rim_ids, 0].min() > mano['J'][0, 0]


@pytest.mark.slow
@pytest.mark.parametrize('key', list(GENDERS) + ['mano'])
def test_no_folded_triangles(npz, key):
    """Neighbouring triangles never face away from each other: the surface
    is smooth enough to render."""
    V, F = npz[key]['v_template'], npz[key]['f'].astype(np.int64)
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    e = np.sort(np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]), axis=1)
    fid = np.tile(np.arange(len(F)), 3)
    order = np.lexsort((e[:, 1], e[:, 0]))
    e, fid = e[order], fid[order]
    same = np.all(e[1:] == e[:-1], axis=1)
    cos = (n[fid[:-1][same]] * n[fid[1:][same]]).sum(axis=1)
    assert cos.min() > -0.3


# ---------------------------------------------------------------- anatomy


@pytest.mark.slow
def test_smpl_rest_pose_anatomy(smpl, npz):
    for g in GENDERS:
        V, J = npz[g]['v_template'], npz[g]['J']
        height = V[:, 1].max() - V[:, 1].min()
        assert 1.5 < height < 1.9
        assert -0.25 < J[0, 1] < 0.0  # pelvis
        assert J[15, 1] > J[12, 1] > J[9, 1] > J[6, 1] > J[3, 1] > J[0, 1]
        assert J[7, 1] < J[4, 1] < J[1, 1] < J[0, 1]  # leg chain downwards
        for l, r in ((1, 2), (16, 17), (18, 19), (20, 21), (22, 23)):
            assert J[l, 0] > 0 > J[r, 0]  # subject's left is +x
        # T-pose: arms horizontal
        assert abs(J[20, 1] - J[16, 1]) < 0.03 and J[20, 0] > 0.6
    male, female = npz['male']['v_template'], npz['female']['v_template']
    assert np.ptp(male[:, 1]) > np.ptp(female[:, 1])
    assert not np.allclose(npz['neutral']['v_template'], male)


def test_smpl_vertex_picks(smpl):
    V, J = smpl['v_template'], smpl['J']
    ids = sb.SMPL_VERTEX_IDS
    P = {k: V[v] for k, v in ids.items()}
    assert len(set(ids.values())) == len(ids)
    neck, head = J[12], J[15]
    assert P['nose'][2] > neck[2] + 0.08 and P['nose'][1] > neck[1]
    assert abs(P['nose'][0]) < 0.01
    assert P['nose'][2] > max(P['leye'][2], P['reye'][2])
    for s, sgn in (('l', 1), ('r', -1)):
        eye, ear = P[s + 'eye'], P[s + 'ear']
        assert 0.015 < sgn * eye[0] < 0.05 and eye[1] > P['nose'][1] and eye[2] > head[2]
        assert sgn * ear[0] > 0.06 and ear[2] < eye[2] - 0.05
        wrist, hand = J[20 if s == 'l' else 21], J[22 if s == 'l' else 23]
        tips = {f: P[s + f] for f in ('thumb', 'index', 'middle', 'ring', 'pinky')}
        for f, t in tips.items():
            assert sgn * (t[0] - wrist[0]) > 0.08, f  # beyond the wrist
            assert np.linalg.norm(t - hand) < 0.15, f
        assert sgn * tips['middle'][0] == max(sgn * t[0] for t in tips.values())
        # across the hand (z): thumb forward, then index ... pinky at the back
        z = [tips[f][2] for f in ('thumb', 'index', 'middle', 'ring', 'pinky')]
        assert z == sorted(z, reverse=True)
    for S, sgn, ankle in (('L', 1, J[7]), ('R', -1, J[8])):
        big, small, heel = P[S + 'BigToe'], P[S + 'SmallToe'], P[S + 'Heel']
        for pt in (big, small, heel):
            assert sgn * pt[0] > 0 and pt[1] < ankle[1]
        assert big[2] > ankle[2] + 0.12 and small[2] > ankle[2] + 0.08
        assert heel[2] < ankle[2] - 0.02
        assert sgn * big[0] < sgn * small[0]  # big toe is medial
    # mirror-symmetric picks
    sym = smpl['vert_sym_idxs']
    assert np.linalg.norm(V[sym[ids['leye']]] - P['reye']) < 0.01
    assert np.linalg.norm(V[sym] * [-1, 1, 1] - V, axis=1).mean() < 0.005


def test_mano_tips(mano):
    V, J = mano['v_template'], mano['J']
    length = np.linalg.norm(V[sb.MANO_VERTEX_IDS['middle']] - J[0])
    assert 0.16 < length < 0.21
    # MANO frame: fingers along -x, palm facing -y, thumb towards +z
    assert J[0, 0] > 0.08 and abs(J[4, 0]) < 0.02
    tips = {k: V[v] for k, v in sb.MANO_VERTEX_IDS.items()}
    for f, first in (('index', 1), ('middle', 4), ('pinky', 7), ('ring', 10), ('thumb', 13)):
        chain = J[first : first + 3]
        d = chain[2] - chain[1]
        assert (tips[f] - chain[2]) @ d > 0, f  # tip beyond the last joint
        assert np.linalg.norm(tips[f] - chain[2]) < 0.035, f
    assert (
        tips['thumb'][2] > tips['index'][2] > tips['middle'][2] > tips['ring'][2] > tips['pinky'][2]
    )
    edges, _ = _edge_counts(mano['f'].astype(np.int64))
    edge_set = {tuple(e) for e in edges}
    for f, fid in sb.FREIHAND_TIP_IDS.items():
        sid = sb.MANO_VERTEX_IDS[f]
        assert tuple(sorted((sid, fid))) in edge_set
        assert np.linalg.norm(V[fid] - V[sid]) < 0.01


def test_blend_shapes(smpl, mano):
    V, S, J = smpl['v_template'], smpl['shapedirs'], smpl['J']
    height = lambda X: np.ptp(X[:, 1])  # noqa: E731
    dh = height(V + S[:, :, 0]) - height(V)
    assert 0.04 < dh < 0.15  # beta 0: size / height
    assert abs(height(V + S[:, :, 1]) - height(V)) < 0.02  # beta 1: girth, not height
    waist = np.abs(V[:, 1] - J[3, 1]) < 0.03
    grow = (
        np.linalg.norm((V + S[:, :, 1])[waist][:, [0, 2]], axis=1).mean()
        - np.linalg.norm(V[waist][:, [0, 2]], axis=1).mean()
    )
    assert grow > 0.01
    rng = np.random.default_rng(0)
    for _ in range(20):  # N(0,1) betas stay human
        b = rng.standard_normal(10)
        assert 1.4 < height(V + S @ b) < 2.1
    for k in range(10):
        assert np.abs(S[:, :, k]).max() > 1e-3, k
    # posedirs: a 90 degree elbow bend moves vertices by mm..cm
    P = smpl['posedirs'].reshape(-1, 207)
    feat = np.zeros(207)
    R = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])  # 90 deg about z
    feat[9 * 17 : 9 * 18] = (R - np.eye(3)).ravel()  # joint 18 = L_elbow
    off = np.linalg.norm((P @ feat).reshape(-1, 3), axis=1)
    assert 0.002 < off.max() < 0.03
    moved = V[off > 0.001]  # only the left arm moves
    assert moved[:, 0].min() > J[16, 0] and np.linalg.norm(moved - J[18], axis=1).max() < 0.3
    assert np.abs(mano['posedirs']).max() > 1e-4 and np.abs(mano['shapedirs']).max() > 1e-3


@pytest.mark.slow
def test_j19_regressor(smpl, written):
    R = sb.make_j19_regressor(smpl)
    assert R.shape == (19, 6890) and R.dtype == np.float64
    assert np.all(R >= 0) and np.allclose(R.sum(axis=1), 1.0)
    X = R @ smpl['v_template']
    J = smpl['J']
    name = {n: i for i, n in enumerate(sb.J19_NAMES)}
    for n, j in (
        ('R_ankle', 8),
        ('R_knee', 5),
        ('L_knee', 4),
        ('L_ankle', 7),
        ('R_wrist', 21),
        ('R_elbow', 19),
        ('L_elbow', 18),
        ('L_wrist', 20),
        ('R_shoulder', 17),
        ('L_shoulder', 16),
    ):
        assert np.linalg.norm(X[name[n]] - J[j]) < 0.03, n
    assert X[name['head_top_lsp'], 1] > smpl['v_template'][:, 1].max() - 0.03
    assert X[name['L_hip'], 0] > 0 > X[name['R_hip'], 0]
    assert abs(X[name['pelvis_mpii'], 0]) < 0.01
    assert (
        X[name['head_h36m'], 1]
        > X[name['jaw_h36m'], 1]
        > X[name['thorax_mpii'], 1]
        > X[name['spine_h36m'], 1]
        > X[name['pelvis_mpii'], 1]
    )
    # SMPL_to_J19.pkl: a plain array, loadable with or without latin1
    with open(written['SMPL_to_J19.pkl'], 'rb') as f:
        A = pickle.load(f)
    with open(written['SMPL_to_J19.pkl'], 'rb') as f:
        B = pickle.load(f, encoding='latin1')
    assert isinstance(A, np.ndarray) and np.array_equal(A, R) and np.array_equal(B, R)


# ---------------------------------------------------------------- files

_LOADER = textwrap.dedent(r"""
    import json, pickle, sys
    import numpy as np
    sys.modules['chumpy'] = None          # any attempt to import chumpy fails
    sys.modules['chumpy.ch'] = None

    class StubCh:                          # stands in for chumpy.ch.Ch
        def __setstate__(self, state):
            self.__dict__.update(state)

    class StubCSC:                         # stands in for old scipy.sparse.csc
        def __setstate__(self, state):
            self.__dict__.update(state)

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) == ('chumpy.ch', 'Ch'):
                return StubCh
            if (module, name) == ('scipy.sparse.csc', 'csc_matrix'):
                return StubCSC
            return super().find_class(module, name)

    def plain(v):
        if isinstance(v, StubCh):
            return np.asarray(v.x)
        if isinstance(v, StubCSC):
            import scipy.sparse
            m = scipy.sparse.csc_matrix((v.data, v.indices, v.indptr), shape=v._shape)
            return m.toarray()
        return v

    report = {}
    for path in sys.argv[1:]:
        r = report[path] = {}
        for mode in ('plain_default', 'stub_default', 'plain_latin1'):
            try:
                with open(path, 'rb') as f:
                    if mode == 'plain_default':
                        pickle.load(f)
                    elif mode == 'stub_default':
                        Unpickler(f).load()
                    else:
                        pickle.load(f, encoding='latin1')
                r[mode] = 'ok'
            except Exception as e:
                r[mode] = type(e).__name__
        with open(path, 'rb') as f:
            d = Unpickler(f, encoding='latin1').load()
        r['types'] = {k: type(v).__name__ for k, v in d.items()}
        r['ch_state'] = sorted(d['shapedirs'].__dict__)
        r['csc_state'] = sorted(d['J_regressor'].__dict__)
        np.savez(path + '.check.npz', **{k: plain(v) for k, v in d.items()
                                          if not isinstance(v, (str, dict))})
        r['str'] = {k: v for k, v in d.items() if isinstance(v, str)}
    print(json.dumps(report))
""")


@pytest.mark.slow
def test_legacy_pickles_need_latin1_and_no_chumpy(written, npz, tmp_path):
    paths = [written[f'smpl/SMPL_{g.upper()}.pkl'] for g in GENDERS]
    paths.append(written['mano/MANO_RIGHT.pkl'])
    script = tmp_path / 'load.py'
    script.write_text(_LOADER)
    res = subprocess.run(
        [sys.executable, str(script)] + paths, capture_output=True, text=True, check=True
    )
    report = json.loads(res.stdout.strip().splitlines()[-1])
    for path, key in zip(paths, list(GENDERS) + ['mano']):
        r = report[path]
        # the real pitfall: default (ASCII) decoding fails on the payloads ...
        assert r['plain_default'] != 'ok'
        assert r['stub_default'] == 'UnicodeDecodeError'
        # ... and latin1 alone still wants chumpy
        assert r['plain_latin1'] in ('ImportError', 'ModuleNotFoundError')
        types = r['types']
        for k in body_files.CHUMPY_KEYS:
            assert types[k] == 'StubCh', k
        assert types['J_regressor'] == 'StubCSC'
        assert types['f'] == 'ndarray' and types['posedirs'] == 'ndarray'
        assert 'x' in r['ch_state']
        assert {'_shape', 'maxprint', 'format', 'data', 'indices', 'indptr'} <= set(r['csc_state'])
        assert r['str']['bs_type'] == 'lrotmin' and r['str']['bs_style'] == 'lbs'
        with np.load(path + '.check.npz') as got:
            ref = npz[key]
            assert set(got.files) == {k for k in ref if ref[k].dtype.kind != 'U'}
            for k in got.files:
                assert got[k].dtype == ref[k].dtype, k
                assert np.array_equal(got[k], ref[k]), k


@pytest.mark.slow
def test_pickle_opcodes(written):
    import pickletools

    with open(written['mano/MANO_RIGHT.pkl'], 'rb') as f:
        data = f.read()
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    names = {o for o, _ in ops}
    assert ops[0] == ('PROTO', 2)
    assert 'BINUNICODE' not in names and 'SHORT_BINUNICODE' not in names
    assert {'SHORT_BINSTRING', 'BINSTRING'} <= names
    globals_ = {a for o, a in ops if o == 'GLOBAL'}
    assert {
        'numpy.core.multiarray _reconstruct',
        'numpy ndarray',
        'numpy dtype',
        'copy_reg _reconstructor',
        'chumpy.ch Ch',
        '__builtin__ object',
        'scipy.sparse.csc csc_matrix',
    } <= globals_


@pytest.mark.slow
def test_npz_matches_models(npz, smpl, mano):
    for key, m in (('neutral', smpl), ('mano', mano)):
        d = npz[key]
        for k, v in m.items():
            if isinstance(v, dict):
                assert k not in d
            elif isinstance(v, str):
                assert str(d[k]) == v
            elif scipy.sparse.issparse(v):
                assert np.array_equal(d[k], v.toarray())
            else:
                assert np.array_equal(d[k], v), k


# ---------------------------------------------------------------- smplx


@pytest.mark.slow
def test_smplx_runs_on_npz(written):
    import smplx
    import torch
    from smplx.utils import Struct

    torch.manual_seed(0)
    for g in GENDERS:
        path = written[f'smpl/SMPL_{g.upper()}.npz']
        # smplx.SMPL reads a model path with pickle only, so the npz goes in
        # through data_struct.
        with np.load(path) as d:
            model = smplx.SMPL(model_path=path, data_struct=Struct(**{k: d[k] for k in d.files}))
        with torch.no_grad():
            out = model(
                betas=torch.randn(2, 10),
                global_orient=0.3 * torch.randn(2, 3),
                body_pose=0.3 * torch.randn(2, 69),
            )
            rest = model(body_pose=torch.zeros(1, 69))
        assert out.vertices.shape == (2, 6890, 3) and torch.isfinite(out.vertices).all()
        assert out.joints.shape == (2, 45, 3)
        with np.load(path) as d:
            assert np.abs(rest.joints[0, :24].numpy() - d['J']).max() < 0.003
    hand = smplx.MANO(
        model_path=written['mano/MANO_RIGHT.npz'], ext='npz', use_pca=False, is_rhand=True
    )
    with torch.no_grad():
        out = hand(
            betas=torch.randn(2, 10),
            global_orient=0.3 * torch.randn(2, 3),
            hand_pose=0.3 * torch.randn(2, 45),
        )
    assert out.vertices.shape == (2, 778, 3) and torch.isfinite(out.vertices).all()


# ---------------------------------------------------------------- determinism / CLI


@pytest.mark.slow
def test_deterministic(npz, mano):
    again = sb.make_smpl('neutral', seed=0)
    for k, v in again.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(v, npz['neutral'][k]), k
    other = sb.make_smpl('neutral', seed=1)
    assert np.array_equal(other['f'], again['f'])
    assert not np.allclose(other['v_template'], again['v_template'])
    m2 = mano_model.make_mano(seed=0)
    for k, v in m2.items():
        if isinstance(v, np.ndarray):
            assert np.array_equal(v, mano[k]), k


def test_cli_arguments(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(out_dir, seed=0):
        seen.update(out=out_dir, seed=seed)
        return {'x': os.path.join(out_dir, 'x')}

    monkeypatch.setattr(body_files, 'write_body_models', fake)
    body_files.main(['--out', str(tmp_path), '--seed', '3'])
    assert seen == {'out': str(tmp_path), 'seed': 3}
    assert 'wrote 1 files' in capsys.readouterr().out
