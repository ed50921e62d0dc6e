"""Signing and robust aggregation on real SuperLink/SuperNodes, with misbehaving devices.

One region, ten SuperNodes: six honest devices, two attackers (a boosted backdoor: model
replacement with the corner trigger, and a sign-flipper), one revoked device and one that
signs with a key other than its enrolled one. Run 1 trains with all of them; then the
operator revokes the two attackers and run 2 trains again ("clean": only the six honest
devices get through). Signing must reject exactly the bad envelopes, every round must still
complete, and the region's default rule must keep the attacked model within 3 points of the
clean one while the backdoor's success on the common test split's triggered copy stays under
0.05. With ten small, label-skewed shards a sign-flipped update is as typical as an honest
one, and only the server's validation data tells them apart: the default ensemble's Zeno
member does (the distance-based members alone end 23 points below clean here; see the
robustness notes in the README); the backdoor's trigger is invisible to that data, and the
default's FLAME filter (cosine clustering, median-norm clipping) is what keeps it out.
The backdoor replaced the IPM-100 attacker of earlier versions (any clipping rule stops that
one; the benchmark still measures it), so the backdoor check costs no extra run.
"""

from __future__ import annotations

import json

import pytest
from conftest import fedgate_cli as fedgate
from conftest import region_toml

from fedgate.server.audit.store import Store
from fedgate.server.db import open_readonly, resolve_url
from fedgate.server.launch.local_devices import device_dir
from fedgate.server.launch.processes import free_port_block
from fedgate.server.launch.runner import follow, submit

pytestmark = pytest.mark.integration

HONEST = [0, 1, 2, 3, 4, 5]
ATTACKERS = {6: "backdoor", 7: "sign-flip"}
BACKDOOR = 6
REVOKED, WRONG_KEY = 8, 9
ROUNDS = 10


@pytest.fixture(scope="module")
def region(local_topology):
    toml = region_toml(
        "eu", free_port_block(24), rounds=ROUNDS, clients_per_round=10, min_clients=6, f=2,
        nodes=["phone", "pi"] * 5,
        attacks={**{str(k): v for k, v in ATTACKERS.items()}, str(WRONG_KEY): "wrong-key"},
        revoked=[REVOKED],
    )  # fmt: skip
    home, fed = local_topology(toml)
    return home, fed


def _run(home, fed):
    events: list[dict] = []
    sub = submit(fed, fed.region("eu"), home)
    done = follow([sub], lambda s, e: events.append(e), timeout=600)["eu"]
    return done, [e for e in events if e["kind"] == "round"]


@pytest.fixture(scope="module")
def attacked(region):
    return _run(*region)


def test_bad_envelopes_are_rejected_and_rounds_complete(region, attacked) -> None:
    home, _ = region
    done, rounds = attacked
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    for r in rounds:
        reasons = sorted(c["reason"] for c in r["clients"] if not c["accepted"])
        assert reasons == ["bad-signature", "revoked-device"], r
        assert r["accepted"] == 8 and r["aggregated"]
    assert done["rejected_by_reason"] == {"bad-signature": ROUNDS, "revoked-device": ROUNDS}

    # The operator sees the same through the auditor's verbs, and the chain verifies.
    run_id = done["run_id"]
    shown = fedgate("audit", "show", "--run", run_id, "--round", 1, "--region", "eu",
                    "--home", home, "--json")  # fmt: skip
    fates = json.loads(shown)["clients"]
    assert sorted(u["reason"] for u in fates if u["verdict"] == "rejected") == [
        "bad-signature", "revoked-device",
    ]  # fmt: skip
    assert sum(u["verdict"] == "accepted" for u in fates) == 8
    assert "OK" in fedgate("audit", "verify", "--region", "eu", "--home", home)


def test_attackers_are_handled_by_the_aggregator(attacked) -> None:
    _, rounds = attacked
    last = rounds[-1]["clients"]
    decisions = {c["fate"] for c in last if c["accepted"]}
    assert decisions - {"kept"}, "the robust rule reported no client as clipped/trimmed"
    # the default ensemble names its choice and every member's server loss each round
    assert all(r["note"].startswith("ensemble: chose ") for r in rounds), rounds[0]["note"]


def test_defended_model_stays_within_three_points_of_clean(region, attacked) -> None:
    home, fed = region
    attacked_done, _ = attacked
    for index in ATTACKERS:
        device = json.loads((device_dir(home, "eu", index) / "enrollment.json").read_text())
        fedgate("region", "revoke", device["device_id"][:12], "--region", "eu", "--home", home)
    clean_done, rounds = _run(home, fed)
    for r in rounds:
        assert r["accepted"] == len(HONEST), r
    # Accuracy on the common test split (360 digits no region trains or validates on).
    assert clean_done["test_acc"] > 0.8, clean_done
    # Within 3 points *below* clean: with the backdoor device's clean half and clipped
    # updates the attacked run can end above the six-device clean run (measured 0.883 vs
    # 0.850), which is no loss to defend against.
    assert attacked_done["test_acc"] >= clean_done["test_acc"] - 0.03, (
        attacked_done["test_acc"],
        clean_done["test_acc"],
    )
    store = Store(open_readonly(resolve_url(None, home, "eu")))
    assert [run.status for run in store.runs()] == ["finished", "finished"]


def test_default_keeps_the_backdoor_out(region, attacked) -> None:
    """The attacked run's final model ignores the trigger on the common test split, and every
    round's record explains what the rule did with the backdoored update."""
    import torch

    from fedgate.clients.sim.attacks import backdoor_success_rate
    from fedgate.models.data import common_test_split
    from fedgate.models.nets import build_model
    from fedgate.server.db.blobs import BlobStore

    home, _ = region
    done, rounds = attacked
    model = build_model("mlp-64-32-10", seed=0)
    tensors = BlobStore(home / "blobs").get_tensors(done["model_sha256"])
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
    model.eval()

    def predict(x):
        with torch.no_grad():
            return model(torch.from_numpy(x)).argmax(1).numpy()

    assert backdoor_success_rate(predict, common_test_split(0)) < 0.05
    device = json.loads((device_dir(home, "eu", BACKDOOR) / "enrollment.json").read_text())
    for r in rounds:
        (mine,) = [c for c in r["clients"] if c["device_id"] == device["device_id"]]
        assert mine["accepted"] and mine["fate"] in ("dropped", "clipped", "down-weighted"), r
        assert "flame: kept " in r["note"], r["note"]


def test_enroll_registers_and_revoke_unregisters_the_node_key(region, tmp_path) -> None:
    from fedgate.clients.identity import read_enrollment
    from fedgate.server.launch.transport import load_transport
    from fedgate.server.trust.node_auth import list_nodes

    home, fed = region
    target = load_transport(home).control(fed.region("eu"))
    token = fedgate("region", "enroll-token", "--region", "eu", "--home", home).split()[0]
    out = fedgate("client", "enroll", "--token", token, "--region", "eu", "--profile", "pi",
                  "--home", home, "--device-dir", tmp_path / "dev")  # fmt: skip
    assert "node key registered" in out
    device_id = read_enrollment(tmp_path / "dev").device_id
    status = {n.name: n.status for n in list_nodes(target)}
    assert status[device_id] != "unregistered"
    assert "unregistered node" in fedgate(
        "region", "revoke", device_id[:12], "--region", "eu", "--home", home
    )
    status = {n.name: n.status for n in list_nodes(target)}
    assert status[device_id] == "unregistered"
