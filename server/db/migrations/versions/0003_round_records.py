"""Complete round records: the device id a refused update claims, and a round's count of
Flower transport errors (error replies that are no client's answer).

Revision ID: 0003_round_records
Revises: 0002
Create Date: 2025-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_round_records"
down_revision = "0002"
branch_labels = None
depends_on = None

HEX = 64


def upgrade() -> None:
    op.add_column(
        "updates",
        sa.Column("claimed_device_id", sa.String(HEX), nullable=False, server_default=""),
    )
    op.add_column(
        "rounds",
        sa.Column("transport_errors", sa.Integer(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("transport_errors")
    with op.batch_alter_table("updates") as batch:
        batch.drop_column("claimed_device_id")
