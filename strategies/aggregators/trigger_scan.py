"""A trigger-agnostic backdoor screen in the style of Neural Cleanse (Wang et al., S&P 2019).

For every accepted client's candidate model (the global model plus its delta) and every class
``t``, the server reverse-engineers the smallest mask ``m`` (64 sigmoid-parametrised inputs)
and pattern ``p`` such that ``x' = (1 - m) * x + m * p`` turns its validation inputs that are
not of class ``t`` into ``t``: loss ``CE(model(x'), t) + lam * |m|_1``, a fixed number of Adam
steps from a fixed start, all (client, class) pairs in one batched optimisation (``bmm`` over
the stacked per-client weights of a two-layer MLP). A model carrying a patch backdoor needs an
anomalously small mask for its target class (the corner trigger is 4 of 64 pixels).

Anomaly: per class, the clients' mask norms ``L_it`` against their median and MAD (scaled by
1.4826, floored at ``MAD_FLOOR`` of the median so that identical models score 0); a client's
score is its largest index ``(median_t - L_it) / MAD_t`` over the classes (only the small side
counts, as in Neural Cleanse); a score above ``threshold`` **drops** the client (fate
``dropped``, score = its anomaly index). If fewer rows are left than the rule needs, the
flagged clients with the lowest score come back (the note says so). Without a probe (the
server's validation data and global weights, :meth:`TriggerScan.set_probe`) or below
``MIN_SCANNED`` updates the screen stands aside and the note says so.

Deterministic given the probe: the start is fixed, the validation subset is the first
``examples`` rows; each (client, class) pair's gradient depends on its own pair only, so a
permutation of the clients permutes the mask norms (up to float summation order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from fedgate.models.threads import one_torch_thread
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
from fedgate.strategies.aggregators.flame import smallest_n
from fedgate.strategies.aggregators.linalg import serial_blas

MIN_SCANNED = 5
"""Fewest updates a round for the median/MAD comparison to mean anything."""
MAD_FLOOR = 0.02
"""The MAD is at least this fraction of the median mask norm (identical models score 0)."""
MAD_SCALE = 1.4826  # MAD of a normal distribution -> its standard deviation


@dataclass(frozen=True)
class ScanProbe:
    """What the screen needs besides the deltas: the global flat weights of a two-layer MLP
    (``shapes``: W1 (H, F), b1 (H,), W2 (C, H), b2 (C,)), and the server's validation data."""

    weights: np.ndarray  # (d,)
    x: np.ndarray  # (m, F) in [0, 1]
    y: np.ndarray  # (m,) class labels
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.shapes) != 4 or len(self.shapes[0]) != 2:
            raise AggregatorConfigError(
                f"trigger-scan: needs a two-layer MLP (4 arrays), got shapes {self.shapes}"
            )
        if sum(math.prod(s) for s in self.shapes) != len(self.weights):
            raise AggregatorConfigError("trigger-scan: the weights do not match the shapes")


def mlp_parameters(weights, probe: ScanProbe) -> list:
    """The torch tensors W1 (n, H, F), b1 (n, H), W2 (n, C, H), b2 (n, C) of flat ``weights``
    (an (n, d) tensor) laid out as ``probe.shapes``."""
    import torch

    sizes = [math.prod(s) for s in probe.shapes]
    return [
        p.reshape(len(weights), *s)
        for p, s in zip(torch.split(weights, sizes, 1), probe.shapes, strict=True)
    ]


def reverse_engineer(
    models: np.ndarray,
    probe: ScanProbe,
    steps: int = 30,
    lam: float = 0.05,
    examples: int = 64,
    lr: float = 0.15,
    start: float = -2.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per model row (flat weights) and class, the reverse-engineered mask and pattern, each
    (n, C, F) in [0, 1]: Neural Cleanse's optimisation, all pairs batched."""
    import torch

    (_, f), _, (c, _), _ = probe.shapes
    n = len(models)
    w1, b1, w2, b2 = mlp_parameters(
        torch.from_numpy(np.ascontiguousarray(models, dtype=np.float32)), probe
    )
    x = torch.from_numpy(np.ascontiguousarray(probe.x[:examples], dtype=np.float32))
    y = torch.from_numpy(np.asarray(probe.y[:examples], dtype=np.int64))
    m = len(x)
    target = torch.arange(c)
    keep = (y[None, :] != target[:, None]).float()  # (C, m): inputs not already of class t
    keep = keep / keep.sum(1, keepdim=True).clamp(min=1.0)
    labels = target[:, None].expand(c, m).reshape(-1)
    mask_logit = torch.full((n, c, f), start, requires_grad=True)
    pattern_logit = torch.zeros(n, c, f, requires_grad=True)
    opt = torch.optim.Adam([mask_logit, pattern_logit], lr=lr)
    w1t = w1.transpose(1, 2)  # (n, F, H)
    w2t = w2.transpose(1, 2)  # (n, H, C)
    with one_torch_thread(), torch.enable_grad():
        for _ in range(steps):
            mask = torch.sigmoid(mask_logit)
            pattern = torch.sigmoid(pattern_logit)
            xs = (1 - mask)[:, :, None, :] * x[None, None] + (mask * pattern)[:, :, None, :]
            hid = torch.relu(torch.bmm(xs.reshape(n, c * m, f), w1t) + b1[:, None, :])
            logits = torch.bmm(hid, w2t) + b2[:, None, :]  # (n, C*m, C)
            ce = torch.nn.functional.cross_entropy(
                logits.reshape(-1, c), labels.repeat(n), reduction="none"
            ).reshape(n, c, m)
            loss = (ce * keep[None]).sum() + lam * mask.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (
        torch.sigmoid(mask_logit).detach().numpy().astype(np.float64),
        torch.sigmoid(pattern_logit).detach().numpy().astype(np.float64),
    )


def mask_norms(
    models: np.ndarray, probe: ScanProbe, steps: int = 30, lam: float = 0.05, examples: int = 64
) -> np.ndarray:
    """The reverse-engineered mask's L1 norm (n, C) per model row (flat weights) and class."""
    return reverse_engineer(models, probe, steps, lam, examples)[0].sum(-1)


def robust_index(values: np.ndarray) -> np.ndarray:
    """``(v - median) / (1.4826 MAD)`` along axis 0, the MAD floored at ``MAD_FLOOR`` of the
    median's size (equal values index 0)."""
    med = np.median(values, axis=0)
    mad = MAD_SCALE * np.median(np.abs(values - med), axis=0)
    return (values - med) / np.maximum(mad, MAD_FLOOR * np.abs(med) + 1e-9)


def anomaly_scores(norms: np.ndarray) -> np.ndarray:
    """Per client, the largest small-side anomaly index of its mask norms (n, C) over classes."""
    return np.max(-robust_index(norms), axis=1)


def join_notes(first: str, second: str) -> str:
    """Two round notes as one (``first; second``)."""
    return f"{first}; {second}" if first else second


@dataclass
class TriggerScan:
    """The screen's parameters and the probe for the next aggregation (see module doc)."""

    threshold: float = 3.5
    steps: int = 30
    lam: float = 0.05
    examples: int = 64
    _probe: ScanProbe | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise AggregatorConfigError(
                f"trigger-scan: threshold must be > 0, got {self.threshold}"
            )
        if self.steps < 1 or self.examples < 1 or not self.lam >= 0:
            raise AggregatorConfigError("trigger-scan: steps, examples must be >= 1, lam >= 0")

    def set_probe(self, probe: ScanProbe) -> None:
        """The global weights and validation data for the next aggregation only."""
        self._probe = probe

    def scores(self, x: np.ndarray, probe: ScanProbe) -> np.ndarray:
        """Every row's anomaly index (its candidate model ``global + row`` scanned)."""
        models = np.asarray(probe.weights, dtype=np.float64)[None, :] + x
        return anomaly_scores(mask_norms(models, probe, self.steps, self.lam, self.examples))

    def apply(
        self,
        run: Stage,
        x: np.ndarray,
        weights: np.ndarray | None,
        min_kept: int,
    ) -> AggregationResult:
        """``run`` on the rows not flagged, diagnostics per client."""
        n = len(x)
        probe, self._probe = self._probe, None
        if probe is None or n < MIN_SCANNED:
            res = run(x, weights)
            why = "no probe" if probe is None else f"{n} updates; scans from {MIN_SCANNED}"
            note = f"trigger-scan: off ({why})"
            return AggregationResult(res.vector, res.diagnostics, join_notes(res.note, note))
        score = self.scores(x, probe)
        kept = score <= self.threshold
        readmitted = readmit(kept, score, min_kept)
        rows = np.flatnonzero(kept)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[rows]
        res = run(x[rows], w)
        fates, scores, share = filtered_diagnostics(
            res.diagnostics, rows, score, inner_scores=lambda i, _: score[i] <= self.threshold
        )
        flagged = int(np.sum(score > self.threshold))
        note = (
            f"trigger-scan: dropped {flagged - readmitted}/{n} (mask anomaly index above "
            f"{self.threshold:g}; highest {float(score.max()):.2f})"
            + (f", re-admitted {readmitted}" if readmitted else "")
        )
        diagnostics = make_diagnostics(fates, scores, share)
        return AggregationResult(np.asarray(res.vector), diagnostics, join_notes(res.note, note))


class Screen(Protocol):
    """A backdoor screen in front of a rule: it takes the probe for the next aggregation and
    runs the rule on what it lets through (:class:`TriggerScan`, the trigger repair)."""

    def set_probe(self, probe: ScanProbe) -> None: ...

    def apply(
        self,
        run: Stage,
        x: np.ndarray,
        weights: np.ndarray | None,
        min_kept: int,
    ) -> AggregationResult: ...


@dataclass
class ProbedFilter(DelegatesToInner):
    """``<PREFIX>+<inner>``: ``inner`` behind a :class:`Screen` that needs the probe (the
    global weights and the server's validation data)."""

    OWN = frozenset({"inner", "screen"})
    PREFIX: ClassVar[str]
    inner: Aggregator
    screen: Screen

    def min_kept(self, n: int) -> int:
        """Rows the screen must leave the rule (by default what the rule needs)."""
        return smallest_n(self.inner, n)

    @property
    def name(self) -> str:
        return f"{self.PREFIX}+{self.inner.name}"

    def set_probe(self, probe: ScanProbe) -> None:
        """The global weights and validation data for the next aggregation."""
        self.screen.set_probe(probe)

    @serial_blas
    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        x = as_float_matrix(updates)
        self.check(len(x))
        return self.screen.apply(self.inner, x, weights, self.min_kept(len(x)))


@dataclass
class TriggerScanFilter(ProbedFilter):
    """``inner`` on the updates the trigger scan does not flag; ``trigger-scan+<inner>``."""

    PREFIX = "trigger-scan"
    screen: TriggerScan = field(default_factory=TriggerScan)


def parse_filters(spec: str, known: Sequence[str]) -> tuple[str, ...]:
    """``"trigger-scan+foolsgold"`` -> its filters in order (outermost first); ``""`` -> ()."""
    parts = tuple(spec.split("+")) if spec else ()
    for part in parts:
        if part not in known:
            raise AggregatorConfigError(
                f"unknown filter {part!r} in {spec!r}; known: " + ", ".join(map(repr, known))
            )
    if len(set(parts)) != len(parts):
        raise AggregatorConfigError(f"filter {spec!r} names a filter twice")
    return parts
