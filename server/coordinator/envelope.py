"""Signed statements as the coordinator reads them: in-toto Statement v1 in a DSSE envelope,
Ed25519 signatures over DSSE's pre-authentication encoding (PAE), key id = key fingerprint.

This is the small interface the coordinator's verification needs (``sign_statement``,
``open_statement``); ``fedgate/statements.py`` (branch ``global-gate``) is its replacement
and, once merged, the one implementation.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.crypto import SignatureError, canonical_json, fingerprint, sign, verify
from fedgate.errors import VerificationError

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
MAX_ENVELOPE = 1 << 20


class EnvelopeError(VerificationError, ValueError):
    """A DSSE envelope is malformed or its signature does not verify."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    kind = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True)
class Opened:
    """A verified statement: its parsed JSON and the fingerprint of the key that signed it."""

    statement: dict[str, Any]
    keyid: str

    @property
    def predicate(self) -> dict[str, Any]:
        value = self.statement.get("predicate")
        return value if isinstance(value, dict) else {}

    @property
    def predicate_type(self) -> str:
        return str(self.statement.get("predicateType", ""))

    def subject_digest(self) -> str:
        """The SHA-256 of the statement's (single) subject, '' when it names none."""
        subjects = self.statement.get("subject")
        if not isinstance(subjects, list) or len(subjects) != 1:
            return ""
        digest = subjects[0].get("digest") if isinstance(subjects[0], dict) else None
        return str(digest.get("sha256", "")) if isinstance(digest, dict) else ""


def statement(
    predicate_type: str, subject_name: str, subject_sha256: str, predicate: Mapping[str, Any]
) -> dict[str, Any]:
    """An in-toto Statement v1 about one subject."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject_name, "digest": {"sha256": subject_sha256}}],
        "predicateType": predicate_type,
        "predicate": dict(predicate),
    }


def sign_statement(key: Ed25519PrivateKey, body: Mapping[str, Any]) -> bytes:
    """The DSSE envelope (canonical JSON bytes) of ``body`` signed by ``key``."""
    payload = canonical_json(dict(body))
    signature = sign(key, pae(PAYLOAD_TYPE, payload))
    return canonical_json(
        {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [
                {"keyid": fingerprint(key), "sig": base64.b64encode(signature).decode()}
            ],
        }
    )


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise EnvelopeError(f"envelope {what} is not a string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError(f"envelope {what} is not base64") from None


def peek(data: bytes) -> dict[str, Any]:
    """The statement inside an envelope, NOT verified (to learn whose key should have signed)."""
    if len(data) > MAX_ENVELOPE:
        raise EnvelopeError(f"envelope larger than {MAX_ENVELOPE} bytes")
    try:
        env = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("envelope is not JSON") from None
    if not isinstance(env, dict) or env.get("payloadType") != PAYLOAD_TYPE:
        raise EnvelopeError(f"envelope payloadType is not {PAYLOAD_TYPE}")
    try:
        body = json.loads(_b64(env.get("payload"), "payload"))
    except (ValueError, UnicodeDecodeError):
        raise EnvelopeError("envelope payload is not JSON") from None
    if not isinstance(body, dict) or body.get("_type") != STATEMENT_TYPE:
        raise EnvelopeError(f"payload is not an in-toto statement ({STATEMENT_TYPE})")
    return body


def open_statement(data: bytes, trusted: Mapping[str, Ed25519PublicKey]) -> Opened:
    """Verify ``data`` against ``trusted`` keys (fingerprint -> key); the first signature by a
    trusted key that verifies wins. Raises ``EnvelopeError`` naming what failed."""
    body = peek(data)
    env = json.loads(data)
    payload = _b64(env["payload"], "payload")
    signatures = env.get("signatures")
    if not isinstance(signatures, list) or not signatures:
        raise EnvelopeError("envelope has no signatures")
    message = pae(PAYLOAD_TYPE, payload)
    known = False
    for entry in signatures:
        keyid = entry.get("keyid") if isinstance(entry, dict) else None
        pub = trusted.get(keyid) if isinstance(keyid, str) else None
        if pub is None:
            continue
        known = True
        try:
            verify(pub, _b64(entry.get("sig"), "signature"), message)
        except SignatureError:
            continue
        return Opened(body, keyid)  # type: ignore[arg-type]
    if not known:
        raise EnvelopeError("signed by no trusted key")
    raise EnvelopeError("signature does not verify")
