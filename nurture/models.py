"""Database tables. Every change to them needs an Alembic migration in migrations/."""

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Field, SQLModel, col


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
    company_growth_stage: str | None = None
    company_technologies: list[str] = Field(default_factory=list, sa_type=JSON)
    job_title: str | None = None
    # The lead's id in the system it came from (a CSV import, a partner).
    external_id: str | None = Field(default=None, unique=True)

    source_channel: str | None = Field(default=None, index=True)
    source_campaign: str | None = None
    source_medium: str | None = None
    source_content: str | None = None

    custom_fields: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    enrichment: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)

    # Behavior totals brought in by an import, with the time they were true
    # ("asOf"), added to the behavior events when scoring.
    activity: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)

    score: int = Field(default=0, index=True)
    score_reasons: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    scored_at: datetime | None = _optional_timestamp()
    rules_score: int | None = None
    conversion_probability: float | None = None
    # The model's explanation of its probability for this lead.
    model_contributions: list[dict[str, Any]] = Field(
        default_factory=list, sa_type=JSON
    )
    criteria_version: int | None = None
    model_version: int | None = None
    # The latest recorded outcome: "converted" or "lost".
    outcome: str | None = Field(default=None, index=True)
    outcome_at: datetime | None = _optional_timestamp()
    stage: str = "new"
    # When the stage first reached mql or a later stage. A database trigger
    # sets it on every write path (migration 0007); leads that were past mql
    # before that migration keep None.
    mql_at: datetime | None = _optional_timestamp()
    status: str = Field(default="active", index=True)
    # The lead's latest consent per channel: "opted_in", "opted_out" or
    # "unknown". consent_records keeps every change with its source and proof.
    email_consent: str = "unknown"
    sms_consent: str = "unknown"
    # The contact's id in the CRM, once a sync created or found it there.
    crm_id: str | None = Field(default=None, index=True)
    crm_synced_at: datetime | None = _optional_timestamp()
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
    # queued -> sending -> sent -> delivered -> opened -> clicked, or failed,
    # bounced, or suppressed when consent or suppression stopped it at send time.
    status: str = Field(default="queued", index=True)
    variant: str | None = None
    provider: str
    # Provider calls made for this message, and when the latest began. A row
    # left "sending" means a call may have reached the provider, so the next
    # attempt looks the message up at the provider before it sends again.
    attempts: int = 0
    sending_at: datetime | None = _optional_timestamp()
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


class LeadOutcome(SQLModel, table=True):
    """A recorded outcome of a lead; the newest one is copied onto the lead."""

    __tablename__ = "lead_outcomes"

    id: int | None = Field(default=None, primary_key=True)
    lead_id: str = Field(foreign_key="leads.id", index=True)
    outcome: str
    value: Decimal | None = Field(default=None, sa_type=sa.Numeric(14, 2))
    currency: str | None = None
    occurred_at: datetime = _timestamp()
    recorded_at: datetime = _timestamp()
    # "api", or "import:<import id>".
    source: str
    recorded_by: str
    note: str | None = None


class ScoringCriteriaVersion(SQLModel, table=True):
    """One version of the scoring criteria; the highest version is in force."""

    __tablename__ = "scoring_criteria_versions"

    version: int | None = Field(default=None, primary_key=True)
    criteria: dict[str, Any] = Field(sa_type=JSON)
    created_at: datetime = _timestamp()
    created_by: str
    note: str | None = None


class ScoringModel(SQLModel, table=True):
    """A trained conversion model: its artifact, metrics and lifecycle."""

    __tablename__ = "scoring_models"

    version: int | None = Field(default=None, primary_key=True)
    # "training", "ready" or "failed".
    status: str = Field(default="training", index=True)
    stage: str = "queued"
    progress: float = 0.0
    options: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    metrics: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    features: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    dropped_features: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    error: str | None = None
    artifact: bytes | None = Field(default=None, sa_type=sa.LargeBinary)
    workflow_id: str | None = None
    created_at: datetime = _timestamp()
    created_by: str
    finished_at: datetime | None = _optional_timestamp()
    promoted: bool = Field(default=False, index=True)
    promoted_at: datetime | None = _optional_timestamp()


class LeadImport(SQLModel, table=True):
    """A CSV import: its progress while it runs and its report after."""

    __tablename__ = "lead_imports"

    id: str = Field(default_factory=new_id, primary_key=True)
    # "running", "completed" or "failed".
    status: str = "running"
    filename: str | None = None
    mapping: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_by: str
    created_at: datetime = _timestamp()
    finished_at: datetime | None = _optional_timestamp()
    rows_read: int = 0
    accepted: int = 0
    merged: int = 0
    rejected: int = 0
    outcomes: int = 0
    # The first rejected rows with their reasons; `rejected` counts them all.
    errors: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSON)
    error: str | None = None


class ConsentRecord(SQLModel, table=True):
    """One change of a lead's consent for a channel, with where it came from.

    The ledger is append-only; the lead's `email_consent` and `sms_consent`
    hold the latest status by `occurred_at`.
    """

    __tablename__ = "consent_records"

    id: int | None = Field(default=None, primary_key=True)
    lead_id: str = Field(foreign_key="leads.id", index=True)
    channel: str
    # "opted_in" or "opted_out".
    status: str
    # The origin of the change: form, api, import, unsubscribe_link,
    # sendgrid, twilio.
    source: str
    # What proves it: the form's page and IP, the SMS keyword and its SID, the
    # provider event id.
    proof: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    occurred_at: datetime = _timestamp()
    recorded_at: datetime = _timestamp()
    recorded_by: str


class Suppression(SQLModel, table=True):
    """An address that must get nothing more on a channel, and why.

    Kept by address, not by lead, so a lead captured again with the same
    address stays suppressed.
    """

    __tablename__ = "suppressions"
    # Ids are in DELETE URLs, so SQLite must not hand a lifted one out again.
    __table_args__ = (
        sa.UniqueConstraint("channel", "address"),
        {"sqlite_autoincrement": True},
    )

    id: int | None = Field(default=None, primary_key=True)
    channel: str
    # The lower-cased email address or the E.164 phone number.
    address: str
    # bounce, blocked, dropped, spamreport, invalid_address, invalid_number,
    # unsubscribed_at_provider.
    reason: str
    source: str
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    created_at: datetime = _timestamp()


class EnrichmentCacheEntry(SQLModel, table=True):
    """A company lookup from the enrichment provider, kept until it expires."""

    __tablename__ = "enrichment_cache"

    key: str = Field(primary_key=True)
    provider: str
    data: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    fetched_at: datetime = _timestamp()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)


class ApiKey(SQLModel, table=True):
    """An API key with a role. Only a SHA-256 hash of the key is stored."""

    __tablename__ = "api_keys"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    name: str
    # admin, marketer, sales_rep or integration.
    role: str
    # The first characters of the key, to tell keys apart in lists and logs.
    prefix: str
    key_hash: str = Field(unique=True)
    created_at: datetime = _timestamp()
    created_by: str
    expires_at: datetime | None = _optional_timestamp()
    revoked_at: datetime | None = _optional_timestamp()
    last_used_at: datetime | None = _optional_timestamp()


class Erasure(SQLModel, table=True):
    """The record that a lead's personal data was erased, holding none of it.

    `removed` counts what was deleted or blanked per table; `workflows` counts
    the Temporal executions deleted. The status stays "pending_workflows"
    until Temporal has deleted every execution of the lead.
    """

    __tablename__ = "erasures"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    lead_id: str = Field(index=True, unique=True)
    requested_by: str
    # Why, in the requester's words: a ticket number, not the person's name.
    reference: str | None = None
    # "pending_workflows" or "completed".
    status: str = Field(default="pending_workflows", index=True)
    removed: dict[str, int] = Field(default_factory=dict, sa_type=JSON)
    workflows: dict[str, int] = Field(default_factory=dict, sa_type=JSON)
    error: str | None = None
    erased_at: datetime = _timestamp()
    completed_at: datetime | None = _optional_timestamp()


class SplitAssignment(SQLModel, table=True):
    """The variant an enrollment took at a split step, stored when it got there."""

    __tablename__ = "split_assignments"
    __table_args__ = (
        # A journey that loops through a split keeps its first variant.
        sa.UniqueConstraint("enrollment_id", "step_id"),
        sa.Index(
            "ix_split_assignments_split",
            "campaign_id",
            "step_id",
            "variant",
            "assigned_at",
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    enrollment_id: str = Field(foreign_key="enrollments.id")
    campaign_id: str = Field(foreign_key="campaigns.id")
    campaign_version: int
    step_id: str
    variant: str
    # True when a winner decision chose the variant instead of the weighted
    # draw. A/B results count drawn variants only.
    by_winner: bool = False
    # The workflow's clock when the enrollment reached the split.
    assigned_at: datetime = _timestamp()


class SplitDecision(SQLModel, table=True):
    """A split's winner, chosen by its winner rule, with the figures behind it."""

    __tablename__ = "split_decisions"
    __table_args__ = (sa.UniqueConstraint("campaign_id", "step_id"),)

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: str = Field(foreign_key="campaigns.id")
    # The version whose rule fired; later versions keep the decision while
    # their split step has a variant of that name.
    campaign_version: int
    step_id: str
    winner: str
    control: str
    decided_at: datetime = _timestamp()
    # "rule" when the winner rule fired, else the actor who declared it.
    decided_by: str = "rule"
    # The rule as declared: minLeadsPerVariant and significance.
    rule: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # Each variant's leads, conversions, rate, z and p-value at decision time.
    figures: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    # A withdrawn decision sends no one to its winner, and keeps the rule
    # from firing again: the split draws at random until a person declares.
    withdrawn_at: datetime | None = _optional_timestamp()
    withdrawn_by: str | None = None


class ChannelSpend(SQLModel, table=True):
    """Money spent on a source channel, or one UTM campaign of it, in a period."""

    __tablename__ = "channel_spend"
    __table_args__ = (
        sa.UniqueConstraint("channel", "utm_campaign", "period_start", "period_end"),
    )

    id: int | None = Field(default=None, primary_key=True)
    # A lead's source channel (utm_source), as leads.source_channel stores it.
    channel: str
    # A lead's UTM campaign, or "" for spend on the whole channel. Not NULL,
    # so the unique constraint also holds for whole-channel entries.
    utm_campaign: str = ""
    # The first and last day of the period (UTC), both included.
    period_start: date = Field(sa_type=sa.Date)
    period_end: date = Field(sa_type=sa.Date)
    amount: Decimal = Field(sa_type=sa.Numeric(14, 2))
    # ISO 4217 code.
    currency: str
    updated_at: datetime = _timestamp()
    updated_by: str


# Indexes of tables above that the analytics queries need (migration 0007):
# enrollments by start time, each lead's messages in send order, replies and
# unsubscribes by event type, and first conversions per lead.
sa.Index(
    "ix_enrollments_campaign_enrolled_at",
    col(Enrollment.campaign_id),
    col(Enrollment.enrolled_at),
)
sa.Index("ix_enrollments_enrolled_at", col(Enrollment.enrolled_at))
sa.Index("ix_messages_lead_sent_at", col(Message.lead_id), col(Message.sent_at))
sa.Index(
    "ix_engagement_events_type_message",
    col(EngagementEvent.type),
    col(EngagementEvent.message_id),
)
sa.Index(
    "ix_lead_outcomes_outcome_lead",
    col(LeadOutcome.outcome),
    col(LeadOutcome.lead_id),
    col(LeadOutcome.occurred_at),
)


class DashboardSession(SQLModel, table=True):
    """A dashboard sign-in. The cookie contains a random token; this row its hash.

    `key_ref` is the api_keys id, or "installation" for NURTURE_API_KEY, and
    `key_fingerprint` the key's hash at sign-in, so a replaced key ends the
    session. Signing out sets `ended_at`; the row goes a day after expiry.
    """

    __tablename__ = "dashboard_sessions"
    __table_args__ = {"sqlite_autoincrement": True}

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(unique=True)
    key_ref: str = Field(index=True)
    key_fingerprint: str
    created_at: datetime = _timestamp()
    expires_at: datetime = Field(sa_type=UTCDateTime, index=True)
    ended_at: datetime | None = _optional_timestamp()
