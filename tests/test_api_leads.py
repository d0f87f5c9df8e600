"""Lead routes on the real API: capture (JSON and web forms), read, edit, list.

Every test drives the FastAPI app with the real database and Temporal server
of the `stack` fixture. No campaign exists in these tests, so a lead's
workflow scores it once after capture and then waits. A test that needs known
scores waits for that first workflow scoring and then writes the scores
directly.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from temporalio.service import RPCError

from nurture.db import session_scope
from nurture.models import Lead
from nurture.temporal import lead_workflow_id
from tests.conftest import Stack, example
from workflows.lead import LeadWorkflow

LEADS = "/api/v1/leads"


def error_fields(response: httpx.Response) -> list[tuple[str, str]]:
    """Return the (path, type) pair of each field error in an error body."""
    return [(error["path"], error["type"]) for error in response.json()["errors"]]


def lead_body(email: str | None = None, **sections: Any) -> dict[str, Any]:
    """Build a minimal lead: a contact with this email, plus the given sections."""
    body: dict[str, Any] = {"contact": {"email": email} if email else {}}
    body.update(sections)
    return body


async def create_lead(stack: Stack, body: dict[str, Any]) -> dict[str, Any]:
    response = await stack.api.post(LEADS, json=body)
    assert response.status_code == 201, response.text
    lead: dict[str, Any] = response.json()
    return lead


async def create_scored_leads(stack: Stack, count: int, **sections: Any) -> list[str]:
    """Create leads through the API and wait until each one's first scoring ends.

    After that scoring the lead workflows wait for signals, so tests may then
    write scores, stages and creation times without a workflow overwriting them.
    """
    ids = []
    for index in range(count):
        lead = await create_lead(
            stack, lead_body(f"lead{index}@example.org", **sections)
        )
        ids.append(lead["id"])

    async def all_scored() -> bool:
        for lead_id in ids:
            handle = stack.client.get_workflow_handle_for(
                LeadWorkflow.run, lead_workflow_id(lead_id)
            )
            try:
                state = await handle.query(LeadWorkflow.state)
            except RPCError:
                return False
            if not state.initialized:
                return False
        return True

    await stack.eventually(all_scored, message="first scoring of every lead")
    return ids


def set_columns(stack: Stack, lead_id: str, **columns: Any) -> None:
    with session_scope(stack.engine) as session:
        lead = session.get(Lead, lead_id)
        assert lead is not None
        for name, value in columns.items():
            setattr(lead, name, value)
        session.add(lead)


async def list_ids(stack: Stack, **params: Any) -> list[str]:
    response = await stack.api.get(LEADS, params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# --- capture: JSON ---------------------------------------------------------


async def test_create_example_lead_returns_201(stack: Stack) -> None:
    lead = example("lead.json")
    response = await stack.api.post(LEADS, json=lead)

    assert response.status_code == 201, response.text
    body = response.json()
    assert uuid.UUID(body["id"])
    assert body["duplicate"] is False
    assert body["contact"]["firstName"] == "John"
    assert body["contact"]["lastName"] == "Smith"
    assert body["contact"]["email"] == "john.smith@company.com"
    assert body["company"] == {
        **lead["company"],
        "country": None,
        "growthStage": None,
        "technologies": [],
    }
    assert body["source"] == lead["source"]
    assert body["customFields"] == lead["customFields"]
    assert body["status"] == "active"
    assert body["stage"] == "new"


async def test_example_phone_flagged_unverified(stack: Stack) -> None:
    body = await create_lead(stack, example("lead.json"))

    assert body["contact"]["phone"] == "+15551234567"
    assert body["contact"]["phoneStatus"] == "unverified"


async def test_real_phone_marked_valid(stack: Stack) -> None:
    lead = example("lead.json")
    lead["contact"]["phone"] = "+14155552671"
    body = await create_lead(stack, lead)

    assert body["contact"]["phone"] == "+14155552671"
    assert body["contact"]["phoneStatus"] == "valid"


async def test_national_phone_gets_country_code(stack: Stack) -> None:
    body = await create_lead(stack, {"contact": {"phone": "(415) 555-2671"}})

    assert body["contact"]["phone"] == "+14155552671"
    assert body["contact"]["phoneStatus"] == "valid"
    assert body["contact"]["email"] is None


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            {"contact": {"firstName": "Ada", "email": "  ", "phone": ""}},
            [("contact", "value_error")],
            id="no-email-no-phone",
        ),
        pytest.param(
            {"contact": {"email": "not-an-email"}},
            [("contact.email", "value_error")],
            id="invalid-email",
        ),
        pytest.param(
            {"contact": {"email": "ada@example.org", "phone": "call me maybe"}},
            [("contact.phone", "value_error")],
            id="unparseable-phone",
        ),
        pytest.param(
            {"contact": {"phone": "12"}},
            [("contact.phone", "value_error")],
            id="too-short-phone",
        ),
        pytest.param(
            {"contact": {"email": "ada@example.org", "fax": "+14155552671"}},
            [("contact.fax", "extra_forbidden")],
            id="unknown-contact-key",
        ),
        pytest.param(
            {"contact": {"email": "ada@example.org"}, "notes": "call back"},
            [("notes", "extra_forbidden")],
            id="unknown-top-level-key",
        ),
        pytest.param(
            {
                "contact": {"email": "ada@example.org", "firstName": 5},
                "customFields": ["interest"],
            },
            [("contact.firstName", "string_type"), ("customFields", "dict_type")],
            id="wrong-types",
        ),
        pytest.param({}, [("contact", "missing")], id="no-contact"),
        pytest.param([{"contact": {}}], [("(body)", "model_type")], id="array-body"),
    ],
)
async def test_create_lead_invalid_422(
    stack: Stack, body: Any, expected: list[tuple[str, str]]
) -> None:
    response = await stack.api.post(LEADS, json=body)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_failed"
    assert error_fields(response) == expected


async def test_no_email_no_phone_message(stack: Stack) -> None:
    response = await stack.api.post(LEADS, json={"contact": {"firstName": "Ada"}})

    assert response.status_code == 422
    message = response.json()["errors"][0]["message"]
    assert "contact.email or contact.phone is required" in message


async def test_create_lead_invalid_json_422(stack: Stack) -> None:
    response = await stack.api.post(
        LEADS,
        content=b'{"contact": {"email": "ada@example.org"',
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422
    assert response.json()["error"] == "validation_failed"
    assert error_fields(response) == [("(body)", "json_invalid")]


async def test_rejected_lead_stores_nothing(stack: Stack) -> None:
    await stack.api.post(LEADS, json={"contact": {"email": "not-an-email"}})
    await stack.api.post(LEADS, json={"contact": {"firstName": "Ada"}})

    page = (await stack.api.get(LEADS)).json()
    assert page["total"] == 0
    assert page["items"] == []


# --- capture: web forms ----------------------------------------------------


async def test_form_post_maps_fields(stack: Stack) -> None:
    form = {
        "email": "ada@example.org",
        "firstName": "Ada",
        "lastName": "Lovelace",
        "phone": "+1 415 555 2671",
        "company": "Analytical Engines",
        "industry": "Software",
        "companySize": "11-50",
        "revenue": "$1M-$5M",
        "website": "https://analytical.example.org",
        "utm_source": "webinar",
        "utm_campaign": "spring-launch",
        "utm_medium": "email",
        "utm_content": "cta-top",
        "favouriteColour": "green",
        "referrer": "https://news.example.org/",
    }
    response = await stack.api.post(LEADS, data=form)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["contact"] == {
        "firstName": "Ada",
        "lastName": "Lovelace",
        "email": "ada@example.org",
        "phone": "+14155552671",
        "phoneStatus": "valid",
        "timezone": None,
        "jobTitle": None,
    }
    assert body["company"] == {
        "name": "Analytical Engines",
        "industry": "Software",
        "size": "11-50",
        "revenue": "$1M-$5M",
        "website": "https://analytical.example.org",
        "country": None,
        "growthStage": None,
        "technologies": [],
    }
    assert body["source"] == {
        "channel": "webinar",
        "campaign": "spring-launch",
        "medium": "email",
        "content": "cta-top",
    }
    assert body["customFields"] == {
        "favouriteColour": "green",
        "referrer": "https://news.example.org/",
    }


async def test_form_post_snake_case_names(stack: Stack) -> None:
    form = {
        "email": "grace@example.org",
        "first_name": "Grace",
        "last_name": "Hopper",
        "company_name": "Navy",
        "company_size": "1000+",
    }
    response = await stack.api.post(LEADS, data=form)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["contact"]["firstName"] == "Grace"
    assert body["contact"]["lastName"] == "Hopper"
    assert body["company"]["name"] == "Navy"
    assert body["company"]["size"] == "1000+"
    assert body["customFields"] == {}


async def test_multipart_form_post_accepted(stack: Stack) -> None:
    fields = {
        "email": (None, "ada@example.org"),
        "utm_source": (None, "partner"),
        "budget": (None, "$10K-$50K"),
    }
    response = await stack.api.post(LEADS, files=fields)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["contact"]["email"] == "ada@example.org"
    assert body["source"]["channel"] == "partner"
    assert body["customFields"] == {"budget": "$10K-$50K"}


async def test_form_without_contact_422(stack: Stack) -> None:
    response = await stack.api.post(LEADS, data={"firstName": "Ada", "email": ""})

    assert response.status_code == 422
    assert error_fields(response) == [("contact", "value_error")]


async def test_form_invalid_email_422(stack: Stack) -> None:
    response = await stack.api.post(LEADS, data={"email": "ada(at)example.org"})

    assert response.status_code == 422
    assert error_fields(response) == [("contact.email", "value_error")]


# --- duplicates ------------------------------------------------------------


async def test_duplicate_email_merges_lead(stack: Stack) -> None:
    first = await create_lead(stack, example("lead.json"))

    again = {
        "contact": {"email": "JOHN.SMITH@Company.com", "firstName": "Johnny"},
        "company": {"size": "100-200"},
        "customFields": {"timeline": "immediately", "seats": 25},
    }
    response = await stack.api.post(LEADS, json=again)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == first["id"]
    assert body["duplicate"] is True
    assert body["contact"]["firstName"] == "Johnny"
    assert body["contact"]["lastName"] == "Smith"
    assert body["contact"]["phone"] == "+15551234567"
    assert body["company"]["size"] == "100-200"
    assert body["company"]["name"] == "Example Company"
    assert body["customFields"] == {
        "interest": "automation",
        "timeline": "immediately",
        "budget": "$10K-$50K",
        "seats": 25,
    }

    stored = (await stack.api.get(f"{LEADS}/{first['id']}")).json()
    assert stored["contact"]["firstName"] == "Johnny"
    assert stored["company"]["size"] == "100-200"
    assert stored["customFields"] == body["customFields"]
    page = (await stack.api.get(LEADS)).json()
    assert page["total"] == 1


async def test_duplicate_phone_merges_lead(stack: Stack) -> None:
    first = await create_lead(stack, {"contact": {"phone": "+14155552671"}})

    response = await stack.api.post(
        LEADS, json={"contact": {"phone": "(415) 555-2671", "firstName": "Ada"}}
    )

    assert response.status_code == 200, response.text
    assert response.json()["id"] == first["id"]
    assert response.json()["duplicate"] is True
    assert response.json()["contact"]["firstName"] == "Ada"


# --- read ------------------------------------------------------------------


async def test_read_lead_matches_capture(stack: Stack) -> None:
    created = await create_lead(stack, example("lead.json"))

    response = await stack.api.get(f"{LEADS}/{created['id']}")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == created["id"]
    assert body["contact"] == created["contact"]
    assert body["company"] == created["company"]
    assert body["source"] == created["source"]
    assert body["customFields"] == created["customFields"]
    assert body["createdAt"] == created["createdAt"]
    assert body["duplicate"] is None


async def test_read_unknown_lead_404(stack: Stack) -> None:
    lead_id = str(uuid.uuid4())

    response = await stack.api.get(f"{LEADS}/{lead_id}")

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": "not_found",
        "message": f"lead {lead_id} not found",
        "errors": [],
    }


# --- edit ------------------------------------------------------------------


async def test_patch_changes_fields(stack: Stack) -> None:
    created = await create_lead(stack, example("lead.json"))
    change = {
        "contact": {"lastName": "Smythe", "phone": "+14155552671"},
        "company": {"industry": "Financial Services"},
        "customFields": {"seats": 40},
        "status": "closed",
    }

    response = await stack.api.patch(f"{LEADS}/{created['id']}", json=change)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["contact"]["lastName"] == "Smythe"
    assert body["contact"]["firstName"] == "John"
    assert body["contact"]["phone"] == "+14155552671"
    assert body["contact"]["phoneStatus"] == "valid"
    assert body["company"]["industry"] == "Financial Services"
    assert body["company"]["name"] == "Example Company"
    assert body["customFields"] == {**created["customFields"], "seats": 40}
    assert body["status"] == "closed"

    stored = (await stack.api.get(f"{LEADS}/{created['id']}")).json()
    assert stored["contact"]["lastName"] == "Smythe"
    assert stored["company"]["industry"] == "Financial Services"
    assert stored["status"] == "closed"


async def test_patch_email_of_other_409(stack: Stack) -> None:
    john = await create_lead(stack, example("lead.json"))
    ada = await create_lead(stack, lead_body("ada@example.org"))

    response = await stack.api.patch(
        f"{LEADS}/{ada['id']}", json={"contact": {"email": "John.Smith@company.com"}}
    )

    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "conflict"
    assert john["id"] in body["message"]
    assert body["errors"] == []
    stored = (await stack.api.get(f"{LEADS}/{ada['id']}")).json()
    assert stored["contact"]["email"] == "ada@example.org"


async def test_patch_own_email_recased(stack: Stack) -> None:
    john = await create_lead(stack, example("lead.json"))

    response = await stack.api.patch(
        f"{LEADS}/{john['id']}", json={"contact": {"email": "John.Smith@company.com"}}
    )

    assert response.status_code == 200, response.text
    assert response.json()["contact"]["email"] == "John.Smith@company.com"


async def test_patch_bad_status_422(stack: Stack) -> None:
    created = await create_lead(stack, example("lead.json"))

    response = await stack.api.patch(
        f"{LEADS}/{created['id']}", json={"status": "deleted"}
    )

    assert response.status_code == 422
    assert error_fields(response) == [("status", "string_pattern_mismatch")]
    stored = (await stack.api.get(f"{LEADS}/{created['id']}")).json()
    assert stored["status"] == "active"


async def test_patch_invalid_email_422(stack: Stack) -> None:
    created = await create_lead(stack, example("lead.json"))

    response = await stack.api.patch(
        f"{LEADS}/{created['id']}",
        json={"contact": {"email": "john@"}, "priority": "high"},
    )

    assert response.status_code == 422
    assert error_fields(response) == [
        ("contact.email", "value_error"),
        ("priority", "extra_forbidden"),
    ]


async def test_patch_unknown_lead_404(stack: Stack) -> None:
    lead_id = str(uuid.uuid4())

    response = await stack.api.patch(f"{LEADS}/{lead_id}", json={"status": "closed"})

    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "message": f"lead {lead_id} not found",
        "errors": [],
    }


# --- list ------------------------------------------------------------------


async def test_list_filters_by_score(stack: Stack) -> None:
    low, middle, high = await create_scored_leads(stack, 3)
    set_columns(stack, low, score=10)
    set_columns(stack, middle, score=40)
    set_columns(stack, high, score=70)

    at_least_40 = await stack.api.get(LEADS, params={"score[gte]": 40})
    assert at_least_40.status_code == 200, at_least_40.text
    assert {item["id"] for item in at_least_40.json()["items"]} == {middle, high}
    assert at_least_40.json()["total"] == 2

    below_40 = await stack.api.get(LEADS, params={"score[lt]": 40})
    assert [item["id"] for item in below_40.json()["items"]] == [low]
    assert below_40.json()["total"] == 1

    between = await list_ids(stack, **{"score[gte]": 10, "score[lt]": 70})
    assert set(between) == {low, middle}
    assert await list_ids(stack, **{"score[gt]": 40}) == [high]
    assert await list_ids(stack, **{"score[lte]": 10}) == [low]
    assert await list_ids(stack, score=40) == [middle]


async def test_list_sorts_by_score(stack: Stack) -> None:
    low, middle, high = await create_scored_leads(stack, 3)
    set_columns(stack, middle, score=40)
    set_columns(stack, high, score=70)
    set_columns(stack, low, score=10)

    assert await list_ids(stack, sort="score") == [low, middle, high]
    assert await list_ids(stack, sort="-score") == [high, middle, low]


async def test_list_filters_by_status(stack: Stack) -> None:
    open_lead = await create_lead(stack, lead_body("open@example.org"))
    closed_lead = await create_lead(stack, lead_body("closed@example.org"))
    patched = await stack.api.patch(
        f"{LEADS}/{closed_lead['id']}", json={"status": "closed"}
    )
    assert patched.status_code == 200, patched.text

    assert await list_ids(stack, status="closed") == [closed_lead["id"]]
    assert await list_ids(stack, status="active") == [open_lead["id"]]
    assert await list_ids(stack, status="bounced") == []


async def test_list_filters_by_stage(stack: Stack) -> None:
    new, qualified = await create_scored_leads(stack, 2)
    set_columns(stack, qualified, stage="mql")

    assert await list_ids(stack, stage="mql") == [qualified]
    assert await list_ids(stack, stage="new") == [new]


async def test_list_filters_by_source(stack: Stack) -> None:
    website = await create_lead(
        stack, lead_body("web@example.org", source={"channel": "website"})
    )
    partner = await create_lead(
        stack, lead_body("partner@example.org", source={"channel": "partner"})
    )
    await create_lead(stack, lead_body("unknown@example.org"))

    assert await list_ids(stack, source="website") == [website["id"]]
    assert await list_ids(stack, source="partner") == [partner["id"]]


async def test_list_created_at_timezone(stack: Stack) -> None:
    early, middle, late = await create_scored_leads(stack, 3)
    set_columns(stack, early, created_at=datetime(2026, 1, 1, 22, 30, tzinfo=UTC))
    set_columns(stack, middle, created_at=datetime(2026, 1, 2, 0, 0, tzinfo=UTC))
    set_columns(stack, late, created_at=datetime(2026, 1, 3, 0, 0, tzinfo=UTC))

    # 01:00 at UTC+2 is 23:00 UTC the day before, which is after early and
    # before middle.
    since = await list_ids(stack, **{"createdAt[gte]": "2026-01-02T01:00:00+02:00"})
    assert set(since) == {middle, late}

    # 00:00 at UTC-1 is 01:00 UTC, which is after middle.
    before = await list_ids(stack, **{"createdAt[lt]": "2026-01-02T00:00:00-01:00"})
    assert set(before) == {early, middle}

    exact = await list_ids(stack, **{"createdAt[gte]": "2026-01-02T00:00:00Z"})
    assert set(exact) == {middle, late}


async def test_list_default_newest_first(stack: Stack) -> None:
    early, middle, late = await create_scored_leads(stack, 3)
    set_columns(stack, middle, created_at=datetime(2026, 2, 1, tzinfo=UTC))
    set_columns(stack, early, created_at=datetime(2026, 1, 1, tzinfo=UTC))
    set_columns(stack, late, created_at=datetime(2026, 3, 1, tzinfo=UTC))

    response = await stack.api.get(LEADS)

    page = response.json()
    assert [item["id"] for item in page["items"]] == [late, middle, early]
    assert page["limit"] == 50
    assert page["offset"] == 0
    assert await list_ids(stack, sort="createdAt") == [early, middle, late]


async def test_list_pages_with_total(stack: Stack) -> None:
    ids = await create_scored_leads(stack, 5)
    for lead_id in ids:
        set_columns(stack, lead_id, score=30)

    seen: list[str] = []
    for offset, expected_size in ((0, 2), (2, 2), (4, 1)):
        response = await stack.api.get(
            LEADS, params={"sort": "score", "limit": 2, "offset": offset}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) == expected_size
        assert page["total"] == 5
        assert page["limit"] == 2
        assert page["offset"] == offset
        seen += [item["id"] for item in page["items"]]

    # Equal scores fall back to the lead id, so pages never overlap.
    assert seen == sorted(ids)
    beyond = (await stack.api.get(LEADS, params={"offset": 10})).json()
    assert beyond["items"] == []
    assert beyond["total"] == 5


async def test_list_total_counts_filter(stack: Stack) -> None:
    ids = await create_scored_leads(stack, 4)
    for lead_id in ids[:3]:
        set_columns(stack, lead_id, score=80)

    response = await stack.api.get(LEADS, params={"score[gte]": 75, "limit": 1})

    page = response.json()
    assert page["total"] == 3
    assert len(page["items"]) == 1


async def test_list_max_limit_accepted(stack: Stack) -> None:
    response = await stack.api.get(LEADS, params={"limit": 200})

    assert response.status_code == 200, response.text
    assert response.json()["limit"] == 200


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        pytest.param({"colour": "red"}, [("colour", "unknown_parameter")], id="colour"),
        pytest.param(
            {"score[gtee]": "5"}, [("score[gtee]", "unknown_parameter")], id="typo"
        ),
        pytest.param(
            {"page": "2", "per_page": "10"},
            [("page", "unknown_parameter"), ("per_page", "unknown_parameter")],
            id="two-unknown",
        ),
        pytest.param({"limit": "0"}, [("limit", "greater_than_equal")], id="limit-0"),
        pytest.param({"limit": "500"}, [("limit", "less_than_equal")], id="limit-500"),
        pytest.param(
            {"offset": "-1"}, [("offset", "greater_than_equal")], id="offset-negative"
        ),
        pytest.param({"sort": "name"}, [("sort", "literal_error")], id="bad-sort"),
        pytest.param(
            {"score[gte]": "high"}, [("score[gte]", "int_parsing")], id="score-text"
        ),
        pytest.param(
            {"createdAt[gte]": "yesterday"},
            [("createdAt[gte]", "datetime_from_date_parsing")],
            id="created-text",
        ),
    ],
)
async def test_list_bad_query_422(
    stack: Stack, params: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    response = await stack.api.get(LEADS, params=params)

    assert response.status_code == 422, response.text
    assert response.json()["error"] == "validation_failed"
    assert error_fields(response) == expected


async def test_list_naive_created_at_422(stack: Stack) -> None:
    response = await stack.api.get(LEADS, params={"createdAt[gte]": "2026-01-01T00:00"})

    assert response.status_code == 422
    # The path names the parameter, as for every other bad query parameter.
    assert error_fields(response) == [("createdAt[gte]", "timezone_aware")]
