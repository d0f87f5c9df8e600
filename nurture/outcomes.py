"""Outcomes: whether a lead became a customer, the label the model learns from."""

from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import AwareDatetime, Field, field_validator
from sqlmodel import Session

from nurture.models import Lead, LeadOutcome, utcnow
from nurture.schemas import CamelModel, StrictCamelModel

Outcome = Literal["converted", "lost"]


class OutcomeIn(StrictCamelModel):
    """The final result of a lead, as sales records it."""

    outcome: Outcome
    value: Decimal | None = Field(
        None, ge=0, max_digits=14, decimal_places=2, description="Deal value."
    )
    currency: str | None = Field(
        None, pattern="^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR."
    )
    occurred_at: AwareDatetime | None = Field(
        None, description="When it happened; the time of recording when left out."
    )
    note: str | None = Field(None, max_length=1000)

    @field_validator("outcome", mode="before")
    @classmethod
    def _any_case(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value


class OutcomePublic(CamelModel):
    id: int
    lead_id: str
    outcome: Outcome
    value: Decimal | None
    currency: str | None
    occurred_at: datetime
    recorded_at: datetime
    source: str
    recorded_by: str
    note: str | None


def record_outcome(
    session: Session, lead: Lead, outcome: OutcomeIn, source: str, actor: str
) -> LeadOutcome:
    """Store an outcome and copy it onto the lead when it is the newest.

    A conversion also makes the lead a customer, the last stage.
    """
    occurred_at = outcome.occurred_at or utcnow()
    row = LeadOutcome(
        lead_id=lead.id,
        outcome=outcome.outcome,
        value=outcome.value,
        currency=outcome.currency,
        occurred_at=occurred_at,
        source=source,
        recorded_by=actor,
        note=outcome.note,
    )
    session.add(row)
    if lead.outcome_at is None or occurred_at >= lead.outcome_at:
        lead.outcome = outcome.outcome
        lead.outcome_at = occurred_at
        if outcome.outcome == "converted":
            lead.stage = "customer"
        lead.updated_at = utcnow()
        session.add(lead)
    return row


def outcome_public(row: LeadOutcome) -> OutcomePublic:
    return OutcomePublic(
        id=row.id or 0,
        lead_id=row.lead_id,
        outcome=row.outcome,  # type: ignore[arg-type]
        value=row.value,
        currency=row.currency,
        occurred_at=row.occurred_at,
        recorded_at=row.recorded_at,
        source=row.source,
        recorded_by=row.recorded_by,
        note=row.note,
    )
