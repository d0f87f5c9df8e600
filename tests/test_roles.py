"""API keys with roles: every route admits exactly the roles it declares.

The walk sends each route a request with a key of each role, to an API whose
Temporal address refuses connections, so no request starts any work.
"""

from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from api.app import create_app
from nurture.cli import main as cli
from nurture.db import session_scope
from nurture.keys import ROLES, authenticate, create_key
from nurture.models import ApiKey, AuditEntry, utcnow
from tests.conftest import API_KEY, make_settings
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.test_api_auth_health import concrete


def declared_routes() -> list[tuple[str, str, tuple[str, ...]]]:
    settings = make_settings("sqlite://", FakeSendGrid(), FakeTwilio())
    app = create_app(settings, None, run_migrations=False, reconcile=False)
    found = []
    for path, methods in app.openapi()["paths"].items():
        for method, operation in methods.items():
            if "x-roles" in operation:
                found.append((method.upper(), path, tuple(operation["x-roles"])))
    return sorted(found)


ROUTES = declared_routes()


@pytest.fixture
def role_keys(engine: sa.Engine) -> dict[str, str]:
    with session_scope(engine) as session:
        return {
            role: create_key(session, role, f"test {role}", "test")[1] for role in ROLES
        }


@pytest.fixture
def api(temporal_down: httpx.AsyncClient) -> httpx.AsyncClient:
    """Return a client of an API whose Temporal address refuses connections."""
    return temporal_down


def test_every_key_route_declares_roles() -> None:
    settings = make_settings("sqlite://", FakeSendGrid(), FakeTwilio())
    app = create_app(settings, None, run_migrations=False, reconcile=False)
    paths = {path for _method, path, _roles in ROUTES}
    protected = {
        path
        for path in app.openapi()["paths"]
        if path.startswith("/api/v1/")
        and not path.startswith(("/api/v1/webhooks/", "/api/v1/unsubscribe/"))
        and "/codec/ui/" not in path
    }

    assert protected - paths == set()
    assert all(roles for _method, _path, roles in ROUTES)


# What each role is for, checked on top of the declarations.
EXPECTED = {
    ("PUT", "/api/v1/scoring/criteria"): {"admin"},
    ("POST", "/api/v1/keys"): {"admin"},
    ("POST", "/api/v1/leads"): {"admin", "marketer", "integration"},
    ("GET", "/api/v1/leads/{lead_id}/journey"): {"admin", "marketer", "sales_rep"},
    ("POST", "/api/v1/leads/{lead_id}/outcome"): {"admin", "sales_rep"},
    ("POST", "/api/v1/nurturing/campaigns"): {"admin", "marketer"},
    ("POST", "/api/v1/leads/import"): {"admin", "marketer"},
    ("POST", "/api/v1/events"): {"admin", "marketer", "integration"},
    ("DELETE", "/api/v1/leads/{lead_id}"): {"admin"},
    ("GET", "/api/v1/leads/{lead_id}/export"): {"admin"},
}


def test_roles_match_what_each_role_is_for() -> None:
    declared = {(method, path): set(roles) for method, path, roles in ROUTES}

    for route, roles in EXPECTED.items():
        assert declared[route] == roles, route


async def test_every_route_with_every_role(
    api: httpx.AsyncClient, role_keys: dict[str, str]
) -> None:
    wrong: dict[str, Any] = {}
    for method, path, roles in ROUTES:
        for role, key in role_keys.items():
            response = await api.request(
                method,
                concrete(path)
                .replace("{key_id}", "999999")
                .replace("{suppression_id}", "999999"),
                json={} if method in ("POST", "PUT", "PATCH") else None,
                headers={"Authorization": f"Bearer {key}"},
            )
            allowed = role in roles
            if allowed and response.status_code in (401, 403):
                wrong[f"{role} {method} {path}"] = response.status_code
            if not allowed and response.status_code != 403:
                wrong[f"{role} {method} {path}"] = response.status_code

    assert wrong == {}


async def test_forbidden_answer_names_the_roles(
    api: httpx.AsyncClient, role_keys: dict[str, str]
) -> None:
    response = await api.put(
        "/api/v1/scoring/criteria",
        json={},
        headers={"Authorization": f"Bearer {role_keys['marketer']}"},
    )

    assert response.status_code == 403
    assert response.json()["error"] == "forbidden"
    assert "needs one of the roles admin" in response.json()["message"]


async def test_revoked_and_expired_keys_get_401(
    api: httpx.AsyncClient, engine: sa.Engine
) -> None:
    with session_scope(engine) as session:
        row, key = create_key(session, "marketer", "soon revoked", "test")
        _old, expired = create_key(
            session, "marketer", "expired", "test", utcnow() - timedelta(seconds=1)
        )
    headers = {"Authorization": f"Bearer {key}"}
    assert (await api.get("/api/v1/leads", headers=headers)).status_code == 200

    revoked = await api.delete(
        f"/api/v1/keys/{row.id}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    after = await api.get("/api/v1/leads", headers=headers)
    old = await api.get("/api/v1/leads", headers={"Authorization": f"Bearer {expired}"})

    assert revoked.status_code == 204
    assert after.status_code == 401
    assert old.status_code == 401
    with session_scope(engine) as session:
        actions = [entry.action for entry in session.query(AuditEntry).all()]
    assert actions.count("key.created") == 2
    assert "key.revoked" in actions


async def test_keys_api_shows_key_once(
    api: httpx.AsyncClient, engine: sa.Engine
) -> None:
    admin = {"Authorization": f"Bearer {API_KEY}"}
    created = await api.post(
        "/api/v1/keys",
        json={"role": "sales_rep", "name": "Sam", "expiresInDays": 30},
        headers=admin,
    )
    listed = await api.get("/api/v1/keys", headers=admin)
    bad = await api.post(
        "/api/v1/keys", json={"role": "owner", "name": ""}, headers=admin
    )

    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert key.startswith("nk_")
    assert key not in listed.text
    assert listed.json()[0]["role"] == "sales_rep"
    with session_scope(engine) as session:
        stored = session.query(ApiKey).one()
        assert stored.key_hash != key
        principal = authenticate(session, key)
    assert principal is not None and principal.role == "sales_rep"
    assert bad.status_code == 422
    assert {e["path"] for e in bad.json()["errors"]} == {"role", "name"}


def test_cli_creates_lists_and_revokes(
    engine: sa.Engine,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    from nurture.config import get_settings

    get_settings.cache_clear()
    try:
        assert cli(["keys", "create", "--role", "marketer", "--name", "Spring"]) == 0
        created = capsys.readouterr()
        key = created.out.splitlines()[1]
        shown = sa.make_url(database_url).render_as_string(hide_password=True)
        assert created.err.splitlines()[0] == f"database: {shown}"
        assert (
            cli(
                [
                    "keys",
                    "create",
                    "--role",
                    "sales_rep",
                    "--name",
                    "Summer",
                    "--expires-in-days",
                    "30",
                ]
            )
            == 0
        )
        capsys.readouterr()
        assert cli(["keys", "list"]) == 0
        listing = capsys.readouterr().out
        with session_scope(engine) as session:
            row = session.query(ApiKey).filter_by(name="Spring").one()
            summer = session.query(ApiKey).filter_by(name="Summer").one()
            assert summer.expires_at is not None
            summer_expiry = f"{summer.expires_at:%Y-%m-%d}"
            assert authenticate(session, key) is not None
        assert cli(["keys", "revoke", str(row.id)]) == 0
        assert cli(["keys", "revoke", "999999"]) == 1
    finally:
        get_settings.cache_clear()

    assert "marketer" in listing
    assert "Spring" in listing
    lines = {line.split()[-1]: line for line in listing.splitlines()}
    assert "expires never" in lines["Spring"]
    assert f"expires {summer_expiry}" in lines["Summer"]
    assert key not in listing
    with session_scope(engine) as session:
        assert authenticate(session, key) is None


async def test_audit_log_shows_reads_and_key_changes(
    api: httpx.AsyncClient, role_keys: dict[str, str]
) -> None:
    sales = {"Authorization": f"Bearer {role_keys['sales_rep']}"}
    admin = {"Authorization": f"Bearer {API_KEY}"}
    created = await api.post(
        "/api/v1/leads",
        json={"contact": {"email": "ada@example.com"}},
        headers={"Authorization": f"Bearer {role_keys['integration']}"},
    )
    lead_id = created.json()["id"]

    read = await api.get(f"/api/v1/leads/{lead_id}", headers=sales)
    await api.get(f"/api/v1/leads/{lead_id}/messages", headers=sales)
    await api.get(f"/api/v1/leads/{lead_id}/consent", headers=sales)
    log = await api.get("/api/v1/audit", params={"entityId": lead_id}, headers=admin)
    denied = await api.get("/api/v1/audit", headers=sales)
    keys = await api.get(
        "/api/v1/audit", params={"action": "key.created"}, headers=admin
    )

    assert read.status_code == 200
    entries = log.json()["items"]
    assert [e["action"] for e in entries[:3]] == [
        "lead.consent_read",
        "lead.messages_read",
        "lead.read",
    ]
    assert entries[0]["actor"].endswith(":test sales_rep")
    assert entries[-1]["action"] == "lead.created"
    assert entries[-1]["actor"].endswith(":test integration")
    assert denied.status_code == 403
    assert len(keys.json()["items"]) == len(ROLES)


async def test_integration_capture_reveals_no_lead(
    api: httpx.AsyncClient, role_keys: dict[str, str]
) -> None:
    form_key = {"Authorization": f"Bearer {role_keys['integration']}"}
    admin = {"Authorization": f"Bearer {API_KEY}"}
    known = await api.post(
        "/api/v1/leads",
        json={"contact": {"email": "ada@example.com", "firstName": "Ada"}},
        headers=admin,
    )

    again = await api.post(
        "/api/v1/leads",
        json={"contact": {"email": "ada@example.com"}},
        headers=form_key,
    )
    new = await api.post(
        "/api/v1/leads",
        json={"contact": {"email": "bob@example.com"}},
        headers=form_key,
    )

    assert known.status_code == 201
    assert again.status_code == 202
    assert new.status_code == 202
    assert again.json() == {"id": known.json()["id"], "accepted": True}
    assert set(new.json()) == {"id", "accepted"}


async def test_integration_event_reveals_no_lead(
    api: httpx.AsyncClient, role_keys: dict[str, str]
) -> None:
    form_key = {"Authorization": f"Bearer {role_keys['integration']}"}
    admin = {"Authorization": f"Bearer {API_KEY}"}
    known = await api.post(
        "/api/v1/leads", json={"contact": {"email": "ann@example.com"}}, headers=admin
    )
    event = {"type": "page_view", "url": "https://example.com/blog"}

    on_file = await api.post(
        "/api/v1/events", json={**event, "email": "ann@example.com"}, headers=form_key
    )
    unknown = await api.post(
        "/api/v1/events",
        json={**event, "email": "nobody@example.com"},
        headers=form_key,
    )
    by_admin = await api.post(
        "/api/v1/events", json={**event, "email": "nobody@example.com"}, headers=admin
    )

    assert known.status_code == 201
    assert on_file.status_code == unknown.status_code == 202
    assert on_file.json() == unknown.json()
    assert on_file.json()["leadId"] is None
    assert by_admin.status_code == 404
