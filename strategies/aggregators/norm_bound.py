"""Norm bounding (Sun et al. 2019): clip every update's norm, then take the weighted mean."""

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
    share,
)
from fedgate.strategies.aggregators.linalg import combine, serial_blas, sq_norms


def clip_factors(norms: np.ndarray, bound: float) -> np.ndarray:
    """``min(1, bound / norm)`` per update (1 for updates already within the bound)."""
    return np.where(norms > bound * (1 + 1e-9), bound / np.maximum(norms, 1e-300), 1.0)


@dataclass
class NormBound:
    """Scale every update down to at most ``bound`` in L2 norm, then average by example count.

    ``bound=None`` (default) uses the median update norm of the round, which needs an
    honest majority (``n >= 2f + 1``). Diagnostics: score is the update's norm, ``clipped``
    when it exceeded the bound; weight is the client's coefficient ``w_i * scale_i``
    normalized over clients.
    """

    f: int = 0
    bound: float | None = None
    name: ClassVar[str] = "norm-bound"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)
        if self.bound is not None and self.bound <= 0:
            raise AggregatorConfigError(f"{self.name}: bound must be > 0 (or None)")

    def check(self, n: int) -> None:
        require_clients(self.name, n, 2 * self.f + 1, f"n >= 2f+1 (f={self.f})")

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n = len(x)
        self.check(n)
        norms = np.sqrt(sq_norms(x))
        bound = float(np.median(norms)) if self.bound is None else self.bound
        scale = clip_factors(norms, bound)
        coef = normalized_weights(weights, n) * scale
        fates = ["clipped" if scale[i] < 1 else "kept" for i in range(n)]
        return AggregationResult(combine(coef, x), make_diagnostics(fates, norms, share(coef)))
