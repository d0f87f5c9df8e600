"""Enrichment and CRM adapters against fake outside services on 127.0.0.1.

The fake company lookup API returns Clearbit's Company API shape, and the fake
HubSpot checks requests the way HubSpot's CRM API documents them.
"""

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment

from activities.leads import LeadActivities
from activities.providers import CrmTaskSender, Outgoing, ProviderError
from nurture.config import Settings
from nurture.contracts import EnrichLeadInput
from nurture.crm import (
    DEFAULT_HUBSPOT_MAPPING,
    CrmError,
    CrmSkipped,
    HubSpotCrmClient,
    HubSpotTaskSender,
    crm_task_sender_for,
    hubspot_properties,
    parse_field_mapping,
    task_marker,
)
from nurture.db import session_scope
from nurture.enrichment import (
    CompanyLookup,
    HttpCompanyEnricher,
    company_facts,
    enrich,
    fill_lead_columns,
    lookup_domain,
)
from nurture.models import EnrichmentCacheEntry, Lead
from nurture.temporal import lead_workflow_id
from tests.conftest import Stack, StackFactory
from tests.fakes import Answer, FakeEnrichment, FakeHubSpot, FakeServer
from tests.test_end_to_end import create_lead

# A company as Clearbit's Company API returns it (the fields nurture reads,
# and a few it ignores).
ACME = {
    "id": "027b0d40-016c-40ea-8925-a076fa640992",
    "name": "Acme Analytics",
    "legalName": "Acme Analytics, Inc.",
    "domain": "acme-analytics.com",
    "category": {
        "sector": "Information Technology",
        "industryGroup": "Software & Services",
        "industry": "Internet Software & Services",
        "subIndustry": "Internet Software & Services",
    },
    "geo": {
        "city": "Austin",
        "state": "Texas",
        "country": "United States",
        "countryCode": "US",
    },
    "metrics": {
        "employees": 180,
        "employeesRange": "51-250",
        "annualRevenue": None,
        "estimatedAnnualRevenue": "$10M-$50M",
        "raised": 25_000_000,
    },
    "tech": ["salesforce", "hubspot", "aws"],
    "type": "private",
    "foundedYear": 2014,
}
ACME_LEAD = {"email": "dana.lee@acme-analytics.com", "first_name": "Dana"}


@pytest.fixture
def fake_enrichment() -> Iterator[FakeEnrichment]:
    server = FakeEnrichment()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fake_hubspot() -> Iterator[FakeHubSpot]:
    server = FakeHubSpot()
    server.start()
    yield server
    server.stop()


def make_enricher(
    engine: sa.Engine, fake: FakeEnrichment, **options: Any
) -> HttpCompanyEnricher:
    values: dict[str, Any] = {
        "timeout_seconds": 0.5,
        "retries": 2,
        "cache_hours": 1.0,
        "backoff_seconds": 0.01,
    }
    values.update(options)
    return HttpCompanyEnricher(engine, fake.lookup_url, fake.api_key, **values)


def add_lead(engine: sa.Engine, **columns: Any) -> str:
    email = columns.get("email")
    if email:
        columns.setdefault("email_normalized", email.lower())
    with session_scope(engine) as session:
        lead = Lead(**columns)
        session.add(lead)
        session.flush()
        return lead.id


def get_lead(engine: sa.Engine, lead_id: str) -> Lead:
    with session_scope(engine) as session:
        lead = session.get(Lead, lead_id)
        assert lead is not None
        return lead


def hubspot_client(fake: FakeHubSpot, mapping: str = "") -> HubSpotCrmClient:
    return HubSpotCrmClient(fake.token, fake.url, parse_field_mapping(mapping))


def task_message(lead_id: str, message_id: str = "handoff-1") -> Outgoing:
    return Outgoing(
        message_id=message_id,
        lead_id=lead_id,
        campaign_id=None,
        template="call_hot_lead",
        to="sales",
        subject="Call Dana at Acme Analytics",
        text="Dana scored 72 and is in stage mql.",
        html=None,
    )


def stopped_server_url() -> str:
    server = FakeServer().start()
    url = server.url
    server.stop()
    return url


# --- mapping the provider's company JSON --------------------------------------


def test_company_facts_clearbit_shape() -> None:
    facts = company_facts(ACME)
    assert facts.name == "Acme Analytics"
    assert facts.industry == "Internet Software & Services"
    assert facts.employees == 180
    assert facts.employees_range == "51-250"
    assert facts.revenue_usd == 30_000_000
    assert facts.revenue_range == "$10M-$50M"
    assert facts.country == "US"
    assert facts.technologies == ["salesforce", "hubspot", "aws"]
    assert facts.growth_stage is None


def test_company_facts_fallbacks_and_bad_types() -> None:
    facts = company_facts(
        {
            "name": "  ",
            "category": {"industry": None, "sector": "Financials"},
            "metrics": {"employees": "many", "employeesRange": "1K-5K"},
            "geo": "Berlin",
            "tech": "salesforce",
            "type": "public",
        }
    )
    assert facts.name is None
    assert facts.industry == "Financials"
    assert facts.employees == 3000
    assert facts.country is None
    assert facts.technologies == []
    assert facts.growth_stage == "public"


def test_company_facts_exact_revenue_country() -> None:
    facts = company_facts(
        {"metrics": {"annualRevenue": 12_500_000}, "geo": {"country": "Germany"}}
    )
    assert facts.revenue_usd == 12_500_000
    assert facts.country == "Germany"


@pytest.mark.parametrize(
    ("lead", "domain"),
    [
        (
            {"email": "a@acme.io", "company_website": "https://www.acme.com/x"},
            "acme.com",
        ),
        ({"email": "a@acme.io"}, "acme.io"),
        ({"email": "a@gmail.com"}, None),
        ({"email": "a@gmail.com", "company_website": "acme.com:8080"}, "acme.com"),
        ({"company_website": "gmail.com"}, None),
        ({"phone": "+15551234567"}, None),
    ],
)
def test_lookup_domain_choice(lead: dict[str, Any], domain: str | None) -> None:
    assert lookup_domain(enrich(lead)) == domain


# --- the HTTP company lookup ----------------------------------------------------


def test_lookup_sends_domain_and_key(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    fake_enrichment.companies["acme-analytics.com"] = ACME
    result = make_enricher(engine, fake_enrichment).lookup(ACME_LEAD)

    assert result is not None
    assert result.status == "found"
    assert result.cached is False
    assert result.company is not None
    assert result.company.name == "Acme Analytics"
    (request,) = fake_enrichment.requests
    assert request.method == "GET"
    assert request.path == "/v2/companies/find?domain=acme-analytics.com"
    assert request.headers["Authorization"] == f"Bearer {fake_enrichment.api_key}"


def test_lookup_cache_hit_makes_no_call(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    fake_enrichment.companies["acme-analytics.com"] = ACME
    enricher = make_enricher(engine, fake_enrichment)
    first = enricher.lookup(ACME_LEAD)
    second = enricher.lookup({"email": "sam@acme-analytics.com"})

    assert first is not None and second is not None
    assert len(fake_enrichment.requests) == 1
    assert second.cached is True
    assert second.status == "found"
    assert second.company == first.company
    with session_scope(engine) as session:
        entry = session.get(EnrichmentCacheEntry, "acme-analytics.com")
        assert entry is not None
        assert entry.provider == "http"
        assert timedelta(minutes=59) < entry.expires_at - entry.fetched_at
        assert entry.expires_at - entry.fetched_at <= timedelta(hours=1)


def test_lookup_404_is_cached(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    enricher = make_enricher(engine, fake_enrichment)
    first = enricher.lookup({"email": "x@unknown-startup.io"})
    second = enricher.lookup({"email": "y@unknown-startup.io"})

    assert first is not None and second is not None
    assert first.status == "not_found"
    assert second.status == "not_found"
    assert second.cached is True
    assert fake_enrichment.lookups() == ["unknown-startup.io"]


def test_lookup_expired_cache_asks_again(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    fake_enrichment.companies["acme-analytics.com"] = ACME
    enricher = make_enricher(engine, fake_enrichment)
    enricher.lookup(ACME_LEAD)
    with session_scope(engine) as session:
        entry = session.get(EnrichmentCacheEntry, "acme-analytics.com")
        assert entry is not None
        entry.expires_at = datetime.now(UTC) - timedelta(seconds=1)
        session.add(entry)

    again = enricher.lookup(ACME_LEAD)

    assert again is not None
    assert again.cached is False
    assert len(fake_enrichment.requests) == 2


def test_lookup_zero_cache_hours_stores_nothing(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    enricher = make_enricher(engine, fake_enrichment, cache_hours=0)
    enricher.lookup(ACME_LEAD)
    enricher.lookup(ACME_LEAD)

    assert len(fake_enrichment.requests) == 2


def test_lookup_retries_5xx_then_succeeds(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    fake_enrichment.companies["acme-analytics.com"] = ACME
    fake_enrichment.script(
        Answer(503, {"error": {"type": "unavailable"}}),
        Answer(502, None),
    )
    result = make_enricher(engine, fake_enrichment).lookup(ACME_LEAD)

    assert result is not None
    assert result.status == "found"
    assert len(fake_enrichment.requests) == 3


def test_lookup_honours_retry_after(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    fake_enrichment.companies["acme-analytics.com"] = ACME
    fake_enrichment.script(Answer(429, {"error": {}}, {"Retry-After": "1"}))
    started = time.monotonic()
    result = make_enricher(engine, fake_enrichment).lookup(ACME_LEAD)
    elapsed = time.monotonic() - started

    assert result is not None
    assert result.status == "found"
    assert elapsed >= 0.95
    assert len(fake_enrichment.requests) == 2


def test_lookup_retry_after_past_budget(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    fake_enrichment.script(Answer(429, {"error": {}}, {"Retry-After": "120"}))
    started = time.monotonic()
    result = make_enricher(engine, fake_enrichment).lookup(ACME_LEAD)

    assert time.monotonic() - started < 5
    assert result is not None
    assert result.status == "failed"
    assert result.error is not None
    assert "HTTP 429" in result.error
    assert "budget" in result.error
    assert len(fake_enrichment.requests) == 1


def test_lookup_timeouts_fail_after_retries(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    fake_enrichment.companies["acme-analytics.com"] = ACME
    fake_enrichment.delays.extend([1.0, 1.0, 1.0])
    enricher = make_enricher(engine, fake_enrichment, timeout_seconds=0.2)
    result = enricher.lookup(ACME_LEAD)

    assert result is not None
    assert result.status == "failed"
    assert result.error is not None
    assert "timed out" in result.error
    assert "3 attempts" in result.error
    assert len(fake_enrichment.requests) == 3
    # A failure is not cached: the next lookup sends a request and finds it.
    time.sleep(1.0)
    again = enricher.lookup(ACME_LEAD)
    assert again is not None
    assert again.status == "found"
    assert len(fake_enrichment.requests) == 4


def test_lookup_no_retry_on_4xx(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    enricher = HttpCompanyEnricher(
        engine, fake_enrichment.lookup_url, "wrong-key", backoff_seconds=0.01
    )
    result = enricher.lookup(ACME_LEAD)

    assert result is not None
    assert result.status == "failed"
    assert result.error is not None
    assert result.error.startswith("HTTP 401")
    assert len(fake_enrichment.requests) == 1
    with session_scope(engine) as session:
        assert session.get(EnrichmentCacheEntry, "acme-analytics.com") is None


def test_lookup_provider_down(engine: sa.Engine) -> None:
    enricher = HttpCompanyEnricher(
        engine,
        f"{stopped_server_url()}/v2/companies/find",
        "key",
        retries=1,
        backoff_seconds=0.01,
    )
    result = enricher.lookup(ACME_LEAD)

    assert result is not None
    assert result.status == "failed"
    assert result.error is not None
    assert "unreachable" in result.error


def test_lookup_skips_free_mail(
    engine: sa.Engine, fake_enrichment: FakeEnrichment
) -> None:
    result = make_enricher(engine, fake_enrichment).lookup({"email": "d@gmail.com"})

    assert result is None
    assert fake_enrichment.requests == []


# --- merging a lookup into the lead -------------------------------------------


def found(domain: str = "acme-analytics.com") -> CompanyLookup:
    return CompanyLookup(
        provider="http",
        domain=domain,
        status="found",
        company=company_facts(ACME),
        fetched_at="2026-01-05T10:00:00+00:00",
    )


def test_enrich_merges_lookup_over_offline() -> None:
    lead = {**ACME_LEAD, "company_industry": "Retail", "company_size": "10"}
    result = enrich(lead, found())

    assert result.email_domain == "acme-analytics.com"
    assert result.industry == "Technology"
    assert result.employees == 180
    assert result.size_band == "51-200"
    assert result.revenue_usd == 30_000_000
    assert result.country == "US"
    assert result.company_name == "Acme Analytics"
    assert result.sources == {
        "company_name": "http",
        "industry": "http",
        "employees": "http",
        "size_band": "http",
        "revenue_usd": "http",
        "country": "http",
        "technologies": "http",
    }
    assert result.lookup is not None
    assert result.lookup.status == "found"


def test_enrich_failed_lookup_keeps_offline_facts() -> None:
    lookup = CompanyLookup(
        provider="http",
        domain="acme-analytics.com",
        status="failed",
        error="HTTP 503 (3 attempts)",
    )
    result = enrich({**ACME_LEAD, "company_industry": "Retail"}, lookup)

    assert result.industry == "Retail"
    assert result.sources == {}
    assert result.lookup == lookup


def test_fill_columns_keeps_what_lead_gave() -> None:
    lead = Lead(
        email="dana.lee@acme-analytics.com",
        company_industry="Retail",
        company_technologies=[],
    )
    enrichment = enrich(lead.model_dump(), found())
    changed = fill_lead_columns(lead, enrichment)

    assert lead.company_industry == "Retail"
    assert lead.company_name == "Acme Analytics"
    assert lead.company_size == "51-250"
    assert lead.company_revenue == "$10M-$50M"
    assert lead.company_country == "US"
    assert lead.company_technologies == ["salesforce", "hubspot", "aws"]
    assert lead.company_growth_stage is None
    assert sorted(changed) == [
        "company_country",
        "company_name",
        "company_revenue",
        "company_size",
        "company_technologies",
    ]
    assert "company_industry" not in enrichment.filled_columns
    assert enrichment.filled_columns["company_country"] == "US"


def test_fill_columns_replaces_only_own_values() -> None:
    lead = Lead(email="dana.lee@acme-analytics.com")
    first = enrich(lead.model_dump(), found())
    fill_lead_columns(lead, first)
    lead.enrichment = first.model_dump()
    # The lead edits one filled column; the company later moves country.
    lead.company_size = "300"
    moved = found()
    assert moved.company is not None
    moved.company.country = "CA"
    moved.company.employees_range = "251-1K"

    second = enrich(lead.model_dump(), moved)
    fill_lead_columns(lead, second)

    assert lead.company_country == "CA"
    assert lead.company_size == "300"
    assert "company_size" not in second.filled_columns


def test_offline_reenrich_keeps_stored_lookup() -> None:
    lead = Lead(email="dana.lee@acme-analytics.com")
    stored = enrich(lead.model_dump(), found())
    lead.enrichment = stored.model_dump()

    again = enrich(lead.model_dump())
    lead.email = "dana@other.example"
    moved = enrich(lead.model_dump())

    assert again.industry == "Technology"
    assert again.sources["industry"] == "http"
    assert again.lookup == stored.lookup
    assert moved.lookup is None
    assert moved.industry is None
    assert moved.sources == {}


def test_enrich_activity_provider_down(engine: sa.Engine, database_url: str) -> None:
    lead_id = add_lead(engine, **ACME_LEAD, company_industry="Retail")
    settings = Settings(
        database_url=database_url,
        enrichment_provider="http",
        enrichment_url=f"{stopped_server_url()}/v2/companies/find",
        enrichment_retries=1,
        enrichment_timeout_seconds=0.5,
    )
    activities = LeadActivities(engine, settings)

    ActivityEnvironment().run(activities.enrich_lead, EnrichLeadInput(lead_id=lead_id))

    lead = get_lead(engine, lead_id)
    assert lead.enrichment["email_domain"] == "acme-analytics.com"
    assert lead.enrichment["industry"] == "Retail"
    assert lead.enrichment["lookup"]["status"] == "failed"
    assert "unreachable" in lead.enrichment["lookup"]["error"]
    assert lead.company_country is None


# --- HubSpot property mapping ---------------------------------------------------


def test_field_mapping_merges_over_defaults() -> None:
    mapping = parse_field_mapping(
        '{"jobtitle": null, "hs_lead_status": "custom_fields.status",'
        ' "nurture_fit": "enrichment.size_band"}'
    )

    assert "jobtitle" not in mapping
    assert mapping["hs_lead_status"] == "custom_fields.status"
    assert mapping["nurture_fit"] == "enrichment.size_band"
    assert mapping["email"] == "email"
    assert parse_field_mapping("") == DEFAULT_HUBSPOT_MAPPING


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('["email"]', "must be a JSON object"),
        ('{"firstname": "given_name"}', "'given_name', which is not a lead field"),
        ('{"firstname": 3}', "which is not a lead field"),
        ('{"x": "custom_fields."}', "which is not a lead field"),
    ],
)
def test_field_mapping_rejects_invalid(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_field_mapping(text)


def test_hubspot_properties_from_lead() -> None:
    lead = Lead(
        email="Dana.Lee@acme-analytics.com",
        first_name="Dana",
        last_name=None,
        stage="mql",
        score=72,
        company_technologies=["salesforce", "aws"],
        custom_fields={"status": "OPEN"},
    )
    mapping = parse_field_mapping(
        '{"hs_lead_status": "custom_fields.status", "tools": "company_technologies"}'
    )

    properties = hubspot_properties(lead, mapping)

    assert properties == {
        "email": "Dana.Lee@acme-analytics.com",
        "firstname": "Dana",
        "lifecyclestage": "marketingqualifiedlead",
        "nurture_score": "72",
        "hs_lead_status": "OPEN",
        "tools": "salesforce;aws",
    }


# --- HubSpot contacts -----------------------------------------------------------


def test_upsert_contact_by_email_then_by_id(fake_hubspot: FakeHubSpot) -> None:
    client = hubspot_client(fake_hubspot)
    lead = Lead(
        email="Dana.Lee@Acme-Analytics.com",
        email_normalized="dana.lee@acme-analytics.com",
        first_name="Dana",
        stage="new",
        score=40,
    )

    contact_id = client.upsert_contact(lead, "stage changed")
    lead.crm_id = contact_id
    lead.stage = "mql"
    again = client.upsert_contact(lead, "stage changed")

    assert contact_id is not None
    assert again == contact_id
    (upsert,) = fake_hubspot.calls("POST", "/crm/v3/objects/contacts/batch/upsert")
    body = upsert.json()
    assert body["inputs"][0]["idProperty"] == "email"
    assert body["inputs"][0]["id"] == "dana.lee@acme-analytics.com"
    assert body["inputs"][0]["properties"]["lifecyclestage"] == "lead"
    assert upsert.headers["Authorization"] == f"Bearer {fake_hubspot.token}"
    (update,) = fake_hubspot.calls("PATCH", "/crm/v3/objects/contacts/")
    assert update.path == f"/crm/v3/objects/contacts/{contact_id}"
    assert update.json()["properties"]["lifecyclestage"] == "marketingqualifiedlead"
    assert len(fake_hubspot.contacts) == 1
    contact = fake_hubspot.contacts[contact_id]
    assert contact["properties"]["lifecyclestage"] == "marketingqualifiedlead"


def test_upsert_contact_after_contact_deleted(fake_hubspot: FakeHubSpot) -> None:
    client = hubspot_client(fake_hubspot)
    lead = Lead(email="dana.lee@acme-analytics.com", crm_id="424242")

    contact_id = client.upsert_contact(lead, "stage changed")

    assert contact_id is not None
    assert contact_id != "424242"
    assert len(fake_hubspot.calls("PATCH", "/crm/v3/objects/contacts/")) == 1
    assert len(fake_hubspot.calls("POST", "/crm/v3/objects/contacts/batch/upsert")) == 1
    assert list(fake_hubspot.contacts) == [contact_id]


def test_upsert_contact_skips_lead_without_email(fake_hubspot: FakeHubSpot) -> None:
    with pytest.raises(CrmSkipped, match="no email address"):
        hubspot_client(fake_hubspot).upsert_contact(
            Lead(phone="+15551234567"), "stage changed"
        )
    assert fake_hubspot.requests == []


@pytest.mark.parametrize(
    ("response", "retry_after"),
    [
        (Answer(429, {"status": "error"}, {"Retry-After": "7"}), 7.0),
        (
            Answer(
                429,
                {"status": "error", "policyName": "TEN_SECONDLY_ROLLING"},
                {
                    "X-HubSpot-RateLimit-Remaining": "0",
                    "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
                },
            ),
            10.0,
        ),
        (
            Answer(
                429,
                {"status": "error"},
                {"X-HubSpot-RateLimit-Secondly-Remaining": "0"},
            ),
            1.0,
        ),
        (Answer(502, None), None),
    ],
)
def test_hubspot_retryable_errors(
    fake_hubspot: FakeHubSpot, response: Answer, retry_after: float | None
) -> None:
    fake_hubspot.script(response)
    with pytest.raises(CrmError) as raised:
        hubspot_client(fake_hubspot).upsert_contact(
            Lead(email="dana@acme-analytics.com"), "stage changed"
        )

    assert raised.value.retryable is True
    assert raised.value.status == response.status
    assert raised.value.retry_after_seconds == retry_after


def test_hubspot_400_is_not_retryable(fake_hubspot: FakeHubSpot) -> None:
    client = hubspot_client(fake_hubspot, '{"favorite_color": "first_name"}')
    with pytest.raises(CrmError) as raised:
        client.upsert_contact(
            Lead(email="dana@acme-analytics.com", first_name="Dana"), "stage changed"
        )

    assert raised.value.retryable is False
    assert raised.value.status == 400
    assert 'Property \\"favorite_color\\" does not exist' in str(raised.value)
    assert "VALIDATION_ERROR" in str(raised.value)
    assert fake_hubspot.contacts == {}


def test_hubspot_unreachable_is_retryable() -> None:
    client = HubSpotCrmClient("token", stopped_server_url(), DEFAULT_HUBSPOT_MAPPING)
    with pytest.raises(CrmError) as raised:
        client.upsert_contact(Lead(email="dana@acme-analytics.com"), "stage changed")

    assert raised.value.retryable is True
    assert "unreachable" in str(raised.value)


# --- HubSpot sales tasks ----------------------------------------------------------


def test_task_sender_creates_task_once(
    engine: sa.Engine, fake_hubspot: FakeHubSpot
) -> None:
    lead_id = add_lead(engine, **ACME_LEAD, stage="mql", score=72)
    sender = HubSpotTaskSender(hubspot_client(fake_hubspot), engine)

    task_id = sender.send(task_message(lead_id))
    again = sender.send(task_message(lead_id))

    contact_id = get_lead(engine, lead_id).crm_id
    assert contact_id is not None
    assert again == task_id
    (task,) = fake_hubspot.tasks_of(contact_id)
    assert task["id"] == task_id
    properties = task["properties"]
    assert properties["hs_task_subject"] == "Call Dana at Acme Analytics"
    assert properties["hs_task_body"].endswith(task_marker("handoff-1"))
    assert properties["hs_task_type"] == "CALL"
    assert properties["hs_task_status"] == "NOT_STARTED"
    (create,) = fake_hubspot.calls("POST", "/crm/v3/objects/tasks")
    assert create.json()["associations"] == [
        {
            "to": {"id": contact_id},
            "types": [
                {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 204}
            ],
        }
    ]
    assert len(fake_hubspot.calls("POST", "/crm/v3/objects/contacts/batch/upsert")) == 1
    assert sender.find_sent(task_message(lead_id), datetime.now(UTC)) == task_id


def test_task_sender_lost_response_no_duplicate(
    engine: sa.Engine, fake_hubspot: FakeHubSpot
) -> None:
    lead_id = add_lead(engine, **ACME_LEAD)
    sender = HubSpotTaskSender(hubspot_client(fake_hubspot), engine)
    sender.send(task_message(lead_id, "handoff-1"))
    fake_hubspot.fail_after_commit = 1

    with pytest.raises(ProviderError) as raised:
        sender.send(task_message(lead_id, "step-2"))
    retried = sender.send(task_message(lead_id, "step-2"))

    assert raised.value.permanent is False
    contact_id = get_lead(engine, lead_id).crm_id
    assert contact_id is not None
    tasks = fake_hubspot.tasks_of(contact_id)
    assert len(tasks) == 2
    assert tasks[1]["id"] == retried
    assert len(fake_hubspot.calls("POST", "/crm/v3/objects/tasks")) == 2


def test_task_sender_lead_without_email_is_permanent(
    engine: sa.Engine, fake_hubspot: FakeHubSpot
) -> None:
    lead_id = add_lead(engine, phone="+15551234567")
    sender = HubSpotTaskSender(hubspot_client(fake_hubspot), engine)

    with pytest.raises(ProviderError) as raised:
        sender.send(task_message(lead_id))

    assert raised.value.permanent is True
    assert fake_hubspot.requests == []


def test_crm_task_sender_for_picks_adapter(
    engine: sa.Engine, database_url: str
) -> None:
    webhook = crm_task_sender_for(
        Settings(database_url=database_url, crm_webhook_url="http://127.0.0.1:9/x")
    )
    hubspot = crm_task_sender_for(
        Settings(
            database_url=database_url,
            crm_provider="hubspot",
            hubspot_access_token="pat-x",
        ),
        engine,
    )

    assert isinstance(webhook, CrmTaskSender)
    assert webhook.crm_url == "http://127.0.0.1:9/x"
    assert isinstance(hubspot, HubSpotTaskSender)
    assert hubspot.name == "hubspot"
    with pytest.raises(ValueError, match="HUBSPOT_ACCESS_TOKEN is required"):
        crm_task_sender_for(Settings(database_url=database_url, crm_provider="hubspot"))


# --- through the lead workflow -------------------------------------------------


def hubspot_settings(fake: FakeHubSpot, **extra: Any) -> dict[str, Any]:
    return {
        "mql_threshold": 50,
        "crm_provider": "hubspot",
        "hubspot_access_token": fake.token,
        "hubspot_base_url": fake.url,
        **extra,
    }


async def activity_attempts(
    handle: WorkflowHandle[Any, Any], activity_name: str
) -> list[tuple[int, Any]]:
    """Return (attempt, failure) of each finished or failed run of an activity."""
    history = await handle.fetch_history()
    names: dict[int, str] = {}
    attempts: dict[int, int] = {}
    results: list[tuple[int, Any]] = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            names[event.event_id] = attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started = event.activity_task_started_event_attributes
            attempts[started.scheduled_event_id] = started.attempt
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED:
            failed = event.activity_task_failed_event_attributes
            if names.get(failed.scheduled_event_id) == activity_name:
                results.append((attempts[failed.scheduled_event_id], failed.failure))
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            completed = event.activity_task_completed_event_attributes
            if names.get(completed.scheduled_event_id) == activity_name:
                results.append((attempts[completed.scheduled_event_id], None))
    return results


async def test_workflow_enriches_captured_lead(
    stack_factory: StackFactory, fake_enrichment: FakeEnrichment
) -> None:
    fake_enrichment.companies["example.com"] = {**ACME, "domain": "example.com"}
    async with stack_factory(
        enrichment_provider="http",
        enrichment_url=fake_enrichment.lookup_url,
        enrichment_api_key=fake_enrichment.api_key,
    ) as stack:
        lead_id = await create_lead(stack)

        def enriched() -> Lead | None:
            lead = get_lead(stack.engine, lead_id)
            return lead if lead.enrichment.get("lookup") else None

        lead = await stack.eventually(enriched, message="lead enriched by lookup")
        scored = await stack.eventually(
            lambda: _rescored(stack, lead_id), message="lead rescored with lookup"
        )

    assert fake_enrichment.lookups() == ["example.com"]
    assert lead.enrichment["lookup"]["status"] == "found"
    assert lead.enrichment["sources"]["country"] == "http"
    assert lead.enrichment["country"] == "US"
    # The lead gave industry, size and revenue; the lookup filled the rest.
    assert lead.company_industry == "Technology"
    assert lead.company_size == "50-100"
    assert lead.company_country == "US"
    assert lead.company_technologies == ["salesforce", "hubspot", "aws"]
    assert sorted(lead.enrichment["filled_columns"]) == [
        "company_country",
        "company_technologies",
    ]
    criteria = {reason["criterion"] for reason in scored.score_reasons}
    assert "region" in criteria
    assert "technology_stack" in criteria
    assert scored.score > 57


def _rescored(stack: Stack, lead_id: str) -> Lead | None:
    lead = get_lead(stack.engine, lead_id)
    reasons = {reason["criterion"] for reason in lead.score_reasons}
    return lead if "region" in reasons else None


async def test_mql_lead_upserted_into_hubspot(
    stack_factory: StackFactory, fake_hubspot: FakeHubSpot
) -> None:
    async with stack_factory(**hubspot_settings(fake_hubspot)) as stack:
        lead_id = await create_lead(stack)

        def synced() -> Lead | None:
            lead = get_lead(stack.engine, lead_id)
            return lead if lead.crm_id else None

        lead = await stack.eventually(synced, message="crm_id stored")

    contact = fake_hubspot.contact_by_email("john.smith@company.com")
    assert contact is not None
    assert lead.crm_id == contact["id"]
    assert lead.crm_synced_at is not None
    properties = contact["properties"]
    assert properties["lifecyclestage"] == "marketingqualifiedlead"
    assert properties["firstname"] == "John"
    assert properties["lastname"] == "Smith"
    assert properties["company"] == "Example Company"
    assert properties["nurture_score"] == str(lead.score)
    assert len(fake_hubspot.contacts) == 1


async def test_mql_sales_task_lands_in_hubspot(
    stack_factory: StackFactory, fake_hubspot: FakeHubSpot
) -> None:
    async with stack_factory(**hubspot_settings(fake_hubspot)) as stack:
        lead_id = await create_lead(stack)

        def task_created() -> list[dict[str, Any]]:
            lead = get_lead(stack.engine, lead_id)
            return fake_hubspot.tasks_of(lead.crm_id) if lead.crm_id else []

        (task,) = await stack.eventually(task_created, message="task in HubSpot")

    lead = get_lead(stack.engine, lead_id)
    assert task["properties"]["hs_task_body"].endswith(
        task_marker(f"handoff-{lead_id}")
    )
    assert task["properties"]["hs_task_type"] == "CALL"
    assert task["properties"]["hs_task_subject"].startswith("Call John")
    assert lead.crm_id in fake_hubspot.contact_tasks
    assert len(fake_hubspot.tasks) == 1


async def test_crm_retry_after_500_one_contact(
    stack_factory: StackFactory, fake_hubspot: FakeHubSpot
) -> None:
    # HubSpot stores the contact, and then responds with a 500.
    fake_hubspot.fail_after_commit = 1
    async with stack_factory(**hubspot_settings(fake_hubspot)) as stack:
        lead_id = await create_lead(stack)

        def synced() -> Lead | None:
            lead = get_lead(stack.engine, lead_id)
            return lead if lead.crm_id else None

        lead = await stack.eventually(synced, timeout=30, message="crm_id stored")
        handle = stack.client.get_workflow_handle(lead_workflow_id(lead_id))
        attempts = await activity_attempts(handle, "sync_lead_to_crm")

    upserts = fake_hubspot.calls("POST", "/crm/v3/objects/contacts/batch/upsert")
    assert len(upserts) == 2
    assert len(fake_hubspot.contacts) == 1
    assert lead.crm_id == next(iter(fake_hubspot.contacts))
    assert attempts == [(2, None)]


async def test_crm_400_fails_sync_without_retry(
    stack_factory: StackFactory, fake_hubspot: FakeHubSpot
) -> None:
    settings = hubspot_settings(
        fake_hubspot, hubspot_field_mapping='{"favorite_color": "first_name"}'
    )
    async with stack_factory(**settings) as stack:
        lead_id = await create_lead(stack)
        handle = stack.client.get_workflow_handle(lead_workflow_id(lead_id))

        async def failed() -> list[tuple[int, Any]]:
            return await activity_attempts(handle, "sync_lead_to_crm")

        ((attempt, failure),) = await stack.eventually(failed, message="sync failed")
        description = await handle.describe()

    # The lead's journey goes on without the CRM: its workflow still runs.
    assert description.status is not None
    assert description.status.name == "RUNNING"
    assert attempt == 1
    assert failure is not None
    assert failure.application_failure_info.non_retryable is True
    assert failure.application_failure_info.type == "CrmRejected"
    # Failure texts are encrypted in the history like payloads.
    assert failure.message == "Encoded failure"
    assert "favorite_color" not in failure.SerializeToString().decode("latin-1")
    decoded = await stack.client.data_converter.decode_failure(failure)
    assert 'Property \\"favorite_color\\" does not exist' in str(decoded)
    # The sales task that follows upserts the contact too, and is rejected alike.
    assert fake_hubspot.contacts == {}
    assert get_lead(stack.engine, lead_id).crm_id is None
