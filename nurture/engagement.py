"""Storing engagement events once and moving message status forward only."""

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from nurture.models import EngagementEvent, Enrollment, Lead, Message, utcnow

# Message statuses in the order events can move them; a late "delivered"
# never replaces "opened". Bounced and failed end the message.
STATUS_RANK = {
    "queued": 0,
    "sent": 1,
    "delivered": 2,
    "opened": 3,
    "clicked": 4,
    "bounced": 5,
    "failed": 5,
}
SENDGRID_STATUS = {
    "delivered": "delivered",
    "open": "opened",
    "click": "clicked",
    "bounce": "bounced",
    "blocked": "bounced",
    "dropped": "failed",
}
# SendGrid events that change what we may send to the lead's address.
SENDGRID_LEAD_STATUS = {
    "bounce": "bounced",
    "spamreport": "unsubscribed",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}
# Events that the lead's and the enrollment's workflows react to.
SIGNALLED_EVENTS = frozenset(
    {"open", "click", "bounce", "dropped", "spamreport", "unsubscribe"}
)


@dataclass(frozen=True)
class StoredEvent:
    # Our engagement_events row id, which workflow signals carry.
    event_id: str
    type: str
    lead_id: str | None
    message_id: str | None
    enrollment_workflow_id: str | None
    duplicate: bool
    url: str | None = None


def advance_status(message: Message, new_status: str, at: datetime) -> bool:
    """Move a message's status forward; return False when it would go back."""
    timestamps = {
        "delivered": "delivered_at",
        "opened": "opened_at",
        "clicked": "clicked_at",
    }
    column = timestamps.get(new_status)
    if column and getattr(message, column) is None:
        setattr(message, column, at)
    if new_status == "clicked" and message.opened_at is None:
        message.opened_at = at
    if STATUS_RANK.get(new_status, -1) <= STATUS_RANK.get(message.status, -1):
        return False
    message.status = new_status
    message.updated_at = utcnow()
    return True


def _event_id(event: dict[str, Any]) -> str:
    sg_event_id = event.get("sg_event_id")
    if isinstance(sg_event_id, str) and sg_event_id:
        return f"sendgrid:{sg_event_id}"
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"))
    return "sendgrid:sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _find_message(session: Session, event: dict[str, Any]) -> Message | None:
    message_id = event.get("message_id")
    if isinstance(message_id, str) and message_id:
        message = session.get(Message, message_id)
        if message is not None:
            return message
    sg_message_id = event.get("sg_message_id")
    if isinstance(sg_message_id, str) and sg_message_id:
        # Events carry "<X-Message-Id>.<filter suffix>"; we stored the header.
        provider_id = sg_message_id.split(".", 1)[0]
        return session.exec(
            select(Message).where(Message.provider_message_id == provider_id)
        ).first()
    return None


def _occurred_at(event: dict[str, Any]) -> datetime:
    timestamp = event.get("timestamp")
    if isinstance(timestamp, int | float) and timestamp > 0:
        return datetime.fromtimestamp(timestamp, UTC)
    return utcnow()


def store_sendgrid_event(session: Session, event: dict[str, Any]) -> StoredEvent:
    """Store one SendGrid event once, and apply it to its message and lead."""
    event_id = _event_id(event)
    event_type = str(event["event"])
    existing = session.exec(
        select(EngagementEvent).where(EngagementEvent.provider_event_id == event_id)
    ).first()
    if existing is not None:
        return StoredEvent(
            existing.id, event_type, existing.lead_id, existing.message_id, None, True
        )
    message = _find_message(session, event)
    lead_id = message.lead_id if message else None
    if lead_id is None and isinstance(event.get("lead_id"), str):
        lead = session.get(Lead, event["lead_id"])
        lead_id = lead.id if lead else None
    at = _occurred_at(event)
    stored = EngagementEvent(
        lead_id=lead_id,
        message_id=message.id if message else None,
        type=event_type,
        source="sendgrid",
        provider_event_id=event_id,
        occurred_at=at,
        data={k: v for k, v in event.items() if k not in ("email", "ip", "useragent")},
    )
    try:
        with session.begin_nested():
            session.add(stored)
    except sa.exc.IntegrityError:
        # The same event arrived in a concurrent request and was stored there.
        return StoredEvent(
            stored.id, event_type, lead_id, stored.message_id, None, True
        )
    if message is not None and event_type in SENDGRID_STATUS:
        advance_status(message, SENDGRID_STATUS[event_type], at)
        session.add(message)
    if lead_id is not None and event_type in SENDGRID_LEAD_STATUS:
        lead = session.get(Lead, lead_id)
        if lead is not None and lead.status == "active":
            lead.status = SENDGRID_LEAD_STATUS[event_type]
            lead.updated_at = utcnow()
            session.add(lead)
    workflow_id = None
    if message is not None and message.enrollment_id:
        enrollment = session.get(Enrollment, message.enrollment_id)
        workflow_id = enrollment.workflow_id if enrollment else None
    url = event.get("url") if isinstance(event.get("url"), str) else None
    return StoredEvent(
        stored.id, event_type, lead_id, stored.message_id, workflow_id, False, url
    )
