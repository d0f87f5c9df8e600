"""The FastAPI application: `uvicorn api.app:create_app --factory`."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import sqlalchemy as sa
from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute
from temporalio.client import Client

from api.deps import RoleCheck, TemporalGateway
from api.errors import (
    ApiError,
    database_unavailable_response,
    document_errors,
    error_response,
    install_error_handlers,
)
from api.routes import (
    analytics,
    audit,
    campaigns,
    codec,
    consent,
    dashboard,
    events,
    health,
    imports,
    journey,
    keys,
    leads,
    lifecycle,
    outcomes,
    privacy,
    scoring,
    splits,
    unsubscribe,
    webhooks,
)
from api.throttle import BodySizeLimit, RateLimits
from api.workflow_calls import reconcile_forever
from nurture.config import Settings, get_settings
from nurture.db import create_db_engine, is_database_unavailable, migrate
from nurture.logs import RequestIdMiddleware, configure_logging, log_context
from nurture.metrics import HttpMetricsMiddleware
from nurture.rendering import TemplateRenderer
from nurture.unsubscribe import UNSUBSCRIBE_PATH
from nurture.webhook_signatures import sendgrid_verifier

logger = logging.getLogger(__name__)

PROTECTED_PREFIX = "/api/v1/"
WEBHOOK_PREFIX = "/api/v1/webhooks/"
# Routes whose callers cannot hold our API key: providers, readers of
# unsubscribe links and the Temporal Web UI. Each checks a secret of its own.
PUBLIC_PREFIXES = (WEBHOOK_PREFIX, f"{UNSUBSCRIBE_PATH}/", f"{codec.UI_CODEC_PATH}/")


def create_app(
    settings: Settings | None = None,
    temporal_client: Client | None = None,
    engine: sa.Engine | None = None,
    run_migrations: bool = True,
    reconcile: bool = True,
) -> FastAPI:
    """Build the API; tests pass their own settings, Temporal client and engine."""
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_migrations:
            migrate(settings.database_url)
        task = None
        if reconcile:
            task = asyncio.create_task(
                reconcile_forever(app.state.temporal, settings, app.state.engine)
            )
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    if not settings.api_key:
        logger.warning("NURTURE_API_KEY is empty: every /api/v1 request gets 401")
    # Raises ValueError for an invalid key, so a bad setting stops the start.
    verifier = sendgrid_verifier(
        settings.sendgrid_webhook_public_key, settings.webhook_max_age_seconds
    )
    if verifier is None:
        logger.warning(
            "SENDGRID_WEBHOOK_PUBLIC_KEY is empty: SendGrid events are accepted "
            "without a signature check"
        )
    if not settings.twilio_auth_token:
        logger.warning(
            "TWILIO_AUTH_TOKEN is empty: every Twilio webhook request gets 403"
        )
    app = FastAPI(
        dependencies=[Depends(bind_path_ids)],
        title="nurture",
        version="0.1.0",
        summary="Capture, score and nurture leads on Temporal, and hand them to sales.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine or create_db_engine(settings.database_url)
    app.state.temporal = TemporalGateway(settings, temporal_client)
    app.state.renderer = TemplateRenderer(settings.templates_dir)
    app.state.sendgrid_verifier = verifier
    # CSV imports running in the background; held so they are not collected.
    app.state.background_tasks = set()
    app.state.rate_limits = RateLimits(settings)
    install_error_handlers(app)

    @app.middleware("http")
    async def reject_missing_key(request: Request, call_next: Any) -> Any:
        # Runs before FastAPI reads the body, so a request without a key gets
        # 401 even when its body is malformed. Providers cannot send our key,
        # so their webhooks are left to the routes.
        path = request.url.path
        if path.startswith(PROTECTED_PREFIX) and not path.startswith(PUBLIC_PREFIXES):
            try:
                # The Bearer key, else the dashboard's session cookie (GET, HEAD).
                request.state.principal = await run_in_threadpool(
                    dashboard.request_principal, request, settings, app.state.engine
                )
            except ApiError as error:
                return error_response(error)
            except (DBAPIError, PoolTimeoutError) as error:
                if not is_database_unavailable(error):
                    raise
                return database_unavailable_response(request, error)
        return await call_next(request)

    # Inside the metrics and the request id, so a 413 is counted and logged.
    app.add_middleware(BodySizeLimit, settings=settings)
    # Outside the key check, so 401s are counted and logged with a request id.
    app.add_middleware(HttpMetricsMiddleware)
    app.add_middleware(RequestIdMiddleware)
    # Added last, so it runs first: CORS preflights carry no API key.
    app.add_middleware(codec.CodecCorsMiddleware, origins=codec.ui_origins(settings))
    for module in (
        health,
        imports,
        leads,
        outcomes,
        journey,
        scoring,
        campaigns,
        splits,
        lifecycle,
        events,
        webhooks,
        consent,
        unsubscribe,
        codec,
        keys,
        audit,
        privacy,
        analytics,
    ):
        _document_roles(module.router.routes)
        document_errors(module.router.routes, PROTECTED_PREFIX, PUBLIC_PREFIXES)
        app.include_router(module.router)
    dashboard.install(app)
    return app


async def bind_path_ids(request: Request) -> AsyncIterator[None]:
    """Put the lead, campaign or message id in the path on the request's logs."""
    params = request.path_params
    with log_context(
        lead_id=params.get("lead_id"),
        campaign_id=params.get("campaign_id"),
        message_id=params.get("message_id"),
    ):
        yield


def route_roles(route: APIRoute) -> tuple[str, ...] | None:
    """Return the roles a route admits, or None when it takes no API key."""
    for dependency in route.dependant.dependencies:
        if isinstance(dependency.call, RoleCheck):
            return dependency.call.roles
    return None


def _document_roles(routes: Sequence[BaseRoute]) -> None:
    """Put each route's roles into its OpenAPI description, as `x-roles` too."""
    for route in routes:
        if not isinstance(route, APIRoute):
            continue
        roles = route_roles(route)
        if roles is None:
            continue
        if "x-roles" in (route.openapi_extra or {}):
            continue
        route.openapi_extra = {**(route.openapi_extra or {}), "x-roles": list(roles)}
        route.description = (
            f"{route.description}\n\nRoles: {', '.join(roles)}."
            if route.description
            else f"Roles: {', '.join(roles)}."
        )


def main() -> None:
    """Run the API with uvicorn on API_HOST:API_PORT."""
    import uvicorn

    configure_logging()
    settings = get_settings()
    uvicorn.run(
        "api.app:create_app",
        factory=True,
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )


if __name__ == "__main__":
    main()
