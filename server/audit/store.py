"""Repository API the regional server and coordinator call; every write is audited.

Each write updates its tables and appends the matching audit events in one transaction,
so the tables and the chain never disagree. ``record_round`` also signs the chain head
when the audit log has a signing key (the design asks for one signature per round).
Round records are duck-typed: dataclasses (``RoundRecord``/``ClientFate``) or dicts; what a
round writes is computed without the database by ``fedgate.server.audit.round_rows``.
Every write runs through ``run_write``: a database that is unavailable for a moment is
retried (the whole transaction, so the chain is never half-written), then a clear
``DatabaseError`` names it.
Devices and enrollment tokens are written, by the same rules, by the region's device
registry (``fedgate.server.trust.enrollment.DatabaseDeviceRegistry``) on a ``Store``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, func, insert, select, update

from fedgate.errors import UsageError
from fedgate.server.audit.log import AuditLog, Item
from fedgate.server.audit.round_rows import finite, metric_rows, round_write
from fedgate.server.db.engine import run_write
from fedgate.server.db.migrate import open_database
from fedgate.server.db.models import Approval, Artifact, Event, Metric, Round, Run, Update

RUNS, ROUNDS = Run.__table__, Round.__table__
UPDATES, METRICS = Update.__table__, Metric.__table__
ARTIFACTS, APPROVALS = Artifact.__table__, Approval.__table__
EVENTS = Event.__table__


class StoreError(UsageError, LookupError):
    """A referenced run, round or artifact does not exist."""


@dataclass(frozen=True)
class RunInfo:
    id: str
    region: str
    launched_by: str
    config: dict[str, Any]
    status: str
    started_at: datetime
    finished_at: datetime | None
    rounds: int


@dataclass(frozen=True)
class RoundInfo:
    run_id: str
    round: int
    sampled: int
    accepted: int
    rejected: int
    aggregated: bool
    note: str
    closed_at: datetime
    metrics: dict[str, float]
    transport_errors: int = 0


@dataclass(frozen=True)
class UpdateInfo:
    node_id: str
    device_id: str
    digest: str
    verdict: str
    reason: str
    detail: str
    num_examples: int
    fate: str
    score: float | None
    weight: float
    claimed_device_id: str = ""  # the device id the envelope names, unverified


def _now() -> datetime:
    return datetime.now(UTC)


class Store:
    """Tables and audit chain of one database."""

    def __init__(self, engine: Engine, signer: Ed25519PrivateKey | None = None) -> None:
        self.engine = engine
        self.audit = AuditLog(engine, signer=signer)

    @classmethod
    def open(cls, url: str, signer: Ed25519PrivateKey | None = None) -> Store:
        """Open (creating and migrating as needed) the database at ``url``."""
        return cls(open_database(url), signer=signer)

    def _write(self, conn: Connection, events: Iterable[Item], sign: bool = False) -> None:
        self.audit.append_in(conn, events)
        if sign and self.audit.signer is not None:
            self.audit.sign_in(conn)

    # -- runs and rounds ------------------------------------------------------------------
    def record_run(
        self,
        run_id: int | str,
        region: str,
        launched_by: str,
        config: Mapping[str, Any],
        request: Mapping[str, str] | None = None,
    ) -> str:
        """Record a run launched (``request``: the launcher's signed request, see
        ``fedgate.server.audit.actors``)."""
        run = str(run_id)
        signed = {} if request is None else {"request": dict(request)}

        def write(conn: Connection) -> None:
            conn.execute(
                insert(RUNS).values(
                    id=run,
                    region=region,
                    launched_by=launched_by,
                    config=dict(config),
                    status="running",
                    started_at=_now(),
                )
            )
            self._write(
                conn,
                [
                    (
                        "run.launched",
                        {
                            "run": run,
                            "region": region,
                            "launched_by": launched_by,
                            "config": dict(config),
                            **signed,
                        },
                    )
                ],
                sign=True,
            )

        run_write(self.engine, write, f"recording run {run}")
        return run

    def finish_run(self, run_id: int | str, status: str = "finished", note: str = "") -> None:
        """End a running run with ``status``; a run that has already ended keeps its end."""
        run = str(run_id)

        def write(conn: Connection) -> None:
            done = conn.execute(
                update(RUNS)
                .where(RUNS.c.id == run, RUNS.c.status == "running")
                .values(status=status, finished_at=_now())
            )
            if done.rowcount != 1:
                if conn.execute(select(RUNS.c.id).where(RUNS.c.id == run)).first() is None:
                    raise StoreError(f"no run {run}")
                return  # already ended (e.g. stopped by the operator): the first end stands
            self._write(
                conn, [("run.finished", {"run": run, "status": status, "note": note})], sign=True
            )

        run_write(self.engine, write, f"finishing run {run}")

    def stop_run(self, run_id: int | str, region: str, by: str, note: str = "") -> str:
        """Record ``run_id`` stopped by ``by``: a running run is finished as ``stopped``; a run
        that never started gets a row saying so. Returns the status it had before."""
        run = str(run_id)

        def write(conn: Connection) -> str:
            row = conn.execute(select(RUNS.c.status).where(RUNS.c.id == run)).first()
            before = "" if row is None else str(row.status)
            if row is None:
                conn.execute(
                    insert(RUNS).values(id=run, region=region, launched_by=by, config={},
                                        status="stopped", started_at=_now(), finished_at=_now())
                )  # fmt: skip
            elif before == "running":
                conn.execute(
                    update(RUNS).where(RUNS.c.id == run)
                    .values(status="stopped", finished_at=_now())
                )  # fmt: skip
            event = {"run": run, "region": region, "by": by, "was": before or "pending",
                     "note": note}  # fmt: skip
            self._write(conn, [("run.stopped", event)], sign=True)
            return before

        return run_write(self.engine, write, f"stopping run {run}")

    def run(self, run_id: int | str) -> RunInfo | None:
        """One run as ``runs()`` lists it, or None."""
        return next((r for r in self.runs() if r.id == str(run_id)), None)

    def round_models(self, run_id: int | str) -> dict[int, str]:
        """Each recorded round's model digest (from the audit chain's ``round.closed``)."""
        run = str(run_id)
        out: dict[int, str] = {}
        query = select(EVENTS.c.payload).where(EVENTS.c.kind == "round.closed")
        with self.engine.connect() as conn:
            for (payload,) in conn.execute(query.order_by(EVENTS.c.seq)):
                event = json.loads(payload)
                if event.get("run") == run and event.get("model"):
                    out[int(event["round"])] = str(event["model"])
        return out

    def open_round(self, run_id: int | str, round_no: int, **details: Any) -> None:
        """Audit that a round was opened (its nonce, sampled nodes, ...)."""
        event = ("round.opened", {"run": str(run_id), "round": int(round_no), **details})
        run_write(
            self.engine,
            lambda conn: self.audit.append_in(conn, [event]),
            f"opening round {round_no} of run {run_id}",
        )

    def record_round(
        self, run_id: int | str, record: Any, *, sign: bool = True, model_sha256: str = ""
    ) -> None:
        """Store one ``RoundRecord``-like outcome: round row, every client's fate, metrics,
        and (``model_sha256``) the digest of the round's model in the blob store."""
        rows = round_write(run_id, record, model_sha256)

        def write(conn: Connection) -> None:
            conn.execute(insert(ROUNDS).values(**rows.round, closed_at=_now()))
            if rows.updates:
                conn.execute(insert(UPDATES), rows.updates)
            if rows.metrics:
                conn.execute(insert(METRICS), rows.metrics)
            self._write(conn, rows.events, sign=sign)

        where = f"recording round {rows.round['round']} of run {rows.round['run_id']}"
        run_write(self.engine, write, where)

    def record_metrics(
        self, run_id: int | str, round_no: int | None, metrics: Mapping[str, float]
    ) -> None:
        """Audit and store evaluation metrics (``round_no`` None: whole-run metrics)."""
        run = str(run_id)
        values = {str(k): finite(v) for k, v in metrics.items()}

        def write(conn: Connection) -> None:
            rows = metric_rows(run, round_no, values)
            if rows:
                conn.execute(insert(METRICS), rows)
            self._write(conn, [("evaluation", {"run": run, "round": round_no, "metrics": values})])

        run_write(self.engine, write, f"recording metrics of run {run}")

    # -- artifacts and approvals -----------------------------------------------------------
    def record_artifact(
        self,
        sha256: str,
        path: str,
        kind: str,
        manifest: Mapping[str, Any],
        run_id: int | str | None = None,
    ) -> None:
        run = None if run_id is None else str(run_id)

        def write(conn: Connection) -> None:
            conn.execute(
                insert(ARTIFACTS).values(
                    sha256=sha256,
                    path=str(path),
                    kind=kind,
                    run_id=run,
                    manifest=dict(manifest),
                    created_at=_now(),
                )
            )
            self._write(
                conn,
                [
                    (
                        "artifact.produced",
                        {"sha256": sha256, "kind": kind, "run": run, "manifest": dict(manifest)},
                    )
                ],
                sign=True,
            )

        run_write(self.engine, write, f"recording artifact {sha256[:12]}")

    def record_approval(
        self,
        artifact_sha256: str,
        approver: str,
        approved: bool,
        checks: Mapping[str, Any],
        signature: str | None = None,
        *,
        event: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a decision on an artifact; ``event`` overrides the audit event's kind
        (default ``approval.granted`` / ``approval.refused``) and ``details`` adds to its
        payload (the gate records its statement, policy and reason there)."""
        decision = "approved" if approved else "refused"
        kind = event or f"approval.{'granted' if approved else 'refused'}"

        def write(conn: Connection) -> None:
            conn.execute(
                insert(APPROVALS).values(
                    artifact_sha256=artifact_sha256,
                    approver=approver,
                    decision=decision,
                    checks=dict(checks),
                    signature=signature,
                    decided_at=_now(),
                )
            )
            self._write(
                conn,
                [
                    (
                        kind,
                        {
                            "artifact": artifact_sha256,
                            "approver": approver,
                            "checks": dict(checks),
                            "signature": signature,
                            **dict(details or {}),
                        },
                    )
                ],
                sign=True,
            )

        run_write(self.engine, write, f"recording approval of {artifact_sha256[:12]}")

    def artifact(self, sha256: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(ARTIFACTS).where(ARTIFACTS.c.sha256 == sha256)).first()
        return None if row is None else dict(row._mapping)

    # -- queries ------------------------------------------------------------------------------
    def runs(self) -> list[RunInfo]:
        counts = (
            select(ROUNDS.c.run_id, func.count().label("n")).group_by(ROUNDS.c.run_id).subquery()
        )
        query = (
            select(RUNS, func.coalesce(counts.c.n, 0).label("n"))
            .outerjoin(counts, counts.c.run_id == RUNS.c.id)
            .order_by(RUNS.c.started_at, RUNS.c.id)
        )
        with self.engine.connect() as conn:
            return [
                RunInfo(
                    r.id,
                    r.region,
                    r.launched_by,
                    r.config,
                    r.status,
                    r.started_at,
                    r.finished_at,
                    r.n,
                )
                for r in conn.execute(query)
            ]

    def _metrics(self, conn: Connection, run: str, rnd: int | None = None) -> dict[int, dict]:
        query = select(METRICS).where(METRICS.c.run_id == run).order_by(METRICS.c.id)
        if rnd is not None:
            query = query.where(METRICS.c.round == rnd)
        out: dict[int, dict] = {}
        for m in conn.execute(query):
            out.setdefault(m.round, {})[m.name] = m.value
        return out

    def rounds(self, run_id: int | str) -> list[RoundInfo]:
        run = str(run_id)
        with self.engine.connect() as conn:
            if conn.execute(select(RUNS.c.id).where(RUNS.c.id == run)).first() is None:
                raise StoreError(f"no run {run}")
            metrics = self._metrics(conn, run)
            rows = conn.execute(
                select(ROUNDS).where(ROUNDS.c.run_id == run).order_by(ROUNDS.c.round)
            ).all()
        return [_round(r, metrics.get(r.round, {})) for r in rows]

    def round_detail(self, run_id: int | str, round_no: int) -> tuple[RoundInfo, list[UpdateInfo]]:
        """One round and every client's fate in it."""
        run = str(run_id)
        with self.engine.connect() as conn:
            row = conn.execute(
                select(ROUNDS).where(ROUNDS.c.run_id == run, ROUNDS.c.round == round_no)
            ).first()
            if row is None:
                raise StoreError(f"no round {round_no} in run {run}")
            metrics = self._metrics(conn, run, round_no).get(round_no, {})
            ups = conn.execute(
                select(UPDATES)
                .where(UPDATES.c.run_id == run, UPDATES.c.round == round_no)
                .order_by(UPDATES.c.id)
            ).all()
        updates = [
            UpdateInfo(
                u.node_id,
                u.device_id,
                u.digest,
                u.verdict,
                u.reason,
                u.detail,
                u.num_examples,
                u.fate,
                u.score,
                u.weight,
                u.claimed_device_id,
            )
            for u in ups
        ]
        return _round(row, metrics), updates


def _round(r: Any, metrics: dict[str, float]) -> RoundInfo:
    return RoundInfo(
        r.run_id,
        r.round,
        r.sampled,
        r.accepted,
        r.rejected,
        r.aggregated,
        r.note,
        r.closed_at,
        dict(metrics),
        r.transport_errors,
    )
