"""FoolsGold-style Sybil filter (Fung, Yoon & Beschastnikh, RAID 2020), a pre-aggregator.

Colluding attackers who pursue one goal (a shared trigger, an ALIE or Min-Max vector crafted
once and sent by all) send updates more alike than honest clients, whose data differ. Each
round:

1. **features**: every client's update and its deviation from the round's coordinate-wise
   median, each summed over the rounds it took part in when the caller names the clients
   (``set_clients``: the live strategy's node ids, the benchmark's client indices), else this
   round's alone. The residual removes the direction every update shares (the clean task),
   which in the paper's raw history makes honest IID clients look alike; the raw update
   catches Sybils who sit on the median itself (their residuals are nearly zero, so their
   directions are noise);
2. **similarity**: the cosine similarity ``cs`` of every pair, the higher of the two
   features'; ``v_i = max_j
   cs_ij``; *pardoning*: ``cs_ij *= v_i / v_j`` when ``v_i < v_j`` (an honest client that
   merely resembles a Sybil is not punished for the Sybil's similarity);
3. **weights**: ``w_i = 1 - max_j cs_ij`` clipped to [0, 1], divided by the largest, then the
   paper's logit ``ln(w / (1 - w)) + 0.5`` clipped to [0, 1] (``w = 1`` taken as 0.99): a
   client as distinct as the most distinct one keeps weight 1, one much more alike than that
   gets 0. Only clients whose (pardoned) similarity reaches ``min_similarity`` are weighed
   at all (the rest keep 1): strongly skewed honest shards holding the same class are alike
   too (their per-round cosine reaches 0.95 on the digits protocol), near-identical crafted
   vectors reach 1. With that floor, when more than half of the clients reach it nobody is
   weighed: Sybils are a minority, a majority so alike is the honest consensus (IID shards);
4. rows of weight 0 are **dropped**, rows below 1 scaled by their weight (**down-weighted**);
   optionally (``clip``) every kept row is clipped to the round's median norm (flame's clip,
   ``norm_bound.clip_factors``); the ``inner`` rule (or an ensemble's members) runs on the rest.

If fewer rows are left than the inner rule needs, the dropped rows with the highest FoolsGold
score come back at their (zero) weight scaled to nothing, so the rule still runs and the
Sybils still carry nothing; the note says so. Diagnostics stay per original client: a dropped
or down-weighted client's score is its pardoned maximum similarity.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    Aggregator,
    AggregatorConfigError,
    DelegatesToInner,
    Stage,
    Updates,
    as_float_matrix,
    filtered_diagnostics,
    make_diagnostics,
    readmit,
)
from fedgate.strategies.aggregators.flame import cosine_distances, smallest_n
from fedgate.strategies.aggregators.linalg import serial_blas
from fedgate.strategies.aggregators.norm_bound import clip_factors

LOGIT_SHIFT = 0.5  # the paper's confidence shift of the logit (kappa = 1)
HISTORY_BYTES = 1 << 30
"""The history's default memory budget (1 GiB: 1,342 devices of a 100k-parameter model)."""


@dataclass(frozen=True)
class FoolsGoldDecision:
    """Per client: FoolsGold weight (0..1), pardoned max similarity and clip factor."""

    weight: np.ndarray  # (n,)
    similarity: np.ndarray  # (n,) pardoned max cosine similarity to another client
    scale: np.ndarray  # (n,) clip factors (1 where not clipped)
    bound: float  # the clipping norm (0 when not clipping)


def foolsgold_weights(
    features: np.ndarray | Sequence[np.ndarray], min_similarity: float = 0.0
) -> FoolsGoldDecision:
    """FoolsGold's weights of the ``(n, d)`` feature rows (steps 2 and 3 of the module doc);
    given several feature matrices, a pair's similarity is the highest over them."""
    sets = [features] if isinstance(features, np.ndarray) else list(features)
    n = len(sets[0])
    if n < 2:
        return FoolsGoldDecision(np.ones(n), np.zeros(n), np.ones(n), 0.0)
    cs = np.max([1.0 - cosine_distances(m) for m in sets], axis=0)
    np.fill_diagonal(cs, -np.inf)
    top = cs.max(axis=1)
    ratio = np.divide(
        top[:, None], top[None, :], out=np.ones((n, n)), where=top[None, :] > 0
    )  # v_i / v_j
    pardon = (top[:, None] < top[None, :]) & (top[:, None] > 0)
    cs = np.where(pardon, cs * ratio, cs)
    similarity = cs.max(axis=1)
    distinct = np.clip(1.0 - similarity, 0.0, 1.0)
    best = distinct.max()
    if best <= 0:  # every client has an identical twin: nothing tells them apart
        return FoolsGoldDecision(np.ones(n), similarity, np.ones(n), 0.0)
    w = distinct / best
    w = np.where(w >= 1.0, 0.99, w)
    with np.errstate(divide="ignore"):
        logit = np.log(w) - np.log1p(-w) + LOGIT_SHIFT
    weight = np.clip(logit, 0.0, 1.0)
    alike = similarity >= min_similarity
    if min_similarity > 0 and 2 * int(alike.sum()) > n:
        # Sybils are a minority (f < n / 2): a majority this alike is the honest consensus
        # (IID shards, near-identical gradients), and relative weights would drop part of it
        return FoolsGoldDecision(np.ones(n), similarity, np.ones(n), 0.0)
    weight[~alike] = 1.0
    return FoolsGoldDecision(weight, similarity, np.ones(n), 0.0)


def median_residuals(x: np.ndarray) -> np.ndarray:
    """Every row's deviation from the coordinate-wise median, in float64."""
    x = np.asarray(x, dtype=np.float64)
    return x - np.median(x, axis=0)


@dataclass
class SybilHistory:
    """The FoolsGold state: per client id, its summed updates and summed median residuals.

    ``set_clients(ids)`` names the next aggregation's rows (used once, like a scorer); a
    round without names is judged on its own residuals and leaves the history untouched.
    Memory: two float32 vectors of the model's size per device (8 bytes per parameter and
    device: 0.8 GB for 1,000 devices of a 100k-parameter model), kept within ``max_bytes`` by
    evicting the devices seen least recently (never one of the round being judged); an evicted
    device that returns starts a new history. The round's note counts the evictions.
    """

    min_similarity: float = 0.99
    clip: bool = False
    max_bytes: int = HISTORY_BYTES
    history: dict[Hashable, np.ndarray] = field(default_factory=dict, repr=False)
    _ids: list[Hashable] | None = field(default=None, repr=False)
    _bytes: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_similarity) and -1.0 <= self.min_similarity <= 1.0):
            raise AggregatorConfigError(
                f"foolsgold: min_similarity must be in [-1, 1], got {self.min_similarity}"
            )
        if self.max_bytes < 0:
            raise AggregatorConfigError(f"foolsgold: max_bytes must be >= 0, got {self.max_bytes}")

    def set_clients(self, ids: Sequence[Hashable]) -> None:
        """The client ids of the next aggregation's rows, in row order."""
        self._ids = list(ids)

    def features(self, x: np.ndarray) -> tuple[list[np.ndarray], str]:
        """The rows' features, raw and median residuals (summed over the client's rounds, or
        this round's alone), and which of the two they were."""
        ids, self._ids = self._ids, None
        now = np.stack([np.asarray(x, dtype=np.float64), median_residuals(x)], axis=1)
        if ids is None or len(ids) != len(x) or len(set(ids)) != len(ids):
            return [now[:, 0], now[:, 1]], "this round"
        feats = np.empty_like(now)
        for row, cid in enumerate(ids):
            total = self.history.pop(cid, None)  # re-inserted last: most recently seen
            if total is not None:
                self._bytes -= total.nbytes
            total = now[row] if total is None else total + now[row]
            kept = total.astype(np.float32)  # 8 bytes per parameter and device
            self.history[cid] = kept
            self._bytes += kept.nbytes
            feats[row] = total
        evicted = self._evict(len(self.history) - len(ids))
        return [feats[:, 0], feats[:, 1]], "history" + (
            f", {evicted} least recently seen evicted" if evicted else ""
        )

    def _evict(self, evictable: int) -> int:
        """Drop the ``evictable`` least recently seen at most, oldest first, until the history
        fits ``max_bytes``; how many were dropped."""
        dropped = 0
        while self._bytes > self.max_bytes and dropped < evictable:
            self._bytes -= self.history.pop(next(iter(self.history))).nbytes
            dropped += 1
        return dropped

    def decide(self, x: np.ndarray) -> tuple[FoolsGoldDecision, str]:
        feats, basis = self.features(x)
        decision = foolsgold_weights(feats, self.min_similarity)
        if not self.clip:
            return decision, basis
        norms = np.linalg.norm(np.asarray(x, dtype=np.float64), axis=1)
        bound = float(np.median(norms))
        scale = clip_factors(norms, bound) if bound > 0 else np.ones(len(x))
        return replace(decision, scale=scale, bound=bound), basis

    def apply(
        self,
        run: Stage,
        x: np.ndarray,
        weights: np.ndarray | None,
        min_kept: int,
    ) -> AggregationResult:
        """``run`` on the weighted (and clipped) rows of ``x``, diagnostics per client."""
        n = len(x)
        decision, basis = self.decide(x)
        kept = decision.weight > 0
        readmitted = readmit(kept, decision.similarity, min_kept)
        rows = np.flatnonzero(kept)
        factor = decision.weight * decision.scale
        sub = (x[rows] * factor[rows, None]).astype(x.dtype, copy=False)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[rows]
        res = run(sub, w)

        def fate_of(i: int, fate: str) -> str:
            if decision.weight[i] <= 0:
                return "dropped"
            if fate == "kept" and decision.weight[i] < 1:
                return "down-weighted"
            return "clipped" if fate == "kept" and decision.scale[i] < 1 else fate

        fates, scores, share = filtered_diagnostics(
            res.diagnostics,
            rows,
            decision.similarity,
            fate_of,
            lambda i, fate: fate not in ("dropped", "down-weighted"),
        )
        total = share.sum()
        share = share / total if total > 0 else share
        dropped = int(np.sum(decision.weight <= 0))
        lowered = int(np.sum((decision.weight > 0) & (decision.weight < 1)))
        note = (
            f"foolsgold: dropped {dropped}/{n}, down-weighted {lowered} "
            f"(similarity from {basis}, sybil from {self.min_similarity:g})"
            + (f", re-admitted {readmitted} at weight 0" if readmitted else "")
            + (
                f", clipped {int(np.sum(decision.scale[kept] < 1))} to norm {decision.bound:.3g}"
                if self.clip
                else ""
            )
        )
        return AggregationResult(
            np.asarray(res.vector),
            make_diagnostics(fates, scores, share),
            f"{res.note}; {note}" if res.note else note,
        )


@dataclass
class FoolsGold(DelegatesToInner):
    """``inner`` on the FoolsGold-weighted updates; ``foolsgold+<inner>`` (see module doc)."""

    OWN = frozenset({"inner", "min_similarity", "clip", "sybils"})
    inner: Aggregator
    min_similarity: float = 0.99
    clip: bool = False
    sybils: SybilHistory = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.sybils = SybilHistory(self.min_similarity, self.clip)

    @property
    def name(self) -> str:
        return f"foolsgold+{self.inner.name}"

    def set_clients(self, ids: Sequence[Hashable]) -> None:
        """The client ids of the next aggregation's rows (their histories are summed)."""
        self.sybils.set_clients(ids)

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        self.check(len(x))
        return self.sybils.apply(self.inner, x, weights, smallest_n(self.inner, len(x)))
