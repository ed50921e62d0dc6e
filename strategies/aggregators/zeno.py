"""Zeno: keep the updates that lower the server's own validation loss (Xie et al., ICML 2019).

Zeno scores every update by the descent it brings on data the server holds: here
``score_i = loss(global) - loss(global + x_i) - rho * ||x_i||^2`` (the paper's stochastic
descent score, applied to a model delta rather than a gradient step), keeps the ``n - f``
best and averages them with their example-count weights. Unlike distance-based rules it does
not mistake an honest outlier (a device holding a rare class) for an attacker, nor an attacker
that looks typical (a sign-flipped update of ordinary size) for an honest device: both are
judged by what they do to the model. Its assumption is that the server's data is clean and
representative; an attack that only hurts inputs the server never sees (a backdoor trigger)
passes.

The server supplies ``scorer(delta) -> loss`` with ``set_scorer`` before each aggregation
(the region strategy does, as for the ensemble) or ``scorer_fn`` at construction. Without a
scorer Zeno refuses to aggregate: it has no other basis to judge. Diagnostics: ``kept``,
``clipped`` or ``dropped``, score the descent above, weight the client's share of the
aggregate's coefficients.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    Aggregator,
    AggregatorConfigError,
    Scorer,
    Updates,
    as_float_matrix,
    loss_summary,
    make_diagnostics,
    normalized_weights,
    require_clients,
    require_f,
    share,
)
from fedgate.strategies.aggregators.linalg import combine, serial_blas


def descent_scores(
    updates: np.ndarray, scorer: Scorer, step: float = 1.0, rho: float = 0.0
) -> tuple[np.ndarray, float]:
    """Per update, ``loss(0) - loss(step x_i) - rho step^2 ||x_i||^2`` (non-finite losses
    score ``-inf``); also the loss of the unchanged model."""
    before = loss_summary(scorer(np.zeros(updates.shape[1], dtype=updates.dtype)))[0]
    norms = np.einsum("ij,ij->i", updates, updates, dtype=np.float64) * step * step
    scores = np.empty(len(updates))
    for i, row in enumerate(updates):
        loss = loss_summary(scorer(step * row))[0]
        scores[i] = before - loss - rho * norms[i] if np.isfinite(loss) else -np.inf
    return scores, before


@dataclass
class Zeno:
    """Average of the ``n - f`` updates with the best validation descent (see module doc)."""

    f: int = 0
    step: float = 0.1
    rho: float = 0.0
    clip: bool = True
    scorer_fn: Scorer | None = field(default=None, repr=False)
    name: ClassVar[str] = "zeno"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)
        if not 0 < self.step <= 1:
            raise AggregatorConfigError(f"{self.name}: step must be in (0, 1], got {self.step}")
        if not np.isfinite(self.rho) or self.rho < 0:
            raise AggregatorConfigError(f"{self.name}: rho must be >= 0, got {self.rho}")
        self._scorer: Scorer | None = None

    def set_scorer(self, fn: Scorer) -> None:
        """``fn(delta)``: the server's loss of the current global model plus ``delta``, for
        the next aggregation only."""
        self._scorer = fn

    def check(self, n: int) -> None:
        require_clients(self.name, n, self.f + 1, f"n >= f+1 (f={self.f})")

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n = len(x)
        self.check(n)
        scorer, self._scorer = self._scorer or self.scorer_fn, None
        if scorer is None:
            raise AggregatorConfigError(
                f"{self.name}: needs the server's validation scorer (set_scorer) every round"
            )
        w = normalized_weights(weights, n)
        scores, _ = descent_scores(x, scorer, self.step, self.rho)
        keep = np.zeros(n, dtype=bool)
        keep[np.argsort(-scores, kind="stable")[: n - self.f]] = True
        shares = np.where(keep, w, 0.0)
        shares = shares / shares.sum() if shares.sum() > 0 else keep / keep.sum()
        fates = ["kept" if k else "dropped" for k in keep]
        if self.clip:  # no kept update moves the model further than the median kept one
            norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
            bound = float(np.median(norms[keep]))
            scale = np.where(keep & (norms > bound), bound / np.maximum(norms, 1e-300), 1.0)
            fates = [
                "clipped" if k and c < 1 else fate
                for fate, k, c in zip(fates, keep, scale, strict=True)
            ]
            shares = shares * scale
        vector = combine(shares, x)  # clipped rows count for less: shares need not sum to 1
        return AggregationResult(vector, make_diagnostics(fates, scores, share(shares)), "")


@dataclass
class ZenoFilter:
    """Zeno as a pre-aggregator, named ``zeno+<inner>``: drop the ``f`` updates with the worst
    validation descent (scored at ``step``), then ``inner`` aggregates the ``n - f`` others.

    The filter removes what hurts the server's data however typical it looks (sign-flipped or
    reversed updates); the inner rule tempers what the filter lets through (in-distribution
    attacks, a boosted update that only slightly helps). Needs ``n > f`` and ``inner``'s
    bound on ``n - f`` updates. Diagnostics: ``dropped`` (weight 0) for the filtered, the inner
    rule's fate and weight for the others; every score is the Zeno descent.
    """

    inner: Aggregator
    step: float = 0.1
    rho: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.step <= 1:
            raise AggregatorConfigError(f"zeno: step must be in (0, 1], got {self.step}")
        self._scorer: Scorer | None = None

    @property
    def name(self) -> str:
        return f"zeno+{self.inner.name}"

    @property
    def f(self) -> int:
        return self.inner.f

    @property
    def center(self) -> np.ndarray | None:
        """The inner rule's center (centered clipping), so an ensemble can re-centre it."""
        return getattr(self.inner, "center", None)

    @center.setter
    def center(self, value: np.ndarray | None) -> None:
        if hasattr(self.inner, "center"):
            self.inner.center = value

    def set_scorer(self, fn: Scorer) -> None:
        self._scorer = fn

    def check(self, n: int) -> None:
        require_clients(self.name, n, self.f + 1, f"n > f (f={self.f})")
        self.inner.check(n - self.f)

    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n = len(x)
        self.check(n)
        scorer, self._scorer = self._scorer, None
        if scorer is None:
            raise AggregatorConfigError(
                f"{self.name}: needs the server's validation scorer (set_scorer) every round"
            )
        scores, _ = descent_scores(x, scorer, self.step, self.rho)
        kept = np.sort(np.argsort(-scores, kind="stable")[: n - self.f])
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[kept]
        res = self.inner(x[kept], w)
        fates, shares = ["dropped"] * n, np.zeros(n)
        for diag in res.diagnostics:
            fates[kept[diag.index]] = diag.fate
            shares[kept[diag.index]] = diag.weight
        return AggregationResult(res.vector, make_diagnostics(fates, scores, shares), res.note)
