"""Message delivery: the only place that calls email and SMS providers.

Runs on the `<task queue>-send` queue, whose workers cap provider calls per
second. A message is sent only while its outbox row is queued, so an activity
retry or a replayed workflow never calls the provider for it again.
"""

import logging
from datetime import timedelta

import sqlalchemy as sa
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.providers import (
    EmailSender,
    Outgoing,
    ProviderError,
    SmsSender,
    TaskSender,
)
from nurture.contracts import DeliverMessageInput, DeliveryResult
from nurture.db import session_scope
from nurture.models import Message, utcnow

logger = logging.getLogger(__name__)


class DeliveryActivities:
    def __init__(
        self,
        engine: sa.Engine,
        email_sender: EmailSender,
        sms_sender: SmsSender,
        task_sender: TaskSender,
    ) -> None:
        self.engine = engine
        self.senders = {"email": email_sender, "sms": sms_sender, "task": task_sender}

    @activity.defn
    def deliver_message(self, input: DeliverMessageInput) -> DeliveryResult:
        """Send a queued outbox message through its channel's provider."""
        with session_scope(self.engine) as session:
            message = session.get(Message, input.message_id)
            if message is None:
                raise ApplicationError(
                    f"message {input.message_id} is not in the outbox",
                    type="MessageNotFound",
                    non_retryable=True,
                )
            if message.status != "queued":
                return DeliveryResult(
                    message_id=message.id,
                    status=message.status,
                    provider_message_id=message.provider_message_id,
                )
            sender = self.senders[message.channel]
            outgoing = Outgoing(
                message_id=message.id,
                lead_id=message.lead_id,
                campaign_id=message.campaign_id,
                template=message.template,
                to=message.to_address,
                subject=message.subject,
                text=message.body,
                html=message.html,
            )
        # NOTE: a worker that dies after the provider accepted the message and
        # before the row below is updated sends it again on retry.
        try:
            provider_id = sender.send(outgoing)
        except ProviderError as error:
            self._record_failure(input.message_id, error)
            raise _activity_error(error, input.message_id) from None
        with session_scope(self.engine) as session:
            stored = session.get(Message, input.message_id)
            assert stored is not None
            stored.status = "sent"
            stored.provider_message_id = provider_id
            stored.sent_at = utcnow()
            stored.updated_at = stored.sent_at
            stored.error = None
            session.add(stored)
        logger.info(
            "message %s for lead %s sent by %s as %s",
            input.message_id,
            outgoing.lead_id,
            sender.name,
            provider_id,
        )
        return DeliveryResult(
            message_id=input.message_id, status="sent", provider_message_id=provider_id
        )

    def _record_failure(self, message_id: str, error: ProviderError) -> None:
        with session_scope(self.engine) as session:
            stored = session.get(Message, message_id)
            assert stored is not None
            stored.error = str(error)
            stored.updated_at = utcnow()
            if error.permanent:
                stored.status = "failed"
            session.add(stored)
        logger.warning(
            "message %s: provider error (%s): %s",
            message_id,
            "permanent" if error.permanent else "will retry",
            error,
        )


def _activity_error(error: ProviderError, message_id: str) -> ApplicationError:
    if error.permanent:
        return ApplicationError(
            f"message {message_id} rejected: {error}",
            type="PermanentDeliveryFailure",
            non_retryable=True,
        )
    delay = (
        timedelta(seconds=error.retry_after_seconds)
        if error.retry_after_seconds
        else None
    )
    return ApplicationError(
        f"message {message_id} not sent yet: {error}",
        type="TransientDeliveryFailure",
        next_retry_delay=delay,
    )
