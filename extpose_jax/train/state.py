"""TrainState, its sharded creation, and the jitted train step with gradient accumulation.

    mesh = sharding.make_mesh({'data': 2, 'fsdp': -1})
    tx = optim.make_optimizer(optim.OptimConfig(...))
    state, shardings = create_train_state(model, tx, rng, (frames, keypoints), mesh)
    step = make_train_step(loss_fn, tx, mesh, shardings, sharding.batch_sharding(mesh), grad_accum=2)
    state, metrics = step(state, batch, rng)

loss_fn(variables, batch, rng) -> (scalar loss, dict of scalar aux). `variables` is
{'params': ..., **state.constants}, ready for model.apply; gradients are taken with respect to
variables['params'] only. The loss must be a mean over the batch's examples, so that the mean
over equal micro-batches equals the full-batch loss (what makes grad_accum exact).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from extpose_jax.train import sharding as shd


class TrainState(flax.struct.PyTreeNode):
    """Plain (unboxed) arrays only, so checkpoints restore into it directly."""
    step: jax.Array
    params: Any
    opt_state: Any
    constants: Any   # every non-'params' collection, e.g. {'constants': {'head': {...}}}


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


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                       init_args: Sequence[Any], mesh, **init_kwargs):
    """Initialises straight into the mesh: (TrainState of sharded arrays, TrainState of shardings).

    init_args are example inputs for model.init (arrays or ShapeDtypeStructs, any batch size);
    only their shapes are used, zeros of those shapes are made inside the jitted init.
    """
    shapes = [_as_shape(a) for a in init_args]

    def init_boxed(rng):
        variables = model.init(rng, *[jnp.zeros(s.shape, s.dtype) for s in shapes], **init_kwargs)
        params = variables['params']
        constants = {k: v for k, v in variables.items() if k != 'params'}
        return params, constants

    # Shapes and logical names only; no FLOPs. Traced without a mesh so activation constraints
    # (whose batch may not divide the mesh here) are no-ops: only the outputs' sharding matters.
    boxed_params, boxed_constants = jax.eval_shape(init_boxed, rng)
    param_sh = shd.param_shardings(boxed_params, mesh)
    plain_params = nn.unbox(boxed_params)
    opt_shapes = jax.eval_shape(tx.init, plain_params)
    repl = shd.replicated(mesh)
    opt_sh = _opt_shardings(opt_shapes, plain_params, param_sh, repl)
    shardings = TrainState(step=repl, params=param_sh, opt_state=opt_sh,
                           constants=jax.tree.map(lambda _: repl, nn.unbox(boxed_constants)))

    def init(rng):
        params, constants = nn.unbox(init_boxed(rng))  # unbox once, here
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                          constants=constants)

    state = jax.jit(init, in_shardings=repl, out_shardings=shardings)(rng)
    return state, shardings


def _split_micro(batch, n: int):
    """(B, ...) -> (n, B/n, ...), micro-batch i = rows i, i+n, i+2n, ...

    Strided rather than contiguous: the batch is sharded contiguously over data x fsdp, so a
    strided split keeps every micro-batch spread over all devices (a contiguous one would put
    micro-batch 0 on the first devices only and force a reshuffle).
    """
    def one(x):
        if x.shape[0] % n:
            raise ValueError(f'train step: batch dimension {x.shape[0]} is not divisible by grad_accum={n}')
        return jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 1, 0)
    return jax.tree.map(one, batch)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, mesh, state_shardings,
                    batch_sharding, grad_accum: int = 1, constrain_activations: bool = False):
    """-> step(state, batch, rng) -> (state, metrics); the state argument is donated.

    metrics: 'loss', 'grad_norm' (global norm of the full-batch gradient, before any clipping or
    masking) and the loss's aux, each averaged over micro-batches. The step's rng is folded with
    state.step and the micro-batch index, so every step and micro-batch draws fresh noise.
    """
    if grad_accum < 1:
        raise ValueError(f'make_train_step: grad_accum must be >= 1, got {grad_accum}')
    repl = shd.replicated(mesh)
    micro_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(shd.BATCH_AXES))

    def grads_of(params, constants, batch, rng):
        def f(p):
            return loss_fn({'params': p, **constants}, batch, rng)
        (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
        return loss, aux, grads

    def step(state: TrainState, batch, rng):
        rng = jax.random.fold_in(rng, state.step)
        if grad_accum == 1:
            loss, aux, grads = grads_of(state.params, state.constants, batch, rng)
        else:
            micro = _split_micro(batch, grad_accum)

            def body(carry, xs):
                i, mb = xs
                mb = jax.lax.with_sharding_constraint(mb, micro_sharding)
                loss, aux, grads = grads_of(state.params, state.constants, mb, jax.random.fold_in(rng, i))
                return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

            zero = jax.eval_shape(grads_of, state.params, state.constants,
                                  jax.tree.map(lambda x: x[0], micro), rng)
            zero = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32 if jnp.issubdtype(s.dtype, jnp.floating)
                                                     else s.dtype), zero)
            (loss, aux, grads), _ = jax.lax.scan(body, zero, (jnp.arange(grad_accum), micro))
            loss, aux, grads = jax.tree.map(lambda x: x / grad_accum, (loss, aux, grads))
            grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads), **aux}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    jitted = jax.jit(step, in_shardings=(state_shardings, batch_sharding, repl),
                     out_shardings=(state_shardings, repl), donate_argnums=0)

    def run(state, batch, rng):
        # When constraining, the mesh and the rules must be active while tracing, or the model's
        # activation constraints silently do nothing (spec/jax_stack.md §9.3).
        if not constrain_activations:
            return jitted(state, batch, rng)
        with jax.set_mesh(mesh), nn.logical_axis_rules(shd.RULES):
            return jitted(state, batch, rng)

    run.jitted = jitted
    return run
