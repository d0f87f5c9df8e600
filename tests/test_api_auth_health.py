"""API key checks on every /api/v1 route, and the operator endpoints without one.

The protected routes come from the app's OpenAPI document, so a new route is
checked without editing this file. FastAPI 0.163 keeps included routers as
private `_IncludedRouter` entries in `app.routes`, and no route of ours is left
out of the schema, so the OpenAPI paths are the complete public list.
"""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from api.app import PUBLIC_PREFIXES, create_app
from nurture.config import Settings
from nurture.db import create_db_engine, session_scope
from nurture.models import Lead
from tests.conftest import (
    API_KEY,
    Stack,
    client_for,
    closed_port,
    example,
    make_settings,
)
from tests.fakes import FakeSendGrid, FakeTwilio

ERROR_KEYS = {"error", "message", "errors"}
# The routes the README documents as needing the key.
DOCUMENTED = {
    ("POST", "/api/v1/leads"),
    ("GET", "/api/v1/leads"),
    ("GET", "/api/v1/leads/{lead_id}"),
    ("PATCH", "/api/v1/leads/{lead_id}"),
    ("GET", "/api/v1/leads/{lead_id}/messages"),
    ("GET", "/api/v1/leads/{lead_id}/journey"),
    ("POST", "/api/v1/scoring/calculate"),
    ("POST", "/api/v1/nurturing/campaigns"),
    ("GET", "/api/v1/nurturing/campaigns"),
    ("GET", "/api/v1/nurturing/campaigns/{campaign_id}"),
    ("PUT", "/api/v1/nurturing/campaigns/{campaign_id}"),
    ("POST", "/api/v1/events"),
}
BAD_CREDENTIALS = {
    "missing": None,
    "wrong-key": "Bearer wrong-key",
    "key-plus-suffix": f"Bearer {API_KEY}x",
    "key-prefix": f"Bearer {API_KEY[:-1]}",
    "empty-bearer": "Bearer ",
    "basic-scheme": f"Basic {API_KEY}",
}


def openapi_document() -> dict[str, Any]:
    """Build an app that never connects anywhere, and return its OpenAPI schema."""
    settings = Settings(api_key=API_KEY, database_url="sqlite://")
    app = create_app(
        settings,
        engine=sa.create_engine("sqlite://"),
        run_migrations=False,
        reconcile=False,
    )
    return app.openapi()


OPENAPI = openapi_document()


def operations(predicate: Any) -> list[tuple[str, str]]:
    return sorted(
        (method.upper(), path)
        for path, methods in OPENAPI["paths"].items()
        for method in methods
        if predicate(path)
    )


def is_protected(path: str) -> bool:
    return path.startswith("/api/v1/") and not path.startswith(PUBLIC_PREFIXES)


PROTECTED = operations(is_protected)
# Operator endpoints: probes and the Prometheus scrape take no key.
OPERATOR = operations(lambda path: not path.startswith("/api/v1/"))
WEBHOOKS = operations(lambda path: path.startswith("/api/v1/webhooks/"))
# Readers of our emails open these without a key; the link's signature counts.
UNSUBSCRIBE = operations(lambda path: path.startswith("/api/v1/unsubscribe/"))


def concrete(path: str) -> str:
    """Fill every path parameter with an id that matches nothing."""
    return (
        path.replace("{lead_id}", "no-such-lead")
        .replace("{campaign_id}", "no-such-campaign")
        .replace("{import_id}", "no-such-import")
        .replace("{version}", "999999")
    )


def headers_for(credentials: str | None) -> dict[str, str]:
    return {} if credentials is None else {"Authorization": credentials}


@pytest.fixture
async def anonymous(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """Return a client of the stack's app that sends no API key."""
    async with client_for(stack.api._transport.app) as client:
        yield client


@pytest.fixture
async def database_down(
    stack: Stack, fake_sendgrid: FakeSendGrid, fake_twilio: FakeTwilio
) -> AsyncIterator[httpx.AsyncClient]:
    """Return a client of an app whose database address refuses connections."""
    url = f"postgresql://nurture@127.0.0.1:{closed_port()}/nurture"
    settings = make_settings(url, fake_sendgrid, fake_twilio)
    engine = create_db_engine(url)
    app = create_app(
        settings, stack.client, engine=engine, run_migrations=False, reconcile=False
    )
    try:
        async with client_for(app) as client:
            yield client
    finally:
        engine.dispose()


# --- the route list --------------------------------------------------------


def test_route_walk_finds_documented_routes() -> None:
    assert set(PROTECTED) >= DOCUMENTED


def test_route_walk_finds_open_routes() -> None:
    assert WEBHOOKS == [
        ("POST", "/api/v1/webhooks/sendgrid"),
        ("POST", "/api/v1/webhooks/twilio/inbound"),
        ("POST", "/api/v1/webhooks/twilio/status"),
    ]
    assert UNSUBSCRIBE == [
        ("GET", "/api/v1/unsubscribe/{token}"),
        ("POST", "/api/v1/unsubscribe/{token}"),
    ]
    assert OPERATOR == [
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/readyz"),
    ]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_openapi_declares_bearer_security(method: str, path: str) -> None:
    operation = OPENAPI["paths"][path][method.lower()]

    assert operation.get("security") == [{"HTTPBearer": []}]
    assert "401" in operation["responses"]


@pytest.mark.parametrize(("method", "path"), [*WEBHOOKS, *UNSUBSCRIBE, *OPERATOR])
def test_openapi_open_routes_no_security(method: str, path: str) -> None:
    operation = OPENAPI["paths"][path][method.lower()]

    assert "security" not in operation


def test_openapi_bearer_scheme() -> None:
    scheme = OPENAPI["components"]["securitySchemes"]["HTTPBearer"]

    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"


# --- 401 on every protected route ------------------------------------------


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_route_rejects_key(
    anonymous: httpx.AsyncClient, method: str, path: str, credentials: str | None
) -> None:
    body = {} if method in ("POST", "PUT", "PATCH") else None

    response = await anonymous.request(
        method, concrete(path), json=body, headers=headers_for(credentials)
    )

    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    payload = response.json()
    assert set(payload) == ERROR_KEYS
    assert payload["error"] == "unauthorized"
    assert "API key" in payload["message"]
    assert payload["errors"] == []


async def test_valid_key_passes_check(stack: Stack) -> None:
    for method, path in PROTECTED:
        if method != "GET":
            continue
        response = await stack.api.get(concrete(path))
        assert response.status_code in (200, 404), (path, response.text)


async def test_bearer_scheme_case_insensitive(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get(
        "/api/v1/leads", headers={"Authorization": f"bearer {API_KEY}"}
    )

    assert response.status_code == 200, response.text


async def test_unauthenticated_lead_not_stored(
    stack: Stack, anonymous: httpx.AsyncClient
) -> None:
    response = await anonymous.post("/api/v1/leads", json=example("lead.json"))

    assert response.status_code == 401
    page = (await stack.api.get("/api/v1/leads")).json()
    assert page["total"] == 0


async def test_unauthenticated_form_not_stored(
    stack: Stack, anonymous: httpx.AsyncClient
) -> None:
    response = await anonymous.post("/api/v1/leads", data={"email": "ada@example.org"})

    assert response.status_code == 401
    page = (await stack.api.get("/api/v1/leads")).json()
    assert page["total"] == 0


async def test_unauthenticated_campaign_not_stored(
    stack: Stack, anonymous: httpx.AsyncClient
) -> None:
    response = await anonymous.post(
        "/api/v1/nurturing/campaigns",
        json=example("campaign.json"),
        headers={"Authorization": "Bearer wrong-key"},
    )

    assert response.status_code == 401
    assert (await stack.api.get("/api/v1/nurturing/campaigns")).json() == []


async def test_malformed_body_without_key_401(
    anonymous: httpx.AsyncClient,
) -> None:
    """A request without a key learns nothing about the body it sent."""
    answers = {}
    for method, path in PROTECTED:
        if method not in ("POST", "PUT", "PATCH"):
            continue
        response = await anonymous.request(
            method,
            concrete(path),
            content=b'{"name": ',
            headers={"Content-Type": "application/json"},
        )
        answers[f"{method} {path}"] = response.status_code

    rejected_otherwise = {
        route: status for route, status in answers.items() if status != 401
    }
    assert rejected_otherwise == {}


# --- webhooks take no key --------------------------------------------------


@pytest.mark.parametrize("credentials", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS)
async def test_webhook_needs_no_key(
    anonymous: httpx.AsyncClient, credentials: str | None
) -> None:
    response = await anonymous.post(
        "/api/v1/webhooks/sendgrid", json=[], headers=headers_for(credentials)
    )

    assert response.status_code == 200, response.text
    assert response.json() == {
        "received": 0,
        "stored": 0,
        "duplicates": 0,
        "unmatched": 0,
    }


# --- health ----------------------------------------------------------------


async def test_healthz_needs_no_key(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/healthz")

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok", "temporal": "ok"}


async def test_healthz_ignores_wrong_key(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get(
        "/healthz", headers={"Authorization": "Bearer wrong-key"}
    )

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"


async def test_metrics_needs_no_key(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get(
        "/metrics", headers={"Authorization": "Bearer wrong-key"}
    )

    assert response.status_code == 200, response.text
    assert "nurture_http_requests_total" in response.text


async def test_readyz_needs_no_key(anonymous: httpx.AsyncClient) -> None:
    """/readyz needs no key. Its checks are tested in test_observability.py."""
    response = await anonymous.get(
        "/readyz", headers={"Authorization": "Bearer wrong-key"}
    )

    assert response.status_code in (200, 503), response.text
    assert response.json()["checks"]["database"] == {"status": "ok"}


async def test_healthz_temporal_down_503(temporal_down: httpx.AsyncClient) -> None:
    response = await temporal_down.get("/healthz")

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"] == "ok"
    assert body["temporal"].startswith("failed: ")


async def test_healthz_database_down_503(database_down: httpx.AsyncClient) -> None:
    response = await database_down.get("/healthz")

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["database"] == "failed: OperationalError"
    assert body["temporal"] == "ok"


async def test_database_down_error_shape(database_down: httpx.AsyncClient) -> None:
    response = await database_down.get(
        "/api/v1/leads", headers={"Authorization": f"Bearer {API_KEY}"}
    )

    assert response.status_code == 503, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["error"] == "database_unavailable"


async def test_key_checked_before_temporal(temporal_down: httpx.AsyncClient) -> None:
    answers = {}
    for method, path in PROTECTED:
        body = {} if method in ("POST", "PUT", "PATCH") else None
        response = await temporal_down.request(method, concrete(path), json=body)
        answers[f"{method} {path}"] = response.status_code

    assert {route: status for route, status in answers.items() if status != 401} == {}


async def test_temporal_down_read_still_works(
    temporal_down: httpx.AsyncClient,
) -> None:
    response = await temporal_down.get(
        "/api/v1/leads", headers={"Authorization": f"Bearer {API_KEY}"}
    )

    assert response.status_code == 200, response.text
    assert response.json()["total"] == 0


async def test_temporal_down_lead_still_stored(
    temporal_down: httpx.AsyncClient, engine: sa.Engine
) -> None:
    """The README: a lead is stored before Temporal is called, and marked unsynced."""
    key = {"Authorization": f"Bearer {API_KEY}"}

    response = await temporal_down.post(
        "/api/v1/leads", json=example("lead.json"), headers=key
    )

    assert response.status_code == 201, response.text
    page = (await temporal_down.get("/api/v1/leads", headers=key)).json()
    assert page["total"] == 1
    with session_scope(engine) as session:
        lead = session.get(Lead, response.json()["id"])
        assert lead is not None
        assert lead.workflow_synced_at is None
