"""Erasure records: what was erased for a lead, without personal data.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = nurture.models.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "erasures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("lead_id", sa.String(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=False),
        sa.Column("reference", sa.String(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("removed", sa.JSON(), nullable=False),
        sa.Column("workflows", sa.JSON(), nullable=False),
        sa.Column("error", sa.String(), nullable=True),
        sa.Column("erased_at", UTC_DATETIME(), nullable=False),
        sa.Column("completed_at", UTC_DATETIME(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_erasures_lead_id", "erasures", ["lead_id"], unique=True)
    op.create_index("ix_erasures_status", "erasures", ["status"])


def downgrade() -> None:
    op.drop_index("ix_erasures_status", table_name="erasures")
    op.drop_index("ix_erasures_lead_id", table_name="erasures")
    op.drop_table("erasures")
