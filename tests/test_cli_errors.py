"""Every command line turns a user error into one line on stderr and a clean exit code.

Each case is a real subprocess that must fail before any model or data is built: a bad flag
and a missing input (or unusable output) per entry point, plus the config-override cases.
They run concurrently (most of each one's time is importing jax / torch), once per module.
"""

import concurrent.futures
import os
import subprocess
import sys

import pytest

from extpose_jax import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Quiet XLA's C++ logging so that stderr holds only the entry point's own line.
ENV = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'TF_CPP_MIN_LOG_LEVEL': '3'}
SMALL = '--config=configs/video.py:small'
MISSING = '/nonexistent/extpose'

# (case, argv after the python executable, expected exit code, text the line must contain).
# {tmp} is a per-module temporary directory; {file} a regular file in it.
CASES = [
    ('run_train unknown flag', ['run_train.py', '--nope'], 2, "'nope'"),
    ('run_train no --config', ['run_train.py'], 2, '--config'),
    (
        'run_train missing config file',
        ['run_train.py', '--config=configs/nope.py'],
        2,
        'configs/nope.py',
    ),
    (
        'run_train unknown config field',
        ['run_train.py', SMALL, '--config.nope=1'],
        2,
        '--config.nope',
    ),
    (
        'run_train unparsable override',
        ['run_train.py', SMALL, '--config.optim.lr=abc'],
        2,
        '--config.optim.lr=abc',
    ),
    (
        'run_train unknown variant',
        ['run_train.py', '--config=configs/video.py:nosuchvariant'],
        2,
        'nosuchvariant',
    ),
    (
        'run_train listed dataset without records',  # {tmp}/mix holds only 3dpw
        [
            'run_train.py',
            '--config=configs/video.py',
            '--config.data.root={tmp}/mix',
            '--config.body_models={tmp}',
            '--config.preflight.enabled=False',
            '--config.data.drop=mpii_train',
            '--workdir={tmp}/mix_run',
        ],
        2,
        "no records for 'h36m_train' in {tmp}/mix/h36m_train (make them with: python -m "
        'data_pipelines.convert_webdataset --kind hmr2',
    ),
    ('run_eval unparsable flag', ['run_eval.py', '--step=x'], 2, '--step=x'),
    (
        'run_infer unreadable video',
        [
            'run_infer.py',
            '--video',
            '{file}',
            '--keypoints',
            '{tmp}',
            '--checkpoint',
            '{tmp}',
            '--out',
            '{tmp}/infer',
        ],  # fmt: skip
        1,
        '{file}',
    ),
    (
        'run_infer bad batch size',
        [
            'run_infer.py',
            '--video',
            '{tmp}',
            '--keypoints',
            '{tmp}',
            '--checkpoint',
            '{tmp}',
            '--out',
            '{tmp}/infer',
            '--batch_size',
            '0',
        ],  # fmt: skip
        2,
        '--batch_size',
    ),
    ('run_eval missing checkpoint', ['run_eval.py', SMALL, f'--checkpoint={MISSING}'], 2, MISSING),
    ('eval_torch unknown flag', ['eval_torch.py', '--nope'], 2, "'nope'"),
    (
        'eval_torch missing ckpt',
        ['eval_torch.py', SMALL, f'--ckpt={MISSING}.ckpt', '--workdir={tmp}/eval_torch'],
        2,
        f'{MISSING}.ckpt',
    ),
    (
        'preflight unknown target',
        ['-m', 'extpose_jax.train.preflight', '--target=nope'],
        2,
        '--target=nope',
    ),
    (
        'preflight missing config file',
        ['-m', 'extpose_jax.train.preflight', '--config=configs/nope.py'],
        2,
        'configs/nope.py',
    ),
    (
        'from_torch bad choice',
        [
            '-m',
            'extpose_jax.convert.from_torch',
            '--ckpt',
            'x',
            '--kind',
            'nope',
            '--out',
            '{tmp}/ft',
        ],
        2,
        '--kind',
    ),
    (
        'from_torch missing ckpt',
        [
            '-m',
            'extpose_jax.convert.from_torch',
            '--ckpt',
            MISSING,
            '--kind',
            'hmr2',
            '--out',
            '{tmp}/ft',
        ],
        2,
        MISSING,
    ),
    (
        'to_torch unparsable flag',
        [
            '-m',
            'extpose_jax.convert.to_torch',
            '--workdir',
            '{tmp}',
            '--out',
            '{tmp}/x.ckpt',
            '--step',
            'q',
        ],
        2,
        '--step',
    ),
    (
        'to_torch missing workdir',
        ['-m', 'extpose_jax.convert.to_torch', '--workdir', MISSING, '--out', '{tmp}/x.ckpt'],
        2,
        MISSING,
    ),
    (
        'synthetic world unparsable flag',
        ['-m', 'data_pipelines.synthetic.world', '--out', '{tmp}/s', '--seed', 'x'],
        2,
        '--seed',
    ),
    (
        'synthetic world unusable out',
        ['-m', 'data_pipelines.synthetic.world', '--out', '{file}/s'],
        2,
        '{file}/s',
    ),
    (
        'synthetic body_files unparsable flag',
        ['-m', 'data_pipelines.synthetic.body_files', '--out', '{tmp}/b', '--seed', 'x'],
        2,
        '--seed',
    ),
    (
        'synthetic body_files unusable out',
        ['-m', 'data_pipelines.synthetic.body_files', '--out', '{file}/b'],
        2,
        '{file}/b',
    ),
] + [
    case
    for name in ('convert_3dpw', 'convert_freihand', 'convert_hint')
    for case in (
        (
            f'{name} unparsable flag',
            [
                '-m',
                f'data_pipelines.{name}',
                '--root',
                '{tmp}',
                '--body_models',
                '{tmp}',
                '--out',
                '{tmp}/o',
                '--workers',
                'x',
            ],
            2,
            '--workers',
        ),
        (
            f'{name} missing root',
            [
                '-m',
                f'data_pipelines.{name}',
                '--root',
                MISSING,
                '--body_models',
                '{tmp}',
                '--out',
                '{tmp}/o',
                '--workers',
                '0',
            ],
            2,
            MISSING,
        ),
    )
]


def _run(argv):
    return subprocess.run(
        [sys.executable] + argv, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=240
    )


@pytest.fixture(scope='module')
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('cli')
    (tmp / 'file').write_text('not a directory')
    (tmp / 'mix' / '3dpw').mkdir(parents=True)
    (tmp / 'mix' / '3dpw' / 'dataset_info.json').write_text('{}')
    fill = {'tmp': str(tmp), 'file': str(tmp / 'file')}
    # Twice the cores: the subprocesses spend much of their time importing (disk, not CPU).
    with concurrent.futures.ThreadPoolExecutor(2 * (os.cpu_count() or 1)) as pool:
        futures = {
            name: (pool.submit(_run, [a.format(**fill) for a in argv]), code, want.format(**fill))
            for name, argv, code, want in CASES
        }
        return {name: (f.result(), code, want) for name, (f, code, want) in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize('case', [c[0] for c in CASES])
def test_user_error_is_one_line(results, case):
    proc, code, want = results[case]
    lines = proc.stderr.splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].strip(), proc.stderr
    assert want in lines[0] and 'Traceback' not in proc.stderr, proc.stderr
    prog = proc.args[1] if proc.args[1] != '-m' else proc.args[2].rsplit('.', 1)[1] + '.py'
    assert lines[0].startswith(f'{os.path.basename(prog)}: '), lines[0]


def _raise(error):
    def main():
        raise error

    return main


@pytest.mark.parametrize(
    'error, code',
    [
        (errors.UserError('--x=1: bad'), 2),
        (errors.DataFileError('f.json: truncated'), 1),
        (FileNotFoundError('f.json: no such file'), 2),
    ],
)
def test_guard_exit_codes(capsys, error, code):
    with pytest.raises(SystemExit) as exit_info:
        errors.guard(_raise(error), prog='prog')
    assert exit_info.value.code == code
    assert capsys.readouterr().err == f'prog: {error}\n'


def test_guard_lets_bugs_keep_their_traceback():
    with pytest.raises(KeyError):
        errors.guard(_raise(KeyError('bug')), prog='prog')
