"""The gate's decisions on a regional artifact, each an audit event in the region's chain.

``approve`` evaluates every policy check and, only when all pass, signs an approval statement
with the approver's key (an in-toto Statement v1 in a DSSE envelope, ``fedgate/statements.py``:
subject = the weights' digest; predicate = approver, region, run, the manifest envelope's and
the policy's digests, every check's result, time), writes it beside the artifact and records it
(``gate.approved``). ``reject`` records a refusal and its reason (``gate.rejected``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.atomic_file import write_atomic
from fedgate.crypto import sha256_hex
from fedgate.errors import VerificationError
from fedgate.server.audit.chain import now_ts
from fedgate.server.audit.store import Store
from fedgate.server.gate.approvers import approver_for
from fedgate.server.gate.policy import Check, Policy, base_accuracy, evaluate
from fedgate.server.region.artifact import Artifact, artifacts_dir, subject_name
from fedgate.statements import (
    MalformedStatement,
    SubjectMismatch,
    Verified,
    sign_statement,
    statement,
    verify_envelope,
)

APPROVAL_TYPE = "https://fedgate.dev/attestation/gate-approval/v1"
APPROVED, REJECTED = "gate.approved", "gate.rejected"


class GateRefused(VerificationError):
    """The artifact does not meet the region's policy (or is not this region's record)."""


@dataclass(frozen=True)
class Decision:
    """What the gate recorded: approved or not, by whom, with which checks."""

    approved: bool
    artifact: str
    approver: str  # the approver key's fingerprint ("" for an unsigned refusal)
    checks: tuple[Check, ...]
    policy_sha256: str
    statement_path: Path | None = None


def failures(checks: Iterable[Check]) -> list[Check]:
    return [c for c in checks if not c.passed]


def _recorded(store: Store, artifact: Artifact) -> None:
    """Refuse an artifact this region's store did not record (or recorded other bytes of)."""
    row = store.artifact(artifact.sha256)
    if row is None:
        raise GateRefused(f"artifact {artifact.sha256[:16]} is not recorded in this region")
    if row["manifest"].get("envelope_sha256") != artifact.envelope_sha256:
        raise GateRefused(
            f"artifact {artifact.sha256[:16]}: its manifest is not the one the region recorded"
        )


def approval_path(home: str | Path, sha: str, approver: str) -> Path:
    return artifacts_dir(home) / f"{sha}.approval-{approver[:16]}.dsse.json"


def approve(
    home: str | Path, store: Store, artifact: Artifact, policy: Policy, key: Ed25519PrivateKey
) -> Decision:
    """Sign and record an approval of a VERIFIED ``artifact`` by the approver holding ``key``;
    ``GateRefused`` (nothing recorded) when any check fails."""
    manifest = artifact.manifest
    actor = approver_for(home, store, manifest.region, key)
    _recorded(store, artifact)
    checks = evaluate(manifest, policy, base_accuracy(manifest))
    failed = failures(checks)
    if failed:
        named = "; ".join(f"{c.name} {c.measured} (limit {c.limit})" for c in failed)
        raise GateRefused(f"not approved: {len(failed)} check(s) fail: {named}")
    decided_at = now_ts()
    predicate = {
        "approver": actor.fingerprint,
        "approver_name": actor.name,
        "region": manifest.region,
        "run_id": manifest.run_id,
        "manifest_sha256": artifact.envelope_sha256,
        "policy_sha256": policy.digest,
        "checks": [c.to_json() for c in checks],
        "decided_at": decided_at,
    }
    envelope = sign_statement(
        key, statement(subject_name(manifest), artifact.sha256, APPROVAL_TYPE, predicate)
    )
    path = approval_path(home, artifact.sha256, actor.fingerprint)
    write_atomic(path, envelope)
    store.record_approval(
        artifact.sha256, actor.fingerprint, True, _checks_record(checks, policy),
        signature=_signature_hex(envelope), event=APPROVED,
        details={"region": manifest.region, "run": manifest.run_id, "approver_name": actor.name,
                 "statement_sha256": sha256_hex(envelope), "decided_at": decided_at},
    )  # fmt: skip
    return Decision(True, artifact.sha256, actor.fingerprint, tuple(checks), policy.digest, path)


def reject(
    home: str | Path,
    store: Store,
    artifact: Artifact,
    policy: Policy,
    reason: str,
    key: Ed25519PrivateKey | None = None,
) -> Decision:
    """Record a refusal of ``artifact`` with ``reason`` (by the approver holding ``key``, when
    given), with every check's result."""
    if not reason.strip():
        raise GateRefused("a refusal needs a reason (--reason TEXT)")
    manifest = artifact.manifest
    actor = None if key is None else approver_for(home, store, manifest.region, key)
    _recorded(store, artifact)
    checks = evaluate(manifest, policy, base_accuracy(manifest))
    who = "" if actor is None else actor.fingerprint
    store.record_approval(
        artifact.sha256, who, False, _checks_record(checks, policy), event=REJECTED,
        details={"region": manifest.region, "run": manifest.run_id, "reason": reason.strip(),
                 "approver_name": "" if actor is None else actor.name, "decided_at": now_ts()},
    )  # fmt: skip
    return Decision(False, artifact.sha256, who, tuple(checks), policy.digest)


def _checks_record(checks: Iterable[Check], policy: Policy) -> dict[str, Any]:
    return {"policy_sha256": policy.digest, "policy": policy.to_json(),
            "checks": [c.to_json() for c in checks]}  # fmt: skip


def _signature_hex(envelope: bytes) -> str:
    return base64.b64decode(json.loads(envelope)["signatures"][0]["sig"]).hex()


def verify_approval(
    envelope: bytes, approvers: Iterable[Ed25519PublicKey], artifact: Artifact
) -> Verified:
    """An approval statement, once it verifies under one of ``approvers``' keys, is about
    ``artifact``'s weights and manifest, and records every check passed."""
    verified = verify_envelope(
        envelope, approvers, predicate_type=APPROVAL_TYPE, subject_sha256=artifact.sha256
    )
    predicate = verified.statement.predicate
    if predicate.get("manifest_sha256") != artifact.envelope_sha256:
        raise SubjectMismatch("the approval is about another manifest of these weights")
    checks = predicate.get("checks")
    if not isinstance(checks, list) or not checks:
        raise MalformedStatement("the approval records no checks")
    if not all(isinstance(c, dict) and c.get("passed") is True for c in checks):
        raise MalformedStatement("the approval records a check that did not pass")
    return verified
