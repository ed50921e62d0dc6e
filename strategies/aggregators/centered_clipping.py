"""Centered clipping (Karimireddy et al. 2021), stateful across rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
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
from fedgate.strategies.aggregators.linalg import (
    cached_gram,
    combine,
    gram,
    gram_and_projections,
    seed_gram,
    serial_blas,
)

CLIP_SLACK = 1.0 + 1e-9
"""A distance must exceed the radius by this factor to count as clipped."""


@dataclass(frozen=True)
class ClipPath:
    """Result of the clipping iterations: ``v = a * center + sum_i c_i x_i``."""

    a: float
    c: np.ndarray
    dist: np.ndarray  # distance of each update to the last center it was clipped around
    scale: np.ndarray  # last clipping factor min(1, tau / dist)


def centered_clip_path(
    g: np.ndarray,
    p: np.ndarray,
    center_sq: float,
    weights: np.ndarray,
    tau: float | None,
    iterations: int,
) -> ClipPath:
    """``iterations`` of ``v <- v + sum_i w_i clip_tau(x_i - v)`` in coefficient space.

    ``g`` is the Gram matrix of the updates, ``p_i = x_i . center`` and ``center_sq`` the
    center's squared norm; ``tau=None`` uses the median distance to the current ``v``.
    """
    n = len(g)
    a, c = 1.0, np.zeros(n)
    diag = np.diag(g)
    for _ in range(iterations):
        gc = g @ c
        v_sq = a * a * center_sq + 2 * a * (c @ p) + c @ gc
        dist = np.sqrt(np.maximum(diag - 2 * a * p - 2 * gc + v_sq, 0.0))
        radius = float(np.median(dist)) if tau is None else tau
        # distances within rounding of the radius (the median client itself) are not clipped
        scale = np.where(dist > radius * CLIP_SLACK, radius / np.maximum(dist, 1e-300), 1.0)
        ws = weights * scale
        a, c = a * (1 - ws.sum()), c * (1 - ws.sum()) + ws
    return ClipPath(a, c, dist, scale)


def centered_clip(
    updates: np.ndarray,
    center: np.ndarray | None,
    tau: float | None,
    iterations: int = 3,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, ClipPath]:
    """Centered-clipping aggregate of ``updates`` around ``center`` (zero when ``None``)."""
    x = as_float_matrix(updates)
    w = normalized_weights(weights, len(x))
    if center is None:
        g, p, center_sq = gram(x), np.zeros(len(x)), 0.0
    else:
        center = np.asarray(center, dtype=x.dtype)
        g = cached_gram(x)
        if g is None:
            g, proj = gram_and_projections(x, center[None, :])
            seed_gram(x, g)
            p = proj[:, 0]
        else:
            p = (x @ center).astype(np.float64)
        center_sq = float(np.dot(center.astype(np.float64), center))
    path = centered_clip_path(g, p, center_sq, w, tau, iterations)
    out = combine(path.c, x)
    if center is not None and path.a != 0.0:
        out += np.asarray(path.a, dtype=x.dtype) * center
    return out, path


@dataclass
class CenteredClipping:
    """Iteratively clip updates around a center, starting from the previous round's aggregate.

    Defaults: ``tau=None`` is the adaptive radius (median distance of the updates to the
    current center, recomputed each iteration); a float gives the paper's fixed radius.
    ``iterations=3`` (the paper proves L=1 enough with a good center; more iterations let
    the first rounds, centered at zero, move towards the honest mean). The first round and
    any change of dimension start from the zero update. Example counts weight the clipped
    average. Needs ``n >= 2f + 1``. Diagnostics: score is the distance to the last center,
    ``clipped`` when it exceeded the radius, weight the client's coefficient share.
    """

    f: int = 0
    tau: float | None = None
    iterations: int = 3
    center: np.ndarray | None = field(default=None, repr=False)
    name: ClassVar[str] = "cc"

    def __post_init__(self) -> None:
        require_f(self.name, self.f)
        if self.tau is not None and self.tau <= 0:
            raise AggregatorConfigError(f"{self.name}: tau must be > 0 (or None), got {self.tau}")
        if self.iterations < 1:
            raise AggregatorConfigError(f"{self.name}: iterations must be >= 1")

    def check(self, n: int) -> None:
        require_clients(self.name, n, 2 * self.f + 1, f"n >= 2f+1 (f={self.f})")

    def reset(self) -> None:
        """Forget the center (the next round starts from zero)."""
        self.center = None

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        n, d = x.shape
        self.check(n)
        if self.center is not None and self.center.shape != (d,):
            self.reset()
        out, path = centered_clip(x, self.center, self.tau, self.iterations, weights)
        self.center = out.copy()
        fates = ["clipped" if path.scale[i] < 1 else "kept" for i in range(n)]
        return AggregationResult(out, make_diagnostics(fates, path.dist, share(path.c)))
