"""Merge rules across regions (pure functions on named arrays).

Fewer than three regions: the mean weighted by each region's accepted-device count, capped at
``device_cap`` (so one large region cannot dominate past the cap). Three or more: a robust rule
from ``strategies/aggregators`` applied coordinate-wise to the flattened models (``median``, or
``trimmed-mean`` dropping ``trim`` per side); both are translation-equivariant, so merging
weights equals the base plus the merged deltas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedgate.errors import UsageError
from fedgate.strategies.aggregators import make_aggregator

ROBUST_FROM = 3


class MergeError(UsageError, ValueError):
    """Nothing to merge, or models that cannot be merged together."""


@dataclass(frozen=True)
class MergeResult:
    tensors: dict[str, np.ndarray]
    rule: str  # e.g. "weighted-mean(cap=1000)" or "median"
    weights: tuple[float, ...]  # each region's share (robust rules: equal)


def capped_weights(devices: Sequence[int], cap: int) -> np.ndarray:
    """Each region's share: ``min(devices, cap)`` normalised; all zero counts weigh equally."""
    counts = np.minimum(np.asarray(devices, dtype=np.float64), float(cap))
    if counts.sum() <= 0:
        return np.full(len(counts), 1.0 / len(counts))
    return counts / counts.sum()


def _flatten(models: Sequence[Mapping[str, np.ndarray]]) -> tuple[list[str], np.ndarray]:
    names = sorted(models[0])
    for m in models[1:]:
        if sorted(m) != names or any(m[n].shape != models[0][n].shape for n in names):
            raise MergeError("the models have different tensor names or shapes")
    size = sum(int(models[0][n].size) for n in names)
    dtype = np.result_type(np.float32, *(models[0][n].dtype for n in names))
    matrix = np.empty((len(models), size), dtype=dtype)  # float32 models stay float32
    for i, m in enumerate(models):
        at = 0
        for n in names:
            matrix[i, at : at + m[n].size] = np.ravel(m[n])
            at += m[n].size
    return names, matrix


def _unflatten(
    names: list[str], vector: np.ndarray, like: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    out, at = {}, 0
    for n in names:
        ref = like[n]
        out[n] = vector[at : at + ref.size].reshape(ref.shape).astype(ref.dtype, copy=False)
        at += ref.size
    return out


def merge_models(
    models: Sequence[Mapping[str, np.ndarray]],
    devices: Sequence[int],
    *,
    device_cap: int,
    robust: str = "median",
    trim: int = 1,
) -> MergeResult:
    """Merge ``models`` (one per region, same names and shapes) by the rule for their count."""
    if not models:
        raise MergeError("nothing to merge: no accepted regional artifact")
    if len(models) != len(devices):
        raise MergeError("one device count per model is needed")
    names, matrix = _flatten(models)
    n = len(models)
    if n >= ROBUST_FROM:
        f = min(trim, (n - 1) // 2) if robust == "trimmed-mean" else 0
        rule = make_aggregator(robust, f=f)
        vector = rule(matrix).vector
        label = f"trimmed-mean(trim={f})" if robust == "trimmed-mean" else robust
        shares = tuple(1.0 / n for _ in range(n))
    else:
        w = capped_weights(devices, device_cap)
        vector = w @ matrix
        label, shares = f"weighted-mean(cap={device_cap})", tuple(float(x) for x in w)
    return MergeResult(_unflatten(names, vector, models[0]), label, shares)
