"""HMR 2.0 / HaMeR losses and discriminator: shapes, PyTorch parity, hand-made values."""

import json
import math
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from extpose_jax import body_models, geometry, losses
from extpose_jax.models import discriminator as D

# The upstream checkpoints' layouts (key -> shape), dumped from the upstream PyTorch modules.
UPSTREAM_LAYOUT = Path(__file__).parent / 'fixtures' / 'reference_state_dicts.json'
REF = {'smpl': 'hmr2', 'mano': 'hamer'}


# ------------------------------------------------------------------------------ discriminator


class TorchDisc(torch.nn.Module):
    """Independent PyTorch port with the upstream key names (ReLU activations, as documented)."""

    def __init__(self, j):
        super().__init__()
        self.j = j
        self.D_conv1 = torch.nn.Conv2d(9, 32, kernel_size=1)
        self.D_conv2 = torch.nn.Conv2d(32, 32, kernel_size=1)
        self.pose_out = torch.nn.ModuleList([torch.nn.Linear(32, 1) for _ in range(j)])
        self.betas_fc1 = torch.nn.Linear(10, 10)
        self.betas_fc2 = torch.nn.Linear(10, 5)
        self.betas_out = torch.nn.Linear(5, 1)
        self.D_alljoints_fc1 = torch.nn.Linear(32 * j, 1024)
        self.D_alljoints_fc2 = torch.nn.Linear(1024, 1024)
        self.D_alljoints_out = torch.nn.Linear(1024, 1)

    def forward(self, rotmats, betas):
        bn = rotmats.shape[0]
        x = rotmats.reshape(bn, self.j, 1, 9).permute(0, 3, 1, 2)  # (B, 9, J, 1)
        x = torch.relu(self.D_conv2(torch.relu(self.D_conv1(x))))
        pose = torch.cat([self.pose_out[i](x[:, :, i, 0]) for i in range(self.j)], 1)
        b = self.betas_out(torch.relu(self.betas_fc2(torch.relu(self.betas_fc1(betas)))))
        a = x.reshape(bn, -1)
        a = self.D_alljoints_out(
            torch.relu(self.D_alljoints_fc2(torch.relu(self.D_alljoints_fc1(a))))
        )
        return torch.cat([pose, b, a], 1)


def _rand_rotmats(rng, *shape):
    aa = rng.normal(size=shape + (3,)).astype(np.float32)
    return np.asarray(geometry.axis_angle_to_matrix(jnp.asarray(aa)))


@pytest.mark.parametrize('kind', ['smpl', 'mano'])
def test_discriminator_shapes_match_reference(kind):
    j = D.num_joints(kind)
    layout = json.loads(UPSTREAM_LAYOUT.read_text())[REF[kind]]
    ref = {
        k[len('discriminator.') :]: tuple(v)
        for k, v in layout.items()
        if k.startswith('discriminator.')
    }
    kmap = D.discriminator_key_map(kind)
    assert [m[0] for m in kmap] == list(ref)  # same keys, same registration order
    variables = jax.eval_shape(
        D.Discriminator(kind).init,
        jax.random.PRNGKey(0),
        jnp.zeros((2, j, 3, 3)),
        jnp.zeros((2, 10)),
    )
    params = nn.unbox(variables['params'])
    flat = {
        '/'.join(k.key for k in path): leaf.shape
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    assert len(flat) == len(ref)
    for tkey, (mod, leaf), tshape, fshape, rule in kmap:
        assert ref[tkey] == tshape, tkey
        assert flat[f'{mod}/{leaf}'] == fshape, tkey
        # conversion rules: Linear transpose; 1x1 conv (O, I, 1, 1) -> Dense (I, O)
        expect = {
            'copy': lambda: tshape,
            'linear': lambda: tshape[::-1],
            'conv1x1': lambda: (tshape[1], tshape[0]),
        }[rule]()
        assert fshape == expect
    n = sum(math.prod(s) for s in flat.values())
    assert n == sum(math.prod(s) for s in ref.values()) == {'smpl': 1807619, 'mano': 1545211}[kind]
    # logical axis names on every leaf
    boxed = jax.tree_util.tree_leaves(
        variables['params'], is_leaf=lambda x: isinstance(x, nn.Partitioned)
    )
    assert all(isinstance(b, nn.Partitioned) and len(b.names) == len(b.value.shape) for b in boxed)


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['smpl', 'mano'])
def test_discriminator_matches_torch(kind):
    j = D.num_joints(kind)
    torch.manual_seed(0)
    ref = TorchDisc(j).eval()
    state = {'discriminator.' + k: v for k, v in ref.state_dict().items()}
    variables = D.from_torch_state_dict(state, kind, prefix='discriminator.')
    rng = np.random.default_rng(0)
    rot = np.array(_rand_rotmats(rng, 5, j))
    betas = rng.normal(size=(5, 10)).astype(np.float32)
    out = D.Discriminator(kind).apply(variables, jnp.asarray(rot), jnp.asarray(betas))
    with torch.no_grad():
        want = ref(torch.from_numpy(rot), torch.from_numpy(betas)).numpy()
    assert out.shape == (5, j + 2)
    np.testing.assert_allclose(np.asarray(out), want, atol=1e-5, rtol=1e-5)
    # leading dims pass through
    out2 = D.Discriminator(kind).apply(
        variables, jnp.asarray(rot).reshape(1, 5, j, 3, 3), jnp.asarray(betas)[None]
    )
    np.testing.assert_allclose(np.asarray(out2[0]), np.asarray(out), atol=1e-6)
    back = D.to_torch_state_dict(variables, kind, prefix='discriminator.')
    assert list(back) == list(state)
    for k in state:
        np.testing.assert_array_equal(back[k], state[k].numpy())
    with pytest.raises(KeyError):
        D.from_torch_state_dict(
            {k: v for k, v in state.items() if 'betas_out' not in k}, kind, prefix='discriminator.'
        )


# ------------------------------------------------------------------------------ single terms


def test_keypoint_2d_loss_units():
    # window pixel (x=96, y=128) is the centre of the 256 crop -> normalised (0, 0)
    gt = jnp.array([[96.0, 128.0, 1.0], [224.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    pred = jnp.array([[0.1, -0.2], [0.0, 0.0], [5.0, 5.0]])
    # joint 1: x_norm = (224 + 32) / 256 - 0.5 = 0.5, y_norm = -0.5 -> |.|_1 = 1.0, conf 0.5
    assert float(losses.keypoint_2d_loss(pred, gt)) == pytest.approx(0.3 + 0.5)
    # 256x256-crop GT: no offset
    assert float(
        losses.keypoint_2d_loss(pred[:1], jnp.array([[128.0, 128.0, 2.0]]), x_offset=0.0)
    ) == pytest.approx(2 * 0.3)


def test_keypoint_3d_loss_root_centred():
    pred = jnp.array([[1.0, 1.0, 1.0], [2.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    gt = jnp.array(
        [[10.0, 0.0, 0.0], [11.0, 0.0, 0.0], [10.0, 1.0, 0.0]]
    )  # same up to translation but j2
    # centred on root 0: pred j2 = (0, 2, 0), gt j2 = (0, 1, 0) -> 1
    assert float(losses.keypoint_3d_loss(pred, gt, root=0)) == pytest.approx(1.0)
    conf = jnp.array([[1.0], [1.0], [0.25]])
    assert float(
        losses.keypoint_3d_loss(pred, jnp.concatenate([gt, conf], -1), root=0)
    ) == pytest.approx(0.25)
    # root 1: pred centred = [(-1,0,0),(0,0,0),(-1,2,0)], gt = [(-1,0,0),(0,0,0),(-1,1,0)] -> 1
    assert float(losses.keypoint_3d_loss(pred, gt, root=1)) == pytest.approx(1.0)


def test_keypoint_3d_loss_per_joint_confidence_and_unlabelled_root():
    # root 0; joint 1 labelled (conf 1), joint 2 not (conf 0, its GT garbage), joint 3 at 0.5.
    # No coordinate ties (|.|'s gradient at 0 is a convention), dyadic numbers: exact in fp32.
    pred = jnp.array([[0.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.0, 5.0, 1.0], [0.0, 0.0, 3.0]])
    gt = jnp.array(
        [
            [10.0, 0.0, 0.0, 1.0],
            [10.5, 0.25, -0.25, 1.0],
            [-99.0, 99.0, 99.0, 0.0],
            [10.25, -0.5, 1.0, 0.5],
        ]
    )
    # centred: j1 pred (1, 0, 0) - gt (0.5, 0.25, -0.25) = (0.5, -0.25, 0.25) -> 1;
    # j3 pred (0, 0, 2) - gt (0.25, -0.5, 1) = (-0.25, 0.5, 1) -> 1.75 at conf 0.5
    assert float(losses.keypoint_3d_loss(pred, gt, root=0)) == 1.0 + 0.875
    grad = np.asarray(jax.grad(lambda p: losses.keypoint_3d_loss(p, gt, root=0))(pred))
    np.testing.assert_array_equal(grad[2], 0.0)  # the unlabelled joint gets no gradient
    np.testing.assert_array_equal(grad[1], [1.0, -1.0, 1.0])  # conf * sign of the difference
    np.testing.assert_array_equal(grad[3], [-0.5, 0.5, 0.5])
    np.testing.assert_array_equal(grad[0], [-0.5, 0.5, -1.5])  # the root: minus their sum
    # an unlabelled root: the sample's 3D term and its gradient are 0, not pulled to zeros
    no_root = gt.at[0, 3].set(0.0)
    assert float(losses.keypoint_3d_loss(pred, no_root, root=0)) == 0.0
    grad = jax.grad(lambda p: losses.keypoint_3d_loss(p, no_root, root=0))(pred)
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    # batched: only the sample whose root is unlabelled drops out
    both = losses.keypoint_3d_loss(jnp.stack([pred, pred]), jnp.stack([gt, no_root]), root=0)
    np.testing.assert_array_equal(np.asarray(both), [1.875, 0.0])


def test_parameter_and_betas_loss():
    rz90 = jnp.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    pred = jnp.stack([rz90, jnp.eye(3)])[None]  # (1, 2, 3, 3)
    gt = jnp.zeros((1, 6))  # identity, flat axis-angle
    assert float(losses.parameter_loss(pred, gt)[0]) == pytest.approx(4.0)
    gt_rz = jnp.array([[[0.0, 0.0, math.pi / 2], [0.0, 0.0, 0.0]]])
    assert float(losses.parameter_loss(pred, gt_rz)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.parameter_loss(pred, gt, jnp.array([False]))[0]) == 0.0
    b = losses.betas_loss(
        jnp.array([[1.0, 2.0], [0.0, 0.0]]),
        jnp.array([[0.0, 0.0], [3.0, 0.0]]),
        jnp.array([True, False]),
    )
    np.testing.assert_allclose(np.asarray(b), [5.0, 0.0])


def test_adversarial_losses():
    fake = jnp.array([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0], [9.0, 9.0, 9.0]])
    # (1 + 0 + 1) + 0 over N = 3 samples
    assert float(losses.generator_adv_loss(fake)) == pytest.approx((2 + 0 + 3 * 64) / 3)
    mask = jnp.array([True, True, False])
    assert float(losses.generator_adv_loss(fake, mask)) == pytest.approx(2 / 2)
    real = jnp.array([[1.0, 1.0, 1.0], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 3.0]])
    loss, t = losses.discriminator_loss(fake, real, mask, weight=0.5)
    assert float(t['loss_disc_fake']) == pytest.approx((0 + 1 + 4 + 3) / 2)
    assert float(t['loss_disc_real']) == pytest.approx((1 + 1 + 4) / 2)
    assert float(loss) == pytest.approx(0.5 * (4 + 3))
    assert losses.LossWeights() == losses.LossWeights(0.05, 0.01, 0.001, 0.001, 0.0005, 0.0005)


# ------------------------------------------------------------------------------ total loss


@pytest.fixture(scope='module')
def smpl_model(body_model_dir):
    return body_models.load_smpl(
        str(body_model_dir), j19_path=str(body_model_dir / 'SMPL_to_J19.pkl')
    )


@pytest.fixture(scope='module')
def mano_model(body_model_dir):
    return body_models.load_mano(str(body_model_dir))


def _synthetic(kind, model, b=2, t=3, seed=0):
    """Outputs and a batch whose GT is exactly the outputs' own pose, keypoints and projection."""
    rng = np.random.default_rng(seed)
    nj = D.num_joints(kind)
    aa = (0.3 * rng.normal(size=(b, t, nj + 1, 3))).astype(np.float32)
    rot = geometry.axis_angle_to_matrix(jnp.asarray(aa))
    key = losses.POSE_KEY[kind]
    cam = np.stack(
        [rng.uniform(0.8, 1.2, (b, t)), rng.normal(0, 0.05, (b, t)), rng.normal(0, 0.05, (b, t))],
        -1,
    ).astype(np.float32)
    out = {
        'global_orient': rot[..., :1, :, :],
        key: rot[..., 1:, :, :],
        'betas': jnp.asarray(rng.normal(size=(b, t, 10)).astype(np.float32)),
        'pred_cam': jnp.asarray(cam),
    }
    from extpose_jax.models import extpose

    posed = jax.jit(extpose.posed_keypoints)(out, model)
    kp2 = np.asarray(posed['keypoints_2d'])
    px = np.stack(
        [(kp2[..., 0] + 0.5) * 256 - 32, (kp2[..., 1] + 0.5) * 256, np.ones(kp2.shape[:-1])], -1
    ).astype(np.float32)
    kp3 = np.asarray(posed['keypoints_3d']) + rng.normal(size=(b, t, 1, 3)).astype(np.float32)
    batch = {
        'kp2d': jnp.asarray(px),
        'kp3d': jnp.asarray(kp3),
        'pose': jnp.asarray(aa.reshape(b, t, -1)),
        'betas': out['betas'],
        **{
            k: jnp.ones((b, t), bool)
            for k in ('has_kp2d', 'has_kp3d', 'has_pose', 'has_betas', 'frame_valid')
        },
    }
    return out, batch


_JIT = {}


def _total(model, kind, normalize='sum'):
    """jit-compiled total_loss (eager op-by-op dispatch is several times slower on CPU)."""
    key = (kind, normalize)
    if (
        key not in _JIT
    ):  # the model is an argument: closed-over arrays become slow-to-fold constants
        _JIT[key] = jax.jit(
            lambda o, b, m: losses.total_loss(o, b, m, kind=kind, normalize=normalize)
        )
    return lambda o, b: _JIT[key](o, b, model)


def _perturb(out, rng, scale=0.05):
    return {
        k: v + scale * jnp.asarray(rng.normal(size=v.shape).astype(np.float32))
        for k, v in out.items()
    }


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['smpl', 'mano'])
def test_total_loss_zero_at_ground_truth(kind, smpl_model, mano_model):
    model = smpl_model if kind == 'smpl' else mano_model
    out, batch = _synthetic(kind, model)
    loss, terms = _total(model, kind)(out, batch)
    for k, v in terms.items():
        assert abs(float(v)) < 1e-3, (k, float(v))  # window-pixel -> crop-unit mapping is exact


@pytest.mark.slow
def test_total_loss_terms_masks_and_padding(smpl_model):
    model = smpl_model
    out, batch = _synthetic('smpl', model)
    out = _perturb(out, np.random.default_rng(1))
    w = losses.LossWeights()
    loss, terms = _total(model, 'smpl')(out, batch)
    names = ['loss_kp2d', 'loss_kp3d', 'loss_global_orient', 'loss_body_pose', 'loss_betas']
    assert all(float(terms[k]) > 0 for k in names)
    expect = (
        w.kp2d * terms['loss_kp2d']
        + w.kp3d * terms['loss_kp3d']
        + w.global_orient * terms['loss_global_orient']
        + w.body_pose * terms['loss_body_pose']
        + w.betas * terms['loss_betas']
    )
    assert float(loss) == pytest.approx(float(expect), rel=1e-6)
    # hand check of the betas term: summed over frames and coefficients
    assert float(terms['loss_betas']) == pytest.approx(
        float(jnp.sum((out['betas'] - batch['betas']) ** 2)), rel=1e-5
    )
    # has_* flags zero their own term only
    for flag, term in (
        ('has_kp2d', 'loss_kp2d'),
        ('has_kp3d', 'loss_kp3d'),
        ('has_betas', 'loss_betas'),
    ):
        _, t2 = _total(model, 'smpl')(out, {**batch, flag: jnp.zeros((2, 3), bool)})
        assert float(t2[term]) == 0.0
        assert float(t2['loss_global_orient']) == pytest.approx(float(terms['loss_global_orient']))
    _, t2 = _total(model, 'smpl')(out, {**batch, 'has_pose': jnp.zeros((2, 3), bool)})
    assert float(t2['loss_global_orient']) == 0.0 and float(t2['loss_body_pose']) == 0.0

    # padded frames: garbage GT and predictions there change nothing, and get zero gradient
    valid = jnp.array([[True, True, False], [True, False, False]])
    padded = {**batch, 'frame_valid': valid}
    garbage = {
        k: jnp.where(valid.reshape(valid.shape + (1,) * (v.ndim - 2)), v, 7.0)
        if v.dtype != bool
        else v
        for k, v in batch.items()
    }
    garbage['frame_valid'] = valid
    out_g = {
        k: jnp.where(valid.reshape(valid.shape + (1,) * (v.ndim - 2)), v, v * 1.5)
        for k, v in out.items()
    }

    def f(o, bt, normalize='sum'):
        return _total(model, 'smpl', normalize)(o, bt)[0]

    l_pad = f(out, padded)
    assert float(f(out_g, garbage)) == pytest.approx(float(l_pad), rel=1e-6)
    # the same loss as the valid frames alone (as a (1, 3) batch)
    # the same loss as the valid frames alone, packed into the same (2, 3) batch shape
    idx = np.array([[0, 0], [0, 1], [1, 0]])
    packed = lambda tree: {
        k: v.at[0].set(v[idx[:, 0], idx[:, 1]])  # noqa: E731
        for k, v in tree.items()
        if k != 'frame_valid'
    }
    packed_batch = {**packed(batch), 'frame_valid': jnp.array([[True] * 3, [False] * 3])}
    assert float(f(packed(out), packed_batch)) == pytest.approx(float(l_pad), rel=1e-5)
    assert float(f(out, padded, 'mean_per_frame')) == pytest.approx(float(l_pad) / 3, rel=1e-5)
    grads = jax.jit(jax.grad(lambda o, bt, m: losses.total_loss(o, bt, m, w, 'smpl')[0]))(
        out_g, garbage, model
    )
    for k, g in grads.items():
        g = np.asarray(g)
        assert np.all(np.isfinite(g)), k
        assert np.all(g[~np.asarray(valid)] == 0.0), k
        assert np.any(g[np.asarray(valid)] != 0.0), k


@pytest.mark.slow
def test_total_loss_with_3d_on_the_extra_joints_only(smpl_model):
    """An H36M / MPI-INF-like batch (3D labels on HMR 2.0's 19 extra joints only, the OpenPose-25
    rows unlabelled and garbage) through the whole loss with SMPL: loss_kp3d is the sum over the
    labelled joints of the pelvis-centred L1 error, computed here in float64 from the posed
    keypoints; a frame whose pelvis is unlabelled adds nothing."""
    from extpose_jax.models import extpose

    out, batch = _synthetic('smpl', smpl_model)
    out = _perturb(out, np.random.default_rng(2))
    rng = np.random.default_rng(3)
    kp3 = np.asarray(batch['kp3d'], np.float64)
    conf = np.zeros(kp3.shape[:-1] + (1,))
    conf[..., 25:, 0] = 1.0
    kp3[..., :25, :] = rng.normal(0.0, 50.0, kp3[..., :25, :].shape)  # never read
    conf[1, 2, losses.ROOT_JOINT['smpl'], 0] = 0.0  # one frame without its pelvis label
    gt = np.concatenate([kp3, conf], -1).astype(np.float32)
    _, terms = _total(smpl_model, 'smpl')(out, {**batch, 'kp3d': jnp.asarray(gt)})

    pred = np.asarray(jax.jit(extpose.posed_keypoints)(out, smpl_model)['keypoints_3d'], np.float64)
    root = losses.ROOT_JOINT['smpl']
    err = np.abs((pred - pred[..., root : root + 1, :]) - (kp3 - kp3[..., root : root + 1, :]))
    per_frame = np.sum(conf * err, axis=(-2, -1))
    per_frame[1, 2] = 0.0
    want = per_frame.sum()
    # fp32: 5 frames x 19 joints x 3 coordinates of |differences| of ~1 m coordinates, each off
    # by a few ulps of 1 m (the posed keypoints are compiled in two programs); a wrong mask or
    # root would be off by the ~0.01-0.1 m per-joint errors themselves.
    n_terms = 5 * 19 * 3
    tol = n_terms * 8 * np.finfo(np.float32).eps * max(1.0, np.abs(pred).max())
    assert float(terms['loss_kp3d']) == pytest.approx(want, abs=tol)
    assert want > 100 * tol


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['smpl', 'mano'])
def test_total_loss_with_discriminator(kind, smpl_model, mano_model):
    model = smpl_model if kind == 'smpl' else mano_model
    out, batch = _synthetic(kind, model, seed=2)
    out = _perturb(out, np.random.default_rng(3))
    # a view axis of size 1, as ExtPose returns (B, T, V, ...)
    out_v = {k: v[:, :, None] for k, v in out.items()}
    disc = D.Discriminator(kind)
    j = D.num_joints(kind)
    dvars = jax.jit(disc.init)(jax.random.PRNGKey(0), jnp.zeros((1, j, 3, 3)), jnp.zeros((1, 10)))
    valid = jnp.array([[True, True, True], [True, True, False]])
    batch = {**batch, 'frame_valid': valid}

    def f(o, bt, m, dv):
        return losses.total_loss(
            o, bt, m, kind=kind, discriminator=lambda r, b: disc.apply(dv, r, b)
        )

    # gradients through SMPL are checked in test_total_loss_terms_masks_and_padding; here only
    # through MANO (compiling the SMPL gradient twice costs ~10 s of test time)
    if kind == 'mano':
        (loss, terms), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(
            out_v, batch, model, dvars
        )
    else:
        (loss, terms), grads = jax.jit(f)(out_v, batch, model, dvars), {}
    key = losses.POSE_KEY[kind]
    d_out = jax.jit(disc.apply)(dvars, out[key], out['betas'])
    want_adv = float(jnp.sum(jnp.where(valid[..., None], (d_out - 1) ** 2, 0.0)) / 5)
    assert float(terms['loss_adv']) == pytest.approx(want_adv, rel=1e-5)
    _, no_adv = _total(model, kind)(out, batch)
    assert float(loss) == pytest.approx(float(no_adv['loss']) + 0.0005 * want_adv, rel=1e-5)
    for k, g in grads.items():
        assert g.shape == out_v[k].shape
        assert np.all(np.isfinite(np.asarray(g))), k
        assert np.all(np.asarray(g)[1, 2] == 0.0), k
    # discriminator step on stop-gradient fakes and "MoCap" reals
    real = jax.jit(disc.apply)(
        dvars, jnp.asarray(_rand_rotmats(np.random.default_rng(4), 4, j)), jnp.zeros((4, 10))
    )
    dl, dt = losses.discriminator_loss(jax.lax.stop_gradient(d_out), real, valid)
    assert float(dl) == pytest.approx(
        0.0005 * (float(dt['loss_disc_fake']) + float(dt['loss_disc_real']))
    )
