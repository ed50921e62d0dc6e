"""Shared numerics: Gram matrices, pairwise distances and column-block parallelism.

Every pairwise distance comes from one Gram product, ``||x||^2 + ||y||^2 - 2 x.y`` clamped
at zero; nothing loops over pairs in Python. Large float32 inputs are never copied to
float64: only the small ``(n, n)`` results are promoted.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import numpy as np

T = TypeVar("T")

WORKERS = max(1, min(4, os.cpu_count() or 1))
"""Threads used for column-split work (numpy releases the GIL in BLAS, sorts and ufuncs)."""

PARALLEL_MIN = 1 << 20
"""Below this many elements an input is processed in the calling thread."""

try:  # optional: keep BLAS single-threaded while our own threads split the columns
    from threadpoolctl import ThreadpoolController

    _BLAS = ThreadpoolController()
except Exception:  # pragma: no cover - threadpoolctl ships with scikit-learn
    _BLAS = None


def single_blas() -> AbstractContextManager:
    """Context limiting BLAS to one thread (a no-op without threadpoolctl)."""
    return _BLAS.limit(limits=1, user_api="blas") if _BLAS is not None else nullcontext()


def column_spans(d: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``[start, stop)`` column ranges covering ``range(d)``."""
    edges = np.linspace(0, d, max(1, parts) + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def map_columns(fn: Callable[[int, int], T], d: int, block: int, size: int) -> list[T]:
    """``fn(start, stop)`` over column blocks of width ``block``, threaded when ``size`` is big."""
    spans = [(s, min(s + block, d)) for s in range(0, d, block)]
    if size < PARALLEL_MIN or WORKERS == 1 or len(spans) == 1:
        return [fn(a, b) for a, b in spans]
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda span: fn(*span), spans))


def gram(x: np.ndarray) -> np.ndarray:
    """``x @ x.T`` as float64, computed in ``x``'s dtype over column slices in parallel."""
    if x.size < PARALLEL_MIN or WORKERS == 1:
        g = (x @ x.T).astype(np.float64)
    else:
        with single_blas(), ThreadPoolExecutor(WORKERS) as pool:
            parts = pool.map(
                lambda s: x[:, s[0] : s[1]] @ x[:, s[0] : s[1]].T, column_spans(x.shape[1], WORKERS)
            )
            g = np.sum([p.astype(np.float64) for p in parts], axis=0)
    return (g + g.T) / 2


def sq_distances_from_gram(g: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances from a Gram matrix, clamped at zero, zero diagonal."""
    sq = np.diag(g)
    dist = sq[:, None] + sq[None, :] - 2.0 * g
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def pairwise_sq_distances(x: np.ndarray) -> np.ndarray:
    """``(n, n)`` float64 squared distances between the rows of ``x``."""
    return sq_distances_from_gram(gram(x))


def sq_norms(x: np.ndarray) -> np.ndarray:
    """Squared row norms as float64, without a temporary the size of ``x``."""
    return np.einsum("ij,ij->i", x, x).astype(np.float64)


def combine(coef: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``sum_i coef_i x_i`` in ``x``'s dtype (one BLAS gemv, no float64 copy of ``x``)."""
    dtype = x.dtype if x.dtype.kind == "f" else np.float64
    return np.asarray(coef, dtype=dtype) @ x
