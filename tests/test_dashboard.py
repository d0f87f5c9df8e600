"""The dashboard: sign-in and its session cookie, roles, CSRF, and the pages.

HTTP tests run the real app on the test database. Where no workflow is
needed, its Temporal address refuses connections. Where a campaign runs, it
is the real stack. Browser tests drive Debian's headless Chromium with
Playwright against uvicorn serving the app on 127.0.0.1.
"""

import asyncio
import contextlib
import io
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from sqlmodel import col, select

from api.app import create_app
from api.routes.dashboard import SESSION_COOKIE
from nurture.config import Settings
from nurture.db import session_scope
from nurture.keys import ROLES, create_key, hash_key
from nurture.models import (
    ApiKey,
    AuditEntry,
    Campaign,
    DashboardSession,
    Lead,
    utcnow,
)
from tests.conftest import API_KEY, Stack, closed_port, make_settings
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.test_analytics import (
    GOALS,
    NO_KEY,
    SPLIT_SEQUENCE,
    capture,
    enrollment_status,
    mail_indexes,
    provider_event,
    split_variants,
)
from tests.test_journeys import WELCOME, campaign

SIGN_IN = "/dashboard/sign-in"
FUNNEL = "/api/v1/analytics/funnel"
# The colour dashboard.js fills the funnel's bars with (COLORS.bar).
BAR_RGB = (0x2F, 0x6F, 0xB3)
# The colours of the step chart's bars (COLORS.steps), by funnel field.
STEP_RGB = {
    "sent": (0xD7, 0xE3, 0xF1),
    "delivered": (0xA9, 0xC4, 0xE3),
    "opened": (0x6F, 0x9F, 0xD1),
    "clicked": (0x3F, 0x78, 0xB8),
    "goalReached": (0xE0, 0x8A, 0x2C),
}
WHITE = (255, 255, 255)
# Headless, and without the background networking that would otherwise flood
# the machine's closed network with refused connections.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# Helpers.


@pytest.fixture
def keys(engine: sa.Engine) -> dict[str, tuple[int, str]]:
    """Return a stored key of each role, as (id, key)."""
    made = {}
    with session_scope(engine) as session:
        for role in ROLES:
            row, key = create_key(session, role, f"dash {role}", "test")
            assert row.id is not None
            made[role] = (row.id, key)
    return made


@dataclass
class Apps:
    """Makes apps on the test database whose Temporal refuses connections."""

    database_url: str
    engine: sa.Engine
    sendgrid: FakeSendGrid
    twilio: FakeTwilio

    def settings(self, **overrides: Any) -> Settings:
        overrides.setdefault("temporal_address", f"127.0.0.1:{closed_port()}")
        return make_settings(self.database_url, self.sendgrid, self.twilio, **overrides)

    @contextlib.asynccontextmanager
    async def client(
        self, base_url: str = "http://nurture.test", **overrides: Any
    ) -> AsyncIterator[httpx.AsyncClient]:
        """Return a client without a key of an app with these settings."""
        settings = self.settings(**overrides)
        app = create_app(
            settings, None, self.engine, run_migrations=False, reconcile=False
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@pytest.fixture
def apps(
    database_url: str,
    engine: sa.Engine,
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
) -> Apps:
    return Apps(database_url, engine, fake_sendgrid, fake_twilio)


@pytest.fixture
async def client(apps: Apps) -> AsyncIterator[httpx.AsyncClient]:
    async with apps.client() as running:
        yield running


async def sign_in(
    client: httpx.AsyncClient, key: str, next_path: str = "", **headers: str
) -> httpx.Response:
    response = await client.post(
        SIGN_IN, data={"key": key, "next": next_path}, headers=headers
    )
    # Tests send the cookie themselves, so each request shows what it carries.
    client.cookies.clear()
    return response


def set_cookie(response: httpx.Response) -> Any:
    """Return the session cookie the response sets, as a parsed Morsel."""
    jar: SimpleCookie = SimpleCookie()
    jar.load(response.headers["set-cookie"])
    return jar[SESSION_COOKIE]


def with_cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={value}"}


async def session_of(client: httpx.AsyncClient, key: str) -> str:
    response = await sign_in(client, key)
    assert response.status_code == 303, response.text
    return str(set_cookie(response).value)


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, "the page has no sign-out form"
    return found.group(1)


def audit_actions(engine: sa.Engine, **filters: str) -> list[tuple[str, str]]:
    with session_scope(engine) as session:
        rows = session.exec(
            select(AuditEntry).filter_by(**filters).order_by(col(AuditEntry.id))
        ).all()
        return [(row.action, row.actor) for row in rows]


# Sign-in, cookie and sign-out.


async def test_sign_in_sets_session_cookie(
    client: httpx.AsyncClient, keys: dict[str, tuple[int, str]], engine: sa.Engine
) -> None:
    key_id, key = keys["marketer"]

    response = await sign_in(client, key, "/dashboard/campaigns")
    cookie = set_cookie(response)
    funnel = await client.get(FUNNEL, headers=with_cookie(cookie.value))

    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/campaigns"
    assert cookie["httponly"] is True
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/"
    assert not cookie["secure"]
    assert 12 * 3600 - 5 <= int(cookie["max-age"]) <= 12 * 3600
    assert key not in response.headers["set-cookie"]
    with session_scope(engine) as session:
        stored = session.exec(select(DashboardSession)).one()
        # The server keeps the token's hash only, and which key it belongs to.
        assert stored.token_hash == hash_key(cookie.value)
        assert stored.key_ref == str(key_id)
        assert stored.ended_at is None
    assert funnel.status_code == 200, funnel.text
    assert audit_actions(engine, action="dashboard.signed_in") == [
        ("dashboard.signed_in", f"key:{key_id}:dash marketer")
    ]


async def test_cookie_secure_behind_https(
    apps: Apps, keys: dict[str, tuple[int, str]]
) -> None:
    async with apps.client(
        base_url="https://crm.example.com",
        public_base_url="https://crm.example.com",
        dashboard_session_hours=1,
    ) as client:
        response = await sign_in(client, keys["sales_rep"][1])

    cookie = set_cookie(response)
    assert response.status_code == 303
    assert cookie["secure"] is True
    assert 3600 - 5 <= int(cookie["max-age"]) <= 3600


async def test_session_ends_with_key_expiry(
    client: httpx.AsyncClient, engine: sa.Engine
) -> None:
    with session_scope(engine) as session:
        _row, key = create_key(
            session, "sales_rep", "temp", "test", utcnow() + timedelta(hours=2)
        )

    response = await sign_in(client, key)

    assert response.status_code == 303
    assert 2 * 3600 - 5 <= int(set_cookie(response)["max-age"]) <= 2 * 3600


async def test_wrong_key_gets_clear_error(
    client: httpx.AsyncClient, keys: dict[str, tuple[int, str]]
) -> None:
    wrong = await sign_in(client, "nk_not-a-key")
    empty = await sign_in(client, "   ")
    integration = await sign_in(client, keys["integration"][1])

    assert wrong.status_code == 401
    assert "That key is not valid" in wrong.text
    assert "set-cookie" not in wrong.headers
    assert empty.status_code == 422
    assert "Paste your API key" in empty.text
    assert integration.status_code == 403
    assert "needs one of the roles admin, marketer, sales_rep" in integration.text
    assert "set-cookie" not in integration.headers


async def test_sign_out_ends_session(
    client: httpx.AsyncClient, keys: dict[str, tuple[int, str]], engine: sa.Engine
) -> None:
    session = await session_of(client, keys["sales_rep"][1])
    page = await client.get("/dashboard/leads", headers=with_cookie(session))
    csrf = csrf_of(page.text)

    forged = await client.post(
        "/dashboard/sign-out", data={"csrf": "forged"}, headers=with_cookie(session)
    )
    not_ascii = await client.post(
        "/dashboard/sign-out", data={"csrf": "jeton-é"}, headers=with_cookie(session)
    )
    cross_site = await client.post(
        "/dashboard/sign-out",
        data={"csrf": csrf},
        headers={**with_cookie(session), "Origin": "https://evil.example"},
    )
    signed_out = await client.post(
        "/dashboard/sign-out", data={"csrf": csrf}, headers=with_cookie(session)
    )
    notice = await client.get(signed_out.headers["location"])
    # A copy of the cookie kept after sign-out no longer works.
    replayed = await client.get(FUNNEL, headers=with_cookie(session))

    assert page.status_code == 200
    assert forged.status_code == 403
    assert "set-cookie" not in forged.headers
    assert not_ascii.status_code == 403
    assert cross_site.status_code == 403
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == f"{SIGN_IN}?notice=signed-out"
    cleared = set_cookie(signed_out)
    assert cleared.value == ""
    assert cleared["max-age"] == "0"
    assert "You are signed out." in notice.text
    assert replayed.status_code == 401
    assert "was signed out" in replayed.json()["message"]
    assert audit_actions(engine, action="dashboard.signed_out") == [
        ("dashboard.signed_out", f"key:{keys['sales_rep'][0]}:dash sales_rep")
    ]


async def test_revoked_or_expired_key_ends_session(
    client: httpx.AsyncClient, keys: dict[str, tuple[int, str]], engine: sa.Engine
) -> None:
    marketer_id, marketer = keys["marketer"]
    rep_id, rep = keys["sales_rep"]
    marketer_session = await session_of(client, marketer)
    rep_session = await session_of(client, rep)
    before = await client.get(FUNNEL, headers=with_cookie(marketer_session))

    revoked = await client.delete(
        f"/api/v1/keys/{marketer_id}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    after = await client.get(FUNNEL, headers=with_cookie(marketer_session))
    page = await client.get(
        "/dashboard/campaigns?from=2026-01-01", headers=with_cookie(marketer_session)
    )
    with session_scope(engine) as session:
        row = session.get(ApiKey, rep_id)
        assert row is not None
        row.expires_at = utcnow() - timedelta(seconds=1)
        session.add(row)
    expired = await client.get(FUNNEL, headers=with_cookie(rep_session))

    assert before.status_code == 200
    assert revoked.status_code == 204
    assert after.status_code == 401
    assert "its key was revoked or has expired" in after.json()["message"]
    assert page.status_code == 303
    location = urlsplit(page.headers["location"])
    assert location.path == SIGN_IN
    assert parse_qs(location.query) == {
        "next": ["/dashboard/campaigns?from=2026-01-01"],
        "notice": ["ended"],
    }
    assert set_cookie(page).value == ""
    assert expired.status_code == 401


async def test_forged_or_old_session_rejected(
    apps: Apps, engine: sa.Engine, keys: dict[str, tuple[int, str]]
) -> None:
    marketer = keys["marketer"][1]
    async with apps.client() as client:
        session = await session_of(client, marketer)
        old = await session_of(client, marketer)
        installation = await session_of(client, API_KEY)
        with session_scope(engine) as db:
            stored = db.exec(
                select(DashboardSession).where(
                    DashboardSession.token_hash == hash_key(old)
                )
            ).one()
            stored.expires_at = utcnow() - timedelta(seconds=1)
            db.add(stored)
        cases = {
            "changed token": f"{session[:-2]}AA",
            "made up": "x" * 43,
            "too long": "x" * 5000,
            "past expiry": old,
        }
        answers = {
            name: (await client.get(FUNNEL, headers=with_cookie(value))).status_code
            for name, value in cases.items()
        }
        expired = await client.get(FUNNEL, headers=with_cookie(old))
        own = await client.get(FUNNEL, headers=with_cookie(session))
    # Another NURTURE_API_KEY: the sessions of the old one end.
    async with apps.client(api_key="k" * 32) as other:
        rotated = await other.get(FUNNEL, headers=with_cookie(installation))
        still = await other.get(FUNNEL, headers=with_cookie(session))

    assert own.status_code == 200
    assert answers == dict.fromkeys(cases, 401)
    assert "has expired" in expired.json()["message"]
    assert rotated.status_code == 401
    assert "its key was replaced" in rotated.json()["message"]
    assert still.status_code == 200


async def test_sign_in_deletes_sessions_ended_long_ago(
    client: httpx.AsyncClient, keys: dict[str, tuple[int, str]], engine: sa.Engine
) -> None:
    key = keys["sales_rep"][1]
    recent, stale = await session_of(client, key), await session_of(client, key)
    with session_scope(engine) as db:
        for token, days in ((recent, 0), (stale, 2)):
            row = db.exec(
                select(DashboardSession).where(
                    DashboardSession.token_hash == hash_key(token)
                )
            ).one()
            row.expires_at = utcnow() - timedelta(days=days, seconds=1)
            db.add(row)

    await session_of(client, key)

    with session_scope(engine) as db:
        left = set(db.exec(select(DashboardSession.token_hash)).all())
    assert hash_key(recent) in left
    assert hash_key(stale) not in left
    assert len(left) == 2


async def test_next_stays_on_dashboard(
    client: httpx.AsyncClient, keys: dict[str, tuple[int, str]]
) -> None:
    key = keys["marketer"][1]
    targets = {
        "https://evil.example/dashboard": "/dashboard",
        "//evil.example/dashboard": "/dashboard",
        "/api/v1/keys": "/dashboard",
        "/dashboardx": "/dashboard",
        "/dashboard/leads?minScore=50": "/dashboard/leads?minScore=50",
    }

    found = {
        target: (await sign_in(client, key, target)).headers["location"]
        for target in targets
    }

    assert found == targets


# Roles and CSRF.


async def test_pages_need_a_key(client: httpx.AsyncClient) -> None:
    anonymous = await client.get("/dashboard/campaigns/c1?from=2026-01-01")
    bad_header = await client.get(
        "/dashboard/leads", headers={"Authorization": "Bearer wrong"}
    )
    static = await client.get("/dashboard/static/dashboard.js")

    assert anonymous.status_code == 303
    location = urlsplit(anonymous.headers["location"])
    assert location.path == SIGN_IN
    assert parse_qs(location.query) == {
        "next": ["/dashboard/campaigns/c1?from=2026-01-01"]
    }
    assert bad_header.status_code == 401
    assert "invalid API key" in bad_header.text
    assert static.status_code == 200
    assert "drawFunnel" in static.text


async def test_roles_on_pages_and_reports(
    client: httpx.AsyncClient, keys: dict[str, tuple[int, str]]
) -> None:
    rep = with_cookie(await session_of(client, keys["sales_rep"][1]))
    marketer = with_cookie(await session_of(client, keys["marketer"][1]))
    bearer_rep = {"Authorization": f"Bearer {keys['sales_rep'][1]}"}

    rep_campaigns = await client.get("/dashboard/campaigns", headers=rep)
    rep_leads = await client.get("/dashboard/leads", headers=rep)
    rep_home = await client.get("/dashboard", headers=rep)
    rep_ab = await client.get("/api/v1/analytics/ab", headers=rep)
    rep_scoring = await client.get("/api/v1/analytics/scoring", headers=rep)
    header_leads = await client.get("/dashboard/leads", headers=bearer_rep)
    header_campaigns = await client.get("/dashboard/campaigns", headers=bearer_rep)
    marketer_home = await client.get("/dashboard", headers=marketer)
    marketer_campaigns = await client.get("/dashboard/campaigns", headers=marketer)
    marketer_ab = await client.get("/api/v1/analytics/ab", headers=marketer)

    assert rep_campaigns.status_code == 403
    assert "needs one of the roles admin, marketer" in rep_campaigns.text
    assert 'href="/dashboard/campaigns"' not in rep_campaigns.text
    assert rep_leads.status_code == 200
    assert rep_home.headers["location"] == "/dashboard/leads"
    assert rep_ab.status_code == 403
    assert "needs one of the roles admin, marketer" in rep_ab.json()["message"]
    assert rep_scoring.status_code == 200
    assert header_leads.status_code == 200
    assert header_campaigns.status_code == 403
    assert marketer_home.headers["location"] == "/dashboard/campaigns"
    assert marketer_campaigns.status_code == 200
    assert marketer_ab.status_code == 200


async def test_cookie_only_for_get_requests(
    client: httpx.AsyncClient, keys: dict[str, tuple[int, str]]
) -> None:
    key = keys["marketer"][1]
    cookie = with_cookie(await session_of(client, key))
    lead = {"contact": {"email": "csrf@example.com"}}

    by_cookie = await client.post("/api/v1/leads", json=lead, headers=cookie)
    spend = await client.put(
        "/api/v1/analytics/spend",
        json={"currency": "EUR", "entries": []},
        headers=cookie,
    )
    by_key = await client.post(
        "/api/v1/leads", json=lead, headers={"Authorization": f"Bearer {key}"}
    )
    cross_site = await sign_in(client, key, Origin="https://evil.example")
    fetched_cross_site = await sign_in(client, key, **{"Sec-Fetch-Site": "cross-site"})

    assert by_cookie.status_code == 401
    assert "accepted for GET and HEAD only" in by_cookie.json()["message"]
    assert spend.status_code == 401
    assert by_key.status_code == 201, by_key.text
    assert cross_site.status_code == 403
    assert "set-cookie" not in cross_site.headers
    assert fetched_cross_site.status_code == 403


# Pages with real data.


async def run_split_campaign(stack: Stack) -> tuple[str, list[str]]:
    """Run a split campaign to six leads: mails, provider events, a conversion."""
    campaign_id = await campaign(stack, SPLIT_SEQUENCE, goals=GOALS)
    lead_ids = [
        await capture(stack, f"dash{i}@company.com", "webinar", "spring")
        for i in range(6)
    ]
    await split_variants(stack, campaign_id, lead_ids)

    await stack.eventually(
        lambda: len(stack.sendgrid.mails()) == 6, message="six mails sent"
    )
    index = mail_indexes(stack, lead_ids)

    events = [provider_event(stack, "delivered", index[i]) for i in range(5)]
    events += [provider_event(stack, "open", index[i]) for i in range(3)]
    events += [provider_event(stack, "click", index[i]) for i in range(2)]
    events += [provider_event(stack, "bounce", index[5])]
    posted = await stack.api.post(
        "/api/v1/webhooks/sendgrid", json=events, headers=NO_KEY
    )
    assert posted.status_code == 200, posted.text

    converted = await stack.api.post(
        f"/api/v1/leads/{lead_ids[0]}/outcome", json={"outcome": "converted"}
    )
    assert converted.status_code == 201, converted.text
    await stack.eventually(
        lambda: enrollment_status(stack, lead_ids[0]) == "converted",
        message="goal reached",
    )
    return campaign_id, lead_ids


def stack_app(stack: Stack) -> FastAPI:
    """Return a second app on the stack's settings, database and Temporal client."""
    return create_app(
        stack.settings,
        stack.client,
        stack.engine,
        run_migrations=False,
        reconcile=False,
    )


async def test_pages_render_real_data(
    stack: Stack, keys: dict[str, tuple[int, str]]
) -> None:
    campaign_id, lead_ids = await run_split_campaign(stack)
    rep_id = keys["sales_rep"][0]
    transport = httpx.ASGITransport(app=stack_app(stack))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://nurture.test"
    ) as client:
        admin = with_cookie(await session_of(client, API_KEY))
        rep = with_cookie(await session_of(client, keys["sales_rep"][1]))
        campaigns = await client.get("/dashboard/campaigns", headers=admin)
        page = await client.get(f"/dashboard/campaigns/{campaign_id}", headers=admin)
        missing = await client.get("/dashboard/campaigns/no-such", headers=admin)
        by_cookie = await client.get(
            FUNNEL, params={"campaignId": campaign_id}, headers=admin
        )
        hot = await client.get("/dashboard/leads", headers=rep)
        lead_page = await client.get(f"/dashboard/leads/{lead_ids[1]}", headers=rep)
        journey = await client.get(f"/api/v1/leads/{lead_ids[1]}/journey", headers=rep)
        messages = await client.get(
            f"/api/v1/leads/{lead_ids[1]}/messages", headers=rep
        )
    by_key = await stack.api.get(FUNNEL, params={"campaignId": campaign_id})
    with session_scope(stack.engine) as session:
        name = session.exec(
            select(Campaign.name).where(Campaign.id == campaign_id)
        ).one()
        open_leads = session.exec(
            select(Lead.id).where(Lead.status == "active", col(Lead.outcome).is_(None))
        ).all()

    assert campaigns.status_code == 200
    assert name in campaigns.text
    assert f'data-campaign="{campaign_id}"' in campaigns.text
    assert page.status_code == 200
    assert 'data-page="campaign"' in page.text
    assert "goals: bought" in page.text
    assert "ab-no-split" not in page.text
    assert missing.status_code == 404
    assert "campaign no-such not found" in missing.text
    assert by_cookie.status_code == 200
    assert by_cookie.json() == by_key.json()
    assert by_key.json()["rows"][0]["enrolled"] == 6
    assert hot.status_code == 200
    listed = re.findall(r'href="/dashboard/leads/([^"]+)"', hot.text)
    scores = [int(score) for score in re.findall(r'data-score="(\d+)"', hot.text)]
    assert sorted(listed) == sorted(open_leads)
    assert lead_ids[1] in listed
    assert lead_ids[0] not in listed, "a converted lead is listed as hot"
    assert len(scores) == len(listed)
    assert scores == sorted(scores, reverse=True)
    assert lead_page.status_code == 200
    assert f'data-lead="{lead_ids[1]}"' in lead_page.text
    assert journey.status_code == 200, journey.text
    assert journey.json()["enrollments"][0]["campaignId"] == campaign_id
    assert messages.status_code == 200
    actor = f"key:{rep_id}:dash sales_rep"
    reads = audit_actions(stack.engine, entity_id=lead_ids[1])
    assert ("lead.journey_read", actor) in reads
    assert ("lead.messages_read", actor) in reads


# Headless Chromium.


def chromium_path() -> str:
    """Return Debian's chromium, or skip (fail with NURTURE_REQUIRE_BROWSER=1)."""
    path = shutil.which("chromium")
    reason = None
    if path is None:
        reason = (
            "chromium is not installed: apt-get update && "
            "apt-get install -y chromium chromium-driver"
        )
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            reason = "playwright is not installed: pip install -e '.[dev]'"
    if reason is not None:
        if os.environ.get("NURTURE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (NURTURE_REQUIRE_BROWSER=1 requires browser tests)")
        pytest.skip(reason)
    assert path is not None
    return path


@pytest.fixture
def chromium() -> str:
    return chromium_path()


class _Server(uvicorn.Server):
    """uvicorn inside the test's event loop, leaving pytest's signal handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


@contextlib.asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[str]:
    """Serve the app with uvicorn on a free 127.0.0.1 port and yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
        sock.close()


@contextlib.asynccontextmanager
async def browser_page(
    executable: str, profile: Path
) -> AsyncIterator[tuple[Any, list[str]]]:
    """Open a page in a fresh Chromium profile and yield it with its console errors."""
    from playwright.async_api import async_playwright

    errors: list[str] = []
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=executable,
            args=CHROMIUM_FLAGS,
            headless=True,
            viewport={"width": 1100, "height": 900},
            device_scale_factor=1,
        )
        page = await context.new_page()
        page.on(
            "console",
            lambda message: (
                errors.append(message.text) if message.type == "error" else None
            ),
        )
        page.on("pageerror", lambda error: errors.append(str(error)))
        try:
            yield page, errors
        finally:
            await context.close()


@dataclass
class Block:
    """A run of consecutive pixel lines containing a colour, with its widest line."""

    top: int
    height: int
    length: int

    @property
    def lines(self) -> range:
        return range(self.top, self.top + self.height)


def color_blocks(png: bytes, rgb: tuple[int, int, int]) -> list[Block]:
    """Return the blocks of pixel lines containing the colour, top to bottom."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    pixels = image.load()
    assert pixels is not None
    width, height = image.size
    blocks: list[Block] = []
    current: Block | None = None
    for y in range(height):
        run = sum(
            1
            for x in range(width)
            if all(abs(a - b) <= 6 for a, b in zip(pixels[x, y], rgb, strict=True))
        )
        if run and current is None:
            current = Block(y, 1, run)
        elif run and current is not None:
            current.height += 1
            current.length = max(current.length, run)
        elif current is not None:
            blocks.append(current)
            current = None
    if current is not None:
        blocks.append(current)
    return blocks


def bar_lengths(png: bytes) -> list[int]:
    """Return the length in pixels of each bar of BAR_RGB, top to bottom."""
    return [block.length for block in color_blocks(png, BAR_RGB)]


def drawn_share(png: bytes) -> float:
    """Return the share of pixels that are not the white background."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    colors = image.getcolors(maxcolors=image.width * image.height) or []
    background = sum(count for count, color in colors if color == WHITE)
    return 1 - background / (image.width * image.height)


async def test_browser_campaign_funnel_draws(
    chromium: str, stack: Stack, keys: dict[str, tuple[int, str]], tmp_path: Path
) -> None:
    campaign_id, _lead_ids = await run_split_campaign(stack)
    report = (await stack.api.get(FUNNEL, params={"campaignId": campaign_id})).json()
    ab = (
        await stack.api.get("/api/v1/analytics/ab", params={"campaignId": campaign_id})
    ).json()
    (version,) = [row for row in report["rows"] if row["level"] == "version"]
    names = ("enrolled", "sent", "delivered", "opened", "clicked", "goalReached")
    expected = [version[name] for name in names]

    async with (
        serving(stack_app(stack)) as base,
        browser_page(chromium, tmp_path / "profile") as (page, errors),
    ):
        await page.goto(f"{base}{SIGN_IN}?next=/dashboard/campaigns/{campaign_id}")
        await page.fill("#key", keys["marketer"][1])
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/dashboard/campaigns/{campaign_id}")
        chart = page.locator("#funnel-chart[data-drawn]")
        await chart.wait_for(timeout=10_000)
        await page.locator("#ab-results .split").wait_for(timeout=10_000)
        png = await chart.screenshot()
        (tmp_path / "funnel.png").write_bytes(png)
        variants = await page.locator(
            "#ab-results tbody tr td:first-child"
        ).all_text_contents()
        decision = await page.locator("#ab-results .decision").text_content()
        method = await page.locator("#ab-method").text_content()
        by_winner = await page.locator("#ab-results th").last.get_attribute("title")
        by_winner_note = await page.locator("#ab-results .by-winner").text_content()
        winner = f"/api/v1/nurturing/campaigns/{campaign_id}/splits/ab/winner"
        declared = await stack.api.put(winner, json={"variant": "B"})
        await page.reload()
        shown = page.locator("#ab-results .decision.winner")
        await shown.wait_for(timeout=10_000)
        declared_text = await shown.text_content()
        withdrawn = await stack.api.delete(winner)
        await page.reload()
        await page.locator("#ab-results .split").wait_for(timeout=10_000)
        withdrawn_text = await page.locator("#ab-results .decision").text_content()
        # An invalid range: the funnel and step by step sections show the error.
        errors_before = list(errors)
        await page.goto(
            f"{base}/dashboard/campaigns/{campaign_id}?from=2026-02-01&to=2026-01-01"
        )
        await page.locator("#funnel-error:visible").wait_for(timeout=10_000)
        await page.locator("#ab-error:visible").wait_for(timeout=10_000)
        funnel_error = await page.locator("#funnel-error").text_content()
        steps_error = await page.locator("#steps-error:visible").all_text_contents()
        steps_shown = await page.locator("#steps").is_visible()
        # A campaign no lead enrolled in, on the list for all time.
        idle_id = await campaign(stack, [{"id": "welcome", **WELCOME}])
        await page.goto(f"{base}/dashboard/campaigns")
        await page.locator(
            f'canvas[data-campaign="{campaign_id}"][data-drawn]'
        ).wait_for(timeout=10_000)
        idle = page.locator(f'[data-empty-for="{idle_id}"]')
        await idle.wait_for(timeout=10_000)
        idle_text = await idle.text_content()

    lengths = bar_lengths(png)
    nonzero = [value for value in expected if value]
    assert drawn_share(png) > 0.05
    assert len(lengths) == len(nonzero), (lengths, expected)
    longest = max(lengths)
    for length, value in zip(lengths, nonzero, strict=True):
        assert abs(length - round(longest * value / max(nonzero))) <= 1, (
            lengths,
            expected,
        )
    assert variants == ["A (control)", "B"]
    assert [v["variant"] for v in ab["splits"][0]["variants"]] == ["A", "B"]
    assert decision is not None and decision.startswith("No winner rule")
    assert (declared.status_code, withdrawn.status_code) == (200, 200)
    assert declared_text is not None
    assert declared_text.startswith("Winner: B, decided by api-key at ")
    assert withdrawn_text is not None
    assert withdrawn_text.startswith("Winner B was withdrawn by api-key at ")
    assert method == ab["method"]
    assert by_winner is not None and "winner decision sent" in by_winner
    assert by_winner_note == by_winner
    assert funnel_error is not None and "(HTTP 422)" in funnel_error
    assert len(steps_error) == 1
    assert funnel_error.split(": ", 1)[1] in steps_error[0], steps_error
    assert not steps_shown
    assert idle_text == "No enrollment yet."
    assert errors_before == []
    # After it, the console logs only the invalid range's 422 responses.
    assert [error for error in errors if "422" not in error] == []


async def test_browser_steps_chart_shows_every_measure(
    chromium: str, stack: Stack, keys: dict[str, tuple[int, str]], tmp_path: Path
) -> None:
    campaign_id, _lead_ids = await run_split_campaign(stack)
    report = (await stack.api.get(FUNNEL, params={"campaignId": campaign_id})).json()
    steps = [row for row in report["rows"] if row["level"] == "step"]
    # The converted lead clicked: its step's row has both measures.
    assert any(row["clicked"] and row["goalReached"] for row in steps), steps

    async with (
        serving(stack_app(stack)) as base,
        browser_page(chromium, tmp_path / "profile") as (page, errors),
    ):
        await page.set_viewport_size({"width": 1300, "height": 900})
        await page.goto(f"{base}{SIGN_IN}?next=/dashboard/campaigns/{campaign_id}")
        await page.fill("#key", keys["marketer"][1])
        await page.click("button[type=submit]")
        chart = page.locator("#steps-chart[data-drawn]")
        await chart.wait_for(timeout=10_000)
        png = await chart.screenshot()
        (tmp_path / "steps.png").write_bytes(png)
        headings = await page.locator("#steps-table th").all_text_contents()
        table_rows = await page.locator("#steps-table tbody tr").count()
        wrap = page.locator("#steps .table-wrap")
        scroll_width, client_width = await wrap.evaluate(
            "wrap => [wrap.scrollWidth, wrap.clientWidth]"
        )

    # The first block of each colour is its legend swatch, and the bars follow.
    bars = {field: color_blocks(png, rgb)[1:] for field, rgb in STEP_RGB.items()}
    max_sent = max(row["sent"] for row in steps)
    scale = max(block.length for block in bars["sent"]) / max_sent
    for field, blocks in bars.items():
        longest = max(row[field] for row in steps)
        assert blocks, f"no {field} bar is visible"
        drawn = max(block.length for block in blocks)
        assert abs(drawn - round(scale * longest)) <= 1, (field, drawn, steps)
    clicked = [row["clicked"] for row in steps if row["clicked"]]
    goals = [row["goalReached"] for row in steps if row["goalReached"]]
    # Each clicked bar shows whole: one block per row, as long as its count,
    # not split into thin strips by a bar drawn over it.
    assert len(bars["clicked"]) == len(clicked), (bars["clicked"], steps)
    for block, value in zip(bars["clicked"], clicked, strict=True):
        assert abs(block.length - round(scale * value)) <= 1, (block, steps)
        assert block.height >= 6, (block, steps)
    assert len(bars["goalReached"]) == len(goals), (bars["goalReached"], steps)
    for block, value in zip(bars["goalReached"], goals, strict=True):
        assert abs(block.length - round(scale * value)) <= 1, (block, steps)
    clicked_lines = {y for block in bars["clicked"] for y in block.lines}
    goal_lines = {y for block in bars["goalReached"] for y in block.lines}
    assert not clicked_lines & goal_lines, "goal reached is drawn over clicked"
    # At 1300 px the table fits, and each rate follows its count.
    assert table_rows == len(steps)
    assert scroll_width <= client_width, (scroll_width, client_width)
    assert headings.index("Open rate") == headings.index("Opened") + 1
    assert headings.index("Click rate") == headings.index("Clicked") + 1
    assert errors == []


async def test_browser_lead_page_shows_journey(
    chromium: str, stack: Stack, keys: dict[str, tuple[int, str]], tmp_path: Path
) -> None:
    sequence = [
        {"id": "welcome", **WELCOME, "next": "hold"},
        {"id": "hold", "type": "wait", "duration": "30 days"},
    ]
    trigger = {"type": "lead_created", "sources": ["webinar"]}
    campaign_id = await campaign(stack, sequence, trigger=trigger)
    lead_id = await capture(stack, "journey@company.com", "webinar", "spring")
    # From another source: the campaign leaves this lead out and sends it nothing.
    quiet_id = await capture(stack, "quiet@company.com", "referral", "spring")
    await stack.eventually(
        lambda: len(stack.sendgrid.mails()) == 1, message="welcome mail sent"
    )
    journey = (await stack.api.get(f"/api/v1/leads/{lead_id}/journey")).json()
    campaign_name = journey["enrollments"][0]["campaignName"]
    facts = [reason["fact"] for reason in journey["reasons"]]

    async with (
        serving(stack_app(stack)) as base,
        browser_page(chromium, tmp_path / "profile") as (page, errors),
    ):
        await page.goto(f"{base}/dashboard/leads")
        await page.fill("#key", keys["sales_rep"][1])
        await page.click("button[type=submit]")
        await page.wait_for_url(f"{base}/dashboard/leads")
        await page.click(f'a[href="/dashboard/leads/{lead_id}"]')
        await page.locator("body[data-loaded]").wait_for(timeout=10_000)
        reasons = await page.locator("#reasons li").all_text_contents()
        enrollment = await page.locator("#journey .enrollment h3").text_content()
        meta = await page.locator("#journey .enrollment .meta").text_content()
        score_meta = await page.locator("#score-meta").text_content()
        steps = await page.locator("#journey .timeline li").all_text_contents()
        action = await page.locator("#next-action").get_attribute("data-action")
        message_rows = await page.locator("#messages tbody tr").count()
        messages_shown = await page.locator("#messages").is_visible()
        page_errors = await page.locator("[role=alert]:visible").all_text_contents()
        await page.goto(f"{base}/dashboard/leads/{quiet_id}")
        await page.locator("body[data-loaded]").wait_for(timeout=10_000)
        quiet_empty = await page.locator("#messages-empty:visible").all_text_contents()
        quiet_header = await page.locator("#messages thead").is_visible()
        quiet_errors = await page.locator("[role=alert]:visible").all_text_contents()
        await page.click("#sign-out")
        await page.wait_for_url(f"{base}{SIGN_IN}?notice=signed-out")
        await page.goto(f"{base}/dashboard/leads")
        after = urlsplit(page.url).path

    assert facts, "the journey has no score reasons to show"
    assert len(reasons) == len(facts)
    for fact, shown in zip(facts, reasons, strict=True):
        assert fact in shown
    assert enrollment is not None and enrollment.startswith(campaign_name)
    assert any("welcome" in step for step in steps), steps
    # The wait step is the current one: it waits, it is not "next".
    assert meta is not None
    assert meta.startswith("at step hold · waiting until "), meta
    assert "next: hold" not in meta
    assert score_meta is not None
    assert score_meta.startswith("Scored 20"), score_meta
    assert action == journey["nextAction"]["action"]
    assert message_rows == 1
    assert messages_shown
    assert page_errors == []
    # A lead without messages: the empty-state text, and no table header.
    assert quiet_empty == ["No message was sent to this lead."]
    assert not quiet_header
    assert quiet_errors == []
    assert after == SIGN_IN
    assert errors == []
    assert campaign_id == journey["enrollments"][0]["campaignId"]
