"""The published test vectors (tests/vectors/signing.json) hold, byte for byte.

Every value is recomputed from the JSON: once with fedgate's own code and, where the spec
is simple enough, once more from ``docs/signing.md`` alone (struct + hashlib), so a change
to the code that drifts from the published format fails here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import train_reply
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedgate.canonical_arrays import arrays_digest, canonical_bytes
from fedgate.crypto import canonical_json, fingerprint, load_public_key, public_bytes, verify
from fedgate.server.region.nonces import ReplayGuard
from fedgate.strategies.envelope import (
    Reason,
    RejectedUpdate,
    array_view,
    open_envelope,
    signature_screen,
)
from fedgate.strategies.fates import ClientFate
from fedgate.strategies.instruction import (
    SIGNATURE_KEY,
    InstructionError,
    InstructionReason,
    instruction_bytes,
    verify_instruction,
)
from fedgate.strategies.robust_strategy import structural_screen

VECTORS_DIR = Path(__file__).parent / "vectors"
VECTORS_FILE = VECTORS_DIR / "signing.json"
V = json.loads(VECTORS_FILE.read_text())
ARRAY_CASES = {case["name"]: case for case in V["canonical_arrays"]}


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "make_signing_vectors", VECTORS_DIR / "make_signing_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generator_reproduces_the_file_exactly() -> None:
    gen = _generator()
    assert gen.render(gen.build()) == VECTORS_FILE.read_text()


# ---------------------------------------------------------------- keys


def private(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(V["keys"][name]["private_seed_hex"]))


@pytest.mark.parametrize("name", sorted(V["keys"]))
def test_keys_and_device_ids(name: str) -> None:
    entry = V["keys"][name]
    assert public_bytes(private(name)).hex() == entry["public_hex"]
    assert entry["device_id"] == hashlib.sha256(bytes.fromhex(entry["public_hex"])).hexdigest()
    assert fingerprint(private(name)) == entry["device_id"]


def test_the_device_and_server_keys_are_rfc8032_test_keys() -> None:
    """Known answers from RFC 8032 section 7.1, so an SDK's Ed25519 can be checked first."""
    assert V["keys"]["device"]["public_hex"] == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert private("device").sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555f"
        "b8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert private("region-server").sign(b"\x72").hex() == (
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da08"
        "5ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"
    )


# ---------------------------------------------------------------- canonical arrays


def ndarray(entry: dict[str, Any]) -> np.ndarray:
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")
    return np.frombuffer(bytes.fromhex(entry["data_hex"]), dtype=dtype).reshape(entry["shape"])


def spec_canonical_bytes(entries: list[dict[str, Any]]) -> bytes:
    """docs/signing.md section 2, written out with struct only."""
    out = b"fedgate-arrays/v1\x00" + struct.pack("<I", len(entries))
    for e in entries:
        name, dtype, data = e["name"].encode(), e["dtype"].encode(), bytes.fromhex(e["data_hex"])
        out += struct.pack("<I", len(name)) + name + struct.pack("<B", len(dtype)) + dtype
        out += struct.pack("<I", len(e["shape"])) + b"".join(
            struct.pack("<Q", n) for n in e["shape"]
        )
        out += struct.pack("<Q", len(data)) + data
    return out


def flower_array(entry: dict[str, Any]) -> Array:
    return Array(
        dtype=entry["dtype"],
        shape=tuple(entry["shape"]),
        stype="numpy.ndarray",
        data=bytes.fromhex(entry["npy_hex"]),
    )


@pytest.mark.parametrize("name", sorted(ARRAY_CASES))
def test_canonical_arrays(name: str) -> None:
    case = ARRAY_CASES[name]
    named = [(e["name"], ndarray(e)) for e in case["arrays"]]
    expected = bytes.fromhex(case["canonical_hex"])
    assert spec_canonical_bytes(case["arrays"]) == expected
    assert canonical_bytes(named) == expected
    assert hashlib.sha256(expected).hexdigest() == case["sha256"] == arrays_digest(named)
    for e, (_, arr) in zip(case["arrays"], named, strict=True):
        payload = flower_array(e)
        assert payload.numpy().tobytes() == arr.tobytes()
        assert payload.numpy().dtype == arr.dtype and payload.numpy().shape == arr.shape
        np.testing.assert_array_equal(array_view(payload), arr)


def test_npy_payloads_are_what_numpy_writes() -> None:
    gen = _generator()
    for case in ARRAY_CASES.values():
        for e in case["arrays"]:
            assert gen.npy_bytes(ndarray(e)).hex() == e["npy_hex"]
            assert np.load(io.BytesIO(bytes.fromhex(e["npy_hex"]))).shape == tuple(e["shape"])


# ---------------------------------------------------------------- envelopes


@dataclass(frozen=True)
class Row:
    region: str
    public_key: bytes
    revoked: bool = False


CTX = V["context"]
REGISTRY = {
    V["keys"][row["device"]]["device_id"]: Row(
        row["region"], bytes.fromhex(V["keys"][row["device"]]["public_hex"]), row["revoked"]
    )
    for row in CTX["registry"]
}


def received(reply: dict[str, Any]) -> tuple[ConfigRecord | None, ArrayRecord, MetricRecord]:
    arrays = reply["arrays"]
    entries = ARRAY_CASES[arrays]["arrays"] if isinstance(arrays, str) else arrays
    record = reply["envelope_record"]
    return (
        None if record is None else ConfigRecord(record),
        ArrayRecord({e["name"]: flower_array(e) for e in entries}),
        MetricRecord(reply["metrics"]),
    )


def open_reply(reply: dict[str, Any], seen: ReplayGuard | None = None) -> str:
    record, arrays, metrics = received(reply)
    return open_envelope(
        record,
        arrays,
        expected_region=CTX["region"],
        run_id=CTX["run_id"],
        server_round=CTX["round"],
        nonce=CTX["nonce"],
        global_digest=CTX["global_model_digest"],
        registry=REGISTRY,
        metrics=metrics,
        seen=seen,
    ).device_id


GLOBAL_MODEL = ArrayRecord(
    {e["name"]: flower_array(e) for e in ARRAY_CASES["global-model"]["arrays"]}
)


def screen_reply(reply: dict[str, Any], seen: ReplayGuard | None = None) -> ClientFate:
    """The fate the region server's screen (structural screen, then the envelope: the
    order of docs/signing.md section 6) gives ``reply`` in the context's round."""
    record, arrays, metrics = received(reply)
    content = RecordDict({"arrays": arrays, "metrics": metrics})
    if record is not None:
        content["envelope"] = record
    screen = signature_screen(
        REGISTRY, CTX["region"], CTX["run_id"], lambda _: CTX["nonce"], structural_screen,
        seen=seen,
    )  # fmt: skip
    return screen(train_reply(1, content), CTX["round"], GLOBAL_MODEL)


def test_the_context_names_the_global_model() -> None:
    assert CTX["global_model_digest"] == ARRAY_CASES["global-model"]["sha256"]


@pytest.mark.parametrize("case", V["envelopes"], ids=lambda c: c["name"])
def test_envelopes(case: dict[str, Any]) -> None:
    text = canonical_json(case["fields"])
    assert text.decode() == case["canonical_json"]
    assert text.hex() == case["canonical_hex"]
    assert hashlib.sha256(text).hexdigest() == case["canonical_sha256"]
    signer = private(case["signer"])
    assert signer.sign(text).hex() == case["signature_hex"]  # Ed25519 is deterministic
    verify(load_public_key(public_bytes(signer)), bytes.fromhex(case["signature_hex"]), text)
    assert case["reply"]["envelope_record"] == {
        "envelope": case["canonical_json"],
        "signature": case["signature_hex"],
    }
    assert case["fields"]["arrays_digest"] == ARRAY_CASES[case["reply"]["arrays"]]["sha256"]
    assert open_reply(case["reply"]) == case["fields"]["device_id"]
    fate = screen_reply(case["reply"])
    assert fate.accepted, fate
    assert fate.device_id == fate.claimed_device_id == case["fields"]["device_id"]


def test_the_envelope_limit_counts_code_points() -> None:
    """Under 8192 code points, over 8192 UTF-8 bytes and UTF-16 units, and accepted."""
    (case,) = [c for c in V["envelopes"] if c["name"] == "update-non-bmp-metric-names"]
    text = case["canonical_json"]
    assert len(text) <= 8192 < min(len(text.encode()), len(text.encode("utf-16-le")) // 2)


def test_a_plain_envelope_is_sorted_compact_json() -> None:
    """Without floats or escapes, RFC 8785 is sorted keys and no whitespace."""
    case = V["envelopes"][0]
    compact = json.dumps(case["fields"], sort_keys=True, separators=(",", ":"))
    assert compact == case["canonical_json"]


@pytest.mark.parametrize("case", V["envelope_rejections"], ids=lambda c: c["name"])
def test_envelope_rejections(case: dict[str, Any]) -> None:
    """Every vector gets its reason from the server's screen, in the order of the spec."""
    fate = screen_reply(case["reply"])
    assert (fate.accepted, fate.reason) == (False, case["expected_reason"]), fate.detail
    assert fate.device_id == ""  # a refused update is never attributed to a verified device


@pytest.mark.parametrize(
    "case", [c for c in V["envelope_rejections"] if c["stage"] == "envelope"],
    ids=lambda c: c["name"],
)  # fmt: skip
def test_envelope_stage_rejections_come_from_the_envelope_alone(case: dict[str, Any]) -> None:
    with pytest.raises(RejectedUpdate) as info:
        open_reply(case["reply"])
    assert info.value.code == case["expected_reason"]


def test_structural_stage_vectors_carry_the_structural_codes() -> None:
    for case in V["envelope_rejections"]:
        assert (case["stage"] == "structural") == (
            case["expected_reason"] in STRUCTURAL_CODES | {Reason.OVERSIZE}
        ), case["name"]


@pytest.mark.parametrize("case", V["envelope_sequences"], ids=lambda c: c["name"])
def test_envelope_sequences(case: dict[str, Any]) -> None:
    guard, screened = ReplayGuard(), ReplayGuard()
    outcomes, fates = [], []
    for reply in case["replies"]:
        try:
            open_reply(reply, guard)
            outcomes.append(None)
        except RejectedUpdate as exc:
            outcomes.append(exc.code)
        fate = screen_reply(reply, screened)
        fates.append(None if fate.accepted else fate.reason)
    assert outcomes == fates == case["expected_reasons"]


def test_the_negative_vectors_cover_every_verification_reason() -> None:
    covered = {c["expected_reason"] for c in V["envelope_rejections"]}
    covered |= {code for c in V["envelope_sequences"] for code in c["expected_reasons"]}
    codes = {v for k, v in vars(Reason).items() if k.isupper()} | STRUCTURAL_CODES
    # verification-error is the screen's fail-closed answer to a fault, not an input;
    # client-error is a Flower error reply (a ClientApp failure), not a reply's content.
    assert codes - covered == {Reason.VERIFICATION_ERROR, "client-error"}


# ---------------------------------------------------------------- instructions


def config_value(tag: str, value: Any) -> Any:
    if tag.startswith("list"):
        inner = tag[5:-1] if tag != "list" else "str"
        return [config_value(inner, v) for v in value]
    if tag == "bytes":
        return bytes.fromhex(value)
    if tag == "float":
        return float(value)  # also "NaN", "Infinity", "-Infinity"
    return value


def config_record(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {e["key"]: config_value(e["type"], e["value"]) for e in entries}


def anchor() -> Any:
    return load_public_key(bytes.fromhex(V["keys"]["region-server"]["public_hex"]))


@pytest.mark.parametrize("case", V["instructions"], ids=lambda c: c["name"])
def test_instructions(case: dict[str, Any]) -> None:
    config = config_record(case["config_record"])
    assert case["model_digest"] == ARRAY_CASES[case["model"]]["sha256"]
    text = instruction_bytes(case["kind"], case["model_digest"], config)
    assert text.decode() == case["canonical_json"]
    assert text.hex() == case["canonical_hex"]
    assert private(case["signer"]).sign(text).hex() == case["signature_hex"]
    assert config[SIGNATURE_KEY] == case["signature_hex"]
    typed = json.loads(case["canonical_json"])["config"]
    assert set(typed) == {e["key"] for e in case["config_record"]} - {SIGNATURE_KEY}
    for e in case["config_record"]:
        if e["key"] != SIGNATURE_KEY:
            assert typed[e["key"]] == [e["type"], e["value"]]
    got = verify_instruction(
        ConfigRecord(config),
        kind=case["kind"],
        model_digest=case["model_digest"],
        anchor=anchor(),
        region=CTX["region"],
    )
    assert (got.region, got.run_id, got.server_round, got.nonce) == (
        CTX["region"],
        CTX["run_id"],
        CTX["round"],
        CTX["nonce"],
    )


@pytest.mark.parametrize("case", V["instruction_rejections"], ids=lambda c: c["name"])
def test_instruction_rejections(case: dict[str, Any]) -> None:
    with pytest.raises(InstructionError) as info:
        verify_instruction(
            config_record(case["config_record"]),
            kind=case["kind"],
            model_digest=case["model_digest"],
            anchor=anchor(),
            region=case["device_region"],
        )
    assert info.value.code == case["expected_code"]


def test_the_instruction_vectors_cover_every_refusal_code() -> None:
    codes = {v for k, v in vars(InstructionReason).items() if k.isupper()}
    assert {c["expected_code"] for c in V["instruction_rejections"]} == codes


# ---------------------------------------------------------------- RFC 8785


@cache
def _double(bits: str) -> float:
    return struct.unpack(">d", bytes.fromhex(bits))[0]


@pytest.mark.parametrize("case", V["jcs"]["numbers"], ids=lambda c: c["ieee754_hex"])
def test_jcs_numbers(case: dict[str, str]) -> None:
    assert canonical_json(_double(case["ieee754_hex"])).decode() == case["canonical"]


def test_jcs_numbers_match_rfc8785_appendix_b() -> None:
    """Independent known answers copied from RFC 8785 Appendix B."""
    table = {c["ieee754_hex"]: c["canonical"] for c in V["jcs"]["numbers"]}
    assert table["8000000000000000"] == "0"
    assert table["0000000000000001"] == "5e-324"
    assert table["7fefffffffffffff"] == "1.7976931348623157e+308"
    assert table["4340000000000000"] == "9007199254740992"
    assert table["4430000000000000"] == "295147905179352830000"
    assert table["44b52d02c7e14af6"] == "1e+23"
    assert table["444b1ae4d6e2ef50"] == "1e+21"
    assert table["444b1ae4d6e2ef4f"] == "999999999999999900000"
    assert table["3eb0c6f7a0b5ed8d"] == "0.000001"
    assert table["3eb0c6f7a0b5ed8c"] == "9.999999999999997e-7"
    assert table["41b3de4355555555"] == "333333333.3333333"
    assert table["becbf647612f3696"] == "-0.0000033333333333333333"
    assert table["43143ff3c1cb0959"] == "1424953923781206.2"


@pytest.mark.parametrize("case", V["jcs"]["strings"], ids=lambda c: c["input_utf8_hex"][:16])
def test_jcs_strings(case: dict[str, str]) -> None:
    text = bytes.fromhex(case["input_utf8_hex"]).decode()
    assert canonical_json(text).hex() == case["canonical_hex"]


def test_jcs_key_order_is_by_utf16_code_units() -> None:
    keys = [bytes.fromhex(k).decode() for k in V["jcs"]["key_order"]["keys_utf8_hex"]]
    canonical = bytes.fromhex(V["jcs"]["key_order"]["canonical_hex"])
    assert canonical_json({k: i for i, k in enumerate(keys)}) == canonical
    order = sorted(keys, key=lambda k: k.encode("utf-16-be"))
    assert list(json.loads(canonical)) == order
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


# ---------------------------------------------------------------- the spec itself

SPEC = Path(__file__).parents[1] / "docs" / "signing.md"
STRUCTURAL_CODES = {"client-error", "missing-fields", "wrong-shape", "non-finite"}


def test_the_spec_documents_every_code_and_points_to_the_vectors() -> None:
    text = SPEC.read_text()
    codes = {v for k, v in vars(Reason).items() if k.isupper()}
    codes |= {v for k, v in vars(InstructionReason).items() if k.isupper()}
    assert {code for code in codes | STRUCTURAL_CODES if f"`{code}`" not in text} == set()
    assert "tests/vectors/signing.json" in text
