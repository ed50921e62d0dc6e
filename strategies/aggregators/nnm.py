"""Nearest-neighbour mixing (Allouah et al. 2023), a pre-aggregator composable with any rule."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    Aggregator,
    DelegatesToInner,
    Updates,
    as_float_matrix,
    make_diagnostics,
    require_clients,
)
from fedgate.strategies.aggregators.linalg import (
    gram,
    gram_cache,
    seed_gram,
    serial_blas,
    sq_distances_from_gram,
)


def nnm_matrix(dist: np.ndarray, f: int) -> np.ndarray:
    """Row-stochastic ``(n, n)`` mixing matrix: row ``i`` averages the ``n - f`` rows nearest
    to row ``i`` (itself included, and always first on ties). ``NeighbourMix.dense``."""
    return NeighbourMix.from_distances(dist, f).dense()


@dataclass(frozen=True)
class NeighbourMix:
    """The NNM mixing matrix ``M = (J - S) / k`` kept by its complement: ``J`` all ones,
    ``S`` one 1 in row ``i`` for each of the ``f`` rows farthest from row ``i``
    (``excluded[i]``, sorted), ``k = n - f``.

    Every product with ``M`` then costs ``O(n f d)`` or ``O(n^2 f)`` instead of the dense
    ``O(n^2 d)`` and ``O(n^3)``: at n = 5,000 the dense ``M G M^T`` alone is 5e11 flops.
    Rows of ``mix_rows`` with the same excluded set are computed by the same operations in
    the same order, so they are bit-identical (rules that break ties see them as ties).
    """

    excluded: np.ndarray  # (n, f) int, each row sorted

    @classmethod
    def from_distances(cls, dist: np.ndarray, f: int) -> NeighbourMix:
        n = len(dist)
        d = dist.copy()
        np.fill_diagonal(d, -1.0)
        if f == 1:  # the farthest row: one pass instead of a partition of every row
            return cls(d.argmax(axis=1)[:, None])
        order = np.argpartition(d, n - f - 1, axis=1) if f else np.empty((n, 0), dtype=np.intp)
        return cls(np.sort(order[:, n - f :], axis=1))

    @property
    def n(self) -> int:
        return len(self.excluded)

    @property
    def k(self) -> int:
        return self.n - self.excluded.shape[1]

    def dense(self) -> np.ndarray:
        """``M`` as an ``(n, n)`` array."""
        mix = np.full((self.n, self.n), 1.0 / self.k)
        np.put_along_axis(mix, self.excluded, 0.0, axis=1)
        return mix

    def _excluded_sum(self, rows: np.ndarray) -> np.ndarray:
        """``S @ rows`` in float64: per row ``i``, the sum of ``rows[excluded[i]]``."""
        out = np.zeros((self.n, rows.shape[1]))
        for column in self.excluded.T:
            out += np.take(rows, column, axis=0)
        return out

    def mix_rows(self, x: np.ndarray) -> np.ndarray:
        """``M @ x`` in ``x``'s float dtype (sums in float64)."""
        dtype = x.dtype if x.dtype.kind == "f" else np.float64
        total = x.sum(axis=0, dtype=np.float64)
        return ((total[None, :] - self._excluded_sum(x)) / self.k).astype(dtype, copy=False)

    def shares(self, u: np.ndarray) -> np.ndarray:
        """``u @ M``: each original row's total weight given weights ``u`` on mixed rows."""
        u = np.asarray(u, dtype=np.float64)
        f = self.excluded.shape[1]
        dropped = np.bincount(self.excluded.ravel(), np.repeat(u, f), minlength=self.n)
        share = (u.sum() - dropped) / self.k
        # A row that every weighted mixed row excludes has no share: exactly 0, not the
        # rounding residue of ``u.sum() - dropped`` (whose sign would depend on row order).
        support = u > 0
        excluded_by = np.bincount(self.excluded[support].ravel(), minlength=self.n)
        share[excluded_by == support.sum()] = 0.0
        return share

    def gram(self, g: np.ndarray) -> np.ndarray:
        """``M G M^T`` of a symmetric Gram matrix ``G``: the mixed rows' Gram matrix."""
        r = g.sum(axis=1)
        a = r[self.excluded].sum(axis=1)  # (S G 1)_i = (1^T G S^T)_i
        sg = self._excluded_sum(g)  # S G
        sgs = np.zeros_like(sg)
        for column in self.excluded.T:  # (S G S^T)[:, l]: the sum of S G's columns excluded[l]
            sgs += np.take(sg, column, axis=1)
        sgs -= a[:, None]
        sgs -= a[None, :]
        sgs += r.sum()
        sgs /= float(self.k) ** 2
        return sgs


def nearest_neighbor_mixing(updates: np.ndarray, f: int) -> tuple[np.ndarray, NeighbourMix]:
    """Every update replaced by the mean of its ``n - f`` nearest neighbours; also the mix.

    Inside a :func:`gram_cache` block the mixed rows' Gram matrix ``M G M^T`` is recorded, so
    a Gram-based inner rule does not recompute it from the ``(n, d)`` mixed rows.
    """
    x = as_float_matrix(updates)
    g = gram(x)
    mix = NeighbourMix.from_distances(sq_distances_from_gram(g), f)
    mixed = mix.mix_rows(x)
    seed_gram(mixed, mix.gram(g))
    return mixed, mix


@dataclass
class NNM(DelegatesToInner):
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
        share = mix.shares(np.array([diag.weight for diag in inner]))
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
