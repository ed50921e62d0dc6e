"""Run records behind the engineer's verbs: where a resumed or warm-started run starts, how a
stop is recorded, and that a run's first recorded end stands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from fedgate.errors import UsageError
from fedgate.server.db import BlobStore
from fedgate.server.launch.config import ConfigError, RegionConfig
from fedgate.server.launch.run_records import (
    StartPoint,
    init_point,
    mark_ended,
    region_store,
    resume_point,
)

EU = RegionConfig(name="eu", rounds=5)


def record(home: Path, run: str, rounds: int) -> list[str]:
    """A run of ``rounds`` recorded rounds, each with its model in the blob store."""
    store = region_store(home, EU)
    store.record_run(run, "eu", "tester@host", {"rounds": 5})
    blobs, digests = BlobStore(home / "blobs"), []
    for rnd in range(1, rounds + 1):
        sha = blobs.put_tensors({"w": np.full((2, 2), rnd, dtype=np.float32)})
        store.record_round(run, {"round": rnd, "clients": [], "sampled": 0}, model_sha256=sha)
        digests.append(sha)
    return digests


def test_resume_continues_after_the_last_recorded_round(tmp_path) -> None:
    digests = record(tmp_path, "r1", 3)
    assert region_store(tmp_path, EU).round_models("r1") == dict(enumerate(digests, start=1))
    with pytest.raises(ConfigError, match="is running; only an interrupted"):
        resume_point(tmp_path, EU, "r1", 5)
    assert mark_ended(tmp_path, EU, "r1", "interrupted", "SuperLink died")
    start = resume_point(tmp_path, EU, "r1", 5)
    assert start == StartPoint(digests[2], 4, "r1")
    assert start.run_config() == {"init-model": digests[2], "first-round": 4, "resume-from": "r1",
                                  "base-global-version": ""}  # fmt: skip
    with pytest.raises(ConfigError, match="already completed round 3 of 3"):
        resume_point(tmp_path, EU, "r1", 3)
    with pytest.raises(ConfigError, match="has no run nope"):
        resume_point(tmp_path, EU, "nope", 5)


def test_resume_refuses_a_missing_model_and_a_run_without_rounds(tmp_path) -> None:
    digests = record(tmp_path, "r1", 2)
    mark_ended(tmp_path, EU, "r1", "failed", "x")
    blob = BlobStore(tmp_path / "blobs").path(digests[1])
    blob.chmod(0o644)
    blob.unlink()
    with pytest.raises(ConfigError, match="missing from the blobs"):
        resume_point(tmp_path, EU, "r1", 5)
    record(tmp_path, "r2", 0)
    mark_ended(tmp_path, EU, "r2", "failed", "x")
    with pytest.raises(ConfigError, match="recorded no round with a model"):
        resume_point(tmp_path, EU, "r2", 5)


def test_init_from_a_run_a_digest_or_a_global_version(tmp_path) -> None:
    digests = record(tmp_path, "r1", 2)
    assert init_point(tmp_path, EU, "r1") == StartPoint(digests[1])
    assert init_point(tmp_path, EU, digests[0]) == StartPoint(digests[0])
    with pytest.raises(ConfigError, match="no model 000000000000"):
        init_point(tmp_path, EU, "0" * 64)
    with pytest.raises(ConfigError, match="neither a run of region eu nor a 64-hex"):
        init_point(tmp_path, EU, "r9")
    with pytest.raises(UsageError, match="no coordinator in"):
        init_point(tmp_path, EU, "global:3")
    with pytest.raises(ConfigError, match="give global:N with N >= 1"):
        init_point(tmp_path, EU, "global:0")


def test_a_stop_is_recorded_and_the_first_end_stands(tmp_path) -> None:
    record(tmp_path, "r1", 1)
    store = region_store(tmp_path, EU)
    assert store.stop_run("r1", "eu", "op@host", "stopped with `fedgate region stop`") == "running"
    store.finish_run("r1", status="interrupted", note="the ServerApp's own late end")
    assert store.run("r1").status == "stopped"
    assert not mark_ended(tmp_path, EU, "r1", "failed", "too late")
    # a run stopped before it ever started gets a row saying so
    assert store.stop_run("r2", "eu", "op@host") == ""
    assert store.run("r2").status == "stopped"
    with store.engine.connect() as conn:
        kinds = [k for (k,) in conn.execute(text("SELECT kind FROM events ORDER BY seq"))]
    assert kinds.count("run.stopped") == 2 and "run.finished" not in kinds


def test_a_failed_run_names_the_rounds_its_database_holds(tmp_path) -> None:
    """The failure line is told by the region database, not only by progress lines: a run
    whose round 1 is recorded but never reached the progress file does not say "no round was
    recorded" (a defect seen in live runs)."""
    from fedgate.server.launch.runner import Submission

    record(tmp_path, "r7", 1)
    sub = Submission("eu", tmp_path, tmp_path / "out", tmp_path / "out" / "flwr-run.log", None,
                     run_id="r7", region_config=EU)  # fmt: skip
    sub.events = [{"kind": "started", "run_id": "r7"}]
    line = sub.no_result()
    assert "round 1 stays recorded in the region database" in line, line
    assert "no round was recorded" not in line
    sub.run_id, sub.events = "r8", [{"kind": "started", "run_id": "r8"}]  # unknown run
    assert "no round was recorded" in sub.no_result()
