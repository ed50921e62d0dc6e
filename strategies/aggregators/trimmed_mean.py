"""Coordinate-wise trimmed mean (Yin et al. 2018): drop exactly f values per side."""

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


def trimmed_mean(updates: np.ndarray, t: int) -> np.ndarray:
    """Per coordinate, the mean of the values left after removing the ``t`` lowest and highest."""
    if not 0 <= 2 * t < len(updates):
        raise ValueError(f"cannot trim {t} per side from {len(updates)} rows")
    return reduce_sorted(updates, trimmed_kernel(t)).vector


@dataclass
class TrimmedMean:
    """Trim exactly ``f`` values per side of every coordinate, average the ``n - 2f`` left.

    Needs ``n > 2f``; ignores example counts. With ``f = 0`` it is the unweighted mean.
    Diagnostics: score is the fraction of coordinates at which the client's value was kept.
    """

    f: int = 0
    name: ClassVar[str] = "trimmed-mean"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)

    def check(self, n: int) -> None:
        require_clients(self.name, n, 2 * self.f + 1, f"n > 2f, i.e. n >= 2f+1 (f={self.f})")

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n, d = x.shape
        self.check(n)
        res = reduce_sorted(x, trimmed_kernel(self.f))
        diags = coordinate_diagnostics(res.kept, d, n - 2 * self.f, n)
        return AggregationResult(res.vector, diags)
