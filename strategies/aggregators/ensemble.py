"""Validated ensemble: run several robust rules, keep the one the server's own data prefers.

Under strong label skew no single rule is best against every attack: centered clipping keeps
FedAvg's clean accuracy and shrugs off in-distribution attacks (IPM-0.1, ALIE, Min-Max/Sum)
but a few sign-flipped or hugely scaled updates still drag it; nearest-neighbour mixing in
front of it stops those at a clean-accuracy cost, because it also pulls honest outliers (the
clients holding a rare class) towards the crowd; and with few devices holding tiny skewed
shards a sign-flipped update is as typical as an honest one, so only Zeno (which judges each
update by what it does to the server's data) tells them apart. Each round the ensemble
computes every member's aggregate and keeps the one whose model has the lowest loss on the
server's own held-out data (``scorer``); every output is one robust rule's, and the server
data only chooses among them.

Members that pick updates with the server's data themselves (Zeno, ``zeno+<rule>``) are
judged on the data they were fitted to, so their aggregate looks better than it is. Such a
member replaces the best of the others only when its per-example validation loss is lower by
more than ``confidence`` standard errors of the paired difference; a mere fit to the noise of
a small validation split (dropping honest rare-class devices in a clean round) does not pass.

The server supplies ``scorer(delta)``: the loss of ``global + delta`` on its validation data,
as one number or (better) one loss per validation example, lower is better. Give it with
``set_scorer(fn)`` before an aggregation (used once, like FLTrust's reference) or
``scorer_fn`` at construction (used every time). A scalar scorer gives no noise estimate, so
its values are compared as they are. Without a scorer the ensemble runs only its ``fallback``
member (default: the last member that needs no scorer) and says so in the result's ``note``.
Stateful members (centered clipping) are re-centred on the chosen aggregate after every
round, so all of them follow the model the server actually applies. Diagnostics are the
chosen member's; ``note`` names the choice and every member's loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    Aggregator,
    AggregatorConfigError,
    Scorer,
    Stage,
    Updates,
    as_float_matrix,
    loss_summary,
    require_f,
)
from fedgate.strategies.aggregators.flame import filtered, smallest_n
from fedgate.strategies.aggregators.foolsgold import SybilHistory
from fedgate.strategies.aggregators.linalg import gram_cache, serial_blas
from fedgate.strategies.aggregators.registry import make_aggregator
from fedgate.strategies.aggregators.trigger_repair import TriggerRepair
from fedgate.strategies.aggregators.trigger_scan import ScanProbe, TriggerScan, parse_filters

FILTERS = ("", "flame", "foolsgold", "trigger-scan", "trigger-repair")
"""Pre-filters an ensemble can run once, before all of its members ('' for none); several
joined by ``+`` run in that order, the first outermost (``"trigger-scan+foolsgold"``)."""


def parse_member(spec: str) -> tuple[str | None, str]:
    """``"nnm+cc"`` -> ``("nnm", "cc")``; ``"cc"`` -> ``(None, "cc")``."""
    pre, _, name = spec.rpartition("+")
    return (pre or None), name


def beats(challenger: np.ndarray, incumbent: np.ndarray, confidence: float) -> bool:
    """Whether per-example losses ``challenger`` are lower than ``incumbent``'s by more than
    ``confidence`` standard errors of the paired difference (scalars: plainly lower)."""
    c_mean, c = loss_summary(challenger)
    i_mean, i = loss_summary(incumbent)
    if not math.isfinite(c_mean):
        return False
    if not math.isfinite(i_mean):
        return True
    if c.size != i.size or c.size < 2:
        return c_mean < i_mean
    diff = i - c
    se = float(diff.std(ddof=1)) / math.sqrt(diff.size)
    return float(diff.mean()) > confidence * se


def choose(losses: list[np.ndarray], judged: list[bool], confidence: float) -> int:
    """Index of the member to keep: the lowest mean loss among the members not ``judged``
    (ties: the earlier), replaced by a judged member only when it :func:`beats` the choice."""
    means = [loss_summary(loss)[0] for loss in losses]
    plain = [i for i, j in enumerate(judged) if not j]
    pool = plain or list(range(len(losses)))
    best = min(pool, key=lambda i: (means[i], i))
    for i, is_judged in enumerate(judged):
        if is_judged and plain and beats(losses[i], losses[best], confidence):
            best = i
    return best


@dataclass
class Ensemble:
    """Per round, the member aggregate with the lowest server-side loss (see module doc)."""

    f: int = 0
    members: tuple[str, ...] = ("cc", "nnm+cc", "zeno")
    fallback: int | None = None
    confidence: float = 2.0
    filter: str = ""
    noise: float = 0.0
    sybil_similarity: float = 0.99
    clip: bool = False
    scan_threshold: float = 3.5
    repair: dict = field(default_factory=dict)  # TriggerRepair's parameters
    scorer_fn: Scorer | None = field(default=None, repr=False)
    name: ClassVar[str] = "ensemble"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)
        self.members = tuple(self.members)
        if not self.members:
            raise AggregatorConfigError(f"{self.name}: needs at least one member rule")
        if any(parse_member(m)[1] == self.name for m in self.members):
            raise AggregatorConfigError(f"{self.name}: members cannot be ensembles")
        if not (math.isfinite(self.confidence) and self.confidence >= 0):
            raise AggregatorConfigError(
                f"{self.name}: confidence must be >= 0, got {self.confidence}"
            )
        self._filters = parse_filters(self.filter, FILTERS[1:])
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise AggregatorConfigError(f"{self.name}: noise must be >= 0, got {self.noise}")
        self._rng = np.random.default_rng(0)
        self._sybils = (
            SybilHistory(self.sybil_similarity, self.clip) if "foolsgold" in self._filters else None
        )
        self._scan = TriggerScan(self.scan_threshold) if "trigger-scan" in self._filters else None
        self._repair = TriggerRepair(**self.repair) if "trigger-repair" in self._filters else None
        self.rules: list[Aggregator] = []
        for spec in self.members:
            pre, name = parse_member(spec)
            self.rules.append(make_aggregator(name, self.f, pre=pre))
        self.judged = [hasattr(rule, "set_scorer") for rule in self.rules]
        self.fallback = self._fallback_index()
        self._scorer: Scorer | None = None
        self.last_choice: str = ""
        self.last_scores: tuple[float, ...] = ()

    def _fallback_index(self) -> int:
        unjudged = [i for i, j in enumerate(self.judged) if not j]
        if self.fallback is None:
            if not unjudged:
                raise AggregatorConfigError(
                    f"{self.name}: every member needs the server's scorer; add one that does "
                    "not (e.g. cc) to fall back on"
                )
            return unjudged[-1]
        if not -len(self.members) <= self.fallback < len(self.members):
            raise AggregatorConfigError(
                f"{self.name}: fallback={self.fallback} is not a member index"
            )
        k = self.fallback % len(self.members)
        if self.judged[k]:
            raise AggregatorConfigError(
                f"{self.name}: fallback member {self.members[k]} needs the server's scorer, "
                "which is what the fallback is for"
            )
        return k

    def set_scorer(self, fn: Scorer) -> None:
        """``fn(delta)``: the loss of the current global model plus ``delta`` on server data
        (per validation example, or one number), for the next aggregation only."""
        self._scorer = fn

    def set_clients(self, ids) -> None:
        """The client ids of the next aggregation's rows (the foolsgold filter's history)."""
        if self._sybils is not None:
            self._sybils.set_clients(ids)

    def set_probe(self, probe: ScanProbe) -> None:
        """The global weights and validation data for the trigger scan and the trigger repair
        (next aggregation)."""
        for screen in (self._scan, self._repair):
            if screen is not None:
                screen.set_probe(probe)

    def set_reference(self, vector: np.ndarray) -> None:
        """Hand the server's root-data update to the members that use one (FLTrust)."""
        for rule in self.rules:
            if hasattr(rule, "set_reference"):
                rule.set_reference(vector)

    def check(self, n: int) -> None:
        for rule in self.rules:
            rule.check(n)

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        self.check(len(x))
        scorer, self._scorer = self._scorer or self.scorer_fn, None
        need = max(smallest_n(rule, len(x)) for rule in self.rules)
        run: Stage = lambda sub, w: self._choose(sub, w, scorer)  # noqa: E731
        for name in reversed(self._filters):  # the first filter runs first, outermost
            run = self._stage(name, run, need)
        result = run(x, weights)
        for rule in self.rules:
            if hasattr(rule, "center"):  # follow the model the server applies
                rule.center = np.array(result.vector, copy=True)
        return result

    def _stage(self, name: str, run: Stage, need: int) -> Stage:
        """``run`` behind the filter ``name``."""
        if name == "flame":
            return lambda sub, w: filtered(run, sub, w, need, self.noise, self._rng)
        if name == "trigger-repair":  # drops at most f: the rows an attacker can hold
            repair = self._repair
            return lambda sub, w: repair.apply(run, sub, w, max(need, len(sub) - self.f))
        screen = self._sybils if name == "foolsgold" else self._scan
        return lambda sub, w: screen.apply(run, sub, w, need)

    def _choose(
        self, x: np.ndarray, weights: np.ndarray | None, scorer: Scorer | None
    ) -> AggregationResult:
        if scorer is None:
            k = self.fallback
            chosen = self.rules[k](x, weights)
            scores: tuple[float, ...] = ()
            note = f"{self.name}: no scorer set, used fallback {self.members[k]}"
        else:
            for rule in self.rules:  # members that judge by server data (Zeno) share it
                if hasattr(rule, "set_scorer"):
                    rule.set_scorer(scorer)
            with gram_cache():
                results = [rule(x, weights) for rule in self.rules]
            losses = [np.asarray(scorer(r.vector), dtype=np.float64) for r in results]
            k = choose(losses, self.judged, self.confidence)
            chosen = results[k]
            scores = tuple(loss_summary(loss)[0] for loss in losses)
            listed = ", ".join(f"{m} {s:.4g}" for m, s in zip(self.members, scores, strict=True))
            note = f"{self.name}: chose {self.members[k]} (server loss: {listed})"
        self.last_choice, self.last_scores = self.members[k], scores
        return AggregationResult(chosen.vector, chosen.diagnostics, note)
