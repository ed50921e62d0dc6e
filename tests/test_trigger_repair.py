"""The trigger repair (issue 19): a backdoor in the aggregate is found and unlearned, a
remembered trigger keeps out the devices that push it, clean models are left alone, fates do
not depend on the clients' order, and the filter composes with FoolsGold in the ensemble."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from backdoor_kit import HONEST, planted_models, predict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.clients.sim.attacks import BACKDOOR_TARGET, TRIGGER_PIXELS, TRIGGER_VALUE
from fedgate.strategies.aggregators import AggregatorConfigError, make_aggregator
from fedgate.strategies.aggregators.trigger_repair import (
    Trigger,
    TriggerRepair,
    TriggerRepairFilter,
    attribution,
    unlearn,
)
from fedgate.strategies.aggregators.trigger_scan import robust_index


@pytest.fixture(scope="module")
def models():
    return planted_models()


def corner_trigger() -> Trigger:
    mask = np.zeros(64)
    mask[list(TRIGGER_PIXELS)] = 1.0
    return Trigger(BACKDOOR_TARGET, mask, np.full(64, TRIGGER_VALUE), anomaly=10.0)


def success(w: np.ndarray, probe) -> float:
    keep = probe.y != BACKDOOR_TARGET
    return float(np.mean(predict(w, corner_trigger().stamp(probe.x[keep])) == BACKDOOR_TARGET))


def accuracy(w: np.ndarray, probe) -> float:
    return float(np.mean(predict(w, probe.x) == probe.y))


def test_a_backdoor_in_the_aggregate_is_found_and_unlearned(models):
    glob, _, evil, probe = models
    rule = make_aggregator("mean", 0, pre="trigger-repair")
    assert rule.name == "trigger-repair+mean"
    rule.set_probe(probe)
    res = rule(np.repeat((evil - glob)[None], 8, axis=0))
    repaired = glob + res.vector
    assert success(evil, probe) > 0.9
    assert success(repaired, probe) < 0.1
    assert accuracy(repaired, probe) >= accuracy(evil, probe) - 0.03
    assert f"found class {BACKDOOR_TARGET}" in res.note
    assert f"unlearned class {BACKDOOR_TARGET}" in res.note
    assert BACKDOOR_TARGET in rule.screen.memory
    assert all(d.fate == "kept" for d in res.diagnostics)  # nothing remembered yet


def test_a_clean_aggregate_keeps_its_accuracy(models):
    """A clean model is left as it is, or (a class whose mask happens to be small) fine-tuned
    on the validation data without losing accuracy on it."""
    glob, honest, _, probe = models
    for model in honest[:3]:
        rule = make_aggregator("mean", 0, pre="trigger-repair")
        rule.set_probe(probe)
        delta = model - glob
        res = rule(np.repeat(delta[None], 8, axis=0))
        if "no trigger found" in res.note:
            np.testing.assert_allclose(res.vector, delta, rtol=1e-6, atol=1e-6)
        else:
            assert "found class" in res.note and "unlearned class" in res.note
            assert accuracy(glob + res.vector, probe) >= accuracy(model, probe) - 0.02


def test_unlearning_toward_its_own_outputs_reads_no_label(models):
    """``unlearn_to="own"``: the trigger goes, the model keeps its clean answers, and the
    labels are never read (shuffled labels give the very same model)."""
    _, _, evil, probe = models
    found, _ = TriggerRepair().detect(evil.astype(np.float64), probe)
    assert [t.target for t in found][:1] == [BACKDOOR_TARGET]
    shuffled = dataclasses.replace(probe, y=np.random.default_rng(0).permutation(probe.y))
    repaired = unlearn(evil.astype(np.float64), probe, found, 60, 0.05, to="own")
    np.testing.assert_array_equal(
        repaired, unlearn(evil.astype(np.float64), shuffled, found, 60, 0.05, to="own")
    )
    assert success(evil, probe) > 0.9
    assert success(repaired, probe) < 0.15
    assert np.mean(predict(repaired, probe.x) == predict(evil, probe.x)) >= 0.9


def test_a_false_detection_unlearned_toward_own_outputs_changes_few_answers(models):
    """On clean models a class whose mask happens to be small is "found"; unlearning it
    toward the model's own outputs leaves at least 95% of its validation answers as they
    were (toward the labels it would fit the split instead)."""
    glob, honest, _, probe = models
    found_any = False
    for model in honest[:4]:
        rule = TriggerRepairFilter(make_aggregator("mean", 0), TriggerRepair(unlearn_to="own"))
        rule.set_probe(probe)
        res = rule(np.repeat((model - glob)[None], 8, axis=0))
        found_any |= "unlearned class" in res.note
        assert np.mean(predict(glob + res.vector, probe.x) == predict(model, probe.x)) >= 0.95
    assert found_any  # the planted honest models include false detections to test


def test_a_found_trigger_is_unlearned_for_unlearn_for_rounds(models):
    """``unlearn_for``: a trigger found once is still unlearned in the following rounds whose
    search finds nothing (here: a detection threshold nothing reaches), then no longer."""
    glob, _, evil, probe = models
    repair = TriggerRepair(unlearn_for=2, detect_threshold=100.0)
    repair.remember(corner_trigger())  # as if found in the round before the first
    rule = TriggerRepairFilter(make_aggregator("mean", 0), repair)
    delta = np.repeat((evil - glob)[None], 8, axis=0)
    notes = []
    for _ in range(3):
        rule.set_probe(probe)
        res = rule(delta)
        notes.append(res.note)
        if len(notes) < 3:
            assert success(glob + res.vector, probe) < 0.1
    assert "no trigger found" in notes[0]
    assert f"unlearned class {BACKDOOR_TARGET} (found 1 rounds ago)" in notes[0]
    assert f"unlearned class {BACKDOOR_TARGET} (found 2 rounds ago)" in notes[1]
    assert "unlearned" not in notes[2]  # three rounds after: no longer
    np.testing.assert_allclose(res.vector, evil - glob, rtol=1e-6, atol=1e-6)
    found_only = TriggerRepair(unlearn_for=0, detect_threshold=100.0)
    found_only.remember(corner_trigger())
    rule = TriggerRepairFilter(make_aggregator("mean", 0), found_only)
    rule.set_probe(probe)
    assert "unlearned" not in rule(delta).note  # unlearn_for=0: only what this round found


def test_a_remembered_trigger_keeps_out_the_device_that_pushes_it(models):
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None]]) - glob
    score = attribution(deltas, probe, [corner_trigger()])
    assert score[-1] == score.max() and score[-1] > TriggerRepair().attribution_threshold
    rule = make_aggregator("mean", 2, pre="trigger-repair")  # it drops at most f rows
    rule.screen.remember(corner_trigger())
    rule.set_probe(probe)
    res = rule(deltas)
    assert res.diagnostics[-1].fate == "dropped" and res.diagnostics[-1].weight == 0
    assert res.diagnostics[-1].score == pytest.approx(score[-1], rel=1e-6)
    assert [d.fate for d in res.diagnostics[:-1]] == ["kept"] * HONEST
    assert "trigger-repair: dropped 1/9" in res.note


def test_a_remembered_trigger_drops_devices_for_attribute_for_rounds(models):
    """``attribute_for``: the device pushing a trigger found once is dropped in the next
    ``attribute_for`` rounds whose search finds nothing, then kept; ``0`` never drops."""
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None]]) - glob
    repair = TriggerRepair(attribute_for=2, unlearn_for=0, detect_threshold=100.0)
    repair.remember(corner_trigger())  # as if found in the round before the first
    rule = TriggerRepairFilter(make_aggregator("mean", 2), repair)
    fates = []
    for _ in range(3):
        rule.set_probe(probe)
        res = rule(deltas)
        fates.append(res.diagnostics[-1].fate)
        assert all(d.fate == "kept" for d in res.diagnostics[:-1])
    assert fates == ["dropped", "dropped", "kept"]
    assert "dropped" not in res.note.split("trigger-repair")[-1]  # nothing attributed any more
    never = TriggerRepair(attribute_for=0, detect_threshold=100.0)
    never.remember(corner_trigger())
    rule = TriggerRepairFilter(make_aggregator("mean", 2), never)
    rule.set_probe(probe)
    assert rule(deltas).diagnostics[-1].fate == "kept"


def test_a_trigger_found_in_two_rounds_drops_devices_for_ever(models):
    """``persistent_after``: a class found once drops nobody after its ``attribute_for``
    window (here 0); found in a second round, its trigger drops the device every round."""
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None]]) - glob
    repair = TriggerRepair(
        attribute_for=0, persistent_after=2, unlearn_for=0, detect_threshold=100.0
    )
    rule = TriggerRepairFilter(make_aggregator("mean", 2), repair)
    repair.remember(corner_trigger())
    repair.remember(corner_trigger())  # the same round again: still found once
    rule.set_probe(probe)
    assert rule(deltas).diagnostics[-1].fate == "kept"
    repair.remember(corner_trigger())  # found in a second round
    for _ in range(3):
        rule.set_probe(probe)
        assert rule(deltas).diagnostics[-1].fate == "dropped"


@settings(max_examples=4, deadline=None)
@given(st.permutations(list(range(HONEST + 1))))
def test_the_clients_order_does_not_change_fates(models, order):
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None]]) - glob
    fates = []
    for rows in (deltas, deltas[order]):
        rule = make_aggregator("mean", 2, pre="trigger-repair")
        rule.screen.remember(corner_trigger())
        rule.set_probe(probe)
        fates.append([d.fate for d in rule(rows).diagnostics])
    assert fates[1] == [fates[0][i] for i in order]


def test_without_a_probe_or_with_few_updates_the_repair_stands_aside(models):
    glob, honest, evil, probe = models
    rule = make_aggregator("mean", 0, pre="trigger-repair")
    res = rule(np.vstack([honest, evil[None]]) - glob)
    assert "trigger-repair: off (no probe)" in res.note
    rule.set_probe(probe)
    res = rule(np.vstack([honest[:3], evil[None]]) - glob)
    assert "trigger-repair: off (4 updates" in res.note
    assert all(d.fate == "kept" for d in res.diagnostics)


def test_the_ensemble_chains_the_repair_and_foolsgold_and_drops_at_most_f(models):
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None]]) - glob
    ens = make_aggregator("ensemble", 1, filter="trigger-repair+foolsgold")
    ens._repair.remember(corner_trigger())
    ens.set_probe(probe)
    ens.set_scorer(lambda d: np.full(5, float(np.linalg.norm(d))))
    res = ens(deltas)
    assert "trigger-repair: dropped" in res.note and "foolsgold:" in res.note
    assert sum(d.weight for d in res.diagnostics) == pytest.approx(1.0)
    assert res.diagnostics[HONEST].fate == "dropped"
    assert "trigger-repair: dropped 1/9" in res.note


def test_robust_index_is_zero_for_equal_values_and_signed():
    assert np.all(robust_index(np.full(7, 3.0)) == 0)
    v = np.array([1.0, 1.1, 0.9, 1.0, 5.0])
    idx = robust_index(v)
    assert idx[-1] > 10 and abs(idx[0]) < 1e-9


@pytest.mark.parametrize(
    "params",
    [
        {"detect_threshold": 0},
        {"attribution_threshold": float("nan")},
        {"unlearn_steps": 0},
        {"search_steps": 0},
        {"lam": -1.0},
        {"unlearn_lr": -0.1},
        {"unlearn_to": "labels-and-more"},
        {"search_examples": 0},
        {"unlearn_for": -1},
        {"attribute_for": -1},
        {"persistent_after": 0},
    ],
)
def test_bad_parameters_are_refused(params):
    with pytest.raises(AggregatorConfigError, match="trigger-repair"):
        TriggerRepair(**params)


def test_at_most_f_rows_are_dropped(models):
    glob, honest, evil, probe = models
    deltas = np.vstack([honest, evil[None], evil[None], evil[None]]) - glob
    rule = make_aggregator("mean", 1, pre="trigger-repair")
    rule.screen.remember(corner_trigger())
    rule.set_probe(probe)
    res = rule(deltas)
    assert sum(d.fate == "dropped" for d in res.diagnostics) <= 1
