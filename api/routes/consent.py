"""The consent ledger and the suppression list, read and written by people."""

from typing import Annotated

from fastapi import APIRouter, Query, Response
from sqlmodel import col, func, select

from api.deps import AdminDep, MarketingDep, ReadLeadsDep, SessionDep, SettingsDep
from api.errors import ApiError, error_responses
from api.routes.leads import get_lead_or_404, record_read
from nurture.consent import (
    Channel,
    ConsentChange,
    ConsentView,
    consent_view,
    leads_with_address,
    normalize_address,
    record_consent,
)
from nurture.models import AuditEntry, Suppression
from nurture.schemas import MAX_DB_INTEGER, CamelModel, DbInteger

router = APIRouter(prefix="/api/v1", tags=["consent"])
ERRORS = error_responses(401, 404, 410, 422)


@router.get("/leads/{lead_id}/consent", response_model=ConsentView, responses=ERRORS)
def read_consent(
    lead_id: str, session: SessionDep, settings: SettingsDep, actor: ReadLeadsDep
) -> ConsentView:
    """Show the lead's consent per channel, whether a message may go now, and why.

    `records` is the whole ledger: every opt-in and opt-out with its source
    and proof, oldest first. The read is audited.
    """
    lead = get_lead_or_404(session, lead_id)
    record_read(session, actor, lead_id, "lead.consent_read")
    return consent_view(session, lead, settings.consent_policy)


@router.post(
    "/leads/{lead_id}/consent",
    status_code=201,
    response_model=ConsentView,
    responses=ERRORS,
)
def change_consent(
    lead_id: str,
    body: ConsentChange,
    session: SessionDep,
    settings: SettingsDep,
    actor: ReadLeadsDep,
) -> ConsentView:
    """Record an opt-in or an opt-out, e.g. one given on a call or at an event.

    The change applies to the next message of every campaign; a newer change
    already on record keeps precedence over one with an older `occurredAt`.
    """
    lead = get_lead_or_404(session, lead_id)
    record = record_consent(
        session,
        lead,
        body.channel,
        body.status,
        source=body.source,
        actor=actor,
        proof=body.proof,
        occurred_at=body.occurred_at,
    )
    session.add(
        AuditEntry(
            actor=actor,
            action="lead.consent_recorded",
            entity_type="lead",
            entity_id=lead.id,
            detail={
                "channel": body.channel,
                "status": body.status,
                "source": body.source,
                "recordId": record.id,
            },
        )
    )
    session.commit()
    return consent_view(session, lead, settings.consent_policy)


class SuppressionOut(CamelModel):
    id: int
    channel: str
    address: str
    reason: str
    source: str
    detail: dict[str, object]
    created_at: str


class SuppressionPage(CamelModel):
    items: list[SuppressionOut]
    total: int


@router.get("/suppressions", response_model=SuppressionPage, responses=ERRORS)
def list_suppressions(
    session: SessionDep,
    _actor: MarketingDep,
    channel: Channel | None = None,
    address: Annotated[
        str | None, Query(description="An exact address or E.164 number.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INTEGER)] = 0,
) -> SuppressionPage:
    """List suppressed addresses and numbers, newest first."""
    query = select(Suppression)
    if channel is not None:
        query = query.where(Suppression.channel == channel)
    if address is not None:
        # Without a channel, the address may be an email or a phone number.
        channels = (channel,) if channel else ("email", "sms")
        forms = {normalize_address(name, address) for name in channels}
        query = query.where(col(Suppression.address).in_(forms))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    page = session.exec(
        query.order_by(col(Suppression.created_at).desc(), col(Suppression.id).desc())
        .offset(offset)
        .limit(limit)
    ).all()
    return SuppressionPage(
        items=[
            SuppressionOut(
                id=row.id or 0,
                channel=row.channel,
                address=row.address,
                reason=row.reason,
                source=row.source,
                detail=row.detail,
                created_at=row.created_at.isoformat(),
            )
            for row in page
        ],
        total=total,
    )


@router.delete(
    "/suppressions/{suppression_id}",
    status_code=204,
    responses=error_responses(401, 404),
)
def lift_suppression(
    suppression_id: DbInteger, session: SessionDep, actor: AdminDep
) -> Response:
    """Lift a suppression, e.g. after a mailbox that bounced was fixed."""
    row = session.get(Suppression, suppression_id)
    if row is None:
        raise ApiError(
            404,
            "not_found",
            f"suppression {suppression_id} not found: list them with "
            "GET /api/v1/suppressions",
        )
    session.add(
        AuditEntry(
            actor=actor,
            action="suppression.lifted",
            entity_type="suppression",
            entity_id=str(suppression_id),
            detail={"channel": row.channel, "reason": row.reason},
        )
    )
    if row.channel == "email" and row.reason == "bounce":
        # Leads marked bounced by that address may get email again.
        for lead in leads_with_address(session, "email", row.address):
            if lead.status == "bounced":
                lead.status = "active"
                session.add(lead)
    session.delete(row)
    session.commit()
    return Response(status_code=204)
