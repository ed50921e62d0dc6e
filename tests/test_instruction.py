"""Server-signed round instructions: a device accepts only what its region server signed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flwr.app import ConfigRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedgate.crypto import generate_key
from fedgate.formats import MAX_INSTRUCTION_ENTRIES
from fedgate.strategies.instruction import (
    SIGNATURE_KEY,
    Instruction,
    InstructionError,
    InstructionReason,
    instruction_bytes,
    sign_instruction,
    verify_instruction,
)

SERVER, OTHER_SERVER = generate_key(), generate_key()
DIGEST = "ab" * 32
NONCE = "cd" * 32


def base_config(**over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "region": "eu",
        "run-id": "run-1",
        "server-round": 4,
        "nonce": NONCE,
        "model": "mlp-small",
        "lr": 0.05,
        "local-epochs": 2,
        "shuffle": True,
        "salt": b"\x00\xff",
        "layers": [784, 64, 10],
    }
    config.update(over)
    return config


def signed(kind: str = "train", key: Any = SERVER, **over: Any) -> dict[str, Any]:
    config = base_config(**over)
    config[SIGNATURE_KEY] = sign_instruction(key, kind, DIGEST, config)
    return config


def check(config: Any, **over: Any) -> Instruction:
    kw: dict[str, Any] = {
        "kind": "train",
        "model_digest": DIGEST,
        "anchor": SERVER.public_key(),
        "region": "eu",
    }
    kw.update(over)
    return verify_instruction(config, **kw)


def refusal(config: Any, **over: Any) -> str:
    with pytest.raises(InstructionError) as info:
        check(config, **over)
    return info.value.code


@pytest.mark.parametrize("kind", ["train", "evaluate"])
def test_a_signed_instruction_verifies_and_names_the_round(kind: str) -> None:
    got = check(signed(kind), kind=kind)
    assert (got.kind, got.region, got.run_id, got.server_round, got.nonce) == (
        kind,
        "eu",
        "run-1",
        4,
        NONCE,
    )
    assert got.model_digest == DIGEST
    assert got.config == base_config()  # plain values, signature left out


def test_it_survives_flower_serialization() -> None:
    content = RecordDict({"config": ConfigRecord(signed())})
    wire = recorddict_to_proto(content).SerializeToString()
    back = recorddict_from_proto(ProtoRecordDict.FromString(wire)).config_records["config"]
    assert check(back).config == base_config()


def test_entry_order_is_not_part_of_the_signature() -> None:
    config = signed()
    assert check(dict(reversed(list(config.items())))).server_round == 4


def test_unsigned_and_malformed_signatures() -> None:
    assert refusal(base_config()) == InstructionReason.UNSIGNED
    for sig in ("", "00" * 63, "AB" * 64, "zz" * 64, 7, b"\x00" * 64):
        assert refusal({**signed(), SIGNATURE_KEY: sig}) == InstructionReason.MALFORMED


def test_another_key_a_swapped_model_and_the_other_kind_fail_the_signature() -> None:
    assert refusal(signed(key=OTHER_SERVER)) == InstructionReason.BAD_SIGNATURE
    assert refusal(signed(), model_digest="ef" * 32) == InstructionReason.BAD_SIGNATURE
    assert refusal(signed("train"), kind="evaluate") == InstructionReason.BAD_SIGNATURE
    assert refusal(signed("evaluate")) == InstructionReason.BAD_SIGNATURE
    assert refusal(signed(), anchor=OTHER_SERVER.public_key()) == InstructionReason.BAD_SIGNATURE


def test_an_instruction_for_another_region_is_refused() -> None:
    assert refusal(signed(region="us")) == InstructionReason.WRONG_REGION
    assert refusal(signed(), region="us") == InstructionReason.WRONG_REGION


@pytest.mark.parametrize(
    ("entry", "value"),
    [
        ("lr", 0.06),
        ("local-epochs", 3),
        ("local-epochs", 2.0),  # same number, another type
        ("shuffle", 1),  # bool -> int
        ("salt", b"\x00\xfe"),
        ("layers", [784, 64, 11]),
        ("layers", [784.0, 64.0, 10.0]),
        ("model", "mlp-Small"),
        ("run-id", "run-2"),
        ("server-round", 5),
        ("nonce", "ce" * 32),
        ("extra", "added after signing"),
    ],
)
def test_any_changed_or_added_entry_fails_the_signature(entry: str, value: Any) -> None:
    assert refusal({**signed(), entry: value}) == InstructionReason.BAD_SIGNATURE


def test_a_removed_entry_fails_the_signature() -> None:
    config = signed()
    del config["shuffle"]
    assert refusal(config) == InstructionReason.BAD_SIGNATURE


def test_types_are_signed() -> None:
    variants = [
        {"x": 1},
        {"x": 1.0},
        {"x": True},
        {"x": "1"},
        {"x": b"\x01"},
        {"x": [1]},
        {"x": [1.0]},
        {"x": []},
    ]
    texts = {instruction_bytes("train", DIGEST, v) for v in variants}
    assert len(texts) == len(variants)
    body = json.loads(instruction_bytes("train", DIGEST, {"x": b"\x01\xab", "y": []}))
    assert body["config"] == {"x": ["bytes", "01ab"], "y": ["list", []]}


@pytest.mark.parametrize(
    ("entry", "value"),
    [
        ("region", None),
        ("region", ""),
        ("region", "x" * 129),
        ("run-id", 1),
        ("run-id", ""),
        ("server-round", True),
        ("server-round", 4.0),
        ("server-round", -1),
        ("server-round", 2**31),
        ("nonce", "CD" * 32),
        ("nonce", "cd" * 15),
        ("nonce", "cd" * 65),
        ("nonce", "c" * 33),
    ],
)
def test_the_round_identity_must_be_well_formed(entry: str, value: Any) -> None:
    config = base_config(**{entry: value})
    if value is None:
        del config[entry]
    with pytest.raises(InstructionError, match=entry) as info:
        sign_instruction(SERVER, "train", DIGEST, config)
    assert info.value.code == InstructionReason.MALFORMED
    config[SIGNATURE_KEY] = "00" * 64
    assert refusal(config) == InstructionReason.MALFORMED


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        (float("-inf"), "finite"),
        ([0.5, float("nan")], "finite"),
        (-0.0, "-0.0"),
        (2**53, "2\\^53"),
        (-(2**53), "2\\^53"),
        (2**63 - 1, "2\\^53"),
        ([1, 2**60], "2\\^53"),
        (None, "NoneType"),
        ({"a": 1}, "dict"),
        ((1, 2), "tuple"),
        (bytearray(b"x"), "bytearray"),
        ([1, "a"], "mixes"),
        ([True, 1], "mixes"),
        ("\ud800", "UTF-8"),
    ],
)
def test_values_json_cannot_carry_exactly_are_refused(value: Any, words: str) -> None:
    with pytest.raises(InstructionError, match=words):
        sign_instruction(SERVER, "train", DIGEST, base_config(odd=value))
    config = {**signed(), "odd": value}
    assert refusal(config) == InstructionReason.MALFORMED


def test_the_largest_exact_integers_are_fine() -> None:
    for n in (2**53 - 1, -(2**53 - 1)):
        assert check(signed(big=n)).config["big"] == n


def test_malformed_arguments_and_containers() -> None:
    with pytest.raises(InstructionError, match="kind"):
        instruction_bytes("predict", DIGEST, base_config())
    for digest in ("AB" * 32, "ab" * 31, None):
        with pytest.raises(InstructionError, match="digest"):
            instruction_bytes("train", digest, base_config())  # type: ignore[arg-type]
    for config in (None, [("region", "eu")], "region=eu"):
        assert refusal(config) == InstructionReason.MALFORMED
    assert refusal({**signed(), 3: "x"}) == InstructionReason.MALFORMED
    assert refusal({**signed(), "k\ud800": 1}) == InstructionReason.MALFORMED
    crowded = {**signed(), **{f"k{i}": i for i in range(MAX_INSTRUCTION_ENTRIES)}}
    assert refusal(crowded) == InstructionReason.MALFORMED
    with pytest.raises(InstructionError, match="entries"):
        sign_instruction(SERVER, "train", DIGEST, crowded)
    assert refusal(signed(), kind="predict") == InstructionReason.MALFORMED
    assert refusal(signed(), model_digest="xyz") == InstructionReason.MALFORMED


def test_signing_refuses_what_the_device_would_refuse() -> None:
    with pytest.raises(InstructionError):
        sign_instruction(SERVER, "predict", DIGEST, base_config())
    with pytest.raises(InstructionError):
        sign_instruction(SERVER, "train", DIGEST, {"region": "eu"})


def test_a_verified_instruction_is_remembered_only_as_given(monkeypatch) -> None:
    """The second identical instruction skips the Ed25519 check; any change (a value's
    type or sign, the model, the kind, the anchor, the signature) is checked again."""
    from fedgate.strategies import instruction as module

    calls: list[bytes] = []
    real = module.verify

    def counting(key: Any, signature: bytes, message: bytes) -> None:
        calls.append(message)
        real(key, signature, message)

    monkeypatch.setattr(module, "_VERIFIED", module.VerifiedInstructions(size=4))
    monkeypatch.setattr(module, "verify", counting)
    config = signed(**{"lr": 0.0, "local-epochs": 1})
    first, again = check(config), check(dict(config))
    assert first == again and len(calls) == 1
    again.config["lr"] = 9.0  # a caller's copy: the remembered instruction is not shared
    assert check(config).config["lr"] == 0.0
    for changed in ({"lr": -0.0}, {"local-epochs": True}, {"local-epochs": 1.0}):
        assert refusal({**config, **changed}) in (
            InstructionReason.BAD_SIGNATURE,
            InstructionReason.MALFORMED,
        )
    assert refusal(config, model_digest="ef" * 32) == InstructionReason.BAD_SIGNATURE
    assert refusal(config, kind="evaluate") == InstructionReason.BAD_SIGNATURE
    assert refusal(config, anchor=OTHER_SERVER.public_key()) == InstructionReason.BAD_SIGNATURE
    forged = {**config, SIGNATURE_KEY: signed(key=OTHER_SERVER, **{"lr": 0.0})[SIGNATURE_KEY]}
    assert refusal(forged) == InstructionReason.BAD_SIGNATURE
    assert refusal(config, region="us") == InstructionReason.WRONG_REGION  # checked every time
    # every changed input was checked again (-0.0 refused before the signature), none kept
    assert len(calls) == 1 + 6
    for i in range(5):  # the memory is bounded: the oldest entry goes
        check(signed(**{"local-epochs": 10 + i}))
    check(config)
    assert len(calls) == 1 + 6 + 5 + 1
