"""Bulyan (El Mhamdi et al. 2018): iterated Krum selection, then a median-centred trim."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    Updates,
    as_float_matrix,
    require_clients,
    require_f,
)
from fedgate.strategies.aggregators.coordinate import (
    Kernel,
    coordinate_diagnostics,
    reduce_sorted,
)
from fedgate.strategies.aggregators.krum import krum_order, krum_scores
from fedgate.strategies.aggregators.linalg import pairwise_sq_distances, serial_blas


def bulyan_select(dist: np.ndarray, f: int, theta: int) -> np.ndarray:
    """Run Krum ``theta`` times, each time removing the chosen row; indices in pick order."""
    remaining = list(range(len(dist)))
    chosen: list[int] = []
    for _ in range(theta):
        sub = dist[np.ix_(remaining, remaining)]
        chosen.append(remaining.pop(int(krum_order(sub, krum_scores(sub, f))[0])))
    return np.asarray(chosen, dtype=np.intp)


def closest_to_median_kernel(beta: int) -> Kernel:
    """Mean of the ``beta`` values nearest the median of each sorted coordinate.

    Those values form a contiguous window ``s[j : j + beta]`` of the sorted row: a window
    with the smallest radius ``max(med - s[j], s[j + beta - 1] - med)``. One that holds a value
    nearest the median, ``s[(k - 1) // 2]`` or ``s[k // 2]``, always qualifies, so only starts
    ``j`` in ``[(k - 1) // 2 - beta + 1, k // 2]`` are searched (the first of them on ties).
    The needed columns of the sorted block are transposed once, so each step is a vector
    operation across all coordinates of the block.
    """

    def kernel(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = s.shape[1]
        first = max(0, (k - 1) // 2 - beta + 1)
        last = min(k // 2, k - beta)
        starts = last - first + 1
        # (rows, B): row i holds the (first + i)-th smallest values
        t = np.ascontiguousarray(s[:, first : last + beta].T)
        cols = np.arange(t.shape[1])
        med = (s[:, (k - 1) // 2] + s[:, k // 2]) * np.asarray(0.5, s.dtype)
        radius = np.maximum(med - t[:starts], t[beta - 1 :] - med)  # (starts, B)
        smallest = np.minimum.reduce(radius, axis=0)
        # the first start reaching the smallest radius: weights starts, starts - 1, ..., 1
        rank = np.arange(starts, 0, -1, dtype=s.dtype)[:, None]
        start = starts - np.maximum.reduce((radius == smallest) * rank, axis=0).astype(np.intp)
        band = np.zeros((starts, len(t)), dtype=s.dtype)  # row j sums t[j : j + beta]
        for j in range(starts):
            band[j, j : j + beta] = 1.0
        sums = band @ t  # (starts, B)
        at = start * len(cols) + cols  # flat positions: one gather each, no 2-D fancy index
        return (
            sums.ravel().take(at) / np.asarray(beta, s.dtype),
            t.ravel().take(at),
            t.ravel().take(at + (beta - 1) * len(cols)),
        )

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

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n, d = x.shape
        self.check(n)
        vector, rows, kept = bulyan(x, self.f)
        beta = n - 4 * self.f
        return AggregationResult(vector, coordinate_diagnostics(kept, d, beta, n, rows=rows))
