"""The region strategy: the ensemble's server-side scorer, and federated evaluation folded
into the training replies."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import train_reply
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedgate.strategies.aggregators import make_aggregator
from fedgate.strategies.robust_strategy import RobustStrategy, RoundRecord


def _reply(node: int, value: float, **metrics: float) -> Message:
    arrays = ArrayRecord({"w": Array(np.full(4, value, np.float32))})
    record = MetricRecord({"train-loss": 1.0, "num-examples": 10, **metrics})
    return train_reply(node, RecordDict({"arrays": arrays, "metrics": record}))


def _round(scorer) -> tuple[RobustStrategy, ArrayRecord]:
    # the plumbing of the scorer, on exact member outputs: no backdoor pre-filter
    ensemble = make_aggregator("ensemble", 1, members=("mean", "median"), filter="")
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


def test_training_replies_rate_the_previous_model_weighted_by_their_examples() -> None:
    reported: list[tuple[int, dict]] = []
    strategy = RobustStrategy(
        make_aggregator("mean", 0), clients_per_round=3, min_clients=2,
        on_evaluated=lambda r, m: reported.append((r, m)),
    )  # fmt: skip
    strategy._current = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    strategy.rounds.append(RoundRecord(round=1, sampled=3))  # round 1's record, already kept
    replies = [
        _reply(1, 1.0, **{"eval-loss": 1.0, "eval-acc": 0.5, "eval-examples": 30}),
        _reply(2, 1.0, **{"eval-loss": 2.0, "eval-acc": 0.9, "eval-examples": 10}),
        _reply(3, 1.0),  # a device that sent no rating is left out, not counted as zero
    ]
    strategy.aggregate_train(2, replies)
    assert [r for r, _ in reported] == [1]
    metrics = reported[0][1]
    assert metrics["fed-eval-acc"] == pytest.approx(0.6)  # (0.5*30 + 0.9*10) / 40
    assert metrics["fed-eval-loss"] == pytest.approx(1.25)
    assert metrics["fed-eval-devices"] == 2
    assert strategy.record_for(1).metrics["fed-eval-acc"] == pytest.approx(0.6)


def test_rejected_updates_do_not_rate_the_model() -> None:
    reported: list[tuple[int, dict]] = []
    strategy = RobustStrategy(
        make_aggregator("mean", 0), clients_per_round=2, min_clients=1,
        on_evaluated=lambda r, m: reported.append((r, m)),
    )  # fmt: skip
    strategy._current = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    bad = _reply(2, float("nan"), **{"eval-loss": 0.0, "eval-acc": 1.0, "eval-examples": 99})
    good = _reply(1, 1.0, **{"eval-loss": 1.0, "eval-acc": 0.4, "eval-examples": 5})
    strategy.aggregate_train(1, [good, bad])
    assert reported == [(0, {"fed-eval-loss": 1.0, "fed-eval-acc": 0.4, "fed-eval-devices": 1.0})]


def test_foolsgold_filter_keeps_each_device_history_by_node_id() -> None:
    ensemble = make_aggregator("ensemble", 1, members=("mean", "median"), filter="foolsgold")
    strategy = RobustStrategy(ensemble, clients_per_round=5, min_clients=3)
    strategy._current = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    replies = [_reply(n, float(n)) for n in (11, 12, 13, 14, 15)]
    assert strategy.aggregate_train(1, replies)[0] is not None
    assert set(ensemble._sybils.history) == {11, 12, 13, 14, 15}
    assert "foolsgold: dropped 0/5" in strategy.rounds[-1].note
    assert "from history" in strategy.rounds[-1].note
