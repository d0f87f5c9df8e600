"""Analytics: split assignments and decisions, channel spend, MQL time, indexes.

Also the dashboard's sessions, so that signing out ends one on the server.

`leads.mql_at` is kept by a trigger, so every write path that moves a lead
to mql or a later stage (scoring, batch rescoring, outcomes, imports) sets
it without knowing about it. Leads already past mql keep NULL: the time they
got there was never stored.

NOTE: on SQLite, a later migration that rebuilds `leads` in batch mode (any
change SQLite's ALTER TABLE cannot make) drops these triggers, so it must
create them again.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import nurture.models

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_DATETIME = nurture.models.UTCDateTime
MQL_STAGES = "('mql', 'sql', 'customer')"

POSTGRESQL_TRIGGER = f"""
CREATE FUNCTION leads_set_mql_at() RETURNS trigger AS $$
BEGIN
    IF NEW.mql_at IS NULL AND NEW.stage IN {MQL_STAGES} THEN
        NEW.mql_at := now();
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER leads_mql_at BEFORE INSERT OR UPDATE OF stage ON leads
    FOR EACH ROW EXECUTE FUNCTION leads_set_mql_at();
"""
# SQLAlchemy stores SQLite datetimes as "YYYY-MM-DD HH:MM:SS.ffffff" in UTC;
# %f gives milliseconds, so three zeros make the microseconds.
SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"
SQLITE_TRIGGERS = [
    f"""
CREATE TRIGGER leads_mql_at_insert AFTER INSERT ON leads
WHEN NEW.mql_at IS NULL AND NEW.stage IN {MQL_STAGES}
BEGIN
    UPDATE leads SET mql_at = {SQLITE_NOW} WHERE id = NEW.id;
END
""",
    f"""
CREATE TRIGGER leads_mql_at_update AFTER UPDATE OF stage ON leads
WHEN NEW.mql_at IS NULL AND NEW.stage IN {MQL_STAGES}
BEGIN
    UPDATE leads SET mql_at = {SQLITE_NOW} WHERE id = NEW.id;
END
""",
]


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        batch.add_column(sa.Column("mql_at", UTC_DATETIME(), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(POSTGRESQL_TRIGGER)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)

    op.create_table(
        "split_assignments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "enrollment_id",
            sa.String(),
            sa.ForeignKey("enrollments.id"),
            nullable=False,
        ),
        sa.Column(
            "campaign_id", sa.String(), sa.ForeignKey("campaigns.id"), nullable=False
        ),
        sa.Column("campaign_version", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(), nullable=False),
        sa.Column("variant", sa.String(), nullable=False),
        sa.Column("by_winner", sa.Boolean(), nullable=False),
        sa.Column("assigned_at", UTC_DATETIME(), nullable=False),
        sa.UniqueConstraint("enrollment_id", "step_id"),
    )
    op.create_index(
        "ix_split_assignments_split",
        "split_assignments",
        ["campaign_id", "step_id", "variant", "assigned_at"],
    )
    op.create_table(
        "split_decisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "campaign_id", sa.String(), sa.ForeignKey("campaigns.id"), nullable=False
        ),
        sa.Column("campaign_version", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.String(), nullable=False),
        sa.Column("winner", sa.String(), nullable=False),
        sa.Column("control", sa.String(), nullable=False),
        sa.Column("decided_at", UTC_DATETIME(), nullable=False),
        sa.Column("decided_by", sa.String(), nullable=False),
        sa.Column("rule", sa.JSON(), nullable=False),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("withdrawn_at", UTC_DATETIME(), nullable=True),
        sa.Column("withdrawn_by", sa.String(), nullable=True),
        sa.UniqueConstraint("campaign_id", "step_id"),
    )
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("token_hash", sa.String(), nullable=False, unique=True),
        sa.Column("key_ref", sa.String(), nullable=False),
        sa.Column("key_fingerprint", sa.String(), nullable=False),
        sa.Column("created_at", UTC_DATETIME(), nullable=False),
        sa.Column("expires_at", UTC_DATETIME(), nullable=False),
        sa.Column("ended_at", UTC_DATETIME(), nullable=True),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_dashboard_sessions_key_ref", "dashboard_sessions", ["key_ref"])
    op.create_index(
        "ix_dashboard_sessions_expires_at", "dashboard_sessions", ["expires_at"]
    )
    op.create_table(
        "channel_spend",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("utm_campaign", sa.String(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("period_end", sa.Date(), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("updated_at", UTC_DATETIME(), nullable=False),
        sa.Column("updated_by", sa.String(), nullable=False),
        sa.UniqueConstraint("channel", "utm_campaign", "period_start", "period_end"),
    )

    # The funnel selects enrollments by start time (and campaign) and reads
    # replies and unsubscribes by event type; attribution reads converted
    # leads' first conversions and then their messages in send order.
    op.create_index(
        "ix_enrollments_campaign_enrolled_at",
        "enrollments",
        ["campaign_id", "enrolled_at"],
    )
    op.create_index("ix_enrollments_enrolled_at", "enrollments", ["enrolled_at"])
    op.create_index("ix_messages_lead_sent_at", "messages", ["lead_id", "sent_at"])
    op.create_index(
        "ix_engagement_events_type_message",
        "engagement_events",
        ["type", "message_id"],
    )
    op.create_index(
        "ix_lead_outcomes_outcome_lead",
        "lead_outcomes",
        ["outcome", "lead_id", "occurred_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_lead_outcomes_outcome_lead", "lead_outcomes")
    op.drop_index("ix_engagement_events_type_message", "engagement_events")
    op.drop_index("ix_messages_lead_sent_at", "messages")
    op.drop_index("ix_enrollments_enrolled_at", "enrollments")
    op.drop_index("ix_enrollments_campaign_enrolled_at", "enrollments")
    op.drop_table("channel_spend")
    op.drop_index("ix_dashboard_sessions_expires_at", "dashboard_sessions")
    op.drop_index("ix_dashboard_sessions_key_ref", "dashboard_sessions")
    op.drop_table("dashboard_sessions")
    op.drop_table("split_decisions")
    op.drop_index("ix_split_assignments_split", "split_assignments")
    op.drop_table("split_assignments")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER leads_mql_at ON leads")
        op.execute("DROP FUNCTION leads_set_mql_at()")
    else:
        op.execute("DROP TRIGGER leads_mql_at_insert")
        op.execute("DROP TRIGGER leads_mql_at_update")
    with op.batch_alter_table("leads") as batch:
        batch.drop_column("mql_at")
