"""Mesh, the one logical-axis rules table, and the shardings derived from it.

    mesh = make_mesh({'data': 2, 'fsdp': -1})          # -1: whatever devices are left
    with activation_sharding(mesh):
        ...                                              # trace model code: activations constrained
    shardings = param_shardings(boxed_variables, mesh)  # from jax.eval_shape(model.init, ...)
    batch = global_batch(local_numpy_dict, mesh)

Meshes always have the three axes ('data', 'fsdp', 'tensor') (size 1 where not asked for) so
that RULES never names a missing axis, and are built with AxisType.Auto because linen's
logical constraints assert under Explicit axes (init then fails with an AssertionError).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from extpose_jax.models import logical

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')  # the batch is split over every non-tensor device

# The one rules table: logical names used by models/vit.py and models/heads.py -> mesh axes.
# fsdp shards the model width (the dimension every large matrix has); tensor shards heads and
# the MLP hidden width (Megatron-style pairs: fc1 out / fc2 in, qkv heads / proj in). The fused
# 'qkv' axis is left whole: its contiguous shards would not line up with heads (vit.py).
# Activations: 'batch' over data x fsdp; a mesh axis is used at most once per array, so an
# activation's 'embed' falls back to unsharded when 'batch' already took fsdp.
RULES = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('context', 'fsdp'),  # head cross-attention input = backbone width
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('qkv', None),
    ('kv', None),  # head_dim: small, and attention kernels want it whole
    ('seq', None),
    ('query', None),
    ('token_in', None),
    ('pose_6d', None),
    ('betas', None),
    ('cam', None),
)
_RULES = dict(RULES)


def make_mesh(
    shape: Mapping[str, int] | Sequence[tuple[str, int]], devices: Sequence[Any] | None = None
):
    """{'data': 2, 'fsdp': -1} or (('data', 2), ('fsdp', 4)) -> Mesh over ('data', 'fsdp', 'tensor').

    Missing axes get size 1; at most one axis may be -1 (the devices left). Errors name the field.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(shape, len(devices))
    dims = tuple(sizes[a] for a in AXES)
    return jax.make_mesh(dims, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)


def mesh_sizes(shape: Mapping[str, int] | Sequence[tuple[str, int]], n: int) -> dict:
    """The sizes make_mesh would give over n devices: {'data': .., 'fsdp': .., 'tensor': ..}."""
    items = list(shape.items()) if isinstance(shape, Mapping) else [tuple(x) for x in shape]
    sizes = {}
    for name, size in items:
        if name not in AXES:
            raise ValueError(f'make_mesh: unknown axis {name!r}; allowed: {AXES}')
        if name in sizes:
            raise ValueError(f'make_mesh: axis {name!r} given twice')
        if not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
            raise ValueError(f'make_mesh: {name}={size!r}; use a positive int or -1 (the rest)')
        sizes[name] = int(size)
    rest = [n for n, s in sizes.items() if s == -1]
    if len(rest) > 1:
        raise ValueError(f'make_mesh: only one axis may be -1, got {rest}')
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if n % fixed:
        bad = ', '.join(f'{k}={v}' for k, v in sizes.items() if v != -1 and n % v)
        raise ValueError(
            f'make_mesh: {bad or sizes} does not divide the {n} devices '
            f'(product of fixed sizes {fixed})'
        )
    if rest:
        sizes[rest[0]] = n // fixed
    elif fixed != n:
        raise ValueError(
            f'make_mesh: {sizes} uses {fixed} devices but {n} are present; '
            f'set one axis to -1 or change the sizes'
        )
    return {a: sizes.get(a, 1) for a in AXES}


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh) -> P:
    """Logical names of one array -> PartitionSpec, dropping what would not divide evenly.

    Each mesh axis is used once (first dimension wins) and a dimension keeps only the mesh axes
    whose product divides it: jit refuses uneven shardings, and a tiny axis (cam = 3) is not
    worth sharding anyway.
    """
    used, spec = set(), []
    for name, dim in zip(names, shape):
        if name is not None and name not in _RULES:
            raise ValueError(
                f'sharding: logical axis {name!r} is not in RULES; add it to train/sharding.py'
            )
        target = _RULES.get(name) if name is not None else None
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        keep, size = [], 1
        for a in axes:
            if a in used or dim % (size * mesh.shape[a]):
                continue
            keep.append(a)
            size *= mesh.shape[a]
        used.update(keep)
        spec.append(None if not keep else keep[0] if len(keep) == 1 else tuple(keep))
    return P(*spec)


def activation_sharding(mesh):
    """Context in which the models' logical.constrain calls constrain activations by RULES.

    Enter it around tracing (the first call of a jitted step, or lower()): the constraints are
    then part of the compiled step. Dimensions a mesh axis does not divide stay unsplit.
    """
    if all(mesh.shape[a] == 1 for a in AXES):
        return contextlib.nullcontext()  # one device: nothing to constrain
    return logical.active(mesh, logical_to_spec)


def _is_box(x):
    return isinstance(x, nn.LogicallyPartitioned)


def param_shardings(boxed_tree, mesh):
    """A tree with LogicallyPartitioned leaves (eval_shape'd init) -> plain NamedShardings.

    Leaves without logical names (e.g. the 'constants' buffers, counters) are replicated.
    """

    def one(x):
        if _is_box(x):
            return NamedSharding(mesh, logical_to_spec(x.names, x.value.shape, mesh))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, boxed_tree, is_leaf=_is_box)


def batch_sharding(mesh) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp, everything else replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local_batch: Mapping[str, Any], mesh):
    """This process's rows (a dict of numpy arrays) -> global jax.Arrays sharded over the batch.

    With N processes the global batch is N x the local one; the local
    batch must split evenly over this process's share of the data x fsdp devices.
    """
    sharding = batch_sharding(mesh)
    shards = mesh.shape['data'] * mesh.shape['fsdp'] // jax.process_count()

    def one(x):
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[0] % max(shards, 1):
            raise ValueError(
                f'global_batch: local batch dimension {x.shape[:1]} must divide over '
                f'{shards} local data x fsdp shards'
            )
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(one, dict(local_batch))
