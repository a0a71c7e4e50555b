"""The small synthetic raw datasets (3DPW, FreiHAND, HInt in the real layouts) that
test_converters.py and test_converters_bad_input.py convert, and their sizes.

tests/conftest.py registers the session fixture `raw`, so both files share one copy per run
(written by data_pipelines.synthetic, ~30 s of CPU).
"""

import pytest

SEQS_3DPW = {'train': 1, 'validation': 1, 'test': 1}
FRAMES_3DPW = 8
N_FH_TRAIN, N_FH_EVAL = 4, 2
HINT_PER_FOLDER = 2


@pytest.fixture(scope='session')
def raw(tmp_path_factory, body_model_dir):
    from data_pipelines.synthetic import raw_3dpw, raw_freihand, raw_hint

    root = tmp_path_factory.mktemp('raw')
    bmd = str(body_model_dir)
    info = {
        'body_models': bmd,
        '3dpw': str(root / '3DPW'),
        'freihand': str(root / 'FreiHAND'),
        'hint': str(root / 'HInt'),
    }
    raw_3dpw.write_3dpw(info['3dpw'], bmd, seed=0, sequences=SEQS_3DPW, frames=FRAMES_3DPW)
    raw_freihand.write_freihand(
        info['freihand'], bmd, seed=0, train=N_FH_TRAIN, evaluation=N_FH_EVAL
    )
    info['hint_manifest'] = raw_hint.write_hint(
        info['hint'], bmd, seed=0, per_folder=HINT_PER_FOLDER
    )['hands']
    return info
