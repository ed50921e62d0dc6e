"""Flower's SuperLink with a SQLite busy timeout that holds on a busy machine.

``python -m fedgate.server.launch.superlink_main ARGS`` runs exactly ``flower-superlink ARGS``, with
two documented adaptations made before Flower serves: the ``busy_timeout`` of every SQLite
connection is raised from Flower's 5 s to ``FEDGATE_SUPERLINK_BUSY_TIMEOUT_MS`` (default
120,000 ms); and the node sessions that a previous SuperLink process left online in its state
database are ended (``expire_left_sessions``, below).

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


def database_arg(argv: list[str]) -> str | None:
    """The ``--database`` value of a ``flower-superlink`` command line, if any."""
    for i, arg in enumerate(argv):
        if arg == "--database" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--database="):
            return arg.split("=", 1)[1]
    return None


def expire_left_sessions(database: str) -> int:
    """End every node session a previous SuperLink process left online in ``database``;
    returns how many. Why: a SuperLink that was killed (or whose SuperNodes were) keeps their
    nodes online in its state until their heartbeat patience runs out, up to a minute, and
    refuses to activate a node it thinks online, so a restarted SuperNode waits that long.
    A SuperLink process that has not started serving has no live session: each such node is
    deactivated with Flower's own ``deactivate_node`` (what a SuperNode's graceful exit asks
    for); a device still running elsewhere is online again at its next heartbeat."""
    if database.startswith(":") or not os.path.exists(database):
        return 0  # in-memory, or a fresh state: nothing was left
    # heavy imports (Flower): only the SuperLink process needs them
    from flwr.supercore.constant import NodeStatus
    from flwr.superlink.config_loader import get_objectstore_linkstate_factories
    from flwr.superlink.federation import NoOpFederationManager

    _, factory = get_objectstore_linkstate_factories(database, NoOpFederationManager())
    state = factory.state()
    left = state.get_node_info(statuses=[NodeStatus.ONLINE])
    return sum(bool(state.deactivate_node(info.node_id)) for info in left)


def main() -> None:
    adapt_flower()
    database = database_arg(sys.argv[1:])
    if database:
        expired = expire_left_sessions(database)
        if expired:
            print(f"fedgate: ended {expired} node session(s) left online by an earlier "
                  "SuperLink process", flush=True)  # fmt: skip
    # heavy import (Flower): only the SuperLink process needs it
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "flower-superlink"
    sys.exit(flower_superlink())


if __name__ == "__main__":
    main()
