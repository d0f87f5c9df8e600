"""Lead scores with reasons, shared by the API and the scoring activity.

A score runs from 0 to 100. The rules give points per criterion (see
`nurture.criteria`); when a model is promoted, its conversion probability
is blended in with the weight the criteria name.
"""

import math
import re
from datetime import datetime
from typing import Literal, cast

from pydantic import AwareDatetime, Field
from pydantic.alias_generators import to_camel

from nurture.criteria import (
    COUNTERS,
    CompiledRules,
    Dimension,
    LeadFacts,
    RuleScore,
    built_in_rules,
)
from nurture.enrichment import midpoint, normalize_industry
from nurture.learning import Contribution, FeatureRow, TrainedModel
from nurture.schemas import CamelModel, StrictCamelModel


class Firmographic(StrictCamelModel):
    industry: str | None = None
    size: str | None = Field(None, description='Employees, e.g. "50-100" or "1000+".')
    revenue: str | None = Field(None, description='Annual revenue, e.g. "$5M-$10M".')
    budget: str | None = Field(None, description='Budget, e.g. "$10K-$50K".')
    timeline: str | None = Field(None, description='Buying timeline: "3-6 months".')
    country: str | None = Field(None, description='ISO code or name, e.g. "DE".')
    job_title: str | None = None
    technologies: list[str] = Field(default_factory=list, max_length=100)
    growth_stage: str | None = Field(None, description='e.g. "Series B", "public".')
    email_type: Literal["company", "free", "role"] | None = None
    free_mail: bool = Field(False, description="Same as emailType free.")
    role_address: bool = Field(False, description="Same as emailType role.")


class Behavioral(StrictCamelModel):
    """Behavior totals, treated as happening at `asOf` (now when left out)."""

    website_visits: int = Field(0, ge=0)
    pricing_page_views: int = Field(0, ge=0)
    demo_page_views: int = Field(0, ge=0)
    content_downloads: int = Field(0, ge=0)
    webinar_registrations: int = Field(0, ge=0)
    webinar_attendances: int = Field(0, ge=0)
    form_submissions: int = Field(0, ge=0)
    email_opens: int = Field(0, ge=0)
    email_clicks: int = Field(0, ge=0)
    sms_replies: int = Field(0, ge=0)
    pages_per_visit: float | None = Field(None, ge=0)
    time_on_site_seconds: float | None = Field(None, ge=0)
    as_of: AwareDatetime | None = None


class Engagement(StrictCamelModel):
    last_activity: AwareDatetime | None = None
    activities_7d: int | None = Field(
        None, ge=0, alias="activities7d", description="Activities in the last 7 days."
    )
    total_activities: int = Field(
        0, ge=0, description="Activities in the last 30 days."
    )
    channels: list[str] = Field(
        default_factory=list, description='Channels the lead used: "web", "email"...'
    )
    response_hours: float | None = Field(
        None, ge=0, description="Typical hours from our message to the lead's response."
    )
    engagement_score: float | None = Field(None, ge=0, le=1)


class ScoringInput(StrictCamelModel):
    lead_id: str | None = None
    firmographic: Firmographic = Field(default_factory=Firmographic)
    behavioral: Behavioral = Field(default_factory=Behavioral)
    engagement: Engagement = Field(default_factory=Engagement)
    features: FeatureRow = Field(
        default_factory=dict,
        description="Extra facts for the model, named as in training, e.g. "
        '{"Lead Origin": "API"}.',
    )


class Reason(CamelModel):
    criterion: str
    dimension: Dimension
    points: int | float
    fact: str


class DimensionScore(CamelModel):
    score: int
    max: int


class ModelScore(CamelModel):
    version: int
    probability: float = Field(description="Conversion probability, 0 to 1.")
    confidence: float = Field(
        description="Probability that the predicted outcome is right, 0.5 to 1."
    )
    contributions: list[Contribution] = Field(
        description="Features that pushed the probability up or down for this lead."
    )
    unused_features: list[str] = Field(
        default_factory=list,
        description=(
            "Names in the request's features that the model does not know; its "
            "feature list is at GET /api/v1/scoring/models/{version}."
        ),
    )


class ScoreResult(CamelModel):
    lead_id: str | None = None
    score: int
    rules_score: int
    dimensions: dict[Dimension, DimensionScore]
    reasons: list[Reason]
    method: Literal["rules", "rules+model"] = "rules"
    model: ModelScore | None = None
    note: str | None = None
    criteria_version: int = 0
    scored_at: datetime


NO_MODEL_NOTE = (
    "rules only: no model is promoted; train one with POST /api/v1/scoring/models"
)

STAGES = ("new", "engaged", "mql", "sql", "customer")


def blend(rules_score: int, probability: float | None, weight: float) -> int:
    """Return the final score: the rules blended with the model's probability."""
    if probability is None:
        return rules_score
    # Half points round up, as in the rules' dimensions.
    return math.floor((1 - weight) * rules_score + weight * 100 * probability + 0.5)


def rule_result(
    rules: CompiledRules, scored: RuleScore
) -> tuple[dict[Dimension, DimensionScore], list[Reason]]:
    dimensions: dict[Dimension, DimensionScore] = {
        cast(Dimension, dimension): DimensionScore(
            score=value, max=rules.dimension_max[dimension]
        )
        for dimension, value in scored.dimensions.items()
    }
    reasons = [
        Reason(criterion=c, dimension=d, points=p, fact=f)  # type: ignore[arg-type]
        for c, d, p, f in scored.reasons
    ]
    return dimensions, reasons


_NO_TIMELINE = re.compile(r"\b(no|not|none|unknown|undecided|unsure)\b")
_NOW = re.compile(r"\b(now|asap|immediate|immediately|this month)\b")
# A number and the unit after it, if any: "6 months", "1 year", "3-6 months".
_AMOUNT = re.compile(r"(\d+(?:\.\d+)?)\s*(year|month|week|day)?")
_MONTHS_PER_UNIT = {"year": 12.0, "month": 1.0, "week": 12 / 52, "day": 12 / 365}


def timeline_months(text: str | None) -> float | None:
    """Read a buying timeline such as "3-6 months", "2 weeks" or "ASAP" in months.

    Each number takes the unit written after it, or else the next unit in the
    text ("3-6 months"); a number without any unit counts as months.
    """
    if not text:
        return None
    lowered = text.lower()
    if _NO_TIMELINE.search(lowered):
        return None
    if _NOW.search(lowered):
        return 0
    found = _AMOUNT.findall(lowered)[:2]
    if not found:
        return None
    months = []
    for index, (number, unit) in enumerate(found):
        later = next((u for _n, u in found[index:] if u), "month")
        months.append(float(number) * _MONTHS_PER_UNIT[unit or later])
    return sum(months) / len(months)


def email_type(
    explicit: str | None, free_mail: bool, role_address: bool, has_domain: bool
) -> str | None:
    if explicit:
        return explicit
    if free_mail:
        return "free"
    if role_address:
        return "role"
    return "company" if has_domain else None


def facts_from_input(data: ScoringInput, now: datetime) -> LeadFacts:
    """Turn the facts a caller gives into what the rules read."""
    firm, behavior, engaged = data.firmographic, data.behavioral, data.engagement
    age = (now - behavior.as_of).total_seconds() / 86400 if behavior.as_of else 0.0
    occurrences = {}
    for counter in COUNTERS:
        count = getattr(behavior, counter)
        if count:
            occurrences[counter] = [(max(age, 0.0), float(count))]
    days_since = None
    if engaged.last_activity is not None:
        days_since = max((now - engaged.last_activity).total_seconds(), 0) / 86400
    return LeadFacts(
        industry=normalize_industry(firm.industry),
        employees=midpoint(firm.size),
        revenue=midpoint(firm.revenue),
        budget=midpoint(firm.budget),
        timeline_months=timeline_months(firm.timeline),
        country=firm.country,
        job_title=firm.job_title,
        technologies=tuple(firm.technologies),
        growth_stage=firm.growth_stage,
        email_type=email_type(
            firm.email_type, firm.free_mail, firm.role_address, False
        ),
        occurrences=occurrences,
        pages_per_visit=behavior.pages_per_visit,
        time_on_site_minutes=(
            behavior.time_on_site_seconds / 60
            if behavior.time_on_site_seconds is not None
            else None
        ),
        days_since_last_activity=days_since,
        activities_7d=engaged.activities_7d or 0,
        activities_30d=engaged.total_activities,
        channel_count=len({channel.strip().lower() for channel in engaged.channels}),
        response_hours=engaged.response_hours,
        engagement_score=engaged.engagement_score,
    )


FEATURE_OF_COUNTER = {counter: "behavior." + to_camel(counter) for counter in COUNTERS}


def base_features(
    industry: str | None,
    country: str | None,
    size: str | None,
    revenue: str | None,
    job_title: str | None,
    growth_stage: str | None,
    kind_of_email: str | None,
    counts: dict[str, float],
    pages_per_visit: float | None,
    time_on_site_seconds: float | None,
) -> FeatureRow:
    """Name a lead's facts as the model's features, the same for every caller."""
    row: FeatureRow = {
        "company.industry": normalize_industry(industry),
        "company.country": country,
        "company.size": midpoint(size),
        "company.revenue": midpoint(revenue),
        "contact.jobTitle": job_title,
        "company.growthStage": growth_stage,
        "emailType": kind_of_email,
        "behavior.pagesPerVisit": pages_per_visit,
        "behavior.timeOnSiteSeconds": time_on_site_seconds,
    }
    for counter, name in FEATURE_OF_COUNTER.items():
        row[name] = counts.get(counter, 0.0)
    return row


def features_from_input(data: ScoringInput) -> FeatureRow:
    """Name the caller's facts as the model's features are named in training."""
    firm, behavior = data.firmographic, data.behavioral
    row = base_features(
        firm.industry,
        firm.country,
        firm.size,
        firm.revenue,
        firm.job_title,
        firm.growth_stage,
        email_type(firm.email_type, firm.free_mail, firm.role_address, False),
        {counter: float(getattr(behavior, counter)) for counter in COUNTERS},
        behavior.pages_per_visit,
        behavior.time_on_site_seconds,
    )
    return row | data.features


def blend_note(
    rules_score: int, detail: "ModelScore | None", weight: float, final: int
) -> str:
    """Explain how the score came about, for a reader of one score."""
    if detail is None:
        return NO_MODEL_NOTE
    return (
        f"score {final} = {1 - weight:.0%} of the rules' {rules_score} + "
        f"{weight:.0%} of the model's {detail.probability:.0%} conversion "
        f"probability (model v{detail.version})"
    )


def model_score(
    model: TrainedModel, version: int, row: FeatureRow, top: int = 5
) -> ModelScore:
    prediction = model.predict(row, top=top)
    return ModelScore(
        version=version,
        probability=round(prediction.probability, 4),
        confidence=round(prediction.confidence, 4),
        contributions=prediction.contributions,
    )


def score(
    data: ScoringInput,
    now: datetime,
    rules: CompiledRules | None = None,
    criteria_version: int = 0,
    model: TrainedModel | None = None,
    model_version: int | None = None,
    model_weight: float = 0.5,
) -> ScoreResult:
    """Score a lead from the facts a caller gives, with every reason."""
    rules = rules or built_in_rules()
    scored = rules.evaluate(facts_from_input(data, now))
    dimensions, reasons = rule_result(rules, scored)
    detail = None
    if model is not None and model_version is not None:
        detail = model_score(model, model_version, features_from_input(data))
        known = {feature.name for feature in model.features}
        detail.unused_features = sorted(set(data.features) - known)
    final = blend(scored.score, detail.probability if detail else None, model_weight)
    return ScoreResult(
        lead_id=data.lead_id,
        score=final,
        rules_score=scored.score,
        dimensions=dimensions,
        reasons=reasons,
        method="rules+model" if detail else "rules",
        model=detail,
        note=blend_note(scored.score, detail, model_weight, final),
        criteria_version=criteria_version,
        scored_at=now,
    )


def next_stage(
    current: str, score_value: int, engaged: bool, mql_threshold: int
) -> str:
    """Move a lead's lifecycle stage forward, never back."""
    candidate = "new"
    if engaged:
        candidate = "engaged"
    if score_value >= mql_threshold:
        candidate = "mql"
    if current in STAGES and STAGES.index(current) >= STAGES.index(candidate):
        return current
    return candidate
