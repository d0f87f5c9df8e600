"""Lead capture, reading, editing and listing."""

import json
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request, Response
from pydantic import AwareDatetime, ValidationError
from sqlmodel import Session, col, func, select
from starlette.concurrency import run_in_threadpool

from api.deps import (
    CaptureDep,
    EngineDep,
    GatewayDep,
    ReadLeadsDep,
    SessionDep,
    SettingsDep,
    principal_of,
)
from api.errors import (
    ApiError,
    FieldError,
    error_responses,
    from_pydantic,
    validation_error,
)
from api.throttle import RATE_LIMITED, rate_limited
from api.workflow_calls import notify_lead
from nurture.config import Settings
from nurture.contracts import BehaviorSignal
from nurture.db import session_scope
from nurture.enrichment import enrich
from nurture.lead_scoring import rescore
from nurture.leads import (
    LeadCreate,
    LeadPublic,
    LeadUpdate,
    capture_lead,
    find_duplicate,
    form_to_payload,
    update_lead,
)
from nurture.models import AuditEntry, Lead
from nurture.privacy import ERASED, erased_on, is_erased
from nurture.schemas import (
    MAX_DB_INTEGER,
    CamelModel,
    DbInteger,
    inline_json_schema,
)

router = APIRouter(prefix="/api/v1/leads", tags=["leads"])

MAX_LIMIT = 200
SORT_COLUMNS = {"score": Lead.score, "createdAt": Lead.created_at}
LIST_PARAMETERS = {
    "score",
    "score[gt]",
    "score[gte]",
    "score[lt]",
    "score[lte]",
    "createdAt[gt]",
    "createdAt[gte]",
    "createdAt[lt]",
    "createdAt[lte]",
    "status",
    "stage",
    "source",
    "sort",
    "limit",
    "offset",
}
ERRORS = error_responses(401, 404, 410, 422)

_LEAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_json_schema(LeadCreate)},
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "description": (
                        "Flat web-form fields: firstName, lastName, email, phone, "
                        "company, industry, companySize, revenue, website, "
                        "utm_source, utm_campaign, utm_medium, utm_content; any "
                        "other field is kept in customFields."
                    ),
                    "additionalProperties": {"type": "string"},
                }
            },
        },
    }
}


async def _read_payload(request: Request) -> LeadCreate:
    content_type = request.headers.get("content-type", "").split(";")[0].strip()
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.form()
        raw: Any = form_to_payload({k: str(v) for k, v in form.items()})
    else:
        try:
            raw = json.loads(await request.body())
        except ValueError as error:
            raise validation_error(
                [
                    FieldError(
                        path="(body)",
                        message=f"invalid JSON: {error}",
                        type="json_invalid",
                    )
                ]
            ) from None
    try:
        return LeadCreate.model_validate(raw)
    except ValidationError as error:
        raise from_pydantic(error) from None


def _enrich_and_score(session: Session, lead: Lead, settings: Settings) -> None:
    """Score the lead now, so the response carries its score; its workflow rescores."""
    lead.enrichment = enrich(lead.model_dump()).model_dump()
    rescore(session, lead, settings.mql_threshold)


def _store(
    engine: sa.Engine, payload: LeadCreate, actor: str, settings: Settings
) -> tuple[Lead, bool]:
    # Two requests with the same new address may race; the unique index lets
    # one insert win and the retry merges into it.
    for attempt in range(2):
        try:
            with session_scope(engine) as session:
                lead, duplicate = capture_lead(session, payload, actor)
                session.flush()
                _enrich_and_score(session, lead, settings)
                return lead, duplicate
        except sa.exc.IntegrityError:
            if attempt == 1:
                raise
    raise AssertionError("unreachable")


class LeadReceipt(CamelModel):
    """The response to an integration key: the captured lead's id only."""

    id: str
    accepted: bool = True


@router.post(
    "",
    status_code=201,
    response_model=LeadPublic | LeadReceipt,
    responses={
        200: {"model": LeadPublic, "description": "Duplicate: merged"},
        202: {
            "model": LeadReceipt,
            "description": (
                "Taken, for an integration key: new or merged, without the "
                "lead's data, so a form key cannot read who is on file"
            ),
        },
        **ERRORS,
        **RATE_LIMITED,
    },
    openapi_extra=_LEAD_BODY,
    dependencies=[rate_limited("capture")],
)
async def create_lead(
    request: Request,
    response: Response,
    actor: CaptureDep,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: GatewayDep,
) -> LeadPublic | LeadReceipt:
    """Capture a lead from JSON or a web form; a known email merges into its lead.

    People's keys get the stored lead back. An integration key gets 202 and
    the lead's id only, the same for a new and a known address.
    """
    payload = await _read_payload(request)
    lead, duplicate = await run_in_threadpool(_store, engine, payload, actor, settings)
    signal = BehaviorSignal(type="form_submission") if duplicate else None
    await notify_lead(temporal, settings, engine, lead.id, signal)
    if principal_of(request).role == "integration":
        response.status_code = 202
        return LeadReceipt(id=lead.id)
    if duplicate:
        response.status_code = 200
    return LeadPublic.from_lead(lead, duplicate=duplicate)


def get_lead_or_404(session: Session, lead_id: str) -> Lead:
    """The lead, or 404 when there is none and 410 when it was erased."""
    lead = session.get(Lead, lead_id)
    if lead is None:
        raise ApiError(404, "not_found", f"lead {lead_id} not found")
    if is_erased(lead):
        when = erased_on(session, lead_id)
        on = f" on {when:%Y-%m-%d %H:%M} UTC" if when else ""
        raise ApiError(
            410,
            "erased",
            f"lead {lead_id} was erased{on}; nothing about the person is kept. "
            "GET /api/v1/erasures/{lead_id} shows the erasure record",
        )
    return lead


@router.get("/{lead_id}", response_model=LeadPublic, responses=ERRORS)
def read_lead(lead_id: str, session: SessionDep, actor: ReadLeadsDep) -> LeadPublic:
    """Read one lead with its score, reasons and stage."""
    lead = get_lead_or_404(session, lead_id)
    record_read(session, actor, lead.id, "lead.read")
    return LeadPublic.from_lead(lead)


def record_read(session: Session, actor: str, lead_id: str, action: str) -> None:
    """Write a person's read of a lead's personal data to the audit log."""
    session.add(
        AuditEntry(actor=actor, action=action, entity_type="lead", entity_id=lead_id)
    )
    session.commit()


def _apply_update(
    engine: sa.Engine, lead_id: str, change: LeadUpdate, actor: str, settings: Settings
) -> tuple[Lead, list[str]]:
    with session_scope(engine) as session:
        lead = get_lead_or_404(session, lead_id)
        new_email = change.contact.email if change.contact else None
        if new_email:
            other = find_duplicate(session, new_email, None)
            if other is not None and other.id != lead.id:
                raise ApiError(
                    409,
                    "conflict",
                    f"contact.email belongs to lead {other.id}; "
                    "update that lead instead",
                )
        changed = update_lead(session, lead, change, actor)
        if changed:
            _enrich_and_score(session, lead, settings)
        session.add(lead)
        return lead, changed


@router.patch(
    "/{lead_id}",
    response_model=LeadPublic,
    responses=error_responses(401, 404, 409, 410, 422),
)
async def patch_lead(
    lead_id: str,
    change: LeadUpdate,
    actor: ReadLeadsDep,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: GatewayDep,
) -> LeadPublic:
    """Change some of a lead's fields; the lead is rescored."""
    lead, changed = await run_in_threadpool(
        _apply_update, engine, lead_id, change, actor, settings
    )
    if changed:
        await notify_lead(
            temporal, settings, engine, lead.id, BehaviorSignal(type="lead_updated")
        )
    return LeadPublic.from_lead(lead)


class LeadPage(CamelModel):
    items: list[LeadPublic]
    total: int
    limit: int
    offset: int


@router.get("", response_model=LeadPage, responses=ERRORS)
def list_leads(
    request: Request,
    session: SessionDep,
    _actor: ReadLeadsDep,
    score: Annotated[DbInteger | None, Query()] = None,
    score_gt: Annotated[DbInteger | None, Query(alias="score[gt]")] = None,
    score_gte: Annotated[DbInteger | None, Query(alias="score[gte]")] = None,
    score_lt: Annotated[DbInteger | None, Query(alias="score[lt]")] = None,
    score_lte: Annotated[DbInteger | None, Query(alias="score[lte]")] = None,
    created_gt: Annotated[AwareDatetime | None, Query(alias="createdAt[gt]")] = None,
    created_gte: Annotated[AwareDatetime | None, Query(alias="createdAt[gte]")] = None,
    created_lt: Annotated[AwareDatetime | None, Query(alias="createdAt[lt]")] = None,
    created_lte: Annotated[AwareDatetime | None, Query(alias="createdAt[lte]")] = None,
    status: Annotated[
        str | None,
        Query(
            description=(
                "active, unsubscribed, erased, ...; erased leads are listed "
                "only when asked for"
            )
        ),
    ] = None,
    stage: Annotated[str | None, Query(description="new, engaged, mql, ...")] = None,
    source: Annotated[str | None, Query(description="Source channel.")] = None,
    sort: Annotated[
        Literal["score", "-score", "createdAt", "-createdAt"],
        Query(description="Field to sort by; a leading - sorts descending."),
    ] = "-createdAt",
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INTEGER)] = 0,
) -> LeadPage:
    """List leads, filtered by score, creation time, status, stage and source."""
    unknown = sorted(set(request.query_params) - LIST_PARAMETERS)
    if unknown:
        allowed = ", ".join(sorted(LIST_PARAMETERS))
        raise validation_error(
            [
                FieldError(
                    path=name,
                    message=f"unknown parameter; use one of {allowed}",
                    type="unknown_parameter",
                )
                for name in unknown
            ]
        )
    conditions: list[Any] = []
    for column, operator, value in (
        (Lead.score, "eq", score),
        (Lead.score, "gt", score_gt),
        (Lead.score, "ge", score_gte),
        (Lead.score, "lt", score_lt),
        (Lead.score, "le", score_lte),
        (Lead.created_at, "gt", created_gt),
        (Lead.created_at, "ge", created_gte),
        (Lead.created_at, "lt", created_lt),
        (Lead.created_at, "le", created_lte),
        (Lead.status, "eq", status),
        (Lead.stage, "eq", stage),
        (Lead.source_channel, "eq", source),
    ):
        if value is None:
            continue
        conditions.append(getattr(col(column), f"__{operator}__")(value))
    if status is None:
        # Erased leads are blank; they are listed only when asked for.
        conditions.append(col(Lead.status) != ERASED)
    total = session.exec(
        select(func.count()).select_from(Lead).where(*conditions)
    ).one()
    order = col(SORT_COLUMNS[sort.lstrip("-")])
    query = (
        select(Lead)
        .where(*conditions)
        .order_by(order.desc() if sort.startswith("-") else order.asc(), col(Lead.id))
        .limit(limit)
        .offset(offset)
    )
    items = [LeadPublic.from_lead(lead) for lead in session.exec(query).all()]
    return LeadPage(items=items, total=total, limit=limit, offset=offset)
