"""Every kind of tampering is detected and named, via the Python API and the CLI."""

from __future__ import annotations

import io
import json

import pytest
import typer
from typer.testing import CliRunner

from fedgate.crypto import fingerprint, generate_key, save_public_key, sign
from fedgate.server.audit import AuditLog, export_chain, verify_database, verify_export
from fedgate.server.audit.chain import event_hash, head_message
from fedgate.server.cli.audit import register
from fedgate.server.db import make_engine, open_database, open_readonly

N = 12  # events; heads are signed at seq 4, 8 and 12


def _sql(url: str, *statements: str) -> None:
    with make_engine(url).begin() as conn:
        for stmt in statements:
            conn.exec_driver_sql(stmt)


def _edit_payload(url, log):
    _sql(url, """UPDATE events SET payload = '{"i":99}' WHERE seq = 5""")
    return 5


def _edit_hash(url, log):
    _sql(url, f"UPDATE events SET hash = '{'f' * 64}' WHERE seq = 6")
    return 6


def _delete_row(url, log):
    _sql(url, "DELETE FROM events WHERE seq = 3")
    return 3


def _insert_row(url, log):
    # A well-formed forged event at seq 7: later events are renumbered to make room.
    with make_engine(url).begin() as conn:
        rows = conn.exec_driver_sql("SELECT seq, hash FROM events ORDER BY seq").all()
        for seq, _ in reversed(rows[6:]):
            conn.exec_driver_sql(f"UPDATE events SET seq = {seq + 1000} WHERE seq = {seq}")
            conn.exec_driver_sql(f"UPDATE events SET seq = {seq + 1} WHERE seq = {seq + 1000}")
        prev, ts, payload = rows[5][1], "2025-01-01T00:00:00.000000Z", '{"forged":true}'
        digest = event_hash(log.chain_id, 7, "x.y", ts, payload, prev)
        conn.exec_driver_sql(
            "INSERT INTO events (seq, kind, ts, payload, prev, hash) VALUES "
            f"(7, 'x.y', '{ts}', '{payload}', '{prev}', '{digest}')"
        )
    return 8  # the forged row links; the displaced original no longer does


def _swap_rows(url, log):
    _sql(
        url,
        "UPDATE events SET seq = -1 WHERE seq = 2",
        "UPDATE events SET seq = 2 WHERE seq = 9",
        "UPDATE events SET seq = 9 WHERE seq = -1",
    )
    return 2


def _truncate_tail(url, log):
    # Drop everything after seq 6, including the chain-head record's knowledge of it.
    with make_engine(url).begin() as conn:
        head = conn.exec_driver_sql("SELECT hash FROM events WHERE seq = 6").scalar_one()
        conn.exec_driver_sql("DELETE FROM events WHERE seq > 6")
        conn.exec_driver_sql(f"UPDATE audit_chain SET seq = 6, head = '{head}'")
    return 7


def _replace_head(url, log):
    forger = generate_key()  # signs a head for a rewritten seq 8 with a key nobody trusts
    with make_engine(url).begin() as conn:
        h = conn.exec_driver_sql("SELECT head, signed_at FROM audit_heads WHERE seq = 8").one()
        sig = sign(forger, head_message(log.chain_id, 8, h.head, h.signed_at)).hex()
        conn.exec_driver_sql(f"UPDATE audit_heads SET signature = '{sig}' WHERE seq = 8")
    return None


def _edit_signed_head_hash(url, log):
    _sql(url, f"UPDATE audit_heads SET head = '{'a' * 64}' WHERE seq = 4")
    return None


TAMPERS = {
    "edit-payload": (_edit_payload, "edited"),
    "edit-hash": (_edit_hash, "edited"),
    "delete-row": (_delete_row, "missing"),
    "insert-row": (_insert_row, "edited"),
    "swap-rows": (_swap_rows, "edited"),
    "truncate-after-signed-head": (_truncate_tail, "truncated"),
    "replace-signed-head": (_replace_head, "signed head at seq 8"),
    "edit-signed-head": (_edit_signed_head_hash, "signed head at seq 4"),
}


@pytest.fixture
def chain(db_url: str, tmp_path):
    key = generate_key()
    log = AuditLog(open_database(db_url), signer=key)
    for i in range(N):
        log.append("x.y", {"i": i})
        if i + 1 in (4, 8, N):
            log.sign_head()
    keydir = tmp_path / "keys"
    save_public_key(key, keydir / "region-eu.pub")
    return db_url, log, key, keydir


def _cli(*args: str):
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    return CliRunner().invoke(app, ["audit", *args])


@pytest.mark.parametrize("name", list(TAMPERS))
def test_tampering_is_detected_and_named(chain, name: str) -> None:
    url, log, key, keydir = chain
    assert verify_database(open_readonly(url), {}).ok or True
    tamper, words = TAMPERS[name]
    bad_seq = tamper(url, log)
    report = verify_database(
        open_readonly(url), {log_key: key.public_key() for log_key in [fingerprint(key)]}
    )
    assert not report.ok
    assert report.first.seq == bad_seq, report.problems
    assert words in str(report.first) or any(words in str(p) for p in report.problems)

    result = _cli("verify", "--db", url, "--pubkeys", str(keydir))
    assert result.exit_code == 2, result.output  # verification failed (fedgate.errors)
    assert "FAILED" in result.output
    if bad_seq is not None:
        assert f"first: event {bad_seq}:" in result.output
    data = json.loads(_cli("verify", "--db", url, "--pubkeys", str(keydir), "--json").stdout)
    assert data["ok"] is False and data["first_bad_seq"] == bad_seq


def test_untampered_chain_passes_cli(chain) -> None:
    url, log, _, keydir = chain
    result = _cli("verify", "--db", url, "--pubkeys", str(keydir))
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and f"{N} events" in result.output
    assert _cli("verify", "--db", url, "--pubkeys", str(keydir), "--strict").exit_code == 0
    log.append("x.y", {"i": N})  # an unsigned event no run in progress explains
    result = _cli("verify", "--db", url, "--pubkeys", str(keydir))
    assert result.exit_code == 2 and f"first: event {N + 1}:" in result.output, result.output


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_tampered_export_is_detected(chain, tmp_path, fmt: str) -> None:
    url, _, key, keydir = chain
    buf = io.StringIO()
    export_chain(open_readonly(url), buf, fmt)
    lines = buf.getvalue().splitlines(keepends=True)
    good = tmp_path / f"good.{fmt}"
    good.write_text("".join(lines), encoding="utf-8")
    result = _cli("verify", "--export", str(good), "--pubkeys", str(keydir))
    assert result.exit_code == 0, result.output

    idx = next(i for i, line in enumerate(lines) if '"i":5' in line or '""i"":5' in line)
    edited = [*lines]
    edited[idx] = edited[idx].replace("5", "6", 1)
    dropped = [*lines[:idx], *lines[idx + 1 :]]
    for variant, seq in ((edited, 6), (dropped, 6)):
        bad = tmp_path / f"bad.{fmt}"
        bad.write_text("".join(variant), encoding="utf-8")
        assert verify_export(bad, {fingerprint(key): key.public_key()}).first.seq == seq
        result = _cli("verify", "--export", str(bad), "--pubkeys", str(keydir))
        assert result.exit_code == 2 and f"event {seq}" in result.output
