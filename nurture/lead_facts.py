"""The facts that campaign conditions are evaluated against, read from the database."""

from datetime import datetime
from typing import Any

from sqlmodel import Session, col, select

from nurture.conditions import EventFacts, Facts, MessageFacts
from nurture.leads import LeadPublic
from nurture.models import EngagementEvent, Lead, Message

# Behavior events considered, newest first; older ones matter to no condition
# that a campaign can express within the 365-day maximum duration.
MAX_EVENTS = 5000


def lead_document(lead: Lead) -> dict[str, Any]:
    """Return the lead's camelCase JSON, as conditions name its fields."""
    return LeadPublic.from_lead(lead).model_dump(mode="json")


def build_facts(
    session: Session,
    lead: Lead,
    now: datetime,
    enrollment_id: str | None = None,
    previous_message_id: str | None = None,
) -> Facts:
    """Gather a lead's fields, its enrollment's messages and its events."""
    messages: tuple[MessageFacts, ...] = ()
    if enrollment_id is not None:
        rows = session.exec(
            select(Message).where(Message.enrollment_id == enrollment_id)
        ).all()
        messages = tuple(
            MessageFacts(
                message_id=message.id,
                template=message.template,
                opened=message.opened_at is not None,
                clicked=message.clicked_at is not None,
            )
            for message in rows
        )
    events = session.exec(
        select(EngagementEvent.type, EngagementEvent.occurred_at)
        .where(EngagementEvent.lead_id == lead.id)
        .order_by(col(EngagementEvent.occurred_at).desc())
        .limit(MAX_EVENTS)
    ).all()
    return Facts(
        lead=lead_document(lead),
        previous_message_id=previous_message_id,
        messages=messages,
        events=tuple(EventFacts(type=kind, occurred_at=at) for kind, at in events),
        now=now,
    )
