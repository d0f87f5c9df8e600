"""Erasure and export of one person's data (GDPR articles 15, 17 and 20).

Erasure blanks the lead instead of deleting its row, so campaign counts stay
right: messages, events and enrollments keep their type, status and times,
and lose every address, body and provider detail. What stays does not
identify the person. The lead's Temporal executions are deleted, which
removes their histories with the payloads in them.

Suppressions stay, because a suppression is what keeps an address that
bounced or opted out from being mailed again when someone imports it later.
A channel the person had opted out of is added to them for the same reason.
"""

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic.alias_generators import to_camel
from sqlmodel import Session, SQLModel, col, select
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from nurture.consent import CHANNELS, normalize_address, suppress
from nurture.models import (
    AuditEntry,
    ConsentRecord,
    EngagementEvent,
    Enrollment,
    Erasure,
    Lead,
    LeadImport,
    LeadOutcome,
    Message,
    SplitAssignment,
    Suppression,
    utcnow,
)
from nurture.temporal import lead_workflow_id

logger = logging.getLogger(__name__)

ERASED = "erased"
# Runs of one workflow id deleted in one go, the newest first.
MAX_RUNS_PER_ID = 20

# Lead columns that describe the person, blanked by an erasure. Source and
# UTM fields describe the campaign that brought the lead and stay, as do the
# score, stage and outcome that the funnel counts.
_PERSONAL_COLUMNS: dict[str, Any] = {
    "first_name": None,
    "last_name": None,
    "email": None,
    "email_normalized": None,
    "phone": None,
    "phone_status": None,
    "timezone": None,
    "company_name": None,
    "company_industry": None,
    "company_size": None,
    "company_revenue": None,
    "company_website": None,
    "company_country": None,
    "company_growth_stage": None,
    "company_technologies": list,
    "job_title": None,
    "external_id": None,
    "custom_fields": dict,
    "enrichment": dict,
    "activity": dict,
    "score_reasons": list,
    "model_contributions": list,
    "crm_id": None,
}


def is_erased(lead: Lead) -> bool:
    return lead.status == ERASED


def _row(row: SQLModel, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Convert a row to a dict with camelCase keys and JSON values."""
    values = row.model_dump(mode="json", exclude=set(exclude))
    return {to_camel(key): value for key, value in values.items()}


def export_lead(session: Session, lead: Lead) -> dict[str, Any]:
    """Collect everything stored about the lead, oldest first within each list."""

    def rows(model: type[SQLModel], order: Any, *where: Any) -> list[dict[str, Any]]:
        return [
            _row(r) for r in session.exec(select(model).where(*where).order_by(order))
        ]

    addresses = [
        (channel, normalize_address(channel, address))
        for channel, address in (("email", lead.email), ("sms", lead.phone))
        if address
    ]
    suppressions = [
        _row(s)
        for channel, address in addresses
        for s in session.exec(
            select(Suppression).where(
                Suppression.channel == channel, Suppression.address == address
            )
        )
    ]
    return {
        "exportedAt": utcnow().isoformat(),
        "lead": _row(lead, exclude=("workflow_synced_at",)),
        "consent": rows(
            ConsentRecord,
            col(ConsentRecord.occurred_at),
            ConsentRecord.lead_id == lead.id,
        ),
        "suppressions": suppressions,
        "enrollments": rows(
            Enrollment, col(Enrollment.enrolled_at), Enrollment.lead_id == lead.id
        ),
        "splitAssignments": rows(
            SplitAssignment,
            col(SplitAssignment.assigned_at),
            col(SplitAssignment.enrollment_id).in_(
                select(Enrollment.id).where(Enrollment.lead_id == lead.id)
            ),
        ),
        "messages": rows(Message, col(Message.created_at), Message.lead_id == lead.id),
        "events": rows(
            EngagementEvent,
            col(EngagementEvent.occurred_at),
            EngagementEvent.lead_id == lead.id,
        ),
        "outcomes": rows(
            LeadOutcome, col(LeadOutcome.occurred_at), LeadOutcome.lead_id == lead.id
        ),
        "auditTrail": rows(
            AuditEntry,
            col(AuditEntry.at),
            AuditEntry.entity_type == "lead",
            AuditEntry.entity_id == lead.id,
        ),
    }


def _update(session: Session, model: type[SQLModel], where: Any, **values: Any) -> int:
    result = session.execute(sa.update(model).where(where).values(**values))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _delete(session: Session, model: type[SQLModel], where: Any) -> int:
    result = session.execute(sa.delete(model).where(where))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _scrub_import_reports(session: Session, needles: list[str]) -> int:
    """Drop rejected-row samples of CSV import reports that quote the person."""
    if not needles:
        return 0
    removed = 0
    for job in session.exec(select(LeadImport).where(col(LeadImport.rejected) > 0)):
        kept = [
            entry
            for entry in job.errors
            if not any(n in json.dumps(entry).casefold() for n in needles)
        ]
        if len(kept) != len(job.errors):
            removed += len(job.errors) - len(kept)
            job.errors = kept
            session.add(job)
    return removed


def erase_lead_data(
    session: Session, lead: Lead, actor: str, reference: str | None
) -> Erasure:
    """Blank the lead's personal data in the database and record the erasure.

    Runs in the caller's transaction. Temporal's copies are removed after,
    by `delete_lead_workflows`.
    """
    existing = session.exec(select(Erasure).where(Erasure.lead_id == lead.id)).first()
    if existing is not None:
        return existing
    needles = [
        value.casefold()
        for value in (lead.email, lead.phone, lead.external_id)
        if value and len(value) >= 5
    ]
    for channel in CHANNELS:
        address = lead.email if channel == "email" else lead.phone
        if address and getattr(lead, f"{channel}_consent") == "opted_out":
            suppress(
                session,
                channel,
                address,
                "opted_out_before_erasure",
                source="erasure",
                detail={},
            )
    removed = {
        "consentRecords": _delete(
            session, ConsentRecord, col(ConsentRecord.lead_id) == lead.id
        ),
        "messages": _update(
            session,
            Message,
            col(Message.lead_id) == lead.id,
            to_address="",
            subject=None,
            body="",
            html=None,
            error=None,
            provider_message_id=None,
        ),
        "events": _update(
            session,
            EngagementEvent,
            col(EngagementEvent.lead_id) == lead.id,
            data={},
            provider_event_id=None,
        ),
        "outcomeNotes": _update(
            session,
            LeadOutcome,
            col(LeadOutcome.lead_id) == lead.id,
            note=None,
        ),
        "importRows": _scrub_import_reports(session, needles),
    }
    for name, empty in _PERSONAL_COLUMNS.items():
        setattr(lead, name, empty() if callable(empty) else empty)
    lead.status = ERASED
    lead.email_consent = "unknown"
    lead.sms_consent = "unknown"
    lead.updated_at = utcnow()
    # Keeps the reconciler from starting a workflow for the lead again.
    lead.workflow_synced_at = lead.updated_at
    session.add(lead)
    erasure = Erasure(
        lead_id=lead.id, requested_by=actor, reference=reference, removed=removed
    )
    session.add(erasure)
    session.flush()
    session.add(
        AuditEntry(
            actor=actor,
            action="lead.erased",
            entity_type="lead",
            entity_id=lead.id,
            detail={"erasureId": erasure.id, "reference": reference},
        )
    )
    return erasure


def delete_console_outbox(outbox: Path, message_ids: list[str]) -> int:
    """Delete the files the console providers wrote for these messages."""
    removed = 0
    for message_id in message_ids:
        for path in outbox.glob(f"{message_id}.*"):
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def message_ids_of(session: Session, lead_id: str) -> list[str]:
    return list(session.exec(select(Message.id).where(Message.lead_id == lead_id)))


def workflow_ids_of(session: Session, lead_id: str) -> list[str]:
    """Return the ids of the lead's workflows that the database contains."""
    enrollments = session.exec(
        select(Enrollment.workflow_id).where(Enrollment.lead_id == lead_id)
    ).all()
    return [lead_workflow_id(lead_id), *enrollments]


async def _ignore_not_found(call: Any) -> bool:
    """Await the call, and return False when the execution is not found."""
    try:
        await call
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


async def _delete_run(client: Client, workflow_id: str, run_id: str) -> bool:
    """Ask Temporal to delete one run; a running one is terminated first.

    A running execution goes at once. A closed one is removed by a
    background task, which on the dev server takes about half a minute.
    """
    return await _ignore_not_found(
        client.workflow_service.delete_workflow_execution(
            DeleteWorkflowExecutionRequest(
                namespace=client.namespace,
                workflow_execution=WorkflowExecution(
                    workflow_id=workflow_id, run_id=run_id
                ),
            )
        )
    )


async def delete_lead_workflows(
    client: Client, lead_id: str, known_ids: list[str]
) -> dict[str, int]:
    """Delete every execution of the lead's workflows, running ones included.

    Executions are found by the LeadId search attribute, and then by asking
    for the latest run of each workflow id in the database or in the list
    gave, since visibility lags behind starts and continue-as-new. Raises
    RPCError when Temporal cannot be reached; a second call finishes the job.
    """
    done: set[tuple[str, str]] = set()
    ids = set(known_ids)
    async for execution in client.list_workflows(f'LeadId = "{lead_id}"'):
        ids.add(execution.id)
        if execution.run_id and await _delete_run(
            client, execution.id, execution.run_id
        ):
            done.add((execution.id, execution.run_id))
    for workflow_id in sorted(ids):
        # A workflow continued as new has one run more than the list showed.
        for _ in range(MAX_RUNS_PER_ID):
            handle = client.get_workflow_handle(workflow_id)
            try:
                latest = await handle.describe()
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    break
                raise
            key = (workflow_id, latest.run_id)
            if key in done:
                if latest.status != WorkflowExecutionStatus.RUNNING:
                    break  # Closed and deleted: the server removes it within a minute.
                # It closed while Temporal was deleting it, which can leave
                # it running; terminating makes the next delete stick.
                await _ignore_not_found(handle.terminate("the lead was erased"))
            if await _delete_run(client, workflow_id, latest.run_id):
                done.add(key)
    return {"deleted": len(done)}


def finish_erasure(
    engine: sa.Engine,
    erasure_id: int,
    workflows: dict[str, int] | None,
    error: str | None,
) -> Erasure:
    """Store the outcome of deleting the lead's workflows."""
    with Session(engine, expire_on_commit=False) as session:
        erasure = session.get(Erasure, erasure_id)
        assert erasure is not None
        if workflows is not None:
            erasure.workflows = {
                "deleted": erasure.workflows.get("deleted", 0) + workflows["deleted"]
            }
            erasure.status = "completed"
            erasure.completed_at = utcnow()
            erasure.error = None
        else:
            erasure.error = error
        session.add(erasure)
        session.commit()
        return erasure


def pending_erasures(
    engine: sa.Engine, limit: int = 50
) -> list[tuple[int, str, list[str]]]:
    """Return erasures whose workflows are not deleted yet, with the ids to delete."""
    with Session(engine) as session:
        rows = session.exec(
            select(Erasure)
            .where(Erasure.status == "pending_workflows")
            .order_by(col(Erasure.erased_at))
            .limit(limit)
        ).all()
        return [
            (row.id, row.lead_id, workflow_ids_of(session, row.lead_id))
            for row in rows
            if row.id is not None
        ]


def erased_on(session: Session, lead_id: str) -> datetime | None:
    erasure = session.exec(select(Erasure).where(Erasure.lead_id == lead_id)).first()
    return erasure.erased_at if erasure else None
