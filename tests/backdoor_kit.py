"""Models for the backdoor-filter tests: a clean global MLP, honest client models fine-tuned
on disjoint shards, one trained with the corner trigger, and the server's validation probe."""

from __future__ import annotations

import numpy as np
import torch

from fedgate.clients.sim.attacks import BACKDOOR_TARGET, apply_trigger, backdoor_success_rate
from fedgate.models.data import load_digits_dataset
from fedgate.strategies.aggregators.trigger_scan import ScanProbe

SHAPES = ((32, 64), (32,), (10, 32), (10,))
HONEST = 8


def train_mlp(x: np.ndarray, y: np.ndarray, seed: int, steps: int = 150) -> np.ndarray:
    """A 64-32-10 MLP trained full-batch with Adam, as flat weights (W1, b1, W2, b2)."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # tiny products: extra threads only spin on a busy machine
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), yt).backward()
        opt.step()
    return np.concatenate([p.detach().numpy().ravel() for p in net.parameters()])


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    sizes = [int(np.prod(s)) for s in SHAPES]
    w1, b1, w2, b2 = (
        p.reshape(s) for p, s in zip(np.split(w, np.cumsum(sizes)[:-1]), SHAPES, strict=True)
    )
    return (np.maximum(x @ w1.T + b1, 0) @ w2.T + b2).argmax(1)


def planted_models():
    """A clean global model, honest client models (fine-tuned on disjoint shards), a
    corner-backdoored one and the server's validation probe."""
    data = load_digits_dataset()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(data.y))
    val, train = order[:200], order[200:]
    x, y = data.x[train], data.y[train]
    glob = train_mlp(x[:600], y[:600], 0)
    shards = np.array_split(np.arange(600, len(x)), HONEST + 1)
    honest = [train_mlp(x[s], y[s], 1 + i, steps=60) for i, s in enumerate(shards[:HONEST])]
    bad_idx = shards[HONEST]
    xb = np.vstack([x[bad_idx], apply_trigger(x[bad_idx])])
    yb = np.concatenate([y[bad_idx], np.full(len(bad_idx), BACKDOOR_TARGET)])
    evil = train_mlp(xb, yb, 99)
    rate = backdoor_success_rate(lambda v: predict(evil, v), data.take(val))
    assert rate > 0.9  # the planted model does carry the trigger
    probe = ScanProbe(glob, data.x[val], data.y[val], SHAPES)
    return glob, np.array(honest), evil, probe
