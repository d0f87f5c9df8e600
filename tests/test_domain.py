"""Unit tests of the pure domain code: no Temporal server, no HTTP, no database."""

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from api.errors import json_path
from nurture.campaign_checks import check_campaign
from nurture.campaigns import CampaignSpec, SendStep, SplitStep, Trigger
from nurture.conditions import Facts
from nurture.durations import parse_duration
from nurture.engagement import advance_status
from nurture.enrichment import (
    Enrichment,
    enrich,
    midpoint,
    normalize_industry,
    parse_amounts,
    size_band,
)
from nurture.enrollments import trigger_matches
from nurture.journey import EngagementView, EnrollmentView, NextAction, recommend
from nurture.leads import LeadCreate, form_to_payload, normalize_email, normalize_phone
from nurture.models import Message
from nurture.rendering import Rendered, TemplateError, TemplateRenderer
from nurture.scoring import Reason, ScoreResult, ScoringInput, next_stage, score
from nurture.wording import describe_age
from tests.conftest import example

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
WELCOME_PERSONALIZATION = {
    "firstName": "{{lead.firstName}}",
    "companyName": "{{lead.company.name}}",
}


# --- campaigns: delays ---------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0 hours", timedelta(0)),
        ("24 hours", timedelta(hours=24)),
        ("3 days", timedelta(days=3)),
        ("90 minutes", timedelta(minutes=90)),
        ("30 seconds", timedelta(seconds=30)),
        ("2 weeks", timedelta(weeks=2)),
        ("1 hour", timedelta(hours=1)),
        ("  5 MINUTES ", timedelta(minutes=5)),
        ("365 days", timedelta(days=365)),
    ],
)
def test_parse_duration_accepts(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "3 fortnights",
        "-1 hours",
        "1.5 hours",
        "",
        "400 days",
        "53 weeks",
        # Beyond timedelta's range: this must still raise ValueError, which
        # pydantic reports as a validation error, and not OverflowError.
        "1000000000 days",
    ],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError) as error:
        parse_duration(text)
    assert repr(text) in str(error.value)


def test_parse_duration_names_maximum() -> None:
    with pytest.raises(ValueError, match="the maximum is 365 days"):
        parse_duration("400 days")


# --- campaigns: triggers -------------------------------------------------------


def _lead_facts(score_value: int = 52, channel: str | None = "website") -> Facts:
    lead = {"score": score_value, "source": {"channel": channel}, "company": {}}
    return Facts(lead=lead, previous_message_id=None, messages=(), events=(), now=NOW)


@pytest.mark.parametrize(
    ("condition", "score_value", "expected"),
    [
        ("score >= 50", 50, True),
        ("score >= 50", 49, False),
        ("score > 50", 51, True),
        ("score > 50", 50, False),
        ("score <= 20", 20, True),
        ("score <= 20", 21, False),
        ("score < 20", 19, True),
        ("score < 20", 20, False),
        ("score == 42", 42, True),
        ("score == 42", 43, False),
        ("score != 42", 43, True),
        ("score != 42", 42, False),
        ("score>=-1", 0, True),
    ],
)
def test_score_trigger_operators(
    condition: str, score_value: int, expected: bool
) -> None:
    trigger = Trigger.model_validate({"type": "lead_score", "condition": condition})
    assert (
        trigger_matches(trigger, "behavior", [], _lead_facts(score_value)) is expected
    )


def test_trigger_rejects_unknown_field() -> None:
    with pytest.raises(ValidationError, match="age"):
        Trigger.model_validate({"type": "lead_score", "condition": "age >= 30"})


def test_score_trigger_needs_condition() -> None:
    with pytest.raises(ValidationError, match="needs a condition"):
        Trigger.model_validate({"type": "lead_score"})


@pytest.mark.parametrize(
    ("event", "expected"), [("created", True), ("behavior", False)]
)
def test_created_trigger_matches_event(event: str, expected: bool) -> None:
    trigger = Trigger.model_validate({"type": "lead_created"})
    assert trigger_matches(trigger, event, [], _lead_facts()) is expected


@pytest.mark.parametrize(
    ("channel", "expected"), [("webinar", True), ("website", False), (None, False)]
)
def test_created_trigger_filters_sources(channel: str | None, expected: bool) -> None:
    trigger = Trigger.model_validate({"type": "lead_created", "sources": ["webinar"]})
    assert (
        trigger_matches(trigger, "created", [], _lead_facts(channel=channel))
        is expected
    )


@pytest.mark.parametrize(
    ("event_types", "expected"),
    [(["content_download"], True), (["page_view"], False), ([], False)],
)
def test_behavior_trigger_needs_its_event(
    event_types: list[str], expected: bool
) -> None:
    trigger = Trigger.model_validate({"type": "behavior", "event": "content_download"})
    assert trigger_matches(trigger, "behavior", event_types, _lead_facts()) is expected


def test_manual_trigger_never_matches() -> None:
    trigger = Trigger.model_validate({"type": "manual"})
    assert trigger_matches(trigger, "created", ["page_view"], _lead_facts()) is False


# --- campaigns: whole specs ----------------------------------------------------


def _campaign(**overrides: Any) -> dict[str, Any]:
    """Return the example campaign as submitted, with top-level keys replaced."""
    return {**example("campaign.json"), **overrides}


def _step(number: int, **extra: Any) -> dict[str, Any]:
    return {
        "step": number,
        "channel": "email",
        "template": "value_proposition",
        **extra,
    }


def _problems(data: dict[str, Any]) -> list[tuple[str, str]]:
    spec, problems = check_campaign(data, TemplateRenderer(TEMPLATES))
    assert (spec is None) == bool(problems)
    return [(problem.path, problem.type) for problem in problems]


def test_example_campaign_validates() -> None:
    spec = CampaignSpec.model_validate(example("campaign.json"))
    assert spec.name == "SME Onboarding Sequence"
    assert spec.status == "active"
    assert spec.step_ids() == ["1", "2"]
    second = spec.sequence[1]
    assert isinstance(second, SendStep)
    assert second.delay_timedelta == timedelta(hours=24)
    assert second.conditions is not None
    assert second.conditions.email_opened is True
    assert second.gate() == 'opened("previous")'
    first = spec.sequence[0]
    assert isinstance(first, SendStep)
    assert first.personalization == WELCOME_PERSONALIZATION
    assert _problems(example("campaign.json")) == []


@pytest.mark.parametrize("numbers", [[2, 1], [1, 3, 2]], ids=["descending", "unsorted"])
def test_campaign_rejects_step_order(numbers: list[int]) -> None:
    data = _campaign(sequence=[_step(n) for n in numbers])
    assert ("sequence", "value_error") in _problems(data)


def test_campaign_rejects_duplicate_numbers() -> None:
    data = _campaign(sequence=[_step(1), _step(1)])
    assert _problems(data) == [("sequence", "value_error")]


def test_campaign_rejects_duplicate_ids() -> None:
    steps = [_step(1, id="hello"), {**_step(2), "id": "hello"}]
    assert ("sequence[1].id", "duplicate_id") in _problems(_campaign(sequence=steps))


def test_campaign_allows_step_gaps() -> None:
    spec = CampaignSpec.model_validate(_campaign(sequence=[_step(1), _step(5)]))
    assert spec.step_ids() == ["1", "5"]


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (_campaign(owner="ada"), ("owner",)),
        (_campaign(sequence=[_step(1, wait="1 day")]), ("sequence", 0, "send", "wait")),
        (
            _campaign(trigger={"type": "lead_created", "when": "now"}),
            ("trigger", "when"),
        ),
    ],
    ids=["top-level", "step", "trigger"],
)
def test_campaign_rejects_unknown_key(
    data: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    with pytest.raises(ValidationError) as error:
        CampaignSpec.model_validate(data)
    assert [(e["loc"], e["type"]) for e in error.value.errors()] == [
        (loc, "extra_forbidden")
    ]


def test_campaign_rejects_empty_sequence() -> None:
    with pytest.raises(ValidationError) as error:
        CampaignSpec.model_validate(_campaign(sequence=[]))
    assert [(e["loc"], e["type"]) for e in error.value.errors()] == [
        (("sequence",), "too_short")
    ]


def test_campaign_bad_delay_path() -> None:
    data = _campaign(sequence=[_step(1), _step(2, delay="3 fortnights")])
    assert _problems(data) == [("sequence[1].delay", "value_error")]


# --- scoring -------------------------------------------------------------------


def _score(data: dict[str, Any], now: datetime = NOW) -> ScoreResult:
    return score(ScoringInput.model_validate(data), now)


def _dimension_scores(result: ScoreResult) -> dict[str, int]:
    return {name: dimension.score for name, dimension in result.dimensions.items()}


def _facts(result: ScoreResult) -> dict[str, str]:
    return {reason.criterion: reason.fact for reason in result.reasons}


# The scoring facts of the lead in examples/lead.json right after capture.
# The capture itself counts as one form submission and one activity.
EXAMPLE_LEAD_FACTS = {
    "firmographic": {
        "industry": "Technology",
        "size": "50-100",
        "revenue": "$5M-$10M",
        "budget": "$10K-$50K",
        "timeline": "3-6 months",
    },
    "behavioral": {"formSubmissions": 1},
    "engagement": {"lastActivity": NOW.isoformat(), "totalActivities": 1},
}


def test_scoring_example_dimensions() -> None:
    # 90 minutes after the example's last activity.
    result = _score(
        example("scoring_calculate.json"), datetime(2024, 12, 27, 12, 0, tzinfo=UTC)
    )
    assert _dimension_scores(result) == {
        "firmographic": 30,
        "behavioral": 26,
        "engagement": 19,
    }


def test_scoring_example_total() -> None:
    result = _score(
        example("scoring_calculate.json"), datetime(2024, 12, 27, 12, 0, tzinfo=UTC)
    )
    assert result.score == 75
    assert result.score == sum(_dimension_scores(result).values())
    assert result.lead_id == "lead_12345"


def test_scoring_example_reason_order() -> None:
    result = _score(
        example("scoring_calculate.json"), datetime(2024, 12, 27, 12, 0, tzinfo=UTC)
    )
    # Sorted by absolute points, largest first. Ties keep the dimension order.
    assert [(r.criterion, r.points) for r in result.reasons] == [
        ("industry", 15),
        ("email_clicks", 9),
        ("company_size", 8),
        ("content_downloads", 8),
        ("recency", 8),
        ("revenue", 7),
        ("frequency", 6),
        ("website_visits", 5),
        ("engagement_score", 4.5),
        ("email_opens", 4),
    ]


def test_scoring_example_lead_52() -> None:
    result = _score(EXAMPLE_LEAD_FACTS)
    assert result.score == 52


def test_scoring_example_lead_dimensions() -> None:
    result = _score(EXAMPLE_LEAD_FACTS)
    assert _dimension_scores(result) == {
        "firmographic": 40,
        "behavioral": 3,
        "engagement": 9,
    }


def test_behavioral_clamped_to_30() -> None:
    behavioral = {
        "websiteVisits": 10,
        "pricingPageViews": 2,
        "contentDownloads": 2,
        "webinarRegistrations": 2,
        "formSubmissions": 2,
    }
    result = _score({"behavioral": behavioral})
    # 5 visits + 8 pricing + 8 downloads + 6 webinars + 6 forms.
    assert sum(r.points for r in result.reasons) == 33
    assert result.dimensions["behavioral"].score == 30
    assert result.score == 30


def test_firmographic_floor_is_zero() -> None:
    result = _score({"firmographic": {"freeMail": True}})
    assert result.dimensions["firmographic"].score == 0
    assert result.score == 0


def test_free_mail_penalty_reason() -> None:
    result = _score({"firmographic": {"industry": "Technology", "freeMail": True}})
    assert result.reasons[-1] == Reason(
        criterion="email_type",
        dimension="firmographic",
        points=-5,
        fact="uses a free email address",
    )
    assert result.dimensions["firmographic"].score == 10


def test_role_address_penalty_reason() -> None:
    result = _score({"firmographic": {"industry": "Technology", "roleAddress": True}})
    assert [(r.criterion, r.points) for r in result.reasons] == [
        ("industry", 15),
        ("email_type", -3),
    ]


def test_free_mail_outranks_role_address() -> None:
    result = _score({"firmographic": {"freeMail": True, "roleAddress": True}})
    assert [(r.criterion, r.points) for r in result.reasons] == [("email_type", -5)]


def test_reasons_sorted_by_magnitude() -> None:
    result = _score(
        {
            "firmographic": {"industry": "Retail", "freeMail": True},
            "behavioral": {"formSubmissions": 1},
            "engagement": {"lastActivity": NOW.isoformat()},
        }
    )
    assert [(r.criterion, r.points) for r in result.reasons] == [
        ("recency", 8),
        ("industry", 6),
        ("email_type", -5),
        ("form_submissions", 3),
    ]


def test_zero_point_reasons_omitted() -> None:
    result = _score(
        {
            # 24 months is past every timeline band.
            # 200 days is past every recency band.
            "firmographic": {"industry": "Technology", "timeline": "2 years"},
            "engagement": {
                "lastActivity": (NOW - timedelta(days=200)).isoformat(),
                "engagementScore": 0.0,
            },
        }
    )
    assert [r.criterion for r in result.reasons] == ["industry"]
    assert result.score == 15


@pytest.mark.parametrize(
    ("age", "points"),
    [
        (timedelta(days=1), 8),
        (timedelta(days=1, seconds=1), 6),
        (timedelta(days=7), 6),
        (timedelta(days=30), 3),
        (timedelta(days=90), 1),
        (timedelta(days=91), 0),
    ],
)
def test_recency_band_points(age: timedelta, points: int) -> None:
    result = _score({"engagement": {"lastActivity": (NOW - age).isoformat()}})
    assert result.dimensions["engagement"].score == points


@pytest.mark.parametrize(
    ("data", "criterion", "fact"),
    [
        (
            {"behavioral": {"formSubmissions": 1}},
            "form_submissions",
            "1 form submission",
        ),
        (
            {"behavioral": {"formSubmissions": 2}},
            "form_submissions",
            "2 form submissions",
        ),
        (
            {"behavioral": {"formSubmissions": 3}},
            "form_submissions",
            "3 form submissions (capped)",
        ),
        ({"behavioral": {"smsReplies": 1}}, "sms_replies", "1 SMS reply"),
        ({"behavioral": {"smsReplies": 2}}, "sms_replies", "2 SMS replies"),
        (
            {"engagement": {"totalActivities": 1}},
            "frequency",
            "1 activity in the last 30 days",
        ),
        (
            {"engagement": {"totalActivities": 2}},
            "frequency",
            "2 activities in the last 30 days",
        ),
        (
            {"engagement": {"lastActivity": "2025-01-01T11:50:00Z"}},
            "recency",
            "last activity 10 minutes ago",
        ),
        (
            {"engagement": {"lastActivity": "2025-01-01T10:30:00Z"}},
            "recency",
            "last activity 1 hour ago",
        ),
        (
            {"engagement": {"lastActivity": "2025-01-01T07:00:00Z"}},
            "recency",
            "last activity 5 hours ago",
        ),
        (
            {"engagement": {"lastActivity": "2024-12-29T12:00:00Z"}},
            "recency",
            "last activity 3 days ago",
        ),
    ],
)
def test_reason_fact_wording(data: dict[str, Any], criterion: str, fact: str) -> None:
    assert _facts(_score(data))[criterion] == fact


@pytest.mark.parametrize(
    ("current", "score_value", "engaged", "expected"),
    [
        ("mql", 10, False, "mql"),
        ("mql", 10, True, "mql"),
        ("engaged", 10, False, "engaged"),
        ("sql", 90, True, "sql"),
        ("customer", 0, False, "customer"),
        ("new", 10, False, "new"),
        ("new", 10, True, "engaged"),
        ("engaged", 69, True, "engaged"),
        ("engaged", 70, True, "mql"),
        ("new", 70, False, "mql"),
    ],
)
def test_next_stage_forward_only(
    current: str, score_value: int, engaged: bool, expected: str
) -> None:
    assert next_stage(current, score_value, engaged, mql_threshold=70) == expected


# --- enrichment ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "amounts", "middle"),
    [
        ("$5M-$10M", [5_000_000.0, 10_000_000.0], 7_500_000),
        ("50-100", [50.0, 100.0], 75),
        ("1000+", [1000.0], 1000),
        ("$10K-$50K", [10_000.0, 50_000.0], 30_000),
        # The "m" of "months" is no million suffix. round() takes 4.5 to the even 4.
        ("3-6 months", [3.0, 6.0], 4),
        ("$1.5m", [1_500_000.0], 1_500_000),
        ("", [], None),
        ("unknown", [], None),
    ],
)
def test_amounts_and_midpoint(
    text: str, amounts: list[float], middle: int | None
) -> None:
    assert parse_amounts(text) == amounts
    assert midpoint(text) == middle


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Technology", "Technology"),
        (" technology ", "Technology"),
        ("software", "Technology"),
        ("SaaS", "Technology"),
        ("IT Services", "Technology"),
        ("FinTech", "Financial Services"),
        ("Banking & Insurance", "Financial Services"),
        ("Health care", "Healthcare"),
        ("legal", "Professional Services"),
        ("Professional Services", "Professional Services"),
        ("Consumer Goods", "Retail"),
        ("Public Sector", "Government"),
        ("agriculture", "Agriculture"),
        ("", None),
        (None, None),
    ],
)
def test_normalize_industry(text: str | None, expected: str | None) -> None:
    assert normalize_industry(text) == expected


@pytest.mark.parametrize(
    ("employees", "band"),
    [
        (1, "1-10"),
        (10, "1-10"),
        (11, "11-50"),
        (50, "11-50"),
        (51, "51-200"),
        (5000, "1001-5000"),
        (5001, "5001+"),
        (None, None),
    ],
)
def test_size_band_edges(employees: int | None, band: str | None) -> None:
    assert size_band(employees) == band


def test_enrich_example_lead() -> None:
    lead = {
        "email": "john.smith@company.com",
        "company_website": "https://example.com",
        "company_industry": "Technology",
        "company_size": "50-100",
        "company_revenue": "$5M-$10M",
    }
    assert enrich(lead) == Enrichment(
        email_domain="company.com",
        free_mail=False,
        role_address=False,
        company_domain="example.com",
        industry="Technology",
        employees=75,
        size_band="51-200",
        revenue_usd=7_500_000,
    )


def test_enrich_free_mail() -> None:
    result = enrich({"email": "Jane@Gmail.com"})
    assert result.email_domain == "gmail.com"
    assert result.free_mail is True
    assert result.company_domain is None


@pytest.mark.parametrize(
    ("email", "role"),
    [
        ("info@acme.com", True),
        ("sales+x@acme.com", True),
        ("Support@acme.com", True),
        ("ada@acme.com", False),
        ("information@acme.com", False),
    ],
)
def test_enrich_role_address(email: str, role: bool) -> None:
    assert enrich({"email": email}).role_address is role


@pytest.mark.parametrize(
    ("email", "website", "domain"),
    [
        ("john@mail.acme.com", "https://www.acme.io/about", "acme.io"),
        ("jane@gmail.com", "www.acme.io:8080", "acme.io"),
        ("john@acme.com", None, "acme.com"),
        ("john@acme.com", "", "acme.com"),
    ],
)
def test_enrich_company_domain(email: str, website: str | None, domain: str) -> None:
    lead = {"email": email, "company_website": website}
    assert enrich(lead).company_domain == domain


# --- lead capture --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "region", "expected"),
    [
        ("+1-555-123-4567", "US", ("+15551234567", "unverified")),
        ("(415) 555-2671", "US", ("+14155552671", "valid")),
        ("+44 20 7946 0958", "US", ("+442079460958", "valid")),
    ],
)
def test_normalize_phone(value: str, region: str, expected: tuple[str, str]) -> None:
    assert normalize_phone(value, region) == expected


@pytest.mark.parametrize("value", ["12", "abc"])
def test_normalize_phone_rejects(value: str) -> None:
    with pytest.raises(ValueError, match=f"invalid phone number {value!r}"):
        normalize_phone(value, "US")


def test_normalize_email_lowercases_domain() -> None:
    assert normalize_email("John.Smith@Company.COM") == "John.Smith@company.com"


def test_normalize_email_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="invalid email address"):
        normalize_email("not-an-email")


def test_form_to_payload_maps_fields() -> None:
    form = {
        "email": "ada@example.org",
        "firstName": "Ada",
        "last_name": "Lovelace",
        "company": "Analytical",
        "company_size": "11-50",
        "utm_source": "webinar",
        "utm_campaign": "spring",
        "interest": "automation",
    }
    assert form_to_payload(form) == {
        "contact": {
            "email": "ada@example.org",
            "firstName": "Ada",
            "lastName": "Lovelace",
        },
        "company": {"name": "Analytical", "size": "11-50"},
        "source": {"channel": "webinar", "campaign": "spring"},
        "customFields": {"interest": "automation"},
    }


def test_form_payload_is_valid_lead() -> None:
    payload = form_to_payload({"email": "Ada@Example.ORG", "budget": "$10K-$50K"})
    lead = LeadCreate.model_validate(payload)
    assert lead.contact.email == "Ada@example.org"
    assert lead.custom_fields == {"budget": "$10K-$50K"}


def test_lead_needs_email_or_phone() -> None:
    with pytest.raises(ValidationError, match="contact.email or contact.phone"):
        LeadCreate.model_validate({"contact": {"firstName": "Ada"}})


# --- rendering -----------------------------------------------------------------


def _write_template(root: Path, channel: str, name: str, files: dict[str, str]) -> None:
    folder = root / channel / name
    folder.mkdir(parents=True)
    for filename, text in files.items():
        (folder / filename).write_text(text)


def test_welcome_email_personalized() -> None:
    lead = {"firstName": "John", "company": {"name": "Example Company"}}
    rendered = TemplateRenderer(TEMPLATES).render(
        "email", "welcome_email", lead, WELCOME_PERSONALIZATION
    )
    assert rendered.subject == (
        "Welcome, John: getting started with Example Company's automation"
    )
    assert rendered.text.startswith("Hi John,\n\nThanks for your interest.")
    assert rendered.text.endswith("The Nurture team\n")
    assert rendered.html is not None
    assert "<strong>Example Company</strong>" in rendered.html


def test_html_escapes_ampersand_only() -> None:
    lead = {"firstName": "John", "company": {"name": "Smith & Sons"}}
    rendered = TemplateRenderer(TEMPLATES).render(
        "email", "welcome_email", lead, WELCOME_PERSONALIZATION
    )
    assert rendered.html is not None
    assert "<strong>Smith &amp; Sons</strong>" in rendered.html
    assert rendered.subject is not None
    assert "Smith & Sons's automation" in rendered.subject
    assert "Teams like Smith & Sons use" in rendered.text
    assert "&amp;" not in rendered.text


@pytest.mark.parametrize(
    "lead",
    [
        {"company": {"name": "Example Company"}},
        {"firstName": None, "company": {"name": "Example Company"}},
    ],
    ids=["absent", "none"],
)
def test_missing_lead_value_raises(lead: dict[str, Any]) -> None:
    with pytest.raises(TemplateError) as error:
        TemplateRenderer(TEMPLATES).render(
            "email", "welcome_email", lead, WELCOME_PERSONALIZATION
        )
    assert "has no attribute 'firstName'" in str(error.value)
    assert 'declare a fallback such as {{ lead.firstName | default("there") }}' in (
        str(error.value)
    )


def test_real_template_fallbacks() -> None:
    rendered = TemplateRenderer(TEMPLATES).render(
        "email", "value_proposition", {"company": {}}, {}
    )
    assert rendered.subject == "Hello, what automation saves a team like yours"
    assert rendered.text.startswith("Hi there,\n")


@pytest.mark.parametrize(
    ("lead", "text"), [({}, "Hi there\n"), ({"firstName": "Ada"}, "Hi Ada\n")]
)
def test_default_filter_fallback(
    tmp_path: Path, lead: dict[str, Any], text: str
) -> None:
    _write_template(
        tmp_path,
        "sms",
        "greet",
        {"body.txt": 'Hi {{ lead.firstName | default("there") }}'},
    )
    rendered = TemplateRenderer(tmp_path).render("sms", "greet", lead, {})
    assert rendered == Rendered(subject=None, text=text, html=None)


@pytest.mark.parametrize(
    ("channel", "name", "expected"),
    [
        ("email", "nope", "expected email/nope/subject.txt"),
        ("sms", "nope", "expected sms/nope/body.txt"),
        ("sms", "welcome_email", "expected sms/welcome_email/body.txt"),
    ],
)
def test_check_missing_template(channel: str, name: str, expected: str) -> None:
    with pytest.raises(TemplateError, match=expected):
        TemplateRenderer(TEMPLATES).check(channel, name)


def test_check_names_missing_body(tmp_path: Path) -> None:
    _write_template(tmp_path, "email", "half", {"subject.txt": "Hi"})
    with pytest.raises(TemplateError, match="expected email/half/body.txt"):
        TemplateRenderer(tmp_path).check("email", "half")


def test_check_real_templates_pass() -> None:
    renderer = TemplateRenderer(TEMPLATES)
    for channel, name in [
        ("email", "welcome_email"),
        ("email", "value_proposition"),
        ("sms", "welcome_sms"),
    ]:
        renderer.check(channel, name)


def test_syntax_error_names_line(tmp_path: Path) -> None:
    _write_template(
        tmp_path,
        "email",
        "broken",
        {"subject.txt": "Hello", "body.txt": "Hello\n{{ lead.firstName }\n"},
    )
    with pytest.raises(TemplateError, match="email/broken/body.txt line 2: "):
        TemplateRenderer(tmp_path).check("email", "broken")


def test_bad_expression_rejected() -> None:
    with pytest.raises(TemplateError, match="invalid template expression"):
        TemplateRenderer(TEMPLATES).check_expression("{{ lead.firstName }")


# The renderer turns the sandbox's SecurityError into a TemplateError.
@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("{{ lead.__class__ }}", "'__class__' of 'dict' object is unsafe"),
        ("{{ ''.__class__.__mro__ }}", "'__class__' of 'str' object is unsafe"),
    ],
)
def test_sandbox_blocks_expression(expression: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        TemplateRenderer(TEMPLATES).render(
            "sms", "welcome_sms", {"firstName": "Ada"}, {"probe": expression}
        )


def test_sandbox_blocks_template_file(tmp_path: Path) -> None:
    _write_template(tmp_path, "sms", "probe", {"body.txt": "{{ lead.__class__ }}"})
    with pytest.raises(TemplateError, match="sandbox forbids.*is unsafe"):
        TemplateRenderer(tmp_path).render("sms", "probe", {"firstName": "Ada"}, {})


# --- engagement ----------------------------------------------------------------


def _message(status: str, **timestamps: datetime) -> Message:
    return Message(
        id="msg-1",
        lead_id="lead-1",
        channel="email",
        template="welcome_email",
        to_address="ada@example.org",
        body="Hi Ada",
        provider="console",
        status=status,
        **timestamps,
    )


@pytest.mark.parametrize(
    ("current", "new", "moved", "final"),
    [
        ("sent", "delivered", True, "delivered"),
        ("delivered", "opened", True, "opened"),
        ("opened", "delivered", False, "opened"),
        ("opened", "opened", False, "opened"),
        ("sent", "clicked", True, "clicked"),
        ("sent", "bounced", True, "bounced"),
        ("bounced", "opened", False, "bounced"),
        ("queued", "processed", False, "queued"),
    ],
)
def test_advance_status_forward_only(
    current: str, new: str, moved: bool, final: str
) -> None:
    message = _message(current)
    assert advance_status(message, new, NOW) is moved
    assert message.status == final


def test_click_sets_opened_at() -> None:
    message = _message("delivered")
    advance_status(message, "clicked", NOW)
    assert message.clicked_at == NOW
    assert message.opened_at == NOW


def test_click_keeps_first_open() -> None:
    opened = NOW - timedelta(hours=2)
    message = _message("opened", opened_at=opened)
    advance_status(message, "clicked", NOW)
    assert message.opened_at == opened


def test_late_delivered_records_time() -> None:
    message = _message("opened")
    advance_status(message, "delivered", NOW)
    assert message.delivered_at == NOW
    assert message.status == "opened"


# --- journey -------------------------------------------------------------------


def _event(kind: str, age: timedelta, **detail: str) -> EngagementView:
    return EngagementView(type=kind, source="sendgrid", at=NOW - age, detail=detail)


def _enrollment(status: str = "active") -> EnrollmentView:
    return EnrollmentView(
        enrollment_id="enrollment-1",
        workflow_id="nurture-sme-onboarding-sequence-lead-1",
        campaign_id="sme-onboarding-sequence",
        campaign_name="SME Onboarding Sequence",
        version=1,
        status=status,
        current_step="1",
        next_step="2",
        next_step_due_at=datetime(2025, 1, 2, 9, 30, tzinfo=UTC),
    )


def _recommend(**overrides: Any) -> NextAction:
    arguments: dict[str, Any] = {
        "status": "active",
        "stage": "engaged",
        "score": 40,
        "mql_threshold": 70,
        "enrollments": [],
        "engagement": [],
        "now": NOW,
    }
    return recommend(**(arguments | overrides))


CLICK = _event("click", timedelta(hours=3), url="https://www.example.com/pricing")
OPEN = _event("open", timedelta(days=1))


@pytest.mark.parametrize(
    ("overrides", "action"),
    [
        ({"status": "unsubscribed", "score": 90}, "do_not_contact"),
        ({"status": "bounced"}, "do_not_contact"),
        ({"score": 70}, "call"),
        ({"score": 95, "engagement": [CLICK]}, "call"),
        ({"stage": "mql", "score": 10}, "call"),
        ({"score": 69}, "enroll_in_campaign"),
        ({"engagement": [CLICK], "enrollments": [_enrollment()]}, "follow_up"),
        ({"engagement": [OPEN], "enrollments": [_enrollment()]}, "wait_for_campaign"),
        ({"enrollments": [_enrollment()]}, "wait_for_campaign"),
        ({"enrollments": [_enrollment("completed")]}, "enroll_in_campaign"),
        ({"engagement": [OPEN]}, "send_personal_email"),
        (
            {"engagement": [_event("open", timedelta(days=8))]},
            "enroll_in_campaign",
        ),
        (
            {"engagement": [_event("click", timedelta(days=8), url="https://x.test")]},
            "enroll_in_campaign",
        ),
        (
            {"engagement": [_event("delivered", timedelta(hours=1))]},
            "enroll_in_campaign",
        ),
        ({}, "enroll_in_campaign"),
    ],
)
def test_recommend_action(overrides: dict[str, Any], action: str) -> None:
    assert _recommend(**overrides).action == action


@pytest.mark.parametrize(
    ("outcome", "action"), [("converted", "customer"), ("lost", "lost")]
)
def test_outcome_overrides_hot_score(outcome: str, action: str) -> None:
    hot = {"score": 95, "stage": "sql", "engagement": [CLICK]}

    assert _recommend(**hot).action == "call"
    assert _recommend(**hot, outcome=outcome).action == action


def test_do_not_contact_reason() -> None:
    assert _recommend(status="closed").reason == "lead status is closed"


def test_call_reason() -> None:
    assert _recommend(score=72).reason == (
        "score 72 is at or above the MQL threshold of 70"
    )


def test_follow_up_names_url() -> None:
    assert _recommend(engagement=[CLICK]).reason == (
        "clicked on https://www.example.com/pricing 3 hours ago"
    )


def test_follow_up_without_url() -> None:
    click = _event("click", timedelta(days=3))
    assert _recommend(engagement=[click]).reason == "clicked 3 days ago"


def test_wait_names_due_step() -> None:
    assert _recommend(enrollments=[_enrollment()]).reason == (
        "SME Onboarding Sequence continues with step 2 at 2025-01-02 09:30 UTC"
    )


def test_wait_at_current_step_names_reason() -> None:
    at_hold = {"current_step": "hold", "next_step": "hold"}
    waiting = _enrollment().model_copy(
        update={**at_hold, "waiting_reason": "wait 7 days"}
    )

    assert _recommend(enrollments=[waiting]).reason == (
        "SME Onboarding Sequence continues at 2025-01-02 09:30 UTC (wait 7 days)"
    )


# --- API error paths -----------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "path"),
    [
        (("sequence", 1, "delay"), "sequence[1].delay"),
        ((), "(body)"),
        ((0, "event"), "[0].event"),
        (("contact", "email"), "contact.email"),
        (("sequence", 0, 1), "sequence[0][1]"),
    ],
)
def test_json_path(loc: tuple[int | str, ...], path: str) -> None:
    assert json_path(loc) == path


# --- timelines, amounts in words, ages ----------------------------------------


@pytest.mark.parametrize(
    ("timeline", "points"),
    [
        ("ASAP", 7),
        ("right now", 7),
        ("2 weeks", 7),
        ("within 30 days", 7),
        ("1-3 months", 6),
        ("3-6 months", 4),
        ("1 year", 2),
        ("2 years", 0),
    ],
)
def test_timeline_points(timeline: str, points: int) -> None:
    facts = {
        r.criterion: r.points
        for r in _score({"firmographic": {"timeline": timeline}}).reasons
    }
    assert facts.get("timeline", 0) == points


@pytest.mark.parametrize("timeline", ["not now", "unknown", "no timeline", "soon"])
def test_timeline_without_date_scores_nothing(timeline: str) -> None:
    criteria = {
        r.criterion for r in _score({"firmographic": {"timeline": timeline}}).reasons
    }
    assert "timeline" not in criteria


@pytest.mark.parametrize(
    ("text", "amounts"),
    [
        ("$5 million", [5_000_000.0]),
        ("$2 billion", [2_000_000_000.0]),
        ("10 thousand", [10_000.0]),
        ("5 months", [5.0]),
    ],
)
def test_amounts_in_words(text: str, amounts: list[float]) -> None:
    assert parse_amounts(text) == amounts


@pytest.mark.parametrize(
    ("age", "text"),
    [
        (timedelta(seconds=5), "under a minute"),
        (timedelta(minutes=1), "1 minute"),
        (timedelta(minutes=59), "59 minutes"),
        (timedelta(minutes=90), "1 hour"),
        (timedelta(hours=47), "47 hours"),
        (timedelta(days=3), "3 days"),
    ],
)
def test_describe_age(age: timedelta, text: str) -> None:
    assert describe_age(age) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P1DT2H", timedelta(days=1, hours=2)),
        ("PT90M", timedelta(minutes=90)),
        ("P2W", timedelta(weeks=2)),
        ("PT0S", timedelta(0)),
    ],
)
def test_parse_duration_iso(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["P1M", "P1Y", "PXD", "P400D"])
def test_parse_duration_rejects_iso(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


# --- journey shape -------------------------------------------------------------


def _journey(*steps: dict[str, Any]) -> dict[str, Any]:
    return _campaign(sequence=list(steps))


def test_loop_without_wait_rejected() -> None:
    data = _journey(
        {
            "id": "a",
            "type": "branch",
            "condition": "score > 1",
            "then": "b",
            "else": "b",
        },
        {
            "id": "b",
            "type": "branch",
            "condition": "score > 2",
            "then": "a",
            "else": "a",
        },
    )
    assert _problems(data) == [("sequence[0]", "loop_without_wait")]


def test_loop_with_wait_accepted() -> None:
    data = _journey(
        {
            "id": "a",
            "type": "branch",
            "condition": "score > 1",
            "then": "b",
            "else": "c",
        },
        {"id": "b", "type": "wait", "duration": "1 day", "next": "a"},
        {"id": "c", "type": "exit"},
    )
    assert _problems(data) == []


def test_unreachable_and_missing_next_reported_together() -> None:
    data = _journey(
        {
            "id": "a",
            "channel": "email",
            "template": "value_proposition",
            "next": "nowhere",
        },
        {"id": "b", "type": "exit"},
    )
    assert _problems(data) == [
        ("sequence[0].next", "unknown_step"),
        ("sequence[1]", "unreachable_step"),
    ]


def test_split_variant_next_checked() -> None:
    data = _journey(
        {
            "id": "ab",
            "type": "split",
            "variants": [
                {"name": "A", "weight": 1, "next": "x"},
                {"name": "B", "weight": 1},
            ],
        },
        {"id": "end", "type": "exit"},
    )
    assert _problems(data) == [("sequence[0].variants[0].next", "unknown_step")]


def test_split_choice_follows_weights() -> None:
    step = SplitStep.model_validate(
        {
            "type": "split",
            "variants": [{"name": "A", "weight": 9}, {"name": "B", "weight": 1}],
        }
    )
    picks = [step.choose(f"lead-{i}").name for i in range(2000)]
    assert 1700 < picks.count("A") < 1900
    assert step.choose("lead-7").name == step.choose("lead-7").name
