"""Outcomes: sales records whether a lead converted, which the model learns from."""

import sqlalchemy as sa
from fastapi import APIRouter
from sqlmodel import col, select
from starlette.concurrency import run_in_threadpool

from api.deps import (
    EngineDep,
    GatewayDep,
    ReadLeadsDep,
    SalesDep,
    SessionDep,
    SettingsDep,
)
from api.errors import error_responses
from api.routes.leads import get_lead_or_404
from api.workflow_calls import notify_lead
from nurture.contracts import BehaviorSignal
from nurture.db import session_scope
from nurture.models import AuditEntry, EngagementEvent, LeadOutcome
from nurture.outcomes import OutcomeIn, OutcomePublic, outcome_public, record_outcome

router = APIRouter(prefix="/api/v1/leads", tags=["outcomes"])
ERRORS = error_responses(401, 404, 410, 422)


def _store(
    engine: sa.Engine, lead_id: str, body: OutcomeIn, actor: str
) -> tuple[OutcomePublic, str | None]:
    with session_scope(engine) as session:
        lead = get_lead_or_404(session, lead_id)
        row = record_outcome(session, lead, body, "api", actor)
        event_id = None
        if body.outcome == "converted":
            # Stored as an event too, so campaign goals and conditions see it.
            event = EngagementEvent(
                lead_id=lead.id,
                type="converted",
                source="sales",
                occurred_at=row.occurred_at,
                data={"value": str(body.value) if body.value is not None else None},
            )
            session.add(event)
            session.flush()
            event_id = event.id
        session.flush()
        session.add(
            AuditEntry(
                actor=actor,
                action="lead.outcome_recorded",
                entity_type="lead",
                entity_id=lead.id,
                detail={"outcome": body.outcome, "outcome_id": row.id},
            )
        )
        return outcome_public(row), event_id


@router.post(
    "/{lead_id}/outcome",
    status_code=201,
    response_model=OutcomePublic,
    responses=ERRORS,
)
async def record_lead_outcome(
    lead_id: str,
    body: OutcomeIn,
    actor: SalesDep,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: GatewayDep,
) -> OutcomePublic:
    """Record that a lead converted or was lost, with the deal value and time.

    A conversion makes the lead a customer and reaches its workflows as a
    `converted` event, which campaign goals can end on.
    """
    outcome, event_id = await run_in_threadpool(_store, engine, lead_id, body, actor)
    signal = (
        BehaviorSignal(type="converted", event_id=event_id)
        if event_id
        else BehaviorSignal(type="lead_updated")
    )
    await notify_lead(temporal, settings, engine, lead_id, signal)
    return outcome


@router.get("/{lead_id}/outcomes", response_model=list[OutcomePublic], responses=ERRORS)
def list_lead_outcomes(
    lead_id: str, session: SessionDep, _actor: ReadLeadsDep
) -> list[OutcomePublic]:
    """List a lead's recorded outcomes, newest first."""
    get_lead_or_404(session, lead_id)
    rows = session.exec(
        select(LeadOutcome)
        .where(LeadOutcome.lead_id == lead_id)
        .order_by(col(LeadOutcome.occurred_at).desc(), col(LeadOutcome.id).desc())
    ).all()
    return [outcome_public(row) for row in rows]
