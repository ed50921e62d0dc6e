"""The ONE place that decides whether the coordinator trusts a regional artifact.

A region hands over a bundle: its DSSE manifest (signed by the region server key; subject:
the weights' SHA-256), one or more approval statements (signed by approvers registered for that
region; subject: the artifact digest = SHA-256 of the manifest envelope bytes) and the weights
(safetensors). ``screen`` verifies each bundle and returns the candidates it accepts and, for
everything else, a ``Refusal`` whose ``reason`` is one of ``REASONS``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedgate.errors import VerificationError
from fedgate.server.coordinator.federation import Federation
from fedgate.statements import (
    BadSignature,
    Statement,
    StatementError,
    SubjectMismatch,
    UnknownKey,
    Verified,
    read_statement,
    verify_envelope,
)

MANIFEST_TYPE = "https://fedgate.dev/regional-artifact/v1"
APPROVAL_TYPE = "https://fedgate.dev/approval/v1"

REASONS = {
    "malformed": "the bundle cannot be read (manifest, approval or weights)",
    "unknown-region": "the region is not in the federation",
    "forged-manifest": "the manifest is not signed by the region server key",
    "tampered-weights": "the weights do not hash to the digest the manifest signs",
    "architecture-mismatch": "the model architecture differs from the federation's",
    "stale-base": "trained from another global version than the current one",
    "export-forbidden": "the region's manifest does not allow export",
    "unapproved": "too few valid approvals",
    "forged-approval": "an approval's signature does not verify",
    "mismatched-approval": "an approval is signed by a key not registered for this region",
    "approval-other-digest": "an approval approves another artifact digest",
    "duplicate": "this artifact or region is already merged or offered twice",
}


@dataclass(frozen=True)
class Bundle:
    """What a region hands the coordinator (bytes exactly as received)."""

    source: str
    manifest: bytes
    approvals: tuple[bytes, ...]
    weights: bytes

    @property
    def artifact_sha256(self) -> str:
        return hashlib.sha256(self.manifest).hexdigest()


@dataclass(frozen=True)
class Candidate:
    """A verified regional artifact, ready to merge."""

    source: str
    region: str
    artifact_sha256: str
    weights_sha256: str
    devices: int
    approvals: tuple[str, ...]  # SHA-256 of each valid approval envelope
    approvers: tuple[str, ...]  # their key fingerprints
    tensors: Mapping[str, np.ndarray] = field(repr=False)


@dataclass(frozen=True)
class Refusal:
    source: str
    region: str
    artifact_sha256: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.source}: refused ({self.reason}): {self.detail}"


@dataclass(frozen=True)
class Expectation:
    """What every candidate of the next merge must match."""

    base_version: int
    shapes: Mapping[str, tuple[int, ...]] | None = None  # of the base weights, when known


class Refused(VerificationError):
    """A bundle failed a check; ``reason`` is one of ``REASONS`` (``screen`` turns it into a
    ``Refusal``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _load_tensors(data: bytes) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError  # heavy import: only when weights are read
    from safetensors.numpy import load

    try:
        return load(data)
    except (SafetensorError, ValueError) as exc:
        raise Refused("tampered-weights", f"weights are not safetensors ({exc})") from None


def _manifest(bundle: Bundle, fed: Federation) -> tuple[str, Statement]:
    try:
        claimed = read_statement(bundle.manifest)
    except StatementError as exc:
        raise Refused("malformed", f"manifest: {exc}") from None
    region = str(claimed.predicate.get("region", ""))
    trust = fed.regions.get(region)
    if trust is None:
        raise Refused("unknown-region", f"region {region!r} is not in the federation")
    try:
        verified = verify_envelope(bundle.manifest, [trust.key], predicate_type=MANIFEST_TYPE)
    except (UnknownKey, BadSignature) as exc:
        raise Refused("forged-manifest", f"manifest of region {region}: {exc}") from None
    except StatementError as exc:
        raise Refused("malformed", f"manifest of region {region}: {exc}") from None
    return region, verified.statement


def _approval(raw: bytes, fed: Federation, region: str, artifact: str, where: str) -> Verified:
    """One approval, verified against the region's registered approvers."""
    trust = fed.regions[region]
    try:
        return verify_envelope(
            raw, trust.approvers.values(), predicate_type=APPROVAL_TYPE, subject_sha256=artifact
        )
    except BadSignature as exc:
        raise Refused("forged-approval", f"{where}: {exc}") from None
    except SubjectMismatch as exc:
        raise Refused("approval-other-digest", f"{where}: {exc}") from None
    except UnknownKey as exc:
        others = fed.all_approvers()
        try:
            owner = others[verify_envelope(raw, [k for _, k in others.values()]).signer][0]
        except StatementError:
            raise Refused("mismatched-approval", f"{where}: {exc}") from None
        raise Refused(
            "mismatched-approval",
            f"{where} is signed by an approver of region {owner}, not of {region}",
        ) from None
    except StatementError as exc:
        raise Refused("malformed", f"{where}: {exc}") from None


def _approvals(bundle: Bundle, fed: Federation, region: str) -> tuple[list[str], list[str]]:
    digests: list[str] = []
    approvers: list[str] = []
    artifact = bundle.artifact_sha256
    for i, raw in enumerate(bundle.approvals, 1):
        verified = _approval(raw, fed, region, artifact, f"approval {i}")
        if verified.statement.predicate.get("decision") != "approved":
            continue
        if verified.signer not in approvers:
            digests.append(verified.envelope_sha256)
            approvers.append(verified.signer)
    if len(approvers) < fed.approvals:
        raise Refused(
            "unapproved",
            f"{len(approvers)} valid approval(s) by registered approvers of {region}, "
            f"{fed.approvals} needed",
        )
    return digests, approvers


def _shapes(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(a.shape) for name, a in tensors.items()}


def verify_bundle(bundle: Bundle, fed: Federation, expect: Expectation) -> Candidate:
    """Every check on one bundle, in order; raises ``Refused``."""
    region, stmt = _manifest(bundle, fed)
    pred = stmt.predicate
    weights_sha = hashlib.sha256(bundle.weights).hexdigest()  # hashed once: 4 MB per 1e6
    if all(s.sha256 != weights_sha for s in stmt.subjects):
        raise Refused(
            "tampered-weights",
            f"the weights hash to {weights_sha[:16]}, the manifest is about "
            f"{stmt.subject.sha256[:16]}",
        )
    if pred.get("architecture") != fed.architecture:
        raise Refused(
            "architecture-mismatch",
            f"architecture {pred.get('architecture')!r}, the federation's is {fed.architecture!r}",
        )
    if pred.get("base_version") != expect.base_version:
        raise Refused(
            "stale-base",
            f"trained from global version {pred.get('base_version')!r}, "
            f"current is {expect.base_version}",
        )
    if pred.get("export_allowed") is not True:
        raise Refused("export-forbidden", f"region {region}'s manifest does not allow export")
    digests, approvers = _approvals(bundle, fed, region)
    tensors = _load_tensors(bundle.weights)
    if expect.shapes is not None and _shapes(tensors) != dict(expect.shapes):
        raise Refused("architecture-mismatch", "tensor names or shapes differ from the base")
    devices = pred.get("devices_accepted")
    if not isinstance(devices, int) or isinstance(devices, bool) or devices < 0:
        raise Refused("malformed", f"devices_accepted {devices!r} is not a count")
    return Candidate(
        bundle.source, region, bundle.artifact_sha256, weights_sha, devices,
        tuple(digests), tuple(approvers), tensors,
    )  # fmt: skip


def _region_hint(bundle: Bundle) -> str:
    try:
        return str(read_statement(bundle.manifest).predicate.get("region", ""))[:64]
    except StatementError:
        return ""


def screen(
    bundles: Iterable[Bundle],
    fed: Federation,
    expect: Expectation,
    merged: Iterable[str] = (),
) -> tuple[list[Candidate], list[Refusal]]:
    """Verify every bundle; ``merged``: artifact digests already in a global version."""
    accepted: list[Candidate] = []
    refused: list[Refusal] = []
    seen = set(merged)
    for bundle in bundles:
        digest = bundle.artifact_sha256
        region = _region_hint(bundle)
        try:
            if digest in seen:
                raise Refused("duplicate", f"artifact {digest[:16]} is already merged or offered")
            seen.add(digest)
            candidate = verify_bundle(bundle, fed, expect)
            if any(c.region == candidate.region for c in accepted):
                raise Refused(
                    "duplicate", f"region {candidate.region} already has a candidate in this merge"
                )
            if accepted and _shapes(candidate.tensors) != _shapes(accepted[0].tensors):
                raise Refused(
                    "architecture-mismatch",
                    f"tensor names or shapes differ from region {accepted[0].region}'s",
                )
        except Refused as exc:
            refused.append(Refusal(bundle.source, region, digest, exc.reason, str(exc)))
            continue
        accepted.append(candidate)
    return accepted, refused


def read_bundle(directory: Path) -> Bundle:
    """A bundle directory: ``manifest.dsse.json``, ``approvals/*.dsse.json``,
    ``weights.safetensors``; a missing file reads as empty (then refused as malformed)."""

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return b""

    approvals = tuple(p.read_bytes() for p in sorted((directory / "approvals").glob("*.json")))
    return Bundle(
        str(directory), read(directory / "manifest.dsse.json"), approvals,
        read(directory / "weights.safetensors"),
    )  # fmt: skip


def read_inbox(inbox: Path) -> list[Bundle]:
    """Every bundle directory under ``inbox``, in name order."""
    if not inbox.is_dir():
        return []
    return [read_bundle(d) for d in sorted(inbox.iterdir()) if d.is_dir()]
