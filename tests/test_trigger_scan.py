"""The Neural-Cleanse-style trigger scan (issue 19): a planted corner backdoor is flagged,
identical honest models are not, fates do not depend on the clients' order, and the filter
composes with FoolsGold in the ensemble."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.clients.sim.attacks import BACKDOOR_TARGET, apply_trigger, backdoor_success_rate
from fedgate.models.data import load_digits_dataset
from fedgate.strategies.aggregators import AggregatorConfigError, make_aggregator
from fedgate.strategies.aggregators.trigger_scan import (
    ScanProbe,
    TriggerScan,
    anomaly_scores,
    parse_filters,
)

SHAPES = ((32, 64), (32,), (10, 32), (10,))
HONEST = 8


def train_mlp(x: np.ndarray, y: np.ndarray, seed: int, steps: int = 150) -> np.ndarray:
    """A 64-32-10 MLP trained full-batch with Adam, as flat weights (W1, b1, W2, b2)."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tiny products: extra threads only spin on a busy machine
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    sizes = [int(np.prod(s)) for s in SHAPES]
    w1, b1, w2, b2 = (
        p.reshape(s) for p, s in zip(np.split(w, np.cumsum(sizes)[:-1]), SHAPES, strict=True)
    )
    return (np.maximum(x @ w1.T + b1, 0) @ w2.T + b2).argmax(1)


@pytest.fixture(scope="module")
def models():
    """A clean global model, honest client models (fine-tuned on disjoint shards), a
    corner-backdoored one and the server's validation probe."""
    data = load_digits_dataset()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.y))
    val, train = order[:200], order[200:]
    x, y = data.x[train], data.y[train]
    glob = train_mlp(x[:600], y[:600], 0)
    shards = np.array_split(np.arange(600, len(x)), HONEST + 1)
    honest = [train_mlp(x[s], y[s], 1 + i, steps=60) for i, s in enumerate(shards[:HONEST])]
    bad_idx = shards[HONEST]
    xb = np.vstack([x[bad_idx], apply_trigger(x[bad_idx])])
    yb = np.concatenate([y[bad_idx], np.full(len(bad_idx), BACKDOOR_TARGET)])
    evil = train_mlp(xb, yb, 99)
    rate = backdoor_success_rate(lambda v: predict(evil, v), data.take(val))
    assert rate > 0.9  # the planted model does carry the trigger
    probe = ScanProbe(glob, data.x[val], data.y[val], SHAPES)
    return glob, np.array(honest), evil, probe


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
