"""The benchmark harness trains exactly like the ClientApp and runs attacks reproducibly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _fl_sim import (
    FLOWER_RULES,
    BatchedTrainer,
    Setting,
    fedgate_step,
    flower_replies,
    initial_weights,
    make_federation,
    run_group,
)

from fedgate.clients.profiles import PROFILES
from fedgate.models.nets import build_model, get_weights, set_weights
from fedgate.models.train import flatten, train_local, unflatten


def test_setting_uses_the_phone_profile():
    s, phone = Setting(), PROFILES["phone"]
    assert (s.epochs, s.batch_size, s.max_examples) == (
        phone.epochs,
        phone.batch_size,
        phone.max_examples,
    )


@pytest.mark.parametrize("alpha", [0.5, 0.1])
def test_batched_trainer_equals_train_local(alpha):
    setting = Setting(alpha=alpha, f=0, n=8, seed=3)
    fed = make_federation(setting)
    trainer = BatchedTrainer(fed.train, setting)
    rng = np.random.default_rng(0)
    base = initial_weights(setting.seed)
    glob = np.stack([base, base + 0.05 * rng.standard_normal(base.shape).astype(np.float32)])
    server_round = 4
    got = trainer.train(torch.from_numpy(glob), server_round).numpy()
    like = get_weights(build_model("mlp-64-32-10"))
    for r in range(2):
        for i, shard in enumerate(fed.train):
            model = build_model("mlp-64-32-10")
            set_weights(model, unflatten(glob[r], like))
            train_local(
                model,
                shard,
                epochs=setting.epochs,
                batch_size=setting.batch_size,
                lr=setting.lr,
                momentum=setting.momentum,
                max_examples=setting.max_examples,
                seed=setting.seed + 1000 * server_round + i,
            )
            want = flatten(get_weights(model))
            np.testing.assert_allclose(got[r, i], want, rtol=1e-4, atol=2e-5)


def test_flower_replies_hold_the_exact_rows():
    rows = np.random.default_rng(1).standard_normal((3, 2410)).astype(np.float32)
    replies = flower_replies(rows, np.array([5, 6, 7]), ((32, 64), (32,), (10, 32), (10,)))
    for row, msg in zip(rows, replies, strict=True):
        arrays = msg.content["arrays"].to_numpy_ndarrays()
        np.testing.assert_array_equal(flatten(arrays), row)
        assert msg.content["metrics"]["num-examples"] in (5, 6, 7)


def test_group_is_deterministic_and_identical_rules_agree():
    setting = Setting(alpha=0.5, f=2, n=8, rounds=3, seed=1)
    specs = [
        fedgate_step_spec("mean"),
        FLOWER_RULES["fedavg"],
        fedgate_step_spec("trimmed-mean"),
        FLOWER_RULES["fedtrimmedavg"],
    ]
    a = run_group(setting, "gaussian", specs)
    b = run_group(setting, "gaussian", specs)
    assert [r.accuracy for r in a] == [r.accuracy for r in b]
    # fedgate's mean / trimmed mean and Flower's FedAvg / FedTrimmedAvg(beta=(f+.5)/n) are
    # the same rules: the same updates give the same model
    assert abs(a[0].accuracy - a[1].accuracy) < 0.02
    assert abs(a[2].accuracy - a[3].accuracy) < 0.02
    assert not any(r.error for r in a)


def fedgate_step_spec(name):
    from _fl_sim import RuleSpec

    return RuleSpec(name, "fedgate", fedgate_step(name))


def test_ipm_100_breaks_fedavg_but_not_trimmed_mean():
    setting = Setting(alpha=0.5, f=4, n=20, rounds=10, seed=0)
    res = run_group(setting, "ipm-100", [FLOWER_RULES["fedavg"], fedgate_step_spec("trimmed-mean")])
    assert res[0].accuracy < 0.3
    assert res[1].accuracy > 0.6


def test_the_attack_free_run_measures_the_backdoor_floor_per_trigger():
    """Without an attacker the benchmark still measures, per trigger, the share of triggered
    test inputs the model sends to the target: the floor a defence's backdoor success is
    read against (the edge case's mirrored digits land on the target at a few percent)."""
    setting = Setting(alpha=0.5, f=2, n=8, rounds=3, seed=1)
    (res,) = run_group(setting, "none", [FLOWER_RULES["fedavg"]])
    assert res.backdoor_asr is None
    assert set(res.attack_free_asr) == {"corner", "mirror"}
    assert all(0.0 <= v <= 1.0 for v in res.attack_free_asr.values())
    (bd,) = run_group(setting, "backdoor", [FLOWER_RULES["fedavg"]])
    assert bd.attack_free_asr is None and bd.backdoor_asr is not None


def test_every_benchmark_variant_builds():
    """Each labelled variant of the robustness benchmark is a rule the region can build (a
    misspelt parameter would otherwise leave it out of the tables as "n/a")."""
    from robustness import VARIANTS, runnable

    setting = Setting(alpha=0.5, f=4, seed=0, rounds=1)
    assert [label for label in VARIANTS if not runnable(label, setting)] == []
