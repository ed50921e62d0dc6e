"""Flower's SuperLink with a SQLite busy timeout that holds on a busy machine.

``python -m fedgate.server.launch.superlink_main ARGS`` runs exactly ``flower-superlink ARGS``, with
one documented adaptation made before Flower opens its state database: the
``busy_timeout`` of every SQLite connection is raised from Flower's 5 s to
``FEDGATE_SUPERLINK_BUSY_TIMEOUT_MS`` (default 120,000 ms).

Why: Flower 1.41's SQL LinkState runs ``_cleanup_expired_task_tokens`` (two UPDATEs) inside
every read of run state (``get_run_info``, ``get_run_status``, task polling), so each
poller -- the SuperExec's ``acquire-task`` loop, ``flwr log`` streams, the ServerApp, the
Control API -- takes SQLite's single write lock several times a second. When other programs
keep the cores busy, a writer can be descheduled while holding that lock for longer than
5 s; the next writer then gets ``sqlite3.OperationalError: database is locked``, which ends
a log stream or kills the SuperExec. A longer busy timeout makes those writers wait their
turn instead. Nothing in site-packages is edited: the pragma table Flower reads is replaced
in this process only.
"""

from __future__ import annotations

import os
import sys

DEFAULT_BUSY_TIMEOUT_MS = 120_000


def busy_timeout_ms() -> int:
    """The busy timeout to use, from ``FEDGATE_SUPERLINK_BUSY_TIMEOUT_MS`` (at least 5,000)."""
    raw = os.environ.get("FEDGATE_SUPERLINK_BUSY_TIMEOUT_MS", "")
    try:
        value = int(raw) if raw else DEFAULT_BUSY_TIMEOUT_MS
    except ValueError:
        value = DEFAULT_BUSY_TIMEOUT_MS
    return max(value, 5_000)


def patched_pragmas(pragmas: tuple[tuple[str, str], ...], timeout_ms: int):
    """Flower's SQLite pragmas with ``busy_timeout`` set to ``timeout_ms`` (added if absent)."""
    out = [(k, str(timeout_ms) if k == "busy_timeout" else v) for k, v in pragmas]
    if not any(k == "busy_timeout" for k, _ in out):
        out.insert(0, ("busy_timeout", str(timeout_ms)))
    return tuple(out)


def adapt_flower() -> None:
    """Apply the busy-timeout adaptation to Flower's SQL state in this process."""
    # heavy import (Flower): only the SuperLink process needs it
    from flwr.supercore import sql_mixin

    sql_mixin.SQLITE_PRAGMAS = patched_pragmas(sql_mixin.SQLITE_PRAGMAS, busy_timeout_ms())


def main() -> None:
    adapt_flower()
    # heavy import (Flower): only the SuperLink process needs it
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "flower-superlink"
    sys.exit(flower_superlink())


if __name__ == "__main__":
    main()
