"""Knowledge distillation: a student learns from the teacher's temperature-softened outputs and
the true labels of the transfer split (Hinton et al., 2015).

The loss is ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y)``; the
``T^2`` keeps the soft term's gradients on the scale of the hard term's.

``distill_pair`` is the recipe ``fedgate distill`` runs (docs/distill.md, measured there):

* the teacher's logits are *adjusted* where it is wrong on a transfer example: its top logit
  and the true class's trade places (knowledge adjustment, Wen et al., 2021), so the soft
  targets never contradict the label and a weak teacher still lends its class similarities;
* inputs are augmented with pixel noise (several noisy copies of the transfer split, drawn
  once); the teacher is queried on exactly the inputs the student sees;
* alpha and the noise level are chosen by k-fold cross-validation on the transfer split
  (never the test split); the baseline (hard labels only, ``alpha = 0``) gets the same
  augmented inputs and chooses its noise level by the same cross-validation, so it is tuned
  as well as the student is;
* then the chosen student and the chosen baseline are trained on the whole transfer split from
  the same initial weights, with the same optimiser, steps and seed.

All candidates of a step (every fold and setting, then the final pair) are trained at once as
one batched network: the same arithmetic as training them one by one, for about the time of
one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data import Dataset


@dataclass(frozen=True)
class DistillConfig:
    """Chosen by measurement on digits (docs/distill.md): T=4, 800 Adam steps at 0.01; alpha
    (for ``train_student``; ``distill_pair`` chooses among ``alphas``) and the noise level
    (among ``noises``; the baseline's among ``baseline_noises``) by ``folds``-fold
    cross-validation, on ``copies`` noisy copies of the transfer split."""

    temperature: float = 4.0
    alpha: float = 0.9
    steps: int = 800
    batch_size: int = 128
    lr: float = 0.01
    seed: int = 0
    alphas: tuple[float, ...] = (0.1, 0.3, 0.9)
    noises: tuple[float, ...] = (0.05, 0.1)
    baseline_noises: tuple[float, ...] = (0.0, 0.05, 0.1)
    folds: int = 3
    copies: int = 8
    cv_steps: int = 300  # the cross-validation's students: shorter, at a higher rate
    cv_lr: float = 0.02

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not all(0.0 <= a <= 1.0 for a in (self.alpha, *self.alphas)):
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}, {self.alphas}")
        if min(self.steps, self.cv_steps, self.batch_size) < 1 or min(self.lr, self.cv_lr) <= 0:
            raise ValueError("steps and batch_size must be >= 1 and lr > 0")
        levels = (*self.noises, *self.baseline_noises)
        if not self.alphas or not self.noises or not self.baseline_noises or min(levels) < 0:
            raise ValueError("alphas and noises must be non-empty, noise levels >= 0")
        if self.folds < 2 or self.copies < 1:
            raise ValueError(f"folds must be >= 2 and copies >= 1, got {self.folds}, "
                             f"{self.copies}")  # fmt: skip


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


def adjust_teacher(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Knowledge adjustment: where the teacher's top class is not the label, swap the two
    logits, so the label is the teacher's top class and the rest of its ranking is kept."""
    out = logits.clone()
    rows = torch.arange(len(labels))
    top = logits.argmax(1)
    out[rows, top] = logits[rows, labels]
    out[rows, labels] = logits[rows, top]
    return out


@dataclass(frozen=True)
class Setting:
    """One candidate: ``alpha`` (0: the baseline, hard labels only) and input noise."""

    alpha: float
    noise: float


@dataclass(frozen=True)
class PairResult:
    """The distilled student and the baseline, the settings cross-validation chose for each,
    and every candidate's cross-validated accuracy on the transfer split."""

    student: nn.Module
    baseline: nn.Module
    student_setting: Setting
    baseline_setting: Setting
    cv_accuracy: dict[Setting, float] = field(default_factory=dict)


def _noisy_copies(
    x: torch.Tensor, noises: Sequence[float], copies: int, gen: torch.Generator
) -> torch.Tensor:
    """(levels, copies, n, 64): the inputs with Gaussian pixel noise, clipped to [0, 1]."""
    out = torch.empty(len(noises), copies, *x.shape)
    for i, sigma in enumerate(noises):
        for c in range(copies):
            noise = torch.randn(x.shape, generator=gen) * sigma
            out[i, c] = (x + noise).clamp(0.0, 1.0)
    return out


class _Batched(nn.Module):
    """K copies of one MLP student trained side by side (``bmm``); the same arithmetic as K
    separate students, since Adam and the losses are per parameter and per model."""

    def __init__(self, template: nn.Module, k: int) -> None:
        super().__init__()
        state = template.state_dict()
        self.w1 = nn.Parameter(state["fc1.weight"].T.repeat(k, 1, 1).clone())
        self.b1 = nn.Parameter(state["fc1.bias"].repeat(k, 1, 1).clone())
        self.w2 = nn.Parameter(state["fc2.weight"].T.repeat(k, 1, 1).clone())
        self.b2 = nn.Parameter(state["fc2.bias"].repeat(k, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (k, b, 64) -> (k, b, 10)
        return torch.relu(x @ self.w1 + self.b1) @ self.w2 + self.b2

    def export(self, i: int, into: nn.Module) -> nn.Module:
        into.load_state_dict({
            "fc1.weight": self.w1[i].T.detach().clone(), "fc1.bias": self.b1[i, 0].detach().clone(),
            "fc2.weight": self.w2[i].T.detach().clone(), "fc2.bias": self.b2[i, 0].detach().clone(),
        })  # fmt: skip
        return into.eval()


def _train_batched(
    template: nn.Module,
    xs: torch.Tensor,
    soft: torch.Tensor,
    y: torch.Tensor,
    runs: list[tuple[int, float, np.ndarray]],
    config: DistillConfig,
    gen: torch.Generator,
    progress: Callable[[int, float], None] | None,
) -> _Batched:
    """Train one student per run ``(noise level index, alpha, training indices)``, all from
    ``template``'s weights, on minibatches of the noisy copies ``xs`` with the teacher's
    (adjusted) logits ``soft`` on exactly those inputs."""
    k, t = len(runs), config.temperature
    model = _Batched(template, k)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    levels = torch.tensor([r[0] for r in runs])[:, None]
    alphas = torch.tensor([r[1] for r in runs])
    sizes = torch.tensor([len(r[2]) for r in runs])[:, None]
    width = int(sizes.max())
    pick = torch.stack([torch.from_numpy(np.resize(r[2], width)) for r in runs])
    every = max(1, config.steps // 10)
    model.train()
    for step in range(1, config.steps + 1):
        pos = (torch.rand(k, config.batch_size, generator=gen) * sizes).long()
        idx = torch.gather(pick, 1, pos)
        copy = torch.randint(0, xs.shape[1], (k, config.batch_size), generator=gen)
        out = model(xs[levels, copy, idx])
        hard = F.cross_entropy(out.reshape(-1, out.shape[-1]), y[idx].reshape(-1),
                               reduction="none").view(k, -1).mean(1)  # fmt: skip
        kl = F.kl_div(F.log_softmax(out / t, -1), F.log_softmax(soft[levels, copy, idx] / t, -1),
                      reduction="none", log_target=True).sum(-1).mean(1)  # fmt: skip
        loss = (alphas * t * t * kl + (1.0 - alphas) * hard).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if progress is not None and (step % every == 0 or step == config.steps):
            progress(step, float(loss.detach()) / k)
    return model.eval()


def _folds(y: np.ndarray, k: int, gen: torch.Generator) -> list[np.ndarray]:
    """``k`` stratified folds of the indices of ``y``."""
    parts: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[torch.randperm(len(idx), generator=gen).numpy()]
        for i, chunk in enumerate(np.array_split(idx, k)):
            parts[(i + int(c)) % k].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


def distill_pair(
    student_factory: Callable[[], nn.Module],
    teacher: nn.Module,
    data: Dataset,
    config: DistillConfig,
    progress: Callable[[str, int, float], None] | None = None,
) -> PairResult:
    """The recipe in this module's docstring: cross-validate the settings, then train the
    chosen student and the chosen baseline on all of ``data``. ``student_factory()`` gives the
    same initial weights on every call; ``progress(phase, step, loss)``."""
    if len(data) < 2 * config.folds:
        raise ValueError(f"{len(data)} transfer examples are too few for {config.folds} folds")
    gen = torch.Generator().manual_seed(config.seed)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    levels = sorted({*config.noises, *config.baseline_noises})
    xs = _noisy_copies(x, levels, config.copies, gen)
    teacher.eval()
    with torch.no_grad():
        flat = teacher(xs.reshape(-1, x.shape[1]))
    labels = y.repeat(len(levels) * config.copies)
    soft = adjust_teacher(flat, labels).view(*xs.shape[:3], -1)
    settings = [Setting(0.0, n) for n in config.baseline_noises]
    settings += [Setting(a, n) for a in config.alphas for n in config.noises if a > 0]
    folds = _folds(data.y, config.folds, gen)
    everything = np.arange(len(data))
    runs = [(levels.index(s.noise), s.alpha, np.setdiff1d(everything, held))
            for s in settings for held in folds]  # fmt: skip
    template = student_factory()

    def say(phase: str) -> Callable[[int, float], None] | None:
        return None if progress is None else (lambda i, loss: progress(phase, i, loss))

    cv_config = replace(config, steps=config.cv_steps, lr=config.cv_lr)
    cv = _train_batched(template, xs, soft, y, runs, cv_config, gen, say("cross-validation"))
    correct = dict.fromkeys(settings, 0)
    with torch.no_grad():
        for i, (s, held) in enumerate((s, h) for s in settings for h in folds):
            held_x = x[torch.from_numpy(held)][None].expand(len(runs), -1, -1)
            pred = cv(held_x)[i].argmax(1)
            correct[s] += int((pred == y[torch.from_numpy(held)]).sum())
    accuracy = {s: correct[s] / len(data) for s in settings}

    def best(candidates: list[Setting]) -> Setting:  # ties: the first (less noise, less alpha)
        return max(candidates, key=lambda s: accuracy[s])

    chosen_base = best([s for s in settings if s.alpha == 0])
    chosen_kd = best([s for s in settings if s.alpha > 0])
    final = [(levels.index(s.noise), s.alpha, everything) for s in (chosen_kd, chosen_base)]
    pair = _train_batched(template, xs, soft, y, final, config, gen, say("final"))
    return PairResult(
        pair.export(0, student_factory()), pair.export(1, student_factory()), chosen_kd,
        chosen_base, accuracy,
    )  # fmt: skip
