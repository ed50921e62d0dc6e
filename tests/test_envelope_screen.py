"""signature_screen in a RobustStrategy round: forged and revoked updates are refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import train_reply as reply
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedgate.crypto import fingerprint, generate_key, public_bytes
from fedgate.server.region.nonces import ReplayGuard, RoundNonces
from fedgate.server.trust.enrollment import region_registry
from fedgate.strategies.aggregators import make_aggregator
from fedgate.strategies.envelope import Reason, sign_update, signature_screen
from fedgate.strategies.robust_strategy import RobustStrategy, structural_screen

RUN = "run-42"


def model(value: float) -> ArrayRecord:
    return ArrayRecord(
        {"w": Array(np.full((3, 2), value, np.float32)), "b": Array(np.zeros(2, np.float32))}
    )


class Fleet:
    def __init__(self, tmp_path: Path) -> None:
        self.registry = region_registry(tmp_path, "eu", db=f"sqlite:///{tmp_path / 'eu.db'}")
        self.nonces = RoundNonces()
        self.keys = [generate_key() for _ in range(4)]
        for key in self.keys:
            self.registry.enroll(self.registry.issue_token(), public_bytes(key))
        self.screen = signature_screen(
            self.registry, "eu", RUN, self.nonces, structural_screen, seen=ReplayGuard()
        )

    def content(self, key, server_round: int, base: ArrayRecord, value: float, n=10, **kw):
        arrays = model(value)
        metrics = {"train-loss": 1.0, "num-examples": n}
        env = sign_update(
            key,
            region=kw.get("region", "eu"),
            run_id=RUN,
            server_round=server_round,
            nonce=self.nonces(server_round),
            base=base,
            arrays=arrays,
            metrics=metrics,
        )
        return RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics), "envelope": env})


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path)
    yield fleet
    fleet.registry.close()


def test_honest_update_is_accepted_with_device_and_signed_count(fleet: Fleet) -> None:
    base = model(0.0)
    fate = fleet.screen(reply(1, fleet.content(fleet.keys[0], 1, base, 1.0, n=25)), 1, base)
    assert fate.accepted, fate
    assert (fate.device_id, fate.num_examples) == (fingerprint(fleet.keys[0]), 25)


def test_structural_rejections_come_first(fleet: Fleet) -> None:
    base = model(0.0)
    content = fleet.content(fleet.keys[0], 1, base, np.nan)
    assert fleet.screen(reply(1, content), 1, base).reason == "non-finite"


def test_unsigned_forged_and_tampered_replies(fleet: Fleet) -> None:
    base = model(0.0)
    unsigned = fleet.content(fleet.keys[0], 1, base, 1.0)
    del unsigned["envelope"]
    assert fleet.screen(reply(1, unsigned), 1, base).reason == Reason.UNSIGNED

    tampered = fleet.content(fleet.keys[1], 1, base, 1.0)
    tampered["arrays"] = model(5.0)
    assert fleet.screen(reply(2, tampered), 1, base).reason == Reason.DIGEST_MISMATCH

    bought = fleet.content(fleet.keys[2], 1, base, 1.0, n=10)
    bought["metrics"] = MetricRecord({"train-loss": 1.0, "num-examples": 10_000})
    assert fleet.screen(reply(3, bought), 1, base).reason == Reason.METRICS_MISMATCH

    stale = fleet.content(fleet.keys[3], 1, model(9.0), 1.0)  # trained from another model
    assert fleet.screen(reply(4, stale), 1, base).reason == Reason.WRONG_BASE


def test_registry_failure_rejects_instead_of_crashing(fleet: Fleet) -> None:
    class Broken:
        def get(self, device_id: str):
            raise OSError("database gone")

    screen = signature_screen(Broken(), "eu", RUN, fleet.nonces, structural_screen)
    base = model(0.0)
    fate = screen(reply(1, fleet.content(fleet.keys[0], 1, base, 1.0)), 1, base)
    assert (fate.accepted, fate.reason) == (False, Reason.VERIFICATION_ERROR)


def test_round_completes_with_honest_clients_only(fleet: Fleet, tmp_path: Path) -> None:
    """A revoked device and a forged signature are rejected; the honest updates aggregate."""
    strategy = RobustStrategy(
        make_aggregator("mean", 0), clients_per_round=4, min_clients=2, screen=fleet.screen
    )
    base = model(0.0)
    strategy._current = base  # what configure_train records before a real round
    fleet.registry.revoke(fingerprint(fleet.keys[3]))
    forged = fleet.content(fleet.keys[2], 1, base, 100.0)
    forged["envelope"] = ConfigRecord(
        {**forged["envelope"], "signature": generate_key().sign(b"x").hex()}
    )
    replies = [
        reply(1, fleet.content(fleet.keys[0], 1, base, 1.0)),
        reply(2, fleet.content(fleet.keys[1], 1, base, 3.0)),
        reply(3, forged),
        reply(4, fleet.content(fleet.keys[3], 1, base, 100.0)),
        reply(5, fleet.content(fleet.keys[0], 1, base, 1.0)),  # node 1's update, replayed
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    fates = {f.node_id: (f.accepted, f.reason) for f in strategy.rounds[-1].clients}
    assert fates == {
        1: (True, ""),
        2: (True, ""),
        3: (False, Reason.BAD_SIGNATURE),
        4: (False, Reason.REVOKED),
        5: (False, Reason.REPLAY),
    }
    assert arrays is not None and metrics is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 2.0)
    assert (metrics["accepted"], metrics["rejected"]) == (2, 3)


def test_a_crashing_base_screen_rejects_instead_of_crashing(fleet: Fleet) -> None:
    def explode(reply, server_round, current):
        raise ValueError("cannot parse npy payload")

    screen = signature_screen(fleet.registry, "eu", RUN, fleet.nonces, explode)
    base = model(0.0)
    fate = screen(reply(7, fleet.content(fleet.keys[0], 1, base, 1.0)), 1, base)
    assert (fate.node_id, fate.accepted, fate.reason) == (7, False, Reason.VERIFICATION_ERROR)


def test_a_refused_update_records_the_device_it_claims_unverified(fleet: Fleet) -> None:
    base = model(0.0)
    device = fingerprint(fleet.keys[0])
    broken = fleet.screen(reply(1, fleet.content(fleet.keys[0], 1, base, np.nan)), 1, base)
    assert (broken.reason, broken.node_id) == ("non-finite", 1)
    assert (broken.device_id, broken.claimed_device_id) == ("", device)

    forged = fleet.content(fleet.keys[1], 1, base, 1.0)
    forged["envelope"] = fleet.content(fleet.keys[0], 1, base, 2.0)["envelope"]  # not these arrays
    fate = fleet.screen(reply(2, forged), 1, base)
    assert (fate.reason, fate.device_id, fate.claimed_device_id) == (
        Reason.DIGEST_MISMATCH,
        "",
        device,
    )

    unsigned = fleet.content(fleet.keys[2], 1, base, 1.0)
    del unsigned["envelope"]
    assert fleet.screen(reply(3, unsigned), 1, base).claimed_device_id == ""

    honest = fleet.screen(reply(4, fleet.content(fleet.keys[3], 1, base, 1.0)), 1, base)
    assert honest.accepted and honest.device_id == honest.claimed_device_id


class Counting:
    """The fleet's registry, counting reads (and optionally failing ``devices``)."""

    def __init__(self, registry) -> None:
        self.registry, self.reads, self.gets, self.broken = registry, 0, 0, False

    def devices(self):
        self.reads += 1
        if self.broken:
            raise OSError("database gone")
        return self.registry.devices()

    def get(self, device_id: str):
        self.gets += 1
        return self.registry.get(device_id)


def test_one_registry_read_a_round_and_revocations_until_aggregation(fleet: Fleet) -> None:
    """Lookups share one read per round; ``confirm`` re-reads once and refuses a device
    revoked after its update was checked; a device enrolled mid-round is still found."""
    counting = Counting(fleet.registry)
    screen = signature_screen(counting, "eu", RUN, fleet.nonces, structural_screen)
    base = model(0.0)
    fates = [screen(reply(i + 1, fleet.content(k, 1, base, 1.0)), 1, base)
             for i, k in enumerate(fleet.keys[:3])]  # fmt: skip
    assert all(f.accepted for f in fates) and (counting.reads, counting.gets) == (1, 0)
    late = generate_key()
    fleet.registry.enroll(fleet.registry.issue_token(), public_bytes(late))
    fates.append(screen(reply(9, fleet.content(late, 1, base, 1.0)), 1, base))
    assert fates[-1].accepted and (counting.reads, counting.gets) == (1, 1)
    fleet.registry.revoke(fingerprint(fleet.keys[1]))
    screen.confirm(fates)
    assert [(f.accepted, f.reason) for f in fates] == [
        (True, ""), (False, Reason.REVOKED), (True, ""), (True, "")
    ]  # fmt: skip
    assert counting.reads == 2
    screen(reply(1, fleet.content(fleet.keys[0], 2, base, 1.0)), 2, base)
    assert counting.reads == 3  # the next round reads afresh
    counting.broken = True
    again = [screen(reply(1, fleet.content(fleet.keys[0], 2, base, 1.0)), 2, base)]
    screen.confirm(again)
    assert (again[0].accepted, again[0].reason) == (False, Reason.VERIFICATION_ERROR)
