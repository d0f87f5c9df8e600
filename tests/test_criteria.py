"""Unit tests of the scoring criteria engine and the scoring input it reads.

The tests are plain functions with no database and no Temporal. The engine
is `nurture.criteria` with its built-in configuration
`nurture/data/default_criteria.json`, and the input side is `nurture.scoring`.
"""

import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import pytest
from pydantic import ValidationError

from nurture.criteria import (
    COUNTERS,
    DIMENSIONS,
    BandsCriterion,
    CategoryCriterion,
    CountCriterion,
    KeywordCriterion,
    LeadFacts,
    RuleScore,
    ScaledCriterion,
    ScoringCriteria,
    built_in_criteria,
    built_in_rules,
    compile_rules,
)
from nurture.scoring import (
    NO_MODEL_NOTE,
    ScoringInput,
    blend,
    facts_from_input,
    score,
    timeline_months,
)

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
EVEN = {"firmographic": 34, "behavioral": 33, "engagement": 33}


def default_json() -> dict[str, Any]:
    """Return a fresh copy of the built-in criteria exactly as the JSON file has it."""
    path = resources.files("nurture").joinpath("data/default_criteria.json")
    return dict(json.loads(path.read_text()))


def criteria_of(
    *criteria: dict[str, Any],
    dimension_max: dict[str, int] | None = None,
    half_life_days: float = 30,
) -> ScoringCriteria:
    """Build a small configuration around the given criteria (camelCase dicts)."""
    return ScoringCriteria.model_validate(
        {
            "dimensionMax": dimension_max or EVEN,
            "mqlThreshold": 70,
            "halfLifeDays": half_life_days,
            "criteria": list(criteria),
        }
    )


def evaluate_one(criterion: dict[str, Any], **facts: Any) -> RuleScore:
    """Score `facts` against a configuration holding one criterion."""
    return compile_rules(criteria_of(criterion)).evaluate(LeadFacts(**facts))


def reasons(**facts: Any) -> dict[str, tuple[float, str]]:
    """Return the built-in rules' reasons as {criterion id: (points, text)}."""
    scored = built_in_rules().evaluate(LeadFacts(**facts))
    return {name: (points, text) for name, _dim, points, text in scored.reasons}


def count_criterion(**overrides: Any) -> dict[str, Any]:
    """Return a count criterion: 4 points a demo page view, capped at 100."""
    return {
        "id": "demo",
        "dimension": "behavioral",
        "type": "count",
        "counter": "demo_page_views",
        "label": "demo page views",
        "pointsEach": 4,
        "cap": 100,
        "singular": "demo page view",
        "plural": "demo page views",
    } | overrides


def only_reason(scored: RuleScore) -> tuple[float, str]:
    assert len(scored.reasons) == 1, scored.reasons
    _name, _dimension, points, text = scored.reasons[0]
    return points, text


# --- The built-in criteria -------------------------------------------------


def test_default_criteria_enabled_count() -> None:
    config = built_in_criteria()
    enabled = [c for c in config.criteria if c.enabled]
    assert len(enabled) >= 20
    assert {c.dimension for c in enabled} == set(DIMENSIONS)
    assert sum(config.dimension_max.values()) == 100
    assert config.dimension_max == {
        "firmographic": 50,
        "behavioral": 30,
        "engagement": 20,
    }
    assert config.half_life_days == 30
    assert config.mql_threshold == 70


def test_built_in_criteria_mql_threshold() -> None:
    assert built_in_criteria(mql_threshold=55).mql_threshold == 55
    # The override does not change the cached file contents.
    assert built_in_criteria().mql_threshold == 70


def _source(criterion: Any) -> str:
    if isinstance(criterion, CountCriterion):
        return criterion.counter
    return str(criterion.fact)


EXPECTED_DEFAULTS = {
    # id: (dimension, type, fact or counter)
    "industry": ("firmographic", CategoryCriterion, "industry"),
    "company_size": ("firmographic", BandsCriterion, "employees"),
    "revenue": ("firmographic", BandsCriterion, "revenue"),
    "region": ("firmographic", CategoryCriterion, "country"),
    "seniority": ("firmographic", KeywordCriterion, "job_title"),
    "job_function": ("firmographic", KeywordCriterion, "job_title"),
    "technology_stack": ("firmographic", KeywordCriterion, "technologies"),
    "growth_stage": ("firmographic", CategoryCriterion, "growth_stage"),
    "email_type": ("firmographic", CategoryCriterion, "email_type"),
    "website_visits": ("behavioral", CountCriterion, "website_visits"),
    "pages_per_visit": ("behavioral", BandsCriterion, "pages_per_visit"),
    "time_on_site": ("behavioral", BandsCriterion, "time_on_site_minutes"),
    "pricing_page_views": ("behavioral", CountCriterion, "pricing_page_views"),
    "demo_page_views": ("behavioral", CountCriterion, "demo_page_views"),
    "content_downloads": ("behavioral", CountCriterion, "content_downloads"),
    "webinar_registrations": (
        "behavioral",
        CountCriterion,
        "webinar_registrations",
    ),
    "webinar_attendances": ("behavioral", CountCriterion, "webinar_attendances"),
    "form_submissions": ("behavioral", CountCriterion, "form_submissions"),
    "email_opens": ("behavioral", CountCriterion, "email_opens"),
    "email_clicks": ("behavioral", CountCriterion, "email_clicks"),
    "sms_replies": ("behavioral", CountCriterion, "sms_replies"),
    "recency": ("engagement", BandsCriterion, "days_since_last_activity"),
    "frequency_7d": ("engagement", BandsCriterion, "activities_7d"),
    "frequency": ("engagement", BandsCriterion, "activities_30d"),
    "channel_mix": ("engagement", BandsCriterion, "channel_count"),
    "response_time": ("engagement", BandsCriterion, "response_hours"),
    "engagement_score": ("engagement", ScaledCriterion, "engagement_score"),
}


@pytest.mark.parametrize("criterion_id", sorted(EXPECTED_DEFAULTS))
def test_default_criteria_cover_each_signal(criterion_id: str) -> None:
    dimension, kind, source = EXPECTED_DEFAULTS[criterion_id]
    by_id = {c.id: c for c in built_in_criteria().criteria}
    criterion = by_id[criterion_id]
    assert criterion.enabled
    assert criterion.dimension == dimension
    assert isinstance(criterion, kind)
    assert _source(criterion) == source


def test_default_criteria_score_every_counter() -> None:
    counted = {
        c.counter for c in built_in_criteria().criteria if isinstance(c, CountCriterion)
    }
    assert counted == set(COUNTERS)


# --- Count criteria: repeatable behaviors that fade ------------------------


@pytest.mark.parametrize(
    ("age_days", "points"),
    [(0, 4), (10, 2), (20, 1), (30, 0.5)],
)
def test_count_points_halve_every_half_life(age_days: float, points: float) -> None:
    criterion = count_criterion(halfLifeDays=10)
    scored = evaluate_one(criterion, occurrences={"demo_page_views": [(age_days, 1)]})
    assert only_reason(scored)[0] == points


def test_count_half_life_zero_never_fades() -> None:
    criterion = count_criterion(halfLifeDays=0)
    facts = {"demo_page_views": [(1000, 1)]}
    assert only_reason(evaluate_one(criterion, occurrences=facts)) == (
        4,
        "1 demo page view",
    )


def test_count_half_life_override() -> None:
    facts = LeadFacts(occurrences={"demo_page_views": [(30, 1)]})
    inherits = compile_rules(criteria_of(count_criterion(), half_life_days=30))
    overrides = compile_rules(
        criteria_of(count_criterion(halfLifeDays=15), half_life_days=30)
    )
    never = compile_rules(criteria_of(count_criterion(), half_life_days=0))
    assert only_reason(inherits.evaluate(facts))[0] == 2
    assert only_reason(overrides.evaluate(facts))[0] == 1
    assert only_reason(never.evaluate(facts))[0] == 4


def test_default_form_submissions_never_fade() -> None:
    old = {"form_submissions": [(300, 1)], "website_visits": [(30, 2)]}
    found = reasons(occurrences=old)
    assert found["form_submissions"] == (3, "1 form submission")
    assert found["website_visits"] == (1, "2 website visits, worth 1 after fading")


def test_count_text_after_fading() -> None:
    found = reasons(occurrences={"demo_page_views": [(30, 1)]})
    assert found["demo_page_views"] == (2.5, "1 demo page view, worth 0.5 after fading")


def test_count_adds_occurrences_of_different_ages() -> None:
    found = reasons(occurrences={"website_visits": [(0, 1), (30, 1), (60, 2)]})
    # 1 + 0.5 + 2 * 0.25 = 2 of 4 visits.
    assert found["website_visits"] == (2, "4 website visits, worth 2 after fading")


def test_count_small_fade_not_mentioned() -> None:
    # One day under a 30-day half-life keeps 97.7% of the points.
    found = reasons(occurrences={"website_visits": [(1, 3)]})
    assert found["website_visits"] == (2.9, "3 website visits")


@pytest.mark.parametrize(
    ("visits", "points", "text"),
    [
        (1, 1, "1 website visit"),
        (2, 2, "2 website visits"),
        (5, 5, "5 website visits"),
        (6, 5, "6 website visits (capped)"),
        (40, 5, "40 website visits (capped)"),
    ],
)
def test_count_scores_up_to_cap(visits: int, points: int, text: str) -> None:
    found = reasons(occurrences={"website_visits": [(0, visits)]})
    assert found["website_visits"] == (points, text)


def test_count_single_events_capped() -> None:
    events = [(0.0, 1.0)] * 7
    found = reasons(occurrences={"pricing_page_views": events})
    assert found["pricing_page_views"] == (8, "7 pricing page views (capped)")


def test_count_cap_text_over_fading() -> None:
    # 20 visits 30 days old are worth 10, still above the cap of 5.
    found = reasons(occurrences={"website_visits": [(30, 20)]})
    assert found["website_visits"] == (5, "20 website visits (capped)")


def test_negative_points_each_are_clamped_at_minus_cap() -> None:
    criterion = count_criterion(pointsEach=-3, cap=5, halfLifeDays=0)
    scored = evaluate_one(criterion, occurrences={"demo_page_views": [(0, 4)]})
    assert only_reason(scored) == (-5, "4 demo page views (capped)")
    assert scored.dimensions["behavioral"] == 0


@pytest.mark.parametrize(
    ("counter", "count", "text"),
    [
        ("sms_replies", 1, "1 SMS reply"),
        ("sms_replies", 2, "2 SMS replies"),
        ("webinar_attendances", 1, "1 webinar attended"),
        ("webinar_attendances", 2, "2 webinars attended"),
    ],
)
def test_count_text_uses_singular_and_plural(
    counter: str, count: int, text: str
) -> None:
    assert reasons(occurrences={counter: [(0, count)]})[counter][1] == text


@pytest.mark.parametrize("occurrences", [{}, {"website_visits": []}])
def test_count_without_occurrences_gives_no_reason(
    occurrences: dict[str, list[tuple[float, float]]],
) -> None:
    assert "website_visits" not in reasons(occurrences=occurrences)


def test_count_of_zero_gives_no_reason() -> None:
    assert "website_visits" not in reasons(occurrences={"website_visits": [(0, 0)]})


# --- Bands -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("employees", "points"),
    [
        (1, 2),
        (10, 2),
        (10.5, 5),
        (50, 5),
        (51, 8),
        (200, 8),
        (1000, 10),
        (5000, 9),
        (5001, 7),
        (1_000_000, 7),
    ],
)
def test_bands_inclusive_bounds(employees: float, points: int) -> None:
    assert reasons(employees=employees)["company_size"][0] == points


def test_bands_above_last_bound() -> None:
    # The timeline bands stop at 12 months, with no upTo null band.
    assert reasons(timeline_months=12)["timeline"] == (
        2,
        "buying within about 12 months",
    )
    assert "timeline" not in reasons(timeline_months=13)


def test_bands_without_a_value_give_no_reason() -> None:
    assert "company_size" not in reasons(employees=None)


@pytest.mark.parametrize(
    ("facts", "criterion_id", "text"),
    [
        ({"employees": 75}, "company_size", "about 75 employees"),
        ({"employees": 12_500}, "company_size", "about 12,500 employees"),
        ({"revenue": 7_500_000}, "revenue", "annual revenue about $7,500,000"),
        ({"pages_per_visit": 2.5}, "pages_per_visit", "2.5 pages per visit"),
        ({"time_on_site_minutes": 4.25}, "time_on_site", "4.2 minutes on the website"),
        ({"activities_7d": 2}, "frequency_7d", "2 activities in the last 7 days"),
        ({"activities_30d": 9}, "frequency", "9 activities in the last 30 days"),
        ({"channel_count": 3}, "channel_mix", "active on 3 channels"),
    ],
)
def test_bands_describe_fills_in_the_value(
    facts: dict[str, Any], criterion_id: str, text: str
) -> None:
    assert reasons(**facts)[criterion_id][1] == text


@pytest.mark.parametrize(
    ("hours", "points", "text"),
    [
        (0.5, 5, "answers our messages in about 0.5 hours"),
        (1, 5, "answers our messages in about 1 hour"),
        (1.2, 3, "answers our messages in about 1.2 hours"),
        (2, 3, "answers our messages in about 2 hours"),
        (72, 1, "answers our messages in about 72 hours"),
    ],
)
def test_bands_describe_one_only_for_exactly_one(
    hours: float, points: int, text: str
) -> None:
    assert reasons(response_hours=hours)["response_time"] == (points, text)


def test_bands_describe_one_for_activity_counts() -> None:
    found = reasons(activities_7d=1, activities_30d=1)
    assert found["frequency_7d"] == (2, "1 activity in the last 7 days")
    assert found["frequency"] == (1, "1 activity in the last 30 days")


@pytest.mark.parametrize(
    ("days", "points", "text"),
    [
        (0, 8, "last activity under a minute ago"),
        (10 / 86400, 8, "last activity under a minute ago"),
        (5 / 1440, 8, "last activity 5 minutes ago"),
        (5 / 24, 8, "last activity 5 hours ago"),
        (1, 8, "last activity 24 hours ago"),
        (3, 6, "last activity 3 days ago"),
        (30, 3, "last activity 30 days ago"),
        (45, 1, "last activity 45 days ago"),
    ],
)
def test_bands_age_reads_days_as_an_age(days: float, points: int, text: str) -> None:
    assert reasons(days_since_last_activity=days)["recency"] == (points, text)


def test_bands_default_text_is_label_and_value() -> None:
    criterion = {
        "id": "budget",
        "dimension": "firmographic",
        "type": "bands",
        "fact": "budget",
        "label": "budget",
        "bands": [{"upTo": 1000, "points": 1}, {"upTo": None, "points": 5}],
    }
    assert only_reason(evaluate_one(criterion, budget=25_000)) == (
        5,
        "budget: 25,000",
    )


def test_bands_zero_points_give_no_reason() -> None:
    found = reasons(pages_per_visit=1.5, activities_7d=0, channel_count=1)
    assert not {"pages_per_visit", "frequency_7d", "channel_mix"} & set(found)


def test_bands_score_a_billion_dollar_revenue() -> None:
    assert reasons(revenue=1_500_000_000)["revenue"] == (
        10,
        "annual revenue about $1,500,000,000",
    )


# --- Category ----------------------------------------------------------------


@pytest.mark.parametrize("industry", ["Technology", "technology", "TECHNOLOGY"])
def test_category_matches_without_regard_to_case(industry: str) -> None:
    assert reasons(industry=industry)["industry"] == (15, f"industry is {industry}")


@pytest.mark.parametrize(
    ("country", "points", "text"),
    [
        ("DE", 4, "country is DE (Europe)"),
        ("de", 4, "country is de (Europe)"),
        ("Germany", 4, "country is Germany (Europe)"),
        ("US", 5, "country is US (North America)"),
        ("Canada", 5, "country is Canada (North America)"),
        ("JP", 3, "country is JP (Asia Pacific)"),
        ("Europe", 4, "country is Europe"),
        ("Brazil", 1, "country is Brazil"),
    ],
)
def test_category_groups(country: str, points: int, text: str) -> None:
    assert reasons(country=country)["region"] == (points, text)


def test_category_other_points_for_unknown_values() -> None:
    assert reasons(industry="Agriculture")["industry"] == (3, "industry is Agriculture")
    assert reasons(growth_stage="pre-seed")["growth_stage"] == (
        1,
        "growth stage is pre-seed",
    )


def test_category_growth_stage_case() -> None:
    assert reasons(growth_stage="Series B")["growth_stage"] == (
        6,
        "growth stage is Series B",
    )


def test_category_without_other_points_gives_no_reason() -> None:
    assert "email_type" not in reasons(email_type="unknown")


@pytest.mark.parametrize("value", [None, ""])
def test_category_without_a_value_gives_no_reason(value: str | None) -> None:
    assert "industry" not in reasons(industry=value)


@pytest.mark.parametrize(
    ("kind", "points", "text"),
    [
        ("free", -5, "uses a free email address"),
        ("role", -3, "uses a shared role address"),
        ("company", 3, "uses a company email address"),
        ("Company", 3, "uses a company email address"),
    ],
)
def test_category_describe_texts_per_value(kind: str, points: int, text: str) -> None:
    assert reasons(email_type=kind)["email_type"] == (points, text)


def test_category_group_without_points() -> None:
    criterion = {
        "id": "region",
        "dimension": "firmographic",
        "type": "category",
        "fact": "country",
        "label": "country",
        "points": {"DACH": 6},
        "groups": {"DACH": ["DE", "AT"], "Nordics": ["SE"]},
        "otherPoints": 2,
    }
    assert only_reason(evaluate_one(criterion, country="at")) == (
        6,
        "country is at (DACH)",
    )
    assert only_reason(evaluate_one(criterion, country="SE")) == (2, "country is SE")


# --- Keywords ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "points", "text"),
    [
        ("Chief Marketing Officer", 10, "seniority: executive"),
        ("CEO", 10, "seniority: executive"),
        ("Co-Founder & CEO", 10, "seniority: executive"),
        ("VP of Sales", 9, "seniority: vice president"),
        ("SVP, Engineering", 9, "seniority: vice president"),
        ("Head of Growth", 7, "seniority: director"),
        ("Sr. Director, Marketing", 7, "seniority: director"),
        ("Marketing Manager", 4, "seniority: manager"),
        ("Marketing intern", -3, "seniority: student or intern"),
        ("Analyst", 1, "seniority: Analyst"),
        ("Internal Auditor", 1, "seniority: Internal Auditor"),
    ],
)
def test_seniority_from_real_job_titles(title: str, points: int, text: str) -> None:
    assert reasons(job_title=title)["seniority"] == (points, text)


@pytest.mark.parametrize(
    ("title", "points", "text"),
    [
        ("Chief Marketing Officer", 4, "job function: marketing"),
        ("VP of Sales", 3, "job function: sales"),
        ("Business Development Manager", 3, "job function: sales"),
        ("Head of IT", 3, "job function: engineering or IT"),
        ("Director of Operations", 2, "job function: operations"),
    ],
)
def test_job_function_from_real_job_titles(title: str, points: int, text: str) -> None:
    assert reasons(job_title=title)["job_function"] == (points, text)


def test_job_function_without_a_match_gives_no_reason() -> None:
    assert "job_function" not in reasons(job_title="Analyst")


def test_first_mode_stops_at_the_first_matching_rule() -> None:
    assert reasons(job_title="CEO and Head of Sales")["seniority"] == (
        10,
        "seniority: executive",
    )


def test_keyword_multi_word_phrase() -> None:
    criterion = {
        "id": "vp",
        "dimension": "firmographic",
        "type": "keywords",
        "fact": "job_title",
        "label": "seniority",
        "rules": [
            {"label": "vice president", "keywords": ["vice president"], "points": 9}
        ],
    }
    assert only_reason(evaluate_one(criterion, job_title="Vice President, Sales")) == (
        9,
        "seniority: vice president",
    )
    assert evaluate_one(criterion, job_title="President").reasons == []
    assert evaluate_one(criterion, job_title="Vice Chair").reasons == []


def test_default_seniority_of_a_vice_president_title() -> None:
    assert reasons(job_title="Vice President of Marketing")["seniority"] == (
        9,
        "seniority: vice president",
    )


def test_seniority_of_a_title_joined_by_a_slash() -> None:
    assert reasons(job_title="CEO/Founder")["seniority"] == (
        10,
        "seniority: executive",
    )


@pytest.mark.parametrize(
    ("technologies", "points", "text"),
    [
        (
            ("HubSpot", "Salesforce", "Marketo"),
            6,
            "technology stack: Salesforce, HubSpot, Marketo",
        ),
        (("HubSpot",), 3, "technology stack: HubSpot"),
        (("hubspot", "Segment"), 5, "technology stack: HubSpot, Segment"),
        (("Amazon Web Services",), 1, "technology stack: AWS"),
        (("Salesforce Marketing Cloud",), 3, "technology stack: Salesforce"),
    ],
)
def test_technologies_sum_capped(
    technologies: tuple[str, ...], points: int, text: str
) -> None:
    assert reasons(technologies=technologies)["technology_stack"] == (points, text)


@pytest.mark.parametrize("technologies", [(), ("Jira", "Slack")])
def test_technologies_without_a_match_give_no_reason(
    technologies: tuple[str, ...],
) -> None:
    assert "technology_stack" not in reasons(technologies=technologies)


def test_keyword_sum_cap_negative() -> None:
    criterion = {
        "id": "red_flags",
        "dimension": "firmographic",
        "type": "keywords",
        "fact": "technologies",
        "label": "stack",
        "mode": "sum",
        "cap": 4,
        "rules": [
            {"label": "rival A", "keywords": ["rivala"], "points": -3},
            {"label": "rival B", "keywords": ["rivalb"], "points": -3},
        ],
        "otherPoints": 2,
    }
    scored = evaluate_one(criterion, technologies=("RivalA", "RivalB"))
    assert only_reason(scored) == (-4, "stack: rival A, rival B")
    other = evaluate_one(criterion, technologies=("Jira", "Slack"))
    assert only_reason(other) == (2, "stack: Jira, Slack")


# --- Scaled ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "points", "kind"),
    [(0.75, 4.5, float), (0.5, 3, int), (1.0, 6, int), (0.123, 0.7, float)],
)
def test_scaled_points_are_value_times_weight(
    value: float, points: float, kind: type
) -> None:
    found_points, text = reasons(engagement_score=value)["engagement_score"]
    assert found_points == points
    assert type(found_points) is kind
    assert text == f"engagement score {value:.2f} of 1"


def test_scaled_zero_and_missing_give_no_reason() -> None:
    assert "engagement_score" not in reasons(engagement_score=0.0)
    assert "engagement_score" not in reasons(engagement_score=None)


# --- CompiledRules.evaluate --------------------------------------------------

RICH_LEAD = LeadFacts(
    industry="Technology",
    employees=300,
    revenue=20_000_000,
    country="DE",
    job_title="VP of Marketing",
    technologies=("HubSpot", "Snowflake"),
    growth_stage="series b",
    email_type="free",
    occurrences={"pricing_page_views": [(2, 1)], "email_clicks": [(0, 2)]},
    pages_per_visit=4,
    days_since_last_activity=2,
    activities_7d=3,
    engagement_score=0.75,
)


def test_evaluate_total_sums_dimensions() -> None:
    scored = built_in_rules().evaluate(RICH_LEAD)
    assert set(scored.dimensions) == set(DIMENSIONS)
    assert scored.score == sum(scored.dimensions.values())
    # 15 + 10 + 9 + 4 + 9 + 4 + 5 + 6 - 5 = 57, over the firmographic max of 50.
    assert scored.dimensions == {
        "firmographic": 50,
        "behavioral": 12,
        "engagement": 14,
    }
    assert scored.score == 76
    assert all(type(value) is int for value in scored.dimensions.values())


def test_evaluate_sorts_reasons_by_size_of_effect() -> None:
    scored = built_in_rules().evaluate(RICH_LEAD)
    sizes = [abs(points) for _name, _dim, points, _text in scored.reasons]
    assert sizes == sorted(sizes, reverse=True)
    names = [name for name, *_rest in scored.reasons]
    # -5 for a free address comes before the +4 reasons.
    assert names.index("email_type") < names.index("job_function")
    assert names[0] == "industry"


def test_evaluate_omits_zero_point_reasons() -> None:
    scored = built_in_rules().evaluate(
        LeadFacts(pages_per_visit=1, activities_7d=0, activities_30d=0, channel_count=1)
    )
    assert scored.reasons == []
    assert scored.score == 0


def test_evaluate_an_empty_lead() -> None:
    scored = built_in_rules().evaluate(LeadFacts())
    assert scored.score == 0
    assert scored.reasons == []
    assert scored.dimensions == dict.fromkeys(DIMENSIONS, 0)


def test_evaluate_clamps_at_max() -> None:
    criterion = {
        "id": "industry",
        "dimension": "firmographic",
        "type": "category",
        "fact": "industry",
        "label": "industry",
        "points": {"Technology": 50},
    }
    config = criteria_of(
        criterion,
        dimension_max={"firmographic": 10, "behavioral": 45, "engagement": 45},
    )
    scored = compile_rules(config).evaluate(LeadFacts(industry="Technology"))
    assert scored.dimensions["firmographic"] == 10
    assert scored.score == 10
    assert scored.reasons[0][2] == 50


def test_evaluate_clamps_at_zero() -> None:
    scored = built_in_rules().evaluate(
        LeadFacts(email_type="free", engagement_score=0.5)
    )
    assert scored.dimensions == {"firmographic": 0, "behavioral": 0, "engagement": 3}
    assert scored.score == 3
    assert scored.reasons[0] == (
        "email_type",
        "firmographic",
        -5,
        "uses a free email address",
    )


def test_evaluate_skips_disabled_criteria() -> None:
    data = default_json()
    for criterion in data["criteria"]:
        if criterion["id"] in {"industry", "demo_page_views"}:
            criterion["enabled"] = False
    rules = compile_rules(ScoringCriteria.model_validate(data))
    assert len(rules.rules) == len(built_in_rules().rules) - 2
    facts = LeadFacts(
        industry="Technology",
        employees=75,
        occurrences={"demo_page_views": [(0, 1)]},
    )
    scored = rules.evaluate(facts)
    assert {name for name, *_rest in scored.reasons} == {"company_size"}
    assert scored.score == 8
    assert built_in_rules().evaluate(facts).score == 8 + 15 + 5


@pytest.mark.parametrize(
    ("occurrences", "behavioral"),
    [
        # 10 + 8 + 0.5 = 18.5, and a half rounds up, not to the even 18.
        (
            {
                "demo_page_views": [(0, 2)],
                "pricing_page_views": [(0, 2)],
                "website_visits": [(30, 1)],
            },
            19,
        ),
        # 2.5 rounds to 3, not to the even 2.
        ({"demo_page_views": [(30, 1)]}, 3),
        # 0.5 rounds to 1.
        ({"website_visits": [(30, 1)]}, 1),
        # 1.4 rounds down.
        ({"website_visits": [(0, 1), (60, 1), (90, 1), (300, 1)]}, 1),
    ],
)
def test_evaluate_rounds_half_points_up(
    occurrences: dict[str, list[tuple[float, float]]], behavioral: int
) -> None:
    scored = built_in_rules().evaluate(LeadFacts(occurrences=occurrences))
    assert scored.dimensions["behavioral"] == behavioral


def test_compile_rules_keeps_threshold_and_maxima() -> None:
    rules = compile_rules(built_in_criteria(mql_threshold=60))
    assert rules.mql_threshold == 60
    assert rules.dimension_max == {
        "firmographic": 50,
        "behavioral": 30,
        "engagement": 20,
    }


# --- Validation of ScoringCriteria -------------------------------------------


def _set_bands(bands: list[dict[str, Any]]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["criteria"][1]["bands"] = bands

    return change


def _set_on(index: int, **values: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["criteria"][index].update(values)

    return change


INVALID_CHANGES: list[tuple[str, Callable[[dict[str, Any]], None], list[str]]] = [
    (
        "dimension max not adding to 100",
        lambda d: d["dimensionMax"].update(behavioral=20),
        ["must add up to 100", "they add up to 90"],
    ),
    (
        "a dimension missing",
        lambda d: d["dimensionMax"].pop("engagement"),
        ["dimensionMax needs firmographic, behavioral and engagement"],
    ),
    (
        "an unknown dimension in dimensionMax",
        lambda d: d["dimensionMax"].update(intent=0),
        ["dimensionMax.intent", "Input should be 'firmographic'"],
    ),
    (
        "a criterion id used twice",
        lambda d: d["criteria"].append(copy.deepcopy(d["criteria"][0])),
        ["criterion id 'industry' is used twice"],
    ),
    (
        "bands out of order",
        _set_bands(
            [
                {"upTo": 50, "points": 1},
                {"upTo": 10, "points": 2},
                {"upTo": None, "points": 3},
            ]
        ),
        ["criteria.1.bands.bands", "ascending order of upTo, each once"],
    ),
    (
        "a band bound given twice",
        _set_bands([{"upTo": 10, "points": 1}, {"upTo": 10, "points": 2}]),
        ["ascending order of upTo, each once"],
    ),
    (
        "upTo null before the last band",
        _set_bands([{"upTo": None, "points": 1}, {"upTo": 10, "points": 2}]),
        ["only the last band may have upTo null"],
    ),
    (
        "no bands at all",
        _set_bands([]),
        ["criteria.1.bands.bands", "at least 1 item"],
    ),
    (
        "band points over 100",
        _set_bands([{"upTo": None, "points": 101}]),
        ["criteria.1.bands.bands.0.points", "less than or equal to 100"],
    ),
    (
        "an unknown fact",
        _set_on(1, fact="shoe_size"),
        ["criteria.1.bands.fact", "'employees'", "shoe_size"],
    ),
    (
        "an unknown counter",
        _set_on(11, counter="tweets"),
        ["criteria.11.count.counter", "'website_visits'", "tweets"],
    ),
    (
        "an unknown type",
        _set_on(0, type="regex"),
        ["Input tag 'regex'", "'bands', 'category', 'keywords', 'count', 'scaled'"],
    ),
    (
        "an id with capitals and a hyphen",
        _set_on(0, id="Industry-1"),
        ["criteria.0.category.id", "String should match pattern"],
    ),
    (
        "an id starting with a digit",
        _set_on(0, id="1industry"),
        ["criteria.0.category.id", "String should match pattern"],
    ),
    (
        "an unknown key on a criterion",
        _set_on(0, colour="red"),
        ["criteria.0.category.colour", "Extra inputs are not permitted"],
    ),
    (
        "an unknown key at the top",
        lambda d: d.update(halfLife=3),
        ["halfLife", "Extra inputs are not permitted"],
    ),
    (
        "an unknown key on a band",
        _set_bands([{"upTo": None, "points": 1, "label": "big"}]),
        ["criteria.1.bands.bands.0.label", "Extra inputs are not permitted"],
    ),
    (
        "a negative half-life",
        lambda d: d.update(halfLifeDays=-1),
        ["halfLifeDays", "greater than or equal to 0"],
    ),
    (
        "an MQL threshold over 100",
        lambda d: d.update(mqlThreshold=101),
        ["mqlThreshold", "less than or equal to 100"],
    ),
    (
        "no criteria",
        lambda d: d.update(criteria=[]),
        ["criteria", "at least 1 item"],
    ),
]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        pytest.param(change, expected, id=name)
        for name, change, expected in INVALID_CHANGES
    ],
)
def test_invalid_criteria_rejected(
    change: Callable[[dict[str, Any]], None], expected: list[str]
) -> None:
    data = default_json()
    change(data)
    with pytest.raises(ValidationError) as caught:
        ScoringCriteria.model_validate(data)
    message = str(caught.value)
    for fragment in expected:
        assert fragment in message


def test_criteria_camel_case_round_trip() -> None:
    config = built_in_criteria()
    dumped = config.model_dump(mode="json")
    assert "dimensionMax" in dumped
    assert "halfLifeDays" in dumped
    assert ScoringCriteria.model_validate(dumped) == config


def test_negative_dimension_max_is_rejected() -> None:
    data = default_json()
    data["dimensionMax"] = {"firmographic": 120, "behavioral": -10, "engagement": -10}
    with pytest.raises(ValidationError):
        ScoringCriteria.model_validate(data)


def test_bands_unknown_placeholder_rejected() -> None:
    data = default_json()
    data["criteria"][1]["describe"] = "{count} employees"
    with pytest.raises(ValidationError):
        ScoringCriteria.model_validate(data)


# --- Input conversion: facts_from_input --------------------------------------


def test_facts_from_input_reads_camel_case_json() -> None:
    data = ScoringInput.model_validate(
        {
            "leadId": "lead-42",
            "firmographic": {
                "industry": "SaaS",
                "size": "50-100",
                "revenue": "$5M-$10M",
                "budget": "$10K-$50K",
                "timeline": "3-6 months",
                "country": "DE",
                "jobTitle": "Head of Growth",
                "technologies": ["HubSpot", "Segment"],
                "growthStage": "Series B",
                "freeMail": True,
            },
            "behavioral": {
                "websiteVisits": 3,
                "pricingPageViews": 1,
                "pagesPerVisit": 2.5,
                "timeOnSiteSeconds": 300,
            },
            "engagement": {
                "lastActivity": "2026-03-02T07:00:00Z",
                "totalActivities": 6,
                "channels": ["web", "email", "web"],
                "responseHours": 4,
                "engagementScore": 0.75,
            },
        }
    )
    facts = facts_from_input(data, NOW)

    assert data.lead_id == "lead-42"
    assert facts.industry == "Technology"
    assert facts.employees == 75
    assert facts.revenue == 7_500_000
    assert facts.budget == 30_000
    assert facts.timeline_months == 4.5
    assert facts.country == "DE"
    assert facts.job_title == "Head of Growth"
    assert facts.technologies == ("HubSpot", "Segment")
    assert facts.growth_stage == "Series B"
    assert facts.email_type == "free"

    assert facts.occurrences == {
        "website_visits": [(0.0, 3.0)],
        "pricing_page_views": [(0.0, 1.0)],
    }
    assert facts.pages_per_visit == 2.5
    assert facts.time_on_site_minutes == 5

    assert facts.days_since_last_activity == pytest.approx(5 / 24)
    assert facts.activities_7d == 0
    assert facts.activities_30d == 6
    assert facts.channel_count == 2
    assert facts.response_hours == 4
    assert facts.engagement_score == 0.75


def test_facts_from_input_of_an_empty_input() -> None:
    facts = facts_from_input(ScoringInput(), NOW)
    assert facts == LeadFacts()


@pytest.mark.parametrize(
    ("firmographic", "expected"),
    [
        ({}, None),
        ({"freeMail": True}, "free"),
        ({"roleAddress": True}, "role"),
        ({"freeMail": True, "roleAddress": True}, "free"),
        ({"emailType": "company", "freeMail": True}, "company"),
    ],
)
def test_facts_from_input_email_type(
    firmographic: dict[str, Any], expected: str | None
) -> None:
    data = ScoringInput.model_validate({"firmographic": firmographic})
    assert facts_from_input(data, NOW).email_type == expected


def test_facts_from_input_ages_behavior_from_as_of() -> None:
    data = ScoringInput.model_validate(
        {"behavioral": {"demoPageViews": 2, "asOf": "2026-01-31T12:00:00+00:00"}}
    )
    assert facts_from_input(data, NOW).occurrences == {"demo_page_views": [(30.0, 2.0)]}


def test_facts_from_input_future_times() -> None:
    later = (NOW + timedelta(days=3)).isoformat()
    data = ScoringInput.model_validate(
        {
            "behavioral": {"emailOpens": 1, "asOf": later},
            "engagement": {"lastActivity": later},
        }
    )
    facts = facts_from_input(data, NOW)
    assert facts.occurrences == {"email_opens": [(0.0, 1.0)]}
    assert facts.days_since_last_activity == 0


@pytest.mark.parametrize(
    ("text", "months"),
    [
        (None, None),
        ("3-6 months", 4.5),
        ("12", 12),
        ("1-2 years", 18),
        ("ASAP", 0),
        ("no timeline yet", None),
        ("next quarter", None),
    ],
)
def test_timeline_months(text: str | None, months: float | None) -> None:
    assert timeline_months(text) == months


def test_timeline_months_with_two_units() -> None:
    assert timeline_months("6 months to 1 year") == 9


def test_scoring_input_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError) as caught:
        ScoringInput.model_validate({"firmographic": {"jobTitel": "CEO"}})
    assert "firmographic.jobTitel" in str(caught.value)
    assert "Extra inputs are not permitted" in str(caught.value)


def test_scoring_input_rejects_a_naive_as_of() -> None:
    with pytest.raises(ValidationError) as caught:
        ScoringInput.model_validate({"behavioral": {"asOf": "2026-01-31T12:00:00"}})
    assert "behavioral.asOf" in str(caught.value)


def test_scoring_input_reads_activities7d() -> None:
    data = ScoringInput.model_validate({"engagement": {"activities7d": 2}})
    assert facts_from_input(data, NOW).activities_7d == 2


def test_channels_case_insensitive() -> None:
    data = ScoringInput.model_validate(
        {"engagement": {"channels": ["email", "Email", "EMAIL"]}}
    )
    assert facts_from_input(data, NOW).channel_count == 1


# --- score and blend ---------------------------------------------------------


def _behavior_input(as_of: datetime) -> ScoringInput:
    return ScoringInput.model_validate(
        {
            "behavioral": {
                "demoPageViews": 2,
                "pricingPageViews": 2,
                "formSubmissions": 2,
                "asOf": as_of.isoformat(),
            }
        }
    )


def test_score_halves_old_behavior() -> None:
    fresh = score(_behavior_input(NOW), NOW)
    old = score(_behavior_input(NOW - timedelta(days=30)), NOW)
    fresh_points = {r.criterion: r.points for r in fresh.reasons}
    old_points = {r.criterion: r.points for r in old.reasons}
    assert fresh_points == {
        "demo_page_views": 10,
        "pricing_page_views": 8,
        "form_submissions": 6,
    }
    # Form submissions have halfLifeDays 0 in the default criteria.
    assert old_points == {
        "demo_page_views": 5,
        "pricing_page_views": 4,
        "form_submissions": 6,
    }
    assert fresh.dimensions["behavioral"].score == 24
    assert old.dimensions["behavioral"].score == 15
    texts = {r.criterion: r.fact for r in old.reasons}
    assert texts["demo_page_views"] == "2 demo page views, worth 1 after fading"


def test_score_without_model() -> None:
    data = ScoringInput.model_validate(
        {
            "leadId": "lead-7",
            "firmographic": {"industry": "Fintech", "jobTitle": "CFO"},
            "engagement": {"engagementScore": 0.75},
        }
    )
    result = score(data, NOW, criteria_version=3)
    assert result.method == "rules"
    assert result.model is None
    assert result.note == NO_MODEL_NOTE
    assert "no model is promoted" in (result.note or "")
    assert result.lead_id == "lead-7"
    assert result.criteria_version == 3
    assert result.scored_at == NOW
    # Firmographic is 12 (industry) + 10 (executive), and 4.5 rounds up to 5.
    assert result.rules_score == result.score == 27
    assert {d: (v.score, v.max) for d, v in result.dimensions.items()} == {
        "firmographic": (22, 50),
        "behavioral": (0, 30),
        "engagement": (5, 20),
    }
    assert [(r.criterion, r.dimension, r.points) for r in result.reasons] == [
        ("industry", "firmographic", 12),
        ("seniority", "firmographic", 10),
        ("engagement_score", "engagement", 4.5),
    ]


def test_score_result_serialises_to_camel_case() -> None:
    dumped = score(ScoringInput(), NOW).model_dump(mode="json")
    assert dumped["rulesScore"] == 0
    assert dumped["criteriaVersion"] == 0
    assert dumped["scoredAt"] == "2026-03-02T12:00:00Z"
    assert dumped["reasons"] == []


def test_score_with_other_rules() -> None:
    config = criteria_of(count_criterion(halfLifeDays=0))
    data = ScoringInput.model_validate({"behavioral": {"demoPageViews": 3}})
    result = score(data, NOW, rules=compile_rules(config))
    assert result.score == 12
    assert result.dimensions["behavioral"].max == 33


@pytest.mark.parametrize(
    ("rules_score", "probability", "weight", "expected"),
    [
        (60, 0.9, 0.5, 75),
        (60, None, 0.5, 60),
        (60, 0.9, 0.0, 60),
        (60, 0.9, 1.0, 90),
        (0, 0.0, 0.5, 0),
        (100, 1.0, 0.5, 100),
        (40, 0.2, 0.25, 35),
    ],
)
def test_blend(
    rules_score: int, probability: float | None, weight: float, expected: int
) -> None:
    assert blend(rules_score, probability, weight) == expected


def test_blend_rounds_half_up() -> None:
    assert blend(63, 0.5, 0.5) == 57


# --- Speed guard -------------------------------------------------------------


def test_evaluate_speed() -> None:
    rules = compile_rules(built_in_criteria())
    facts = LeadFacts(
        industry="Technology",
        employees=300,
        revenue=20_000_000,
        country="DE",
        job_title="VP of Marketing",
        technologies=("HubSpot", "Snowflake"),
        email_type="company",
        occurrences={"website_visits": [(3, 4)], "email_clicks": [(1, 2)]},
        days_since_last_activity=2,
        activities_7d=3,
    )
    calls = 20_000
    rules.evaluate(facts)
    started = time.perf_counter()
    for _ in range(calls):
        rules.evaluate(facts)
    per_call = (time.perf_counter() - started) / calls
    assert per_call < 200e-6, f"evaluate took {per_call * 1e6:.1f} µs per call"
