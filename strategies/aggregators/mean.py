"""Weighted mean (FedAvg) with a cap on any one client's share: the non-robust baseline."""

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
    require_f,
)
from fedgate.strategies.aggregators.linalg import combine, serial_blas


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_i w_i x_i`` with ``weights`` already normalized (one gemv in ``updates``' dtype)."""
    return combine(weights, updates)


def cap_shares(shares: np.ndarray, max_share: float) -> np.ndarray:
    """Shares summing to one with none above ``max_share`` (water-filling).

    The excess of every capped client is handed to the others in proportion to their own
    shares, repeatedly, until no share exceeds the cap. Needs ``max_share >= 1 / n``.
    """
    w = np.asarray(shares, dtype=np.float64).copy()
    n = len(w)
    if max_share * n < 1 - 1e-12:
        raise AggregatorConfigError(f"max_share={max_share} is below 1/n for n={n}")
    capped = np.zeros(n, dtype=bool)
    while True:
        over = (w > max_share * (1 + 1e-12)) & ~capped
        if not over.any():
            return w
        capped |= over
        free = 1.0 - max_share * capped.sum()
        rest = w[~capped].sum()
        w[capped] = max_share
        if rest > 0:
            w[~capped] *= free / rest
        else:
            w[~capped] = free / max(1, (~capped).sum())


@dataclass
class Mean:
    """FedAvg: every update kept, weighted by example count, no client above ``max_share``.

    ``max_share=None`` (default) leaves the example-count weights as they are (the strategy
    already caps each count at ``max-examples``); a value in ``[1/n, 1]`` also caps a client's
    share of the mean. Tolerates no Byzantine client (``f`` is recorded, not used).
    Diagnostics: every client ``kept`` (``down-weighted`` when its share was capped), score
    ``None``, weight its share.
    """

    f: int = 0
    max_share: float | None = None
    name: ClassVar[str] = "mean"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)
        if self.max_share is not None and not 0 < self.max_share <= 1:
            raise AggregatorConfigError(f"{self.name}: max_share must be in (0, 1]")

    def check(self, n: int) -> None:
        if self.max_share is not None and self.max_share * n < 1 - 1e-12:
            need = int(np.ceil(1 / self.max_share))
            raise AggregatorConfigError(
                f"{self.name}: max_share={self.max_share} needs n >= {need} updates, got n={n}"
            )

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n = len(x)
        self.check(n)
        raw = normalized_weights(weights, n)
        w = raw if self.max_share is None else cap_shares(raw, self.max_share)
        fates = ["down-weighted" if w[i] < raw[i] * (1 - 1e-9) else "kept" for i in range(n)]
        return AggregationResult(weighted_mean(x, w), make_diagnostics(fates, None, w))
