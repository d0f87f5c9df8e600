"""Scoring stored leads: their columns, imported totals and events, read in bulk.

One lead (the scoring activity) and a batch of thousands (rescoring after a
criteria change, the benchmark) go through the same functions: a batch
reads its leads, events and messages in three statements.
"""

import statistics
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pydantic.alias_generators import to_snake
from sqlmodel import Session, col, func, select

from nurture.criteria import (
    CompiledRules,
    LeadFacts,
    ScoringCriteria,
    built_in_criteria,
    compile_rules,
)
from nurture.enrichment import midpoint, normalize_industry
from nurture.learning import FeatureRow, TrainedModel
from nurture.metrics import time_scoring
from nurture.models import (
    EngagementEvent,
    Lead,
    Message,
    ScoringCriteriaVersion,
    ScoringModel,
    utcnow,
)
from nurture.scoring import (
    ScoreResult,
    base_features,
    blend,
    blend_note,
    email_type,
    model_score,
    next_stage,
    rule_result,
    timeline_months,
)

# Engagement event types and the behavior counters each one feeds.
EVENT_COUNTERS: dict[str, tuple[str, ...]] = {
    "page_view": ("website_visits",),
    "pricing_page_view": ("website_visits", "pricing_page_views"),
    "demo_page_view": ("website_visits", "demo_page_views"),
    "content_download": ("content_downloads",),
    "webinar_registration": ("webinar_registrations",),
    "webinar_attendance": ("webinar_attendances",),
    "form_submission": ("form_submissions",),
    "open": ("email_opens",),
    "click": ("email_clicks",),
    "sms_reply": ("sms_replies",),
    "replied": ("sms_replies",),
}
EVENT_CHANNELS: dict[str, str] = {
    "page_view": "web",
    "pricing_page_view": "web",
    "demo_page_view": "web",
    "content_download": "web",
    "form_submission": "web",
    "webinar_registration": "events",
    "webinar_attendance": "events",
    "open": "email",
    "click": "email",
    "sms_reply": "sms",
    "replied": "sms",
}
SCORED_EVENTS = tuple(EVENT_COUNTERS)
# Events that show interest beyond filling in the first form.
ENGAGED_EVENTS = frozenset(EVENT_COUNTERS) - {"form_submission"}
VISIT_EVENTS = frozenset({"page_view", "pricing_page_view", "demo_page_view"})
# Imported activity keys (camelCase, as the CSV mapping names them).
ACTIVITY_AS_OF = "asOf"
DAY = 86400.0
# Leads per statement when reading a batch; well under every database's
# limit on bound parameters.
READ_CHUNK = 5000


@dataclass(slots=True)
class LeadActivity:
    """A lead's behavior events and message responses, as read from the database."""

    # (type, occurred_at, seconds on the page, pages seen)
    events: list[tuple[str, datetime, float | None, float | None]] = field(
        default_factory=list
    )
    # Hours from a message being sent to the lead opening or clicking it.
    response_hours: list[float] = field(default_factory=list)


def load_activity(session: Session, lead_ids: Sequence[str]) -> dict[str, LeadActivity]:
    """Read the events and message responses of many leads in two statements."""
    found: dict[str, LeadActivity] = {lead_id: LeadActivity() for lead_id in lead_ids}
    data = col(EngagementEvent.data)
    for start in range(0, len(lead_ids), READ_CHUNK):
        chunk = list(lead_ids[start : start + READ_CHUNK])
        events = session.execute(
            sa.select(
                col(EngagementEvent.lead_id),
                col(EngagementEvent.type),
                col(EngagementEvent.occurred_at),
                data["durationSeconds"].as_float(),
                data["pages"].as_float(),
            ).where(
                col(EngagementEvent.lead_id).in_(chunk),
                col(EngagementEvent.type).in_(SCORED_EVENTS),
            )
        ).all()
        for lead_id, kind, occurred_at, seconds, pages in events:
            found[lead_id].events.append((kind, occurred_at, seconds, pages))
        responses = session.execute(
            sa.select(
                col(Message.lead_id),
                col(Message.sent_at),
                func.coalesce(col(Message.opened_at), col(Message.clicked_at)),
            ).where(
                col(Message.lead_id).in_(chunk),
                col(Message.sent_at).is_not(None),
                sa.or_(
                    col(Message.opened_at).is_not(None),
                    col(Message.clicked_at).is_not(None),
                ),
            )
        ).all()
        for lead_id, sent_at, answered_at in responses:
            if sent_at is not None and answered_at is not None:
                hours = (answered_at - sent_at).total_seconds() / 3600
                found[lead_id].response_hours.append(max(hours, 0.0))
    return found


@dataclass(slots=True)
class Summary:
    """A lead's behavior, reduced once and read by both the rules and the model."""

    facts: LeadFacts
    counts: dict[str, float]
    pages_per_visit: float | None
    time_on_site_seconds: float | None
    engaged: bool


# The channel of each imported behavior total, for the channel-mix criterion.
COUNTER_CHANNELS = {
    "email_opens": "email",
    "email_clicks": "email",
    "sms_replies": "sms",
    "webinar_registrations": "events",
    "webinar_attendances": "events",
}


def summarize(lead: Lead, activity: LeadActivity, now: datetime) -> Summary:
    """Reduce a lead's columns, imported totals and events to facts and counts."""
    occurrences: dict[str, list[tuple[float, float]]] = {}
    counts: dict[str, float] = {}
    imported = lead.activity or {}
    imported_age = _age_days(imported.get(ACTIVITY_AS_OF), now)
    channels: set[str] = set()
    pages_total, visits_with_pages, seconds_total = 0.0, 0, 0.0
    has_seconds = False
    for key, value in imported.items():
        if key == ACTIVITY_AS_OF or not isinstance(value, int | float) or value <= 0:
            continue
        counter = to_snake(key)
        if counter == "pages_per_visit":
            pages_total += value
            visits_with_pages += 1
        elif counter == "time_on_site_seconds":
            seconds_total += value
            has_seconds = True
        else:
            occurrences.setdefault(counter, []).append((imported_age, float(value)))
            counts[counter] = counts.get(counter, 0.0) + value
            channels.add(COUNTER_CHANNELS.get(counter, "web"))
    last_activity: datetime | None = None
    recent_7d = recent_30d = 0
    # As with events, form submissions alone do not make a lead engaged.
    engaged = any(counter != "form_submissions" for counter in counts)
    for kind, occurred_at, seconds, pages in activity.events:
        age = max((now - occurred_at).total_seconds(), 0.0) / DAY
        for counter in EVENT_COUNTERS[kind]:
            occurrences.setdefault(counter, []).append((age, 1.0))
            counts[counter] = counts.get(counter, 0.0) + 1
        channels.add(EVENT_CHANNELS[kind])
        if last_activity is None or occurred_at > last_activity:
            last_activity = occurred_at
        if age <= 7:
            recent_7d += 1
        if age <= 30:
            recent_30d += 1
        if kind in ENGAGED_EVENTS:
            engaged = True
        if kind in VISIT_EVENTS:
            if pages is not None:
                pages_total += pages
                visits_with_pages += 1
            if seconds is not None:
                seconds_total += seconds
                has_seconds = True
    pages_per_visit = pages_total / visits_with_pages if visits_with_pages else None
    seconds = seconds_total if has_seconds else None
    enrichment = lead.enrichment or {}
    kind_of_email = email_type(
        None,
        bool(enrichment.get("free_mail")),
        bool(enrichment.get("role_address")),
        bool(enrichment.get("email_domain")),
    )
    custom = lead.custom_fields or {}
    facts = LeadFacts(
        industry=normalize_industry(lead.company_industry),
        employees=midpoint(lead.company_size),
        revenue=midpoint(lead.company_revenue),
        budget=midpoint(_text(custom.get("budget"))),
        timeline_months=timeline_months(_text(custom.get("timeline"))),
        country=lead.company_country,
        job_title=lead.job_title,
        technologies=tuple(lead.company_technologies or ()),
        growth_stage=lead.company_growth_stage,
        email_type=kind_of_email,
        occurrences=occurrences,
        pages_per_visit=pages_per_visit,
        time_on_site_minutes=seconds / 60 if seconds is not None else None,
        days_since_last_activity=(
            max((now - last_activity).total_seconds(), 0.0) / DAY
            if last_activity is not None
            else None
        ),
        activities_7d=recent_7d,
        activities_30d=recent_30d,
        channel_count=len(channels),
        response_hours=(
            statistics.median(activity.response_hours)
            if activity.response_hours
            else None
        ),
    )
    return Summary(facts, counts, pages_per_visit, seconds, engaged)


def _age_days(value: Any, now: datetime) -> float:
    if not isinstance(value, str):
        return 0.0
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        return 0.0
    return max((now - moment).total_seconds(), 0.0) / DAY


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def feature_row(lead: Lead, summary: Summary) -> FeatureRow:
    """Return the model's features for a lead: its facts and its custom fields.

    Only what is known before sales acts on the lead goes in: never its score,
    stage or outcome, which would leak the label into the features.
    """
    row = base_features(
        lead.company_industry,
        lead.company_country,
        lead.company_size,
        lead.company_revenue,
        lead.job_title,
        lead.company_growth_stage,
        summary.facts.email_type,
        summary.counts,
        summary.pages_per_visit,
        summary.time_on_site_seconds,
    )
    row["source.channel"] = lead.source_channel
    row["source.medium"] = lead.source_medium
    row["source.campaign"] = lead.source_campaign
    for key, value in (lead.custom_fields or {}).items():
        if value is None or isinstance(value, str | int | float | bool):
            row.setdefault(key, value)
    return row


@dataclass(slots=True)
class ScoringContext:
    """The criteria and model in force, compiled and loaded once per version."""

    criteria_version: int
    criteria: ScoringCriteria
    rules: CompiledRules
    model_version: int | None
    model: TrainedModel | None


_lock = threading.Lock()
_criteria_cache: dict[
    tuple[int | None, datetime], tuple[ScoringCriteria, CompiledRules]
] = {}
_model_cache: OrderedDict[tuple[int | None, datetime], TrainedModel] = OrderedDict()
MODELS_KEPT = 3


def load_context(session: Session, default_threshold: int) -> ScoringContext:
    """Return the criteria and model in force; a change takes effect at once.

    `default_threshold` is the MQL threshold of the built-in criteria, in
    force until an admin stores criteria of their own (MQL_THRESHOLD).

    Two small reads find the current versions; what they name is compiled
    or unpickled only the first time.
    """
    latest = session.exec(
        select(ScoringCriteriaVersion.version, ScoringCriteriaVersion.created_at)
        .order_by(col(ScoringCriteriaVersion.version).desc())
        .limit(1)
    ).first()
    promoted = session.exec(
        select(ScoringModel.version, ScoringModel.created_at).where(
            col(ScoringModel.promoted).is_(True)
        )
    ).first()
    criteria_version = latest[0] if latest else None
    model_version = promoted[0] if promoted else None
    # Keyed by creation time too: SQLite may reuse the number of a deleted row.
    criteria_key = (latest[0], latest[1]) if latest else None
    model_key = (promoted[0], promoted[1]) if promoted else None
    with _lock:
        cached = _criteria_cache.get(criteria_key) if criteria_key else None
        model = _model_cache.get(model_key) if model_key else None
    if cached is None:
        if criteria_version is None:
            criteria = built_in_criteria(default_threshold)
        else:
            stored = session.get(ScoringCriteriaVersion, criteria_version)
            assert stored is not None
            criteria = ScoringCriteria.model_validate(stored.criteria)
        cached = (criteria, compile_rules(criteria))
        if criteria_key is not None:
            with _lock:
                _criteria_cache[criteria_key] = cached
    if model_key is not None and model is None:
        artifact = session.exec(
            select(ScoringModel.artifact).where(ScoringModel.version == model_version)
        ).one()
        model = TrainedModel.from_bytes(artifact or b"")
        with _lock:
            _model_cache[model_key] = model
            while len(_model_cache) > MODELS_KEPT:
                _model_cache.popitem(last=False)
    return ScoringContext(
        criteria_version=criteria_version or 0,
        criteria=cached[0],
        rules=cached[1],
        model_version=model_version,
        model=model,
    )


def score_summary(
    context: ScoringContext, lead: Lead, summary: Summary, now: datetime
) -> ScoreResult:
    """Score one lead by the rules and, explained, by the model in force."""
    scored = context.rules.evaluate(summary.facts)
    detail = None
    if context.model is not None and context.model_version is not None:
        row = feature_row(lead, summary)
        detail = model_score(context.model, context.model_version, row)
    dimensions, reasons = rule_result(context.rules, scored)
    probability = detail.probability if detail else None
    return ScoreResult(
        lead_id=lead.id,
        score=blend(scored.score, probability, context.criteria.model.weight),
        rules_score=scored.score,
        dimensions=dimensions,
        reasons=reasons,
        method="rules" if detail is None else "rules+model",
        model=detail,
        note=blend_note(
            scored.score,
            detail,
            context.criteria.model.weight,
            blend(scored.score, probability, context.criteria.model.weight),
        ),
        criteria_version=context.criteria_version,
        scored_at=now,
    )


def apply_score(
    lead: Lead, result: ScoreResult, engaged: bool, context: ScoringContext
) -> None:
    """Store a score on its lead and move the lead's stage forward."""
    stage = next_stage(
        lead.stage, result.score, engaged, context.criteria.mql_threshold
    )
    if (stage, result.score) != (lead.stage, lead.score):
        lead.updated_at = result.scored_at
    lead.stage = stage
    lead.score = result.score
    lead.rules_score = result.rules_score
    lead.score_reasons = [reason.model_dump() for reason in result.reasons]
    lead.scored_at = result.scored_at
    lead.criteria_version = result.criteria_version
    if result.model is None:
        lead.model_version = None
        lead.conversion_probability = None
        lead.model_contributions = []
        return
    lead.model_version = result.model.version
    lead.conversion_probability = result.model.probability
    lead.model_contributions = [
        item.model_dump(mode="json") for item in result.model.contributions
    ]


@time_scoring("rescore")
def rescore(
    session: Session, lead: Lead, default_threshold: int, now: datetime | None = None
) -> ScoreResult:
    """Score one stored lead, explained, and store the score and stage on it."""
    now = now or utcnow()
    context = load_context(session, default_threshold)
    summary = summarize(lead, load_activity(session, [lead.id])[lead.id], now)
    result = score_summary(context, lead, summary, now)
    apply_score(lead, result, summary.engaged, context)
    session.add(lead)
    return result


@time_scoring("rescore_many")
def rescore_many(
    session: Session,
    lead_ids: Sequence[str],
    default_threshold: int,
    now: datetime | None = None,
) -> list[str]:
    """Rescore a batch of leads with one read of each table and one write.

    Returns the ids of the leads whose stage changed. This writes the database
    only: the caller tells their workflows, which update the LeadStage search
    attribute and hand new MQLs to sales.

    The same criteria and model as `rescore`, without the API models on the
    way: reasons go to the database as plain dicts, in one bulk UPDATE. The
    model's probability is stored without its per-lead explanation, which the
    lead's next single rescoring adds.
    """
    now = now or utcnow()
    context = load_context(session, default_threshold)
    leads = session.exec(select(Lead).where(col(Lead.id).in_(list(lead_ids)))).all()
    if not leads:
        return []
    activity = load_activity(session, [lead.id for lead in leads])
    summaries = [summarize(lead, activity[lead.id], now) for lead in leads]
    probabilities: list[float | None] = [None] * len(leads)
    if context.model is not None:
        rows = [feature_row(x, y) for x, y in zip(leads, summaries, strict=True)]
        probabilities = [round(float(p), 4) for p in context.model.predict_proba(rows)]
    weight = context.criteria.model.weight
    threshold = context.criteria.mql_threshold
    updates = []
    moved = []
    for lead, summary, probability in zip(leads, summaries, probabilities, strict=True):
        scored = context.rules.evaluate(summary.facts)
        final = blend(scored.score, probability, weight)
        stage = next_stage(lead.stage, final, summary.engaged, threshold)
        changed = (stage, final) != (lead.stage, lead.score)
        if stage != lead.stage:
            moved.append(lead.id)
        updates.append(
            {
                "id": lead.id,
                "score": final,
                "rules_score": scored.score,
                "stage": stage,
                "score_reasons": [
                    {"criterion": c, "dimension": d, "points": p, "fact": f}
                    for c, d, p, f in scored.reasons
                ],
                "scored_at": now,
                "updated_at": now if changed else lead.updated_at,
                "criteria_version": context.criteria_version,
                "model_version": (
                    context.model_version if probability is not None else None
                ),
                "conversion_probability": probability,
                "model_contributions": [],
            }
        )
    session.execute(sa.update(Lead), updates)
    # The leads loaded above are stale now; the next read must see the update.
    session.expire_all()
    return moved
