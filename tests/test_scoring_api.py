"""The scoring engine through the API: criteria as data, outcomes, CSV import,
model training on the real lead data set, and the hand-off to sales."""

import copy
import io
import json
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from bench.lead_data import IMPORT_MAPPING, LEADS_CSV, LEAKING_COLUMNS
from nurture.db import session_scope
from nurture.models import AuditEntry, Lead, LeadOutcome, Message
from nurture.temporal import lead_workflow_id
from tests.conftest import Stack, StackFactory, example
from tests.fakes import FakeServer as FakeCrm
from tests.test_end_to_end import create_lead
from workflows.lead import LeadWorkflow

CRITERIA = "/api/v1/scoring/criteria"
CALCULATE = "/api/v1/scoring/calculate"
MODELS = "/api/v1/scoring/models"
IMPORT = "/api/v1/leads/import"
EVENTS = "/api/v1/events"

LEAD_DATA = LEADS_CSV
LEAKING = LEAKING_COLUMNS
LEADS_MAPPING = IMPORT_MAPPING


async def criteria_in_force(stack: Stack) -> dict[str, Any]:
    response = await stack.api.get(CRITERIA)
    assert response.status_code == 200, response.text
    return dict(response.json())


def criterion(document: dict[str, Any], criterion_id: str) -> dict[str, Any]:
    return next(c for c in document["criteria"] if c["id"] == criterion_id)


async def put_criteria(stack: Stack, document: dict[str, Any]) -> httpx.Response:
    return await stack.api.put(CRITERIA, json=document)


# --- criteria as data -------------------------------------------------------


async def test_built_in_criteria_cover_three_dimensions(stack: Stack) -> None:
    body = await criteria_in_force(stack)

    assert body["version"] == 0
    stored = (await stack.api.get(f"{CRITERIA}/versions/0")).json()
    assert stored["criteria"] == body["criteria"]
    criteria = body["criteria"]["criteria"]
    assert len(criteria) >= 20
    by_dimension = {c["dimension"] for c in criteria}
    assert by_dimension == {"firmographic", "behavioral", "engagement"}
    assert body["criteria"]["mqlThreshold"] == stack.settings.mql_threshold


async def test_changed_criteria_score_at_once_and_are_audited(stack: Stack) -> None:
    document = (await criteria_in_force(stack))["criteria"]
    before = await stack.api.post(CALCULATE, json=example("scoring_calculate.json"))
    assert before.json()["reasons"][0] == {
        "criterion": "industry",
        "dimension": "firmographic",
        "points": 15,
        "fact": "industry is Technology",
    }
    criterion(document, "industry")["points"]["Technology"] = 5

    response = await put_criteria(stack, document | {"note": "tech is crowded"})

    assert response.status_code == 200, response.text
    # Versions count up across tests on PostgreSQL, whose sequences survive
    # the emptied tables.
    version = response.json()["version"]
    assert version >= 1
    after = await stack.api.post(CALCULATE, json=example("scoring_calculate.json"))
    industry = next(r for r in after.json()["reasons"] if r["criterion"] == "industry")
    assert industry["points"] == 5
    assert after.json()["score"] == before.json()["score"] - 10
    assert after.json()["criteriaVersion"] == version
    with session_scope(stack.engine) as session:
        [entry] = session.exec(
            select(AuditEntry).where(AuditEntry.action == "scoring.criteria_changed")
        ).all()
    assert entry.actor == "api-key"
    assert entry.entity_id == str(version)
    assert entry.detail["changes"] == ["criteria.industry changed"]
    assert entry.detail["previous_version"] == 0
    assert entry.detail["note"] == "tech is crowded"
    versions = (await stack.api.get(f"{CRITERIA}/versions")).json()
    assert [v["version"] for v in versions] == [version]
    assert versions[0]["note"] == "tech is crowded"


@pytest.mark.parametrize(
    ("change", "path", "words"),
    [
        (
            lambda d: d["dimensionMax"].update(firmographic=40),
            "dimensionMax",
            "add up to 100",
        ),
        (
            lambda d: d["criteria"].append(copy.deepcopy(d["criteria"][0])),
            "criteria",
            "used twice",
        ),
        (
            lambda d: criterion(d, "company_size")["bands"].insert(
                0, criterion(d, "company_size")["bands"].pop(1)
            ),
            "criteria[1].bands.bands",
            "ascending",
        ),
        (lambda d: d.update(mqlThreshold=0), "mqlThreshold", "greater than"),
        (
            lambda d: criterion(d, "recency").update(fact="shoe_size"),
            "criteria[23].bands.fact",
            "Input should be",
        ),
    ],
)
async def test_bad_criteria_rejected_with_path(
    stack: Stack, change: Any, path: str, words: str
) -> None:
    document = (await criteria_in_force(stack))["criteria"]
    change(document)

    response = await put_criteria(stack, document)

    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(e["path"] == path and words in e["message"] for e in errors), errors
    assert (await criteria_in_force(stack))["version"] == 0


# --- outcomes ---------------------------------------------------------------


async def test_outcome_makes_lead_a_customer(stack: Stack) -> None:
    lead_id = await create_lead(stack)

    response = await stack.api.post(
        f"/api/v1/leads/{lead_id}/outcome",
        json={
            "outcome": "Converted",
            "value": "12500.00",
            "currency": "EUR",
            "occurredAt": "2026-11-30T10:00:00Z",
        },
    )

    assert response.status_code == 201, response.text
    assert response.json()["value"] == "12500.00"
    lead = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
    assert lead["outcome"] == "converted"
    assert lead["stage"] == "customer"
    listed = (await stack.api.get(f"/api/v1/leads/{lead_id}/outcomes")).json()
    assert [o["outcome"] for o in listed] == ["converted"]
    assert listed[0]["source"] == "api"


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"outcome": "won"}, "outcome"),
        ({"outcome": "lost", "value": -5}, "value"),
        ({"outcome": "lost", "currency": "euro"}, "currency"),
        ({"outcome": "lost", "occurredAt": "2026-11-30T10:00:00"}, "occurredAt"),
    ],
)
async def test_bad_outcome_rejected(
    stack: Stack, body: dict[str, Any], path: str
) -> None:
    lead_id = await create_lead(stack)

    response = await stack.api.post(f"/api/v1/leads/{lead_id}/outcome", json=body)

    assert response.status_code == 422, response.text
    assert [e["path"] for e in response.json()["errors"]] == [path]


async def test_outcome_for_unknown_lead_404(stack: Stack) -> None:
    response = await stack.api.post(
        "/api/v1/leads/no-such-lead/outcome", json={"outcome": "lost"}
    )
    assert response.status_code == 404


# --- CSV import -------------------------------------------------------------


async def run_import(
    stack: Stack,
    content: bytes,
    mapping: dict[str, Any],
    nurture: bool = False,
    timeout: float = 20,
) -> dict[str, Any]:
    response = await stack.api.post(
        IMPORT,
        files={"file": ("leads.csv", io.BytesIO(content), "text/csv")},
        data={"mapping": json.dumps(mapping), "nurture": str(nurture).lower()},
    )
    assert response.status_code == 202, response.text
    location = response.headers["location"]

    async def finished() -> dict[str, Any] | None:
        body = (await stack.api.get(location)).json()
        return body if body["status"] != "running" else None

    report: dict[str, Any] = await stack.eventually(
        finished, timeout=timeout, message="import finished"
    )
    return report


SMALL_CSV = (
    "Email,First,Company,Title,Stack,Converted,Visits\n"
    "ada@analytical.example,Ada,Analytical Engines,CTO,HubSpot;Segment,1,3\n"
    "john.smith@company.com,Johnny,Company Ltd,VP Sales,,,\n"
    "not-an-email,Bad,Nowhere,,,0,\n"
    'grace@navy.example,Grace,"Navy, US",Rear Admiral,,maybe,2\n'
)
SMALL_MAPPING = {
    "columns": {
        "Email": "contact.email",
        "First": "contact.firstName",
        "Company": "company.name",
        "Title": "contact.jobTitle",
        "Stack": "company.technologies",
        "Converted": "outcome",
        "Visits": "activity.websiteVisits",
    }
}


async def test_import_reports_accepted_merged_rejected(stack: Stack) -> None:
    existing = await create_lead(stack)

    report = await run_import(stack, SMALL_CSV.encode(), SMALL_MAPPING)

    assert report["status"] == "completed", report
    assert (report["rowsRead"], report["accepted"], report["merged"]) == (4, 1, 1)
    assert (report["rejected"], report["outcomes"]) == (2, 1)
    assert [e["line"] for e in report["errors"]] == [4, 5]
    assert report["errors"][0]["errors"][0]["path"] == "Email"
    assert report["errors"][1]["errors"][0]["path"] == "Converted"
    with session_scope(stack.engine) as session:
        ada = session.exec(
            select(Lead).where(Lead.email_normalized == "ada@analytical.example")
        ).one()
        merged = session.get(Lead, existing)
        [outcome] = session.exec(select(LeadOutcome)).all()
    assert ada.job_title == "CTO"
    assert ada.company_technologies == ["HubSpot", "Segment"]
    assert ada.outcome == "converted"
    assert ada.stage == "customer"
    assert outcome.source == f"import:{report['id']}"
    reasons = {r["criterion"]: r for r in ada.score_reasons}
    assert reasons["seniority"]["fact"] == "seniority: executive"
    assert reasons["technology_stack"]["points"] == 5
    assert reasons["website_visits"]["points"] == 3
    assert merged is not None
    assert merged.first_name == "Johnny"
    assert merged.job_title == "VP Sales"


async def test_import_mapping_problems_are_422(stack: Stack) -> None:
    mapping = {"columns": {"E-mail": "contact.email", "First": "contact.fistName"}}

    response = await stack.api.post(
        IMPORT,
        files={"file": ("leads.csv", io.BytesIO(SMALL_CSV.encode()), "text/csv")},
        data={"mapping": json.dumps(mapping)},
    )

    assert response.status_code == 422, response.text
    paths = [e["path"] for e in response.json()["errors"]]
    assert paths == ["mapping.columns.First"]
    assert "did you mean 'contact.firstName'" in response.json()["errors"][0]["message"]


async def test_import_header_mismatch_is_422(stack: Stack) -> None:
    mapping = {"columns": {"E-mail": "contact.email"}}

    response = await stack.api.post(
        IMPORT,
        files={"file": ("leads.csv", io.BytesIO(SMALL_CSV.encode()), "text/csv")},
        data={"mapping": json.dumps(mapping)},
    )

    assert response.status_code == 422, response.text
    errors = {e["path"]: e["message"] for e in response.json()["errors"]}
    assert "did you mean 'Email'" in errors["mapping.columns.E-mail"]
    assert "contact.email" in errors["mapping.columns"]


async def test_import_twice_merges_without_duplicates(stack: Stack) -> None:
    await run_import(stack, SMALL_CSV.encode(), SMALL_MAPPING)

    report = await run_import(stack, SMALL_CSV.encode(), SMALL_MAPPING)

    assert (report["accepted"], report["merged"], report["rejected"]) == (0, 2, 2)
    with session_scope(stack.engine) as session:
        assert len(session.exec(select(Lead)).all()) == 2


# --- model training on the real data set ------------------------------------


async def wait_for_model(stack: Stack, version: int, timeout: float) -> dict[str, Any]:
    async def trained() -> dict[str, Any] | None:
        body = (await stack.api.get(f"{MODELS}/{version}")).json()
        return body if body["status"] != "training" else None

    model: dict[str, Any] = await stack.eventually(
        trained, timeout=timeout, message=f"model v{version} trained"
    )
    return model


@pytest.mark.skipif(not LEAD_DATA.is_file(), reason=f"{LEAD_DATA} is not here")
async def test_model_from_real_leads_meets_targets(stack: Stack) -> None:
    report = await run_import(stack, LEAD_DATA.read_bytes(), LEADS_MAPPING, timeout=300)
    assert (report["accepted"], report["rejected"]) == (9240, 0), report
    assert report["outcomes"] == 9240

    response = await stack.api.post(MODELS, json={"excludeFeatures": LEAKING})
    assert response.status_code == 202, response.text
    model = await wait_for_model(stack, response.json()["version"], timeout=300)

    assert model["status"] == "ready", model
    metrics = model["metrics"]
    assert metrics["testRows"] == 2772
    assert metrics["rocAuc"] >= 0.91, metrics
    assert metrics["accuracy"] >= 0.84, metrics
    assert metrics["topDecileLift"] > 2
    used = {feature["name"] for feature in model["features"]}
    assert not used & set(LEAKING)
    assert {"Lead Origin", "behavior.timeOnSiteSeconds"} <= used
    assert "Prospect ID" not in used

    # Before promotion the rules alone score, and the response states it.
    lead = example("scoring_calculate.json")
    assert (await stack.api.post(CALCULATE, json=lead)).json()["method"] == "rules"
    promoted = await stack.api.post(f"{MODELS}/{model['version']}/promote")
    assert promoted.status_code == 200, promoted.text

    lead["features"] = {"Lead Origin": "API", "Last Activity": "Email Bounced"}
    cold = (await stack.api.post(CALCULATE, json=lead)).json()
    lead["features"] = {"Lead Origin": "Lead Add Form", "Last Activity": "SMS Sent"}
    scored = (await stack.api.post(CALCULATE, json=lead)).json()
    assert scored["method"] == "rules+model"
    assert scored["note"].startswith(f"score {scored['score']} = 50% of the rules'")
    assert scored["model"]["unusedFeatures"] == []
    assert scored["model"]["probability"] > cold["model"]["probability"] + 0.3
    assert scored["score"] > cold["score"]
    assert scored["rulesScore"] == cold["rulesScore"]
    assert scored["model"]["confidence"] == pytest.approx(
        max(scored["model"]["probability"], 1 - scored["model"]["probability"]),
        abs=1e-3,
    )
    lead["features"] = {"Lead Source": "Google"}
    misnamed = (await stack.api.post(CALCULATE, json=lead)).json()
    assert misnamed["model"]["unusedFeatures"] == ["Lead Source"]
    pushed_up = {
        c["feature"] for c in scored["model"]["contributions"] if c["effect"] > 0
    }
    assert "Lead Origin" in pushed_up

    # The only promoted model has nothing to roll back to; demoting restores
    # the rules alone.
    assert (await stack.api.post(f"{MODELS}/rollback")).status_code == 409
    assert (await stack.api.post(f"{MODELS}/demote")).status_code == 204
    assert (await stack.api.post(CALCULATE, json=lead)).json()["method"] == "rules"
    # A rollback after a demote brings the last promoted model back.
    back = await stack.api.post(f"{MODELS}/rollback")
    assert back.status_code == 200, back.text
    assert back.json()["version"] == model["version"]
    assert (await stack.api.post(CALCULATE, json=lead)).json()["method"] == (
        "rules+model"
    )


async def test_training_without_outcomes_fails_clearly(stack: Stack) -> None:
    await create_lead(stack)

    response = await stack.api.post(MODELS, json={})
    assert response.status_code == 202, response.text
    model = await wait_for_model(stack, response.json()["version"], timeout=60)

    assert model["status"] == "failed"
    assert "rows" in model["error"] or "outcome" in model["error"], model["error"]
    promote = await stack.api.post(f"{MODELS}/{model['version']}/promote")
    assert promote.status_code == 409


async def test_training_options_validated(stack: Stack) -> None:
    response = await stack.api.post(MODELS, json={"testSize": 0.99})
    assert response.status_code == 422, response.text
    assert [e["path"] for e in response.json()["errors"]] == ["testSize"]


# --- the hand-off at the MQL threshold -------------------------------------


async def test_crossing_mql_hands_lead_to_sales(
    stack_factory: StackFactory, fake_crm: FakeCrm
) -> None:
    async with stack_factory(crm_webhook_url=f"{fake_crm.url}/crm") as stack:
        document = (await criteria_in_force(stack))["criteria"]
        document["mqlThreshold"] = 60
        assert (await put_criteria(stack, document)).status_code == 200
        campaign = example("campaign.json")
        campaign["name"] = "Hot leads"
        campaign["trigger"] = {"type": "lead_score", "condition": 'stage == "mql"'}
        created = await stack.api.post("/api/v1/nurturing/campaigns", json=campaign)
        assert created.status_code == 201, created.text
        campaign_id = created.json()["id"]
        lead_id = await create_lead(stack)
        lead = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
        assert lead["stage"] == "new"
        assert lead["score"] == 57

        response = await stack.api.post(
            EVENTS, json={"leadId": lead_id, "type": "demo_page_view"}
        )
        assert response.status_code == 202, response.text

        async def handed_off() -> list[Any]:
            return [
                r
                for r in fake_crm.requests
                if b'"type": "task"' in r.body
                or (json.loads(r.body).get("type") == "task")
            ]

        [task_post] = await stack.eventually(handed_off, message="sales task sent")
        task = json.loads(task_post.body)
        assert task["taskId"] == f"handoff-{lead_id}"
        assert task["leadId"] == lead_id
        syncs = [json.loads(r.body) for r in fake_crm.requests if b'"reason"' in r.body]
        assert any(s["reason"] == "stage changed from new to mql" for s in syncs)

        async def listed() -> list[Any]:
            return [
                w.id
                async for w in stack.client.list_workflows(
                    f'LeadStage = "mql" AND LeadScore >= 60 AND LeadId = "{lead_id}"'
                )
            ]

        assert await stack.eventually(listed, message="search attributes") == [
            f"lead-{lead_id}"
        ]

        async def enrolled() -> dict[str, Any] | None:
            url = f"/api/v1/leads/{lead_id}/journey"
            journey: dict[str, Any] = (await stack.api.get(url)).json()
            return journey if journey["enrollments"] else None

        # The trigger waiting for the stage enrolls the lead after the hand-off.
        journey = await stack.eventually(enrolled, message="campaign triggered")
        assert journey["stage"] == "mql"
        assert [t["id"] for t in journey["tasks"]] == [f"handoff-{lead_id}"]
        assert [e["campaignId"] for e in journey["enrollments"]] == [campaign_id]
        with session_scope(stack.engine) as session:
            tasks = session.exec(
                select(Message).where(
                    Message.lead_id == lead_id, col(Message.channel) == "task"
                )
            ).all()
        assert len(tasks) == 1


async def test_rescore_all_applies_new_criteria(stack: Stack) -> None:
    lead_id = await create_lead(stack)
    await stack.eventually(
        lambda: _lead_workflow_scored(stack, lead_id), message="first scoring"
    )
    document = (await criteria_in_force(stack))["criteria"]
    criterion(document, "industry")["points"]["Technology"] = 5
    # 57 - 10 = 47 crosses a threshold of 45: the rescoring makes an MQL.
    document["mqlThreshold"] = 45
    stored = await put_criteria(stack, document)
    assert stored.status_code == 200, stored.text
    before = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
    assert before["criteriaVersion"] == 0

    response = await stack.api.post("/api/v1/scoring/rescore")
    assert response.status_code == 202, response.text
    handle = stack.client.get_workflow_handle(response.json()["workflowId"])
    assert await handle.result() == 1

    after = (await stack.api.get(f"/api/v1/leads/{lead_id}")).json()
    assert after["criteriaVersion"] == stored.json()["version"]
    assert after["score"] == before["score"] - 10
    industry = next(r for r in after["scoreReasons"] if r["criterion"] == "industry")
    assert industry["points"] == 5
    assert after["stage"] == "mql"

    # The lead's own workflow hears of the new stage and hands the lead over.
    async def handed_off() -> list[Message]:
        with session_scope(stack.engine) as session:
            return list(
                session.exec(
                    select(Message).where(Message.id == f"handoff-{lead_id}")
                ).all()
            )

    await stack.eventually(handed_off, message="sales task after rescoring")


async def _lead_workflow_scored(stack: Stack, lead_id: str) -> bool:
    handle = stack.client.get_workflow_handle_for(
        LeadWorkflow.run, lead_workflow_id(lead_id)
    )
    state = await handle.query(LeadWorkflow.state)
    return bool(state.initialized)
