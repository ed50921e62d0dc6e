"""Nearest-neighbour mixing (Allouah et al. 2023), a pre-aggregator composable with any rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    Aggregator,
    Updates,
    as_float_matrix,
    make_diagnostics,
    require_clients,
)
from fedgate.strategies.aggregators.linalg import (
    gram,
    gram_cache,
    mix_rows,
    seed_gram,
    serial_blas,
    sq_distances_from_gram,
)


def nnm_matrix(dist: np.ndarray, f: int) -> np.ndarray:
    """Row-stochastic ``(n, n)`` mixing matrix: row ``i`` averages the ``n - f`` rows nearest
    to row ``i`` (itself included, and always first on ties)."""
    n = len(dist)
    k = n - f
    d = dist.copy()
    np.fill_diagonal(d, -1.0)
    nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
    mix = np.zeros((n, n))
    np.put_along_axis(mix, nearest, 1.0 / k, axis=1)
    return mix


def nearest_neighbor_mixing(updates: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    """Every update replaced by the mean of its ``n - f`` nearest neighbours; also the matrix.

    Inside a :func:`gram_cache` block the mixed rows' Gram matrix ``M G M^T`` is recorded, so
    a Gram-based inner rule does not recompute it from the ``(n, d)`` mixed rows.
    """
    x = as_float_matrix(updates)
    g = gram(x)
    mix = nnm_matrix(sq_distances_from_gram(g), f)
    mixed = mix_rows(mix, x)
    # Rows with the same neighbour set get bit-identical values (the product's rounding
    # depends on row order), so rules that break ties see them as the ties they are.
    _, first, inverse = np.unique(mix, axis=0, return_index=True, return_inverse=True)
    source = first[inverse.ravel()]
    for i in np.flatnonzero(source != np.arange(len(x))):
        mixed[i] = mixed[source[i]]
    seed_gram(mixed, mix @ g @ mix.T)
    return mixed, mix


@dataclass
class NNM:
    """``inner`` applied to nearest-neighbour-mixed updates; named ``nnm+<inner>``.

    Needs ``n > f`` plus whatever ``inner`` needs. Diagnostics stay per original client:
    weight is the client's total share ``(u @ M)_i`` through the mixing matrix ``M`` given
    the inner rule's weights ``u`` on mixed rows; fate and score are the inner rule's for the
    client's own mixed row, except that a client with no share left is ``dropped`` and one
    whose own row was dropped but who still contributes through others is ``down-weighted``.
    """

    inner: Aggregator

    @property
    def name(self) -> str:
        return f"nnm+{self.inner.name}"

    @property
    def f(self) -> int:
        return self.inner.f

    def __getattr__(self, item: str):
        """Delegate the inner rule's extras (``set_reference``, ``reset``, ``center``...)."""
        if item == "inner":
            raise AttributeError(item)
        return getattr(self.inner, item)

    def __setattr__(self, item: str, value) -> None:
        """Attributes other than ``inner`` are the inner rule's (e.g. a CC ``center``)."""
        if item == "inner":
            object.__setattr__(self, item, value)
        else:
            setattr(self.inner, item, value)

    def check(self, n: int) -> None:
        require_clients(self.name, n, self.f + 1, f"n > f (f={self.f})")
        self.inner.check(n)

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n = len(x)
        self.check(n)
        with gram_cache():
            mixed, mix = nearest_neighbor_mixing(x, self.f)
            res = self.inner(mixed, weights)
        inner = sorted(res.diagnostics, key=lambda diag: diag.index)
        share = np.array([diag.weight for diag in inner]) @ mix
        total = share.sum()
        share = share / total if total > 0 else share
        fates = [
            "dropped"
            if share[i] <= 0
            else "down-weighted"
            if inner[i].fate == "dropped"
            else inner[i].fate
            for i in range(n)
        ]
        scores = [diag.score for diag in inner]
        return AggregationResult(res.vector, make_diagnostics(fates, scores, share))
