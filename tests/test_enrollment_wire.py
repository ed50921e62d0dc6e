"""The enrollment wire format (fedgate/enrollment_wire.py): tokens, challenges, signed
messages, with property tests for tampering, replay and malformed input, and the published
vectors (docs/enrollment-vectors.json)."""

from __future__ import annotations

import base64
import importlib.util
import json
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedgate.crypto import SignatureError, generate_key, load_public_key, public_bytes, sign, verify
from fedgate.enrollment_wire import (
    ChallengeError,
    EnrollToken,
    TokenError,
    check_challenge,
    enroll_message,
    mint_challenge,
    parse_token,
    status_message,
)

ROOT = Path(__file__).resolve().parents[1]
HEX = "0123456789abcdef"
secrets_ = st.text(string.ascii_letters + string.digits + "_-", min_size=16, max_size=64)
tokens = st.builds(
    EnrollToken,
    url=st.from_regex(r"https://[a-z0-9.-]{1,30}(:[0-9]{1,5})?", fullmatch=True),
    ca_sha256=st.text(HEX, min_size=64, max_size=64),
    region=st.from_regex(r"[a-z_][a-z0-9_]{0,20}", fullmatch=True),
    expires_at=st.integers(1, 2**40).map(float),
    secret=secrets_.map(lambda s: "fgt_" + s),
)


@settings(max_examples=40)
@given(tokens)
def test_a_token_round_trips(token: EnrollToken) -> None:
    assert parse_token(token.encode()) == token
    assert parse_token("  " + token.encode() + "\n") == token  # pasted with whitespace


@settings(max_examples=40)
@given(tokens, st.data())
def test_a_damaged_token_is_refused_or_parses_to_itself(token: EnrollToken, data) -> None:
    text = token.encode()
    i = data.draw(st.integers(len("fge1."), len(text) - 1))
    ch = data.draw(st.sampled_from(string.ascii_letters + string.digits + "-_=!"))
    damaged = text[:i] + ch + text[i + 1 :]
    try:
        parsed = parse_token(damaged)
    except TokenError:
        return
    # base64 slack bits can leave the payload unchanged; anything else is a different token
    assert parsed == token or parsed.encode() != text


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"v": 2}, "unknown version"),
        ({"drop": "secret"}, "fields must be"),
        ({"url": "http://plain:80"}, "https://"),
        ({"ca": "AB" * 32}, "64 lowercase hex"),
        ({"region": "eu west"}, "not a region"),
        ({"exp": "soon"}, "positive integer"),
        ({"exp": True}, "positive integer"),
        ({"secret": "nope"}, "secret is malformed"),
    ],
)
def test_malformed_tokens_name_what_is_wrong(body: dict, complaint: str) -> None:
    good = {"v": 1, "url": "https://h:1", "ca": "a" * 64, "region": "eu", "exp": 9,
            "secret": "fgt_" + "x" * 20}  # fmt: skip
    drop = body.pop("drop", None)
    good.update(body)
    good.pop(drop, None)
    text = "fge1." + base64.urlsafe_b64encode(json.dumps(good).encode()).decode().rstrip("=")
    with pytest.raises(TokenError, match=complaint):
        parse_token(text)


@pytest.mark.parametrize("text", ["", "fgt_abc", "fge1.", "fge1.!!!", "fge1." + "A" * 3000])
def test_garbage_is_not_a_token(text: str) -> None:
    with pytest.raises(TokenError):
        parse_token(text)


@given(st.binary(min_size=32, max_size=32), st.floats(0, 1e9))
def test_a_challenge_checks_with_its_key_until_it_expires(key: bytes, now: float) -> None:
    c = mint_challenge(key, now, ttl=60)
    assert check_challenge(key, c, now) == int(now + 60)
    with pytest.raises(ChallengeError, match="expired"):
        check_challenge(key, c, now + 61)
    with pytest.raises(ChallengeError, match="not issued"):
        check_challenge(bytes(32) if key != bytes(32) else b"\1" * 32, c, now)


@given(st.binary(min_size=32, max_size=32), st.data())
def test_a_tampered_challenge_is_refused(key: bytes, data) -> None:
    c = mint_challenge(key, 1000.0)
    i = data.draw(st.integers(0, len(c) - 1))
    ch = data.draw(st.sampled_from("0123456789abcdefXY."))
    forged = c[:i] + ch + c[i + 1 :]
    if forged == c:
        return
    with pytest.raises(ChallengeError):
        check_challenge(key, forged, 1000.0)


@given(st.text(max_size=200))
def test_any_text_is_a_challenge_or_refused_cleanly(text: str) -> None:
    with pytest.raises(ChallengeError):
        check_challenge(b"k" * 32, text, 0.0)


FIELDS = ("region", "secret_sha256", "challenge", "signing_key", "node_key", "profile")


@settings(max_examples=40)
@given(st.sampled_from(FIELDS), st.text(min_size=1, max_size=30))
def test_a_proof_covers_every_field(field: str, other: str) -> None:
    key = generate_key()
    facts = {f: f"value-of-{f}" for f in FIELDS}
    facts["signing_key"] = public_bytes(key).hex()
    proof = sign(key, enroll_message(**facts))
    changed = {**facts, field: facts[field] + other}
    with pytest.raises(SignatureError):
        verify(key.public_key(), proof, enroll_message(**changed))


def test_an_enroll_proof_is_not_a_status_proof_and_back() -> None:
    key = generate_key()
    pub = public_bytes(key).hex()
    status = status_message(region="eu", signing_key=pub, challenge="c")
    enroll = enroll_message(region="eu", secret_sha256="", challenge="c", signing_key=pub,
                            node_key="", profile="")  # fmt: skip
    with pytest.raises(SignatureError):
        verify(key.public_key(), sign(key, status), enroll)
    with pytest.raises(SignatureError):
        verify(key.public_key(), sign(key, enroll), status)


def _generator():
    path = ROOT / "tests" / "vectors" / "make_enrollment_vectors.py"
    spec = importlib.util.spec_from_file_location("make_enrollment_vectors", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_published_vectors_hold() -> None:
    gen = _generator()
    published = json.loads((ROOT / "docs" / "enrollment-vectors.json").read_text())
    assert published == json.loads(gen.render())  # the generator reproduces the file
    token = parse_token(published["token"]["string"])
    assert token.secret_sha256 == published["token"]["secret_sha256"]
    key = load_public_key(bytes.fromhex(published["device_public_key"]))
    challenge = published["challenge"]
    assert check_challenge(bytes.fromhex(challenge["key"]), challenge["string"], 0.0) == float(
        challenge["expiry"]
    )
    for part in ("enroll", "status"):
        verify(key, bytes.fromhex(published[part]["signature"]),
               published[part]["message_utf8"].encode())  # fmt: skip
    req = published["enroll"]["request"]
    rebuilt = enroll_message(
        region=req["region"], secret_sha256=token.secret_sha256, challenge=req["challenge"],
        signing_key=req["signing_key"], node_key=req["node_key"], profile=req["profile"],
    )  # fmt: skip
    assert rebuilt.decode() == published["enroll"]["message_utf8"]
