"""A split's winner, declared or withdrawn by a marketer.

A split step's winner rule decides on its own (nurture.analytics.splits).
These routes let a person overrule it: declare a winner before the rule
fires, replace the rule's choice, or withdraw a decision so that new
enrollments draw at random again. A withdrawn decision keeps the rule from
firing again; declaring a winner is the only way back to one.
"""

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from pydantic import Field
from sqlmodel import Session, select

from api.deps import MarketingDep, SessionDep
from api.errors import ApiError, FieldError, error_responses, validation_error
from api.routes.campaigns import current_version, get_campaign_or_404
from nurture.analytics.splits import (
    DecisionOut,
    assignment_counts,
    decision_figures,
    decision_out,
    variant_results,
)
from nurture.analytics.sql import DEFAULT_CONFIDENCE, DEFAULT_SIGNIFICANCE, TimeRange
from nurture.campaigns import CampaignSpec, SplitStep
from nurture.models import AuditEntry, Campaign, SplitDecision, utcnow
from nurture.schemas import CamelModel

router = APIRouter(prefix="/api/v1/nurturing/campaigns", tags=["campaigns"])
WINNER_PATH = "/{campaign_id}/splits/{step_id}/winner"


class WinnerIn(CamelModel):
    variant: str = Field(
        min_length=1, description="The variant every new enrollment takes."
    )


def _split_step(session: Session, campaign: Campaign, step_id: str) -> SplitStep:
    """Return the split step of the campaign's current version, or raise 404."""
    version = current_version(session, campaign)
    spec = CampaignSpec.model_validate(version.definition)
    steps = spec.steps_by_id()
    step = steps.get(step_id)
    if isinstance(step, SplitStep):
        return step
    splits = [name for name, each in steps.items() if isinstance(each, SplitStep)]
    listed = ", ".join(splits) if splits else "none"
    problem = "is not a split step" if step is not None else "does not exist"
    raise ApiError(
        404,
        "not_found",
        f"step {step_id!r} of campaign {campaign.id} (version {version.version}) "
        f"{problem}; its split steps: {listed}",
    )


def _figures(
    session: Session, campaign_id: str, step_id: str, step: SplitStep
) -> dict[str, Any]:
    """Compute the split's figures now, to store with a declaration."""
    counts = assignment_counts(session.connection(), TimeRange(), [campaign_id])
    significance = step.winner.significance if step.winner else DEFAULT_SIGNIFICANCE
    variants = variant_results(
        step,
        counts.get((campaign_id, step_id), {}),
        DEFAULT_CONFIDENCE,
        significance,
        defined_only=True,
    )
    return decision_figures(variants, significance)


def _stored(session: Session, campaign_id: str, step_id: str) -> SplitDecision | None:
    return session.exec(
        select(SplitDecision)
        .where(
            SplitDecision.campaign_id == campaign_id,
            SplitDecision.step_id == step_id,
        )
        .with_for_update()
    ).first()


def _conflict(campaign_id: str, step_id: str) -> ApiError:
    return ApiError(
        409,
        "conflict",
        f"the winner rule of split {step_id!r} in campaign {campaign_id} decided "
        "at the same moment; read the A/B result again and retry",
    )


@router.put(
    WINNER_PATH,
    response_model=DecisionOut,
    responses=error_responses(401, 404, 409, 422),
)
def declare_winner(
    campaign_id: str,
    step_id: str,
    body: WinnerIn,
    session: SessionDep,
    actor: MarketingDep,
) -> DecisionOut:
    """Send every new enrollment at this split to one variant.

    Replaces any decision, the winner rule's included. Enrollments that
    already passed the split keep their variant.
    """
    campaign = get_campaign_or_404(session, campaign_id)
    if campaign.status == "archived":
        raise ApiError(
            409, "conflict", f"campaign {campaign_id} is archived; it cannot change"
        )
    step = _split_step(session, campaign, step_id)
    names = [variant.name for variant in step.variants]
    if body.variant not in names:
        raise validation_error(
            [
                FieldError(
                    path="variant",
                    message=f"split {step_id!r} has no variant {body.variant!r}; "
                    f"use one of: {', '.join(names)}",
                    type="unknown_variant",
                )
            ]
        )
    figures = _figures(session, campaign_id, step_id, step)
    values: dict[str, Any] = {
        "winner": body.variant,
        "control": names[0],
        "campaign_version": campaign.current_version,
        "decided_at": utcnow(),
        "decided_by": actor,
        "rule": (
            step.winner.model_dump(mode="json", by_alias=True) if step.winner else {}
        ),
        "figures": figures,
        "withdrawn_at": None,
        "withdrawn_by": None,
    }
    decision = _stored(session, campaign_id, step_id)
    previous = None
    if decision is None:
        decision = SplitDecision(campaign_id=campaign_id, step_id=step_id, **values)
    else:
        if decision.withdrawn_at is None:
            previous = decision.winner
        decision.sqlmodel_update(values)
    session.add(decision)
    session.add(
        AuditEntry(
            actor=actor,
            action="split.winner_declared",
            entity_type="campaign",
            entity_id=campaign_id,
            detail={"step": step_id, "winner": body.variant, "previous": previous},
        )
    )
    try:
        session.commit()
    except sa.exc.IntegrityError:
        session.rollback()
        raise _conflict(campaign_id, step_id) from None
    session.refresh(decision)
    return decision_out(decision)


@router.delete(
    WINNER_PATH,
    response_model=DecisionOut,
    responses=error_responses(401, 404),
)
def withdraw_winner(
    campaign_id: str, step_id: str, session: SessionDep, actor: MarketingDep
) -> DecisionOut:
    """Withdraw the split's winner: new enrollments draw at random again.

    The winner rule does not fire again for this split; declare a winner
    with PUT to send enrollments to one variant once more.
    """
    get_campaign_or_404(session, campaign_id)
    decision = _stored(session, campaign_id, step_id)
    if decision is None or decision.withdrawn_at is not None:
        raise ApiError(
            404,
            "not_found",
            f"split {step_id!r} of campaign {campaign_id} has no winner in force; "
            f"GET /api/v1/analytics/ab?campaignId={campaign_id} shows its decision",
        )
    decision.withdrawn_at = utcnow()
    decision.withdrawn_by = actor
    session.add(decision)
    session.add(
        AuditEntry(
            actor=actor,
            action="split.winner_withdrawn",
            entity_type="campaign",
            entity_id=campaign_id,
            detail={"step": step_id, "winner": decision.winner},
        )
    )
    session.commit()
    session.refresh(decision)
    return decision_out(decision)
