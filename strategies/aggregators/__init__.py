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
flame+<rule>  cosine HDBSCAN cluster, median-norm clip  the rule's needs      the rule's
              (Nguyen 2022), as ``pre`` = flame
foolsgold+<r> FoolsGold Sybil weights: max cosine of the   the rule's needs      the rule's
              update histories (Fung 2020), ``pre``
zeno+<rule>   drop the f worst validation descents, then  a server scorer, the  the rule's
              the rule on the rest (``pre`` = zeno)        rule's bound on n - f
trigger-scan  drop clients whose reverse-engineered        a server probe        the rule's
+<rule>       trigger mask is anomalously small (Neural    (``set_probe``), the
              Cleanse, Wang 2019), ``pre`` = trigger-scan  rule's needs
trigger-      find a trigger in the aggregate, unlearn    a server probe, the   the rule's
repair+<rule> it, drop devices that push one found        rule's needs; acts
              before (``pre`` = trigger-repair)           from 8 updates
============  ==========================================  ====================  =============

Every rule checks its bound in ``check(n)`` (``AggregatorConfigError``), so a region fails at
configuration time; pairwise distances come from one Gram product (``linalg``), coordinate
rules from one sorted pass over column blocks (``coordinate``).
"""

from __future__ import annotations

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
from fedgate.strategies.aggregators.registry import (
    AGGREGATORS,
    PRE_AGGREGATORS,
    RULE_DEFAULTS,
    make_aggregator,
)
from fedgate.strategies.aggregators.trimmed_mean import TrimmedMean
from fedgate.strategies.aggregators.zeno import Zeno, ZenoFilter

AGGREGATORS.update(
    {
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
)

__all__ = [
    "AGGREGATORS",
    "NNM",
    "PRE_AGGREGATORS",
    "RULE_DEFAULTS",
    "AggregationResult",
    "Aggregator",
    "AggregatorConfigError",
    "ClientDiagnostic",
    "ZenoFilter",
    "make_aggregator",
]
