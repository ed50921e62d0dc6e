"""One training round's screening and aggregation, as steps that keep no state.

``RobustStrategy.aggregate_train`` is the thin orchestration around these (logging, the
round's record, the scorer hand-off); each step here takes the round's inputs and returns
its result, so it is testable without a Grid or a strategy. The global model the clients
started from is ``current``; an update enters aggregation as its delta from ``current``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.common.constant import ErrorCode

from fedgate.strategies.aggregators import AggregationResult
from fedgate.strategies.envelope import array_view
from fedgate.strategies.fates import ClientFate, TransportError

Screen = Callable[[Message, int, ArrayRecord], ClientFate]
"""Decides one reply's fate: ``(reply, server_round, current) -> ClientFate``."""

NO_REPLY = "no-reply"
CLIENT_ERROR = "client-error"
EVAL_METRICS = ("eval-loss", "eval-acc")
MEDIAN_CAP = 2.0
"""k of the example-count cap: no update weighs more than k times the round's median
declared example count (``capped_weights``)."""
CLIENT_APP_ERRORS = frozenset(
    {
        ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
        ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        ErrorCode.CLIENT_APP_CRASHED,
        ErrorCode.MOD_FAILED_PRECONDITION,
    }
)
"""Flower error codes a SuperNode reports for its own ClientApp: that node's answer (its
``client-error`` fate). Every other error reply is a transport error of the round."""


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


def unanswered(
    sampled: Iterable[int], replies: Sequence[Message], transport: Sequence[TransportError] = ()
) -> list[ClientFate]:
    """A ``no-reply`` rejection for every sampled node that sent no reply, in sampled order;
    its detail names the transport error that concerns the node, if one does."""
    answered = {reply.metadata.src_node_id for reply in replies}
    errors = {e.node_id: e for e in transport if e.node_id is not None}
    return [
        ClientFate(
            node,
            False,
            NO_REPLY,
            f"Flower error {errors[node].code}: {errors[node].reason}"[:200]
            if node in errors
            else "no reply before the round timeout",
        )
        for node in sampled
        if node not in answered
    ]


def _stray(src: int, node: int | None, done: set[int]) -> str:
    """Why a reply that is no Flower error is still no node's answer."""
    if node is None:
        return f"reply from node {src} answers no message sent this round"
    if node in done:
        return f"a second reply for node {node}"
    return f"reply from node {src} to the message sent to node {node}"


@dataclass
class MatchedReplies:
    """A round's replies matched to the nodes sampled: exactly one fate-to-be per node."""

    sampled: list[int]
    updates: list[Message] = field(default_factory=list)  # to screen, one per node at most
    client_errors: list[ClientFate] = field(default_factory=list)  # ClientApp failures
    unanswered: list[ClientFate] = field(default_factory=list)  # ``no-reply`` fates
    transport: list[TransportError] = field(default_factory=list)


def match_replies(
    replies: Iterable[Message], sampled: Sequence[int] | None, sent: Mapping[str, int]
) -> MatchedReplies:
    """Match each reply to the sampled node it answers (``sent``: message id -> node of the
    messages sent this round; else the reply's source node, if sampled).

    A node's first reply is its answer: an update to screen, or a ``client-error`` fate when
    its ClientApp failed (``CLIENT_APP_ERRORS``). Any other Flower error reply, a reply that
    answers no sampled node, a reply from a node other than the one it answers and a second
    reply for a node are transport errors of the round, never fates. Every sampled node left
    without an answer gets ``no-reply``. ``sampled`` None (the round's sampling is unknown):
    the nodes of the replies that are answers.
    """
    replies = list(replies)
    if sampled is None:
        sampled = list(
            dict.fromkeys(
                r.metadata.src_node_id
                for r in replies
                if not r.has_error() or r.error.code in CLIENT_APP_ERRORS
            )
        )
    out = MatchedReplies(list(sampled))
    nodes, done = set(sampled), set()
    for reply in replies:
        meta = reply.metadata
        node = sent.get(meta.reply_to_message_id)
        if node is None and meta.src_node_id in nodes:
            node = meta.src_node_id
        answers = node is not None and meta.src_node_id == node and node not in done
        if reply.has_error():
            code, reason = int(reply.error.code), str(reply.error.reason)[:200]
            if answers and code in CLIENT_APP_ERRORS:
                out.client_errors.append(ClientFate(node, False, CLIENT_ERROR, reason))
                done.add(node)
                continue
        elif answers:
            out.updates.append(reply)
            done.add(node)
            continue
        else:
            code, reason = ErrorCode.UNKNOWN, _stray(meta.src_node_id, node, done)
        out.transport.append(TransportError(node, code, reason))
    out.unanswered = unanswered([n for n in out.sampled if n not in done], [], out.transport)
    return out


def screen_replies(
    replies: Iterable[Message],
    screen: Screen,
    server_round: int,
    current: ArrayRecord,
    max_examples: int,
) -> tuple[list[ClientFate], list[Accepted]]:
    """Every reply's fate in reply order, and the accepted ones with their example count
    capped at ``max_examples`` (and later, as weights, at ``MEDIAN_CAP`` times the round's
    median: ``round_updates``)."""
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


def capped_weights(counts: Sequence[float], k: float = MEDIAN_CAP) -> np.ndarray:
    """Each example count capped at ``k`` times the counts' median (of an even number of
    counts, the mean of the two middle ones), so no declared count buys more than its share.

    With ``n - 1`` equal honest counts (n >= 3), one update declaring any count gets at most
    ``k / (n - 1 + k)`` of the total weight; in general at most ``k * median`` of it.
    """
    weights = np.asarray(counts, dtype=np.float64)
    if weights.size == 0:
        return weights
    return np.minimum(weights, k * float(np.median(weights)))


def round_updates(
    current: ArrayRecord, accepted: Sequence[Accepted], k: float = MEDIAN_CAP
) -> RoundUpdates:
    """The accepted updates' deltas from ``current`` and their example weights (capped at
    ``k`` times the round's median accepted count, ``capped_weights``)."""
    base = flatten_record(current)
    deltas = np.stack([flatten_record(a.arrays) - base for a in accepted])
    weights = capped_weights([a.fate.num_examples for a in accepted], k)
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
