"""Initial schema: devices, runs, rounds, updates, metrics, artifacts, approvals, audit chain.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

HEX = 64
GENESIS = "0" * HEX


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("device_id", sa.String(HEX), primary_key=True),
        sa.Column("public_key", sa.String(HEX), nullable=False),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("enrolled_at"),
    )
    op.create_index("ix_devices_region", "devices", ["region"])
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("launched_by", sa.String(128), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("started_at"),
        _ts("finished_at", nullable=True),
    )
    op.create_index("ix_runs_region", "runs", ["region"])
    op.create_table(
        "rounds",
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("round", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("sampled", sa.Integer(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("aggregated", sa.Boolean(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        _ts("closed_at"),
    )
    op.create_table(
        "updates",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.String(20), nullable=False),
        sa.Column("device_id", sa.String(HEX), nullable=False),
        sa.Column("digest", sa.String(HEX), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("num_examples", sa.Integer(), nullable=False),
        sa.Column("fate", sa.String(32), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("weight", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["run_id", "round"], ["rounds.run_id", "rounds.round"]),
    )
    op.create_index("ix_updates_run_round", "updates", ["run_id", "round"])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.id"), nullable=False),
        sa.Column("round", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
    )
    op.create_index("ix_metrics_run_round", "metrics", ["run_id", "round"])
    op.create_table(
        "artifacts",
        sa.Column("sha256", sa.String(HEX), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("manifest", sa.JSON(), nullable=False),
        _ts("created_at"),
    )
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "artifact_sha256", sa.String(HEX), sa.ForeignKey("artifacts.sha256"), nullable=False
        ),
        sa.Column("approver", sa.String(HEX), nullable=False),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("checks", sa.JSON(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=True),
        _ts("decided_at"),
    )
    op.create_index("ix_approvals_artifact_sha256", "approvals", ["artifact_sha256"])
    chain = op.create_table(
        "audit_chain",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("chain_id", sa.String(HEX), nullable=False, unique=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head", sa.String(HEX), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("ts", sa.String(32), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev", sa.String(HEX), nullable=False),
        sa.Column("hash", sa.String(HEX), nullable=False),
    )
    op.create_index("ix_events_kind", "events", ["kind"])
    op.create_table(
        "audit_heads",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head", sa.String(HEX), nullable=False),
        sa.Column("key", sa.String(HEX), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("signed_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("seq", "key", name="uq_audit_heads_seq_key"),
    )
    # The chain's identity is fixed once, when the database is created.
    op.bulk_insert(chain, [{"id": 1, "chain_id": uuid.uuid4().hex, "seq": 0, "head": GENESIS}])


def downgrade() -> None:
    for table in (
        "audit_heads",
        "events",
        "audit_chain",
        "approvals",
        "artifacts",
        "metrics",
        "updates",
        "rounds",
        "runs",
        "devices",
    ):
        op.drop_table(table)
