"""The FastAPI application: `uvicorn api.app:create_app --factory`."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from temporalio.client import Client

from api.deps import TemporalGateway, check_api_key
from api.errors import ApiError, error_response, install_error_handlers
from api.routes import (
    campaigns,
    consent,
    events,
    health,
    imports,
    journey,
    leads,
    lifecycle,
    outcomes,
    scoring,
    unsubscribe,
    webhooks,
)
from api.workflow_calls import reconcile_forever
from nurture.config import Settings, get_settings
from nurture.db import create_db_engine, migrate
from nurture.logs import configure_logging
from nurture.rendering import TemplateRenderer
from nurture.unsubscribe import UNSUBSCRIBE_PATH
from nurture.webhook_signatures import sendgrid_verifier

logger = logging.getLogger(__name__)

PROTECTED_PREFIX = "/api/v1/"
WEBHOOK_PREFIX = "/api/v1/webhooks/"
# Routes whose callers cannot hold our API key: providers, and readers of
# unsubscribe links. Each checks a signature of its own.
PUBLIC_PREFIXES = (WEBHOOK_PREFIX, f"{UNSUBSCRIBE_PATH}/")


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
    install_error_handlers(app)

    @app.middleware("http")
    async def reject_missing_key(request: Request, call_next: Any) -> Any:
        # Runs before FastAPI reads the body, so a request without a key gets
        # 401 even when its body is malformed. Providers cannot send our key,
        # so their webhooks are left to the routes.
        path = request.url.path
        if path.startswith(PROTECTED_PREFIX) and not path.startswith(PUBLIC_PREFIXES):
            try:
                check_api_key(request.headers.get("authorization"), settings.api_key)
            except ApiError as error:
                return error_response(error)
        return await call_next(request)

    for module in (
        health,
        imports,
        leads,
        outcomes,
        journey,
        scoring,
        campaigns,
        lifecycle,
        events,
        webhooks,
        consent,
        unsubscribe,
    ):
        app.include_router(module.router)
    return app


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
    )


if __name__ == "__main__":
    main()
