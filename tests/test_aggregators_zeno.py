"""Zeno and the zeno pre-filter: rank updates by the server's validation descent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.strategies.aggregators import AggregatorConfigError, make_aggregator
from fedgate.strategies.aggregators.zeno import descent_scores

TARGET = np.array([1.0, -2.0, 0.5])


def distance_loss(delta: np.ndarray) -> float:
    """A server 'validation loss' whose optimum is TARGET."""
    return float(np.sum((delta - TARGET) ** 2))


def test_descent_scores_by_hand():
    x = np.array([TARGET, -TARGET, np.zeros(3)])
    scores, before = descent_scores(x, distance_loss, step=1.0)
    assert before == pytest.approx(5.25)
    np.testing.assert_allclose(scores, [5.25, 5.25 - 21.0, 0.0])
    half, _ = descent_scores(x, distance_loss, step=0.5, rho=1.0)  # minus rho * ||0.5 x||^2
    np.testing.assert_allclose(half, [5.25 - 1.3125 - 1.3125, 5.25 - 11.8125 - 1.3125, 0.0])


def test_drops_the_f_updates_that_hurt_the_server_data_even_when_they_look_typical():
    honest = TARGET + np.array([[0.1, 0, 0], [0, 0.1, 0], [0, 0, 0.1], [-0.1, 0, 0]])
    flipped = -honest[:2]  # same norms as honest updates: distance rules cannot tell
    x = np.vstack([honest, flipped])
    zeno = make_aggregator("zeno", 2, step=0.1, clip=False)
    zeno.set_scorer(distance_loss)
    res = zeno(x)
    assert [d.fate for d in res.diagnostics] == ["kept"] * 4 + ["dropped"] * 2
    np.testing.assert_allclose(res.vector, honest.mean(axis=0))
    assert [d.weight for d in res.diagnostics][4:] == [0.0, 0.0]


def test_clip_bounds_a_boosted_update_to_the_median_kept_norm():
    x = np.vstack([np.tile(TARGET, (4, 1)), 10 * TARGET])  # a boosted, helpful-looking update
    zeno = make_aggregator("zeno", 0, step=0.1)
    zeno.set_scorer(distance_loss)
    res = zeno(x)
    assert res.diagnostics[4].fate == "clipped"
    np.testing.assert_allclose(res.vector, TARGET)  # the boost no longer counts


def test_needs_a_scorer_every_round():
    zeno = make_aggregator("zeno", 1)
    zeno.set_scorer(distance_loss)
    zeno(np.tile(TARGET, (3, 1)))
    with pytest.raises(AggregatorConfigError, match="validation scorer"):
        zeno(np.tile(TARGET, (3, 1)))  # the scorer is for one aggregation only


def test_bad_parameters_and_too_few_updates_are_refused():
    with pytest.raises(AggregatorConfigError, match="step"):
        make_aggregator("zeno", 1, step=0.0)
    with pytest.raises(AggregatorConfigError, match="n >= f\\+1"):
        make_aggregator("zeno", 2).check(2)
    with pytest.raises(AggregatorConfigError, match="cc needs"):
        make_aggregator("cc", 2, pre="zeno").check(6)  # cc on n - f = 4 < 2f + 1


def test_zeno_filter_then_inner_rule():
    honest = TARGET + np.random.default_rng(0).normal(scale=0.05, size=(6, 3))
    x = np.vstack([honest, -honest[:2]])
    rule = make_aggregator("trimmed-mean", 2, pre="zeno")
    assert rule.name == "zeno+trimmed-mean"
    rule.set_scorer(distance_loss)
    res = rule(x)
    fates = [d.fate for d in res.diagnostics]
    assert fates[6:] == ["dropped", "dropped"] and "dropped" not in fates[:6]
    direct = make_aggregator("trimmed-mean", 2)(honest)
    np.testing.assert_allclose(res.vector, direct.vector)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(3, 9))
def test_permutation_invariant_and_output_within_the_kept_hull(seed, n):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    f = (n - 1) // 2
    perm = rng.permutation(n)
    out = []
    for rows in (x, x[perm]):
        zeno = make_aggregator("zeno", f, step=0.5, clip=False)
        zeno.set_scorer(lambda d: float(np.sum((d - 1.0) ** 2)))
        out.append(zeno(rows, np.ones(n)).vector)
    np.testing.assert_allclose(out[0], out[1], atol=1e-12)
    assert np.all(out[0] <= x.max(axis=0) + 1e-12) and np.all(out[0] >= x.min(axis=0) - 1e-12)
