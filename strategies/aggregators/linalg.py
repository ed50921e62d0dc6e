"""Shared numerics: Gram matrices, pairwise distances and column-block parallelism.

Every pairwise distance comes from one Gram product, ``||x||^2 + ||y||^2 - 2 x.y`` clamped
at zero; nothing loops over pairs in Python. Large float32 inputs are never copied to
float64: only the small ``(n, n)`` results are promoted.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

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


_SERIAL = threading.local()


def serial_blas(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with single-threaded BLAS; the rules thread their big products themselves.

    Multi-threaded OpenBLAS on a busy machine can spin for a second on a product that takes
    half a millisecond on one thread, so rules never leave BLAS threading on. Nested calls
    (a pre-aggregator around a rule) enter the limit once.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if getattr(_SERIAL, "active", False):
            return fn(*args, **kwargs)
        _SERIAL.active = True
        try:
            with single_blas():
                return fn(*args, **kwargs)
        finally:
            _SERIAL.active = False

    return wrapper


def column_spans(d: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``[start, stop)`` column ranges covering ``range(d)``."""
    edges = np.linspace(0, d, max(1, parts) + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


def map_columns(fn: Callable[[int, int], T], d: int, block: int, size: int) -> list[T]:
    """``fn(start, stop)`` over column blocks of width ``block``, threaded when ``size`` is big."""
    spans = [(s, min(s + block, d)) for s in range(0, d, block)]
    if size < PARALLEL_MIN or WORKERS == 1 or len(spans) == 1:
        return [fn(a, b) for a, b in spans]
    return list(_pool().map(lambda span: fn(*span), spans))


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """The module's worker threads, created on first use and kept for the process."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(WORKERS, thread_name_prefix="fedgate-agg")
    return _POOL


_CACHE = threading.local()


@contextmanager
def gram_cache() -> Iterator[None]:
    """Within the block, :func:`gram` of the same array object is computed once.

    Entries hold their array, so an address cannot be reused by another array while cached;
    inputs are never modified in place by the rules. Used when several rules see one input.
    """
    outer = getattr(_CACHE, "entries", None)
    _CACHE.entries = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            _CACHE.entries = None


def seed_gram(x: np.ndarray, g: np.ndarray) -> None:
    """Record ``g`` as the Gram matrix of ``x`` in the active :func:`gram_cache` (if any)."""
    entries = getattr(_CACHE, "entries", None)
    if entries is not None:
        entries[id(x)] = (x, g)


def cached_gram(x: np.ndarray) -> np.ndarray | None:
    """The Gram matrix of ``x`` recorded in the active :func:`gram_cache`, if any."""
    entries = getattr(_CACHE, "entries", None)
    hit = None if entries is None else entries.get(id(x))
    return hit[1] if hit is not None and hit[0] is x else None


def gram(x: np.ndarray) -> np.ndarray:
    """``x @ x.T`` as float64, computed in ``x``'s dtype over column slices in parallel."""
    g = cached_gram(x)
    if g is None:
        g = gram_and_projections(x)[0]
        seed_gram(x, g)
    return g


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    """``x`` as a torch tensor sharing its memory (read-only inputs included: never written)."""
    import torch  # heavy import: only for large matrices (config validation imports this module)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        return torch.from_numpy(x)


GEMM_ENV = "FEDGATE_GEMM"
"""``numpy`` or ``torch`` forces the kernel of the large Gram products; unset: measured."""
_GEMM: dict[str, str] = {}
_GEMM_LOCK = threading.Lock()


def _torch_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    import torch  # heavy import: only for large matrices

    with torch.no_grad():
        return torch.mm(_as_tensor(a), _as_tensor(b).T).numpy()


def _numpy_mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b.T`` as a sum of column-block products on the worker threads, each on
    single-threaded BLAS (as the rules run it: ``serial_blas``)."""
    spans = column_spans(a.shape[1], WORKERS)
    if len(spans) == 1:
        return a @ b.T
    with single_blas():
        parts = list(
            _pool().map(lambda span: a[:, span[0] : span[1]] @ b[:, span[0] : span[1]].T, spans)
        )
    return functools.reduce(np.add, parts)


GEMMS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "numpy": _numpy_mm,
    "torch": _torch_mm,
}


def measure_gemm(n: int = 50, d: int = 1 << 18, repeats: int = 3) -> dict[str, float]:
    """Best seconds of ``x @ x.T`` (float32, ``(n, d)``) per kernel on this host, each with
    its own default threading (numpy's BLAS, torch's intra-op threads)."""
    import time

    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    out = {}
    for name, mm in GEMMS.items():  # accumulation in float32 either way: same precision
        try:
            mm(x, x)  # warm up: imports, thread pools
        except Exception:  # a kernel this host cannot run is not a candidate
            continue
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            mm(x, x)
            best = min(best, time.perf_counter() - t0)
        out[name] = best
    return out


def gemm_kernel() -> str:
    """The kernel of the large Gram products: ``FEDGATE_GEMM`` if set, else the faster of
    numpy's BLAS and torch's GEMM as measured once per process (``measure_gemm``): which one
    wins depends on the host (OpenBLAS or MKL, AMD or Intel), so it is never assumed."""
    with _GEMM_LOCK:
        if "kernel" not in _GEMM:
            forced = os.environ.get(GEMM_ENV, "").strip().lower()
            if forced and forced not in GEMMS:
                raise ValueError(f"{GEMM_ENV}={forced!r}: choose one of {', '.join(GEMMS)}")
            if forced:
                _GEMM["kernel"] = forced
            else:
                timings = measure_gemm()
                _GEMM["kernel"] = min(timings, key=timings.__getitem__)
                _GEMM.update({f"{k} seconds": f"{v:.6f}" for k, v in timings.items()})
        return _GEMM["kernel"]


def gemm_choice() -> dict[str, str]:
    """The kernel ``gemm_kernel`` picked and the timings it picked it by (none if forced)."""
    gemm_kernel()
    with _GEMM_LOCK:
        return dict(_GEMM)


def gram_and_projections(
    x: np.ndarray, extra: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``x @ x.T`` and ``x @ extra.T`` (``extra``: ``(m, d)``) as float64.

    Large inputs go to the GEMM that measured faster on this host (``gemm_kernel``: numpy's
    BLAS or torch's, in ``x``'s dtype, sharing ``x``'s memory); small ones stay in numpy,
    where a call costs less than torch's dispatch.
    """
    d = x.shape[1]
    e = None if extra is None else np.ascontiguousarray(extra, dtype=x.dtype).reshape(-1, d)
    if x.size < PARALLEL_MIN or x.dtype not in (np.float32, np.float64):
        g = (x @ x.T).astype(np.float64)
        p = None if e is None else (x @ e.T).astype(np.float64)
    else:
        mm = GEMMS[gemm_kernel()]
        g = mm(x, x).astype(np.float64)
        p = None if e is None else mm(x, e).astype(np.float64)
    return (g + g.T) / 2, p


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
    """``sum_i coef_i x_i`` in ``x``'s dtype (BLAS gemv per column span, no float64 copy)."""
    return mix_rows(np.asarray(coef)[None, :], x)[0]


def mix_rows(mix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``mix @ x`` (``(m, n) @ (n, d)``) in ``x``'s dtype, split over column spans on the
    worker threads when ``x`` is big."""
    dtype = x.dtype if x.dtype.kind == "f" else np.float64
    m = np.asarray(mix, dtype=dtype)
    d = x.shape[1]
    if x.size < PARALLEL_MIN or WORKERS == 1:
        return m @ x.astype(dtype, copy=False)
    out = np.empty((len(m), d), dtype=dtype)

    def work(a: int, b: int) -> None:
        np.matmul(m, x[:, a:b], out=out[:, a:b])

    with single_blas():
        list(_pool().map(lambda span: work(*span), column_spans(d, WORKERS)))
    return out
