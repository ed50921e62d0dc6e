"""fedgate/statements.py: in-toto statements in DSSE envelopes, and the one trust decision."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.crypto import canonical_json, fingerprint, generate_key, sha256_hex
from fedgate.errors import VerificationError
from fedgate.statements import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    BadSignature,
    MalformedEnvelope,
    MalformedStatement,
    StatementError,
    SubjectMismatch,
    UnknownKey,
    WrongPayloadType,
    check_subject,
    read_statement,
    sign_statement,
    statement,
    verify_envelope,
)

KEY, OTHER = generate_key(), generate_key()
TYPE = "https://fedgate.dev/test/v1"
WEIGHTS = b"weights bytes"
STMT = statement("model.safetensors", sha256_hex(WEIGHTS), TYPE, {"rounds": 3, "acc": 0.5})
SIGNED = sign_statement(KEY, STMT)
SETTINGS = settings(max_examples=60, deadline=None)


def _envelope(**changes) -> dict:
    return {**json.loads(SIGNED), **changes}


def test_round_trip_names_signer_and_keeps_predicate_types() -> None:
    verified = verify_envelope(SIGNED, [OTHER.public_key(), KEY.public_key()],
                               predicate_type=TYPE, subject_sha256=sha256_hex(WEIGHTS))  # fmt: skip
    assert verified.statement == STMT
    assert verified.statement.predicate["rounds"] == 3  # an int stays an int
    assert verified.signer == fingerprint(KEY)
    assert verified.envelope_sha256 == sha256_hex(SIGNED)
    assert json.loads(SIGNED)["payloadType"] == PAYLOAD_TYPE
    payload = json.loads(base64.b64decode(json.loads(SIGNED)["payload"]))
    assert payload["_type"] == STATEMENT_TYPE
    assert payload["subject"] == [{"name": "model.safetensors",
                                   "digest": {"sha256": sha256_hex(WEIGHTS)}}]  # fmt: skip
    assert json.loads(SIGNED)["signatures"][0]["keyid"] == fingerprint(KEY)
    check_subject(verified.statement, WEIGHTS)


def test_every_reason_is_a_verification_error() -> None:
    for cls in (BadSignature, UnknownKey, WrongPayloadType, MalformedStatement,
                MalformedEnvelope, SubjectMismatch):  # fmt: skip
        assert issubclass(cls, StatementError) and issubclass(cls, VerificationError)


def test_unknown_key_is_refused() -> None:
    with pytest.raises(UnknownKey, match="not a trusted key"):
        verify_envelope(SIGNED, [OTHER.public_key()])
    with pytest.raises(UnknownKey):
        verify_envelope(SIGNED, [])


def test_a_signature_under_a_trusted_keyid_that_does_not_verify_is_refused() -> None:
    forged = json.loads(sign_statement(OTHER, STMT))
    forged["signatures"][0]["keyid"] = fingerprint(KEY)  # claims to be KEY
    with pytest.raises(BadSignature, match="does not verify"):
        verify_envelope(canonical_json(forged), [KEY.public_key()])


def test_wrong_payload_type_is_refused() -> None:
    data = canonical_json(_envelope(payloadType="application/json"))
    with pytest.raises(WrongPayloadType):
        verify_envelope(data, [KEY.public_key()])
    with pytest.raises(WrongPayloadType):
        read_statement(data)


def test_subject_and_predicate_type_must_match() -> None:
    with pytest.raises(SubjectMismatch):
        verify_envelope(SIGNED, [KEY.public_key()], subject_sha256="0" * 64)
    with pytest.raises(MalformedStatement, match="predicate type"):
        verify_envelope(SIGNED, [KEY.public_key()], predicate_type="https://other/v1")
    with pytest.raises(SubjectMismatch):
        check_subject(STMT, WEIGHTS + b"x")


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        canonical_json(
            {
                "_type": "https://in-toto.io/Statement/v0.1",
                "subject": [],
                "predicateType": TYPE,
                "predicate": {"a": 1},
            }
        ),
        canonical_json(
            {"_type": STATEMENT_TYPE, "subject": [], "predicateType": TYPE, "predicate": {"a": 1}}
        ),
        canonical_json(
            {
                "_type": STATEMENT_TYPE,
                "subject": [{"name": "x", "digest": {"md5": "a"}}],
                "predicateType": TYPE,
                "predicate": {"a": 1},
            }
        ),
        canonical_json(
            {
                "_type": STATEMENT_TYPE,
                "subject": [{"name": "x", "digest": {"sha256": "A" * 64}}],
                "predicateType": TYPE,
                "predicate": {"a": 1},
            }
        ),
        canonical_json({**STMT.to_json(), "predicateType": ""}),
        canonical_json({**STMT.to_json(), "extra": 1}),
    ],
)
def test_malformed_statements_signed_by_a_trusted_key_are_refused(payload: bytes) -> None:
    from securesystemslib.dsse import Envelope

    from fedgate.statements import signer

    envelope = Envelope(payload, PAYLOAD_TYPE, {})
    envelope.sign(signer(KEY))
    with pytest.raises(MalformedStatement):
        verify_envelope(canonical_json(envelope.to_dict()), [KEY.public_key()])


def test_a_statement_that_is_not_valid_cannot_be_signed() -> None:
    with pytest.raises(MalformedStatement):
        statement("x", "not-a-digest", TYPE, {"a": 1})
    with pytest.raises(MalformedStatement):
        sign_statement(KEY, statement("x", "a" * 64, TYPE, {"nan": float("nan")}))
    with pytest.raises(MalformedStatement):
        sign_statement(KEY, statement("x", "a" * 64, TYPE, {}))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[]",
        canonical_json({"payload": "", "payloadType": PAYLOAD_TYPE}),
        canonical_json(_envelope(signatures=[])),
        canonical_json(_envelope(signatures=[{"keyid": "k"}])),
        canonical_json(_envelope(payload="not base64!")),
        json.dumps(json.loads(SIGNED), indent=1).encode(),
    ],
)
def test_malformed_envelopes_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedEnvelope):
        verify_envelope(data, [KEY.public_key()])


@SETTINGS
@given(st.data())
def test_any_changed_byte_of_an_envelope_is_refused(data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(SIGNED) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != SIGNED[i]))
    tampered = SIGNED[:i] + bytes([new]) + SIGNED[i + 1 :]
    with pytest.raises(StatementError):
        verify_envelope(tampered, [KEY.public_key()], subject_sha256=sha256_hex(WEIGHTS))


@SETTINGS
@given(st.binary(max_size=64), st.integers(0, 200))
def test_inserted_or_deleted_bytes_are_refused(extra: bytes, at: int) -> None:
    at = min(at, len(SIGNED))
    changed = [SIGNED[:at] + extra + SIGNED[at:], SIGNED[:at] + SIGNED[at + 1 + len(extra) :]]
    for tampered in changed:
        if tampered == SIGNED:
            continue
        with pytest.raises(StatementError):
            verify_envelope(tampered, [KEY.public_key()])


@SETTINGS
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8),
        st.one_of(
            st.integers(-(2**53) + 1, 2**53 - 1),
            st.text(max_size=16),
            st.booleans(),
            st.none(),
            st.floats(-1e15, 1e15),
        ),
        min_size=1,
        max_size=6,
    ),
    st.binary(min_size=1, max_size=64),
)
def test_any_predicate_round_trips_and_another_subject_is_refused(
    predicate: dict, weights: bytes
) -> None:
    stmt = statement("w", sha256_hex(weights), TYPE, predicate)
    signed = sign_statement(KEY, stmt)
    verified = verify_envelope(signed, [KEY.public_key()], subject_sha256=sha256_hex(weights))
    assert verified.statement.subjects == stmt.subjects
    # JCS writes an integral float as an integer: the same canonical bytes, not the same type
    assert canonical_json(verified.statement.predicate) == canonical_json(predicate)
    with pytest.raises(SubjectMismatch):
        check_subject(stmt, weights + b"\0")
    with pytest.raises(UnknownKey):
        verify_envelope(signed, [OTHER.public_key()])
