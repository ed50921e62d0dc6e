"""The regional artifact: what a finished run hands to the gate.

The final weights (safetensors in the blob store, addressed by SHA-256) and a manifest: an
in-toto Statement v1 whose subject is the weights' digest and whose predicate (``Manifest``)
says how they were made, in a DSSE envelope signed by the region server key
(``fedgate/statements.py``). The envelope lives at ``<home>/artifacts/<sha>.dsse.json``; the
artifact row and its ``artifact.produced`` audit event record the manifest and the
envelope's digest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.atomic_file import write_atomic
from fedgate.crypto import read_public_key, sha256_hex
from fedgate.errors import UsageError
from fedgate.formats import is_hex64
from fedgate.server.audit.actors import config_digest
from fedgate.server.audit.keys import region_pub_path
from fedgate.server.audit.store import Store
from fedgate.server.db.blobs import BlobStore
from fedgate.statements import (
    MalformedStatement,
    Statement,
    check_subject,
    read_statement,
    sign_statement,
    statement,
    verify_envelope,
)

PREDICATE_TYPE = "https://fedgate.dev/attestation/regional-artifact/v1"
KIND = "regional-model"
SUFFIX = ".dsse.json"


class ArtifactError(UsageError, LookupError):
    """An artifact reference (path or digest) that names no artifact here."""


def _number(value: Any) -> float | None:
    """A metric as the manifest states it: a finite float, or None (missing or NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Manifest:
    """The predicate of a regional artifact's statement (its JSON keys are these names)."""

    region: str
    run_id: str
    base_global_version: str  # "" when the run did not start from a global model
    model: str  # architecture id (fedgate.models.nets)
    rounds: int
    aggregator: str
    f: int
    devices_accepted: int  # distinct devices with at least one accepted update
    updates_accepted: int
    updates_rejected: int
    rejected_by_reason: dict[str, int]
    val_acc: float | None  # on the region's validation split
    val_loss: float | None
    test_acc: float | None  # on the common test split
    base_val_acc: float | None  # the base global model's, on the same validation split
    audit_seq: int  # the region's audit chain head when the run ended
    audit_head: str
    config_sha256: str  # SHA-256 of the canonical JSON of the run's RunSpec config

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Manifest:
        """Parse a predicate; ``MalformedStatement`` names a missing or mistyped field."""
        names = [f.name for f in fields(cls)]
        if sorted(raw) != sorted(names):
            missing, extra = set(names) - set(raw), set(raw) - set(names)
            raise MalformedStatement(
                f"not a regional artifact manifest (missing {sorted(missing)}, "
                f"unexpected {sorted(extra)})"
            )
        ints = ("rounds", "f", "devices_accepted", "updates_accepted", "updates_rejected",
                "audit_seq")  # fmt: skip
        floats = ("val_acc", "val_loss", "test_acc", "base_val_acc")
        for name in names:
            value = raw[name]
            if name in ints:
                ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
            elif name in floats:
                ok = value is None or (
                    isinstance(value, int | float) and not isinstance(value, bool)
                )
            elif name == "rejected_by_reason":
                ok = isinstance(value, dict) and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for v in value.values()
                )
            else:
                ok = isinstance(value, str)
            if not ok:
                raise MalformedStatement(f"manifest field {name} has a bad value: {value!r}")
        values = {n: raw[n] for n in names}
        for name in floats:
            values[name] = None if raw[name] is None else float(raw[name])
        return cls(**values)

    @property
    def rejected_fraction(self) -> float:
        total = self.updates_accepted + self.updates_rejected
        return self.updates_rejected / total if total else 0.0


def build_manifest(
    spec: Any,
    run_id: str,
    rounds: Sequence[Any],
    final: Mapping[str, Any],
    head: tuple[int, str],
    *,
    base_global_version: str = "",
    base_val_acc: float | None = None,
) -> Manifest:
    """The manifest of a finished run: ``spec`` its RunSpec, ``rounds`` its RoundRecords,
    ``final`` the last round's evaluation, ``head`` the audit chain's (seq, hash)."""
    fates = [c for r in rounds for c in r.clients]
    rejected: dict[str, int] = {}
    for fate in fates:
        if not fate.accepted:
            rejected[fate.reason] = rejected.get(fate.reason, 0) + 1
    return Manifest(
        region=spec.region,
        run_id=str(run_id),
        base_global_version=base_global_version,
        model=spec.model,
        rounds=int(spec.rounds),
        aggregator=spec.aggregator,
        f=int(spec.f),
        devices_accepted=len({c.device_id for c in fates if c.accepted and c.device_id}),
        updates_accepted=sum(1 for c in fates if c.accepted),
        updates_rejected=sum(1 for c in fates if not c.accepted),
        rejected_by_reason=dict(sorted(rejected.items())),
        val_acc=_number(final.get("val-acc")),
        val_loss=_number(final.get("val-loss")),
        test_acc=_number(final.get("test-acc")),
        base_val_acc=base_val_acc if base_global_version else None,
        audit_seq=int(head[0]),
        audit_head=str(head[1]),
        config_sha256=config_digest(spec.to_run_config()),
    )


def artifacts_dir(home: str | Path) -> Path:
    return Path(home) / "artifacts"


def envelope_path(home: str | Path, sha: str) -> Path:
    return artifacts_dir(home) / f"{sha}{SUFFIX}"


def subject_name(manifest: Manifest) -> str:
    return f"fedgate:{manifest.region}/{manifest.run_id}/model.safetensors"


def write_artifact(
    home: str | Path, store: Store, key: Ed25519PrivateKey, manifest: Manifest, weights_sha: str
) -> Path:
    """Sign ``manifest`` about the weights blob ``weights_sha`` with the region ``key``, write
    the envelope beside the other artifacts and record it (row + ``artifact.produced``).

    An artifact is addressed by its weights: a run that reproduces weights an earlier run
    already made (same data, seed and config) keeps that earlier artifact, the one any approval
    names, and the chain records the reproduction (``artifact.reproduced``)."""
    earlier = store.artifact(weights_sha)
    if earlier is not None:
        store.audit.append(
            "artifact.reproduced",
            {"sha256": weights_sha, "run": manifest.run_id, "first_run": earlier["run_id"]},
        )
        return Path(earlier["path"])
    stmt = statement(subject_name(manifest), weights_sha, PREDICATE_TYPE, manifest.to_json())
    envelope = sign_statement(key, stmt)
    path = envelope_path(home, weights_sha)
    write_atomic(path, envelope)
    record = {**manifest.to_json(), "envelope_sha256": sha256_hex(envelope)}
    store.record_artifact(weights_sha, str(path), KIND, record, run_id=manifest.run_id)
    return path


@dataclass(frozen=True)
class Artifact:
    """An artifact's envelope and what it states (verified or not: see ``verify``)."""

    path: Path
    envelope: bytes
    statement: Statement
    manifest: Manifest

    @property
    def sha256(self) -> str:
        """The weights' digest (the statement's subject)."""
        return self.statement.subject.sha256

    @property
    def envelope_sha256(self) -> str:
        return sha256_hex(self.envelope)


def locate(home: str | Path, ref: str) -> Path:
    """An artifact's envelope: ``ref`` is its path, or the weights' digest (or a unique prefix
    of 8+ hex digits) under ``<home>/artifacts``."""
    path = Path(ref)
    if path.is_file():
        return path
    where = artifacts_dir(home)
    ref = ref.lower()
    if len(ref) >= 8 and all(c in "0123456789abcdef" for c in ref):
        found = where.glob(f"{ref}*{SUFFIX}") if where.is_dir() else []
        hits = sorted(p for p in found if is_hex64(p.name.removesuffix(SUFFIX)))  # not approvals
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ArtifactError(f"{ref} names {len(hits)} artifacts; give more digits")
    raise ArtifactError(
        f"no artifact {ref!r}: give an envelope file or a weights digest found in {where}"
    )


def parse_artifact(path: Path, envelope: bytes) -> Artifact:
    """The artifact an envelope describes, signatures NOT checked (for ``show``)."""
    stmt = read_statement(envelope)
    if stmt.predicate_type != PREDICATE_TYPE:
        raise MalformedStatement(f"{path} is a {stmt.predicate_type!r} statement, not an artifact")
    return Artifact(path, envelope, stmt, Manifest.from_json(stmt.predicate))


def load_artifact(home: str | Path, ref: str) -> Artifact:
    path = locate(home, ref)
    return parse_artifact(path, path.read_bytes())


def verify_bytes(
    envelope: bytes, weights: bytes, region_key: Ed25519PublicKey, path: Path = Path("-")
) -> Artifact:
    """The artifact, once its envelope verifies under ``region_key`` and ``weights`` are the
    bytes it is about; a ``StatementError`` subclass otherwise."""
    verified = verify_envelope(envelope, [region_key], predicate_type=PREDICATE_TYPE)
    check_subject(verified.statement, weights)
    return Artifact(
        path, envelope, verified.statement, Manifest.from_json(verified.statement.predicate)
    )


def region_public_key(home: str | Path, region: str) -> Ed25519PublicKey:
    """The region server's public key (``<home>/keys/region-<r>.pub``)."""
    path = region_pub_path(home, region)
    if not path.is_file():
        raise ArtifactError(f"no public key for region {region!r} at {path}")
    return read_public_key(path)


def verify_artifact(
    home: str | Path, ref: str, region_key: Ed25519PublicKey | None = None
) -> Artifact:
    """Load and verify an artifact: the region key's signature (the key of the region the
    manifest names, from ``home``, unless ``region_key`` is given), the manifest, and the
    weights in the blob store hashing to the subject."""
    shown = load_artifact(home, ref)
    key = region_key or region_public_key(home, shown.manifest.region)
    if not is_hex64(shown.sha256):
        raise MalformedStatement("the artifact's subject is not a SHA-256 digest")
    weights = BlobStore(Path(home) / "blobs").path(shown.sha256)
    if not weights.is_file():
        raise ArtifactError(
            f"the artifact's weights {shown.sha256[:16]} are not in {weights.parent}"
        )
    return verify_bytes(shown.envelope, weights.read_bytes(), key, shown.path)
