"""Health check for load balancers and `make run`: no API key needed."""

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from nurture.db import check_database

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 5


async def _check_database(request: Request) -> str:
    try:
        await asyncio.wait_for(
            run_in_threadpool(check_database, request.app.state.engine),
            CHECK_TIMEOUT_SECONDS,
        )
    except Exception as error:  # any failure means unhealthy: report its type
        logger.warning("health check: database failed: %s", error)
        return f"failed: {type(error).__name__}"
    return "ok"


async def _check_temporal(request: Request) -> str:
    try:
        client = await asyncio.wait_for(
            request.app.state.temporal.client(), CHECK_TIMEOUT_SECONDS
        )
        await asyncio.wait_for(
            client.service_client.check_health(), CHECK_TIMEOUT_SECONDS
        )
    except Exception as error:  # any failure means unhealthy: report its type
        logger.warning("health check: Temporal failed: %s", error)
        return f"failed: {type(error).__name__}"
    return "ok"


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """Return 200 when the database and Temporal both respond, 503 otherwise."""
    database, temporal = await asyncio.gather(
        _check_database(request), _check_temporal(request)
    )
    healthy = database == "ok" and temporal == "ok"
    return JSONResponse(
        {
            "status": "ok" if healthy else "unavailable",
            "database": database,
            "temporal": temporal,
        },
        status_code=200 if healthy else 503,
    )
