"""Which events must lie under a signed head, and which unsigned tail a live run explains.

The writers sign the chain head in the same transaction as every run start and end, every
closed round, artifact, approval or gate decision, device and actor event
(``CHECKPOINT_KINDS``). So in an honest log each of those events has a signed head at
exactly its seq, and the only events after the last signed head are those of a run still in
progress (its open round, updates, evaluations).
Anything else (no heads at all, a round or run end without its head, unsigned events that no
live run explains) is what an attacker who can write the database but not sign leaves behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fedgate.server.audit.problem import Problem

CHECKPOINT_KINDS = frozenset(
    {
        "run.launched",
        "run.finished",
        "run.stopped",
        "round.closed",
        "artifact.produced",
        "approval.granted",
        "approval.refused",
        "gate.approved",
        "gate.rejected",
        "device.token_issued",
        "device.enrolled",
        "device.revoked",
        "actor.added",
        "actor.removed",
        # the global coordinator's chain (its candidate.* events lie under the head signed at
        # the end of the same transaction)
        "global.version",
        # its release events (server/release/channels.py), each signed in its own transaction
        "release.published",
        "release.channel",
        "release.root",
    }
)
RUN_END_KINDS = frozenset({"run.finished", "run.stopped"})
# what a run in progress appends between two signed heads
PROGRESS_KINDS = frozenset(
    {"round.opened", "update.accepted", "update.rejected", "aggregator.decision", "evaluation"}
)


@dataclass(frozen=True)
class ModelRef:
    """A model blob a ``round.closed`` event names."""

    seq: int
    run: str
    round: int
    sha256: str


def _load(payload: str) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass
class Coverage:
    """Fed the checkpoint events and every event after ``tail_from`` (the highest seq any
    validly signed head claims), in seq order; ``finish`` names what is not covered."""

    tail_from: int
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    launched: dict[str, int] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)
    models: list[ModelRef] = field(default_factory=list)
    tail: list[tuple[int, str, str]] = field(default_factory=list)  # (seq, kind, run)
    events: int = 0

    def wants(self, seq: int, kind: str) -> bool:
        return kind in CHECKPOINT_KINDS or seq > self.tail_from

    def see(self, seq: int, kind: str, payload: str) -> None:
        data = _load(payload)
        run = str(data.get("run", ""))
        if kind in CHECKPOINT_KINDS:
            self.checkpoints.append((seq, kind))
            if kind == "run.launched":
                self.launched.setdefault(run, seq)
            elif kind in RUN_END_KINDS:
                self.ended.add(run)
            elif kind == "round.closed" and isinstance(data.get("model"), str) and data["model"]:
                self.models.append(ModelRef(seq, run, int(data.get("round", 0)), data["model"]))
        if seq > self.tail_from:
            self.tail.append((seq, kind, run))

    @property
    def running(self) -> list[str]:
        """Runs launched and not ended, in launch order."""
        return sorted(set(self.launched) - self.ended, key=self.launched.__getitem__)

    def finish(self, events: int, signed: set[int], last_signed: int) -> list[Problem]:
        """Problems given the seqs of the heads that verified and matched their event (a
        validly signed head that does not match is named by the chain checks at its seq)."""
        if events and not signed:
            return [
                Problem(
                    1,
                    "not under any signed head: the log has events but no valid signed "
                    "head (never signed, or its heads were deleted)",
                )
            ]
        problems = [
            Problem(
                seq,
                f"{kind} has no signed head at its seq (every run start and end, "
                "round and device event is signed when written; heads deleted?)",
            )
            for seq, kind in self.checkpoints
            if seq not in signed
        ]
        live, cutoff = set(self.running), max(last_signed, self.tail_from)
        for seq, kind, run in self.tail:
            if seq <= cutoff or kind in CHECKPOINT_KINDS:
                continue
            if kind not in PROGRESS_KINDS or run not in live:
                problems.append(
                    Problem(
                        seq,
                        f"{kind} is after the last signed head (seq {cutoff}) "
                        "and no run in progress explains it (appended, or heads deleted)",
                    )
                )
                break
        return problems
