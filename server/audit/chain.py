"""The audit chain's hashing rules, shared by appenders and verifiers.

An event's hash is ``SHA-256(JCS({"chain", "kind", "payload", "prev", "seq", "ts"}))``:
RFC 8785 canonical JSON of the chain id, its sequence number, kind, timestamp, payload
and the previous event's hash (``GENESIS`` for seq 1). The payload is stored as its
canonical JSON text, so the canonical bytes are spliced together without re-parsing it;
a stored payload that is not canonical therefore fails verification. A signed head is an
Ed25519 signature over ``JCS({"chain", "head", "purpose", "seq", "signed_at"})``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fedgate.crypto import canonical_json

GENESIS = "0" * 64
HEAD_PURPOSE = "fedgate.audit.head.v1"
KIND_RE = re.compile(r"[a-z][a-z0-9_.-]{0,63}\Z")
TS_RE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\Z")


def now_ts() -> str:
    """Fixed-width UTC timestamp, e.g. ``2025-01-02T03:04:05.000006Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def json_string(s: str) -> str:
    """RFC 8785 encoding of a string; printable ASCII needs escaping only for " and \\."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'
    return canonical_json(s).decode()


def canonical_payload(payload: Mapping[str, Any]) -> str:
    """Canonical JSON text of an event payload (a JSON object)."""
    if not isinstance(payload, Mapping):
        raise TypeError(f"an audit payload is a JSON object, got {type(payload).__name__}")
    return canonical_json(dict(payload)).decode()


def event_bytes(chain: str, seq: int, kind: str, ts: str, payload: str, prev: str) -> bytes:
    """The canonical content of one event; ``payload`` is its canonical JSON text."""
    return (
        f'{{"chain":{json_string(chain)},"kind":{json_string(kind)},"payload":{payload},'
        f'"prev":{json_string(prev)},"seq":{int(seq)},"ts":{json_string(ts)}}}'
    ).encode()


def event_hash(chain: str, seq: int, kind: str, ts: str, payload: str, prev: str) -> str:
    return hashlib.sha256(event_bytes(chain, seq, kind, ts, payload, prev)).hexdigest()


def head_message(chain: str, seq: int, head: str, signed_at: str) -> bytes:
    """What a signed head's signature covers."""
    return canonical_json(
        {"chain": chain, "head": head, "purpose": HEAD_PURPOSE, "seq": seq, "signed_at": signed_at}
    )


@dataclass(frozen=True)
class EventRecord:
    """One stored audit event."""

    seq: int
    kind: str
    ts: str
    payload: str  # canonical JSON text
    prev: str
    hash: str

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.payload)


@dataclass(frozen=True)
class HeadRecord:
    """One signed chain head."""

    seq: int
    head: str
    key: str  # signer's key fingerprint
    signature: str  # hex
    signed_at: str
