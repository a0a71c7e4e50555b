"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Readers run beside writers (data loaders next to converters, a rerun next to a
killed run), and a file that exists is taken to be complete.
"""

from __future__ import annotations

import os
import secrets


def atomic_write(path, write_fn, *, fsync=True) -> None:
    """``write_fn(file)`` into a temporary file beside ``path``, then rename it
    onto ``path``.

    The temporary name is unique, so two writers of one path never write into
    the same file; it ends in '.tmp' and is removed if ``write_fn`` fails.
    ``fsync`` also makes the data durable before the rename (a crash then
    leaves the old file or the whole new one, not an empty one); bulk writers
    of files that are cheap to regenerate turn it off.
    """
    path = os.fspath(path)
    tmp = f'{path}.{secrets.token_hex(4)}.tmp'
    f = open(tmp, 'xb')  # outside the try: never remove another writer's file
    try:
        with f:
            write_fn(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
