"""The global coordinator's tables: global versions, candidate decisions, the current-version
pointer (one schema for region and coordinator databases; a region's stay empty).

Revision ID: 0004_coordinator
Revises: 0003_round_records
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_coordinator"
down_revision = "0003_round_records"
branch_labels = None
depends_on = None

HEX = 64


def upgrade() -> None:
    op.create_table(
        "global_versions",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.String(128), nullable=False),
        sa.Column("weights_sha256", sa.String(HEX), nullable=False),
        sa.Column("statement_sha256", sa.String(HEX), nullable=False),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("regions", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "candidate_decisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("artifact_sha256", sa.String(HEX), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_candidate_decisions_artifact", "candidate_decisions", ["artifact_sha256"])
    op.create_table(
        "coordinator_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("current_version", sa.Integer(), nullable=False),
    )
    op.execute("INSERT INTO coordinator_state (id, current_version) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("coordinator_state")
    op.drop_index("ix_candidate_decisions_artifact", table_name="candidate_decisions")
    op.drop_table("candidate_decisions")
    op.drop_table("global_versions")
