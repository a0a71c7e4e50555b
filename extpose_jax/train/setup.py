"""A config's training step on a mesh, built once for the loop and for the preflight.

    mesh = sharding.make_mesh(cfg.mesh)
    task = Task(config.resolved(cfg), body_models_dir)  # automatic fields set (or preflight.check)
    setup = TrainSetup.build(task, mesh)
    state = setup.create_state()                       # sharded arrays (the training loop)
    abstract = setup.abstract_state()                  # ShapeDtypeStructs + shardings (preflight)
    compiled = setup.step.lower(abstract, setup.abstract_batch(), setup.rng_train).compile()
    state, metrics = setup.step(state, batch, setup.rng_train)

The loop and the preflight must compile the same program, or the preflight's per-device
figures describe another run: both go through here (optimizer, state initialisation, the
adversarial prior, the step with its gradient accumulation and activation constraints).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from data_pipelines import pipeline
from extpose_jax import skeletons
from extpose_jax.train import config as config_lib
from extpose_jax.train import optim
from extpose_jax.train import sharding as shd
from extpose_jax.train import state as state_lib
from extpose_jax.train import task as task_lib


@dataclasses.dataclass
class TrainSetup:
    cfg: Any
    mesh: Any
    task: task_lib.Task
    tx: Any
    shardings: Any  # TrainState (or AdversarialTrainState) of NamedShardings
    step: Callable  # state_lib.make_train_step's run(state, batch, rng), with .lower
    grad_accum: int
    rng_train: jax.Array
    _init: Callable  # () -> sharded TrainState
    _abstract: Callable  # () -> abstract TrainState

    @classmethod
    def build(cls, task: task_lib.Task, mesh) -> TrainSetup:
        """The task's config, with its automatic fields resolved, decides everything."""
        cfg = task.cfg
        grad_accum = int(cfg.train.grad_accum)
        tx = optim.make_optimizer(config_lib.optim_config(cfg))
        rng_init, rng_train = jax.random.split(jax.random.key(cfg.seed))
        # One clip is enough to trace the init: parameter shapes do not depend on the batch, and
        # a global-batch init would run the whole forward pass, unsharded, on every device.
        example = task.example_inputs(1, cfg.data.num_frames)
        init, shardings = state_lib.state_initializer(task.model, tx, rng_init, example, mesh)
        adversarial = {}
        disc = None
        if cfg.loss.use_adversarial:
            disc_tx = optim.make_optimizer(config_lib.disc_optim_config(cfg))
            adversarial = {'disc_loss_fn': task.disc_loss_fn, 'disc_tx': disc_tx}
            # Its own key: the pose model's init stays the same with the prior on or off.
            disc = (
                task.discriminator,
                disc_tx,
                jax.random.fold_in(rng_init, 1),
                task.disc_example_inputs(),
            )

        def with_disc(state, sh):
            if disc is None:
                return state, sh
            return state_lib.add_discriminator(state, sh, disc[0], disc[1], disc[2], disc[3], mesh)

        _, shardings = with_disc(jax.eval_shape(init, rng_init), shardings)
        step = state_lib.make_train_step(
            task.loss_fn,
            tx,
            mesh,
            shardings,
            shd.batch_sharding(mesh),
            grad_accum=grad_accum,
            skip_nonfinite=cfg.train.skip_nonfinite,
            **adversarial,
        )
        return cls(
            cfg=cfg,
            mesh=mesh,
            task=task,
            tx=tx,
            shardings=shardings,
            step=step,
            grad_accum=grad_accum,
            rng_train=rng_train,
            _init=lambda: with_disc(init(rng_init), shardings)[0],
            _abstract=lambda: with_disc(jax.eval_shape(init, rng_init), shardings)[0],
        )

    def create_state(self):
        return self._init()

    def abstract_state(self):
        return self._abstract()

    def abstract_batch(self, batch_size: int | None = None) -> dict:
        """The step's global batch as ShapeDtypeStructs sharded like training's."""
        return abstract_batch(
            self.cfg, self.mesh, batch_size or self.cfg.data.batch_size, task_lib.TRAIN_KEYS
        )


def abstract_batch(cfg, mesh, batch_size: int, keys) -> dict:
    """{key: ShapeDtypeStruct (global batch_size, T, ...)} for `keys`, sharded over the batch."""
    pcfg = config_lib.pipeline_config(cfg, '', process_count=1)
    pcfg = dataclasses.replace(pcfg, batch_size=batch_size)
    kind = cfg.model.kind
    joints = skeletons.get_layout(config_lib.RECORD_LAYOUT[kind]).num_joints
    spec = pipeline.batch_spec(pcfg, joints, kind)
    sharding = shd.batch_sharding(mesh)
    return {
        k: jax.ShapeDtypeStruct(spec[k][0], np.dtype(spec[k][1]), sharding=sharding) for k in keys
    }
