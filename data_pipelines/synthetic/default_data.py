"""The built-in synthetic default: raw datasets in the real layouts, converted to records.

A fresh machine has no licensed body models and no downloaded data, so training falls back to
this. It runs the same converters as real data would, and caches everything under one folder:

  <data_dir>/raw/{body_models,3DPW,FreiHAND,HInt}   world.write_all
  <data_dir>/records/{3dpw,freihand,hint}           convert_3dpw / convert_freihand / convert_hint
  <data_dir>/raw/body_models/{smpl,mano}_mean_params.npz   mean_params.py on the train records
  <data_dir>/demo/{clip.mp4,openpose/,camera.json,ground_truth.npz}   demo_video.write_demo:
      a 3DPW test sequence as a video + OpenPose JSON, to try the inference command on

The raw folder is complete once its marker exists (written last); the converters always run but
skip shards they finished before, so an interrupted preparation resumes where it stopped.
"""

from __future__ import annotations

import os
import shutil

from data_pipelines import convert_3dpw, convert_freihand, convert_hint, mean_params, shards
from data_pipelines.atomic_file import atomic_write
from data_pipelines.synthetic import demo_video, raw_common, world
from extpose_jax.models import heads

_RAW_DONE = 'COMPLETE'
_CONVERTERS = {'3dpw': convert_3dpw, 'freihand': convert_freihand, 'hint': convert_hint}


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def ensure(data_dir: str, seed: int = 0, size: str = 'small', workers=None, log=print) -> dict:
    """Builds what is missing and returns {'body_models': dir, '3dpw': dir, ...} (records dirs)
    and 'demo': the demo folder (demo_video.py).

    size: the world's size (raw_common.SIZES); workers: rendering processes (default: the cores).
    """
    raw_dir = os.path.join(data_dir, 'raw')
    marker = os.path.join(raw_dir, _RAW_DONE)
    raw = {
        'body_models': os.path.join(raw_dir, 'body_models'),
        '3dpw': os.path.join(raw_dir, '3DPW'),
        'freihand': os.path.join(raw_dir, 'FreiHAND'),
        'hint': os.path.join(raw_dir, 'HInt'),
    }
    stamp = f'seed={seed} world={world.VERSION} size={size}\n'
    if os.path.exists(marker) and _read(marker) != stamp:
        # A cache from another seed, size or an older world (e.g. before poses2d were detections):
        # everything derived from it goes, records and mean files included.
        log(
            f'synthetic default in {data_dir} is {_read(marker).strip()!r}, not {stamp.strip()!r}: '
            'rebuilding it'
        )
        for sub in ('raw', 'records', 'demo'):
            shutil.rmtree(os.path.join(data_dir, sub), ignore_errors=True)
    if os.path.exists(marker):
        log(f'synthetic default: raw datasets cached in {raw_dir}')
    else:
        log(f'no dataset configured: rendering the synthetic default into {raw_dir}')
        workers = raw_common.default_workers() if workers is None else workers
        raw = world.write_all(raw_dir, seed=seed, size=size, workers=workers)
        atomic_write(marker, lambda f: f.write(stamp.encode()))
    out = {'body_models': raw['body_models']}
    for name, module in _CONVERTERS.items():
        dest = os.path.join(data_dir, 'records', name)
        summary = module.convert(raw[name], raw['body_models'], dest, quiet=True)
        written = sum(s.get('shards_written', 0) for s in summary['splits'].values())
        log(f'synthetic default: {name} records in {dest} ({written} shards written now)')
        shards.load_dataset_info(dest)  # fails loudly if the conversion left it unreadable
        out[name] = dest
    # The heads' starting pose, measured on the training records (HMR 2.0 ships its own beside
    # the body models; a head that starts upside down spends its first steps turning round).
    for kind, name in (('smpl', '3dpw'), ('mano', 'freihand')):
        path = os.path.join(raw['body_models'], heads.MEAN_PARAMS_FILES[kind])
        if not os.path.exists(path):
            mean_params.write(path, mean_params.mean_params(out[name]))
            log(f'synthetic default: {path} from the {name} training records')
    # Written once (atomically: an existing folder is complete); reads the raw data, changes none.
    demo = os.path.join(data_dir, 'demo')
    demo_video.write_demo(raw['3dpw'], demo, log=log)
    out['demo'] = demo
    return out
