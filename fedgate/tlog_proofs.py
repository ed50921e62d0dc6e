"""Self-contained proof files for fedgate's audit logs, checked with only a public key.

A log's Merkle tree (``fedgate.merkle``) has one leaf per audit event: the leaf data is the
event's canonical bytes, ``JCS({"chain", "kind", "payload", "prev", "seq", "ts"})``, the very
bytes whose SHA-256 the hash chain stores as the event's hash; event ``seq`` is leaf
``seq - 1``. Its checkpoints (``fedgate.checkpoint``) have origin ``fedgate/audit/<chain id>``.

Two JSON files (``format`` names which):

* inclusion: ``checkpoint`` (the signed note), ``index``, ``leaf`` (the event's canonical JSON
  text, exactly the leaf bytes), ``leaf_hash`` and ``path`` (hex hashes, leaf to root);
* consistency: ``old`` and ``new`` (signed notes) and ``path``.

Checking an inclusion proof verifies the checkpoint's signature by the key (its origin the
key name), that ``leaf_hash`` is the hash of ``leaf``, that the event names this log's chain
and ``seq = index + 1``, and the RFC 9162 path to the signed root of the signed size. Checking a
consistency proof verifies both signatures, that both notes are the same log's, and the
RFC 9162 path from the old size and root to the new ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedgate.checkpoint import Checkpoint, CheckpointError, open_checkpoint, parse_verifier_key
from fedgate.crypto import KeyFileError, read_public_key
from fedgate.errors import VerificationError
from fedgate.formats import is_hex64
from fedgate.merkle import MerkleError, leaf_hash, verify_consistency, verify_inclusion

INCLUSION_FORMAT = "fedgate.audit.inclusion-proof.v1"
CONSISTENCY_FORMAT = "fedgate.audit.consistency-proof.v1"
ORIGIN_PREFIX = "fedgate/audit/"
MAX_PROOF_FILE = 4 * 1024 * 1024


class ProofError(VerificationError, ValueError):
    """A proof file is malformed or does not verify."""


def audit_origin(chain_id: str) -> str:
    """The checkpoint origin (and key name) of the audit log of chain ``chain_id``."""
    return f"{ORIGIN_PREFIX}{chain_id}"


@dataclass(frozen=True)
class InclusionProof:
    checkpoint: str  # signed note
    index: int
    leaf: str  # the event's canonical JSON text: the leaf's bytes, UTF-8
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": INCLUSION_FORMAT,
            "checkpoint": self.checkpoint,
            "index": self.index,
            "leaf": self.leaf,
            "leaf_hash": leaf_hash(self.leaf.encode("utf-8")).hex(),
            "path": [p.hex() for p in self.path],
        }


@dataclass(frozen=True)
class ConsistencyProof:
    old: str  # signed notes
    new: str
    path: tuple[bytes, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CONSISTENCY_FORMAT,
            "old": self.old,
            "new": self.new,
            "path": [p.hex() for p in self.path],
        }


@dataclass(frozen=True)
class InclusionResult:
    checkpoint: Checkpoint
    seq: int
    event: dict[str, Any]


@dataclass(frozen=True)
class ConsistencyResult:
    old: Checkpoint
    new: Checkpoint


def dumps(proof: InclusionProof | ConsistencyProof) -> str:
    return json.dumps(proof.to_json(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _field(data: dict, name: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProofError(
            f"the proof's {name!r} is missing or not a {getattr(kind, '__name__', kind)}"
        )
    return value


def _hashes(data: dict) -> tuple[bytes, ...]:
    path = _field(data, "path", list)
    if len(path) > 128:
        raise ProofError(f"the proof's path has {len(path)} hashes, more than any tree needs")
    if not all(isinstance(p, str) and is_hex64(p) for p in path):
        raise ProofError("the proof's path is not a list of 64-digit hex SHA-256 hashes")
    return tuple(bytes.fromhex(p) for p in path)


def loads(data: str | bytes) -> InclusionProof | ConsistencyProof:
    """Parse a proof file (either kind) strictly."""
    if len(data) > MAX_PROOF_FILE:
        raise ProofError(f"a proof file is at most {MAX_PROOF_FILE} bytes")
    try:
        parsed = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ProofError("not a proof file: not JSON") from None
    if not isinstance(parsed, dict):
        raise ProofError("not a proof file: not a JSON object")
    fmt = parsed.get("format")
    if fmt == INCLUSION_FORMAT:
        index = _field(parsed, "index", int)
        leaf = _field(parsed, "leaf", str)
        claimed = _field(parsed, "leaf_hash", str)
        proof = InclusionProof(_field(parsed, "checkpoint", str), index, leaf, _hashes(parsed))
        if claimed != proof.to_json()["leaf_hash"]:
            raise ProofError("the proof's leaf_hash is not the hash of its leaf")
        return proof
    if fmt == CONSISTENCY_FORMAT:
        return ConsistencyProof(
            _field(parsed, "old", str), _field(parsed, "new", str), _hashes(parsed)
        )
    raise ProofError(f"not a fedgate proof file (format {str(fmt)[:60]!r})")


def _open(note: str, key: Ed25519PublicKey, what: str, origin: str | None) -> Checkpoint:
    try:
        checkpoint = open_checkpoint(note, key, origin)
    except CheckpointError as exc:
        raise ProofError(f"{what}: {exc}") from None
    if not checkpoint.origin.startswith(ORIGIN_PREFIX):
        raise ProofError(f"{what}: origin {checkpoint.origin!r} is not a fedgate audit log")
    return checkpoint


def _event(leaf: str) -> dict[str, Any]:
    try:
        event = json.loads(leaf)
    except (ValueError, RecursionError):
        raise ProofError("the proof's leaf is not an audit event (not JSON)") from None
    if not isinstance(event, dict) or set(event) != {"chain", "kind", "payload", "prev", "seq",
                                                     "ts"}:  # fmt: skip
        raise ProofError("the proof's leaf is not an audit event")
    if not isinstance(event["seq"], int) or not isinstance(event["chain"], str):
        raise ProofError("the proof's leaf is not an audit event")
    return event


def check_inclusion(
    proof: InclusionProof, key: Ed25519PublicKey, origin: str | None = None
) -> InclusionResult:
    """Verify ``proof`` with ``key`` (and, given ``origin``, that it is that log's)."""
    checkpoint = _open(proof.checkpoint, key, "the checkpoint", origin)
    event = _event(proof.leaf)
    if audit_origin(event["chain"]) != checkpoint.origin:
        raise ProofError(f"the event is of chain {event['chain']}, the checkpoint of log "
                         f"{checkpoint.origin}")  # fmt: skip
    if event["seq"] != proof.index + 1:
        raise ProofError(f"the event is seq {event['seq']}, the proof is for leaf {proof.index} "
                         f"(seq {proof.index + 1})")  # fmt: skip
    try:
        verify_inclusion(
            leaf_hash(proof.leaf.encode("utf-8")), proof.index, checkpoint.size,
            list(proof.path), checkpoint.root,
        )  # fmt: skip
    except MerkleError as exc:
        raise ProofError(f"event seq {event['seq']} is not in the log of checkpoint size "
                         f"{checkpoint.size}: {exc}") from None  # fmt: skip
    return InclusionResult(checkpoint, event["seq"], event)


def check_consistency(
    proof: ConsistencyProof, key: Ed25519PublicKey, origin: str | None = None
) -> ConsistencyResult:
    """Verify that ``proof.new`` extends ``proof.old``, both signed by ``key``."""
    old = _open(proof.old, key, "the old checkpoint", origin)
    new = _open(proof.new, key, "the new checkpoint", origin)
    if old.origin != new.origin:
        raise ProofError(f"the checkpoints are of two logs: {old.origin} and {new.origin}")
    if old.size > new.size:
        raise ProofError(f"the old checkpoint (size {old.size}) is ahead of the new one "
                         f"(size {new.size}): the log was rolled back")  # fmt: skip
    try:
        verify_consistency(old.size, new.size, old.root, new.root, list(proof.path))
    except MerkleError as exc:
        raise ProofError(
            f"the log at size {new.size} does not extend the checkpoint at size {old.size} "
            f"(history rewritten, or a wrong proof): {exc}"
        ) from None
    return ConsistencyResult(old, new)


def read_key(path: str | Path) -> tuple[Ed25519PublicKey, str | None]:
    """A log's public key from a file: fedgate's ``.pub`` (hex of the raw key), or a note
    verifier key ``<name>+<id>+<base64>`` (then also its name: the origin it signs as)."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read public key {path}: {exc}") from None
    if "+" in text:
        try:
            name, key = parse_verifier_key(text)
        except CheckpointError as exc:
            raise KeyFileError(f"{path}: {exc}") from None
        return key, name
    return read_public_key(Path(path)), None


def check(
    data: str | bytes, key: Ed25519PublicKey, origin: str | None = None
) -> InclusionResult | ConsistencyResult:
    """Parse and verify a proof file of either kind."""
    proof = loads(data)
    if isinstance(proof, InclusionProof):
        return check_inclusion(proof, key, origin)
    return check_consistency(proof, key, origin)
