"""The adversarial prior (loss.use_adversarial): the step's two updates against hand-written
ones, gradient accumulation, the prior off, and the discriminator through checkpoints / import.

Tiny ViT, T = 2, batch 2, random arrays (bench/train_step.py's random_batch). Modality dropout
is off so that the model is deterministic and a hand computation sees the step's predictions.
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


def _config(adversarial=True, grad_accum=1):
    cfg = video.get_config('small')
    cfg.data.num_frames, cfg.data.batch_size, cfg.train.grad_accum = T, B, grad_accum
    cfg.model.modality_dropout = 0.0
    cfg.loss.use_adversarial, cfg.loss.adversarial = adversarial, 1.0
    cfg.loss.normalize = 'mean_per_frame'   # as the recomputation below (one batch, no scale)
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


def _build(cfg, body_models, tx=None, disc_tx=None):
    """(task, state, shardings, step, mesh) as loop.train builds them (optimizers overridable)."""
    task = task_lib.Task(cfg, str(body_models))
    mesh = shd.make_mesh({'data': -1})
    tx = tx or optim.make_optimizer(config_lib.optim_config(cfg))
    state, sh = state_lib.create_train_state(task.model, tx, jax.random.key(0), task.example_inputs(B, T), mesh)
    kwargs = {}
    if cfg.loss.use_adversarial:
        disc_tx = disc_tx or optim.make_optimizer(config_lib.disc_optim_config(cfg))
        state, sh = state_lib.add_discriminator(state, sh, task.discriminator, disc_tx, jax.random.key(2),
                                                task.disc_example_inputs(), mesh)
        kwargs = {'disc_loss_fn': task.disc_loss_fn, 'disc_tx': disc_tx}
    step = state_lib.make_train_step(task.loss_fn, tx, mesh, sh, shd.batch_sharding(mesh),
                                     grad_accum=cfg.train.grad_accum, **kwargs)
    return task, state, sh, step, mesh


def _host_copy(tree):
    return jax.tree.map(lambda x: np.array(x, copy=True), tree)


def _one_step(cfg, body_models, **opt):
    """Runs one step; -> dict of the initial state, the stepped state and metrics (host copies)."""
    task, state, _, step, mesh = _build(cfg, body_models, **opt)
    before = _host_copy(state)  # the step donates (may overwrite) its state argument
    state, metrics = step(state, shd.global_batch(_batch(cfg), mesh), RNG)
    return {'task': task, 'before': before, 'after': _host_copy(state),
            'metrics': {k: float(v) for k, v in jax.device_get(metrics).items()}}


def _assert_close(a, b, atol, rtol=0.):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


def _sgd_grad(run):
    """The generator's gradient of a run's step (SGD, lr 1): params before - after."""
    return jax.tree.map(np.subtract, run['before'].params, run['after'].params)


@pytest.fixture(scope='module')
def adv(body_model_dir):
    # The generator by SGD with lr 1: its update is minus the gradient itself, which the tests
    # compare exactly. The discriminator by the run's own AdamW (config.disc_optim_config).
    return _one_step(_config(), body_model_dir, tx=SGD)


@pytest.fixture(scope='module')
def hand(adv):
    """The step recomputed by hand from the initial state: predictions, both losses, gradients."""
    task, s0 = adv['task'], adv['before']
    batch = jax.tree.map(jnp.asarray, _batch(task.cfg))
    variables = {'params': s0.params, **s0.constants}
    disc = lambda r, b: task.discriminator.apply({'params': s0.disc_params}, r, b)  # noqa: E731

    def gen_loss(params, with_disc):
        out = task.apply({**variables, 'params': params}, batch)
        return losses.total_loss(out, batch, task.body_model, task.weights, 'smpl',
                                 discriminator=disc if with_disc else None, normalize='mean_per_frame')

    def disc_loss(disc_params):
        out = jax.lax.stop_gradient(task.predict(variables, batch))
        real = geometry.axis_angle_to_matrix(batch['pose'].reshape(B, T, 24, 3)[:, :, 1:])
        d = lambda r, b: task.discriminator.apply({'params': disc_params}, r, b)  # noqa: E731
        return losses.discriminator_loss(d(out['body_pose'], out['betas']), d(real, batch['betas']),
                                         batch['frame_valid'], 1.0,
                                         real_mask=batch['has_pose'] & batch['has_betas'])[0]

    grad = jax.jit(jax.value_and_grad(gen_loss, has_aux=True), static_argnums=1)
    (loss, terms), g = grad(s0.params, True)
    (loss_off, _), g_off = grad(s0.params, False)
    d_loss, d_grad = jax.jit(jax.value_and_grad(disc_loss))(s0.disc_params)
    return {'loss': float(loss), 'loss_adv': float(terms['loss_adv']), 'grad': g,
            'loss_off': float(loss_off), 'grad_norm_off': float(optax.global_norm(g_off)),
            'loss_disc': float(d_loss), 'disc_grad': d_grad}


def test_generator_loss_includes_the_weighted_adversarial_term(adv, hand):
    m = adv['metrics']
    assert hand['loss_adv'] > 1.0  # a real term, not noise
    np.testing.assert_allclose(m['loss_adv'], hand['loss_adv'], rtol=1e-5)
    np.testing.assert_allclose(m['loss'], hand['loss'], rtol=1e-5)
    np.testing.assert_allclose(hand['loss'] - hand['loss_off'], 1.0 * hand['loss_adv'], rtol=1e-5)
    # The generator's gradient is total_loss's with the discriminator, and differs from without.
    _assert_close(_sgd_grad(adv), hand['grad'], 1e-5)
    grad_norm = float(optax.global_norm(hand['grad']))
    np.testing.assert_allclose(m['grad_norm'], grad_norm, rtol=1e-5)
    assert abs(grad_norm - hand['grad_norm_off']) > 1e-3 * grad_norm
    # The step moved the discriminator, and reported its loss.
    assert {'loss_disc', 'loss_disc_fake', 'loss_disc_real', 'disc_grad_norm'} <= set(m)
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(adv['before'].disc_params),
                                                      jax.tree.leaves(adv['after'].disc_params))]
    assert all(moved)


def test_discriminator_update_is_one_adamw_step_on_the_lsgan_loss(adv, hand):
    cfg, s0 = adv['task'].cfg, adv['before']
    np.testing.assert_allclose(adv['metrics']['loss_disc'], hand['loss_disc'], rtol=1e-5)
    tx = optax.adamw(cfg.optim.lr, weight_decay=cfg.optim.weight_decay)  # b1, b2, eps: optax = torch defaults
    updates, _ = tx.update(hand['disc_grad'], tx.init(s0.disc_params), s0.disc_params)
    _assert_close(adv['after'].disc_params, optax.apply_updates(s0.disc_params, updates), 1e-6)
    assert int(adv['after'].step) == 1


def test_grad_accum_equals_the_full_batch_with_the_prior_on(adv, body_model_dir):
    full = adv
    accum = _one_step(_config(grad_accum=2), body_model_dir, tx=SGD)
    for k in ('loss', 'loss_adv', 'loss_disc', 'grad_norm', 'disc_grad_norm'):
        np.testing.assert_allclose(accum['metrics'][k], full['metrics'][k], rtol=1e-5, err_msg=k)
    _assert_close(accum['after'].disc_params, full['after'].disc_params, 1e-5)
    # Gradient entries reach ~10: float32 summation order allows ~1e-6 absolute there.
    _assert_close(_sgd_grad(accum), _sgd_grad(full), 1e-5, rtol=1e-5)


def test_off_the_state_and_step_are_as_before(body_model_dir, hand, tmp_path):
    cfg = _config(adversarial=False)
    task, state, sh, step, mesh = _build(cfg, body_model_dir)
    assert type(state) is state_lib.TrainState and not state_lib.has_discriminator(state)
    assert list(state_lib.TrainState.__dataclass_fields__) == ['step', 'params', 'opt_state', 'constants']
    # The checkpoint tree is TrainState's alone: no discriminator entries, not even empty ones.
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(str(tmp_path / 's'), state)
    with open(tmp_path / 's' / '_METADATA') as f:
        top = {ast.literal_eval(k)[0] for k in json.load(f)['tree_metadata']}
    assert top == {'step', 'params', 'opt_state', 'constants'}
    with pytest.raises(ValueError, match='disc_tx is set but the state lacks a discriminator'):
        state_lib.make_train_step(task.loss_fn, optax.sgd(1.), mesh, sh, shd.batch_sharding(mesh),
                                  disc_loss_fn=task.disc_loss_fn, disc_tx=optax.sgd(1.))
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
    with ocp.CheckpointManager(checkpoint.checkpoint_dir(str(workdir)), item_names=checkpoint.ITEMS) as mgr:
        mgr.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave(s1),
                                            config=ocp.args.JsonSave(task.cfg.to_dict())))
    got, cfg, step = checkpoint.restore_variables(str(workdir))
    assert step == 1 and cfg.loss.use_adversarial
    _assert_close(got['discriminator'], s1.disc_params, 0)
    exported = to_torch.export_state_dict(got)
    assert sum(k.startswith('discriminator.') for k in exported) == 62  # as HMR 2.0's checkpoint
    np.testing.assert_array_equal(exported['discriminator.D_conv1.weight'][:, :, 0, 0],
                                  s1.disc_params['D_conv1']['kernel'].T)


def test_from_torch_keeps_the_discriminator_for_init_from(adv, body_model_dir, tmp_path):
    task = adv['task']
    rows = keymap.model_rows('smpl', keymap.vit_dims(task.model_config.vit), discriminator=True)
    sd = keymap.random_state_dict(rows, seed=5)
    torch.save({'state_dict': collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())},
               tmp_path / 'hmr2.ckpt')
    out = str(tmp_path / 'vars')
    meta = from_torch.main(['--ckpt', str(tmp_path / 'hmr2.ckpt'), '--kind', 'hmr2', '--out', out])
    assert meta['parts'] == ['backbone', 'head', 'discriminator'] and 'left_behind' not in meta
    want = np.ascontiguousarray(sd['discriminator.D_alljoints_fc1.weight'].T)

    logs = []
    _, fresh, sh, _, _ = _build(_config(), body_model_dir)  # init_from leaves its argument as is
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
    variables['discriminator'] = {k: v for k, v in adv['before'].disc_params.items() if k != 'pose_out_22'}
    checkpoint.save_variables(bad, variables)
    with pytest.raises(ValueError, match=r"discriminator does not match.*pose_out_22"):
        loop.init_from(state, sh, bad)
