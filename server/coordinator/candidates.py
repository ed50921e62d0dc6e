"""The ONE place that decides whether the coordinator trusts a regional artifact.

A region hands over a bundle: the artifact's manifest envelope (``server/region/artifact.py``:
signed by the region server key, subject the weights' SHA-256), one or more approval
statements (``server/gate/decisions.py``: signed by an approver, about the same weights and
naming the manifest envelope's digest) and the weights (safetensors). ``screen`` verifies each
bundle against the federation file and returns the candidates it accepts and, for everything
else, a ``Refusal`` whose ``reason`` is one of ``REASONS``. A candidate's artifact digest is
the SHA-256 of its manifest envelope (what approvals name besides the weights).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedgate.crypto import sha256_hex
from fedgate.errors import VerificationError
from fedgate.server.coordinator.federation import Federation
from fedgate.server.gate.decisions import verify_approval
from fedgate.server.region.artifact import Artifact, Manifest, verify_bytes
from fedgate.statements import (
    BadSignature,
    StatementError,
    SubjectMismatch,
    UnknownKey,
    Verified,
    read_statement,
    verify_envelope,
)

BASE_RE = re.compile(r"(?:global:)?(\d{1,9})\Z")
RESIDENCY_CHECK = "residency"

REASONS = {
    "malformed": "the bundle cannot be read (manifest, approval or weights)",
    "unknown-region": "the region is not in the federation",
    "forged-manifest": "the manifest is not signed by the region server key",
    "tampered-weights": "the weights do not hash to the digest the manifest signs",
    "architecture-mismatch": "the model architecture differs from the federation's",
    "stale-base": "trained from another global version than the current one",
    "export-forbidden": "the region may not export (federation file, or no residency check)",
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
        return sha256_hex(self.manifest)


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


def base_version(text: str) -> int | None:
    """A manifest's ``base_global_version`` as a number: "" is 0 (no global model yet),
    ``global:N`` or ``N`` is N; anything else None."""
    if text == "":
        return 0
    match = BASE_RE.match(text)
    return int(match.group(1)) if match else None


def _artifact(bundle: Bundle, fed: Federation) -> Artifact:
    """The manifest, verified under its region's key and about these weights."""
    try:
        region = str(read_statement(bundle.manifest).predicate.get("region", ""))
    except StatementError as exc:
        raise Refused("malformed", f"manifest: {exc}") from None
    trust = fed.regions.get(region)
    if trust is None:
        raise Refused("unknown-region", f"region {region!r} is not in the federation")
    try:
        return verify_bytes(bundle.manifest, bundle.weights, trust.key, Path(bundle.source))
    except (UnknownKey, BadSignature) as exc:
        raise Refused("forged-manifest", f"manifest of region {region}: {exc}") from None
    except SubjectMismatch as exc:
        raise Refused("tampered-weights", f"weights of region {region}: {exc}") from None
    except StatementError as exc:
        raise Refused("malformed", f"manifest of region {region}: {exc}") from None


def _approval(raw: bytes, fed: Federation, artifact: Artifact, where: str) -> Verified:
    """One approval, verified against the registered approvers of the artifact's region."""
    region = artifact.manifest.region
    try:
        return verify_approval(raw, fed.regions[region].approvers.values(), artifact)
    except BadSignature as exc:
        raise Refused("forged-approval", f"{where}: {exc}") from None
    except SubjectMismatch as exc:
        raise Refused("approval-other-digest", f"{where}: {exc}") from None
    except UnknownKey as exc:
        others = fed.all_approvers()
        try:
            signer = verify_envelope(raw, [k for _, k in others.values()]).signer
        except StatementError:
            raise Refused("mismatched-approval", f"{where}: {exc}") from None
        raise Refused(
            "mismatched-approval",
            f"{where} is signed by an approver of region {others[signer][0]}, not of {region}",
        ) from None
    except StatementError as exc:
        raise Refused("malformed", f"{where}: {exc}") from None


def _approvals(bundle: Bundle, fed: Federation, artifact: Artifact) -> list[Verified]:
    valid: dict[str, Verified] = {}
    for i, raw in enumerate(bundle.approvals, 1):
        verified = _approval(raw, fed, artifact, f"approval {i}")
        valid.setdefault(verified.signer, verified)
    region = artifact.manifest.region
    if len(valid) < fed.approvals:
        raise Refused(
            "unapproved",
            f"{len(valid)} valid approval(s) by registered approvers of {region}, "
            f"{fed.approvals} needed",
        )
    return list(valid.values())


def _may_export(fed: Federation, approvals: list[Verified], region: str) -> None:
    if not fed.regions[region].export:
        raise Refused("export-forbidden", f"the federation file forbids export from {region}")
    for approval in approvals:
        checks = approval.statement.predicate.get("checks", [])
        if not any(c.get("name") == RESIDENCY_CHECK and c.get("passed") is True for c in checks):
            raise Refused(
                "export-forbidden", f"an approval of {region} records no passed residency check"
            )


def _shapes(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    return {name: tuple(a.shape) for name, a in tensors.items()}


def verify_bundle(bundle: Bundle, fed: Federation, expect: Expectation) -> Candidate:
    """Every check on one bundle, in order; raises ``Refused``."""
    artifact = _artifact(bundle, fed)
    manifest: Manifest = artifact.manifest
    region = manifest.region
    if manifest.model != fed.architecture:
        raise Refused(
            "architecture-mismatch",
            f"architecture {manifest.model!r}, the federation's is {fed.architecture!r}",
        )
    base = base_version(manifest.base_global_version)
    if base is None:
        raise Refused("malformed", f"base_global_version {manifest.base_global_version!r}")
    if base != expect.base_version:
        raise Refused(
            "stale-base",
            f"trained from global version {base}, current is {expect.base_version}",
        )
    approvals = _approvals(bundle, fed, artifact)
    _may_export(fed, approvals, region)
    tensors = _load_tensors(bundle.weights)
    if expect.shapes is not None and _shapes(tensors) != dict(expect.shapes):
        raise Refused("architecture-mismatch", "tensor names or shapes differ from the base")
    return Candidate(
        bundle.source, region, bundle.artifact_sha256, artifact.sha256,
        manifest.devices_accepted, tuple(a.envelope_sha256 for a in approvals),
        tuple(a.signer for a in approvals), tensors,
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
    """Every bundle directory under ``inbox``, in name order (hidden ones, such as a bundle
    still being assembled by ``fedgate region artifact export``, are not bundles yet)."""
    if not inbox.is_dir():
        return []
    return [
        read_bundle(d) for d in sorted(inbox.iterdir()) if d.is_dir() and not d.name.startswith(".")
    ]
