"""The validated ensemble: chooses by server loss, follows its choice, explains it.

The members' choice is tested without the backdoor pre-filter (``filter=""``); the region
default with it is tested in ``test_backdoor_defence.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.strategies.aggregators import AggregatorConfigError, make_aggregator
from fedgate.strategies.aggregators.ensemble import beats, choose


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
    ens = make_aggregator("ensemble", 2, filter="", members=members)
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
    ens = make_aggregator(
        "ensemble", 2, filter=""
    )  # cc, nnm+cc, zeno; fallback: the last not judged
    ens.set_scorer(lambda delta: 0.0)
    assert ens(x).note.startswith("ensemble: chose cc")  # ties go to the earlier member
    res = ens(x)
    assert "no scorer set, used fallback nnm+cc" in res.note
    persistent = make_aggregator(
        "ensemble", 2, filter="", scorer_fn=lambda delta: -float(delta.sum())
    )
    persistent(x)
    assert "chose" in persistent(x).note


def test_non_finite_losses_never_win():
    x = updates()
    ens = make_aggregator("ensemble", 2, filter="", members=("cc", "nnm+cc"))
    losses = iter([float("nan"), 1.0])  # cc's model diverged on the server data
    ens.set_scorer(lambda delta: next(losses))
    ens(x)
    assert ens.last_choice == "nnm+cc"


def test_members_follow_the_chosen_aggregate():
    x = updates()
    ens = make_aggregator("ensemble", 2, filter="")
    ens.set_scorer(lambda delta: float(np.abs(delta).sum()))
    res = ens(x)
    stateful = [rule for rule in ens.rules if hasattr(rule, "center")]
    assert len(stateful) == 2  # cc and nnm+cc; zeno keeps no state
    for rule in stateful:
        np.testing.assert_allclose(rule.center, res.vector)


def test_equals_a_single_member_when_it_has_one():
    x = updates(3)
    ens = make_aggregator("ensemble", 2, filter="", members=("trimmed-mean",))
    np.testing.assert_allclose(ens(x).vector, make_aggregator("trimmed-mean", 2)(x).vector)


def test_reference_reaches_fltrust_members():
    x = updates(4)
    ens = make_aggregator("ensemble", 1, filter="", members=("cc", "fltrust"), fallback=1)
    ens.set_reference(x.mean(0))
    assert "fallback fltrust" in ens(x).note


def test_configuration_errors_are_clear():
    with pytest.raises(AggregatorConfigError, match="at least one member"):
        make_aggregator("ensemble", 1, filter="", members=())
    with pytest.raises(AggregatorConfigError, match="unknown aggregator 'ccc'"):
        make_aggregator("ensemble", 1, filter="", members=("ccc",))
    with pytest.raises(AggregatorConfigError, match="cannot be ensembles"):
        make_aggregator("ensemble", 1, filter="", members=("ensemble",))
    with pytest.raises(AggregatorConfigError, match="fallback=5"):
        make_aggregator("ensemble", 1, filter="", fallback=5)
    with pytest.raises(AggregatorConfigError, match="fallback member zeno needs"):
        make_aggregator("ensemble", 1, filter="", fallback=2)
    with pytest.raises(AggregatorConfigError, match="every member needs the server's scorer"):
        make_aggregator("ensemble", 1, filter="", members=("zeno", "zeno+cc"))
    with pytest.raises(AggregatorConfigError, match="confidence must be >= 0"):
        make_aggregator("ensemble", 1, filter="", confidence=-1.0)
    ens = make_aggregator("ensemble", 2, filter="", members=("cc", "bulyan"))
    with pytest.raises(AggregatorConfigError, match="bulyan needs n >= 4f\\+3"):
        ens.check(10)


def test_beats_needs_a_margin_of_standard_errors_by_hand():
    incumbent = np.ones(4)
    # differences 0.2, 0, 0.2, 0: mean 0.1, sample std 0.11547, standard error 0.057735
    challenger = np.array([0.8, 1.0, 0.8, 1.0])
    assert beats(challenger, incumbent, confidence=1.0)  # 0.1 > 0.0577
    assert not beats(challenger, incumbent, confidence=2.0)  # 0.1 < 0.1155
    assert not beats(np.array([0.5, 1.5, 0.5, 1.5]), incumbent, 0.0)  # no gain on average
    assert beats(np.full(4, 0.9), incumbent, 100.0)  # the same gain everywhere: no noise
    assert not beats(np.array([0.1, np.nan, 0.1, 0.1]), incumbent, 0.0)  # non-finite: never
    assert beats(incumbent, np.array([np.inf, 1, 1, 1]), 5.0)  # over a diverged incumbent
    assert beats(0.5, 1.0, 5.0) and not beats(1.0, 1.0, 0.0)  # scalars: plainly lower


def test_choose_prefers_plain_members_and_lets_judged_ones_in_only_with_a_margin():
    base = np.linspace(1.0, 2.0, 20)
    cc, nnm = base + 0.05, base  # nnm+cc lower on every example
    noisy = base - 0.01 + np.where(np.arange(20) % 2 == 0, 0.3, -0.3)  # lower mean, noisy
    assert choose([cc, nnm, noisy], [False, False, True], confidence=2.0) == 1
    assert choose([cc, nnm, base - 0.2], [False, False, True], confidence=2.0) == 2
    assert choose([cc, nnm, noisy], [False, False, False], confidence=2.0) == 2  # plain: mean
    assert choose([noisy, base], [True, True], confidence=2.0) == 0  # all judged: lowest mean


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(0, 10, allow_nan=False), min_size=6, max_size=6),
        min_size=2,
        max_size=4,
    ),
    st.lists(st.booleans(), min_size=4, max_size=4),
    st.floats(0, 5),
)
def test_choose_never_takes_a_judged_member_that_is_not_lower_on_average(rows, flags, conf):
    losses = [np.array(r) for r in rows]
    judged = flags[: len(losses)]
    k = choose(losses, judged, conf)
    plain = [i for i, j in enumerate(judged) if not j]
    means = [float(np.mean(v)) for v in losses]
    if plain:
        best_plain = min(means[i] for i in plain)
        assert means[k] <= best_plain + 1e-12
        if judged[k]:
            diff = min(
                (losses[i] - losses[k] for i in plain if means[i] == best_plain),
                key=lambda d: float(np.mean(d)),
            )
            se = float(np.std(diff, ddof=1)) / math.sqrt(len(diff))
            assert float(np.mean(diff)) > conf * se - 1e-9 or not math.isfinite(se)
    else:
        assert means[k] == min(means)


def test_a_judged_member_within_the_noise_is_not_chosen_in_a_real_aggregation():
    rng = np.random.default_rng(5)
    target = rng.normal(size=12)
    honest = target + 0.1 * rng.normal(size=(7, 12))
    x = np.vstack([honest, -honest[:2]])  # two flipped updates, as typical in norm as any
    directions = rng.normal(size=(200, 12))
    directions -= directions.mean(0)  # noise that cancels on average: the mean loss is exact

    def per_example(delta, noise):
        return np.linalg.norm(delta - target) + noise * (directions @ delta)

    for noise, expected in ((50.0, "cc"), (0.0, "zeno")):
        ens = make_aggregator("ensemble", 2, filter="", members=("cc", "zeno"))
        ens.set_scorer(lambda delta, noise=noise: per_example(delta, noise))
        res = ens(x)
        assert ens.last_choice == expected, (noise, res.note)
        assert f"chose {expected}" in res.note and "zeno" in res.note
        cc_loss, zeno_loss = ens.last_scores
        assert zeno_loss < cc_loss  # zeno is better on average either way


def test_without_a_scorer_members_that_need_one_are_not_run():
    x = updates(6)
    ens = make_aggregator("ensemble", 2, filter="")  # zeno alone would refuse to run unscored
    res = ens(x)
    assert ens.last_choice == "nnm+cc" and "fallback nnm+cc" in res.note
    np.testing.assert_allclose(res.vector, make_aggregator("cc", 2, pre="nnm")(x).vector)


def test_zeno_takes_a_per_example_scorer_as_its_mean():
    x = updates(8, n=7)
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 1.5, size=30)
    target = x.mean(0)
    per_example = lambda d: a * np.sum((d - target) ** 2)  # noqa: E731
    mean = lambda d: float(np.mean(per_example(d)))  # noqa: E731
    results = []
    for scorer in (per_example, mean):
        zeno = make_aggregator("zeno", 2)
        zeno.set_scorer(scorer)
        results.append(zeno(x))
    np.testing.assert_allclose(results[0].vector, results[1].vector)
    assert [d.score for d in results[0].diagnostics] == pytest.approx(
        [d.score for d in results[1].diagnostics]
    )
