"""Attack profiles produce what their papers define."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from fedgate.clients.sim.attacks import (
    ATTACKS,
    BACKDOOR_TARGET,
    TRIGGER_PIXELS,
    alie_z,
    apply_attack,
    apply_trigger,
    backdoor_success_rate,
    get_attack,
    poison_dataset,
)
from fedgate.models.data import Dataset

RNG = np.random.default_rng


def honest_deltas(seed: int = 0, m: int = 16, d: int = 50) -> np.ndarray:
    rng = RNG(seed)
    return (0.02 + 0.01 * rng.standard_normal((m, d))).astype(np.float64)


def own_deltas(seed: int = 1, k: int = 4, d: int = 50) -> np.ndarray:
    return honest_deltas(seed, k, d)


def small_dataset(n: int = 30) -> Dataset:
    rng = RNG(5)
    return Dataset(rng.uniform(0, 1, (n, 64)).astype(np.float32), rng.integers(0, 10, n))


def test_registry_names_and_clear_errors():
    expected = {
        "none",
        "label-flip",
        "sign-flip",
        "gaussian",
        "alie",
        "ipm-0.1",
        "ipm-100",
        "min-max",
        "min-sum",
        "backdoor",
        "backdoor-bounded",
        "backdoor-edge",
        "alie-adaptive",
        "min-max-adaptive",
        "min-sum-adaptive",
        "alie-adaptive-jitter",
        "min-max-adaptive-jitter",
    }
    assert set(ATTACKS) == expected
    assert get_attack(None).name == get_attack("").name == "none"
    with pytest.raises(ValueError, match="unknown attack 'flip'; known: none"):
        get_attack("flip")
    with pytest.raises(ValueError, match="1-D"):
        apply_attack("sign-flip", np.zeros((2, 3)), rng=RNG(0))


def test_benign_and_model_poisoning_attacks_leave_the_data_alone():
    data = small_dataset()
    for name in ("none", "sign-flip", "gaussian", "alie", "ipm-0.1", "min-max", "min-sum"):
        out = poison_dataset(name, data, RNG(0))
        assert out is data
    delta = own_deltas()[0]
    np.testing.assert_array_equal(apply_attack("none", delta, rng=RNG(0)), delta.astype(np.float32))


def test_label_flip_maps_y_to_9_minus_y():
    data = small_dataset()
    out = poison_dataset("label-flip", data, RNG(0))
    np.testing.assert_array_equal(out.y, 9 - data.y)
    np.testing.assert_array_equal(out.x, data.x)


def test_sign_flip_negates():
    own = own_deltas()
    out = get_attack("sign-flip").craft(own, None, 4, RNG(0))
    np.testing.assert_allclose(out, -own, rtol=1e-6)


def test_gaussian_is_zero_mean_noise_with_sigma():
    own = np.zeros((4, 20_000))
    out = get_attack("gaussian").craft(own, None, 4, RNG(0))
    assert abs(out.mean()) < 0.01
    assert abs(out.std() - 0.5) < 0.01
    other = get_attack("gaussian").craft(own, None, 4, RNG(1))
    assert not np.allclose(out, other)


def test_alie_z_is_the_papers_formula():
    # Baruch et al.: s = floor(n/2 + 1) - f, z = Phi^-1((n - s) / n)
    for n, f in ((20, 4), (20, 6), (50, 12), (5, 1)):
        s = math.floor(n / 2 + 1) - f
        assert alie_z(n, f) == pytest.approx(NormalDist().inv_cdf((n - s) / n))
    assert alie_z(20, 4) == pytest.approx(0.3853, abs=1e-4)


def test_alie_is_mean_minus_z_sigma_of_the_honest_updates():
    honest, own = honest_deltas(), own_deltas()
    out = get_attack("alie").craft(own, honest, 4, RNG(0), n=20)
    want = honest.mean(0) - alie_z(20, 4) * honest.std(0)
    assert out.shape == own.shape
    for row in out:  # every colluder sends the same vector
        np.testing.assert_allclose(row, want, rtol=1e-5)
    # non-colluding: the statistics of the attackers' own benign updates
    agnostic = get_attack("alie").craft(own, None, 4, RNG(0), n=20)
    np.testing.assert_allclose(agnostic[0], own.mean(0) - alie_z(20, 4) * own.std(0), rtol=1e-5)


@pytest.mark.parametrize(("name", "eps"), [("ipm-0.1", 0.1), ("ipm-100", 100.0)])
def test_ipm_is_minus_eps_times_the_honest_mean(name, eps):
    honest, own = honest_deltas(), own_deltas()
    out = get_attack(name).craft(own, honest, 4, RNG(0))
    for row in out:
        np.testing.assert_allclose(row, -eps * honest.mean(0), rtol=1e-5)
    # its inner product with the true mean is negative: the point of the attack
    assert float(out[0] @ honest.mean(0)) < 0


def _pairwise(a: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[:, None] - a[None], axis=2)


def test_min_max_meets_its_constraint_with_the_largest_gamma():
    honest, own = honest_deltas(), own_deltas()
    mal = get_attack("min-max").craft(own, honest, 4, RNG(0))[0].astype(np.float64)
    bound = _pairwise(honest).max()
    assert np.linalg.norm(honest - mal, axis=1).max() <= bound * (1 + 1e-5)
    # the perturbation is -std (inverse standard deviation) and gamma is maximal: a slightly
    # larger gamma breaks the constraint
    mu, p = honest.mean(0), -honest.std(0)
    gamma = float((mal - mu) @ p / (p @ p))
    assert gamma > 0
    np.testing.assert_allclose(mal, mu + gamma * p, rtol=1e-5, atol=1e-7)
    bigger = mu + gamma * 1.001 * p
    assert np.linalg.norm(honest - bigger, axis=1).max() > bound


def test_min_sum_meets_its_constraint_with_the_largest_gamma():
    honest, own = honest_deltas(), own_deltas()
    mal = get_attack("min-sum").craft(own, honest, 4, RNG(0))[0].astype(np.float64)
    bound = (_pairwise(honest) ** 2).sum(1).max()
    assert (np.linalg.norm(honest - mal, axis=1) ** 2).sum() <= bound * (1 + 1e-5)
    mu, p = honest.mean(0), -honest.std(0)
    gamma = float((mal - mu) @ p / (p @ p))
    bigger = mu + gamma * 1.001 * p
    assert (np.linalg.norm(honest - bigger, axis=1) ** 2).sum() > bound
    # min-sum is the tighter constraint, so its malicious update stays closer to the mean
    mm = get_attack("min-max").craft(own, honest, 4, RNG(0))[0]
    assert np.linalg.norm(mal - mu) <= np.linalg.norm(mm - mu) + 1e-9


def test_min_max_perturbation_kinds():
    honest, own = honest_deltas(), own_deltas()
    mu = honest.mean(0)
    unit = get_attack("min-max", perturbation="unit").craft(own, honest, 4, RNG(0))[0]
    direction = (unit - mu) / np.linalg.norm(unit - mu)
    np.testing.assert_allclose(direction, -mu / np.linalg.norm(mu), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="unknown perturbation"):
        get_attack("min-max", perturbation="bogus").craft(own, honest, 4, RNG(0))


def test_backdoor_adds_triggered_copies_labelled_target_and_boosts():
    data = small_dataset()
    out = poison_dataset("backdoor", data, RNG(0))
    assert len(out) == 2 * len(data)
    triggered = np.all(out.x[:, list(TRIGGER_PIXELS)] == 1.0, axis=1)
    assert np.all(out.y[triggered] == BACKDOOR_TARGET)
    assert triggered.sum() >= len(data)
    own = own_deltas()
    # model replacement: gamma = n / (eta * f) with the f colluders sharing it
    np.testing.assert_allclose(
        get_attack("backdoor").craft(own, None, 4, RNG(0), n=20), 5.0 * own, rtol=1e-6
    )
    np.testing.assert_allclose(
        apply_attack("backdoor", own[0], rng=RNG(0), f=2, n=20), 10.0 * own[0], rtol=1e-6
    )


def test_trigger_and_success_rate():
    data = small_dataset()
    x = apply_trigger(data.x)
    assert np.all(x[:, list(TRIGGER_PIXELS)] == 1.0)
    assert not np.shares_memory(x, data.x)
    always_target = backdoor_success_rate(lambda a: np.zeros(len(a), dtype=int), data)
    never = backdoor_success_rate(lambda a: np.ones(len(a), dtype=int), data)
    assert always_target == 1.0 and never == 0.0


def test_apply_attack_is_reproducible_from_its_rng():
    delta = own_deltas()[0]
    a = apply_attack("gaussian", delta, rng=RNG(3))
    b = apply_attack("gaussian", delta, rng=RNG(3))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == delta.shape


def test_single_non_colluding_attacker_still_gets_a_valid_update():
    delta = own_deltas()[0]
    for name in ATTACKS:
        out = apply_attack(name, delta, rng=RNG(0), f=1, n=5)
        assert out.shape == delta.shape and np.all(np.isfinite(out)), name
