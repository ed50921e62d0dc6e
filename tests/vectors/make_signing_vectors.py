"""Generate ``tests/vectors/signing.json``: the test vectors of ``docs/signing.md``.

Everything is deterministic (fixed Ed25519 seeds, fixed inputs; Ed25519 signatures are
deterministic), so the file is reproducible byte for byte::

    .venv/bin/python tests/vectors/make_signing_vectors.py          # rewrite the file
    .venv/bin/python tests/vectors/make_signing_vectors.py --check  # exit 1 if it differs

``tests/test_signing_vectors.py`` recomputes every value and runs ``build()`` again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import sys
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedgate.canonical_arrays import arrays_digest, canonical_bytes
from fedgate.crypto import canonical_json, fingerprint, public_bytes, sha256_hex, sign
from fedgate.formats import MAX_ENVELOPE_CHARS, MAX_METRICS
from fedgate.strategies.envelope import Envelope, Reason, pack_envelope
from fedgate.strategies.instruction import (
    SIGNATURE_KEY,
    InstructionReason,
    instruction_bytes,
    sign_instruction,
)

OUT = Path(__file__).with_name("signing.json")
FORMAT = "fedgate.signing-vectors/1"

# RFC 8032 section 7.1 TEST 1, 2 and 3 secret keys, so an SDK can cross-check its Ed25519.
RFC8032_TEST1 = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_TEST2 = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"
RFC8032_TEST3 = "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7"

REGION, OTHER_REGION, RUN, ROUND = "eu", "us", "eu-run-0001", 3
# the structural screen's codes (strategies/robust_strategy.py), checked before the envelope
MISSING_FIELDS, WRONG_SHAPE, NON_FINITE = "missing-fields", "wrong-shape", "non-finite"
STRUCTURAL = frozenset({MISSING_FIELDS, WRONG_SHAPE, NON_FINITE})


def _seed(label: str) -> str:
    return hashlib.sha256(f"fedgate/vectors/{label}".encode()).hexdigest()


KEY_SEEDS = {
    "device": RFC8032_TEST1,  # enrolled in eu
    "region-server": RFC8032_TEST2,  # the eu region server: the devices' trust anchor
    "stranger": RFC8032_TEST3,  # enrolled nowhere
    "revoked-device": _seed("revoked-device"),  # enrolled in eu, then revoked
    "us-device": _seed("us-device"),  # enrolled in us only
}


def key(name: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(KEY_SEEDS[name]))


def _keys() -> dict[str, Any]:
    return {
        name: {
            "private_seed_hex": seed,
            "public_hex": public_bytes(key(name)).hex(),
            "device_id": fingerprint(key(name)),
        }
        for name, seed in KEY_SEEDS.items()
    }


# ---------------------------------------------------------------- arrays


def npy_bytes(arr: np.ndarray, order: str = "<") -> bytes:
    """The ``.npy`` v1.0 payload of a Flower ``Array`` (little-endian unless ``order`` is
    ``">"``, C order), as numpy writes it: magic, version, u16 header length, a
    Python-literal header padded with spaces and a newline to a multiple of 64 bytes, then
    the data."""
    arr = arr.astype(arr.dtype.newbyteorder(order), order="C")
    shape = repr(tuple(int(n) for n in arr.shape))
    header = f"{{'descr': '{arr.dtype.str}', 'fortran_order': False, 'shape': {shape}, }}"
    pad = -(10 + len(header) + 1) % 64
    raw = (header + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + arr.tobytes()


def _array_entry(name: str, arr: np.ndarray) -> dict[str, Any]:
    le = arr.astype(arr.dtype.newbyteorder("<"), order="C")
    return {
        "name": name,
        "dtype": le.dtype.name,
        "shape": list(le.shape),
        "data_hex": le.tobytes().hex(),
        "npy_hex": npy_bytes(arr).hex(),
    }


def _arrays_case(name: str, note: str, arrays: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    return {
        "name": name,
        "note": note,
        "arrays": [_array_entry(n, a) for n, a in arrays],
        "canonical_hex": canonical_bytes(arrays).hex(),
        "sha256": arrays_digest(arrays),
    }


GLOBAL_MODEL = [
    ("w", np.array([[0.5, -0.25, 1.0], [0.0, 2.0, -1.5]], dtype=np.float32)),
    ("b", np.array([0.1, 0.2, 0.3], dtype=np.float32)),
    ("steps", np.array([0, 0], dtype=np.int64)),
]
UPDATE = [
    ("w", np.array([[0.625, -0.5, 1.25], [0.125, 1.75, -1.0]], dtype=np.float32)),
    ("b", np.array([0.15, 0.1, 0.35], dtype=np.float32)),
    ("steps", np.array([3, 1], dtype=np.int64)),
]
UPDATE_B = [(n, a + 1 if n == "steps" else a) for n, a in UPDATE]


def _canonical_arrays() -> list[dict[str, Any]]:
    info = np.iinfo
    return [
        _arrays_case("empty", "no arrays at all", []),
        _arrays_case(
            "int16-1x2", "one int16 array of shape (1, 2)", [("ab", np.array([[1, -2]], np.int16))]
        ),
        _arrays_case(
            "scalar-float64", "a 0-d array: ndim 0, no dimensions", [("s", np.float64(1.5))]
        ),
        _arrays_case(
            "every-dtype",
            "one array per allowed dtype, extreme values, -0.0, a zero-size and a UTF-8 name",
            [
                ("bool", np.array([True, False, True])),
                ("int8", np.array([info(np.int8).min, -1, info(np.int8).max], np.int8)),
                ("int16", np.array([info(np.int16).min, 258], np.int16)),
                ("int32", np.array([info(np.int32).min, 16909060], np.int32)),
                ("int64", np.array([info(np.int64).min, info(np.int64).max], np.int64)),
                ("uint8", np.array([0, 255], np.uint8)),
                ("uint16", np.array([info(np.uint16).max, 258], np.uint16)),
                ("uint32", np.array([info(np.uint32).max], np.uint32)),
                ("uint64", np.array([info(np.uint64).max, 1], np.uint64)),
                ("float16", np.array([1.0, -2.5, 65504.0], np.float16)),
                ("float32", np.array([[-0.0, 1e-45], [3.4028235e38, 0.1]], np.float32)),
                ("float64", np.array([-0.0, 5e-324, 0.1], np.float64)),
                ("empty-0x3", np.zeros((0, 3), np.float32)),
                ("couche/poids-\u00e9\u00df\u2603", np.array([1], np.int8)),
            ],
        ),
        _arrays_case("global-model", "the model the server sends in round 3", GLOBAL_MODEL),
        _arrays_case("update", "the device's trained arrays (its reply)", UPDATE),
        _arrays_case("update-b", "different arrays from the same device", UPDATE_B),
    ]


# ---------------------------------------------------------------- envelopes

NONCE = _seed(f"nonce/{RUN}/{ROUND}")
METRICS = {"num-examples": 40, "train-loss": 0.25}


def context() -> dict[str, Any]:
    """What the eu region server knows when it verifies round 3 of the run."""
    return {
        "region": REGION,
        "run_id": RUN,
        "round": ROUND,
        "nonce": NONCE,
        "global_model_digest": arrays_digest(GLOBAL_MODEL),
        "registry": [
            {"device": "device", "region": REGION, "revoked": False},
            {"device": "revoked-device", "region": REGION, "revoked": True},
        ],
        "replay_guard": "empty at the start of every case and of every sequence",
    }


def envelope(signer: str = "device", arrays: Any = UPDATE, **over: Any) -> Envelope:
    fields: dict[str, Any] = {
        "region": REGION,
        "run_id": RUN,
        "round": ROUND,
        "nonce": NONCE,
        "base_digest": arrays_digest(GLOBAL_MODEL),
        "device_id": fingerprint(key(signer)),
        "num_examples": METRICS["num-examples"],
        "arrays_digest": arrays_digest(arrays),
        "metrics": dict(METRICS),
    }
    fields.update(over)
    return Envelope(**fields)


def _reply(
    record: dict[str, str] | None,
    arrays: str | list[dict[str, Any]] = "update",
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "envelope_record": record,
        "arrays": arrays,
        "metrics": dict(METRICS) if metrics is None else metrics,
    }


def signed_record(env: Envelope, signer: str = "device") -> dict[str, str]:
    return dict(pack_envelope(env, sign(key(signer), env.canonical())))


def _envelope_case(name: str, note: str, env: Envelope, arrays: str) -> dict[str, Any]:
    text = env.canonical()
    signature = sign(key("device"), text)
    return {
        "name": name,
        "note": note,
        "signer": "device",
        "fields": env.to_dict(),
        "canonical_json": text.decode("utf-8"),
        "canonical_hex": text.hex(),
        "canonical_sha256": sha256_hex(text),
        "signature_hex": signature.hex(),
        "reply": _reply(dict(pack_envelope(env, signature)), arrays, env.metrics),
    }


def _envelopes() -> list[dict[str, Any]]:
    odd_metrics = {
        "num-examples": 40,
        "train-loss": 0.1 + 0.2,
        "tiny": 1e-7,
        "big": 1e21 / 1e6,
        "neg": -0.0,
        "pr\u00e9cision": 0.5,
        'quote"back\\slash': 1,
    }
    emoji = {"\U0001f600" * 127 + chr(0x41 + i): 1 for i in range(MAX_METRICS - 1)}
    long_metrics = {"num-examples": 40, **emoji}
    return [
        _envelope_case("update", "an honest round-3 update", envelope(), "update"),
        _envelope_case(
            "update-non-bmp-metric-names",
            "31 metric names of 128 code points, 127 of them U+1F600: the text is under 8192 "
            "code points but over 8192 UTF-8 bytes and over 8192 UTF-16 units, and accepted",
            envelope(metrics=long_metrics),
            "update",
        ),
        _envelope_case(
            "update-json-edge-cases",
            "RFC 8785 at work: number formatting, -0.0, escaping, non-ASCII and key order",
            envelope(metrics=odd_metrics),
            "update",
        ),
    ]


def _tamper_npy(arrays: list[tuple[str, np.ndarray]], index: int, pos: int) -> list[dict]:
    """Received arrays (Flower ``Array`` fields) with one byte of one payload changed."""
    out = [_array_entry(n, a) for n, a in arrays]
    raw = bytearray(bytes.fromhex(out[index]["npy_hex"]))
    raw[pos] ^= 0x01
    out[index]["npy_hex"] = raw.hex()
    return out


def _envelope_rejections() -> list[dict[str, Any]]:
    honest = envelope()
    rec = signed_record(honest)
    text = rec["envelope"]
    cases: list[tuple[str, str, dict[str, Any], str]] = []

    def add(name: str, note: str, reply: dict[str, Any], reason: str) -> None:
        cases.append((name, note, reply, reason))

    def signed_as_is(obj: dict[str, Any], arrays: Any = "update", metrics: Any = None) -> dict:
        text = canonical_json(obj)
        record = {"envelope": text.decode(), "signature": sign(key("device"), text).hex()}
        return _reply(record, arrays, metrics)

    w_npy_len = len(npy_bytes(UPDATE[0][1]))
    add(
        "array-byte-changed",
        "the last data byte of array 'w' differs from what was signed",
        _reply(rec, _tamper_npy(UPDATE, 0, w_npy_len - 1)),
        Reason.DIGEST_MISMATCH,
    )
    reordered = [_array_entry(n, a) for n, a in reversed(UPDATE)]
    add(
        "arrays-reordered",
        "same arrays, another order: the structural screen (step S3) refuses it first",
        _reply(rec, reordered),
        WRONG_SHAPE,
    )
    shape_lie = [_array_entry(n, a) for n, a in UPDATE]
    shape_lie[0]["npy_hex"] = npy_bytes(UPDATE[0][1].reshape(3, 2)).hex()
    add(
        "payload-shape-differs-from-declared",
        "'w' declares shape [2, 3] but its .npy payload holds shape (3, 2): refused by the "
        "structural screen (step S3)",
        _reply(rec, shape_lie),
        WRONG_SHAPE,
    )
    big_endian = [_array_entry(n, a) for n, a in UPDATE]
    big_endian[0]["npy_hex"] = npy_bytes(UPDATE[0][1], ">").hex()
    add(
        "big-endian-payload",
        "'w' as a big-endian '>f4' .npy: the Array declares float32, which is little-endian",
        _reply(rec, big_endian),
        WRONG_SHAPE,
    )
    as_float64 = [(n, a.astype(np.float64) if n == "b" else a) for n, a in UPDATE]
    add(
        "dtype-differs-from-model",
        "'b' sent (and signed) as float64; the model's 'b' is float32",
        _reply(
            signed_record(envelope(arrays=as_float64)),
            [_array_entry(n, a) for n, a in as_float64],
        ),
        WRONG_SHAPE,
    )
    with_nan = [(n, a.copy()) for n, a in UPDATE]
    with_nan[0][1][0, 0] = np.nan
    add(
        "non-finite-array",
        "'w' holds NaN (signed as is): refused before the envelope is read",
        _reply(
            signed_record(envelope(arrays=with_nan)),
            [_array_entry(n, a) for n, a in with_nan],
        ),
        NON_FINITE,
    )
    no_count = {"train-loss": 0.25}
    add(
        "no-num-examples",
        "neither the signed metrics nor the MetricRecord hold num-examples",
        _reply(signed_record(envelope(metrics=no_count)), metrics=no_count),
        MISSING_FIELDS,
    )
    add(
        "num-examples-not-signed",
        "the MetricRecord holds num-examples, the signed metrics do not",
        _reply(signed_record(envelope(metrics=no_count))),
        Reason.METRICS_MISMATCH,
    )
    padded = [_array_entry(n, a) for n, a in UPDATE]
    padded[1]["npy_hex"] += "00"
    add(
        "payload-trailing-byte",
        "one byte after the data of 'b' (numpy would ignore it; fedgate refuses it)",
        _reply(rec, padded),
        Reason.OVERSIZE,
    )
    flipped = text.replace(f'"round":{ROUND}', f'"round":{ROUND + 1}')
    add(
        "field-changed-after-signing",
        "round 3 -> 4 in the envelope text, signature unchanged",
        _reply({**rec, "envelope": flipped}),
        Reason.BAD_SIGNATURE,
    )
    sig = bytearray(bytes.fromhex(rec["signature"]))
    sig[0] ^= 0x01
    add(
        "signature-byte-changed",
        "first signature byte xor 1",
        _reply({**rec, "signature": sig.hex()}),
        Reason.BAD_SIGNATURE,
    )
    add(
        "signed-by-another-key",
        "the device's envelope signed by the stranger's key",
        _reply(signed_record(honest, "stranger")),
        Reason.BAD_SIGNATURE,
    )
    stranger = envelope("stranger")
    add(
        "unknown-device",
        "a well-formed update from a key the region never enrolled",
        _reply(signed_record(stranger, "stranger")),
        Reason.UNKNOWN_DEVICE,
    )
    add(
        "revoked-device",
        "correctly signed by a device the region revoked",
        _reply(signed_record(envelope("revoked-device"), "revoked-device")),
        Reason.REVOKED,
    )
    add(
        "device-of-another-region",
        "a us device's honest us envelope sent to the eu server",
        _reply(signed_record(envelope("us-device", region=OTHER_REGION), "us-device")),
        Reason.WRONG_REGION,
    )
    add(
        "envelope-names-another-region",
        "the eu device signs an envelope naming region us",
        _reply(signed_record(envelope(region=OTHER_REGION))),
        Reason.WRONG_REGION,
    )
    honest_wrong = {
        "wrong-run": ({"run_id": "eu-run-0000"}, Reason.WRONG_RUN),
        "old-round": ({"round": ROUND - 1}, Reason.STALE_ROUND),
        "future-round": ({"round": ROUND + 1}, Reason.WRONG_ROUND),
        "wrong-nonce": ({"nonce": _seed("another nonce")}, Reason.WRONG_NONCE),
        "stale-base-model": ({"base_digest": arrays_digest(UPDATE)}, Reason.WRONG_BASE),
    }
    for name, (over, reason) in honest_wrong.items():
        add(
            name,
            f"correctly signed, but {sorted(over)[0]} is wrong",
            _reply(signed_record(envelope(**over))),
            reason,
        )
    add(
        "metrics-differ-from-signed",
        "the MetricRecord claims 4000 examples; the envelope signed 40",
        _reply(rec, metrics={"num-examples": 4000, "train-loss": 0.25}),
        Reason.METRICS_MISMATCH,
    )
    add(
        "no-envelope-record",
        "the reply has no 'envelope' ConfigRecord",
        _reply(None),
        Reason.UNSIGNED,
    )
    add("no-signature", "the record lacks 'signature'", _reply({"envelope": text}), Reason.UNSIGNED)
    add(
        "uppercase-signature",
        "signature hex must be lowercase",
        _reply({**rec, "signature": rec["signature"].upper()}),
        Reason.MALFORMED,
    )
    add(
        "not-canonical",
        "same JSON with a space after each colon",
        _reply({**rec, "envelope": text.replace(":", ": ")}),
        Reason.MALFORMED,
    )
    missing = honest.to_dict()
    del missing["nonce"]
    add(
        "missing-field",
        "the envelope has no nonce (signed as is)",
        _reply(
            {
                "envelope": canonical_json(missing).decode(),
                "signature": sign(key("device"), canonical_json(missing)).hex(),
            }
        ),
        Reason.MALFORMED,
    )
    add(
        "unknown-version",
        "version 2 (signed as is)",
        signed_as_is(honest.to_dict() | {"version": 2}),
        Reason.UNSUPPORTED_VERSION,
    )
    for name, version in (("version-true", True), ("version-string", "1")):
        add(
            name,
            f"version {json.dumps(version)} is no integer (signed as is)",
            signed_as_is(honest.to_dict() | {"version": version}),
            Reason.MALFORMED,
        )
    padded_text = text + " " * (MAX_ENVELOPE_CHARS + 1 - len(text))
    add(
        "envelope-over-8192-code-points",
        "the envelope text followed by spaces up to 8193 code points",
        _reply({**rec, "envelope": padded_text}),
        Reason.MALFORMED,
    )
    return [
        {
            "name": n,
            "note": note,
            "stage": "structural" if reason in STRUCTURAL or n == "payload-trailing-byte"
            else "envelope",
            "reply": reply,
            "expected_reason": reason,
        }
        for n, note, reply, reason in cases
    ]  # fmt: skip


def _envelope_sequences() -> list[dict[str, Any]]:
    rec = signed_record(envelope())
    rec_b = signed_record(envelope(arrays=UPDATE_B))
    return [
        {
            "name": "replay",
            "note": "the same reply twice in one round",
            "replies": [_reply(rec), _reply(rec)],
            "expected_reasons": [None, Reason.REPLAY],
        },
        {
            "name": "second-update-same-round",
            "note": "two different honest updates from one device in one round",
            "replies": [_reply(rec), _reply(rec_b, "update-b")],
            "expected_reasons": [None, Reason.DUPLICATE_DEVICE],
        },
        {
            "name": "forgery-does-not-use-up-the-slot",
            "note": "a forged envelope naming the device, then its honest one",
            "replies": [_reply(signed_record(envelope(), "stranger")), _reply(rec)],
            "expected_reasons": [Reason.BAD_SIGNATURE, None],
        },
    ]


# ---------------------------------------------------------------- instructions

INSTRUCTION_CONFIG: list[tuple[str, str, Any]] = [
    ("regions", "str", "eu,us"),
    ("model", "str", "mlp-small"),
    ("lr", "float", 0.1),
    ("alpha", "float", 0.5),
    ("seed", "int", 7),
    ("local-epochs", "int", 2),
    ("shuffle", "bool", True),
    ("salt", "bytes", bytes([0, 1, 254, 255])),
    ("layers", "list[int]", [784, 64, 10]),
    ("betas", "list[float]", [0.9, 0.999]),
    ("tags", "list[str]", ["pi", "phone"]),
    ("masks", "list[bool]", [True, False]),
    ("blobs", "list[bytes]", [b"\x00", b"\xff"]),
    ("notes", "list", []),
    ("region", "str", REGION),
    ("run-id", "str", RUN),
    ("server-round", "int", ROUND),
    ("nonce", "str", NONCE),
]


def _json_value(tag: str, value: Any) -> Any:
    """How a typed config value is written in this file (bytes as hex, NaN/Inf as text)."""
    if isinstance(value, list):
        return [_json_value(tag.removeprefix("list[").rstrip("]"), v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _entries(config: list[tuple[str, str, Any]]) -> list[dict[str, Any]]:
    return [{"key": k, "type": t, "value": _json_value(t, v)} for k, t, v in config]


def _config(entries: list[tuple[str, str, Any]]) -> dict[str, Any]:
    return {k: v for k, _, v in entries}


def _signed_entries(
    kind: str, digest: str, entries: list[tuple[str, str, Any]], signer: str = "region-server"
) -> list[tuple[str, str, Any]]:
    sig = sign_instruction(key(signer), kind, digest, _config(entries))
    return [*entries, (SIGNATURE_KEY, "str", sig)]


def _instructions() -> list[dict[str, Any]]:
    digest = arrays_digest(GLOBAL_MODEL)
    out = []
    for kind in ("train", "evaluate"):
        text = instruction_bytes(kind, digest, _config(INSTRUCTION_CONFIG))
        signed = _signed_entries(kind, digest, INSTRUCTION_CONFIG)
        out.append(
            {
                "name": kind,
                "note": f"the {kind} message of round {ROUND}, signed by the eu region server",
                "kind": kind,
                "model": "global-model",
                "model_digest": digest,
                "signer": "region-server",
                "config_record": _entries(signed),
                "canonical_json": text.decode("utf-8"),
                "canonical_hex": text.hex(),
                "signature_hex": signed[-1][2],
            }
        )
    return out


def _replace(entries: list[tuple[str, str, Any]], key_: str, tag: str, value: Any) -> list:
    return [(k, tag, value) if k == key_ else (k, t, v) for k, t, v in entries]


def _instruction_rejections() -> list[dict[str, Any]]:
    digest = arrays_digest(GLOBAL_MODEL)
    good = _signed_entries("train", digest, INSTRUCTION_CONFIG)
    sig = good[-1][2]
    flipped_sig = bytearray(bytes.fromhex(sig))
    flipped_sig[63] ^= 0x80
    us_config = _replace(INSTRUCTION_CONFIG, "region", "str", OTHER_REGION)
    bad_sig, malformed = InstructionReason.BAD_SIGNATURE, InstructionReason.MALFORMED
    out: list[dict[str, Any]] = []

    def case(name: str, note: str, entries: list, code: str, **over: str) -> None:
        out.append(
            {
                "name": name,
                "note": note,
                "kind": over.get("kind", "train"),
                "model_digest": over.get("model_digest", digest),
                "device_region": REGION,
                "config_record": _entries(entries),
                "expected_code": code,
            }
        )

    case("unsigned", "no instruction-sig entry", INSTRUCTION_CONFIG, InstructionReason.UNSIGNED)
    case(
        "config-value-changed",
        "lr 0.1 -> 0.2 after signing",
        _replace(good, "lr", "float", 0.2),
        bad_sig,
    )
    case(
        "config-type-changed",
        "local-epochs int 2 -> float 2.0 after signing",
        _replace(good, "local-epochs", "float", 2.0),
        bad_sig,
    )
    case(
        "bytes-changed",
        "one byte of 'salt' xor 1",
        _replace(good, "salt", "bytes", bytes([0, 1, 254, 254])),
        bad_sig,
    )
    case(
        "entry-added",
        "an extra entry the server did not sign",
        [*good, ("extra", "int", 1)],
        bad_sig,
    )
    case(
        "entry-removed",
        "'shuffle' dropped after signing",
        [e for e in good if e[0] != "shuffle"],
        bad_sig,
    )
    case(
        "round-changed",
        "server-round 3 -> 4 after signing",
        _replace(good, "server-round", "int", ROUND + 1),
        bad_sig,
    )
    case(
        "nonce-changed",
        "another well-formed nonce",
        _replace(good, "nonce", "str", _seed("another nonce")),
        bad_sig,
    )
    case(
        "model-swapped",
        "the device received other arrays than the server signed",
        good,
        bad_sig,
        model_digest=arrays_digest(UPDATE),
    )
    case(
        "wrong-kind",
        "a train instruction presented as an evaluate one",
        good,
        bad_sig,
        kind="evaluate",
    )
    case(
        "signature-byte-changed",
        "last signature byte xor 0x80",
        _replace(good, SIGNATURE_KEY, "str", flipped_sig.hex()),
        bad_sig,
    )
    case(
        "signed-by-another-key",
        "signed by the stranger key, not the region server",
        _signed_entries("train", digest, INSTRUCTION_CONFIG, "stranger"),
        bad_sig,
    )
    case(
        "another-region",
        "signed by the trust anchor but for region us",
        _signed_entries("train", digest, us_config),
        InstructionReason.WRONG_REGION,
    )
    case(
        "uppercase-signature",
        "signature hex must be lowercase",
        _replace(good, SIGNATURE_KEY, "str", sig.upper()),
        malformed,
    )
    case(
        "nan",
        "lr is NaN (RFC 8785 has no NaN)",
        _replace(good, "lr", "float", float("nan")),
        malformed,
    )
    case("infinity", "lr is +Infinity", _replace(good, "lr", "float", float("inf")), malformed)
    case(
        "negative-zero",
        "lr is -0.0: RFC 8785 writes it as 0, so an instruction cannot sign it",
        _replace(good, "lr", "float", -0.0),
        malformed,
    )
    case(
        "huge-int",
        "seed is 2^53, beyond what JSON carries exactly",
        _replace(good, "seed", "int", 2**53),
        malformed,
    )
    case(
        "bad-nonce", "nonce is not lowercase hex", _replace(good, "nonce", "str", "XYZ"), malformed
    )
    case("negative-round", "server-round -1", _replace(good, "server-round", "int", -1), malformed)
    case(
        "round-not-int",
        "server-round is a float",
        _replace(good, "server-round", "float", 3.0),
        malformed,
    )
    case("missing-run-id", "no run-id entry", [e for e in good if e[0] != "run-id"], malformed)
    return out


# ---------------------------------------------------------------- RFC 8785 examples

JCS_DOUBLES = [
    "0000000000000000", "8000000000000000", "0000000000000001", "8000000000000001",
    "7fefffffffffffff", "ffefffffffffffff", "4340000000000000", "c340000000000000",
    "4430000000000000", "44b52d02c7e14af5", "44b52d02c7e14af6", "44b52d02c7e14af7",
    "444b1ae4d6e2ef4e", "444b1ae4d6e2ef4f", "444b1ae4d6e2ef50", "3eb0c6f7a0b5ed8c",
    "3eb0c6f7a0b5ed8d", "41b3de4355555553", "41b3de4355555554", "41b3de4355555555",
    "41b3de4355555556", "41b3de4355555557", "becbf647612f3696", "43143ff3c1cb0959",
    "3fb999999999999a", "3ff0000000000000", "4024000000000000", "3e7ad7f29abcaf48",
]  # fmt: skip
JCS_STRINGS = [
    "plain",
    'quote " backslash \\ slash /',
    "\b\f\n\r\t",
    "\x00\x01\x1f\x7f",
    "\u00e9\u2028\u2029\ufeff",
    "\U0001f600",
]
JCS_KEY_ORDER = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]


def _jcs() -> dict[str, Any]:
    doubles = [struct.unpack(">d", bytes.fromhex(b))[0] for b in JCS_DOUBLES]
    return {
        "numbers": [
            {"ieee754_hex": b, "canonical": canonical_json(v).decode()}
            for b, v in zip(JCS_DOUBLES, doubles, strict=True)
        ],
        "strings": [
            {"input_utf8_hex": s.encode().hex(), "canonical_hex": canonical_json(s).hex()}
            for s in JCS_STRINGS
        ],
        "key_order": {
            "keys_utf8_hex": [k.encode().hex() for k in JCS_KEY_ORDER],
            "canonical_hex": canonical_json({k: i for i, k in enumerate(JCS_KEY_ORDER)}).hex(),
        },
    }


def build() -> dict[str, Any]:
    """All vectors as one JSON-ready object."""
    return {
        "format": FORMAT,
        "spec": "docs/signing.md",
        "generator": "tests/vectors/make_signing_vectors.py",
        "keys": _keys(),
        "canonical_arrays": _canonical_arrays(),
        "context": context(),
        "envelopes": _envelopes(),
        "envelope_rejections": _envelope_rejections(),
        "envelope_sequences": _envelope_sequences(),
        "instructions": _instructions(),
        "instruction_rejections": _instruction_rejections(),
        "jcs": _jcs(),
    }


def render(vectors: dict[str, Any]) -> str:
    return json.dumps(vectors, indent=1, ensure_ascii=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    text = render(build())
    if args.check:
        same = args.out.exists() and args.out.read_text() == text
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from the generator'}")
        return 0 if same else 1
    args.out.write_text(text)
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
