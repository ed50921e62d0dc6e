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
