"""Weighted mean (FedAvg): the non-robust baseline."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    ClientDiagnostic,
    as_float_matrix,
    normalized_weights,
)
from fedgate.strategies.aggregators.linalg import combine


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_i w_i x_i`` with ``weights`` already normalized (one gemv in ``updates``' dtype)."""
    return combine(weights, updates)


@dataclass
class Mean:
    """FedAvg: every update kept, weighted by (capped) example count."""

    name: str = "mean"
    f: int = 0

    def check(self, n: int) -> None:
        return None

    def __call__(self, updates: np.ndarray, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        w = normalized_weights(weights, len(x))
        diags = tuple(ClientDiagnostic(i, "kept", None, float(w[i])) for i in range(len(x)))
        return AggregationResult(weighted_mean(x, w), diags)
