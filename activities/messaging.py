"""Message preparation: render a step's template and store it in the outbox."""

import logging
import threading
import zlib
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.leads import lock_lead
from nurture.consent import ConsentPolicy, send_refusal
from nurture.contracts import (
    MessageEngagement,
    MessageEngagementInput,
    PreparedMessage,
    PrepareMessageInput,
)
from nurture.db import session_scope
from nurture.leads import template_context
from nurture.models import Message, utcnow
from nurture.rendering import TemplateError, TemplateRenderer
from nurture.unsubscribe import UnsubscribeLinks, add_footer
from nurture.wording import describe_age

logger = logging.getLogger(__name__)


# Sends to one lead take turns within a worker process: the database row lock
# serializes them across workers on PostgreSQL, and SQLite has no row locks.
_LEAD_LOCKS = [threading.Lock() for _ in range(64)]


def _lead_lock(lead_id: str) -> threading.Lock:
    return _LEAD_LOCKS[zlib.crc32(lead_id.encode()) % len(_LEAD_LOCKS)]


class MessagingActivities:
    def __init__(
        self,
        engine: sa.Engine,
        renderer: TemplateRenderer,
        email_provider: str,
        sms_provider: str,
        caps: dict[str, list[tuple[int, timedelta]]] | None = None,
        policy: ConsentPolicy | None = None,
        links: UnsubscribeLinks | None = None,
    ) -> None:
        self.engine = engine
        self.renderer = renderer
        self.providers = {"email": email_provider, "sms": sms_provider, "task": "crm"}
        self.caps = caps or {}
        self.policy = policy or ConsentPolicy()
        self.links = links

    @activity.defn
    def prepare_message(self, input: PrepareMessageInput) -> PreparedMessage:
        """Render the message and store it as queued, once per message id.

        A template that cannot render for this lead is a permanent failure:
        the message is stored as failed with the reason, and the error is
        non-retryable. Every send passes through here, so this is where the
        frequency caps are enforced: a capped message is not stored, and the
        result gives the time to try again.
        """
        with _lead_lock(input.lead_id), session_scope(self.engine) as session:
            existing = session.get(Message, input.message_id)
            if existing is not None:
                return PreparedMessage(message_id=existing.id, status=existing.status)
            lead = lock_lead(session, input.lead_id)
            scheduled_at = input.scheduled_at or utcnow()
            deferral = self._cap_deferral(session, lead.id, input.channel, scheduled_at)
            if deferral is not None:
                until, reason = deferral
                logger.info(
                    "message %s for lead %s deferred until %s: %s",
                    input.message_id,
                    lead.id,
                    until.isoformat(),
                    reason,
                )
                return PreparedMessage(
                    message_id=input.message_id,
                    status="deferred",
                    deferred_until=until,
                    deferred_reason=reason,
                )
            skipped = send_refusal(session, lead, input.channel, self.policy)
            if skipped is not None:
                logger.info(
                    "message %s for lead %s skipped: %s",
                    input.message_id,
                    lead.id,
                    skipped,
                )
                return PreparedMessage(
                    message_id=input.message_id,
                    status="skipped",
                    skipped_reason=skipped,
                )
            address = {"email": lead.email, "sms": lead.phone}.get(
                input.channel, "sales"
            )
            assert address is not None
            message = Message(
                id=input.message_id,
                lead_id=lead.id,
                enrollment_id=input.enrollment_id,
                campaign_id=input.campaign_id,
                campaign_version=input.campaign_version,
                step=input.step,
                scheduled_at=scheduled_at,
                variant=input.variant,
                channel=input.channel,
                template=input.template,
                to_address=address,
                body="",
                provider=self.providers[input.channel],
            )
            unsubscribe_url = (
                self.links.url(lead.id, input.message_id)
                if self.links is not None and input.channel == "email"
                else None
            )
            try:
                rendered = self.renderer.render(
                    input.channel,
                    input.template,
                    template_context(lead),
                    input.personalization,
                    {"unsubscribe_url": unsubscribe_url} if unsubscribe_url else None,
                )
            except TemplateError as error:
                message.status = "failed"
                message.error = str(error)
                session.add(message)
                session.commit()
                raise ApplicationError(
                    str(error), type="TemplateError", non_retryable=True
                ) from None
            text, html = rendered.text, rendered.html
            if unsubscribe_url is not None:
                # Every marketing email carries the link, whatever its template.
                text, html = add_footer(text, html, unsubscribe_url)
            message.subject = rendered.subject
            message.body = text
            message.html = html
            session.add(message)
        return PreparedMessage(message_id=input.message_id, status="queued")

    @activity.defn
    def read_message_engagement(
        self, input: MessageEngagementInput
    ) -> MessageEngagement:
        """Read whether a message was opened or clicked, from stored events."""
        with session_scope(self.engine) as session:
            message = session.get(Message, input.message_id)
            if message is None:
                return MessageEngagement()
            return MessageEngagement(
                opened=message.opened_at is not None,
                clicked=message.clicked_at is not None,
            )

    def _cap_deferral(
        self, session: Session, lead_id: str, channel: str, at: datetime
    ) -> tuple[datetime, str] | None:
        """Return when a capped send may go, and why, or None when it may go now."""
        limits = self.caps.get(channel, [])
        if not limits:
            return None
        longest = max(period for _count, period in limits)
        times = sorted(
            time
            for time in session.exec(
                select(Message.scheduled_at).where(
                    Message.lead_id == lead_id,
                    Message.channel == channel,
                    col(Message.status).not_in(("failed",)),
                    # No upper bound: a send scheduled by another workflow a
                    # moment after `at` still uses up the same window.
                    col(Message.scheduled_at) > at - longest,
                )
            ).all()
            if time is not None
        )
        until: datetime | None = None
        reason = ""
        for count, period in limits:
            recent = [t for t in times if t is not None and t > at - period]
            if len(recent) >= count:
                # The send may go once enough of these fall out of the window.
                candidate = recent[len(recent) - count] + period
                if until is None or candidate > until:
                    until = candidate
                    reason = (
                        f"frequency cap: at most {count} {channel} per "
                        f"{describe_age(period)}"
                    )
        return (until, reason) if until is not None else None
