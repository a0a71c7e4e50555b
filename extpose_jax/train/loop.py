"""The training loop: pipeline -> sharded step -> logs, checkpoints, evaluation; exact resume.

    result = train(cfg, workdir, body_models_dir, records_root)

Order per step s (0-based): batch s -> state_{s+1} -> log -> checkpoint policy (state after
s + 1 updates, iterator after s + 1 batches) -> stop on SIGTERM / preemption -> periodic eval.
A resumed run restores the latest checkpoint and continues; its losses and final params equal
the uninterrupted run's (test_train_loop.py checks this bit for bit on CPU).
"""

from __future__ import annotations

import os
import signal
from typing import Callable

import jax
import numpy as np

from data_pipelines import pipeline
from extpose_jax import errors
from extpose_jax.models import attention
from extpose_jax.models.discriminator import DISCRIMINATOR
from extpose_jax.train import checkpoint as ckpt_lib
from extpose_jax.train import collectives, inputs, optim, writers
from extpose_jax.train import config as config_lib
from extpose_jax.train import setup as setup_lib
from extpose_jax.train import sharding as shd
from extpose_jax.train import state as state_lib
from extpose_jax.train import task as task_lib


class _Stop:
    """SIGTERM -> finish the current step, checkpoint it, exit cleanly (single process).

    With several processes the signal may reach only one of them; orbax's preemption sync
    (jax.distributed's notifier) agrees on a common step instead, so no handler is installed.
    """

    def __init__(self, enabled: bool):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle) if enabled else None

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


class _Divergence:
    """Watches the steps' 'finite' flags. Each flag is read one step late, so the device keeps a
    step queued; before a checkpoint or a log line the current one is read at once, so nothing
    after a non-finite step is ever saved. With train.skip_nonfinite such steps left the state
    unchanged (the step skipped them) and are counted; otherwise the first one stops the run."""

    def __init__(self, skip: bool, checkpoints):
        self.skip, self.checkpoints = skip, checkpoints
        self.skipped = 0  # since the last take()
        self._pending = None

    def add(self, step: int, metrics: dict) -> None:
        previous, self._pending = self._pending, (step, metrics.pop('finite'), metrics)
        if previous is not None:
            self._check(*previous)

    def flush(self) -> None:
        if self._pending is not None:
            self._check(*self._pending)
            self._pending = None

    def take(self) -> int:
        n, self.skipped = self.skipped, 0
        return n

    def _check(self, step, finite, metrics) -> None:
        if bool(finite):
            return
        if self.skip:
            self.skipped += 1
            return
        last = self.checkpoints.latest_step()
        loss, norm = float(metrics['loss']), float(metrics['grad_norm'])
        raise errors.Diverged(
            f'step {step}: the loss or a gradient is not finite (loss {loss}, grad_norm {norm}); '
            f'stopped without saving it. Last good checkpoint: step {last} in '
            f'{self.checkpoints.directory} (rerun to resume from it). Lower optim.lr, set '
            'optim.clip_norm, or set train.skip_nonfinite=True to skip such steps'
        )


def _flat(tree) -> dict:
    return {optim.path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def model_variables(state) -> dict:
    """{'params': ..., 'constants': ...}: what model.apply and the variables dirs hold."""
    return {'params': state.params, **state.constants}


def init_from(state, shardings, path: str, new_param_prefixes=(), log: Callable = lambda _: None):
    """Replaces params / constants with a checkpoint's (a variables dir or a training workdir).

    Strict: every loaded key must exist in the model with the same shape and every model key
    must be loaded, except a baseline's own new parameters and, from a backbone-only import
    (ViTPose), the head: those keep their init. The checkpoint's discriminator (if any) is
    loaded, just as strictly, when the state has one (the adversarial prior is on) and ignored
    otherwise; a state with a discriminator keeps its init when the checkpoint has none.
    """
    loaded, _, _ = ckpt_lib.restore_variables(path)
    disc = loaded.pop(DISCRIMINATOR, None)
    keep_init = [f'params/{p}' for p in new_param_prefixes]
    if ckpt_lib.is_variables_dir(path) and 'head' not in ckpt_lib.load_meta(path).get(
        'parts', ['head']
    ):
        keep_init += ['params/head/', 'constants/head/']  # a backbone-only import (ViTPose)
    have = _flat(model_variables(state))
    got = _flat(loaded)
    missing = [k for k in have if k not in got and not k.startswith(tuple(keep_init))]
    unexpected = [k for k in got if k not in have]
    shapes = [
        f'{k}: {got[k].shape} vs model {have[k].shape}'
        for k in got
        if k in have and tuple(got[k].shape) != tuple(have[k].shape)
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f'config.init.checkpoint={path}: its variables do not match the model: '
            f'missing {missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} '
            f'({len(unexpected)}), mis-shaped {shapes[:8]} ({len(shapes)})'
        )

    def merge(tree, prefix):
        def one(path, x):
            k = prefix + optim.path_str(path)
            return np.asarray(got[k], x.dtype) if k in got else x

        return jax.tree_util.tree_map_with_path(one, tree)

    params = jax.device_put(merge(state.params, 'params/'), shardings.params)
    constants = jax.device_put(merge(state.constants, ''), shardings.constants)
    # The optimizer state was built for the init params; Adam moments are zeros either way.
    state = state.replace(params=params, constants=constants)
    if not state_lib.has_discriminator(state):
        if disc is not None:
            log(f'{path}: its discriminator is not used (loss.use_adversarial is off)')
        return state
    if disc is None:
        log(f'{path}: no discriminator in it; the discriminator starts from its init')
        return state
    have, got = _flat(state.disc_params), _flat(disc)
    shapes = [
        f'{k}: {got[k].shape} vs {have[k].shape}'
        for k in got
        if k in have and tuple(got[k].shape) != tuple(have[k].shape)
    ]
    if have.keys() != got.keys() or shapes:
        raise ValueError(
            f'config.init.checkpoint={path}: its discriminator does not match the '
            f"run's: missing {sorted(set(have) - set(got))[:8]}, "
            f'unexpected {sorted(set(got) - set(have))[:8]}, mis-shaped {shapes[:8]}'
        )
    disc_params = jax.device_put(
        jax.tree_util.tree_map_with_path(
            lambda p, x: np.asarray(got[optim.path_str(p)], x.dtype), state.disc_params
        ),
        shardings.disc_params,
    )
    log(f'{path}: discriminator loaded')
    return state.replace(disc_params=disc_params)


def run_eval(
    cfg,
    ev: config_lib.Evaluator,
    task,
    state,
    step: int,
    workdir: str,
    body_models_dir: str,
    records_root: str,
    writer,
    log: Callable,
) -> dict:
    """Evaluator `ev` on every process, the model sharded as the state is (nothing is
    gathered): each process scores its share of the windows and every process returns the same
    metrics; process 0 writes eval/<name>/step_<n>/metrics.json and the overlays (its share)."""
    from extpose_jax.train import evaluate

    variables = model_variables(state)
    shardings = jax.tree.map(lambda x: x.sharding, variables)
    mesh = jax.tree.leaves(shardings)[0].mesh
    out_dir = os.path.join(workdir, 'eval', ev.name, f'step_{step}')
    metrics = evaluate.evaluate(
        task_lib.make_sharded_predict_fn(cfg, variables, shardings, mesh, task),
        records_dir=os.path.join(records_root, ev.dataset),
        split=ev.split,
        body_models_dir=body_models_dir,
        batch_size=task_lib.eval_batch_size(cfg.eval.batch_size, mesh, log),
        overlays=cfg.eval.overlays,
        overlay_dir=os.path.join(out_dir, 'overlays'),
        log=log,
        **config_lib.eval_kwargs(cfg, ev),
    )
    if jax.process_index() != 0:
        return metrics
    evaluate.write_metrics_json(os.path.join(out_dir, 'metrics.json'), metrics)
    evaluate.write_metrics_json(
        os.path.join(workdir, 'eval', ev.name, 'metrics.json'), {'step': step, **metrics}
    )
    writer.write_scalars(
        step, {ev.tag(k): v for k, v in metrics.items() if isinstance(v, (int, float))}
    )
    # The overall numbers only ('hint/pck@0.1/all', not per source); metrics.json has them all.
    log(
        f'eval {ev.name} at step {step}: '
        + ', '.join(
            f'{k} {v:.2f}' for k, v in metrics.items() if isinstance(v, float) and k.count('/') <= 2
        )
    )
    return metrics


def train(
    cfg, workdir: str, body_models_dir: str, records_root: str, *, log: Callable = print
) -> dict:
    """Runs (or resumes) the config's training in workdir. Returns {'step', 'eval': {evaluator
    name: {step: metrics}}, 'stopped_early'}; on SIGTERM / preemption it checkpoints the current step and returns."""
    config_lib.validate(cfg)
    inputs.check(cfg, body_models_dir, records_root)  # before any model or output exists
    cfg = config_lib.resolved(cfg)  # grad_accum / eval batch: run_train passes the preflight's
    os.makedirs(workdir, exist_ok=True)
    mesh = shd.make_mesh({a: cfg.mesh[a] for a in ('data', 'fsdp', 'tensor')})
    log(
        f'devices: {jax.device_count()} ({jax.devices()[0].platform}), processes: '
        f'{jax.process_count()}, mesh: {dict(mesh.shape)}'
    )

    task = task_lib.Task(cfg, body_models_dir)
    setup = setup_lib.TrainSetup.build(task, mesh)
    state, shardings, step_fn, rng_train = (
        setup.create_state(),
        setup.shardings,
        setup.step,
        setup.rng_train,
    )
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    log(
        f'model: {cfg.model.arch} ViT-{cfg.model.size} ({n_params / 1e6:.1f}M params), '
        f'T={cfg.data.num_frames}, global batch {cfg.data.batch_size} clips'
        + (f' in {setup.grad_accum} micro-batches' if setup.grad_accum > 1 else '')
    )
    if cfg.model.attention == 'auto':
        mc = task.model_config
        layout = mc.layout(cfg.data.num_frames)
        log(attention.describe_auto(layout, mc.mask, mc.vit.depth, mc.vit.dtype))
    if not cfg.init.checkpoint:
        mean = task.model_config.mean_params_path
        log(f'head starts from {mean or "the identity pose (no mean_params file)"}')
    if state_lib.has_discriminator(state):
        n_disc = sum(x.size for x in jax.tree.leaves(state.disc_params))
        log(
            f'adversarial prior: discriminator {n_disc / 1e6:.1f}M params, weight '
            f"{cfg.loss.adversarial} (real samples: the batch's GT pose / betas)"
        )

    data_iter = pipeline.make_iterator(
        config_lib.pipeline_config(cfg, records_root, process_count=jax.process_count())
    )
    collectives.barrier('train-start')  # before the first collective (orbax's directory sync)
    checkpoints = ckpt_lib.RunCheckpoints(workdir, cfg.train.checkpoint_every, cfg.train.keep)
    start = checkpoints.latest_step()
    resumed = start is not None
    if resumed:
        state, data_iter = checkpoints.restore(
            start, ckpt_lib.abstract_like(state, shardings), data_iter
        )
        log(f'resumed from {checkpoints.directory} at step {start}')
    else:
        start = 0
        if cfg.init.checkpoint:
            prefixes = config_lib.new_param_prefixes(cfg.model.arch)
            state = init_from(state, shardings, cfg.init.checkpoint, prefixes, log=log)
            log(f'initialised from {cfg.init.checkpoint}')

    # Logs past the restored step came from the killed run's lost steps: writers drop them.
    writer = writers.MetricWriter(
        workdir, jax.process_index(), start_step=start if resumed else None
    )
    evals = config_lib.evaluators(cfg)
    result = {'step': start, 'eval': {e.name: {} for e in evals}, 'stopped_early': False}

    def evaluate_due(step):
        for ev in evals:
            if ev.due(step, cfg.train.steps):
                result['eval'][ev.name][step] = run_eval(
                    cfg, ev, task, state, step, workdir, body_models_dir, records_root, writer, log
                )

    if not resumed:
        evaluate_due(0)
        checkpoints.save(0, state, data_iter, cfg, force=True)

    stop = _Stop(enabled=jax.process_count() == 1)
    progress = writers.Progress(cfg.train.steps, start) if jax.process_index() == 0 else None
    divergence = _Divergence(cfg.train.skip_nonfinite, checkpoints)
    skipped_records = 0  # this process's, since the last log line
    try:
        for step in range(start, cfg.train.steps):
            host_batch = next(data_iter)
            skipped_records += int(host_batch['record_skipped'].sum())
            batch = shd.global_batch(task_lib.device_batch(host_batch), mesh)
            state, metrics = step_fn(state, batch, rng_train)
            done = step + 1
            divergence.add(done, metrics)
            log_now = done % cfg.train.log_every == 0 or done == cfg.train.steps
            if log_now or checkpoints.should_save(done):
                divergence.flush()
            if log_now:
                scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if cfg.train.skip_nonfinite:
                    scalars['skipped_nonfinite'] = divergence.take()
                if cfg.data.skip_corrupt:
                    scalars['skipped_records'] = collectives.process_sum(skipped_records)
                    skipped_records = 0
                writer.write_scalars(done, scalars)
                if progress is not None:
                    progress.update(done, scalars.get('loss'))
            saved = checkpoints.save(done, state, data_iter, cfg)
            result['step'] = done
            # Every process asks at every step (a sync point once a notice arrived): all of them
            # agree on the same step, whichever process got the SIGTERM.
            if stop.requested or checkpoints.reached_preemption(done):
                divergence.flush()
                if not saved:  # the policy (or orbax, at a preemption step) may have saved it
                    checkpoints.save(done, state, data_iter, cfg, force=True)
                log(f'stop requested: checkpointed step {done} in {checkpoints.directory}')
                result['stopped_early'] = True
                return result
            if done < cfg.train.steps:
                evaluate_due(done)
        divergence.flush()
        if checkpoints.latest_step() != cfg.train.steps:
            checkpoints.save(cfg.train.steps, state, data_iter, cfg, force=True)
        evaluate_due(cfg.train.steps)
        if jax.process_index() == 0:
            writers.plot_curves(writer.jsonl_path, os.path.join(workdir, 'curves.png'))
        return result
    finally:
        stop.restore()
        if progress is not None:
            progress.close()
        checkpoints.close()
        writer.close()
