"""What recording a round writes, computed without a database."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.server.audit.round_rows import finite, metric_rows, round_write
from fedgate.strategies.fates import ClientFate, TransportError
from fedgate.strategies.robust_strategy import RoundRecord

DEV = "d" * 64


def _record() -> RoundRecord:
    kept = ClientFate(1, True, device_id=DEV, digest="a" * 64, num_examples=30, fate="kept",
                      score=0.5, weight=0.75)  # fmt: skip
    clipped = ClientFate(2, True, num_examples=10, fate="clipped", score=float("inf"), weight=0.25)
    refused = ClientFate(3, False, reason="bad-signature", detail="forged")
    metrics = {"train-loss": 0.5, "fed-eval-acc": math.nan}
    return RoundRecord(round=4, sampled=5, clients=[kept, clipped, refused], aggregated=True,
                       note="chose median", metrics=metrics)  # fmt: skip


def test_round_row_counts_verdicts() -> None:
    rows = round_write("r1", _record())
    assert rows.round == {"run_id": "r1", "round": 4, "sampled": 5, "accepted": 2,
                          "rejected": 1, "aggregated": True, "note": "chose median",
                          "transport_errors": 0}  # fmt: skip


def test_update_rows_carry_each_fate_with_non_finite_scores_as_none() -> None:
    rows = round_write(7, _record())
    assert [(u["run_id"], u["round"], u["node_id"], u["verdict"]) for u in rows.updates] == [
        ("7", 4, "1", "accepted"),
        ("7", 4, "2", "accepted"),
        ("7", 4, "3", "rejected"),
    ]
    first, second, third = rows.updates
    assert (first["device_id"], first["digest"], first["num_examples"]) == (DEV, "a" * 64, 30)
    assert (first["fate"], first["score"], first["weight"]) == ("kept", 0.5, 0.75)
    assert (second["fate"], second["score"], second["weight"]) == ("clipped", None, 0.25)
    assert (third["reason"], third["detail"], third["fate"], third["weight"]) == (
        "bad-signature",
        "forged",
        "",
        0.0,
    )


def test_events_follow_the_clients_then_close_the_round() -> None:
    rows = round_write("r1", _record(), model_sha256="b" * 64)
    assert [kind for kind, _ in rows.events] == [
        "update.accepted",
        "aggregator.decision",
        "update.accepted",
        "aggregator.decision",
        "update.rejected",  # no aggregator decision for a rejected update
        "round.closed",
    ]
    verdict, decision = rows.events[0][1], rows.events[1][1]
    assert verdict == {"run": "r1", "round": 4, "node": "1", "device": DEV, "digest": "a" * 64,
                       "num_examples": 30, "reason": "", "detail": ""}  # fmt: skip
    assert decision == {"run": "r1", "round": 4, "node": "1", "device": DEV, "fate": "kept",
                        "score": 0.5, "weight": 0.75}  # fmt: skip
    assert rows.events[-1][1] == {
        "run": "r1", "round": 4, "sampled": 5, "accepted": 2, "rejected": 1, "aggregated": True,
        "note": "chose median", "metrics": {"train-loss": 0.5, "fed-eval-acc": None},
        "model": "b" * 64,
    }  # fmt: skip


def test_only_finite_metrics_become_rows_and_no_model_no_model_key() -> None:
    rows = round_write("r1", _record())
    assert rows.metrics == [{"run_id": "r1", "round": 4, "name": "train-loss", "value": 0.5}]
    assert "model" not in rows.events[-1][1]


def test_dict_records_are_read_like_dataclasses() -> None:
    record = {"round": 2, "clients": [{"node_id": 9, "accepted": False, "reason": "no-reply"}]}
    rows = round_write("r1", record)
    assert rows.round["sampled"] == 1  # no ``sampled``: the clients the round knows of
    assert (rows.round["accepted"], rows.round["rejected"], rows.round["note"]) == (0, 1, "")
    assert rows.updates[0]["node_id"] == "9" and rows.updates[0]["num_examples"] == 0
    assert [kind for kind, _ in rows.events] == ["update.rejected", "round.closed"]


def test_a_refused_update_names_the_device_it_claims_and_transport_errors_close_the_round() -> None:
    claimed = ClientFate(3, False, reason="wrong-shape", detail="w", claimed_device_id=DEV)
    lost = ClientFate(2, False, reason="no-reply", detail="Flower error 3: objects unavailable")
    error = TransportError(2, 3, "Reply message objects are unavailable")
    record = RoundRecord(round=1, sampled=2, clients=[lost, claimed], transport_errors=[error])
    rows = round_write("r1", record)
    assert rows.round["transport_errors"] == 1
    assert (rows.round["sampled"], rows.round["accepted"], rows.round["rejected"]) == (2, 0, 2)
    refused = rows.updates[1]
    assert (refused["node_id"], refused["device_id"], refused["claimed_device_id"]) == (
        "3",
        "",
        DEV,
    )
    assert rows.updates[0]["claimed_device_id"] == ""
    assert "claimed_device" not in rows.events[0][1]
    assert rows.events[1][1]["claimed_device"] == DEV and rows.events[1][1]["device"] == ""
    assert rows.events[-1][1]["transport_errors"] == [
        {"node": "2", "code": 3, "reason": "Reply message objects are unavailable"}
    ]


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.floats() | st.integers(-(2**40), 2**40)))
def test_metric_rows_keep_exactly_the_finite_values(values: dict[str, float]) -> None:
    cleaned = {k: finite(v) for k, v in values.items()}
    rows = metric_rows("r1", None, cleaned)
    assert {r["name"]: r["value"] for r in rows} == {
        k: float(v) for k, v in values.items() if math.isfinite(v)
    }
    assert all(r["run_id"] == "r1" and r["round"] is None for r in rows)
