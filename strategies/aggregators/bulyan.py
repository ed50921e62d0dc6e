"""Bulyan (El Mhamdi et al. 2018): iterated Krum selection, then a median-centred trim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    as_float_matrix,
    require_clients,
    require_f,
)
from fedgate.strategies.aggregators.coordinate import (
    Kernel,
    coordinate_diagnostics,
    reduce_sorted,
)
from fedgate.strategies.aggregators.krum import krum_scores
from fedgate.strategies.aggregators.linalg import pairwise_sq_distances


def bulyan_select(dist: np.ndarray, f: int, theta: int) -> np.ndarray:
    """Run Krum ``theta`` times, each time removing the chosen row; indices in pick order."""
    remaining = list(range(len(dist)))
    chosen: list[int] = []
    for _ in range(theta):
        sub = dist[np.ix_(remaining, remaining)]
        chosen.append(remaining.pop(int(np.argmin(krum_scores(sub, f)))))
    return np.asarray(chosen, dtype=np.intp)


def closest_to_median_kernel(beta: int) -> Kernel:
    """Mean of the ``beta`` values nearest the median of each sorted coordinate.

    Those values form a contiguous window of the sorted row: the window of length ``beta``
    with the smallest radius around the median (first such window on ties).
    """

    def kernel(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b, k = s.shape
        med = (0.5 * (s[:, (k - 1) // 2] + s[:, k // 2]))[:, None]
        radius = np.maximum(med - s[:, : k - beta + 1], s[:, beta - 1 :] - med)
        start = np.argmin(radius, axis=1)
        csum = np.zeros((b, k + 1))
        np.cumsum(s, axis=1, out=csum[:, 1:])
        rows = np.arange(b)
        mean = (csum[rows, start + beta] - csum[rows, start]) / beta
        return mean.astype(s.dtype), s[rows, start], s[rows, start + beta - 1]

    return kernel


def bulyan(updates: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bulyan aggregate, the selected row indices and per-selected-row kept counts."""
    n = len(updates)
    theta = n - 2 * f
    chosen = bulyan_select(pairwise_sq_distances(updates), f, theta)
    res = reduce_sorted(updates, closest_to_median_kernel(theta - 2 * f), rows=np.sort(chosen))
    return res.vector, np.sort(chosen), res.kept


@dataclass
class Bulyan:
    """Select ``theta = n - 2f`` updates by iterated Krum, then per coordinate average the
    ``beta = theta - 2f`` selected values closest to their median.

    Needs ``n >= 4f + 3``; ignores example counts. Krum's neighbour count ``r - f - 2`` is
    clamped to at least 1 in the last iterations, where fewer than ``2f + 3`` rows remain.
    Diagnostics: unselected clients are ``dropped``; score is the fraction of coordinates at
    which a client's value was among the ``beta`` averaged, weight its share of them.
    """

    f: int = 0
    name: ClassVar[str] = "bulyan"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)

    def check(self, n: int) -> None:
        require_clients(self.name, n, 4 * self.f + 3, f"n >= 4f+3 (f={self.f})")

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n, d = x.shape
        self.check(n)
        vector, rows, kept = bulyan(x, self.f)
        beta = n - 4 * self.f
        return AggregationResult(vector, coordinate_diagnostics(kept, d, beta, n, rows=rows))
