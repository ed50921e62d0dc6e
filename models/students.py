"""Student architectures, one per edge profile, distilled from the global teacher.

Both are the project's multi-layer perceptron (``models/nets.py: MLP``) with a narrower hidden
layer, on the same flattened 8x8 input (``(batch, 64)`` float32 in [0, 1], ten logits out), so
an edge node feeds them exactly what the teacher takes. The phone student is the smallest:

| profile | architecture id | parameters | float32 bytes | int8 ONNX file |
|---|---|---|---|---|
| ``pi`` | ``student-mlp-64-16-10`` | 1,210 | 4,840 | 2,091 bytes |
| ``phone`` | ``student-mlp-64-10-10`` | 760 | 3,040 | 1,621 bytes |

(the teacher ``mlp-64-32-10`` has 2,410 parameters, 9,968 bytes as a safetensors blob;
``cnn-small-v1`` 3,818). Eight hidden units were tried for the phone and dropped: on some
seeds a student that narrow gets stuck below 0.87 test accuracy, with or without a teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .nets import MLP


@dataclass(frozen=True)
class StudentSpec:
    """An edge profile's student: its profile name, architecture id and hidden width."""

    profile: str
    architecture: str
    hidden: int
    device: str


PROFILES: dict[str, StudentSpec] = {
    "pi": StudentSpec("pi", "student-mlp-64-16-10", 16, "Raspberry Pi class board"),
    "phone": StudentSpec("phone", "student-mlp-64-10-10", 10, "phone"),
}
DEFAULT_PROFILES: tuple[str, ...] = tuple(PROFILES)


def student_spec(profile: str) -> StudentSpec:
    try:
        return PROFILES[profile]
    except KeyError:
        raise ValueError(
            f"unknown edge profile {profile!r}; known: {', '.join(PROFILES)}"
        ) from None


def build_student(profile: str, seed: int = 0) -> nn.Module:
    """A freshly initialised student for ``profile`` (deterministic for a given seed)."""
    spec = student_spec(profile)
    torch.manual_seed(seed)
    return MLP(hidden=spec.hidden)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
