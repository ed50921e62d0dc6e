"""`fedgate region run --engine simulation` tells the truth.

An engine that cannot start is an error with its reason on screen (not a long run that
"finishes" with nothing accepted); a finished run without one accepted update is an error;
a simulated run's virtual devices, run, rounds and audit chain live in the run's own
database, never in the region's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import processes_mentioning, region_toml

from fedgate.procenv import flower_env
from fedgate.server.launch.runner import RunFailedError, follow
from fedgate.server.launch.simulation import (
    RUN_DB,
    ServerAppError,
    cause_from_log,
    check_outcome,
    engine_failure,
    enroll_virtual_devices,
    start_simulation,
    submit_simulation,
    write_run_config,
)

FEDGATE = str(Path(sys.executable).parent / "fedgate")


def federation_toml(**settings: object) -> str:
    """One small region ``eu`` (no ports are bound by the simulation engine)."""
    base = dict(rounds=1, clients_per_round=2, min_clients=1, nodes=["phone", "pi"],
                aggregator="mean", f=0, pre="", round_timeout=60)  # fmt: skip
    base.update(settings)
    head = "[federation]\nname = 'sim-test'\nseed = 0\nalpha = 0.5\n\n"
    return head + region_toml("eu", 23900, **base)


def fedgate(*args: object, env: dict[str, str] | None = None, timeout: float = 240):
    """Run the real ``fedgate`` CLI; returns the completed process (output captured)."""
    return subprocess.run(
        [FEDGATE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env=flower_env({"COLUMNS": "1000", **(env or {})}), stdin=subprocess.DEVNULL,
    )  # fmt: skip


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def table_counts(db: Path) -> dict[str, object]:
    """Every table's row count and the audit chain head of a SQLite database (read-only)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        out: dict[str, object] = {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
                                  for t in tables}  # fmt: skip
        out["audit head"] = conn.execute("SELECT seq, head FROM audit_chain").fetchall()
        return out
    finally:
        conn.close()


# -- the decisions, unit-tested --------------------------------------------------------------


def test_a_run_with_accepted_updates_is_a_result() -> None:
    summary = {"rounds": 2, "accepted": 1, "rejected": 7, "rejected_by_reason": {"no-reply": 7}}
    assert check_outcome(summary) is None


def test_a_run_without_any_accepted_update_is_no_result_and_says_why() -> None:
    summary = {"rounds": 5, "accepted": 0, "rejected": 35,
               "rejected_by_reason": {"revoked": 5, "no-reply": 30}}  # fmt: skip
    assert check_outcome(summary) == (
        "no update was accepted in any of the 5 round(s): 0 of 35 updates accepted "
        "(rejected: no-reply x30, revoked x5)"
    )


def test_a_run_nobody_took_part_in_is_no_result() -> None:
    assert check_outcome({"rounds": 3, "accepted": 0, "rejected": 0}) == (
        "no update was accepted in any of the 3 round(s): no device took part"
    )
    assert check_outcome({}) is not None  # a summary without counts is no result either


def _flower_chain(root: BaseException) -> RuntimeError:
    """``root`` wrapped the way Flower's ``run_simulation`` wraps an engine error."""
    try:
        try:
            try:
                raise root
            except BaseException as ex:
                raise RuntimeError("Simulation Runtime crashed.") from ex
        except RuntimeError as ex:
            raise RuntimeError("An error was encountered. Ending simulation.") from ex
    except RuntimeError as outer:
        return outer


def test_engine_failure_names_the_root_cause_not_flowers_wrappers() -> None:
    exc = _flower_chain(OSError("AF_UNIX path length cannot exceed 107 bytes:\n /tmp/x"))
    assert engine_failure(exc) == (
        "the simulation engine (Ray) failed: OSError: AF_UNIX path length cannot exceed "
        "107 bytes: /tmp/x"
    )
    boom = ServerAppError("DatabaseError: database is locked")
    assert engine_failure(boom) == "the ServerApp failed: DatabaseError: database is locked"


def test_the_cause_is_read_from_a_log_past_flowers_wrappers() -> None:
    log = "\n".join([
        "\x1b[92mINFO \x1b[0m:      Starting Flower ServerApp",
        "Traceback (most recent call last):",
        '  File "raybackend.py", line 137, in build',
        "ValueError: ActorPool is empty. Stopping Simulation.",
        "",
        "The above exception was the direct cause of the following exception:",
        "RuntimeError: Simulation Runtime crashed.",
        "RuntimeError: An error was encountered. Ending simulation.",
        "\x1b[93mWARNING \x1b[0m:   round 1: node 7 did not reply",
    ])  # fmt: skip
    assert cause_from_log(log) == "ValueError: ActorPool is empty. Stopping Simulation."
    assert cause_from_log("nothing went wrong\n") is None


def test_a_child_that_dies_without_a_final_record_fails_fast_with_the_cause(tmp_path) -> None:
    """No Ray here: the simulation child itself dies (as an OOM kill or a crash in Ray's
    C++ core would leave it) before writing any progress record."""
    from fedgate.server.launch.config import default_federation

    out_dir = tmp_path / "run"
    out_dir.mkdir()
    crash = "import sys; print('ray.exceptions.RaySystemError: System error: no GCS'); sys.exit(3)"
    sub = start_simulation(default_federation().region("eu"), tmp_path, out_dir, ["-c", crash])
    with pytest.raises(RunFailedError) as failed:
        follow([sub], lambda s, e: None, timeout=60)
    assert str(failed.value) == (
        "region eu: simulated run failed: the simulation process exited with code 3 "
        f"(ray.exceptions.RaySystemError: System error: no GCS); read {out_dir / 'simulation.log'}"
    )


def test_an_error_reason_reaches_the_screen_verbatim(capsys) -> None:
    """Reasons quote Ray and paths; square brackets in them are not rich markup."""
    import typer

    from fedgate.server.cli.region import friendly

    reason = "OSError: [Errno 28] No space left on device: '/tmp/ray/[session]/x' [/x]"

    @friendly
    def verb() -> None:
        raise RunFailedError(reason)

    with pytest.raises(typer.Exit) as exited:
        verb()
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err == f"error: {reason}\n"


def test_virtual_devices_are_enrolled_in_the_runs_own_database(tmp_path) -> None:
    from fedgate.server.launch.config import default_federation

    fed = default_federation()
    eu = dataclasses.replace(fed.region("eu"), revoked=(1,))
    home, out_dir = tmp_path / "home", tmp_path / "home" / "run"
    out_dir.mkdir(parents=True)
    ids = enroll_virtual_devices(home, eu, out_dir, 3)
    assert len(set(ids)) == 3
    conn = sqlite3.connect(f"file:{out_dir / RUN_DB}?mode=ro", uri=True)
    rows = conn.execute("SELECT device_id, status FROM devices ORDER BY device_id").fetchall()
    conn.close()
    assert rows == sorted((i, "revoked" if i == ids[1] else "active") for i in ids)
    assert sorted(p.name for p in (out_dir / "devices").iterdir()) == ["sim-0", "sim-1", "sim-2"]
    assert not (home / "region-eu.db").exists() and not (home / "regions").exists()
    config = json.loads(write_run_config(fed, eu, home, out_dir).read_text())
    assert config["db"] == f"sqlite:///{out_dir.resolve() / RUN_DB}"


# -- real simulations ----------------------------------------------------------------------------


@pytest.mark.integration
def test_ray_that_cannot_start_is_an_error_line_and_a_non_zero_exit(tmp_path) -> None:
    """Ray's sockets live under its temp dir; a dir whose socket paths exceed AF_UNIX's 107
    bytes makes ``ray.init`` fail (a real way Ray never starts). Before, the ServerApp then
    sampled devices nobody ran until every round timed out and the CLI said "done"."""
    home, config = tmp_path / "home", tmp_path / "federation.toml"
    config.write_text(federation_toml())
    ray_tmp = tmp_path / ("r" * 110)
    result = fedgate("region", "run", "--region", "eu", "--engine", "simulation", "--home", home,
                     "--config", config, env={"RAY_TMPDIR": str(ray_tmp)})  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "error: region eu: simulated run failed: the simulation engine (Ray) failed to start: "
        "OSError: validate_socket_filename failed: AF_UNIX path length cannot exceed 107 bytes"
    ), lines[0]
    assert lines[0].endswith("simulation.log"), lines[0]
    assert "done" not in result.stdout
    assert not processes_mentioning(str(home)), "the simulation left processes behind"


@pytest.mark.integration
def test_an_impossible_resource_request_fails_the_run_with_flowers_reason(tmp_path) -> None:
    """Ray starts, but no virtual client fits: 64 CPUs per client on this machine."""
    from fedgate.server.launch.config import default_federation

    fed = default_federation()
    eu = dataclasses.replace(fed.region("eu"), rounds=1, clients_per_round=2, min_clients=1)
    sub = submit_simulation(fed, eu, tmp_path / "home", num_supernodes=2, cpus_per_client=64)
    with pytest.raises(RunFailedError) as failed:
        follow([sub], lambda s, e: None, timeout=240)
    assert sub.proc.returncode == 1
    assert "the simulation engine (Ray) failed to start: ValueError: ActorPool is empty" in str(
        failed.value
    ), failed.value
    conn = sqlite3.connect(f"file:{sub.out_dir / RUN_DB}?mode=ro", uri=True)
    statuses = [r[0] for r in conn.execute("SELECT status FROM runs")]
    conn.close()
    assert statuses in ([], ["failed"]), statuses  # never left "running"


@pytest.mark.integration
def test_nothing_accepted_is_an_error_and_the_region_database_is_untouched(tmp_path) -> None:
    """Every virtual device revoked: the run finishes, nothing is accepted, the CLI says so
    with the reasons counted and exits 1. The devices, the run and its audit chain are in
    the run's own database; the region's database is exactly as it was."""
    from fedgate.server.audit.keys import load_pubkeys, region_pub_path
    from fedgate.server.audit.verify import verify_database
    from fedgate.server.db import open_readonly
    from fedgate.server.launch.config import load_federation
    from fedgate.server.launch.local_devices import enroll_region_devices

    home, config = tmp_path / "home", tmp_path / "federation.toml"
    config.write_text(federation_toml(revoked=[0, 1]))
    eu = load_federation(config).region("eu")
    enroll_region_devices(home, eu)  # the region's real devices, as `fedgate up` enrolls them
    region_db = home / "region-eu.db"
    before = table_counts(region_db)
    assert before["devices"] == 2 and before["events"] > 0

    result = fedgate("region", "run", "--region", "eu", "--engine", "simulation",
                     "--home", home, "--config", config)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert error_lines(result.stderr) == [
        "error: region eu: simulated run failed: no update was accepted in any of the 1 "
        "round(s): 0 of 2 updates accepted (rejected: revoked-device x2)"
    ], result.stderr
    assert table_counts(region_db) == before

    (run_dir,) = (home / "regions" / "eu" / "runs").iterdir()
    run_db = run_dir / RUN_DB
    records = f"records of this simulated run (virtual devices, run, rounds, audit chain): {run_db}"
    assert records in result.stdout, result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["records"] == str(run_db) and summary["accepted"] == 0
    after = table_counts(run_db)
    assert after["devices"] == 2 and after["runs"] == 1 and after["rounds"] == 1
    keys = load_pubkeys([region_pub_path(home, "eu")])
    assert verify_database(open_readonly(f"sqlite:///{run_db}"), keys).ok
    assert sorted(p.name for p in (run_dir / "devices").iterdir()) == ["sim-0", "sim-1"]
    assert not list((home / "regions" / "eu").glob("sim-*")), "device keys outside the run"
    assert not processes_mentioning(str(home)), "the simulation left processes behind"
    key = run_dir / "devices" / "sim-0" / "device.key"
    assert os.stat(key).st_mode & 0o077 == 0, "a device key readable by others"
