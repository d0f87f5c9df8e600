"""Request size and rate limits for the routes the public can reach.

Web forms (integration keys), provider webhooks and unsubscribe links are
open to anyone who finds them, so each client address gets a request budget
per route group, and every body has a size limit. People's own keys are not
rate limited: they are few, known, and in the audit log.
"""

import logging
import time
from typing import Any

from fastapi import Depends, Request
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ApiError, ErrorBody, error_response
from nurture.config import Settings

logger = logging.getLogger(__name__)

IMPORT_PATH = "/api/v1/leads/import"
# Small bodies only: a form post, an event or a click on an unsubscribe button.
FORM_PATHS = ("/api/v1/leads", "/api/v1/events")
UNSUBSCRIBE_PREFIX = "/api/v1/unsubscribe/"


class RateLimits:
    """The limiter of one API process and the parsed limit of each route group."""

    def __init__(self, settings: Settings) -> None:
        # "memory://" counts per API process; "async+redis://host" (with the
        # redis package installed) shares the counts between processes.
        uri = settings.rate_limit_storage_uri
        if "://" in uri and not uri.startswith("async+"):
            uri = f"async+{uri}"
        self.limiter = MovingWindowRateLimiter(storage_from_string(uri))
        self.items: dict[str, RateLimitItem | None] = {
            "capture": _parse(settings.rate_limit_capture),
            "webhooks": _parse(settings.rate_limit_webhooks),
            "unsubscribe": _parse(settings.rate_limit_unsubscribe),
        }

    async def check(self, group: str, client: str) -> None:
        """Count a request of the client in the group; raise 429 past the limit."""
        item = self.items[group]
        if item is None:
            return
        if await self.limiter.hit(item, group, client):
            return
        stats = await self.limiter.get_window_stats(item, group, client)
        retry_after = max(1, int(stats.reset_time - time.time() + 0.999))
        logger.warning("rate limit of %s reached by %s (%s)", group, client, item)
        raise ApiError(
            429,
            "rate_limited",
            f"too many requests to {group} routes from {client}: the limit is "
            f"{item}; retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
        )


def _parse(text: str) -> RateLimitItem | None:
    return parse(text) if text.strip() else None


def client_address(request: Request) -> str:
    """Return the caller's IP address, as forwarded by a FORWARDED_ALLOW_IPS proxy."""
    return request.client.host if request.client else "unknown"


def rate_limited(group: str) -> Any:
    """Return a route dependency that counts the request against the group's limit.

    For lead capture and events only integration keys are counted: those
    are the keys that web forms carry.
    """

    async def dependency(request: Request) -> None:
        principal = getattr(request.state, "principal", None)
        if group == "capture" and (
            principal is None or principal.role != "integration"
        ):
            return
        limits: RateLimits = request.app.state.rate_limits
        await limits.check(group, client_address(request))

    return Depends(dependency)


RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": "Too many requests"}
}


class _BodyTooLarge(Exception):
    pass


def _too_large(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(_BodyTooLarge) is not None
    return isinstance(error, _BodyTooLarge)


class BodySizeLimit:
    """Reject with 413 a request whose body is larger than its route allows.

    The declared Content-Length is checked first. A body sent without one
    (chunked) is read into memory up to the limit before the route receives it,
    so the route never gets a cut body; a CSV import is counted as it
    streams instead, since its limit is large.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def limit_for(self, path: str) -> int:
        if path == IMPORT_PATH:
            return self.settings.max_import_bytes
        if path in FORM_PATHS or path.startswith(UNSUBSCRIBE_PREFIX):
            return self.settings.max_form_body_bytes
        return self.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit():
            if int(declared) > limit:
                await self._reject(scope, send, limit)
                return
        elif scope["path"] != IMPORT_PATH:
            buffered = await _read_up_to(receive, limit)
            if buffered is None:
                await self._reject(scope, send, limit)
                return
            await self.app(scope, _replay(buffered, receive), send)
            return
        await self._stream_counted(scope, receive, send, limit)

    async def _stream_counted(
        self, scope: Scope, receive: Receive, send: Send, limit: int
    ) -> None:
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BaseException as error:
            if started or not _too_large(error):
                raise
            await self._reject(scope, send, limit)

    async def _reject(self, scope: Scope, send: Send, limit: int) -> None:
        logger.warning(
            "request body over %d bytes on %s rejected", limit, scope["path"]
        )
        response = error_response(
            ApiError(
                413,
                "body_too_large",
                f"the request body is larger than {limit} bytes, the limit of "
                f"{scope['path']}; send a smaller body",
            )
        )
        await response(scope, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


async def _read_up_to(receive: Receive, limit: int) -> list[Message] | None:
    """Read the whole request, or return None once it passes the limit."""
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages
        size += len(message.get("body", b""))
        if size > limit:
            return None
        if not message.get("more_body", False):
            return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """Hand the buffered messages to the app, then the live ones."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
