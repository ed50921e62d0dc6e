"""Knowledge distillation: a student learns from the teacher's temperature-softened outputs and
the true labels of the transfer split (Hinton et al., 2015).

The loss is ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``; the
``T^2`` keeps the soft term's gradients on the scale of the hard term's. The no-distillation
baseline is the same loop with ``alpha = 0`` (hard labels only): same architecture, same data,
same optimiser, same steps and seed, so the only difference is the teacher.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .data import Dataset


@dataclass(frozen=True)
class DistillConfig:
    """Chosen by measurement on digits (docs/distill.md): T=4, alpha=0.9, 800 Adam steps at
    0.01."""

    temperature: float = 4.0
    alpha: float = 0.9
    steps: int = 800
    batch_size: int = 128
    lr: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.steps < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    alpha: float,
) -> torch.Tensor:
    """Soft-target KL at ``temperature`` (scaled by T^2) blended with hard-label CE."""
    hard = F.cross_entropy(student_logits, labels)
    if alpha == 0.0:
        return hard
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits / t, dim=1),
        F.log_softmax(teacher_logits / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * soft * t * t + (1.0 - alpha) * hard


@torch.no_grad()
def teacher_logits(teacher: nn.Module, data: Dataset) -> torch.Tensor:
    """The teacher's logits on every example (computed once: the teacher is frozen)."""
    teacher.eval()
    return teacher(torch.from_numpy(data.x)).detach()


def train_student(
    student: nn.Module,
    data: Dataset,
    soft: torch.Tensor | None,
    config: DistillConfig,
    progress: Callable[[int, float], None] | None = None,
) -> float:
    """Train ``student`` on ``data`` with the teacher's logits ``soft`` (None: hard labels
    only, the baseline); ``progress(step, loss)`` every tenth of the way. Returns the last
    loss."""
    if len(data) == 0:
        raise ValueError("no transfer examples")
    if soft is not None and soft.shape[0] != len(data):
        raise ValueError(f"teacher logits have {soft.shape[0]} rows, the data {len(data)}")
    gen = torch.Generator().manual_seed(config.seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    alpha = 0.0 if soft is None else config.alpha
    opt = torch.optim.Adam(student.parameters(), lr=config.lr)
    student.train()
    every = max(1, config.steps // 10)
    loss = torch.tensor(0.0)
    for step in range(1, config.steps + 1):
        idx = torch.randint(0, len(data), (config.batch_size,), generator=gen)
        out = student(x[idx])
        target = soft[idx] if soft is not None else out.detach()
        loss = kd_loss(out, target, y[idx], config.temperature, alpha)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None and (step % every == 0 or step == config.steps):
            progress(step, float(loss.detach()))
    student.eval()
    return float(loss.detach())
