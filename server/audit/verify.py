"""Recompute an audit chain and check its signed heads, from a database or an export.

Every problem names its place: the first bad event's seq, or the signed head at fault.
Detected: edited payloads or hashes, deleted, inserted or reordered events, truncation
below a signed head or the chain-head record, and forged or replaced signed heads. When
signatures are checked, events must also lie under signed heads (``coverage.py``: a log
rewritten or extended without the region key fails), and ``anchors`` (the auditor's
checkpoint, the region's witnessed heads; ``anchors.py``) must be included and extended,
which catches a rollback or rewrite that leaves the database self-consistent. Every act (run
launch, revocation, token, actor change) must carry its actor's signed request where the
region's roster requires one (``actors.py``). The stored Merkle checkpoints
(``checkpoints.py``) must be signed by a trusted key, name this chain, and match the tree
recomputed from the events; every signed head from the first checkpoint on has one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Connection, Engine, select

from fedgate.checkpoint import Checkpoint, CheckpointError, open_checkpoint, parse_note
from fedgate.crypto import SignatureError, verify
from fedgate.formats import is_hex64, is_signature_hex
from fedgate.merkle import CompactRange
from fedgate.server.audit.actors import ACTS, ActorCheck
from fedgate.server.audit.anchors import Anchor
from fedgate.server.audit.chain import (
    GENESIS,
    TS_RE,
    HeadRecord,
    event_bytes,
    head_message,
    json_string,
)
from fedgate.server.audit.checkpoints import StoredCheckpoint, stored_checkpoints
from fedgate.server.audit.coverage import Coverage, ModelRef
from fedgate.server.audit.log import CHAIN, HEADS, _head
from fedgate.server.audit.problem import Problem
from fedgate.server.db.blobs import BlobError, BlobStore
from fedgate.tlog_proofs import audit_origin

Keys = Mapping[str, Ed25519PublicKey]
__all__ = ["ChainVerifier", "Keys", "Problem", "VerifyReport", "check_models", "verify_database"]


@dataclass
class VerifyReport:
    chain_id: str
    events: int = 0
    last_seq: int = 0
    head: str = GENESIS
    signed_heads: int = 0
    heads_checked: bool = True
    last_signed_seq: int = 0
    last_head: HeadRecord | None = None  # the latest head that verified and matched
    coverage_checked: bool = False
    anchors_checked: int = 0
    in_progress: list[str] = field(default_factory=list)  # runs launched and not ended
    models: list[ModelRef] = field(default_factory=list)  # model blobs round.closed names
    models_checked: int = 0
    requests_checked: int = 0  # actors' signed requests (``actors.py``)
    checkpoints_checked: int = 0  # Merkle checkpoints matched against the recomputed tree
    last_checkpoint: int = 0  # the largest size among them
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def status(self) -> str:
        """``failed``, ``in-progress`` (a run has not ended: not yet final) or ``ok``."""
        if self.problems:
            return "failed"
        return "in-progress" if self.in_progress else "ok"

    @property
    def first(self) -> Problem | None:
        """The earliest problem by seq (chain-level problems last)."""
        if not self.problems:
            return None
        return min(self.problems, key=lambda p: (p.seq is None, p.seq or 0))

    @property
    def unsigned_tail(self) -> int:
        """Events after the last valid signed head (not yet attested)."""
        return self.last_seq - self.last_signed_seq

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "status": self.status,
            "chain": self.chain_id,
            "events": self.events,
            "last_seq": self.last_seq,
            "head": self.head,
            "signed_heads": self.signed_heads,
            "signatures_checked": self.heads_checked,
            "last_signed_seq": self.last_signed_seq,
            "unsigned_tail": self.unsigned_tail,
            "coverage_checked": self.coverage_checked,
            "anchors_checked": self.anchors_checked,
            "in_progress": list(self.in_progress),
            "models_named": len(self.models),
            "models_checked": self.models_checked,
            "requests_checked": self.requests_checked,
            "checkpoints_checked": self.checkpoints_checked,
            "last_checkpoint": self.last_checkpoint,
            "first_problem": str(self.first) if self.first else None,
            "first_bad_seq": self.first.seq if self.first else None,
            "problems": [str(p) for p in self.problems],
        }


class ChainVerifier:
    """Streaming verifier: give it the heads, feed events in order, then ``finish``.

    ``require_signed`` (default: when signatures are checked) applies ``coverage.py``'s rules;
    every ``anchors`` head must be a valid signed head of the log, at a seq the log reaches."""

    def __init__(
        self,
        chain_id: str,
        heads: Iterable[HeadRecord],
        keys: Keys | None,
        *,
        anchors: Iterable[Anchor] = (),
        require_signed: bool | None = None,
        checkpoints: Iterable[StoredCheckpoint] = (),
    ) -> None:
        self.report = VerifyReport(chain_id, heads_checked=keys is not None)
        self._chain = chain_id
        self._expect = 1
        self._prev = GENESIS
        self._pending: dict[int, list[HeadRecord]] = {}
        self._prefix = f'{{"chain":{json_string(chain_id)},"kind":'
        self._kinds: dict[str, str] = {}
        self._prev_safe = True  # GENESIS is hex
        self._signed: set[int] = set()
        self._acts = ActorCheck()
        valid: set[tuple[int, str]] = set()
        for head in heads:
            if self._check_signature(head, keys):
                self._pending.setdefault(head.seq, []).append(head)
                valid.add((head.seq, head.head))
        self._anchors: dict[int, list[Anchor]] = {}
        for anchor in anchors:
            self._add_anchor(anchor, keys, valid)
        if require_signed is None:
            require_signed = keys is not None
        self.report.coverage_checked = require_signed
        self._coverage = Coverage(max(self._pending, default=0)) if require_signed else None
        self._checkpoints: dict[int, list[tuple[StoredCheckpoint, bytes]]] = {}
        self._checkpointed: set[int] = set()  # sizes with a stored checkpoint, valid or not
        first = None
        for checkpoint in checkpoints:
            first = checkpoint.size if first is None else min(first, checkpoint.size)
            self._checkpointed.add(checkpoint.size)
            root = self._check_checkpoint(checkpoint, keys)
            if root is not None:
                self._checkpoints.setdefault(checkpoint.size, []).append((checkpoint, root))
        self._first_checkpoint = first
        self._tree = CompactRange() if self._checkpoints else None

    def _check_checkpoint(self, stored: StoredCheckpoint, keys: Keys | None) -> bytes | None:
        """The root a stored checkpoint signs, once its note parses, names this chain, agrees
        with its row and (``keys``) carries a valid signature by its key; else a problem."""
        where = f"checkpoint at size {stored.size} (key {stored.key[:16]})"
        origin = audit_origin(self._chain)
        try:
            if keys is None:
                checkpoint = Checkpoint.parse(parse_note(stored.note).text)
            elif (pub := keys.get(stored.key)) is None:
                self._problem(None, f"{where}: signed by an unknown key")
                return None
            else:
                checkpoint = open_checkpoint(stored.note, pub)
        except CheckpointError as exc:
            self._problem(None, f"{where}: {exc}")
            return None
        if checkpoint.origin != origin:
            self._problem(None, f"{where}: of log {checkpoint.origin}, not {origin}")
            return None
        if checkpoint.size != stored.size or checkpoint.root.hex() != stored.root:
            self._problem(None, f"{where}: its row disagrees with its signed note")
            return None
        return checkpoint.root

    def _check_roots(self, size: int, root: bytes) -> None:
        for _stored, signed in self._checkpoints.pop(size):
            if signed != root:
                self._problem(
                    size,
                    f"the events' Merkle tree differs from the checkpoint at size {size} "
                    "(an event up to here was changed after it was checkpointed)",
                )
            else:
                self.report.checkpoints_checked += 1
                self.report.last_checkpoint = max(self.report.last_checkpoint, size)

    def _add_anchor(self, anchor: Anchor, keys: Keys | None, valid: set) -> None:
        head = anchor.head
        self.report.anchors_checked += 1
        if anchor.chain != self._chain:
            self._problem(
                None,
                f"the {anchor.label} is of chain {anchor.chain}, this log is "
                f"chain {self._chain} (a different log, or this one rewritten)",
            )
            return
        if not self._check_signature(head, keys, f"the {anchor.label} at seq {head.seq}"):
            return
        if (head.seq, head.head) not in valid:
            self._problem(
                head.seq,
                f"the {anchor.label} is not among the log's valid signed "
                "heads (rolled back or rewritten)",
            )
        self._anchors.setdefault(head.seq, []).append(anchor)

    def _order_problem(self, seq: int, expect: int) -> None:
        if seq > expect:
            gap = f"{expect}" if seq == expect + 1 else f"{expect}-{seq - 1}"
            self._problem(expect, f"missing (next stored event is {seq}; gap {gap})")
        else:
            self._problem(seq, f"out of order or duplicated (expected {expect})")

    def _problem(self, seq: int | None, message: str) -> None:
        self.report.problems.append(Problem(seq, message))

    def _check_signature(self, head: HeadRecord, keys: Keys | None, where: str = "") -> bool:
        where = where or f"signed head at seq {head.seq} (key {head.key[:16]})"
        if head.seq < 1 or not is_hex64(head.head) or not is_signature_hex(head.signature):
            self._problem(None, f"{where}: malformed")
            return False
        if keys is not None:
            pub = keys.get(head.key)
            if pub is None:
                self._problem(None, f"{where}: signed by an unknown key")
                return False
            try:
                verify(
                    pub,
                    bytes.fromhex(head.signature),
                    head_message(self._chain, head.seq, head.head, head.signed_at),
                )
            except (SignatureError, ValueError):
                self._problem(None, f"{where}: signature does not verify")
                return False
        return True

    def feed(self, seq: int, kind: str, ts: str, payload: str, prev: str, digest: str) -> None:
        """Check one event (the next in seq order)."""
        self.feed_many(((seq, kind, ts, payload, prev, digest),))

    def feed_many(self, rows: Iterable[tuple[int, str, str, str, str, str]]) -> None:
        """Check events in seq order; rows are ``(seq, kind, ts, payload, prev, hash)``."""
        rep, kinds, pending, prefix = self.report, self._kinds, self._pending, self._prefix
        anchors, cov, tree = self._anchors, self._coverage, self._tree
        leaves: list[bytes] = []
        expect, last, count, ts_ok = self._expect, self._prev, 0, TS_RE.match
        # ``last`` is safe to splice unquoted once it matched a recomputed hash (hex only).
        safe = self._prev_safe
        for seq, kind, ts, payload, prev, digest in rows:
            count += 1
            if seq != expect:
                self._order_problem(seq, expect)
            if prev != last:
                self._problem(seq, "prev hash does not match the preceding event (chain broken)")
                safe = False
            kind_json = kinds.get(kind)
            if kind_json is None:
                kind_json = kinds[kind] = json_string(kind)
            ok, raw = False, b""
            if ts_ok(ts) is None:
                self._problem(seq, f"malformed timestamp {ts!r}")
                raw = event_bytes(self._chain, seq, kind, ts, payload, prev)
            else:
                # The bytes of chain.event_bytes, with the per-chain parts precomputed.
                prev_json = f'"{prev}"' if safe else json_string(prev)
                content = (
                    f'{prefix}{kind_json},"payload":{payload},"prev":{prev_json},'
                    f'"seq":{int(seq)},"ts":"{ts}"}}'
                )
                raw = content.encode()
                ok = sha256(raw).hexdigest() == digest
                if not ok:
                    self._problem(seq, "content does not match its hash (edited)")
            if tree is not None:  # leaf: the same bytes, RFC 9162 (``checkpoints.py``)
                leaves.append(sha256(b"\x00" + raw).digest())
            if seq in pending:
                self._check_heads(seq, digest, pending.pop(seq))
            if seq in anchors:
                for anchor in anchors.pop(seq):
                    if anchor.head.head != digest:
                        self._problem(seq, f"differs from the {anchor.label}")
            if cov is not None and cov.wants(seq, kind):
                cov.see(seq, kind, payload)
            if kind in ACTS:
                rep.problems.extend(self._acts.see(seq, kind, payload))
            safe, last = ok, digest
            if seq >= expect:
                expect = seq + 1
        self._expect, self._prev, self._prev_safe = expect, last, safe
        if tree is not None:
            for size, root in tree.extend(leaves, self._checkpoints).items():
                self._check_roots(size, root)
        rep.events += count
        if count:
            rep.last_seq, rep.head = expect - 1, last

    def _check_heads(self, seq: int, digest: str, heads: list[HeadRecord]) -> None:
        rep = self.report
        for head in heads:
            if head.head == digest:
                rep.signed_heads += 1
                self._signed.add(seq)
                if seq >= rep.last_signed_seq:
                    rep.last_signed_seq, rep.last_head = seq, head
            else:
                self._problem(seq, f"differs from the signed head at seq {seq}")

    def finish(self, state_seq: int | None = None, state_head: str | None = None) -> VerifyReport:
        """Close the stream; ``state_*`` is the recorded chain head (database or export)."""
        rep = self.report
        rep.requests_checked = self._acts.checked
        for seq in sorted(self._pending):
            self._problem(
                rep.last_seq + 1,
                f"missing: chain ends at {rep.last_seq} but a "
                f"signed head covers seq {seq} (truncated)",
            )
        self._pending.clear()
        for seq in sorted(self._anchors):
            for anchor in self._anchors[seq]:
                self._problem(
                    rep.last_seq + 1,
                    f"missing: chain ends at {rep.last_seq} but the {anchor.label} is at seq "
                    f"{seq} (rolled back)",
                )
        self._anchors.clear()
        for size in sorted(self._checkpoints):
            self._problem(
                rep.last_seq + 1,
                f"missing: chain ends at {rep.last_seq} but a checkpoint covers {size} events "
                "(truncated)",
            )
        self._checkpoints.clear()
        if rep.heads_checked and self._first_checkpoint is not None:
            for seq in sorted(self._signed):
                if seq >= self._first_checkpoint and seq not in self._checkpointed:
                    self._problem(seq, "signed head without a Merkle checkpoint (deleted?)")
        if self._coverage is not None:
            cov = self._coverage
            rep.problems.extend(cov.finish(rep.events, self._signed, rep.last_signed_seq))
            rep.in_progress, rep.models = cov.running, list(cov.models)
        if state_seq is not None:
            if state_seq > rep.last_seq:
                self._problem(
                    rep.last_seq + 1,
                    f"missing: the chain head record says seq {state_seq} (truncated)",
                )
            elif state_seq < rep.last_seq:
                self._problem(state_seq + 1, "beyond the chain head record (inserted)")
            elif state_seq > 0 and state_head != rep.head:
                self._problem(state_seq, "differs from the chain head record")
        return rep


def verify_database(
    engine: Engine,
    keys: Keys | None,
    *,
    anchors: Iterable[Anchor] = (),
    require_signed: bool | None = None,
    batch: int = 20_000,
    checkpoints: bool = True,
) -> VerifyReport:
    """Verify the chain stored in ``engine``'s database, in one consistent snapshot
    (``checkpoints``: also its Merkle checkpoints against the tree recomputed from the events)."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            state = conn.execute(select(CHAIN.c.chain_id, CHAIN.c.seq, CHAIN.c.head)).one()
            heads = [_head(r) for r in conn.execute(select(HEADS).order_by(HEADS.c.seq))]
            checker = ChainVerifier(
                state.chain_id, heads, keys, anchors=anchors, require_signed=require_signed,
                checkpoints=stored_checkpoints(conn) if checkpoints else (),
            )  # fmt: skip
            for rows in _event_batches(conn, batch):
                checker.feed_many(rows)
    return checker.finish(state.seq, state.head)


_EVENT_SQL = "SELECT seq, kind, ts, payload, prev, hash FROM events ORDER BY seq"


def _event_batches(conn: Connection, batch: int) -> Iterator[list[tuple]]:
    """Raw DB-API batches of event rows (the hot path; rows stay plain tuples)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    if conn.dialect.name == "postgresql":
        cur = raw.cursor(name="fedgate_audit_verify")  # server-side: constant memory
    else:
        cur = raw.cursor()
    try:
        cur.execute(_EVENT_SQL)
        while rows := cur.fetchmany(batch):
            yield rows
    finally:
        cur.close()


def check_models(report: VerifyReport, blobs: str | Path) -> VerifyReport:
    """Check each model blob the log names (``round.closed``'s ``model``) against its digest in
    the blob store at ``blobs``; a missing or altered file is a problem at its event."""
    store = BlobStore(blobs)
    for ref in report.models:
        where = f"model of run {ref.run} round {ref.round} ({ref.sha256[:12]})"
        try:
            store.get(ref.sha256)
        except BlobError as exc:
            report.problems.append(Problem(ref.seq, f"{where}: {exc}"))
        except OSError as exc:
            report.problems.append(Problem(ref.seq, f"{where}: unreadable ({exc.strerror})"))
        report.models_checked += 1
    return report
