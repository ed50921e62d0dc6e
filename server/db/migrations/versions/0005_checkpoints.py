"""The audit log's Merkle tree (perfect subtrees) and its signed C2SP checkpoints.

Revision ID: 0005_checkpoints
Revises: 0004_coordinator
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_checkpoints"
down_revision = "0004_coordinator"
branch_labels = None
depends_on = None

HEX = 64


def upgrade() -> None:
    op.create_table(
        "audit_tree",
        sa.Column("level", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.String(HEX), nullable=False),
        sa.Column("key", sa.String(HEX), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("signed_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("size", "key", name="uq_audit_checkpoints_size_key"),
    )


def downgrade() -> None:
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_tree")
