"""Property tests: a device refuses every instruction that is not exactly what the server signed."""

from __future__ import annotations

import math
import struct
from typing import Any

from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedgate.crypto import generate_key
from fedgate.formats import MAX_INSTRUCTION_ENTRIES
from fedgate.strategies.instruction import (
    KINDS,
    SIGNATURE_KEY,
    InstructionError,
    InstructionReason,
    sign_instruction,
    verify_instruction,
)

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
SERVER, OTHER = generate_key(), generate_key()
REQUIRED = ("region", "run-id", "server-round", "nonce")
SAFE = 2**53 - 1

HEX = "0123456789abcdef"
DIGESTS = st.text(HEX, min_size=64, max_size=64)
NONCES = st.integers(16, 64).flatmap(lambda n: st.text(HEX, min_size=2 * n, max_size=2 * n))
TEXT = st.text(min_size=1, max_size=24)
FLOATS = st.floats(allow_nan=False, allow_infinity=False).filter(
    lambda x: not (x == 0 and math.copysign(1.0, x) < 0)
)
SCALARS = {
    "bool": st.booleans(),
    "int": st.integers(-SAFE, SAFE),
    "float": FLOATS,
    "str": st.text(max_size=24),
    "bytes": st.binary(max_size=24),
}
VALUES = st.one_of(
    *SCALARS.values(), *(st.lists(s, min_size=0, max_size=5) for s in SCALARS.values())
)
EXTRA_KEYS = st.text(max_size=16).filter(lambda k: k not in (*REQUIRED, SIGNATURE_KEY))


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed instruction config: the round's identity plus arbitrary typed entries."""
    config: dict[str, Any] = {
        "region": draw(TEXT),
        "run-id": draw(TEXT),
        "server-round": draw(st.integers(0, 2**31 - 1)),
        "nonce": draw(NONCES),
    }
    extra = draw(st.dictionaries(EXTRA_KEYS, VALUES, max_size=MAX_INSTRUCTION_ENTRIES - 5))
    return {**config, **extra}


def sign(config: dict[str, Any], kind: str, digest: str, key: Any = SERVER) -> dict[str, Any]:
    return {**config, SIGNATURE_KEY: sign_instruction(key, kind, digest, config)}


def verified(config: Any, kind: str, digest: str, region: str) -> Any:
    return verify_instruction(
        config, kind=kind, model_digest=digest, anchor=SERVER.public_key(), region=region
    )


def refusal(config: Any, kind: str, digest: str, region: str) -> str:
    try:
        verified(config, kind, digest, region)
    except InstructionError as exc:
        return exc.code
    raise AssertionError("the instruction was accepted")


def signable(config: dict[str, Any], kind: str, digest: str) -> bool:
    """Whether the server could sign ``config`` at all (else the device calls it malformed)."""
    try:
        sign_instruction(
            OTHER, kind, digest, {k: v for k, v in config.items() if k != SIGNATURE_KEY}
        )
    except InstructionError:
        return False
    return True


@SETTINGS
@given(configs(), st.sampled_from(KINDS), DIGESTS)
def test_what_the_server_signs_the_device_accepts_unchanged(
    config: dict[str, Any], kind: str, digest: str
) -> None:
    message = RecordDict({"config": ConfigRecord(sign(config, kind, digest))})
    wire = recorddict_to_proto(message).SerializeToString()
    back = recorddict_from_proto(ProtoRecordDict.FromString(wire)).config_records["config"]
    got = verified(back, kind, digest, config["region"])
    assert got.config == config
    assert (got.run_id, got.server_round, got.nonce) == (
        config["run-id"],
        config["server-round"],
        config["nonce"],
    )


def _change_byte(raw: bytes, data: st.DataObject) -> bytes:
    pos = data.draw(st.integers(0, len(raw) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    return raw[:pos] + bytes([new]) + raw[pos + 1 :]


def _changed_scalar(value: Any, data: st.DataObject) -> Any:
    """``value`` with one byte of its Flower wire form changed (same Python type)."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):  # sint64 on the wire
        return struct.unpack("<q", _change_byte(struct.pack("<q", value), data))[0]
    if isinstance(value, float):  # IEEE 754 double on the wire
        return struct.unpack("<d", _change_byte(struct.pack("<d", value), data))[0]
    if isinstance(value, bytes):
        return _change_byte(value, data)
    return _change_byte(value.encode(), data).decode("utf-8", "surrogateescape")


@SETTINGS
@given(configs(), st.sampled_from(KINDS), DIGESTS, st.data())
def test_any_single_byte_change_to_any_signed_value_is_refused(
    config: dict[str, Any], kind: str, digest: str, data: st.DataObject
) -> None:
    changeable = [k for k, v in config.items() if v not in ("", b"", [])]
    key = data.draw(st.sampled_from(changeable))
    message = sign(config, kind, digest)
    value = config[key]
    if isinstance(value, list):
        i = data.draw(st.integers(0, len(value) - 1))
        if value[i] in ("", b""):
            return
        changed: Any = [*value[:i], _changed_scalar(value[i], data), *value[i + 1 :]]
    else:
        changed = _changed_scalar(value, data)
    message[key] = changed
    well_formed = signable(message, kind, digest)
    want = InstructionReason.BAD_SIGNATURE if well_formed else InstructionReason.MALFORMED
    assert refusal(message, kind, digest, config["region"]) == want


@SETTINGS
@given(configs(), st.sampled_from(KINDS), DIGESTS, st.data())
def test_any_single_byte_change_to_the_model_digest_is_refused(
    config: dict[str, Any], kind: str, digest: str, data: st.DataObject
) -> None:
    message = sign(config, kind, digest)
    received = _change_byte(bytes.fromhex(digest), data).hex()
    assert refusal(message, kind, received, config["region"]) == InstructionReason.BAD_SIGNATURE
    text = _change_byte(digest.encode(), data).decode("utf-8", "surrogateescape")
    assert refusal(message, kind, text, config["region"]) in {
        InstructionReason.BAD_SIGNATURE,
        InstructionReason.MALFORMED,
    }


@SETTINGS
@given(configs(), st.sampled_from(KINDS), DIGESTS, st.integers(0, 64 * 8 - 1))
def test_any_bit_flip_in_the_signature_is_refused(
    config: dict[str, Any], kind: str, digest: str, bit: int
) -> None:
    message = sign(config, kind, digest)
    sig = bytearray(bytes.fromhex(message[SIGNATURE_KEY]))
    sig[bit // 8] ^= 1 << (bit % 8)
    message[SIGNATURE_KEY] = sig.hex()
    assert refusal(message, kind, digest, config["region"]) == InstructionReason.BAD_SIGNATURE


@SETTINGS
@given(configs(), st.sampled_from(KINDS), DIGESTS, st.data())
def test_a_value_of_another_type_is_refused_even_when_equal(
    config: dict[str, Any], kind: str, digest: str, data: st.DataObject
) -> None:
    """int 2 -> float 2.0, bool True -> int 1, float 3.0 -> int 3: same JSON number, new type."""
    swaps = {}
    for key, value in config.items():
        if isinstance(value, bool):
            swaps[key] = int(value)
        elif isinstance(value, int) and value != 0 and abs(value) < 2**53:
            swaps[key] = float(value)
        elif isinstance(value, float) and value.is_integer() and abs(value) <= SAFE:
            swaps[key] = int(value)
    assume(swaps)
    key = data.draw(st.sampled_from(sorted(swaps)))
    message = {**sign(config, kind, digest), key: swaps[key]}
    assert message[key] == config[key]  # equal in Python, but not what was signed
    assert refusal(message, kind, digest, config["region"]) in {
        InstructionReason.BAD_SIGNATURE,
        InstructionReason.MALFORMED,  # server-round must stay an int
    }


@SETTINGS
@given(configs(), st.sampled_from(KINDS), DIGESTS, st.data())
def test_added_or_removed_entries_are_refused(
    config: dict[str, Any], kind: str, digest: str, data: st.DataObject
) -> None:
    message = sign(config, kind, digest)
    if data.draw(st.booleans()):
        key = data.draw(EXTRA_KEYS.filter(lambda k: k not in config))
        message[key] = data.draw(VALUES)
        want = {InstructionReason.BAD_SIGNATURE, InstructionReason.MALFORMED}  # 65 entries
    else:
        key = data.draw(st.sampled_from(sorted(config)))
        del message[key]
        required = key in REQUIRED
        want = {InstructionReason.MALFORMED if required else InstructionReason.BAD_SIGNATURE}
    assert refusal(message, kind, digest, config["region"]) in want


@SETTINGS
@given(configs(), st.sampled_from(KINDS), DIGESTS, TEXT)
def test_wrong_key_wrong_kind_and_wrong_region(
    config: dict[str, Any], kind: str, digest: str, region: str
) -> None:
    forged = sign(config, kind, digest, key=OTHER)
    assert refusal(forged, kind, digest, config["region"]) == InstructionReason.BAD_SIGNATURE
    other_kind = next(k for k in KINDS if k != kind)
    honest = sign(config, kind, digest)
    assert refusal(honest, other_kind, digest, config["region"]) == (
        InstructionReason.BAD_SIGNATURE
    )
    assume(region != config["region"])
    assert refusal(honest, kind, digest, region) == InstructionReason.WRONG_REGION


@SETTINGS
@given(configs(), st.sampled_from(KINDS), DIGESTS)
def test_unsigned_instructions_are_refused(config: dict[str, Any], kind: str, digest: str) -> None:
    assert refusal(config, kind, digest, config["region"]) == InstructionReason.UNSIGNED


JUNK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@SETTINGS
@given(
    st.dictionaries(st.sampled_from([*REQUIRED, SIGNATURE_KEY]) | st.text(max_size=6), JUNK),
    st.sampled_from([*KINDS, "predict", ""]),
    DIGESTS | st.text(max_size=70),
    st.data(),
)
def test_junk_is_refused_with_an_instruction_error_only(
    junk: dict[str, Any], kind: str, digest: str, data: st.DataObject
) -> None:
    if data.draw(st.booleans()):
        junk[SIGNATURE_KEY] = data.draw(st.text(HEX, min_size=128, max_size=128))
    assert refusal(junk, kind, digest, "eu") in {
        InstructionReason.UNSIGNED,
        InstructionReason.MALFORMED,
        InstructionReason.BAD_SIGNATURE,
    }
