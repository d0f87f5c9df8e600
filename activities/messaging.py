"""Message preparation: render a step's template and store it in the outbox."""

import logging
from typing import Any

import sqlalchemy as sa
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.leads import load_lead
from nurture.contracts import (
    MessageEngagement,
    MessageEngagementInput,
    PreparedMessage,
    PrepareMessageInput,
)
from nurture.db import session_scope
from nurture.leads import LeadPublic
from nurture.models import Lead, Message
from nurture.rendering import TemplateError, TemplateRenderer

logger = logging.getLogger(__name__)


def template_context(lead: Lead) -> dict[str, Any]:
    """Build the `lead` variable of templates: the lead's public fields in camelCase."""
    public = LeadPublic.from_lead(lead).model_dump(mode="json")
    contact = public.pop("contact")
    public.pop("duplicate", None)
    return {**contact, **public}


class MessagingActivities:
    def __init__(
        self,
        engine: sa.Engine,
        renderer: TemplateRenderer,
        email_provider: str,
        sms_provider: str,
    ) -> None:
        self.engine = engine
        self.renderer = renderer
        self.providers = {"email": email_provider, "sms": sms_provider}

    @activity.defn
    def prepare_message(self, input: PrepareMessageInput) -> PreparedMessage:
        """Render the message and store it as queued, once per message id.

        A template that cannot render for this lead is a permanent failure:
        the message is stored as failed with the reason, and the error is
        non-retryable.
        """
        with session_scope(self.engine) as session:
            existing = session.get(Message, input.message_id)
            if existing is not None:
                return PreparedMessage(message_id=existing.id, status=existing.status)
            lead = load_lead(session, input.lead_id)
            skipped = self._skip_reason(lead, input.channel)
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
            address = lead.email if input.channel == "email" else lead.phone
            assert address is not None
            message = Message(
                id=input.message_id,
                lead_id=lead.id,
                enrollment_id=input.enrollment_id,
                campaign_id=input.campaign_id,
                campaign_version=input.campaign_version,
                step=input.step,
                channel=input.channel,
                template=input.template,
                to_address=address,
                body="",
                provider=self.providers[input.channel],
            )
            try:
                rendered = self.renderer.render(
                    input.channel,
                    input.template,
                    template_context(lead),
                    input.personalization,
                )
            except TemplateError as error:
                message.status = "failed"
                message.error = str(error)
                session.add(message)
                session.commit()
                raise ApplicationError(
                    str(error), type="TemplateError", non_retryable=True
                ) from None
            message.subject = rendered.subject
            message.body = rendered.text
            message.html = rendered.html
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

    def _skip_reason(self, lead: Lead, channel: str) -> str | None:
        if lead.status == "closed":
            return "lead is closed: do not contact"
        if channel == "email" and lead.status in ("unsubscribed", "bounced"):
            return f"lead's email is {lead.status}"
        if channel == "email" and not lead.email:
            return "lead has no email address"
        if channel == "sms" and not lead.phone:
            return "lead has no phone number"
        return None
