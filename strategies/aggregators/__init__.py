"""Aggregation rules, one per module, and the registry that builds them by name.

============  ==========================================  ====================  =============
name          rule                                        needs                 uses weights
============  ==========================================  ====================  =============
mean          FedAvg, optional cap on a client's share    any n                 yes
median        coordinate-wise median (Yin 2018)           n >= 2f + 1           no
trimmed-mean  drop exactly f per side per coordinate      n >= 2f + 1           no
krum          lowest Krum score (Blanchard 2017)          n >= 2f + 3           no
multi-krum    mean of the n - f lowest Krum scores        n >= 2f + 3           optional
bulyan        iterated Krum + median-centred trim         n >= 4f + 3           no
geomed        smoothed Weiszfeld (RFA, Pillutla 2019)     n >= 2f + 1           yes
cc            centered clipping (Karimireddy 2021)        n >= 2f + 1           yes
norm-bound    clip norms to the median norm (Sun 2019)    n >= 2f + 1           yes
fltrust       root-data trust scores (Cao 2021)           a server update       no
zeno          n - f best validation descents (Xie 2019)   a server scorer       yes
ensemble      per round, the member the server prefers    its members' needs    members'
nnm+<rule>    nearest-neighbour mixing first (Allouah     n > f and the rule's  the rule's
              2023), as the ``pre`` pre-aggregator
zeno+<rule>   drop the f worst validation descents, then  a server scorer, the  the rule's
              the rule on the rest (``pre`` = zeno)        rule's bound on n - f
============  ==========================================  ====================  =============

Every rule checks its bound in ``check(n)`` (``AggregatorConfigError``), so a region fails at
configuration time; pairwise distances come from one Gram product (``linalg``), coordinate
rules from one sorted pass over column blocks (``coordinate``).
"""

from __future__ import annotations

from collections.abc import Callable

from fedgate.strategies.aggregators.base import (
    AggregationResult,
    Aggregator,
    AggregatorConfigError,
    ClientDiagnostic,
)
from fedgate.strategies.aggregators.bulyan import Bulyan
from fedgate.strategies.aggregators.centered_clipping import CenteredClipping
from fedgate.strategies.aggregators.ensemble import Ensemble
from fedgate.strategies.aggregators.fltrust import FLTrust
from fedgate.strategies.aggregators.geomed import GeoMed
from fedgate.strategies.aggregators.krum import Krum, MultiKrum
from fedgate.strategies.aggregators.mean import Mean
from fedgate.strategies.aggregators.median import Median
from fedgate.strategies.aggregators.nnm import NNM
from fedgate.strategies.aggregators.norm_bound import NormBound
from fedgate.strategies.aggregators.trimmed_mean import TrimmedMean
from fedgate.strategies.aggregators.zeno import Zeno, ZenoFilter

AGGREGATORS: dict[str, Callable[..., Aggregator]] = {
    "mean": Mean,
    "median": Median,
    "trimmed-mean": TrimmedMean,
    "krum": Krum,
    "multi-krum": MultiKrum,
    "bulyan": Bulyan,
    "geomed": GeoMed,
    "cc": CenteredClipping,
    "norm-bound": NormBound,
    "fltrust": FLTrust,
    "ensemble": Ensemble,
    "zeno": Zeno,
}

RULE_DEFAULTS: dict[str, dict] = {
    "ensemble": {"members": ("cc", "nnm+cc", "zeno"), "confidence": 2.0},
    "cc": {"tau": None, "iterations": 3},
    "zeno": {"step": 0.1, "rho": 0.0},
}
"""The measured parameters every rule built by :func:`make_aggregator` gets unless the caller
overrides them: a standalone rule, an ensemble member and a rule behind a pre-aggregator alike."""

_PRE: dict[str, Callable[[Aggregator], Aggregator]] = {"nnm": NNM, "zeno": ZenoFilter}
PRE_AGGREGATORS: tuple[str, ...] = tuple(_PRE)


def make_aggregator(name: str, f: int = 0, *, pre: str | None = None, **params) -> Aggregator:
    """Build the rule ``name`` tolerating ``f`` Byzantine clients, optionally behind ``pre``.

    ``params`` go to the rule's constructor over :data:`RULE_DEFAULTS` (e.g. ``tau`` for
    ``cc``, ``reference_fn`` for ``fltrust``); unknown ones raise ``AggregatorConfigError``.
    """
    if name not in AGGREGATORS:
        raise AggregatorConfigError(
            f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}"
        )
    if isinstance(f, bool) or not isinstance(f, int) or f < 0:
        raise AggregatorConfigError(f"f must be >= 0, got {f}")
    if pre and pre not in _PRE:
        raise AggregatorConfigError(
            f"unknown pre-aggregator {pre!r}; known: {', '.join(PRE_AGGREGATORS) or 'none'}"
        )
    try:
        rule = AGGREGATORS[name](f=f, **{**RULE_DEFAULTS.get(name, {}), **params})
    except TypeError as exc:
        raise AggregatorConfigError(f"{name}: bad parameters {sorted(params)}: {exc}") from exc
    return _PRE[pre](rule) if pre else rule


__all__ = [
    "AGGREGATORS",
    "PRE_AGGREGATORS",
    "RULE_DEFAULTS",
    "AggregationResult",
    "Aggregator",
    "AggregatorConfigError",
    "ClientDiagnostic",
    "make_aggregator",
]
