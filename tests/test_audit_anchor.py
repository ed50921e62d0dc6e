"""An attacker who can write the database (and the files) but not sign: every tampering form of
issue 14 fails verification, on SQLite and PostgreSQL; runs are built through the Store API."""

from __future__ import annotations

import json

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from fedgate.crypto import fingerprint
from fedgate.server.audit.anchors import WITNESS_ENV, load_checkpoint, read_witness
from fedgate.server.audit.chain import GENESIS, event_hash
from fedgate.server.audit.keys import ensure_region_key
from fedgate.server.audit.store import Store
from fedgate.server.audit.verify import check_models, verify_database
from fedgate.server.cli.audit import register
from fedgate.server.db import BlobStore, make_engine, open_readonly

ROUNDS = 3
SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _cli(*args: str):
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    return CliRunner().invoke(app, ["audit", *args])


def record_run(store: Store, blobs: BlobStore, run: str = "7", end: bool = True) -> None:
    """One run of ``ROUNDS`` rounds as the region writes it (models in ``blobs``)."""
    store.record_run(run, "eu", "alice", {"rounds": ROUNDS})
    for rnd in range(1, ROUNDS + 1):
        store.open_round(run, rnd, nonce=f"{rnd:032x}")
        clients = [
            {"node_id": 11, "accepted": True, "device_id": "d" * 64, "num_examples": 80,
             "fate": "kept", "score": 0.25, "weight": 0.5},
            {"node_id": 12, "accepted": True, "device_id": "e" * 64, "num_examples": 90,
             "fate": "trimmed", "score": 4.5, "weight": 0.0},
            {"node_id": 13, "accepted": False, "reason": "bad-signature"},
        ]  # fmt: skip
        record = {"round": rnd, "sampled": 3, "aggregated": True, "clients": clients,
                  "metrics": {"val-acc": 0.5 + rnd / 10}}  # fmt: skip
        store.record_round(run, record, model_sha256=blobs.put(f"model {run} {rnd}".encode()))
        store.record_metrics(run, rnd, {"fed-loss": 1.0 / rnd})
    if end:
        store.finish_run(run)


class Region:
    """A finished run in a region database, with its key, blobs, witness dir and the pristine
    rows, which ``restore`` puts back between hypothesis examples."""

    def __init__(self, url: str, home, monkeypatch) -> None:
        self.url, self.home = url, home
        self.witness = home / "witness"
        monkeypatch.setenv(WITNESS_ENV, str(self.witness))
        self.key = ensure_region_key(home, "eu")
        self.keys = {fingerprint(self.key): self.key.public_key()}
        self.blobs = BlobStore(home / "blobs")
        self.store = Store.open(url, signer=self.key)
        record_run(self.store, self.blobs)
        self.chain = self.store.audit.chain_id
        self.events = self._rows("SELECT seq, kind, ts, payload, prev, hash FROM events")
        self.heads = self._rows("SELECT seq, head, key, signature, signed_at FROM audit_heads")
        self.checkpoints = self._rows(  # the Merkle checkpoints signed with the heads
            "SELECT size AS seq, root, key, note, signed_at FROM audit_checkpoints"
        )

    def _rows(self, sql: str) -> list[tuple]:
        with make_engine(self.url).connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(sql + " ORDER BY seq")]

    def verify(self, **kwargs):
        return verify_database(open_readonly(self.url), self.keys, **kwargs)

    def write(self, events: list[tuple], heads: list[tuple]) -> None:
        """Replace the log with ``events`` and ``heads`` (and the checkpoints signed with those
        heads) and point the chain row at the end."""
        kept = {h[0] for h in heads}
        with make_engine(self.url).begin() as conn:
            conn.exec_driver_sql("DELETE FROM events")
            conn.exec_driver_sql("DELETE FROM audit_heads")
            conn.exec_driver_sql("DELETE FROM audit_checkpoints")
            for row in (c for c in self.checkpoints if c[0] in kept):
                conn.exec_driver_sql(
                    "INSERT INTO audit_checkpoints (size, root, key, note, signed_at) "
                    "VALUES (%s, %s, %s, %s, %s)" if "postgresql" in self.url else
                    "INSERT INTO audit_checkpoints (size, root, key, note, signed_at) "
                    "VALUES (?, ?, ?, ?, ?)", row,
                )  # fmt: skip
            for row in events:
                conn.exec_driver_sql(
                    "INSERT INTO events (seq, kind, ts, payload, prev, hash) "
                    "VALUES (%s, %s, %s, %s, %s, %s)" if "postgresql" in self.url else
                    "INSERT INTO events (seq, kind, ts, payload, prev, hash) "
                    "VALUES (?, ?, ?, ?, ?, ?)", row,
                )  # fmt: skip
            for row in heads:
                conn.exec_driver_sql(
                    "INSERT INTO audit_heads (seq, head, key, signature, signed_at) "
                    "VALUES (%s, %s, %s, %s, %s)" if "postgresql" in self.url else
                    "INSERT INTO audit_heads (seq, head, key, signature, signed_at) "
                    "VALUES (?, ?, ?, ?, ?)", row,
                )  # fmt: skip
            seq, head = (events[-1][0], events[-1][5]) if events else (0, GENESIS)
            conn.exec_driver_sql(f"UPDATE audit_chain SET seq = {seq}, head = '{head}'")

    def restore(self) -> None:
        self.write(self.events, self.heads)

    def rechained(self, items: list[tuple[str, str, str]], keep_below: int) -> None:
        """The attacker's rewrite: ``(kind, ts, payload)`` items renumbered from 1 with every
        hash recomputed, keeping only the signed heads below seq ``keep_below``."""
        rows, prev = [], GENESIS
        for seq, (kind, ts, payload) in enumerate(items, start=1):
            digest = event_hash(self.chain, seq, kind, ts, payload, prev)
            rows.append((seq, kind, ts, payload, prev, digest))
            prev = digest
        self.write(rows, [h for h in self.heads if h[0] < keep_below])


@pytest.fixture
def region(db_url: str, tmp_path, monkeypatch) -> Region:
    return Region(db_url, tmp_path / "home", monkeypatch)


def _items(region: Region) -> list[tuple[str, str, str]]:
    return [(kind, ts, payload) for _, kind, ts, payload, _, _ in region.events]


def test_an_honest_finished_run_verifies_with_every_anchor(region: Region, tmp_path) -> None:
    report = region.verify(anchors=read_witness(region.witness))
    assert report.ok and report.status == "ok", report.problems
    assert report.unsigned_tail == 0 and report.anchors_checked == len(region.heads)
    assert [h.seq for h in region.store.audit.heads()] == [a.head.seq for a in
                                                          read_witness(region.witness)]  # fmt: skip
    assert len(check_models(report, region.home / "blobs").models) == ROUNDS
    assert report.ok and report.models_checked == ROUNDS
    checkpoint = tmp_path / "cp.json"
    db = ("--db", region.url, "--home", str(region.home), "--region", "eu")
    saved = _cli("verify", *db, "--witness-dir", str(region.witness), "--save-checkpoint",
                 str(checkpoint), "--strict")  # fmt: skip
    assert saved.exit_code == 0 and "OK" in saved.output, saved.output
    assert load_checkpoint(checkpoint).head.seq == region.events[-1][0]
    assert _cli("verify", *db, "--since", str(checkpoint)).exit_code == 0


def test_a_run_in_progress_is_reported_as_such(db_url: str, tmp_path, monkeypatch) -> None:
    region = Region(db_url, tmp_path / "home", monkeypatch)
    record_run(region.store, region.blobs, run="8", end=False)
    region.store.open_round("8", ROUNDS + 1, nonce="00" * 16)  # the round now running
    report = region.verify()
    assert report.ok and report.status == "in-progress" and report.in_progress == ["8"]
    assert report.unsigned_tail == 2  # round 3's evaluation, round 4 opened
    db = ("--db", region.url, "--home", str(region.home), "--region", "eu")
    result = _cli("verify", *db)
    assert result.exit_code == 0 and "IN PROGRESS" in result.output and "OK" not in result.output
    assert _cli("verify", *db, "--strict").exit_code == 2


@SETTINGS
@given(data=st.data())
def test_edit_delete_or_reorder_then_rechain_and_drop_heads(region: Region, data) -> None:
    region.restore()
    items = _items(region)
    how = data.draw(st.sampled_from(["edit", "delete", "swap"]))
    i = data.draw(st.integers(0, len(items) - 1))
    if how == "edit":
        kind, ts, payload = items[i]
        items[i] = (kind, ts, payload.replace("}", ',"forged":1}', 1))
    elif how == "delete":
        del items[i]
    else:
        j = data.draw(st.integers(0, len(items) - 1).filter(lambda j: items[j] != items[i]))
        items[i], items[j] = items[j], items[i]
        i = min(i, j)
    region.rechained(items, keep_below=i + 1)  # every head from the change on is deleted
    report = region.verify()
    kept = max((h[0] for h in region.heads if h[0] <= i), default=0)
    assert report.status != "ok", (how, i)  # failed, or at best "not yet final"
    if not report.ok:
        assert report.first.seq is not None and report.first.seq > kept, report.problems
    anchored = region.verify(anchors=read_witness(region.witness))
    assert not anchored.ok  # the witnessed heads it dropped are named
    assert any("witnessed head" in str(p) for p in anchored.problems)


def test_rewrite_of_the_whole_history_without_heads(region: Region) -> None:
    items = [(k, ts, p.replace('"alice"', '"mallory"')) for k, ts, p in _items(region)]
    region.rechained(items, keep_below=1)
    report = region.verify()
    assert not report.ok and str(report.first).startswith("event 1: not under any signed head")
    result = _cli("verify", "--db", region.url, "--home", str(region.home), "--region", "eu")
    assert result.exit_code == 2 and "first: event 1:" in result.output


@pytest.mark.parametrize("kind", ["update.accepted", "round.closed", "run.launched"])
def test_forged_append_with_the_chain_row_updated(region: Region, kind: str) -> None:
    seq, prev = region.events[-1][0] + 1, region.events[-1][5]
    ts, payload = region.events[-1][2], json.dumps({"run": "7", "round": 1, "node": "66"})
    forged = (seq, kind, ts, payload, prev, event_hash(region.chain, seq, kind, ts, payload, prev))
    region.write([*region.events, forged], region.heads)
    report = region.verify()
    assert not report.ok and report.first.seq == seq, report.problems


@SETTINGS
@given(data=st.data())
def test_rollback_is_caught_by_the_anchors(region: Region, tmp_path_factory, data) -> None:
    region.restore()
    checkpoint = tmp_path_factory.mktemp("cp") / "checkpoint.json"
    assert _cli("verify", "--db", region.url, "--home", str(region.home), "--region", "eu",
                "--save-checkpoint", str(checkpoint)).exit_code == 0  # fmt: skip
    cut = data.draw(st.integers(1, len(region.events) - 1))  # events kept
    region.write(region.events[:cut], [h for h in region.heads if h[0] <= cut])
    for anchors in (read_witness(region.witness), [load_checkpoint(checkpoint)]):
        report = region.verify(anchors=anchors)
        assert not report.ok and report.first.seq <= cut + 1, report.problems
        assert "rolled back" in " ".join(map(str, report.problems))
    result = _cli(
        "verify", "--db", region.url, "--home", str(region.home), "--region", "eu", "--strict"
    )
    assert result.exit_code == 2, result.output  # without an anchor: at best not final


@pytest.mark.parametrize("damage", ["delete", "corrupt"])
def test_a_named_model_blob_missing_or_altered(region: Region, damage: str) -> None:
    closed = [e for e in region.events if e[1] == "round.closed"][1]
    path = region.blobs.path(json.loads(closed[3])["model"])
    if damage == "delete":
        path.unlink()
    else:
        path.chmod(0o644)
        path.write_bytes(b"other weights")
    report = check_models(region.verify(), region.home / "blobs")
    assert not report.ok and report.first.seq == closed[0], report.problems
    assert ("no blob" if damage == "delete" else "corrupt") in str(report.first)
    result = _cli("verify", "--db", region.url, "--home", str(region.home), "--region", "eu")
    assert result.exit_code == 2 and f"first: event {closed[0]}:" in result.output
    assert (
        _cli(
            "verify", "--db", region.url, "--home", str(region.home), "--region", "eu", "--no-blobs"
        ).exit_code
        == 0
    )
