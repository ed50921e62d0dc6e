"""Property tests: random payloads always verify; any single-byte tampering is caught."""

from __future__ import annotations

import hashlib
import io
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedgate.crypto import canonical_json, fingerprint, generate_key
from fedgate.server.audit import AuditLog, ChainVerifier, export_chain, verify_export
from fedgate.server.audit.chain import GENESIS, event_hash
from fedgate.server.audit.export import ExportError
from fedgate.server.db import open_database, open_readonly

SAFE_INT = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
SCALARS = (
    st.none()
    | st.booleans()
    | SAFE_INT
    | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
PAYLOADS = st.dictionaries(st.text(max_size=8), JSON, max_size=4)
KINDS = st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True)
SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """One SQLite chain with varied payloads and signed heads, plus its JSONL export."""
    key = generate_key()
    url = f"sqlite:///{tmp_path_factory.mktemp('prop') / 'a.db'}"
    log = AuditLog(open_database(url), signer=key)
    for i in range(8):
        log.append_many(
            [("x.y", {"i": i, "s": 'é\n"\\\u0001', "f": i / 3, "l": [None, True]})],
            sign=i % 3 == 2 or i == 7,  # the last too: nothing unsigned passes
        )
    buf = io.StringIO()
    export_chain(open_readonly(url), buf, "jsonl")
    return log, {fingerprint(key): key.public_key()}, buf.getvalue().encode()


@pytest.fixture(scope="module")
def growing(tmp_path_factory):
    return AuditLog(open_database(f"sqlite:///{tmp_path_factory.mktemp('grow') / 'g.db'}"))


@SETTINGS
@given(items=st.lists(st.tuples(KINDS, PAYLOADS), min_size=1, max_size=5))
def test_random_payloads_verify_and_follow_the_spec(growing, items) -> None:
    start = growing.head()[0]
    records = growing.append_many(items)
    assert [r.seq for r in records] == list(range(start + 1, start + len(items) + 1))
    for rec, (kind, payload) in zip(records, items, strict=True):
        obj = {
            "chain": growing.chain_id,
            "seq": rec.seq,
            "kind": kind,
            "ts": rec.ts,
            "payload": payload,
            "prev": rec.prev,
        }
        assert hashlib.sha256(canonical_json(obj)).hexdigest() == rec.hash
    checker = ChainVerifier(growing.chain_id, [], None)
    checker.feed_many((e.seq, e.kind, e.ts, e.payload, e.prev, e.hash) for e in growing.events())
    assert checker.finish(*growing.head()).ok


FIELDS = ("kind", "ts", "payload", "prev", "hash")


@SETTINGS
@given(data=st.data())
def test_single_byte_tampering_of_a_row_is_named(signed, data) -> None:
    log, keys, _ = signed
    events = list(log.events())
    target = data.draw(st.sampled_from(events))
    name = data.draw(st.sampled_from(FIELDS))
    value = getattr(target, name).encode()
    pos = data.draw(st.integers(0, len(value) - 1))
    byte = data.draw(st.integers(0x20, 0x7E).filter(lambda b: b != value[pos]))
    tampered = (value[:pos] + bytes([byte]) + value[pos + 1 :]).decode("utf-8", "replace")
    rows = [(e.seq, e.kind, e.ts, e.payload, e.prev, e.hash) for e in events]
    i = target.seq - 1
    rows[i] = (*rows[i][: FIELDS.index(name) + 1], tampered, *rows[i][FIELDS.index(name) + 2 :])
    checker = ChainVerifier(log.chain_id, log.heads(), keys)
    checker.feed_many(rows)
    report = checker.finish(*log.head())
    assert not report.ok and report.first.seq == target.seq


def _semantic(blob: bytes):
    try:
        return [json.loads(line) for line in blob.decode("utf-8").splitlines()]
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


@SETTINGS
@given(data=st.data())
def test_single_byte_tampering_of_an_export_is_caught(signed, tmp_path_factory, data) -> None:
    _, keys, blob = signed
    pos = data.draw(st.integers(0, len(blob) - 1))
    byte = data.draw(st.integers(0, 255).filter(lambda b: b != blob[pos]))
    tampered = blob[:pos] + bytes([byte]) + blob[pos + 1 :]
    if _semantic(tampered) == _semantic(blob):
        return  # e.g. "\u001f" -> "\u001F": the same JSON, nothing was changed
    path = tmp_path_factory.mktemp("t") / "audit.jsonl"
    path.write_bytes(tampered)
    try:
        report = verify_export(path, keys)
    except ExportError:
        return
    assert not report.ok


def test_genesis_rule() -> None:
    digest = event_hash("c" * 32, 1, "a.b", "2025-01-01T00:00:00.000000Z", "{}", GENESIS)
    assert len(digest) == 64


def test_an_upper_case_signature_is_not_the_same_signature(signed, tmp_path) -> None:
    """``bytes.fromhex`` reads "A" as "a": without the format check a head's signature could be
    re-cased undetected (found by the single-byte property above)."""
    _, keys, blob = signed
    lines = blob.decode().splitlines()
    i = next(n for n, line in enumerate(lines) if '"record":"head"' in line)
    head = json.loads(lines[i])
    assert re.search("[a-f]", head["signature"])
    head["signature"] = head["signature"].upper()
    lines[i] = json.dumps(head, separators=(",", ":"))
    path = tmp_path / "audit.jsonl"
    path.write_text("\n".join(lines) + "\n")
    try:
        report = verify_export(path, keys)
    except ExportError:
        return
    assert not report.ok
    assert "malformed" in str(report.problems)
