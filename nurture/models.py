"""Database tables. Every change to them needs an Alembic migration in migrations/."""

import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Field, SQLModel


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on PostgreSQL and on SQLite alike.

    SQLite has no time zone type and returns naive values. This type stores UTC
    and marks what it reads as UTC, so comparisons never mix naive and aware.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware value")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def _timestamp(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, **kwargs)


def _optional_timestamp(**kwargs: Any) -> Any:
    return Field(default=None, sa_type=UTCDateTime, **kwargs)


class Lead(SQLModel, table=True):
    __tablename__ = "leads"

    id: str = Field(default_factory=new_id, primary_key=True)
    created_at: datetime = _timestamp(index=True)
    updated_at: datetime = _timestamp()

    first_name: str | None = None
    last_name: str | None = None
    email: str | None = None
    # Lower-cased address: the de-duplication key.
    email_normalized: str | None = Field(default=None, unique=True)
    phone: str | None = Field(default=None, index=True)
    # "valid", or "unverified" when the number parses but no carrier serves it.
    phone_status: str | None = None
    # IANA time zone for sends in the lead's local time, when the lead gave one.
    timezone: str | None = None

    company_name: str | None = None
    company_industry: str | None = None
    company_size: str | None = None
    company_revenue: str | None = None
    company_website: str | None = None
    company_country: str | None = None

    source_channel: str | None = Field(default=None, index=True)
    source_campaign: str | None = None
    source_medium: str | None = None
    source_content: str | None = None

    custom_fields: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    enrichment: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)

    score: int = Field(default=0, index=True)
    score_reasons: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    scored_at: datetime | None = _optional_timestamp()
    stage: str = "new"
    status: str = Field(default="active", index=True)
    # When Temporal last accepted a start or signal for the lead's workflow.
    # None means the last one failed, and the API's reconciler sends it again.
    workflow_synced_at: datetime | None = _optional_timestamp()


class Campaign(SQLModel, table=True):
    __tablename__ = "campaigns"

    id: str = Field(primary_key=True)
    name: str
    description: str | None = None
    status: str = Field(default="active", index=True)
    current_version: int = 1
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()


class CampaignVersion(SQLModel, table=True):
    """One immutable definition of a campaign; an edit stores the next version."""

    __tablename__ = "campaign_versions"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(foreign_key="campaigns.id", index=True)
    version: int
    definition: dict[str, Any] = Field(sa_type=JSON)
    created_at: datetime = _timestamp()


class Enrollment(SQLModel, table=True):
    __tablename__ = "enrollments"
    __table_args__ = (
        # At most one live enrollment of a lead in a campaign.
        sa.Index(
            "ux_enrollments_live",
            "campaign_id",
            "lead_id",
            unique=True,
            sqlite_where=sa.text("status = 'active'"),
            postgresql_where=sa.text("status = 'active'"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True)
    campaign_id: str = Field(foreign_key="campaigns.id", index=True)
    campaign_version: int
    lead_id: str = Field(foreign_key="leads.id", index=True)
    workflow_id: str
    status: str = "active"
    enrolled_at: datetime = _timestamp()
    ended_at: datetime | None = _optional_timestamp()
    # The goal that ended the enrollment, when one did.
    goal: str | None = None


class Message(SQLModel, table=True):
    """The outbox: one row per message, keyed by the id its workflow chose."""

    __tablename__ = "messages"

    id: str = Field(primary_key=True)
    lead_id: str = Field(foreign_key="leads.id", index=True)
    enrollment_id: str | None = Field(default=None, index=True)
    campaign_id: str | None = Field(default=None, index=True)
    campaign_version: int | None = None
    step: int | None = None
    channel: str
    template: str
    to_address: str
    subject: str | None = None
    body: str
    html: str | None = None
    status: str = Field(default="queued", index=True)
    variant: str | None = None
    provider: str
    provider_message_id: str | None = Field(default=None, index=True)
    error: str | None = None
    created_at: datetime = _timestamp()
    updated_at: datetime = _timestamp()
    # When the workflow scheduled the send, on its own clock; frequency caps
    # count messages by this time.
    scheduled_at: datetime | None = _optional_timestamp(index=True)
    sent_at: datetime | None = _optional_timestamp()
    delivered_at: datetime | None = _optional_timestamp()
    opened_at: datetime | None = _optional_timestamp()
    clicked_at: datetime | None = _optional_timestamp()


class EngagementEvent(SQLModel, table=True):
    """A provider webhook event or a website behavior event, stored once."""

    __tablename__ = "engagement_events"

    id: str = Field(default_factory=new_id, primary_key=True)
    lead_id: str | None = Field(default=None, index=True)
    message_id: str | None = Field(default=None, index=True)
    type: str = Field(index=True)
    source: str
    # The provider's own event id (SendGrid sg_event_id), so a redelivered
    # event is stored once.
    provider_event_id: str | None = Field(default=None, unique=True)
    occurred_at: datetime = _timestamp()
    received_at: datetime = _timestamp()
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _timestamp(index=True)
    actor: str
    action: str
    entity_type: str
    entity_id: str = Field(index=True)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
