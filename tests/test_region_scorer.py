"""The region server's scorer gives the same losses from a flat vector as from an ArrayRecord,
and the strategy hands the ensemble the flat form."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fedgate.models.data import common_test_split, region_validation
from fedgate.models.nets import build_model
from fedgate.server.region.app import RegionModel
from fedgate.strategies.aggregators import make_aggregator
from fedgate.strategies.robust_strategy import RobustStrategy
from fedgate.strategies.train_round import flatten_record


@pytest.fixture(scope="module")
def judged() -> RegionModel:
    model = build_model("mlp-64-32-10", seed=0)
    return RegionModel(model, region_validation("eu", ("eu", "us"), 0), common_test_split(0))


def test_the_flat_scorer_agrees_with_the_record_scorer(judged: RegionModel) -> None:
    arrays = ArrayRecord(build_model("mlp-64-32-10", seed=3).state_dict())
    vector = flatten_record(arrays)
    np.testing.assert_allclose(judged.losses_of_vector(vector), judged.losses(arrays), rtol=1e-6)
    with pytest.raises(ValueError, match="a vector of 3 values for a model of"):
        judged.losses_of_vector(vector[:3])


def test_the_strategy_scores_candidates_through_the_flat_form(judged: RegionModel) -> None:
    calls: list[str] = []
    scorer = judged.scorer()
    flat = scorer.of_vector
    scorer.of_vector = lambda v: calls.append("flat") or flat(v)
    ensemble = make_aggregator("ensemble", 1)
    strategy = RobustStrategy(ensemble, clients_per_round=5, min_clients=3, scorer=scorer)
    current = ArrayRecord(judged.model.state_dict())
    base = flatten_record(current)
    strategy._offer_scorer(base, current)
    losses = ensemble._scorer(np.zeros_like(base))
    assert calls == ["flat"]
    np.testing.assert_allclose(losses, judged.losses(current), rtol=1e-6)


@pytest.mark.parametrize("model_id", ["mlp-64-32-10", "cnn-small-v1"])
def test_the_flat_scorer_is_the_record_scorer_exactly(model_id: str) -> None:
    """Bit for bit, for both architectures, also when a float64 vector is given."""
    judged = RegionModel(
        build_model(model_id, seed=0),
        region_validation("eu", ("eu", "us"), 0),
        common_test_split(0),
    )
    for seed in (3, 4):
        arrays = ArrayRecord(build_model(model_id, seed=seed).state_dict())
        vector = flatten_record(arrays)
        want = judged.losses(arrays)
        assert np.array_equal(judged.losses_of_vector(vector), want)
        assert np.array_equal(judged.losses_of_vector(vector.astype(np.float64)), want)
