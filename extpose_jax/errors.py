"""The errors a user can fix, and the one way every command line reports them.

A UserError is a mistake in what the user gave (a flag, a config value, a missing path): one line
on stderr naming the field or file, exit code 2. A DataFileError is an input file that exists but
is malformed, truncated or foreign: one line, exit code 1. A training run whose loss turned
non-finite stops with one line, exit code 3. Anything else is a bug and keeps its traceback.
Every entry point runs through `run` or `guard`, so the rule holds everywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


class UserError(ValueError):
    """A fixable mistake in the user's input; the message names the field, flag or path."""

    exit_code = 2


class DataFileError(UserError):
    """An input file that cannot be read as what it claims to be; the message names it."""

    exit_code = 1


class Diverged(UserError):
    """A training step whose loss or gradients are not finite: the run stops before saving it."""

    exit_code = 3


# Missing or unusable paths the user named: the OS message already carries the path.
_PATH_ERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def one_line(message) -> str:
    """Multi-line library messages (ml_collections, absl) folded into one line."""
    return ' '.join(str(message).split())


def exit_code(error: BaseException) -> int | None:
    """The exit code for a user error, None for a bug (which should keep its traceback)."""
    if isinstance(error, UserError):
        return error.exit_code
    if isinstance(error, _PATH_ERRORS):
        return 2
    from absl import app, flags

    if isinstance(error, (app.UsageError, flags.Error)):
        return 2
    return None


def fail(prog: str, error: BaseException | str, code: int = 2):
    """Prints `prog: message` on stderr and exits with `code`."""
    sys.stderr.write(f'{prog}: {one_line(error)}\n')
    sys.stderr.flush()
    sys.exit(code)


def _load_config_files() -> None:
    """ml_collections keeps a config file's IOError until the config is first used (in main,
    after the heavy imports): raise it now, naming the flag."""
    from absl import flags
    from ml_collections.config_flags import config_flags

    deferred = getattr(config_flags, '_ErrorConfig', ())
    for name in list(flags.FLAGS):
        value = flags.FLAGS[name].value
        if isinstance(value, deferred):
            error = object.__getattribute__(value, '_error')
            raise UserError(
                f'--{name}={flags.FLAGS[name].config_filename}: {_last_line(str(error))}'
            )


def _last_line(text: str) -> str:
    return text.strip().splitlines()[-1].strip() if text.strip() else text


def _flag_message(error: BaseException, argv) -> str:
    """One line for whatever absl / ml_collections raised while parsing `argv`."""
    text = str(error)
    if isinstance(error, (AttributeError, KeyError)):
        # ml_collections' unknown override field: the error is just the missing key's name.
        key = text.strip('\'"')
        for arg in argv[1:]:
            flag = arg.lstrip('-').split('=', 1)[0]
            if '.' in flag and key in flag.split('.')[1:]:
                return f'--{flag}: no such config field {key!r}'
        return f'{type(error).__name__}: {text}'
    if 'Traceback (most recent call last)' in text:
        # A config file's get_config raised: absl embeds the whole traceback in the message;
        # its last line is the config's own message.
        head = text.split('Traceback (most recent call last)')[0].strip().rstrip(':')
        return f'{head}: {_last_line(text)}'
    return text


def _parse_flags(prog: str):
    """absl's flag parsing, but a bad flag (or an unloadable --config file) is one line, exit 2."""
    from absl import flags

    def parse(argv):
        try:
            rest = flags.FLAGS(argv)
            _load_config_files()
        except Exception as e:  # noqa: BLE001 - whatever parsing raises came from the command line
            fail(prog, f'bad command line: {_flag_message(e, argv)}', 2)
        return rest

    return parse


def run(main: Callable, prog: str | None = None):
    """absl.app.run(main) with the project's error rule: user errors are one line, bugs trace."""
    from absl import app

    prog = prog or os.path.basename(sys.argv[0])

    def guarded(argv):
        try:
            return main(argv)
        except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
            code = exit_code(e)
            if code is None:
                raise
            fail(prog, e, code)

    app.run(guarded, flags_parser=_parse_flags(prog))


def guard(main: Callable[[], object], prog: str | None = None):
    """For argparse entry points: runs main() with the same rule (parse with ArgumentParser)."""
    prog = prog or os.path.basename(sys.argv[0])
    try:
        return main()
    except Exception as e:  # noqa: BLE001
        code = exit_code(e)
        if code is None:
            raise
        fail(prog, e, code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is the same one line (exit 2) as every other user error."""

    def error(self, message):
        fail(self.prog, f'{message} (--help for usage)', 2)
