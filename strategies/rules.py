"""Bridge from a region's config (aggregator name, f, pre-aggregator) to an aggregator.

A region config names only ``aggregator``, ``f`` and ``pre``; every other parameter comes from
:data:`RULE_DEFAULTS` (then the rule's own dataclass defaults), so the configuration that
``benchmarks/robustness.py`` measured is exactly what a region gets. ``check_rule`` fails at
configuration time when the rule cannot run with the region's client counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.strategies.aggregators import AGGREGATORS, Aggregator, make_aggregator

RULE_DEFAULTS: dict[str, dict] = {
    "ensemble": {"members": ("cc", "nnm+cc"), "fallback": -1},
    "cc": {"tau": None, "iterations": 3},
    "zeno": {"step": 0.1, "rho": 0.0},
}
"""Per-rule parameters a region gets unless the caller overrides them (the measured ones)."""


@dataclass(frozen=True)
class RuleConfig:
    """A region's aggregation settings as its config file names them."""

    aggregator: str
    f: int
    pre: str = ""


REGION_DEFAULT = RuleConfig(aggregator="ensemble", f=1, pre="")
"""The region default: the validated ensemble of centered clipping and NNM + centered clipping.

Measured with ``benchmarks/robustness.py`` (digits, MLP, n = 20, Dirichlet alpha 0.5 / 0.1,
f = 4 / 6, ten attack profiles, 100 rounds) it had the best worst case of every fedgate
configuration tried (centered clipping with or without NNM, trimmed mean, median, Krum and
Multi-Krum, Bulyan, geometric median, FLTrust, client momentum 0.9, three-member ensembles),
beat every Flower built-in in every setting, and kept FedAvg's clean accuracy, which NNM
alone does not under label skew. It needs the server's loss on its own validation data each
round (``set_scorer``); without one it runs its robust member, NNM + centered clipping.
``f = 1`` suits the demo's 4-6 clients per round (both members need ``n >= 2f + 1``).
Known gap: the server loss only sees clean data, so the boosted backdoor (model replacement)
keeps its trigger (success rate 1.0 in every setting) while clean accuracy holds; Multi-Krum
and Bulyan stopped it (0.0) but lose on the worst case.
"""


def build_rule(name: str, f: int = 0, pre: str | None = None, **params) -> Aggregator:
    """The configured aggregator; unknown names raise ``ValueError`` listing the known ones."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}")
    return make_aggregator(name, f, pre=pre or None, **{**RULE_DEFAULTS.get(name, {}), **params})


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
