"""Campaign, scoring and behavior-event routes on the real API."""

import asyncio
import copy
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from nurture.db import session_scope
from nurture.models import EngagementEvent
from tests.conftest import Stack, example

CAMPAIGNS = "/api/v1/nurturing/campaigns"
SCORING = "/api/v1/scoring/calculate"
EVENTS = "/api/v1/events"
EXAMPLE_ID = "sme-onboarding-sequence"


def error_fields(response: httpx.Response) -> list[tuple[str, str]]:
    """Return the (path, type) pair of each field error in an error body."""
    return [(error["path"], error["type"]) for error in response.json()["errors"]]


@pytest.fixture
async def server_errors_as_500(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """Return a keyed client that gets a 500 response where the app raises.

    The stack's client re-raises app exceptions in the test, which hides the
    status code that a real HTTP client would see.
    """
    transport = httpx.ASGITransport(
        app=stack.api._transport.app,
        raise_app_exceptions=False,
    )
    async with httpx.AsyncClient(
        transport=transport, base_url="http://nurture.test", headers=stack.api.headers
    ) as client:
        yield client


# --- campaigns: submit -----------------------------------------------------


async def test_create_example_campaign_201(stack: Stack) -> None:
    campaign = example("campaign.json")

    response = await stack.api.post(CAMPAIGNS, json=campaign)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["id"] == EXAMPLE_ID
    assert body["version"] == 1
    assert body["status"] == "active"
    assert body["name"] == "SME Onboarding Sequence"
    assert body["description"] == campaign["description"]
    definition = body["definition"]
    assert definition["trigger"] == campaign["trigger"]
    assert [step["step"] for step in definition["sequence"]] == [1, 2]
    assert [step["delay"] for step in definition["sequence"]] == ["0 hours", "24 hours"]
    assert [step["template"] for step in definition["sequence"]] == [
        "welcome_email",
        "value_proposition",
    ]
    assert definition["sequence"][0]["personalization"] == {
        "firstName": "{{lead.firstName}}",
        "companyName": "{{lead.company.name}}",
    }
    assert definition["sequence"][1]["conditions"]["emailOpened"] is True


async def test_draft_status_kept(stack: Stack) -> None:
    campaign = example("campaign.json")
    campaign["status"] = "draft"

    response = await stack.api.post(CAMPAIGNS, json=campaign)

    assert response.status_code == 201, response.text
    assert response.json()["status"] == "draft"
    stored = (await stack.api.get(f"{CAMPAIGNS}/{EXAMPLE_ID}")).json()
    assert stored["status"] == "draft"


def edit(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    """Return a copy of the example campaign with one change applied."""
    campaign = copy.deepcopy(example("campaign.json"))
    change(campaign)
    return campaign


INVALID_CAMPAIGNS = [
    pytest.param(
        lambda c: c["sequence"][0].update(template="no_such_template"),
        [("sequence[0].template", "template_invalid")],
        id="missing-template",
    ),
    pytest.param(
        lambda c: c["sequence"][0].update(channel="sms"),
        [("sequence[0].template", "template_invalid")],
        id="email-template-on-sms",
    ),
    pytest.param(
        lambda c: c["sequence"][0].update(template="../email/welcome_email"),
        [("sequence[0].template", "string_pattern_mismatch")],
        id="template-path-traversal",
    ),
    pytest.param(
        lambda c: c["sequence"][0].update(channel="fax"),
        [("sequence[0].channel", "literal_error")],
        id="unknown-channel",
    ),
    pytest.param(
        lambda c: c["sequence"][1].update(delay="soon"),
        [("sequence[1].delay", "value_error")],
        id="bad-delay",
    ),
    pytest.param(
        lambda c: c["sequence"][1].update(delay="1.5 hours"),
        [("sequence[1].delay", "value_error")],
        id="fractional-delay",
    ),
    pytest.param(
        lambda c: c["sequence"][1].update(delay="366 days"),
        [("sequence[1].delay", "value_error")],
        id="delay-over-a-year",
    ),
    pytest.param(
        lambda c: c["sequence"][1].update(conditions={"emailReplied": True}),
        [("sequence[1].conditions.emailReplied", "extra_forbidden")],
        id="unknown-condition-key",
    ),
    pytest.param(
        lambda c: c["trigger"].update(condition="score >= high"),
        [("trigger.condition", "value_error")],
        id="bad-trigger-condition",
    ),
    pytest.param(
        lambda c: c["trigger"].update(condition="age >= 30"),
        [("trigger.condition", "value_error")],
        id="unknown-trigger-field",
    ),
    pytest.param(
        lambda c: c["trigger"].pop("condition"),
        [("trigger", "value_error")],
        id="score-trigger-no-condition",
    ),
    pytest.param(
        lambda c: c["trigger"].update(type="lead_visited"),
        [("trigger.type", "literal_error")],
        id="unknown-trigger-type",
    ),
    pytest.param(
        lambda c: c["sequence"].reverse(),
        [("sequence", "value_error")],
        id="steps-out-of-order",
    ),
    pytest.param(
        lambda c: c["sequence"][1].update(step=1),
        [("sequence", "value_error")],
        id="repeated-step-number",
    ),
    pytest.param(
        lambda c: c["sequence"][0].update(step=0),
        [("sequence[0].step", "greater_than_equal")],
        id="step-zero",
    ),
    pytest.param(
        lambda c: c.update(sequence=[]),
        [("sequence", "too_short")],
        id="empty-sequence",
    ),
    pytest.param(
        lambda c: c["sequence"][0]["personalization"].update(
            firstName="{{lead.firstName"
        ),
        [("sequence[0].personalization.firstName", "template_invalid")],
        id="broken-personalization",
    ),
    pytest.param(
        lambda c: c.update(status="paused"),
        [("status", "literal_error")],
        id="unknown-status",
    ),
    pytest.param(
        lambda c: c.update(owner="marketing"),
        [("owner", "extra_forbidden")],
        id="unknown-top-level-key",
    ),
]


@pytest.mark.parametrize(("change", "expected"), INVALID_CAMPAIGNS)
async def test_invalid_campaign_422(
    stack: Stack,
    change: Callable[[dict[str, Any]], Any],
    expected: list[tuple[str, str]],
) -> None:
    response = await stack.api.post(CAMPAIGNS, json=edit(change))

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_failed"
    assert error_fields(response) == expected


async def test_missing_template_names_step(stack: Stack) -> None:
    campaign = edit(lambda c: c["sequence"][1].update(template="pricing_followup"))

    response = await stack.api.post(CAMPAIGNS, json=campaign)

    assert response.status_code == 422
    message = response.json()["errors"][0]["message"]
    assert message.startswith("step 2: template 'pricing_followup' not found")


async def test_invalid_campaign_stores_nothing(stack: Stack) -> None:
    campaign = edit(lambda c: c["sequence"][0].update(template="no_such_template"))
    await stack.api.post(CAMPAIGNS, json=campaign)

    assert (await stack.api.get(CAMPAIGNS)).json() == []


async def test_campaign_invalid_json_422(stack: Stack) -> None:
    response = await stack.api.post(
        CAMPAIGNS,
        content=b'{"name": "SME", ',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422
    # The leads route reports the same error at "(body)". A path "[N]" would
    # name an array element, but FastAPI puts a character offset there.
    assert error_fields(response) == [("(body)", "json_invalid")]


@pytest.mark.parametrize(
    "delay",
    [
        "0 hours",
        "24 hours",
        "3 days",
        "90 minutes",
        "30 seconds",
        "2 weeks",
        "1 hour",
        "365 days",
    ],
)
async def test_delay_form_accepted(stack: Stack, delay: str) -> None:
    campaign = edit(lambda c: c["sequence"][1].update(delay=delay))

    response = await stack.api.post(CAMPAIGNS, json=campaign)

    assert response.status_code == 201, response.text
    assert response.json()["definition"]["sequence"][1]["delay"] == delay


async def test_sms_step_accepted(stack: Stack) -> None:
    campaign = edit(
        lambda c: c["sequence"][1].update(channel="sms", template="welcome_sms")
    )

    response = await stack.api.post(CAMPAIGNS, json=campaign)

    assert response.status_code == 201, response.text
    assert response.json()["definition"]["sequence"][1]["channel"] == "sms"


# --- campaigns: read, list, edit -------------------------------------------


async def test_read_campaign_by_id(stack: Stack) -> None:
    created = (await stack.api.post(CAMPAIGNS, json=example("campaign.json"))).json()

    response = await stack.api.get(f"{CAMPAIGNS}/{EXAMPLE_ID}")

    assert response.status_code == 200, response.text
    assert response.json() == created


async def test_same_name_gets_new_id(stack: Stack) -> None:
    first = await stack.api.post(CAMPAIGNS, json=example("campaign.json"))
    second = await stack.api.post(CAMPAIGNS, json=example("campaign.json"))

    assert first.json()["id"] == EXAMPLE_ID
    assert second.status_code == 201, second.text
    assert second.json()["id"] == f"{EXAMPLE_ID}-2"


async def test_list_campaigns_newest_first(stack: Stack) -> None:
    await stack.api.post(CAMPAIGNS, json=example("campaign.json"))
    renamed = edit(lambda c: c.update(name="Enterprise Follow-up"))
    await stack.api.post(CAMPAIGNS, json=renamed)

    response = await stack.api.get(CAMPAIGNS)

    assert response.status_code == 200, response.text
    campaigns = response.json()
    assert [c["id"] for c in campaigns] == ["enterprise-follow-up", EXAMPLE_ID]
    assert [c["version"] for c in campaigns] == [1, 1]
    assert campaigns[0]["name"] == "Enterprise Follow-up"


async def test_put_creates_version_2(stack: Stack) -> None:
    created = (await stack.api.post(CAMPAIGNS, json=example("campaign.json"))).json()
    changed = edit(lambda c: c["sequence"][1].update(delay="48 hours"))
    changed["description"] = "Slower follow-up"

    response = await stack.api.put(f"{CAMPAIGNS}/{EXAMPLE_ID}", json=changed)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == EXAMPLE_ID
    assert body["version"] == 2
    assert body["description"] == "Slower follow-up"
    assert body["definition"]["sequence"][1]["delay"] == "48 hours"

    stored = (await stack.api.get(f"{CAMPAIGNS}/{EXAMPLE_ID}")).json()
    assert stored["version"] == 2
    assert stored["description"] == "Slower follow-up"
    assert stored["definition"]["sequence"][1]["delay"] == "48 hours"
    assert stored["createdAt"] == created["createdAt"]
    updated_at = datetime.fromisoformat(stored["updatedAt"])
    assert updated_at > datetime.fromisoformat(created["updatedAt"])
    listed = (await stack.api.get(CAMPAIGNS)).json()
    assert [(c["id"], c["version"]) for c in listed] == [(EXAMPLE_ID, 2)]


async def test_put_again_creates_version_3(stack: Stack) -> None:
    await stack.api.post(CAMPAIGNS, json=example("campaign.json"))
    await stack.api.put(f"{CAMPAIGNS}/{EXAMPLE_ID}", json=example("campaign.json"))

    response = await stack.api.put(
        f"{CAMPAIGNS}/{EXAMPLE_ID}", json=edit(lambda c: c.update(status="draft"))
    )

    assert response.status_code == 200, response.text
    assert response.json()["version"] == 3
    # An edit never changes the lifecycle; the pause/archive routes do.
    assert response.json()["status"] == "active"


async def test_invalid_put_keeps_version(stack: Stack) -> None:
    await stack.api.post(CAMPAIGNS, json=example("campaign.json"))
    changed = edit(lambda c: c["sequence"][1].update(delay="tomorrow"))

    response = await stack.api.put(f"{CAMPAIGNS}/{EXAMPLE_ID}", json=changed)

    assert response.status_code == 422
    assert error_fields(response) == [("sequence[1].delay", "value_error")]
    stored = (await stack.api.get(f"{CAMPAIGNS}/{EXAMPLE_ID}")).json()
    assert stored["version"] == 1
    assert stored["definition"]["sequence"][1]["delay"] == "24 hours"


async def test_get_unknown_campaign_404(stack: Stack) -> None:
    response = await stack.api.get(f"{CAMPAIGNS}/no-such-campaign")

    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "message": "campaign no-such-campaign not found",
        "errors": [],
    }


async def test_put_unknown_campaign_404(stack: Stack) -> None:
    response = await stack.api.put(
        f"{CAMPAIGNS}/no-such-campaign", json=example("campaign.json")
    )

    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert (await stack.api.get(CAMPAIGNS)).json() == []


# --- scoring ---------------------------------------------------------------


async def test_scoring_example_scores_67(stack: Stack) -> None:
    response = await stack.api.post(SCORING, json=example("scoring_calculate.json"))

    assert response.status_code == 200, response.text
    body = response.json()
    # Industry Technology 15, about 75 employees 8, revenue $5M-$10M 7.
    assert body["dimensions"]["firmographic"] == {"score": 30, "max": 50}
    # 5 visits 5, 2 downloads 8, 8 opens capped at 4, 3 clicks 9.
    assert body["dimensions"]["behavioral"] == {"score": 26, "max": 30}
    # Last activity over 90 days ago 0, 15 activities capped at 6, and
    # engagement score 0.75 times 6, rounded, 5.
    assert body["dimensions"]["engagement"] == {"score": 11, "max": 20}
    assert body["score"] == 67
    assert body["leadId"] == "lead_12345"
    assert body["method"] == "rules"


async def test_scoring_example_invariants(stack: Stack) -> None:
    body = (
        await stack.api.post(SCORING, json=example("scoring_calculate.json"))
    ).json()

    assert 0 <= body["score"] <= 100
    assert set(body["dimensions"]) == {"firmographic", "behavioral", "engagement"}
    for name, dimension in body["dimensions"].items():
        assert 0 <= dimension["score"] <= dimension["max"], name
    assert sum(d["score"] for d in body["dimensions"].values()) == body["score"]


async def test_scoring_reasons_sorted_by_points(stack: Stack) -> None:
    body = (
        await stack.api.post(SCORING, json=example("scoring_calculate.json"))
    ).json()

    points = [abs(reason["points"]) for reason in body["reasons"]]
    assert points == sorted(points, reverse=True)
    assert len(points) == 9


async def test_scoring_reason_fields(stack: Stack) -> None:
    body = (
        await stack.api.post(SCORING, json=example("scoring_calculate.json"))
    ).json()

    for reason in body["reasons"]:
        assert set(reason) == {"criterion", "dimension", "points", "fact"}
        assert reason["dimension"] in body["dimensions"]
        assert isinstance(reason["points"], int | float)
        assert reason["fact"]


async def test_scoring_example_reasons(stack: Stack) -> None:
    body = (
        await stack.api.post(SCORING, json=example("scoring_calculate.json"))
    ).json()

    found = {(r["criterion"], r["dimension"], r["points"]) for r in body["reasons"]}
    assert found == {
        ("industry", "firmographic", 15),
        ("company_size", "firmographic", 8),
        ("revenue", "firmographic", 7),
        ("website_visits", "behavioral", 5),
        ("content_downloads", "behavioral", 8),
        ("email_opens", "behavioral", 4),
        ("email_clicks", "behavioral", 9),
        ("frequency", "engagement", 6),
        ("engagement_score", "engagement", 4.5),
    }
    facts = {r["criterion"]: r["fact"] for r in body["reasons"]}
    assert facts["email_opens"] == "8 email opens (capped)"
    assert facts["industry"] == "industry is Technology"


async def test_scoring_penalty_sorted_by_magnitude(stack: Stack) -> None:
    facts = {"firmographic": {"industry": "Retail", "freeMail": True}}

    body = (await stack.api.post(SCORING, json=facts)).json()

    assert [(r["criterion"], r["points"]) for r in body["reasons"]] == [
        ("industry", 6),
        ("email_type", -5),
    ]
    assert body["dimensions"]["firmographic"]["score"] == 1
    assert body["score"] == 1


async def test_scoring_dimension_floor_zero(stack: Stack) -> None:
    facts = {"firmographic": {"freeMail": True}}

    body = (await stack.api.post(SCORING, json=facts)).json()

    assert body["dimensions"]["firmographic"]["score"] == 0
    assert body["score"] == 0
    assert [(r["criterion"], r["points"]) for r in body["reasons"]] == [
        ("email_type", -5)
    ]


async def test_scoring_maximum_is_100(stack: Stack) -> None:
    facts = {
        "firmographic": {
            "industry": "Technology",
            "size": "500-1000",
            "revenue": "$100M+",
            "budget": "$100K+",
            "timeline": "immediately",
        },
        "behavioral": {
            "websiteVisits": 50,
            "pricingPageViews": 50,
            "contentDownloads": 50,
            "webinarRegistrations": 50,
            "formSubmissions": 50,
            "emailOpens": 50,
            "emailClicks": 50,
            "smsReplies": 50,
        },
        "engagement": {
            "lastActivity": datetime.now(UTC).isoformat(),
            "totalActivities": 50,
            "engagementScore": 1,
        },
    }

    body = (await stack.api.post(SCORING, json=facts)).json()

    assert body["dimensions"] == {
        "firmographic": {"score": 50, "max": 50},
        "behavioral": {"score": 30, "max": 30},
        "engagement": {"score": 20, "max": 20},
    }
    assert body["score"] == 100


async def test_scoring_empty_facts_zero(stack: Stack) -> None:
    response = await stack.api.post(SCORING, json={})

    assert response.status_code == 200, response.text
    assert response.json()["score"] == 0
    assert response.json()["reasons"] == []
    assert response.json()["leadId"] is None


@pytest.mark.parametrize(
    ("facts", "expected"),
    [
        pytest.param(
            {"behavioral": {"websiteVisits": -1}},
            [("behavioral.websiteVisits", "greater_than_equal")],
            id="negative-visits",
        ),
        pytest.param(
            {"behavioral": {"emailOpens": -3, "emailClicks": -1}},
            [
                ("behavioral.emailOpens", "greater_than_equal"),
                ("behavioral.emailClicks", "greater_than_equal"),
            ],
            id="negative-email-counts",
        ),
        pytest.param(
            {"engagement": {"totalActivities": -1}},
            [("engagement.totalActivities", "greater_than_equal")],
            id="negative-activities",
        ),
        pytest.param(
            {"engagement": {"engagementScore": 1.5}},
            [("engagement.engagementScore", "less_than_equal")],
            id="engagement-score-over-1",
        ),
        pytest.param(
            {"behavioral": {"pageViews": 4}},
            [("behavioral.pageViews", "extra_forbidden")],
            id="unknown-behavior-key",
        ),
        pytest.param(
            {"firmographic": {"shoeSize": "42"}},
            [("firmographic.shoeSize", "extra_forbidden")],
            id="unknown-firmographic-key",
        ),
        pytest.param(
            {"intent": {"topic": "automation"}},
            [("intent", "extra_forbidden")],
            id="unknown-top-level-key",
        ),
        pytest.param(
            {"behavioral": {"websiteVisits": "many"}},
            [("behavioral.websiteVisits", "int_parsing")],
            id="text-count",
        ),
    ],
)
async def test_scoring_invalid_facts_422(
    stack: Stack, facts: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    response = await stack.api.post(SCORING, json=facts)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_failed"
    assert error_fields(response) == expected


async def test_scoring_naive_last_activity_422(
    server_errors_as_500: httpx.AsyncClient,
) -> None:
    facts = {"engagement": {"lastActivity": "2026-01-01T10:30:00"}}

    response = await server_errors_as_500.post(SCORING, json=facts)

    # Events and the lead list reject times without a zone the same way.
    assert response.status_code == 422, response.text
    assert error_fields(response) == [("engagement.lastActivity", "timezone_aware")]


# --- behavior events -------------------------------------------------------


async def create_lead(stack: Stack, email: str = "john.smith@company.com") -> str:
    lead = example("lead.json")
    lead["contact"]["email"] = email
    response = await stack.api.post("/api/v1/leads", json=lead)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def stored_events(stack: Stack, lead_id: str) -> list[EngagementEvent]:
    """Return the lead's website events, oldest first."""
    with session_scope(stack.engine) as session:
        return list(
            session.exec(
                select(EngagementEvent)
                .where(EngagementEvent.lead_id == lead_id)
                .where(EngagementEvent.source == "website")
                .order_by(col(EngagementEvent.received_at))
            ).all()
        )


async def test_event_unknown_email_404(stack: Stack) -> None:
    response = await stack.api.post(
        EVENTS, json={"email": "nobody@example.org", "type": "page_view"}
    )

    assert response.status_code == 404, response.text
    body = response.json()
    assert set(body) == {"error", "message", "errors"}
    assert body["error"] == "not_found"


async def test_event_unknown_lead_id_404(stack: Stack) -> None:
    response = await stack.api.post(
        EVENTS, json={"leadId": str(uuid.uuid4()), "type": "page_view"}
    )

    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"


async def test_page_view_by_email_202(stack: Stack) -> None:
    lead_id = await create_lead(stack)

    response = await stack.api.post(
        EVENTS,
        json={
            "email": "John.Smith@COMPANY.com",
            "type": "page_view",
            "url": "https://example.com/features",
            "eventId": "pv-1",
        },
    )

    assert response.status_code == 202, response.text
    body = response.json()
    assert uuid.UUID(body["id"])
    assert body["leadId"] == lead_id
    assert body["type"] == "page_view"
    assert body["duplicate"] is False
    events = stored_events(stack, lead_id)
    assert [(e.id, e.type) for e in events] == [(body["id"], "page_view")]
    assert events[0].data["url"] == "https://example.com/features"


async def test_page_view_by_lead_id_202(stack: Stack) -> None:
    lead_id = await create_lead(stack)

    response = await stack.api.post(
        EVENTS, json={"leadId": lead_id, "type": "webinar_registration"}
    )

    assert response.status_code == 202, response.text
    assert response.json()["leadId"] == lead_id
    assert response.json()["type"] == "webinar_registration"


async def test_repeat_event_id_is_duplicate(stack: Stack) -> None:
    lead_id = await create_lead(stack)
    event = {"email": "john.smith@company.com", "type": "page_view", "eventId": "e-1"}

    first = await stack.api.post(EVENTS, json=event)
    again = await stack.api.post(EVENTS, json=event)

    assert first.status_code == 202, first.text
    assert again.status_code == 202, again.text
    assert again.json()["duplicate"] is True
    assert again.json()["id"] == first.json()["id"]
    assert len(stored_events(stack, lead_id)) == 1


async def test_events_without_id_both_stored(stack: Stack) -> None:
    lead_id = await create_lead(stack)
    event = {"leadId": lead_id, "type": "page_view"}

    first = await stack.api.post(EVENTS, json=event)
    second = await stack.api.post(EVENTS, json=event)

    assert second.json()["duplicate"] is False
    assert second.json()["id"] != first.json()["id"]
    assert len(stored_events(stack, lead_id)) == 2


async def test_concurrent_repeats_stored_once(
    stack: Stack, server_errors_as_500: httpx.AsyncClient
) -> None:
    """Store an event once when a beacon and its retries arrive together.

    The requests race, so a single burst can pass by luck. Five bursts of
    twenty copies, each with its own event id, make such a pass unlikely.
    """
    lead_id = await create_lead(stack)
    bursts: list[list[httpx.Response]] = []
    for burst in range(5):
        event = {"leadId": lead_id, "type": "page_view", "eventId": f"beacon-{burst}"}
        responses = await asyncio.gather(
            *(server_errors_as_500.post(EVENTS, json=event) for _ in range(20))
        )
        bursts.append(list(responses))

    statuses = [response.status_code for burst in bursts for response in burst]
    assert statuses == [202] * 100
    for responses in bursts:
        receipts = [response.json() for response in responses]
        assert [r["duplicate"] for r in receipts].count(False) == 1
        assert len({r["id"] for r in receipts}) == 1
    assert len(stored_events(stack, lead_id)) == 5


async def test_pricing_url_stored_as_pricing(stack: Stack) -> None:
    lead_id = await create_lead(stack)

    response = await stack.api.post(
        EVENTS,
        json={
            "leadId": lead_id,
            "type": "page_view",
            "url": "https://example.com/Pricing?plan=team",
        },
    )

    assert response.status_code == 202, response.text
    assert response.json()["type"] == "pricing_page_view"
    assert [e.type for e in stored_events(stack, lead_id)] == ["pricing_page_view"]


async def test_event_keeps_occurred_at(stack: Stack) -> None:
    lead_id = await create_lead(stack)

    response = await stack.api.post(
        EVENTS,
        json={
            "leadId": lead_id,
            "type": "content_download",
            "occurredAt": "2026-01-05T12:00:00+01:00",
        },
    )

    assert response.status_code == 202, response.text
    events = stored_events(stack, lead_id)
    assert events[0].occurred_at == datetime(2026, 1, 5, 11, 0, tzinfo=UTC)


async def test_naive_occurred_at_422(stack: Stack) -> None:
    lead_id = await create_lead(stack)

    response = await stack.api.post(
        EVENTS,
        json={
            "leadId": lead_id,
            "type": "page_view",
            "occurredAt": "2026-01-05T12:00:00",
        },
    )

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_failed"
    assert stored_events(stack, lead_id) == []
    assert error_fields(response) == [("occurredAt", "timezone_aware")]


async def test_future_occurred_at_422(stack: Stack) -> None:
    lead_id = await create_lead(stack)
    tomorrow = datetime.now(UTC) + timedelta(days=1)

    response = await stack.api.post(
        EVENTS,
        json={
            "leadId": lead_id,
            "type": "page_view",
            "occurredAt": tomorrow.isoformat(),
        },
    )

    assert response.status_code == 422, response.text
    assert stored_events(stack, lead_id) == []


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        pytest.param(
            {"type": "page_view"}, [("(body)", "value_error")], id="no-lead-reference"
        ),
        pytest.param(
            {"email": "john.smith@company.com", "type": "purchase"},
            [("type", "value_error")],
            id="unknown-type",
        ),
        pytest.param(
            {"email": "john.smith@company.com", "type": "page_view", "page": "/"},
            [("page", "extra_forbidden")],
            id="unknown-key",
        ),
    ],
)
async def test_invalid_event_422(
    stack: Stack, event: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    await create_lead(stack)

    response = await stack.api.post(EVENTS, json=event)

    assert response.status_code == 422, response.text
    assert error_fields(response) == expected


async def test_nested_property_422(stack: Stack) -> None:
    await create_lead(stack)
    event = {
        "email": "john.smith@company.com",
        "type": "page_view",
        "properties": {"tags": ["pricing", "faq"]},
    }

    response = await stack.api.post(EVENTS, json=event)

    assert response.status_code == 422, response.text
    paths = {path for path, _type in error_fields(response)}
    assert {path.rsplit(".", 1)[0] for path in paths} == {"properties.tags"}


async def test_download_raises_lead_score(stack: Stack) -> None:
    lead_id = await create_lead(stack)

    async def first_score() -> int | None:
        lead = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
        return lead["score"] if lead["scoredAt"] else None

    # The example lead scores 43 for firmographic fit, 3 of it for a company
    # address. Its capture form adds 3, and recent activity 11: 8 for
    # recency, 1 for one activity in 30 days and 2 for one in 7 days.
    assert await stack.eventually(first_score, message="first scoring") == 57

    response = await stack.api.post(
        EVENTS, json={"leadId": lead_id, "type": "content_download"}
    )
    assert response.status_code == 202, response.text

    async def changed_score() -> int | None:
        lead = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
        return lead["score"] if lead["score"] != 57 else None

    # The download adds 4 behavior points and one more recent activity.
    assert await stack.eventually(changed_score, message="rescoring") == 62
    lead = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
    reasons = {r["criterion"]: r["points"] for r in lead["scoreReasons"]}
    assert reasons["content_downloads"] == 4
