"""The text formats and size limits that signed and stored records share, written once.

Update envelopes (``strategies/envelope.py``), round instructions (``strategies/instruction.py``),
the audit chain (``server/audit``) and the blob store (``server/db/blobs.py``) check their
fields against these; ``docs/signing.md`` states the same limits for implementers.
Every pattern is anchored at the end (``\\Z``), so ``match`` and ``fullmatch`` agree.
"""

from __future__ import annotations

import re

HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
"""64 lowercase hex digits: a SHA-256 digest (model, arrays, blob, audit hash) or a device id."""
NONCE_RE = re.compile(r"(?:[0-9a-f]{2}){16,64}\Z")
"""A round's server nonce: 16-64 random bytes as 32-128 lowercase hex digits."""
SIGNATURE_RE = re.compile(r"[0-9a-f]{128}\Z")
"""An Ed25519 signature (64 bytes) as 128 lowercase hex digits."""

MAX_TEXT = 128
"""Longest region name, run id or metric name (characters) in an envelope or instruction."""
MAX_ROUND = 2**31 - 1
"""Largest round number an envelope or instruction may name."""
MAX_SAFE = 2**53 - 1
"""Largest integer magnitude RFC 8785 (canonical JSON) carries exactly."""
MAX_ENVELOPE_CHARS = 8192
"""Longest update envelope text a region server reads."""
MAX_METRICS = 32
"""Most metrics one update envelope may state."""
MAX_INSTRUCTION_ENTRIES = 64
"""Most entries one round instruction's ConfigRecord may hold (its signature included)."""


def is_hex64(value: object) -> bool:
    """Whether ``value`` is a string of exactly 64 lowercase hex digits."""
    return isinstance(value, str) and HEX64_RE.match(value) is not None


def is_signature_hex(value: object) -> bool:
    """Whether ``value`` is an Ed25519 signature as exactly 128 lowercase hex digits (the one
    encoding: ``bytes.fromhex`` also takes upper case, which would make a signed record
    malleable)."""
    return isinstance(value, str) and SIGNATURE_RE.match(value) is not None
