"""Inputs, outputs, signals and query results of the workflows and activities.

These models cross the Temporal boundary through the pydantic data converter,
so each call takes one model: new fields with defaults keep running workflows
compatible.
"""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from nurture.campaigns import CampaignSpec, LocalTime, SendRules
from nurture.scoring import DimensionScore, Reason


class BehaviorSignal(BaseModel):
    """Something the lead did: a stored engagement event, by id."""

    event_id: str | None = None
    type: str
    message_id: str | None = None
    url: str | None = None


class EngagementSignal(BaseModel):
    """An engagement with one of the enrollment's messages (open, click, bounce)."""

    message_id: str
    type: str
    occurred_at: datetime | None = None
    url: str | None = None


class LeadEventSignal(BaseModel):
    """Something the lead did or became, forwarded to its live enrollments."""

    type: str
    stage: str | None = None
    message_id: str | None = None
    url: str | None = None


class PauseSignal(BaseModel):
    paused: bool


class MigrateSignal(BaseModel):
    """Move an enrollment to a newer campaign version at its next step."""

    campaign_version: int
    campaign: CampaignSpec


class ScoreSnapshot(BaseModel):
    score: int = 0
    stage: str = "new"
    dimensions: dict[str, DimensionScore] = Field(default_factory=dict)
    reasons: list[Reason] = Field(default_factory=list)
    scored_at: datetime | None = None
    rules_score: int | None = None
    conversion_probability: float | None = None
    model_version: int | None = None


class LeadState(BaseModel):
    """The lead workflow's state, carried across continue-as-new."""

    lead_id: str
    initialized: bool = False
    current: ScoreSnapshot = Field(default_factory=ScoreSnapshot)
    events_seen: int = 0
    last_event_type: str | None = None
    last_event_at: datetime | None = None
    started_enrollments: list[str] = Field(default_factory=list)
    # Workflow ids of the lead's live enrollments, which its events are sent to.
    live_enrollments: list[str] = Field(default_factory=list)
    # Whether the lead was handed to sales (a sales task) on becoming an MQL.
    handed_off: bool = False


class LeadWorkflowInput(BaseModel):
    lead_id: str
    state: LeadState | None = None
    # Signals handled per run before continuing as new, besides the server's
    # own history-size suggestion; tests lower it to exercise the hand-over.
    max_events_per_run: int = 500


class EnrichLeadInput(BaseModel):
    lead_id: str


class ScoreLeadInput(BaseModel):
    lead_id: str


class PlanEnrollmentsInput(BaseModel):
    lead_id: str
    score: int
    event: Literal["created", "behavior"]
    already_started: list[str] = Field(default_factory=list)
    event_types: list[str] = Field(default_factory=list)
    now: datetime | None = None


class EnrollmentPlan(BaseModel):
    enrollment_id: str
    workflow_id: str
    lead_id: str
    campaign_id: str
    campaign_version: int
    campaign: CampaignSpec


class EnrollmentPlans(BaseModel):
    plans: list[EnrollmentPlan] = Field(default_factory=list)
    live_workflow_ids: list[str] = Field(default_factory=list)


class NurtureInput(BaseModel):
    """One enrollment: the campaign version frozen when the lead entered."""

    enrollment_id: str
    lead_id: str
    campaign_id: str
    campaign_version: int
    campaign: CampaignSpec


StepStatus = Literal["sent", "skipped", "failed", "waited", "branched", "exited"]


class StepRecord(BaseModel):
    # Runs of the first release recorded step numbers; read them as ids.
    model_config = ConfigDict(coerce_numbers_to_str=True)

    step: str
    status: StepStatus
    message_id: str | None = None
    at: datetime
    detail: str | None = None


class NurtureState(BaseModel):
    """The live state of one enrollment, as its query returns it."""

    model_config = ConfigDict(coerce_numbers_to_str=True)

    enrollment_id: str
    lead_id: str
    campaign_id: str
    campaign_version: int
    status: Literal["active", "completed", "converted", "archived", "failed"] = "active"
    current_step: str | None = None
    next_step: str | None = None
    next_step_due_at: datetime | None = None
    # Why the enrollment is waiting: a delay, quiet hours, a frequency cap...
    waiting_reason: str | None = None
    paused: bool = False
    goal: str | None = None
    variants: dict[str, str] = Field(default_factory=dict)
    # A version the enrollment will move to at its next step.
    pending_version: int | None = None
    steps: list[StepRecord] = Field(default_factory=list)
    opened_message_ids: list[str] = Field(default_factory=list)
    clicked_message_ids: list[str] = Field(default_factory=list)


class PrepareMessageInput(BaseModel):
    message_id: str
    # The workflow's clock when the send was due, used for frequency caps.
    scheduled_at: datetime | None = None
    variant: str | None = None
    lead_id: str
    enrollment_id: str | None = None
    campaign_id: str | None = None
    campaign_version: int | None = None
    step: int | None = None
    channel: Literal["email", "sms", "task"]
    template: str
    personalization: dict[str, str] = Field(default_factory=dict)


class PreparedMessage(BaseModel):
    message_id: str
    status: str
    skipped_reason: str | None = None
    # Set when a frequency cap defers the send: try again at this time.
    deferred_until: datetime | None = None
    deferred_reason: str | None = None


class EvaluateConditionInput(BaseModel):
    lead_id: str
    condition: str
    enrollment_id: str | None = None
    previous_message_id: str | None = None
    now: datetime


class PlanSendInput(BaseModel):
    lead_id: str
    campaign_id: str
    channel: str
    send_rules: SendRules = Field(default_factory=SendRules)
    earliest: datetime


class PlannedSend(BaseModel):
    send_at: datetime
    reason: str | None = None
    campaign_status: str = "active"


class LocalTimeInput(BaseModel):
    lead_id: str
    after: datetime
    until: LocalTime
    timezone: str | None = None


class DeliverMessageInput(BaseModel):
    message_id: str


class DeliveryResult(BaseModel):
    message_id: str
    # sent, or suppressed (consent or suppression stopped it at send time), or
    # unconfirmed (an interrupted attempt the provider cannot account for).
    status: str
    provider_message_id: str | None = None
    reason: str | None = None


class MessageEngagementInput(BaseModel):
    message_id: str


class MessageEngagement(BaseModel):
    opened: bool = False
    clicked: bool = False


class EndEnrollmentInput(BaseModel):
    enrollment_id: str
    status: Literal["completed", "converted", "archived", "failed"]
    goal: str | None = None


class RecordMigrationInput(BaseModel):
    enrollment_id: str
    campaign_version: int


class CrmSyncInput(BaseModel):
    lead_id: str
    reason: str


class TrainModelInput(BaseModel):
    """Train the model stored as `version`, with the options stored beside it."""

    version: int


class TrainingFailure(BaseModel):
    version: int
    error: str


class RescoreBatchInput(BaseModel):
    """Rescore the leads after `after_id` in id order, at most `limit` of them."""

    after_id: str = ""
    limit: int = 2000


class RescoreBatchResult(BaseModel):
    rescored: int
    last_id: str | None = None
    # Leads whose stage changed, whose workflows must hear of it.
    stage_changed: list[str] = Field(default_factory=list)


class RescoreInput(BaseModel):
    batch_size: int = 2000
    rescored: int = 0
    after_id: str = ""
