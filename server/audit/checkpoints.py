"""The audit log's Merkle tree and signed checkpoints, kept in its own database.

Leaves: event ``seq`` is leaf ``seq - 1``, its data the event's canonical bytes
(``chain.event_bytes``), the same bytes whose SHA-256 the hash chain stores; so the tree and the
chain bind the same content (``fedgate.tlog_proofs``). Every perfect subtree of 16 leaves or
more is stored once (``audit_tree``: level, index, hash), written when a checkpoint first covers
it; smaller ones are rehashed from their block of at most 16 events. A checkpoint hashes only
the events since the previous one plus ``O(log n)`` frontier hashes, and a proof reads
``O(log n)`` stored hashes and at most two blocks of events, never the whole log.

``AuditLog.sign_in`` calls ``checkpoint_in`` whenever it signs the chain head (every round, every
run's end, every device, actor and artifact event), in the same transaction under the chain's
write lock: the checkpoint ``audit_checkpoints`` row (a C2SP signed note, origin
``fedgate/audit/<chain id>``) commits with its head or not at all. The tree is a cache an
attacker can edit like any table: proofs are checked against the signed checkpoints, and
``audit verify`` recomputes the tree from the events and compares every stored checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, func, insert, select

from fedgate.checkpoint import Checkpoint, CheckpointError, parse_note, sign_checkpoint
from fedgate.crypto import fingerprint
from fedgate.errors import UsageError, VerificationError
from fedgate.merkle import (
    CompactRange,
    MerkleError,
    Node,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root,
    subtrees,
    verify_consistency,
    verify_inclusion,
)
from fedgate.server.audit.chain import event_bytes, now_ts
from fedgate.server.db.models import AuditCheckpoint, AuditTreeNode, Event
from fedgate.tlog_proofs import ConsistencyProof, InclusionProof, audit_origin

TREE = AuditTreeNode.__table__
CHECKPOINTS = AuditCheckpoint.__table__
EVENTS = Event.__table__
log = logging.getLogger(__name__)


class ProofUnavailableError(UsageError, LookupError):
    """No checkpoint covers what a proof was asked for."""


class TreeMismatchError(VerificationError):
    """The stored tree or events do not produce what a signed checkpoint commits to."""


@dataclass(frozen=True)
class StoredCheckpoint:
    """One ``audit_checkpoints`` row."""

    size: int
    root: str  # hex
    key: str  # signer's key fingerprint
    note: str
    signed_at: str


def _checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(row.size, row.root, row.key, row.note, row.signed_at)


STORED_LEVEL = 4
"""Subtrees of ``2**STORED_LEVEL`` (16) leaves and more are stored; smaller ones are rehashed
from the at most 16 events of their block when a proof or checkpoint needs them. So the table
holds about one row per 8 events, and a checkpoint writes a round's few big subtrees only."""
BLOCK = 1 << STORED_LEVEL
FLUSH_NODES = 100_000  # subtrees held in memory while extending, at most (then written)
_EVENT_COLUMNS = "seq, kind, ts, payload, prev"


class StoredNodes:
    """Perfect subtrees of the audit log's tree (a ``merkle.NodeSource``): the stored ones from
    ``audit_tree``, the small ones rehashed from their block of events."""

    def __init__(self, conn: Connection, chain_id: str) -> None:
        self.conn, self.chain = conn, chain_id

    def nodes(self, keys: Iterable[Node]) -> Mapping[Node, bytes]:
        wanted = set(keys)
        low = {k for k in wanted if k[0] < STORED_LEVEL}
        found = self._stored(wanted - low)
        blocks = {idx >> (STORED_LEVEL - level) for level, idx in low}
        for block in sorted(blocks):
            found.update(self._block(block))
        missing = [k for k in low if k not in found]
        if missing:
            first = (missing[0][1] << missing[0][0]) + 1
            raise TreeMismatchError(
                f"events from seq {first} are missing from the log: a proof cannot be built"
            )
        return {k: found[k] for k in wanted}

    def _stored(self, keys: set[Node]) -> dict[Node, bytes]:
        by_level: dict[int, list[int]] = {}
        for level, idx in keys:
            by_level.setdefault(level, []).append(idx)
        if not by_level:
            return {}
        # Plain SQL with the integers inlined (int() only): building this as an SQLAlchemy
        # expression cost more than the query itself.
        where = " OR ".join(
            f"(level = {int(lv)} AND idx IN ({', '.join(str(int(i)) for i in ix)}))"
            for lv, ix in by_level.items()
        )
        rows = self.conn.exec_driver_sql(f"SELECT level, idx, hash FROM audit_tree WHERE {where}")
        found = {(int(lv), int(ix)): bytes(h) for lv, ix, h in rows}
        if len(found) != len(keys):
            raise TreeMismatchError(
                f"the stored Merkle tree lacks {len(keys) - len(found)} node(s) a proof needs "
                "(deleted?)"
            )
        return found

    def _block(self, block: int) -> dict[Node, bytes]:
        """Every perfect subtree of the contiguous events of ``block`` (up to 16 leaves)."""
        first = block * BLOCK + 1
        rows = self.conn.exec_driver_sql(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq >= {int(first)} "
            f"AND seq < {int(first + BLOCK)} ORDER BY seq"
        )
        tree = CompactRange()
        completed: dict[Node, bytes] = {}
        for seq, kind, ts, payload, prev in rows:
            if seq != first + tree.size:
                break
            tree.append(leaf_hash(event_bytes(self.chain, seq, kind, ts, payload, prev)), completed)
        return {(lv, (block << (STORED_LEVEL - lv)) + ix): h for (lv, ix), h in completed.items()}


def tree_size(conn: Connection) -> int:
    """How many leaves the stored tree covers: the largest checkpoint's size."""
    return int(conn.execute(select(func.max(CHECKPOINTS.c.size))).scalar() or 0)


def leaf_of(conn: Connection, chain_id: str, seq: int) -> bytes | None:
    """Event ``seq``'s canonical bytes (its leaf data), or None."""
    row = conn.execute(select(EVENTS).where(EVENTS.c.seq == seq)).first()
    if row is None:
        return None
    return event_bytes(chain_id, row.seq, row.kind, row.ts, row.payload, row.prev)


def extend_tree(conn: Connection, chain_id: str, size: int) -> bytes | None:
    """Grow the stored tree to ``size`` leaves from the events; its root, or None when the
    events are not contiguous up to ``size`` (tampered: no checkpoint is signed then)."""
    roots = extend_tree_to(conn, chain_id, [size])
    return None if roots is None else roots[size]


def extend_tree_to(
    conn: Connection, chain_id: str, sizes: Iterable[int]
) -> dict[int, bytes] | None:
    """Grow the stored tree to the largest of ``sizes`` in one pass; the root at each size,
    or None when the events are not contiguous (or the tree is past the smallest size)."""
    wanted = set(sizes)
    size = max(wanted)
    have = tree_size(conn)
    if have > min(wanted):
        return None
    keys = subtrees(0, have)
    found = StoredNodes(conn, chain_id).nodes(keys)
    tree = CompactRange(have, [found[k] for k in keys])
    roots = {have: tree.root()} if have in wanted else {}
    completed: dict[Node, bytes] = {}
    rows = conn.exec_driver_sql(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq > {int(have)} AND seq <= {int(size)} "
        "ORDER BY seq"
    )
    for seq, kind, ts, payload, prev in rows:
        if seq != tree.size + 1:
            return None
        tree.append(leaf_hash(event_bytes(chain_id, seq, kind, ts, payload, prev)), completed)
        if tree.size in wanted:
            roots[tree.size] = tree.root()
        if len(completed) >= FLUSH_NODES:  # a first checkpoint of a long legacy log
            _store(conn, completed)
    if tree.size != size:
        return None
    _store(conn, completed)
    return roots


def _store(conn: Connection, completed: dict[Node, bytes]) -> None:
    """Write the big subtrees among ``completed`` and forget them all."""
    big = {k: h for k, h in completed.items() if k[0] >= STORED_LEVEL}
    completed.clear()
    if big:  # a tree whose checkpoints were deleted keeps its nodes: write only the new ones
        present = set(_present(conn, big))
        rows_out = [{"level": lv, "idx": ix, "hash": h} for (lv, ix), h in big.items()
                    if (lv, ix) not in present]  # fmt: skip
        if rows_out:
            conn.execute(insert(TREE), rows_out)


def _present(conn: Connection, keys: Iterable[Node]) -> Iterable[Node]:
    """Which of ``keys`` the table holds already (normally none)."""
    first: dict[int, int] = {}
    for level, idx in keys:
        first[level] = min(idx, first.get(level, idx))
    where = " OR ".join(f"(level = {int(lv)} AND idx >= {int(ix)})" for lv, ix in first.items())
    rows = conn.exec_driver_sql(f"SELECT level, idx FROM audit_tree WHERE {where}")
    return ((int(lv), int(ix)) for lv, ix in rows)


def checkpoint_in(
    conn: Connection, signer: Ed25519PrivateKey, chain_id: str, size: int
) -> StoredCheckpoint | None:
    """Sign (once per size and key) the checkpoint of the first ``size`` events, inside the
    caller's write transaction; None when the events cannot be checkpointed (logged)."""
    key = fingerprint(signer)
    row = conn.execute(
        select(CHECKPOINTS).where(CHECKPOINTS.c.size == size, CHECKPOINTS.c.key == key)
    ).first()
    if row is not None:
        return _checkpoint(row)
    made = _sign_new(conn, signer, chain_id, [size])
    return made[0] if made else None


def checkpoints_in(
    conn: Connection, signer: Ed25519PrivateKey, chain_id: str, sizes: Iterable[int]
) -> list[StoredCheckpoint]:
    """``checkpoint_in`` at each of ``sizes`` (new ones, ascending) in one pass over the tree
    and one insert: a head signed at every event of a batch gets its checkpoint each."""
    key = fingerprint(signer)
    wanted = sorted(set(sizes))
    if not wanted:
        return []
    present = conn.execute(
        select(CHECKPOINTS.c.size).where(CHECKPOINTS.c.size.in_(wanted), CHECKPOINTS.c.key == key)
    )
    todo = sorted(set(wanted) - set(present.scalars()))
    return _sign_new(conn, signer, chain_id, todo) if todo else []


def _sign_new(
    conn: Connection, signer: Ed25519PrivateKey, chain_id: str, sizes: list[int]
) -> list[StoredCheckpoint]:
    """Sign and store the checkpoints at ``sizes`` (none stored yet, ascending): one pass
    over the tree, one insert; [] (logged) when the events cannot be checkpointed."""
    try:
        roots = extend_tree_to(conn, chain_id, sizes)
    except TreeMismatchError as exc:
        roots, reason = None, str(exc)
    else:
        reason = "the events are not contiguous"
    if roots is None:
        log.error("audit checkpoint at sizes %s..%s not signed: %s", sizes[0], sizes[-1], reason)
        return []
    key, origin = fingerprint(signer), audit_origin(chain_id)
    records = [
        StoredCheckpoint(n, roots[n].hex(), key,
                         sign_checkpoint(Checkpoint(origin, n, roots[n]), signer), now_ts())
        for n in sizes
    ]  # fmt: skip
    conn.execute(insert(CHECKPOINTS), [r.__dict__ for r in records])
    return records


# -- reading ---------------------------------------------------------------------------------


def stored_checkpoints(conn: Connection) -> list[StoredCheckpoint]:
    rows = conn.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.size, CHECKPOINTS.c.id))
    return [_checkpoint(r) for r in rows]


def latest_checkpoint(conn: Connection) -> StoredCheckpoint:
    row = conn.execute(
        select(CHECKPOINTS).order_by(CHECKPOINTS.c.size.desc(), CHECKPOINTS.c.id.desc()).limit(1)
    ).first()
    if row is None:
        raise ProofUnavailableError(
            "this log has no checkpoint yet (one is signed with every round and run end)"
        )
    return _checkpoint(row)


def checkpoint_at(conn: Connection, size: int) -> StoredCheckpoint:
    row = conn.execute(
        select(CHECKPOINTS).where(CHECKPOINTS.c.size == size).order_by(CHECKPOINTS.c.id).limit(1)
    ).first()
    if row is None:
        sizes = [c.size for c in stored_checkpoints(conn)]
        near = ", ".join(map(str, sizes[-8:])) or "none"
        raise ProofUnavailableError(f"no checkpoint at size {size} (latest sizes: {near})")
    return _checkpoint(row)


def _note(checkpoint: StoredCheckpoint | bytes, chain_id: str, what: str) -> tuple[Checkpoint, str]:
    """The checkpoint in a stored row or a note file (parsed; its signature is the outsider's
    to check with ``audit check-proof``), which must be this log's."""
    note = checkpoint.note if isinstance(checkpoint, StoredCheckpoint) else checkpoint
    try:
        text = note if isinstance(note, str) else note.decode("utf-8")
        parsed = Checkpoint.parse(parse_note(text).text)
    except (CheckpointError, UnicodeDecodeError) as exc:
        raise UsageError(f"{what} is not a signed checkpoint note: {exc}") from None
    if parsed.origin != audit_origin(chain_id):
        raise UsageError(
            f"{what} is a checkpoint of log {parsed.origin}, not of this one "
            f"({audit_origin(chain_id)})"
        )
    return parsed, text


def prove_inclusion(
    conn: Connection, chain_id: str, seq: int, against: StoredCheckpoint | None = None
) -> InclusionProof:
    """Event ``seq``'s inclusion proof against ``against`` (default: the latest checkpoint),
    checked before it is returned: a changed event or tree raises ``TreeMismatchError``."""
    checkpoint, note = _note(against or latest_checkpoint(conn), chain_id, "the checkpoint")
    if seq < 1 or seq > checkpoint.size:
        raise ProofUnavailableError(
            f"event {seq} is not under the latest checkpoint (it covers events 1-"
            f"{checkpoint.size}; the next round's checkpoint covers newer ones)"
        )
    leaf = leaf_of(conn, chain_id, seq)
    if leaf is None:
        raise TreeMismatchError(f"event {seq} is missing from the log (deleted)")
    path = inclusion_proof(seq - 1, checkpoint.size, StoredNodes(conn, chain_id))
    try:
        verify_inclusion(leaf_hash(leaf), seq - 1, checkpoint.size, path, checkpoint.root)
    except MerkleError:
        raise TreeMismatchError(
            f"event {seq} as stored is not the event the checkpoint at size {checkpoint.size} "
            "signed: it (or the stored tree) was changed after it was checkpointed"
        ) from None
    return InclusionProof(note, seq - 1, leaf.decode("utf-8"), tuple(path))


def prove_consistency(
    conn: Connection,
    chain_id: str,
    old: StoredCheckpoint | bytes,
    new: StoredCheckpoint | bytes,
) -> ConsistencyProof:
    """The consistency proof from checkpoint ``old`` to ``new`` (stored rows or note files),
    checked before it is returned: a log whose history up to ``old`` is not the one ``old``
    signed raises ``TreeMismatchError`` naming it."""
    older, old_note = _note(old, chain_id, "the old checkpoint")
    newer, new_note = _note(new, chain_id, "the new checkpoint")
    if older.size > newer.size:
        raise TreeMismatchError(
            f"the old checkpoint (size {older.size}) is ahead of the new one (size "
            f"{newer.size}): the log was rolled back, or the two are swapped"
        )
    have = tree_size(conn)
    if newer.size > have:
        raise TreeMismatchError(
            f"the new checkpoint covers {newer.size} events, this log's tree only {have} "
            "(rolled back?)"
        )
    nodes = StoredNodes(conn, chain_id)
    if root(older.size, nodes) != older.root:
        raise TreeMismatchError(
            f"the log does not extend the old checkpoint: its first {older.size} events are not "
            f"the ones signed then (root {older.root.hex()[:16]}...): history was rewritten"
        )
    if root(newer.size, nodes) != newer.root:
        raise TreeMismatchError(
            f"the new checkpoint (size {newer.size}) is not this log's tree at that size"
        )
    path = consistency_proof(older.size, newer.size, nodes)
    verify_consistency(older.size, newer.size, older.root, newer.root, path)  # both roots match
    return ConsistencyProof(old_note, new_note, tuple(path))
