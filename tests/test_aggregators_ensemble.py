"""The validated ensemble: chooses by server loss, follows its choice, explains it."""

from __future__ import annotations

import numpy as np
import pytest

from fedgate.strategies.aggregators import AggregatorConfigError, make_aggregator


def updates(seed: int = 0, n: int = 11, d: int = 20) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) + 1.0


def test_picks_the_member_with_the_lowest_server_loss():
    x = updates()
    members = ("cc", "nnm+cc", "median")
    direct = [
        make_aggregator(m.split("+")[-1], 2, pre="nnm" if "+" in m else None) for m in members
    ]
    vectors = [rule(x).vector for rule in direct]
    target = vectors[1]
    ens = make_aggregator("ensemble", 2, members=members)
    ens.set_scorer(lambda delta: float(np.linalg.norm(delta - target)))
    res = ens(x)
    np.testing.assert_allclose(res.vector, target)
    assert ens.last_choice == "nnm+cc"
    assert "chose nnm+cc" in res.note and "median" in res.note
    assert len(ens.last_scores) == 3 and ens.last_scores[1] == pytest.approx(0.0)
    # the diagnostics are the chosen member's
    assert [c.fate for c in res.diagnostics] == [c.fate for c in direct[1](x).diagnostics]


def test_scorer_is_used_once_and_the_fallback_is_explained():
    x = updates()
    ens = make_aggregator("ensemble", 2)  # members cc, nnm+cc; fallback: the last
    ens.set_scorer(lambda delta: 0.0)
    assert ens(x).note.startswith("ensemble: chose cc")  # ties go to the earlier member
    res = ens(x)
    assert "no scorer set, used fallback nnm+cc" in res.note
    persistent = make_aggregator("ensemble", 2, scorer_fn=lambda delta: -float(delta.sum()))
    persistent(x)
    assert "chose" in persistent(x).note


def test_non_finite_losses_never_win():
    x = updates()
    ens = make_aggregator("ensemble", 2)
    losses = iter([float("nan"), 1.0])  # cc's model diverged on the server data
    ens.set_scorer(lambda delta: next(losses))
    ens(x)
    assert ens.last_choice == "nnm+cc"


def test_members_follow_the_chosen_aggregate():
    x = updates()
    ens = make_aggregator("ensemble", 2)
    ens.set_scorer(lambda delta: float(np.abs(delta).sum()))
    res = ens(x)
    for rule in ens.rules:
        np.testing.assert_allclose(rule.center, res.vector)


def test_equals_a_single_member_when_it_has_one():
    x = updates(3)
    ens = make_aggregator("ensemble", 2, members=("trimmed-mean",))
    np.testing.assert_allclose(ens(x).vector, make_aggregator("trimmed-mean", 2)(x).vector)


def test_reference_reaches_fltrust_members():
    x = updates(4)
    ens = make_aggregator("ensemble", 1, members=("cc", "fltrust"), fallback=1)
    ens.set_reference(x.mean(0))
    assert "fallback fltrust" in ens(x).note


def test_configuration_errors_are_clear():
    with pytest.raises(AggregatorConfigError, match="at least one member"):
        make_aggregator("ensemble", 1, members=())
    with pytest.raises(AggregatorConfigError, match="unknown aggregator 'ccc'"):
        make_aggregator("ensemble", 1, members=("ccc",))
    with pytest.raises(AggregatorConfigError, match="cannot be ensembles"):
        make_aggregator("ensemble", 1, members=("ensemble",))
    with pytest.raises(AggregatorConfigError, match="fallback=5"):
        make_aggregator("ensemble", 1, fallback=5)
    ens = make_aggregator("ensemble", 2, members=("cc", "bulyan"))
    with pytest.raises(AggregatorConfigError, match="bulyan needs n >= 4f\\+3"):
        ens.check(10)
