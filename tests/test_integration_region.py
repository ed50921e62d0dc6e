"""A real regional run: one SuperLink and three SuperNodes on loopback, two rounds."""

from __future__ import annotations

import json

import pytest
from conftest import processes_mentioning, region_toml

from fedgate.server.processes import ProcessTable, free_port_block
from fedgate.server.runner import follow, submit
from fedgate.server.simulation import submit_simulation

pytestmark = pytest.mark.integration


def test_two_rounds_on_real_superlink_and_supernodes(local_topology) -> None:
    region = region_toml(
        "eu", free_port_block(20), rounds=2, clients_per_round=3, min_clients=3,
        nodes=["phone", "pi", "phone"], aggregator="mean", f=0, pre="",
    )  # fmt: skip
    home, fed = local_topology(region)
    running = {p.name for p in ProcessTable(home).running()}
    assert {"superlink-eu", "supernode-eu-0", "supernode-eu-2", "workers-eu"} <= running

    events = []
    sub = submit(fed, fed.region("eu"), home)
    done = follow([sub], lambda s, e: events.append(e), timeout=300)["eu"]

    rounds = [e for e in events if e["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(r["accepted"] == 3 and r["rejected"] == 0 for r in rounds)
    initial = next(e for e in events if e["kind"] == "initial")["val-acc"]
    assert initial < 0.25  # an untrained model: chance level on 10 classes
    assert done["val_acc"] > 0.5, done  # clearly above chance after two rounds
    assert rounds[-1]["fed-eval-acc"] > 0.4
    summary = json.loads((sub.out_dir / "summary.json").read_text())
    assert summary["devices"] == 3 and summary["rounds"] == 2
    assert (sub.out_dir / "model.safetensors").stat().st_size > 0


def test_simulation_engine_with_ten_virtual_clients(tmp_path) -> None:
    from fedgate.server.config import default_federation

    fed = default_federation()
    eu = fed.region("eu")
    import dataclasses

    eu = dataclasses.replace(eu, rounds=2, clients_per_round=10, min_clients=8, revoked=())
    home = tmp_path / "home"
    events = []
    sub = submit_simulation(fed, eu, home, num_supernodes=12)
    done = follow([sub], lambda s, e: events.append(e), timeout=400)["eu"]
    rounds = [e for e in events if e["kind"] == "round"]
    assert len(rounds) == 2 and all(r["sampled"] == 10 for r in rounds)
    assert all(r["accepted"] == 10 for r in rounds)
    assert done["devices"] >= 10 and done["val_acc"] > 0.4
    assert not processes_mentioning(str(home)), "the simulation left processes behind"
