"""The paper configs' full mixtures (configs/mixtures.py): the published weights, the small
variants untouched, one flag to drop datasets, and the refusal before training when a listed
dataset has no records (fast: no model, no records read)."""

import importlib
import os

import pytest

from configs import mixtures
from data_pipelines import convert_webdataset, known_datasets, shards
from extpose_jax.train import config as config_lib
from extpose_jax.train import inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# reference_models.md §5.4, by the names the configs give them.
HMR2_PUBLISHED = {
    'h36m_train': 0.1,
    'mpii_train': 0.1,
    'coco_train_2014_pruned': 0.1,
    'coco_vitpose_train': 0.1,
    'mpi_inf_train': 0.02,
    'ava_train': 0.19,
    'aic_train': 0.19,
    'insta_train': 0.2,
}
HAMER_PUBLISHED = {
    'freihand': 0.25,
    'interhand26m_train': 0.25,
    'mtc_train': 0.1,
    'rhd_train': 0.05,
    'coco_wholebody_train': 0.1,
    'halpe_train': 0.05,
    'mpii_nzsl_train': 0.05,
    'ho3d_train': 0.05,
    'h2o3d_train': 0.05,
    'dexycb_train': 0.05,
}
# (config, mixture at paper / base scale, the dataset that stays video)
PAPER = [
    ('video', {'3dpw': 0.5, **HMR2_PUBLISHED}, '3dpw'),
    ('image', {'3dpw': 0.5, **HMR2_PUBLISHED}, None),
    ('hand', HAMER_PUBLISHED, None),
    ('hand_video', {'hint': 0.5, **HAMER_PUBLISHED}, 'hint'),
]
# The CPU demo trains on the synthetic default's records only, as before the mixtures.
SMALL = {
    'video': ((('3dpw', 1.0),), ()),
    'image': ((('3dpw', 1.0),), ()),
    'hand': ((('freihand', 0.7), ('hint', 0.3)), ()),
    'hand_video': ((('hint', 0.5), ('freihand', 0.5)), ('freihand',)),
}


def _config(name, arg=None):
    return importlib.import_module(f'configs.{name}').get_config(arg)


@pytest.mark.parametrize('variant', ['paper', 'base'])
@pytest.mark.parametrize('name, weights, video', PAPER)
def test_paper_configs_list_the_published_mixtures(name, weights, video, variant):
    cfg = _config(name, variant)
    assert dict(cfg.data.datasets) == weights
    assert set(cfg.data.as_images) == set(weights) - {video}
    assert sum(HMR2_PUBLISHED.values()) == pytest.approx(1.0)
    assert sum(HAMER_PUBLISHED.values()) == pytest.approx(1.0)


@pytest.mark.parametrize('name', sorted(SMALL))
def test_small_variants_keep_the_synthetic_default_datasets(name):
    cfg = _config(name, 'small')
    assert (tuple(cfg.data.datasets), tuple(cfg.data.as_images)) == SMALL[name]
    assert cfg.data.drop == ''


def test_every_listed_name_is_what_its_converter_command_writes():
    """Each paper dataset has a known source, a records-legal name, and the command the refusal
    prints writes a dataset of exactly that name (the tar converter names it after --out)."""
    listed = set(mixtures.names(mixtures.BODY + mixtures.HAND_VIDEO))
    assert listed <= set(known_datasets.SOURCES)
    for name in known_datasets.SOURCES:
        shards._check_name('dataset', name)  # what a records folder may be called
        out = known_datasets.convert_command(name, '/records').split('--out ')[1].split()[0]
        assert out == f'/records/{name}'
        assert convert_webdataset.default_name(out) == name
        folder = known_datasets.SOURCES[name].folder  # the spec's upstream name, '-' -> '_'
        assert not folder or convert_webdataset.default_name(folder) == name
    assert 'dataset_tars/h36m-train ' in known_datasets.convert_command('h36m_train', '/r')
    assert '<the MPII folder>' in known_datasets.convert_command('mpii_train', '/r')
    assert 'convert_hmr_npz' in known_datasets.convert_command('my_own', '/r')


def _parse(argv):
    """run_train.py's --config flag (same definition) on a fresh flag set."""
    from absl import flags
    from ml_collections import config_flags

    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=values, sys_argv=argv, lock_config=True)
    values(argv)
    return values.config


def test_one_flag_drops_datasets():
    cfg = _parse(
        ['prog', f'--config={REPO}/configs/video.py', '--config.data.drop=mpii_train,ava_train']
    )
    assert cfg.data.drop == 'mpii_train,ava_train'
    config_lib.validate(cfg, check_paths=False)
    names = [s.name for s in config_lib.pipeline_config(cfg, '/records').datasets]
    assert names == ['3dpw'] + [n for n in HMR2_PUBLISHED if n not in ('mpii_train', 'ava_train')]
    # the others keep their weights (the pipeline renormalises over what is left)
    assert dict(config_lib.mixture(cfg))['aic_train'] == 0.19


@pytest.mark.parametrize(
    'drop, why',
    [
        ('mpii', "config.data.drop='mpii': is not in data.datasets"),
        (','.join(['3dpw', *HMR2_PUBLISHED]), 'drops every dataset'),
    ],
)
def test_a_bad_drop_fails_validation(drop, why):
    cfg = _parse(['prog', f'--config={REPO}/configs/video.py', f'--config.data.drop={drop}'])
    with pytest.raises(config_lib.ConfigError, match=why):
        config_lib.validate(cfg, check_paths=False)


def _records(root, *names):
    for name in names:
        os.makedirs(root / name)
        (root / name / shards.DATASET_INFO).write_text('{}')


def test_a_missing_listed_dataset_is_refused_naming_folder_command_and_flag(tmp_path):
    cfg = _config('video')
    _records(
        tmp_path, '3dpw', *(n for n in HMR2_PUBLISHED if n not in ('h36m_train', 'mpii_train'))
    )
    with pytest.raises(inputs.InputError) as e:
        inputs.check(cfg, str(tmp_path), str(tmp_path))  # before any records or model files
    message = str(e.value)
    assert '\n' not in message
    h36m = tmp_path / 'h36m_train'
    assert message == (
        f"config.data.datasets: no records for 'h36m_train' in {h36m} (make them with: python -m "
        'data_pipelines.convert_webdataset --kind hmr2 --root '
        f'<hmr2_training_data>/dataset_tars/h36m-train --out {h36m}); '
        f"'mpii_train' in {tmp_path / 'mpii_train'} (make them with: python -m "
        'data_pipelines.convert_webdataset --kind hmr2 --root '
        '<hmr2_training_data>/dataset_tars/<the MPII folder> '
        f'--out {tmp_path / "mpii_train"}); '
        'or train without them: --config.data.drop=h36m_train,mpii_train'
    )
    # Dropping one: the other is still named, the flag keeps the first drop.
    cfg.data.drop = 'mpii_train'
    with pytest.raises(inputs.InputError, match=r'drop=mpii_train,h36m_train$') as e:
        inputs.check_mixture(cfg, str(tmp_path))
    assert "'mpii_train' in" not in str(e.value) and 'without it:' in str(e.value)
    cfg.data.drop = 'mpii_train,h36m_train'
    inputs.check_mixture(cfg, str(tmp_path))  # dropped: nothing missing


def test_the_refusal_names_the_raw_converters_too(tmp_path):
    cfg = _config('hand_video')
    _records(tmp_path, *(n for n in HAMER_PUBLISHED if n != 'freihand'))
    with pytest.raises(inputs.InputError) as e:
        inputs.check_mixture(cfg, str(tmp_path))
    message = str(e.value)
    assert 'convert_hint --root <HInt download>' in message
    assert 'convert_freihand --root <FreiHAND download> --body_models <body models>' in message
    assert message.endswith('--config.data.drop=hint,freihand')


def test_nothing_there_points_at_the_root_not_at_dropping_everything(tmp_path):
    cfg = _config('video')
    _records(tmp_path, 'freihand')  # a hand dataset: the wrong root, or the wrong config
    with pytest.raises(inputs.InputError) as e:
        inputs.check(cfg, str(tmp_path), str(tmp_path))
    message = str(e.value)
    assert f"'insta_train' in {tmp_path / 'insta_train'}" in message
    assert message.endswith(
        f"none of them is there (it holds ['freihand']): is config.data.root={str(tmp_path)!r} "
        'the records root?'
    )
    assert '--config.data.drop' not in message
