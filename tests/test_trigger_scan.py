"""The Neural-Cleanse-style trigger scan (issue 19): a planted corner backdoor is flagged,
identical honest models are not, fates do not depend on the clients' order, and the filter
composes with FoolsGold in the ensemble."""

from __future__ import annotations

import numpy as np
import pytest
from backdoor_kit import HONEST, planted_models
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.strategies.aggregators import AggregatorConfigError, make_aggregator
from fedgate.strategies.aggregators.trigger_scan import (
    TriggerScan,
    anomaly_scores,
    parse_filters,
)


@pytest.fixture(scope="module")
def models():
    """A clean global model, honest client models, a corner-backdoored one and the probe."""
    return planted_models()


def test_a_planted_corner_trigger_model_is_flagged(models):
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None]]) - glob
    scan = TriggerScan()
    score = scan.scores(deltas, probe)
    assert score[-1] > scan.threshold
    assert score[-1] == score.max()
    rule = make_aggregator("mean", 0, pre="trigger-scan")
    assert rule.name == "trigger-scan+mean"
    rule.set_probe(probe)
    res = rule(deltas)
    assert res.diagnostics[-1].fate == "dropped" and res.diagnostics[-1].weight == 0
    assert res.diagnostics[-1].score == pytest.approx(score[-1], rel=1e-6)
    assert "trigger-scan: dropped" in res.note


def test_identical_honest_models_are_not_flagged(models):
    glob, honest, _, probe = models
    deltas = np.repeat(honest[:1] - glob, 6, axis=0)
    score = TriggerScan().scores(deltas, probe)
    assert np.all(score <= 0.0 + 1e-9)
    rule = make_aggregator("mean", 0, pre="trigger-scan")
    rule.set_probe(probe)
    assert all(d.fate == "kept" for d in rule(deltas).diagnostics)


@settings(max_examples=4, deadline=None)
@given(st.permutations(list(range(HONEST + 1))))
def test_the_clients_order_does_not_change_fates(models, order):
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None]]) - glob
    rule = make_aggregator("mean", 0, pre="trigger-scan")
    rule.set_probe(probe)
    base = [d.fate for d in rule(deltas).diagnostics]
    rule.set_probe(probe)
    moved = [d.fate for d in rule(deltas[order]).diagnostics]
    assert moved == [base[i] for i in order]


def test_anomaly_is_small_side_only_and_zero_for_equal_norms():
    norms = np.full((6, 10), 20.0)
    assert np.all(anomaly_scores(norms) == 0)
    norms[0, 3] = 40.0  # a larger mask is no backdoor
    assert anomaly_scores(norms)[0] == 0
    norms[1, 0] = 2.0
    assert anomaly_scores(norms)[1] > 10


def test_without_a_probe_or_with_few_updates_the_scan_stands_aside(models):
    glob, honest, evil, probe = models
    rule = make_aggregator("mean", 0, pre="trigger-scan")
    res = rule(np.vstack([honest, evil[None]]) - glob)
    assert "trigger-scan: off (no probe)" in res.note
    assert all(d.fate == "kept" for d in res.diagnostics)
    rule.set_probe(probe)
    res = rule(np.vstack([honest[:3], evil[None]]) - glob)
    assert "trigger-scan: off (4 updates" in res.note


def test_the_ensemble_chains_the_scan_and_foolsgold(models):
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None]]) - glob
    ens = make_aggregator("ensemble", 1, filter="trigger-scan+foolsgold")
    ens.set_probe(probe)
    ens.set_scorer(lambda d: np.full(5, float(np.linalg.norm(d))))
    res = ens(deltas)
    assert res.diagnostics[-1].fate == "dropped"
    assert "trigger-scan: dropped 1/9" in res.note and "foolsgold:" in res.note
    assert sum(d.weight for d in res.diagnostics) == pytest.approx(1.0)


@pytest.mark.parametrize("spec", ["bogus", "foolsgold+foolsgold", "trigger-scan+"])
def test_unknown_or_repeated_filters_are_refused(spec):
    with pytest.raises(AggregatorConfigError):
        make_aggregator("ensemble", 1, filter=spec)
    with pytest.raises(AggregatorConfigError):
        parse_filters(spec, ("flame", "foolsgold", "trigger-scan"))
