"""Activation sharding constraints by logical axis name, active only while a step is traced.

    x = logical.constrain(x, ('batch', 'seq', 'embed'))   # in model code: a no-op by default
    with sharding.activation_sharding(mesh):              # train/: the mesh + the one rules table
        jax.jit(step).lower(...)                          # the constraints are in the HLO

Model code names the axes; train/sharding.py owns the rules that map names to mesh axes and
installs them here (`active`) for the duration of a trace. Outside that context (tests, the
PyTorch comparisons, single-device predict) `constrain` returns its input unchanged.

Why not flax's `nn.with_logical_constraint` under `nn.logical_axis_rules`: with flax's rules
active, every boxed parameter that flax unboxes is constrained too, including the flat kernel
inside `nn.DenseGeneral`'s apply-time shape check, which fails for the heads' multi-dimensional
kernels (a rank-4 spec on a rank-2 array). And flax maps names without looking at the shape,
where a mesh axis that does not divide a dimension (3 heads over tensor = 2) must be dropped.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import jax
from jax.sharding import NamedSharding

# (mesh, names -> shape -> PartitionSpec) while a trace is being sharded; None otherwise.
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar(
    'extpose_activation_sharding', default=None
)


@contextlib.contextmanager
def active(mesh, to_spec: Callable[[Sequence[str | None], Sequence[int], object], object]):
    """Turns `constrain` on: to_spec(names, shape, mesh) -> PartitionSpec (train/sharding.py)."""
    token = _ACTIVE.set((mesh, to_spec))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, names: Sequence[str | None]):
    """with_sharding_constraint(x, the rules' spec for `names`) inside `active`, else x."""
    current = _ACTIVE.get()
    if current is None:
        return x
    if len(names) != x.ndim:
        raise ValueError(
            f'constrain: {len(names)} axis names {tuple(names)} for an array of shape {x.shape}'
        )
    mesh, to_spec = current
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, to_spec(names, x.shape, mesh)))
