"""Property tests: tampering, replay and junk input are always rejected with the right code."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgate.crypto import canonical_json, fingerprint, generate_key, public_bytes, sign
from fedgate.formats import MAX_METRICS
from fedgate.server.region.nonces import ReplayGuard, RoundNonces
from fedgate.server.trust.enrollment import region_registry
from fedgate.strategies.envelope import (
    Envelope,
    Reason,
    RejectedUpdate,
    arrayrecord_digest,
    build_envelope,
    open_envelope,
    pack_envelope,
    parse_record,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
RUN, ROUND, REGION = "run-7", 5, "eu"
METRICS = {"train-loss": 0.5, "num-examples": 12}

_DIR = Path(tempfile.mkdtemp(prefix="fedgate-envelope-props-"))
atexit.register(shutil.rmtree, _DIR, True)
REGISTRY = region_registry(_DIR, REGION, db=f"sqlite:///{_DIR / 'region.db'}")
atexit.register(REGISTRY.close)
KEY, OTHER = generate_key(), generate_key()
for _k in (KEY, OTHER):
    REGISTRY.enroll(REGISTRY.issue_token(), public_bytes(_k))
NONCES = RoundNonces()
BASE = ArrayRecord({"w": Array(np.linspace(-1, 1, 24, dtype=np.float32).reshape(6, 4))})
UPDATE = ArrayRecord(
    {
        "w": Array(np.linspace(-2, 2, 24, dtype=np.float32).reshape(6, 4)),
        "b": Array(np.arange(4, dtype=np.float32)),
        "steps": Array(np.array([3, 1], dtype=np.int64)),
    }
)


def envelope(**over: object) -> Envelope:
    env = build_envelope(
        region=REGION,
        run_id=RUN,
        server_round=ROUND,
        nonce=NONCES(ROUND),
        base_digest=arrayrecord_digest(BASE),
        device_id=fingerprint(KEY),
        num_examples=12,
        arrays=UPDATE,
        metrics=METRICS,
    )
    return replace(env, **over)


def signed(env: Envelope | None = None) -> ConfigRecord:
    env = env or envelope()
    return pack_envelope(env, sign(KEY, env.canonical()))


def verify(record: object, arrays: object = UPDATE, **over: object) -> Envelope:
    kw = {
        "expected_region": REGION,
        "run_id": RUN,
        "server_round": ROUND,
        "nonce": NONCES(ROUND),
        "global_digest": arrayrecord_digest(BASE),
        "registry": REGISTRY,
        "metrics": METRICS,
    }
    kw.update(over)
    return open_envelope(record, arrays, **kw)


def rejection(record: object, arrays: object = UPDATE, **over: object) -> str:
    try:
        verify(record, arrays, **over)
    except RejectedUpdate as exc:
        return exc.code
    raise AssertionError("the update was accepted")


def test_the_untampered_update_verifies() -> None:
    assert verify(signed()).device_id == fingerprint(KEY)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@SETTINGS
@given(st.data())
def test_any_bit_flip_in_the_arrays_is_a_digest_mismatch(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(list(UPDATE.keys())))
    arr = UPDATE[name].numpy()
    bit = data.draw(st.integers(0, arr.nbytes * 8 - 1))
    flipped = np.frombuffer(_flip(arr.tobytes(), bit), dtype=arr.dtype).reshape(arr.shape)
    arrays = ArrayRecord({k: Array(flipped) if k == name else v for k, v in UPDATE.items()})
    assert rejection(signed(), arrays) == Reason.DIGEST_MISMATCH


@SETTINGS
@given(st.integers(0, 64 * 8 - 1))
def test_any_bit_flip_in_the_signature_is_a_bad_signature(bit: int) -> None:
    record = signed()
    sig = bytes.fromhex(record["signature"])
    record["signature"] = _flip(sig, bit).hex()
    assert rejection(record) == Reason.BAD_SIGNATURE


@SETTINGS
@given(st.integers(0, 128 * 8 - 1))
def test_any_bit_flip_in_the_signature_text_is_rejected(bit: int) -> None:
    record = signed()
    text = _flip(record["signature"].encode(), bit).decode("utf-8", "surrogateescape")
    record["signature"] = text
    assert rejection(record) in {Reason.BAD_SIGNATURE, Reason.MALFORMED}


def _expected_for_tampered_text(record: ConfigRecord) -> str:
    """The code a tampered envelope must get: whatever parsing finds, else identity/signature."""
    try:
        env, _, _ = parse_record(record)
    except RejectedUpdate as exc:
        return exc.code
    if REGISTRY.get(env.device_id) is None:
        return Reason.WRONG_REGION if env.region != REGION else Reason.UNKNOWN_DEVICE
    return Reason.BAD_SIGNATURE


@SETTINGS
@given(st.data())
def test_any_bit_flip_in_the_envelope_text_is_rejected(data: st.DataObject) -> None:
    record = signed()
    raw = record["envelope"].encode()
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    record["envelope"] = _flip(raw, bit).decode("utf-8", "surrogateescape")
    assert rejection(record) == _expected_for_tampered_text(record)


@SETTINGS
@given(st.data())
def test_any_byte_change_in_the_envelope_text_is_rejected(data: st.DataObject) -> None:
    record = signed()
    raw = bytearray(record["envelope"].encode())
    pos = data.draw(st.integers(0, len(raw) - 1))
    raw[pos] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[pos]))
    record["envelope"] = bytes(raw).decode("utf-8", "surrogateescape")
    assert rejection(record) == _expected_for_tampered_text(record)


HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
FIELD_VALUES = {
    "region": st.text(min_size=1, max_size=20),
    "run_id": st.text(min_size=1, max_size=20),
    "round": st.integers(0, 2**31 - 1),
    "nonce": HEX64,
    "base_digest": HEX64,
    "arrays_digest": HEX64,
    "device_id": HEX64 | st.just(fingerprint(OTHER)),
    "num_examples": st.integers(1, 10**6),
    "metrics": st.dictionaries(  # within the spec's limit: more is malformed, tested apart
        st.text(min_size=1, max_size=10),
        st.floats(-(2.0**53 - 1), 2.0**53 - 1),
        max_size=MAX_METRICS,
    ),
}


def _valid_change(field: str, value: object) -> bool:
    env = envelope()
    if getattr(env, field) == value:
        return False
    if field in ("num_examples", "metrics"):  # keep the two consistent (schema rule)
        metrics = value if field == "metrics" else {"train-loss": 0.5}
        return "num-examples" not in metrics
    return True


@SETTINGS
@given(st.data())
def test_any_field_changed_after_signing_breaks_the_signature(data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(FIELD_VALUES)))
    value = data.draw(FIELD_VALUES[field].filter(lambda v: _valid_change(field, v)))
    over = {field: value}
    if field == "num_examples":
        over["metrics"] = {"train-loss": 0.5}
    record = signed()
    obj = replace(envelope(), **over).to_dict()
    record["envelope"] = canonical_json(obj).decode()
    want = Reason.BAD_SIGNATURE
    if field == "device_id" and value != fingerprint(OTHER):
        want = Reason.UNKNOWN_DEVICE
    assert rejection(record) == want


@SETTINGS
@given(st.data())
def test_any_field_honestly_signed_with_a_wrong_value_gets_its_code(data: st.DataObject) -> None:
    field = data.draw(st.sampled_from(sorted(set(FIELD_VALUES) - {"device_id"})))
    value = data.draw(FIELD_VALUES[field].filter(lambda v: _valid_change(field, v)))
    over = {field: value}
    if field == "num_examples":
        over["metrics"] = {"train-loss": 0.5}
    code = rejection(signed(replace(envelope(), **over)))
    expected = {
        "region": Reason.WRONG_REGION,
        "run_id": Reason.WRONG_RUN,
        "round": Reason.STALE_ROUND if over.get("round", 0) < ROUND else Reason.WRONG_ROUND,
        "nonce": Reason.WRONG_NONCE,
        "base_digest": Reason.WRONG_BASE,
        "arrays_digest": Reason.DIGEST_MISMATCH,
        "num_examples": Reason.METRICS_MISMATCH,
        "metrics": Reason.METRICS_MISMATCH,
    }[field]
    assert code == expected


@SETTINGS
@given(st.integers(1, 50), st.integers(1, 50), st.booleans())
def test_replayed_envelopes_are_refused(signed_round: int, later: int, other_run: bool) -> None:
    """An envelope is good for exactly one (run, round) and only once."""
    guard = ReplayGuard()
    env = envelope(round=signed_round, nonce=NONCES(signed_round))
    record = signed(env)
    run = RUN + "-other" if other_run else RUN
    now = signed_round + later - 1
    code = None
    try:
        verify(record, run_id=run, server_round=now, nonce=NONCES(now), seen=guard)
    except RejectedUpdate as exc:
        code = exc.code
    if other_run:
        assert code == Reason.WRONG_RUN
    elif now > signed_round:
        assert code == Reason.STALE_ROUND
    else:
        assert code is None
        assert rejection(record, server_round=now, nonce=NONCES(now), seen=guard) == (Reason.REPLAY)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
SCALAR = st.text() | st.binary() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.booleans()
CONFIG_VALUE = SCALAR | st.lists(st.text(), max_size=3) | st.lists(st.integers(0, 9), max_size=3)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["envelope", "signature", "x"]), CONFIG_VALUE))
def test_junk_config_records_are_rejected_cleanly(junk: dict) -> None:
    assert rejection(ConfigRecord(junk)) in {Reason.UNSIGNED, Reason.MALFORMED}


@SETTINGS
@given(st.one_of(JSON, st.binary(), st.integers(), st.lists(st.text())))
def test_a_record_of_the_wrong_kind_is_rejected_cleanly(record: object) -> None:
    rejection(record)


@SETTINGS
@given(st.data())
def test_junk_envelope_objects_are_rejected_cleanly(data: st.DataObject) -> None:
    obj = envelope().to_dict()
    action = data.draw(st.sampled_from(["replace", "delete", "add", "whole"]))
    if action == "whole":
        obj = data.draw(JSON)
    elif action == "add":
        obj[data.draw(st.text(max_size=8).filter(lambda k: k not in obj))] = data.draw(JSON)
    else:
        key = data.draw(st.sampled_from(sorted(obj)))
        if action == "delete":
            del obj[key]
        else:
            obj[key] = data.draw(JSON.filter(lambda v, key=key: v != obj[key]))
    try:
        text = canonical_json(obj).decode()
    except ValueError:  # not representable in JCS: send Python's JSON instead
        text = json.dumps(obj)
    record = ConfigRecord({"envelope": text, "signature": sign(KEY, text.encode()).hex()})
    code = rejection(record)  # signed by the device, so only the content can fail
    try:
        parse_record(record)
    except RejectedUpdate as exc:
        assert code == exc.code
    else:
        assert code not in {Reason.UNSIGNED, Reason.MALFORMED, Reason.BAD_SIGNATURE}


@SETTINGS
@given(st.text(max_size=300), st.text("0123456789abcdef", min_size=128, max_size=128))
def test_arbitrary_text_never_raises_anything_else(text: str, sig: str) -> None:
    rejection(ConfigRecord({"envelope": text, "signature": sig}))


def test_deeply_nested_and_oversized_envelopes_are_malformed() -> None:
    sig = "00" * 64
    deep = "[" * 4000 + "]" * 4000
    assert rejection(ConfigRecord({"envelope": deep, "signature": sig})) == (Reason.MALFORMED)
    assert rejection(ConfigRecord({"envelope": " " * 10_000, "signature": sig})) == (
        Reason.MALFORMED
    )
    huge = '{"round":' + "9" * 5000 + "}"
    assert rejection(ConfigRecord({"envelope": huge[:8000], "signature": sig})) == (
        Reason.MALFORMED
    )


def test_more_metrics_than_the_limit_is_malformed() -> None:
    metrics = {f"m{i}": 0.0 for i in range(MAX_METRICS + 1)}
    assert rejection(signed(replace(envelope(), metrics=metrics))) == Reason.MALFORMED
