"""A region's aggregation settings and the region default, importable without torch.

``fedgate.server.launch.config`` takes ``RegionConfig``'s defaults from here so that reading a
config (and every ``fedgate ... --help``) does not load the aggregators;
``fedgate.strategies.rules`` re-exports both beside the rules they name.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["REGION_DEFAULT", "RuleConfig"]


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
round (every member needs ``n >= 2f + 1``). The server loss only sees clean data, so a
backdoor's trigger is invisible to it; two filters run before the members: the **trigger
repair** (from eight updates a round: Neural Cleanse's detection and unlearning on the
aggregate, devices pushing a found trigger dropped) and **FoolsGold** (devices sending alike
updates dropped), ``filter = "trigger-repair+foolsgold"``. A FLAME-style filter (cosine
HDBSCAN clustering, median-norm clipping) is opt-in (``filter = "flame"``): it stops the
boosted and the norm-bounded backdoor at alpha 0.5, f 4 only, costs the worst case at alpha
0.1, f 6 (0.794 against 0.855) and drops honest shards in small non-IID fleets
(``docs/backdoor.md``: measured, targets missed, and why).
"""
