"""Twilio's SMS webhooks: status callbacks and inbound messages, each stored once.

A status callback moves our message's status forward, and an error code
that marks the number as unusable suppresses the number. An inbound message
is either a keyword (STOP, START, HELP and their synonyms), which changes the
number's SMS consent, or a reply, which counts as engagement of each lead
with that number.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa
from sqlmodel import Session, col, select

from nurture.config import Settings
from nurture.consent import (
    HELP_KEYWORDS,
    OPT_IN_KEYWORDS,
    OPT_OUT_KEYWORDS,
    keyword_of,
    leads_with_address,
    record_address_consent,
    suppress,
)
from nurture.engagement import WEBHOOK_ACTOR, advance_status
from nurture.models import EngagementEvent, Lead, Message, utcnow
from nurture.webhook_signatures import twilio_webhook_url

STATUS_PATH = "/api/v1/webhooks/twilio/status"
INBOUND_PATH = "/api/v1/webhooks/twilio/inbound"

# The MessageStatus values that change our message's status.
TWILIO_STATUS = {
    "sent": "sent",
    "delivered": "delivered",
    "undelivered": "failed",
    "failed": "failed",
}
# Error codes that mark the number as unusable, with the suppression reason
# each one gets, as https://www.twilio.com/docs/api/errors/<code> documents them.
# 30003 (handset unreachable) is left out, because Twilio documents it as
# usually temporary: a phone that is off or out of range.
NUMBER_ERRORS = {
    # The recipient replied STOP.
    21610: "unsubscribed_at_provider",
    # The 'To' number is invalid.
    21211: "invalid_number",
    # The 'To' number is not a mobile number.
    21614: "invalid_number",
    # A landline or an unreachable carrier, which Twilio advises not to retry.
    30006: "invalid_number",
}

InboundKind = Literal["opt_out", "opt_in", "help", "reply"]
INBOUND_EVENT_TYPES: dict[InboundKind, str] = {
    "opt_out": "sms_opt_out",
    "opt_in": "sms_opt_in",
    "help": "sms_help",
    # Scoring counts "replied" as an SMS reply, and goals and replied() read it.
    "reply": "replied",
}
# Twilio's Advanced Opt-Out names the keyword it matched in OptOutType, also
# for keywords configured in the Twilio console.
_OPT_OUT_TYPES: dict[str, InboundKind] = {
    "STOP": "opt_out",
    "START": "opt_in",
    "HELP": "help",
}


def status_callback_url(settings: Settings) -> str:
    """Return the StatusCallback URL to send with each SMS: the one we verify."""
    return twilio_webhook_url(
        settings.twilio_status_webhook_url, settings.public_base_url, STATUS_PATH
    )


def _stored(session: Session, provider_event_id: str) -> EngagementEvent | None:
    return session.exec(
        select(EngagementEvent).where(
            EngagementEvent.provider_event_id == provider_event_id
        )
    ).first()


def _insert(session: Session, event: EngagementEvent) -> bool:
    """Add the event, or return False when a concurrent request stored it first."""
    try:
        with session.begin_nested():
            session.add(event)
    except sa.exc.IntegrityError:
        return False
    return True


def _error_code(fields: Mapping[str, str]) -> int | None:
    code = fields.get("ErrorCode", "").strip()
    return int(code) if code.isdigit() else None


@dataclass(frozen=True)
class StatusResult:
    event_id: str
    duplicate: bool
    message_id: str | None
    lead_id: str | None


def store_status_callback(session: Session, fields: Mapping[str, str]) -> StatusResult:
    """Store a status callback once, and apply it to its message and number.

    `fields` needs MessageSid and MessageStatus. The message is ours when its
    provider_message_id is the MessageSid.
    """
    sid = fields["MessageSid"]
    status = fields["MessageStatus"]
    provider_event_id = f"twilio:{sid}:{status}"
    existing = _stored(session, provider_event_id)
    if existing is not None:
        return StatusResult(existing.id, True, existing.message_id, existing.lead_id)
    message = session.exec(
        select(Message).where(Message.provider_message_id == sid)
    ).first()
    now = utcnow()
    event = EngagementEvent(
        lead_id=message.lead_id if message else None,
        message_id=message.id if message else None,
        type=f"sms_{status}",
        source="twilio",
        provider_event_id=provider_event_id,
        occurred_at=now,
        data=dict(fields),
    )
    if not _insert(session, event):
        return StatusResult(event.id, True, event.message_id, event.lead_id)
    code = _error_code(fields)
    if message is not None and status in TWILIO_STATUS:
        advanced = advance_status(message, TWILIO_STATUS[status], now)
        if advanced and message.status == "failed":
            message.error = f"Twilio reported {status}" + (
                f" with error {code}: https://www.twilio.com/docs/api/errors/{code}"
                if code is not None
                else ""
            )
        session.add(message)
    verdict = NUMBER_ERRORS.get(code) if code is not None else None
    number = fields.get("To") or (message.to_address if message else None)
    if verdict is not None and number:
        proof = {"MessageSid": sid, "ErrorCode": code}
        suppress(session, "sms", number, verdict, source="twilio", detail=proof)
        if verdict == "unsubscribed_at_provider":
            record_address_consent(
                session,
                "sms",
                number,
                "opted_out",
                source="twilio",
                actor=WEBHOOK_ACTOR,
                proof=proof,
                occurred_at=now,
            )
    return StatusResult(event.id, False, event.message_id, event.lead_id)


def inbound_kind(fields: Mapping[str, str]) -> tuple[InboundKind, str]:
    """Return the kind of an inbound SMS, decided by its keyword, and the keyword."""
    keyword = keyword_of(fields.get("Body", ""))
    opt_out_type = fields.get("OptOutType", "").strip().upper()
    if opt_out_type in _OPT_OUT_TYPES:
        return _OPT_OUT_TYPES[opt_out_type], keyword
    if keyword in OPT_OUT_KEYWORDS:
        return "opt_out", keyword
    if keyword in OPT_IN_KEYWORDS:
        return "opt_in", keyword
    if keyword in HELP_KEYWORDS:
        return "help", keyword
    return "reply", keyword


@dataclass(frozen=True)
class Reply:
    """A reply stored for one lead, which its workflow must hear of."""

    lead_id: str
    event_id: str
    message_id: str | None


@dataclass(frozen=True)
class InboundResult:
    kind: InboundKind
    keyword: str
    duplicate: bool
    lead_ids: tuple[str, ...] = ()
    replies: tuple[Reply, ...] = ()


def _latest_sms(session: Session, lead_id: str, number: str) -> Message | None:
    return session.exec(
        select(Message)
        .where(
            Message.lead_id == lead_id,
            Message.channel == "sms",
            Message.to_address == number,
        )
        .order_by(col(Message.created_at).desc())
    ).first()


def _seen_inbound(session: Session, sid: str) -> bool:
    prefix = f"twilio:{sid}"
    return (
        session.exec(
            select(EngagementEvent.id).where(
                sa.or_(
                    col(EngagementEvent.provider_event_id) == prefix,
                    col(EngagementEvent.provider_event_id).startswith(
                        f"{prefix}:", autoescape=True
                    ),
                )
            )
        ).first()
        is not None
    )


def store_inbound_sms(session: Session, fields: Mapping[str, str]) -> InboundResult:
    """Store an inbound SMS once per lead with that number, and apply its keyword.

    `fields` needs MessageSid and From. A number that matches no lead gets
    one event without a lead, and its keyword still suppresses or lifts the
    number's suppression.
    """
    sid = fields["MessageSid"]
    number = fields["From"]
    kind, keyword = inbound_kind(fields)
    if _seen_inbound(session, sid):
        return InboundResult(kind, keyword, True)
    leads = sorted(leads_with_address(session, "sms", number), key=lambda x: x.id)
    now = utcnow()
    replies = []
    targets: list[Lead | None] = [*leads] if leads else [None]
    for lead in targets:
        message = _latest_sms(session, lead.id, number) if lead else None
        event = EngagementEvent(
            lead_id=lead.id if lead else None,
            message_id=message.id if message else None,
            type=INBOUND_EVENT_TYPES[kind],
            source="twilio",
            provider_event_id=f"twilio:{sid}:{lead.id}" if lead else f"twilio:{sid}",
            occurred_at=now,
            data=dict(fields),
        )
        if not _insert(session, event):
            # A concurrent request with the same MessageSid stored it first.
            return InboundResult(kind, keyword, True)
        if lead is not None:
            replies.append(Reply(lead.id, event.id, event.message_id))
    proof = {"keyword": keyword, "MessageSid": sid}
    if kind == "opt_out":
        record_address_consent(
            session,
            "sms",
            number,
            "opted_out",
            source="twilio",
            actor=WEBHOOK_ACTOR,
            proof=proof,
            occurred_at=now,
        )
        # Twilio now refuses to send to the number until it texts START. The
        # suppression follows the number, so a lead captured again with it
        # is not sent to either.
        suppress(
            session,
            "sms",
            number,
            "unsubscribed_at_provider",
            source="twilio",
            detail=proof,
        )
    elif kind == "opt_in":
        # This also lifts the suppression that the STOP added.
        record_address_consent(
            session,
            "sms",
            number,
            "opted_in",
            source="twilio",
            actor=WEBHOOK_ACTOR,
            proof=proof,
            occurred_at=now,
        )
    lead_ids = tuple(lead.id for lead in leads)
    return InboundResult(
        kind,
        keyword,
        False,
        lead_ids,
        tuple(replies) if kind == "reply" else (),
    )
