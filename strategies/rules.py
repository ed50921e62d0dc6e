"""Bridge from a region's config (aggregator name, f, pre-aggregator) to an aggregator."""

from __future__ import annotations

from dataclasses import dataclass

from fedgate.strategies.aggregators import AGGREGATORS, Aggregator, make_aggregator


@dataclass(frozen=True)
class RuleConfig:
    """A region's aggregation settings as its config file names them."""

    aggregator: str
    f: int
    pre: str = ""


# The region default: the configuration benchmarks/robustness.py measured best
# (see the README's robustness section). Regions override it in their config.
REGION_DEFAULT = RuleConfig(aggregator="cc", f=1, pre="nnm")


def build_rule(name: str, f: int = 0, pre: str | None = None, **params) -> Aggregator:
    """The configured aggregator; unknown names raise ``ValueError`` listing the known ones."""
    if name not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {name!r}; known: {', '.join(sorted(AGGREGATORS))}")
    return make_aggregator(name, f, pre=pre, **params)


def check_rule(
    name: str, f: int, pre: str | None, clients_per_round: int, min_clients: int
) -> None:
    """Fail at configuration time if the rule cannot run with as few as ``min_clients``."""
    rule = build_rule(name, f, pre)
    for n in {min_clients, clients_per_round}:
        rule.check(n)
