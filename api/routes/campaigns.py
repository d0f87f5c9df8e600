"""Campaigns: submit, read, list and edit (each edit stores a new version)."""

import json
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, MarketingDep, ReadLeadsDep, SessionDep
from api.errors import (
    ApiError,
    FieldError,
    error_responses,
    validation_error,
)
from nurture.campaign_checks import check_campaign
from nurture.campaigns import CampaignSpec, slugify
from nurture.models import AuditEntry, Campaign, CampaignVersion, utcnow
from nurture.schemas import CamelModel, inline_json_schema

router = APIRouter(prefix="/api/v1/nurturing/campaigns", tags=["campaigns"])
ERRORS = error_responses(401, 404, 422)


class CampaignPublic(CamelModel):
    id: str
    name: str
    description: str | None
    status: str
    version: int
    created_at: datetime
    updated_at: datetime
    definition: dict[str, Any]


async def read_spec(request: Request) -> CampaignSpec:
    """Read a campaign from the body and validate it, reporting every problem."""
    try:
        raw = json.loads(await request.body())
    except ValueError as error:
        raise validation_error(
            [
                FieldError(
                    path="(body)", message=f"invalid JSON: {error}", type="json_invalid"
                )
            ]
        ) from None
    spec, problems = check_campaign(raw, request.app.state.renderer)
    if spec is None:
        raise validation_error(
            [FieldError(path=p.path, message=p.message, type=p.type) for p in problems]
        )
    return spec


_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": inline_json_schema(CampaignSpec)}},
    }
}


def _unique_id(session: Session, name: str) -> str:
    base = slugify(name)
    candidate, suffix = base, 2
    while session.get(Campaign, candidate) is not None:
        candidate, suffix = f"{base}-{suffix}", suffix + 1
    return candidate


def _public(campaign: Campaign, version: CampaignVersion) -> CampaignPublic:
    return CampaignPublic(
        id=campaign.id,
        name=campaign.name,
        description=campaign.description,
        status=campaign.status,
        version=version.version,
        created_at=campaign.created_at,
        updated_at=campaign.updated_at,
        # The definition's own status only sets the first one; the lifecycle
        # routes change it afterwards, so only the top-level status is current.
        definition={k: v for k, v in version.definition.items() if k != "status"},
    )


def current_version(session: Session, campaign: Campaign) -> CampaignVersion:
    version = session.exec(
        select(CampaignVersion).where(
            CampaignVersion.campaign_id == campaign.id,
            CampaignVersion.version == campaign.current_version,
        )
    ).one()
    return version


def get_campaign_or_404(session: Session, campaign_id: str) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise ApiError(404, "not_found", f"campaign {campaign_id} not found")
    return campaign


def _store_version(
    session: Session, campaign: Campaign, spec: CampaignSpec, actor: str, action: str
) -> CampaignVersion:
    """Store the campaign with the next version of its definition, and audit it."""
    version = CampaignVersion(
        campaign_id=campaign.id,
        version=campaign.current_version,
        definition=spec.model_dump(mode="json", exclude_none=True),
    )
    session.add(campaign)
    session.add(version)
    session.add(
        AuditEntry(
            actor=actor,
            action=action,
            entity_type="campaign",
            entity_id=campaign.id,
            detail={"version": version.version, "status": campaign.status},
        )
    )
    try:
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        raise ApiError(
            409,
            "conflict",
            f"campaign {campaign.id} was changed by another request; "
            "read it again and retry",
        ) from None
    return version


@router.post(
    "",
    status_code=201,
    response_model=CampaignPublic,
    responses=error_responses(401, 409, 422),
    openapi_extra=_SPEC_BODY,
)
async def create_campaign(
    request: Request, engine: EngineDep, actor: MarketingDep
) -> CampaignPublic:
    """Submit a campaign; it is active at once unless its status is "draft"."""
    spec = await read_spec(request)
    return await run_in_threadpool(_create, engine, spec, actor)


def _create(engine: sa.Engine, spec: CampaignSpec, actor: str) -> CampaignPublic:
    with Session(engine, expire_on_commit=False) as session:
        return _create_in(session, spec, actor)


def _create_in(session: Session, spec: CampaignSpec, actor: str) -> CampaignPublic:
    campaign = Campaign(
        id=_unique_id(session, spec.name),
        name=spec.name,
        description=spec.description,
        status=spec.status,
    )
    version = _store_version(session, campaign, spec, actor, "campaign.created")
    return _public(campaign, version)


@router.put(
    "/{campaign_id}",
    response_model=CampaignPublic,
    responses=error_responses(401, 404, 409, 422),
    openapi_extra=_SPEC_BODY,
)
async def update_campaign(
    campaign_id: str, request: Request, engine: EngineDep, actor: MarketingDep
) -> CampaignPublic:
    """Store a new version; enrollments in flight keep theirs until migrated.

    The campaign keeps its lifecycle status; use the activate, pause, resume
    and archive routes to change it.
    """
    spec = await read_spec(request)
    return await run_in_threadpool(_update, engine, campaign_id, spec, actor)


def _update(
    engine: sa.Engine, campaign_id: str, spec: CampaignSpec, actor: str
) -> CampaignPublic:
    with Session(engine, expire_on_commit=False) as session:
        campaign = get_campaign_or_404(session, campaign_id)
        if campaign.status == "archived":
            raise ApiError(
                409, "conflict", f"campaign {campaign_id} is archived; it cannot change"
            )
        campaign.current_version += 1
        campaign.name = spec.name
        campaign.description = spec.description
        campaign.updated_at = utcnow()
        version = _store_version(session, campaign, spec, actor, "campaign.updated")
        return _public(campaign, version)


@router.get("/{campaign_id}", response_model=CampaignPublic, responses=ERRORS)
def read_campaign(
    campaign_id: str, session: SessionDep, _actor: ReadLeadsDep
) -> CampaignPublic:
    """Read a campaign with the definition of its current version."""
    campaign = get_campaign_or_404(session, campaign_id)
    return _public(campaign, current_version(session, campaign))


@router.get("", response_model=list[CampaignPublic], responses=ERRORS)
def list_campaigns(session: SessionDep, _actor: ReadLeadsDep) -> list[CampaignPublic]:
    """List campaigns, newest first, each with its current version."""
    campaigns = session.exec(
        select(Campaign).order_by(col(Campaign.created_at).desc())
    ).all()
    return [_public(c, current_version(session, c)) for c in campaigns]
