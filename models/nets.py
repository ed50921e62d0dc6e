"""Model architectures, each identified by a stable id that artifacts and configs refer to."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from fedgate.models.ids import MODEL_IDS

from .data import NUM_CLASSES, NUM_FEATURES


class MLP(nn.Module):
    """Multi-layer perceptron 64-32-10 on flattened 8x8 digits."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(NUM_FEATURES, hidden)
        self.fc2 = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class SmallCNN(nn.Module):
    """Two 3x3 convolutions and a linear head on 1x8x8 digits (about 6k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        x = torch.relu(self.conv1(x))
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "mlp-64-32-10": MLP,
    "cnn-small-v1": SmallCNN,
}
assert tuple(MODELS) == MODEL_IDS, "models/ids.py must list every architecture"


def build_model(model_id: str, seed: int | None = 0) -> nn.Module:
    """A freshly initialised model for ``model_id`` (deterministic for a given seed)."""
    try:
        factory = MODELS[model_id]
    except KeyError:
        raise ValueError(
            f"unknown model id {model_id!r}; known: {', '.join(sorted(MODELS))}"
        ) from None
    if seed is not None:
        torch.manual_seed(seed)
    return factory()


def get_weights(model: nn.Module) -> list[np.ndarray]:
    """Parameters as float32 numpy arrays in ``state_dict`` order."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    """Load arrays produced by ``get_weights`` (shapes must match exactly)."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ValueError(f"model has {len(keys)} tensors, got {len(weights)} arrays")
    state = {}
    for k, w, ref in zip(keys, weights, model.state_dict().values(), strict=True):
        if tuple(w.shape) != tuple(ref.shape):
            raise ValueError(f"tensor {k}: expected shape {tuple(ref.shape)}, got {w.shape}")
        state[k] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    model.load_state_dict(state)
