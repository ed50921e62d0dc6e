"""The SuperLink's SQLite busy-timeout adaptation (``fedgate.server.launch.superlink_main``).

Flower's SQL state runs a write (``_cleanup_expired_task_tokens``) inside every read of run
state; under CPU load a descheduled writer can hold SQLite's lock past Flower's 5 s busy
timeout and the next writer fails with "database is locked". The launcher raises the timeout
before Flower opens its database. Checked here on Flower's own state classes, in a fresh
interpreter (the adaptation changes a module global of the process it runs in).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from fedgate.server.launch.superlink_main import (
    DEFAULT_BUSY_TIMEOUT_MS,
    busy_timeout_ms,
    database_arg,
    expire_left_sessions,
    patched_pragmas,
)

FLOWER = (("busy_timeout", "5000"), ("journal_mode", "WAL"), ("synchronous", "NORMAL"))


def test_patched_pragmas_raise_only_the_busy_timeout() -> None:
    assert patched_pragmas(FLOWER, 120_000) == (
        ("busy_timeout", "120000"), ("journal_mode", "WAL"), ("synchronous", "NORMAL"),
    )  # fmt: skip
    assert patched_pragmas((("journal_mode", "WAL"),), 9_000)[0] == ("busy_timeout", "9000")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", DEFAULT_BUSY_TIMEOUT_MS),
        ("60000", 60_000),
        ("10", 5_000),
        ("x", DEFAULT_BUSY_TIMEOUT_MS),
    ],
)
def test_busy_timeout_from_the_environment(monkeypatch, raw: str, expected: int) -> None:
    monkeypatch.setenv("FEDGATE_SUPERLINK_BUSY_TIMEOUT_MS", raw)
    assert busy_timeout_ms() == expected


PROBE = """
import sys
from sqlalchemy import text
{adapt}
from flwr.server.superlink.linkstate.sql_linkstate import SqlLinkState
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.superlink.federation import NoOpFederationManager
state = SqlLinkState(sys.argv[1], NoOpFederationManager(), ObjectStoreFactory().store())
state.initialize()
with state._engine.connect() as conn:
    print(conn.execute(text("PRAGMA busy_timeout")).scalar())
"""


@pytest.mark.parametrize(
    ("adapt", "expected"),
    [("", "5000"), ("from fedgate.server.launch.superlink_main import adapt_flower; adapt_flower()",
                    str(DEFAULT_BUSY_TIMEOUT_MS))],
)  # fmt: skip
def test_flower_state_connections_get_the_timeout(tmp_path, adapt: str, expected: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(adapt=adapt), str(tmp_path / "state.db")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == expected


def test_database_arg_reads_both_spellings() -> None:
    assert database_arg(["--insecure", "--database", "/x/state.db", "--x"]) == "/x/state.db"
    assert database_arg(["--database=/y.db"]) == "/y.db"
    assert database_arg(["--database"]) is None and database_arg([]) is None


def _state(path: str):
    from flwr.superlink.config_loader import get_objectstore_linkstate_factories
    from flwr.superlink.federation import NoOpFederationManager

    return get_objectstore_linkstate_factories(path, NoOpFederationManager())[1].state()


def test_sessions_left_online_are_ended_and_nothing_else(tmp_path) -> None:
    from flwr.supercore.constant import NodeStatus

    db = str(tmp_path / "state.db")
    state = _state(db)
    online = state.create_node("owner", "owner", b"key-1", 30.0)
    assert state.activate_node(online, 30.0)  # a SuperNode connected, then its SuperLink died
    registered = state.create_node("owner", "owner", b"key-2", 30.0)  # never connected
    assert expire_left_sessions(db) == 1
    status = {i.node_id: i.status for i in _state(db).get_node_info()}
    assert status == {online: NodeStatus.OFFLINE, registered: NodeStatus.REGISTERED}
    assert _state(db).activate_node(online, 30.0)  # the restarted SuperNode is let in at once
    assert expire_left_sessions(db) == 1 and expire_left_sessions(db) == 0


def test_no_state_yet_is_left_alone(tmp_path) -> None:
    assert expire_left_sessions(str(tmp_path / "none.db")) == 0
    assert not (tmp_path / "none.db").exists()
    assert expire_left_sessions(":flwr-in-memory:") == 0
