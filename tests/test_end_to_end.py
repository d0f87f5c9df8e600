"""The whole product on a real Temporal server: capture, score, nurture, react."""

import copy
import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle

from nurture.temporal import nurture_workflow_id
from tests.conftest import Stack, example
from workflows.nurture import NurtureWorkflow


async def create_campaign(stack: Stack) -> str:
    response = await stack.api.post(
        "/api/v1/nurturing/campaigns", json=example("campaign.json")
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["version"] == 1
    assert body["status"] == "active"
    return str(body["id"])


async def create_lead(stack: Stack, **contact: str) -> str:
    lead = example("lead.json")
    lead["contact"].update(contact)
    response = await stack.api.post("/api/v1/leads", json=lead)
    assert response.status_code == 201, response.text
    # The response already carries the score that the campaign trigger checks.
    assert response.json()["score"] == 57
    assert response.json()["scoreReasons"][0]["criterion"] == "industry"
    return str(response.json()["id"])


async def record_history(handle: WorkflowHandle[Any, Any], name: str) -> None:
    """Save a finished workflow's history for tests/test_replay.py, when asked to."""
    if os.environ.get("NURTURE_RECORD_HISTORIES") != "1":
        return
    history = await handle.fetch_history()
    description = await handle.describe()
    path = Path(__file__).resolve().parent / "histories" / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "workflow_id": handle.id,
                "workflow_type": description.workflow_type,
                "history": history.to_json_dict(),
            },
            indent=1,
        )
    )


def open_event_for(mail_index: int, stack: Stack, lead_id: str) -> dict[str, Any]:
    """The example's open event, addressed to a message our fake SendGrid took."""
    events = example("sendgrid/events.json")
    event = copy.deepcopy(next(e for e in events if e["event"] == "open"))
    mail = stack.sendgrid.mails()[mail_index]
    custom_args = mail["custom_args"]
    event["sg_message_id"] = f"{stack.sendgrid.issued_ids[mail_index]}.filterdrecv-1.0"
    event["email"] = mail["personalizations"][0]["to"][0]["email"]
    # SendGrid repeats a message's custom args in each of its events.
    event.update(custom_args)
    assert custom_args["lead_id"] == lead_id
    return event


async def test_lead_is_nurtured_end_to_end(stack: Stack) -> None:
    campaign_id = await create_campaign(stack)
    lead_id = await create_lead(stack)

    mails = await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    assert len(mails) == 1
    welcome = mails[0]
    assert welcome["personalizations"][0]["to"][0]["email"] == "john.smith@company.com"
    assert welcome["subject"].startswith("Welcome, John:")
    assert "Example Company" in welcome["subject"]
    text = next(c["value"] for c in welcome["content"] if c["type"] == "text/plain")
    assert "Hi John," in text
    assert "Teams like Example Company" in text
    assert welcome["custom_args"]["lead_id"] == lead_id
    assert "welcome_email" in welcome["categories"]

    lead = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
    assert lead["score"] == 57
    assert lead["contact"]["phone"] == "+15551234567"
    assert lead["contact"]["phoneStatus"] == "unverified"
    assert lead["scoreReasons"][0]["points"] >= lead["scoreReasons"][-1]["points"]

    webhook = await stack.api.post(
        "/api/v1/webhooks/sendgrid",
        json=[open_event_for(0, stack, lead_id)],
        headers={"Authorization": ""},
    )
    assert webhook.status_code == 200, webhook.text
    assert webhook.json()["stored"] == 1
    assert webhook.json()["unmatched"] == 0

    handle = stack.client.get_workflow_handle_for(
        NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
    )
    welcome_id = welcome["custom_args"]["message_id"]

    async def open_recorded() -> bool:
        state = await handle.query(NurtureWorkflow.state)
        return welcome_id in state.opened_message_ids

    await stack.eventually(open_recorded, message="open signalled to the enrollment")
    messages = (await stack.api.get(f"/api/v1/leads/{lead_id}/messages")).json()
    assert [m["status"] for m in messages] == ["opened"]
    assert messages[0]["template"] == "welcome_email"
    assert messages[0]["campaignId"] == campaign_id
    assert messages[0]["step"] == 1

    assert len(stack.sendgrid.mails()) == 1
    await stack.env.fast_forward(handle, timedelta(hours=24))
    mails = await stack.eventually(
        lambda: len(stack.sendgrid.mails()) == 2 and stack.sendgrid.mails(),
        message="value proposition email sent after 24 hours",
    )
    second = mails[1]
    assert second["subject"].startswith("John, what automation saves")
    assert second["custom_args"]["lead_id"] == lead_id
    assert "value_proposition" in second["categories"]

    result = await handle.result()
    assert result.status == "completed"
    assert [s.status for s in result.steps] == ["sent", "sent"]
    await record_history(handle, "nurture-opened-both-steps")
    lead_handle = stack.client.get_workflow_handle(f"lead-{lead_id}")
    await lead_handle.terminate("history recorded")
    await record_history(lead_handle, "lead-opened-and-nurtured")
    messages = (await stack.api.get(f"/api/v1/leads/{lead_id}/messages")).json()
    assert [m["template"] for m in messages] == ["value_proposition", "welcome_email"]


async def test_lead_that_never_opens_gets_one_email(stack: Stack) -> None:
    campaign_id = await create_campaign(stack)
    lead_id = await create_lead(stack, email="quiet.reader@company.com")
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")

    handle = stack.client.get_workflow_handle_for(
        NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
    )
    await stack.env.fast_forward(handle, timedelta(hours=24))
    result = await handle.result()

    assert [s.status for s in result.steps] == ["sent", "skipped"]
    assert result.steps[1].detail == 'condition not met: opened("previous")'
    await record_history(handle, "nurture-never-opened")
    assert len(stack.sendgrid.mails()) == 1


async def test_duplicate_lead_creates_no_second_workflow(stack: Stack) -> None:
    await create_campaign(stack)
    first = await stack.api.post("/api/v1/leads", json=example("lead.json"))
    assert first.status_code == 201
    lead_id = first.json()["id"]
    assert first.json()["duplicate"] is False

    again = example("lead.json")
    again["contact"]["email"] = "John.Smith@COMPANY.com"
    again["company"]["size"] = "100-200"
    second = await stack.api.post("/api/v1/leads", json=again)
    assert second.status_code == 200, second.text
    assert second.json()["id"] == lead_id
    assert second.json()["duplicate"] is True
    assert second.json()["company"]["size"] == "100-200"

    async def lead_workflows() -> list[str]:
        found = [
            execution.id
            async for execution in stack.client.list_workflows(
                f'WorkflowType = "LeadWorkflow" AND LeadId = "{lead_id}"'
            )
        ]
        return found

    assert await stack.eventually(lead_workflows) == [f"lead-{lead_id}"]
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    lead = (await stack.api.get("/api/v1/leads", params={"limit": 10})).json()
    assert lead["total"] == 1
    assert len(stack.sendgrid.mails()) == 1
