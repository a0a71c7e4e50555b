"""What one device of a run can hold and compute: memory limit and peak FLOP/s.

    info = DeviceInfo.detect(jax.devices(), dtype='bfloat16')     # this machine
    info = DeviceInfo.target('h100', dtype='bfloat16')            # what-if, for the preflight tables
    info.memory_bytes, info.peak_flops, info.describe()

Memory: an accelerator's allocator limit (`memory_stats()['bytes_limit']`, which already
reflects XLA_PYTHON_CLIENT_MEM_FRACTION: JAX preallocates 75% of a GPU by default), else the
chip's nominal HBM from the table below. On CPU, where memory_stats() is None, the host RAM
available (psutil, capped by a cgroup v2/v1 limit) shared by the process's CPU devices.

Peak FLOP/s: the table's dense bf16 figure (fp32 matmuls: half on GPUs, which use TF32 under
JAX's default precision; the same on TPUs, whose default fp32 matmul is one bf16 pass). On CPU
nothing is nominal: a short matmul in the run's dtype is timed (about 0.3 s) and its rate shared
by the CPU devices, which all run on the same cores.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

GIB = 2**30
# name: (substrings of jax's device_kind, nominal memory in bytes, dense bf16 TFLOP/s, 'gpu'|'tpu')
CHIPS = {
    'h100': (('H100',), 80 * GIB, 989.0, 'gpu'),
    'h200': (('H200',), 141 * 10**9, 989.0, 'gpu'),
    'a100': (('A100',), 80 * GIB, 312.0, 'gpu'),
    'v4': (('TPU v4',), 32 * GIB, 275.0, 'tpu'),
    'v5e': (('TPU v5 lite', 'TPU v5e'), 16 * GIB, 197.0, 'tpu'),
    'v5p': (('TPU v5p', 'TPU v5'), 95 * GIB, 459.0, 'tpu'),
    'v6e': (('TPU v6 lite', 'TPU v6e'), 32 * GIB, 918.0, 'tpu'),
}
# Utilisation assumed for time estimates: a well-fed large ViT step on an accelerator; on a CPU
# a fraction of the timed matmul rate (attention, layer norms and the loss run slower).
ACCELERATOR_MFU = 0.4
CPU_EFFICIENCY = 0.5


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    name: str  # 'cpu', 'h100', ... or jax's device_kind when not in the table
    platform: str  # 'cpu' | 'gpu' | 'tpu'
    memory_bytes: float | None
    memory_source: str  # where memory_bytes came from
    peak_flops: float | None  # per device, in the run's dtype
    peak_source: str
    efficiency: float  # fraction of peak_flops assumed for time estimates

    @classmethod
    def detect(cls, devices, dtype: str = 'float32') -> DeviceInfo:
        dev = devices[0]
        local = max(1, sum(d.process_index == dev.process_index for d in devices))
        if dev.platform == 'cpu':
            memory, source = host_memory_bytes()
            rate = cpu_matmul_flops(dtype)
            return cls(
                'cpu',
                'cpu',
                memory / local,
                f'{source} / {local} CPU devices',
                rate / local,
                f'timed {dtype} matmul / {local} CPU devices',
                CPU_EFFICIENCY,
            )
        chip = _chip_of(dev.device_kind)
        stats = _memory_stats(dev)
        if stats and stats.get('bytes_limit'):
            memory, source = float(stats['bytes_limit']), 'memory_stats bytes_limit'
        elif chip is not None:
            memory, source = float(CHIPS[chip][1]), 'nominal HBM'
        else:
            memory, source = None, 'unknown'
        peak = _peak(chip, dtype) if chip else None
        return cls(
            chip or dev.device_kind,
            dev.platform,
            memory,
            source,
            peak,
            'nominal dense' if peak else 'unknown',
            ACCELERATOR_MFU,
        )

    @classmethod
    def target(cls, name: str, dtype: str = 'bfloat16') -> DeviceInfo:
        """A chip of the table, whatever this machine is (what-if tables compiled on CPU)."""
        if name not in CHIPS:
            raise ValueError(f'unknown device {name!r}; known: {", ".join(CHIPS)}')
        _, memory, _, platform = CHIPS[name]
        return cls(
            name,
            platform,
            float(memory),
            'nominal HBM',
            _peak(name, dtype),
            'nominal dense',
            ACCELERATOR_MFU,
        )

    def with_memory(self, memory_bytes: float, source: str) -> DeviceInfo:
        return dataclasses.replace(self, memory_bytes=float(memory_bytes), memory_source=source)

    def describe(self) -> str:
        mem = (
            'memory unknown'
            if self.memory_bytes is None
            else f'{self.memory_bytes / GIB:.1f} GiB ({self.memory_source})'
        )
        peak = (
            'peak unknown'
            if self.peak_flops is None
            else f'{self.peak_flops / 1e12:.3g} TFLOP/s ({self.peak_source})'
        )
        return f'{self.name}: {mem}, {peak}'


def _chip_of(device_kind: str) -> str | None:
    for name, (patterns, *_) in CHIPS.items():
        if any(p.lower() in device_kind.lower() for p in patterns):
            return name
    return None


def _peak(chip: str, dtype: str) -> float:
    _, _, bf16, platform = CHIPS[chip]
    factor = 0.5 if (dtype == 'float32' and platform == 'gpu') else 1.0
    return bf16 * 1e12 * factor


def _memory_stats(dev) -> dict | None:
    try:
        return dev.memory_stats()
    except Exception:  # noqa: BLE001 -- "may not be implemented on all platforms"
        return None


def host_memory_bytes() -> tuple[float, str]:
    """(bytes this process can use, where the figure came from): psutil's available RAM,
    capped by the container's cgroup limit when one is set."""
    import psutil

    available = float(psutil.virtual_memory().available)
    for path in ('/sys/fs/cgroup/memory.max', '/sys/fs/cgroup/memory/memory.limit_in_bytes'):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < available:
            return float(int(text)), f'cgroup limit {os.path.basename(path)}'
    return available, 'available host RAM'


_CPU_RATE: dict = {}


def cpu_matmul_flops(dtype: str, size: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a jitted (size x size) matmul in `dtype` on the CPU, cached per process."""
    if dtype in _CPU_RATE:
        return _CPU_RATE[dtype]
    cpu = jax.devices('cpu')[0]
    a = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), dtype), cpu)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()  # compile
    n, start = 0, time.perf_counter()
    while True:
        f(a).block_until_ready()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            break
    _CPU_RATE[dtype] = 2 * size**3 * n / elapsed
    return _CPU_RATE[dtype]
