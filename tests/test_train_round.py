"""A training round's steps without a Grid, and the strategy's messages built on Flower's
Strategy base (not FedAvg's private helpers)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import train_reply
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp.strategy import FedAvg, Strategy
from flwr.supercore.task_identity import TaskIdentity

from fedgate.strategies.aggregators import make_aggregator
from fedgate.strategies.robust_strategy import RobustStrategy, structural_screen
from fedgate.strategies.train_round import (
    apply_decisions,
    federated_metrics,
    flatten_record,
    round_updates,
    screen_replies,
    too_few_note,
    train_metrics,
    unanswered,
    unflatten_record,
)

CURRENT = ArrayRecord(
    {"a": Array(np.zeros((2, 2), np.float32)), "b": Array(np.zeros(3, np.float32))}
)


def _reply(node: int, value: float, examples: int = 10, loss: float = 1.0) -> Message:
    arrays = ArrayRecord(
        {"a": Array(np.full((2, 2), value, np.float32)), "b": Array(np.full(3, value, np.float32))}
    )
    metrics = MetricRecord({"train-loss": loss, "num-examples": examples})
    return train_reply(node, RecordDict({"arrays": arrays, "metrics": metrics}))


def test_flatten_and_unflatten_are_inverse() -> None:
    record = ArrayRecord(
        {
            "a": Array(np.arange(4, dtype=np.float32).reshape(2, 2)),
            "b": Array(np.ones(3, np.float32)),
        }
    )
    vector = flatten_record(record)
    assert vector.tolist() == [0, 1, 2, 3, 1, 1, 1]
    back = unflatten_record(vector, record)
    assert list(back) == ["a", "b"]
    np.testing.assert_array_equal(back["a"].numpy(), record["a"].numpy())


def test_every_sampled_node_without_a_reply_is_a_no_reply_rejection() -> None:
    fates = unanswered([3, 1, 2], [_reply(2, 1.0)])
    assert [(f.node_id, f.accepted, f.reason) for f in fates] == [
        (3, False, "no-reply"),
        (1, False, "no-reply"),
    ]
    assert unanswered([], [_reply(2, 1.0)]) == []


def test_screening_keeps_reply_order_and_caps_examples() -> None:
    replies = [_reply(1, 1.0, examples=5000), _reply(2, float("nan")), _reply(3, 2.0, examples=7)]
    fates, accepted = screen_replies(replies, structural_screen, 1, CURRENT, max_examples=1000)
    assert [(f.node_id, f.accepted, f.reason) for f in fates] == [
        (1, True, ""),
        (2, False, "non-finite"),
        (3, True, ""),
    ]
    assert [(a.fate.node_id, a.fate.num_examples) for a in accepted] == [(1, 1000), (3, 7)]
    assert accepted[0].fate is fates[0]  # aggregation later fills in the same fate
    assert accepted[1].metrics["train-loss"] == 1.0
    np.testing.assert_array_equal(accepted[1].arrays["b"].numpy(), 2.0)


def test_deltas_weights_decisions_and_metrics_of_a_round() -> None:
    replies = [_reply(1, 1.0, examples=30, loss=1.0), _reply(2, 3.0, examples=10, loss=3.0)]
    _, accepted = screen_replies(replies, structural_screen, 1, CURRENT, max_examples=1000)
    updates = round_updates(CURRENT, accepted)
    assert updates.deltas.shape == (2, 7)
    np.testing.assert_array_equal(updates.deltas[1], 3.0)
    assert updates.weights.tolist() == [30.0, 10.0]

    result = make_aggregator("mean", 0)(updates.deltas, updates.weights)
    np.testing.assert_allclose(result.vector, 1.5)  # (1*30 + 3*10) / 40
    apply_decisions(accepted, result)
    assert [(a.fate.fate, a.fate.weight) for a in accepted] == [("kept", 0.75), ("kept", 0.25)]

    metrics = train_metrics(accepted, updates.weights, rejected=4)
    assert dict(metrics) == {"train-loss": 1.5, "num-examples": 40, "accepted": 2, "rejected": 4}


def test_too_few_note_names_both_counts() -> None:
    assert too_few_note(1, 3) == "only 1 accepted update(s) (< min-clients 3); global model kept"


def test_federated_metrics_weigh_only_records_that_rate_the_model() -> None:
    records = [
        MetricRecord({"eval-loss": 1.0, "eval-acc": 0.5, "eval-examples": 30}),
        MetricRecord({"eval-loss": 2.0, "eval-acc": 0.9, "eval-examples": 10}),
        MetricRecord({"eval-loss": 9.0, "eval-acc": 0.0, "eval-examples": 0}),  # no examples
        MetricRecord({"train-loss": 1.0}),  # no rating
    ]
    metrics = federated_metrics(records, "eval-examples")
    assert metrics == pytest.approx(
        {"fed-eval-loss": 1.25, "fed-eval-acc": 0.6, "fed-eval-devices": 2.0}
    )
    assert federated_metrics(records[2:], "eval-examples") is None


class _Grid:
    """The one Grid call sampling makes."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes


def test_messages_are_built_on_the_strategy_base_with_public_flower_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a ServerApp process has its task identity set before the strategy runs (Flower's runtime)
    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)
    opened: list[tuple[int, dict]] = []
    strategy = RobustStrategy(
        make_aggregator("mean", 0), clients_per_round=2, min_clients=2,
        on_round_opened=lambda r, d: opened.append((r, d)),
    )  # fmt: skip
    assert isinstance(strategy, Strategy) and not isinstance(strategy, FedAvg)
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(4, CURRENT, config, _Grid([7, 8, 9])))
    assert len(messages) == 2 and len({m.metadata.dst_node_id for m in messages}) == 2
    assert {m.metadata.message_type for m in messages} == {MessageType.TRAIN}
    for message in messages:
        assert message.content["arrays"] is CURRENT
        assert dict(message.content["config"]) == {"lr": 0.1, "server-round": 4}
    assert dict(config) == {"lr": 0.1}  # the caller's config is not changed
    assert opened == [(4, {"nodes": [str(m.metadata.dst_node_id) for m in messages],
                           "model_digest": "", "nonce": ""})]  # fmt: skip
    evaluate = list(strategy.configure_evaluate(4, CURRENT, config, _Grid([7, 8])))
    assert [(m.metadata.dst_node_id, m.metadata.message_type) for m in evaluate] == [
        (7, MessageType.EVALUATE),
        (8, MessageType.EVALUATE),
    ]
    assert len(opened) == 1  # only a train message opens a round
