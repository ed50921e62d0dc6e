"""ORM tables of a region's (or the coordinator's) database.

The schema itself is created by the Alembic migrations in ``migrations/``; these classes
describe it for queries and are checked against the migrations by the tests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

HEX = 64  # a SHA-256 hex digest or key fingerprint


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class Device(Base):
    """An enrolled device key of a region (``status`` is active or revoked)."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(HEX), primary_key=True)  # key fingerprint
    public_key: Mapped[str] = mapped_column(String(HEX))  # hex of the raw Ed25519 key
    region: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(16))
    enrolled_at: Mapped[datetime]
    profile: Mapped[str] = mapped_column(String(16), server_default="")
    revoked_at: Mapped[datetime | None]


class EnrollmentToken(Base):
    """A one-time enrollment token, kept only as the SHA-256 of its secret."""

    __tablename__ = "enrollment_tokens"

    token_hash: Mapped[str] = mapped_column(String(HEX), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), index=True)
    issued_at: Mapped[datetime]
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    used_by: Mapped[str | None] = mapped_column(ForeignKey("devices.device_id"))


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    region: Mapped[str] = mapped_column(String(64), index=True)
    launched_by: Mapped[str] = mapped_column(String(128))
    config: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class Round(Base):
    __tablename__ = "rounds"

    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    sampled: Mapped[int] = mapped_column(Integer)
    accepted: Mapped[int] = mapped_column(Integer)
    rejected: Mapped[int] = mapped_column(Integer)
    aggregated: Mapped[bool] = mapped_column(Boolean)
    note: Mapped[str] = mapped_column(Text)
    closed_at: Mapped[datetime]
    transport_errors: Mapped[int] = mapped_column(Integer, server_default="0")


class Update(Base):
    __tablename__ = "updates"
    __table_args__ = (
        ForeignKeyConstraint(["run_id", "round"], ["rounds.run_id", "rounds.round"]),
        Index("ix_updates_run_round", "run_id", "round"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    round: Mapped[int] = mapped_column(Integer)
    node_id: Mapped[str] = mapped_column(String(20))  # Flower node ids are unsigned 64-bit
    device_id: Mapped[str] = mapped_column(String(HEX))  # verified; the claimed one below is not
    claimed_device_id: Mapped[str] = mapped_column(String(HEX), server_default="")
    digest: Mapped[str] = mapped_column(String(HEX))
    verdict: Mapped[str] = mapped_column(String(16))  # accepted / rejected
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    num_examples: Mapped[int] = mapped_column(Integer)
    fate: Mapped[str] = mapped_column(String(32))  # kept / trimmed / clipped / down-weighted ...
    score: Mapped[float | None] = mapped_column(Float)
    weight: Mapped[float] = mapped_column(Float)


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_run_round", "run_id", "round"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"))
    round: Mapped[int | None] = mapped_column(Integer)  # None: a whole-run metric
    name: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)


class Artifact(Base):
    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(HEX), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str | None] = mapped_column(String(64))
    manifest: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]


class Approval(Base):
    __tablename__ = "approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    artifact_sha256: Mapped[str] = mapped_column(ForeignKey("artifacts.sha256"), index=True)
    approver: Mapped[str] = mapped_column(String(HEX))  # approver key fingerprint
    decision: Mapped[str] = mapped_column(String(16))  # approved / refused
    checks: Mapped[dict[str, Any]]
    signature: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime]


class AuditChain(Base):
    """The one chain-head row: chain identity, last seq and hash; writers lock it."""

    __tablename__ = "audit_chain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    chain_id: Mapped[str] = mapped_column(String(HEX), unique=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    head: Mapped[str] = mapped_column(String(HEX))


class Event(Base):
    """One audit event; ``hash`` covers chain, seq, kind, ts, payload and ``prev``."""

    __tablename__ = "events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    ts: Mapped[str] = mapped_column(String(32))  # fixed-width UTC ISO-8601
    payload: Mapped[str] = mapped_column(Text)  # RFC 8785 canonical JSON text
    prev: Mapped[str] = mapped_column(String(HEX))
    hash: Mapped[str] = mapped_column(String(HEX))


class SignedHead(Base):
    """A signature by a server key over ``{chain, seq, head}``."""

    __tablename__ = "audit_heads"
    __table_args__ = (UniqueConstraint("seq", "key", name="uq_audit_heads_seq_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    head: Mapped[str] = mapped_column(String(HEX))
    key: Mapped[str] = mapped_column(String(HEX))  # signer's key fingerprint
    signature: Mapped[str] = mapped_column(String(128))  # hex
    signed_at: Mapped[str] = mapped_column(String(32))


# -- the global coordinator's tables (they live in the coordinator's own database; a region's
# database has them too, empty: one schema, one migration tree) -----------------------------


class GlobalVersion(Base):
    """A global model version: its weights and signed statement, both by SHA-256 in the blob
    store; ``statement_sha256`` is the digest of the DSSE envelope that carries its lineage."""

    __tablename__ = "global_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    base_version: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[str] = mapped_column(String(128))
    weights_sha256: Mapped[str] = mapped_column(String(HEX))
    statement_sha256: Mapped[str] = mapped_column(String(HEX))
    rule: Mapped[str] = mapped_column(String(64))
    regions: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime]


class CandidateDecision(Base):
    """The coordinator's verdict on one regional artifact it was offered."""

    __tablename__ = "candidate_decisions"
    __table_args__ = (Index("ix_candidate_decisions_artifact", "artifact_sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    region: Mapped[str] = mapped_column(String(64))
    artifact_sha256: Mapped[str] = mapped_column(String(HEX))
    verdict: Mapped[str] = mapped_column(String(16))  # accepted / refused
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text)
    version: Mapped[int | None] = mapped_column(Integer)  # the global version it went into
    decided_at: Mapped[datetime]


class CoordinatorState(Base):
    """The one pointer row: the current global version (0: none yet); it moves last, in the
    same transaction that records the version."""

    __tablename__ = "coordinator_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    current_version: Mapped[int] = mapped_column(Integer)


class AuditTreeNode(Base):
    """A perfect subtree of the audit log's RFC 9162 Merkle tree: the ``2**level`` leaves from
    ``idx * 2**level`` (leaf ``i`` is event ``i + 1``); only levels 4 and up are stored, see
    ``fedgate.server.audit.checkpoints``."""

    __tablename__ = "audit_tree"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class AuditCheckpoint(Base):
    """A signed C2SP checkpoint of the audit log's Merkle tree at ``size`` events."""

    __tablename__ = "audit_checkpoints"
    __table_args__ = (UniqueConstraint("size", "key", name="uq_audit_checkpoints_size_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[str] = mapped_column(String(HEX))  # hex of the RFC 9162 root hash
    key: Mapped[str] = mapped_column(String(HEX))  # signer's key fingerprint
    note: Mapped[str] = mapped_column(Text)  # the signed note, as an outsider receives it
    signed_at: Mapped[str] = mapped_column(String(32))
