"""Signed round instructions: the region server vouches for what it asks a device to do.

Every train or evaluate message a region server sends carries, in its ``ConfigRecord``, the
round's identity (``region``, ``run-id``, ``server-round``, ``nonce``) and the server's
Ed25519 signature (``instruction-sig``, lowercase hex) over the RFC 8785 canonical JSON of::

    {"type": "fedgate.instruction", "version": 1, "kind": "train" | "evaluate",
     "model_digest": <canonical arrays digest of the model sent>,
     "config": {every other entry of the ConfigRecord}}

A device verifies it against its trust anchor (the region server's public key, stored at
enrollment) before it trains, and refuses an unsigned, wrongly signed, foreign-region or
malformed instruction. The signed ``nonce`` and ``model_digest`` are what the device then
puts into its update envelope (``fedgate.strategies.envelope``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.crypto import SignatureError, canonical_json, sign, verify

INSTRUCTION_TYPE = "fedgate.instruction"
INSTRUCTION_VERSION = 1
SIGNATURE_KEY = "instruction-sig"
KINDS = ("train", "evaluate")
REQUIRED = {"region": str, "run-id": str, "server-round": int, "nonce": str}
MAX_ENTRIES = 64

_SIGNATURE = re.compile(r"[0-9a-f]{128}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"(?:[0-9a-f]{2}){16,64}")


class InstructionError(ValueError):
    """A round instruction is unsigned, wrongly signed, foreign or malformed."""


@dataclass(frozen=True)
class Instruction:
    """A verified instruction: what the device may rely on for this round."""

    kind: str
    region: str
    run_id: str
    server_round: int
    nonce: str
    model_digest: str
    config: dict[str, Any]


def _plain(config: Mapping[str, Any]) -> dict[str, Any]:
    """The signed part of ``config``: JSON scalars (and lists of them), signature excluded."""
    out: dict[str, Any] = {}
    if len(config) > MAX_ENTRIES:
        raise InstructionError(f"instruction has more than {MAX_ENTRIES} config entries")
    for key, value in config.items():
        if key == SIGNATURE_KEY:
            continue
        if not isinstance(key, str):
            raise InstructionError("config keys must be strings")
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bytes) or not isinstance(item, str | int | float | bool):
                raise InstructionError(f"config entry {key!r} is not a JSON scalar")
        out[key] = list(value) if isinstance(value, list) else value
    return out


def instruction_bytes(kind: str, model_digest: str, config: Mapping[str, Any]) -> bytes:
    """The exact bytes the region server signs for one message."""
    if kind not in KINDS:
        raise InstructionError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(model_digest, str) or not _HEX64.fullmatch(model_digest):
        raise InstructionError("model digest must be 64 lowercase hex digits")
    body = {
        "type": INSTRUCTION_TYPE,
        "version": INSTRUCTION_VERSION,
        "kind": kind,
        "model_digest": model_digest,
        "config": _plain(config),
    }
    try:
        return canonical_json(body)
    except (TypeError, ValueError) as exc:  # NaN, Inf, huge integers
        raise InstructionError(f"config is not canonical JSON: {exc}") from None


def _check_fields(config: Mapping[str, Any]) -> None:
    for key, kind in REQUIRED.items():
        value = config.get(key)
        if type(value) is not kind:
            raise InstructionError(f"instruction field {key!r} missing or not {kind.__name__}")
    if not _NONCE.fullmatch(config["nonce"]):
        raise InstructionError("instruction nonce must be 32-128 lowercase hex digits")
    if config["server-round"] < 0:
        raise InstructionError("instruction server-round must be >= 0")


def sign_instruction(
    key: Ed25519PrivateKey, kind: str, model_digest: str, config: Mapping[str, Any]
) -> str:
    """Hex signature to store under ``instruction-sig`` in the message's ConfigRecord."""
    _check_fields(config)
    return sign(key, instruction_bytes(kind, model_digest, config)).hex()


def verify_instruction(
    config: Mapping[str, Any],
    *,
    kind: str,
    model_digest: str,
    anchor: Ed25519PublicKey,
    region: str,
) -> Instruction:
    """Check a received ConfigRecord against the device's trust anchor; raise or return it.

    ``model_digest`` is the digest the device computed itself over the arrays it received,
    so a model swapped in transit fails the signature.
    """
    sig = config.get(SIGNATURE_KEY)
    if sig is None:
        raise InstructionError("unsigned instruction (no instruction-sig)")
    if not isinstance(sig, str) or not _SIGNATURE.fullmatch(sig):
        raise InstructionError("instruction-sig must be 128 lowercase hex digits")
    _check_fields(config)
    try:
        verify(anchor, bytes.fromhex(sig), instruction_bytes(kind, model_digest, config))
    except SignatureError:
        raise InstructionError(
            "instruction signature does not verify against the region's trust anchor"
        ) from None
    if config["region"] != region:
        raise InstructionError(
            f"instruction is for region {config['region']!r}; this device belongs to {region!r}"
        )
    plain = _plain(config)
    return Instruction(
        kind=kind,
        region=plain["region"],
        run_id=plain["run-id"],
        server_round=plain["server-round"],
        nonce=plain["nonce"],
        model_digest=model_digest,
        config=plain,
    )
