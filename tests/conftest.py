"""Shared fixtures: a throwaway PostgreSQL cluster and the ``db_url`` fixture.

``db_url`` runs a test once on a fresh SQLite file and once on a fresh PostgreSQL
schema of one session-wide cluster (``fedgate.server.db.pgcluster``). Missing
PostgreSQL binaries FAIL the PostgreSQL cases with a clear message; run
``.ci/postgres.sh`` to install them.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fedgate.server.db.pgcluster import PgCluster, PgClusterError

if TYPE_CHECKING:
    from flwr.app import Message, RecordDict

# A suite started in the background of a non-interactive shell (`( make test & )`) inherits
# SIGINT ignored, and so would every process it starts: the tests of Ctrl-C (a run stopped at
# its SuperLink, `release serve` stopping) would then wait out their timeouts. Ctrl-C is
# what they test, so the suite restores Python's own handler, which its children inherit.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def running_pg_cluster() -> Iterator[PgCluster]:
    """A started throwaway cluster, stopped afterwards; missing binaries fail the test."""
    try:
        cluster = PgCluster(fast=True).start()
    except PgClusterError as exc:
        pytest.fail(f"PostgreSQL is required for these tests: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    yield from running_pg_cluster()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty PostgreSQL schema (a database of its own, as far as fedgate can tell)."""
    return pg_cluster.create_schema()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh database URL, once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fedgate.db'}"
    return request.getfixturevalue("pg_url")


# -- helpers shared by test modules --------------------------------------------------------


def train_reply(node: int, content: RecordDict) -> Message:
    """A Flower train reply from ``node`` carrying ``content`` (a ``RecordDict``), as the
    region strategy receives it."""
    import time

    from flwr.app import Message, Metadata

    meta = Metadata(
        run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
        reply_to_message_id="x", group_id="1", created_at=time.time(), ttl=60.0,
        message_type="train",
    )  # fmt: skip
    return Message(content, metadata=meta)


_CLI_READY = False


def fedgate_cli(*args: object) -> str:
    """Run a ``fedgate`` verb in-process and return its output; fail on a non-zero exit."""
    global _CLI_READY
    from typer.testing import CliRunner

    from fedgate import cli

    if not _CLI_READY:
        cli._register()
        _CLI_READY = True
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


# -- real local topologies (SuperLink + SuperNodes on loopback) ------------------------------


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes whose argv mentions ``text`` (e.g. a test's home)."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            raw = Path(f"/proc/{entry}/cmdline").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and text.encode() in raw:
            found.append(raw.replace(b"\0", b" ").decode(errors="replace"))
    return found


def region_toml(name: str, port: int, **settings: object) -> str:
    """A ``[regions.<name>]`` table; values are written as TOML literals."""
    import json

    lines = [f"[regions.{name}]", f"port = {port}"]
    for key, value in settings.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
            lines.append(f"{key.replace('_', '-')} = {{ {inner} }}")
        else:
            lines.append(f"{key.replace('_', '-')} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def local_topology(tmp_path_factory):
    """Factory: bring a federation up under a fresh home; everything is stopped afterwards
    and the fixture asserts that no process started for it survives."""
    from fedgate.server.launch.config import parse_federation
    from fedgate.server.launch.topology import down, up

    started = []

    def start(*regions: str, alpha: float = 0.5):
        import tomllib

        home = tmp_path_factory.mktemp("fedgate-home")
        text = f"[federation]\nname = 'test'\nseed = 0\nalpha = {alpha}\n\n" + "\n".join(regions)
        fed = parse_federation(tomllib.loads(text), "test federation")
        (home / "federation.toml").write_text(text)
        started.append(home)
        up(fed, home, timeout=90, echo=lambda *_: None)
        return home, fed

    yield start
    for home in started:
        down(home)
    leftovers = [p for home in started for p in processes_mentioning(str(home))]
    assert not leftovers, f"processes left running: {leftovers}"
