"""Every field of configs/common.py: a bad value fails validation naming it (table-driven), an
arch refuses a conflicting explicit setting, and every field is read by something.

The tables must list every field: adding a field to configs/common.py without a bad-value case
here (and a reader in the code) fails these tests.
"""

import dataclasses
import importlib
import os
import re

import pytest

from extpose_jax import losses
from extpose_jax.train import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float('nan'), float('inf')
MISSING = '/nonexistent/extpose-test-path'

# field -> (bad value, other settings it needs, expected text after 'config.<field>').
BAD = {
    'variant': ('huge', {}, 'use one of'),
    'seed': (1.5, {}, 'must be an int'),
    'body_models': (MISSING, {'data.root': '<tmp>'}, 'no such directory'),
    'data_dir': ('', {}, 'non-empty'),
    'synthetic_size': ('huge', {}, 'use one of'),
    'data.root': (MISSING, {'body_models': '<tmp>'}, 'no such directory'),
    'data.datasets': ((), {}, 'at least one'),
    'data.as_images': (('coco',), {}, 'is not in data.datasets'),
    'data.drop': ('coco', {}, 'is not in data.datasets'),
    'data.split': ('', {}, 'non-empty'),
    'data.num_frames': (0, {}, '>= 1'),
    'data.stride': (0, {}, '>= 1'),
    'data.clip_hop': (-1, {}, '>= 1'),
    'data.pad_short': ('yes', {}, 'True or False'),
    'data.image_fill': ('blur', {}, 'use one of'),
    'data.pose_source': ('oracle', {}, 'use one of'),
    'data.augment': (1, {}, 'True or False'),
    'data.batch_size': (0, {}, '>= 1'),
    'data.num_workers': (-1, {}, '>= 0'),
    'data.num_threads': (0, {}, '>= 1'),
    'data.read_buffer': (0, {}, '>= 1'),
    'data.skip_corrupt': ('no', {}, 'True or False'),
    'model.kind': ('dog', {}, 'use one of'),
    'model.size': ('giant', {}, 'use one of'),
    'model.head_size': ('huge', {}, 'use one of'),
    'model.arch': ('resnet', {}, 'use one of'),
    'model.mask': ('sideways', {}, 'use one of'),
    'model.window': (-3, {}, 'int >= 0, or None'),
    'model.causal': ('yes', {}, 'True or False'),
    'model.head_context': ('neither', {}, 'use one of'),
    'model.pose_form': ('dots', {}, 'use one of'),
    'model.modality_dropout': (NAN, {}, 'probability'),
    'model.drop_path_rate': (1.0, {}, 'rate in [0, 1)'),
    'model.dtype': ('float16', {}, 'use one of'),
    'model.attention': ('flash', {}, 'use one of'),
    'model.remat': ('yes', {}, 'True or False'),
    'model.mean_params': (MISSING + '.npz', {}, 'no such file'),
    'init.checkpoint': (MISSING, {}, 'no such file or directory'),
    'optim.lr': (NAN, {}, 'finite number >= 0'),
    'optim.weight_decay': (-1e-3, {}, 'finite number >= 0'),
    'optim.schedule': ('step', {}, 'use one of'),
    'optim.warmup_steps': (-1, {}, '>= 0'),
    'optim.clip_norm': (INF, {}, 'finite number > 0, or None'),
    'optim.trainable': ('everything', {}, 'use one of'),
    'loss.kp3d': (INF, {}, 'finite number >= 0'),
    'loss.kp2d': (-0.01, {}, 'finite number >= 0'),
    'loss.global_orient': (NAN, {}, 'finite number >= 0'),
    'loss.body_pose': (-INF, {}, 'finite number >= 0'),
    'loss.betas': (NAN, {}, 'finite number >= 0'),
    'loss.adversarial': (INF, {}, 'finite number >= 0'),
    'loss.use_adversarial': ('yes', {}, 'True or False'),
    'loss.normalize': ('max', {}, 'use one of'),
    'train.steps': (0, {}, '>= 1'),
    'train.grad_accum': (3, {}, 'must divide data.batch_size'),
    'train.log_every': (0, {}, '>= 1'),
    'train.checkpoint_every': (0, {}, '>= 1'),
    'train.keep': (0, {}, '>= 1'),
    'train.skip_nonfinite': ('yes', {}, 'True or False'),
    'eval.batch_size': (0, {}, '>= 1, or None'),
    'eval.hop': (0, {}, 'int >= 1, or None'),
    'eval.overlays': (-1, {}, '>= 0'),
    'evaluators.pw3d.dataset': ('freihand', {}, "scores mano models; model.kind='smpl'"),
    'evaluators.pw3d.split': ('', {}, 'non-empty'),
    'evaluators.pw3d.every': (-1, {}, 'int >= 0 (0: never), or None'),
    'evaluators.pw3d.max_frames': (0, {}, '>= 1, or None'),
    'evaluators.pw3d.pose_source': ('oracle', {}, "or None for the protocol's ('detections'"),
    'preflight.enabled': ('yes', {}, 'True or False'),
    'preflight.compile': ('sometimes', {}, 'use one of'),
    'preflight.memory_gb': (NAN, {}, 'finite number > 0'),
    'preflight.max_run_hours': (INF, {}, 'finite number > 0'),
    'mesh.data': (0, {}, '>= 1, or -1'),
    'mesh.fsdp': (-2, {}, '>= 1, or -1'),
    'mesh.tensor': (0, {}, '>= 1, or -1'),
}

# More bad values of fields above: edges of a range, and values that only clash with another.
MORE = [
    ('eval.hop', 5, {}, 'at most data.num_frames=4'),  # the small video config has T = 4
    ('evaluators.pw3d.max_frames', -2, {}, '>= 1, or None'),
    ('evaluators.pw3d.dataset', 'coco', {}, 'use one of'),
    ('optim.clip_norm', 0.0, {}, '> 0, or None'),
    ('optim.lr', INF, {}, 'finite number'),
    ('model.drop_path_rate', NAN, {}, 'rate in [0, 1)'),
    ('data.datasets', (('3dpw', NAN),), {}, 'finite weight'),
    ('data.datasets', (('3dpw', 1.0), ('3dpw', 2.0)), {}, 'twice'),
    ('data.drop', '3dpw', {}, 'drops every dataset'),
    ('data.drop', ('3dpw',), {}, 'comma-separated names in one string'),
    ('mesh.fsdp', -1, {}, 'at most one axis'),  # mesh.data is -1 already
    ('optim.warmup_steps', 160, {'optim.schedule': 'warmup_cosine'}, 'below train.steps'),
    ('body_models', '<tmp>', {}, 'set both'),  # data.root left empty
    ('evaluators.pw3d.dataset', '3dpw', {'model.kind': 'mano'}, 'scores smpl models'),
]

# An arch that implies settings refuses an explicit conflicting one, naming both fields.
CONFLICTS = [
    ('image', 'model.window', 1),
    ('image', 'model.causal', True),
    ('image', 'model.mask', 'frame'),
    ('late_fusion', 'model.mask', 'full'),
    ('rgb_only', 'model.head_context', 'skeleton'),
    ('temporal_head', 'model.mask', 'extpose'),
]


def _small():
    return importlib.import_module('configs.video').get_config('small')


def leaves(cfg, prefix=''):
    out = []
    for key, value in cfg.items():
        if hasattr(value, 'items'):
            out += leaves(value, f'{prefix}{key}.')
        else:
            out.append(prefix + key)
    return out


def _set(cfg, field, value):
    node = cfg
    *groups, key = field.split('.')
    for g in groups:
        node = node[g]
    with cfg.ignore_type():
        node[key] = value


def _fails(cfg, field, why, tmp_path):
    with pytest.raises(config_lib.ConfigError) as e:
        config_lib.validate(cfg)
    message = str(e.value)
    assert message.startswith(f'config.{field}'), message
    assert why in message, message


def test_every_field_has_a_bad_value_case():
    fields = set(leaves(_small()))
    assert fields == set(BAD), (
        f'fields without a case: {sorted(fields - set(BAD))}; '
        f'cases without a field: {sorted(set(BAD) - fields)}'
    )


@pytest.mark.parametrize('name', ['image', 'video', 'hand', 'hand_video'])
def test_every_field_can_be_set_by_a_flag(name):
    """The command line reaches every field: each one set to its own value through
    ml_collections' flag parser (which cannot parse a path segment such as '3dpw')."""
    from absl import flags
    from ml_collections import config_flags

    cfg = importlib.import_module(f'configs.{name}').get_config('small')
    argv = ['prog', f'--config={REPO}/configs/{name}.py:small']
    for field in leaves(cfg):
        node = cfg
        for g in field.split('.'):
            node = node[g]
        if isinstance(node, (bool, int, float, str)):  # a None or a tuple has no one-word form
            argv.append(f'--config.{field}={node}')
    values = flags.FlagValues()
    # The override flags are defined from the command line, as run_train.py's are from sys.argv.
    config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv)
    values(argv)
    assert values.config.to_dict() == cfg.to_dict()


@pytest.mark.parametrize('field', sorted(BAD))
def test_bad_value_fails_naming_the_field(field, tmp_path):
    value, others, why = BAD[field]
    cfg = _small()
    config_lib.validate(cfg)  # the base is fine: the one change below is what fails
    for other, v in others.items():
        _set(cfg, other, str(tmp_path) if v == '<tmp>' else v)
    _set(cfg, field, value)
    _fails(cfg, field, why, tmp_path)


@pytest.mark.parametrize('field, value, others, why', MORE)
def test_edge_and_clashing_values_fail_naming_the_field(field, value, others, why, tmp_path):
    cfg = _small()
    for other, v in others.items():
        _set(cfg, other, v)
    _set(cfg, field, str(tmp_path) if value == '<tmp>' else value)
    _fails(cfg, 'data.root' if field == 'body_models' else field, why, tmp_path)


@pytest.mark.parametrize('arch, field, value', CONFLICTS)
def test_arch_refuses_a_conflicting_explicit_setting(arch, field, value):
    cfg = _small()
    _set(cfg, 'model.arch', arch)
    if arch == 'temporal_head':
        _fails(cfg, field, 'within-frame mask', None)  # temporal_head's own rule
        return
    config_lib.validate(cfg)  # the arch with defaults is fine
    _set(cfg, field, value)
    with pytest.raises(config_lib.ConfigError, match=f'config.{field}.*model.arch={arch!r}'):
        config_lib.validate(cfg)


def test_arch_accepts_the_value_it_implies():
    cfg = _small()
    _set(cfg, 'model.arch', 'image')
    _set(cfg, 'model.mask', 'multimodal')
    config_lib.validate(cfg)


def test_preflight_may_describe_paths_of_another_machine():
    cfg = _small()
    _set(cfg, 'init.checkpoint', MISSING)
    config_lib.validate(cfg, check_paths=False)


# Fields read by name through a loop rather than an attribute access.
_DYNAMIC = {f'loss.{f.name}' for f in dataclasses.fields(losses.LossWeights)} | {
    f'mesh.{a}' for a in ('data', 'fsdp', 'tensor')
}
_SOURCES = ('extpose_jax', 'data_pipelines', 'run_train.py', 'run_eval.py', 'eval_torch.py')


def _runtime_source() -> str:
    """The code that uses a config (not configs/, and not the validation half of config.py)."""
    texts = []
    for top in _SOURCES:
        path = os.path.join(REPO, top)
        files = (
            [path]
            if path.endswith('.py')
            else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith('.py')]
        )
        for f in files:
            with open(f) as fh:
                text = fh.read()
            if f.endswith(os.path.join('train', 'config.py')):
                text = text[
                    text.index(
                        '# ---------------------------------------------------------'
                        '--------------------- builders'
                    ) :
                ]
            texts.append(text)
    return '\n'.join(texts)


def test_every_field_is_read_by_something():
    source = _runtime_source()
    unread = [
        f
        for f in leaves(_small())
        if f not in _DYNAMIC and not re.search(rf'\.{re.escape(f.split(".")[-1])}\b', source)
    ]
    assert not unread, f'config fields nothing reads (remove them or use them): {unread}'
    for field in _DYNAMIC:
        assert field in leaves(_small()), field
