"""Lead and nurture workflows on the real server: state, search, hand-over."""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import select

from api.deps import TemporalGateway
from api.workflow_calls import reconcile_once
from nurture.contracts import BehaviorSignal, LeadWorkflowInput
from nurture.db import session_scope
from nurture.leads import LeadCreate, capture_lead
from nurture.models import Enrollment, Lead
from nurture.temporal import lead_workflow_id, nurture_workflow_id
from tests.conftest import Stack, StackFactory, example
from tests.fakes import FakeServer
from tests.test_end_to_end import create_campaign, create_lead
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow


def store_lead(stack: Stack, email: str, **columns: Any) -> str:
    """Store a lead without starting its workflow, as the API would before Temporal."""
    payload = example("lead.json")
    payload["contact"]["email"] = email
    with session_scope(stack.engine) as session:
        lead, _duplicate = capture_lead(
            session, LeadCreate.model_validate(payload), "test"
        )
        for name, value in columns.items():
            setattr(lead, name, value)
        session.add(lead)
        return lead.id


async def test_journey_shows_next_step_and_action(stack: Stack) -> None:
    campaign_id = await create_campaign(stack)
    lead_id = await create_lead(stack)
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")

    async def journey() -> dict[str, Any] | None:
        body: dict[str, Any] = (
            await stack.api.get(f"/api/v1/leads/{lead_id}/journey")
        ).json()
        enrollments = body["enrollments"]
        if enrollments and enrollments[0]["nextStep"] == "2":
            return body
        return None

    body = await stack.eventually(journey, message="journey shows step 2 as next")
    assert body["live"] is True
    assert body["score"] >= 50
    assert body["stage"] == "new"
    assert body["reasons"][0]["criterion"] == "industry"
    enrollment = body["enrollments"][0]
    assert enrollment["campaignId"] == campaign_id
    assert enrollment["campaignName"] == "SME Onboarding Sequence"
    assert enrollment["version"] == 1
    assert enrollment["status"] == "active"
    assert enrollment["currentStep"] == "1"
    assert enrollment["live"] is True
    assert [s["status"] for s in enrollment["steps"]] == ["sent"]
    due = datetime.fromisoformat(enrollment["nextStepDueAt"])
    assert timedelta(hours=23) < due - datetime.now(UTC) <= timedelta(hours=24)
    assert body["nextAction"]["action"] == "wait_for_campaign"
    assert [e["type"] for e in body["recentEngagement"]] == ["form_submission"]


async def test_search_attributes_find_hot_leads(stack: Stack) -> None:
    campaign_id = await create_campaign(stack)
    lead_id = await create_lead(stack)
    queue = stack.settings.task_queue

    async def listed(query: str) -> list[str]:
        return [
            execution.id
            async for execution in stack.client.list_workflows(
                f'{query} AND TaskQueue = "{queue}"'
            )
        ]

    hot = await stack.eventually(lambda: listed("LeadScore >= 50"))
    assert hot == [lead_workflow_id(lead_id)]
    stage = await stack.eventually(lambda: listed('LeadStage = "new"'))
    assert stage == [lead_workflow_id(lead_id)]
    in_campaign = await stack.eventually(
        lambda: listed(f'CampaignId = "{campaign_id}" AND CampaignStep = 1')
    )
    assert in_campaign == [nurture_workflow_id(campaign_id, lead_id)]
    assert await listed("LeadScore >= 90") == []


async def test_continue_as_new_keeps_enrollments(stack: Stack) -> None:
    campaign_id = await create_campaign(stack)
    lead_id = store_lead(stack, "long.lived@company.com")
    handle = await stack.client.start_workflow(
        LeadWorkflow.run,
        LeadWorkflowInput(lead_id=lead_id, max_events_per_run=2),
        id=lead_workflow_id(lead_id),
        task_queue=stack.settings.task_queue,
    )
    first_run = handle.result_run_id
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    for _ in range(3):
        await handle.signal(LeadWorkflow.behavior, BehaviorSignal(type="page_view"))

    async def state_after_hand_over() -> Any:
        description = await stack.client.get_workflow_handle(handle.id).describe()
        if description.run_id == first_run:
            return None
        state = await stack.client.get_workflow_handle_for(
            LeadWorkflow.run, handle.id
        ).query(LeadWorkflow.state)
        return state if state.events_seen == 3 else None

    state = await stack.eventually(state_after_hand_over, message="continued as new")
    assert state.initialized is True
    assert len(state.started_enrollments) == 1
    nurture = stack.client.get_workflow_handle(
        nurture_workflow_id(campaign_id, lead_id)
    )
    assert (await nurture.describe()).status is not None
    assert (await nurture.describe()).status.name == "RUNNING"
    with session_scope(stack.engine) as session:
        enrollments = session.exec(
            select(Enrollment).where(Enrollment.lead_id == lead_id)
        ).all()
    assert len(enrollments) == 1
    assert len(stack.sendgrid.mails()) == 1


async def test_reconciler_starts_missing_workflows(stack: Stack) -> None:
    old = datetime.now(UTC) - timedelta(minutes=1)
    lead_id = store_lead(stack, "missed.start@company.com", created_at=old)

    gateway = TemporalGateway(stack.settings, stack.client)
    synced = await reconcile_once(gateway, stack.settings, stack.engine)

    assert synced == 1
    state = await stack.eventually(
        lambda: _initialized_state(stack, lead_id), message="lead workflow ran"
    )
    assert state.current.score >= 50
    with session_scope(stack.engine) as session:
        lead = session.get(Lead, lead_id)
        assert lead is not None
        assert lead.workflow_synced_at is not None
    assert await reconcile_once(gateway, stack.settings, stack.engine) == 0


async def _initialized_state(stack: Stack, lead_id: str) -> Any:
    handle = stack.client.get_workflow_handle_for(
        LeadWorkflow.run, lead_workflow_id(lead_id)
    )
    state = await handle.query(LeadWorkflow.state)
    return state if state.initialized else None


async def test_mql_lead_syncs_to_crm(
    stack_factory: StackFactory, fake_crm: FakeServer
) -> None:
    async with stack_factory(
        mql_threshold=50, crm_webhook_url=f"{fake_crm.url}/crm/leads"
    ) as stack:
        lead_id = await create_lead(stack)
        # The stage sync, then the sales task of the hand-off.
        posts = await stack.eventually(
            lambda: fake_crm.requests[1:] and fake_crm.requests,
            message="CRM got the lead and its task",
        )
    assert len(posts) == 2
    assert [post.path for post in posts] == ["/crm/leads", "/crm/leads"]
    assert json.loads(posts[1].body)["taskId"] == f"handoff-{lead_id}"
    body = json.loads(posts[0].body)
    assert body["reason"] == "stage changed from new to mql"
    assert body["lead"]["id"] == lead_id
    assert body["lead"]["stage"] == "mql"
    assert body["lead"]["contact"]["email"] == "john.smith@company.com"


async def test_edit_keeps_enrollments_on_old_version(stack: Stack) -> None:
    campaign_id = await create_campaign(stack)
    lead_id = await create_lead(stack)
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    edited = example("campaign.json")
    edited["sequence"][1]["template"] = "welcome_email"
    del edited["sequence"][1]["conditions"]
    edited["sequence"][1]["personalization"] = edited["sequence"][0]["personalization"]

    response = await stack.api.put(
        f"/api/v1/nurturing/campaigns/{campaign_id}", json=edited
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2

    handle = stack.client.get_workflow_handle_for(
        NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
    )
    await stack.env.fast_forward(handle, timedelta(hours=24))
    result = await handle.result()
    assert result.campaign_version == 1
    assert [s.status for s in result.steps] == ["sent", "skipped"]
    assert len(stack.sendgrid.mails()) == 1
    with session_scope(stack.engine) as session:
        (enrollment,) = session.exec(
            select(Enrollment).where(Enrollment.lead_id == lead_id)
        ).all()
    assert enrollment.campaign_version == 1
    assert enrollment.status == "completed"
