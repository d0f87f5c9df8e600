"""Campaign definitions: a small journey language, validated before anything runs.

A campaign is a trigger, optional goals and send rules, and a `sequence` of
steps. Steps run in list order unless one names its successor with `next`
(or `then`/`else`, `onEvent`/`onTimeout`, a split variant's `next`), so the
original format, a plain list of delayed sends, is still valid.

Step types: `send` (email, sms, or a sales `task`), `wait` (a duration, or
until a local time on chosen weekdays), `wait_for_event` (with a timeout and
a successor for each outcome), `branch` (on a condition), `split` (weighted
random variants, stable per lead) and `exit`.
"""

import hashlib
import re
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

from nurture.conditions import EVENT_TYPES, Condition, ConditionError, parse_condition
from nurture.durations import parse_duration
from nurture.schemas import StrictCamelModel
from nurture.sendtime import (
    WEEKDAYS,
    QuietHours,
    SendWindow,
    next_send_time,
    validate_timezone,
)

Channel = Literal["email", "sms", "task"]
_A_MONDAY = datetime(2026, 1, 5, tzinfo=UTC)
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_STEP_ID = r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$"
_TEMPLATE = r"^[a-z0-9_][a-z0-9_\-]*$"
TEMPLATE_NAME = re.compile(_TEMPLATE)


def _check_condition(text: str | None) -> str | None:
    if text is not None:
        try:
            parse_condition(text)
        except ConditionError as error:
            raise ValueError(str(error)) from None
    return text


# Events a goal or a wait can name: the condition language's, plus the stage
# changes that the lead workflow forwards.
GOAL_EVENTS = (*EVENT_TYPES, "bounce", "unsubscribe", "spamreport")


def _check_event(name: str | None) -> str | None:
    if name is None or name in GOAL_EVENTS:
        return name
    if name.startswith("custom:") and len(name) > len("custom:"):
        return name
    raise ValueError(
        f"unknown event {name!r}: use one of {', '.join(GOAL_EVENTS)}, or custom:<name>"
    )


def _check_duration(text: str | None) -> str | None:
    if text is not None:
        parse_duration(text)
    return text


class StepConditions(StrictCamelModel):
    """Engagement with the previous step's message that a send step requires."""

    email_opened: bool | None = Field(
        None, description="true: send only if the previous email was opened."
    )
    email_clicked: bool | None = Field(
        None, description="true: send only if the previous email was clicked."
    )

    def as_expression(self) -> str | None:
        """Write the same requirement in the condition language."""
        parts = []
        if self.email_opened is not None:
            parts.append(("" if self.email_opened else "not ") + 'opened("previous")')
        if self.email_clicked is not None:
            parts.append(("" if self.email_clicked else "not ") + 'clicked("previous")')
        return " and ".join(parts) or None


class StepBase(StrictCamelModel):
    id: str | None = Field(None, pattern=_STEP_ID, max_length=64)
    step: int | None = Field(None, ge=1, description="Legacy step number.")
    next: str | None = Field(None, description="Id of the step after this one.")


class SendStep(StepBase):
    type: Literal["send"] = "send"
    delay: str = Field("0 hours", description='Wait before sending, e.g. "24 hours".')
    channel: Channel
    template: str = Field(pattern=_TEMPLATE, max_length=100)
    personalization: dict[str, str] = Field(default_factory=dict)
    conditions: StepConditions | None = None
    condition: str | None = Field(
        None, description="Send only when this condition is true; skip otherwise."
    )
    on_failure: Literal["continue", "exit"] = Field(
        "continue",
        description=(
            "When the provider refuses the message for good (an invalid "
            "address, an opted-out number): go on with the next step, or end "
            "the enrollment as failed."
        ),
    )

    _delay = field_validator("delay")(_check_duration)
    _condition = field_validator("condition")(_check_condition)

    @property
    def delay_timedelta(self) -> timedelta:
        return parse_duration(self.delay)

    def gate(self) -> str | None:
        """Return the condition this send requires, combining both ways to write it."""
        parts = [
            c
            for c in (
                self.conditions and self.conditions.as_expression(),
                self.condition,
            )
            if c
        ]
        if len(parts) == 2:
            return f"({parts[0]}) and ({parts[1]})"
        return parts[0] if parts else None


class LocalTime(StrictCamelModel):
    """A local time of day on chosen weekdays, in the lead's time zone."""

    time: time
    days: list[Weekday] = Field(default_factory=lambda: list(WEEKDAYS), min_length=1)


class WaitStep(StepBase):
    type: Literal["wait"]
    duration: str | None = Field(None, description='"2 days" or ISO 8601 "P1DT2H".')
    until: LocalTime | None = None

    _duration = field_validator("duration")(_check_duration)

    @model_validator(mode="after")
    def _one_of(self) -> "WaitStep":
        if (self.duration is None) == (self.until is None):
            raise ValueError("a wait step needs exactly one of duration or until")
        return self


class WaitForEventStep(StepBase):
    type: Literal["wait_for_event"]
    event: str = Field(description="open, click, replied, page_view, custom:<name>...")
    url_contains: str | None = Field(
        None, description="Only an event whose URL contains this text counts."
    )
    timeout: str
    on_event: str | None = None
    on_timeout: str | None = None

    _timeout = field_validator("timeout")(_check_duration)
    _event = field_validator("event")(_check_event)


class BranchStep(StepBase):
    type: Literal["branch"]
    condition: str
    then: str | None = None
    else_: str | None = Field(None, alias="else")

    _condition = field_validator("condition")(_check_condition)


class Variant(StrictCamelModel):
    name: str = Field(min_length=1, max_length=64)
    weight: float = Field(gt=0)
    next: str | None = None


# The z-test behind the winner rule relies on the normal approximation, which
# is poor on fewer leads than this.
MIN_LEADS_PER_VARIANT = 30


class WinnerRule(StrictCamelModel):
    """Rule for when a split stops drawing and sends every new lead to its winner."""

    min_leads_per_variant: int = Field(
        description="Leads each variant must have drawn before the rule is checked.",
        le=10_000_000,
    )
    significance: float = Field(
        0.05,
        gt=0,
        le=0.2,
        description="Two-sided significance level of the z-test against control.",
    )

    @field_validator("min_leads_per_variant")
    @classmethod
    def _enough_leads(cls, value: int) -> int:
        if value < MIN_LEADS_PER_VARIANT:
            raise ValueError(
                f"minLeadsPerVariant must be at least {MIN_LEADS_PER_VARIANT}, "
                f"got {value}: the z-test's normal approximation is unreliable "
                "on fewer leads"
            )
        return value


class SplitStep(StepBase):
    type: Literal["split"]
    variants: list[Variant] = Field(min_length=2, max_length=20)
    winner: WinnerRule | None = Field(
        None,
        description="Decide a winner automatically; the first variant is the control.",
    )

    @field_validator("variants")
    @classmethod
    def _unique_names(cls, variants: list[Variant]) -> list[Variant]:
        names = [variant.name for variant in variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        return variants

    def choose(self, key: str) -> Variant:
        """Pick a variant by weight, always the same one for the same key."""
        digest = hashlib.sha256(key.encode()).digest()
        point = (
            int.from_bytes(digest[:8], "big")
            / 2**64
            * sum(variant.weight for variant in self.variants)
        )
        for variant in self.variants:
            point -= variant.weight
            if point < 0:
                return variant
        return self.variants[-1]


class ExitStep(StepBase):
    type: Literal["exit"]


def _step_type(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("type", "send"))
    return str(getattr(value, "type", "send"))


Step = Annotated[
    Annotated[SendStep, Tag("send")]
    | Annotated[WaitStep, Tag("wait")]
    | Annotated[WaitForEventStep, Tag("wait_for_event")]
    | Annotated[BranchStep, Tag("branch")]
    | Annotated[SplitStep, Tag("split")]
    | Annotated[ExitStep, Tag("exit")],
    Discriminator(
        _step_type,
        custom_error_type="invalid_step_type",
        custom_error_message=(
            "unknown step type: use send, wait, wait_for_event, branch, split or exit"
        ),
    ),
]
STEP_ADAPTER: TypeAdapter[Step] = TypeAdapter(Step)


class Trigger(StrictCamelModel):
    """When a lead enters the campaign."""

    type: Literal["lead_score", "lead_created", "behavior", "manual"]
    condition: str | None = Field(
        None, description='A condition the lead must meet, e.g. "score >= 50".'
    )
    sources: list[str] | None = Field(
        None, description="lead_created: only leads from these source channels."
    )
    event: str | None = Field(
        None, description="behavior: the event type that enrolls."
    )

    _condition = field_validator("condition")(_check_condition)

    @model_validator(mode="after")
    def _check_type(self) -> "Trigger":
        if self.type == "lead_score" and self.condition is None:
            raise ValueError(
                'a lead_score trigger needs a condition, e.g. "score >= 50"'
            )
        if self.type == "behavior" and not self.event:
            raise ValueError(
                'a behavior trigger needs an event, e.g. "content_download"'
            )
        return self

    def parsed_condition(self) -> Condition | None:
        return parse_condition(self.condition) if self.condition else None


class Goal(StrictCamelModel):
    """An outcome that ends the enrollment at once and counts as a conversion."""

    id: str | None = Field(None, pattern=_STEP_ID, max_length=64)
    event: str | None = Field(None, description="converted, replied, custom:<name>...")
    stage: Literal["engaged", "mql", "sql", "customer"] | None = None

    _event = field_validator("event")(_check_event)

    @model_validator(mode="after")
    def _one_of(self) -> "Goal":
        if (self.event is None) == (self.stage is None):
            raise ValueError("a goal needs exactly one of event or stage")
        return self

    @property
    def name(self) -> str:
        return self.id or (f"stage:{self.stage}" if self.stage else str(self.event))


class SendRules(StrictCamelModel):
    """When this campaign's messages may go out, in each lead's own time zone."""

    timezone: str | None = Field(
        None, description="Zone for leads whose own zone is unknown."
    )
    send_window: SendWindow | None = None
    quiet_hours: QuietHours | None = None
    send_time_optimization: bool = False

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str | None) -> str | None:
        return validate_timezone(value) if value is not None else None

    @model_validator(mode="after")
    def _leaves_time_to_send(self) -> "SendRules":
        try:
            next_send_time(_A_MONDAY, "UTC", self.send_window, self.quiet_hours)
        except ValueError:
            raise ValueError(
                "sendWindow and quietHours leave no time to send: the window lies "
                "inside the quiet hours"
            ) from None
        return self


_REENTRY = re.compile(r"^once every (\d+) days?$")


class CampaignSpec(StrictCamelModel):
    """A campaign as submitted: trigger, goals, send rules and steps."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    status: Literal["draft", "active"] = "active"
    trigger: Trigger
    reentry: str = Field(
        "once", description='"once", "always", or "once every N days".'
    )
    goals: list[Goal] = Field(default_factory=list, max_length=20)
    send_rules: SendRules = Field(default_factory=SendRules)
    sequence: list[Step] = Field(min_length=1, max_length=200)

    @field_validator("reentry")
    @classmethod
    def _check_reentry(cls, value: str) -> str:
        if value in ("once", "always") or _REENTRY.match(value):
            return value
        raise ValueError(
            f'invalid reentry {value!r}: use "once", "always" or "once every N days"'
        )

    @property
    def reentry_days(self) -> int | None:
        """Days before a lead may enter again: None never, 0 at once."""
        if self.reentry == "once":
            return None
        if self.reentry == "always":
            return 0
        match = _REENTRY.match(self.reentry)
        assert match is not None
        return int(match.group(1))

    def step_ids(self) -> list[str]:
        return [step_id(step, index) for index, step in enumerate(self.sequence)]

    def steps_by_id(self) -> dict[str, Any]:
        return dict(zip(self.step_ids(), self.sequence, strict=True))

    def following(self, index: int) -> str | None:
        """Return the id of the step after position `index` in list order, if any."""
        ids = self.step_ids()
        return ids[index + 1] if index + 1 < len(ids) else None


def step_id(step: Any, index: int) -> str:
    """Return a step's id: its `id`, else its `step` number, else its position."""
    if isinstance(step, dict):
        explicit, number = step.get("id"), step.get("step")
    else:
        explicit, number = step.id, step.step
    if isinstance(explicit, str) and explicit:
        return explicit
    if isinstance(number, int) and not isinstance(number, bool):
        return str(number)
    return f"step-{index + 1}"


def slugify(name: str) -> str:
    """Turn a campaign name into a readable id, as used in workflow ids."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:60].rstrip("-") or "campaign"
