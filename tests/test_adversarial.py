"""The adversarial prior (loss.use_adversarial): the step's two updates against a recomputation
outside the step, gradient accumulation, the prior off, and the discriminator through
checkpoints / import.

The recomputation is not independent arithmetic: it calls the project's own loss functions
(losses.total_loss, losses.discriminator_loss) and model on the initial state, differentiates them
with jax.grad, and applies optax's AdamW to the discriminator. So it checks the step's wiring
(which loss reaches which parameters, the stop-gradients, the weights and the normaliser, one
AdamW step with the run's settings), not the loss formulas, which tests/test_losses.py checks
against PyTorch.

Tiny ViT, T = 2, batch 2, random arrays (bench/train_step.py's random_batch). Modality dropout
is off so that the model is deterministic and the recomputation sees the step's predictions.
The adversarial weight is raised to 1 so that its terms are far above float noise.
"""

import ast
import collections
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
import torch

from bench.train_step import random_batch
from configs import video
from extpose_jax import geometry, losses
from extpose_jax.convert import from_torch, keymap, to_torch
from extpose_jax.train import checkpoint, loop, optim
from extpose_jax.train import config as config_lib
from extpose_jax.train import sharding as shd
from extpose_jax.train import state as state_lib
from extpose_jax.train import task as task_lib

B, T = 2, 2
RNG = jax.random.key(1)
SGD = optax.sgd(1.0)
# Each test compiles the full model's train step or its gradient (30-70 s of CPU each).
pytestmark = pytest.mark.slow


def _config(adversarial=True, grad_accum=1):
    cfg = video.get_config('small')
    cfg.data.num_frames, cfg.data.batch_size, cfg.train.grad_accum = T, B, grad_accum
    cfg.model.modality_dropout = 0.0
    cfg.loss.use_adversarial, cfg.loss.adversarial = adversarial, 1.0
    cfg.loss.normalize = 'mean_per_frame'  # as the recomputation below (one batch, no scale)
    config_lib.validate(cfg)
    return cfg


def _batch(cfg):
    batch = random_batch(cfg, np.random.default_rng(0))
    # Frames without GT pose or betas give no real sample, but still a fake one. frame_valid stays
    # all True: both micro-batches of grad_accum=2 then have the same number of fakes (the N
    # that normalises their losses), so their average is exactly the full batch's.
    batch['has_pose'][0, 1] = False
    batch['has_betas'][1, 0] = False
    return batch


def _initial(body_models):
    """The initial pose model and discriminator values on the host, compiled once for the module
    (each init compiles for ~10-30 s of CPU): {'params', 'constants', 'disc_params'}."""
    task = task_lib.Task(_config(), str(body_models))
    mesh = shd.make_mesh({'data': -1})
    state, sh = state_lib.create_train_state(
        task.model, SGD, jax.random.key(0), task.example_inputs(B, T), mesh
    )
    state, _ = state_lib.add_discriminator(
        state, sh, task.discriminator, SGD, jax.random.key(2), task.disc_example_inputs(), mesh
    )
    return _host_copy(
        {'params': state.params, 'constants': state.constants, 'disc_params': state.disc_params}
    )


def _build(cfg, body_models, initial, tx=None, disc_tx=None):
    """(task, state, shardings, step, mesh) as loop.train builds them (optimizers overridable),
    except that the values come from `initial` (_initial's) instead of each build compiling
    its own inits: the shardings from state_initializer / add_discriminator, the optimizer
    states from the optimizers' init."""
    task = task_lib.Task(cfg, str(body_models))
    mesh = shd.make_mesh({'data': -1})
    tx = tx or optim.make_optimizer(config_lib.optim_config(cfg))
    init, sh = state_lib.state_initializer(
        task.model, tx, jax.random.key(0), task.example_inputs(B, T), mesh
    )
    kwargs = {}
    if cfg.loss.use_adversarial:
        disc_tx = disc_tx or optim.make_optimizer(config_lib.disc_optim_config(cfg))
        # An abstract state gets an abstract discriminator: its shardings, nothing compiled.
        _, sh = state_lib.add_discriminator(
            jax.eval_shape(init, jax.random.key(0)),
            sh,
            task.discriminator,
            disc_tx,
            jax.random.key(2),
            task.disc_example_inputs(),
            mesh,
        )
        kwargs = {'disc_loss_fn': task.disc_loss_fn, 'disc_tx': disc_tx}
    fields = {'step': jax.device_put(np.int32(0), sh.step)}
    for name, opt_name, opt in (
        ('params', 'opt_state', tx),
        ('disc_params', 'disc_opt_state', disc_tx),
    ):
        if hasattr(sh, name):
            fields[name] = jax.device_put(initial[name], getattr(sh, name))
            fields[opt_name] = jax.jit(opt.init, out_shardings=getattr(sh, opt_name))(fields[name])
    fields['constants'] = jax.device_put(initial['constants'], sh.constants)
    state = type(sh)(**fields)
    step = state_lib.make_train_step(
        task.loss_fn,
        tx,
        mesh,
        sh,
        shd.batch_sharding(mesh),
        grad_accum=cfg.train.grad_accum,
        **kwargs,
    )
    return task, state, sh, step, mesh


def _host_copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _one_step(cfg, body_models, initial, **opt):
    """Runs one step; -> dict of the initial state, the stepped state and metrics (host copies)."""
    task, state, _, step, mesh = _build(cfg, body_models, initial, **opt)
    before = _host_copy(state)  # the step donates (may overwrite) its state argument
    state, metrics = step(state, shd.global_batch(_batch(cfg), mesh), RNG)
    return {
        'task': task,
        'before': before,
        'after': _host_copy(state),
        'metrics': {k: float(v) for k, v in jax.device_get(metrics).items()},
    }


def _assert_close(a, b, atol, rtol=0.0):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def _sgd_grad(run):
    """The generator's gradient of a run's step (SGD, lr 1): params before - after."""
    return jax.tree.map(np.subtract, run['before'].params, run['after'].params)


EPS = float(np.finfo(np.float32).eps)


def _assert_grads_close(got, want, params, ulps):
    """Per leaf, |got - want| <= EPS (|p| + 2 |want|) + ulps EPS max|want|.

    The first term is reading a gradient off an SGD step: after = p - g and then p - after are
    each rounded to float32 (half an ulp of |p| + |g| and of |g|, in each of the two runs). The
    second is the gradient's own rounding, relative to the leaf's scale: each entry is a sum
    over frames and tokens (up to 4 x 384 terms) whose association differs between the two
    programs, so it differs by some ulps of the terms' size, which the leaf's largest entry
    stands for. A wrong gradient (a micro-batch dropped or counted twice, the discriminator's
    term missing) is off by a good part of max|want|: millions of ulps.
    """
    for (path, x), y, p in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), jax.tree.leaves(params)
    ):
        x, y, p = (np.asarray(a, np.float64) for a in (x, y, p))
        bound = EPS * (np.abs(p) + 2 * np.abs(y)) + ulps * EPS * np.abs(y).max()
        excess = np.abs(x - y) - bound
        assert excess.max() <= 0, (
            jax.tree_util.keystr(path),
            float(np.abs(x - y).max()),
            float(np.abs(y).max()),
        )


@pytest.fixture(scope='module')
def initial(body_model_dir):
    return _initial(body_model_dir)


@pytest.fixture(scope='module')
def adv(body_model_dir, initial):
    # The generator by SGD with lr 1: its update is minus the gradient itself, which the tests
    # compare exactly. The discriminator by the run's own AdamW (config.disc_optim_config).
    return _one_step(_config(), body_model_dir, initial, tx=SGD)


@pytest.fixture(scope='module')
def hand(adv):
    """The step recomputed outside it from the initial state: both losses and gradients."""
    task, s0 = adv['task'], adv['before']
    batch = jax.tree.map(jnp.asarray, _batch(task.cfg))
    variables = {'params': s0.params, **s0.constants}
    disc = lambda r, b: task.discriminator.apply({'params': s0.disc_params}, r, b)  # noqa: E731

    def gen_loss(params, with_disc):
        out = task.apply({**variables, 'params': params}, batch)
        return losses.total_loss(
            out,
            batch,
            task.body_model,
            task.weights,
            'smpl',
            discriminator=disc if with_disc else None,
            normalize='mean_per_frame',
        )

    def disc_loss(disc_params):
        out = jax.lax.stop_gradient(task.predict(variables, batch))
        real = geometry.axis_angle_to_matrix(batch['pose'].reshape(B, T, 24, 3)[:, :, 1:])
        d = lambda r, b: task.discriminator.apply({'params': disc_params}, r, b)  # noqa: E731
        return losses.discriminator_loss(
            d(out['body_pose'], out['betas']),
            d(real, batch['betas']),
            batch['frame_valid'],
            1.0,
            real_mask=batch['has_pose'] & batch['has_betas'],
        )[0]

    @jax.jit  # one program: the three share the model's forward pass (one compile, not three)
    def recompute(params, disc_params):
        grad = jax.value_and_grad(gen_loss, has_aux=True)
        (loss, terms), g = grad(params, True)
        (loss_off, _), g_off = grad(params, False)
        return (loss, terms), g, (loss_off, g_off), jax.value_and_grad(disc_loss)(disc_params)

    (loss, terms), g, (loss_off, g_off), (d_loss, d_grad) = recompute(s0.params, s0.disc_params)
    return {
        'loss': float(loss),
        'loss_adv': float(terms['loss_adv']),
        'grad': g,
        'loss_off': float(loss_off),
        'grad_norm_off': float(optax.global_norm(g_off)),
        'loss_disc': float(d_loss),
        'disc_grad': d_grad,
    }


def test_generator_loss_includes_the_weighted_adversarial_term(adv, hand):
    m = adv['metrics']
    assert hand['loss_adv'] > 1.0  # a real term, not noise
    # The same float32 sums in two programs: measured equal, and 3e-8 relative for the
    # difference of two ~25 losses. rtol 1e-5 is far above either and far below a missing
    # term (the adversarial one is 90% of the loss).
    np.testing.assert_allclose(m['loss_adv'], hand['loss_adv'], rtol=1e-5)
    np.testing.assert_allclose(m['loss'], hand['loss'], rtol=1e-5)
    np.testing.assert_allclose(hand['loss'] - hand['loss_off'], 1.0 * hand['loss_adv'], rtol=1e-5)
    # The generator's gradient is total_loss's with the discriminator, and differs from without.
    # Measured at most 5.6 ulps of the leaf's scale over the floor; 64 is 11x that.
    _assert_grads_close(_sgd_grad(adv), hand['grad'], adv['before'].params, ulps=64)
    grad_norm = float(optax.global_norm(hand['grad']))
    np.testing.assert_allclose(m['grad_norm'], grad_norm, rtol=1e-5)
    assert abs(grad_norm - hand['grad_norm_off']) > 1e-3 * grad_norm
    # The step moved the discriminator, and reported its loss.
    assert {'loss_disc', 'loss_disc_fake', 'loss_disc_real', 'disc_grad_norm'} <= set(m)
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(adv['before'].disc_params), jax.tree.leaves(adv['after'].disc_params)
        )
    ]
    assert all(moved)


def test_discriminator_update_is_one_adamw_step_on_the_lsgan_loss(adv, hand):
    cfg, s0 = adv['task'].cfg, adv['before']
    np.testing.assert_allclose(adv['metrics']['loss_disc'], hand['loss_disc'], rtol=1e-5)
    tx = optax.adamw(
        cfg.optim.lr, weight_decay=cfg.optim.weight_decay
    )  # b1, b2, eps: optax = torch defaults
    updates, _ = tx.update(hand['disc_grad'], tx.init(s0.disc_params), s0.disc_params)
    # One AdamW step of lr 1e-4 on ~0.04 weights: measured 2e-8 apart (a few ulps); 1e-6 is 50x
    # that, and a wrong update (a sign, the bias correction, the lr) moves 1e-5 or more. The decay
    # is not seen here: lr * 1e-3 * |w| is ~4e-9.
    _assert_close(adv['after'].disc_params, optax.apply_updates(s0.disc_params, updates), 1e-6)
    assert int(adv['after'].step) == 1


def test_grad_accum_equals_the_full_batch_with_the_prior_on(adv, body_model_dir, initial):
    full = adv
    accum = _one_step(_config(grad_accum=2), body_model_dir, initial, tx=SGD)
    for k in ('loss', 'loss_adv', 'loss_disc', 'grad_norm', 'disc_grad_norm'):
        np.testing.assert_allclose(accum['metrics'][k], full['metrics'][k], rtol=1e-5, err_msg=k)
    # The scalars differ by the gradients' rounding: measured <= 1.1e-7 relative; 1e-5 is 90x.
    # Adam's first step moves each entry by lr = 1e-4 times the sign of its gradient (m / sqrt(v)
    # = g / |g|), so rounding in the gradient hardly shows (measured 2.2e-8, a few ulps of the
    # ~0.04 weights) and a wrong one flips signs, 2e-4. 1e-5 sits between, 450x the measured.
    _assert_close(accum['after'].disc_params, full['after'].disc_params, 1e-5)
    # Measured at most 18 ulps of the leaf's scale over the floor (see _assert_grads_close); CI's
    # CPU rounds up to ~2.5x more. 256 ulps: 5x that.
    _assert_grads_close(_sgd_grad(accum), _sgd_grad(full), full['before'].params, ulps=256)


def test_off_the_state_and_step_are_as_before(body_model_dir, initial, hand, tmp_path):
    cfg = _config(adversarial=False)
    task, state, sh, step, mesh = _build(cfg, body_model_dir, initial)
    assert type(state) is state_lib.TrainState and not state_lib.has_discriminator(state)
    assert list(state_lib.TrainState.__dataclass_fields__) == [
        'step',
        'params',
        'opt_state',
        'constants',
    ]
    # The checkpoint tree is TrainState's alone: no discriminator entries, not even empty ones.
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(str(tmp_path / 's'), state)
    with open(tmp_path / 's' / '_METADATA') as f:
        top = {ast.literal_eval(k)[0] for k in json.load(f)['tree_metadata']}
    assert top == {'step', 'params', 'opt_state', 'constants'}
    with pytest.raises(ValueError, match='disc_tx is set but the state lacks a discriminator'):
        state_lib.make_train_step(
            task.loss_fn,
            optax.sgd(1.0),
            mesh,
            sh,
            shd.batch_sharding(mesh),
            disc_loss_fn=task.disc_loss_fn,
            disc_tx=optax.sgd(1.0),
        )
    # Same initial pose model as with the prior (its own rng), the loss and gradient without it.
    state, m = step(state, shd.global_batch(_batch(cfg), mesh), RNG)
    assert 'loss_disc' not in m and 'disc_grad_norm' not in m and float(m['loss_adv']) == 0.0
    np.testing.assert_allclose(float(m['loss']), hand['loss_off'], rtol=1e-5)
    np.testing.assert_allclose(float(m['grad_norm']), hand['grad_norm_off'], rtol=1e-5)


# ------------------------------------------------------------------------------ checkpoints


def test_save_and_restore_variables_keep_the_discriminator(adv, tmp_path):
    task, s1 = adv['task'], adv['after']
    variables = {'params': s1.params, **s1.constants, 'discriminator': s1.disc_params}
    checkpoint.save_variables(str(tmp_path / 'with'), variables, {'kind': 'smpl'})
    got, meta = checkpoint.load_variables(str(tmp_path / 'with'))
    assert meta == {'kind': 'smpl'} and set(got) == {'params', 'constants', 'discriminator'}
    _assert_close(got, variables, 0)
    got, _, step = checkpoint.restore_variables(str(tmp_path / 'with'))
    _assert_close(got['discriminator'], s1.disc_params, 0)
    # Without one, the directory holds exactly the two collections, as before.
    checkpoint.save_variables(str(tmp_path / 'without'), {'params': s1.params, **s1.constants})
    assert set(checkpoint.load_variables(str(tmp_path / 'without'))[0]) == {'params', 'constants'}
    with pytest.raises(ValueError, match="'discriminator'"):
        checkpoint.save_variables(str(tmp_path / 'bad'), {**variables, 'optimizer': {}})

    # A training workdir's AdversarialTrainState: restore_variables and to_torch see the discriminator.
    workdir = tmp_path / 'run'
    with ocp.CheckpointManager(
        checkpoint.checkpoint_dir(str(workdir)), item_names=checkpoint.ITEMS
    ) as mgr:
        mgr.save(
            1,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(s1), config=ocp.args.JsonSave(task.cfg.to_dict())
            ),
        )
    got, cfg, step = checkpoint.restore_variables(str(workdir))
    assert step == 1 and cfg.loss.use_adversarial
    _assert_close(got['discriminator'], s1.disc_params, 0)
    exported = to_torch.export_state_dict(got)
    assert sum(k.startswith('discriminator.') for k in exported) == 62  # as HMR 2.0's checkpoint
    np.testing.assert_array_equal(
        exported['discriminator.D_conv1.weight'][:, :, 0, 0], s1.disc_params['D_conv1']['kernel'].T
    )


def test_from_torch_keeps_the_discriminator_for_init_from(adv, body_model_dir, initial, tmp_path):
    task = adv['task']
    mc = task.model_config
    rows = keymap.model_rows(
        'smpl', keymap.vit_dims(mc.vit), discriminator=True, head_size=mc.head_size
    )
    sd = keymap.random_state_dict(rows, seed=5)
    torch.save(
        {'state_dict': collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())},
        tmp_path / 'hmr2.ckpt',
    )
    out = str(tmp_path / 'vars')
    meta = from_torch.main(['--ckpt', str(tmp_path / 'hmr2.ckpt'), '--kind', 'hmr2', '--out', out])
    assert meta['parts'] == ['backbone', 'head', 'discriminator'] and 'left_behind' not in meta
    want = np.ascontiguousarray(sd['discriminator.D_alljoints_fc1.weight'].T)

    logs = []
    _, fresh, sh, _, _ = _build(_config(), body_model_dir, initial)  # init_from leaves it as is
    state = loop.init_from(fresh, sh, out, log=logs.append)
    np.testing.assert_array_equal(state.disc_params['D_alljoints_fc1']['kernel'], want)
    np.testing.assert_array_equal(state.params['backbone']['pos_embed'], sd['backbone.pos_embed'])
    assert any('discriminator loaded' in line for line in logs)

    # The prior off (the same model, without the discriminator part): the checkpoint's
    # discriminator is ignored, and said so; the rest loads.
    logs = []
    fields = list(state_lib.TrainState.__dataclass_fields__)
    off, off_sh = (state_lib.TrainState(**{f: getattr(x, f) for f in fields}) for x in (fresh, sh))
    off = loop.init_from(off, off_sh, out, log=logs.append)
    assert type(off) is state_lib.TrainState
    np.testing.assert_array_equal(off.params['backbone']['pos_embed'], sd['backbone.pos_embed'])
    assert any('not used' in line for line in logs)

    # A checkpoint without one: the run's discriminator keeps its init.
    no_disc = str(tmp_path / 'no_disc')
    variables, _ = checkpoint.load_variables(out)
    del variables['discriminator']
    checkpoint.save_variables(no_disc, variables)
    state = loop.init_from(fresh, sh, no_disc)
    _assert_close(state.disc_params, _host_copy(fresh.disc_params), 0)

    # One that does not fit (here a joint short, as a MANO one would be) is an error naming the keys.
    bad = str(tmp_path / 'bad_disc')
    variables['discriminator'] = {
        k: v for k, v in adv['before'].disc_params.items() if k != 'pose_out_22'
    }
    checkpoint.save_variables(bad, variables)
    with pytest.raises(ValueError, match=r'discriminator does not match.*pose_out_22'):
        loop.init_from(state, sh, bad)
