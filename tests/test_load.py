"""The demo's topology under load: two CPU-burning processes run alongside while every region
completes three runs in a row, and no log of any process mentions "database is locked".

An integration test with a generous limit, not a timing assertion: a busy machine is the
normal case, so the runs must complete on it; how long they took is printed for the record.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from pathlib import Path

import pytest
from conftest import processes_mentioning

from fedgate.server.launch.config import default_federation
from fedgate.server.launch.processes import free_port_block
from fedgate.server.launch.runner import follow, submit
from fedgate.server.launch.topology import down, up

pytestmark = pytest.mark.integration

RUNS = 3
ROUNDS = 1
LOCKED = "database is locked"


def burn() -> None:
    """Keep one core busy until terminated."""
    x = 0
    while True:
        x = (x * 31 + 7) % 1_000_003


def lock_errors(home: Path) -> list[str]:
    """Every log line under ``home`` that reports a locked database."""
    found = []
    for log in home.rglob("*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if LOCKED in line:
                found.append(f"{log.relative_to(home)}: {line.strip()[:200]}")
    return found


def test_demo_topology_completes_every_region_three_times_under_cpu_load(tmp_path) -> None:
    fed = default_federation()
    base = free_port_block(40 * len(fed.regions))
    regions = tuple(
        dataclasses.replace(r, port=base + 40 * i, rounds=ROUNDS) for i, r in enumerate(fed.regions)
    )
    fed = dataclasses.replace(fed, regions=regions)
    home = tmp_path / "home"
    burners = [multiprocessing.get_context("fork").Process(target=burn) for _ in range(2)]
    for b in burners:
        b.start()
    took = []
    try:
        t0 = time.monotonic()
        up(fed, home, timeout=300, echo=lambda *_: None)
        took.append(("up", time.monotonic() - t0))
        for i in range(RUNS):
            t0 = time.monotonic()
            subs = [submit(fed, r, home) for r in fed.regions]
            done = follow(subs, lambda *_: None, timeout=1200)
            took.append((f"run {i + 1}", time.monotonic() - t0))
            for region in fed.region_names:
                assert done[region]["kind"] == "finished", done[region]
                assert done[region]["rounds"] == ROUNDS and done[region]["accepted"] > 0
    finally:
        down(home)
        for b in burners:
            b.terminate()
            b.join()
    print("under load (2 burners): " + ", ".join(f"{k} {v:.0f} s" for k, v in took))
    assert lock_errors(home) == []
    assert not processes_mentioning(str(home))
