"""Sending through the official SDKs to fake providers: retries, failures, once only."""

from typing import Any

from sqlmodel import select
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment

from activities.delivery import DeliveryActivities
from activities.providers import CrmTaskSender, SendGridEmailSender, TwilioSmsSender
from nurture.contracts import DeliverMessageInput
from nurture.db import session_scope
from nurture.models import Message
from nurture.temporal import nurture_workflow_id
from tests.conftest import Stack, example
from tests.fakes import Answer
from tests.test_end_to_end import create_campaign, create_lead
from workflows.nurture import NurtureWorkflow

SMS_CAMPAIGN = {
    "name": "Text Welcome",
    "trigger": {"type": "lead_created"},
    "sequence": [
        {"step": 1, "delay": "0 hours", "channel": "sms", "template": "welcome_sms"},
    ],
}


def messages_of(stack: Stack, lead_id: str) -> list[Message]:
    with session_scope(stack.engine) as session:
        return list(
            session.exec(select(Message).where(Message.lead_id == lead_id)).all()
        )


async def finished_enrollment(stack: Stack, campaign_id: str, lead_id: str) -> Any:
    """Skip the enrollment's timers until it ends, and return its final state."""
    handle = stack.client.get_workflow_handle_for(
        NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
    )

    async def started() -> bool:
        try:
            await handle.describe()
        except RPCError:
            return False
        return True

    await stack.eventually(started, message="enrollment started")
    try:
        await stack.env.fast_forward(handle, None)
    except RPCError:
        # An enrollment without timers may end before the clock can move.
        description = await handle.describe()
        assert description.status is not None
        assert description.status.name == "COMPLETED"
    return await handle.result()


async def test_rate_limited_send_is_retried_once(stack: Stack) -> None:
    stack.sendgrid.script(
        Answer(
            429, {"errors": [{"message": "too many requests"}]}, {"Retry-After": "1"}
        )
    )
    await create_campaign(stack)
    lead_id = await create_lead(stack)

    mails = await stack.eventually(
        lambda: len(stack.sendgrid.requests) == 2 and stack.sendgrid.mails(),
        message="send retried after the 429",
    )
    assert mails[0] == mails[1]
    sent = await stack.eventually(
        lambda: [m for m in messages_of(stack, lead_id) if m.status == "sent"]
    )
    assert len(sent) == 1
    assert sent[0].provider_message_id == stack.sendgrid.issued_ids[0]
    assert sent[0].error is None


async def test_rejected_address_fails_without_retry(stack: Stack) -> None:
    stack.sendgrid.script(
        Answer(400, {"errors": [{"message": "Does not contain a valid address."}]})
    )
    campaign_id = await create_campaign(stack)
    lead_id = await create_lead(stack)

    result = await finished_enrollment(stack, campaign_id, lead_id)

    assert [s.status for s in result.steps] == ["failed", "skipped"]
    assert "valid address" in (result.steps[0].detail or "")
    assert len(stack.sendgrid.requests) == 1
    (message,) = messages_of(stack, lead_id)
    assert message.status == "failed"
    assert "SendGrid returned HTTP 400" in (message.error or "")


async def test_delivery_twice_calls_provider_once(stack: Stack) -> None:
    await create_campaign(stack)
    lead_id = await create_lead(stack)
    (message,) = await stack.eventually(
        lambda: [m for m in messages_of(stack, lead_id) if m.status == "sent"],
        message="welcome email marked sent",
    )
    activities = DeliveryActivities(
        stack.engine,
        SendGridEmailSender("SG.test", stack.sendgrid.url, "from@example.com"),
        TwilioSmsSender(
            "AC" + "0" * 32, "token", "+15005550006", stack.sendgrid.url, None
        ),
        CrmTaskSender(""),
    )

    again = ActivityEnvironment().run(
        activities.deliver_message, DeliverMessageInput(message_id=message.id)
    )

    assert again.status in ("sent", "delivered", "opened", "clicked")
    assert again.provider_message_id == stack.sendgrid.issued_ids[0]
    assert len(stack.sendgrid.mails()) == 1


async def test_sms_step_sends_through_twilio(stack: Stack) -> None:
    response = await stack.api.post("/api/v1/nurturing/campaigns", json=SMS_CAMPAIGN)
    assert response.status_code == 201, response.text
    lead_id = await create_lead(stack)

    sms = await stack.eventually(stack.twilio.messages, message="SMS sent")
    assert len(sms) == 1
    assert sms[0]["To"] == "+15551234567"
    assert sms[0]["From"] == "+15005550006"
    assert sms[0]["Body"].startswith("Hi John, thanks for signing up.")
    assert sms[0]["StatusCallback"].endswith("/api/v1/webhooks/twilio/status")
    sent = await stack.eventually(
        lambda: [m for m in messages_of(stack, lead_id) if m.status == "sent"]
    )
    assert sent[0].provider_message_id is not None
    assert sent[0].provider_message_id.startswith("SM")


async def test_unsubscribed_number_fails_for_good(stack: Stack) -> None:
    stack.twilio.script(Answer(400, example("twilio/error_21610.json")))
    response = await stack.api.post("/api/v1/nurturing/campaigns", json=SMS_CAMPAIGN)
    campaign_id = response.json()["id"]
    lead_id = await create_lead(stack)

    result = await finished_enrollment(stack, campaign_id, lead_id)

    assert [s.status for s in result.steps] == ["failed"]
    assert "21610" in (result.steps[0].detail or "")
    assert len(stack.twilio.requests) == 1
    (message,) = messages_of(stack, lead_id)
    assert message.status == "failed"


async def test_missing_template_value_fails_the_step(stack: Stack) -> None:
    campaign_id = await create_campaign(stack)
    lead = example("lead.json")
    del lead["contact"]["firstName"]
    response = await stack.api.post("/api/v1/leads", json=lead)
    lead_id = response.json()["id"]

    result = await finished_enrollment(stack, campaign_id, lead_id)

    assert [s.status for s in result.steps] == ["failed", "skipped"]
    assert "firstName" in (result.steps[0].detail or "")
    assert "default" in (result.steps[0].detail or "")
    assert stack.sendgrid.requests == []
    (message,) = messages_of(stack, lead_id)
    assert message.status == "failed"
    assert message.template == "welcome_email"
