"""One-click unsubscribe (RFC 8058): the links in every marketing email.

No API key: the link's signature is the proof. `GET` shows a page with a
button, because mail scanners follow links; `POST` unsubscribes, both from
that button and from mail clients' one-click `List-Unsubscribe-Post`.
"""

import logging
from dataclasses import dataclass

import jinja2
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, GatewayDep, SettingsDep
from api.errors import ApiError
from api.throttle import RateLimits, client_address
from api.workflow_calls import signal_enrollment
from nurture.config import Settings
from nurture.consent import record_consent
from nurture.contracts import EngagementSignal
from nurture.db import session_scope
from nurture.models import EngagementEvent, Enrollment, Lead, Message
from nurture.unsubscribe import UNSUBSCRIBE_PATH, InvalidLink, UnsubscribeLinks

router = APIRouter(prefix=UNSUBSCRIBE_PATH, tags=["unsubscribe"])
logger = logging.getLogger(__name__)

_PAGE = "pages/unsubscribe.html"
# A link whose signature does not verify gets an HTML page that explains it.
# Such links count against RATE_LIMIT_UNSUBSCRIBE, valid ones never do: mail
# providers post one-click unsubscribes for many readers from a few addresses.
_INVALID_LINK: dict[int | str, dict[str, object]] = {
    400: {
        "description": "The link is incomplete or was changed, as the page explains",
        "content": {"text/html": {}},
    },
    429: {
        "description": "Too many invalid links from the caller's address",
        "content": {"text/html": {}},
    },
}


def _page(settings: Settings, status: int, **values: object) -> HTMLResponse:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(settings.templates_dir), autoescape=True
    )
    html = environment.get_template(_PAGE).render(**values)
    return HTMLResponse(html, status_code=status)


def _invalid(settings: Settings) -> HTMLResponse:
    return _page(
        settings,
        400,
        title="This link does not work",
        text=(
            "The unsubscribe link is incomplete or was changed. Open the link "
            "from the email again, or reply to the email and ask us to stop."
        ),
        confirm=False,
    )


async def _rejected(request: Request, settings: Settings) -> HTMLResponse:
    """Return the invalid-link page, or 429 once the caller sent too many."""
    limits: RateLimits = request.app.state.rate_limits
    try:
        await limits.check("unsubscribe", client_address(request))
    except ApiError as error:
        page = _page(
            settings,
            429,
            title="Too many attempts",
            text=(
                "This address opened too many invalid unsubscribe links. Wait a "
                "minute, then open the link from the email again."
            ),
            confirm=False,
        )
        page.headers.update(error.headers or {})
        return page
    return _invalid(settings)


def _mask(address: str | None) -> str:
    if not address or "@" not in address:
        return "your address"
    local, _, domain = address.partition("@")
    return f"{local[:1]}***@{domain}"


@dataclass(frozen=True)
class _Unsubscribed:
    enrollment_workflow_id: str | None
    already: bool


def _unsubscribe(
    engine: sa.Engine, lead_id: str, message_id: str, one_click: bool
) -> _Unsubscribed | None:
    with session_scope(engine) as session:
        lead = session.get(Lead, lead_id)
        if lead is None:
            return None
        already = lead.email_consent == "opted_out"
        message = session.get(Message, message_id)
        if not already:
            record_consent(
                session,
                lead,
                "email",
                "opted_out",
                source="unsubscribe_link",
                actor="lead",
                proof={
                    "messageId": message_id,
                    "method": "one-click" if one_click else "page",
                },
            )
            if lead.status == "active":
                # As SendGrid's unsubscribe event does, so lists filter alike.
                lead.status = "unsubscribed"
                session.add(lead)
            session.add(
                EngagementEvent(
                    lead_id=lead.id,
                    message_id=message.id if message else None,
                    type="unsubscribe",
                    source="unsubscribe_link",
                    provider_event_id=f"unsubscribe:{message_id}",
                    data={"method": "one-click" if one_click else "page"},
                )
            )
        workflow_id = None
        if message is not None and message.enrollment_id:
            enrollment = session.get(Enrollment, message.enrollment_id)
            if enrollment is not None and enrollment.status == "active":
                workflow_id = enrollment.workflow_id
    return _Unsubscribed(workflow_id, already)


def _reader(engine: sa.Engine, lead_id: str) -> tuple[str | None, bool]:
    """Return the lead's address and whether it has opted out of email."""
    with session_scope(engine) as session:
        lead = session.get(Lead, lead_id)
        address = lead.email if lead else None
        return address, lead is not None and lead.email_consent == "opted_out"


@router.get("/{token}", response_class=HTMLResponse, responses=_INVALID_LINK)
async def confirm_unsubscribe(
    token: str, request: Request, settings: SettingsDep, engine: EngineDep
) -> HTMLResponse:
    """Show the page where the reader confirms with one button."""
    links = UnsubscribeLinks(settings.signing_secret, settings.public_base_url)
    try:
        lead_id, _message_id = links.verify(token)
    except InvalidLink:
        return await _rejected(request, settings)
    address, already = await run_in_threadpool(_reader, engine, lead_id)
    if already:
        return _page(
            settings,
            200,
            title="You are unsubscribed",
            text=f"{_mask(address)} gets no more marketing email from us.",
            confirm=False,
        )
    return _page(
        settings,
        200,
        title="Unsubscribe?",
        text=f"Stop marketing email to {_mask(address)}?",
        confirm=True,
    )


@router.post("/{token}", response_class=HTMLResponse, responses=_INVALID_LINK)
async def unsubscribe(
    token: str,
    request: Request,
    settings: SettingsDep,
    engine: EngineDep,
    temporal: GatewayDep,
) -> HTMLResponse:
    """Unsubscribe the lead from marketing email; the link's signature proves who.

    Mail clients post `List-Unsubscribe=One-Click` here (RFC 8058); the page's
    button posts an empty form. Doing it twice is harmless.
    """
    links = UnsubscribeLinks(settings.signing_secret, settings.public_base_url)
    try:
        lead_id, message_id = links.verify(token)
    except InvalidLink:
        return await _rejected(request, settings)
    form = await request.form()
    one_click = form.get("List-Unsubscribe") == "One-Click"
    done = await run_in_threadpool(_unsubscribe, engine, lead_id, message_id, one_click)
    if done is not None and not done.already and done.enrollment_workflow_id:
        await signal_enrollment(
            temporal,
            done.enrollment_workflow_id,
            EngagementSignal(message_id=message_id, type="unsubscribe"),
        )
    logger.info("lead %s unsubscribed from email by link", lead_id)
    return _page(
        settings,
        200,
        title="You are unsubscribed",
        text="You will get no more marketing email from us.",
        confirm=False,
    )
