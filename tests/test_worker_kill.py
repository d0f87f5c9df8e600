"""A send worker killed with SIGKILL during a provider call sends nothing twice.

The send worker runs as `python worker.py --queues send`, a process of its
own, and is really killed: nothing about the crash is mocked.
"""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from nurture.config import Settings
from tests.conftest import Stack, StackFactory
from tests.test_delivery import messages_of
from tests.test_end_to_end import create_campaign, create_lead

ROOT = Path(__file__).resolve().parent.parent


def settings_env(settings: Settings, temporal_address: str) -> dict[str, str]:
    """The environment that gives a worker process the same settings as the test."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key in ("PATH", "HOME", "LANG", "PYTHONPATH", "SYSTEMROOT")
    }
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if value is None:
            continue
        env[(field.alias or name).upper()] = str(value)
    env["TEMPORAL_ADDRESS"] = temporal_address
    return env


class SendWorker:
    """`worker.py --queues send` as a child process."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py"), "--queues", "send"],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture
def send_workers(tmp_path: Path) -> Iterator[list[SendWorker]]:
    started: list[SendWorker] = []
    yield started
    for worker in started:
        worker.stop()


async def test_worker_killed_during_send_sends_once(
    stack_factory: StackFactory,
    temporal_env: WorkflowEnvironment,
    send_workers: list[SendWorker],
    tmp_path: Path,
) -> None:
    address = temporal_env.client.service_client.config.target_host
    async with stack_factory(in_process=("main", "score")) as stack:
        env = settings_env(stack.settings, address)
        log = tmp_path / "send-worker.log"
        # SendGrid accepts the mail, then delays its response until the worker exits.
        stack.sendgrid.hold_seconds = 60
        send_workers.append(SendWorker(env, log))
        await create_campaign(stack)
        lead_id = await create_lead(stack)

        await stack.eventually(
            lambda: stack.sendgrid.accepted,
            timeout=60,
            message="the send worker called SendGrid",
        )
        (message,) = messages_of(stack, lead_id)
        assert message.status == "sending"
        send_workers[0].kill()
        stack.sendgrid.hold_seconds = 0
        send_workers.append(SendWorker(env, log))

        sent = await stack.eventually(
            lambda: [m for m in messages_of(stack, lead_id) if m.status == "sent"],
            timeout=90,
            message=f"the second worker settled the message (log: {log})",
        )

        assert len(stack.sendgrid.mails()) == 1, log.read_text()[-3000:]
        assert len(stack.sendgrid.accepted_for(sent[0].id)) == 1
        assert sent[0].provider_message_id == stack.sendgrid.issued_ids[0]
        assert sent[0].attempts == 1
        assert _lookups(stack) >= 1


def _lookups(stack: Stack) -> Any:
    return sum(1 for r in stack.sendgrid.requests if r.path.startswith("/v3/messages"))
