"""The run lifecycle on a real local topology (TLS SuperLink, executor, proxy, SuperNodes).

A run is followed by its own state, never by a ``flwr`` process: cutting the log stream
mid-run costs nothing; a SuperLink killed mid-run costs at most the round in flight
(``--resume`` continues from the last recorded round's stored model); an executor that dies
fails its run at once and the region refuses new runs until restarted; a run interrupted
while pending is stopped at the SuperLink and never starts after the topology restarts. The
reported outcome always matches the region database.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import fedgate_cli as fedgate
from conftest import processes_mentioning, region_toml

from fedgate.server.audit.store import Store
from fedgate.server.db import open_readonly, resolve_url
from fedgate.server.launch.config import parse_federation
from fedgate.server.launch.processes import ProcessTable, TopologyError, alive, free_port_block
from fedgate.server.launch.run_records import resume_point
from fedgate.server.launch.runner import RunFailedError, ensure_up, follow, submit
from fedgate.server.launch.superlink_runs import active_runs, link_run
from fedgate.server.launch.topology import down, up
from fedgate.server.launch.transport import load_transport

pytestmark = pytest.mark.integration

ROUNDS = 3


@pytest.fixture(scope="module")
def region(tmp_path_factory):
    """One region of three SuperNodes, brought up (and down again) by this module, which
    restarts it in between."""
    import tomllib

    home = tmp_path_factory.mktemp("lifecycle")
    text = "[federation]\nname = 'lifecycle'\nseed = 0\nalpha = 0.5\n\n" + region_toml(
        "eu", free_port_block(24), rounds=ROUNDS, clients_per_round=3, min_clients=2,
        nodes=["phone", "pi", "phone"], aggregator="mean", f=0, pre="", round_timeout=30.0,
    )  # fmt: skip
    (home / "federation.toml").write_text(text)
    fed = parse_federation(tomllib.loads(text), "lifecycle federation")
    up(fed, home, timeout=120, echo=lambda *_: None)
    yield home, fed
    down(home)
    assert not processes_mentioning(str(home)), "processes left running"
    port = f"127.0.0.1:{fed.region('eu').superlink_port}"
    assert not processes_mentioning(port), f"ServerApps of {port} left running"


def restart(home: Path, fed) -> None:
    """``down`` then ``up``, which never waits for the SuperLink to expire node sessions: after
    a clean stop every SuperNode deactivated its node through the proxy before the proxy
    stopped, and a SuperLink that was killed has its left sessions ended as it restarts
    (``superlink_main.expire_left_sessions``). Before, each restart waited up to a minute."""
    down(home)
    said: list[str] = []
    up(fed, home, timeout=120, echo=lambda *a: said.append(" ".join(map(str, a))))
    assert not [line for line in said if "expire" in line], said


def managed_pid(home: Path, name: str) -> int:
    return next(p.pid for p in ProcessTable(home).load() if p.name == name)


def store(home: Path) -> Store:
    return Store(open_readonly(resolve_url(None, home, "eu")))


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.1)


def target(home: Path, fed):
    return load_transport(home).control(fed.region("eu"))


def test_cut_log_stream_the_run_completes(region) -> None:
    home, fed = region
    sub = submit(fed, fed.region("eu"), home)
    notes: list[str] = []

    def on_event(_sub, event: dict) -> None:
        if event["kind"] == "round" and event["round"] == 1:
            os.killpg(sub.proc.pid, signal.SIGKILL)  # the `flwr log --stream` CLI
        if event["kind"] == "note":
            notes.append(event["note"])

    done = follow([sub], on_event, timeout=600)["eu"]
    assert done["kind"] == "finished" and done["rounds"] == ROUNDS
    assert any("log stream closed; reopened" in n for n in notes), notes
    info = store(home).run(sub.run_id)
    assert info is not None and (info.status, info.rounds) == ("finished", ROUNDS)
    done_at_link = lambda: link_run(target(home, fed), sub.run_id).label  # noqa: E731
    wait_for(lambda: done_at_link() == "finished:completed", 60, "the SuperLink's status")
    rows = json.loads(fedgate("runs", "--home", home, "--json"))
    assert [(r["run"], r["state"], r["rounds"]) for r in rows] == [
        (sub.run_id, "finished", f"{ROUNDS}/{ROUNDS}")
    ]

    # attach replays a run's records: the whole finished run, with its summary
    out = fedgate("region", "attach", sub.run_id, "--region", "eu", "--home", home)
    assert f"round {ROUNDS}/{ROUNDS}" in out and "0.9" in out


def test_superlink_killed_mid_run_resume_loses_no_recorded_round(region) -> None:
    home, fed = region
    sub = submit(fed, fed.region("eu"), home)
    killed: list[int] = []

    def on_event(_sub, event: dict) -> None:
        if event["kind"] == "round" and event["round"] == 2 and not killed:
            pid = managed_pid(home, "superlink-eu")
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    with pytest.raises(RunFailedError) as failure:
        follow([sub], on_event, timeout=600)
    assert killed, str(failure.value)
    assert "SuperLink" in str(failure.value) or "interrupted" in str(failure.value)
    before = store(home).run(sub.run_id)
    assert before is not None and before.status == "interrupted"
    recorded = store(home).round_models(sub.run_id)
    assert sorted(recorded) == list(range(1, max(recorded) + 1)) and max(recorded) >= 2

    restart(home, fed)  # the SuperLink was killed: the restarted one ends its left sessions
    start = resume_point(home, fed.region("eu"), sub.run_id, ROUNDS)
    assert (start.first_round, start.init_model) == (max(recorded) + 1, recorded[max(recorded)])
    resumed = submit(fed, fed.region("eu"), home, extra=start.run_config())
    done = follow([resumed], lambda *_: None, timeout=600)["eu"]
    assert done["kind"] == "finished" and done["first_round"] == start.first_round
    rounds = [e["round"] for e in resumed.events if e["kind"] == "round"]
    assert rounds == list(range(start.first_round, ROUNDS + 1))
    # nothing of the interrupted run was lost, and the audit chain links the two runs
    assert store(home).round_models(sub.run_id) == recorded
    info = store(home).run(resumed.run_id)
    assert info is not None and info.config["resume-from"] == sub.run_id
    assert info.config["init-model"] == recorded[max(recorded)]
    assert "OK" in fedgate("audit", "verify", "--region", "eu", "--home", home)


def test_executor_killed_fails_the_run_within_seconds(region) -> None:
    home, fed = region
    sub = submit(fed, fed.region("eu"), home)
    killed_at: list[float] = []

    def on_event(_sub, event: dict) -> None:
        if event["kind"] == "round" and event["round"] == 1 and not killed_at:
            os.kill(managed_pid(home, "executor-eu"), signal.SIGKILL)
            killed_at.append(time.monotonic())

    with pytest.raises(RunFailedError) as failure:
        follow([sub], on_event, timeout=600)
    message = str(failure.value)
    print(f"executor killed -> run failed after {time.monotonic() - killed_at[0]:.1f} s")
    assert "executor" in message and "fedgate up" in message and "\n" not in message
    info = store(home).run(sub.run_id)
    assert info is not None and info.status == "failed"
    assert link_run(target(home, fed), sub.run_id).label == "finished:stopped"
    with pytest.raises(TopologyError, match=r"executor .* is not running"):
        ensure_up(home, fed, fed.region("eu"))
    status = json.loads(fedgate("status", "--home", home, "--json"))
    executor = next(p for p in status["processes"] if p["name"] == "executor-eu")
    assert executor["alive"] is False and executor["last_log"]


def test_interrupted_while_pending_never_starts_later(region) -> None:
    home, fed = region
    restart(home, fed)  # the executor died above
    executor = managed_pid(home, "executor-eu")
    os.kill(executor, signal.SIGSTOP)  # alive but launching nothing: a run stays pending
    sub = submit(fed, replace(fed.region("eu"), rounds=1), home)
    wait_for(lambda: link_run(target(home, fed), sub.run_id).status == "pending", 60, "pending")
    main = threading.get_ident()
    timer = threading.Timer(1.0, lambda: signal.pthread_kill(main, signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        follow([sub], lambda *_: None, timeout=600)
    timer.join()
    assert link_run(target(home, fed), sub.run_id).label == "finished:stopped"
    info = store(home).run(sub.run_id)
    assert info is not None and info.status == "stopped"
    assert not alive(sub.proc.pid)

    restart(home, fed)
    assert active_runs(target(home, fed)) == []
    fresh = submit(fed, replace(fed.region("eu"), rounds=1), home)
    assert follow([fresh], lambda *_: None, timeout=600)["eu"]["kind"] == "finished"
    # the stopped run never started: no progress, still stopped, not active at the SuperLink
    assert not (sub.out_dir / "progress.jsonl").exists()
    assert store(home).run(sub.run_id).status == "stopped"
    assert link_run(target(home, fed), sub.run_id).label == "finished:stopped"


def test_region_stop_records_and_stops_a_running_run(region) -> None:
    home, fed = region
    sub = submit(fed, replace(fed.region("eu"), rounds=20), home)
    stopped: list[str] = []

    def on_event(_sub, event: dict) -> None:
        if event["kind"] == "round" and not stopped:
            stopped.append(fedgate("region", "stop", sub.run_id, "--region", "eu", "--home", home))

    with pytest.raises(RunFailedError):
        follow([sub], on_event, timeout=600)
    assert "stopped at the SuperLink" in stopped[0]
    assert store(home).run(sub.run_id).status == "stopped"
    assert link_run(target(home, fed), sub.run_id).label == "finished:stopped"
    events = [e["kind"] for e in sub.events]
    assert "finished" not in events
