"""Campaign entry: trigger matching, re-entry rules and claiming an enrollment."""

from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from nurture.campaigns import CampaignSpec, Trigger
from nurture.conditions import Facts, evaluate
from nurture.models import Enrollment
from nurture.temporal import nurture_workflow_id


def trigger_matches(
    trigger: Trigger, event: str, event_types: list[str], facts: Facts
) -> bool:
    """Tell whether a lead enters after this event (`created` or `behavior`)."""
    if trigger.type == "manual":
        return False
    if trigger.type == "lead_created":
        if event != "created":
            return False
        channel = (facts.lead.get("source") or {}).get("channel")
        if trigger.sources is not None and channel not in trigger.sources:
            return False
    if trigger.type == "behavior" and trigger.event not in event_types:
        return False
    condition = trigger.parsed_condition()
    return condition is None or evaluate(condition, facts)


def entry_refusal(
    session: Session, campaign_id: str, lead_id: str, spec: CampaignSpec, now: datetime
) -> str | None:
    """Return why the lead may not enter the campaign now, or None if it may."""
    enrollments = session.exec(
        select(Enrollment)
        .where(Enrollment.campaign_id == campaign_id, Enrollment.lead_id == lead_id)
        .order_by(col(Enrollment.enrolled_at).desc())
    ).all()
    if any(enrollment.status == "active" for enrollment in enrollments):
        return "already enrolled"
    if not enrollments:
        return None
    days = spec.reentry_days
    if days is None:
        return "already went through this campaign, whose reentry is once"
    again = enrollments[0].enrolled_at + timedelta(days=days)
    if now < again:
        return (
            f"may enter again from {again:%Y-%m-%d %H:%M} UTC (reentry {spec.reentry})"
        )
    return None


def claim(
    session: Session, campaign_id: str, version: int, lead_id: str, now: datetime
) -> Enrollment | None:
    """Insert a live enrollment; None when a concurrent one won the race."""
    enrollment = Enrollment(
        campaign_id=campaign_id,
        campaign_version=version,
        lead_id=lead_id,
        workflow_id=nurture_workflow_id(campaign_id, lead_id),
        enrolled_at=now,
    )
    try:
        with session.begin_nested():
            session.add(enrollment)
    except sa.exc.IntegrityError:
        return None
    return enrollment
