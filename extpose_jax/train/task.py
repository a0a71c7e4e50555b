"""What is trained, from a config: the model, its inputs from a pipeline batch, the loss, predict.

    task = Task(cfg, body_models_dir)
    loss, aux = task.loss_fn(variables, batch, rng)      # train.state.make_train_step's contract
    outputs = task.predict(variables, batch)             # per-frame head outputs, (B, T, ...)

    # Evaluation sharded like training (every process; this process's rows in and out):
    variables, shardings = task.place_variables(host_variables, mesh)
    predict_fn = make_sharded_predict_fn(cfg, variables, shardings, mesh, task)
    rows = eval_batch_size(cfg.eval.batch_size, mesh, log=print)   # this process's windows per step

The pipeline's batch holds the records' keypoint layout (HMR 2.0's 44 for bodies, hand-21);
the skeleton image is drawn in the model's layout (OpenPose-18, ControlNet's look, for bodies),
so keypoints are converted here, on device, inside the jitted step.

Adversarial prior (config loss.use_adversarial; HMR 2.0 / HaMeR's losses): when variables
hold 'discriminator' (its params, put there by the train step), loss_fn adds the generator term
w_adv * sum (D(fake) - 1)^2 / N and returns aux['disc_inputs'] for `disc_loss_fn`, the LSGAN
discriminator loss. Upstream's "real" samples are MoCap SMPL / MANO parameters (CMU for HMR 2.0,
FreiHAND mocap for HaMeR); we have no MoCap files, so the real samples are the ground-truth
pose and betas of the batch's own frames that have both (has_pose & has_betas & frame_valid),
the honest substitute: real parameters, but only as many and as varied as the batch.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from extpose_jax import body_models, geometry, losses, skeletons
from extpose_jax.models import discriminator as disc_lib
from extpose_jax.models.discriminator import DISCRIMINATOR
from extpose_jax.train import config as config_lib
from extpose_jax.train import optim
from extpose_jax.train import sharding as shd

# Batch keys the step reads; the rest (ids, affine, K, ...) stay on the host.
TRAIN_KEYS = (
    'image',
    'kp2d_input',
    'kp2d',
    'kp3d',
    'pose',
    'betas',
    'has_kp2d',
    'has_kp3d',
    'has_pose',
    'has_betas',
    'frame_valid',
)
PREDICT_KEYS = ('image', 'kp2d_input', 'frame_valid')


def device_batch(batch: dict, keys=TRAIN_KEYS) -> dict:
    """The arrays of `keys` (host numpy); a clear error names a key the pipeline did not give."""
    missing = [k for k in keys if k not in batch]
    if missing:
        raise KeyError(f'batch lacks {missing}; it has {sorted(batch)}')
    return {k: batch[k] for k in keys}


def draw_modality_keep(rng, batch_size: int, num_modalities: int, p_drop: float):
    """(B, M) bool: with probability p_drop one modality, chosen uniformly, is dropped per clip.

    Never both: a clip always keeps at least one modality (paper: one whole modality dropped
    with p = 0.5 during training).
    """
    if num_modalities < 2 or p_drop <= 0:
        return jnp.ones((batch_size, num_modalities), bool)
    r_drop, r_which = jax.random.split(rng)
    drop = jax.random.bernoulli(r_drop, p_drop, (batch_size,))
    which = jax.random.randint(r_which, (batch_size,), 0, num_modalities)
    dropped = drop[:, None] & (jnp.arange(num_modalities)[None, :] == which[:, None])
    return ~dropped


class Task:
    """The config's model, body model and loss, as pure functions of (variables, batch, rng)."""

    def __init__(self, cfg, body_models_dir: str | None = None, body_model=None):
        """body_model: a loaded BodyModel instead of body_models_dir (the preflight passes
        body_models.stand_in: same shapes, so the same program, before any file exists)."""
        self.cfg = cfg
        if body_model is not None:
            self.__dict__['body_model'] = body_model  # fills the cached property
        self.kind = cfg.model.kind
        self.model = config_lib.build_model(cfg, body_models_dir)
        # The arch's own config: an ablation such as rgb_only rewrites the modalities, and the
        # modality dropout must draw for the streams the model has.
        self.model_config = self.model.config
        self.body_models_dir = body_models_dir
        self.weights = config_lib.loss_weights(cfg)
        self.discriminator = disc_lib.Discriminator(self.kind)

    @property
    def loss_scale(self) -> float:
        """With 'sum' the loss grows with the batch; grad accumulation averages micro-batch
        losses, so each micro-batch's sum is scaled back up to the full batch's."""
        if self.cfg.loss.normalize != 'sum':
            return 1.0
        if self.cfg.train.grad_accum is None:
            raise ValueError(
                'Task: config.train.grad_accum is unresolved (None); pass the config '
                'through preflight.check or config.resolved first'
            )
        return float(self.cfg.train.grad_accum)

    @functools.cached_property
    def body_model(self):
        if self.body_models_dir is None:
            raise ValueError('Task: the loss needs a body model; pass body_models_dir')
        # The neutral SMPL (or the right MANO): a prediction has no gender.
        return body_models.load_from_dir(self.body_models_dir, self.kind)

    def inputs(self, batch):
        """(frames (B, T, 1, H, W, 3), keypoints (B, T, 1, J, 3) in the model's layout)."""
        frames = batch['image'][:, :, None]
        kp = skeletons.convert(
            batch['kp2d_input'],
            config_lib.RECORD_LAYOUT[self.kind],
            self.model_config.keypoint_layout,
        )
        return frames, kp[:, :, None]

    def example_inputs(self, batch_size: int, num_frames: int):
        """ShapeDtypeStructs of the model's inputs, for create_train_state."""
        h, w = self.model_config.vit.image_size
        j = skeletons.get_layout(self.model_config.keypoint_layout).num_joints
        return (
            jax.ShapeDtypeStruct((batch_size, num_frames, 1, h, w, 3), jnp.uint8),
            jax.ShapeDtypeStruct((batch_size, num_frames, 1, j, 3), jnp.float32),
        )

    def disc_example_inputs(self, batch_size: int = 1):
        """ShapeDtypeStructs (rotmats (B, J, 3, 3), betas (B, 10)) for the discriminator's init."""
        j = disc_lib.num_joints(self.kind)
        return (
            jax.ShapeDtypeStruct((batch_size, j, 3, 3), jnp.float32),
            jax.ShapeDtypeStruct((batch_size, disc_lib.NUM_BETAS), jnp.float32),
        )

    def apply(self, variables, batch, *, rng=None, modality_keep=None):
        # A checkpoint's discriminator may ride along (restore_variables); the model has no use for it.
        variables = {k: v for k, v in variables.items() if k != DISCRIMINATOR}
        frames, kp = self.inputs(batch)
        kwargs = {'rngs': {'dropout': rng}} if rng is not None else {}
        return self.model.apply(
            variables,
            frames,
            kp,
            modality_keep=modality_keep,
            frame_valid=batch['frame_valid'],
            deterministic=rng is None,
            **kwargs,
        )

    def loss_fn(self, variables, batch, rng):
        r_keep, r_drop = jax.random.split(rng)
        keep = draw_modality_keep(
            r_keep,
            batch['image'].shape[0],
            len(self.model_config.modalities),
            self.cfg.model.modality_dropout,
        )
        out = self.apply(variables, batch, rng=r_drop, modality_keep=keep)
        disc_params = variables.get(DISCRIMINATOR)
        disc = None
        if disc_params is not None:
            disc = functools.partial(self.discriminator.apply, {'params': disc_params})
        loss, terms = losses.total_loss(
            out,
            batch,
            self.body_model,
            self.weights,
            self.kind,
            discriminator=disc,
            normalize=self.cfg.loss.normalize,
        )
        aux = {k: v for k, v in terms.items() if k != 'loss'}
        if self.loss_scale != 1.0:
            # The adversarial term is already a mean over frames: only the sums are scaled up.
            adv = self.weights.adversarial * terms['loss_adv']
            loss = (loss - adv) * self.loss_scale + adv
        if disc is not None:
            aux['disc_inputs'] = self.disc_inputs(out, batch)
        return loss, aux

    def disc_inputs(self, outputs, batch) -> dict:
        """The discriminator's fakes (predictions of valid frames) and reals (GT, see the module
        docstring), float32, leading dims (B, T); masks say which samples count."""
        lead = tuple(batch['pose'].shape[:2])
        ones = jnp.ones(lead, bool)
        flag = lambda name: jnp.asarray(batch.get(name, ones), bool)  # noqa: E731
        valid = flag('frame_valid')
        pose_key = losses.POSE_KEY[self.kind]
        fake_pose, fake_betas = outputs[pose_key], outputs['betas']
        if fake_pose.ndim == len(lead) + 4:  # (B, T, 1, J, 3, 3): drop the single view
            fake_pose, fake_betas = fake_pose[:, :, 0], fake_betas[:, :, 0]
        j = disc_lib.num_joints(self.kind)
        # GT pose is axis-angle with the global orient first; the discriminator sees the rest.
        real_pose = geometry.axis_angle_to_matrix(
            batch['pose'].reshape(lead + (-1, 3))[..., 1 : 1 + j, :]
        )
        return {
            'fake_pose': fake_pose.astype(jnp.float32),
            'fake_betas': fake_betas.astype(jnp.float32),
            'fake_mask': valid,
            'real_pose': real_pose.astype(jnp.float32),
            'real_betas': batch['betas'].astype(jnp.float32),
            'real_mask': valid & flag('has_pose') & flag('has_betas'),
        }

    def disc_loss_fn(self, disc_params, inputs):
        """LSGAN discriminator loss (weighted by loss.adversarial) -> (loss, aux): the step's
        disc_loss_fn. N = the number of valid fake frames, as upstream's image batch size."""
        d = functools.partial(self.discriminator.apply, {'params': disc_params})
        return losses.discriminator_loss(
            d(inputs['fake_pose'], inputs['fake_betas']),
            d(inputs['real_pose'], inputs['real_betas']),
            inputs['fake_mask'],
            self.weights.adversarial,
            real_mask=inputs['real_mask'],
        )

    def predict(self, variables, batch):
        """Deterministic head outputs with the view axis dropped: (B, T, ...)."""
        out = self.apply(variables, batch)
        return {k: v[:, :, 0] for k, v in out.items()}

    def place_variables(self, variables, mesh, source: str = 'variables'):
        """Host variables (checkpoint.restore_variables) -> (the same as jax.Arrays on `mesh`,
        their NamedShardings): each array laid out by the logical-axis rules, as
        state.create_train_state lays out training's (an abstract init: no FLOPs). A
        discriminator is dropped; keys or shapes that do not fit the model fail naming `source`.
        """
        frames, kp = self.example_inputs(1, self.cfg.data.num_frames)
        boxed = jax.eval_shape(
            lambda rng: self.model.init(
                rng, jnp.zeros(frames.shape, frames.dtype), jnp.zeros(kp.shape, kp.dtype)
            ),
            jax.random.key(0),
        )
        shardings = shd.param_shardings(boxed, mesh)
        want = {
            optim.path_str(p): x.shape
            for p, x in jax.tree_util.tree_leaves_with_path(nn.unbox(boxed))
        }
        variables = {k: v for k, v in variables.items() if k != DISCRIMINATOR}
        got = {
            optim.path_str(p): np.shape(x)
            for p, x in jax.tree_util.tree_leaves_with_path(variables)
        }
        bad = sorted(k for k in got if k in want and tuple(got[k]) != tuple(want[k]))
        if want.keys() != got.keys() or bad:
            raise ValueError(
                f'{source}: its variables do not fit config.model: missing '
                f'{sorted(want.keys() - got.keys())[:8]}, unexpected '
                f'{sorted(got.keys() - want.keys())[:8]}, mis-shaped '
                f'{[(k, got[k], want[k]) for k in bad[:8]]}'
            )
        # From every process's identical host copy, each process fills its own shards.
        put = lambda x, sh: jax.make_array_from_callback(
            np.shape(x), sh, lambda i: np.asarray(x)[i]
        )
        return jax.tree.map(put, variables, shardings), shardings


def make_predict_fn(cfg, variables, task: Task | None = None):
    """numpy batch -> numpy head outputs (B, T, ...), jitted once per batch shape, on one
    device with host variables (the PyTorch comparison, tests); evaluation of a sharded model
    uses make_sharded_predict_fn."""
    task = task or Task(cfg)
    jitted = jax.jit(task.predict)

    def predict_fn(batch):
        out = jitted(variables, device_batch(batch, PREDICT_KEYS))
        return {k: np.asarray(v) for k, v in out.items()}

    return predict_fn


def eval_batch_size(batch_size: int, mesh, log=None) -> int:
    """config eval.batch_size (windows per step, global) -> this process's rows per step.

    The global batch is rounded up to a multiple of the mesh's data x fsdp devices (log says so,
    on process 0, when that changes it), so that every process's rows split evenly over its own
    data x fsdp devices, as training's batch does.
    """
    shards, processes = mesh.shape['data'] * mesh.shape['fsdp'], jax.process_count()
    if shards % processes:
        raise ValueError(
            f'mesh: data x fsdp = {shards} devices do not split over {processes} '
            'processes; the evaluation batch is split over processes along them'
        )
    total = -(-batch_size // shards) * shards
    if total != batch_size and log is not None and jax.process_index() == 0:
        log(
            f"eval.batch_size {batch_size} -> {total}: a multiple of the mesh's data x fsdp = "
            f'{shards} devices'
        )
    return total // processes


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of an array sharded over its leading (batch) axis, in the order
    sharding.global_batch took them: the addressable shards by global row, each once (devices
    along 'tensor' hold the same rows)."""
    shards = {}
    for shard in x.addressable_shards:
        shards.setdefault(shard.index[0].start or 0, shard)
    return np.concatenate([np.asarray(shards[k].data) for k in sorted(shards)])


def sharded_predict(task: Task, variable_shardings, mesh):
    """task.predict jitted for the mesh: (variables on variable_shardings, a global batch over
    data x fsdp) -> outputs over data x fsdp. The preflight lowers it from abstract inputs."""
    batch_sharding = shd.batch_sharding(mesh)
    return jax.jit(
        task.predict,
        in_shardings=(variable_shardings, batch_sharding),
        out_shardings=batch_sharding,
    )


def make_sharded_predict_fn(
    cfg, variables, variable_shardings, mesh, task: Task | None = None, trace_context=None
):
    """Evaluation's predict_fn with the model sharded as in training; run it on every process.

    variables: {'params': ..., **constants}, jax.Arrays already laid out as variable_shardings
    (training: loop.model_variables(state) and its arrays' shardings; a checkpoint:
    Task.place_variables). Nothing is gathered to a host. predict_fn(batch): this process's
    rows, a numpy batch (B_local, T, ...) with B_local splitting over this process's data x
    fsdp devices (eval_batch_size) -> this process's rows of the head outputs, numpy
    (B_local, T, ...). The batch is made global and sharded over ('data', 'fsdp') like
    training's (sharding.global_batch), so each call is a collective: every process calls it
    the same number of times (evaluate.evaluate pads the shares so). trace_context(mesh): the
    context manager entered around each call, so around the tracing; the default is training's,
    sharding.activation_sharding, so that the model is traced with the same activation
    constraints as in the train step.
    """
    task = task or Task(cfg)
    trace_context = trace_context or shd.activation_sharding
    jitted = sharded_predict(task, variable_shardings, mesh)

    def predict_fn(batch):
        batch = shd.global_batch(device_batch(batch, PREDICT_KEYS), mesh)
        with trace_context(mesh):
            out = jitted(variables, batch)
        return {k: local_rows(v) for k, v in out.items()}

    return predict_fn
