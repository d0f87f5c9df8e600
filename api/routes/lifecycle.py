"""Campaign lifecycle and enrollments: activate, pause, resume, archive,
manual enrollment, migration to a newer version, and the enrollment list."""

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Query, Request
from pydantic import Field
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api.deps import (
    EngineDep,
    MarketingDep,
    ReadLeadsDep,
    SessionDep,
    SettingsDep,
    TemporalDep,
)
from api.errors import ApiError, error_responses
from api.routes.campaigns import (
    CampaignPublic,
    _public,
    current_version,
    get_campaign_or_404,
)
from nurture.campaigns import CampaignSpec
from nurture.config import Settings
from nurture.contracts import MigrateSignal, NurtureInput, PauseSignal
from nurture.db import session_scope
from nurture.enrollments import claim, entry_refusal
from nurture.models import (
    AuditEntry,
    Campaign,
    CampaignVersion,
    Enrollment,
    Lead,
    utcnow,
)
from nurture.privacy import is_erased
from nurture.schemas import MAX_DB_INTEGER, CamelModel, StrictCamelModel
from nurture.simulation import SimulationRequest, SimulationResult, simulate
from nurture.temporal import enrollment_search_attributes
from workflows.nurture import NurtureWorkflow

router = APIRouter(prefix="/api/v1/nurturing/campaigns", tags=["campaigns"])
logger = logging.getLogger(__name__)

# From which statuses each action may be taken, and the status it leads to.
TRANSITIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "activate": (("draft",), "active"),
    "pause": (("active",), "paused"),
    "resume": (("paused",), "active"),
    "archive": (("draft", "active", "paused"), "archived"),
}
MAX_LEADS_PER_REQUEST = 1000
# Signals in flight at once when a change fans out to every live enrollment.
SIGNAL_CONCURRENCY = 50


def _live_enrollments(
    session: Session, campaign_id: str, version: int | None = None
) -> list[Enrollment]:
    query = select(Enrollment).where(
        Enrollment.campaign_id == campaign_id, Enrollment.status == "active"
    )
    if version is not None:
        query = query.where(Enrollment.campaign_version == version)
    return list(session.exec(query).all())


async def _signal_all(
    client: Client, workflow_ids: list[str], signal: str, arg: Any = None
) -> int:
    """Signal each workflow, a bounded number at a time; return how many took it."""
    limit = asyncio.Semaphore(SIGNAL_CONCURRENCY)

    async def one(workflow_id: str) -> bool:
        async with limit:
            handle = client.get_workflow_handle(workflow_id)
            try:
                if arg is None:
                    await handle.signal(signal)
                else:
                    await handle.signal(signal, arg)
            except RPCError as error:
                if error.status != RPCStatusCode.NOT_FOUND:
                    raise
                return False
            return True

    results = await asyncio.gather(*(one(wid) for wid in workflow_ids))
    return sum(results)


def _transition(
    engine: sa.Engine, campaign_id: str, action: str, actor: str
) -> tuple[Campaign, int, list[str]]:
    allowed_from, target = TRANSITIONS[action]
    with session_scope(engine) as session:
        campaign = get_campaign_or_404(session, campaign_id)
        if campaign.status not in allowed_from:
            raise ApiError(
                409,
                "conflict",
                f"cannot {action} campaign {campaign_id}: it is {campaign.status}, "
                f"and {action} applies to {' or '.join(allowed_from)} campaigns",
            )
        previous = campaign.status
        campaign.status = target
        campaign.updated_at = utcnow()
        session.add(campaign)
        session.add(
            AuditEntry(
                actor=actor,
                action=f"campaign.{action}",
                entity_type="campaign",
                entity_id=campaign.id,
                detail={"from": previous, "to": target},
            )
        )
        live = [e.workflow_id for e in _live_enrollments(session, campaign_id)]
        return campaign, campaign.current_version, live


class EnrollRequest(StrictCamelModel):
    lead_ids: list[str] = Field(min_length=1, max_length=MAX_LEADS_PER_REQUEST)


class EnrollResult(CamelModel):
    lead_id: str
    status: Literal["enrolled", "skipped", "not_found"]
    enrollment_id: str | None = None
    reason: str | None = None


def _claim_all(
    engine: sa.Engine, campaign_id: str, lead_ids: list[str], actor: str
) -> tuple[CampaignSpec, int, list[EnrollResult], list[Enrollment]]:
    now = utcnow()
    results: list[EnrollResult] = []
    claimed: list[Enrollment] = []
    with session_scope(engine) as session:
        campaign = get_campaign_or_404(session, campaign_id)
        if campaign.status != "active":
            raise ApiError(
                409,
                "conflict",
                f"campaign {campaign_id} is {campaign.status}: only active "
                "campaigns take enrollments",
            )
        version = current_version(session, campaign)
        spec = CampaignSpec.model_validate(version.definition)
        seen: set[str] = set()
        for lead_id in lead_ids:
            if lead_id in seen:
                results.append(
                    EnrollResult(
                        lead_id=lead_id, status="skipped", reason="listed twice"
                    )
                )
                continue
            seen.add(lead_id)
            lead = session.get(Lead, lead_id)
            if lead is None or is_erased(lead):
                results.append(
                    EnrollResult(
                        lead_id=lead_id,
                        status="not_found",
                        reason="no such lead" if lead is None else "lead was erased",
                    )
                )
                continue
            refusal = entry_refusal(session, campaign_id, lead_id, spec, now)
            enrollment = None
            if refusal is None:
                enrollment = claim(session, campaign_id, version.version, lead_id, now)
                refusal = "already enrolled" if enrollment is None else None
            if enrollment is None:
                results.append(
                    EnrollResult(lead_id=lead_id, status="skipped", reason=refusal)
                )
                continue
            claimed.append(enrollment)
            results.append(
                EnrollResult(
                    lead_id=lead_id, status="enrolled", enrollment_id=enrollment.id
                )
            )
        session.add(
            AuditEntry(
                actor=actor,
                action="campaign.enroll",
                entity_type="campaign",
                entity_id=campaign_id,
                detail={"enrolled": len(claimed), "requested": len(lead_ids)},
            )
        )
        return spec, version.version, results, claimed


# Workflow starts a bulk enrollment keeps in flight at once.
START_CONCURRENCY = 20


async def start_enrollment(
    client: Client, settings: Settings, spec: CampaignSpec, enrollment: Enrollment
) -> None:
    """Start the enrollment's workflow, unless the lead's workflow already did.

    A lead workflow that wakes up (a fresh capture, an event) starts the
    enrollments it finds claimed, so it may win the race with this request.
    """
    try:
        await _start_workflow(client, settings, spec, enrollment)
    except WorkflowAlreadyStartedError:
        logger.info(
            "enrollment %s was already started as %s",
            enrollment.id,
            enrollment.workflow_id,
        )


async def _start_all(
    client: Client, settings: Settings, spec: CampaignSpec, claimed: list[Enrollment]
) -> None:
    """Start every claimed enrollment, START_CONCURRENCY at a time."""
    slots = asyncio.Semaphore(START_CONCURRENCY)

    async def start(enrollment: Enrollment) -> None:
        async with slots:
            await start_enrollment(client, settings, spec, enrollment)

    await asyncio.gather(*(start(enrollment) for enrollment in claimed))


async def _start_workflow(
    client: Client, settings: Settings, spec: CampaignSpec, enrollment: Enrollment
) -> None:
    await client.start_workflow(
        NurtureWorkflow.run,
        NurtureInput(
            enrollment_id=enrollment.id,
            lead_id=enrollment.lead_id,
            campaign_id=enrollment.campaign_id,
            campaign_version=enrollment.campaign_version,
            campaign=spec,
        ),
        id=enrollment.workflow_id,
        task_queue=settings.task_queue,
        search_attributes=enrollment_search_attributes(
            enrollment.lead_id, enrollment.campaign_id
        ),
    )


@router.post(
    "/{campaign_id}/enrollments",
    status_code=201,
    response_model=list[EnrollResult],
    responses=error_responses(401, 404, 409, 422),
)
async def enroll_leads(
    campaign_id: str,
    request: EnrollRequest,
    actor: MarketingDep,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: TemporalDep,
) -> list[EnrollResult]:
    """Enroll leads by id, in bulk; each result is enrolled, skipped or not_found.

    The campaign's re-entry rule applies, and a lead never has two live
    enrollments in one campaign.
    """
    spec, _version, results, claimed = await run_in_threadpool(
        _claim_all, engine, campaign_id, request.lead_ids, actor
    )
    # NOTE: an enrollment whose start fails here stays claimed; the lead's
    # own workflow starts it at the lead's next event.
    await _start_all(temporal, settings, spec, claimed)
    return results


class EnrollmentPublic(CamelModel):
    id: str
    lead_id: str
    campaign_id: str
    version: int
    status: str
    goal: str | None
    workflow_id: str
    enrolled_at: datetime
    ended_at: datetime | None


@router.get(
    "/{campaign_id}/enrollments",
    response_model=list[EnrollmentPublic],
    responses=error_responses(401, 404, 422),
)
def list_enrollments(
    campaign_id: str,
    session: SessionDep,
    _actor: ReadLeadsDep,
    status: Annotated[str | None, Query(description="active, completed, ...")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_DB_INTEGER)] = 0,
) -> list[EnrollmentPublic]:
    """List a campaign's enrollments, newest first, each with the version it runs."""
    get_campaign_or_404(session, campaign_id)
    query = select(Enrollment).where(Enrollment.campaign_id == campaign_id)
    if status is not None:
        query = query.where(Enrollment.status == status)
    rows = session.exec(
        query.order_by(col(Enrollment.enrolled_at).desc(), col(Enrollment.id))
        .limit(limit)
        .offset(offset)
    ).all()
    return [
        EnrollmentPublic(
            id=e.id,
            lead_id=e.lead_id,
            campaign_id=e.campaign_id,
            version=e.campaign_version,
            status=e.status,
            goal=e.goal,
            workflow_id=e.workflow_id,
            enrolled_at=e.enrolled_at,
            ended_at=e.ended_at,
        )
        for e in rows
    ]


class MigrateRequest(StrictCamelModel):
    from_version: int | None = Field(
        None,
        ge=1,
        le=MAX_DB_INTEGER,
        description="Only enrollments on this version; default: all older.",
    )


class MigrateResult(CamelModel):
    to_version: int
    enrollments_signalled: int


def _migration_targets(
    engine: sa.Engine, campaign_id: str, from_version: int | None, actor: str
) -> tuple[int, CampaignSpec, list[str]]:
    with session_scope(engine) as session:
        campaign = get_campaign_or_404(session, campaign_id)
        version = current_version(session, campaign)
        live = [
            e
            for e in _live_enrollments(session, campaign_id, from_version)
            if e.campaign_version < version.version
        ]
        session.add(
            AuditEntry(
                actor=actor,
                action="campaign.migrate",
                entity_type="campaign",
                entity_id=campaign_id,
                detail={"to": version.version, "enrollments": len(live)},
            )
        )
        spec = CampaignSpec.model_validate(version.definition)
        return version.version, spec, [e.workflow_id for e in live]


@router.post(
    "/{campaign_id}/enrollments/migrate",
    response_model=MigrateResult,
    responses=error_responses(401, 404, 422),
)
async def migrate_enrollments(
    campaign_id: str,
    actor: MarketingDep,
    engine: EngineDep,
    temporal: TemporalDep,
    request: MigrateRequest | None = None,
) -> MigrateResult:
    """Move live enrollments to the current version, at their next step.

    Each enrollment continues after the step it is in, found by that step's
    id in the new version. One whose step no longer exists stays on its version.
    """
    to_version, spec, workflow_ids = await run_in_threadpool(
        _migration_targets,
        engine,
        campaign_id,
        request.from_version if request else None,
        actor,
    )
    signalled = await _signal_all(
        temporal,
        workflow_ids,
        NurtureWorkflow.migrate.__name__,
        MigrateSignal(campaign_version=to_version, campaign=spec),
    )
    return MigrateResult(to_version=to_version, enrollments_signalled=signalled)


@router.post(
    "/{campaign_id}/simulate",
    response_model=SimulationResult,
    responses=error_responses(401, 404, 422),
)
def simulate_campaign(
    campaign_id: str,
    request: SimulationRequest,
    http_request: Request,
    session: SessionDep,
    _actor: MarketingDep,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_DB_INTEGER, description="Default: current.")
    ] = None,
) -> SimulationResult:
    """Return the schedule a sample lead would get from this campaign; sends nothing.

    Events in the request stand in for the lead's opens, clicks, replies and
    conversions. Frequency caps and send-time optimization are left out.
    """
    campaign = get_campaign_or_404(session, campaign_id)
    stored = current_version(session, campaign)
    if version is not None and version != stored.version:
        found = session.exec(
            select(CampaignVersion).where(
                CampaignVersion.campaign_id == campaign_id,
                CampaignVersion.version == version,
            )
        ).first()
        if found is None:
            raise ApiError(
                404, "not_found", f"campaign {campaign_id} has no version {version}"
            )
        stored = found
    spec = CampaignSpec.model_validate(stored.definition)
    try:
        return simulate(
            spec,
            stored.version,
            campaign_id,
            request,
            http_request.app.state.renderer,
            utcnow(),
        )
    except ValueError as error:
        raise ApiError(422, "simulation_failed", f"cannot simulate: {error}") from None


class LifecycleResult(CampaignPublic):
    enrollments_signalled: int


async def _change_status(
    campaign_id: str, action: str, actor: str, engine: sa.Engine, temporal: Client
) -> LifecycleResult:
    campaign, _version, live = await run_in_threadpool(
        _transition, engine, campaign_id, action, actor
    )
    signalled = 0
    if action in ("pause", "resume"):
        signalled = await _signal_all(
            temporal,
            live,
            NurtureWorkflow.set_paused.__name__,
            PauseSignal(paused=action == "pause"),
        )
    elif action == "archive":
        signalled = await _signal_all(temporal, live, NurtureWorkflow.archive.__name__)
    with Session(engine) as session:
        stored = get_campaign_or_404(session, campaign_id)
        public = _public(stored, current_version(session, stored))
    logger.info(
        "campaign %s: %s, %d enrollments signalled", campaign.id, action, signalled
    )
    return LifecycleResult(**public.model_dump(), enrollments_signalled=signalled)


LIFECYCLE_ERRORS = error_responses(401, 404, 409)


@router.post(
    "/{campaign_id}/activate",
    response_model=LifecycleResult,
    responses=LIFECYCLE_ERRORS,
)
async def activate_campaign(
    campaign_id: str, actor: MarketingDep, engine: EngineDep, temporal: TemporalDep
) -> LifecycleResult:
    """Activate a draft campaign: from now on its trigger enrolls leads."""
    return await _change_status(campaign_id, "activate", actor, engine, temporal)


@router.post(
    "/{campaign_id}/pause", response_model=LifecycleResult, responses=LIFECYCLE_ERRORS
)
async def pause_campaign(
    campaign_id: str, actor: MarketingDep, engine: EngineDep, temporal: TemporalDep
) -> LifecycleResult:
    """Pause an active campaign: live enrollments hold their sends where they are."""
    return await _change_status(campaign_id, "pause", actor, engine, temporal)


@router.post(
    "/{campaign_id}/resume", response_model=LifecycleResult, responses=LIFECYCLE_ERRORS
)
async def resume_campaign(
    campaign_id: str, actor: MarketingDep, engine: EngineDep, temporal: TemporalDep
) -> LifecycleResult:
    """Resume a paused campaign: held sends go out, in their send window."""
    return await _change_status(campaign_id, "resume", actor, engine, temporal)


@router.post(
    "/{campaign_id}/archive", response_model=LifecycleResult, responses=LIFECYCLE_ERRORS
)
async def archive_campaign(
    campaign_id: str, actor: MarketingDep, engine: EngineDep, temporal: TemporalDep
) -> LifecycleResult:
    """Archive a campaign for good: its live enrollments end."""
    return await _change_status(campaign_id, "archive", actor, engine, temporal)
