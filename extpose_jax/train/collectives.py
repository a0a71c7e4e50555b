"""Host-side collectives over processes: every process's dict of numpy arrays, to every process.

    states = allgather_arrays({'total': np.array([3.5]), 'names': np.array(['mpjpe'])})
    # -> [process 0's dict, process 1's dict, ...] on every process; [the dict] with one process

For evaluation accumulators (sums, counts, per-frame rows) whose shapes differ between processes:
each dict is serialised with np.savez (numeric and fixed-width unicode arrays only; object arrays
are refused, nothing is pickled), the byte strings are padded to the longest and gathered with
jax.experimental.multihost_utils.process_allgather. Every process must call it, the same number
of times, in the same order.

`barrier` waits for every process on jax.distributed's coordination service, with a timeout we
choose. Processes reach their first collective at different times (imports, data set-up and
compiles run at each host's own speed), and on CPU that first collective sets up a Gloo context
whose rendezvous gives up after a fixed 30 s; the CI machine, loaded, was once slower than that.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils


def encode(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """A dict of arrays -> the bytes of an .npz file, as a uint8 array."""
    for key, value in arrays.items():
        if np.asarray(value).dtype == object:
            raise TypeError(
                f'collectives: {key!r} is an object array; send numbers or '
                'fixed-width strings (np.array(list_of_str) gives <U...)'
            )
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return np.frombuffer(buf.getvalue(), np.uint8)


def decode(data: np.ndarray) -> dict:
    """encode's bytes -> the dict; allow_pickle=False: a byte string never runs code."""
    with np.load(io.BytesIO(data.tobytes()), allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def allgather_arrays(arrays: Mapping[str, np.ndarray]) -> list[dict]:
    """-> every process's `arrays`, in process order. With one process: no collective at all."""
    if jax.process_count() == 1:
        return [dict(arrays)]
    data = encode(arrays)
    barrier('allgather')  # processes finish their shares at different times
    # int32 on purpose: without jax_enable_x64 an int64 would be narrowed anyway.
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: data.size] = data
    everyone = np.asarray(multihost_utils.process_allgather(padded))  # (processes, longest)
    return [decode(row[:n]) for row, n in zip(everyone, lengths)]


_barriers = itertools.count()


def barrier(name: str, timeout_s: float = 600.0) -> None:
    """Returns once every process has called barrier(name); a no-op with one process."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client has no public name; initialize() fills it

    # A numbered id: every process calls barriers in the same order, and no id is used twice.
    barrier_id = f'extpose:{next(_barriers)}:{name}'
    distributed.global_state.client.wait_at_barrier(barrier_id, int(timeout_s * 1000))


def process_sum(count: int) -> int:
    """The sum of an int over processes (every process calls it); the int itself with one."""
    if jax.process_count() == 1:
        return int(count)
    return int(np.asarray(multihost_utils.process_allgather(np.int32(count))).sum())
