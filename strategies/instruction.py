"""Signed round instructions: the region server vouches for what it asks a device to do.

Every train or evaluate message a region server sends carries, in its ``ConfigRecord``, the
round's identity (``region``, ``run-id``, ``server-round``, ``nonce``) and the server's
Ed25519 signature (``instruction-sig``, lowercase hex) over the RFC 8785 canonical JSON of::

    {"type": "fedgate.instruction", "version": 1, "kind": "train" | "evaluate",
     "model_digest": <canonical arrays digest of the model sent>,
     "config": {<key>: [<type tag>, <value>] for every other ConfigRecord entry}}

Each config value is signed with its Flower type (``bool``, ``int``, ``float``, ``str``,
``bytes`` as lowercase hex, ``list[<type>]``, or ``list`` when empty), so an ``int`` cannot be
swapped for an equal ``float`` without the signature failing. Integers must fit in
+-(2^53 - 1) and floats must be finite and not -0.0 (RFC 8785 numbers; it writes -0.0 as 0,
which would let a zero's sign change unnoticed).

A device verifies it against its trust anchor (the region server's public key, stored at
enrollment) before it trains, and refuses an unsigned, wrongly signed, foreign-region or
malformed instruction. The signed ``nonce`` and ``model_digest`` are what the device then
puts into its update envelope (``fedgate.strategies.envelope``). The byte-exact
specification is ``docs/signing.md``.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedgate.crypto import SignatureError, canonical_json, public_bytes, sign, verify
from fedgate.errors import VerificationError
from fedgate.formats import (
    HEX64_RE,
    MAX_INSTRUCTION_ENTRIES,
    MAX_ROUND,
    MAX_SAFE,
    MAX_TEXT,
    NONCE_RE,
    SIGNATURE_RE,
)

INSTRUCTION_TYPE = "fedgate.instruction"
INSTRUCTION_VERSION = 1
SIGNATURE_KEY = "instruction-sig"
KINDS = ("train", "evaluate")
REQUIRED = {"region": str, "run-id": str, "server-round": int, "nonce": str}
# Python type of a ConfigRecord value -> its tag in the signed form (bool before int: a
# bool is an int in Python).
_TAGS: tuple[tuple[type, str], ...] = (
    (bool, "bool"),
    (int, "int"),
    (float, "float"),
    (str, "str"),
    (bytes, "bytes"),
)


class InstructionReason:
    """Why a device refused an instruction (``InstructionError.code``)."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed-instruction"
    BAD_SIGNATURE = "bad-signature"
    WRONG_REGION = "wrong-region"


class InstructionError(VerificationError, ValueError):
    """A round instruction is unsigned, wrongly signed, foreign or malformed."""

    def __init__(self, message: str, code: str = InstructionReason.MALFORMED) -> None:
        super().__init__(message)
        self.code = code


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


def _tag(key: str, value: Any) -> str:
    for kind, tag in _TAGS:
        if isinstance(value, kind):
            return tag
    raise InstructionError(
        f"config entry {key!r} is a {type(value).__name__}, not bool/int/float/str/bytes"
    )


def _scalar(key: str, tag: str, value: Any) -> Any:
    """``value`` as it appears in the signed JSON; raise if RFC 8785 cannot carry it."""
    if tag == "int" and not -MAX_SAFE <= value <= MAX_SAFE:
        raise InstructionError(f"config entry {key!r}: integer beyond +-(2^53 - 1)")
    if tag == "float":
        if not math.isfinite(value):
            raise InstructionError(f"config entry {key!r}: {value} is not a finite number")
        if value == 0 and math.copysign(1.0, value) < 0:  # JSON writes -0.0 as 0
            raise InstructionError(f"config entry {key!r}: -0.0 cannot be signed; use 0.0")
        return float(value)
    if tag == "bytes":
        return bytes(value).hex()
    if tag == "str":
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InstructionError(f"config entry {key!r}: text is not valid UTF-8") from None
        return str(value)
    return int(value) if tag == "int" else value


def _typed(key: str, value: Any) -> list[Any]:
    """``[tag, value]`` of one config entry."""
    if not isinstance(value, list):
        tag = _tag(key, value)
        return [tag, _scalar(key, tag, value)]
    if not value:
        return ["list", []]
    tags = {_tag(key, item) for item in value}
    if len(tags) != 1:
        raise InstructionError(f"config entry {key!r}: a list mixes {sorted(tags)}")
    tag = tags.pop()
    return [f"list[{tag}]", [_scalar(key, tag, item) for item in value]]


def _entries(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config without the signature, after checking its size and key types."""
    if not isinstance(config, Mapping):
        raise InstructionError(f"instruction config is a {type(config).__name__}, not a mapping")
    if len(config) > MAX_INSTRUCTION_ENTRIES:
        raise InstructionError(
            f"instruction has more than {MAX_INSTRUCTION_ENTRIES} config entries"
        )
    out: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            raise InstructionError("config keys must be strings")
        if key != SIGNATURE_KEY:
            out[key] = list(value) if isinstance(value, list) else value
    return out


def instruction_bytes(kind: str, model_digest: str, config: Mapping[str, Any]) -> bytes:
    """The exact bytes the region server signs for one message."""
    if kind not in KINDS:
        raise InstructionError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(model_digest, str) or not HEX64_RE.fullmatch(model_digest):
        raise InstructionError("model digest must be 64 lowercase hex digits")
    body = {
        "type": INSTRUCTION_TYPE,
        "version": INSTRUCTION_VERSION,
        "kind": kind,
        "model_digest": model_digest,
        "config": {key: _typed(key, value) for key, value in _entries(config).items()},
    }
    try:
        return canonical_json(body)
    except (TypeError, ValueError) as exc:  # e.g. a key that is not valid UTF-8
        raise InstructionError(f"config is not canonical JSON: {exc}") from None


def _check_fields(config: Mapping[str, Any]) -> None:
    if not isinstance(config, Mapping):
        raise InstructionError(f"instruction config is a {type(config).__name__}, not a mapping")
    for key, kind in REQUIRED.items():
        value = config.get(key)
        if type(value) is not kind:
            raise InstructionError(f"instruction field {key!r} missing or not {kind.__name__}")
    for key in ("region", "run-id"):
        if not 1 <= len(config[key]) <= MAX_TEXT:
            raise InstructionError(f"instruction {key} must have 1-{MAX_TEXT} characters")
    if not NONCE_RE.fullmatch(config["nonce"]):
        raise InstructionError("instruction nonce must be 32-128 lowercase hex digits")
    if not 0 <= config["server-round"] <= MAX_ROUND:
        raise InstructionError(f"instruction server-round must be in [0, {MAX_ROUND}]")


def sign_instruction(
    key: Ed25519PrivateKey, kind: str, model_digest: str, config: Mapping[str, Any]
) -> str:
    """Hex signature to store under ``instruction-sig`` in the message's ConfigRecord."""
    _check_fields(config)
    return sign(key, instruction_bytes(kind, model_digest, config)).hex()


class VerifiedInstructions:
    """The instructions whose signature already verified in this process, exactly as given.

    Every virtual device of a simulation, and every device a ClientApp worker serves, gets
    the round's one instruction with the same model: the canonical form and the Ed25519
    check are the same computation on the same inputs each time. An entry is the whole
    input (kind, model digest, trust anchor, every config entry with its type and exact
    ``repr``, so ``1``/``1.0``/``True`` and ``0.0``/``-0.0`` stay apart): only an identical
    instruction skips the recomputation, and only one that verified is remembered. The
    other checks (fields, region) still run every time.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._seen: OrderedDict[tuple, None] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(
        config: Mapping[str, Any], kind: str, model_digest: str, anchor: Ed25519PublicKey
    ) -> tuple:
        entries = tuple((k, type(k), type(v), repr(v)) for k, v in config.items())
        return kind, model_digest, public_bytes(anchor), entries

    def __contains__(self, key: tuple) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return True
            return False

    def add(self, key: tuple) -> None:
        with self._lock:
            self._seen[key] = None
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)


_VERIFIED = VerifiedInstructions()


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
    so a model swapped in transit fails the signature. Raises ``InstructionError`` only.
    """
    if not isinstance(config, Mapping):
        raise InstructionError(f"instruction config is a {type(config).__name__}, not a mapping")
    sig = config.get(SIGNATURE_KEY)
    if sig is None:
        raise InstructionError(
            f"unsigned instruction (no {SIGNATURE_KEY})", InstructionReason.UNSIGNED
        )
    if not isinstance(sig, str) or not SIGNATURE_RE.fullmatch(sig):
        raise InstructionError(f"{SIGNATURE_KEY} must be 128 lowercase hex digits")
    _check_fields(config)
    memo = VerifiedInstructions.key(config, kind, model_digest, anchor)
    if memo not in _VERIFIED:
        try:
            verify(anchor, bytes.fromhex(sig), instruction_bytes(kind, model_digest, config))
        except SignatureError:
            raise InstructionError(
                "instruction signature does not verify against the region's trust anchor",
                InstructionReason.BAD_SIGNATURE,
            ) from None
        _VERIFIED.add(memo)
    if config["region"] != region:
        raise InstructionError(
            f"instruction is for region {config['region']!r}; this device belongs to {region!r}",
            InstructionReason.WRONG_REGION,
        )
    plain = _entries(config)
    return Instruction(
        kind=kind,
        region=plain["region"],
        run_id=plain["run-id"],
        server_round=plain["server-round"],
        nonce=plain["nonce"],
        model_digest=model_digest,
        config=plain,
    )
