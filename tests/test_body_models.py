"""The JAX body models against smplx's PyTorch layers (the independent reference)."""

import os
import pickle
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import smplx
import torch

from extpose_jax import body_models, errors, skeletons

TOL = 1e-5  # metres


def _random_rotmats(rng, n, joints, scale=0.6):
    from scipy.spatial.transform import Rotation

    aa = rng.normal(scale=scale, size=(n * joints, 3))
    return Rotation.from_rotvec(aa).as_matrix().reshape(n, joints, 3, 3).astype(np.float32)


def _struct(npz):
    """smplx reads only pickles from a path; the clean .npz goes in as its data struct."""
    from smplx.utils import Struct

    with np.load(npz) as z:
        return Struct(**{k: z[k] for k in z.files})


def _smplx_smpl(npz, n_betas=10):
    return smplx.SMPLLayer(model_path=str(npz), data_struct=_struct(npz), num_betas=n_betas)


def _torch_smpl_keypoints(layer, rotmats, betas, j19):
    """HMR 2.0's 44 keypoints, assembled independently in PyTorch from smplx's 45 joints."""
    with torch.no_grad():
        out = layer(
            global_orient=torch.from_numpy(rotmats[:, :1]),
            body_pose=torch.from_numpy(rotmats[:, 1:]),
            betas=torch.from_numpy(betas),
        )
        joints45 = out.joints
        op25 = joints45[:, list(skeletons.SMPL_TO_OPENPOSE25)]
        extra = torch.einsum('ev,nvk->nek', torch.from_numpy(j19).float(), out.vertices)
        return out.vertices.numpy(), joints45[:, :24].numpy(), torch.cat([op25, extra], 1).numpy()


@pytest.mark.parametrize('gender', ['neutral', 'male', 'female'])
def test_smpl_matches_smplx(body_model_dir, gender):
    rng = np.random.default_rng(1)
    npz = body_model_dir / 'smpl' / f'SMPL_{gender.upper()}.npz'
    j19_path = str(body_model_dir / 'SMPL_to_J19.pkl')
    # JAX reads the chumpy-pickled official-layout .pkl; smplx reads the clean .npz.
    model = body_models.load_smpl(str(body_model_dir), gender=gender, j19_path=j19_path)
    rotmats = _random_rotmats(rng, 16, 24)
    betas = rng.normal(size=(16, 10)).astype(np.float32) * 1.5
    out = jax.jit(body_models.forward)(model, jnp.asarray(rotmats), jnp.asarray(betas))
    j19 = body_models.load_j19_regressor(j19_path)
    ref_v, ref_j, ref_k = _torch_smpl_keypoints(_smplx_smpl(npz), rotmats, betas, j19)
    assert out['keypoints'].shape == (16, 44, 3)
    np.testing.assert_allclose(out['vertices'], ref_v, atol=TOL, rtol=0)
    np.testing.assert_allclose(out['joints'], ref_j, atol=TOL, rtol=0)
    np.testing.assert_allclose(out['keypoints'], ref_k, atol=TOL, rtol=0)


@pytest.mark.slow
def test_axis_angle_input_and_fewer_betas(body_model_dir):
    """Axis-angle poses and 4 of the 10 betas, against smplx with num_betas=4."""
    rng = np.random.default_rng(2)
    model = body_models.load_smpl(str(body_model_dir / 'smpl' / 'SMPL_NEUTRAL.pkl'))
    aa = rng.normal(scale=0.5, size=(5, 72)).astype(np.float32)
    betas = rng.normal(size=(5, 4)).astype(np.float32)
    out = body_models.forward(model, jnp.asarray(aa), jnp.asarray(betas))
    npz = body_model_dir / 'smpl' / 'SMPL_NEUTRAL.npz'
    layer = smplx.SMPL(model_path=str(npz), data_struct=_struct(npz), num_betas=4)
    with torch.no_grad():
        ref = layer(
            global_orient=torch.from_numpy(aa[:, :3]),
            body_pose=torch.from_numpy(aa[:, 3:]),
            betas=torch.from_numpy(betas),
        )
    np.testing.assert_allclose(out['vertices'], ref.vertices.numpy(), atol=TOL, rtol=0)
    assert out['keypoints'].shape == (5, 25, 3)  # no extra regressor: OpenPose-25 only
    np.testing.assert_allclose(
        out['keypoints'],
        ref.joints[:, list(skeletons.SMPL_TO_OPENPOSE25)].numpy(),
        atol=TOL,
        rtol=0,
    )


def _torch_mano(npz, rotmats, betas, is_rhand=True):
    layer = smplx.MANOLayer(
        model_path=str(npz), data_struct=_struct(npz), is_rhand=is_rhand, use_pca=False
    )
    with torch.no_grad():
        out = layer(
            global_orient=torch.from_numpy(rotmats[:, :1]),
            hand_pose=torch.from_numpy(rotmats[:, 1:]),
            betas=torch.from_numpy(betas),
        )
    tips = out.vertices[:, list(body_models.MANO_TIP_VERTICES)]
    kp21 = torch.cat([out.joints, tips], 1)[:, list(skeletons.MANO_TO_OPENPOSE21)]
    return out.vertices.numpy(), out.joints.numpy(), kp21.numpy()


@pytest.mark.slow
def test_mano_matches_smplx(body_model_dir):
    rng = np.random.default_rng(3)
    model = body_models.load_mano(str(body_model_dir))
    rotmats = _random_rotmats(rng, 16, 16)
    betas = rng.normal(size=(16, 10)).astype(np.float32)
    out = body_models.forward(model, jnp.asarray(rotmats), jnp.asarray(betas))
    ref_v, ref_j, ref_k = _torch_mano(body_model_dir / 'mano' / 'MANO_RIGHT.npz', rotmats, betas)
    np.testing.assert_allclose(out['vertices'], ref_v, atol=TOL, rtol=0)
    np.testing.assert_allclose(out['joints'], ref_j, atol=TOL, rtol=0)
    np.testing.assert_allclose(out['keypoints'], ref_k, atol=TOL, rtol=0)


@pytest.mark.slow
def test_left_mano_matches_a_mirrored_model_file(body_model_dir, tmp_path):
    """Left = mirror of right. The reference is smplx on a left-hand file mirrored array by
    array (blend shapes and pose correctives reflected), not the pose-conjugation trick."""
    with np.load(body_model_dir / 'mano' / 'MANO_RIGHT.npz') as z:
        arrays = {k: z[k] for k in z.files}
    s = np.array([-1.0, 1.0, 1.0])
    arrays['v_template'] = arrays['v_template'] * s
    arrays['shapedirs'] = arrays['shapedirs'] * s[None, :, None]
    # (S R S - I) = S (R - I) S flips entry (a, b) of every joint's feature by s_a s_b.
    feature_sign = np.tile(np.outer(s, s).reshape(-1), 15)
    arrays['posedirs'] = arrays['posedirs'] * s[None, :, None] * feature_sign[None, None, :]
    arrays['f'] = arrays['f'][:, ::-1]
    left_npz = tmp_path / 'MANO_LEFT.npz'
    np.savez(left_npz, **arrays)

    rng = np.random.default_rng(4)
    rotmats = _random_rotmats(rng, 8, 16)
    betas = rng.normal(size=(8, 10)).astype(np.float32)
    left = body_models.load_mano(str(body_model_dir), is_right=False)
    out = body_models.forward(left, jnp.asarray(rotmats), jnp.asarray(betas))
    ref_v, ref_j, ref_k = _torch_mano(left_npz, rotmats, betas, is_rhand=False)
    np.testing.assert_allclose(out['vertices'], ref_v, atol=TOL, rtol=0)
    np.testing.assert_allclose(out['keypoints'], ref_k, atol=TOL, rtol=0)
    np.testing.assert_array_equal(body_models.faces(left), arrays['f'])


def test_pkl_equals_npz(body_model_dir):
    for name in ('smpl/SMPL_NEUTRAL', 'smpl/SMPL_FEMALE', 'mano/MANO_RIGHT'):
        pkl = body_models.load_model_file(str(body_model_dir / f'{name}.pkl'))
        npz = body_models.load_model_file(str(body_model_dir / f'{name}.npz'))
        for key in body_models._REQUIRED:
            np.testing.assert_array_equal(np.asarray(pkl[key]), np.asarray(npz[key]), err_msg=key)


@pytest.mark.slow
def test_pkl_loads_where_chumpy_cannot_be_imported(body_model_dir):
    code = (
        "import sys; sys.modules['chumpy'] = None\n"
        'try:\n    import chumpy\nexcept ImportError:\n    pass\n'
        "else:\n    raise SystemExit('chumpy importable')\n"
        'from extpose_jax import body_models\n'
        f'm = body_models.load_smpl({str(body_model_dir)!r})\n'
        'print(m.v_template.shape, m.shapedirs.shape)\n'
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    )
    assert res.returncode == 0, res.stderr
    assert '(6890, 3) (6890, 3, 10)' in res.stdout


@pytest.mark.slow
def test_leading_dims_jit_vmap_grad(body_model_dir):
    model = body_models.load_mano(str(body_model_dir))
    rng = np.random.default_rng(5)
    aa = jnp.asarray(rng.normal(scale=0.3, size=(2, 3, 16, 3)), jnp.float32)
    betas = jnp.asarray(rng.normal(size=(2, 3, 10)), jnp.float32)
    # Each call jitted: one program apiece compiles in a fraction of the op-by-op time.
    forward = jax.jit(body_models.forward)
    out = forward(model, aa, betas)
    assert out['vertices'].shape == (2, 3, 778, 3) and out['keypoints'].shape == (2, 3, 21, 3)
    flat = forward(model, aa.reshape(6, 16, 3), betas.reshape(6, 10))
    np.testing.assert_allclose(out['vertices'].reshape(6, 778, 3), flat['vertices'], atol=1e-6)
    vm = jax.jit(jax.vmap(body_models.forward, in_axes=(None, 0, 0)))(model, aa, betas)
    np.testing.assert_allclose(vm['keypoints'], out['keypoints'], atol=1e-6)
    # Zero pose is where naive Rodrigues gives NaN gradients.
    loss = lambda p, b: jnp.sum(body_models.forward(model, p, b)['keypoints'] ** 2)
    g_pose, g_betas = jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.zeros((16, 3)), jnp.zeros((10,)))
    assert np.all(np.isfinite(g_pose)) and np.all(np.isfinite(g_betas))
    assert np.abs(g_pose).sum() > 0 and np.abs(g_betas).sum() > 0


def test_too_many_betas_and_wrong_joint_count(body_model_dir):
    model = body_models.load_mano(str(body_model_dir))
    with pytest.raises(ValueError, match='11 betas'):
        body_models.forward(model, jnp.zeros((16, 3)), jnp.zeros((11,)))
    with pytest.raises(ValueError, match='24 joints'):
        body_models.forward(model, jnp.zeros((24, 3, 3)), jnp.zeros((10,)))
    with pytest.raises(body_models.BodyModelFileError, match='holds 10 betas, 300 requested'):
        body_models.load_mano(str(body_model_dir), num_betas=300)


# ----------------------------------------------------------------------------- bad files


def test_truncated_pkl_names_file(body_model_dir, tmp_path):
    data = (body_model_dir / 'smpl' / 'SMPL_NEUTRAL.pkl').read_bytes()
    bad = tmp_path / 'SMPL_NEUTRAL.pkl'
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(body_models.BodyModelFileError, match=str(bad)):
        body_models.load_smpl(str(bad))


def test_foreign_pkl_names_missing_keys(tmp_path):
    bad = tmp_path / 'foreign.pkl'
    bad.write_bytes(pickle.dumps({'v_template': np.zeros((5, 3)), 'weights': np.zeros((5, 2))}))
    with pytest.raises(
        body_models.BodyModelFileError, match=r"foreign\.pkl.*missing keys.*'shapedirs'"
    ):
        body_models.load_model_file(str(bad))
    bad.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(body_models.BodyModelFileError, match='expected a dict'):
        body_models.load_model_file(str(bad))


def test_pkl_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))

    bad = tmp_path / 'evil.pkl'
    bad.write_bytes(pickle.dumps({'v_template': Evil()}))
    with pytest.raises(body_models.BodyModelFileError, match=r'evil\.pkl.*refusing.*system'):
        body_models.load_model_file(str(bad))


def test_misshaped_key_is_named(body_model_dir, tmp_path):
    with np.load(body_model_dir / 'mano' / 'MANO_RIGHT.npz') as z:
        arrays = {k: z[k] for k in z.files}
    arrays['posedirs'] = arrays['posedirs'][..., :100]
    bad = tmp_path / 'MANO_RIGHT.npz'
    np.savez(bad, **arrays)
    with pytest.raises(
        body_models.BodyModelFileError, match=r"MANO_RIGHT\.npz: key 'posedirs' has shape"
    ):
        body_models.load_mano(str(bad))


def test_missing_model_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        body_models.load_smpl(str(tmp_path), gender='female')


# ----------------------------------------------------------------------------- finding files


@pytest.mark.parametrize(
    'name, stored',
    [
        ('SMPL_NEUTRAL', 'SMPL_NEUTRAL.pkl'),
        ('SMPL_NEUTRAL', 'smpl/basicModel_neutral_lbs_10_207_0_v1.0.0.pkl'),
        ('SMPL_NEUTRAL', 'smpl/basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl'),
        ('SMPL_MALE', 'smpl/basicmodel_m_lbs_10_207_0_v1.0.0.pkl'),
        ('SMPL_FEMALE', 'basicModel_f_lbs_10_207_0_v1.0.0.pkl'),
        ('SMPL_FEMALE', 'smpl/BASICMODEL_F_LBS_10_207_0_V1.1.0.PKL'),
        ('SMPL_FEMALE', 'smpl/SMPL_FEMALE.npz'),
        ('MANO_RIGHT', 'mano/MANO_RIGHT.pkl'),
        ('MANO_RIGHT', 'MANO_RIGHT.npz'),
        ('SMPL_to_J19', 'SMPL_to_J19.pkl'),
        ('SMPL_to_J19', 'smpl/SMPL_to_J19.pkl'),
    ],
)
def test_finder_takes_the_names_people_have(tmp_path, name, stored):
    path = tmp_path / stored
    path.parent.mkdir(exist_ok=True)
    path.touch()
    assert body_models.find_model_file(str(tmp_path), name) == str(path)


def test_finder_prefers_smplx_names_then_the_top_folder(tmp_path):
    (tmp_path / 'smpl').mkdir()
    for stored in (
        'smpl/basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl',
        'smpl/SMPL_NEUTRAL.pkl',
        'SMPL_NEUTRAL.npz',
    ):
        (tmp_path / stored).touch()
    find = lambda: body_models.find_model_file(tmp_path, 'SMPL_NEUTRAL')
    assert find() == str(tmp_path / 'SMPL_NEUTRAL.npz')
    os.remove(tmp_path / 'SMPL_NEUTRAL.npz')
    assert find() == str(tmp_path / 'smpl' / 'SMPL_NEUTRAL.pkl')


def test_finder_error_names_the_folder_and_every_name(tmp_path):
    (tmp_path / 'mano').mkdir()
    (tmp_path / 'MANO_LEFT.pkl').touch()
    (tmp_path / 'MANO_RIGHT.pkl').mkdir()  # a folder of that name is no model file
    with pytest.raises(body_models.ModelFileNotFound) as err:
        body_models.find_model_file(str(tmp_path), 'MANO_RIGHT')
    message = str(err.value)
    assert message == (
        f'no MANO_RIGHT.pkl / MANO_RIGHT.npz in {tmp_path} nor in its smpl/ or mano/ folder'
    )
    # Callers that catch a missing file, and the command lines' exit codes, see what they did.
    assert isinstance(err.value, FileNotFoundError)
    assert isinstance(err.value, body_models.BodyModelFileError)
    assert errors.exit_code(err.value) == 2
    with pytest.raises(
        body_models.ModelFileNotFound,
        match=r'SMPL_FEMALE\.pkl / .*'
        r'basicModel_f_lbs_10_207_0_v1\.0\.0\.pkl in .* nor in its smpl/',
    ):
        body_models.load_smpl(str(tmp_path), gender='female')
    with pytest.raises(body_models.ModelFileNotFound, match=f'folder {tmp_path / "nope"} does not'):
        body_models.find_model_file(str(tmp_path / 'nope'), 'SMPL_to_J19')
    with pytest.raises(ValueError, match="unknown body-model file 'SMPL_KID'"):
        body_models.find_model_file(str(tmp_path), 'SMPL_KID')


def test_load_from_dir_finds_official_names_and_loads_once(body_model_dir, tmp_path):
    smpl = tmp_path / 'smpl'
    smpl.mkdir()
    shutil.copy(
        body_model_dir / 'smpl' / 'SMPL_MALE.pkl', smpl / 'basicmodel_m_lbs_10_207_0_v1.0.0.pkl'
    )
    shutil.copy(body_model_dir / 'SMPL_to_J19.pkl', tmp_path / 'SMPL_to_J19.pkl')
    male = body_models.load_from_dir(str(tmp_path), 'smpl', 'male')
    assert male.extra_regressor.shape[0] == 19  # HMR 2.0's 44 keypoints, the J19 found beside it
    assert body_models.load_from_dir(str(tmp_path) + os.sep, 'smpl', 'male') is male
    want = body_models.load_smpl(str(body_model_dir), 'male')
    np.testing.assert_array_equal(male.v_template, want.v_template)
    mano = body_models.load_from_dir(str(body_model_dir), 'mano', 'female')  # gender unused
    assert mano.kind == 'mano' and not mano.mirrored
    assert body_models.load_from_dir(str(body_model_dir), 'mano') is mano
    with pytest.raises(body_models.ModelFileNotFound, match='SMPL_FEMALE'):
        body_models.load_from_dir(str(tmp_path), 'smpl', 'female')
