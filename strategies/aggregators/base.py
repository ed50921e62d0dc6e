"""Shared types for aggregation rules: per-client diagnostics and the rule protocol.

Every rule is a small dataclass: constructed with ``f`` (the number of Byzantine clients it
must tolerate) and its own parameters, ``check(n)`` raises :class:`AggregatorConfigError` when
it cannot run on ``n`` updates (so a region fails at configuration time, not mid-round), and
calling it on ``n`` updates returns the aggregate and one :class:`ClientDiagnostic` per client.
Updates are deltas (new local weights minus the global weights); inputs are assumed finite
(the strategy's screen rejects NaN/Inf before aggregation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedgate.errors import UsageError

Updates = np.ndarray | Sequence[np.ndarray]
"""An ``(n, d)`` array, or per-layer arrays ``(n, *shape_l)`` sharing the client axis ``n``."""


Stage = Callable[[np.ndarray, "np.ndarray | None"], "AggregationResult"]
"""A rule as a filter sees it: rows and their weights (or ``None``) in, the result out."""


Scorer = Callable[[np.ndarray], "float | np.ndarray"]
"""The server's judge of a candidate delta: the loss of ``global + delta`` on its own
validation data, one number or one loss per validation example (lower is better)."""


def loss_summary(losses: float | np.ndarray) -> tuple[float, np.ndarray]:
    """A scorer's answer as (mean loss, per-example losses); non-finite means ``inf``."""
    per = np.atleast_1d(np.asarray(losses, dtype=np.float64)).ravel()
    if per.size == 0 or not np.all(np.isfinite(per)):
        return math.inf, per
    return float(per.mean()), per


class AggregatorConfigError(UsageError, ValueError):
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
    """The aggregated vector, one diagnostic per input row and an optional round-level note
    (e.g. which member an ensemble chose)."""

    vector: np.ndarray
    diagnostics: tuple[ClientDiagnostic, ...]
    note: str = ""


class Aggregator(Protocol):
    """A rule mapping ``n`` update vectors (shape ``(n, d)``) to one vector."""

    name: str
    f: int

    def check(self, n: int) -> None:
        """Raise ``AggregatorConfigError`` if the rule cannot run with ``n`` updates."""

    def __call__(self, updates: Updates, weights: np.ndarray | None = None) -> AggregationResult:
        """Aggregate ``n`` updates; ``weights`` are example counts (``None``: all equal)."""


class DelegatesToInner:
    """A pre-aggregator's plumbing (``nnm+<rule>``, ``flame+<rule>``, ``foolsgold+<rule>``):
    ``f`` and ``check`` are the inner rule's, and so is every attribute not named in ``OWN``
    (the inner rule's extras: ``set_scorer``, ``set_reference``, a CC ``center``...)."""

    OWN: frozenset[str] = frozenset({"inner"})
    inner: Aggregator

    @property
    def f(self) -> int:
        return self.inner.f

    def __getattr__(self, item: str):
        """Delegate the inner rule's extras (``set_scorer``, ``center``...)."""
        if item in type(self).OWN:
            raise AttributeError(item)
        return getattr(self.inner, item)

    def __setattr__(self, item: str, value) -> None:
        """Own fields are set here; anything else is the inner rule's (a CC ``center``)."""
        if item in type(self).OWN:
            object.__setattr__(self, item, value)
        else:
            setattr(self.inner, item, value)

    def check(self, n: int) -> None:
        self.inner.check(n)


def stack_layers(layers: Sequence[np.ndarray]) -> np.ndarray:
    """Per-layer arrays ``(n, *shape_l)`` as one ``(n, sum_l prod(shape_l))`` matrix.

    Layer ``l`` of client ``i`` is ``layers[l][i]``; the result's row ``i`` is client ``i``'s
    layers flattened and concatenated in order (split it back with :func:`split_layers`).
    """
    if len(layers) == 0:
        raise ValueError("updates: got an empty list of layers")
    arrs = [np.asarray(a) for a in layers]
    n = arrs[0].shape[0] if arrs[0].ndim else 0
    for i, a in enumerate(arrs):
        if a.ndim == 0 or a.shape[0] != n:
            raise ValueError(
                f"updates: layer {i} has shape {a.shape}; every layer needs the client axis "
                f"first with the same length ({n})"
            )
    return np.concatenate([a.reshape(n, -1) for a in arrs], axis=1)


def split_layers(vector: np.ndarray, layers: Sequence[np.ndarray]) -> list[np.ndarray]:
    """An aggregated flat vector cut back into arrays shaped like one client's layers."""
    out, pos = [], 0
    for a in layers:
        shape = np.asarray(a).shape[1:]
        size = int(np.prod(shape))
        out.append(np.asarray(vector[pos : pos + size]).reshape(shape))
        pos += size
    if pos != len(vector):
        raise ValueError(f"vector has {len(vector)} values, the layers need {pos}")
    return out


def as_matrix(updates: Updates) -> np.ndarray:
    """Validate and return ``updates`` as a 2-D array with at least one row.

    A list or tuple is read as per-layer arrays (see :func:`stack_layers`).
    """
    arr = stack_layers(updates) if isinstance(updates, list | tuple) else np.asarray(updates)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"updates must be a non-empty (n, d) array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"updates must be numeric, got dtype {arr.dtype}")
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


def as_float_matrix(updates: Updates) -> np.ndarray:
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


def filtered_diagnostics(
    inner: Sequence[ClientDiagnostic],
    rows: np.ndarray,
    own_score: np.ndarray | Sequence[float],
    fate_of: Callable[[int, str], str] | None = None,
    inner_scores: Callable[[int, str], bool] | None = None,
) -> tuple[list[str], list[float], np.ndarray]:
    """A filter's fate, score and weight for each of its ``len(own_score)`` clients, from
    ``inner``, the rule's diagnostics on the kept ``rows``: a client the filter left out is
    ``dropped`` with its own score and weight 0; a kept one gets the rule's fate (refined by
    ``fate_of(client, fate)``), the rule's score (where ``inner_scores(client, fate)`` allows
    and the rule gives one; else its own) and the rule's weight (0 if its fate is ``dropped``)."""
    fates = ["dropped"] * len(own_score)
    scores = [float(s) for s in own_score]
    weight = np.zeros(len(own_score))
    for diag in inner:
        i = int(rows[diag.index])
        fate = diag.fate if fate_of is None else fate_of(i, diag.fate)
        fates[i] = fate
        if diag.score is not None and (inner_scores is None or inner_scores(i, fate)):
            scores[i] = float(diag.score)
        weight[i] = 0.0 if fate == "dropped" else diag.weight
    return fates, scores, weight


def readmit(kept: np.ndarray, score: np.ndarray, min_kept: int) -> int:
    """Set ``kept`` (in place) for the rows not kept with the lowest ``score`` until
    ``min_kept`` are kept (a filter must leave its inner rule enough rows); how many came back."""
    back = [i for i in np.argsort(score, kind="stable") if not kept[i]]
    back = back[: max(0, min_kept - int(kept.sum()))]
    kept[back] = True
    return len(back)


def share(values: np.ndarray) -> np.ndarray:
    """``values`` normalized to sum to one (uniform when they sum to zero)."""
    v = np.asarray(values, dtype=np.float64)
    total = v.sum()
    return v / total if total > 0 else np.full(len(v), 1.0 / len(v))
