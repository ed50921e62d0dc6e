"""Merkle checkpoints of a real audit log (``Store`` with the region key) and the proof verbs:
``audit checkpoint | prove | consistency | check-proof``; an auditor's kept checkpoint catches
a rewrite of history, an event edited in place fails its proof and ``audit verify``."""

from __future__ import annotations

import json

import pytest
import typer
from sqlalchemy import text
from typer.testing import CliRunner

from fedgate.checkpoint import open_checkpoint, verifier_key
from fedgate.crypto import fingerprint, generate_key, save_public_key
from fedgate.server.audit.chain import GENESIS, event_hash
from fedgate.server.audit.checkpoints import latest_checkpoint, stored_checkpoints, tree_size
from fedgate.server.audit.keys import (
    coordinator_key_path,
    coordinator_pub_path,
    ensure_key,
    ensure_region_key,
    region_pub_path,
)
from fedgate.server.audit.log import AuditLog
from fedgate.server.audit.store import Store
from fedgate.server.cli.audit import register
from fedgate.server.db import coordinator_url, make_engine, open_database, open_readonly
from fedgate.tlog_proofs import audit_origin

VERBS = ("checkpoint", "prove", "consistency", "check-proof")


def _cli(*args: str):
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    return CliRunner().invoke(app, ["audit", *args])


def _run(store: Store, run: str, rounds: int = 2) -> None:
    """A run as the region records it: launched, rounds with every client's fate, finished."""
    store.record_run(run, "eu", "alice", {"rounds": rounds})
    for rnd in range(1, rounds + 1):
        store.open_round(run, rnd, nonce=f"{rnd:032x}")
        clients = [{"node_id": 11, "accepted": True, "device_id": "d" * 64, "num_examples": 80,
                    "fate": "kept", "score": 0.25, "weight": 1.0},
                   {"node_id": 12, "accepted": False, "reason": "bad-signature"}]  # fmt: skip
        store.record_round(run, {"round": rnd, "sampled": 2, "aggregated": True,
                                 "clients": clients, "metrics": {"val-acc": 0.5}})  # fmt: skip
    store.finish_run(run)


@pytest.fixture
def region(db_url: str, tmp_path):
    home = tmp_path / "home"
    store = Store.open(db_url, signer=ensure_region_key(home, "eu"))
    _run(store, "7")
    return store, db_url, home, region_pub_path(home, "eu")


def test_every_proof_verb_has_help() -> None:
    for verb in VERBS:
        result = _cli(verb, "--help")
        assert result.exit_code == 0 and "Usage" in result.output, verb


def test_a_checkpoint_with_every_signed_head(region) -> None:
    store, url, _, _ = region
    heads = store.audit.heads()
    with open_readonly(url).connect() as conn:
        checkpoints = stored_checkpoints(conn)
        assert tree_size(conn) == heads[-1].seq
    assert [c.size for c in checkpoints] == [h.seq for h in heads]  # launch, each round, end
    last = open_checkpoint(checkpoints[-1].note, store.audit.signer.public_key(),
                           audit_origin(store.audit.chain_id))  # fmt: skip
    assert last.size == heads[-1].seq and last.root.hex() == checkpoints[-1].root
    report = json.loads(_cli("verify", "--db", url, "--pubkeys", str(region[3]), "--no-blobs",
                             "--json").output)  # fmt: skip
    assert report["ok"] and report["checkpoints_checked"] == len(checkpoints)
    assert report["last_checkpoint"] == last.size


def test_prove_consistency_and_check_with_only_the_key(region, tmp_path) -> None:
    store, url, _, pub = region
    db = ("--db", url)
    kept = tmp_path / "kept.note"
    assert _cli("checkpoint", *db, "--out", str(kept)).exit_code == 0
    first = latest_checkpoint(open_readonly(url).connect())
    assert kept.read_text() == first.note
    _run(store, "8", rounds=3)  # the log grows

    proof = tmp_path / "p.json"
    result = _cli("prove", "3", *db, "--out", str(proof))
    assert result.exit_code == 0, result.output
    checked = _cli("check-proof", str(proof), "--pubkey", str(pub))
    assert checked.exit_code == 0, checked.output
    data = json.loads(proof.read_text())
    event = json.loads(data["leaf"])
    assert data["index"] == 2 and event["seq"] == 3 and event["kind"] == "update.accepted"
    assert f"OK inclusion: event 3 (update.accepted, {event['ts']})" in checked.output

    cons = tmp_path / "c.json"
    result = _cli("consistency", str(kept), *db, "--out", str(cons))
    assert result.exit_code == 0, result.output
    out = json.loads(_cli("check-proof", str(cons), "--pubkey", str(pub), "--json").output)
    assert out["ok"] and out["old_size"] == first.size and out["new_size"] > first.size
    by_size = _cli("consistency", str(first.size), "latest", *db)  # sizes of stored ones
    assert by_size.exit_code == 0 and json.loads(by_size.output)["old"] == first.note

    # a note verifier key (name+id+base64) works as the key, and pins the origin
    note_key = tmp_path / "eu.vkey"
    note_key.write_text(verifier_key(audit_origin(store.audit.chain_id), store.audit.signer))
    assert _cli("check-proof", str(cons), "--pubkey", str(note_key)).exit_code == 0

    # with another key, a changed file, or no file: refused, naming why
    other = tmp_path / "other.pub"
    save_public_key(generate_key(), other)
    wrong = _cli("check-proof", str(proof), "--pubkey", str(other))
    assert wrong.exit_code == 2 and "no signature by key" in wrong.output
    data["path"][0] = "0" * 64
    proof.write_text(json.dumps(data))
    bad = _cli("check-proof", str(proof), "--pubkey", str(pub))
    assert bad.exit_code == 2 and "is not in the log of checkpoint size" in bad.output
    proof.write_text("{not json")
    assert "not JSON" in _cli("check-proof", str(proof), "--pubkey", str(pub)).output
    missing = _cli("check-proof", str(tmp_path / "nope.json"), "--pubkey", str(pub))
    assert missing.exit_code == 1 and "cannot read proof file" in missing.output
    beyond = _cli("prove", "999", *db)
    assert beyond.exit_code == 1 and "is not under the latest checkpoint" in beyond.output
    assert _cli("consistency", str(tmp_path / "nope"), *db).exit_code == 1


def _rewrite(url: str, chain: str, seq: int) -> None:
    """The attacker with the database (not the key): ``seq``'s launcher becomes mallory, every
    hash from there is recomputed, and whatever is signed or derived is dropped."""
    with make_engine(url).begin() as conn:
        rows = conn.execute(text("SELECT seq, kind, ts, payload FROM events ORDER BY seq")).all()
        prev = GENESIS
        for row in rows:
            payload = row.payload
            if row.seq == seq:
                payload = payload.replace('"alice"', '"mallory"')
            digest = event_hash(chain, row.seq, row.kind, row.ts, payload, prev)
            conn.execute(
                text("UPDATE events SET payload = :p, prev = :v, hash = :h WHERE seq = :s"),
                {"p": payload, "v": prev, "h": digest, "s": row.seq},
            )
            prev = digest
        conn.execute(text("UPDATE audit_chain SET head = :h"), {"h": prev})
        for table in ("audit_heads", "audit_checkpoints", "audit_tree"):
            conn.execute(text(f"DELETE FROM {table}"))


def test_a_kept_checkpoint_catches_a_rewrite_of_history(region, tmp_path) -> None:
    store, url, _, _ = region
    kept = tmp_path / "yesterday.note"
    assert _cli("checkpoint", "--db", url, "--out", str(kept)).exit_code == 0
    _rewrite(url, store.audit.chain_id, 1)  # run.launched by alice: now by mallory
    _run(store, "8")  # the region goes on and signs checkpoints of the rewritten log
    result = _cli("consistency", str(kept), "--db", url)
    assert result.exit_code == 2, result.output
    assert "does not extend the old checkpoint" in result.output
    assert "history was rewritten" in result.output


def test_an_event_edited_in_place_fails_its_proof_and_verify(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'eu.db'}"
    home = tmp_path / "home"
    store = Store.open(url, signer=ensure_region_key(home, "eu"))
    _run(store, "7")
    with make_engine(url).begin() as conn:
        conn.execute(text("UPDATE events SET payload = replace(payload, 'alice', 'mallory') "
                          "WHERE seq = 1"))  # fmt: skip
    proof = _cli("prove", "1", "--db", url)
    assert proof.exit_code == 2
    assert "event 1 as stored is not the event the checkpoint" in proof.output
    verify = _cli("verify", "--db", url, "--pubkeys", str(region_pub_path(home, "eu")),
                  "--no-blobs", "--json")  # fmt: skip
    problems = json.loads(verify.output[verify.output.index("{") :])["problems"]
    assert verify.exit_code == 2
    assert any("Merkle tree differs from the checkpoint at size 1" in p for p in problems)


def test_the_coordinators_log_has_proofs_too(tmp_path) -> None:
    home = tmp_path / "home"
    key = ensure_key(coordinator_key_path(home), coordinator_pub_path(home))
    log = AuditLog(open_database(coordinator_url(home)), signer=key)
    log.append_many([("merge.done", {"version": v}) for v in range(5)], sign=True)
    proof = tmp_path / "p.json"
    result = _cli("prove", "4", "--coordinator", "--home", str(home), "--out", str(proof))
    assert result.exit_code == 0, result.output
    checked = _cli("check-proof", str(proof), "--pubkey", str(coordinator_pub_path(home)))
    assert checked.exit_code == 0 and "OK inclusion: event 4 (merge.done" in checked.output
    note = _cli("checkpoint", "--coordinator", "--home", str(home)).output
    assert note.startswith(audit_origin(log.chain_id) + "\n5\n")


def test_every_event_and_checkpoint_pair_proves(tmp_path, monkeypatch) -> None:
    """Checkpoints at sizes around the 16-event blocks whose small subtrees are rehashed, not
    stored: every event proves against every checkpoint, every pair of checkpoints is consistent,
    and the table holds only the big subtrees (written in batches while a tree grows)."""
    from fedgate.server.audit import checkpoints
    from fedgate.server.audit.checkpoints import (
        STORED_LEVEL,
        prove_consistency,
        prove_inclusion,
    )
    from fedgate.tlog_proofs import check_consistency, check_inclusion

    monkeypatch.setattr(checkpoints, "FLUSH_NODES", 7)
    key = generate_key()
    log = AuditLog(open_database(f"sqlite:///{tmp_path / 'log.db'}"), signer=key)
    done = 0
    for size in (1, 5, 16, 17, 33, 47, 70):
        log.append_many([("x.y", {"i": i}) for i in range(done, size)], sign=True)
        done = size
    with log.engine.connect() as conn:
        stored = stored_checkpoints(conn)
        assert [c.size for c in stored] == [1, 5, 16, 17, 33, 47, 70]
        levels = {lv for (lv,) in conn.execute(text("SELECT level FROM audit_tree"))}
        assert min(levels) == STORED_LEVEL and max(levels) == 6  # 64 leaves: 4, 2 and 1 nodes
        for against in stored:
            for seq in range(1, against.size + 1):
                proof = prove_inclusion(conn, log.chain_id, seq, against)
                assert check_inclusion(proof, key.public_key()).seq == seq
        for i, old in enumerate(stored):
            for new in stored[i:]:
                proof = prove_consistency(conn, log.chain_id, old, new)
                assert check_consistency(proof, key.public_key()).new.size == new.size


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_exports_carry_the_checkpoints(tmp_path, fmt: str) -> None:
    from fedgate.server.audit.export import export_chain, verify_export

    url = f"sqlite:///{tmp_path / 'eu.db'}"
    store = Store.open(url, signer=ensure_region_key(tmp_path / "home", "eu"))
    _run(store, "7")
    path = tmp_path / f"chain.{fmt}"
    with path.open("w", newline="") as fh:
        export_chain(open_readonly(url), fh, fmt)
    keys = {fingerprint(store.audit.signer): store.audit.signer.public_key()}
    report = verify_export(path, keys)
    assert report.ok and report.checkpoints_checked == len(store.audit.heads())
    root = latest_checkpoint(open_readonly(url).connect()).root
    path.write_text(path.read_text().replace(root, "0" * 64))  # a row disagreeing with its note
    report = verify_export(path, keys)
    assert not report.ok and "its row disagrees with its signed note" in str(report.problems)
