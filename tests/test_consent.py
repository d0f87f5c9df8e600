"""Consent decides at send time: the ledger, capture consent, unsubscribe links."""

import email
import email.policy
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlmodel import select

from activities.providers import ConsoleEmailSender, Outgoing
from nurture.config import Settings
from nurture.consent import (
    ConsentPolicy,
    country_code,
    keyword_of,
    parse_country_list,
    record_consent,
    send_refusal,
    suppress,
)
from nurture.db import session_scope
from nurture.journey import recommend
from nurture.models import ConsentRecord, Lead, utcnow
from nurture.temporal import nurture_workflow_id
from nurture.unsubscribe import InvalidLink, UnsubscribeLinks, add_footer
from tests.conftest import Stack, example
from tests.test_delivery import finished_enrollment, messages_of
from tests.test_end_to_end import record_history
from tests.test_exactly_once import TWO_EMAILS
from tests.test_scoring_api import run_import
from workflows.nurture import NurtureWorkflow

LINKS = UnsubscribeLinks(b"k" * 32, "https://leads.example.com")


def test_link_round_trip_and_forgery() -> None:
    token = LINKS.token("lead-1", "msg-1")

    assert LINKS.verify(token) == ("lead-1", "msg-1")
    forged = token.replace("lead-1", "lead-2", 1)
    with pytest.raises(InvalidLink):
        LINKS.verify(forged)
    with pytest.raises(InvalidLink):
        UnsubscribeLinks(b"x" * 32, "https://a").verify(token)
    for broken in ("", "a.b", "a..c", token + ".x"):
        with pytest.raises(InvalidLink):
            LINKS.verify(broken)


def test_headers_follow_rfc_8058() -> None:
    headers = LINKS.headers("lead-1", "msg-1")

    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = headers["List-Unsubscribe"].strip("<>")
    assert url.startswith("https://leads.example.com/api/v1/unsubscribe/")
    assert LINKS.verify(urlsplit(url).path.rsplit("/", 1)[1]) == ("lead-1", "msg-1")


def test_footer_is_added_only_when_missing() -> None:
    url = LINKS.url("lead-1", "msg-1")

    text, html = add_footer("Hi", "<html><body><p>Hi</p></body></html>", url)
    assert url in text
    assert html is not None and html.index(url) < html.index("</body>")
    again = add_footer(text, html, url)
    assert again == (text, html)


@pytest.mark.parametrize(
    ("text", "code"),
    [("DE", "DE"), ("Germany", "DE"), ("deu", "DE"), ("UK", "GB"), ("nowhere", None)],
)
def test_country_names(text: str, code: str | None) -> None:
    assert country_code(text) == code


def test_country_list_names_the_unknown_entry() -> None:
    with pytest.raises(ValueError, match="'Atlantis'"):
        parse_country_list("DE, Atlantis")
    with pytest.raises(ValueError, match="EMAIL_OPT_IN_COUNTRIES|Atlantis"):
        Settings(email_opt_in_countries="DE,Atlantis")


@pytest.mark.parametrize(
    ("body", "keyword"), [(" stop ", "STOP"), ("Stop.", "STOP"), ("start!", "START")]
)
def test_sms_keywords(body: str, keyword: str) -> None:
    assert keyword_of(body) == keyword


def test_late_opt_in_keeps_opt_out(engine: Any) -> None:
    with session_scope(engine) as session:
        lead = Lead(email="ada@example.com", email_normalized="ada@example.com")
        session.add(lead)
        session.flush()
        now = utcnow()
        record_consent(
            session,
            lead,
            "email",
            "opted_out",
            source="api",
            actor="t",
            occurred_at=now,
        )
        record_consent(
            session,
            lead,
            "email",
            "opted_in",
            source="form",
            actor="t",
            occurred_at=now - timedelta(days=1),
        )
        assert lead.email_consent == "opted_out"
        assert "opted out of email by api" in (
            send_refusal(session, lead, "email", ConsentPolicy()) or ""
        )
        records = session.exec(
            select(ConsentRecord).where(ConsentRecord.lead_id == lead.id)
        ).all()
        assert len(records) == 2


async def enrollment_state(stack: Stack, campaign_id: str, lead_id: str) -> Any:
    handle = stack.client.get_workflow_handle_for(
        NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
    )
    return await handle.query(NurtureWorkflow.state)


async def start_two_emails(stack: Stack, **lead_extra: Any) -> tuple[str, str]:
    response = await stack.api.post("/api/v1/nurturing/campaigns", json=TWO_EMAILS)
    assert response.status_code == 201, response.text
    lead = example("lead.json")
    lead.update(lead_extra)
    created = await stack.api.post("/api/v1/leads", json=lead)
    assert created.status_code == 201, created.text
    return response.json()["id"], created.json()["id"]


async def test_opt_out_while_waiting_stops_the_next_email(stack: Stack) -> None:
    campaign_id, lead_id = await start_two_emails(stack)
    await stack.eventually(
        lambda: any(m.status == "sent" for m in messages_of(stack, lead_id)),
        message="first email sent",
    )

    change = await stack.api.post(
        f"/api/v1/leads/{lead_id}/consent",
        json={
            "channel": "email",
            "status": "opted_out",
            "source": "call",
            "proof": {"note": "asked on the phone"},
        },
    )
    assert change.status_code == 201, change.text
    assert change.json()["channels"]["email"]["canSend"] is False
    result = await finished_enrollment(stack, campaign_id, lead_id)
    await record_history(
        stack.client.get_workflow_handle(nurture_workflow_id(campaign_id, lead_id)),
        "nurture-opted-out-while-waiting",
    )

    assert [s.status for s in result.steps] == ["sent", "skipped"]
    assert "opted out of email by call" in (result.steps[1].detail or "")
    assert len(stack.sendgrid.accepted) == 1
    journey = await stack.api.get(f"/api/v1/leads/{lead_id}/journey")
    assert "opted out of email" in journey.text


async def test_unsubscribe_link_stops_the_next_email(stack: Stack) -> None:
    campaign_id, lead_id = await start_two_emails(stack)
    await stack.eventually(
        lambda: stack.sendgrid.accepted, message="first email accepted"
    )
    (mail,) = stack.sendgrid.accepted.values()
    headers = mail["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = headers["List-Unsubscribe"].strip("<>")
    text = next(c["value"] for c in mail["content"] if c["type"] == "text/plain")
    html = next(c["value"] for c in mail["content"] if c["type"] == "text/html")
    assert url in text
    assert url in html
    path = urlsplit(url).path

    page = await stack.api.get(path, headers={"Authorization": ""})
    assert page.status_code == 200
    assert "<form" in page.text
    assert "j***@company.com" in page.text
    forged = path.replace(lead_id, lead_id[:-1] + ("0" if lead_id[-1] != "0" else "1"))
    refused = await stack.api.post(
        forged,
        data={"List-Unsubscribe": "One-Click"},
        headers={"Authorization": ""},
    )
    assert refused.status_code == 400
    lead = await stack.api.get(f"/api/v1/leads/{lead_id}")
    assert lead.json()["consent"]["email"] == "unknown"

    done = await stack.api.post(
        path, data={"List-Unsubscribe": "One-Click"}, headers={"Authorization": ""}
    )
    assert done.status_code == 200, done.text
    result = await finished_enrollment(stack, campaign_id, lead_id)

    assert [s.status for s in result.steps] == ["sent", "skipped"]
    assert "unsubscribe_link" in (result.steps[1].detail or "")
    assert len(stack.sendgrid.accepted) == 1
    consent = (await stack.api.get(f"/api/v1/leads/{lead_id}/consent")).json()
    (record,) = consent["records"]
    lead = await stack.api.get(f"/api/v1/leads/{lead_id}")
    assert lead.json()["status"] == "unsubscribed"
    assert record["source"] == "unsubscribe_link"
    assert record["proof"]["method"] == "one-click"
    again = await stack.api.post(path, headers={"Authorization": ""})
    assert again.status_code == 200
    consent = (await stack.api.get(f"/api/v1/leads/{lead_id}/consent")).json()
    assert len(consent["records"]) == 1


async def test_opt_in_country_needs_consent_from_the_form(stack: Stack) -> None:
    company = {**example("lead.json")["company"], "country": "Germany"}
    campaign_id, lead_id = await start_two_emails(stack, company=company)

    result = await finished_enrollment(stack, campaign_id, lead_id)

    assert [s.status for s in result.steps] == ["skipped", "skipped"]
    assert "in DE needs an opt-in" in (result.steps[0].detail or "")
    assert stack.sendgrid.accepted == {}


async def test_form_consent_is_recorded_with_its_proof(stack: Stack) -> None:
    response = await stack.api.post("/api/v1/nurturing/campaigns", json=TWO_EMAILS)
    assert response.status_code == 201
    form = {
        "firstName": "Grete",
        "email": "grete@firma.de",
        "company": "Firma GmbH",
        "country": "DE",
        "consent_email": "on",
        "consent_text": "Ja, ich möchte E-Mails erhalten.",
    }
    created = await stack.api.post("/api/v1/leads", data=form)
    assert created.status_code == 201, created.text
    lead_id = created.json()["id"]
    assert created.json()["consent"] == {"email": "opted_in", "sms": "unknown"}

    await stack.eventually(
        lambda: any(m.status == "sent" for m in messages_of(stack, lead_id)),
        message="the opted-in German lead gets the welcome email",
    )
    consent = (await stack.api.get(f"/api/v1/leads/{lead_id}/consent")).json()
    (record,) = consent["records"]
    assert record["source"] == "form"
    assert record["proof"]["text"] == "Ja, ich möchte E-Mails erhalten."


async def test_consent_api_errors_name_the_field(stack: Stack) -> None:
    created = await stack.api.post("/api/v1/leads", json=example("lead.json"))
    lead_id = created.json()["id"]

    bad = await stack.api.post(
        f"/api/v1/leads/{lead_id}/consent",
        json={"channel": "fax", "status": "maybe"},
    )
    missing = await stack.api.post(
        "/api/v1/leads/no-such-lead/consent",
        json={"channel": "email", "status": "opted_in"},
    )

    assert bad.status_code == 422
    paths = {error["path"] for error in bad.json()["errors"]}
    assert paths == {"channel", "status"}
    assert missing.status_code == 404


async def test_suppressions_can_be_listed_and_lifted(stack: Stack) -> None:
    stack.sendgrid.reject_addresses.add("john.smith@company.com")
    campaign_id, lead_id = await start_two_emails(stack)
    await finished_enrollment(stack, campaign_id, lead_id)

    listed = await stack.api.get(
        "/api/v1/suppressions", params={"address": "John.Smith@company.com"}
    )
    (item,) = listed.json()["items"]
    assert item["reason"] == "invalid_address"
    lifted = await stack.api.delete(f"/api/v1/suppressions/{item['id']}")
    assert lifted.status_code == 204
    after = await stack.api.get("/api/v1/leads/" + lead_id + "/consent")
    assert after.json()["channels"]["email"]["canSend"] is True
    gone = await stack.api.delete(f"/api/v1/suppressions/{item['id']}")
    assert gone.status_code == 404


async def test_lifting_bounce_makes_address_sendable(stack: Stack) -> None:
    created = await stack.api.post("/api/v1/leads", json=example("lead.json"))
    lead_id = created.json()["id"]
    bounce = {
        "email": "john.smith@company.com",
        "event": "bounce",
        "sg_event_id": "bounce-lift-1",
        "timestamp": 1717000000,
        "reason": "550 5.1.1 mailbox unavailable",
    }
    posted = await stack.api.post("/api/v1/webhooks/sendgrid", json=[bounce])
    assert posted.status_code == 200, posted.text
    before = (await stack.api.get(f"/api/v1/leads/{lead_id}/consent")).json()
    assert before["channels"]["email"]["canSend"] is False

    (item,) = (await stack.api.get("/api/v1/suppressions")).json()["items"]
    lifted = await stack.api.delete(f"/api/v1/suppressions/{item['id']}")

    assert lifted.status_code == 204
    after = (await stack.api.get(f"/api/v1/leads/{lead_id}/consent")).json()
    assert after["channels"]["email"]["canSend"] is True
    lead = await stack.api.get(f"/api/v1/leads/{lead_id}")
    assert lead.json()["status"] == "active"


def test_opted_out_lead_is_not_offered_a_campaign() -> None:
    action = recommend(
        status="active",
        stage="new",
        score=10,
        mql_threshold=70,
        enrollments=[],
        engagement=[],
        now=utcnow(),
        marketing_blocked="lead opted out of email by api",
    )

    assert action.action == "do_not_contact"
    assert action.reason == "lead opted out of email by api"


def test_console_email_keeps_list_unsubscribe_whole(tmp_path: Path) -> None:
    headers = LINKS.headers("lead-1", "msg-1")
    outgoing = Outgoing(
        message_id="msg-1",
        lead_id="lead-1",
        campaign_id=None,
        template="welcome_email",
        to="ada@example.com",
        subject="Hi",
        text="Hello",
        html=None,
        headers=headers,
    )

    ConsoleEmailSender(tmp_path, "from@example.com").send(outgoing)

    raw = (tmp_path / "msg-1.eml").read_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["List-Unsubscribe"] == headers["List-Unsubscribe"]
    assert b"=?utf-8?" not in raw


async def test_imported_consent_is_recorded(stack: Stack) -> None:
    content = b"Email,Country,Mail OK\ngrete@firma.de,DE,yes\nhans@firma.de,DE,\n"
    mapping = {
        "columns": {
            "Email": "contact.email",
            "Country": "company.country",
            "Mail OK": "consent.email",
        }
    }

    report = await run_import(stack, content, mapping)

    assert report["accepted"] == 2
    leads = (await stack.api.get("/api/v1/leads")).json()["items"]
    by_email = {lead["contact"]["email"]: lead for lead in leads}
    assert by_email["grete@firma.de"]["consent"]["email"] == "opted_in"
    assert by_email["hans@firma.de"]["consent"]["email"] == "unknown"
    grete = by_email["grete@firma.de"]["id"]
    consent = (await stack.api.get(f"/api/v1/leads/{grete}/consent")).json()
    (record,) = consent["records"]
    assert record["source"] == f"import:{report['id']}"
    assert consent["channels"]["email"]["canSend"] is True


async def test_suppression_list_pages_with_total(stack: Stack) -> None:
    with session_scope(stack.engine) as session:
        for number in range(5):
            suppress(
                session, "email", f"gone{number}@example.com", "bounce", source="test"
            )

    first = (await stack.api.get("/api/v1/suppressions", params={"limit": 2})).json()
    last = (
        await stack.api.get("/api/v1/suppressions", params={"limit": 2, "offset": 4})
    ).json()

    assert first["total"] == 5
    assert len(first["items"]) == 2
    assert last["total"] == 5
    assert len(last["items"]) == 1
    shown = {item["address"] for item in first["items"] + last["items"]}
    assert len(shown) == 3
