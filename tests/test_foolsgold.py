"""The FoolsGold-style Sybil filter: weights, history, diagnostics, the ensemble's use of it,
and the properties every rule keeps (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgate.strategies.aggregators import AggregatorConfigError, make_aggregator
from fedgate.strategies.aggregators.foolsgold import (
    FoolsGold,
    SybilHistory,
    foolsgold_weights,
    median_residuals,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
RNG = np.random.default_rng


def sybil_round(seed: int = 0, honest: int = 16, bad: int = 4, d: int = 80, jitter=1e-3):
    """Distinct honest deltas, then ``bad`` near-copies of one crafted vector (ALIE-like)."""
    rng = RNG(seed)
    good = rng.standard_normal((honest, d))
    crafted = good.mean(0) + 0.5 * good.std(0)
    evil = crafted + jitter * rng.standard_normal((bad, d))
    return np.vstack([good, evil]), np.arange(honest, honest + bad)


def test_weights_drop_near_identical_rows_and_keep_distinct_ones():
    x, bad = sybil_round()
    decision = foolsgold_weights(median_residuals(x), min_similarity=0.99)
    assert np.all(decision.weight[bad] == 0)
    assert np.all(decision.weight[: bad[0]] == 1)
    assert np.all(decision.similarity[bad] > 0.99)


def test_paper_weights_are_relative_and_logit_shaped():
    # three rows: two alike (cos 0.8), one orthogonal: the pair is much less distinct than
    # the most distinct row (0.2 vs 1 -> logit(0.2) + 0.5 < 0 -> weight 0)
    x = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    decision = foolsgold_weights(x, min_similarity=0.0)
    assert decision.similarity[:2] == pytest.approx([0.8, 0.8])
    assert decision.weight.tolist() == [0.0, 0.0, 1.0]
    # below the Sybil similarity nobody is weighed
    assert foolsgold_weights(x, min_similarity=0.9).weight.tolist() == [1.0, 1.0, 1.0]


def test_a_majority_alike_is_the_consensus_not_sybils():
    # IID shards: every honest gradient nearly the same (cosine > 0.99), four colluders
    # identical; the relative weights alone would drop most of the honest majority
    rng = RNG(7)
    common = rng.standard_normal(80)
    x = common + 0.02 * rng.standard_normal((20, 80))
    x[16:] = x[16]
    assert np.all(foolsgold_weights(x, min_similarity=0.99).weight == 1)
    assert foolsgold_weights(x, min_similarity=0.0).weight[:16].min() < 1  # the paper's form


def test_pardoning_spares_a_row_that_only_resembles_a_sybil():
    # rows 0, 1 identical Sybils; row 2 resembles them a little (cos ~0.45); row 3 distinct
    x = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.5, 1.0, 0.0, 0.0], [0, 0, 0, 1.0]])
    decision = foolsgold_weights(x, min_similarity=0.0)
    assert decision.weight[:2].tolist() == [0.0, 0.0]
    assert decision.weight[2] == 1.0  # its similarity was scaled by its own max over theirs
    assert decision.similarity[2] < 0.45 * 0.45 + 1e-9


def test_rule_explains_every_client():
    x, bad = sybil_round(1)
    rule = make_aggregator("mean", 4, pre="foolsgold")
    assert rule.name == "foolsgold+mean"
    res = rule(x)
    fates = [d.fate for d in res.diagnostics]
    assert [fates[i] for i in bad] == ["dropped"] * 4
    assert fates[: bad[0]] == ["kept"] * bad[0]
    assert all(res.diagnostics[i].weight == 0 for i in bad)
    assert sum(d.weight for d in res.diagnostics) == pytest.approx(1.0)
    assert all(res.diagnostics[i].score > 0.99 for i in bad)  # its similarity
    np.testing.assert_allclose(res.vector, x[: bad[0]].mean(0), rtol=1e-6)
    assert res.note == (
        "foolsgold: dropped 4/20, down-weighted 0 (similarity from this round, sybil from 0.99)"
    )


def test_history_sums_residuals_per_client_and_follows_the_ids():
    rng = RNG(2)
    d, n = 60, 12
    shared = rng.standard_normal(d)
    sybils = SybilHistory(min_similarity=0.8)
    for rnd in range(20):
        x = rng.standard_normal((n, d))
        x[:3] += 0.8 * shared  # the colluders' common push, faint in any one round
        order = (np.arange(n) + rnd) % n  # rows come in another order each round
        rows = np.empty_like(x)
        rows[order] = x  # node-k's update x[k] at position order[k]
        ids = [f"node-{(p - rnd) % n}" for p in range(n)]
        sybils.set_clients(ids)
        decision, basis = sybils.decide(rows)
        assert basis == "history"
    assert set(sybils.history) == {f"node-{i}" for i in range(n)}
    weight = {ids[r]: decision.weight[r] for r in range(n)}
    assert all(weight[f"node-{i}"] < 1 for i in range(3))
    assert all(weight[f"node-{i}"] == 1 for i in range(3, n))
    # one round alone does not show it
    x = rng.standard_normal((n, d))
    x[:3] += 0.8 * shared
    alone, basis = SybilHistory(min_similarity=0.8).decide(x)
    assert basis == "this round" and np.all(alone.weight == 1)


def test_ids_are_used_once_and_bad_ids_fall_back_to_the_round():
    sybils = SybilHistory()
    x = RNG(3).standard_normal((5, 10))
    sybils.set_clients([1, 2, 3])  # wrong length
    assert sybils.decide(x)[1] == "this round"
    sybils.set_clients([1, 1, 2, 3, 4])  # repeated
    assert sybils.decide(x)[1] == "this round"
    sybils.set_clients(range(5))
    assert sybils.decide(x)[1] == "history"
    assert sybils.decide(x)[1] == "this round"  # not carried to the next aggregation
    assert sybils.history.keys() == set(range(5))


def test_history_keeps_to_its_budget_evicting_the_least_recently_seen():
    d = 10
    per_device = 2 * d * 4  # two float32 vectors
    sybils = SybilHistory(max_bytes=5 * per_device)
    rng = RNG(4)
    sybils.set_clients(["a", "b", "c"])
    assert sybils.decide(rng.standard_normal((3, d)))[1] == "history"
    sybils.set_clients(["d", "e", "a"])  # a seen again: now more recent than b and c
    assert sybils.decide(rng.standard_normal((3, d)))[1] == "history"
    assert list(sybils.history) == ["b", "c", "d", "e", "a"]
    sybils.set_clients(["f", "g"])
    _, basis = sybils.decide(rng.standard_normal((2, d)))
    assert basis == "history, 2 least recently seen evicted"
    assert list(sybils.history) == ["d", "e", "a", "f", "g"]
    assert sum(v.nbytes for v in sybils.history.values()) == 5 * per_device
    # a returning evicted device starts over: its feature is this round's alone
    before = sybils.history["a"].copy()
    x = rng.standard_normal((2, d))
    sybils.set_clients(["b", "a"])
    sybils.decide(x)
    assert np.allclose(sybils.history["b"][0], x[0], atol=1e-6)
    assert np.allclose(sybils.history["a"][0], before[0] + x[1], atol=1e-6)


def test_a_round_larger_than_the_budget_keeps_all_of_its_own():
    sybils = SybilHistory(max_bytes=0)
    x = RNG(5).standard_normal((4, 6))
    sybils.set_clients(range(4))
    _, basis = sybils.decide(x)
    assert basis == "history" and set(sybils.history) == set(range(4))
    sybils.set_clients([7, 8, 9, 10])
    assert sybils.decide(x)[1] == "history, 4 least recently seen evicted"
    assert set(sybils.history) == {7, 8, 9, 10}
    with pytest.raises(AggregatorConfigError, match="max_bytes"):
        SybilHistory(max_bytes=-1)


def test_too_few_left_readmits_sybils_at_weight_zero():
    # cc with f = 4 needs 9 of 9; four Sybils of nine sit on the median (tiny residuals):
    # their raw updates still give them away
    x, bad = sybil_round(4, honest=5, bad=4)
    res = make_aggregator("cc", 4, pre="foolsgold")(x)
    assert "re-admitted 4 at weight 0" in res.note
    assert all(res.diagnostics[i].fate == "dropped" and res.diagnostics[i].weight == 0 for i in bad)


def test_clip_to_the_median_norm():
    x, _ = sybil_round(5)
    x[3] *= 50.0  # a boosted honest-looking row
    res = FoolsGold(make_aggregator("mean", 4), clip=True)(x)
    assert res.diagnostics[3].fate == "clipped"
    bound = float(np.median(np.linalg.norm(x, axis=1)))
    assert f"to norm {bound:.3g}" in res.note
    assert np.linalg.norm(res.vector) <= bound * (1 + 1e-9)


def test_ensemble_filter_and_its_client_ids():
    x, bad = sybil_round(6)
    rule = make_aggregator("ensemble", 4, filter="foolsgold")
    rule.set_clients(range(len(x)))
    res = rule(x)
    assert "; foolsgold: dropped 4/20" in res.note and "from history" in res.note
    assert all(res.diagnostics[i].fate == "dropped" for i in bad)
    assert "; foolsgold: " in make_aggregator("ensemble", 4)(x).note  # the region default
    assert "foolsgold" not in make_aggregator("ensemble", 4, filter="")(x).note
    make_aggregator("ensemble", 4, filter="").set_clients(range(20))  # harmless without it
    with pytest.raises(AggregatorConfigError, match="foolsgold"):
        make_aggregator("ensemble", 4, filter="fools")
    with pytest.raises(AggregatorConfigError, match="min_similarity"):
        FoolsGold(make_aggregator("mean", 0), min_similarity=2.0)


def non_iid_round(seed: int, devices: int, d: int = 200, classes: int = 10):
    """Deltas of devices holding one or two classes each (two devices the same ones): each
    class pushes its own direction, plus the device's own noise."""
    rng = RNG(seed)
    proto = rng.standard_normal((classes, d))
    held = [rng.choice(classes, size=rng.integers(1, 3), replace=False) for _ in range(devices)]
    held[1] = held[0]  # a pair of devices with the same skewed shard
    return np.array([proto[h].sum(0) + 0.6 * rng.standard_normal(d) for h in held])


@pytest.mark.parametrize("devices", [4, 5])
@pytest.mark.parametrize("seed", range(4))
def test_tiny_non_iid_rounds_keep_every_honest_device(devices, seed):
    x = non_iid_round(seed, devices)
    twins = x[0] @ x[1] / np.linalg.norm(x[0]) / np.linalg.norm(x[1])
    assert twins > 0.5  # alike, as devices holding the same skewed shard are
    res = make_aggregator("ensemble", 1, filter="foolsgold")(x)
    assert f"foolsgold: dropped 0/{devices}, down-weighted 0" in res.note
    assert all(d.weight > 0 for d in res.diagnostics)
    # the paper's form (no Sybil floor) takes the twins for Sybils: why the floor exists
    paper = FoolsGold(make_aggregator("mean", 1), min_similarity=0.0)(x)
    assert {paper.diagnostics[i].fate for i in (0, 1)} <= {"dropped", "down-weighted"}


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(6, 16), history=st.booleans())
def test_permutation_invariance_of_fates(seed, n, history):
    rng = RNG(seed)
    x = rng.normal(size=(n, 30))
    x[: n // 3] = x[0] + 1e-4 * rng.normal(size=(n // 3, 30))  # a Sybil group
    perm = rng.permutation(n)
    a, b = (make_aggregator("mean", 1, pre="foolsgold") for _ in range(2))
    if history:
        a.set_clients([f"c{i}" for i in range(n)])
        b.set_clients([f"c{i}" for i in perm])
    ra, rb = a(x), b(x[perm])
    np.testing.assert_allclose(ra.vector, rb.vector, rtol=1e-6, atol=1e-9)
    for j, i in enumerate(perm):
        assert ra.diagnostics[i].fate == rb.diagnostics[j].fate
        np.testing.assert_allclose(ra.diagnostics[i].weight, rb.diagnostics[j].weight, atol=1e-9)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 16), d=st.integers(24, 80))
def test_distinct_honest_inputs_keep_everyone(seed, n, d):
    x = RNG(seed).normal(size=(n, d)) * RNG(seed + 1).uniform(0.1, 3, size=(n, 1))
    res = make_aggregator("mean", 0, pre="foolsgold")(x)
    assert [diag.fate for diag in res.diagnostics] == ["kept"] * n
    np.testing.assert_allclose(res.vector, x.mean(0), rtol=1e-9, atol=1e-12)


@SETTINGS
@given(seed=st.integers(0, 2**31 - 1), d=st.integers(1, 120), clip=st.booleans())
def test_inputs_are_never_modified(seed, d, clip):
    rng = RNG(seed)
    x = rng.normal(size=(9, d)).astype(np.float32)
    x[:3] = x[0]
    before = x.copy()
    for name in ("mean", "cc", "median"):
        rule = FoolsGold(make_aggregator(name, 1), clip=clip)
        rule.set_clients(range(9))
        rule(x)
        np.testing.assert_array_equal(x, before)
    make_aggregator("ensemble", 1, filter="foolsgold", clip=clip)(x)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("name", ["alie-adaptive-jitter", "min-max-adaptive-jitter"])
def test_jittered_sybils_look_as_unlike_as_honest_devices(name):
    from fedgate.clients.sim.attacks import get_attack

    rng = RNG(8)
    honest = 0.02 + 0.01 * rng.standard_normal((16, 200))
    crafted = get_attack(name).craft(honest[:4], honest, 4, rng, n=20)
    plain = get_attack(name.removesuffix("-jitter")).craft(honest[:4], honest, 4, rng, n=20)
    x = np.vstack([honest, crafted])
    decision = foolsgold_weights(median_residuals(x), min_similarity=0.99)
    assert np.all(decision.weight == 1)  # the floor no longer finds them
    assert np.all(foolsgold_weights(np.vstack([honest, plain]), 0.99).weight[16:] == 0)
