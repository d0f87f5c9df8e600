"""SendGrid Event Webhook batches as SendGrid sends them."""

import copy
import time
from typing import Any

from sqlmodel import func, select

from nurture.db import session_scope
from nurture.models import EngagementEvent, Lead
from tests.conftest import Stack, example
from tests.test_end_to_end import create_campaign, create_lead, open_event_for

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
