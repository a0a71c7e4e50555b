"""Shared config skeleton: every configs/*.py is `base(...)` plus its own choices.

Field groups (validated by extpose_jax/train/config.py before anything runs):
  data.*    records root, mixture (and data.drop to switch one off), clip length T, 2D-pose
            source, per-process loading
  model.*   ViT size, architecture / ablation, mask, pose form, precision, remat
  init.*    start a new run from a variables checkpoint (convert.from_torch output or a training workdir)
  optim.*   AdamW, schedule, clipping, trainable-parameter strategy
  loss.*    HMR 2.0 / HaMeR loss weights, normalisation, optional adversarial prior
  train.*   steps, gradient accumulation, logging / checkpoint / eval cadence
  eval.*    what every evaluation shares: window batch, hop, overlays
  evaluators.<name>.*  the named held-out evaluations (dataset, split, cadence, frames)
  preflight.*  the per-device budget check before any data (memory, FLOPs, run time)
  mesh.*    device mesh sizes over ('data', 'fsdp', 'tensor'); -1 = the remaining devices

Variants are parsed from the `:arg` of --config=configs/X.py:arg, e.g. `small` or
`small,frames=8`: the first word picks the variant, key=value pairs set extras.
"""

import ml_collections
from ml_collections import config_dict

from extpose_jax.train.config import VARIANTS


def parse_arg(arg, config_file: str, **defaults) -> dict:
    """'small,frames=8' -> {'variant': 'small', 'frames': 8}; values typed like the defaults."""
    out = {'variant': 'paper', **defaults}
    for i, part in enumerate(p for p in (arg or '').split(',') if p):
        if '=' not in part:
            if i:
                raise ValueError(
                    f'{config_file}: {part!r} must be key=value (only the first '
                    'word may be a bare variant name)'
                )
            out['variant'] = part
            continue
        key, value = part.split('=', 1)
        if key not in out:
            raise ValueError(f'{config_file}: unknown option {key!r}; known: {sorted(out)}')
        out[key] = type(out[key])(value) if out[key] is not None else value
    if out['variant'] not in VARIANTS:
        raise ValueError(
            f'{config_file}: unknown variant {out["variant"]!r}; use one of {VARIANTS}'
        )
    return out


def evaluator(dataset: str, split: str = 'test', every=None) -> ml_collections.ConfigDict:
    """One named evaluation. every: None = at the start and the end of a run; n > 0 = also
    every n steps; 0 = never (switched off without removing it)."""
    e = ml_collections.ConfigDict()
    e.dataset = dataset  # a protocol name: '3dpw' | 'freihand' | 'hint'
    e.split = split
    e.every = config_dict.FieldReference(every, field_type=int)
    e.max_frames = config_dict.placeholder(int)  # score the first N frames; None: all of them
    # The 2D-pose input: 'detections' | 'noisy_gt' | 'gt' (labelled in metrics.json); None: the
    # protocol's: the records' detections (3DPW's poses2d; the hand converters' detections file).
    e.pose_source = config_dict.placeholder(str)
    return e


def base(kind: str, variant: str, num_frames: int) -> ml_collections.ConfigDict:
    """The paper's settings (ViT-H, HMR 2.0 losses, AdamW 1e-5 / wd 1e-3, batch 32, 50k steps);
    `small` shrinks them to a tiny ViT that trains on 2 CPU cores, `base` to ViT-B."""
    small = variant == 'small'
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.seed = 0
    # Empty: the built-in synthetic default is built under data_dir (procedural body models,
    # rendered raw datasets, converted records). Otherwise: the folder holding smpl/ or mano/
    # model files and SMPL_to_J19.pkl, and data.root with the records.
    c.body_models = config_dict.placeholder(str)
    c.data_dir = 'data'
    # The synthetic default's size (data_pipelines/synthetic/raw_common.SIZES), cached under
    # <data_dir>/synthetic/<size>: 'small' for the README's run, 'large' for the ablations.
    c.synthetic_size = 'small'

    c.data = ml_collections.ConfigDict()
    c.data.root = config_dict.placeholder(str)  # records root; empty = the synthetic default
    c.data.datasets = (('3dpw', 1.0),) if kind == 'smpl' else (('freihand', 1.0),)  # (name, weight)
    c.data.as_images = ()  # dataset names fed as single frames in video configs
    # Comma-separated names of data.datasets to leave out (--config.data.drop=mpii_train,ava_train):
    # one flag switches a listed dataset off without retyping the mixture.
    c.data.drop = ''
    c.data.split = 'train'
    c.data.num_frames = num_frames  # T (1: the image model)
    c.data.stride = 1
    c.data.clip_hop = 1
    c.data.pad_short = True
    c.data.image_fill = 'pad'
    c.data.pose_source = 'noisy_gt'  # 'gt' | 'noisy_gt' | 'detections'
    c.data.augment = True
    c.data.batch_size = 2 if small else 32  # GLOBAL, in clips (split over processes)
    c.data.num_workers = 0  # grain workers per process (part of the state)
    c.data.num_threads = 2
    c.data.read_buffer = 8
    c.data.skip_corrupt = False  # True: a corrupt record is skipped and counted

    c.model = ml_collections.ConfigDict()
    c.model.kind = kind  # 'smpl' (HMR 2.0 head) | 'mano' (HaMeR head)
    c.model.size = {'small': 'tiny', 'base': 'base'}.get(variant, 'huge')
    # HMR 2.0 / HaMeR's decoder ('hmr2', what their checkpoints hold) or a 'tiny' one for CPUs.
    c.model.head_size = 'tiny' if small else 'hmr2'
    # 'extpose' (default) | 'rgb_only' | 'heatmap' | 'late_fusion' | 'image' (config rewrites of
    # ExtPose) | 'channel_concat' | 'keypoint_tokens' (1D pose form) | 'controlnet' |
    # 'temporal_head' (baselines with new parameters).
    c.model.arch = 'extpose'
    c.model.mask = 'extpose'  # 'frame' | 'multimodal' | 'extpose' | 'full'
    c.model.window = config_dict.placeholder(int)  # frames either side; None: the whole clip
    c.model.causal = False
    c.model.head_context = 'both'  # 'rgb' | 'skeleton' | 'both'
    c.model.pose_form = 'skeleton'  # 'skeleton' | 'heatmap'
    c.model.modality_dropout = 0.5  # p(one whole modality dropped) per clip
    c.model.drop_path_rate = config_dict.placeholder(float)  # None: ViTPose's for the size
    c.model.dtype = 'float32' if small else 'bfloat16'
    c.model.attention = 'blockwise'  # 2.3x faster than 'dense' even at T=4 on CPU
    c.model.remat = not small
    c.model.mean_params = config_dict.placeholder(str)  # smpl/mano_mean_params.npz

    c.init = ml_collections.ConfigDict()
    c.init.checkpoint = config_dict.placeholder(str)  # variables dir or training workdir

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 1e-4 if small else 1e-5
    c.optim.weight_decay = 1e-3
    c.optim.schedule = 'constant'  # 'constant' | 'warmup_cosine'
    c.optim.warmup_steps = 0
    c.optim.clip_norm = config_dict.placeholder(float)  # global-norm clip; None: no clipping
    c.optim.trainable = 'full'  # 'full' | 'qk_only' | 'first_half' | 'frozen_backbone'

    c.loss = ml_collections.ConfigDict()
    c.loss.kp3d = 0.05
    c.loss.kp2d = 0.01
    c.loss.global_orient = 0.001
    c.loss.body_pose = 0.001
    c.loss.betas = 0.0005
    c.loss.adversarial = 0.0005
    c.loss.use_adversarial = False  # HMR 2.0's discriminator prior (GT poses as real)
    c.loss.normalize = 'sum'  # upstream's; AdamW makes the scale moot

    c.train = ml_collections.ConfigDict()
    c.train.steps = 160 if small else 50_000
    # None: the preflight picks the fewest micro-batches whose step fits a device (the global
    # batch stays data.batch_size); an int fixes it.
    c.train.grad_accum = config_dict.placeholder(int)
    c.train.log_every = 10 if small else 50
    c.train.checkpoint_every = 50 if small else 1000
    c.train.keep = 3
    c.train.skip_nonfinite = False  # True: skip a non-finite update (counted), else stop

    # Shared by every evaluator: windows of data.num_frames frames, batched over the devices.
    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = config_dict.placeholder(int)  # GLOBAL windows; None: from the devices
    c.eval.hop = config_dict.placeholder(int)  # frames between window starts; None: T // 2
    c.eval.overlays = 8  # overlay PNGs per evaluation

    # Named held-out evaluations, each at its own cadence; results under eval/<name>/.
    c.evaluators = ml_collections.ConfigDict()
    # Named so that flags reach them (--config.evaluators.pw3d.every=500: ml_collections cannot
    # parse a path segment that starts with a digit, such as '3dpw'); the protocol is `dataset`.
    c.evaluators['pw3d' if kind == 'smpl' else 'freihand'] = evaluator(
        '3dpw' if kind == 'smpl' else 'freihand'
    )

    # Before any data is read: will the step fit the devices, how long will the run take
    # (extpose_jax/train/preflight.py; python -m extpose_jax.train.preflight shows the table).
    c.preflight = ml_collections.ConfigDict()
    c.preflight.enabled = True
    c.preflight.compile = 'auto'  # 'auto' (close cases) | 'always' | 'never'
    c.preflight.memory_gb = config_dict.placeholder(float)  # per device; None: the device's own
    c.preflight.max_run_hours = 720.0  # refuse longer runs (--force runs them anyway)

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c
