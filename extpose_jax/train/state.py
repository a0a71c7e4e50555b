"""TrainState, its sharded creation, and the jitted train step with gradient accumulation.

    mesh = sharding.make_mesh({'data': 2, 'fsdp': -1})
    tx = optim.make_optimizer(optim.OptimConfig(...))
    state, shardings = create_train_state(model, tx, rng, (frames, keypoints), mesh)
    # or abstract, nothing allocated: init, shardings = state_initializer(...);
    # jax.eval_shape(init, rng)
    step = make_train_step(loss_fn, tx, mesh, shardings, sharding.batch_sharding(mesh), grad_accum=2)
    state, metrics = step(state, batch, rng)

loss_fn(variables, batch, rng) -> (scalar loss, dict of scalar aux). `variables` is
{'params': ..., **state.constants}, ready for model.apply; gradients are taken with respect to
variables['params'] only. The loss must be a mean over the batch's examples, so that the mean
over equal micro-batches equals the full-batch loss (what makes grad_accum exact).

Adversarial prior (HMR 2.0 / HaMeR training): a second network, the
discriminator, trained by its own optimizer in the same step.

    state, shardings = add_discriminator(state, shardings, Discriminator('smpl'), disc_tx, rng,
                                         (rotmats, betas), mesh)
    step = make_train_step(loss_fn, tx, mesh, shardings, batch_sh, disc_loss_fn=..., disc_tx=disc_tx)

Then loss_fn also finds variables['discriminator'] = the discriminator's params (a constant
there: the generator's gradient never reaches them) and must return aux['disc_inputs'], any
pytree (e.g. predictions and GT); the step stops its gradient and calls
disc_loss_fn(disc_params, disc_inputs) -> (scalar loss, dict of scalar aux), differentiated
with respect to disc_params only. Both networks see the same pre-update parameters, as in
upstream's generator-then-discriminator order. metrics gain 'loss_disc', 'disc_grad_norm'
and disc_loss_fn's aux; with grad_accum both gradients are averaged over micro-batches.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from extpose_jax.models.discriminator import DISCRIMINATOR
from extpose_jax.train import sharding as shd


class TrainState(flax.struct.PyTreeNode):
    """Plain (unboxed) arrays only, so checkpoints restore into it directly."""

    step: jax.Array
    params: Any
    opt_state: Any
    constants: Any  # every non-'params' collection, e.g. {'constants': {'head': {...}}}


class AdversarialTrainState(TrainState):
    """TrainState + the discriminator's params and its own optimizer state.

    A subclass rather than optional None fields: orbax records a None field as an extra entry,
    which would change the checkpoint tree of runs without the prior and stop their older
    checkpoints from restoring. Here a run without it keeps exactly TrainState's tree.
    """

    disc_params: Any
    disc_opt_state: Any


def has_discriminator(state) -> bool:
    return isinstance(state, AdversarialTrainState)


def _as_shape(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def _opt_shardings(opt_shapes, params, param_sh, repl):
    """Optimizer state mirrors the params (Adam mu / nu): same sharding; counters replicated.

    A state leaf is matched to the param whose dict-key path is a suffix of its own and whose
    shape is equal. (optax.tree_map_params cannot be used: multi_transform's MaskedNode leaves
    break its tree_map against the full sharding tree.)
    """
    table = {}
    for (path, p), s in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(param_sh)):
        table[tuple(k.key for k in path)] = (p.shape, s)

    def one(path, x):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        for i in range(len(keys)):
            hit = table.get(keys[i:])
            if hit is not None and hit[0] == x.shape:
                return hit[1]
        return repl

    return jax.tree_util.tree_map_with_path(one, opt_shapes)


def state_initializer(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    init_args: Sequence[Any],
    mesh,
    **init_kwargs,
):
    """-> (init, shardings): init(rng) is jitted straight onto the mesh and returns a TrainState
    of sharded arrays; `shardings` is a TrainState of NamedShardings.

    jax.eval_shape(init, rng) is the abstract state (ShapeDtypeStructs with their shardings):
    what the preflight lowers the step with, nothing allocated. init_args are example inputs
    for model.init (arrays or ShapeDtypeStructs, any batch size); only their shapes are used.
    """
    shapes = [_as_shape(a) for a in init_args]

    def init_boxed(rng):
        variables = model.init(rng, *[jnp.zeros(s.shape, s.dtype) for s in shapes], **init_kwargs)
        params = variables['params']
        constants = {k: v for k, v in variables.items() if k != 'params'}
        return params, constants

    # Shapes and logical names only; no FLOPs. Traced without activation constraints (whose
    # batch may not divide the mesh here): only the outputs' sharding matters.
    boxed_params, boxed_constants = jax.eval_shape(init_boxed, rng)
    param_sh = shd.param_shardings(boxed_params, mesh)
    plain_params = nn.unbox(boxed_params)
    opt_shapes = jax.eval_shape(tx.init, plain_params)
    repl = shd.replicated(mesh)
    opt_sh = _opt_shardings(opt_shapes, plain_params, param_sh, repl)
    shardings = TrainState(
        step=repl,
        params=param_sh,
        opt_state=opt_sh,
        constants=jax.tree.map(lambda _: repl, nn.unbox(boxed_constants)),
    )

    def init(rng):
        params, constants = nn.unbox(init_boxed(rng))  # unbox once, here
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            constants=constants,
        )

    return jax.jit(init, in_shardings=repl, out_shardings=shardings), shardings


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    init_args: Sequence[Any],
    mesh,
    **init_kwargs,
):
    """Initialises straight into the mesh: (TrainState of sharded arrays, TrainState of shardings)."""
    init, shardings = state_initializer(model, tx, rng, init_args, mesh, **init_kwargs)
    return init(rng), shardings


def add_discriminator(
    state: TrainState,
    shardings: TrainState,
    disc: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    init_args: Sequence[Any],
    mesh,
):
    """-> (AdversarialTrainState, its shardings): `state` plus a freshly initialised `disc`.

    init_args: example inputs of disc.init (arrays or ShapeDtypeStructs). The discriminator is
    small (~1.8M params for SMPL), so it and its optimizer state are replicated on every device.
    An abstract `state` (ShapeDtypeStructs, the preflight's) gets an abstract discriminator.
    """
    if has_discriminator(state):
        raise ValueError('add_discriminator: the state already has a discriminator')
    shapes = [_as_shape(a) for a in init_args]
    repl = shd.replicated(mesh)

    def init(rng):
        params = nn.unbox(disc.init(rng, *[jnp.zeros(s.shape, s.dtype) for s in shapes]))['params']
        return params, tx.init(params)

    out_sh = jax.tree.map(lambda _: repl, jax.eval_shape(init, rng))
    jitted = jax.jit(init, in_shardings=repl, out_shardings=out_sh)
    abstract = isinstance(state.params, jax.ShapeDtypeStruct) or any(
        isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state.params)
    )
    params, opt_state = jax.eval_shape(jitted, rng) if abstract else jitted(rng)
    fields = {f: getattr(state, f) for f in TrainState.__dataclass_fields__}
    sh_fields = {f: getattr(shardings, f) for f in TrainState.__dataclass_fields__}
    return (
        AdversarialTrainState(**fields, disc_params=params, disc_opt_state=opt_state),
        AdversarialTrainState(**sh_fields, disc_params=out_sh[0], disc_opt_state=out_sh[1]),
    )


def _split_micro(batch, n: int):
    """(B, ...) -> (n, B/n, ...), micro-batch i = rows i, i+n, i+2n, ...

    Strided rather than contiguous: the batch is sharded contiguously over data x fsdp, so a
    strided split keeps every micro-batch spread over all devices (a contiguous one would put
    micro-batch 0 on the first devices only and force a reshuffle).
    """

    def one(x):
        if x.shape[0] % n:
            raise ValueError(
                f'train step: batch dimension {x.shape[0]} is not divisible by grad_accum={n}'
            )
        return jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 1, 0)

    return jax.tree.map(one, batch)


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    mesh,
    state_shardings,
    batch_sharding,
    grad_accum: int = 1,
    constrain_activations: bool = True,
    *,
    skip_nonfinite: bool = False,
    disc_loss_fn: Callable | None = None,
    disc_tx: optax.GradientTransformation | None = None,
):
    """-> step(state, batch, rng) -> (state, metrics); the state argument is donated.

    metrics: 'loss', 'grad_norm' (global norm of the full-batch gradient, before any clipping or
    masking) and the loss's aux, each averaged over micro-batches, and 'finite': whether the
    loss and every gradient were finite. skip_nonfinite: a non-finite step leaves params and
    optimizer state as they were (the step counter still advances, like optax.apply_if_finite
    but for the discriminator too); otherwise the caller decides (the loop stops the run). The step's rng is folded with
    state.step and the micro-batch index, so every step and micro-batch draws fresh noise.
    disc_loss_fn / disc_tx (both or neither): the adversarial prior, see the module docstring;
    the state must then come from add_discriminator. constrain_activations: trace under
    sharding.activation_sharding, so that activations follow the rules table (batch over
    data x fsdp, heads / MLP over tensor) rather than whatever XLA's propagation picks.
    step.lower(state, batch, rng) lowers under the same context (abstract inputs allowed).
    """
    if grad_accum < 1:
        raise ValueError(f'make_train_step: grad_accum must be >= 1, got {grad_accum}')
    if (disc_loss_fn is None) != (disc_tx is None):
        raise ValueError('make_train_step: pass both disc_loss_fn and disc_tx, or neither')
    adversarial = disc_tx is not None
    if adversarial != has_discriminator(state_shardings):
        raise ValueError(
            f'make_train_step: disc_tx is {"set" if adversarial else "None"} but the '
            f'state {"lacks" if adversarial else "has"} a discriminator '
            '(build it with add_discriminator)'
        )
    repl = shd.replicated(mesh)
    micro_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(shd.BATCH_AXES))

    def grads_of(state, batch, rng):
        """-> (loss, aux, grads); grads is (generator, discriminator) with the prior on."""
        extra = {DISCRIMINATOR: state.disc_params} if adversarial else {}

        def f(p):
            return loss_fn({'params': p, **state.constants, **extra}, batch, rng)

        (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(state.params)
        if not adversarial:
            return loss, aux, grads
        aux = dict(aux)
        if 'disc_inputs' not in aux:
            raise KeyError(
                "make_train_step: with a discriminator, loss_fn's aux must hold "
                f"'disc_inputs'; it has {sorted(aux)}"
            )
        # The discriminator learns to tell predictions from real samples; it must not move them.
        disc_inputs = jax.lax.stop_gradient(aux.pop('disc_inputs'))
        (d_loss, d_aux), d_grads = jax.value_and_grad(disc_loss_fn, has_aux=True)(
            state.disc_params, disc_inputs
        )
        return loss, {**aux, **d_aux, 'loss_disc': d_loss}, (grads, d_grads)

    def step(state: TrainState, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        if grad_accum == 1:
            loss, aux, grads = grads_of(state, batch, rng)
        else:
            micro = _split_micro(batch, grad_accum)

            def body(carry, xs):
                i, mb = xs
                mb = jax.lax.with_sharding_constraint(mb, micro_sharding)
                out = grads_of(state, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, out), None

            zero = jax.eval_shape(grads_of, state, jax.tree.map(lambda x: x[0], micro), rng)
            zero = jax.tree.map(
                lambda s: jnp.zeros(
                    s.shape, jnp.float32 if jnp.issubdtype(s.dtype, jnp.floating) else s.dtype
                ),
                zero,
            )
            (loss, aux, grads), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
            loss, aux, grads = jax.tree.map(lambda x: x / grad_accum, (loss, aux, grads))
            grads = jax.tree.map(
                lambda g, p: g.astype(p.dtype),
                grads,
                (state.params, state.disc_params) if adversarial else state.params,
            )
        if adversarial:
            grads, d_grads = grads
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads), **aux}
        new = dict(params=params, opt_state=opt_state)
        if adversarial:
            d_updates, new['disc_opt_state'] = disc_tx.update(
                d_grads, state.disc_opt_state, state.disc_params
            )
            new['disc_params'] = optax.apply_updates(state.disc_params, d_updates)
            metrics['disc_grad_norm'] = optax.global_norm(d_grads)
        # A global norm is finite only if every gradient entry is: one scalar test per model.
        finite = jnp.isfinite(loss) & jnp.isfinite(metrics['grad_norm'])
        if adversarial:
            finite &= jnp.isfinite(metrics['disc_grad_norm'])
        metrics['finite'] = finite
        if skip_nonfinite:
            new = {
                k: jax.tree.map(lambda n, o: jnp.where(finite, n, o), v, getattr(state, k))
                for k, v in new.items()
            }
        return state.replace(step=state.step + 1, **new), metrics

    jitted = jax.jit(
        step,
        in_shardings=(state_shardings, batch_sharding, repl),
        out_shardings=(state_shardings, repl),
        donate_argnums=0,
    )

    trace_context = (
        shd.activation_sharding if constrain_activations else (lambda _: contextlib.nullcontext())
    )

    def run(state, batch, rng):
        # The rules must be active while the step is traced (its first call), or the model's
        # activation constraints do nothing; later calls hit the compiled step.
        with trace_context(mesh):
            return jitted(state, batch, rng)

    def lower(state, batch, rng):
        """jitted.lower under the same constraints (preflight: abstract arguments are fine)."""
        with trace_context(mesh):
            return jitted.lower(state, batch, rng)

    run.jitted = jitted
    run.lower = lower
    return run
