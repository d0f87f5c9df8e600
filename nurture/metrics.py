"""Prometheus metrics of nurture, kept in prometheus_client's default registry.

Each process has its own counters. The API serves its registry at
`GET /metrics`, and a worker serves its registry at WORKER_APP_METRICS_ADDRESS
when that is set. The Temporal SDK's own worker metrics (`temporal_*`) come
from a separate endpoint at WORKER_METRICS_ADDRESS, because the SDK exports
them from its Rust core, outside this registry.

Label values are bounded: HTTP requests are labelled with the route template
(`/api/v1/leads/{lead_id}`), never the raw path, and values that come from
clients or providers (methods, webhook event types) outside a known set are
counted as `other`.
"""

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.context_managers import Timer
from prometheus_client.exposition import choose_encoder

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

HTTP_REQUESTS = Counter(
    "nurture_http_requests",
    "HTTP requests answered by the API, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "nurture_http_request_duration_seconds",
    "Time from the start of an API request to the end of its response.",
    ["method", "route", "status"],
)
MESSAGES = Counter(
    "nurture_messages",
    "Messages that delivery gave a status, by channel and status "
    "(sent, suppressed, unconfirmed, failed).",
    ["channel", "status"],
)
WEBHOOK_EVENTS = Counter(
    "nurture_webhook_events",
    "Provider webhook events stored or found to be duplicates, by provider and type.",
    ["provider", "type"],
)
SCORING_DURATION = Histogram(
    "nurture_scoring_duration_seconds",
    "Time to rescore stored leads: one lead (rescore) or a batch (rescore_many).",
    ["operation"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

# The route label of a request that matches no route, such as a 404.
UNMATCHED_ROUTE = "<unmatched>"
OTHER = "other"
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
# SendGrid's Event Webhook types: delivery events, then engagement events.
SENDGRID_EVENT_TYPES = frozenset(
    {
        "processed",
        "dropped",
        "delivered",
        "deferred",
        "bounce",
        "blocked",
        "open",
        "click",
        "spamreport",
        "unsubscribe",
        "group_unsubscribe",
        "group_resubscribe",
    }
)
# Twilio's MessageStatus values, and the kinds of inbound SMS that we tell apart.
TWILIO_EVENT_TYPES = frozenset(
    {
        "status_accepted",
        "status_scheduled",
        "status_canceled",
        "status_queued",
        "status_sending",
        "status_sent",
        "status_failed",
        "status_delivered",
        "status_undelivered",
        "status_receiving",
        "status_received",
        "status_read",
        "inbound_opt_out",
        "inbound_opt_in",
        "inbound_help",
        "inbound_reply",
    }
)
_KNOWN_EVENT_TYPES = {"sendgrid": SENDGRID_EVENT_TYPES, "twilio": TWILIO_EVENT_TYPES}


def count_message(channel: str, status: str) -> None:
    """Count a message that delivery moved to `status` on `channel`."""
    MESSAGES.labels(channel=channel, status=status).inc()


def count_webhook_events(provider: str, event_types: Iterable[str]) -> None:
    """Count webhook events of `provider` by type, with unknown types as `other`."""
    known = _KNOWN_EVENT_TYPES.get(provider, frozenset())
    for event_type in event_types:
        label = event_type if event_type in known else OTHER
        WEBHOOK_EVENTS.labels(provider=provider, type=label).inc()


def time_scoring(operation: str) -> Timer:
    """Return a decorator that observes each run time of a scoring function."""
    return SCORING_DURATION.labels(operation=operation).time()


def render_metrics(accept_header: str | None) -> tuple[bytes, str]:
    """Render the registry in the format the scraper accepts: body, content type."""
    encoder, content_type = choose_encoder(accept_header or "")
    return encoder(REGISTRY), content_type


def route_template(scope: "Scope") -> str:
    """Return the path template of the route that handles (or would handle) scope.

    Routing stores the matched route in `scope["route"]`. A request rejected
    before routing, such as a 401 from the API key check, gets its template
    by matching the app's routes here.
    """
    # Imported here so that workers, which count messages, load no web framework.
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Match

    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str):
        return template
    app = scope.get("app")
    if app is None:
        return UNMATCHED_ROUTE
    partial = None
    for candidate in iter_route_contexts(app.routes):
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return candidate.path_format or UNMATCHED_ROUTE
        if match == Match.PARTIAL and partial is None:
            # The path matches but the method does not: a 405.
            partial = candidate.path_format
    return partial or UNMATCHED_ROUTE


class HttpMetricsMiddleware:
    """Count each HTTP request and time it, labelled by route template."""

    def __init__(self, app: "ASGIApp") -> None:
        self.app = app

    async def __call__(self, scope: "Scope", receive: "Receive", send: "Send") -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        # When the app raises, Starlette's outermost middleware returns a 500
        # after this one has seen the exception.
        status = 500

        async def send_with_status(message: "Message") -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            method = scope["method"] if scope["method"] in HTTP_METHODS else OTHER
            labels = {
                "method": method,
                "route": route_template(scope),
                "status": str(status),
            }
            HTTP_REQUESTS.labels(**labels).inc()
            HTTP_REQUEST_DURATION.labels(**labels).observe(
                time.perf_counter() - started
            )
