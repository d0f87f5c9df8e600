"""Rule-based lead scoring with reasons, shared by the API and the scoring activity.

A score is the sum of three capped dimensions: firmographic fit (50 points),
behavior (30) and engagement (20). Every point comes with the fact behind it.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, Field

from nurture.enrichment import midpoint, normalize_industry, parse_amounts
from nurture.schemas import CamelModel, StrictCamelModel
from nurture.wording import count_of, describe_age

Dimension = Literal["firmographic", "behavioral", "engagement"]
DIMENSION_MAX: dict[Dimension, int] = {
    "firmographic": 50,
    "behavioral": 30,
    "engagement": 20,
}

INDUSTRY_POINTS = {
    "Technology": 15,
    "Financial Services": 12,
    "Healthcare": 10,
    "Professional Services": 9,
    "Manufacturing": 8,
    "Retail": 6,
    "Education": 5,
    "Government": 4,
}
OTHER_INDUSTRY_POINTS = 3

# (upper bound inclusive, points); the first bound that fits wins.
EMPLOYEE_POINTS = ((10, 2), (50, 5), (200, 8), (1000, 10), (5000, 9), (None, 7))
REVENUE_POINTS = (
    (1_000_000, 2),
    (5_000_000, 5),
    (10_000_000, 7),
    (50_000_000, 9),
    (None, 10),
)
BUDGET_POINTS = ((5_000, 1), (10_000, 3), (50_000, 6), (None, 8))
TIMELINE_MONTH_POINTS = ((1, 7), (3, 6), (6, 4), (12, 2), (None, 0))
FREE_MAIL_PENALTY = -5
ROLE_ADDRESS_PENALTY = -3


@dataclass(frozen=True)
class CountRule:
    """Points for each time a behavior happened, up to a cap."""

    field: str
    singular: str
    plural: str
    points_each: int
    cap: int

    def describe(self, count: int) -> str:
        return count_of(count, self.singular, self.plural)


BEHAVIOR_RULES = (
    CountRule("website_visits", "website visit", "website visits", 1, 5),
    CountRule("pricing_page_views", "pricing page view", "pricing page views", 4, 8),
    CountRule("content_downloads", "content download", "content downloads", 4, 8),
    CountRule(
        "webinar_registrations", "webinar registration", "webinar registrations", 4, 8
    ),
    CountRule("form_submissions", "form submission", "form submissions", 3, 6),
    CountRule("email_opens", "email open", "email opens", 1, 4),
    CountRule("email_clicks", "email click", "email clicks", 3, 9),
    CountRule("sms_replies", "SMS reply", "SMS replies", 4, 8),
)
RECENCY_POINTS = (
    (timedelta(days=1), 8),
    (timedelta(days=7), 6),
    (timedelta(days=30), 3),
)
RECENCY_POINTS_LAST = (timedelta(days=90), 1)
ACTIVITY_POINTS_CAP = 6
ENGAGEMENT_SCORE_WEIGHT = 6


class Firmographic(StrictCamelModel):
    industry: str | None = None
    size: str | None = Field(None, description='Employees, e.g. "50-100" or "1000+".')
    revenue: str | None = Field(None, description='Annual revenue, e.g. "$5M-$10M".')
    budget: str | None = Field(None, description='Budget, e.g. "$10K-$50K".')
    timeline: str | None = Field(None, description='Buying timeline: "3-6 months".')
    free_mail: bool = False
    role_address: bool = False


class Behavioral(StrictCamelModel):
    website_visits: int = Field(0, ge=0)
    pricing_page_views: int = Field(0, ge=0)
    content_downloads: int = Field(0, ge=0)
    webinar_registrations: int = Field(0, ge=0)
    form_submissions: int = Field(0, ge=0)
    email_opens: int = Field(0, ge=0)
    email_clicks: int = Field(0, ge=0)
    sms_replies: int = Field(0, ge=0)


class Engagement(StrictCamelModel):
    last_activity: AwareDatetime | None = None
    total_activities: int = Field(
        0, ge=0, description="Activities in the last 30 days."
    )
    engagement_score: float | None = Field(None, ge=0, le=1)


class ScoringInput(StrictCamelModel):
    lead_id: str | None = None
    firmographic: Firmographic = Field(default_factory=Firmographic)
    behavioral: Behavioral = Field(default_factory=Behavioral)
    engagement: Engagement = Field(default_factory=Engagement)


class Reason(CamelModel):
    criterion: str
    dimension: Dimension
    points: int
    fact: str


class DimensionScore(CamelModel):
    score: int
    max: int


class ScoreResult(CamelModel):
    lead_id: str | None = None
    score: int
    dimensions: dict[Dimension, DimensionScore]
    reasons: list[Reason]
    method: Literal["rules"] = "rules"
    scored_at: datetime


def _banded(value: float, bands: tuple[tuple[int | None, int], ...]) -> int:
    for bound, points in bands:
        if bound is None or value <= bound:
            return points
    return 0


_NO_TIMELINE = re.compile(r"\b(no|not|none|unknown|undecided|unsure)\b")
_NOW = re.compile(r"\b(now|asap|immediate|immediately|this month)\b")
# Months per unit; a number with no unit counts as months.
_TIMELINE_UNITS = (("year", 12.0), ("week", 12 / 52), ("day", 12 / 365))


def _timeline_months(text: str) -> float | None:
    """Read a buying timeline such as "3-6 months", "2 weeks" or "ASAP" in months."""
    lowered = text.lower()
    if _NO_TIMELINE.search(lowered):
        return None
    if _NOW.search(lowered):
        return 0
    amounts = parse_amounts(lowered)
    if not amounts:
        return None
    months = sum(amounts[:2]) / len(amounts[:2])
    factor = next((f for unit, f in _TIMELINE_UNITS if unit in lowered), 1.0)
    return months * factor


def _firmographic(data: Firmographic) -> list[Reason]:
    reasons = []

    def add(criterion: str, points: int, fact: str) -> None:
        reasons.append(
            Reason(
                criterion=criterion, dimension="firmographic", points=points, fact=fact
            )
        )

    industry = normalize_industry(data.industry)
    if industry:
        points = INDUSTRY_POINTS.get(industry, OTHER_INDUSTRY_POINTS)
        add("industry", points, f"industry is {industry}")
    employees = midpoint(data.size)
    if employees is not None:
        add(
            "company_size",
            _banded(employees, EMPLOYEE_POINTS),
            f"about {employees} employees ({data.size})",
        )
    revenue = midpoint(data.revenue)
    if revenue is not None:
        add(
            "revenue",
            _banded(revenue, REVENUE_POINTS),
            f"annual revenue {data.revenue}",
        )
    budget = midpoint(data.budget)
    if budget is not None:
        add("budget", _banded(budget, BUDGET_POINTS), f"budget {data.budget}")
    months = _timeline_months(data.timeline) if data.timeline else None
    if months is not None:
        add(
            "timeline",
            _banded(months, TIMELINE_MONTH_POINTS),
            f"buying timeline {data.timeline}",
        )
    if data.free_mail:
        add("email_type", FREE_MAIL_PENALTY, "uses a free email address")
    elif data.role_address:
        add("email_type", ROLE_ADDRESS_PENALTY, "uses a shared role address")
    return reasons


def _behavioral(data: Behavioral) -> list[Reason]:
    reasons = []
    for rule in BEHAVIOR_RULES:
        count: int = getattr(data, rule.field)
        if count == 0:
            continue
        points = min(count * rule.points_each, rule.cap)
        capped = " (capped)" if count * rule.points_each > rule.cap else ""
        reasons.append(
            Reason(
                criterion=rule.field,
                dimension="behavioral",
                points=points,
                fact=f"{rule.describe(count)}{capped}",
            )
        )
    return reasons


def _engagement(data: Engagement, now: datetime) -> list[Reason]:
    reasons = []
    if data.last_activity is not None:
        age = max(now - data.last_activity, timedelta(0))
        bands = (*RECENCY_POINTS, RECENCY_POINTS_LAST)
        points = next((p for limit, p in bands if age <= limit), 0)
        reasons.append(
            Reason(
                criterion="recency",
                dimension="engagement",
                points=points,
                fact=f"last activity {describe_age(age)} ago",
            )
        )
    if data.total_activities:
        reasons.append(
            Reason(
                criterion="frequency",
                dimension="engagement",
                points=min(data.total_activities, ACTIVITY_POINTS_CAP),
                fact=(
                    f"{count_of(data.total_activities, 'activity', 'activities')} "
                    "in the last 30 days"
                ),
            )
        )
    if data.engagement_score is not None:
        reasons.append(
            Reason(
                criterion="engagement_score",
                dimension="engagement",
                points=int(data.engagement_score * ENGAGEMENT_SCORE_WEIGHT + 0.5),
                fact=f"engagement score {data.engagement_score:.2f} of 1",
            )
        )
    return reasons


_DIMENSION_RULES: dict[Dimension, Callable[[ScoringInput, datetime], list[Reason]]] = {
    "firmographic": lambda data, _now: _firmographic(data.firmographic),
    "behavioral": lambda data, _now: _behavioral(data.behavioral),
    "engagement": lambda data, now: _engagement(data.engagement, now),
}


def score(data: ScoringInput, now: datetime) -> ScoreResult:
    """Score a lead from 0 to 100, each dimension clamped to its maximum."""
    reasons: list[Reason] = []
    dimensions: dict[Dimension, DimensionScore] = {}
    for dimension, rules in _DIMENSION_RULES.items():
        found = rules(data, now)
        total = sum(reason.points for reason in found)
        dimensions[dimension] = DimensionScore(
            score=max(0, min(total, DIMENSION_MAX[dimension])),
            max=DIMENSION_MAX[dimension],
        )
        reasons.extend(found)
    reasons.sort(key=lambda reason: abs(reason.points), reverse=True)
    return ScoreResult(
        lead_id=data.lead_id,
        score=sum(d.score for d in dimensions.values()),
        dimensions=dimensions,
        reasons=[reason for reason in reasons if reason.points != 0],
        scored_at=now,
    )


STAGES = ("new", "engaged", "mql", "sql", "customer")


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
