"""Device registry: device profile and revocation time, one-time enrollment tokens.

Devices that an older schema marked ``status = 'revoked'`` get the migration's time as
their ``revoked_at`` (they were revoked no later than that).

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-24
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

HEX = 64


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.add_column("devices", sa.Column("profile", sa.String(16), nullable=False, server_default=""))
    op.add_column("devices", _ts("revoked_at", nullable=True))
    devices = sa.table(
        "devices",
        sa.column("status", sa.String(16)),
        sa.column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.execute(
        devices.update()
        .where(devices.c.status == "revoked", devices.c.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )
    op.create_table(
        "enrollment_tokens",
        sa.Column("token_hash", sa.String(HEX), primary_key=True),
        sa.Column("region", sa.String(64), nullable=False),
        _ts("issued_at"),
        _ts("expires_at"),
        _ts("used_at", nullable=True),
        sa.Column("used_by", sa.String(HEX), sa.ForeignKey("devices.device_id"), nullable=True),
    )
    op.create_index("ix_enrollment_tokens_region", "enrollment_tokens", ["region"])


def downgrade() -> None:
    op.drop_table("enrollment_tokens")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("revoked_at")
        batch.drop_column("profile")
