"""Lead time zone and country, message schedule and variant, enrollment goal.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("timezone", sa.String(), nullable=True))
        batch.add_column(sa.Column("company_country", sa.String(), nullable=True))
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("variant", sa.String(), nullable=True))
        batch.add_column(
            sa.Column("scheduled_at", nurture.models.UTCDateTime(), nullable=True)
        )
        batch.create_index("ix_messages_scheduled_at", ["scheduled_at"])
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("goal", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("goal")
    with op.batch_alter_table("messages") as batch:
        batch.drop_index("ix_messages_scheduled_at")
        batch.drop_column("scheduled_at")
        batch.drop_column("variant")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("company_country")
        batch.drop_column("timezone")
