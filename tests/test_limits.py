"""Rate limits on the public routes and size limits on request bodies."""

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from pydantic import ValidationError

from api.app import create_app
from nurture.config import Settings
from nurture.db import session_scope
from nurture.keys import create_key
from nurture.models import Lead
from nurture.unsubscribe import UnsubscribeLinks
from tests.conftest import API_KEY, closed_port, example, make_settings
from tests.fakes import FakeSendGrid, FakeTwilio


@contextlib.asynccontextmanager
async def api_with(
    database_url: str,
    engine: sa.Engine,
    client_ip: str = "203.0.113.7",
    **overrides: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an API with these settings; Temporal is down, nothing starts."""
    settings = make_settings(
        database_url,
        FakeSendGrid(),
        FakeTwilio(),
        temporal_address=f"127.0.0.1:{closed_port()}",
        **overrides,
    )
    app = create_app(settings, None, engine, run_migrations=False, reconcile=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(client_ip, 40000)),
        base_url="http://nurture.test",
    ) as client:
        yield client


def integration_key(engine: sa.Engine) -> dict[str, str]:
    with session_scope(engine) as session:
        _row, key = create_key(session, "integration", "web form", "test")
    return {"Authorization": f"Bearer {key}"}


async def test_form_capture_is_limited_per_address(
    database_url: str, engine: sa.Engine
) -> None:
    form = integration_key(engine)
    admin = {"Authorization": f"Bearer {API_KEY}"}
    lead = example("lead.json")
    async with api_with(database_url, engine, rate_limit_capture="3/minute") as api:
        taken = [
            (await api.post("/api/v1/leads", json=lead, headers=form)).status_code
            for _ in range(3)
        ]
        limited = await api.post("/api/v1/leads", json=lead, headers=form)
        by_admin = await api.post("/api/v1/leads", json=lead, headers=admin)
    async with api_with(
        database_url, engine, client_ip="198.51.100.9", rate_limit_capture="3/minute"
    ) as other:
        elsewhere = await other.post("/api/v1/leads", json=lead, headers=form)

    assert taken == [202, 202, 202]
    assert limited.status_code == 429
    assert limited.json()["error"] == "rate_limited"
    assert "203.0.113.7" in limited.json()["message"]
    assert "3 per 1 minute" in limited.json()["message"]
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert by_admin.status_code == 200
    assert elsewhere.status_code == 202


async def test_webhooks_and_unsubscribe_are_limited(
    database_url: str, engine: sa.Engine
) -> None:
    async with api_with(
        database_url,
        engine,
        rate_limit_webhooks="2/minute",
        rate_limit_unsubscribe="1/minute",
    ) as api:
        hooks = [
            (await api.post("/api/v1/webhooks/sendgrid", json=[])).status_code
            for _ in range(3)
        ]
        links = [await api.get("/api/v1/unsubscribe/not-a-token") for _ in range(2)]

    assert hooks == [200, 200, 429]
    assert [link.status_code for link in links] == [400, 429]
    assert links[1].headers["content-type"].startswith("text/html")
    assert "Too many attempts" in links[1].text
    assert int(links[1].headers["retry-after"]) >= 1


async def test_empty_limit_turns_it_off(database_url: str, engine: sa.Engine) -> None:
    async with api_with(database_url, engine, rate_limit_unsubscribe="") as api:
        statuses = {
            (await api.get("/api/v1/unsubscribe/not-a-token")).status_code
            for _ in range(40)
        }

    assert statuses == {400}


async def test_valid_unsubscribe_links_are_not_limited(
    database_url: str, engine: sa.Engine
) -> None:
    settings = make_settings(database_url, FakeSendGrid(), FakeTwilio())
    links = UnsubscribeLinks(settings.signing_secret, settings.public_base_url)
    with session_scope(engine) as session:
        lead = Lead(email="ann@example.com", email_normalized="ann@example.com")
        session.add(lead)
        session.flush()
        token = links.token(lead.id, "message-1")
    async with api_with(database_url, engine, rate_limit_unsubscribe="1/minute") as api:
        statuses = [
            (await api.post(f"/api/v1/unsubscribe/{token}")).status_code
            for _ in range(3)
        ]

    assert statuses == [200, 200, 200]


async def test_larger_body_allowed_past_capture(
    database_url: str, engine: sa.Engine
) -> None:
    """The 64 KiB form limit is for capture itself, not the lead's other routes."""
    with session_scope(engine) as session:
        lead = Lead(email="bo@example.com", email_normalized="bo@example.com")
        session.add(lead)
        session.flush()
        lead_id = lead.id
    async with api_with(database_url, engine) as api:
        response = await api.post(
            f"/api/v1/leads/{lead_id}/outcome",
            json={"outcome": "lost", "note": "n" * 70_000},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )

    assert response.status_code == 422
    assert "note" in response.text


async def test_large_form_body_is_413(database_url: str, engine: sa.Engine) -> None:
    lead = example("lead.json")
    lead["customFields"]["notes"] = "x" * 70_000
    async with api_with(database_url, engine) as api:
        response = await api.post(
            "/api/v1/leads",
            json=lead,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )

    assert response.status_code == 413
    assert response.json()["error"] == "body_too_large"
    assert "65536 bytes" in response.json()["message"]
    # Rejected inside the request id and metrics middleware, so it is counted.
    assert response.headers["x-request-id"]


async def test_chunked_body_is_counted(database_url: str, engine: sa.Engine) -> None:
    """A body sent without Content-Length is cut off once it passes the limit."""
    events = json.dumps([{"event": "open", "pad": "y" * 4000}] * 400).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(events), 65536):
            yield events[start : start + 65536]

    async with api_with(database_url, engine, max_body_bytes=1_000_000) as api:
        response = await api.post(
            "/api/v1/webhooks/sendgrid",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )

    assert len(events) > 1_000_000
    assert response.status_code == 413
    assert "1000000 bytes" in response.json()["message"]


async def test_body_under_limit_is_taken(database_url: str, engine: sa.Engine) -> None:
    lead = example("lead.json")
    lead["customFields"]["notes"] = "x" * 30_000
    async with api_with(database_url, engine) as api:
        response = await api.post(
            "/api/v1/leads",
            json=lead,
            headers={"Authorization": f"Bearer {API_KEY}"},
        )

    assert response.status_code == 201, response.text


@pytest.mark.parametrize("text", ["abc", "10/fortnight", "many/minute"])
def test_invalid_rate_limit_names_the_format(text: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(rate_limit_capture=text)

    message = str(raised.value)
    assert "rate_limit_capture" in message
    assert "120/minute" in message


async def test_import_over_its_limit_is_413(
    database_url: str, engine: sa.Engine
) -> None:
    rows = "email,firstName\n" + "".join(f"a{i}@example.com,A\n" for i in range(300))
    async with api_with(database_url, engine, max_import_bytes=2048) as api:
        response = await api.post(
            "/api/v1/leads/import",
            files={"file": ("leads.csv", rows.encode(), "text/csv")},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )

    assert response.status_code == 413
    assert "/api/v1/leads/import" in response.json()["message"]
