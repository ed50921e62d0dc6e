"""Validated ensemble: run several robust rules, keep the one the server's own data prefers.

Under strong label skew no single rule is best against every attack: centered clipping keeps
FedAvg's clean accuracy and shrugs off in-distribution attacks (IPM-0.1, ALIE, Min-Max/Sum)
but a few sign-flipped or hugely scaled updates still drag it, while nearest-neighbour mixing
in front of it stops those at a clean-accuracy cost, because it also pulls honest outliers
(the clients holding a rare class) towards the crowd. Each round the ensemble computes every
member's aggregate and keeps the one whose model has the lowest loss on the server's own
held-out data (``scorer``), in the spirit of Zeno (Xie et al., ICML 2019), which scores
*updates* on server data; here only whole robust aggregates compete, so every output is one
robust rule's, and the server data only chooses among them.

The server must supply ``scorer(delta) -> loss`` (lower is better: the loss of
``global + delta`` on its validation data): ``set_scorer(fn)`` before an aggregation (used
once, like FLTrust's reference), or ``scorer_fn`` at construction (used every time). Without
one the ensemble uses its ``fallback`` member (default: the last, most robust one) and says so
in the result's ``note``. Stateful members (centered clipping) are re-centred on the chosen
aggregate after every round, so all of them follow the model the server actually applies.
Diagnostics are the chosen member's; ``note`` names the choice and every member's loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    Aggregator,
    AggregatorConfigError,
    Updates,
    as_float_matrix,
    require_f,
)
from fedgate.strategies.aggregators.linalg import gram_cache, serial_blas

Scorer = Callable[[np.ndarray], float]


def parse_member(spec: str) -> tuple[str | None, str]:
    """``"nnm+cc"`` -> ``("nnm", "cc")``; ``"cc"`` -> ``(None, "cc")``."""
    pre, _, name = spec.rpartition("+")
    return (pre or None), name


@dataclass
class Ensemble:
    """Per round, the member aggregate with the lowest server-side loss (see module doc)."""

    f: int = 0
    members: tuple[str, ...] = ("cc", "nnm+cc")
    fallback: int = -1
    scorer_fn: Scorer | None = field(default=None, repr=False)
    name: ClassVar[str] = "ensemble"

    def __post_init__(self) -> None:
        from fedgate.strategies.aggregators import make_aggregator

        require_f(self.name, self.f)
        self.members = tuple(self.members)
        if not self.members:
            raise AggregatorConfigError(f"{self.name}: needs at least one member rule")
        if any(parse_member(m)[1] == self.name for m in self.members):
            raise AggregatorConfigError(f"{self.name}: members cannot be ensembles")
        if not -len(self.members) <= self.fallback < len(self.members):
            raise AggregatorConfigError(
                f"{self.name}: fallback={self.fallback} is not a member index"
            )
        self.rules: list[Aggregator] = []
        for spec in self.members:
            pre, name = parse_member(spec)
            self.rules.append(make_aggregator(name, self.f, pre=pre))
        self._scorer: Scorer | None = None
        self.last_choice: str = ""
        self.last_scores: tuple[float, ...] = ()

    def set_scorer(self, fn: Scorer) -> None:
        """``fn(delta)``: the loss of the current global model plus ``delta`` on server data,
        for the next aggregation only."""
        self._scorer = fn

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
        for rule in self.rules:  # members that judge by server data (Zeno) share the scorer
            if scorer is not None and hasattr(rule, "set_scorer"):
                rule.set_scorer(scorer)
        with gram_cache():
            results = [rule(x, weights) for rule in self.rules]
        if scorer is None:
            k = self.fallback % len(self.rules)
            scores: tuple[float, ...] = ()
            note = f"{self.name}: no scorer set, used fallback {self.members[k]}"
        else:
            scores = tuple(float(scorer(r.vector)) for r in results)
            finite = [s if math.isfinite(s) else math.inf for s in scores]
            k = int(np.argmin(finite))  # ties: the earlier member
            listed = ", ".join(f"{m} {s:.4g}" for m, s in zip(self.members, scores, strict=True))
            note = f"{self.name}: chose {self.members[k]} (server loss: {listed})"
        chosen = results[k]
        for rule in self.rules:
            if hasattr(rule, "center"):  # follow the model the server applies
                rule.center = np.array(chosen.vector, copy=True)
        self.last_choice, self.last_scores = self.members[k], scores
        return AggregationResult(chosen.vector, chosen.diagnostics, note)
