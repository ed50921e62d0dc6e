"""Aggregation rules: hand-computed small cases and each rule against its definition."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fedgate.strategies.aggregators import (
    AGGREGATORS,
    AggregatorConfigError,
    make_aggregator,
)
from fedgate.strategies.aggregators.base import split_layers, stack_layers
from fedgate.strategies.aggregators.mean import cap_shares

# ----------------------------------------------------------------------------- brute force


def brute_krum_pick(x: np.ndarray, f: int) -> int:
    """Lowest score; ties to the lower total distance to all others."""
    scores = brute_krum_scores(x, f)
    totals = [sum(float(np.sum((a - b) ** 2)) for b in x) for a in x]
    return min(range(len(x)), key=lambda i: (scores[i], totals[i], i))


def brute_krum_scores(x: np.ndarray, f: int) -> np.ndarray:
    """Blanchard et al.: sum of squared distances to the n - f - 2 closest other vectors."""
    n = len(x)
    k = max(1, n - f - 2)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[:k]))
    return np.array(scores)


def brute_bulyan(x: np.ndarray, f: int) -> tuple[np.ndarray, list[int]]:
    """El Mhamdi et al.: theta = n - 2f rounds of Krum, then per coordinate the mean of the
    beta = theta - 2f selected values closest to their median."""
    n = len(x)
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        chosen.append(remaining.pop(brute_krum_pick(x[remaining], f)))
    sel = x[sorted(chosen)]
    beta = n - 4 * f
    out = np.empty(x.shape[1])
    for j in range(x.shape[1]):
        col = sel[:, j]
        med = np.median(col)
        out[j] = np.mean(sorted(col, key=lambda v, med=med: abs(v - med))[:beta])
    return out, sorted(chosen)


def brute_cc(x, w, center, tau, iterations):
    v = np.zeros(x.shape[1]) if center is None else np.array(center, dtype=np.float64)
    for _ in range(iterations):
        diffs = x - v
        norms = np.linalg.norm(diffs, axis=1)
        radius = np.median(norms) if tau is None else tau
        scale = np.minimum(1.0, radius / np.maximum(norms, 1e-300))
        v = v + (w[:, None] * scale[:, None] * diffs).sum(0)
    return v


def rng_updates(seed: int, n: int, d: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d))


def kept_indices(result) -> list[int]:
    return [c.index for c in result.diagnostics if c.fate != "dropped"]


# ----------------------------------------------------------------------------- hand cases


def test_mean_hand_case_and_share_cap():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    res = make_aggregator("mean")(x, np.array([1.0, 1.0, 2.0]))
    np.testing.assert_allclose(res.vector, [3.5, 4.5])
    assert [c.weight for c in res.diagnostics] == [0.25, 0.25, 0.5]
    capped = make_aggregator("mean", max_share=0.4)(x, np.array([1.0, 1.0, 8.0]))
    # 0.8 capped to 0.4, the 0.6 left is split 0.3 / 0.3
    np.testing.assert_allclose([c.weight for c in capped.diagnostics], [0.3, 0.3, 0.4])
    np.testing.assert_allclose(capped.vector, 0.3 * x[0] + 0.3 * x[1] + 0.4 * x[2])
    assert [c.fate for c in capped.diagnostics] == ["kept", "kept", "down-weighted"]


def test_cap_shares_is_water_filling():
    w = cap_shares(np.array([0.7, 0.2, 0.05, 0.05]), 0.3)
    np.testing.assert_allclose(w.sum(), 1.0)
    assert w.max() <= 0.3 + 1e-12
    # 0.7 -> 0.3, then 0.2 * (0.7 / 0.3) = 0.467 -> 0.3; the two 0.05 share the rest
    np.testing.assert_allclose(w, [0.3, 0.3, 0.2, 0.2])


def test_median_hand_cases():
    odd = np.array([[1.0, 10.0], [2.0, 20.0], [300.0, -5.0]])
    np.testing.assert_allclose(make_aggregator("median", 1)(odd).vector, [2.0, 10.0])
    even = np.array([[1.0], [5.0], [2.0], [100.0]])
    np.testing.assert_allclose(make_aggregator("median", 1)(even).vector, [3.5])


def test_trimmed_mean_hand_case():
    x = np.array([[1.0], [2.0], [3.0], [100.0], [-50.0]])
    res = make_aggregator("trimmed-mean", 1)(x)
    np.testing.assert_allclose(res.vector, [2.0])
    fates = {c.index: c.fate for c in res.diagnostics}
    assert fates[3] == fates[4] == "trimmed"
    assert fates[0] == fates[1] == fates[2] == "kept"


def test_krum_and_multikrum_hand_case():
    # 1-D points 0, 1, 2, 3, 100 with f = 1: scores over the 2 nearest are 5, 2, 2, 5, 19013.
    x = np.array([[0.0], [1.0], [2.0], [3.0], [100.0]])
    res = make_aggregator("krum", 1)(x)
    np.testing.assert_allclose([c.score for c in res.diagnostics], [5, 2, 2, 5, 19013])
    # tie 1 vs 2 broken by the total distance to all others: 9807 vs 9610
    np.testing.assert_allclose(res.vector, [2.0])
    assert kept_indices(res) == [2]
    multi = make_aggregator("multi-krum", 1)(x)  # m = n - f = 4
    np.testing.assert_allclose(multi.vector, [1.5])
    assert kept_indices(multi) == [0, 1, 2, 3]


def test_bulyan_hand_case():
    # f = 1, n = 7: iterated Krum picks 2, 1, 3, 0, 4 (theta = 5; the ties 1/3, 0/4 and
    # 4/100 go to the smaller total distance); the beta = 3 values closest to the median 2
    # are 1, 2, 3.
    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [100.0], [-100.0]])
    res = make_aggregator("bulyan", 1)(x)
    np.testing.assert_allclose(res.vector, [2.0])
    fates = [c.fate for c in res.diagnostics]
    assert fates[5] == fates[6] == "dropped"
    assert fates[0] == fates[4] == "trimmed"
    assert fates[1] == fates[2] == fates[3] == "kept"


def test_bulyan_kernel_takes_a_smallest_radius_window():
    from fedgate.strategies.aggregators.bulyan import closest_to_median_kernel

    rng = np.random.default_rng(0)
    for k, beta in ((30, 10), (7, 3), (5, 5), (9, 1), (11, 7), (3, 1)):
        for ties in (False, True):
            raw = rng.integers(-4, 5, (40, k)) if ties else rng.normal(size=(40, k))
            s = np.sort(raw.astype(np.float64), axis=1)
            mean, lo, hi = closest_to_median_kernel(beta)(s)
            med = (s[:, (k - 1) // 2] + s[:, k // 2]) / 2
            for r in range(len(s)):
                radii = [
                    max(med[r] - s[r, j], s[r, j + beta - 1] - med[r]) for j in range(k - beta + 1)
                ]
                best = [j for j, rad in enumerate(radii) if rad == min(radii)]
                assert any(np.isclose(mean[r], s[r, j : j + beta].mean()) for j in best)
                if not ties:  # a unique window
                    assert (lo[r], hi[r]) == (s[r, best[0]], s[r, best[0] + beta - 1])


def test_coordinate_engine_kept_counts_match_their_definition_across_blocks():
    """Per client, the coordinates where its value lies in the kernel's kept range, ties
    included, counted over many blocks (and a last partial one), with and without a row subset."""
    from fedgate.strategies.aggregators.bulyan import closest_to_median_kernel
    from fedgate.strategies.aggregators.coordinate import reduce_sorted, trimmed_kernel

    rng = np.random.default_rng(3)
    # (1000, 96): plain transposed copies; (2048, 1024): rows 4 KiB apart, copied 8 at a time
    for dtype, (d, block) in itertools.product(
        (np.float32, np.float64), ((1000, 96), (2048, 1024))
    ):
        x = rng.integers(-3, 4, (11, d)).astype(dtype)  # many ties with the kept bounds
        for kernel, rows in (
            (trimmed_kernel(5), None),
            (trimmed_kernel(2), None),
            (closest_to_median_kernel(3), np.array([0, 2, 3, 5, 8, 9, 10])),
        ):
            res = reduce_sorted(x, kernel, rows=rows, block=block)
            sub = x if rows is None else x[rows]
            vector, lo, hi = kernel(np.sort(sub.T, axis=1))
            np.testing.assert_allclose(res.vector, vector, rtol=1e-5, atol=1e-6)  # BLAS order
            expected = ((sub >= lo) & (sub <= hi)).sum(axis=1)
            assert res.kept.dtype == np.int64
            np.testing.assert_array_equal(res.kept, expected)


def test_geomed_hand_cases():
    tri = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, np.sqrt(3.0)]])  # equilateral: centroid
    res = make_aggregator("geomed", 1, nu=1e-9, tol=1e-12, max_iter=1000)(tri)
    np.testing.assert_allclose(res.vector, [1.0, np.sqrt(3.0) / 3], atol=1e-6)
    line = np.array([[0.0], [1.0], [10.0]])  # 1-D: the median
    res = make_aggregator("geomed", 1, nu=1e-9, tol=1e-14, max_iter=5000)(line)
    np.testing.assert_allclose(res.vector, [1.0], atol=1e-3)


def test_centered_clipping_hand_case():
    x = np.array([[3.0, 0.0], [0.0, 0.5]])
    cc = make_aggregator("cc", 0, tau=1.0, iterations=1)
    res = cc(x)
    # v = 0 + 0.5 * clip([3, 0]) + 0.5 * [0, 0.5] = 0.5 * [1, 0] + [0, 0.25]
    np.testing.assert_allclose(res.vector, [0.5, 0.25])
    assert [c.fate for c in res.diagnostics] == ["clipped", "kept"]
    # stateful: the next round is centered at the previous aggregate
    res2 = cc(np.array([[0.5, 0.25], [0.5, 0.25]]))
    np.testing.assert_allclose(res2.vector, [0.5, 0.25])
    np.testing.assert_allclose(cc.center, [0.5, 0.25])


def test_norm_bound_hand_case():
    x = np.array([[3.0, 4.0], [0.3, 0.4]])
    res = make_aggregator("norm-bound", 0, bound=1.0)(x)
    np.testing.assert_allclose(res.vector, [0.45, 0.6])
    assert [c.fate for c in res.diagnostics] == ["clipped", "kept"]


def test_nnm_hand_case():
    # f = 1: each point averages its 2 nearest (itself included): 0.5, 0.5, 5.5
    x = np.array([[0.0], [1.0], [10.0]])
    res = make_aggregator("mean", 1, pre="nnm")(x)
    np.testing.assert_allclose(res.vector, [6.5 / 3])
    # client 0 appears in rows 0 and 1 (1/2 each), client 1 in all three, client 2 in one
    np.testing.assert_allclose([c.weight for c in res.diagnostics], [1 / 3, 1 / 2, 1 / 6])


def test_fltrust_hand_case():
    x = np.array([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])
    agg = make_aggregator("fltrust")
    agg.set_reference(np.array([1.0, 0.0]))
    res = agg(x)
    np.testing.assert_allclose(res.vector, np.array([1.5, 0.5]) / (1 + np.sqrt(0.5)))
    assert [c.fate for c in res.diagnostics] == ["kept", "dropped", "dropped", "kept"]
    np.testing.assert_allclose([c.score for c in res.diagnostics], [1, 0, -1, np.sqrt(0.5)])
    with pytest.raises(AggregatorConfigError, match="set_reference"):
        agg(x)  # a reference is good for one aggregation only


# ----------------------------------------------------------------------------- definitions


@pytest.mark.parametrize("seed", range(5))
def test_trimmed_mean_is_the_sorted_slice_mean(seed):
    x = rng_updates(seed, 11, 40).astype(np.float32)
    for f in range(6):
        want = np.sort(x, axis=0)[f : 11 - f].mean(0)
        got = make_aggregator("trimmed-mean", f)(x).vector
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_median_is_numpy_median(seed):
    for n in (5, 6, 13):
        x = rng_updates(seed, n, 33)
        np.testing.assert_allclose(
            make_aggregator("median", (n - 1) // 2)(x).vector, np.median(x, axis=0)
        )


@pytest.mark.parametrize("seed", range(5))
def test_krum_picks_argmin_of_brute_force_score(seed):
    rng = np.random.default_rng(seed)
    for n, f in ((5, 1), (9, 3), (12, 2)):
        x = rng.normal(size=(n, 17)) * rng.uniform(0.1, 3.0, size=(n, 1))
        want = brute_krum_scores(x, f)
        res = make_aggregator("krum", f)(x)
        np.testing.assert_allclose([c.score for c in res.diagnostics], want, rtol=1e-9)
        np.testing.assert_array_equal(res.vector, x[np.argmin(want)])
        multi = make_aggregator("multi-krum", f)(x)
        best = np.argsort(want)[: n - f]
        np.testing.assert_allclose(multi.vector, x[best].mean(0))
        assert kept_indices(multi) == sorted(best.tolist())


@pytest.mark.parametrize("seed", range(5))
def test_bulyan_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    for n, f in ((7, 1), (11, 2), (16, 3)):
        x = rng.normal(size=(n, 9)) + rng.normal(scale=5.0, size=(n, 1))
        want, chosen = brute_bulyan(x, f)
        res = make_aggregator("bulyan", f)(x)
        np.testing.assert_allclose(res.vector, want, rtol=1e-9, atol=1e-12)
        assert kept_indices(res) == [i for i in chosen if res.diagnostics[i].fate != "dropped"]
        assert {c.index for c in res.diagnostics if c.fate == "dropped"} == set(range(n)) - set(
            chosen
        )


@pytest.mark.parametrize("seed", range(5))
def test_geomed_minimizes_the_sum_of_distances(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(9, 6))
    w = rng.uniform(1, 5, size=9)
    res = make_aggregator("geomed", 2, nu=1e-10, tol=1e-14, max_iter=10_000)(x, w)

    def objective(z):
        return float(np.sum(w * np.linalg.norm(x - z, axis=1)))

    best = objective(res.vector)
    # no coordinate step in any direction improves the objective
    for step in (1e-2, 1e-3, 1e-4):
        for j, sign in itertools.product(range(6), (-1, 1)):
            z = res.vector.copy()
            z[j] += sign * step
            assert objective(z) >= best - 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_centered_clipping_matches_the_iteration(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(8, 12)) + 3.0
    w = rng.uniform(1, 4, size=8)
    center = rng.normal(size=12)
    for tau in (None, 0.5, 2.0):
        cc = make_aggregator("cc", 2, tau=tau, iterations=4)
        cc.center = center.copy()
        want = brute_cc(x, w / w.sum(), center, tau, 4)
        np.testing.assert_allclose(cc(x, w).vector, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_nnm_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(10, 7))
    f = 3
    mixed = np.array(
        [x[np.argsort(np.linalg.norm(x - x[i], axis=1))[: 10 - f]].mean(0) for i in range(10)]
    )
    got = make_aggregator("trimmed-mean", f, pre="nnm")(x).vector
    np.testing.assert_allclose(got, np.sort(mixed, axis=0)[f : 10 - f].mean(0), rtol=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_fltrust_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(7, 5))
    g0 = rng.normal(size=5)
    agg = make_aggregator("fltrust", reference_fn=lambda: g0)
    cos = x @ g0 / (np.linalg.norm(x, axis=1) * np.linalg.norm(g0))
    ts = np.maximum(cos, 0)
    want = (ts[:, None] * x * (np.linalg.norm(g0) / np.linalg.norm(x, axis=1))[:, None]).sum(0)
    np.testing.assert_allclose(agg(x).vector, want / ts.sum(), rtol=1e-9)


def test_norm_bound_default_is_the_median_norm():
    x = np.diag([1.0, 2.0, 3.0, 4.0, 5.0])
    res = make_aggregator("norm-bound", 2)(x)
    np.testing.assert_allclose(res.vector, [0.2, 0.4, 0.6, 0.6, 0.6])


# ----------------------------------------------------------------------------- against Flower


@pytest.mark.parametrize("seed", range(3))
def test_agrees_with_flower_on_random_inputs(seed):
    from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
    from flwr.serverapp.strategy.multikrum import compute_distances

    rng = np.random.default_rng(seed)
    n, f = 20, 4
    x = rng.normal(size=(n, 30))
    np.testing.assert_allclose(
        make_aggregator("trimmed-mean", f)(x).vector, trim_mean(x, (f + 0.5) / n)
    )
    np.testing.assert_allclose(make_aggregator("median", f)(x).vector, np.median(x, axis=0))
    from flwr.app import ArrayRecord

    dist = compute_distances([ArrayRecord([row]) for row in x])
    closest = max(1, n - f - 2)
    flower_scores = [np.sort(row)[1 : closest + 1].sum() for row in dist]
    ours = [c.score for c in make_aggregator("krum", f)(x).diagnostics]
    np.testing.assert_allclose(ours, flower_scores, rtol=1e-9)


# ----------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("name", "f", "too_few"),
    [
        ("median", 2, 4),
        ("trimmed-mean", 2, 4),
        ("krum", 2, 6),
        ("multi-krum", 2, 6),
        ("bulyan", 1, 6),
        ("bulyan", 2, 10),
        ("geomed", 2, 4),
        ("cc", 2, 4),
        ("norm-bound", 2, 4),
    ],
)
def test_preconditions_fail_at_check_with_the_bound(name, f, too_few):
    rule = make_aggregator(name, f)
    rule.check(too_few + 1)
    with pytest.raises(AggregatorConfigError, match=f"got n={too_few}"):
        rule.check(too_few)
    with pytest.raises(AggregatorConfigError):
        rule(np.zeros((too_few, 3)))


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(AggregatorConfigError, match="unknown aggregator 'krumm'"):
        make_aggregator("krumm", 1)
    with pytest.raises(AggregatorConfigError, match="f must be"):
        make_aggregator("median", -1)
    with pytest.raises(AggregatorConfigError, match="unknown pre-aggregator"):
        make_aggregator("median", 1, pre="mix")
    with pytest.raises(AggregatorConfigError, match="bad parameters"):
        make_aggregator("median", 1, tau=3)
    with pytest.raises(AggregatorConfigError, match="tau must be"):
        make_aggregator("cc", 1, tau=-1.0)


def test_bad_updates_are_a_clear_error():
    rule = make_aggregator("median", 0)
    with pytest.raises(ValueError, match=r"non-empty \(n, d\)"):
        rule(np.zeros(5))
    with pytest.raises(ValueError, match="weights must be 3"):
        make_aggregator("mean")(np.zeros((3, 2)), np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="layer 1 has shape"):
        rule([np.zeros((3, 2)), np.zeros((2, 4))])


@pytest.mark.parametrize("name", sorted(set(AGGREGATORS) - {"fltrust"}))
def test_per_layer_input_equals_flat_input(name):
    rng = np.random.default_rng(3)
    layers = [rng.normal(size=(9, 4, 3)), rng.normal(size=(9, 5))]
    flat = stack_layers(layers)
    assert flat.shape == (9, 17)
    params = {"scorer_fn": lambda d: float(np.sum((d - 0.1) ** 2))} if name == "zeno" else {}
    a = make_aggregator(name, 1, **params)(layers).vector
    b = make_aggregator(name, 1, **params)(flat).vector
    np.testing.assert_allclose(a, b)
    parts = split_layers(a, layers)
    assert [p.shape for p in parts] == [(4, 3), (5,)]


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_diagnostics_cover_every_client_with_weights_summing_to_one(name):
    x = rng_updates(0, 11, 8)
    params = {
        "fltrust": {"reference_fn": lambda: x.mean(0)},
        "zeno": {"scorer_fn": lambda d: float(np.sum((d - 0.1) ** 2))},
    }.get(name, {})
    for pre in (None, "nnm"):
        res = make_aggregator(name, 2, pre=pre, **params)(x, np.arange(1.0, 12.0))
        assert [c.index for c in res.diagnostics] == list(range(11))
        assert {c.fate for c in res.diagnostics} <= {
            "kept",
            "trimmed",
            "clipped",
            "down-weighted",
            "dropped",
        }
        np.testing.assert_allclose(sum(c.weight for c in res.diagnostics), 1.0)
        assert all(c.weight == 0 for c in res.diagnostics if c.fate == "dropped")


@pytest.mark.parametrize(("n", "f"), [(10, 3), (12, 1), (9, 0), (31, 7)])
def test_nnm_complement_form_equals_the_dense_mixing_matrix(n, f):
    """NNM keeps ``M`` by its excluded rows; every product equals the dense definition:
    row i of ``M`` averages the ``n - f`` rows nearest row i (itself included)."""
    from fedgate.strategies.aggregators.linalg import sq_distances_from_gram
    from fedgate.strategies.aggregators.nnm import NeighbourMix

    rng = np.random.default_rng([n, f])
    x = rng.normal(size=(n, 6)).astype(np.float32)
    g = x.astype(np.float64) @ x.T.astype(np.float64)
    dist = np.linalg.norm(x[:, None, :] - x[None, :, :], axis=2)
    dense = np.zeros((n, n))
    for i in range(n):
        nearest = np.argsort(dist[i] + np.where(np.arange(n) == i, -1.0, 0.0))[: n - f]
        dense[i, nearest] = 1.0 / (n - f)
    mix = NeighbourMix.from_distances(sq_distances_from_gram(g), f)
    np.testing.assert_allclose(mix.dense(), dense)
    np.testing.assert_allclose(mix.mix_rows(x), dense @ x.astype(np.float64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mix.gram(g), dense @ g @ dense.T, rtol=1e-9, atol=1e-9)
    u = rng.random(n)
    np.testing.assert_allclose(mix.shares(u), u @ dense, rtol=1e-12)
    twins = np.vstack([x, x[:1]])  # a duplicate row: both mixed rows bit-identical
    gt = twins.astype(np.float64) @ twins.T.astype(np.float64)
    mixed = NeighbourMix.from_distances(sq_distances_from_gram(gt), f).mix_rows(twins)
    assert mixed[0].tobytes() == mixed[-1].tobytes()
