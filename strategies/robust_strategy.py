"""The regional Flower strategy: screen every update, aggregate robustly, record each fate."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log

from fedgate.canonical_arrays import CanonicalArraysError
from fedgate.errors import UnavailableError, VerificationError
from fedgate.strategies.aggregators import Aggregator, AggregatorConfigError
from fedgate.strategies.aggregators.trigger_scan import ScanProbe
from fedgate.strategies.arrival import ArrivalScreening, exchange, stateless
from fedgate.strategies.envelope import OversizePayload, Reason, array_view, arrayrecord_digest
from fedgate.strategies.fates import ClientFate, TransportError
from fedgate.strategies.instruction import SIGNATURE_KEY, sign_instruction
from fedgate.strategies.train_round import (
    MEDIAN_CAP,
    Screen,
    apply_decisions,
    federated_metrics,
    match_replies,
    round_updates,
    screen_replies,
    too_few_note,
    train_metrics,
    unflatten_record,
)

ARRAYS_KEY = "arrays"  # the message content's ArrayRecord (the model), as the ClientApp reads it
CONFIG_KEY = "config"  # the message content's ConfigRecord (the signed instruction)


class RoundCountError(VerificationError, ValueError):
    """A round record's fates do not add up to the devices sampled."""


@dataclass
class RoundRecord:
    """One round's outcome as the operator and the auditor see it.

    ``clients`` holds at most one fate per sampled node (exactly one when the strategy
    builds it), so accepted + rejected never exceeds ``sampled``; Flower errors that are no
    client's answer are ``transport_errors``. Both are checked when the record is built.
    """

    round: int
    sampled: int
    clients: list[ClientFate] = field(default_factory=list)
    aggregated: bool = False
    note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    transport_errors: list[TransportError] = field(default_factory=list)

    def __post_init__(self) -> None:
        nodes = [c.node_id for c in self.clients]
        if len(nodes) > self.sampled or len(set(nodes)) != len(nodes):
            raise RoundCountError(
                f"round {self.round}: {len(nodes)} fate(s) for {len(set(nodes))} node(s), "
                f"{self.sampled} sampled; a round has at most one fate per sampled node"
            )

    @property
    def accepted(self) -> int:
        return sum(c.accepted for c in self.clients)

    @property
    def rejected(self) -> int:
        return sum(not c.accepted for c in self.clients)


@dataclass
class RoundSigner:
    """Stamps every outgoing ConfigRecord with the round's identity and the server's signature.

    ``nonce_for_round`` draws (once) and returns the round's server nonce; the same function
    feeds envelope verification, so a device's envelope must echo exactly this nonce.
    """

    key: Ed25519PrivateKey
    region: str
    run_id: str
    nonce_for_round: Callable[[int], str]

    def stamp(
        self, kind: str, server_round: int, arrays: ArrayRecord, config: ConfigRecord
    ) -> tuple[ConfigRecord, str]:
        """A signed copy of ``config`` for ``kind`` messages; also the model digest signed."""
        stamped = ConfigRecord(dict(config))
        stamped["region"] = self.region
        stamped["run-id"] = self.run_id
        stamped["server-round"] = server_round
        stamped["nonce"] = self.nonce_for_round(server_round)
        digest = arrayrecord_digest(arrays)
        stamped[SIGNATURE_KEY] = sign_instruction(self.key, kind, digest, dict(stamped))
        return stamped, digest


class NotEnoughNodesError(UnavailableError, RuntimeError):
    """Fewer SuperNodes than the round's minimum connected before the deadline."""


Scorer = Callable[[ArrayRecord], "float | np.ndarray"]
"""The server's loss of a candidate global model on its own held-out data (lower is better):
one number, or one loss per held-out example (the ensemble then tests its choice's margin).
A scorer with an ``of_vector`` attribute (the same loss of the model given as one flat float32
vector, in the ArrayRecord's array order) is called that way: the ensemble scores every
update, and an ArrayRecord per candidate costs more than the forward pass."""


@stateless
def structural_screen(reply: Message, server_round: int, current: ArrayRecord) -> ClientFate:
    """Reject malformed, mis-shaped, oversize or non-finite updates with a reason code.

    Arrays are read in place with ``array_view``, which also refuses a payload whose bytes
    disagree with the dtype and shape it declares (Flower checks neither).
    """
    node = reply.metadata.src_node_id
    if reply.has_error():
        return ClientFate(node, False, "client-error", reply.error.reason[:200])
    content = reply.content
    if len(content.array_records) != 1 or len(content.metric_records) != 1:
        return ClientFate(
            node, False, "missing-fields", "need one ArrayRecord and one MetricRecord"
        )
    arrays = next(iter(content.array_records.values()))
    metrics = next(iter(content.metric_records.values()))
    n = metrics.get("num-examples")
    if not isinstance(n, int | float) or isinstance(n, bool) or not 0 < n < math.inf:
        return ClientFate(node, False, "missing-fields", "num-examples missing or not positive")
    if list(arrays.keys()) != list(current.keys()):
        return ClientFate(node, False, "wrong-shape", "array names differ from the global model")
    for key in current:
        got, want = arrays[key], current[key]
        try:
            values = array_view(got)
        except OversizePayload as exc:
            return ClientFate(node, False, Reason.OVERSIZE, f"{key}: {exc}"[:200])
        except CanonicalArraysError as exc:
            return ClientFate(node, False, "wrong-shape", f"{key}: {exc}"[:200])
        if values.shape != tuple(want.shape) or str(values.dtype) != want.dtype:
            return ClientFate(
                node,
                False,
                "wrong-shape",
                f"{key}: {values.dtype}{values.shape} != {want.dtype}{tuple(want.shape)}",
            )
        if not np.all(np.isfinite(values)):
            return ClientFate(node, False, "non-finite", f"{key} holds NaN or Inf")
    return ClientFate(node, True, num_examples=int(n))


class RobustStrategy(Strategy):
    """Flower's strategy round trip with screening and a pluggable robust aggregator.

    Each round: sample ``clients_per_round`` nodes (waiting at most ``wait_timeout`` for
    ``min_clients`` to connect), screen every reply (``screen``), aggregate the accepted
    updates' deltas with ``aggregator`` and keep the previous global model when fewer than
    ``min_clients`` updates survive. Every client's fate lands in ``rounds``.
    ``start`` screens each reply as it arrives, in ``workers`` threads
    (``fedgate.strategies.arrival``), so aggregation starts on already-checked updates.
    With ``scorer`` (the server's loss of a candidate model on its own data), aggregators
    that choose between candidates (the validated ensemble) get it before every round.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        *,
        clients_per_round: int,
        min_clients: int,
        max_examples: int = 1000,
        median_cap: float = MEDIAN_CAP,
        screen: Screen = structural_screen,
        signer: RoundSigner | None = None,
        on_round_opened: Callable[[int, dict], None] | None = None,
        on_evaluated: Callable[[int, dict[str, float]], None] | None = None,
        scorer: Scorer | None = None,
        wait_timeout: float = 60.0,
        seed: int = 0,
        workers: int | None = None,
    ) -> None:
        self.aggregator = aggregator
        self.clients_per_round = clients_per_round
        self.min_clients = min_clients
        self.max_examples = max_examples
        self.median_cap = median_cap
        self.screen = screen
        self.arrival = ArrivalScreening(screen, workers)
        self.signer = signer
        self.on_round_opened = on_round_opened
        self.on_evaluated = on_evaluated
        self._result: Result | None = None
        self.scorer = scorer
        self.wait_timeout = wait_timeout
        self.rounds: list[RoundRecord] = []
        self._sent: dict[int, list[Message]] = {}  # round -> its train messages
        self._current: ArrayRecord | None = None
        self._rng = random.Random(seed)

    def summary(self) -> None:
        """Log the rule and the round's sizes."""
        log(
            INFO,
            "\t├── aggregator: %s (f=%s), clients per round %s (min %s), "
            "example cap %s and %s x the round's median",
            self.aggregator.name,
            self.aggregator.f,
            self.clients_per_round,
            self.min_clients,
            self.max_examples,
            self.median_cap,
        )

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
        first_round: int = 1,
    ) -> Result:
        """Flower's round loop, with federated evaluation folded into training.

        ``first_round`` > 1 continues a run whose rounds before it are done (a resumed run):
        ``initial_arrays`` is then the model of round ``first_round - 1``.

        Same steps and hooks as ``Strategy.start`` (configure/aggregate train, ``evaluate_fn``
        after every round, one federated evaluation per model), but a device rates the global
        model it receives for training on its local test split before it trains and returns
        that with its update: round r's model is rated by round r+1's replies, and only the
        last model needs an evaluate exchange. Flower's SuperNode sleeps 3 s after every empty
        pull and a message costs one request per object, so separate evaluate messages would
        nearly double a round's latency.
        """
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()
        self._result = result
        before = first_round - 1
        if evaluate_fn is not None and (res := evaluate_fn(before, initial_arrays)) is not None:
            result.evaluate_metrics_serverapp[before] = res
        arrays = initial_arrays
        try:
            return self._rounds(
                grid, result, arrays, first_round, num_rounds, timeout, train_config,
                evaluate_config, evaluate_fn,
            )  # fmt: skip
        finally:
            self.arrival.close()

    def _rounds(
        self,
        grid: Grid,
        result: Result,
        arrays: ArrayRecord,
        first_round: int,
        num_rounds: int,
        timeout: float,
        train_config: ConfigRecord,
        evaluate_config: ConfigRecord,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None,
    ) -> Result:
        """``start``'s round loop: every exchange screens replies on arrival."""
        batch = self.configure_train(first_round, arrays, train_config, grid)
        replies = exchange(grid, batch, timeout, self.arrival.arrived)
        for current in range(first_round, num_rounds + 1):
            log(INFO, "[ROUND %s/%s]", current, num_rounds)
            new_arrays, train_metrics = self.aggregate_train(current, replies)
            if new_arrays is not None:
                arrays = result.arrays = new_arrays
            if train_metrics is not None:
                result.train_metrics_clientapp[current] = train_metrics
            if evaluate_fn is not None and (res := evaluate_fn(current, arrays)) is not None:
                result.evaluate_metrics_serverapp[current] = res
            if current < num_rounds:
                batch = self.configure_train(current + 1, arrays, train_config, grid)
            else:
                batch = self.configure_evaluate(current, arrays, evaluate_config, grid)
            replies = exchange(grid, batch, timeout, self.arrival.arrived)
        self.aggregate_evaluate(num_rounds, replies)
        if not len(result.arrays):
            result.arrays = arrays
        return result

    def _sample(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.wait_timeout
        while len(nodes := list(grid.get_node_ids())) < self.min_clients:
            if time.monotonic() > deadline:
                raise NotEnoughNodesError(
                    f"only {len(nodes)} SuperNode(s) connected after {self.wait_timeout:.0f} s; "
                    f"the round needs at least {self.min_clients}"
                )
            time.sleep(0.2)
        return sorted(self._rng.sample(nodes, min(self.clients_per_round, len(nodes))))

    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid, kind: str
    ) -> list[Message]:
        nodes = self._sample(grid)
        if self.signer is not None:
            config, digest = self.signer.stamp(kind, server_round, arrays, config)
        else:
            config = ConfigRecord({**dict(config), "server-round": server_round})
            digest = ""
        if kind == MessageType.TRAIN and self.on_round_opened is not None:
            self.on_round_opened(
                server_round,
                {"nodes": [str(n) for n in nodes], "model_digest": digest,
                 "nonce": str(config.get("nonce", ""))},
            )  # fmt: skip
        content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config})
        return [Message(content=content, dst_node_id=node, message_type=kind) for node in nodes]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = arrays
        self.arrival.open(server_round, arrays)
        messages = self._messages(server_round, arrays, config, grid, MessageType.TRAIN)
        self._sent[server_round] = messages  # Flower sets their message ids when it sends them
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.arrival.open(None)  # evaluate replies carry no update to check
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Screen the round's replies, rate the previous model with the accepted ones and
        aggregate their deltas; ``(None, None)`` keeps the global model."""
        current = self._current
        assert current is not None, "configure_train runs before aggregate_train"
        sent = self._sent.pop(server_round, None)
        matched = match_replies(
            replies,
            None if sent is None else [m.metadata.dst_node_id for m in sent],
            {
                m.metadata.message_id: m.metadata.dst_node_id
                for m in sent or []
                if m.metadata.message_id
            },
        )
        for error in matched.transport:
            log(WARNING, "round %s: Flower error %s (node %s): %s",
                server_round, error.code, error.node_id, error.reason)  # fmt: skip
        for fate in matched.unanswered:
            log(WARNING, "round %s: node %s did not reply", server_round, fate.node_id)
        fates, accepted = screen_replies(
            matched.updates, self.arrival.screen, server_round, current, self.max_examples
        )
        if (confirm := getattr(self.screen, "confirm", None)) is not None:
            confirm(fates)  # e.g. revocations since the check: one registry read a round
            accepted = [a for a in accepted if a.fate.accepted]
        record = RoundRecord(
            round=server_round,
            sampled=len(matched.sampled),
            clients=[*matched.unanswered, *matched.client_errors, *fates],
            transport_errors=matched.transport,
        )
        for fate in [*matched.client_errors, *fates]:
            if not fate.accepted:
                log(WARNING, "round %s: rejected node %s: %s %s",
                    server_round, fate.node_id, fate.reason, fate.detail)  # fmt: skip
        self._federated_evaluation(
            server_round - 1, [a.metrics for a in accepted], weight_key="eval-examples"
        )
        if len(accepted) < self.min_clients:
            record.note = too_few_note(len(accepted), self.min_clients)
            log(WARNING, "round %s: %s", server_round, record.note)
            self._finish(record)
            return None, None

        updates = round_updates(current, accepted, self.median_cap)
        self._offer_scorer(updates.base, current)
        self._offer_probe(updates.base, current)
        if hasattr(self.aggregator, "set_clients"):  # FoolsGold: per-device update history
            self.aggregator.set_clients([a.fate.node_id for a in accepted])
        result = self.aggregator(updates.deltas, updates.weights)
        if result.note:
            record.note = result.note
            log(INFO, "round %s: %s", server_round, result.note)
        apply_decisions(accepted, result)
        record.aggregated = True
        self._finish(record)
        metrics = train_metrics(accepted, updates.weights, record.rejected)
        record.metrics["train-loss"] = float(metrics["train-loss"])
        return unflatten_record(updates.base + result.vector, current), metrics

    def _offer_scorer(self, base: np.ndarray, like: ArrayRecord) -> None:
        """Hand an aggregator that chooses between candidates (the validated ensemble) the
        server's loss of the model ``base + delta`` for each candidate ``delta``."""
        if self.scorer is None or not hasattr(self.aggregator, "set_scorer"):
            return
        scorer = self.scorer
        flat = getattr(scorer, "of_vector", None)  # skips building an ArrayRecord per candidate
        if flat is not None:
            self.aggregator.set_scorer(lambda delta: flat(base + delta))
            return
        self.aggregator.set_scorer(lambda delta: scorer(unflatten_record(base + delta, like)))

    def _offer_probe(self, base: np.ndarray, like: ArrayRecord) -> None:
        """Hand a filter that probes candidate models with the server's validation data (the
        trigger scan, the trigger repair) the global weights and that data. A model the
        probe cannot handle (not the two-layer MLP) gets none: the filter says it is off."""
        data = getattr(self.scorer, "data", None)
        if data is None or not hasattr(self.aggregator, "set_probe"):
            return
        shapes = tuple(tuple(arr.shape) for arr in like.values())
        try:
            probe = ScanProbe(np.asarray(base, dtype=np.float64), data[0], data[1], shapes)
        except AggregatorConfigError as exc:
            log(WARNING, "no probe for the backdoor filters: %s", exc)
            return
        self.aggregator.set_probe(probe)

    def _finish(self, record: RoundRecord) -> None:
        self.rounds.append(record)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Federated evaluation of the last model, from the final evaluate exchange."""
        records = []
        for reply in replies:
            if reply.metadata.message_type != MessageType.EVALUATE or reply.has_error():
                continue
            if len(reply.content.metric_records) == 1:
                records.append(next(iter(reply.content.metric_records.values())))
        return self._federated_evaluation(server_round, records, weight_key="num-examples")

    def _federated_evaluation(
        self, server_round: int, records: list[MetricRecord], weight_key: str
    ) -> MetricRecord | None:
        """Example-weighted ``eval-loss``/``eval-acc`` of round ``server_round``'s model;
        kept on the round's record and reported to ``on_evaluated``."""
        metrics = federated_metrics(records, weight_key)
        if metrics is None:
            return None
        if (record := self.record_for(server_round)) is not None:
            record.metrics.update(metrics)
        if self._result is not None:
            self._result.evaluate_metrics_clientapp[server_round] = MetricRecord(metrics)
        if self.on_evaluated is not None:
            self.on_evaluated(server_round, metrics)
        return MetricRecord(metrics)

    def record_for(self, server_round: int) -> RoundRecord | None:
        for rec in reversed(self.rounds):
            if rec.round == server_round:
                return rec
        return None
