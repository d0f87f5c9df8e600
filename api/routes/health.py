"""Operator endpoints without an API key: /healthz, /readyz and /metrics.

- /healthz: 200 when the database and Temporal respond, for `make run` and
  load balancers.
- /readyz: /healthz plus a worker polling each send queue, so a message
  accepted now can also be sent. The 503 body names each failing check and
  what to do about it.
- /metrics: this API process's Prometheus metrics (see nurture.metrics).
"""

import asyncio
import logging
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from nurture.config import Settings
from nurture.db import check_database
from nurture.metrics import render_metrics

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 5

DATABASE_ACTION = (
    "Check that DATABASE_URL names a running database that accepts connections "
    "from this host; this process's log has the full error."
)
TEMPORAL_ACTION = (
    "Check that TEMPORAL_ADDRESS reaches a running Temporal frontend and that "
    "TEMPORAL_NAMESPACE exists; this process's log has the full error."
)
SEND_WORKERS_ACTION = (
    "Start a worker that polls the send queues (`python worker.py --queues "
    "send`, or all queues) with the same TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE "
    "and NURTURE_TASK_QUEUE as this API."
)


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


async def _temporal_client(request: Request) -> Client:
    client: Client = await asyncio.wait_for(
        request.app.state.temporal.client(), CHECK_TIMEOUT_SECONDS
    )
    return client


async def _check_temporal(request: Request) -> str:
    try:
        client = await _temporal_client(request)
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


def send_queues(settings: Settings) -> list[str]:
    """Return the task queues of provider calls: sales tasks, email and SMS."""
    return [
        settings.send_task_queue,
        settings.send_queue_for("email"),
        settings.send_queue_for("sms"),
    ]


async def _activity_pollers(client: Client, queue: str) -> int:
    """Return how many workers the server saw polling `queue` for activities.

    The server lists a poller for some minutes after its last poll, so a
    worker that stopped a moment ago still counts.
    """
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        ),
        timeout=timedelta(seconds=CHECK_TIMEOUT_SECONDS),
    )
    return len(response.pollers)


async def _check_send_workers(request: Request) -> dict[str, Any]:
    settings: Settings = request.app.state.settings
    queues = send_queues(settings)
    try:
        client = await _temporal_client(request)
        counts = await asyncio.wait_for(
            asyncio.gather(*(_activity_pollers(client, queue) for queue in queues)),
            CHECK_TIMEOUT_SECONDS,
        )
    except Exception as error:  # any failure means not ready: report its type
        logger.warning("readiness check: describing the send queues failed: %s", error)
        return {
            "status": "failed",
            "error": f"describing the send queues failed: {type(error).__name__}",
            "action": TEMPORAL_ACTION,
        }
    pollers = dict(zip(queues, counts, strict=True))
    idle = [queue for queue, count in pollers.items() if count == 0]
    if not idle:
        return {"status": "ok", "pollers": pollers}
    logger.warning("readiness check: no worker polls %s", ", ".join(idle))
    return {
        "status": "failed",
        "error": f"no worker polls task queue {', '.join(idle)}",
        "pollers": pollers,
        "action": SEND_WORKERS_ACTION,
    }


def _result(status: str, action: str) -> dict[str, Any]:
    if status == "ok":
        return {"status": "ok"}
    return {
        "status": "failed",
        "error": status.removeprefix("failed: "),
        "action": action,
    }


@router.get(
    "/readyz",
    responses={503: {"description": "A check failed; the body names it and the fix"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Return 200 when the database, Temporal and a worker on each send queue respond.

    Otherwise 503, with each check's status and, for each failed check, the
    error and what to do.
    """
    database, temporal = await asyncio.gather(
        _check_database(request), _check_temporal(request)
    )
    checks: dict[str, dict[str, Any]] = {
        "database": _result(database, DATABASE_ACTION),
        "temporal": _result(temporal, TEMPORAL_ACTION),
    }
    if temporal == "ok":
        checks["sendWorkers"] = await _check_send_workers(request)
    else:
        checks["sendWorkers"] = {
            "status": "skipped",
            "error": "not checked, because Temporal does not respond",
            "action": TEMPORAL_ACTION,
        }
    failing = [name for name, check in checks.items() if check["status"] != "ok"]
    return JSONResponse(
        {
            "status": "ready" if not failing else "not_ready",
            "failing": failing,
            "checks": checks,
        },
        status_code=200 if not failing else 503,
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {"text/plain": {}},
            "description": "Prometheus text format (OpenMetrics when accepted)",
        }
    },
)
async def metrics(request: Request) -> Response:
    """Return this API process's metrics in the Prometheus exposition format."""
    body, content_type = render_metrics(request.headers.get("accept"))
    return Response(content=body, media_type=content_type)
