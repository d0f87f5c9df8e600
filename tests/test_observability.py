"""Operators' view: Prometheus metrics, /readyz, JSON logs and their masking."""

import asyncio
import io
import json
import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from temporalio import activity
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from api.app import create_app
from nurture.config import PROJECT_ROOT
from nurture.db import create_db_engine, session_scope
from nurture.logs import (
    EMAIL_MASK,
    PHONE_MASK,
    RedactFilter,
    log_context,
    log_handler,
    redact,
)
from nurture.metrics import UNMATCHED_ROUTE
from nurture.models import Lead
from tests.conftest import API_KEY, Stack, StackFactory, example, make_settings
from tests.fakes import Answer, FakeSendGrid, FakeTwilio
from tests.test_end_to_end import create_campaign, create_lead
from tests.test_webhook_signatures import post_twilio, twilio_settings
from worker import split_address, start_app_metrics_server, telemetry_runtime

NO_KEY = {"Authorization": ""}


def free_port() -> int:
    """Return a 127.0.0.1 port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def sample(name: str, **labels: str) -> float:
    """Return a sample of this process's default registry, 0 when absent."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def samples(text: str, name: str) -> list[dict[str, str]]:
    """Return the label sets of every sample called `name` in a scrape."""
    return [
        dict(found.labels)
        for family in text_string_to_metric_families(text)
        for found in family.samples
        if found.name == name
    ]


def sample_value(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None


async def scrape(stack: Stack) -> str:
    response = await stack.api.get("/metrics", headers=NO_KEY)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


# --- HTTP metrics ----------------------------------------------------------


async def test_metrics_label_route_template(stack: Stack) -> None:
    lead_id = str(uuid.uuid4())

    missing = await stack.api.get(f"/api/v1/leads/{lead_id}")
    unauthorized = await stack.api.get(f"/api/v1/leads/{lead_id}", headers=NO_KEY)
    wrong_method = await stack.api.delete("/api/v1/leads")
    unknown = await stack.api.get(f"/no-such-page/{lead_id}", headers=NO_KEY)
    text = await scrape(stack)

    assert missing.status_code == 404
    assert unauthorized.status_code == 401
    assert wrong_method.status_code == 405
    assert unknown.status_code == 404
    requests = samples(text, "nurture_http_requests_total")
    assert {
        "method": "GET",
        "route": "/api/v1/leads/{lead_id}",
        "status": "404",
    } in requests
    assert {
        "method": "GET",
        "route": "/api/v1/leads/{lead_id}",
        "status": "401",
    } in requests
    assert {"method": "DELETE", "route": "/api/v1/leads", "status": "405"} in requests
    assert {"method": "GET", "route": UNMATCHED_ROUTE, "status": "404"} in requests
    assert all(lead_id not in labels["route"] for labels in requests)
    durations = samples(text, "nurture_http_request_duration_seconds_count")
    assert {
        "method": "GET",
        "route": "/api/v1/leads/{lead_id}",
        "status": "404",
    } in durations


async def test_metrics_count_each_request(stack: Stack) -> None:
    labels = {"method": "GET", "route": "/api/v1/leads", "status": "200"}
    before = sample("nurture_http_requests_total", **labels)

    for _ in range(3):
        assert (await stack.api.get("/api/v1/leads")).status_code == 200

    assert sample("nurture_http_requests_total", **labels) == before + 3


async def test_metrics_openmetrics_on_request(stack: Stack) -> None:
    response = await stack.api.get(
        "/metrics",
        headers={**NO_KEY, "Accept": "application/openmetrics-text; version=1.0.0"},
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/openmetrics-text")
    assert response.text.rstrip().endswith("# EOF")


async def test_request_id_kept_or_generated(stack: Stack) -> None:
    echoed = await stack.api.get("/healthz", headers={"X-Request-ID": "req-42.a"})
    spaced = await stack.api.get("/healthz", headers={"X-Request-ID": "a b"})
    too_long = await stack.api.get("/healthz", headers={"X-Request-ID": "x" * 129})
    missing = await stack.api.get("/healthz")

    assert echoed.headers["x-request-id"] == "req-42.a"
    for response in (spaced, too_long, missing):
        generated = response.headers["x-request-id"]
        assert len(generated) == 32
        assert int(generated, 16) >= 0


# --- messages and webhooks -------------------------------------------------


@pytest.fixture
def json_records() -> Iterator[io.StringIO]:
    """Return a stream that receives every log line as JSON while the test runs."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(previous)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_sent_email_counted_and_logged(
    stack: Stack, json_records: io.StringIO
) -> None:
    sent = {"channel": "email", "status": "sent"}
    before = sample("nurture_messages_total", **sent)
    campaign_id = await create_campaign(stack)
    lead_id = await create_lead(stack)

    (mail,) = await stack.eventually(stack.sendgrid.mails, message="email sent")
    await stack.eventually(
        lambda: sample("nurture_messages_total", **sent) == before + 1,
        message="sent email counted",
    )
    text = await scrape(stack)

    assert sample_value(text, "nurture_messages_total", **sent) == before + 1
    message_id = mail["custom_args"]["message_id"]
    lines = json_lines(json_records)
    (line,) = [
        x
        for x in lines
        if x["logger"] == "activities.delivery" and "sent by" in x["message"]
    ]
    assert line["level"] == "INFO"
    assert line["timestamp"].endswith("Z")
    assert message_id in line["message"]
    assert line["workflow_id"] == f"nurture-{campaign_id}-{lead_id}"
    assert line["activity_type"] == "deliver_message"
    assert line["task_queue"] == stack.settings.send_queue_for("email")
    assert line["run_id"]
    assert line["message_id"] == message_id
    assert line["lead_id"] == lead_id
    assert line["campaign_id"] == campaign_id
    address = mail["personalizations"][0]["to"][0]["email"]
    assert all(address not in json.dumps(x) for x in lines)


async def test_rejected_email_counted_failed(stack: Stack) -> None:
    failed = {"channel": "email", "status": "failed"}
    before = sample("nurture_messages_total", **failed)
    stack.sendgrid.script(
        Answer(400, {"errors": [{"message": "Does not contain a valid address."}]})
    )
    await create_campaign(stack)
    await create_lead(stack)

    await stack.eventually(
        lambda: sample("nurture_messages_total", **failed) == before + 1,
        message="failed email counted",
    )


async def test_webhook_events_counted_by_type(
    stack_factory: StackFactory,
) -> None:
    events = example("sendgrid/events.json")
    made_up = {**events[0], "event": "made_up_type", "sg_event_id": "made-up-1"}
    counted = [
        ("sendgrid", "open"),
        ("sendgrid", "bounce"),
        ("sendgrid", "other"),
        ("twilio", "inbound_opt_out"),
        ("twilio", "status_delivered"),
    ]
    before = {
        key: sample("nurture_webhook_events_total", provider=key[0], type=key[1])
        for key in counted
    }
    async with stack_factory(**twilio_settings()) as stack:
        batch = await stack.api.post(
            "/api/v1/webhooks/sendgrid", json=[*events, made_up], headers=NO_KEY
        )
        stop = await post_twilio(stack, "inbound_stop.txt")
        status = await post_twilio(stack, "status_delivered.txt")
        text = await scrape(stack)

    assert batch.status_code == 200, batch.text
    assert stop.status_code == 200
    assert status.status_code == 204
    after = {
        key: sample_value(
            text, "nurture_webhook_events_total", provider=key[0], type=key[1]
        )
        for key in counted
    }
    assert after == {key: value + 1 for key, value in before.items()}
    types = {x["type"] for x in samples(text, "nurture_webhook_events_total")}
    assert "made_up_type" not in types


# --- /readyz ---------------------------------------------------------------


async def ready_body(stack: Stack) -> dict[str, Any]:
    """Poll /readyz until it returns 200, since workers need a moment to poll."""

    async def ready() -> dict[str, Any] | None:
        response = await stack.api.get("/readyz", headers=NO_KEY)
        return response.json() if response.status_code == 200 else None

    body: dict[str, Any] = await stack.eventually(ready, message="/readyz 200")
    return body


async def test_readyz_200_with_workers(stack: Stack) -> None:
    body = await ready_body(stack)

    assert body["status"] == "ready"
    assert body["failing"] == []
    assert body["checks"]["database"] == {"status": "ok"}
    assert body["checks"]["temporal"] == {"status": "ok"}
    send = body["checks"]["sendWorkers"]
    assert send["status"] == "ok"
    assert set(send["pollers"]) == {
        stack.settings.send_task_queue,
        stack.settings.send_queue_for("email"),
        stack.settings.send_queue_for("sms"),
    }
    assert all(count >= 1 for count in send["pollers"].values())


async def test_readyz_503_without_send_worker(stack_factory: StackFactory) -> None:
    async with stack_factory(in_process=("main", "score")) as stack:
        response = await stack.api.get("/readyz", headers=NO_KEY)

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "not_ready"
    assert body["failing"] == ["sendWorkers"]
    send = body["checks"]["sendWorkers"]
    assert send["status"] == "failed"
    for queue in (
        stack.settings.send_task_queue,
        stack.settings.send_queue_for("email"),
        stack.settings.send_queue_for("sms"),
    ):
        assert queue in send["error"]
        assert send["pollers"][queue] == 0
    assert "worker.py --queues send" in send["action"]
    assert body["checks"]["database"] == {"status": "ok"}


@pytest.fixture
async def database_down(
    temporal_env: WorkflowEnvironment,
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
) -> AsyncIterator[httpx.AsyncClient]:
    """Return a client (no API key) of an app whose database refuses connections."""
    url = f"postgresql://nurture@127.0.0.1:{free_port()}/nurture"
    settings = make_settings(url, fake_sendgrid, fake_twilio)
    engine = create_db_engine(url)
    app = create_app(
        settings,
        temporal_env.client,
        engine=engine,
        run_migrations=False,
        reconcile=False,
    )
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://nurture.test"
        ) as client:
            yield client
    finally:
        engine.dispose()


async def test_readyz_503_names_database(
    database_down: httpx.AsyncClient, json_records: io.StringIO
) -> None:
    response = await database_down.get("/readyz", headers={"X-Request-ID": "probe-1"})

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["status"] == "not_ready"
    assert "database" in body["failing"]
    database = body["checks"]["database"]
    assert database["status"] == "failed"
    assert database["error"] == "OperationalError"
    assert "DATABASE_URL" in database["action"]
    assert body["checks"]["temporal"] == {"status": "ok"}
    (line,) = [
        x
        for x in json_lines(json_records)
        if x["message"].startswith("health check: database failed")
    ]
    assert line["request_id"] == "probe-1"
    assert line["level"] == "WARNING"


async def test_readyz_skips_queues_when_temporal_down(
    engine: sa.Engine,
    database_url: str,
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
) -> None:
    settings = make_settings(
        database_url,
        fake_sendgrid,
        fake_twilio,
        temporal_address=f"127.0.0.1:{free_port()}",
    )
    app = create_app(settings, None, engine, run_migrations=False, reconcile=False)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://nurture.test"
    ) as client:
        response = await client.get("/readyz")

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["failing"] == ["temporal", "sendWorkers"]
    assert body["checks"]["temporal"]["status"] == "failed"
    assert "TEMPORAL_ADDRESS" in body["checks"]["temporal"]["action"]
    assert body["checks"]["sendWorkers"]["status"] == "skipped"
    assert body["checks"]["database"] == {"status": "ok"}


async def test_healthz_unchanged_without_send_worker(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory(in_process=("main", "score")) as stack:
        response = await stack.api.get("/healthz", headers=NO_KEY)

    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ok", "database": "ok", "temporal": "ok"}


# --- logs ------------------------------------------------------------------


def make_logger(log_format: str) -> tuple[logging.Logger, io.StringIO]:
    """Return a logger of its own that writes to a stream through log_handler."""
    stream = io.StringIO()
    logger = logging.getLogger(f"tests.observability.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(log_handler(log_format, stream))
    return logger, stream


async def test_request_logs_carry_path_ids(
    temporal_down: httpx.AsyncClient, engine: sa.Engine, json_records: io.StringIO
) -> None:
    with session_scope(engine) as session:
        lead = Lead(email="ada@example.com", email_normalized="ada@example.com")
        session.add(lead)
        session.flush()
        lead_id = lead.id

    response = await temporal_down.patch(
        f"/api/v1/leads/{lead_id}",
        json={"contact": {"firstName": "Ada"}},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )

    assert response.status_code == 200, response.text
    failed = [
        x
        for x in json_lines(json_records)
        if "workflow start or signal" in x["message"]
    ]
    assert failed
    assert {x["lead_id"] for x in failed} == {lead_id}
    assert all(x["request_id"] for x in failed)


def test_json_line_carries_ids() -> None:
    logger, stream = make_logger("json")

    with log_context(campaign_id="c-1", workflow_id="nurture-c-1-l-1"):
        with log_context(message_id="m-1"):
            logger.info("queued %s", "m-1", extra={"lead_id": "l-1"})
        logger.warning("after the inner block")

    first, second = (json.loads(x) for x in stream.getvalue().splitlines())
    assert first["message"] == "queued m-1"
    assert first["level"] == "INFO"
    assert first["logger"] == logger.name
    assert first["lead_id"] == "l-1"
    assert first["campaign_id"] == "c-1"
    assert first["message_id"] == "m-1"
    assert first["workflow_id"] == "nurture-c-1-l-1"
    assert "message_id" not in second
    assert second["campaign_id"] == "c-1"


def test_extra_id_wins_over_context() -> None:
    logger, stream = make_logger("json")

    with log_context(lead_id="from-context"):
        logger.info("x", extra={"lead_id": "from-extra"})

    assert json.loads(stream.getvalue())["lead_id"] == "from-extra"


def test_log_context_rejects_unknown_id() -> None:
    with pytest.raises(TypeError, match="unknown log context field"):
        with log_context(email="ada@example.org"):
            pass


def test_json_line_carries_exception() -> None:
    logger, stream = make_logger("json")

    try:
        raise ValueError("bounce from ada@example.org")
    except ValueError:
        logger.exception("send failed")

    line = json.loads(stream.getvalue())
    assert line["level"] == "ERROR"
    assert "ValueError" in line["exception"]
    assert "ada@example.org" not in line["exception"]
    assert EMAIL_MASK in line["exception"]


def test_text_format_unchanged() -> None:
    logger, stream = make_logger("text")

    logger.info("lead %s scored", "l-1", extra={"lead_id": "l-1"})

    text = stream.getvalue()
    assert text.endswith(f"INFO {logger.name}: lead l-1 scored\n")


def test_filter_masks_address_and_phone() -> None:
    logger, stream = make_logger("text")

    logger.info(
        "to %s and %s, from %s",
        "ada.lovelace+news@example.co.uk",
        "+1 (415) 555-0100",
        "(415) 555-0199",
    )

    text = stream.getvalue()
    assert "ada" not in text
    assert "555" not in text
    assert text.endswith(f"to {EMAIL_MASK} and {PHONE_MASK}, from {PHONE_MASK}\n")


def test_filter_masks_message_without_args() -> None:
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "sms to +15555550123 failed", None, None
    )

    assert RedactFilter().filter(record)
    assert record.getMessage() == f"sms to {PHONE_MASK} failed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ada@example.org", EMAIL_MASK),
        ("GET /api/v1/leads?email=ada%40example.org", "GET /api/v1/leads?email="),
        ("To=%2B15555550123&From=x", f"To={PHONE_MASK}&From=x"),
        ("+44 20 7946 0958", PHONE_MASK),
        ("415.555.0100", PHONE_MASK),
        ("415-555-0100", PHONE_MASK),
    ],
)
def test_redact_masks(text: str, expected: str) -> None:
    assert redact(text).startswith(expected)
    assert "555" not in redact(text)
    assert "ada" not in redact(text)


@pytest.mark.parametrize(
    "text",
    [
        "lead 123e4567-e89b-12d3-a456-426614174000 scored",
        "at 2026-05-01 12:30:45.123",
        "score +10 (rules 50)",
        "metrics at 127.0.0.1:9464",
        "version 1.35.0",
        "took 1717250000123 ms",
    ],
)
def test_redact_keeps_ids_and_numbers(text: str) -> None:
    assert redact(text) == text


def test_configure_logging_json_process() -> None:
    code = (
        "import logging\n"
        "from nurture.logs import configure_logging\n"
        "configure_logging()\n"
        "logging.getLogger('nurture.check').info("
        "'lead %s: ada@example.org, +15555550123', 'l-9', "
        "extra={'lead_id': 'l-9', 'campaign_id': 'c-9'})\n"
    )
    env = {**os.environ, "LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}

    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 0, done.stderr
    (line,) = [json.loads(x) for x in done.stderr.splitlines()]
    assert line["logger"] == "nurture.check"
    assert line["message"] == f"lead l-9: {EMAIL_MASK}, {PHONE_MASK}"
    assert line["lead_id"] == "l-9"
    assert line["campaign_id"] == "c-9"
    assert set(line) == {
        "timestamp",
        "level",
        "logger",
        "message",
        "lead_id",
        "campaign_id",
    }


def test_configure_logging_rejects_format() -> None:
    code = "from nurture.logs import configure_logging\nconfigure_logging()\n"
    env = {**os.environ, "LOG_FORMAT": "xml"}

    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode != 0
    assert done.stderr.strip() == "nurture: invalid LOG_FORMAT 'xml': use text or json"


# --- the worker's endpoints ------------------------------------------------


@activity.defn
async def nothing_to_do() -> None:
    """An activity that no test schedules: a worker needs one to start."""


async def get_metrics(url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.text


async def test_worker_sdk_metrics_endpoint(temporal_env: WorkflowEnvironment) -> None:
    address = f"127.0.0.1:{free_port()}"
    runtime = telemetry_runtime(address)
    client = await Client.connect(
        temporal_env.client.service_client.config.target_host,
        namespace=temporal_env.client.namespace,
        runtime=runtime,
    )
    task_queue = f"metrics-{uuid.uuid4().hex[:8]}"
    poller = {
        "namespace": temporal_env.client.namespace,
        "poller_type": "activity_task",
        "service_name": "temporal-core-sdk",
        "task_queue": task_queue,
    }
    worker = Worker(client, task_queue=task_queue, activities=[nothing_to_do])
    async with worker:
        # The poller gauge appears once the worker's first poll has started.
        deadline = asyncio.get_running_loop().time() + 10
        text = await get_metrics(f"http://{address}/metrics")
        while poller not in samples(text, "temporal_num_pollers"):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.2)
            text = await get_metrics(f"http://{address}/metrics")

    names = {family.name for family in text_string_to_metric_families(text)}
    assert "temporal_request" in names
    assert "temporal_worker_start" in names
    assert poller in samples(text, "temporal_num_pollers")


async def test_worker_app_metrics_endpoint() -> None:
    address = f"127.0.0.1:{free_port()}"
    server = start_app_metrics_server(address)
    try:
        text = await get_metrics(f"http://{address}/metrics")
    finally:
        server.shutdown()
        server.server_close()

    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"nurture_messages", "nurture_scoring_duration_seconds"} <= names


def test_runtime_without_metrics_address() -> None:
    runtime = telemetry_runtime("")

    assert runtime.metric_meter is MetricMeter.noop


@pytest.mark.parametrize("address", ["9464", "127.0.0.1:", ":9464", "host:port"])
def test_metrics_address_invalid(address: str) -> None:
    with pytest.raises(ValueError, match="invalid WORKER_METRICS_ADDRESS"):
        split_address(address, "WORKER_METRICS_ADDRESS")


def test_metrics_address_ipv6() -> None:
    assert split_address("[::1]:9464", "WORKER_METRICS_ADDRESS") == ("::1", 9464)
