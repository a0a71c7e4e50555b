"""PyTorch <-> JAX conversion: upstream key sets, exact round trips, the CLIs, bad input."""

import collections
import json
import os
import sys
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from extpose_jax.convert import from_torch, keymap, to_torch
from extpose_jax.models import discriminator, extpose, vit

# The upstream checkpoints' layouts (key -> shape), dumped from the upstream PyTorch modules.
UPSTREAM_LAYOUT = os.path.join(os.path.dirname(__file__), 'fixtures', 'reference_state_dicts.json')
# Tiny ViT at the real 256 x 192 input (193 position slots): what a small real checkpoint holds.
TINY = vit.ViTConfig.of('tiny')


@pytest.fixture(scope='module')
def reference():
    with open(UPSTREAM_LAYOUT) as f:
        return json.load(f)


def _abstract_variables(kind, config, with_discriminator=True, head_size='hmr2'):
    """ShapeDtypeStructs of an ExtPose model (+ discriminator): nothing is allocated."""
    j = 18 if kind == 'smpl' else 21
    model = extpose.ExtPose(
        extpose.ExtPoseConfig(
            vit=config,
            kind=kind,
            keypoint_layout='openpose18' if kind == 'smpl' else 'hand21',
            head_size=head_size,
        )
    )
    h, w = config.image_size
    variables = nn.unbox(
        jax.eval_shape(
            model.init,
            jax.random.PRNGKey(0),
            jnp.zeros((1, 1, 1, h, w, 3)),
            jnp.zeros((1, 1, 1, j, 3)),
        )
    )
    if with_discriminator:
        n = discriminator.num_joints(kind)
        disc = jax.eval_shape(
            discriminator.Discriminator(kind).init,
            jax.random.PRNGKey(0),
            jnp.zeros((1, n, 3, 3)),
            jnp.zeros((1, 10)),
        )
        variables[discriminator.DISCRIMINATOR] = nn.unbox(disc)['params']
    return variables


def _state_dict(kind, config=TINY, discriminator=True, seed=0):
    return keymap.random_state_dict(
        keymap.model_rows(kind, keymap.vit_dims(config), discriminator), seed
    )


def _lightning(state_dict, extra=None):
    """What a Lightning .ckpt holds around the weights (plus optimiser states, not needed here)."""
    sd = collections.OrderedDict(
        (k, torch.from_numpy(np.asarray(v))) for k, v in state_dict.items()
    )
    sd.update(extra or {})
    return {
        'state_dict': sd,
        'epoch': 35,
        'global_step': 1_000_000,
        'pytorch-lightning_version': '2.0.0',
    }


def _assert_trees_equal(a, b):
    fa, fb = (dict(jax.tree_util.tree_leaves_with_path(t)) for t in (a, b))
    assert fa.keys() == fb.keys()
    for k in fa:
        x, y = np.asarray(fa[k]), np.asarray(fb[k])
        assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), (
            jax.tree_util.keystr(k)
        )


# ----------------------------------------------------------------------------- upstream layout


@pytest.mark.slow
@pytest.mark.parametrize('kind,name', [('smpl', 'hmr2'), ('mano', 'hamer')])
def test_vit_h_export_has_exactly_the_upstream_keys_and_shapes(reference, kind, name):
    shapes = to_torch.export_state_dict(_abstract_variables(kind, vit.ViTConfig.of('huge')))
    ref = reference[name]
    assert list(shapes) == list(ref)  # same keys, in upstream's registration order
    assert {k: list(v.shape) for k, v in shapes.items()} == ref
    # Without a trained discriminator: exactly backbone.* + the head (with its init_* buffers).
    no_disc = to_torch.export_state_dict(_abstract_variables(kind, vit.ViTConfig.of('huge'), False))
    assert list(no_disc) == [k for k in ref if not k.startswith('discriminator.')]


@pytest.mark.slow
def test_import_of_the_reference_layout_builds_the_flax_tree_of_the_model(reference):
    """The other direction, abstractly: upstream shapes -> Flax shapes == the model's init."""
    sd = {k: jax.ShapeDtypeStruct(tuple(v), jnp.float32) for k, v in reference['hmr2'].items()}
    sd['smpl.shapedirs'] = jax.ShapeDtypeStruct((6890, 3, 10), jnp.float32)  # left behind
    got, meta = from_torch.import_state_dict(sd, 'hmr2')
    assert meta['vit_size'] == 'huge' and meta['parts'] == ['backbone', 'head', 'discriminator']
    want = _abstract_variables('smpl', vit.ViTConfig.of('huge'))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), got) == jax.tree.map(
        lambda x: (x.shape, x.dtype), want
    )


# ----------------------------------------------------------------------------- exact round trips


@pytest.mark.slow
@pytest.mark.parametrize('kind,head_size', [('smpl', 'hmr2'), ('mano', 'tiny')])
def test_jax_torch_jax_is_bit_identical(tmp_path, kind, head_size):
    """Random Flax values -> .ckpt on disk -> back: every leaf equal bit for bit (qkv, convs,
    per-head kernels, the discriminator's 1x1 convs, the init_* buffers); the head's size is
    read off the weights both ways."""
    rng = np.random.default_rng(1)
    variables = jax.tree.map(
        lambda s: rng.standard_normal(s.shape).astype(np.float32),
        _abstract_variables(kind, TINY, head_size=head_size),
    )
    path = str(tmp_path / 'x.ckpt')
    to_torch.write_checkpoint(path, to_torch.export_state_dict(variables), {'kind': kind})
    back, meta = from_torch.import_checkpoint(path, {'smpl': 'hmr2', 'mano': 'hamer'}[kind])
    _assert_trees_equal(back, variables)
    assert meta['vit_size'] == 'tiny' and meta['kind'] == kind
    assert meta['head_size'] == head_size


def test_a_head_of_no_known_size_is_named():
    sd = keymap.random_state_dict(
        keymap.model_rows('smpl', keymap.vit_dims(TINY), head_size='tiny'), seed=4
    )
    odd = {k: v for k, v in sd.items() if '.layers.1.' not in k}  # a 1-layer decoder
    with pytest.raises(keymap.ConversionError, match=r'smpl_head: a head of depth 1, width 256'):
        from_torch.import_state_dict(odd, 'hmr2')


def test_torch_jax_torch_is_bit_identical():
    sd = _state_dict('mano', seed=2)
    variables, _ = from_torch.import_state_dict(sd, 'hamer')
    again = to_torch.export_state_dict(variables)
    assert list(again) == list(sd)
    for k in sd:
        assert again[k].dtype == sd[k].dtype and np.array_equal(again[k], sd[k]), k


def test_linear_rule_matches_the_pytorch_layer():
    """The numbers behind the rules: a torch Linear / Conv2d and its converted Flax kernel agree."""
    lin, conv = torch.nn.Linear(6, 9), torch.nn.Conv2d(3, 4, 2, stride=2)
    x, img = torch.randn(5, 6), torch.randn(1, 3, 4, 4)
    rows = (
        keymap.Row('w', ('k',), (9, 6), (6, 9), 'linear'),
        keymap.Row('c', ('c',), (4, 3, 2, 2), (2, 2, 3, 4), 'conv'),
    )
    flax = keymap.from_torch({'w': lin.weight, 'c': conv.weight}, rows)
    np.testing.assert_allclose(
        x.numpy() @ flax['k'] + lin.bias.detach().numpy(), lin(x).detach().numpy(), atol=1e-6
    )
    out = jax.lax.conv_general_dilated(
        img.numpy().transpose(0, 2, 3, 1),
        flax['c'],
        (2, 2),
        'VALID',
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
    )
    want = (conv(img) - conv.bias[:, None, None]).detach().numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, want, atol=1e-5)


# ----------------------------------------------------------------------------- importing files


def _stand_in_module():
    """A class from a library this machine does not have (Lightning pickles its cfg: yacs)."""
    mod = types.ModuleType('fake_yacs_config')

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = 'fake_yacs_config', 'CfgNode'
    mod.CfgNode = CfgNode
    return mod


@pytest.mark.slow
def test_cli_imports_hmr2_ckpt_and_exports_it_back(tmp_path, capsys):
    sd = _state_dict('smpl', seed=3)
    extra = {
        'smpl.shapedirs': torch.zeros(6890, 3, 10),
        'smpl.faces_tensor': torch.zeros(13776, 3, dtype=torch.long),
        'initialized': torch.tensor(True),
    }
    ckpt = _lightning(sd, extra)
    mod = _stand_in_module()
    sys.modules[mod.__name__] = mod
    try:
        ckpt['hyper_parameters'] = {'cfg': mod.CfgNode(MODEL={'IMAGE_SIZE': 256})}
        torch.save(ckpt, tmp_path / 'hmr2.ckpt')
    finally:
        del sys.modules[mod.__name__]  # reading must not need the class

    out = tmp_path / 'vars'
    meta = from_torch.main(
        ['--ckpt', str(tmp_path / 'hmr2.ckpt'), '--kind', 'hmr2', '--out', str(out)]
    )
    assert (
        'discriminator' in capsys.readouterr().out
    )  # written, for runs with the adversarial prior
    assert meta['parts'] == ['backbone', 'head', 'discriminator'] and meta['kind'] == 'smpl'

    from extpose_jax.train import checkpoint

    variables, saved_meta = checkpoint.load_variables(str(out))
    assert (
        saved_meta['source'] == str(tmp_path / 'hmr2.ckpt')
        and saved_meta['vit']['width'] == TINY.width
    )
    np.testing.assert_array_equal(
        variables['constants']['head']['init_body_pose'], sd['smpl_head.init_body_pose']
    )
    np.testing.assert_array_equal(
        variables['params']['backbone']['blocks_1']['attn']['qkv']['kernel'],
        sd['backbone.blocks.1.attn.qkv.weight'].T,
    )
    np.testing.assert_array_equal(
        variables['discriminator']['D_alljoints_out']['kernel'],
        sd['discriminator.D_alljoints_out.weight'].T,
    )

    to_torch.main(['--workdir', str(out), '--out', str(tmp_path / 'back.ckpt')])
    back = torch.load(tmp_path / 'back.ckpt', weights_only=True)
    want = list(sd)  # discriminator.* included: the import kept it
    assert list(back['state_dict']) == want
    for k in want:
        assert torch.equal(back['state_dict'][k], torch.from_numpy(sd[k])), k
    assert back['extpose']['kind'] == 'smpl'


def test_vitpose_checkpoints(tmp_path):
    rows = keymap.vit_rows(**keymap.vit_dims(TINY))
    sd = keymap.random_state_dict(rows, seed=4)
    want = keymap.from_torch(sd, rows)
    head = {
        'keypoint_head.deconv_layers.0.weight': np.zeros((192, 256, 4, 4), np.float32),
        'keypoint_head.deconv_layers.1.num_batches_tracked': np.zeros((), np.int64),
        'keypoint_head.final_layer.weight': np.zeros((17, 256, 1, 1), np.float32),
    }
    # mmpose TopDown checkpoint: backbone.* + the heatmap head (dropped).
    torch.save(
        {'state_dict': {k: torch.from_numpy(v) for k, v in {**sd, **head}.items()}, 'meta': {}},
        tmp_path / 'vitpose.pth',
    )
    got, meta = from_torch.import_checkpoint(str(tmp_path / 'vitpose.pth'), 'vitpose')
    _assert_trees_equal(got, want)
    assert meta['parts'] == ['backbone'] and meta['kind'] is None
    # HMR 2.0's vitpose_backbone.pth: the same without the prefix.
    bare = {k[len('backbone.') :]: v for k, v in sd.items()}
    _assert_trees_equal(from_torch.import_state_dict(bare, 'vitpose')[0], want)

    # ViTPose+: fc2 holds C - P outputs, each expert P more; the plain ViT joins fc2 with one.
    part, moe = 64, dict(bare)
    for i in range(TINY.depth):
        for leaf in ('weight', 'bias'):
            full = bare[f'blocks.{i}.mlp.fc2.{leaf}']
            moe[f'blocks.{i}.mlp.fc2.{leaf}'] = full[:-part]
            for e in range(3):
                moe[f'blocks.{i}.mlp.experts.{e}.{leaf}'] = (
                    full[-part:] if e == 1 else full[-part:] + 1
                )
    got, meta = from_torch.import_state_dict(moe, 'vitpose', expert=1)
    _assert_trees_equal(got, want)
    assert meta['vitpose_expert'] == 1
    with pytest.raises(
        from_torch.CheckpointError, match=r'3 experts per block: pass --expert 0..2'
    ):
        from_torch.import_state_dict(moe, 'vitpose')
    with pytest.raises(from_torch.CheckpointError, match='not a ViTPose\\+ mixture'):
        from_torch.import_state_dict(bare, 'vitpose', expert=0)


# ----------------------------------------------------------------------------- bad input


def _cli_fails(tmp_path, ckpt_obj, kind, match, raw=None):
    path = tmp_path / 'in.ckpt'
    if raw is not None:
        path.write_bytes(raw)
    else:
        torch.save(ckpt_obj, path)
    out = tmp_path / 'out'
    with pytest.raises((ValueError, OSError), match=match):
        from_torch.main(['--ckpt', str(path), '--kind', kind, '--out', str(out)])
    assert not out.exists() and os.listdir(tmp_path) == ['in.ckpt']  # nothing left behind


def test_checkpoint_of_another_architecture_lists_what_is_wrong(tmp_path):
    resnet = {'conv1.weight': torch.zeros(64, 3, 7, 7), 'fc.weight': torch.zeros(1000, 2048)}
    _cli_fails(
        tmp_path,
        _lightning(resnet),
        'hmr2',
        r'--kind hmr2: \d+ missing: backbone\.blocks\.0\.attn.*2 unexpected: conv1\.weight, fc\.weight',
    )


def test_mis_shaped_and_partial_checkpoints_fail_listing_the_keys(tmp_path):
    sd = _state_dict('smpl', seed=5)
    sd['backbone.blocks.2.attn.qkv.weight'] = np.zeros((10, 10), np.float32)
    del sd['smpl_head.deccam.bias']
    with pytest.raises(keymap.ConversionError) as err:
        from_torch.import_state_dict(sd, 'hmr2')
    assert err.value.missing == ['smpl_head.deccam.bias']
    assert err.value.mis_shaped == [
        ('backbone.blocks.2.attn.qkv.weight', (10, 10), (3 * TINY.width, TINY.width))
    ]
    assert 'mis-shaped: backbone.blocks.2.attn.qkv.weight (10, 10) != expected (576, 192)' in str(
        err.value
    )


def test_truncated_file(tmp_path):
    torch.save(_lightning(_state_dict('smpl', discriminator=False)), tmp_path / 'full.ckpt')
    raw = (tmp_path / 'full.ckpt').read_bytes()
    (tmp_path / 'full.ckpt').unlink()
    _cli_fails(
        tmp_path, None, 'hmr2', 'not a readable PyTorch checkpoint', raw=raw[: len(raw) // 2]
    )


@pytest.mark.parametrize(
    'given,kind,hint',
    [
        ('mano', 'hmr2', 'use --kind hamer'),
        ('smpl', 'hamer', 'use --kind hmr2'),
        ('smpl', 'vitpose', 'use --kind hmr2'),
        ('vitpose', 'hamer', 'use --kind vitpose'),
    ],
)
def test_wrong_kind_says_which_kind_it_looks_like(tmp_path, given, kind, hint):
    sd = (
        keymap.random_state_dict(keymap.vit_rows(**keymap.vit_dims(TINY)))
        if given == 'vitpose'
        else _state_dict(given, discriminator=False)
    )
    _cli_fails(tmp_path, _lightning(sd), kind, hint)


def test_cli_rejects_unknown_kind_and_existing_output(tmp_path):
    with pytest.raises(SystemExit):
        from_torch.main(['--ckpt', 'x', '--kind', 'resnet', '--out', str(tmp_path / 'o')])
    with pytest.raises(FileExistsError, match='exists'):
        from_torch.main(['--ckpt', 'x', '--kind', 'hmr2', '--out', str(tmp_path)])
    with pytest.raises(FileNotFoundError, match='no such checkpoint file'):
        from_torch.import_checkpoint(str(tmp_path / 'missing.ckpt'), 'hmr2')


@pytest.mark.slow
def test_export_of_an_incomplete_tree_fails_and_writes_nothing(tmp_path):
    sd = _state_dict('smpl', discriminator=False, seed=6)
    variables, _ = from_torch.import_state_dict(sd, 'hmr2')
    del variables['params']['head']['decshape']
    variables['params']['backbone']['extra'] = {'kernel': np.zeros((2, 2), np.float32)}
    with pytest.raises(
        keymap.ConversionError,
        match=r'missing: params/head/decshape/bias, '
        r'params/head/decshape/kernel.*unexpected: params/backbone/extra/kernel',
    ):
        to_torch.export_state_dict(variables)
    from extpose_jax.train import checkpoint

    checkpoint.save_variables(str(tmp_path / 'vars'), variables, {})
    with pytest.raises(keymap.ConversionError):
        to_torch.main(['--workdir', str(tmp_path / 'vars'), '--out', str(tmp_path / 'out.ckpt')])
    assert sorted(os.listdir(tmp_path)) == ['vars']


@pytest.mark.slow
def test_imported_variables_initialise_training(tmp_path):
    """What run_train.py does with --config.init.checkpoint=DIR: every key lands in the model."""
    import optax

    from extpose_jax.train import checkpoint, loop, sharding
    from extpose_jax.train import state as state_lib

    sd = _state_dict('smpl', discriminator=False, seed=9)
    variables, meta = from_torch.import_state_dict(sd, 'hmr2')
    checkpoint.save_variables(str(tmp_path / 'vars'), variables, meta)
    model = extpose.ExtPose(extpose.ExtPoseConfig(vit=TINY))
    args = (
        jax.ShapeDtypeStruct((1, 1, 1, 256, 192, 3), jnp.uint8),
        jax.ShapeDtypeStruct((1, 1, 1, 18, 3), jnp.float32),
    )
    mesh = sharding.make_mesh({'data': 1, 'fsdp': -1})
    state, shardings = state_lib.create_train_state(
        model, optax.adamw(1e-4), jax.random.PRNGKey(0), args, mesh
    )
    state = loop.init_from(state, shardings, str(tmp_path / 'vars'))
    _assert_trees_equal(loop.model_variables(state), variables)


class _Exploit:
    """Unpickling this would run code (creates a file) under a plain torch.load(weights_only=False)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").close()',)


def test_reading_never_runs_code_from_the_file(tmp_path):
    """A checkpoint naming exec is refused (a foreign config class would be an inert stand-in)."""
    marker = tmp_path / 'ran'
    ckpt = _lightning(_state_dict('smpl', discriminator=False))
    ckpt['hyper_parameters'] = _Exploit(str(marker))
    torch.save(ckpt, tmp_path / 'x.ckpt')
    with pytest.raises(
        from_torch.CheckpointError, match=r'x\.ckpt: refusing to unpickle __builtin__\.exec'
    ):
        from_torch.import_checkpoint(str(tmp_path / 'x.ckpt'), 'hmr2')
    assert not marker.exists()


@pytest.mark.slow
def test_cli_process_exits_with_a_one_line_error(tmp_path):
    import subprocess

    (tmp_path / 'bad.ckpt').write_bytes(b'PK\x03\x04 not really a zip')
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'extpose_jax.convert.from_torch',
            '--ckpt',
            str(tmp_path / 'bad.ckpt'),
            '--kind',
            'hmr2',
            '--out',
            str(tmp_path / 'out'),
        ],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        env={**os.environ, 'JAX_PLATFORMS': 'cpu'},
    )
    # A malformed file is a data error (exit 1), one line naming the program and the file.
    assert (
        proc.returncode == 1
        and proc.stderr.startswith('from_torch.py: ')
        and 'Traceback' not in proc.stderr
    )
    assert 'not a readable PyTorch checkpoint' in proc.stderr and not (tmp_path / 'out').exists()
