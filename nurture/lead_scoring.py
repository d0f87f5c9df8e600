"""Scoring a stored lead: its columns and events turned into the scoring input."""

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, func, select

from nurture.models import EngagementEvent, Lead, utcnow
from nurture.scoring import (
    Behavioral,
    Engagement,
    Firmographic,
    ScoreResult,
    ScoringInput,
    next_stage,
    score,
)

# Engagement event types and the behavioral counters each one feeds.
EVENT_COUNTERS: dict[str, tuple[str, ...]] = {
    "page_view": ("website_visits",),
    "pricing_page_view": ("website_visits", "pricing_page_views"),
    "content_download": ("content_downloads",),
    "webinar_registration": ("webinar_registrations",),
    "webinar_attendance": ("webinar_registrations",),
    "form_submission": ("form_submissions",),
    "open": ("email_opens",),
    "click": ("email_clicks",),
    "sms_reply": ("sms_replies",),
}
# Events that show interest beyond filling in the first form.
ENGAGED_EVENTS = frozenset(EVENT_COUNTERS) - {"form_submission"}
ACTIVITY_WINDOW = timedelta(days=30)


def scoring_input(session: Session, lead: Lead) -> tuple[ScoringInput, dict[str, int]]:
    """Build the scoring input of a stored lead, and its event counts by type."""
    # One statement, so the counts, the last activity and the recent count
    # all see the same events even while new ones are being stored.
    window_start = utcnow() - ACTIVITY_WINDOW
    occurred = col(EngagementEvent.occurred_at)
    rows = session.exec(
        select(
            EngagementEvent.type,
            func.count(),
            func.max(occurred),
            func.sum(sa.case((occurred >= window_start, 1), else_=0)),
        )
        .where(EngagementEvent.lead_id == lead.id)
        .group_by(EngagementEvent.type)
    ).all()
    counts = {kind: count for kind, count, _last, _recent in rows}
    behavioral: dict[str, int] = {}
    for event_type, fields in EVENT_COUNTERS.items():
        for field in fields:
            behavioral[field] = behavioral.get(field, 0) + counts.get(event_type, 0)
    last_times = [last for _kind, _count, last, _recent in rows if last is not None]
    last_activity = max(last_times) if last_times else None
    recent = sum(int(in_window or 0) for _kind, _count, _last, in_window in rows)
    enrichment = lead.enrichment or {}
    custom = lead.custom_fields or {}
    return ScoringInput(
        lead_id=lead.id,
        firmographic=Firmographic(
            industry=lead.company_industry,
            size=lead.company_size,
            revenue=lead.company_revenue,
            budget=_text(custom.get("budget")),
            timeline=_text(custom.get("timeline")),
            free_mail=bool(enrichment.get("free_mail")),
            role_address=bool(enrichment.get("role_address")),
        ),
        behavioral=Behavioral(**behavioral),
        engagement=Engagement(last_activity=last_activity, total_activities=recent),
    ), counts


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def rescore(
    session: Session, lead: Lead, mql_threshold: int, now: datetime | None = None
) -> ScoreResult:
    """Score a stored lead, move its stage forward, and store both on the lead."""
    data, counts = scoring_input(session, lead)
    result = score(data, now or utcnow())
    engaged = any(counts.get(kind, 0) for kind in ENGAGED_EVENTS)
    stage = next_stage(lead.stage, result.score, engaged, mql_threshold)
    if (stage, result.score) != (lead.stage, lead.score):
        lead.updated_at = result.scored_at
    lead.stage = stage
    lead.score = result.score
    lead.score_reasons = [reason.model_dump() for reason in result.reasons]
    lead.scored_at = result.scored_at
    session.add(lead)
    return result
