"""Message delivery: the only place that calls email and SMS providers.

Each channel has its own task queue (`<task queue>-send-email`,
`-send-sms`; sales tasks on `-send`), whose workers cap provider calls per
second for all workers together.

A message goes to its provider at most once:

1. The workflow chose the message id, and `prepare_message` stored the
   outbox row under it, so a replay or a retry finds the same row.
2. Here, consent and suppression are read again: what the lead said while
   the message waited counts.
3. The row moves from `queued` to `sending` in one conditional update
   before the provider call, and to `sent` with the provider's id after.
4. A row found in `sending` means an earlier attempt was interrupted (the
   worker died, the connection broke) after it may have reached the
   provider. That attempt is not repeated blindly: the provider is asked
   whether it has the message (SendGrid's Email Activity feed by our message
   id; Twilio's message list), and only a "no" that the provider can vouch
   for sends again. When the provider cannot tell, the row becomes
   `unconfirmed` and nothing is resent.
"""

import contextlib
import contextvars
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import timedelta
from typing import TypeVar

import sqlalchemy as sa
from sqlmodel import Session, col, update
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.providers import (
    LookupUnavailable,
    Outgoing,
    ProviderError,
    Sender,
)
from nurture.consent import (
    ConsentPolicy,
    record_address_consent,
    send_refusal,
    suppress,
)
from nurture.contracts import DeliverMessageInput, DeliveryResult
from nurture.db import session_scope
from nurture.logs import log_context
from nurture.metrics import count_message
from nurture.models import Lead, Message, utcnow
from nurture.unsubscribe import UnsubscribeLinks

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Provider calls run beside the activity thread, which heartbeats meanwhile:
# a worker that dies mid-call is noticed within the heartbeat timeout.
HEARTBEAT_EVERY_SECONDS = 2.0
_CALLS = ThreadPoolExecutor(max_workers=32, thread_name_prefix="provider-call")


class DeliveryActivities:
    def __init__(
        self,
        engine: sa.Engine,
        email_sender: Sender,
        sms_sender: Sender,
        task_sender: Sender,
        policy: ConsentPolicy | None = None,
        links: UnsubscribeLinks | None = None,
    ) -> None:
        self.engine = engine
        self.senders: dict[str, Sender] = {
            "email": email_sender,
            "sms": sms_sender,
            "task": task_sender,
        }
        self.policy = policy or ConsentPolicy()
        self.links = links

    @activity.defn
    def deliver_message(self, input: DeliverMessageInput) -> DeliveryResult:
        """Send an outbox message through its channel's provider, at most once."""
        with contextlib.ExitStack() as log_ids:
            return self._deliver(input, log_ids)

    def _deliver(
        self, input: DeliverMessageInput, log_ids: contextlib.ExitStack
    ) -> DeliveryResult:
        with session_scope(self.engine) as session:
            message = session.get(Message, input.message_id)
            if message is None:
                raise ApplicationError(
                    f"message {input.message_id} is not in the outbox",
                    type="MessageNotFound",
                    non_retryable=True,
                )
            # The rest of the delivery logs with the message's lead and campaign.
            log_ids.enter_context(
                log_context(lead_id=message.lead_id, campaign_id=message.campaign_id)
            )
            if message.status not in ("queued", "sending"):
                return _result(message)
            sender = self.senders[message.channel]
            outgoing = self._outgoing(message)
            interrupted_at = message.sending_at if message.status == "sending" else None
            lead = session.get(Lead, message.lead_id)
            refusal = (
                send_refusal(session, lead, message.channel, self.policy)
                if lead is not None
                else "lead no longer exists"
            )
        if interrupted_at is not None:
            found = self._settle_interrupted(input.message_id, sender, outgoing)
            if found is not None:
                return found
        if refusal is not None:
            return self._suppress_message(input.message_id, refusal)
        if not self._claim(input.message_id):
            with session_scope(self.engine) as session:
                current = session.get(Message, input.message_id)
                assert current is not None
                return _result(current)
        try:
            provider_id = _call_heartbeating(sender.send, outgoing)
        except ProviderError as error:
            self._record_failure(input.message_id, error)
            raise _activity_error(error, input.message_id) from None
        self._mark_sent(input.message_id, provider_id)
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

    def _outgoing(self, message: Message) -> Outgoing:
        headers: dict[str, str] = {}
        if message.channel == "email" and self.links is not None:
            headers = self.links.headers(message.lead_id, message.id)
        return Outgoing(
            message_id=message.id,
            lead_id=message.lead_id,
            campaign_id=message.campaign_id,
            template=message.template,
            to=message.to_address,
            subject=message.subject,
            text=message.body,
            html=message.html,
            headers=headers,
        )

    def _settle_interrupted(
        self, message_id: str, sender: Sender, outgoing: Outgoing
    ) -> DeliveryResult | None:
        """Decide an interrupted attempt: return the result, or None to send again.

        Raises a retryable error while the provider's record may still be
        incomplete.
        """
        with session_scope(self.engine) as session:
            message = session.get(Message, message_id)
            assert message is not None and message.sending_at is not None
            since = message.sending_at
        find = getattr(sender, "find_sent", None)
        if find is None:
            # Sales tasks: the CRM de-duplicates on the task id, our message id.
            self._release(message_id)
            return None
        try:
            provider_id = _call_heartbeating(find, outgoing, since)
        except LookupUnavailable as error:
            return self._mark_unconfirmed(message_id, str(error))
        except ProviderError as error:
            raise _activity_error(error, message_id) from None
        if provider_id is not None:
            logger.info(
                "message %s: the interrupted attempt had reached %s as %s",
                message_id,
                sender.name,
                provider_id,
            )
            self._mark_sent(message_id, provider_id)
            return DeliveryResult(
                message_id=message_id, status="sent", provider_message_id=provider_id
            )
        settled_at = since + timedelta(seconds=sender.lookup_delay_seconds)
        wait = (settled_at - utcnow()).total_seconds()
        if wait > 0:
            raise ApplicationError(
                f"message {message_id}: an interrupted attempt may have reached "
                f"{sender.name}; asking again once its records are complete",
                type="AwaitingProviderRecord",
                next_retry_delay=timedelta(seconds=max(wait, 1.0)),
            )
        logger.warning(
            "message %s: %s has no record of the interrupted attempt; sending again",
            message_id,
            sender.name,
        )
        self._release(message_id)
        return None

    def _claim(self, message_id: str) -> bool:
        """Move the row from queued to sending; False when another attempt did."""
        now = utcnow()
        with self.engine.begin() as connection:
            claimed = connection.execute(
                update(Message)
                .where(col(Message.id) == message_id, col(Message.status) == "queued")
                .values(
                    status="sending",
                    attempts=col(Message.attempts) + 1,
                    sending_at=now,
                    updated_at=now,
                )
            )
        return claimed.rowcount == 1

    def _release(self, message_id: str) -> None:
        """Put a row back in the queue: the provider does not have the message."""
        with self.engine.begin() as connection:
            connection.execute(
                update(Message)
                .where(col(Message.id) == message_id, col(Message.status) == "sending")
                .values(status="queued", updated_at=utcnow())
            )

    def _mark_sent(self, message_id: str, provider_id: str) -> None:
        with session_scope(self.engine) as session:
            stored = session.get(Message, message_id)
            assert stored is not None
            if stored.status in ("queued", "sending", "unconfirmed"):
                stored.status = "sent"
                count_message(stored.channel, "sent")
            stored.provider_message_id = provider_id
            stored.sent_at = stored.sent_at or utcnow()
            stored.updated_at = utcnow()
            stored.error = None
            session.add(stored)

    def _mark_unconfirmed(self, message_id: str, why: str) -> DeliveryResult:
        logger.warning("message %s unconfirmed: %s", message_id, why)
        return self._finish(
            message_id,
            "unconfirmed",
            f"an attempt was interrupted and the provider cannot say whether "
            f"it took the message ({why}); not sent again, to never send twice",
        )

    def _suppress_message(self, message_id: str, reason: str) -> DeliveryResult:
        logger.info("message %s not sent: %s", message_id, reason)
        return self._finish(message_id, "suppressed", reason)

    def _finish(self, message_id: str, status: str, error: str) -> DeliveryResult:
        """Give the row its final status and the reason, and return the result."""
        with session_scope(self.engine) as session:
            stored = session.get(Message, message_id)
            assert stored is not None
            stored.status = status
            count_message(stored.channel, status)
            stored.error = error
            stored.updated_at = utcnow()
            session.add(stored)
            return _result(stored)

    def _record_failure(self, message_id: str, error: ProviderError) -> None:
        with session_scope(self.engine) as session:
            stored = session.get(Message, message_id)
            assert stored is not None
            stored.error = str(error)
            stored.updated_at = utcnow()
            if error.permanent:
                stored.status = "failed"
                count_message(stored.channel, "failed")
                _apply_verdict(session, stored, error)
            elif not error.maybe_accepted:
                # The provider responded, or was never reached, so it does not
                # have the message and the next attempt sends without a lookup.
                stored.status = "queued"
            session.add(stored)
        logger.warning(
            "message %s: provider error (%s): %s",
            message_id,
            "permanent"
            if error.permanent
            else "may have been taken; will ask"
            if error.maybe_accepted
            else "will retry",
            error,
        )


def _apply_verdict(session: Session, message: Message, error: ProviderError) -> None:
    """Suppress the address a permanent error rejected, for every later send."""
    if error.verdict is None:
        return
    suppress(
        session,
        message.channel,
        message.to_address,
        error.verdict,
        source=message.provider,
        detail={"messageId": message.id, "status": error.status, "code": error.code},
    )
    if error.verdict == "unsubscribed_at_provider":
        record_address_consent(
            session,
            message.channel,
            message.to_address,
            "opted_out",
            source=message.provider,
            actor="delivery",
            proof={"messageId": message.id, "code": error.code},
        )


def _result(message: Message) -> DeliveryResult:
    return DeliveryResult(
        message_id=message.id,
        status=message.status,
        provider_message_id=message.provider_message_id,
        reason=message.error if message.status in ("suppressed", "failed") else None,
    )


def _call_heartbeating(call: Callable[..., T], *args: object) -> T:
    """Run a provider call in another thread and heartbeat until it returns."""
    in_activity = activity.in_activity()
    # The call runs in the activity's context, so its log lines carry the ids.
    context = contextvars.copy_context()
    future: Future[T] = _CALLS.submit(context.run, call, *args)
    while True:
        try:
            return future.result(timeout=HEARTBEAT_EVERY_SECONDS)
        except FutureTimeout:
            if in_activity:
                activity.heartbeat()


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
