"""Preflight: does a config's step fit these devices, and how long will the run take? Before data.

    report = check(cfg, label='configs/video.py')   # raises Refusal: str(e) is one line
    print(report.table())
    cfg = report.config                             # grad_accum / eval batch resolved

    python -m extpose_jax.train.preflight --config=configs/video.py [--devices=8]
        [--target=h100|v5p|...] [--compile=always|auto|never] [--json=out.jsonl]

Order: (1) the mesh and the batch split; (2) the analytic estimate (estimate.py) for each
gradient accumulation that keeps the micro-batch split evenly over data x fsdp, fewest
micro-batches first: far over the device's memory -> the next, clearly under -> taken, close
-> compiled; (3) the compiled figures: the train step is lowered from abstract, sharded inputs
(nothing allocated, `setup.TrainSetup`, the same program the loop runs) and its per-device
memory read from XLA (arguments + outputs - donated aliases + temporaries); (4) FLOPs per step
and the step and run time they imply at the device's peak; a run longer than
preflight.max_run_hours is refused unless forced. A refusal names the smallest change that fits
(from the analytic estimate, so it is instant even for ViT-H).

Caveats: compiled on CPU (the what-if tables, --target) the buffer sizes are XLA:CPU's, whose
fusion and scheduling differ from GPU/TPU; XLA's cost analysis counts a loop body once (the
blockwise attention scan, gradient accumulation), so the analytic FLOPs are the ones used.
"""

from __future__ import annotations

import os
import sys

if __name__ == '__main__':  # simulated devices must be set before jax is imported
    for _arg in sys.argv[1:]:
        if _arg.startswith('--devices='):
            os.environ['XLA_FLAGS'] = (
                os.environ.get('XLA_FLAGS', '')
                + f' --xla_force_host_platform_device_count={_arg.split("=", 1)[1]}'
            )
            os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

from extpose_jax import body_models  # noqa: E402
from extpose_jax.train import config as config_lib  # noqa: E402
from extpose_jax.train import devices as devices_lib  # noqa: E402
from extpose_jax.train import estimate  # noqa: E402
from extpose_jax.train import sharding as shd  # noqa: E402

GIB = devices_lib.GIB
USABLE = 0.92  # of a device's memory: headroom for the runtime, fragmentation, collectives
FAR, NEAR = 1.6, 0.5  # analytic / usable above FAR: over without compiling; below NEAR: fits


class Refusal(Exception):
    """The config cannot run well on these devices; str() is the one line for the user."""


@dataclasses.dataclass
class Report:
    label: str
    config: object  # the resolved config (grad_accum, eval.batch_size set)
    device: devices_lib.DeviceInfo
    num_devices: int
    processes: int
    mesh: dict
    params: int  # parameter count
    analytic: dict  # per-device bytes by part (estimate.memory)
    compiled: dict | None  # per-device bytes from XLA, when compiled
    flops: dict  # estimate.flops (global per step)
    xla_flops: float | None  # compiled cost analysis, per device
    step_seconds: float | None
    run_hours: float | None
    eval_bytes: float | None = None  # analytic, per device, while evaluating
    eval_compiled: dict | None = None  # compiled_eval_memory
    analytic_host: dict | None = None  # this machine's memory model, when compiled for a target
    compile_seconds: float | None = None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def usable_bytes(self):
        m = self.device.memory_bytes
        return None if m is None else m * USABLE

    @property
    def grad_accum(self) -> int:
        return self.config.train.grad_accum

    def peak_bytes(self) -> float:
        """The deciding per-device figure: compiled when compiled, else analytic."""
        return (self.compiled or self.analytic)['total']

    def table(self) -> str:
        c, a, comp = self.config, self.analytic, self.compiled
        b = c.data.batch_size
        shards = self.mesh['data'] * self.mesh['fsdp']
        gb = lambda x: f'{x / GIB:8.2f} GiB' if x is not None else ''  # noqa: E731
        xla = lambda name, key: f'   {name:<12} {gb(comp[key])}' if comp else ''  # noqa: E731
        rows = [
            f'preflight  {self.label}: {c.model.arch} ViT-{c.model.size}, T={c.data.num_frames}, '
            f'{self.params / 1e6:.1f}M params, {c.model.dtype}, remat={c.model.remat}, '
            f'attention={c.model.attention}',
            f'devices    {self.num_devices} x {self.device.describe()}; {self.processes} process(es); '
            f'mesh ' + ' '.join(f'{k}={v}' for k, v in self.mesh.items()),
            f'batch      {b} clips per step = {self.grad_accum} micro-batch(es) x '
            f'{b // self.grad_accum // shards} clip(s) per data x fsdp shard; eval {c.eval.batch_size} '
            f'windows per step (~{self.eval_bytes / GIB:.2f} GiB per device with the train state'
            + (
                f'; compiled {self.eval_compiled["total"] / GIB:.2f} GiB)'
                if self.eval_compiled
                else ')'
            ),
            'per device            analytic' + ('      compiled (XLA)' if comp else ''),
            f'  parameters      {gb(a["params"])}' + xla('arguments', 'argument'),
            f'  optimizer state {gb(a["optimizer"])}' + xla('outputs', 'output'),
            f'  gradients       {gb(a["gradients"])}' + xla('- donated', 'alias'),
            f'  activations     {gb(a["activations"])}' + xla('temporaries', 'temp'),
            f'  inputs          {gb(a["inputs"])}',
            f'  total           {gb(a["total"])}' + xla('total', 'total'),
        ]
        if self.usable_bytes:
            rows.append(
                f'  limit           {gb(self.usable_bytes)} usable ({USABLE:.0%} of '
                f'{self.device.memory_bytes / GIB:.1f} GiB): '
                f'{self.peak_bytes() / self.usable_bytes:.0%} used'
            )
        f = self.flops
        xla = (
            ''
            if self.xla_flops is None
            else f'; XLA cost analysis {self.xla_flops:.3g} per device (loop bodies counted once)'
        )
        executed = (
            f', {f["executed"]:.3g} executed with the remat recompute' if c.model.remat else ''
        )
        rows.append(
            f'FLOPs/step {f["model"]:.3g} model (3 x forward){executed}; analytic, global{xla}'
        )
        if self.step_seconds is not None:
            rows.append(
                f'time       ~{_duration(self.step_seconds)} per step at '
                f'{self.device.efficiency:.0%} of peak; {c.train.steps} steps: '
                f'~{_duration(self.run_hours * 3600)}'
            )
        rows += [f'note       {n}' for n in self.notes]
        return '\n'.join(rows)

    def as_dict(self) -> dict:
        return {
            'label': self.label,
            'device': dataclasses.asdict(self.device),
            'num_devices': self.num_devices,
            'processes': self.processes,
            'mesh': self.mesh,
            'batch_size': self.config.data.batch_size,
            'grad_accum': self.grad_accum,
            'eval_batch_size': self.config.eval.batch_size,
            'eval_bytes': self.eval_bytes,
            'eval_compiled': self.eval_compiled,
            'analytic_host': self.analytic_host,
            'params': self.params,
            'analytic': self.analytic,
            'compiled': self.compiled,
            'flops_model': self.flops['model'],
            'flops_executed': self.flops['executed'],
            'xla_flops_per_device': self.xla_flops,
            'step_seconds': self.step_seconds,
            'run_hours': self.run_hours,
            'compile_seconds': self.compile_seconds,
            'usable_bytes': self.usable_bytes,
            'notes': self.notes,
        }


def _duration(seconds: float) -> str:
    for unit, size in (('years', 365 * 86400), ('days', 86400), ('h', 3600), ('min', 60)):
        if seconds >= size:
            return f'{seconds / size:.3g} {unit}'
    return f'{seconds:.3g} s'


def mesh_shape(cfg) -> dict:
    return {a: cfg.mesh[a] for a in shd.AXES}


def _divisors(n: int):
    return [d for d in range(1, n + 1) if n % d == 0]


# ------------------------------------------------------------------------------ the check


def check(
    cfg,
    *,
    label: str = 'config',
    devices=None,
    device: devices_lib.DeviceInfo | None = None,
    compile: str | None = None,
    force: bool = False,
    log=lambda _: None,
) -> Report:
    """The per-device budget of cfg's training on `devices` (default: all); raises Refusal.

    device: what one device is (default: detected; DeviceInfo.target for what-if tables).
    compile: 'auto' | 'always' | 'never' (default config.preflight.compile). force: run even
    when the estimated run time exceeds config.preflight.max_run_hours.
    """
    config_lib.validate(cfg, check_paths=False)  # may describe another machine
    compile = compile or cfg.preflight.compile
    devices = list(jax.devices() if devices is None else devices)
    try:
        mesh_sizes = shd.mesh_sizes(mesh_shape(cfg), len(devices))
    except ValueError as e:
        raise Refusal(f'{label}: config.mesh: {e}') from None
    info = device or devices_lib.DeviceInfo.detect(devices, cfg.model.dtype)
    if cfg.preflight.memory_gb:
        info = info.with_memory(cfg.preflight.memory_gb * GIB, 'config.preflight.memory_gb')
    usable = None if info.memory_bytes is None else info.memory_bytes * USABLE

    batch = cfg.data.batch_size
    shards = mesh_sizes['data'] * mesh_sizes['fsdp']
    if batch % shards:
        raise Refusal(
            f"{label}: config.data.batch_size={batch} does not split over the mesh's "
            f'data x fsdp = {shards} devices; use a multiple of {shards} or change config.mesh'
        )
    if cfg.train.grad_accum is None:
        accums = [g for g in _divisors(batch) if (batch // g) % shards == 0]
    else:
        accums = [cfg.train.grad_accum]
        if (batch // cfg.train.grad_accum) % shards:
            raise Refusal(
                f'{label}: config.train.grad_accum={cfg.train.grad_accum} leaves micro-batches '
                f'of {batch // cfg.train.grad_accum} clips, which do not split over data x fsdp '
                f'= {shards} devices; use one of {[g for g in _divisors(batch) if (batch // g) % shards == 0]}'
            )

    mesh = shd.make_mesh(mesh_shape(cfg), devices)
    dims = estimate.Dims.of(cfg)
    # Time first: FLOPs do not depend on the batch split, and an absurd run is refused before
    # anything is traced or compiled (ViT-H at T = 16 compiles for many minutes on a CPU).
    fl = estimate.flops(dims, batch)
    step_seconds = run_hours = None
    if info.peak_flops:
        step_seconds = fl['executed'] / (len(devices) * info.peak_flops * info.efficiency)
        run_hours = cfg.train.steps * step_seconds / 3600
        if run_hours > cfg.preflight.max_run_hours and not force:
            raise Refusal(
                _time_message(label, cfg, info, fl, len(devices), step_seconds, run_hours)
            )
    stand_in = body_models.stand_in(cfg.model.kind)
    setups = {}

    def setup_for(g):
        if g not in setups:
            from extpose_jax.train import setup as setup_lib
            from extpose_jax.train import task as task_lib

            cfg_g = config_lib.resolved(cfg, grad_accum=g)
            setups[g] = setup_lib.TrainSetup.build(task_lib.Task(cfg_g, body_model=stand_in), mesh)
        return setups[g]

    first = setup_for(accums[0])
    abstract, abstract_batch = first.abstract_state(), first.abstract_batch()
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))

    mem_dims = estimate.on_platform(dims, info.platform)  # what the target's XLA keeps

    def analytic(g, d=mem_dims):
        return estimate.memory(d, abstract, abstract_batch, mesh_sizes, batch, g)

    chosen, compiled, compiled_for, xla_flops, compile_seconds, notes = (
        None,
        None,
        None,
        None,
        None,
        [],
    )
    for g in accums:
        a = analytic(g)
        if usable is None or compile == 'never':
            if usable is None or a['total'] <= usable:
                chosen = g
                break
            continue
        if a['total'] > FAR * usable:
            continue
        if a['total'] < NEAR * usable and compile != 'always':
            chosen = g
            break
        log(f'preflight: compiling the train step (grad_accum={g})')
        start = time.perf_counter()
        compiled, xla_flops = compiled_step_memory(setup_for(g))
        compiled_for, compile_seconds = g, time.perf_counter() - start
        if compiled['total'] <= usable:
            chosen = g
            break
    if chosen is None:
        raise Refusal(
            _memory_message(
                label, cfg, info, usable, accums[-1], dims, analytic, mesh_sizes, len(devices)
            )
        )
    if compiled_for != chosen:  # figures of a rejected accumulation describe another program
        compiled = xla_flops = None
    if compile == 'always' and compiled is None:
        start = time.perf_counter()
        compiled, xla_flops = compiled_step_memory(setup_for(chosen))
        compile_seconds = time.perf_counter() - start

    if not info.peak_flops:
        notes.append('no peak FLOP/s known for this device: no time estimate')
    if info.platform == 'cpu':
        notes.append(
            'analytic memory uses the XLA:CPU model (activations fp32, every block kept, '
            f'x{estimate.XLA_CPU_OVERHEAD:g}): estimate.on_platform'
        )
    eval_batch, eval_bytes = _eval_batch(
        cfg,
        label,
        mem_dims,
        analytic(chosen),
        batch // chosen,
        shards,
        mesh_sizes['tensor'],
        usable,
    )
    resolved = config_lib.resolved(cfg, grad_accum=chosen, eval_batch_size=eval_batch)
    eval_compiled, analytic_host = None, None
    if compiled is not None:  # compiled the train step: the eval step too, for the same table
        eval_compiled = compiled_eval_memory(setup_for(chosen), eval_batch)
        host = devices[0].platform
        if host != info.platform:  # a what-if compiled here: what this platform's model predicts
            analytic_host = estimate.memory(
                estimate.on_platform(dims, host),
                abstract,
                abstract_batch,
                mesh_sizes,
                batch,
                chosen,
            )
            notes.append(
                f'compiled by XLA:{host.upper()}, not for {info.name}: its buffers follow '
                f"{host}'s memory model (analytic for {host}: "
                f'{analytic_host["total"] / GIB:.1f} GiB)'
            )
    report = Report(
        label=label,
        config=resolved,
        device=info,
        num_devices=len(devices),
        processes=jax.process_count(),
        mesh=mesh_sizes,
        params=n_params,
        analytic=analytic(chosen),
        compiled=compiled,
        flops=fl,
        xla_flops=xla_flops,
        step_seconds=step_seconds,
        run_hours=run_hours,
        eval_bytes=eval_bytes,
        eval_compiled=eval_compiled,
        analytic_host=analytic_host,
        compile_seconds=compile_seconds,
        notes=notes,
    )
    return report


def _eval_batch(cfg, label, dims, train_mem, micro_batch, shards, tensor, usable):
    """-> (global eval windows per step, analytic per-device bytes while evaluating).

    Evaluation runs beside the resident train state (parameters and optimizer state stay on
    the devices), forward only. Unset, the eval batch starts at twice the training micro-batch
    and halves (in multiples of data x fsdp) until it fits.
    """
    resident = train_mem['params'] + train_mem['optimizer']
    per_window = train_mem['inputs'] / max(1, cfg.data.batch_size // shards)

    def need(windows):
        clips = windows / shards
        return resident + estimate.eval_activation_bytes(dims, clips, tensor) + per_window * clips

    explicit = cfg.eval.batch_size is not None
    windows = cfg.eval.batch_size if explicit else 2 * micro_batch
    windows = -(-windows // shards) * shards
    while not explicit and usable is not None and windows > shards and need(windows) > usable:
        windows = max(shards, (windows // 2) // shards * shards)
    if usable is not None and need(windows) > usable:
        raise Refusal(
            f'{label}: evaluation with config.eval.batch_size={windows} windows needs '
            f'~{need(windows) / GIB:.1f} GiB per device beside the train state, '
            f'{usable / GIB:.1f} GiB usable; use a smaller eval.batch_size (e.g. {shards})'
        )
    return windows, need(windows)


def compiled_eval_memory(setup, eval_batch: int) -> dict:
    """Per-device bytes of the compiled evaluation step beside the resident train state: the
    state (parameters + optimizer) + the eval batch + its outputs + XLA's temporaries."""
    from extpose_jax.train import setup as setup_lib
    from extpose_jax.train import task as task_lib

    state, sh = setup.abstract_state(), setup.shardings
    variables = {'params': state.params, **state.constants}
    shardings = {'params': sh.params, **sh.constants}
    batch = setup_lib.abstract_batch(setup.cfg, setup.mesh, eval_batch, task_lib.PREDICT_KEYS)
    with shd.activation_sharding(setup.mesh):
        exe = (
            task_lib.sharded_predict(setup.task, shardings, setup.mesh)
            .lower(variables, batch)
            .compile()
        )
    ma = exe.memory_analysis()
    resident = estimate.shard_bytes((state.params, state.constants, state.opt_state))
    batch_bytes = estimate.shard_bytes(batch)
    out = {
        'argument': ma.argument_size_in_bytes,
        'output': ma.output_size_in_bytes,
        'temp': ma.temp_size_in_bytes,
        'resident_state': resident,
    }
    out['total'] = resident + batch_bytes + out['output'] + out['temp']
    return out


def compiled_step_memory(setup) -> tuple[dict, float | None]:
    """Per-device bytes of the compiled train step (nothing allocated) and XLA's FLOPs."""
    lowered = setup.step.lower(setup.abstract_state(), setup.abstract_batch(), setup.rng_train)
    exe = lowered.compile()
    ma = exe.memory_analysis()
    out = {
        'argument': ma.argument_size_in_bytes,
        'output': ma.output_size_in_bytes,
        'alias': ma.alias_size_in_bytes,
        'temp': ma.temp_size_in_bytes,
    }
    out['total'] = out['argument'] + out['output'] - out['alias'] + out['temp']
    cost = exe.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return out, (float(cost['flops']) if cost and 'flops' in cost else None)


# ------------------------------------------------------------------------------ refusals


def _memory_message(label, cfg, info, usable, g, dims, analytic, mesh_sizes, n_devices) -> str:
    """One line: what is over, and the smallest change that fits (analytic estimates).

    dims: the config's, before the platform's memory model (estimate.on_platform), so that a
    change that the platform undoes (remat, bf16 on XLA:CPU) is never offered as a fix.
    """
    batch = cfg.data.batch_size
    shards = mesh_sizes['data'] * mesh_sizes['fsdp']
    worst = analytic(g)

    def total(d=dims, accum=g, state_scale=1.0):
        m = analytic(accum, estimate.on_platform(d, info.platform))
        return m['total'] - (1 - state_scale) * (m['params'] + m['optimizer'] + m['gradients'])

    candidates = []
    most_accum = max(a for a in _divisors(batch) if (batch // a) % shards == 0)
    if cfg.train.grad_accum is not None:
        for a in _divisors(batch):
            if a > g and (batch // a) % shards == 0:
                candidates.append((f'--config.train.grad_accum={a}', total(accum=a)))
    lean, combo = dims, []
    for flag, change in (
        ('--config.model.remat=True', {'remat': True}),
        ('--config.model.dtype=bfloat16', {'value_bytes': 2}),
    ):
        if any(getattr(dims, k) != v for k, v in change.items()):
            t = total(d=dataclasses.replace(dims, **change))
            if t < worst['total']:
                candidates.append((flag, t))
                combo.append(flag)
                lean = dataclasses.replace(lean, **change)
    scale = 1.0
    if n_devices > 1 and mesh_sizes['fsdp'] < n_devices:
        # FSDP shards (nearly) all of the parameter, optimizer and gradient bytes n ways.
        scale = mesh_sizes['fsdp'] / n_devices
        flag = f'--config.mesh.fsdp={n_devices} --config.mesh.data=1 --config.mesh.tensor=1'
        candidates.append((flag, total(state_scale=scale)))
        combo.append(flag)
    if len(combo) > 1 or (combo and most_accum != g and cfg.train.grad_accum is not None):
        flags = ' '.join(
            combo
            + (
                [f'--config.train.grad_accum={most_accum}']
                if cfg.train.grad_accum is not None and most_accum != g
                else []
            )
        )
        candidates.append((flags, total(d=lean, accum=most_accum, state_scale=scale)))
    fits = [(c, t) for c, t in candidates if t <= usable]
    need = f'needs ~{worst["total"] / GIB:.1f} GiB per device ({_parts(worst)})'
    have = f'{info.name} has {usable / GIB:.1f} GiB usable'
    where = f'{label} (train.grad_accum={g}, mesh {"x".join(str(v) for v in mesh_sizes.values())})'
    if fits:
        change, t = fits[0]
        return f'{where} {need}, {have}: smallest change that fits: {change} (~{t / GIB:.1f} GiB)'
    if info.platform == 'cpu':
        return (
            f'{where} {need}, {have}: too large for this machine; use the small variant '
            f'(--config={label.split(":")[0]}:small) on a CPU'
        )
    return (
        f'{where} {need}, {have}: does not fit even fully sharded; use more devices '
        f'(--config.mesh.fsdp) or a smaller model (--config={label.split(":")[0]}:base)'
    )


def _parts(m: dict) -> str:
    return ', '.join(
        f'{k} {m[k] / GIB:.1f}' for k in ('params', 'optimizer', 'gradients', 'activations')
    )


def _time_message(label, cfg, info, fl, n_devices, step_seconds, run_hours) -> str:
    alt = (
        f'use the small variant (--config={label.split(":")[0]}:small) on a CPU'
        if info.platform == 'cpu' and cfg.variant != 'small'
        else 'use more devices, fewer train.steps or a smaller variant'
    )
    return (
        f'{label} would take ~{_duration(step_seconds)} per step ({fl["executed"]:.2g} FLOPs '
        f'at {info.efficiency:.0%} of {n_devices} x {info.peak_flops / 1e12:.3g} TFLOP/s '
        f'{info.name}), ~{_duration(run_hours * 3600)} for {cfg.train.steps} steps (limit '
        f'config.preflight.max_run_hours={cfg.preflight.max_run_hours:g}): {alt}, or pass --force'
    )


# ------------------------------------------------------------------------------ CLI


def main(argv):
    del argv
    from absl import flags
    from ml_collections import config_flags

    f = flags.FLAGS
    if f.json and not os.path.isdir(os.path.dirname(f.json) or '.'):  # not after the compile
        raise FileNotFoundError(f'--json={f.json}: no such directory {os.path.dirname(f.json)!r}')
    cfg = _CONFIG.value
    label = config_flags.get_config_filename(f['config'])
    device = devices_lib.DeviceInfo.target(f.target, cfg.model.dtype) if f.target else None
    try:
        report = check(cfg, label=label, device=device, compile=f.compile, force=True, log=print)
    except Refusal as e:
        print(f'REFUSED {e}')
        if f.json:
            _append_json(f.json, {'tag': f.tag, 'label': label, 'refused': str(e)})
        return 1
    print(report.table())
    if f.json:
        _append_json(f.json, {'tag': f.tag, **report.as_dict()})
    return 0


def _append_json(path: str, row: dict) -> None:
    with open(path, 'a') as fh:
        fh.write(json.dumps(row, default=float) + '\n')


if __name__ == '__main__':
    from absl import flags
    from ml_collections import config_flags

    from extpose_jax import errors

    _CONFIG = config_flags.DEFINE_config_file('config', None, 'Training configuration file.')
    flags.DEFINE_integer('devices', None, 'Simulate this many CPU devices (set before JAX starts).')
    flags.DEFINE_enum(
        'target',
        None,
        list(devices_lib.CHIPS),
        'Compare with this chip instead of the local device.',
    )
    flags.DEFINE_enum('compile', 'always', config_lib.PREFLIGHT_COMPILE, 'Compile the step.')
    flags.DEFINE_string('json', None, 'Append the report as one JSON line to this file.')
    flags.DEFINE_string(
        'tag', None, 'Stored with the JSON line (bench/scaling.py names its cases).'
    )
    flags.mark_flags_as_required(['config'])
    errors.run(main)
