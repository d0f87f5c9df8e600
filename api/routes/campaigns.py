"""Campaigns: submit, read, list and edit (each edit stores a new version)."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, Request
from sqlmodel import Session, col, select

from api.deps import ActorDep, SessionDep
from api.errors import (
    ApiError,
    FieldError,
    error_responses,
    validation_error,
)
from nurture.campaigns import CampaignSpec, slugify
from nurture.models import AuditEntry, Campaign, CampaignVersion, utcnow
from nurture.rendering import TemplateError, TemplateRenderer
from nurture.schemas import CamelModel

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


def _check_templates(spec: CampaignSpec, renderer: TemplateRenderer) -> None:
    """Reject steps whose template is missing or does not compile."""
    errors = []
    for index, step in enumerate(spec.sequence):
        try:
            renderer.check(step.channel, step.template)
        except TemplateError as error:
            errors.append(
                FieldError(
                    path=f"sequence[{index}].template",
                    message=f"step {step.step}: {error}",
                    type="template_invalid",
                )
            )
        for key, expression in step.personalization.items():
            try:
                renderer.check_expression(expression)
            except TemplateError as error:
                errors.append(
                    FieldError(
                        path=f"sequence[{index}].personalization.{key}",
                        message=f"step {step.step}: {error}",
                        type="template_invalid",
                    )
                )
    if errors:
        raise validation_error(errors)


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
        definition=version.definition,
    )


def _current_version(session: Session, campaign: Campaign) -> CampaignVersion:
    version = session.exec(
        select(CampaignVersion).where(
            CampaignVersion.campaign_id == campaign.id,
            CampaignVersion.version == campaign.current_version,
        )
    ).one()
    return version


def _get_or_404(session: Session, campaign_id: str) -> Campaign:
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
        definition=spec.model_dump(mode="json"),
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
)
def create_campaign(
    spec: CampaignSpec, request: Request, session: SessionDep, actor: ActorDep
) -> CampaignPublic:
    """Submit a campaign; it is active at once unless its status is "draft"."""
    _check_templates(spec, request.app.state.renderer)
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
)
def update_campaign(
    campaign_id: str,
    spec: CampaignSpec,
    request: Request,
    session: SessionDep,
    actor: ActorDep,
) -> CampaignPublic:
    """Store a new version; enrollments in flight keep the version they started on."""
    campaign = _get_or_404(session, campaign_id)
    _check_templates(spec, request.app.state.renderer)
    campaign.current_version += 1
    campaign.name = spec.name
    campaign.description = spec.description
    campaign.status = spec.status
    campaign.updated_at = utcnow()
    version = _store_version(session, campaign, spec, actor, "campaign.updated")
    return _public(campaign, version)


@router.get("/{campaign_id}", response_model=CampaignPublic, responses=ERRORS)
def read_campaign(
    campaign_id: str, session: SessionDep, _actor: ActorDep
) -> CampaignPublic:
    """Read a campaign with the definition of its current version."""
    campaign = _get_or_404(session, campaign_id)
    return _public(campaign, _current_version(session, campaign))


@router.get("", response_model=list[CampaignPublic], responses=ERRORS)
def list_campaigns(session: SessionDep, _actor: ActorDep) -> list[CampaignPublic]:
    """List campaigns, newest first, each with its current version."""
    campaigns = session.exec(
        select(Campaign).order_by(col(Campaign.created_at).desc())
    ).all()
    return [_public(c, _current_version(session, c)) for c in campaigns]
