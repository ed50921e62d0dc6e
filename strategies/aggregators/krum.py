"""Krum and Multi-Krum (Blanchard et al. 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    AggregatorConfigError,
    Updates,
    as_float_matrix,
    make_diagnostics,
    normalized_weights,
    require_clients,
    require_f,
)
from fedgate.strategies.aggregators.linalg import combine, pairwise_sq_distances, serial_blas


def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Per row, the sum of squared distances to its ``n - f - 2`` nearest other rows.

    ``dist`` is the ``(n, n)`` squared-distance matrix. The neighbour count is clamped to
    ``[1, n - 1]`` so Bulyan's late iterations (fewer than ``2f + 3`` rows left) still work.
    """
    n = len(dist)
    if n == 1:
        return np.zeros(1)
    k = min(max(1, n - f - 2), n - 1)
    others = dist.copy()
    np.fill_diagonal(others, np.inf)
    return np.partition(others, k - 1, axis=1)[:, :k].sum(axis=1)


def krum_order(dist: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Row indices by Krum score, ties broken by the sum of all distances, then by index.

    Mutual nearest neighbours tie structurally when few neighbours are scored (Bulyan's
    last iterations), so the secondary key keeps the choice independent of client order.
    """
    return np.lexsort((np.arange(len(scores)), dist.sum(axis=1), scores))


def krum_select(dist: np.ndarray, f: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``m`` lowest Krum scores (see :func:`krum_order`) and all scores."""
    scores = krum_scores(dist, f)
    return krum_order(dist, scores)[:m], scores


def _check_krum(rule: str, f: int, n: int) -> None:
    require_clients(rule, n, 2 * f + 3, f"n >= 2f+3 (f={f})")


@dataclass
class Krum:
    """Return the single update with the lowest Krum score; ignores example counts.

    Needs ``n >= 2f + 3``. Diagnostics: score is the Krum score; the chosen client is
    ``kept`` with weight 1, every other client ``dropped``.
    """

    f: int = 0
    name: ClassVar[str] = "krum"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)

    def check(self, n: int) -> None:
        _check_krum(self.name, self.f, n)

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n = len(x)
        self.check(n)
        chosen, scores = krum_select(pairwise_sq_distances(x), self.f, 1)
        w = np.zeros(n)
        w[chosen] = 1.0
        fates = ["kept" if w[i] else "dropped" for i in range(n)]
        return AggregationResult(x[chosen[0]].copy(), make_diagnostics(fates, scores, w))


@dataclass
class MultiKrum:
    """Average the ``m`` updates with the lowest Krum scores (default ``m = n - f``).

    Needs ``n >= 2f + 3``. The selected updates are averaged uniformly (example counts
    ignored) unless ``weighted=True``, which weights them by example count as Flower does.
    """

    f: int = 0
    m: int | None = None
    weighted: bool = False
    name: ClassVar[str] = "multi-krum"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)
        if self.m is not None and self.m < 1:
            raise AggregatorConfigError(f"{self.name}: m must be >= 1, got {self.m}")

    def check(self, n: int) -> None:
        _check_krum(self.name, self.f, n)
        if self.m is not None and self.m > n:
            raise AggregatorConfigError(f"{self.name}: cannot select m={self.m} of n={n} updates")

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n = len(x)
        self.check(n)
        m = n - self.f if self.m is None else self.m
        chosen, scores = krum_select(pairwise_sq_distances(x), self.f, m)
        sizes = normalized_weights(weights, n) if self.weighted else np.ones(n)
        selected = np.zeros(n, dtype=bool)
        selected[chosen] = True
        w = np.where(selected, sizes, 0.0)
        w = w / w.sum() if w.sum() > 0 else selected / m
        fates = ["kept" if selected[i] else "dropped" for i in range(n)]
        return AggregationResult(combine(w, x), make_diagnostics(fates, scores, w))
