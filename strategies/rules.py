"""Bridge from a region's config (aggregator name, f, pre-aggregator) to an aggregator.

A region config names only ``aggregator``, ``f`` and ``pre``; every other parameter comes from
``RULE_DEFAULTS`` (then the rule's own dataclass defaults), which ``make_aggregator`` applies
to every rule it builds, ensemble members included, so the configuration that
``benchmarks/robustness.py`` measured is exactly what a region gets. ``check_rule`` fails at
configuration time when the rule cannot run with the region's client counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.strategies.aggregators import (
    AGGREGATORS,
    RULE_DEFAULTS,
    Aggregator,
    make_aggregator,
)

__all__ = ["REGION_DEFAULT", "RULE_DEFAULTS", "RuleConfig", "build_rule", "check_rule"]


@dataclass(frozen=True)
class RuleConfig:
    """A region's aggregation settings as its config file names them."""

    aggregator: str
    f: int
    pre: str = ""


REGION_DEFAULT = RuleConfig(aggregator="ensemble", f=1, pre="")
"""The region default: the validated ensemble of centered clipping, NNM + centered clipping
and Zeno, chosen each round by the server's per-example validation loss (Zeno only when it
wins by more than two standard errors: it picked its updates with that same data).

Measured with ``benchmarks/robustness.py`` (digits, MLP, n = 20, Dirichlet alpha 0.5 / 0.1,
f = 4 / 6, ten attack profiles, 100 rounds) it had the best worst case of the fedgate
configurations tried (centered clipping with or without NNM, trimmed mean, median, Krum and
Multi-Krum, Bulyan, geometric median, FLTrust, Zeno and ``zeno+cc``, client momentum 0.9, the
two-member cc | nnm+cc ensemble, greedy three-member ensembles), beat every Flower built-in in
every setting and kept FedAvg's clean accuracy within a point. Zeno is what defends a small
fleet of tiny skewed shards (``tests/test_integration_defences.py``), where a sign-flipped
update looks as typical as an honest one to every distance-based rule. Without the server's
scorer the ensemble runs NNM + centered clipping. ``f = 1`` suits the demo's 4-6 clients per
round (every member needs ``n >= 2f + 1``). Known gap: the server loss only sees clean data,
so the boosted backdoor (model replacement) keeps its trigger while clean accuracy holds.
"""


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
