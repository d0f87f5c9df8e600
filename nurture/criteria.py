"""Scoring criteria as data: what earns points, how many, and how they fade.

Admins change the criteria through the API; each change is a new version.
`compile_rules` turns one version into plain functions, so scoring a lead
is a loop over closures, fast enough for batch rescoring of millions.
"""

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from nurture.schemas import StrictCamelModel
from nurture.wording import describe_age

Dimension = Literal["firmographic", "behavioral", "engagement"]
DIMENSIONS: tuple[Dimension, ...] = ("firmographic", "behavioral", "engagement")

# Facts a bands criterion can read, with the words that describe a value.
NumericFact = Literal[
    "employees",
    "revenue",
    "budget",
    "timeline_months",
    "pages_per_visit",
    "time_on_site_minutes",
    "days_since_last_activity",
    "activities_7d",
    "activities_30d",
    "channel_count",
    "response_hours",
]
CategoryFact = Literal["industry", "country", "growth_stage", "email_type"]
KeywordFact = Literal["job_title", "technologies"]
# Repeatable behaviors: each occurrence scores, fading with its age.
Counter = Literal[
    "website_visits",
    "pricing_page_views",
    "demo_page_views",
    "content_downloads",
    "webinar_registrations",
    "webinar_attendances",
    "form_submissions",
    "email_opens",
    "email_clicks",
    "sms_replies",
]
COUNTERS: tuple[str, ...] = Counter.__args__  # type: ignore[attr-defined]


class Band(StrictCamelModel):
    up_to: float | None = Field(
        description="Inclusive upper bound; null for everything above the last bound."
    )
    points: int = Field(ge=-100, le=100)


class _Base(StrictCamelModel):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    dimension: Dimension
    label: str = Field(min_length=1, max_length=120)
    enabled: bool = True


class BandsCriterion(_Base):
    """Points by the band a number falls in, e.g. company size or recency."""

    type: Literal["bands"] = "bands"
    fact: NumericFact
    bands: list[Band] = Field(min_length=1)
    describe: str = Field(
        "{label}: {value}",
        description=(
            "The reason's text; {value} and {label} are filled in, and {age} "
            'reads a number of days as an age such as "5 hours".'
        ),
    )
    describe_one: str | None = Field(
        None, description="The text when the value is exactly 1, for plurals."
    )

    @field_validator("describe", "describe_one")
    @classmethod
    def _known_placeholders(cls, text: str | None) -> str | None:
        if text is not None:
            try:
                text.format(value="1", label="label", age="1 day")
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"{text!r} has an unknown placeholder {error}: use {{value}}, "
                    "{label} or {age}"
                ) from None
        return text

    @field_validator("bands")
    @classmethod
    def _ascending(cls, bands: list[Band]) -> list[Band]:
        bounds = [band.up_to for band in bands]
        if None in bounds[:-1]:
            raise ValueError("only the last band may have upTo null")
        numbers = [bound for bound in bounds if bound is not None]
        if numbers != sorted(numbers) or len(set(numbers)) != len(numbers):
            raise ValueError("bands must be in ascending order of upTo, each once")
        return bands


class CategoryCriterion(_Base):
    """Points by a value such as the industry, or by the group it belongs to."""

    type: Literal["category"] = "category"
    fact: CategoryFact
    points: dict[str, Annotated[int, Field(ge=-100, le=100)]] = Field(
        description="Points by value or group name; matched without regard to case."
    )
    groups: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Values that share the points of a group, e.g. {"DACH": ["DE"]}.',
    )
    other_points: int | None = Field(
        None,
        ge=-100,
        le=100,
        description="Points for any other known value; null gives none.",
    )
    describe: dict[str, str] = Field(
        default_factory=dict,
        description="The reason's text by value; others read '<label> is <value>'.",
    )


class KeywordRule(StrictCamelModel):
    label: str = Field(min_length=1, max_length=80)
    keywords: list[str] = Field(min_length=1)
    points: int = Field(ge=-100, le=100)


class KeywordCriterion(_Base):
    """Points by words in a text or list, e.g. seniority from a job title."""

    type: Literal["keywords"] = "keywords"
    fact: KeywordFact
    rules: list[KeywordRule] = Field(min_length=1)
    mode: Literal["first", "sum"] = Field(
        "first", description="first: the first rule that matches; sum: every rule."
    )
    cap: int | None = Field(None, ge=0)
    other_points: int | None = Field(None, ge=-100, le=100)


class CountCriterion(_Base):
    """Points each time a behavior happens, fading with age, up to a cap."""

    type: Literal["count"] = "count"
    counter: Counter
    points_each: float = Field(ge=-100, le=100)
    cap: float = Field(ge=0, le=100)
    half_life_days: float | None = Field(
        None,
        ge=0,
        description="Days for its points to halve; 0 never fades; null: the default.",
    )
    singular: str = Field(min_length=1, max_length=60)
    plural: str = Field(min_length=1, max_length=60)


class ScaledCriterion(_Base):
    """Points in proportion to a 0-1 figure, such as an engagement score."""

    type: Literal["scaled"] = "scaled"
    fact: Literal["engagement_score"]
    weight: float = Field(ge=0, le=100)


Criterion = Annotated[
    BandsCriterion
    | CategoryCriterion
    | KeywordCriterion
    | CountCriterion
    | ScaledCriterion,
    Field(discriminator="type"),
]


class ModelSettings(StrictCamelModel):
    weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description=(
            "Share of the score that comes from the promoted model's probability; "
            "the rules give the rest."
        ),
    )
    exclude_features: list[str] = Field(
        default_factory=list,
        description="Features training never uses, e.g. those sales fill in later.",
    )


class ScoringCriteria(StrictCamelModel):
    """One complete version of the scoring configuration."""

    dimension_max: dict[Dimension, Annotated[int, Field(ge=0, le=100)]] = Field(
        description="Maximum points per dimension; together they must make 100."
    )
    mql_threshold: int = Field(ge=1, le=100)
    half_life_days: float = Field(
        ge=0, description="Default days for behavior points to halve; 0: no fading."
    )
    criteria: list[Criterion] = Field(min_length=1)
    model: ModelSettings = Field(default_factory=ModelSettings)

    @field_validator("dimension_max")
    @classmethod
    def _hundred_in_all(cls, value: dict[Dimension, int]) -> dict[Dimension, int]:
        if set(value) != set(DIMENSIONS):
            raise ValueError(
                "dimensionMax needs firmographic, behavioral and engagement"
            )
        if sum(value.values()) != 100:
            raise ValueError(
                "dimensionMax values must add up to 100, so a score runs 0 to 100; "
                f"they add up to {sum(value.values())}"
            )
        return value

    @field_validator("criteria")
    @classmethod
    def _unique_ids(cls, criteria: list[Criterion]) -> list[Criterion]:
        seen: set[str] = set()
        for criterion in criteria:
            if criterion.id in seen:
                raise ValueError(
                    f"criterion id {criterion.id!r} is used twice: give each its own"
                )
            seen.add(criterion.id)
        return criteria


@dataclass(slots=True)
class LeadFacts:
    """The facts the rules read about one lead, already reduced to plain values."""

    industry: str | None = None
    employees: float | None = None
    revenue: float | None = None
    budget: float | None = None
    timeline_months: float | None = None
    country: str | None = None
    job_title: str | None = None
    technologies: tuple[str, ...] = ()
    growth_stage: str | None = None
    email_type: str | None = None
    # Counter name -> [(age in days, how many)]: events, or imported totals.
    occurrences: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    pages_per_visit: float | None = None
    time_on_site_minutes: float | None = None
    days_since_last_activity: float | None = None
    activities_7d: int = 0
    activities_30d: int = 0
    channel_count: int = 0
    response_hours: float | None = None
    engagement_score: float | None = None


# (criterion id, dimension, points, fact)
Reason = tuple[str, str, float, str]
Rule = Callable[[LeadFacts], Reason | None]


@dataclass(slots=True)
class RuleScore:
    score: int
    dimensions: dict[str, int]
    reasons: list[Reason]


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.1f}"


def _age(days: float) -> str:
    return describe_age(timedelta(days=min(max(days, 0.0), 999_999)))


def _tidy(points: float) -> float:
    """Round to one decimal, and give a whole number as an int (4, not 4.0)."""
    rounded = round(points, 1)
    return int(rounded) if rounded == int(rounded) else rounded


def _bands_rule(criterion: BandsCriterion) -> Rule:
    bands = [(band.up_to, band.points) for band in criterion.bands]
    name, dimension, fact = criterion.id, criterion.dimension, criterion.fact

    def rule(facts: LeadFacts) -> Reason | None:
        value = getattr(facts, fact)
        if value is None:
            return None
        for bound, points in bands:
            if bound is None or value <= bound:
                template = criterion.describe
                if value == 1 and criterion.describe_one:
                    template = criterion.describe_one
                text = template.format(
                    value=_number(value),
                    label=criterion.label,
                    age=_age(value) if "{age}" in template else "",
                )
                return (name, dimension, points, text)
        return None

    return rule


def _category_rule(criterion: CategoryCriterion) -> Rule:
    points = {key.lower(): value for key, value in criterion.points.items()}
    group_of = {
        member.lower(): group
        for group, members in criterion.groups.items()
        for member in members
    }
    name, dimension, fact = criterion.id, criterion.dimension, criterion.fact
    label, other = criterion.label, criterion.other_points
    texts = {key.lower(): text for key, text in criterion.describe.items()}

    def rule(facts: LeadFacts) -> Reason | None:
        value = getattr(facts, fact)
        if not value or not value.strip():
            return None
        value = value.strip()
        key = value.lower()
        if key in points:
            return (name, dimension, points[key], texts.get(key, f"{label} is {value}"))
        group = group_of.get(key)
        if group is not None and group.lower() in points:
            text = f"{label} is {value} ({group})"
            return (name, dimension, points[group.lower()], text)
        if other is None:
            return None
        return (name, dimension, other, f"{label} is {value}")

    return rule


def _keyword_rule(criterion: KeywordCriterion) -> Rule:
    rules = [
        (rule.label, tuple(k.lower() for k in rule.keywords), rule.points)
        for rule in criterion.rules
    ]
    name, dimension, fact = criterion.id, criterion.dimension, criterion.fact
    first, cap, other = criterion.mode == "first", criterion.cap, criterion.other_points

    def rule(facts: LeadFacts) -> Reason | None:
        value = getattr(facts, fact)
        if not value:
            return None
        text = value.lower() if isinstance(value, str) else " | ".join(value).lower()
        words = set(_WORD_BREAKS.sub(" ", text).split())
        matched = []
        for rule_label, keywords, points in rules:
            if any(k in words or (" " in k and k in text) for k in keywords):
                matched.append((rule_label, points))
                if first:
                    break
        if not matched:
            if other is None:
                return None
            return (name, dimension, other, f"{criterion.label}: {_shown(value)}")
        total = sum(points for _label, points in matched)
        if cap is not None:
            total = max(-cap, min(total, cap))
        labels = ", ".join(rule_label for rule_label, _points in matched)
        return (name, dimension, total, f"{criterion.label}: {labels}")

    return rule


# Characters between the words of a job title: "CEO/Founder", "Sales & Ops".
_WORD_BREAKS = re.compile(r"[|,/&()+;:]")


def _shown(value: str | Sequence[str]) -> str:
    return value if isinstance(value, str) else ", ".join(value)


def _count_rule(criterion: CountCriterion, default_half_life: float) -> Rule:
    half_life = (
        criterion.half_life_days
        if criterion.half_life_days is not None
        else default_half_life
    )
    # Points of an occurrence `age` days old: points_each * 2 ** (-age / half_life).
    rate = math.log(2) / half_life if half_life > 0 else 0.0
    name, dimension, counter = criterion.id, criterion.dimension, criterion.counter
    each, cap = criterion.points_each, criterion.cap
    singular, plural = criterion.singular, criterion.plural

    def rule(facts: LeadFacts) -> Reason | None:
        found = facts.occurrences.get(counter)
        if not found:
            return None
        count = 0.0
        weight = 0.0
        for age, how_many in found:
            count += how_many
            weight += how_many * (math.exp(-rate * age) if rate else 1.0)
        if count <= 0:
            return None
        raw = each * weight
        points = max(-cap, min(raw, cap))
        noun = singular if count == 1 else plural
        text = f"{_number(count)} {noun}"
        if abs(raw) > cap:
            text += " (capped)"
        elif rate and weight < count * 0.95:
            text += f", worth {_number(round(weight, 1))} after fading"
        return (name, dimension, _tidy(points), text)

    return rule


def _scaled_rule(criterion: ScaledCriterion) -> Rule:
    name, dimension, weight = criterion.id, criterion.dimension, criterion.weight

    def rule(facts: LeadFacts) -> Reason | None:
        value = facts.engagement_score
        if value is None:
            return None
        points = _tidy(value * weight)
        return (name, dimension, points, f"{criterion.label} {value:.2f} of 1")

    return rule


@dataclass(slots=True)
class CompiledRules:
    """One version of the criteria, ready to score many leads."""

    rules: list[Rule]
    dimension_max: dict[str, int]
    mql_threshold: int

    def evaluate(self, facts: LeadFacts) -> RuleScore:
        """Score one lead: each dimension clamped, reasons by effect, largest first."""
        totals = dict.fromkeys(self.dimension_max, 0.0)
        reasons: list[Reason] = []
        for rule in self.rules:
            reason = rule(facts)
            if reason is not None and reason[2] != 0:
                reasons.append(reason)
                totals[reason[1]] += reason[2]
        dimensions = {
            # Half points round up, as people expect, not to the even number.
            dimension: math.floor(
                max(0.0, min(total, self.dimension_max[dimension])) + 0.5
            )
            for dimension, total in totals.items()
        }
        reasons.sort(key=lambda reason: -abs(reason[2]))
        return RuleScore(sum(dimensions.values()), dimensions, reasons)


def compile_rules(config: ScoringCriteria) -> CompiledRules:
    rules: list[Rule] = []
    for criterion in config.criteria:
        if not criterion.enabled:
            continue
        if isinstance(criterion, BandsCriterion):
            rules.append(_bands_rule(criterion))
        elif isinstance(criterion, CategoryCriterion):
            rules.append(_category_rule(criterion))
        elif isinstance(criterion, KeywordCriterion):
            rules.append(_keyword_rule(criterion))
        elif isinstance(criterion, CountCriterion):
            rules.append(_count_rule(criterion, config.half_life_days))
        else:
            rules.append(_scaled_rule(criterion))
    return CompiledRules(
        rules=rules,
        dimension_max={str(k): v for k, v in config.dimension_max.items()},
        mql_threshold=config.mql_threshold,
    )


@cache
def _default_criteria() -> dict[str, Any]:
    text = resources.files("nurture").joinpath("data/default_criteria.json")
    return dict(json.loads(text.read_text()))


def built_in_criteria(mql_threshold: int | None = None) -> ScoringCriteria:
    """Return the criteria in force before an admin stores a version of them."""
    data = _default_criteria()
    if mql_threshold is not None:
        data = data | {"mqlThreshold": mql_threshold}
    return ScoringCriteria.model_validate(data)


@cache
def built_in_rules() -> CompiledRules:
    return compile_rules(built_in_criteria())
