"""Erasure and export of a person's data, on the real stack.

The erasure test scans every table of the database for the person's address,
number, name and form fields afterwards, and queries Temporal for each of the
lead's workflows, so any data the erasure misses fails the test.
"""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel, select
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from api.deps import TemporalGateway
from api.errors import OUTAGE_RETRY_AFTER_SECONDS
from api.workflow_calls import finish_erasures
from nurture.consent import suppression_of
from nurture.db import session_scope
from nurture.models import AuditEntry, Erasure
from nurture.privacy import delete_console_outbox
from nurture.temporal import lead_workflow_id, nurture_workflow_id
from tests.conftest import API_KEY, Stack, example
from tests.test_consent import start_two_emails
from tests.test_delivery import messages_of
from tests.test_webhooks import post_events, sendgrid_event

EMAIL = "john.smith@company.com"
# What the example lead contains about the person, as stored.
PERSONAL = [EMAIL, "+15551234567", "Smith", "Example Company", "3-6 months"]
# Company lookups keyed by web domain: data about the company, not the person.
COMPANY_TABLES = {"enrichment_cache"}


def table_dump(engine: sa.Engine) -> dict[str, str]:
    """Every table's rows as one lower-cased text each."""
    dump = {}
    with engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            rows = connection.execute(table.select()).mappings().all()
            dump[table.name] = json.dumps(
                [dict(row) for row in rows], default=str
            ).casefold()
    return dump


def tables_holding(engine: sa.Engine, needles: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, text in table_dump(engine).items():
        if name in COMPANY_TABLES:
            continue
        hits = [n for n in needles if n.casefold() in text]
        if hits:
            found[name] = hits
    return found


async def workflow_gone(stack: Stack, workflow_id: str) -> bool:
    try:
        await stack.client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return True
        raise
    return False


async def workflow_idle(stack: Stack, workflow_id: str) -> bool:
    """True when the workflow runs and has no activity or task in progress."""
    description = await stack.client.get_workflow_handle(workflow_id).describe()
    raw = description.raw_description
    return (
        description.status == WorkflowExecutionStatus.RUNNING
        and not raw.pending_activities
        and not raw.HasField("pending_workflow_task")
    )


async def lead_with_history(stack: Stack) -> tuple[str, str]:
    """A lead enrolled in a campaign, emailed, opened, with consent and outcome."""
    campaign_id, lead_id = await start_two_emails(stack)
    sent = await stack.eventually(
        lambda: [m for m in messages_of(stack, lead_id) if m.status == "sent"],
        message="first email sent",
    )
    opened = sendgrid_event("open", EMAIL, sent[0].provider_message_id or "")
    opened["message_id"] = sent[0].id
    await post_events(stack, [opened])
    consent = await stack.api.post(
        f"/api/v1/leads/{lead_id}/consent",
        json={
            "channel": "sms",
            "status": "opted_in",
            "source": "call",
            "proof": {"note": "Smith agreed on the phone"},
        },
    )
    assert consent.status_code == 201, consent.text
    outcome = await stack.api.post(
        f"/api/v1/leads/{lead_id}/outcome",
        json={
            "outcome": "converted",
            "value": 1200,
            "currency": "EUR",
            "note": "Smith signed",
        },
    )
    assert outcome.status_code == 201, outcome.text
    read = await stack.api.get(f"/api/v1/leads/{lead_id}")
    assert read.status_code == 200
    return campaign_id, lead_id


async def test_export_holds_everything_about_the_person(stack: Stack) -> None:
    _campaign_id, lead_id = await lead_with_history(stack)

    response = await stack.api.get(f"/api/v1/leads/{lead_id}/export")

    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == (
        f'attachment; filename="lead-{lead_id}.json"'
    )
    data = response.json()
    assert data["lead"]["email"] == EMAIL
    assert data["lead"]["customFields"]["timeline"] == "3-6 months"
    assert [(r["channel"], r["status"]) for r in data["consent"]] == [
        ("sms", "opted_in")
    ]
    assert data["consent"][0]["proof"] == {"note": "Smith agreed on the phone"}
    assert data["messages"][0]["toAddress"] == EMAIL
    assert "John" in data["messages"][0]["body"]
    assert "open" in [e["type"] for e in data["events"]]
    assert data["outcomes"][0]["note"] == "Smith signed"
    assert len(data["enrollments"]) == 1
    assert data["splitAssignments"] == []
    assert "lead.read" in [a["action"] for a in data["auditTrail"]]
    with session_scope(stack.engine) as session:
        actions = session.exec(
            select(AuditEntry.action).where(AuditEntry.entity_id == lead_id)
        ).all()
    assert "lead.exported" in actions


async def test_erasure_leaves_no_personal_data(stack: Stack) -> None:
    campaign_id, lead_id = await lead_with_history(stack)
    assert set(tables_holding(stack.engine, PERSONAL)) >= {
        "leads",
        "messages",
        "consent_records",
        "lead_outcomes",
    }

    response = await stack.api.delete(
        f"/api/v1/leads/{lead_id}", params={"reference": "ticket-481"}
    )

    assert response.status_code == 200, response.text
    record = response.json()
    assert record["status"] == "completed"
    assert record["reference"] == "ticket-481"
    assert record["removed"]["messages"] == 1
    assert record["removed"]["consentRecords"] == 1
    assert record["workflows"]["deleted"] >= 2
    assert tables_holding(stack.engine, PERSONAL) == {}
    for workflow_id in (
        lead_workflow_id(lead_id),
        nurture_workflow_id(campaign_id, lead_id),
    ):
        await stack.eventually(
            lambda workflow_id=workflow_id: workflow_gone(stack, workflow_id),
            message=f"{workflow_id} deleted",
        )
    gone = await stack.api.get(f"/api/v1/leads/{lead_id}")
    assert gone.status_code == 410
    assert "was erased on" in gone.json()["message"]
    listed = await stack.api.get("/api/v1/leads")
    assert lead_id not in [lead["id"] for lead in listed.json()["items"]]
    erased = await stack.api.get("/api/v1/leads", params={"status": "erased"})
    assert [lead["id"] for lead in erased.json()["items"]] == [lead_id]
    # The funnel keeps its counts: the message and its open are still there.
    messages = messages_of(stack, lead_id)
    assert [(m.status, m.to_address, m.body) for m in messages] == [("opened", "", "")]
    again = await stack.api.delete(f"/api/v1/leads/{lead_id}")
    assert again.status_code == 200
    assert again.json()["id"] == record["id"]
    audit = await stack.api.get("/api/v1/audit", params={"action": "lead.erased"})
    assert audit.status_code == 200, audit.text
    assert [e["entityId"] for e in audit.json()["items"]] == [lead_id]


async def test_erased_opt_out_stays_suppressed(stack: Stack) -> None:
    created = await stack.api.post("/api/v1/leads", json=example("lead.json"))
    lead_id = created.json()["id"]
    opt_out = await stack.api.post(
        f"/api/v1/leads/{lead_id}/consent",
        json={"channel": "email", "status": "opted_out", "source": "call"},
    )
    assert opt_out.status_code == 201, opt_out.text

    erased = await stack.api.delete(f"/api/v1/leads/{lead_id}")
    assert erased.status_code == 200, erased.text
    again = await stack.api.post("/api/v1/leads", json=example("lead.json"))

    assert again.status_code == 201, again.text
    assert again.json()["id"] != lead_id
    consent = await stack.api.get(f"/api/v1/leads/{again.json()['id']}/consent")
    email = consent.json()["channels"]["email"]
    assert email["canSend"] is False
    assert email["suppressionReason"] == "opted_out_before_erasure"
    with session_scope(stack.engine) as session:
        row = suppression_of(session, "email", EMAIL)
        assert row is not None
        assert row.source == "erasure"


async def test_erasure_finishes_after_temporal_comes_back(
    stack: Stack, temporal_down: httpx.AsyncClient
) -> None:
    created = await stack.api.post("/api/v1/leads", json=example("lead.json"))
    lead_id = created.json()["id"]
    # Erased while its first activities run, the workflow would fail on its
    # own, and Temporal takes half a minute to delete a closed workflow.
    await stack.eventually(
        lambda: workflow_idle(stack, lead_workflow_id(lead_id)),
        message="lead workflow waiting",
    )

    down = await temporal_down.delete(
        f"/api/v1/leads/{lead_id}", headers={"Authorization": f"Bearer {API_KEY}"}
    )

    assert down.status_code == 503, down.text
    assert "removed from the database" in down.json()["message"]
    assert down.headers["retry-after"] == str(OUTAGE_RETRY_AFTER_SECONDS)
    assert tables_holding(stack.engine, PERSONAL) == {}
    with session_scope(stack.engine) as session:
        pending = session.exec(select(Erasure)).one()
        assert pending.status == "pending_workflows"
        assert pending.error

    gateway = TemporalGateway(stack.settings, stack.client)
    finished = await finish_erasures(gateway, stack.engine)

    assert finished == 1
    record = await stack.api.get(f"/api/v1/erasures/{lead_id}")
    assert record.json()["status"] == "completed"
    await stack.eventually(
        lambda: workflow_gone(stack, lead_workflow_id(lead_id)),
        message="lead workflow deleted",
    )


@pytest.mark.parametrize("path", ["", "/export"])
async def test_unknown_lead_is_404(stack: Stack, path: str) -> None:
    method: Any = stack.api.get if path else stack.api.delete
    response = await method(f"/api/v1/leads/no-such-lead{path}")
    assert response.status_code == 404
    assert "no-such-lead" in response.json()["message"]


def test_console_outbox_files_are_deleted(tmp_path: Path) -> None:
    for name in ("m-1.eml", "m-2.sms.json", "m-3.eml"):
        (tmp_path / name).write_text("to: john.smith@company.com")

    removed = delete_console_outbox(tmp_path, ["m-1", "m-2", "m-9"])

    assert removed == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-3.eml"]
