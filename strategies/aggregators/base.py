"""Shared types for aggregation rules: per-client diagnostics and the rule protocol."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


class AggregatorConfigError(ValueError):
    """An aggregator cannot run with the given parameters (e.g. too few clients for ``f``)."""


@dataclass(frozen=True)
class ClientDiagnostic:
    """What a rule decided about one client's update.

    ``fate`` is one of ``kept``, ``trimmed``, ``clipped``, ``down-weighted``, ``dropped``;
    ``score`` is the rule's own measure (distance, norm, trust...) or ``None``;
    ``weight`` is the client's share of the aggregate (0 when dropped).
    """

    index: int
    fate: str
    score: float | None
    weight: float


@dataclass(frozen=True)
class AggregationResult:
    """The aggregated vector and one diagnostic per input row."""

    vector: np.ndarray
    diagnostics: tuple[ClientDiagnostic, ...]


class Aggregator(Protocol):
    """A rule mapping ``n`` update vectors (shape ``(n, d)``) to one vector."""

    name: str
    f: int

    def check(self, n: int) -> None:
        """Raise ``AggregatorConfigError`` if the rule cannot run with ``n`` updates."""

    def __call__(
        self, updates: np.ndarray, weights: np.ndarray | None = None
    ) -> AggregationResult: ...


def as_matrix(updates: np.ndarray) -> np.ndarray:
    """Validate and return ``updates`` as a 2-D float array with at least one row."""
    arr = np.asarray(updates)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) array, got shape {arr.shape}")
    return arr


def normalized_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Weights summing to one; uniform when ``weights`` is ``None``."""
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {n} finite non-negative numbers with a positive sum")
    return w / w.sum()


FATES = ("kept", "trimmed", "clipped", "down-weighted", "dropped")


def as_float_matrix(updates: np.ndarray) -> np.ndarray:
    """``as_matrix`` that keeps float32/float64 as they are and casts anything else to float64."""
    arr = as_matrix(updates)
    return arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)


def require_clients(rule: str, n: int, minimum: int, condition: str) -> None:
    """Raise ``AggregatorConfigError`` unless ``n >= minimum``; ``condition`` names the bound."""
    if n < minimum:
        raise AggregatorConfigError(f"{rule} needs {condition} = {minimum} updates, got n={n}")


def require_f(rule: str, f: int) -> None:
    """Raise ``AggregatorConfigError`` unless ``f`` is a non-negative integer."""
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise AggregatorConfigError(f"{rule}: f must be a non-negative integer, got {f!r}")


def make_diagnostics(
    fates: list[str], scores: np.ndarray | list[float | None] | None, weights: np.ndarray
) -> tuple[ClientDiagnostic, ...]:
    """One ``ClientDiagnostic`` per client from parallel fate / score / weight sequences."""
    n = len(fates)
    sc = [None] * n if scores is None else [None if s is None else float(s) for s in scores]
    return tuple(ClientDiagnostic(i, fates[i], sc[i], float(weights[i])) for i in range(n))


def share(values: np.ndarray) -> np.ndarray:
    """``values`` normalized to sum to one (uniform when they sum to zero)."""
    v = np.asarray(values, dtype=np.float64)
    total = v.sum()
    return v / total if total > 0 else np.full(len(v), 1.0 / len(v))
