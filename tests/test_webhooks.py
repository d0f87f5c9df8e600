"""Provider webhooks as SendGrid and Twilio send them, and what each event does."""

import asyncio
import copy
import time
import xml.etree.ElementTree as ElementTree
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import pytest
from sqlmodel import col, func, select
from twilio.request_validator import RequestValidator

from nurture.consent import suppression_of
from nurture.db import session_scope
from nurture.models import (
    ConsentRecord,
    EngagementEvent,
    Enrollment,
    Lead,
    Message,
    new_id,
)
from nurture.temporal import nurture_workflow_id
from tests.conftest import Stack, StackFactory, example
from tests.test_end_to_end import create_campaign, create_lead, open_event_for
from tests.test_webhook_signatures import (
    TWILIO_STATUS_ROUTE,
    post_twilio,
    twilio_settings,
)
from workflows.nurture import NurtureWorkflow

NO_KEY = {"Authorization": ""}


async def post_events(stack: Stack, events: Any) -> dict[str, Any]:
    response = await stack.api.post(
        "/api/v1/webhooks/sendgrid", json=events, headers=NO_KEY
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def stored_event_count(stack: Stack) -> int:
    with session_scope(stack.engine) as session:
        return session.exec(select(func.count()).select_from(EngagementEvent)).one()


async def test_example_batch_is_stored_once(stack: Stack) -> None:
    events = example("sendgrid/events.json")

    first = await post_events(stack, events)
    again = await post_events(stack, events)

    assert first == {"received": 7, "stored": 7, "duplicates": 0, "unmatched": 7}
    assert again == {"received": 7, "stored": 0, "duplicates": 7, "unmatched": 0}
    assert stored_event_count(stack) == 7


async def test_batch_without_event_ids_is_deduplicated(stack: Stack) -> None:
    events = copy.deepcopy(example("sendgrid/events.json"))
    for event in events:
        del event["sg_event_id"]

    await post_events(stack, events)
    again = await post_events(stack, events)

    assert again["duplicates"] == 7
    assert stored_event_count(stack) == 7


async def test_late_delivered_keeps_opened(stack: Stack) -> None:
    await create_campaign(stack)
    lead_id = await create_lead(stack)
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    opened = open_event_for(0, stack, lead_id)
    delivered = {**opened, "event": "delivered", "sg_event_id": "late-delivered-1"}

    await post_events(stack, [opened])
    await post_events(stack, [delivered])

    (message,) = (await stack.api.get(f"/api/v1/leads/{lead_id}/messages")).json()
    assert message["status"] == "opened"


async def test_click_counts_as_open_and_rescores(stack: Stack) -> None:
    await create_campaign(stack)
    lead_id = await create_lead(stack)
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    before = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()["score"]
    click_template = next(
        e for e in example("sendgrid/events.json") if e["event"] == "click"
    )
    click = {**open_event_for(0, stack, lead_id), **click_template}
    click.update(stack.sendgrid.mails()[0]["custom_args"])
    click["sg_message_id"] = open_event_for(0, stack, lead_id)["sg_message_id"]
    click["timestamp"] = int(time.time())

    await post_events(stack, [click])

    (message,) = (await stack.api.get(f"/api/v1/leads/{lead_id}/messages")).json()
    assert message["status"] == "clicked"

    async def rescored() -> int | None:
        score: int = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()["score"]
        return score if score > before else None

    after = await stack.eventually(rescored, message="click raised the score")
    assert after - before >= 3
    journey = (await stack.api.get(f"/api/v1/leads/{lead_id}/journey")).json()
    assert journey["nextAction"]["action"] == "follow_up"
    assert "pricing" in journey["nextAction"]["reason"]


async def test_bounce_stops_further_email(stack: Stack) -> None:
    await create_campaign(stack)
    lead_id = await create_lead(stack)
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    bounce_template = next(
        e for e in example("sendgrid/events.json") if e["event"] == "bounce"
    )
    bounce = {**bounce_template, **stack.sendgrid.mails()[0]["custom_args"]}
    bounce["sg_message_id"] = open_event_for(0, stack, lead_id)["sg_message_id"]

    await post_events(stack, [bounce])

    (message,) = (await stack.api.get(f"/api/v1/leads/{lead_id}/messages")).json()
    assert message["status"] == "bounced"
    with session_scope(stack.engine) as session:
        lead = session.get(Lead, lead_id)
        assert lead is not None
        assert lead.status == "bounced"


async def test_unsubscribe_marks_lead(stack: Stack) -> None:
    await create_campaign(stack)
    lead_id = await create_lead(stack)
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    template = next(
        e for e in example("sendgrid/events.json") if e["event"] == "unsubscribe"
    )
    unsubscribe = {**template, **stack.sendgrid.mails()[0]["custom_args"]}

    await post_events(stack, [unsubscribe])

    lead = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
    assert lead["status"] == "unsubscribed"


async def test_malformed_batch_names_the_event(stack: Stack) -> None:
    response = await stack.api.post(
        "/api/v1/webhooks/sendgrid",
        json=[{"event": "open"}, {"email": "x@example.com"}],
        headers=NO_KEY,
    )

    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == ["[1].event"]
    assert stored_event_count(stack) == 0


async def test_non_array_body_is_rejected(stack: Stack) -> None:
    response = await stack.api.post(
        "/api/v1/webhooks/sendgrid", json={"event": "open"}, headers=NO_KEY
    )

    assert response.status_code == 422
    assert response.json()["error"] == "validation_failed"


# Leads and messages stored directly, so each event type gets its own.


def add_lead(stack: Stack, email: str | None = None, phone: str | None = None) -> str:
    lead = Lead(
        email=email,
        email_normalized=email.lower() if email else None,
        phone=phone,
    )
    with session_scope(stack.engine) as session:
        session.add(lead)
    return lead.id


def add_message(
    stack: Stack, lead_id: str, channel: str, to: str, provider_message_id: str
) -> str:
    message = Message(
        id=new_id(),
        lead_id=lead_id,
        channel=channel,
        template="welcome_email" if channel == "email" else "welcome_sms",
        to_address=to,
        body="Hello",
        provider="sendgrid" if channel == "email" else "twilio",
        status="sent",
        provider_message_id=provider_message_id,
    )
    with session_scope(stack.engine) as session:
        session.add(message)
    return message.id


def load_lead(stack: Stack, lead_id: str) -> Lead:
    with session_scope(stack.engine) as session:
        lead = session.get(Lead, lead_id)
        assert lead is not None
        return lead


def load_message(stack: Stack, message_id: str) -> Message:
    with session_scope(stack.engine) as session:
        message = session.get(Message, message_id)
        assert message is not None
        return message


def consent_records(stack: Stack, lead_id: str) -> list[ConsentRecord]:
    with session_scope(stack.engine) as session:
        return list(
            session.exec(
                select(ConsentRecord)
                .where(ConsentRecord.lead_id == lead_id)
                .order_by(col(ConsentRecord.id))
            ).all()
        )


def suppression_reason(stack: Stack, channel: str, address: str) -> str | None:
    with session_scope(stack.engine) as session:
        found = suppression_of(session, channel, address)
        return found.reason if found else None


def events_of(stack: Stack, **where: Any) -> list[EngagementEvent]:
    with session_scope(stack.engine) as session:
        query = select(EngagementEvent).order_by(col(EngagementEvent.received_at))
        for name, value in where.items():
            query = query.where(getattr(EngagementEvent, name) == value)
        return list(session.exec(query).all())


def sendgrid_event(
    event_type: str, email: str, provider_id: str, **fields: Any
) -> dict[str, Any]:
    """An event of this type for one message: the example's when it has one."""
    templates = {e["event"]: e for e in example("sendgrid/events.json")}
    event = copy.deepcopy(templates.get(event_type, {"event": event_type}))
    event.pop("lead_id", None)
    event.pop("campaign_step", None)
    event.update(
        email=email,
        timestamp=int(time.time()),
        sg_event_id=f"{event_type}-{provider_id}",
        sg_message_id=f"{provider_id}.filterdrecv-test-1.0",
    )
    event.update(fields)
    return event


# Each documented SendGrid event type: (event type, extra fields, message
# status, suppression reason, email consent, lead status).
SENDGRID_CASES: list[tuple[str, dict[str, Any], str, str | None, str, str]] = [
    ("processed", {}, "sent", None, "unknown", "active"),
    (
        "deferred",
        {"response": "400 try again later", "attempt": "5"},
        "sent",
        None,
        "unknown",
        "active",
    ),
    ("delivered", {}, "delivered", None, "unknown", "active"),
    ("open", {}, "opened", None, "unknown", "active"),
    ("click", {}, "clicked", None, "unknown", "active"),
    ("bounce", {}, "bounced", "bounce", "unknown", "bounced"),
    (
        "bounce",
        {"type": "blocked", "reason": "550 5.7.1 blocked by policy"},
        "bounced",
        None,
        "unknown",
        "active",
    ),
    (
        "blocked",
        {"reason": "421 4.7.0 try again later"},
        "bounced",
        None,
        "unknown",
        "active",
    ),
    (
        "dropped",
        {"reason": "Bounced Address"},
        "failed",
        "dropped",
        "unknown",
        "active",
    ),
    (
        "dropped",
        {"reason": "Spam Content (if spam checker app is enabled)"},
        "failed",
        None,
        "unknown",
        "active",
    ),
    ("spamreport", {}, "sent", "spamreport", "opted_out", "unsubscribed"),
    ("unsubscribe", {}, "sent", None, "opted_out", "unsubscribed"),
    (
        "group_unsubscribe",
        {"asm_group_id": 42},
        "sent",
        None,
        "opted_out",
        "unsubscribed",
    ),
    ("group_resubscribe", {"asm_group_id": 42}, "sent", None, "opted_in", "active"),
    ("some_future_event", {}, "sent", None, "unknown", "active"),
]


async def test_each_sendgrid_event_type(stack: Stack) -> None:
    targets = []
    batch = []
    for index, (event_type, fields, *_expected) in enumerate(SENDGRID_CASES):
        email = f"Case{index}@Example.com"
        lead_id = add_lead(stack, email=email)
        provider_id = f"case{index}msg"
        message_id = add_message(stack, lead_id, "email", email.lower(), provider_id)
        targets.append((lead_id, message_id, email.lower()))
        batch.append(sendgrid_event(event_type, email, provider_id, **fields))

    receipt = await post_events(stack, batch)

    assert receipt == {
        "received": len(batch),
        "stored": len(batch),
        "duplicates": 0,
        "unmatched": 0,
    }
    for case, (lead_id, message_id, email) in zip(SENDGRID_CASES, targets, strict=True):
        event_type, fields, status, suppression, consent, lead_status = case
        label = f"{event_type} {fields}"
        message = load_message(stack, message_id)
        lead = load_lead(stack, lead_id)
        assert message.status == status, label
        assert suppression_reason(stack, "email", email) == suppression, label
        assert lead.email_consent == consent, label
        assert lead.status == lead_status, label
        assert [e.type for e in events_of(stack, lead_id=lead_id)] == [event_type]


async def test_bounce_keeps_reason_on_message(stack: Stack) -> None:
    lead_id = add_lead(stack, email="carol@invalid.example")
    message_id = add_message(stack, lead_id, "email", "carol@invalid.example", "b1")
    bounce = sendgrid_event("bounce", "carol@invalid.example", "b1")

    await post_events(stack, [bounce])

    message = load_message(stack, message_id)
    assert message.status == "bounced"
    assert message.error == f"SendGrid bounce: {bounce['reason']}"


async def test_unsubscribe_consent_has_proof(stack: Stack) -> None:
    lead_id = add_lead(stack, email="grace@example.com")
    add_message(stack, lead_id, "email", "grace@example.com", "g1")
    event = sendgrid_event(
        "group_unsubscribe", "grace@example.com", "g1", asm_group_id=7
    )

    await post_events(stack, [event])

    (record,) = consent_records(stack, lead_id)
    assert record.channel == "email"
    assert record.status == "opted_out"
    assert record.source == "sendgrid"
    assert record.proof["sg_event_id"] == event["sg_event_id"]
    assert record.proof["asm_group_id"] == 7
    assert record.occurred_at == datetime.fromtimestamp(event["timestamp"], UTC)


async def test_unsubscribe_reaches_every_lead_with_address(stack: Stack) -> None:
    # A lead matched by address alone: the event names no message of ours.
    lead_id = add_lead(stack, email="Grace@Example.com")
    event = example("sendgrid/events.json")[-1]
    assert event["event"] == "unsubscribe"
    assert event["email"] == "grace@example.com"

    receipt = await post_events(stack, [event])

    assert receipt["unmatched"] == 1
    assert load_lead(stack, lead_id).email_consent == "opted_out"


async def test_event_without_email_uses_message_address(stack: Stack) -> None:
    lead_id = add_lead(stack, email="dora@example.com")
    add_message(stack, lead_id, "email", "dora@example.com", "d1")
    bounce = sendgrid_event("bounce", "ignored@example.com", "d1")
    del bounce["email"]

    await post_events(stack, [bounce])

    assert suppression_reason(stack, "email", "dora@example.com") == "bounce"


async def test_category_string_or_list(stack: Stack) -> None:
    lead_id = add_lead(stack, email="eve@example.com")
    add_message(stack, lead_id, "email", "eve@example.com", "e1")
    as_string = sendgrid_event("delivered", "eve@example.com", "e1", category="news")
    as_list = sendgrid_event(
        "open", "eve@example.com", "e1", category=["news", "welcome"]
    )
    without = sendgrid_event("click", "eve@example.com", "e1")
    del without["category"]

    receipt = await post_events(stack, [as_string, as_list, without])

    assert receipt["stored"] == 3
    stored = {e.type: e.data for e in events_of(stack, lead_id=lead_id)}
    assert stored["delivered"]["category"] == ["news"]
    assert stored["open"]["category"] == ["news", "welcome"]
    assert "category" not in stored["click"]


async def test_duplicate_unsubscribe_recorded_once(stack: Stack) -> None:
    lead_id = add_lead(stack, email="hal@example.com")
    add_message(stack, lead_id, "email", "hal@example.com", "h1")
    event = sendgrid_event("unsubscribe", "hal@example.com", "h1")

    first = await post_events(stack, [event, event])
    second = await post_events(stack, [event])

    assert first["stored"] == 1
    assert first["duplicates"] == 1
    assert second["duplicates"] == 1
    assert len(consent_records(stack, lead_id)) == 1
    assert len(events_of(stack, lead_id=lead_id)) == 1


async def test_out_of_order_events_never_go_back(stack: Stack) -> None:
    lead_id = add_lead(stack, email="ivy@example.com")
    message_id = add_message(stack, lead_id, "email", "ivy@example.com", "i1")
    now = int(time.time())
    resubscribe = sendgrid_event(
        "group_resubscribe", "ivy@example.com", "i1", timestamp=now
    )
    late_unsubscribe = sendgrid_event(
        "group_unsubscribe", "ivy@example.com", "i1", timestamp=now - 3600
    )
    click = sendgrid_event("click", "ivy@example.com", "i1", timestamp=now - 60)
    late_delivered = sendgrid_event(
        "delivered", "ivy@example.com", "i1", timestamp=now - 120
    )

    await post_events(stack, [resubscribe, click])
    await post_events(stack, [late_unsubscribe, late_delivered])

    lead = load_lead(stack, lead_id)
    assert lead.email_consent == "opted_in"
    assert lead.status == "active"
    assert len(consent_records(stack, lead_id)) == 2
    message = load_message(stack, message_id)
    assert message.status == "clicked"
    assert message.delivered_at == datetime.fromtimestamp(now - 120, UTC)


# Twilio: inbound SMS and status callbacks, posted from the example files.

PHONE = "+15555550123"


def twiml_messages(body: str) -> list[str]:
    root = ElementTree.fromstring(body)
    assert root.tag == "Response"
    return [element.text or "" for element in root.iter("Message")]


async def test_stop_opts_out_every_lead_with_number(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        first = add_lead(stack, phone=PHONE)
        second = add_lead(stack, email="other@example.com", phone=PHONE)
        bystander = add_lead(stack, phone="+15555550199")

        response = await post_twilio(stack, "inbound_stop.txt")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert twiml_messages(response.text) == []
    for lead_id in (first, second):
        assert load_lead(stack, lead_id).sms_consent == "opted_out"
        (record,) = consent_records(stack, lead_id)
        assert record.channel == "sms"
        assert record.status == "opted_out"
        assert record.source == "twilio"
        assert record.proof == {
            "keyword": "STOP",
            "MessageSid": "SM22222222222222222222222222222222",
        }
    assert load_lead(stack, bystander).sms_consent == "unknown"
    assert suppression_reason(stack, "sms", PHONE) == "unsubscribed_at_provider"
    assert sorted(e.type for e in events_of(stack)) == ["sms_opt_out"] * 2


async def test_start_after_stop_opts_back_in(stack_factory: StackFactory) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        lead_id = add_lead(stack, phone=PHONE)

        stop = await post_twilio(stack, "inbound_stop.txt")
        start = await post_twilio(stack, "inbound_start.txt")

    assert stop.status_code == 200
    assert start.status_code == 200
    assert load_lead(stack, lead_id).sms_consent == "opted_in"
    records = consent_records(stack, lead_id)
    assert [r.status for r in records] == ["opted_out", "opted_in"]
    assert records[1].proof["keyword"] == "START"
    assert suppression_reason(stack, "sms", PHONE) is None


async def test_help_answers_with_twiml(stack_factory: StackFactory) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        lead_id = add_lead(stack, phone=PHONE)

        response = await post_twilio(stack, "inbound_help.txt")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/xml")
    assert twiml_messages(response.text) == [stack.settings.sms_help_reply]
    assert load_lead(stack, lead_id).sms_consent == "unknown"
    assert [e.type for e in events_of(stack)] == ["sms_help"]


async def test_help_without_reply_setting_is_silent(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory(**twilio_settings(), sms_help_reply="") as stack:
        response = await post_twilio(stack, "inbound_help.txt")

    assert response.status_code == 200
    assert twiml_messages(response.text) == []


async def test_reply_from_unknown_number_is_stored(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        first = await post_twilio(stack, "inbound_sms.txt")
        again = await post_twilio(stack, "inbound_sms.txt")

    assert first.status_code == 200
    assert again.status_code == 200
    assert twiml_messages(first.text) == []
    (event,) = events_of(stack)
    assert event.type == "replied"
    assert event.lead_id is None
    assert event.data["Body"] == "Yes, please call me tomorrow after 3pm"


async def test_reply_raises_score(stack_factory: StackFactory) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        lead_id = await create_lead(stack, phone=PHONE)
        before = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()["score"]

        response = await post_twilio(stack, "inbound_sms.txt")

        async def rescored() -> int | None:
            lead = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
            score: int = lead["score"]
            return score if score > before else None

        after = await stack.eventually(rescored, message="reply raised the score")

    assert response.status_code == 200
    assert after > before
    (event,) = events_of(stack, lead_id=lead_id, type="replied")
    assert event.type == "replied"
    assert event.source == "twilio"
    assert event.provider_event_id == (
        f"twilio:SM11111111111111111111111111111111:{lead_id}"
    )


async def test_status_callback_moves_message_forward(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        lead_id = add_lead(stack, phone=PHONE)
        message_id = add_message(
            stack, lead_id, "sms", PHONE, "SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
        )

        first = await post_twilio(stack, "status_delivered.txt")
        again = await post_twilio(stack, "status_delivered.txt")

    assert first.status_code == 204
    assert first.content == b""
    assert again.status_code == 204
    message = load_message(stack, message_id)
    assert message.status == "delivered"
    assert message.delivered_at is not None
    (event,) = events_of(stack, message_id=message_id)
    assert event.type == "sms_delivered"
    assert (
        event.provider_event_id == "twilio:SMaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa:delivered"
    )


async def test_status_21610_suppresses_number(stack_factory: StackFactory) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        lead_id = add_lead(stack, phone=PHONE)
        message_id = add_message(
            stack, lead_id, "sms", PHONE, "SMcccccccccccccccccccccccccccccccc"
        )

        response = await post_twilio(stack, "status_failed_21610.txt")

    assert response.status_code == 204
    message = load_message(stack, message_id)
    assert message.status == "failed"
    assert "error 21610" in (message.error or "")
    assert suppression_reason(stack, "sms", PHONE) == "unsubscribed_at_provider"
    lead = load_lead(stack, lead_id)
    assert lead.sms_consent == "opted_out"
    (record,) = consent_records(stack, lead_id)
    assert record.source == "twilio"
    assert record.proof == {
        "MessageSid": "SMcccccccccccccccccccccccccccccccc",
        "ErrorCode": 21610,
    }


def signed_status(fields: dict[str, str]) -> tuple[bytes, str]:
    """A status callback body and its X-Twilio-Signature, as Twilio signs them."""
    settings = twilio_settings()
    body = urlencode(fields)
    signature = RequestValidator(settings["twilio_auth_token"]).compute_signature(
        settings["twilio_status_webhook_url"], fields
    )
    return body.encode(), signature


@pytest.mark.parametrize(
    ("status", "code", "suppression"),
    [
        ("undelivered", "21211", "invalid_number"),
        ("failed", "21614", "invalid_number"),
        ("undelivered", "30006", "invalid_number"),
        ("undelivered", "30003", None),
    ],
)
async def test_status_error_codes(
    stack_factory: StackFactory, status: str, code: str, suppression: str | None
) -> None:
    sid = "SM" + "d" * 32
    body, signature = signed_status(
        {
            "MessageSid": sid,
            "MessageStatus": status,
            "To": "+15555550177",
            "ErrorCode": code,
        }
    )
    async with stack_factory(**twilio_settings()) as stack:
        lead_id = add_lead(stack, phone="+15555550177")
        message_id = add_message(stack, lead_id, "sms", "+15555550177", sid)

        response = await stack.api.post(
            TWILIO_STATUS_ROUTE,
            content=body,
            headers={
                "Authorization": "",
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature,
            },
        )

    assert response.status_code == 204, response.text
    assert load_message(stack, message_id).status == "failed"
    assert suppression_reason(stack, "sms", "+15555550177") == suppression
    assert load_lead(stack, lead_id).sms_consent == "unknown"


async def test_signed_status_without_sid_is_422(stack_factory: StackFactory) -> None:
    body, signature = signed_status({"MessageStatus": "delivered"})
    async with stack_factory(**twilio_settings()) as stack:
        response = await stack.api.post(
            TWILIO_STATUS_ROUTE,
            content=body,
            headers={
                "Authorization": "",
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": signature,
            },
        )

    assert response.status_code == 422
    assert [e["path"] for e in response.json()["errors"]] == ["MessageSid"]


REPLY_GOAL_CAMPAIGN = {
    "name": "Text And Wait For A Reply",
    "trigger": {"type": "lead_created"},
    "goals": [{"event": "replied"}],
    "sequence": [
        {"step": 1, "delay": "0 hours", "channel": "sms", "template": "welcome_sms"},
        {"step": 2, "delay": "14 days", "channel": "sms", "template": "welcome_sms"},
    ],
}


async def test_reply_ends_enrollment_with_goal(stack_factory: StackFactory) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        created = await stack.api.post(
            "/api/v1/nurturing/campaigns", json=REPLY_GOAL_CAMPAIGN
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        lead_id = await create_lead(stack, phone=PHONE)
        sms = await stack.eventually(stack.twilio.messages, message="first SMS sent")
        assert sms[0]["To"] == PHONE

        def sent_message() -> Message | None:
            with session_scope(stack.engine) as session:
                return session.exec(
                    select(Message).where(
                        Message.lead_id == lead_id, Message.status == "sent"
                    )
                ).first()

        message = await stack.eventually(sent_message, message="SMS marked sent")
        handle = stack.client.get_workflow_handle_for(
            NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
        )

        response = await post_twilio(stack, "inbound_sms.txt")
        # The second SMS is 14 days away and the test clock does not move, so
        # only the goal can end the enrollment within the timeout.
        result = await asyncio.wait_for(handle.result(), timeout=60)

    assert response.status_code == 200
    assert result.status == "converted"
    assert result.goal == "replied"
    assert len(stack.twilio.messages()) == 1
    with session_scope(stack.engine) as session:
        (enrollment,) = session.exec(
            select(Enrollment).where(Enrollment.lead_id == lead_id)
        ).all()
    assert enrollment.status == "converted"
    assert enrollment.goal == "replied"
    (event,) = events_of(stack, lead_id=lead_id, type="replied")
    assert event.message_id == message.id


STOP_WAIT_CAMPAIGN = {
    "name": "Texts two days apart",
    "trigger": {"type": "lead_created"},
    "sequence": [
        {"step": 1, "channel": "sms", "template": "welcome_sms"},
        {"step": 2, "delay": "2 days", "channel": "sms", "template": "welcome_sms"},
    ],
}


async def test_stop_while_waiting_prevents_next_sms(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        created = await stack.api.post(
            "/api/v1/nurturing/campaigns", json=STOP_WAIT_CAMPAIGN
        )
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        lead_id = await create_lead(stack, phone=PHONE)
        await stack.eventually(stack.twilio.messages, message="first SMS sent")
        handle = stack.client.get_workflow_handle_for(
            NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
        )

        stop = await post_twilio(stack, "inbound_stop.txt")
        await stack.env.fast_forward(handle, timedelta(days=3))
        result = await asyncio.wait_for(handle.result(), timeout=60)

    assert stop.status_code == 200
    assert [s.status for s in result.steps] == ["sent", "skipped"]
    assert "opted out of sms by twilio" in (result.steps[1].detail or "")
    assert len(stack.twilio.messages()) == 1
