"""Storing engagement events once and moving message status forward only.

SendGrid's events also change what we may send to an address: hard bounces,
drops and spam reports suppress it, and unsubscribes change the email consent
of every lead with that address.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from nurture.consent import record_address_consent, suppress
from nurture.models import EngagementEvent, Enrollment, Lead, Message, utcnow

# Message statuses in the order events can move them; a late "delivered"
# never replaces "opened". Bounced and failed end the message.
STATUS_RANK = {
    "queued": 0,
    "sending": 0,
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
# Suppression reasons by event. A block (event "blocked", or a
# "bounce" of type "blocked") is left out: SendGrid's Blocks documentation
# says the receiver rejected the message itself, not the address, and
# SendGrid does not suppress blocked addresses.
SENDGRID_SUPPRESSION = {
    "bounce": "bounce",
    "dropped": "dropped",
    "spamreport": "spamreport",
}
SENDGRID_CONSENT = {
    "spamreport": "opted_out",
    "unsubscribe": "opted_out",
    "group_unsubscribe": "opted_out",
    "group_resubscribe": "opted_in",
}
# Drop reasons that SendGrid's documentation of drops gives for a fault of
# the message ("Spam Content") or of the request ("Invalid SMTPAPI header").
# Every other drop reason names a list the address is on, so it suppresses.
MESSAGE_DROP_REASONS = ("spam content", "invalid smtpapi header")
# The `recorded_by` of consent changes that provider webhooks make.
WEBHOOK_ACTOR = "webhook"
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


def sendgrid_effect(event: dict[str, Any]) -> str:
    """Return the event's type, or "blocked" for a bounce of type "blocked"."""
    event_type = str(event["event"])
    if event_type == "bounce" and event.get("type") == "blocked":
        return "blocked"
    return event_type


def _stored_data(event: dict[str, Any]) -> dict[str, Any]:
    data = {k: v for k, v in event.items() if k not in ("email", "ip", "useragent")}
    # SendGrid sends one category as a string and several as a list.
    if isinstance(data.get("category"), str):
        data["category"] = [data["category"]]
    return data


def _text(event: dict[str, Any], key: str) -> str | None:
    value = event.get(key)
    return value if isinstance(value, str) and value else None


def _failure_text(event: dict[str, Any]) -> str:
    reason = _text(event, "reason") or _text(event, "response")
    effect = sendgrid_effect(event)
    return f"SendGrid {effect}: {reason}" if reason else f"SendGrid {effect}"


def _address_effects(
    session: Session, event: dict[str, Any], address: str, at: datetime
) -> None:
    """Suppress the address, or change its consent, as the event requires."""
    effect = sendgrid_effect(event)
    suppression = SENDGRID_SUPPRESSION.get(effect)
    reason = (_text(event, "reason") or "").casefold()
    if effect == "dropped" and reason.startswith(MESSAGE_DROP_REASONS):
        suppression = None
    if suppression is not None:
        detail: dict[str, Any] = {
            key: event[key]
            for key in ("sg_event_id", "reason", "status", "bounce_classification")
            if key in event
        }
        suppress(
            session, "email", address, suppression, source="sendgrid", detail=detail
        )
    consent = SENDGRID_CONSENT.get(effect)
    if consent is not None:
        proof = {"event": effect}
        proof.update(
            {key: event[key] for key in ("sg_event_id", "asm_group_id") if key in event}
        )
        record_address_consent(
            session,
            "email",
            address,
            consent,
            source="sendgrid",
            actor=WEBHOOK_ACTOR,
            proof=proof,
            occurred_at=at,
        )


def _update_lead_status(session: Session, lead_id: str, effect: str) -> None:
    lead = session.get(Lead, lead_id)
    if lead is None:
        return
    if effect in SENDGRID_LEAD_STATUS and lead.status == "active":
        if effect in SENDGRID_CONSENT and lead.email_consent == "opted_in":
            # A newer opt-in is on record: this opt-out arrived late.
            return
        lead.status = SENDGRID_LEAD_STATUS[effect]
    elif (
        effect == "group_resubscribe"
        and lead.status == "unsubscribed"
        and lead.email_consent == "opted_in"
    ):
        # The resubscribe is the lead's latest consent change, so the
        # unsubscribe it reverses no longer holds.
        lead.status = "active"
    else:
        return
    lead.updated_at = utcnow()
    session.add(lead)


def store_sendgrid_event(session: Session, event: dict[str, Any]) -> StoredEvent:
    """Store one SendGrid event once, and apply it to its message, lead and address.

    The address is the event's `email`, else the matched message's recipient.
    """
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
    lead = session.get(Lead, lead_id) if lead_id is not None else None
    # A late event of an erased lead is counted for its campaign, without its
    # details, and reaches no workflow.
    erased = lead is not None and lead.status == "erased"
    stored = EngagementEvent(
        lead_id=lead_id,
        message_id=message.id if message else None,
        type=event_type,
        source="sendgrid",
        provider_event_id=event_id,
        occurred_at=at,
        data={} if erased else _stored_data(event),
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
        advanced = advance_status(message, SENDGRID_STATUS[event_type], at)
        if advanced and message.status in ("bounced", "failed"):
            message.error = _failure_text(event)
        session.add(message)
    address = _text(event, "email") or (message.to_address if message else None)
    if address is not None:
        _address_effects(session, event, address, at)
    if lead_id is not None:
        _update_lead_status(session, lead_id, sendgrid_effect(event))
    workflow_id = None
    if message is not None and message.enrollment_id:
        enrollment = session.get(Enrollment, message.enrollment_id)
        workflow_id = enrollment.workflow_id if enrollment else None
    url = event.get("url") if isinstance(event.get("url"), str) else None
    if erased:
        return StoredEvent(stored.id, event_type, None, stored.message_id, None, False)
    return StoredEvent(
        stored.id, event_type, lead_id, stored.message_id, workflow_id, False, url
    )
