"""Model architectures by stable id, weight round trips, and that training really learns."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch

from fedgate.models.data import load_digits_dataset, region_pool, region_validation
from fedgate.models.ids import DEFAULT_MODEL, MODEL_IDS
from fedgate.models.nets import MODELS, build_model, get_weights, set_weights
from fedgate.models.train import evaluate, flatten, train_local, unflatten


def test_ids_are_stable_and_complete() -> None:
    assert MODEL_IDS == ("mlp-64-32-10", "cnn-small-v1")
    assert tuple(MODELS) == MODEL_IDS and DEFAULT_MODEL in MODEL_IDS
    with pytest.raises(ValueError, match="unknown model id"):
        build_model("resnet-152")


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_models_map_digits_to_ten_logits(model_id: str) -> None:
    model = build_model(model_id, seed=0)
    out = model(torch.zeros(5, 64))
    assert out.shape == (5, 10)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_same_seed_same_weights_and_round_trip(model_id: str) -> None:
    a, b = build_model(model_id, seed=1), build_model(model_id, seed=1)
    wa = get_weights(a)
    assert all(np.array_equal(x, y) for x, y in zip(wa, get_weights(b), strict=True))
    c = build_model(model_id, seed=2)
    assert any(not np.array_equal(x, y) for x, y in zip(wa, get_weights(c), strict=True))
    set_weights(c, wa)
    assert all(np.array_equal(x, y) for x, y in zip(wa, get_weights(c), strict=True))
    assert all(np.array_equal(x, y) for x, y in zip(wa, unflatten(flatten(wa), wa), strict=True))


def test_set_weights_refuses_wrong_shapes() -> None:
    model = build_model("mlp-64-32-10")
    weights = get_weights(model)
    with pytest.raises(ValueError, match="tensors"):
        set_weights(model, weights[:-1])
    weights[0] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="expected shape"):
        set_weights(model, weights)


@pytest.mark.parametrize("model_id", MODEL_IDS)
def test_local_training_learns_digits(model_id: str) -> None:
    regions = ("eu", "us")
    train, val = region_pool("eu", regions), region_validation("eu", regions)
    model = build_model(model_id, seed=0)
    before = evaluate(model, val)
    stats = train_local(model, train, epochs=5, batch_size=32, lr=0.1, seed=0)
    after = evaluate(model, val)
    assert stats.num_examples == len(train) and stats.steps > 0
    assert before.accuracy < 0.25
    assert after.accuracy > 0.85, after
    assert after.loss < before.loss


def test_training_caps_examples_and_rejects_empty_data() -> None:
    train = region_pool("eu", ("eu", "us"))
    stats = train_local(build_model("mlp-64-32-10"), train, max_examples=50, batch_size=16)
    assert stats.num_examples == 50 and stats.steps == 4
    with pytest.raises(ValueError, match="no training examples"):
        train_local(build_model("mlp-64-32-10"), train.take(np.arange(0)))


def test_train_local_is_torch_sgd_bit_for_bit_without_importing_torch_optim() -> None:
    """``MomentumSGD`` repeats ``torch.optim.SGD(lr, momentum)`` exactly; a device process
    that trains never imports ``torch._dynamo`` (what constructing a torch optimizer does)."""
    data = load_digits_dataset()
    model = build_model("mlp-64-32-10", seed=0)
    ref = copy.deepcopy(model)
    train_local(model, data, epochs=2, batch_size=16, lr=0.1, max_examples=200, seed=3)
    gen = torch.Generator().manual_seed(3)
    x, y = torch.from_numpy(data.x[:200]), torch.from_numpy(data.y[:200])
    opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    ref.train()
    for _ in range(2):
        perm = torch.randperm(200, generator=gen)
        for start in range(0, 200, 16):
            opt.zero_grad()
            idx = perm[start : start + 16]
            torch.nn.functional.cross_entropy(ref(x[idx]), y[idx]).backward()
            opt.step()
    for got, want in zip(model.state_dict().values(), ref.state_dict().values(), strict=True):
        assert torch.equal(got, want)
    code = (
        "import sys; from fedgate.models.data import load_digits_dataset as d; "
        "from fedgate.models.nets import build_model; from fedgate.models.train import "
        "train_local; train_local(build_model('mlp-64-32-10', seed=0), d(), max_examples=64); "
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
