"""Model calls for the model tests: one jitted program per model (and method).

Op by op, a model's first call compiles every primitive at its shapes, which measured 1.5-4x
slower than compiling the whole model once (docs/testing.md). Flax modules hash by their
config, so equal models share one jit.
"""

import functools

import jax


@functools.cache
def _jitted_apply(model, method=None):
    return jax.jit(functools.partial(model.apply, method=method) if method else model.apply)


def apply(model, variables, frames, kp, method=None, **kw):
    return _jitted_apply(model, method)(variables, frames, kp, **kw)
