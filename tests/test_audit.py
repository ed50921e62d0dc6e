"""Audit chain: appends, hashing rule, signed heads, verification and export (both backends)."""

from __future__ import annotations

import hashlib
import io
import itertools

import pytest

from fedgate.crypto import canonical_json, fingerprint, generate_key
from fedgate.server.audit import GENESIS, AuditLog, export_chain, verify_database, verify_export
from fedgate.server.audit.chain import event_bytes
from fedgate.server.audit.keys import ensure_region_key, load_pubkeys, region_pub_path
from fedgate.server.db import open_database, open_readonly


def _keys(*private):
    return {fingerprint(k): k.public_key() for k in private}


def test_append_links_and_hashes_canonical_content(db_url: str) -> None:
    log = AuditLog(open_database(db_url))
    first = log.append("run.launched", {"run": "r1", "by": "alice", "cfg": {"b": 1, "a": [1.5]}})
    more = log.append_many([("update.accepted", {"node": str(i), "é": "ü"}) for i in range(5)])
    events = list(log.events())
    assert [e.seq for e in events] == list(range(1, 7))
    assert events[0] == first and events[1:] == more
    assert first.prev == GENESIS
    for before, after in itertools.pairwise(events):
        assert after.prev == before.hash
    for e in events:  # the rule an outside auditor implements: SHA-256 of JCS of the object
        obj = {
            "chain": log.chain_id,
            "seq": e.seq,
            "kind": e.kind,
            "ts": e.ts,
            "payload": e.data,
            "prev": e.prev,
        }
        assert hashlib.sha256(canonical_json(obj)).hexdigest() == e.hash
        assert canonical_json(obj) == event_bytes(
            log.chain_id, e.seq, e.kind, e.ts, e.payload, e.prev
        )
    assert log.head() == (6, events[-1].hash)
    assert log.append_many([]) == []


def test_bad_kinds_and_payloads_are_refused(db_url: str) -> None:
    log = AuditLog(open_database(db_url))
    with pytest.raises(ValueError, match="kind"):
        log.append("Bad Kind", {})
    with pytest.raises(TypeError, match="JSON object"):
        log.append("ok.kind", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(Exception):  # noqa: B017 - rfc8785 refuses NaN
        log.append("ok.kind", {"x": float("nan")})
    assert log.head()[0] == 0


def test_signed_heads_and_verification(db_url: str) -> None:
    key, other = generate_key(), generate_key()
    log = AuditLog(open_database(db_url), signer=key)
    assert log.sign_head() is None  # empty chain
    log.append_many([("a.b", {"i": i}) for i in range(3)], sign=True)
    head = log.sign_head()  # idempotent at the same seq
    assert head is not None and head.seq == 3 and len(log.heads()) == 1
    log.append("a.b", {"i": 3})
    ro = open_readonly(db_url)
    report = verify_database(ro, _keys(key), require_signed=False)
    assert report.ok and report.events == 4 and report.signed_heads == 1
    assert (report.last_signed_seq, report.unsigned_tail) == (3, 1)
    unsigned = verify_database(ro, _keys(key))  # by default nothing unsigned passes
    assert not unsigned.ok and unsigned.first.seq == 4, unsigned.problems
    assert "after the last signed head (seq 3)" in str(unsigned.first)
    assert verify_database(ro, None).heads_checked is False
    wrong = verify_database(ro, _keys(other))
    assert not wrong.ok and any("unknown key" in str(p) for p in wrong.problems)
    assert "event 1: not under any signed head" in str(wrong.first)  # its only head is void
    chain_only = verify_database(ro, _keys(other), require_signed=False)
    assert "unknown key" in str(chain_only.first)
    with pytest.raises(RuntimeError, match="no signing key"):
        AuditLog(open_database(db_url)).sign_head()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_verifies_offline(db_url: str, tmp_path, fmt: str) -> None:
    key = ensure_region_key(tmp_path / "home", "eu")
    log = AuditLog(open_database(db_url), signer=key)
    log.append_many(
        [("x.y", {"text": 'quote " and \\ and\nnewline', "n": i, "f": 0.1}) for i in range(10)],
        sign=True,
    )
    log.append("x.y", {"last": True})
    buf = io.StringIO()
    assert export_chain(open_readonly(db_url), buf, fmt) == 11
    path = tmp_path / f"audit.{fmt}"
    path.write_text(buf.getvalue(), encoding="utf-8")
    keys = load_pubkeys([region_pub_path(tmp_path / "home", "eu")])
    report = verify_export(path, keys, require_signed=False)
    assert report.ok, report.problems
    assert (report.events, report.signed_heads, report.unsigned_tail) == (11, 1, 1)
    assert report.head == log.head()[1]
    unsigned = verify_export(path, keys)  # by default the unsigned last event fails
    assert not unsigned.ok and unsigned.first.seq == 11


def test_empty_chain_verifies(db_url: str) -> None:
    open_database(db_url)
    report = verify_database(open_readonly(db_url), {})
    assert report.ok and report.events == 0
