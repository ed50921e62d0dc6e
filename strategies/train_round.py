"""One training round's screening and aggregation, as steps that keep no state.

``RobustStrategy.aggregate_train`` is the thin orchestration around these (logging, the
round's record, the scorer hand-off); each step here takes the round's inputs and returns
its result, so it is testable without a Grid or a strategy. The global model the clients
started from is ``current``; an update enters aggregation as its delta from ``current``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedgate.strategies.aggregators import AggregationResult
from fedgate.strategies.envelope import array_view
from fedgate.strategies.fates import ClientFate

Screen = Callable[[Message, int, ArrayRecord], ClientFate]
"""Decides one reply's fate: ``(reply, server_round, current) -> ClientFate``."""

NO_REPLY = "no-reply"
EVAL_METRICS = ("eval-loss", "eval-acc")


@dataclass
class Accepted:
    """An update that passed the screen: its fate (filled in further by aggregation) and
    the one ArrayRecord and MetricRecord it carried."""

    fate: ClientFate
    arrays: ArrayRecord
    metrics: MetricRecord


@dataclass(frozen=True)
class RoundUpdates:
    """The accepted updates as the aggregator takes them."""

    base: np.ndarray  # the global model, flat float32
    deltas: np.ndarray  # (n, d): each update minus ``base``
    weights: np.ndarray  # (n,): capped example counts


def flatten_record(record: ArrayRecord) -> np.ndarray:
    """All arrays of ``record`` as one float32 vector (read in place, one copy)."""
    return np.concatenate(
        [array_view(a).astype(np.float32, copy=False).ravel() for a in record.values()]
    )


def unflatten_record(vector: np.ndarray, like: ArrayRecord) -> ArrayRecord:
    """``vector`` cut back into ``like``'s arrays (names and shapes), as float32."""
    out, pos = {}, 0
    for key, arr in like.items():
        size = int(np.prod(arr.shape))
        out[key] = Array(vector[pos : pos + size].reshape(arr.shape).astype(np.float32))
        pos += size
    return ArrayRecord(out)


def unanswered(sampled: Iterable[int], replies: Sequence[Message]) -> list[ClientFate]:
    """A ``no-reply`` rejection for every sampled node that sent no reply, in sampled order."""
    answered = {reply.metadata.src_node_id for reply in replies}
    return [
        ClientFate(node, False, NO_REPLY, "no reply before the round timeout")
        for node in sampled
        if node not in answered
    ]


def screen_replies(
    replies: Iterable[Message],
    screen: Screen,
    server_round: int,
    current: ArrayRecord,
    max_examples: int,
) -> tuple[list[ClientFate], list[Accepted]]:
    """Every reply's fate in reply order, and the accepted ones with their example count
    capped at ``max_examples`` (a device cannot buy weight by claiming more data)."""
    fates: list[ClientFate] = []
    accepted: list[Accepted] = []
    for reply in replies:
        fate = screen(reply, server_round, current)
        fates.append(fate)
        if fate.accepted:
            fate.num_examples = min(fate.num_examples, max_examples)
            content = reply.content
            arrays = next(iter(content.array_records.values()))
            metrics = next(iter(content.metric_records.values()))
            accepted.append(Accepted(fate, arrays, metrics))
    return fates, accepted


def too_few_note(accepted: int, min_clients: int) -> str:
    """The round's note when fewer than ``min_clients`` updates survived the screen."""
    return f"only {accepted} accepted update(s) (< min-clients {min_clients}); global model kept"


def round_updates(current: ArrayRecord, accepted: Sequence[Accepted]) -> RoundUpdates:
    """The accepted updates' deltas from ``current`` and their example weights."""
    base = flatten_record(current)
    deltas = np.stack([flatten_record(a.arrays) - base for a in accepted])
    weights = np.array([a.fate.num_examples for a in accepted], dtype=np.float64)
    return RoundUpdates(base, deltas, weights)


def apply_decisions(accepted: Sequence[Accepted], result: AggregationResult) -> None:
    """Copy the aggregator's verdict (fate, score, weight) onto each accepted update's fate."""
    for diag in result.diagnostics:
        fate = accepted[diag.index].fate
        fate.fate, fate.score, fate.weight = diag.fate, diag.score, float(diag.weight)


def train_metrics(accepted: Sequence[Accepted], weights: np.ndarray, rejected: int) -> MetricRecord:
    """The round's example-weighted train loss, example total and accept/reject counts."""
    total = float(weights.sum())
    loss = sum(
        float(a.metrics.get("train-loss", 0.0)) * w for a, w in zip(accepted, weights, strict=True)
    )
    return MetricRecord(
        {
            "train-loss": float(loss / total),
            "num-examples": int(total),
            "accepted": len(accepted),
            "rejected": rejected,
        }
    )


def federated_metrics(records: Iterable[MetricRecord], weight_key: str) -> dict[str, float] | None:
    """Example-weighted ``fed-eval-loss``/``fed-eval-acc`` and ``fed-eval-devices`` over the
    records that rate the model (numeric ``eval-loss``, ``eval-acc`` and a positive
    ``weight_key``); None when none does."""
    rated = [
        (r, float(r[weight_key]))
        for r in records
        if all(isinstance(r.get(k), int | float) for k in (*EVAL_METRICS, weight_key))
        and float(r[weight_key]) > 0
    ]
    if not rated:
        return None
    total = sum(w for _, w in rated)
    metrics = {f"fed-{k}": sum(float(r[k]) * w for r, w in rated) / total for k in EVAL_METRICS}
    metrics["fed-eval-devices"] = float(len(rated))
    return metrics
