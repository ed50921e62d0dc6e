"""The registry that builds aggregation rules by name.

``AGGREGATORS`` is filled by the package (``fedgate.strategies.aggregators``), which imports
every rule; it lives here, below the rules, so that a rule built from others (``ensemble``)
can use :func:`make_aggregator` without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from fedgate.strategies.aggregators.base import Aggregator, AggregatorConfigError
from fedgate.strategies.aggregators.flame import Flame
from fedgate.strategies.aggregators.foolsgold import FoolsGold
from fedgate.strategies.aggregators.nnm import NNM
from fedgate.strategies.aggregators.trigger_repair import TriggerRepairFilter
from fedgate.strategies.aggregators.trigger_scan import TriggerScanFilter
from fedgate.strategies.aggregators.zeno import ZenoFilter

AGGREGATORS: dict[str, Callable[..., Aggregator]] = {}
"""Every rule by name; filled, in a fixed order, when ``fedgate.strategies.aggregators`` loads."""

RULE_DEFAULTS: dict[str, dict] = {
    # filters (docs/backdoor.md): the trigger repair (patch backdoors found in the aggregate,
    # unlearned, their pushers dropped), then FoolsGold (alike crafted updates); the FLAME
    # filter is opt-in (``filter = "flame"``): it misses its targets in three of four settings
    "ensemble": {
        "members": ("cc", "nnm+cc", "zeno"),
        "confidence": 2.0,
        "filter": "trigger-repair+foolsgold",
    },
    "cc": {"tau": None, "iterations": 3},
    "zeno": {"step": 0.1, "rho": 0.0},
}
"""The measured parameters every rule built by :func:`make_aggregator` gets unless the caller
overrides them: a standalone rule, an ensemble member and a rule behind a pre-aggregator alike."""

_PRE: dict[str, Callable[[Aggregator], Aggregator]] = {
    "nnm": NNM,
    "zeno": ZenoFilter,
    "flame": Flame,
    "foolsgold": FoolsGold,
    "trigger-scan": TriggerScanFilter,
    "trigger-repair": TriggerRepairFilter,
}
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
