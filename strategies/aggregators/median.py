"""Coordinate-wise median (Yin et al. 2018)."""

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
    coordinate_diagnostics,
    reduce_sorted,
    trimmed_kernel,
)
from fedgate.strategies.aggregators.linalg import serial_blas


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """Per-coordinate median of the rows (mean of the two middle values when n is even)."""
    return reduce_sorted(updates, trimmed_kernel((len(updates) - 1) // 2)).vector


@dataclass
class Median:
    """Coordinate-wise median; ignores example counts (every client counts once).

    Tolerates ``f < n / 2``. Diagnostics: score is the fraction of coordinates at which the
    client's value was (one of) the median value(s); weight is its share of them.
    """

    f: int = 0
    name: ClassVar[str] = "median"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)

    def check(self, n: int) -> None:
        require_clients(self.name, n, 2 * self.f + 1, f"n >= 2f+1 (f={self.f})")

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n, d = x.shape
        self.check(n)
        t = (n - 1) // 2
        res = reduce_sorted(x, trimmed_kernel(t))
        return AggregationResult(res.vector, coordinate_diagnostics(res.kept, d, n - 2 * t, n))
