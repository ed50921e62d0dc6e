"""Append-only, hash-chained audit log with signed heads, stored in the region database.

Appends are serialised by the database itself: SQLite writers start with
``BEGIN IMMEDIATE`` (see ``fedgate.server.db.engine``), PostgreSQL writers lock the single
``audit_chain`` row with ``SELECT ... FOR UPDATE``. Either way two writers, in threads or
in processes, never read the same head, so the chain never forks and seqs stay contiguous.
Every signed head comes with a signed checkpoint of the events' Merkle tree at the same seq
(``checkpoints.py``), in the same transaction. With a witness directory
(``FEDGATE_AUDIT_WITNESS_DIR``) every signed head is also appended there once its transaction
commits (``witness.py``), as an anchor outside the database.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, insert, select, update

from fedgate.crypto import fingerprint, sign
from fedgate.server.audit.anchors import WITNESS_ENV
from fedgate.server.audit.chain import (
    KIND_RE,
    EventRecord,
    HeadRecord,
    canonical_payload,
    event_hash,
    head_message,
    now_ts,
)
from fedgate.server.audit.checkpoints import checkpoint_in, checkpoints_in
from fedgate.server.audit.witness import queue as witness_queue
from fedgate.server.db.engine import run_write
from fedgate.server.db.models import AuditChain, Event, SignedHead

CHAIN = AuditChain.__table__
EVENTS = Event.__table__
HEADS = SignedHead.__table__
Item = tuple[str, Mapping[str, Any]]


def _prepare(items: Iterable[Item]) -> list[tuple[str, str]]:
    out = []
    for kind, payload in items:
        if not KIND_RE.match(kind):
            raise ValueError(f"bad audit event kind {kind!r} (lowercase, dotted, <= 64 chars)")
        out.append((kind, canonical_payload(payload)))
    return out


class AuditLog:
    """Audit chain of one database; ``signer`` (the region server key) signs heads, and
    each head it signs is mirrored into ``witness_dir`` (default: ``$FEDGATE_AUDIT_WITNESS_DIR``;
    none when unset)."""

    def __init__(
        self,
        engine: Engine,
        signer: Ed25519PrivateKey | None = None,
        witness_dir: str | Path | None = None,
    ) -> None:
        self.engine = engine
        self.signer = signer
        witness_dir = witness_dir or os.environ.get(WITNESS_ENV) or None
        self.witness_dir = Path(witness_dir).resolve() if witness_dir else None
        self._chain_id: str | None = None

    @property
    def chain_id(self) -> str:
        if self._chain_id is None:
            with self.engine.connect() as conn:
                self._chain_id = conn.execute(select(CHAIN.c.chain_id)).scalar_one()
        return self._chain_id

    def append(self, kind: str, payload: Mapping[str, Any]) -> EventRecord:
        return self.append_many([(kind, payload)])[0]

    def append_many(self, items: Iterable[Item], *, sign: bool = False) -> list[EventRecord]:
        """Append ``(kind, payload)`` pairs in one transaction; ``sign`` also signs the head."""
        prepared = _prepare(items)

        def write(conn: Connection) -> list[EventRecord]:
            records = self._append_prepared(conn, prepared)
            if sign:
                self.sign_in(conn)
            return records

        return run_write(self.engine, write, f"appending {len(prepared)} audit event(s)")

    def append_in(self, conn: Connection, items: Iterable[Item]) -> list[EventRecord]:
        """Append inside the caller's write transaction (see ``write_txn``)."""
        return self._append_prepared(conn, _prepare(items))

    def _lock_head(self, conn: Connection) -> tuple[str, int, str]:
        row = conn.execute(
            select(CHAIN.c.chain_id, CHAIN.c.seq, CHAIN.c.head)
            .where(CHAIN.c.id == 1)
            .with_for_update()
        ).one()
        self._chain_id = row.chain_id
        return row.chain_id, row.seq, row.head

    def _append_prepared(
        self, conn: Connection, prepared: list[tuple[str, str]]
    ) -> list[EventRecord]:
        if not prepared:
            return []
        chain, seq, head = self._lock_head(conn)
        ts = now_ts()
        records = []
        for kind, payload in prepared:
            seq += 1
            digest = event_hash(chain, seq, kind, ts, payload, head)
            records.append(EventRecord(seq, kind, ts, payload, head, digest))
            head = digest
        conn.execute(
            insert(EVENTS),
            [
                {
                    "seq": r.seq,
                    "kind": r.kind,
                    "ts": r.ts,
                    "payload": r.payload,
                    "prev": r.prev,
                    "hash": r.hash,
                }
                for r in records
            ],
        )
        conn.execute(update(CHAIN).where(CHAIN.c.id == 1).values(seq=seq, head=head))
        return records

    def append_signed_in(self, conn: Connection, items: Iterable[Item]) -> list[EventRecord]:
        """Append inside the caller's write transaction and sign the head at every appended
        event, each with its checkpoint: what ``append_in`` and ``sign_in`` per event do, in
        one pass over the tree and two inserts (group commit of device events)."""
        if self.signer is None:
            raise RuntimeError("this AuditLog has no signing key")
        records = self._append_prepared(conn, _prepare(items))
        if not records:
            return records
        chain = self.chain_id  # read under the lock by _append_prepared
        checkpoints_in(conn, self.signer, chain, [r.seq for r in records])
        key, signed_at = fingerprint(self.signer), now_ts()
        heads = [
            HeadRecord(r.seq, r.hash, key,
                       sign(self.signer, head_message(chain, r.seq, r.hash, signed_at)).hex(),
                       signed_at)
            for r in records
        ]  # fmt: skip
        conn.execute(insert(HEADS), [h.__dict__ for h in heads])
        if self.witness_dir is not None:
            for head in heads:
                witness_queue(conn, self.witness_dir, chain, head)
        return records

    def sign_head(self) -> HeadRecord | None:
        """Sign the current head (None while the chain is empty)."""
        return run_write(self.engine, self.sign_in, "signing the audit chain head")

    def sign_in(self, conn: Connection) -> HeadRecord | None:
        if self.signer is None:
            raise RuntimeError("this AuditLog has no signing key")
        chain, seq, head = self._lock_head(conn)
        if seq == 0:
            return None
        key = fingerprint(self.signer)
        checkpoint_in(conn, self.signer, chain, seq)  # the Merkle tree's, beside the head
        existing = conn.execute(select(HEADS).where(HEADS.c.seq == seq, HEADS.c.key == key)).first()
        if existing is not None:
            return _head(existing)
        signed_at = now_ts()
        signature = sign(self.signer, head_message(chain, seq, head, signed_at)).hex()
        record = HeadRecord(seq, head, key, signature, signed_at)
        conn.execute(insert(HEADS).values(**record.__dict__))
        if self.witness_dir is not None:
            witness_queue(conn, self.witness_dir, chain, record)
        return record

    def head(self) -> tuple[int, str]:
        """The last seq and its hash."""
        with self.engine.connect() as conn:
            row = conn.execute(select(CHAIN.c.seq, CHAIN.c.head)).one()
        return row.seq, row.head

    def events(self, start: int = 1, kind: str | None = None) -> Iterator[EventRecord]:
        query = select(EVENTS).where(EVENTS.c.seq >= start).order_by(EVENTS.c.seq)
        if kind is not None:
            query = query.where(EVENTS.c.kind == kind)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                yield EventRecord(row.seq, row.kind, row.ts, row.payload, row.prev, row.hash)

    def heads(self) -> list[HeadRecord]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(HEADS).order_by(HEADS.c.seq, HEADS.c.id)).all()
        return [_head(r) for r in rows]


def _head(row: Any) -> HeadRecord:
    return HeadRecord(row.seq, row.head, row.key, row.signature, row.signed_at)
