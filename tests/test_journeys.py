"""The journey language through the API and real workflows, with skipped time."""

import re
import time as clock
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import select
from temporalio.client import WorkflowHandle
from temporalio.service import RPCError

from api.routes.lifecycle import start_enrollment
from nurture.campaigns import CampaignSpec, SplitStep
from nurture.db import session_scope
from nurture.models import CampaignVersion, Enrollment, Message
from nurture.temporal import lead_workflow_id, nurture_workflow_id
from tests.conftest import Stack, StackFactory, example
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow

CAMPAIGNS = "/api/v1/nurturing/campaigns"
NO_KEY = {"Authorization": ""}
WELCOME = {
    "channel": "email",
    "template": "welcome_email",
    "personalization": {
        "firstName": "{{lead.firstName}}",
        "companyName": "{{lead.company.name}}",
    },
}


async def campaign(stack: Stack, sequence: list[dict[str, Any]], **extra: Any) -> str:
    body = {
        "name": f"Journey {clock.monotonic_ns()}",
        "trigger": {"type": "lead_created"},
        "sequence": sequence,
        **extra,
    }
    response = await stack.api.post(CAMPAIGNS, json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def lead(
    stack: Stack, email: str, company: dict[str, Any] | None = None, **contact: Any
) -> str:
    body = example("lead.json")
    body["contact"].update(email=email, **contact)
    body["company"].update(company or {})
    response = await stack.api.post("/api/v1/leads", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def enrollment(
    stack: Stack, campaign_id: str, lead_id: str
) -> WorkflowHandle[Any, Any]:
    """Return the handle of a lead's enrollment once its workflow has started."""
    handle = stack.client.get_workflow_handle_for(
        NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
    )

    async def started() -> bool:
        try:
            await handle.describe()
        except RPCError:
            return False
        return True

    await stack.eventually(started, message=f"enrollment of {lead_id} started")
    return handle


def messages(stack: Stack, lead_id: str) -> list[Message]:
    with session_scope(stack.engine) as session:
        rows = session.exec(select(Message).where(Message.lead_id == lead_id)).all()
        return sorted(rows, key=lambda m: m.scheduled_at or m.created_at)


def sent_templates(stack: Stack, lead_id: str) -> list[str]:
    return [m.template for m in messages(stack, lead_id) if m.status != "failed"]


async def state(handle: WorkflowHandle[Any, Any]) -> Any:
    return await handle.query(NurtureWorkflow.state)


async def test_branch_sends_by_industry(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {
                "id": "fit",
                "type": "branch",
                "condition": 'company.industry == "Technology" and score >= 50',
                "then": "welcome",
                "else": "bye",
            },
            {"id": "welcome", **WELCOME, "next": "bye"},
            {"id": "bye", "type": "exit"},
        ],
    )
    tech = await lead(stack, "tech@company.com")
    retail = await lead(stack, "shop@company.com", company={"industry": "Retail"})

    tech_result = await (await enrollment(stack, campaign_id, tech)).result()
    retail_result = await (await enrollment(stack, campaign_id, retail)).result()

    assert [(s.step, s.status) for s in tech_result.steps] == [
        ("fit", "branched"),
        ("welcome", "sent"),
        ("bye", "exited"),
    ]
    assert sent_templates(stack, tech) == ["welcome_email"]
    assert tech_result.status == "completed"
    assert [(s.step, s.status, s.detail) for s in retail_result.steps] == [
        ("fit", "branched", "else"),
        ("bye", "exited", None),
    ]
    assert sent_templates(stack, retail) == []


async def test_split_is_stable_per_lead(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {
                "id": "ab",
                "type": "split",
                "variants": [
                    {"name": "A", "weight": 1, "next": "a"},
                    {"name": "B", "weight": 1, "next": "b"},
                ],
            },
            {"id": "a", **WELCOME, "next": "end"},
            {"id": "b", "channel": "email", "template": "value_proposition"},
            {"id": "end", "type": "exit"},
        ],
    )
    lead_ids = [await lead(stack, f"split{i}@company.com") for i in range(6)]
    variants = {}
    for lead_id in lead_ids:
        result = await (await enrollment(stack, campaign_id, lead_id)).result()
        variants[lead_id] = result.variants["ab"]
        expected = "welcome_email" if variants[lead_id] == "A" else "value_proposition"
        assert sent_templates(stack, lead_id) == [expected]
        assert messages(stack, lead_id)[0].variant == variants[lead_id]
    # The same lead, campaign and step always take the same variant.
    assert set(variants.values()) <= {"A", "B"}
    for lead_id in lead_ids:
        step = SplitStep.model_validate(
            {
                "type": "split",
                "variants": [
                    {"name": "A", "weight": 1},
                    {"name": "B", "weight": 1},
                ],
            }
        )
        again = step.choose(f"{lead_id}:{campaign_id}:ab")
        assert again.name == variants[lead_id]


async def test_click_on_pricing_creates_task(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {"id": "welcome", **WELCOME},
            {
                "id": "pricing",
                "type": "wait_for_event",
                "event": "click",
                "urlContains": "pricing",
                "timeout": "3 days",
                "onEvent": "call",
                "onTimeout": "nudge",
            },
            {
                "id": "call",
                "channel": "task",
                "template": "call_hot_lead",
                "next": "end",
            },
            {"id": "nudge", "channel": "email", "template": "value_proposition"},
            {"id": "end", "type": "exit"},
        ],
    )
    lead_id = await lead(stack, "clicker@company.com")
    handle = await enrollment(stack, campaign_id, lead_id)
    mail = (await stack.eventually(stack.sendgrid.mails, message="welcome sent"))[0]

    async def waiting() -> bool:
        return (await state(handle)).next_step == "pricing"

    await stack.eventually(waiting, message="waiting for the click")
    click = next(e for e in example("sendgrid/events.json") if e["event"] == "click")
    click = {**click, **mail["custom_args"], "timestamp": int(clock.time())}
    click["sg_message_id"] = f"{stack.sendgrid.issued_ids[0]}.filter-1"
    response = await stack.api.post(
        "/api/v1/webhooks/sendgrid", json=[click], headers=NO_KEY
    )
    assert response.status_code == 200, response.text

    result = await handle.result()
    assert [(s.step, s.status) for s in result.steps] == [
        ("welcome", "sent"),
        ("pricing", "waited"),
        ("call", "sent"),
        ("end", "exited"),
    ]
    task = next(m for m in messages(stack, lead_id) if m.channel == "task")
    assert task.subject == "Call John at Example Company"
    assert task.status == "sent"
    journey = (await stack.api.get(f"/api/v1/leads/{lead_id}/journey")).json()
    assert [t["title"] for t in journey["tasks"]] == ["Call John at Example Company"]
    assert re.match(r"John Smith scored \d+ and", journey["tasks"][0]["description"])
    assert len(stack.sendgrid.mails()) == 1


async def test_no_click_times_out_to_nudge(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {"id": "welcome", **WELCOME},
            {
                "id": "pricing",
                "type": "wait_for_event",
                "event": "click",
                "timeout": "3 days",
                "onEvent": "end",
            },
            {"id": "nudge", "channel": "email", "template": "value_proposition"},
            {"id": "end", "type": "exit"},
        ],
    )
    lead_id = await lead(stack, "quiet@company.com")
    handle = await enrollment(stack, campaign_id, lead_id)
    await stack.eventually(stack.sendgrid.mails, message="welcome sent")

    await stack.env.fast_forward(handle, timedelta(days=3, minutes=1))
    result = await handle.result()

    assert [(s.step, s.status) for s in result.steps] == [
        ("welcome", "sent"),
        ("pricing", "waited"),
        ("nudge", "sent"),
        ("end", "exited"),
    ]
    assert result.steps[1].detail == "click: timed out"
    assert sent_templates(stack, lead_id) == ["welcome_email", "value_proposition"]


async def test_goal_while_waiting_ends_enrollment(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {"id": "welcome", **WELCOME},
            {"id": "later", "type": "wait", "duration": "P7D"},
            {"id": "nudge", "channel": "email", "template": "value_proposition"},
        ],
        goals=[{"id": "bought", "event": "converted"}],
    )
    lead_id = await lead(stack, "buyer@company.com")
    handle = await enrollment(stack, campaign_id, lead_id)

    async def waiting() -> bool:
        return (await state(handle)).next_step == "later"

    await stack.eventually(waiting, message="waiting seven days")
    response = await stack.api.post(
        "/api/v1/events", json={"leadId": lead_id, "type": "converted"}
    )
    assert response.status_code == 202, response.text

    result = await handle.result()
    assert result.status == "converted"
    assert result.goal == "bought"
    assert sent_templates(stack, lead_id) == ["welcome_email"]
    with session_scope(stack.engine) as session:
        stored = session.exec(
            select(Enrollment).where(Enrollment.lead_id == lead_id)
        ).one()
    assert stored.status == "converted"
    assert stored.goal == "bought"


async def test_reentry_once_never_double_sends(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [{"id": "welcome", **WELCOME}],
        trigger={"type": "behavior", "event": "content_download"},
    )
    lead_id = await lead(stack, "reader@company.com")
    download = {"leadId": lead_id, "type": "content_download"}

    for _ in range(3):
        response = await stack.api.post("/api/v1/events", json=download)
        assert response.status_code == 202
    handle = await enrollment(stack, campaign_id, lead_id)
    await handle.result()
    response = await stack.api.post("/api/v1/events", json=download)
    assert response.status_code == 202
    lead_handle = stack.client.get_workflow_handle_for(
        LeadWorkflow.run, lead_workflow_id(lead_id)
    )

    async def all_handled() -> bool:
        return (await lead_handle.query(LeadWorkflow.state)).events_seen >= 4

    await stack.eventually(all_handled, message="lead workflow saw every download")

    listed = (await stack.api.get(f"{CAMPAIGNS}/{campaign_id}/enrollments")).json()
    assert [(e["leadId"], e["status"]) for e in listed] == [(lead_id, "completed")]
    assert sent_templates(stack, lead_id) == ["welcome_email"]
    assert len(stack.sendgrid.mails()) == 1


async def test_reentry_always_enrolls_again(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [{"id": "note", "channel": "task", "template": "call_hot_lead"}],
        trigger={"type": "behavior", "event": "content_download"},
        reentry="always",
    )
    lead_id = await lead(stack, "returning@company.com")
    download = {"leadId": lead_id, "type": "content_download"}
    await stack.api.post("/api/v1/events", json=download)
    await (await enrollment(stack, campaign_id, lead_id)).result()

    await stack.api.post("/api/v1/events", json=download)

    async def two_enrollments() -> list[Any]:
        listed = (await stack.api.get(f"{CAMPAIGNS}/{campaign_id}/enrollments")).json()
        done = [e for e in listed if e["status"] == "completed"]
        return done if len(done) == 2 else []

    await stack.eventually(two_enrollments, message="second enrollment completed")
    assert [m.channel for m in messages(stack, lead_id)] == ["task", "task"]


async def test_weekday_window_holds_after_branch(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {"id": "check", "type": "branch", "condition": "score >= 0"},
            {"id": "welcome", **WELCOME},
        ],
        sendRules={
            "timezone": "Europe/Berlin",
            "sendWindow": {"start": "09:00", "end": "17:00", "days": ["tue"]},
        },
    )
    started = datetime.now(UTC)
    lead_id = await lead(stack, "tuesday@company.com", phone=None)
    handle = await enrollment(stack, campaign_id, lead_id)

    async def deferred() -> Any:
        current = await state(handle)
        return current if current.next_step == "welcome" else None

    waiting = await stack.eventually(deferred, message="send held for the window")
    assert "send window" in (waiting.waiting_reason or "")
    await stack.env.fast_forward(handle, timedelta(days=8))
    await handle.result()

    (message,) = messages(stack, lead_id)
    assert message.scheduled_at is not None
    local = message.scheduled_at.astimezone(ZoneInfo("Europe/Berlin"))
    assert local.strftime("%a") == "Tue"
    assert 9 <= local.hour < 17
    assert message.scheduled_at - started < timedelta(days=8)


async def test_local_time_across_dst_change(stack: Stack) -> None:
    zone = ZoneInfo("America/New_York")
    now = datetime.now(UTC)
    change = _next_offset_change(now, zone)
    if change - now < timedelta(days=3):
        # Too close to place a send before it; use the change after.
        change = _next_offset_change(change + timedelta(hours=2), zone)
    days_before = (change - now).days - 2
    campaign_id = await campaign(
        stack,
        [
            {"id": "before", "type": "wait", "duration": f"P{max(days_before, 0)}D"},
            {"id": "morning1", "type": "wait", "until": {"time": "09:00"}},
            {"id": "first", **WELCOME},
            {"id": "after", "type": "wait", "duration": "P4D"},
            {"id": "morning2", "type": "wait", "until": {"time": "09:00"}},
            {"id": "second", "channel": "email", "template": "value_proposition"},
        ],
    )
    lead_id = await lead(stack, "newyork@company.com", timezone="America/New_York")
    handle = await enrollment(stack, campaign_id, lead_id)

    await stack.env.fast_forward(handle, timedelta(days=max(days_before, 0) + 8))
    await handle.result()

    first, second = messages(stack, lead_id)
    assert first.scheduled_at is not None
    assert second.scheduled_at is not None
    assert first.scheduled_at < change < second.scheduled_at
    for message in (first, second):
        local = message.scheduled_at.astimezone(zone)
        assert (local.hour, local.minute) == (9, 0)
    # The same 09:00 is a different UTC hour on each side of the change.
    assert first.scheduled_at.hour != second.scheduled_at.hour


def _next_offset_change(after: datetime, zone: ZoneInfo) -> datetime:
    offset = after.astimezone(zone).utcoffset()
    moment = after
    while moment.astimezone(zone).utcoffset() == offset:
        moment += timedelta(hours=1)
    return moment


async def test_step_added_reaches_migrated_enrollments(stack: Stack) -> None:
    version_1 = [
        {"id": "welcome", **WELCOME},
        {"id": "pause", "type": "wait", "duration": "P1D"},
    ]
    campaign_id = await campaign(stack, version_1)
    old_lead = await lead(stack, "early@company.com")
    old = await enrollment(stack, campaign_id, old_lead)

    async def at_pause(handle: WorkflowHandle[Any, Any]) -> bool:
        return (await state(handle)).next_step == "pause"

    await stack.eventually(lambda: at_pause(old), message="old enrollment waiting")
    definition = (await stack.api.get(f"{CAMPAIGNS}/{campaign_id}")).json()[
        "definition"
    ]
    definition["sequence"].append(
        {"id": "followup", "channel": "email", "template": "value_proposition"}
    )
    response = await stack.api.put(f"{CAMPAIGNS}/{campaign_id}", json=definition)
    assert response.json()["version"] == 2
    new_lead = await lead(stack, "late@company.com")
    new = await enrollment(stack, campaign_id, new_lead)
    await stack.eventually(lambda: at_pause(new), message="new enrollment waiting")

    listed = (await stack.api.get(f"{CAMPAIGNS}/{campaign_id}/enrollments")).json()
    assert {e["leadId"]: e["version"] for e in listed} == {old_lead: 1, new_lead: 2}
    migrated = await stack.api.post(
        f"{CAMPAIGNS}/{campaign_id}/enrollments/migrate", json={}
    )
    assert migrated.json() == {"toVersion": 2, "enrollmentsSignalled": 1}

    for handle in (old, new):
        await stack.env.fast_forward(handle, timedelta(days=1, minutes=1))
        await handle.result()
    assert sent_templates(stack, old_lead) == ["welcome_email", "value_proposition"]
    assert sent_templates(stack, new_lead) == ["welcome_email", "value_proposition"]
    listed = (await stack.api.get(f"{CAMPAIGNS}/{campaign_id}/enrollments")).json()
    assert {e["leadId"]: e["version"] for e in listed} == {old_lead: 2, new_lead: 2}


async def test_unmigrated_enrollment_keeps_old_steps(stack: Stack) -> None:
    version_1 = [
        {"id": "welcome", **WELCOME},
        {"id": "pause", "type": "wait", "duration": "P1D"},
    ]
    campaign_id = await campaign(stack, version_1)
    lead_id = await lead(stack, "unmoved@company.com")
    handle = await enrollment(stack, campaign_id, lead_id)
    await stack.eventually(stack.sendgrid.mails, message="welcome sent")
    definition = (await stack.api.get(f"{CAMPAIGNS}/{campaign_id}")).json()[
        "definition"
    ]
    definition["sequence"].append(
        {"id": "followup", "channel": "email", "template": "value_proposition"}
    )
    await stack.api.put(f"{CAMPAIGNS}/{campaign_id}", json=definition)

    await stack.env.fast_forward(handle, timedelta(days=1, minutes=1))
    await handle.result()

    assert sent_templates(stack, lead_id) == ["welcome_email"]


async def test_pause_and_resume_lose_no_send(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {"id": "welcome", **WELCOME},
            {
                "id": "next",
                "delay": "1 day",
                "channel": "email",
                "template": "value_proposition",
            },
        ],
    )
    lead_id = await lead(stack, "paused@company.com")
    handle = await enrollment(stack, campaign_id, lead_id)
    await stack.eventually(stack.sendgrid.mails, message="welcome sent")

    paused = await stack.api.post(f"{CAMPAIGNS}/{campaign_id}/pause")
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    assert paused.json()["enrollmentsSignalled"] == 1
    await stack.env.fast_forward(handle, timedelta(days=1, hours=1))

    async def held() -> Any:
        current = await state(handle)
        return current if current.waiting_reason == "campaign paused" else None

    await stack.eventually(held, message="send held while paused")
    assert len(stack.sendgrid.mails()) == 1

    resumed = await stack.api.post(f"{CAMPAIGNS}/{campaign_id}/resume")
    assert resumed.json()["status"] == "active"
    result = await handle.result()

    assert [s.status for s in result.steps] == ["sent", "sent"]
    assert sent_templates(stack, lead_id) == ["welcome_email", "value_proposition"]
    assert len(stack.sendgrid.mails()) == 2


async def test_archive_ends_enrollments(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {"id": "welcome", **WELCOME},
            {"id": "hold", "type": "wait", "duration": "P30D"},
        ],
    )
    lead_id = await lead(stack, "archived@company.com")
    handle = await enrollment(stack, campaign_id, lead_id)
    await stack.eventually(stack.sendgrid.mails, message="welcome sent")

    response = await stack.api.post(f"{CAMPAIGNS}/{campaign_id}/archive")
    assert response.json()["status"] == "archived"
    result = await handle.result()

    assert result.status == "archived"
    again = await stack.api.post(f"{CAMPAIGNS}/{campaign_id}/resume")
    assert again.status_code == 409
    assert "archived" in again.json()["message"]


async def test_frequency_cap_defers_second_email(stack: Stack) -> None:
    first = await campaign(stack, [{"id": "welcome", **WELCOME}])
    second = await campaign(
        stack, [{"id": "offer", "channel": "email", "template": "value_proposition"}]
    )
    lead_id = await lead(stack, "capped@company.com")
    first_handle = await enrollment(stack, first, lead_id)
    second_handle = await enrollment(stack, second, lead_id)

    async def one_deferred() -> Any:
        for handle in (first_handle, second_handle):
            current = await state(handle)
            if "frequency cap" in (current.waiting_reason or ""):
                return handle, current
        return None

    deferred_handle, deferred_state = await stack.eventually(
        one_deferred, message="second email held by the cap"
    )
    await stack.eventually(stack.sendgrid.mails, message="first email sent")
    assert len(stack.sendgrid.mails()) == 1
    assert deferred_state.next_step_due_at is not None
    journey = (await stack.api.get(f"/api/v1/leads/{lead_id}/journey")).json()
    reasons = [e.get("waitingReason") for e in journey["enrollments"]]
    assert any("frequency cap" in (r or "") for r in reasons)

    await stack.env.fast_forward(deferred_handle, timedelta(days=1, minutes=1))
    await deferred_handle.result()
    assert len(stack.sendgrid.mails()) == 2
    scheduled = sorted(
        m.scheduled_at for m in messages(stack, lead_id) if m.scheduled_at
    )
    assert scheduled[1] - scheduled[0] >= timedelta(days=1)


async def test_manual_enrollment_in_bulk(stack: Stack) -> None:
    campaign_id = await campaign(
        stack, [{"id": "welcome", **WELCOME}], trigger={"type": "manual"}
    )
    first = await lead(stack, "manual1@company.com")
    second = await lead(stack, "manual2@company.com")

    response = await stack.api.post(
        f"{CAMPAIGNS}/{campaign_id}/enrollments",
        json={"leadIds": [first, second, first, "no-such-lead"]},
    )
    again = await stack.api.post(
        f"{CAMPAIGNS}/{campaign_id}/enrollments", json={"leadIds": [first]}
    )

    assert response.status_code == 201, response.text
    statuses = [(r["leadId"], r["status"]) for r in response.json()]
    assert statuses == [
        (first, "enrolled"),
        (second, "enrolled"),
        (first, "skipped"),
        ("no-such-lead", "not_found"),
    ]
    assert again.json()[0]["status"] == "skipped"
    await stack.eventually(
        lambda: len(stack.sendgrid.mails()) == 2, message="both welcomed"
    )


async def test_enrollment_started_twice_is_fine(stack: Stack) -> None:
    campaign_id = await campaign(
        stack, [{"id": "welcome", **WELCOME}], trigger={"type": "manual"}
    )
    lead_id = await lead(stack, "race@company.com")
    response = await stack.api.post(
        f"{CAMPAIGNS}/{campaign_id}/enrollments", json={"leadIds": [lead_id]}
    )
    assert response.status_code == 201, response.text
    with session_scope(stack.engine) as session:
        enrollment = session.exec(
            select(Enrollment).where(Enrollment.lead_id == lead_id)
        ).one()
        definition = session.exec(
            select(CampaignVersion.definition).where(
                CampaignVersion.campaign_id == campaign_id
            )
        ).one()
        session.expunge(enrollment)

    # The lead's workflow can start a claimed enrollment before the API does;
    # the API's start then finds it running, which is not an error.
    spec = CampaignSpec.model_validate(definition)
    await start_enrollment(stack.client, stack.settings, spec, enrollment)

    await stack.eventually(
        lambda: len(stack.sendgrid.mails()) == 1, message="welcomed once"
    )


async def test_invalid_journey_reports_every_problem(stack: Stack) -> None:
    body = {
        "name": "Broken",
        "trigger": {"type": "lead_score", "condition": "score >> 50"},
        "sendRules": {"timezone": "Mars/Olympus"},
        "sequence": [
            {
                "id": "a",
                "channel": "email",
                "template": "no_such_template",
                "next": "z",
            },
            {"id": "b", "type": "wait", "duration": "3 fortnights"},
            {"id": "c", "type": "branch", "condition": "mood == 'happy'", "then": "d"},
            {
                "id": "d",
                "type": "branch",
                "condition": "score > 1",
                "then": "c",
                "else": "c",
            },
        ],
    }

    response = await stack.api.post(CAMPAIGNS, json=body)

    assert response.status_code == 422
    paths = {error["path"] for error in response.json()["errors"]}
    assert paths >= {
        "trigger.condition",
        "sendRules.timezone",
        "sequence[0].template",
        "sequence[0].next",
        "sequence[1].duration",
        "sequence[2].condition",
        "sequence[1]",
        "sequence[2]",
    }


async def test_simulate_example_campaign(stack: Stack) -> None:
    response = await stack.api.post(CAMPAIGNS, json=example("campaign.json"))
    campaign_id = response.json()["id"]
    start = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
    request = {
        "lead": example("lead.json"),
        "start": start.isoformat(),
        "events": [{"type": "open", "at": (start + timedelta(hours=2)).isoformat()}],
    }

    opened = await stack.api.post(f"{CAMPAIGNS}/{campaign_id}/simulate", json=request)
    request["events"] = []
    unopened = await stack.api.post(f"{CAMPAIGNS}/{campaign_id}/simulate", json=request)

    assert opened.status_code == 200, opened.text
    body = opened.json()
    assert body["version"] == 1
    assert body["outcome"] == "completed"
    assert [(a["step"], a["type"]) for a in body["actions"]] == [
        ("1", "send"),
        ("2", "send"),
    ]
    assert body["actions"][0]["at"] == "2026-03-02T15:00:00Z"
    assert body["actions"][1]["at"] == "2026-03-03T15:00:00Z"
    assert body["actions"][0]["subject"].startswith("Welcome, John:")
    assert [a["type"] for a in unopened.json()["actions"]] == ["send", "skip"]
    assert stack.sendgrid.requests == []


async def test_simulate_window_goal_and_timezone(stack: Stack) -> None:
    campaign_id = await campaign(
        stack,
        [
            {"id": "welcome", **WELCOME},
            {"id": "wait", "type": "wait", "duration": "3 days"},
            {"id": "nudge", "channel": "email", "template": "value_proposition"},
        ],
        goals=[{"event": "converted"}],
        sendRules={
            "sendWindow": {
                "start": "09:00",
                "end": "17:00",
                "days": ["mon", "tue", "wed", "thu", "fri"],
            },
        },
    )
    sample = example("lead.json")
    sample["contact"]["timezone"] = "Europe/Berlin"
    # Saturday 2026-03-28 20:00 UTC; Berlin moves to summer time on the 29th.
    start = datetime(2026, 3, 28, 20, 0, tzinfo=UTC)
    converted = start + timedelta(days=2)

    response = await stack.api.post(
        f"{CAMPAIGNS}/{campaign_id}/simulate",
        json={
            "lead": sample,
            "start": start.isoformat(),
            "events": [{"type": "converted", "at": converted.isoformat()}],
        },
    )

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["timezone"] == "Europe/Berlin"
    first = body["actions"][0]
    # Monday 09:00 in Berlin, already summer time (UTC+2).
    assert first["at"] == "2026-03-30T07:00:00Z"
    assert first["localTime"].startswith("Mon 2026-03-30 09:00")
    assert body["outcome"] == "converted"
    assert body["goal"] == "converted"
    assert [a["type"] for a in body["actions"]] == ["send", "goal"]


async def test_simulate_unknown_version_404(stack: Stack) -> None:
    campaign_id = await campaign(stack, [{"id": "welcome", **WELCOME}])

    response = await stack.api.post(
        f"{CAMPAIGNS}/{campaign_id}/simulate",
        params={"version": 9},
        json={"lead": example("lead.json")},
    )

    assert response.status_code == 404
    assert "version 9" in response.json()["message"]


async def test_send_time_optimization_uses_open_hour(stack: Stack) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    lead_id = await lead(stack, "opener@company.com", timezone="Europe/Berlin")
    opened_at = [
        (datetime.now(UTC) - timedelta(days=days))
        .astimezone(berlin)
        .replace(hour=14, minute=20)
        for days in (3, 5, 9)
    ]
    with session_scope(stack.engine) as session:
        for index, at in enumerate(opened_at):
            session.add(
                Message(
                    id=f"old-{lead_id}-{index}",
                    lead_id=lead_id,
                    channel="email",
                    template="welcome_email",
                    to_address="opener@company.com",
                    body="earlier newsletter",
                    provider="sendgrid",
                    status="opened",
                    opened_at=at.astimezone(UTC),
                )
            )
    campaign_id = await campaign(
        stack,
        [{"id": "offer", "channel": "email", "template": "value_proposition"}],
        trigger={"type": "manual"},
        sendRules={"sendTimeOptimization": True},
    )
    response = await stack.api.post(
        f"{CAMPAIGNS}/{campaign_id}/enrollments", json={"leadIds": [lead_id]}
    )
    assert response.json()[0]["status"] == "enrolled"
    handle = await enrollment(stack, campaign_id, lead_id)

    async def planned() -> Any:
        current = await state(handle)
        reason = current.waiting_reason or ""
        return current if "send-time optimization" in reason else None

    waiting = await stack.eventually(planned, message="send held for the open hour")
    assert waiting.waiting_reason == "send-time optimization: 14:00 Europe/Berlin"
    await stack.env.fast_forward(handle, timedelta(days=1, hours=1))
    await handle.result()

    sent = [m for m in messages(stack, lead_id) if m.template == "value_proposition"]
    assert len(sent) == 1
    assert sent[0].scheduled_at is not None
    local = sent[0].scheduled_at.astimezone(berlin)
    assert (local.hour, local.minute) == (14, 0)


async def test_stage_goal_ends_enrollment(stack_factory: StackFactory) -> None:
    async with stack_factory(mql_threshold=60) as stack:
        campaign_id = await campaign(
            stack,
            [
                {"id": "welcome", **WELCOME},
                {"id": "later", "type": "wait", "duration": "P7D"},
                {"id": "nudge", "channel": "email", "template": "value_proposition"},
            ],
            goals=[{"stage": "mql"}],
        )
        lead_id = await lead(stack, "rising@company.com")
        handle = await enrollment(stack, campaign_id, lead_id)
        await stack.eventually(stack.sendgrid.mails, message="welcome sent")

        response = await stack.api.post(
            "/api/v1/events", json={"leadId": lead_id, "type": "content_download"}
        )
        assert response.status_code == 202
        result = await handle.result()

        assert result.status == "converted"
        assert result.goal == "stage:mql"
        stored = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
        assert stored["stage"] == "mql"
        # The hand-off to sales at the MQL threshold is a task, not an email.
        assert sent_templates(stack, lead_id) == ["welcome_email", "call_hot_lead"]


async def test_missing_personalization_rejected(stack: Stack) -> None:
    body = {
        "name": "No personalization",
        "trigger": {"type": "manual"},
        "goals": [{"event": "bogus_event"}],
        "sequence": [
            {"id": "hello", "channel": "email", "template": "welcome_email"},
            {
                "id": "wait",
                "type": "wait_for_event",
                "event": "clack",
                "timeout": "1 day",
            },
        ],
    }

    response = await stack.api.post(CAMPAIGNS, json=body)

    assert response.status_code == 422
    errors = {e["path"]: e["message"] for e in response.json()["errors"]}
    assert "firstName" in errors["sequence[0].template"]
    assert "personalization" in errors["sequence[0].template"]
    assert "unknown event 'bogus_event'" in errors["goals[0].event"]
    assert "unknown event 'clack'" in errors["sequence[1].event"]
