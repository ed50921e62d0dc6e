"""The federation's cycle: regional runs -> artifacts -> gate -> coordinator merge, and the next
cycle's regional runs start from the new global version.

Orchestration only: every decision is taken where it lives -- the regional ServerApp writes
the artifact (``server/region/artifact.py``), the gate evaluates and signs
(``server/gate/``), the coordinator verifies and merges (``server/coordinator/``). A cycle
offers every region's artifact to the coordinator, approved or not, so that the coordinator's
own chain records why a region is missing from a global version.

Layout: ``<home>/coordinator/cycles/<n>/inbox/`` holds cycle ``n``'s bundles; the coordinator's
federation file is generated from the regions' server keys and registered approvers when the
home has none (``<home>/coordinator/federation.toml``; an existing one is the operator's and
is used as it is).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.atomic_file import write_atomic
from fedgate.crypto import public_bytes
from fedgate.errors import UsageError
from fedgate.server.coordinator.federation import federation_path, render_federation
from fedgate.server.coordinator.service import (
    Coordinator,
    coordinator_dir,
    load_global,
    published_store,
)
from fedgate.server.gate.approvers import list_approvers
from fedgate.server.gate.decisions import approve, failures, reject
from fedgate.server.gate.export import export_bundle
from fedgate.server.gate.policy import base_accuracy, evaluate, load_policy
from fedgate.server.launch.config import FederationConfig, RegionConfig
from fedgate.server.launch.run_records import StartPoint, global_point
from fedgate.server.launch.runner import Submission, follow, submit
from fedgate.server.region.artifact import Artifact, verify_artifact
from fedgate.server.trust.enrollment import region_registry

APPROVED, REJECTED, PENDING = "approved", "rejected", "pending"


class CycleError(UsageError, RuntimeError):
    """A cycle that cannot go on as asked (e.g. a region without approvers)."""


@dataclass(frozen=True)
class RegionResult:
    """One region's part of a cycle: its run, artifact and the gate's verdict."""

    region: str
    run_id: str
    artifact: str  # the weights' SHA-256 (the artifact's subject)
    val_acc: float | None
    test_acc: float | None
    gate: str  # approved | rejected | pending
    failed: tuple[str, ...] = ()  # the failing policy checks, "name measured (limit)"


@dataclass
class CycleResult:
    """What one cycle did: from which global version it started, each region's result, the
    global version it published (None: none) and the coordinator's refusals."""

    number: int
    base_version: int
    regions: list[RegionResult]
    version: int | None = None
    lineage: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    global_test_acc: float | None = None
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # each run's summary

    def to_json(self) -> dict[str, Any]:
        return {"cycle": self.number, "base_version": self.base_version,
                "regions": [r.__dict__ for r in self.regions], "version": self.version,
                "lineage": self.lineage, "refusals": self.refusals,
                "global_test_acc": self.global_test_acc, "runs": self.runs}  # fmt: skip


def current_global(home: Path) -> int:
    """The coordinator's current global version under ``home`` (0: none yet)."""
    with published_store(home) as store:
        return 0 if store is None else store.current_version()


def ensure_federation(home: Path, fed: FederationConfig) -> Path:
    """The coordinator's federation file; generated from the regions' server keys and
    registered approvers when the home has none."""
    path = federation_path(home)
    if path.is_file():
        return path
    regions: dict[str, tuple[str, list[str]]] = {}
    for reg in fed.regions:
        with region_registry(home, reg.name, reg.db or None, create=False) as registry:
            approvers = [a.public_key for a in list_approvers(registry.store, reg.name)]
            key = public_bytes(registry.store.audit.signer).hex()
        if not approvers:
            raise CycleError(
                f"region {reg.name} has no approver: register one with `fedgate gate approvers "
                f"add --region {reg.name} --name NAME --pub KEY.pub`"
            )
        regions[reg.name] = (key, approvers)
    models = {r.model for r in fed.regions}
    if len(models) != 1:
        raise CycleError(f"regions train different models {sorted(models)}; one cycle needs one")
    write_atomic(path, render_federation(models.pop(), regions))
    return path


def _gate(home: Path, reg: RegionConfig, finished: dict[str, Any],
          approver: Ed25519PrivateKey | None) -> tuple[RegionResult, Artifact]:  # fmt: skip
    """Evaluate the run's artifact against the region's policy; with an ``approver`` key,
    approve it when every check passes and record a refusal naming the failures otherwise."""
    artifact = verify_artifact(home, str(finished["model_sha256"]))
    manifest = artifact.manifest
    policy = load_policy(home, reg.name)
    failed = tuple(
        f"{c.name} {c.measured} (limit {c.limit})"
        for c in failures(evaluate(manifest, policy, base_accuracy(manifest)))
    )
    verdict = PENDING
    if approver is not None:
        with region_registry(home, reg.name, reg.db or None, create=False) as registry:
            if failed:
                reject(home, registry.store, artifact, policy, "policy: " + "; ".join(failed),
                       approver)  # fmt: skip
                verdict = REJECTED
            else:
                approve(home, registry.store, artifact, policy, approver)
                verdict = APPROVED
    result = RegionResult(reg.name, manifest.run_id, artifact.sha256, manifest.val_acc,
                          manifest.test_acc, verdict, failed)  # fmt: skip
    return result, artifact


def global_accuracy(home: Path, version: int, seed: int) -> float:
    """Global version ``version``'s accuracy on the common test split."""
    import torch  # heavy: only when a cycle evaluates
    from safetensors.numpy import load

    from fedgate.models.data import common_test_split
    from fedgate.models.nets import build_model
    from fedgate.models.train import evaluate as evaluate_model

    info, weights = load_global(home, version)  # the verified bytes, read once
    tensors = load(weights)
    model = build_model(info.architecture, seed=None)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
    return evaluate_model(model, common_test_split(seed)).accuracy


def next_cycle_number(home: Path) -> int:
    cycles = coordinator_dir(home) / "cycles"
    done = [int(p.name) for p in cycles.iterdir() if p.name.isdigit()] if cycles.is_dir() else []
    return max(done, default=0) + 1


def run_cycle(
    home: Path,
    fed: FederationConfig,
    approver: Ed25519PrivateKey | None,
    on_event: Callable[[Submission, dict[str, Any]], None],
    echo: Callable[[str], None],
    timeout: float = 900.0,
    after_runs: Callable[[list[Submission]], None] = lambda _: None,
) -> CycleResult:
    """One cycle over every region of ``fed`` (their SuperLinks must be up); ``after_runs``
    gets the runs once they ended, also when one failed (the caller's reports)."""
    number, base = next_cycle_number(home), current_global(home)
    start = global_point(home, f"global:{base}") if base else StartPoint()
    echo(f"cycle {number}: every region trains from "
         + (f"global version {base}" if base else "a fresh model"))  # fmt: skip
    subs = [submit(fed, reg, home, extra=start.run_config()) for reg in fed.regions]
    try:
        finished = follow(subs, on_event, timeout)
    finally:
        after_runs(subs)
    gated = [_gate(home, reg, finished[reg.name], approver) for reg in fed.regions]
    results = [result for result, _ in gated]
    cycle = CycleResult(number, base, results, runs=finished)
    if approver is None:
        return cycle
    ensure_federation(home, fed)
    inbox = coordinator_dir(home) / "cycles" / str(number) / "inbox"
    for res, artifact in gated:  # verified once, in _gate
        export_bundle(home, artifact, inbox, unapproved=res.gate != APPROVED)
    outcome = Coordinator(home).merge_once(inbox)
    cycle.refusals = [str(r) for r in outcome.refusals]
    if outcome.published is not None:
        cycle.version = outcome.published.info.version
        cycle.lineage = outcome.published.lineage
        cycle.global_test_acc = global_accuracy(home, cycle.version, fed.seed)
    return cycle
