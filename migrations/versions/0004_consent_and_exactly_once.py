"""Consent ledger, suppressions, send attempts, enrichment cache, CRM ids.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.models

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = nurture.models.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        for column in ("email_consent", "sms_consent"):
            batch.add_column(
                sa.Column(
                    column,
                    sa.String(),
                    nullable=False,
                    server_default=sa.text("'unknown'"),
                )
            )
        batch.add_column(sa.Column("crm_id", sa.String(), nullable=True))
        batch.add_column(sa.Column("crm_synced_at", UTC_DATETIME(), nullable=True))
        batch.create_index("ix_leads_crm_id", ["crm_id"])
    with op.batch_alter_table("messages") as batch:
        batch.add_column(
            sa.Column(
                "attempts", sa.Integer(), nullable=False, server_default=sa.text("0")
            )
        )
        batch.add_column(sa.Column("sending_at", UTC_DATETIME(), nullable=True))

    op.create_table(
        "consent_records",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("lead_id", sa.String(), sa.ForeignKey("leads.id"), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("proof", sa.JSON(), nullable=False),
        sa.Column("occurred_at", UTC_DATETIME(), nullable=False),
        sa.Column("recorded_at", UTC_DATETIME(), nullable=False),
        sa.Column("recorded_by", sa.String(), nullable=False),
    )
    op.create_index("ix_consent_records_lead_id", "consent_records", ["lead_id"])
    op.create_table(
        "suppressions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("address", sa.String(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("created_at", UTC_DATETIME(), nullable=False),
        sa.UniqueConstraint("channel", "address"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "enrichment_cache",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("fetched_at", UTC_DATETIME(), nullable=False),
        sa.Column("expires_at", UTC_DATETIME(), nullable=False),
    )
    op.create_index(
        "ix_enrichment_cache_expires_at", "enrichment_cache", ["expires_at"]
    )

    # Leads that unsubscribed or bounced before the ledger existed keep that
    # state: the unsubscribes become opted-out consent, the bounces suppressions.
    op.execute(
        "UPDATE leads SET email_consent = 'opted_out' WHERE status = 'unsubscribed'"
    )
    op.execute(
        "INSERT INTO consent_records "
        "(lead_id, channel, status, source, proof, occurred_at, recorded_at, "
        "recorded_by) "
        "SELECT id, 'email', 'opted_out', 'migration', '{}', updated_at, "
        "updated_at, 'migration 0004' FROM leads WHERE status = 'unsubscribed'"
    )
    op.execute(
        "INSERT INTO suppressions "
        "(channel, address, reason, source, detail, created_at) "
        "SELECT 'email', email_normalized, 'bounce', 'migration', '{}', updated_at "
        "FROM leads WHERE status = 'bounced' AND email_normalized IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("ix_enrichment_cache_expires_at", "enrichment_cache")
    op.drop_table("enrichment_cache")
    op.drop_table("suppressions")
    op.drop_index("ix_consent_records_lead_id", "consent_records")
    op.drop_table("consent_records")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("sending_at")
        batch.drop_column("attempts")
    with op.batch_alter_table("leads") as batch:
        batch.drop_index("ix_leads_crm_id")
        for column in ("crm_synced_at", "crm_id", "sms_consent", "email_consent"):
            batch.drop_column(column)
