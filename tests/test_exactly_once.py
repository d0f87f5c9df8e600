"""Each message reaches its provider once: interrupted sends, retries, bad addresses.

The official SendGrid and Twilio SDKs talk to the fake servers. The delivery
activity runs for real, in a worker or in the SDK's activity environment.
"""

import asyncio
import time
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.delivery import DeliveryActivities
from activities.providers import SendGridEmailSender, TwilioSmsSender
from nurture.consent import ConsentPolicy
from nurture.contracts import DeliverMessageInput
from nurture.crm import crm_task_sender_for
from nurture.db import session_scope
from nurture.models import Lead, Message, Suppression, utcnow
from nurture.temporal import nurture_workflow_id
from tests.conftest import Stack, example
from tests.fakes import Answer
from tests.test_delivery import finished_enrollment, messages_of
from tests.test_end_to_end import create_campaign, record_history

TWO_EMAILS = {
    "name": "Two emails",
    "trigger": {"type": "lead_created"},
    "sequence": [
        {
            "step": 1,
            "channel": "email",
            "template": "welcome_email",
            "personalization": {
                "firstName": "{{lead.firstName}}",
                "companyName": "{{lead.company.name}}",
            },
        },
        {
            "step": 2,
            "delay": "2 days",
            "channel": "email",
            "template": "value_proposition",
        },
    ],
}


async def capture(stack: Stack, email: str, **extra: Any) -> str:
    lead = example("lead.json")
    lead["contact"]["email"] = email
    lead["contact"].pop("phone", None)
    lead.update(extra)
    response = await stack.api.post("/api/v1/leads", json=lead)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def delivery(stack: Stack, lookup_delay: float = 0.0) -> DeliveryActivities:
    return DeliveryActivities(
        stack.engine,
        SendGridEmailSender(
            "SG.test",
            stack.sendgrid.url,
            "from@example.com",
            lookup_delay_seconds=lookup_delay,
        ),
        TwilioSmsSender(
            "AC" + "0" * 32, "token", "+15005550006", stack.twilio.url, None
        ),
        crm_task_sender_for(stack.settings, stack.engine),
        ConsentPolicy(),
    )


def store_message(
    stack: Stack, lead_id: str, channel: str, status: str, **values: Any
) -> str:
    """Put a message in the outbox as an earlier, interrupted attempt left it."""
    with session_scope(stack.engine) as session:
        lead = session.get(Lead, lead_id)
        assert lead is not None
        message = Message(
            id=f"msg-{time.monotonic_ns()}",
            lead_id=lead_id,
            channel=channel,
            template="welcome_email" if channel == "email" else "welcome_sms",
            to_address=(lead.email if channel == "email" else lead.phone) or "",
            subject="Welcome" if channel == "email" else None,
            body="Hello from nurture",
            provider="sendgrid" if channel == "email" else "twilio",
            status=status,
            attempts=1 if status == "sending" else 0,
            sending_at=utcnow() if status == "sending" else None,
            **values,
        )
        session.add(message)
        return message.id


def run(activities: DeliveryActivities, message_id: str) -> Any:
    return ActivityEnvironment().run(
        activities.deliver_message, DeliverMessageInput(message_id=message_id)
    )


def stored(stack: Stack, message_id: str) -> Message:
    with session_scope(stack.engine) as session:
        message = session.get(Message, message_id)
        assert message is not None
        return message


async def test_interrupted_send_found_not_resent(
    stack: Stack,
) -> None:
    lead_id = await capture(stack, "ada@example.com")
    first = store_message(stack, lead_id, "email", "queued")
    activities = delivery(stack)
    run(activities, first)
    (taken,) = stack.sendgrid.accepted_for(first)
    # The worker died after SendGrid accepted the mail, before the row was marked.
    with session_scope(stack.engine) as session:
        message = session.get(Message, first)
        assert message is not None
        message.status = "sending"
        message.provider_message_id = None
        session.add(message)

    result = run(activities, first)

    assert result.status == "sent"
    assert result.provider_message_id == stack.sendgrid.issued_ids[0]
    assert len(stack.sendgrid.mails()) == 1
    assert stored(stack, first).status == "sent"
    assert taken["custom_args"]["message_id"] == first


async def test_interrupted_send_unknown_waits_then_sends(
    stack: Stack,
) -> None:
    lead_id = await capture(stack, "ada@example.com")
    message_id = store_message(stack, lead_id, "email", "sending")

    with pytest.raises(ApplicationError) as waiting:
        run(delivery(stack, lookup_delay=600), message_id)
    assert waiting.value.type == "AwaitingProviderRecord"
    assert waiting.value.next_retry_delay is not None
    assert waiting.value.next_retry_delay > timedelta(minutes=9)
    assert stack.sendgrid.mails() == []

    result = run(delivery(stack, lookup_delay=0), message_id)

    assert result.status == "sent"
    assert len(stack.sendgrid.accepted_for(message_id)) == 1
    message = stored(stack, message_id)
    assert message.attempts == 2
    assert message.provider_message_id == stack.sendgrid.issued_ids[0]


async def test_interrupted_send_unverifiable_not_resent(
    stack: Stack,
) -> None:
    lead_id = await capture(stack, "ada@example.com")
    message_id = store_message(stack, lead_id, "email", "sending")
    stack.sendgrid.activity_feed = False

    result = run(delivery(stack), message_id)

    assert result.status == "unconfirmed"
    assert stack.sendgrid.mails() == []
    message = stored(stack, message_id)
    assert message.status == "unconfirmed"
    assert "Email Activity" in (message.error or "")


async def test_interrupted_sms_found_not_resent(
    stack: Stack,
) -> None:
    response = await stack.api.post("/api/v1/leads", json=example("lead.json"))
    lead_id = response.json()["id"]
    first = store_message(stack, lead_id, "sms", "queued")
    activities = delivery(stack)
    run(activities, first)
    (sent,) = stack.twilio.accepted
    with session_scope(stack.engine) as session:
        message = session.get(Message, first)
        assert message is not None
        message.status = "sending"
        session.add(message)
    other = store_message(stack, lead_id, "sms", "sending")
    # Same number, different text: Twilio's list has no such message.
    with session_scope(stack.engine) as session:
        message = session.get(Message, other)
        assert message is not None
        message.body = "A different text"
        session.add(message)

    assert run(activities, first).provider_message_id == sent["sid"]
    resent = run(activities, other)

    assert len(stack.twilio.messages()) == 2
    assert resent.status == "sent"
    assert resent.provider_message_id != sent["sid"]


async def test_retry_after_respected_sends_once(
    stack: Stack,
) -> None:
    stack.sendgrid.script(
        Answer(
            429, {"errors": [{"message": "too many requests"}]}, {"Retry-After": "3"}
        )
    )
    await create_campaign(stack)
    lead_id = await capture(stack, "ada@example.com")

    (message,) = await stack.eventually(
        lambda: [m for m in messages_of(stack, lead_id) if m.status == "sent"],
        timeout=30,
        message="welcome email sent after the 429",
    )

    attempts = [r for r in stack.sendgrid.requests if r.path == "/v3/mail/send"]
    assert len(attempts) == 2
    assert len(stack.sendgrid.accepted) == 1
    assert message.attempts == 2
    assert message.provider_message_id == stack.sendgrid.issued_ids[0]
    gaps = [r.received_at - attempts[0].received_at for r in attempts[1:]]
    assert gaps[0] >= 2.9


async def test_bad_address_fails_alone_and_is_suppressed(stack: Stack) -> None:
    stack.sendgrid.reject_addresses.add("broken@example.com")
    response = await stack.api.post("/api/v1/nurturing/campaigns", json=TWO_EMAILS)
    assert response.status_code == 201, response.text
    campaign_id = response.json()["id"]
    good = [await capture(stack, f"reader{i}@example.com") for i in range(3)]
    bad = await capture(stack, "broken@example.com")

    for lead_id in good:
        await stack.eventually(
            lambda lead_id=lead_id: any(
                m.status == "sent" for m in messages_of(stack, lead_id)
            ),
            message=f"welcome email to {lead_id}",
        )
    result = await finished_enrollment(stack, campaign_id, bad)

    assert [s.status for s in result.steps] == ["failed", "skipped"]
    assert "suppressed: invalid address" in (result.steps[1].detail or "")
    sent_to = [
        mail["personalizations"][0]["to"][0]["email"]
        for mail in stack.sendgrid.accepted.values()
    ]
    assert sorted(sent_to) == [f"reader{i}@example.com" for i in range(3)]
    attempts_for_bad = [
        m
        for m in stack.sendgrid.mails()
        if m["personalizations"][0]["to"][0]["email"] == "broken@example.com"
    ]
    assert len(attempts_for_bad) == 1
    with session_scope(stack.engine) as session:
        suppression = session.exec(
            select(Suppression).where(Suppression.address == "broken@example.com")
        ).one()
    assert suppression.reason == "invalid_address"


async def test_on_failure_exit_ends_the_enrollment(stack: Stack) -> None:
    stack.sendgrid.reject_addresses.add("broken@example.com")
    campaign = {**TWO_EMAILS, "name": "Exit on failure"}
    campaign["sequence"] = [
        {**TWO_EMAILS["sequence"][0], "onFailure": "exit"},
        TWO_EMAILS["sequence"][1],
    ]
    response = await stack.api.post("/api/v1/nurturing/campaigns", json=campaign)
    assert response.status_code == 201, response.text
    lead_id = await capture(stack, "broken@example.com")

    result = await finished_enrollment(stack, response.json()["id"], lead_id)
    await record_history(
        stack.client.get_workflow_handle(
            nurture_workflow_id(response.json()["id"], lead_id)
        ),
        "nurture-send-failed-exit",
    )

    assert result.status == "failed"
    assert [s.status for s in result.steps] == ["failed"]


async def test_twilio_unsubscribed_recipient_opts_the_number_out(
    stack: Stack,
) -> None:
    error = example("twilio/error_21610.json")
    stack.twilio.script(Answer(400, error))
    campaign = {
        "name": "Texts",
        "trigger": {"type": "lead_created"},
        "sequence": [
            {"step": 1, "channel": "sms", "template": "welcome_sms"},
            {"step": 2, "delay": "1 day", "channel": "sms", "template": "welcome_sms"},
        ],
    }
    response = await stack.api.post("/api/v1/nurturing/campaigns", json=campaign)
    assert response.status_code == 201, response.text
    lead = await stack.api.post("/api/v1/leads", json=example("lead.json"))
    lead_id = lead.json()["id"]

    result = await finished_enrollment(stack, response.json()["id"], lead_id)

    assert [s.status for s in result.steps] == ["failed", "skipped"]
    assert "opted out of sms" in (result.steps[1].detail or "")
    assert len(stack.twilio.messages()) == 1
    consent = await stack.api.get(f"/api/v1/leads/{lead_id}/consent")
    assert consent.json()["channels"]["sms"]["consent"] == "opted_out"
    assert consent.json()["records"][0]["proof"]["code"] == 21610


async def test_many_sends_under_rate_limit_arrive_once_each(
    stack_factory: Any,
) -> None:
    async with stack_factory(email_rate_per_second=4.0) as stack:
        await create_campaign(stack)
        leads = [await capture(stack, f"reader{i}@example.com") for i in range(8)]
        await stack.eventually(
            lambda: len(stack.sendgrid.accepted) >= len(leads),
            timeout=40,
            message="a welcome email for every lead",
        )
        await asyncio.sleep(1)
    assert len(stack.sendgrid.accepted) == len(leads)
    ids = [m["custom_args"]["message_id"] for m in stack.sendgrid.accepted.values()]
    assert len(set(ids)) == len(ids)


async def test_provider_outage_delays_and_sends_once(stack: Stack) -> None:
    stack.sendgrid.script(
        *(
            Answer(
                status, {"errors": [{"message": "unavailable"}]}, {"Retry-After": "1"}
            )
            for status in (500, 502, 503)
        )
    )
    await create_campaign(stack)
    lead_id = await capture(stack, "ada@example.com")

    (message,) = await stack.eventually(
        lambda: [m for m in messages_of(stack, lead_id) if m.status == "sent"],
        timeout=40,
        message="welcome email sent after the outage",
    )

    assert len(stack.sendgrid.mails()) == 4
    assert len(stack.sendgrid.accepted) == 1
    assert message.attempts == 4
    assert message.error is None


async def test_opt_out_after_prepare_stops_delivery(stack: Stack) -> None:
    lead_id = await capture(stack, "ada@example.com")
    message_id = store_message(stack, lead_id, "email", "queued")
    change = await stack.api.post(
        f"/api/v1/leads/{lead_id}/consent",
        json={"channel": "email", "status": "opted_out", "source": "call"},
    )
    assert change.status_code == 201, change.text

    result = run(delivery(stack), message_id)

    assert result.status == "suppressed"
    assert "opted out of email by call" in (result.reason or "")
    assert stack.sendgrid.mails() == []
    assert stored(stack, message_id).status == "suppressed"
