"""Trigger repair: find a patch backdoor in the round's aggregate, unlearn it, and keep out
the devices that push the trigger found (Neural Cleanse's detection and unlearning, Wang et
al., S&P 2019, run by the server on the aggregate every round, with a memory of triggers).

Each round, with the server's validation data and the global weights (the probe):

1. **attribute**: for every trigger remembered from earlier rounds (target class ``t``,
   mask ``m``, pattern ``p``; by default all of them, or those last found in the last
   ``attribute_for`` rounds and those of a class found in ``persistent_after`` rounds or
   more), every row's candidate model ``global + row`` is scored by how
   much it raises the mean log-probability of ``t`` on the validation inputs not of class
   ``t`` carrying the trigger, beyond what it does to the same inputs without it (relative to
   the global model); a score's anomaly index against the rows' median and MAD above
   ``attribution_threshold`` **drops** the row (at most ``max_dropped``, the highest first;
   the rule behind keeps the rows it needs);
2. the rule behind aggregates the rows kept;
3. **detect**: on the candidate ``global + aggregate``, the smallest mask and pattern that
   turn validation inputs into each class are reverse-engineered
   (:func:`~fedgate.strategies.aggregators.trigger_scan.reverse_engineer`); a class whose
   mask norm is anomalously small against the other classes' (median/MAD index above
   ``detect_threshold``) is a found trigger, remembered with the last ``remembered - 1``
   found for its class (by default it replaces the class's older one);
4. **unlearn**: if a trigger was found this round, or (``unlearn_for``) a remembered one
   in the last ``unlearn_for`` rounds, the candidate is fine-tuned on the validation inputs plus
   their copies carrying each such trigger (``unlearn_steps`` SGD steps), toward the true
   labels (``unlearn_to="labels"``) or toward the candidate's own output on the clean input
   (``"own"``: no label is read, and the model keeps its behaviour away from the trigger);
   the aggregate becomes the repaired model minus the global weights.

Every decision is in the round record: a dropped row's score is its anomaly index, the note
says what was dropped, found and unlearned. Without a probe or below ``MIN_REPAIRED`` updates
the filter stands aside and says so. Deterministic given the probe and its memory.
The model must be the two-layer MLP the scan handles (:class:`ScanProbe` checks the shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedgate.models.threads import one_torch_thread
from fedgate.strategies.aggregators.base import (
    AggregationResult,
    AggregatorConfigError,
    Stage,
    filtered_diagnostics,
    make_diagnostics,
    readmit,
)
from fedgate.strategies.aggregators.flame import smallest_n
from fedgate.strategies.aggregators.trigger_scan import (
    ProbedFilter,
    ScanProbe,
    join_notes,
    mlp_parameters,
    reverse_engineer,
    robust_index,
)

MIN_REPAIRED = 8
"""Fewest updates a round for the filter to run: the median/MAD attribution needs a crowd, and
in the demo's rounds of four or five skewed devices a false detection would fine-tune the
model on the validation split the approval gate judges it by (as FLAME's cut-off)."""


@dataclass(frozen=True)
class Trigger:
    """A reverse-engineered trigger: inputs ``(1 - mask) x + mask pattern`` go to ``target``."""

    target: int
    mask: np.ndarray  # (F,) in [0, 1]
    pattern: np.ndarray  # (F,) in [0, 1]
    anomaly: float  # how far below the other classes' its mask norm was when found

    def stamp(self, x: np.ndarray) -> np.ndarray:
        return (1.0 - self.mask) * x + self.mask * self.pattern


def _log_probs(models: np.ndarray, probe: ScanProbe, x: np.ndarray):
    """Log-probabilities (n, k, C) of the flat MLP ``models`` (n, d) on inputs ``x`` (k, F)."""
    import torch

    w1, b1, w2, b2 = mlp_parameters(torch.from_numpy(np.asarray(models, np.float32)), probe)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    hid = torch.relu(torch.matmul(xt, w1.transpose(1, 2)) + b1[:, None, :])
    return torch.log_softmax(torch.matmul(hid, w2.transpose(1, 2)) + b2[:, None, :], -1)


def attribution(rows: np.ndarray, probe: ScanProbe, triggers: list[Trigger]) -> np.ndarray:
    """Per row, the highest anomaly index over ``triggers`` of how much ``global + row``
    raises the trigger's class on triggered validation inputs beyond on clean ones."""
    import torch

    glob = np.asarray(probe.weights, dtype=np.float32)
    models = np.concatenate([glob[None, :], glob[None, :] + rows]).astype(np.float32)
    score = np.full(len(rows), -np.inf)
    with one_torch_thread(), torch.no_grad():
        for trig in triggers:
            other = probe.x[probe.y != trig.target]
            if len(other) == 0:
                continue
            both = np.concatenate([other, trig.stamp(other)])
            lp = _log_probs(models, probe, both)[:, :, trig.target].numpy().astype(np.float64)
            clean, marked = lp[:, : len(other)].mean(1), lp[:, len(other) :].mean(1)
            rise = (marked - clean)[1:] - (marked - clean)[0]
            score = np.maximum(score, robust_index(rise))
    return score


def unlearn(
    model: np.ndarray,
    probe: ScanProbe,
    triggers: list[Trigger],
    steps: int,
    lr: float,
    to: str = "labels",
) -> np.ndarray:
    """``model`` fine-tuned on the validation inputs and their copies carrying ``triggers``
    (SGD with momentum 0.9, full batch). ``to="labels"``: toward the true labels throughout;
    ``to="own"``: toward ``model``'s own output distribution on the clean input, for the clean
    and the triggered copy alike (the labels are not used: the repair removes the trigger's
    effect and keeps the model's behaviour elsewhere rather than fitting the split)."""
    import torch

    params = [
        p[0].clone().requires_grad_(True)
        for p in mlp_parameters(torch.from_numpy(np.asarray(model, np.float32)[None]), probe)
    ]
    x = np.asarray(probe.x, dtype=np.float32)
    inputs = torch.from_numpy(
        np.concatenate([x] + [t.stamp(x) for t in triggers]).astype(np.float32)
    )
    w1, b1, w2, b2 = params

    def logits_of(batch):
        return torch.relu(batch @ w1.T + b1) @ w2.T + b2

    copies = 1 + len(triggers)
    with one_torch_thread():
        if to == "own":  # soft targets: the model's own output on the clean input
            with torch.no_grad():
                target = torch.softmax(logits_of(inputs[: len(x)]), -1).repeat(copies, 1)
        else:
            target = torch.from_numpy(np.tile(np.asarray(probe.y, dtype=np.int64), copies))
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
        with torch.enable_grad():
            for _ in range(steps):
                loss = torch.nn.functional.cross_entropy(logits_of(inputs), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
    return torch.cat([p.detach().reshape(-1) for p in params]).numpy().astype(np.float64)


@dataclass
class TriggerRepair:
    """The filter's parameters, its probe for the next round and its memory (module doc)."""

    detect_threshold: float = 2.0
    attribution_threshold: float = 3.0
    unlearn_steps: int = 60
    unlearn_lr: float = 0.05
    search_steps: int = 100
    search_examples: int | None = None  # the first so many validation inputs; None: all
    lam: float = 0.05
    remembered: int = 1
    unlearn_to: str = "labels"  # "labels" | "own" (see :func:`unlearn`)
    unlearn_for: int = 5  # rounds a found trigger is still unlearned after it was last found
    attribute_for: int | None = None  # rounds it still drops devices after; None: for ever
    persistent_after: int | None = None  # found in so many rounds: drops devices for ever
    _probe: ScanProbe | None = field(default=None, repr=False)
    memory: dict[int, tuple[Trigger, ...]] = field(default_factory=dict, repr=False)
    rounds: int = field(default=0, repr=False)  # rounds repaired so far
    found_in: dict[int, int] = field(default_factory=dict, repr=False)  # class -> last round
    times_found: dict[int, int] = field(default_factory=dict, repr=False)  # class -> rounds

    def __post_init__(self) -> None:
        for name in ("detect_threshold", "attribution_threshold", "unlearn_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise AggregatorConfigError(f"trigger-repair: {name} must be > 0, got {value}")
        if self.unlearn_to not in ("labels", "own"):
            raise AggregatorConfigError(
                f"trigger-repair: unlearn_to must be 'labels' or 'own', got {self.unlearn_to!r}"
            )
        counts = (self.unlearn_steps, self.search_steps, self.remembered)
        if self.search_examples is not None:
            counts += (self.search_examples,)
        windows = (self.unlearn_for, 0 if self.attribute_for is None else self.attribute_for)
        if self.persistent_after is not None:
            counts += (self.persistent_after,)
        if min(counts) < 1 or not self.lam >= 0 or min(windows) < 0:
            raise AggregatorConfigError(
                "trigger-repair: unlearn_steps, search_steps, remembered, search_examples, "
                "persistent_after must be >= 1, lam, unlearn_for and attribute_for >= 0"
            )

    def set_probe(self, probe: ScanProbe) -> None:
        """The global weights and validation data for the next aggregation only."""
        self._probe = probe

    def remember(self, trigger: Trigger) -> None:
        """Keep ``trigger`` with the last ``remembered - 1`` found for its class."""
        if self.found_in.get(trigger.target) != self.rounds:
            self.times_found[trigger.target] = self.times_found.get(trigger.target, 0) + 1
        self.found_in[trigger.target] = self.rounds
        kept = self.memory.get(trigger.target, ())
        self.memory[trigger.target] = (*kept, trigger)[-self.remembered :]

    def remembered_triggers(
        self, within: int | None = None, persistent_after: int | None = None
    ) -> list[Trigger]:
        """The remembered triggers; with ``within``, of the classes found in the last
        ``within`` rounds only, or (``persistent_after``) found in at least so many rounds."""
        return [
            t
            for c, triggers in self.memory.items()
            if within is None
            or self.rounds - self.found_in[c] <= within
            or (persistent_after is not None and self.times_found[c] >= persistent_after)
            for t in triggers
        ]

    def detect(self, candidate: np.ndarray, probe: ScanProbe) -> tuple[list[Trigger], str]:
        """Triggers found in ``candidate`` (flat weights) and a note on the class masks."""
        masks, patterns = reverse_engineer(
            candidate[None, :],
            probe,
            steps=self.search_steps,
            lam=self.lam,
            examples=self.search_examples or len(probe.x),
        )
        norms = masks[0].sum(-1)
        index = -robust_index(norms)
        found = [
            Trigger(int(t), masks[0, t], patterns[0, t], float(index[t]))
            for t in np.flatnonzero(index > self.detect_threshold)
        ]
        return found, f"median mask {float(np.median(norms)):.1f}"

    def apply(
        self,
        run: Stage,
        x: np.ndarray,
        weights: np.ndarray | None,
        min_kept: int,
    ) -> AggregationResult:
        """``run`` on the rows not attributed to a remembered trigger, then detection and
        unlearning on the aggregate; diagnostics per client."""
        n = len(x)
        probe, self._probe = self._probe, None
        if probe is None or n < MIN_REPAIRED:
            res = run(x, weights)
            why = "no probe" if probe is None else f"{n} updates; repairs from {MIN_REPAIRED}"
            return AggregationResult(
                res.vector, res.diagnostics, join_notes(res.note, f"trigger-repair: off ({why})")
            )
        self.rounds += 1
        notes = []
        score = np.zeros(n)
        kept = np.ones(n, dtype=bool)
        attributed = self.remembered_triggers(self.attribute_for, self.persistent_after)
        if attributed:
            score = attribution(x, probe, attributed)
            kept = score <= self.attribution_threshold
            back = readmit(kept, score, min_kept)
            flagged = int(n - kept.sum())
            notes.append(
                f"dropped {flagged}/{n} (raise a remembered trigger's class, index above "
                f"{self.attribution_threshold:g}; highest {float(score.max()):.2f})"
                + (f", re-admitted {back}" if back else "")
            )
        rows = np.flatnonzero(kept)
        w = None if weights is None else np.asarray(weights, dtype=np.float64)[rows]
        res = run(x[rows], w)
        glob = np.asarray(probe.weights, dtype=np.float64)
        vector = np.asarray(res.vector, dtype=np.float64)
        candidate = glob + vector
        found, summary = self.detect(candidate, probe)
        for trig in found:
            self.remember(trig)
        listed = ", ".join(f"class {t.target} (index {t.anomaly:.1f})" for t in found)
        notes.append(f"found {listed}; {summary}" if found else f"no trigger found ({summary})")
        found_classes = {t.target for t in found}
        recent = [
            t for t in self.remembered_triggers(self.unlearn_for) if t.target not in found_classes
        ]
        if found or recent:
            repaired = unlearn(
                candidate,
                probe,
                found + recent,
                self.unlearn_steps,
                self.unlearn_lr,
                self.unlearn_to,
            )
            vector = repaired - glob
            notes.append(
                "unlearned "
                + ", ".join(
                    [f"class {t.target}" for t in found]
                    + [
                        f"class {t.target} (found {self.rounds - self.found_in[t.target]} "
                        "rounds ago)"
                        for t in recent
                    ]
                )
            )
        fates, scores, share = filtered_diagnostics(res.diagnostics, rows, score)
        note = "trigger-repair: " + "; ".join(notes)
        return AggregationResult(
            vector, make_diagnostics(fates, scores, share), join_notes(res.note, note)
        )


@dataclass
class TriggerRepairFilter(ProbedFilter):
    """``inner`` behind the trigger repair; ``trigger-repair+<inner>`` (drops at most ``f``)."""

    PREFIX = "trigger-repair"
    screen: TriggerRepair = field(default_factory=TriggerRepair)

    def min_kept(self, n: int) -> int:
        return max(smallest_n(self.inner, n), n - self.f)
