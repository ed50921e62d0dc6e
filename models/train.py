"""Local training and evaluation, shared by the ClientApp, the servers and the benchmarks."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import Dataset


@dataclass(frozen=True)
class TrainStats:
    loss: float
    num_examples: int
    steps: int


@dataclass(frozen=True)
class EvalStats:
    loss: float
    accuracy: float
    num_examples: int


def train_local(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 1,
    batch_size: int = 32,
    lr: float = 0.1,
    momentum: float = 0.9,
    max_examples: int | None = None,
    step_delay: float = 0.0,
    seed: int = 0,
) -> TrainStats:
    """Plain mini-batch SGD with momentum on ``data`` (optionally capped and slowed down)."""
    n = len(data) if max_examples is None else min(len(data), max_examples)
    if n == 0:
        raise ValueError("no training examples")
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(data.x[:n])
    y = torch.from_numpy(data.y[:n])
    opt = MomentumSGD(list(model.parameters()), lr=lr, momentum=momentum)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, seen, steps = 0.0, 0, 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
            steps += 1
            if step_delay > 0:
                time.sleep(step_delay)
    return TrainStats(loss=total / seen, num_examples=n, steps=steps)


class MomentumSGD:
    """``torch.optim.SGD(params, lr, momentum)`` (no dampening, Nesterov or weight decay),
    its single-tensor update on CPU, step for step and bit for bit, without ``torch.optim``:
    constructing a ``torch.optim`` optimizer imports ``torch._dynamo`` (with SymPy, ONNX
    and the distributed stack: about 800 modules, +71 MiB in every device process)."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float) -> None:
        self.params, self.lr, self.momentum = params, lr, momentum
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            buf = self.buffers[i]
            if buf is None:
                buf = self.buffers[i] = torch.clone(p.grad).detach()
            else:
                buf.mul_(self.momentum).add_(p.grad, alpha=1)
            p.add_(buf, alpha=-self.lr)


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset) -> EvalStats:
    """Cross-entropy loss and accuracy of ``model`` on ``data``."""
    if len(data) == 0:
        raise ValueError("no evaluation examples")
    model.eval()
    logits = model(torch.from_numpy(data.x))
    y = torch.from_numpy(data.y)
    loss = float(nn.functional.cross_entropy(logits, y))
    acc = float((logits.argmax(1) == y).float().mean())
    return EvalStats(loss=loss, accuracy=acc, num_examples=len(data))


def example_losses(model: nn.Module, data: Dataset) -> np.ndarray:
    """Per-example cross-entropy of ``model`` on ``data`` (float64, one entry per example)."""
    if len(data) == 0:
        raise ValueError("no evaluation examples")
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x))
        losses = nn.functional.cross_entropy(logits, torch.from_numpy(data.y), reduction="none")
    return losses.numpy().astype(np.float64)


def flatten(weights: list[np.ndarray]) -> np.ndarray:
    """Concatenate arrays into one float32 vector (the aggregators' view of a model)."""
    return np.concatenate([np.asarray(w, dtype=np.float32).ravel() for w in weights])


def unflatten(vector: np.ndarray, like: list[np.ndarray]) -> list[np.ndarray]:
    """Inverse of ``flatten`` given arrays with the target shapes."""
    out, pos = [], 0
    for w in like:
        out.append(vector[pos : pos + w.size].reshape(w.shape).astype(np.float32))
        pos += w.size
    if pos != vector.size:
        raise ValueError(f"vector has {vector.size} values, shapes need {pos}")
    return out
