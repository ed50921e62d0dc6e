"""Signed statements: in-toto Statements v1 in DSSE envelopes, signed with fedgate's Ed25519 keys.

The one place that decides whether a statement is trusted. A statement names one or more
subjects (name + SHA-256 digest), a predicate type URI and a predicate (a JSON object); it is
serialized as RFC 8785 canonical JSON, which is the DSSE payload (payload type
``application/vnd.in-toto+json``), and signed through a securesystemslib ``CryptoSigner`` whose
key id is fedgate's key fingerprint (``fedgate.crypto.fingerprint``). The envelope file is the
canonical JSON of the DSSE envelope; ``verify_envelope`` accepts only those exact bytes, so any
change to an envelope, however small, is refused.

Regional artifacts (the region key), gate approvals (an approver's key) and the coordinator's
statements all go through here.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf import json_format
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import STATEMENT_TYPE_URI
from in_toto_attestation.v1.statement import Statement as InTotoStatement
from securesystemslib.dsse import Envelope
from securesystemslib.exceptions import UnverifiedSignatureError
from securesystemslib.signer import CryptoSigner, SSlibKey

from fedgate.crypto import canonical_json, fingerprint, sha256_hex
from fedgate.errors import VerificationError
from fedgate.formats import is_hex64

PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = STATEMENT_TYPE_URI  # "https://in-toto.io/Statement/v1"
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024


class StatementError(VerificationError, ValueError):
    """A signed statement failed verification; subclasses name why."""


class MalformedEnvelope(StatementError):
    """The bytes are not a canonical DSSE envelope fedgate wrote."""


class WrongPayloadType(StatementError):
    """The envelope does not carry an in-toto statement."""


class MalformedStatement(StatementError):
    """The payload is not a valid in-toto Statement v1 (or not the predicate type expected)."""


class UnknownKey(StatementError):
    """No signature is by a key the verifier trusts."""


class BadSignature(StatementError):
    """A signature by a trusted key does not verify."""


class SubjectMismatch(StatementError):
    """The statement's subject is not the digest of the bytes it is checked against."""


@dataclass(frozen=True)
class Subject:
    """What a statement is about: a name and the SHA-256 hex digest of its bytes."""

    name: str
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "digest": {"sha256": self.sha256}}


@dataclass(frozen=True)
class Statement:
    """An in-toto Statement v1: subjects, predicate type URI, predicate (a JSON object)."""

    subjects: tuple[Subject, ...]
    predicate_type: str
    predicate: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> Subject:
        """The first (for fedgate's statements: the only) subject."""
        return self.subjects[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "_type": STATEMENT_TYPE,
            "subject": [s.to_json() for s in self.subjects],
            "predicateType": self.predicate_type,
            "predicate": self.predicate,
        }

    def payload(self) -> bytes:
        """The canonical JSON bytes a DSSE envelope carries (checked against the schema)."""
        data = self.to_json()
        _check_schema(data)
        try:
            return canonical_json(data)
        except (TypeError, ValueError) as exc:  # NaN, infinities, non-JSON values
            raise MalformedStatement(f"the predicate is not canonical JSON: {exc}") from None

    @classmethod
    def from_payload(cls, payload: bytes) -> Statement:
        """Parse a DSSE payload; ``MalformedStatement`` names what is wrong."""
        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise MalformedStatement("the statement is not JSON") from None
        if not isinstance(data, dict):
            raise MalformedStatement("the statement is not a JSON object")
        _check_schema(data)
        subjects = tuple(_subject(s) for s in data["subject"])
        predicate = data.get("predicate")
        if not isinstance(predicate, dict):
            raise MalformedStatement("the statement's predicate is not a JSON object")
        return cls(subjects, str(data["predicateType"]), predicate)


def statement(
    name: str, sha256: str, predicate_type: str, predicate: Mapping[str, Any]
) -> Statement:
    """A statement about one subject ``name`` with digest ``sha256``."""
    if not is_hex64(sha256):
        raise MalformedStatement(f"a subject digest is 64 lowercase hex digits, got {sha256!r}")
    return Statement((Subject(name, sha256),), predicate_type, dict(predicate))


def _check_schema(data: Mapping[str, Any]) -> None:
    """The in-toto library's own Statement v1 checks, plus fedgate's: a SHA-256 per subject."""
    try:
        proto = json_format.ParseDict(dict(data), statement_pb2.Statement())
        InTotoStatement.copy_from_pb(proto).validate()
    except (json_format.ParseError, ValueError, TypeError) as exc:
        first = (str(exc).splitlines() or ["invalid"])[0]
        raise MalformedStatement(f"not an in-toto Statement v1: {first}") from None
    for raw in data["subject"]:
        _subject(raw)


def _subject(raw: Any) -> Subject:
    digest = raw.get("digest") if isinstance(raw, dict) else None
    sha = digest.get("sha256") if isinstance(digest, dict) else None
    if not isinstance(sha, str) or not is_hex64(sha):
        raise MalformedStatement("every subject needs a sha256 digest of 64 lowercase hex digits")
    return Subject(str(raw.get("name", "")), sha)


def trusted_key(public: Ed25519PublicKey | Ed25519PrivateKey) -> SSlibKey:
    """The securesystemslib key for a fedgate Ed25519 key; its key id is fedgate's fingerprint."""
    pub = public.public_key() if isinstance(public, Ed25519PrivateKey) else public
    return SSlibKey.from_crypto(pub, keyid=fingerprint(pub), scheme="ed25519")


def signer(key: Ed25519PrivateKey) -> CryptoSigner:
    """A securesystemslib ``CryptoSigner`` for a fedgate Ed25519 private key."""
    return CryptoSigner(key, trusted_key(key))


def sign_statement(key: Ed25519PrivateKey, stmt: Statement) -> bytes:
    """The canonical JSON bytes of a DSSE envelope carrying ``stmt``, signed by ``key``."""
    envelope = Envelope(stmt.payload(), PAYLOAD_TYPE, {})
    envelope.sign(signer(key))
    return canonical_json(envelope.to_dict())


@dataclass(frozen=True)
class Verified:
    """A statement whose envelope verified, and the fingerprint of the key that signed it."""

    statement: Statement
    signer: str
    envelope_sha256: str


def parse_envelope(data: bytes) -> Envelope:
    """The DSSE envelope in ``data``, which must be exactly its canonical JSON (no signature
    is checked here)."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise MalformedEnvelope(f"an envelope is at most {MAX_ENVELOPE_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise MalformedEnvelope("the envelope is not JSON") from None
    if not isinstance(raw, dict) or sorted(raw) != ["payload", "payloadType", "signatures"]:
        raise MalformedEnvelope(
            "a DSSE envelope is a JSON object with exactly payload, payloadType and signatures"
        )
    sigs = raw["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise MalformedEnvelope("the envelope has no signatures")
    for sig in sigs:
        if not isinstance(sig, dict) or sorted(sig) != ["keyid", "sig"]:
            raise MalformedEnvelope("a DSSE signature is an object with exactly keyid and sig")
        if not all(isinstance(v, str) for v in sig.values()):
            raise MalformedEnvelope("a DSSE signature's keyid and sig are strings")
    if not isinstance(raw["payload"], str) or not isinstance(raw["payloadType"], str):
        raise MalformedEnvelope("the envelope's payload and payloadType are strings")
    try:
        for text in [raw["payload"], *(s["sig"] for s in sigs)]:
            base64.b64decode(text, validate=True)
        envelope = Envelope.from_dict(json.loads(data))
        canonical = canonical_json(envelope.to_dict())
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise MalformedEnvelope(f"the envelope cannot be decoded: {exc}") from None
    if canonical != data:
        raise MalformedEnvelope("the envelope is not in the canonical form fedgate signs")
    return envelope


def read_statement(data: bytes) -> Statement:
    """The statement an envelope carries, WITHOUT checking any signature (for display)."""
    envelope = parse_envelope(data)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise WrongPayloadType(
            f"the envelope carries {envelope.payload_type!r}, not an in-toto statement"
        )
    return Statement.from_payload(envelope.payload)


def verify_envelope(
    data: bytes,
    trusted: Iterable[Ed25519PublicKey],
    *,
    predicate_type: str | None = None,
    subject_sha256: str | None = None,
) -> Verified:
    """The statement in envelope ``data``, once a signature by one of the ``trusted`` keys
    verifies over it and every trusted key's signature verifies; ``predicate_type`` and
    ``subject_sha256`` (the digest of the bytes it must be about), when given, must match.
    Raises a ``StatementError`` subclass naming the reason."""
    envelope = parse_envelope(data)
    if envelope.payload_type != PAYLOAD_TYPE:
        raise WrongPayloadType(
            f"the envelope carries {envelope.payload_type!r}, not {PAYLOAD_TYPE!r}"
        )
    keys = {k.keyid: k for k in map(trusted_key, trusted)}
    pae, signed_by = envelope.pae(), ""
    for keyid, sig in envelope.signatures.items():
        key = keys.get(keyid)
        if key is None:
            continue
        try:
            key.verify_signature(sig, pae)
        except (UnverifiedSignatureError, ValueError):
            raise BadSignature(f"the signature by key {keyid[:16]} does not verify") from None
        signed_by = signed_by or keyid
    if not signed_by:
        named = ", ".join(k[:16] for k in envelope.signatures)
        raise UnknownKey(f"signed by key {named}, which is not a trusted key here")
    stmt = Statement.from_payload(envelope.payload)
    if predicate_type is not None and stmt.predicate_type != predicate_type:
        raise MalformedStatement(
            f"the statement's predicate type is {stmt.predicate_type!r}, not {predicate_type!r}"
        )
    if subject_sha256 is not None and all(s.sha256 != subject_sha256 for s in stmt.subjects):
        raise SubjectMismatch(
            f"the statement is about {stmt.subject.sha256[:16]}, not {subject_sha256[:16]}"
        )
    return Verified(stmt, signed_by, sha256_hex(data))


def check_subject(stmt: Statement, data: bytes) -> None:
    """Refuse (``SubjectMismatch``) unless ``data`` hashes to the statement's subject."""
    actual = sha256_hex(data)
    if all(s.sha256 != actual for s in stmt.subjects):
        raise SubjectMismatch(
            f"the bytes hash to {actual[:16]}, the statement is about {stmt.subject.sha256[:16]}"
        )
