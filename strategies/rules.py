"""Bridge from a region's config (aggregator name, f, pre-aggregator) to an aggregator.

A region config names only ``aggregator``, ``f`` and ``pre``; every other parameter comes from
``RULE_DEFAULTS`` (then the rule's own dataclass defaults), which ``make_aggregator`` applies
to every rule it builds, ensemble members included, so the configuration that
``benchmarks/robustness.py`` measured is exactly what a region gets. ``check_rule`` fails at
configuration time when the rule cannot run with the region's client counts.
"""

from __future__ import annotations

from fedgate.strategies.aggregators import (
    AGGREGATORS,
    RULE_DEFAULTS,
    Aggregator,
    make_aggregator,
)
from fedgate.strategies.rule_config import REGION_DEFAULT, RuleConfig

__all__ = ["REGION_DEFAULT", "RULE_DEFAULTS", "RuleConfig", "build_rule", "check_rule"]


def build_rule(name: str, f: int = 0, pre: str | None = None, **params) -> Aggregator:
    """The configured aggregator; unknown names raise ``ValueError`` listing the known ones."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}")
    return make_aggregator(name, f, pre=pre or None, **params)


def check_rule(
    name: str, f: int, pre: str | None, clients_per_round: int, min_clients: int
) -> None:
    """Fail at configuration time if the rule cannot run with ``min_clients`` to
    ``clients_per_round`` updates (every rule's bound is monotone in ``n``)."""
    if name == "fltrust":
        raise ValueError(
            "aggregator 'fltrust' needs the server's own update on root data each round, "
            "which a region run does not compute; use 'ensemble' (the default), 'cc' or "
            "another rule (fltrust is available to benchmarks/robustness.py)"
        )
    if min_clients > clients_per_round:
        raise ValueError(f"min-clients={min_clients} exceeds clients-per-round={clients_per_round}")
    rule = build_rule(name, f, pre)
    for n in sorted({min_clients, clients_per_round}):
        rule.check(n)
