"""The region strategy hands its server-side scorer to the validated ensemble each round."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

from fedgate.strategies.aggregators import make_aggregator
from fedgate.strategies.robust_strategy import RobustStrategy


def _reply(node: int, value: float) -> Message:
    meta = Metadata(
        run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0,
        reply_to_message_id="x", group_id="1", created_at=time.time(), ttl=60.0,
        message_type="train",
    )  # fmt: skip
    arrays = ArrayRecord({"w": Array(np.full(4, value, np.float32))})
    metrics = MetricRecord({"train-loss": 1.0, "num-examples": 10})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), metadata=meta)


def _round(scorer) -> tuple[RobustStrategy, ArrayRecord]:
    ensemble = make_aggregator("ensemble", 1, members=("mean", "median"))
    strategy = RobustStrategy(ensemble, clients_per_round=5, min_clients=3, scorer=scorer)
    strategy._current = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    # four honest updates at 1.0, one outlier at 101: the mean is 21, the median 1
    replies = [_reply(n, 1.0) for n in range(1, 5)] + [_reply(5, 101.0)]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return strategy, arrays


def test_scorer_sees_candidate_models_and_its_choice_is_applied() -> None:
    seen: list[float] = []

    def distance_to_one(candidate: ArrayRecord) -> float:
        w = candidate["w"].numpy()
        seen.append(float(w[0]))
        return float(np.abs(w - 1.0).sum())

    strategy, arrays = _round(distance_to_one)
    assert sorted(seen) == [1.0, 21.0]  # the global model plus each member's aggregate
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)
    note = strategy.rounds[-1].note
    assert "chose median" in note and "mean 80" in note, note


def test_scorer_preferring_the_mean_gets_the_mean() -> None:
    strategy, arrays = _round(lambda c: float(np.abs(c["w"].numpy() - 21.0).sum()))
    np.testing.assert_allclose(arrays["w"].numpy(), 21.0)
    assert "chose mean" in strategy.rounds[-1].note


def test_without_a_scorer_the_ensemble_says_it_used_its_fallback() -> None:
    strategy, arrays = _round(None)
    np.testing.assert_allclose(arrays["w"].numpy(), 1.0)  # fallback: the last member
    assert "no scorer set" in strategy.rounds[-1].note
