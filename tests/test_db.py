"""Storage: URLs, migrations, read-only opening, the repository API (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, OperationalError

from fedgate.crypto import fingerprint, generate_key, public_bytes
from fedgate.server.audit import AuditLog, verify_database
from fedgate.server.audit.store import Store, StoreError
from fedgate.server.db import DatabaseError, default_url, open_database, open_readonly, resolve_url
from fedgate.server.db.engine import parse_url
from fedgate.server.db.migrate import current_revision, head_revision
from fedgate.server.db.models import AuditChain, Base, Event


@dataclass
class Fate:
    node_id: int
    accepted: bool
    reason: str = ""
    detail: str = ""
    device_id: str = ""
    num_examples: int = 0
    fate: str = ""
    score: float | None = None
    weight: float = 0.0


@dataclass
class Record:
    round: int
    sampled: int
    clients: list[Fate] = field(default_factory=list)
    aggregated: bool = False
    note: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def test_default_and_resolved_urls(tmp_path, monkeypatch) -> None:
    assert default_url(tmp_path, "eu") == f"sqlite:///{tmp_path.resolve()}/region-eu.db"
    monkeypatch.delenv("FEDGATE_DB", raising=False)
    assert resolve_url(None, tmp_path, "eu") == default_url(tmp_path, "eu")
    monkeypatch.setenv("FEDGATE_DB", "postgresql+psycopg://x@h/db")
    assert resolve_url(None, tmp_path, "eu") == "postgresql+psycopg://x@h/db"
    assert resolve_url("sqlite:///a.db", tmp_path, "eu") == "sqlite:///a.db"
    monkeypatch.delenv("FEDGATE_DB")
    with pytest.raises(DatabaseError, match="no database"):
        resolve_url(None, None, None)


def test_url_parsing_errors() -> None:
    assert parse_url("postgresql://u@h/d").drivername == "postgresql+psycopg"
    assert parse_url("postgres://u@h/d").drivername == "postgresql+psycopg"
    with pytest.raises(DatabaseError, match="bad database URL"):
        parse_url("::nope")
    with pytest.raises(DatabaseError, match="unsupported database"):
        parse_url("mysql://u@h/d")


def test_migrations_create_the_model_schema(db_url: str) -> None:
    engine = open_database(db_url)
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diffs == []
        chain = conn.execute(select(AuditChain)).one()
    assert chain.seq == 0 and len(chain.chain_id) == 32
    again = open_database(db_url)  # idempotent; the chain keeps its identity
    with again.connect() as conn:
        assert conn.execute(select(AuditChain.chain_id)).scalar_one() == chain.chain_id


def test_concurrent_first_open_migrates_once(db_url: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            open_database(db_url).dispose()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open_database(db_url).connect() as conn:
        assert conn.execute(select(func.count()).select_from(AuditChain)).scalar_one() == 1


def test_readonly_refuses_writes(db_url: str) -> None:
    AuditLog(open_database(db_url)).append("test.event", {"n": 1})
    ro = open_readonly(db_url)
    with pytest.raises((OperationalError, DBAPIError)), ro.begin() as conn:
        conn.execute(text("DELETE FROM events"))
    with ro.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Event)).scalar_one() == 1


def test_readonly_errors_are_clear(tmp_path) -> None:
    with pytest.raises(DatabaseError, match="no database at"):
        open_readonly(f"sqlite:///{tmp_path / 'missing.db'}")
    other = tmp_path / "other.db"
    import sqlite3

    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(DatabaseError, match="not a fedgate database"):
        open_readonly(f"sqlite:///{other}")
    with pytest.raises(DatabaseError, match="cannot open database"):
        open_readonly("postgresql+psycopg://nobody@127.0.0.1:1/none")


def test_store_round_trip(db_url: str) -> None:
    key = generate_key()
    store = Store.open(db_url, signer=key)
    run = store.record_run(42, "eu", "alice", {"rounds": 2, "aggregator": "trimmed"})
    store.open_round(run, 1, nonce="ab" * 16)
    record = Record(
        round=1,
        sampled=3,
        clients=[
            Fate(
                2**64 - 1,
                True,
                device_id="d1",
                num_examples=100,
                fate="kept",
                score=0.5,
                weight=0.5,
            ),
            Fate(7, True, device_id="d2", num_examples=50, fate="trimmed", score=3.0),
            Fate(9, False, reason="bad-signature", detail="signature does not verify"),
        ],
        aggregated=True,
        note="ok",
        metrics={"val-acc": 0.75, "val-loss": float("nan")},
    )
    store.record_round(run, record)
    store.record_round(
        run,
        {
            "round": 2,
            "sampled": 1,
            "clients": [{"node_id": 3, "accepted": False, "reason": "stale-round"}],
            "aggregated": False,
        },
    )
    store.record_metrics(run, None, {"final-acc": 0.8})
    store.finish_run(run)

    [info] = store.runs()
    assert (info.id, info.status, info.rounds, info.launched_by) == ("42", "finished", 2, "alice")
    assert info.config == {"rounds": 2, "aggregator": "trimmed"}
    r1, r2 = store.rounds(run)
    assert (r1.sampled, r1.accepted, r1.rejected, r1.aggregated) == (3, 2, 1, True)
    assert r1.metrics == {"val-acc": 0.75}
    assert (r2.accepted, r2.rejected, r2.aggregated) == (0, 1, False)
    got, updates = store.round_detail(run, 1)
    assert got == r1
    assert [u.node_id for u in updates] == [str(2**64 - 1), "7", "9"]
    assert [u.verdict for u in updates] == ["accepted", "accepted", "rejected"]
    assert updates[1].fate == "trimmed" and updates[1].score == 3.0
    assert updates[2].reason == "bad-signature"
    with pytest.raises(StoreError):
        store.rounds("nope")
    with pytest.raises(StoreError):
        store.round_detail(run, 9)

    kinds = [e.kind for e in store.audit.events()]
    assert kinds[:2] == ["run.launched", "round.opened"]
    assert kinds.count("update.accepted") == 2 and kinds.count("update.rejected") == 2
    assert kinds.count("aggregator.decision") == 2 and kinds[-1] == "run.finished"
    closed = next(e for e in store.audit.events(kind="round.closed"))
    assert closed.data["metrics"] == {"val-acc": 0.75, "val-loss": None}
    report = verify_database(open_readonly(db_url), {fingerprint(key): key.public_key()})
    assert report.ok, report.problems
    assert report.signed_heads >= 3 and report.unsigned_tail == 0


def test_store_artifacts_and_approvals(db_url: str) -> None:
    store = Store.open(db_url)
    store.record_run("r1", "eu", "bob", {})
    sha = "ab" * 32
    store.record_artifact(sha, "/blobs/ab/x", "regional-model", {"round": 3}, run_id="r1")
    store.record_approval(sha, "cd" * 32, False, {"accuracy": "below floor"})
    assert store.artifact(sha)["manifest"] == {"round": 3}
    kinds = [e.kind for e in store.audit.events()]
    assert kinds[-2:] == ["artifact.produced", "approval.refused"]
    with pytest.raises(DBAPIError):  # foreign key: approvals name a stored artifact
        store.record_approval("ef" * 32, "cd" * 32, True, {})
    assert [e.kind for e in store.audit.events()] == kinds  # nothing half-written


def test_device_registry_migration_keeps_devices(db_url: str) -> None:
    """0001 -> 0002: devices gain profile and revoked_at (set for revoked ones); and back."""
    from alembic import command

    from fedgate.server.db.engine import make_engine, write_txn
    from fedgate.server.db.migrate import alembic_config, upgrade
    from fedgate.server.trust.enrollment import DatabaseDeviceRegistry

    engine = make_engine(db_url)
    upgrade(engine, "0001")
    live, lost = generate_key(), generate_key()
    with write_txn(engine) as conn:
        for key, status in ((live, "active"), (lost, "revoked")):
            conn.execute(
                text(
                    "INSERT INTO devices (device_id, public_key, region, status, enrolled_at)"
                    " VALUES (:d, :p, 'eu', :s, :t)"
                ),
                {
                    "d": fingerprint(key),
                    "p": public_bytes(key).hex(),
                    "s": status,
                    "t": "2025-01-01",
                },
            )
    upgrade(engine)
    assert current_revision(engine) == head_revision()
    registry = DatabaseDeviceRegistry(Store(engine), "eu")
    kept, revoked = registry.get(fingerprint(live)), registry.get(fingerprint(lost))
    assert (kept.public_key, kept.profile, kept.revoked) == (public_bytes(live), "", False)
    assert revoked.revoked and revoked.revoked_at >= revoked.enrolled_at
    cfg = alembic_config()
    with write_txn(engine) as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    assert current_revision(engine) == "0001"
    with engine.connect() as conn:
        columns = conn.execute(select(text("*")).select_from(text("devices"))).keys()
    assert "profile" not in columns and "revoked_at" not in columns
    upgrade(engine)
    assert registry.get(fingerprint(live)) == kept
    engine.dispose()
