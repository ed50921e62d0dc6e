"""The coordinator's database: global versions, candidate decisions, the current-version
pointer, and its own signed audit chain (``AuditLog`` with the coordinator key).

Every write records its rows and audit events in one transaction and signs the chain head in
it; the pointer moves in the same transaction that records a version, so the database shows
either the old version or the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Connection, Engine, insert, select, update

from fedgate.errors import UsageError
from fedgate.server.audit.log import AuditLog
from fedgate.server.coordinator.candidates import Candidate, Refusal
from fedgate.server.db.engine import run_write
from fedgate.server.db.migrate import open_database
from fedgate.server.db.models import CandidateDecision, CoordinatorState, GlobalVersion

VERSIONS = GlobalVersion.__table__
DECISIONS = CandidateDecision.__table__
STATE = CoordinatorState.__table__


class StaleVersionError(UsageError, RuntimeError):
    """Another merge moved the current version first."""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    base_version: int
    architecture: str
    weights_sha256: str
    statement_sha256: str
    rule: str
    regions: int
    created_at: datetime


def refusal_event(r: Refusal) -> tuple[str, dict[str, Any]]:
    return "candidate.refused", {
        "source": r.source, "region": r.region, "artifact": r.artifact_sha256,
        "reason": r.reason, "detail": r.detail,
    }  # fmt: skip


def _decision(region: str, artifact: str, verdict: str, reason: str, detail: str,
              version: int | None) -> dict[str, Any]:  # fmt: skip
    return {
        "region": region, "artifact_sha256": artifact, "verdict": verdict, "reason": reason,
        "detail": detail, "version": version, "decided_at": datetime.now(UTC),
    }  # fmt: skip


class CoordinatorStore:
    def __init__(self, engine: Engine, signer: Ed25519PrivateKey | None = None) -> None:
        self.engine = engine
        self.audit = AuditLog(engine, signer=signer)

    @classmethod
    def open(cls, url: str, signer: Ed25519PrivateKey | None = None) -> CoordinatorStore:
        return cls(open_database(url), signer)

    def current_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(STATE.c.current_version)).scalar_one())

    def version(self, number: int) -> VersionInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(VERSIONS).where(VERSIONS.c.version == number)).first()
        return None if row is None else VersionInfo(**row._mapping)

    def versions(self) -> list[VersionInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(VERSIONS).order_by(VERSIONS.c.version)).all()
        return [VersionInfo(**r._mapping) for r in rows]

    def merged_artifacts(self) -> set[str]:
        """Artifact digests that went into a global version."""
        query = select(DECISIONS.c.artifact_sha256).where(DECISIONS.c.version.is_not(None))
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(query)}

    def decided_artifacts(self) -> set[str]:
        """Artifact digests with any recorded decision."""
        with self.engine.connect() as conn:
            return {r[0] for r in conn.execute(select(DECISIONS.c.artifact_sha256))}

    def decisions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(DECISIONS).order_by(DECISIONS.c.id)).all()
        return [dict(r._mapping) for r in rows]

    def record_refusals(self, refusals: Iterable[Refusal]) -> None:
        """Record refusals (rows + signed audit events) in one transaction."""
        items = list(refusals)
        if not items:
            return

        def write(conn: Connection) -> None:
            conn.execute(insert(DECISIONS), [
                _decision(r.region, r.artifact_sha256, "refused", r.reason, r.detail, None)
                for r in items
            ])  # fmt: skip
            self.audit.append_in(conn, [refusal_event(r) for r in items])
            self.audit.sign_in(conn)

        run_write(self.engine, write, f"recording {len(items)} refusal(s)")

    def commit_version(
        self,
        info: VersionInfo,
        accepted: Iterable[Candidate],
        refusals: Iterable[Refusal],
        event: Mapping[str, Any],
        before_commit: Callable[[], None] = lambda: None,
    ) -> None:
        """Record version ``info`` with its candidates and refusals, audit it, sign the head
        and move the pointer, all in one transaction; ``before_commit`` runs last inside it."""
        accepted, refusals = list(accepted), list(refusals)

        def write(conn: Connection) -> None:
            current = conn.execute(select(STATE.c.current_version).with_for_update()).scalar_one()
            if current != info.base_version:
                raise StaleVersionError(
                    f"global version moved to {current} during this merge (from "
                    f"{info.base_version}); merge again"
                )
            conn.execute(insert(VERSIONS).values(**info.__dict__))
            rows = [_decision(c.region, c.artifact_sha256, "accepted", "", "", info.version)
                    for c in accepted]  # fmt: skip
            rows += [_decision(r.region, r.artifact_sha256, "refused", r.reason, r.detail, None)
                     for r in refusals]  # fmt: skip
            if rows:
                conn.execute(insert(DECISIONS), rows)
            events = [
                (
                    "candidate.accepted",
                    {"region": c.region, "artifact": c.artifact_sha256, "version": info.version},
                )
                for c in accepted
            ]
            events += [refusal_event(r) for r in refusals]
            events.append(("global.version", dict(event)))  # fmt: skip
            self.audit.append_in(conn, events)
            self.audit.sign_in(conn)
            conn.execute(update(STATE).where(STATE.c.id == 1).values(current_version=info.version))
            before_commit()

        run_write(self.engine, write, f"recording global version {info.version}")
