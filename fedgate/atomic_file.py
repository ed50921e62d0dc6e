"""The one atomic file writer: a reader sees the old file or the new one, never a part.

A temporary file beside the target (created exclusively, mode set before any byte is written),
flushed and fsynced, renamed over the target, then the directory fsynced so the rename itself
survives a crash. ``SECRET`` (0600) is for private keys and anything else only the owner reads.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Literal, overload

SECRET = 0o600
PUBLIC = 0o644
READ_ONLY = 0o444


def write_atomic(path: Path | str, data: bytes | str, *, mode: int = PUBLIC) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically, with ``mode``."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with open_atomic(path, binary=True, mode=mode) as fh:
        fh.write(payload)


@overload
@contextmanager
def open_atomic(
    path: Path | str, *, binary: Literal[True], mode: int = PUBLIC
) -> Iterator[IO[bytes]]: ...
@overload
@contextmanager
def open_atomic(
    path: Path | str, *, binary: Literal[False] = False, mode: int = PUBLIC
) -> Iterator[IO[str]]: ...
@contextmanager
def open_atomic(path: Path | str, *, binary: bool = False, mode: int = PUBLIC) -> Iterator[IO]:
    """A file to stream into that replaces ``path`` when the block ends without an error; on an
    error the temporary file is removed and ``path`` is untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with (
            os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")
        ) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_new_durable(path: Path | str, data: bytes | str, *, mode: int = PUBLIC) -> None:
    """Create ``path`` (it must not exist yet) holding ``data``, with ``mode``, fsynced. Not
    atomic by itself: for a file in a directory that is renamed into place as a whole once its
    files are written (``fsync_dir`` it before the rename, and its parent after)."""
    payload = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
    try:
        os.fchmod(fd, mode)
        while payload:
            payload = payload[os.write(fd, payload) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(path).unlink(missing_ok=True)
        raise
    os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename is still atomic
    finally:
        os.close(fd)
