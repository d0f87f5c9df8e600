"""The web dashboard at /dashboard, and its sign-in with a session cookie.

The pages are Jinja2 templates. Their charts and most of their tables are
drawn in the browser by `static/dashboard.js` from the API's own JSON
(analytics, leads, journeys), which the browser fetches with the session
cookie. The cookie contains a random token, never the key. The server keeps its
hash in `dashboard_sessions` with the key it belongs to. Every request looks
both up again, so signing out, revoking the key or its expiry ends the
session at once.
"""

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa
from fastapi import APIRouter, Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlmodel import Session, col, func, select

from api.deps import EngineDep, SettingsDep, resolve_principal
from api.errors import ApiError
from nurture.config import Settings
from nurture.keys import LAST_USED_RESOLUTION, Principal, Role, authenticate, hash_key
from nurture.lead_scoring import load_context
from nurture.models import (
    ApiKey,
    AuditEntry,
    Campaign,
    CampaignVersion,
    DashboardSession,
    Lead,
    utcnow,
)
from nurture.privacy import is_erased
from nurture.schemas import MAX_DB_INTEGER

DASHBOARD_PATH = "/dashboard"
DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "templates" / "dashboard"
SESSION_COOKIE = "nurture_session"
# The cookie is accepted in place of the key on these methods only, so a page
# on another site cannot make a signed-in browser change anything (CSRF).
COOKIE_METHODS = frozenset({"GET", "HEAD"})
# The cookie's reference to NURTURE_API_KEY, which has no row in api_keys.
INSTALLATION_KEY_REF = "installation"
INSTALLATION_ACTOR = "api-key"
MARKETING_ROLES: tuple[Role, ...] = ("admin", "marketer")
LEAD_ROLES: tuple[Role, ...] = ("admin", "marketer", "sales_rep")
HOT_LEADS_LIMIT = 100
RANGE_PRESETS_DAYS = (7, 30, 90)
# Scripts, styles and fetch() calls come from this server only, and no other
# page may frame the dashboard's pages.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(prefix=DASHBOARD_PATH, include_in_schema=False)
templates = Jinja2Templates(directory=DASHBOARD_DIR)


# The session cookie.


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _session_secret(settings: Settings) -> bytes:
    """Derive the cookie key from the link-signing secret, for this use only."""
    return hmac.new(
        settings.signing_secret, b"nurture-dashboard-session", hashlib.sha256
    ).digest()


# Ended and expired sessions stay a day, so a late request reads why it ended.
SESSION_ROWS_KEPT = timedelta(days=1)


def csrf_token(settings: Settings, session: str) -> str:
    """Return the token the sign-out form sends back with the session's cookie."""
    message = f"csrf:{session}".encode()
    return _b64(hmac.new(_session_secret(settings), message, hashlib.sha256).digest())


class SessionEnded(ApiError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            401,
            "unauthorized",
            f"the dashboard session {reason}: sign in again at "
            f"{DASHBOARD_PATH}/sign-in, or send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


@dataclass(frozen=True)
class _SessionKey:
    """The key a session refers to, as stored now."""

    fingerprint: str
    principal: Principal
    # None for NURTURE_API_KEY, which has no row.
    row: ApiKey | None = None


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _session_key(settings: Settings, engine: sa.Engine, ref: str) -> _SessionKey | None:
    if ref == INSTALLATION_KEY_REF:
        if not settings.api_key:
            return None
        return _SessionKey(
            hash_key(settings.api_key), Principal(INSTALLATION_ACTOR, "admin")
        )
    if not _is_number(ref) or int(ref) > MAX_DB_INTEGER:
        return None
    with Session(engine, expire_on_commit=False) as session:
        row = session.get(ApiKey, int(ref))
    if row is None:
        return None
    principal = Principal(f"key:{row.id}:{row.name}", row.role)  # type: ignore[arg-type]
    return _SessionKey(row.key_hash, principal, row)


def _record_use(engine: sa.Engine, row: ApiKey) -> None:
    """Set the key's last_used_at as API calls do, at most every few minutes."""
    now = utcnow()
    if row.last_used_at is not None and now - row.last_used_at <= LAST_USED_RESOLUTION:
        return
    with Session(engine) as session:
        stored = session.get(ApiKey, row.id)
        if stored is not None:
            stored.last_used_at = now
            session.add(stored)
            session.commit()


def _session_row(session: Session, token: str) -> DashboardSession | None:
    """Find the stored session of a cookie token, by the token's hash."""
    if not token or len(token) > 200:
        return None
    return session.exec(
        select(DashboardSession).where(DashboardSession.token_hash == hash_key(token))
    ).first()


def _stored_session(engine: sa.Engine, token: str) -> DashboardSession | None:
    with Session(engine, expire_on_commit=False) as session:
        return _session_row(session, token)


def session_principal(token: str, settings: Settings, engine: sa.Engine) -> Principal:
    """Return the principal of a session cookie, or raise SessionEnded (401)."""
    stored = _stored_session(engine, token)
    if stored is None:
        raise SessionEnded("cookie does not match any session")
    if stored.ended_at is not None:
        raise SessionEnded("was signed out")
    now = utcnow()
    if stored.expires_at <= now:
        raise SessionEnded("has expired")
    key = _session_key(settings, engine, stored.key_ref)
    if key is None or not hmac.compare_digest(
        key.fingerprint.encode(), stored.key_fingerprint.encode()
    ):
        raise SessionEnded("ended: its key was replaced or deleted")
    row = key.row
    if row is not None:
        if row.revoked_at is not None or (
            row.expires_at is not None and row.expires_at <= now
        ):
            raise SessionEnded("ended: its key was revoked or has expired")
        _record_use(engine, row)
    return key.principal


def request_principal(
    request: Request, settings: Settings, engine: sa.Engine
) -> Principal:
    """Return the principal of an API request: its Bearer key, else its session.

    Raises ApiError 401 when neither is valid, and for a session cookie sent
    with any method but GET and HEAD.
    """
    authorization = request.headers.get("authorization")
    token = request.cookies.get(SESSION_COOKIE)
    if authorization or not token:
        return resolve_principal(authorization, settings, engine)
    if request.method not in COOKIE_METHODS:
        raise ApiError(
            401,
            "unauthorized",
            f"the dashboard session cookie is accepted for GET and HEAD only, so "
            f"another site cannot make a signed-in browser {request.method} on "
            "your behalf: send the header 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return session_principal(token, settings, engine)


# Page access and errors.


class PageError(Exception):
    """A page that cannot be shown, rendered as an HTML error page."""

    def __init__(
        self,
        status: int,
        title: str,
        message: str,
        principal: Principal | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.principal = principal


class SignInRequired(Exception):
    """The request has neither a key nor a valid session: go to the sign-in page."""

    def __init__(self, next_path: str, notice: str | None = None) -> None:
        super().__init__(next_path)
        self.next_path = next_path
        self.notice = notice


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class PageAccess:
    """A page dependency that admits the given roles and returns the principal."""

    def __init__(self, *roles: Role) -> None:
        self.roles = roles

    def __call__(self, request: Request) -> Principal:
        settings: Settings = request.app.state.settings
        engine: sa.Engine = request.app.state.engine
        authorization = request.headers.get("authorization")
        token = request.cookies.get(SESSION_COOKIE)
        requested = request.url.path
        if request.url.query:
            requested += f"?{request.url.query}"
        if not authorization and not token:
            raise SignInRequired(requested)
        try:
            if authorization:
                principal = resolve_principal(authorization, settings, engine)
            else:
                principal = session_principal(token or "", settings, engine)
        except SessionEnded:
            raise SignInRequired(requested, "ended") from None
        except ApiError as error:
            raise PageError(error.status, "Not signed in", error.message) from None
        if principal.role not in self.roles:
            raise PageError(
                403,
                "Not for your role",
                f"{_article(principal.role).capitalize()} {principal.role} key may "
                f"not open this page: it needs one of the roles "
                f"{', '.join(self.roles)}. "
                "Ask an admin for such a key.",
                principal,
            )
        return principal


MarketingPage = Annotated[Principal, Depends(PageAccess(*MARKETING_ROLES))]
LeadsPage = Annotated[Principal, Depends(PageAccess(*LEAD_ROLES))]


def _navigation(principal: Principal | None) -> list[tuple[str, str]]:
    if principal is None:
        return []
    links = []
    if principal.role in MARKETING_ROLES:
        links.append(("Campaigns", f"{DASHBOARD_PATH}/campaigns"))
    if principal.role in LEAD_ROLES:
        links.append(("Hot leads", f"{DASHBOARD_PATH}/leads"))
    return links


def render(
    request: Request,
    name: str,
    principal: Principal | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render a dashboard template with the navigation and security headers."""
    settings: Settings = request.app.state.settings
    token = request.cookies.get(SESSION_COOKIE)
    values = {
        "principal": principal,
        "navigation": _navigation(principal),
        "csrf": csrf_token(settings, token) if token and principal else None,
        "path": request.url.path,
        **context,
    }
    return templates.TemplateResponse(
        request, name, values, status_code=status, headers=PAGE_HEADERS
    )


async def _page_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, PageError)
    return render(
        request,
        "error.html",
        error.principal,
        error.status,
        title=error.title,
        message=error.message,
    )


async def _sign_in_redirect(request: Request, error: Exception) -> Response:
    assert isinstance(error, SignInRequired)
    query = {"next": error.next_path}
    if error.notice:
        query["notice"] = error.notice
    response = RedirectResponse(f"{DASHBOARD_PATH}/sign-in?{urlencode(query)}", 303)
    if error.notice == "ended":
        _clear_cookie(response, request.app.state.settings)
    return response


def install(app: FastAPI) -> None:
    """Add the dashboard's pages, static files and error pages to the app."""
    app.include_router(router)
    app.mount(
        f"{DASHBOARD_PATH}/static",
        StaticFiles(directory=DASHBOARD_DIR / "static"),
        name="dashboard-static",
    )
    app.add_exception_handler(PageError, _page_error)
    app.add_exception_handler(SignInRequired, _sign_in_redirect)


# Sign-in and sign-out.


def _secure(settings: Settings) -> bool:
    return settings.public_base_url.lower().startswith("https://")


def _clear_cookie(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        secure=_secure(settings),
        httponly=True,
        samesite="strict",
    )


def _safe_next(value: str | None) -> str:
    """Return a dashboard path to go to after sign-in, never another site."""
    if not value:
        return DASHBOARD_PATH
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or "\\" in value:
        return DASHBOARD_PATH
    if parts.path != DASHBOARD_PATH and not parts.path.startswith(f"{DASHBOARD_PATH}/"):
        return DASHBOARD_PATH
    return value


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_same_origin(request: Request, settings: Settings) -> None:
    """Raise PageError 403 for a form posted from another site (CSRF).

    Browsers send `Origin` with every POST and `Sec-Fetch-Site` with most, and
    either one naming another site rejects the request.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    origin = request.headers.get("origin")
    allowed = {_origin(str(request.base_url)), _origin(settings.public_base_url)}
    if fetch_site in ("cross-site", "same-site") or (
        origin is not None and origin.lower() not in allowed
    ):
        raise PageError(
            403,
            "Form from another site",
            f"this form was posted from {origin or 'another site'}, not from "
            "the dashboard itself, so it was rejected. Open the dashboard and "
            "try again.",
        )


NOTICES = {
    "ended": "Your session ended: its key was revoked or expired, or the "
    "session timed out. Sign in again.",
    "signed-out": "You are signed out.",
}


def _sign_in_form(
    request: Request, status: int, next_path: str, error: str | None = None
) -> HTMLResponse:
    notice = NOTICES.get(request.query_params.get("notice", ""))
    return render(
        request,
        "sign_in.html",
        None,
        status,
        next=next_path,
        error=error,
        notice=notice,
    )


@router.get("/sign-in")
def sign_in_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _sign_in_form(request, 200, _safe_next(next))


@dataclass(frozen=True)
class _KeyMatch:
    """A pasted key that is valid now, and what its session cookie refers to."""

    principal: Principal
    ref: str
    fingerprint: str
    expires_at: datetime | None


def _match_key(engine: sa.Engine, settings: Settings, key: str) -> _KeyMatch | None:
    """Return the match of a pasted key, or None when the key is not valid."""
    if settings.api_key and hmac.compare_digest(
        key.encode(), settings.api_key.encode()
    ):
        principal = Principal(INSTALLATION_ACTOR, "admin")
        return _KeyMatch(principal, INSTALLATION_KEY_REF, hash_key(key), None)
    with Session(engine, expire_on_commit=False) as session:
        found = authenticate(session, key)
        row = session.exec(
            select(ApiKey).where(ApiKey.key_hash == hash_key(key))
        ).first()
    if found is None or row is None:
        return None
    return _KeyMatch(found, str(row.id), row.key_hash, row.expires_at)


def _start_session(
    engine: sa.Engine, settings: Settings, match: _KeyMatch
) -> tuple[str, datetime]:
    """Store a new session and audit the sign-in; return its token and expiry.

    Also deletes the sessions that ended or expired more than a day ago.
    """
    now = utcnow()
    expires_at = now + timedelta(hours=settings.dashboard_session_hours)
    if match.expires_at is not None:
        expires_at = min(expires_at, match.expires_at)
    token = secrets.token_urlsafe(32)
    with Session(engine) as session:
        session.execute(
            sa.delete(DashboardSession).where(
                sa.or_(
                    col(DashboardSession.expires_at) < now - SESSION_ROWS_KEPT,
                    col(DashboardSession.ended_at) < now - SESSION_ROWS_KEPT,
                )
            )
        )
        session.add(
            DashboardSession(
                token_hash=hash_key(token),
                key_ref=match.ref,
                key_fingerprint=match.fingerprint,
                created_at=now,
                expires_at=expires_at,
            )
        )
        session.add(
            AuditEntry(
                actor=match.principal.actor,
                action="dashboard.signed_in",
                entity_type="api_key",
                entity_id=match.ref,
                detail={"expiresAt": expires_at.isoformat()},
            )
        )
        session.commit()
    return token, expires_at


def _end_session(engine: sa.Engine, settings: Settings, token: str) -> None:
    """Mark the session signed out, and audit it, unless it already ended."""
    with Session(engine) as session:
        stored = _session_row(session, token)
        if stored is None or stored.ended_at is not None:
            return
        stored.ended_at = utcnow()
        session.add(stored)
        key = _session_key(settings, engine, stored.key_ref)
        session.add(
            AuditEntry(
                actor=key.principal.actor if key else f"key:{stored.key_ref}",
                action="dashboard.signed_out",
                entity_type="api_key",
                entity_id=stored.key_ref,
                detail={"sessionId": stored.id},
            )
        )
        session.commit()


@router.post("/sign-in")
def sign_in(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    key: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    check_same_origin(request, settings)
    next_path = _safe_next(next)
    key = key.strip()

    if not key:
        return _sign_in_form(
            request, 422, next_path, "Paste your API key into the field first."
        )
    match = _match_key(engine, settings, key)
    if match is None:
        return _sign_in_form(
            request,
            401,
            next_path,
            "That key is not valid. Use NURTURE_API_KEY or a key made with "
            "nurture keys create; a key may also have expired or been revoked.",
        )
    role = match.principal.role
    if role not in LEAD_ROLES:
        return _sign_in_form(
            request,
            403,
            next_path,
            f"{_article(role).capitalize()} {role} key cannot open the dashboard: "
            f"it needs one of the roles {', '.join(LEAD_ROLES)}. Ask an admin "
            "for such a key.",
        )

    cookie, expires_at = _start_session(engine, settings, match)
    response = RedirectResponse(next_path, 303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=max(int((expires_at - utcnow()).total_seconds()), 0),
        path="/",
        secure=_secure(settings),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/sign-out")
def sign_out(
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    csrf: Annotated[str, Form()] = "",
) -> Response:
    check_same_origin(request, settings)
    token = request.cookies.get(SESSION_COOKIE)
    if token and not hmac.compare_digest(
        csrf.encode(), csrf_token(settings, token).encode()
    ):
        raise PageError(
            403,
            "Sign-out rejected",
            "the sign-out form did not carry this session's token; use the "
            "Sign out button of a dashboard page",
        )
    if token:
        _end_session(engine, settings, token)
    response = RedirectResponse(f"{DASHBOARD_PATH}/sign-in?notice=signed-out", 303)
    _clear_cookie(response, settings)
    return response


# Pages.


def _range_presets(today: date) -> list[tuple[str, dict[str, str]]]:
    presets = [
        (
            f"Last {days} days",
            {
                "from": (today - timedelta(days=days - 1)).isoformat(),
                "to": today.isoformat(),
            },
        )
        for days in RANGE_PRESETS_DAYS
    ]
    return [*presets, ("All time", {})]


def _range_context(request: Request) -> dict[str, Any]:
    """Return the time range of the query string, as the picker shows it."""
    start = request.query_params.get("from", "")
    end = request.query_params.get("to", "")
    return {
        "range_from": start,
        "range_to": end,
        "range_presets": _range_presets(datetime.now(UTC).date()),
    }


@router.get("")
def home(principal: LeadsPage) -> RedirectResponse:
    if principal.role in MARKETING_ROLES:
        return RedirectResponse(f"{DASHBOARD_PATH}/campaigns", 303)
    return RedirectResponse(f"{DASHBOARD_PATH}/leads", 303)


@router.get("/campaigns")
def campaign_list(
    request: Request, principal: MarketingPage, engine: EngineDep
) -> HTMLResponse:
    with Session(engine) as session:
        campaigns = session.exec(
            select(Campaign).order_by(col(Campaign.created_at).desc())
        ).all()
    return render(
        request,
        "campaigns.html",
        principal,
        campaigns=campaigns,
        **_range_context(request),
    )


def _split_steps(definition: dict[str, Any]) -> list[str]:
    return [
        str(step.get("id"))
        for step in definition.get("sequence", [])
        if isinstance(step, dict) and step.get("type") == "split"
    ]


@router.get("/campaigns/{campaign_id}")
def campaign_page(
    request: Request, campaign_id: str, principal: MarketingPage, engine: EngineDep
) -> HTMLResponse:
    with Session(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign is None:
            raise PageError(
                404,
                "Campaign not found",
                f"campaign {campaign_id} not found; pick one from the list",
                principal,
            )
        version = session.exec(
            select(CampaignVersion).where(
                CampaignVersion.campaign_id == campaign.id,
                CampaignVersion.version == campaign.current_version,
            )
        ).first()
    definition = version.definition if version else {}
    confidence = request.query_params.get("confidence", "0.95")
    return render(
        request,
        "campaign.html",
        principal,
        campaign=campaign,
        split_steps=_split_steps(definition),
        goals=[goal.get("id") for goal in definition.get("goals", [])],
        confidence=confidence,
        **_range_context(request),
    )


def _minimum_score(text: str | None) -> tuple[int, str | None]:
    if text is None or not text.strip():
        return 0, None
    if not text.strip().isdigit() or int(text) > 100:
        return 0, f"minimum score {text!r} is not a whole number from 0 to 100"
    return int(text), None


@router.get("/leads")
def hot_leads(
    request: Request,
    principal: LeadsPage,
    engine: EngineDep,
    settings: SettingsDep,
) -> HTMLResponse:
    minimum, error = _minimum_score(request.query_params.get("minScore"))
    # Leads still to work: not unsubscribed, bounced or erased, and neither won
    # nor lost yet.
    conditions = [
        col(Lead.status) == "active",
        col(Lead.outcome).is_(None),
        col(Lead.score) >= minimum,
    ]
    with Session(engine) as session:
        leads = session.exec(
            select(Lead)
            .where(*conditions)
            .order_by(col(Lead.score).desc(), col(Lead.updated_at).desc(), col(Lead.id))
            .limit(HOT_LEADS_LIMIT)
        ).all()
        total = session.exec(
            select(func.count()).select_from(Lead).where(*conditions)
        ).one()
        threshold = load_context(session, settings.mql_threshold).criteria.mql_threshold
    return render(
        request,
        "leads.html",
        principal,
        leads=leads,
        total=total,
        minimum=minimum,
        error=error,
        threshold=threshold,
    )


@router.get("/leads/{lead_id}")
def lead_page(
    request: Request, lead_id: str, principal: LeadsPage, engine: EngineDep
) -> HTMLResponse:
    # The page itself shows no personal data: the browser reads the lead, its
    # journey and messages from the API, which audits each read.
    with Session(engine) as session:
        lead = session.get(Lead, lead_id)
        erased = lead is not None and is_erased(lead)
    if lead is None:
        raise PageError(
            404,
            "Lead not found",
            f"lead {lead_id} not found; pick one from the hot leads",
            principal,
        )
    if erased:
        raise PageError(
            410,
            "Lead erased",
            f"lead {lead_id} was erased; nothing about the person is kept",
            principal,
        )
    return render(request, "lead.html", principal, lead_id=lead_id)
