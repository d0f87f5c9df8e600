"""A person's rights over their data: export everything, or erase it."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlmodel import col, func, select
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from api.deps import AdminDep, EngineDep, GatewayDep, SessionDep, TemporalUnavailable
from api.errors import OUTAGE_RETRY_AFTER_SECONDS, ApiError, ErrorBody, error_responses
from api.routes.leads import get_lead_or_404
from nurture.config import DATA_DIR
from nurture.db import session_scope
from nurture.models import AuditEntry, Erasure, Lead
from nurture.privacy import (
    delete_console_outbox,
    delete_lead_workflows,
    erase_lead_data,
    export_lead,
    finish_erasure,
    is_erased,
    message_ids_of,
    workflow_ids_of,
)
from nurture.schemas import MAX_DB_INTEGER, CamelModel

router = APIRouter(prefix="/api/v1", tags=["privacy"])
MAX_LIMIT = 200


class ErasureOut(CamelModel):
    """The record of an erasure and its counts, without personal data."""

    id: int
    lead_id: str
    requested_by: str
    reference: str | None
    status: str
    removed: dict[str, int]
    workflows: dict[str, int]
    error: str | None
    erased_at: datetime
    completed_at: datetime | None


def _out(erasure: Erasure) -> ErasureOut:
    return ErasureOut.model_validate(erasure, from_attributes=True)


@router.get(
    "/leads/{lead_id}/export",
    responses={
        200: {
            "description": (
                "Everything held on the person, as a JSON attachment: the lead, "
                "its consent ledger, suppressions of its addresses, enrollments, "
                "messages with their bodies, events, outcomes and the audit trail"
            ),
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **error_responses(401, 403, 404, 410),
    },
)
def export(lead_id: str, session: SessionDep, actor: AdminDep) -> JSONResponse:
    """Export all data held on a lead, for a subject access or portability request.

    The export is written to the audit log.
    """
    lead = get_lead_or_404(session, lead_id)
    data = export_lead(session, lead)
    session.add(
        AuditEntry(
            actor=actor, action="lead.exported", entity_type="lead", entity_id=lead_id
        )
    )
    session.commit()
    return JSONResponse(
        data,
        headers={"Content-Disposition": f'attachment; filename="lead-{lead_id}.json"'},
    )


def _erase_in_database(
    engine: Any, lead_id: str, actor: str, reference: str | None
) -> tuple[Erasure, list[str]]:
    with session_scope(engine) as session:
        lead = session.get(Lead, lead_id)
        if lead is None:
            raise ApiError(404, "not_found", f"lead {lead_id} not found")
        erasure = erase_lead_data(session, lead, actor, reference)
        ids = workflow_ids_of(session, lead_id)
        # The console providers' files (development only) contain the bodies.
        delete_console_outbox(DATA_DIR / "outbox", message_ids_of(session, lead_id))
        session.flush()
        session.expunge(erasure)
        return erasure, ids


@router.delete(
    "/leads/{lead_id}",
    response_model=ErasureOut,
    responses={
        **error_responses(401, 403, 404, 422),
        503: {
            "model": ErrorBody,
            "description": (
                "The database part is done, but Temporal could not be reached "
                "to delete the lead's workflows; send the DELETE again, or let "
                "the API's reconciler finish it"
            ),
        },
    },
)
async def erase(
    lead_id: str,
    actor: AdminDep,
    engine: EngineDep,
    temporal: GatewayDep,
    reference: Annotated[
        str | None,
        Query(
            max_length=200,
            description=(
                "Your reference for the request, such as a ticket number. It is "
                "kept in the erasure record, so never put the person's name here."
            ),
        ),
    ] = None,
) -> ErasureOut:
    """Erase a person: personal data blanked, workflows and their histories deleted.

    Messages, events and enrollments stay as counts without addresses or
    bodies, so campaign numbers do not change. An address the person had
    opted out from is kept on the suppression list, so a later import does
    not mail it again. Erasing an erased lead again returns its record.
    """
    erasure, workflow_ids = await run_in_threadpool(
        _erase_in_database, engine, lead_id, actor, reference
    )
    if erasure.status == "completed":
        return _out(erasure)
    assert erasure.id is not None
    try:
        client = await temporal.client()
        workflows = await delete_lead_workflows(client, lead_id, workflow_ids)
    except (TemporalUnavailable, RPCError) as error:
        message = getattr(error, "message", None) or str(error)
        await run_in_threadpool(finish_erasure, engine, erasure.id, None, message)
        raise ApiError(
            503,
            "temporal_unavailable",
            f"the lead's personal data is removed from the database (erasure "
            f"{erasure.id}), but its workflows could not be deleted: {message}. "
            "Send the DELETE again, or let the API's reconciler finish it; "
            f"GET /api/v1/erasures/{lead_id} shows the status",
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
        ) from None
    erasure = await run_in_threadpool(
        finish_erasure, engine, erasure.id, workflows, None
    )
    return _out(erasure)


class ErasurePage(CamelModel):
    items: list[ErasureOut]
    total: int
    limit: int
    offset: int


@router.get(
    "/erasures", response_model=ErasurePage, responses=error_responses(401, 403, 422)
)
def list_erasures(
    session: SessionDep,
    _actor: AdminDep,
    status: Annotated[
        str | None, Query(description="pending_workflows or completed")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INTEGER)] = 0,
) -> ErasurePage:
    """List erasures, newest first, e.g. those still waiting for Temporal."""
    where = [Erasure.status == status] if status else []
    total = session.exec(select(func.count()).select_from(Erasure).where(*where)).one()
    rows = session.exec(
        select(Erasure)
        .where(*where)
        .order_by(col(Erasure.erased_at).desc(), col(Erasure.id).desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return ErasurePage(
        items=[_out(r) for r in rows], total=total, limit=limit, offset=offset
    )


@router.get(
    "/erasures/{lead_id}",
    response_model=ErasureOut,
    responses=error_responses(401, 403, 404),
)
def read_erasure(lead_id: str, session: SessionDep, _actor: AdminDep) -> ErasureOut:
    """Show the erasure record of a lead."""
    erasure = session.exec(select(Erasure).where(Erasure.lead_id == lead_id)).first()
    if erasure is None:
        lead = session.get(Lead, lead_id)
        hint = (
            "the lead exists and was not erased"
            if lead is not None and not is_erased(lead)
            else "no such lead was erased"
        )
        raise ApiError(404, "not_found", f"no erasure of lead {lead_id}: {hint}")
    return _out(erasure)
