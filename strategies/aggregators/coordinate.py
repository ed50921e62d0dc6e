"""Engine for coordinate-wise rules: sort every coordinate of a column block, then reduce.

A block of columns is copied, transposed, into a small contiguous ``(B, k)`` buffer
(cache-resident), a copy of each row (one coordinate across clients) is sorted with numpy's
SIMD sort,
and a kernel turns the sorted block into the aggregate plus the range ``[lo, hi]`` of values it
kept. Blocks run on a thread pool. Per client, the engine counts the coordinates at which its
value fell in the kept range, which gives coordinate-wise rules their effective weights (a
client whose value ties with a kept boundary value counts as kept).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedgate.strategies.aggregators.base import ClientDiagnostic, make_diagnostics, share
from fedgate.strategies.aggregators.linalg import map_columns, single_blas

BLOCK = 4096
"""Columns per block: ``B * k`` float32 values stay within L2 for k up to about 60."""

Kernel = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""Sorted ``(B, k)`` block -> (aggregate ``(B,)``, lowest kept ``(B,)``, highest kept ``(B,)``)."""


@dataclass(frozen=True)
class CoordinateResult:
    """Aggregate vector and, per input row, the number of coordinates where it was kept."""

    vector: np.ndarray
    kept: np.ndarray


def trimmed_kernel(t: int) -> Kernel:
    """Mean of the sorted values after dropping ``t`` from each end (``t = (k-1)//2``: median).

    The mean of the middle ``k - 2t`` values is one matrix-vector product with a weight
    vector that is ``1 / (k - 2t)`` on the kept positions and zero elsewhere.
    """

    def kernel(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = s.shape[1]
        lo, hi = s[:, t], s[:, k - t - 1]
        if k - 2 * t == 1:
            return lo.copy(), lo, hi
        if k - 2 * t == 2:
            return (lo + hi) * np.asarray(0.5, s.dtype), lo, hi
        w = np.zeros(k, dtype=s.dtype)
        w[t : k - t] = 1.0 / (k - 2 * t)
        return s @ w, lo, hi

    return kernel


PAGE = 4096
"""Bytes after which an L1 set index repeats (64 sets of 64-byte lines on x86 and ARM)."""


def transposed(blk: np.ndarray) -> np.ndarray:
    """A C-ordered copy of ``blk.T``.

    Reading all rows of ``blk`` in step aliases onto a few L1 sets when their distance in
    bytes is a multiple of a large power of two (a row subset copied out of ``x``, or ``d`` a
    multiple of 1,024): the copy then takes 2-4 times longer. Such rows are copied eight
    at a time (within the cache's associativity).
    """
    pitch = blk.strides[0]
    if PAGE // math.gcd(pitch, PAGE) >= 16:  # rows spread over at least 16 set offsets
        return blk.T.copy()
    out = np.empty(blk.shape[::-1], dtype=blk.dtype)
    for i in range(0, len(blk), 8):
        out[:, i : i + 8] = blk[i : i + 8].T
    return out


def reduce_sorted(
    x: np.ndarray, kernel: Kernel, rows: np.ndarray | None = None, block: int = BLOCK
) -> CoordinateResult:
    """Apply ``kernel`` to every sorted coordinate of ``x[rows]`` (all rows when ``None``).

    ``x`` itself is never modified: every block is sorted in a private copy.
    """
    d = x.shape[1]
    k = x.shape[0] if rows is None else len(rows)
    out = np.empty(d, dtype=x.dtype)

    def work(a: int, b: int) -> np.ndarray:
        blk = x[:, a:b] if rows is None else x[rows, a:b]  # (k, B)
        srt = transposed(blk)  # (B, k), C-ordered: x is read once, the rest stays in cache
        srt.sort(axis=1)
        out[a:b], lo, hi = kernel(srt)
        # kept counts in x's own layout: contiguous comparisons against contiguous bounds
        # (the kernel's are often strided columns of srt), then one float32 GEMV (exact: a
        # block's count is at most B < 2**24)
        inside = blk >= np.ascontiguousarray(lo)
        inside &= blk <= np.ascontiguousarray(hi)
        return inside.astype(np.float32) @ np.ones(b - a, dtype=np.float32)

    with single_blas():
        kept = np.sum(map_columns(work, d, block, k * d), axis=0, dtype=np.int64)
    return CoordinateResult(out, kept)


def coordinate_diagnostics(
    kept: np.ndarray, d: int, per_coordinate: int, n: int, rows: np.ndarray | None = None
) -> tuple[ClientDiagnostic, ...]:
    """Diagnostics from kept counts: score = fraction of coordinates at which a client was kept.

    Weight is the client's share of all kept values. Fate: ``trimmed`` if never kept,
    ``down-weighted`` if kept at fewer than half the coordinates an average client is
    (``per_coordinate / k``), else ``kept``; rows outside ``rows`` are ``dropped``.
    """
    counts = np.zeros(n, dtype=np.float64)
    idx = np.arange(n) if rows is None else np.asarray(rows)
    counts[idx] = kept
    frac = counts / d
    expected = per_coordinate / len(idx)
    selected = np.zeros(n, dtype=bool)
    selected[idx] = True
    fates = [
        "dropped"
        if not selected[i]
        else "trimmed"
        if frac[i] == 0
        else "down-weighted"
        if frac[i] < expected / 2
        else "kept"
        for i in range(n)
    ]
    return make_diagnostics(fates, frac, share(counts))
