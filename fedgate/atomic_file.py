"""The one atomic file writer: a reader sees the old file or the new one, never a part.

A temporary file beside the target (created exclusively, mode set before any byte is written),
flushed and fsynced, renamed over the target, then the directory fsynced so the rename itself
survives a crash. ``SECRET`` (0600) is for private keys and anything else only the owner reads.

A directory of new files (``written_dir``) is written in a hidden sibling and renamed into
place; its caller makes it durable with ``fsync_together`` (the files, the directory and its
parent, with the temporary file of the state file that will name it: ``write_atomic``'s
``fsync``) before that state file's rename.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Literal, overload

SECRET = 0o600
PUBLIC = 0o644
READ_ONLY = 0o444


def write_atomic(
    path: Path | str,
    data: bytes | str,
    *,
    mode: int = PUBLIC,
    fsync: Callable[[int], None] | None = None,
) -> None:
    """Replace ``path`` with ``data`` (text is written as UTF-8) atomically, with ``mode``.
    ``fsync(fd)`` makes the temporary file durable before the rename (``os.fsync`` unless
    given: a caller may fsync it together with files that must be durable first)."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with open_atomic(path, binary=True, mode=mode, fsync=fsync) as fh:
        fh.write(payload)


@overload
@contextmanager
def open_atomic(
    path: Path | str,
    *,
    binary: Literal[True],
    mode: int = PUBLIC,
    fsync: Callable[[int], None] | None = None,
) -> Iterator[IO[bytes]]: ...
@overload
@contextmanager
def open_atomic(
    path: Path | str,
    *,
    binary: Literal[False] = False,
    mode: int = PUBLIC,
    fsync: Callable[[int], None] | None = None,
) -> Iterator[IO[str]]: ...
@contextmanager
def open_atomic(
    path: Path | str,
    *,
    binary: bool = False,
    mode: int = PUBLIC,
    fsync: Callable[[int], None] | None = None,
) -> Iterator[IO]:
    """A file to stream into that replaces ``path`` when the block ends without an error; on an
    error the temporary file is removed and ``path`` is untouched. ``fsync`` as in
    ``write_atomic``."""
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
            (fsync or os.fsync)(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@contextmanager
def written_dir(
    final: Path, files: Mapping[str, bytes | str], *, mode: int = PUBLIC
) -> Iterator[list[int]]:
    """Make ``final`` (which must not exist) a directory holding ``files`` (name -> content):
    written in a hidden sibling (``.<name>.tmp``) and renamed into place; yields the files'
    open descriptors, not yet fsynced. The caller makes them durable, with ``final`` and its
    parent, before anything names ``final`` (``fsync_together``); until then a crash may leave
    ``final`` absent or holding partial files, so a caller checks the content of a ``final``
    it finds before reusing it."""
    tmp = final.parent / f".{final.name}.tmp"
    tmp.mkdir(parents=True)
    fds: list[int] = []
    try:
        for name, data in files.items():
            payload = memoryview(data.encode("utf-8") if isinstance(data, str) else data)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
            fds.append(os.open(tmp / name, flags, mode))
            os.fchmod(fds[-1], mode)
            while payload:
                payload = payload[os.write(fds[-1], payload) :]
        os.replace(tmp, final)
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def fsync_together(fds: list[int], directories: list[Path]) -> None:
    """fsync the open files ``fds`` and ``directories`` (as ``fsync_dir``) concurrently, a
    thread each, and return once all are done: each is durable on return as if fsynced in turn,
    but a journaling file system commits them together instead of one device flush after
    another (on a busy disk each flush is milliseconds). The first error is raised."""
    jobs: list[Callable[[], None]] = [partial(os.fsync, fd) for fd in fds]
    jobs += [partial(fsync_dir, d) for d in directories]
    errors: list[OSError] = []

    def run(job: Callable[[], None]) -> None:
        try:
            job()
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs[1:]]
    for thread in threads:
        thread.start()
    if jobs:
        run(jobs[0])
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


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
