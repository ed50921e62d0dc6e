"""A round's record adds up: one fate per sampled node, Flower transport errors on the round
(never as fates), and no declared example count buys more than its share of the weight."""

from __future__ import annotations

import time

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgate.strategies.aggregators import make_aggregator
from fedgate.strategies.fates import ClientFate
from fedgate.strategies.robust_strategy import (
    RobustStrategy,
    RoundCountError,
    RoundRecord,
    structural_screen,
)
from fedgate.strategies.train_round import MEDIAN_CAP, capped_weights, match_replies

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
CURRENT = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
UNAVAILABLE = "Reply message objects are unavailable."


def message(src: int, reply_to: str, *, value: float = 1.0, examples: int = 10,
            error: Error | None = None) -> Message:  # fmt: skip
    """A reply from ``src`` to message ``reply_to``: an update, or Flower's ``error``."""
    meta = Metadata(
        run_id=1, message_id=f"r{src}", src_node_id=src, dst_node_id=0,
        reply_to_message_id=reply_to, group_id="1", created_at=time.time(), ttl=60.0,
        message_type="train",
    )  # fmt: skip
    if error is not None:
        return Message(metadata=meta, error=error)
    arrays = ArrayRecord({"w": Array(np.full(4, value, np.float32))})
    metrics = MetricRecord({"train-loss": 1.0, "num-examples": examples})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), metadata=meta)


def sent(nodes: list[int]) -> dict[str, int]:
    """Message id -> node of the round's train messages (as Flower sets them on sending)."""
    return {f"m{n}": n for n in nodes}


def strategy_round(nodes: list[int], replies: list[Message], **kw) -> RoundRecord:
    """One ``aggregate_train`` of a strategy that sent round 1 to ``nodes``."""
    strategy = RobustStrategy(make_aggregator("mean", 0), clients_per_round=len(nodes), **kw)
    strategy._current = CURRENT
    messages = []
    for node in nodes:
        meta = Metadata(
            run_id=1, message_id=f"m{node}", src_node_id=0, dst_node_id=node,
            reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60.0,
            message_type="train",
        )  # fmt: skip
        messages.append(Message(RecordDict({"arrays": CURRENT}), metadata=meta))
    strategy._sent[1] = messages
    strategy.aggregate_train(1, replies)
    return strategy.rounds[-1]


def test_an_unavailable_reply_is_a_transport_error_not_an_extra_client() -> None:
    nodes = [11, 12, 13]
    lost = message(SUPERLINK_NODE_ID, "m12",
                   error=Error(ErrorCode.MESSAGE_UNAVAILABLE, UNAVAILABLE))  # fmt: skip
    record = strategy_round(nodes, [message(11, "m11"), lost, message(13, "m13")], min_clients=1)
    assert record.sampled == 3 and len(record.clients) == 3
    assert {c.node_id for c in record.clients} == set(nodes)  # no fate for node 1
    (missing,) = [c for c in record.clients if not c.accepted]
    assert (missing.node_id, missing.reason) == (12, "no-reply")
    assert missing.detail == f"Flower error {ErrorCode.MESSAGE_UNAVAILABLE}: {UNAVAILABLE}"
    assert [(e.node_id, e.code, e.reason) for e in record.transport_errors] == [
        (12, ErrorCode.MESSAGE_UNAVAILABLE, UNAVAILABLE)
    ]
    assert (record.accepted, record.rejected) == (2, 1)


def test_a_clientapp_failure_is_that_nodes_fate() -> None:
    crashed = message(12, "m12", error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "boom"))
    record = strategy_round([11, 12], [message(11, "m11"), crashed], min_clients=1)
    assert [(c.node_id, c.reason, c.detail) for c in record.clients if not c.accepted] == [
        (12, "client-error", "boom")
    ]
    assert record.transport_errors == []


def test_replies_that_answer_no_sampled_node_are_transport_errors() -> None:
    replies = [message(99, "x"), message(11, "m11"), message(11, "m11", value=2.0)]
    matched = match_replies(replies, [11, 12], sent([11, 12]))
    assert [r.metadata.src_node_id for r in matched.updates] == [11]
    assert [(e.node_id, e.reason) for e in matched.transport] == [
        (None, "reply from node 99 answers no message sent this round"),
        (11, "a second reply for node 11"),
    ]
    assert [(f.node_id, f.reason) for f in matched.unanswered] == [(12, "no-reply")]


def test_a_record_with_more_fates_than_sampled_devices_cannot_be_built() -> None:
    fates = [ClientFate(n, False, "no-reply") for n in (1, 2, 3)]
    with pytest.raises(RoundCountError, match="3 fate"):
        RoundRecord(round=1, sampled=2, clients=fates)
    with pytest.raises(RoundCountError, match="one fate per sampled node"):
        RoundRecord(round=1, sampled=3, clients=[fates[0], fates[0]])


REPLY = st.tuples(
    st.sampled_from([11, 12, 13, 14, SUPERLINK_NODE_ID, 99]),  # src node
    st.sampled_from(["m11", "m12", "m13", "m14", "", "x"]),  # the message it answers
    st.sampled_from(
        [
            "ok",
            "nan",
            ErrorCode.MESSAGE_UNAVAILABLE,
            ErrorCode.NODE_UNAVAILABLE,
            ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        ]
    ),
)


@SETTINGS
@given(
    nodes=st.lists(st.sampled_from([11, 12, 13, 14]), min_size=1, max_size=4, unique=True),
    shape=st.lists(REPLY, max_size=10),
)
def test_a_round_never_shows_more_fates_than_devices_sampled(nodes, shape) -> None:
    replies = [
        message(src, to, value=np.nan if kind == "nan" else 1.0)
        if kind in ("ok", "nan")
        else message(src, to, error=Error(kind, "flower says no"))
        for src, to, kind in shape
    ]
    record = strategy_round(nodes, replies, min_clients=1)
    assert record.sampled == len(nodes) == len(record.clients)
    assert sorted(c.node_id for c in record.clients) == sorted(nodes)
    assert record.accepted + record.rejected == record.sampled
    answers = [c for c in record.clients if c.reason != "no-reply"]
    assert len(answers) + len(record.transport_errors) == len(replies)  # each reply once
    assert all(e.node_id in (None, *nodes) for e in record.transport_errors)


def test_one_device_claiming_a_billion_examples_gets_its_share_not_more() -> None:
    nodes = list(range(11, 18))
    replies = [message(n, f"m{n}", examples=120) for n in nodes[:-1]]
    replies.append(message(nodes[-1], f"m{nodes[-1]}", examples=10**9))
    record = strategy_round(nodes, replies, min_clients=1)
    weights = {c.node_id: c.weight for c in record.clients}
    k, n = MEDIAN_CAP, len(nodes)
    assert weights[nodes[-1]] == pytest.approx(k / (n - 1 + k))  # 2/8, was 1000/1720
    assert weights[nodes[0]] == pytest.approx(1 / (n - 1 + k))


@SETTINGS
@given(
    honest=st.integers(1, 1000),
    n=st.integers(3, 12),
    claim=st.integers(1, 10**9),
    k=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
)
def test_a_declared_count_buys_at_most_k_over_n_minus_1_plus_k(honest, n, claim, k) -> None:
    weights = capped_weights([honest] * (n - 1) + [min(claim, 1000)], k)
    assert weights[-1] / weights.sum() <= k / (n - 1 + k) + 1e-12
    assert np.all(weights[:-1] == honest)  # honest counts are never capped


@SETTINGS
@given(st.lists(st.integers(1, 10**9), min_size=1, max_size=12))
def test_no_weight_exceeds_k_times_the_median_count(counts) -> None:
    weights = capped_weights(counts)
    median = float(np.median(counts))
    assert np.all(weights <= MEDIAN_CAP * median) and np.all(weights <= counts)
    within = np.array(counts) <= MEDIAN_CAP * median
    assert np.all(weights[within] == np.array(counts)[within])  # only the excess is cut


@pytest.mark.parametrize("count", [float("nan"), float("inf"), 0, -3])
def test_an_unusable_example_count_is_missing_fields(count) -> None:
    fate = structural_screen(message(11, "m11", examples=count), 1, CURRENT)
    assert (fate.accepted, fate.reason) == (False, "missing-fields")
