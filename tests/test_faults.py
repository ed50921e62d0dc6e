"""Faults a region survives, each on the real local topology or a real database.

One region (TLS SuperLink, fleet-only proxy, three SuperNodes, ``min-clients = 2``) serves
the topology tests, in this order:

* a SuperNode that never answers (its process stopped with SIGSTOP): the round times out
  after ``round-timeout`` and completes with the other two; the run does not hang;
* the SuperLink crashes (SIGKILL) between rounds and is restarted on its persistent state:
  Flower 1.41 stops the ServerApp with its SuperLink, so the run fails with a clear message,
  is marked ``interrupted`` in the region database, and every round recorded before stays
  intact (the audit chain verifies); the SuperNodes reconnect to the restarted SuperLink;
* a SuperNode SIGKILLed in the middle of a round (holding its train instruction): the round
  completes with the others, the node is recorded as ``no-reply`` in the progress record
  and the audit database, the run goes on, and ``fedgate status`` reports the dead node.

The database faults use a throwaway PostgreSQL cluster of their own (stopped and
restarted during a write) and SQLite (its write lock held by another connection).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import fedgate_cli as fedgate
from conftest import region_toml, running_pg_cluster

from fedgate.clients.identity import read_enrollment
from fedgate.crypto import generate_key
from fedgate.procenv import port_open
from fedgate.server.audit import AuditLog, verify_database
from fedgate.server.audit.store import Store
from fedgate.server.db import DatabaseError, open_readonly, resolve_url
from fedgate.server.db.engine import RetryPolicy, retry_policy
from fedgate.server.launch.local_devices import device_dir
from fedgate.server.launch.processes import ManagedProcess, ProcessTable, alive, free_port_block
from fedgate.server.launch.runner import RunFailedError, follow, submit
from fedgate.server.launch.topology import region_health, start_executor, start_superlink
from fedgate.server.launch.transport import load_transport
from fedgate.server.trust.node_auth import list_nodes

pytestmark = pytest.mark.integration

ROUND_TIMEOUT = 10.0  # s: a healthy exchange takes 2-6 s here (SuperNodes poll every 3 s)
HEARTBEAT_PATIENCE = 2 * 30.0  # s: Flower 1.41 marks a silent SuperNode offline after this


# -- the topology and its processes -----------------------------------------------------------


def three_node_region() -> str:
    return region_toml(
        "eu", free_port_block(24), rounds=1, clients_per_round=3, min_clients=2,
        nodes=["phone", "pi", "phone"], aggregator="mean", f=0, pre="",
        round_timeout=ROUND_TIMEOUT,
    )  # fmt: skip


@pytest.fixture(scope="module")
def region(local_topology):
    return local_topology(three_node_region())


@pytest.fixture(scope="module")
def own_region(local_topology):
    """A region of its own for the kill scenario: after the SuperLink restart above, a
    SuperNode whose request failed during the outage can sit in Flower's retry backoff for
    longer than a round (seen: two rounds of no-reply), which is not what the kill tests."""
    return local_topology(three_node_region())


def managed(home: Path, name: str) -> ManagedProcess:
    return next(p for p in ProcessTable(home).load() if p.name == name)


def worker_child(home: Path, index: int) -> int:
    """The pid of the forked ClientApp worker serving SuperNode ``eu-<index>``."""
    parent = managed(home, "workers-eu").pid
    log = os.path.realpath(ProcessTable(home).log_dir / f"worker-eu-{index}.log")
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == parent and os.path.realpath(f"/proc/{entry}/fd/1") == log:
                return int(entry)
        except (OSError, IndexError, ValueError):
            continue
    raise AssertionError(f"no worker child of {parent} writes {log}")


def node_id(home: Path, fed, index: int) -> int:
    """Flower's node id of SuperNode ``eu-<index>`` (registered under its device id)."""
    enrollment = read_enrollment(device_dir(home, "eu", index))
    assert enrollment is not None
    nodes = list_nodes(load_transport(home).control(fed.region("eu")))
    return next(n.node_id for n in nodes if n.name == enrollment.device_id)


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.05)


def run(home: Path, fed, rounds: int, on_event=None, timeout: float = 240):
    """Submit a run of ``rounds`` rounds; returns its Submission, final record, round records."""
    sub = submit(fed, replace(fed.region("eu"), rounds=rounds), home)
    done = follow([sub], lambda _sub, event: on_event and on_event(event), timeout=timeout)
    return sub, done["eu"], [e for e in sub.events if e["kind"] == "round"]


def fates(record: dict) -> dict[int, dict]:
    return {int(c["node_id"]): c for c in record["clients"]}


def restart_superlink(home: Path, fed) -> ManagedProcess:
    """Crash the region's SuperLink (SIGKILL) and start it again on its persistent state,
    with a new executor (the old one exits with its SuperLink)."""
    table, eu = ProcessTable(home), fed.region("eu")
    old = managed(home, "superlink-eu")
    os.killpg(old.pgid, signal.SIGKILL)
    wait_for(lambda: not alive(old.pid) and not port_open(eu.superlink_port), 30, "the crash")
    executor = managed(home, "executor-eu")
    wait_for(lambda: not alive(executor.pid), 30, "the executor to exit with its SuperLink")
    table.save([p for p in table.load() if p.pid not in (old.pid, executor.pid)])
    new = start_superlink(table, eu, load_transport(home))
    wait_for(lambda: port_open(eu.superlink_port), 60, f"the restarted SuperLink ({new.log})")
    start_executor(table, eu, load_transport(home), new)
    return new


# -- a SuperNode that never answers ----------------------------------------------------------


def test_supernode_that_never_answers_times_out_the_round(region) -> None:
    home, fed = region
    silent = node_id(home, fed, 0)
    node = managed(home, "supernode-eu-0")
    os.kill(node.pid, signal.SIGSTOP)  # alive and connected, but it never answers again
    try:
        _, done, rounds = run(home, fed, rounds=1)
    finally:
        os.kill(node.pid, signal.SIGCONT)
    (record,) = rounds
    assert record["sampled"] == 3 and record["aggregated"], record
    assert fates(record)[silent]["reason"] == "no-reply"
    assert record["accepted"] == 2 and record["rejected"] == 1
    assert done["rejected_by_reason"] == {"no-reply": 1}


# -- the SuperLink restarted between rounds ---------------------------------------------------


def test_superlink_restart_between_rounds_fails_clearly_and_keeps_rounds(region) -> None:
    home, fed = region
    restarted: list[ManagedProcess] = []

    def on_event(_sub, event: dict) -> None:
        if event["kind"] == "round" and event["round"] == 1:
            restarted.append(restart_superlink(home, fed))

    sub = submit(fed, replace(fed.region("eu"), rounds=3), home)
    with pytest.raises(RunFailedError) as failure:
        follow([sub], on_event, timeout=240)
    message = str(failure.value)
    assert restarted, "the run failed before round 1 was recorded: " + message
    assert "interrupted" in message and "round 1 stays recorded" in message, message
    assert str(sub.log) in message and str(home / "logs" / "superlink-eu.log") in message
    assert "\n" not in message

    store = Store(open_readonly(resolve_url(None, home, "eu")))
    last = store.runs()[-1]
    assert (last.status, last.rounds) == ("interrupted", 1), last
    recorded = next(e for e in sub.events if e["kind"] == "round" and e["round"] == 1)
    info, updates = store.round_detail(last.id, 1)
    assert (info.sampled, info.accepted, info.aggregated) == (
        recorded["sampled"], recorded["accepted"], recorded["aggregated"],
    )  # fmt: skip
    assert sorted((int(u.node_id), u.verdict, u.reason) for u in updates) == sorted(
        (int(c["node_id"]), "accepted" if c["accepted"] else "rejected", c["reason"])
        for c in recorded["clients"]
    )
    assert "OK" in fedgate("audit", "verify", "--region", "eu", "--home", home)

    # The restarted SuperLink kept its node registrations: every SuperNode is back.
    eu = fed.region("eu")
    wait_for(lambda: region_health(home, eu).online == 3, 90, "the SuperNodes to reconnect")
    health = region_health(home, eu)
    assert health.superlink and health.proxy and not health.error


# -- a SuperNode killed in the middle of a round ----------------------------------------------


@pytest.fixture(scope="module")
def killed(own_region):
    """Run two rounds; SIGKILL SuperNode eu-2 once it holds round 1's train instruction."""
    home, fed = own_region
    _, warm, _ = run(home, fed, rounds=1)  # every device's ClientApp worker is forked
    assert warm["accepted"] == 3, warm
    victim = managed(home, "supernode-eu-2")
    child = worker_child(home, 2)
    victim_id = node_id(home, fed, 2)
    log = Path(victim.log)
    offset = log.stat().st_size
    os.kill(child, signal.SIGSTOP)  # its ClientApp cannot answer before the kill lands
    state: dict = {}

    def on_event(event: dict) -> None:
        if event["kind"] == "started":
            wait_for(
                lambda: b"Receiving: train message" in log.read_bytes()[offset:],
                60, f"SuperNode eu-2 to receive its train message ({log})",
            )  # fmt: skip
            os.killpg(victim.pgid, signal.SIGKILL)
            os.kill(child, signal.SIGKILL)
            state["killed_at"] = time.monotonic()

    sub, done, rounds = run(home, fed, rounds=2, on_event=on_event)
    assert "killed_at" in state, "the run never started"
    return {"id": victim_id, "sub": sub, "done": done, "rounds": rounds, **state}


def test_supernode_killed_mid_round_is_recorded_and_the_round_completes(own_region, killed) -> None:
    home, _ = own_region
    first, second = killed["rounds"]
    assert first["sampled"] == 3 and first["aggregated"], first
    assert fates(first)[killed["id"]]["reason"] == "no-reply"
    assert first["accepted"] == 2 and first["rejected"] == 1
    assert second["aggregated"] and second["accepted"] == 2, second  # the run goes on
    assert killed["done"]["rejected_by_reason"]["no-reply"] >= 1
    log = killed["sub"].log.read_text()  # the ServerApp's log, streamed by `flwr run`
    assert f"round 1: node {killed['id']} did not reply" in log

    run_id = killed["done"]["run_id"]
    shown = fedgate("audit", "show", "--run", run_id, "--round", 1, "--region", "eu",
                    "--home", home, "--json")  # fmt: skip
    audited = {int(u["node_id"]): u for u in json.loads(shown)["clients"]}
    assert audited[killed["id"]]["verdict"] == "rejected"
    assert audited[killed["id"]]["reason"] == "no-reply"
    assert sum(u["verdict"] == "accepted" for u in audited.values()) == 2
    assert "OK" in fedgate("audit", "verify", "--region", "eu", "--home", home)


def test_status_reports_the_killed_supernode(own_region, killed) -> None:
    home, fed = own_region
    status = json.loads(fedgate("status", "--home", home, "--json"))
    procs = {p["name"]: p["alive"] for p in status["processes"]}
    assert procs["supernode-eu-2"] is False
    assert procs["supernode-eu-0"] and procs["supernode-eu-1"] and procs["superlink-eu"]
    (eu,) = status["regions"]
    assert eu["superlink"] and eu["proxy"] and eu["expected"] == 3

    # The SuperLink itself notices once the node's heartbeats are overdue.
    enrollment = read_enrollment(device_dir(home, "eu", 2))
    assert enrollment is not None
    name = enrollment.device_id[:16]
    remaining = killed["killed_at"] + HEARTBEAT_PATIENCE + 30 - time.monotonic()
    wait_for(
        lambda: dict(region_health(home, fed.region("eu")).nodes).get(name) != "online",
        max(remaining, 1.0), "the SuperLink to mark the killed SuperNode offline",
    )  # fmt: skip
    status = json.loads(fedgate("status", "--home", home, "--json"))
    (eu,) = status["regions"]
    assert eu["online"] == 2 and dict(map(tuple, eu["nodes"]))[name] != "online"
    table = fedgate("status", "--home", home)
    assert "2/3" in table and name in table


# -- the database unavailable for a moment ----------------------------------------------------


@pytest.fixture(scope="module")
def pg_own():
    """A cluster of this module's own: the tests stop and restart it."""
    yield from running_pg_cluster()


def round_record(node: int = 7) -> dict:
    client = {"node_id": node, "accepted": True, "device_id": "d" * 64, "num_examples": 10,
              "fate": "kept", "weight": 1.0}  # fmt: skip
    return {"round": 1, "sampled": 1, "clients": [client], "aggregated": True,
            "metrics": {"val-acc": 0.5}}  # fmt: skip


def retries(caplog: pytest.LogCaptureFixture, *texts: str) -> int:
    """Retries logged by fedgate.db whose message names any of ``texts``."""
    return sum(
        r.name == "fedgate.db"
        and "retry" in r.getMessage()
        and any(text in r.getMessage().lower() for text in texts)
        for r in caplog.records
    )


@pytest.mark.postgres
def test_postgres_restarted_during_a_write_is_retried(pg_own, caplog) -> None:
    import psycopg

    url = pg_own.create_database()
    key = generate_key()
    store = Store.open(url, signer=key)
    store.record_run("r1", "eu", "test", {})
    dsn = f"host=127.0.0.1 port={pg_own.port} user=fedgate dbname={url.rsplit('/', 1)[1]}"
    blocker = psycopg.connect(dsn)  # holds the chain head: the write below waits inside
    blocker.execute("SELECT seq FROM audit_chain WHERE id = 1 FOR UPDATE")
    errors: list[BaseException] = []

    def write() -> None:
        with retry_policy(RetryPolicy(budget=30.0)):
            try:
                store.record_round("r1", round_record())
            except BaseException as exc:
                errors.append(exc)

    caplog.set_level(logging.WARNING, logger="fedgate.db")
    writer = threading.Thread(target=write)
    writer.start()
    with psycopg.connect(dsn, autocommit=True) as probe:
        wait_for(
            lambda: probe.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()[0] == 1,
            30, "the write to wait on the chain head",
        )  # fmt: skip
    pg_own.stop_server("fast")  # ends every session, the waiting write's included
    time.sleep(1.0)  # unavailable for a moment
    pg_own.start_server()
    writer.join(60)
    blocker.close()
    assert not writer.is_alive() and errors == []
    # cut mid-write, then replayed: the server says why, or (loaded) just closes the socket
    assert retries(caplog, "administrator command", "server closed the connection") >= 1
    assert [r.round for r in store.rounds("r1")] == [1]
    assert len(store.round_detail("r1", 1)[1]) == 1  # written exactly once
    assert verify_database(open_readonly(url), None).ok


@pytest.mark.postgres
def test_postgres_down_longer_than_the_budget_is_a_clear_error(pg_own) -> None:
    url = pg_own.create_database()
    store = Store.open(url, signer=generate_key())
    store.record_run("r1", "eu", "test", {})
    pg_own.stop_server("fast")
    try:
        with retry_policy(RetryPolicy(budget=1.5)), pytest.raises(DatabaseError) as failure:
            store.record_round("r1", round_record())
    finally:
        pg_own.start_server()
    message = str(failure.value)
    assert message.startswith(f"database postgresql+psycopg://fedgate@127.0.0.1:{pg_own.port}/")
    assert "unavailable: recording round 1 of run r1 failed" in message
    assert f"check that the PostgreSQL server at 127.0.0.1:{pg_own.port} is running" in message
    assert "\n" not in message
    assert store.rounds("r1") == []  # nothing half-written ...
    assert verify_database(open_readonly(url), None).ok
    store.record_round("r1", round_record())  # ... and it works again once the server is back
    assert [r.round for r in store.rounds("r1")] == [1]


def hold_sqlite_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_sqlite_lock_held_longer_than_the_budget_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "region-eu.db"
    store = Store.open(f"sqlite:///{path}", signer=generate_key())
    store.record_run("r1", "eu", "test", {})
    holder = hold_sqlite_lock(path)
    try:
        with (
            retry_policy(RetryPolicy(budget=1.5, lock_wait=0.2)),
            pytest.raises(DatabaseError) as failure,
        ):
            store.record_round("r1", round_record())
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = str(failure.value)
    assert message.startswith(f"database sqlite:///{path} unavailable: recording round 1")
    assert "database is locked" in message and f"`fuser {path}`" in message
    assert store.rounds("r1") == []
    assert verify_database(open_readonly(f"sqlite:///{path}"), None).ok


@pytest.mark.parametrize("writer", ["store", "audit"])
def test_sqlite_lock_released_in_time_is_waited_out(tmp_path, caplog, writer: str) -> None:
    path = tmp_path / "region-eu.db"
    store = Store.open(f"sqlite:///{path}", signer=generate_key())
    store.record_run("r1", "eu", "test", {})
    holder = hold_sqlite_lock(path)
    release = threading.Timer(1.0, lambda: (holder.execute("COMMIT"), holder.close()))
    caplog.set_level(logging.WARNING, logger="fedgate.db")
    release.start()
    try:
        with retry_policy(RetryPolicy(budget=30.0, lock_wait=0.2)):
            if writer == "store":  # run_write: the whole transaction is replayed
                store.record_round("r1", round_record())
            else:  # write_txn: getting the write lock is retried
                AuditLog(store.engine).append("test.event", {"n": 1})
    finally:
        release.join()
    assert retries(caplog, "database is locked") >= 1
    kinds = [e.kind for e in store.audit.events()]
    assert kinds[-1] == ("round.closed" if writer == "store" else "test.event")
    assert verify_database(open_readonly(f"sqlite:///{path}"), None).ok
