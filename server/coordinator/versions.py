"""Global versions: merge the accepted candidates, write weights and signed statement, commit.

Order (never half-written): 1. the merged weights go into the blob store (content-addressed,
atomic file write), 2. the signed statement (DSSE, coordinator key; its lineage names every
regional artifact, weights and approval digest that went in) likewise, 3. one database
transaction records the version, the decisions and the audit events, signs the chain head and
moves the current-version pointer. A crash before 3 commits leaves the old version current
(the new blobs are unreferenced; content-addressed, they are harmless and reused by a retry);
a crash after leaves the new one. ``recover`` sweeps temporary files a killed writer left.

Test hook (``fedgate/crash_points.py``): with ``FEDGATE_TEST_PAUSE_AT=<step>`` and
``FEDGATE_TEST_PAUSE_DIR=<dir>``, the merge writes ``<dir>/<step>.reached`` at that step and
waits for ``<dir>/<step>.release``
(steps: ``after-weights``, ``after-statement``, ``in-transaction``, ``after-commit``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.crash_points import pause
from fedgate.crypto import fingerprint
from fedgate.errors import VerificationError
from fedgate.server.audit.problem import Problem
from fedgate.server.audit.verify import VerifyReport, verify_database
from fedgate.server.coordinator.candidates import Candidate, Expectation, Refusal
from fedgate.server.coordinator.federation import Federation
from fedgate.server.coordinator.merge import MergeResult, merge_models
from fedgate.server.coordinator.store import CoordinatorStore, VersionInfo
from fedgate.server.db.blobs import BlobError, BlobStore
from fedgate.statements import StatementError, sign_statement, statement, verify_envelope

GLOBAL_TYPE = "https://fedgate.dev/global-version/v1"


def expectation(store: CoordinatorStore, blobs: BlobStore) -> Expectation:
    """What the next merge's candidates must match: the current version and its shapes."""
    current = store.current_version()
    info = store.version(current) if current else None
    if info is None:
        return Expectation(current)
    tensors = blobs.get_tensors(info.weights_sha256)
    return Expectation(current, {k: tuple(v.shape) for k, v in tensors.items()})


@dataclass(frozen=True)
class Published:
    info: VersionInfo
    lineage: list[dict[str, Any]]
    result: MergeResult


def lineage_of(candidates: Sequence[Candidate], result: MergeResult) -> list[dict[str, Any]]:
    return [
        {
            "region": c.region,
            "artifact": c.artifact_sha256,
            "weights": c.weights_sha256,
            "approvals": list(c.approvals),
            "approvers": list(c.approvers),
            "devices": c.devices,
            "share": share,
        }
        for c, share in zip(candidates, result.weights, strict=True)
    ]


def publish(
    store: CoordinatorStore,
    blobs: BlobStore,
    signer: Ed25519PrivateKey,
    fed: Federation,
    expect: Expectation,
    accepted: Sequence[Candidate],
    refusals: Sequence[Refusal],
) -> Published:
    """Merge ``accepted`` into global version ``expect.base_version + 1`` (see module doc)."""
    result = merge_models(
        [c.tensors for c in accepted], [c.devices for c in accepted],
        device_cap=fed.device_cap, robust=fed.robust, trim=fed.trim,
    )  # fmt: skip
    version = expect.base_version + 1
    weights = blobs.put_tensors(result.tensors, {"fedgate.global_version": str(version)})
    pause("after-weights")
    lineage = lineage_of(accepted, result)
    created = datetime.now(UTC)
    predicate = {
        "version": version, "base_version": expect.base_version,
        "architecture": fed.architecture, "rule": result.rule, "lineage": lineage,
        "coordinator": fingerprint(signer), "created_at": created.isoformat(),
    }  # fmt: skip
    envelope = sign_statement(
        signer, statement(f"global-v{version}", weights, GLOBAL_TYPE, predicate)
    )
    statement_sha = blobs.put(envelope)
    pause("after-statement")
    info = VersionInfo(
        version, expect.base_version, fed.architecture, weights, statement_sha, result.rule,
        len(accepted), created,
    )  # fmt: skip
    event = {
        "version": version, "base_version": expect.base_version, "weights": weights,
        "statement": statement_sha, "rule": result.rule,
        "lineage": [{k: e[k] for k in ("region", "artifact", "weights", "approvals")}
                    for e in lineage],
    }  # fmt: skip
    store.commit_version(info, accepted, refusals, event, lambda: pause("in-transaction"))
    pause("after-commit")
    return Published(info, lineage, result)


def recover(blobs_root: Path) -> int:
    """Remove temporary files a killed atomic write left in the blob store; returns how many."""
    removed = 0
    if blobs_root.is_dir():
        for tmp in blobs_root.glob("*/.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def check_version(
    info: VersionInfo, blobs: BlobStore, coordinator: Ed25519PublicKey
) -> dict[str, Any]:
    """Check one recorded version: both blobs present and intact, the statement signed by the
    coordinator and naming these weights; returns its predicate. Raises ``VerificationError``."""
    try:
        blobs.get(info.weights_sha256)
        envelope = blobs.get(info.statement_sha256)
        stmt = verify_envelope(
            envelope, [coordinator], predicate_type=GLOBAL_TYPE, subject_sha256=info.weights_sha256
        ).statement
    except (BlobError, StatementError) as exc:
        raise VerificationError(f"global version {info.version}: {exc}") from None
    pred = stmt.predicate
    if pred.get("version") != info.version or pred.get("base_version") != info.base_version:
        raise VerificationError(f"global version {info.version}: statement names another version")
    return pred


def describe(pub: Published) -> str:
    regions = ", ".join(f"{e['region']} ({e['share']:.2f})" for e in pub.lineage)
    return (
        f"global version {pub.info.version} (from {pub.info.base_version}) by {pub.info.rule}: "
        f"{regions}; weights {pub.info.weights_sha256[:16]}, statement "
        f"{pub.info.statement_sha256[:16]}"
    )


def to_json(pub: Published) -> str:
    info = {**pub.info.__dict__, "created_at": pub.info.created_at.isoformat()}
    return json.dumps({"version": info, "lineage": pub.lineage}, sort_keys=True)


def check_versions(
    engine: Any, blobs_root: Path, keys: Mapping[str, Ed25519PublicKey]
) -> tuple[list[Problem], int]:
    """Check every recorded global version against the blob store and the trusted coordinator
    ``keys``, and that the current-version pointer names a recorded version (or none)."""
    store = CoordinatorStore(engine)
    blobs, problems = BlobStore(blobs_root), []
    versions = store.versions()
    for info in versions:
        for pub in keys.values():
            try:
                check_version(info, blobs, pub)
                break
            except VerificationError as exc:
                error = exc
        else:
            problems.append(Problem(None, str(error)))
    current = store.current_version()
    if current and current not in {v.version for v in versions}:
        problems.append(Problem(None, f"current global version {current} is not recorded"))
    return problems, len(versions)


def verify_coordinator(
    engine: Any, blobs_root: Path, keys: Mapping[str, Ed25519PublicKey] | None
) -> tuple[VerifyReport, int]:
    """The coordinator's chain verified (``verify_database``), then, when its signatures were
    checked and it holds, every global version (``check_versions``); returns the report and
    how many versions were checked."""
    report = verify_database(engine, keys)
    checked = 0
    if keys is not None and report.ok:
        problems, checked = check_versions(engine, blobs_root, keys)
        report.problems.extend(problems)
    return report, checked
