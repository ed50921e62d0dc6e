"""FLTrust (Cao et al. 2021): trust clients by their direction agreement with a root update."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    AggregatorConfigError,
    Updates,
    as_float_matrix,
    make_diagnostics,
    require_clients,
    require_f,
)
from fedgate.strategies.aggregators.linalg import combine, serial_blas, sq_norms


def trust_coefficients(
    updates: np.ndarray, reference: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cosines to ``reference``, trust scores ``ReLU(cos)`` and the aggregate's coefficients.

    The aggregate is ``sum_i TS_i * (||g0|| / ||g_i||) g_i / sum_i TS_i``; coefficients are
    all zero when no client has a positive trust score (or the reference is zero).
    """
    ref = np.asarray(reference, dtype=updates.dtype)
    ref_norm = float(np.sqrt(ref @ ref))
    norms = np.sqrt(sq_norms(updates))
    dots = (updates @ ref).astype(np.float64)
    denom = norms * ref_norm
    cos = np.divide(dots, denom, out=np.zeros_like(dots), where=denom > 0)
    cos = np.clip(cos, -1.0, 1.0)
    trust = np.maximum(cos, 0.0)
    total = trust.sum()
    if total <= 0:
        return cos, trust, np.zeros_like(trust)
    coef = trust / total * np.divide(ref_norm, norms, out=np.zeros_like(norms), where=norms > 0)
    return cos, trust, coef


@dataclass
class FLTrust:
    """FLTrust: weight each update by ``ReLU(cosine)`` to the server's root-data update and
    rescale it to that update's norm. Ignores example counts and ``f`` (any ``n >= 1``).

    The server must supply the reference update ``g0`` (computed on its root data from the
    current global model) each round: call ``set_reference(vector)`` before aggregating, or
    pass ``reference_fn`` (called once per aggregation). A reference set with
    ``set_reference`` is used for one aggregation only. Without one the call raises
    ``AggregatorConfigError``. Diagnostics: score is the cosine, weight the trust share,
    ``dropped`` for clients with no positive trust; if nobody is trusted the aggregate is the
    zero update and every weight is 0.
    """

    f: int = 0
    reference_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    name: ClassVar[str] = "fltrust"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)
        self._reference: np.ndarray | None = None

    def set_reference(self, vector: np.ndarray) -> None:
        """The server's root-data update for the next aggregation (same length as the deltas)."""
        self._reference = np.asarray(vector).ravel()

    def check(self, n: int) -> None:
        require_clients(self.name, n, 1, "n >= 1")

    def _take_reference(self, d: int) -> np.ndarray:
        ref, self._reference = self._reference, None
        if ref is None and self.reference_fn is not None:
            ref = np.asarray(self.reference_fn()).ravel()
        if ref is None:
            raise AggregatorConfigError(
                "fltrust needs the server's root-data update: call set_reference(vector) "
                "before each aggregation or construct it with reference_fn"
            )
        if ref.shape != (d,) or not np.all(np.isfinite(ref)):
            raise AggregatorConfigError(f"fltrust reference must be {d} finite values")
        return ref

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n, d = x.shape
        self.check(n)
        cos, trust, coef = trust_coefficients(x, self._take_reference(d))
        fates = ["kept" if trust[i] > 0 else "dropped" for i in range(n)]
        total = trust.sum()
        shares = trust / total if total > 0 else np.zeros(n)
        return AggregationResult(combine(coef, x), make_diagnostics(fates, cos, shares))
