"""make run's launcher: stopping a dev server that an earlier run left behind."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from nurture.config import PROJECT_ROOT, Settings
from nurture.devstack import banner, stop_leftover_temporal

SLEEPER = "import time; time.sleep(60)"


def sleeper(*args: str) -> subprocess.Popen[bytes]:
    """Start a process with these arguments, once it shows them in /proc."""
    process = subprocess.Popen([sys.executable, "-c", SLEEPER, *args])
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.monotonic() + 5
    while args[-1].encode() not in cmdline.read_bytes().split(b"\0"):
        assert time.monotonic() < deadline, "the process never showed its arguments"
        time.sleep(0.01)
    return process


def test_leftover_dev_server_is_stopped(tmp_path: Path) -> None:
    db_file = tmp_path / "temporal.db"
    pid_file = tmp_path / "temporal.pid"
    leftover = sleeper("--db-filename", str(db_file))
    pid_file.write_text(str(leftover.pid))

    stopped = stop_leftover_temporal(pid_file, db_file)

    assert stopped == leftover.pid
    assert leftover.wait(5) != 0
    assert not pid_file.exists()


def test_other_process_with_that_pid_is_left(tmp_path: Path) -> None:
    pid_file = tmp_path / "temporal.pid"
    other = sleeper("--db-filename", str(tmp_path / "elsewhere.db"))
    pid_file.write_text(str(other.pid))
    try:
        stopped = stop_leftover_temporal(pid_file, tmp_path / "temporal.db")

        assert stopped is None
        assert other.poll() is None
        assert not pid_file.exists()
    finally:
        other.kill()
        other.wait()


def test_missing_or_garbled_pid_file_is_ignored(tmp_path: Path) -> None:
    pid_file = tmp_path / "temporal.pid"
    db_file = tmp_path / "temporal.db"

    assert stop_leftover_temporal(pid_file, db_file) is None
    pid_file.write_text("not a pid")
    assert stop_leftover_temporal(pid_file, db_file) is None


def test_banner_shows_dashboard_hides_password() -> None:
    settings = Settings(
        api_key="k" * 32,
        database_url="postgresql://nurture:s3cret@127.0.0.1:5432/nurture",
    )

    text = banner(settings, "k" * 32, "welcome", own_temporal=True)

    assert "Dashboard:        http://127.0.0.1:8000/dashboard" in text
    assert "s3cret" not in text
    assert "postgresql://nurture:***@127.0.0.1:5432/nurture" in text


LAUNCHER = """
import subprocess, sys, time
from nurture.devstack import die_with_parent
child = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(60)"],
    start_new_session=True,
    preexec_fn=die_with_parent,
)
print(child.pid, flush=True)
time.sleep(60)
"""


def test_children_stop_when_launcher_killed() -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, cwd=PROJECT_ROOT
    )
    assert launcher.stdout is not None
    child = int(launcher.stdout.readline())
    assert Path(f"/proc/{child}").exists()

    launcher.kill()
    launcher.wait(5)

    deadline = time.monotonic() + 5
    while Path(f"/proc/{child}/cmdline").exists():
        # Reaped by init once it has exited.
        if not Path(f"/proc/{child}/cmdline").read_bytes():
            break
        assert time.monotonic() < deadline, "the child outlived its launcher"
        time.sleep(0.05)


def test_settings_read_checkout_env_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("API_PORT=8123\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("API_PORT", raising=False)

    # A .env in the working directory is not the checkout's, so it is ignored.
    assert Settings().api_port != 8123
    assert Settings.model_config["env_file"] == PROJECT_ROOT / ".env"
    assert Settings(_env_file=env_file).api_port == 8123  # type: ignore[call-arg]
