"""Campaign definitions as marketers submit them, validated before anything runs."""

import re
from datetime import timedelta
from typing import Literal

from pydantic import Field, field_validator, model_validator

from nurture.durations import parse_duration
from nurture.schemas import StrictCamelModel

# A trigger condition: one comparison of a lead field with a number.
_CONDITION = re.compile(r"^\s*([a-zA-Z_]+)\s*(>=|<=|==|!=|>|<)\s*(-?\d+)\s*$")
CONDITION_FIELDS = ("score",)


class Comparison(StrictCamelModel):
    field: Literal["score"]
    operator: Literal[">=", "<=", "==", "!=", ">", "<"]
    value: int

    def matches(self, value: int) -> bool:
        match self.operator:
            case ">=":
                return value >= self.value
            case "<=":
                return value <= self.value
            case "==":
                return value == self.value
            case "!=":
                return value != self.value
            case ">":
                return value > self.value
            case "<":
                return value < self.value
        return False


def parse_condition(text: str) -> Comparison:
    """Parse a trigger condition such as "score >= 50"."""
    match = _CONDITION.match(text)
    if match is None:
        raise ValueError(
            f"invalid condition {text!r}: write one comparison of a lead field "
            'with a whole number, e.g. "score >= 50"'
        )
    field, operator, value = match.groups()
    if field not in CONDITION_FIELDS:
        raise ValueError(
            f"unknown field {field!r} in condition {text!r}: "
            f"known fields are {', '.join(CONDITION_FIELDS)}"
        )
    return Comparison.model_validate(
        {"field": field, "operator": operator, "value": int(value)}
    )


class Trigger(StrictCamelModel):
    """When a lead enters the campaign."""

    type: Literal["lead_score", "lead_created"]
    condition: str | None = Field(
        None, description='For lead_score: a comparison such as "score >= 50".'
    )

    @field_validator("condition")
    @classmethod
    def _check_condition(cls, value: str | None) -> str | None:
        if value is not None:
            parse_condition(value)
        return value

    @model_validator(mode="after")
    def _require_condition(self) -> "Trigger":
        if self.type == "lead_score" and self.condition is None:
            raise ValueError(
                'a lead_score trigger needs a condition, e.g. "score >= 50"'
            )
        return self

    def matches(self, score: int, event: str) -> bool:
        """Tell whether a lead with this score, after this event, enters."""
        if self.type == "lead_created":
            return event == "created"
        assert self.condition is not None
        return parse_condition(self.condition).matches(score)


class StepConditions(StrictCamelModel):
    """Engagement with the previous step's message that this step requires."""

    email_opened: bool | None = Field(
        None, description="true: send only if the previous email was opened."
    )
    email_clicked: bool | None = Field(
        None, description="true: send only if a link in the previous email was clicked."
    )


class Step(StrictCamelModel):
    step: int = Field(ge=1)
    delay: str = Field(
        "0 hours", description='Wait after the previous step, e.g. "24 hours".'
    )
    channel: Literal["email", "sms"]
    template: str = Field(pattern=r"^[a-z0-9_][a-z0-9_\-]*$", max_length=100)
    personalization: dict[str, str] = Field(default_factory=dict)
    conditions: StepConditions | None = None

    @field_validator("delay")
    @classmethod
    def _check_delay(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def delay_timedelta(self) -> timedelta:
        return parse_duration(self.delay)


class CampaignSpec(StrictCamelModel):
    """A campaign as submitted: its trigger and its sequence of steps."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=2000)
    status: Literal["draft", "active"] = "active"
    trigger: Trigger
    sequence: list[Step] = Field(min_length=1, max_length=100)

    @field_validator("sequence")
    @classmethod
    def _check_step_numbers(cls, steps: list[Step]) -> list[Step]:
        numbers = [step.step for step in steps]
        if numbers != sorted(set(numbers)):
            raise ValueError(
                f"step numbers must be unique and ascending, got {numbers}"
            )
        return steps


def slugify(name: str) -> str:
    """Turn a campaign name into a readable id, as used in workflow ids."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:60].rstrip("-") or "campaign"
