"""A boosted backdoor on real SuperLink/SuperNodes (issue 19, point 5).

One region, ten SuperNodes: nine honest devices and one attacker that trains on its data plus
a copy carrying the corner trigger labelled 0 and boosts its update (model replacement). Run 1
trains with all ten; then the operator revokes the attacker and run 2 trains the nine honest
devices alone (attack-free). The region default (the ensemble behind the trigger repair) must
keep the attacked model's backdoor success on the common test split's triggered copy under
0.05, keep its accuracy within three points of the attack-free run, and say in every round's
record what the repair did.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import fedgate_cli as fedgate
from conftest import region_toml

from fedgate.server.launch.local_devices import device_dir
from fedgate.server.launch.processes import free_port_block
from fedgate.server.launch.runner import follow, submit

pytestmark = pytest.mark.integration

BACKDOOR = 9
ROUNDS = 8


@pytest.fixture(scope="module")
def region(local_topology):
    toml = region_toml(
        "eu", free_port_block(24), rounds=ROUNDS, clients_per_round=10, min_clients=8, f=1,
        nodes=["phone", "pi"] * 5, attacks={str(BACKDOOR): "backdoor"},
    )  # fmt: skip
    return local_topology(toml)


def _run(home, fed):
    events: list[dict] = []
    sub = submit(fed, fed.region("eu"), home)
    done = follow([sub], lambda s, e: events.append(e), timeout=900)["eu"]
    return done, [e for e in events if e["kind"] == "round"]


@pytest.fixture(scope="module")
def attacked(region):
    return _run(*region)


def _backdoor_success(home, sha256: str) -> float:
    import torch

    from fedgate.clients.sim.attacks import backdoor_success_rate
    from fedgate.models.data import common_test_split
    from fedgate.models.nets import build_model
    from fedgate.server.db.blobs import BlobStore

    model = build_model("mlp-64-32-10", seed=0)
    tensors = BlobStore(home / "blobs").get_tensors(sha256)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
    model.eval()

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).argmax(1).numpy()

    return backdoor_success_rate(predict, common_test_split(0))


def test_the_repair_keeps_the_backdoor_out(region, attacked) -> None:
    home, _ = region
    done, rounds = attacked
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert all("trigger-repair: " in r["note"] for r in rounds), rounds[0]["note"]
    rate = _backdoor_success(home, done["model_sha256"])
    print(f"backdoor success {rate:.3f}, test accuracy {done['test_acc']:.3f}")  # -rP shows it
    assert rate < 0.05, (rate, [r["note"] for r in rounds])
    device = json.loads((device_dir(home, "eu", BACKDOOR) / "enrollment.json").read_text())
    fates = [
        c["fate"] for r in rounds for c in r["clients"] if c["device_id"] == device["device_id"]
    ]
    print("the attacker's fate per round:", fates)
    assert len(fates) == ROUNDS and "dropped" in fates, fates


def test_attacked_accuracy_within_three_points_of_attack_free(region, attacked) -> None:
    home, fed = region
    attacked_done, _ = attacked
    device = json.loads((device_dir(home, "eu", BACKDOOR) / "enrollment.json").read_text())
    fedgate("region", "revoke", device["device_id"][:12], "--region", "eu", "--home", home)
    clean_done, rounds = _run(home, fed)
    assert all(r["accepted"] == 9 for r in rounds), rounds
    print(f"attacked {attacked_done['test_acc']:.3f}, attack-free {clean_done['test_acc']:.3f}")
    assert clean_done["test_acc"] > 0.8, clean_done
    assert attacked_done["test_acc"] >= clean_done["test_acc"] - 0.03, (
        attacked_done["test_acc"],
        clean_done["test_acc"],
    )
