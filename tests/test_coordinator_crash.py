"""Kill the coordinator during a merge (SIGKILL at a chosen step), restart it: the state is
the old global version or the new one, never a mix, and its audit chain verifies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from coordinator_kit import bundle, make_fed, write_bundle
from typer.testing import CliRunner

from fedgate import cli
from fedgate.crash_points import PAUSE_AT, PAUSE_DIR
from fedgate.server.coordinator.service import Coordinator, default_inbox
from fedgate.server.coordinator.versions import check_version

ENTRY = "import sys; from fedgate.cli import main; sys.argv[0] = 'fedgate'; main()"


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"merge exited ({proc.returncode}) before {path.name}: {out}")
        if time.monotonic() > end:
            proc.kill()
            pytest.fail(f"merge never reached {path.name}")
        time.sleep(0.05)


def _verify(home: Path) -> dict:
    cli._register()
    result = CliRunner().invoke(cli.app, ["audit", "verify", "--coordinator", "--home",
                                          str(home), "--strict", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize(
    ("step", "survives"),
    [("after-weights", False), ("in-transaction", False), ("after-commit", True)],
)
def test_kill_during_merge_leaves_old_or_new_version(
    tmp_path: Path, step: str, survives: bool
) -> None:
    fed = make_fed(tmp_path, "eu", "us", "apac")
    fed.write(tmp_path)
    inbox = default_inbox(tmp_path)
    for name, region in fed.regions.items():
        write_bundle(inbox, name, bundle(region))
    Coordinator(tmp_path)  # key and database exist before the kill
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**os.environ, PAUSE_AT: step, PAUSE_DIR: str(pause)}
    proc = subprocess.Popen(
        [sys.executable, "-c", ENTRY, "coordinator", "merge", "--home", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _wait_for(pause / f"{step}.reached", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if proc.stdout:
        proc.stdout.close()

    restarted = Coordinator(tmp_path)
    store = restarted.store
    assert store.current_version() == (1 if survives else 0)
    assert [v.version for v in store.versions()] == ([1] if survives else [])
    report = _verify(tmp_path)
    assert report["global_versions_checked"] == (1 if survives else 0)
    if not survives:
        assert store.decisions() == []  # nothing half-recorded
        outcome = restarted.merge_once(inbox)  # the retry publishes version 1 whole
        assert outcome.published is not None and outcome.published.info.version == 1
    info = store.version(1)
    assert info is not None
    pred = check_version(info, restarted.blobs, restarted.signer.public_key())
    assert {e["region"] for e in pred["lineage"]} == {"eu", "us", "apac"}
    assert _verify(tmp_path)["global_versions_checked"] == 1


def test_restart_sweeps_what_a_killed_blob_write_left(tmp_path: Path) -> None:
    fed = make_fed(tmp_path, "eu")
    fed.write(tmp_path)
    coord = Coordinator(tmp_path)
    stray = coord.blobs.root / "ab" / ".abcd.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a model")
    Coordinator(tmp_path)
    assert not stray.exists()
