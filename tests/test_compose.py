"""docker-compose.yml matches what the code needs, checked without Docker.

Docker cannot run where the tests run, so this reads the file: the services,
pinned images, ports, worker queues, and an environment with which the
production settings validate.
"""

import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from nurture.config import Settings
from worker import QUEUES

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
NURTURE_SERVICES = ("api", "worker", "worker-send", "worker-score")
# ${NAME:?message} must come from .env; ${NAME:-default} has a default.
_VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")


def resolve(value: Any, dotenv: dict[str, str]) -> str:
    """Substitute ${...} as docker compose does, with `dotenv` as the .env file."""

    def substitute(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if name in dotenv:
            return dotenv[name]
        if kind == "?":
            raise KeyError(f"{name} must be set in .env: {rest}")
        return rest or ""

    return _VARIABLE.sub(substitute, str(value))


def environment(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    raw = SERVICES[service].get("environment") or {}
    return {name: resolve(value, dotenv) for name, value in raw.items()}


def required_variables() -> set[str]:
    text = (ROOT / "docker-compose.yml").read_text()
    return {name for name, kind, _rest in _VARIABLE.findall(text) if kind == "?"}


SECRETS = {
    **dict.fromkeys(required_variables(), "s" * 40),
    # One key with id "k1": 32 bytes in base64, as the setting expects.
    "PAYLOAD_ENCRYPTION_KEYS": "k1:" + "A" * 43 + "=",
}


def setting_names() -> set[str]:
    return {
        (field.alias or name).upper() for name, field in Settings.model_fields.items()
    }


def test_services_cover_the_stack() -> None:
    assert set(SERVICES) == {
        "postgres",
        "temporal",
        "temporal-ui",
        *NURTURE_SERVICES,
    }


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_images_are_pinned(service: str) -> None:
    image = SERVICES[service].get("image")
    if image is None:
        assert SERVICES[service]["build"] == "."
        return
    name, _, tag = image.partition(":")
    assert tag, f"{service}: pin a tag on {name}"
    assert tag != "latest"


def test_temporal_runs_on_the_postgres_service() -> None:
    temporal = SERVICES["temporal"]["environment"]
    postgres = SERVICES["postgres"]["environment"]

    assert temporal["DB"].startswith("postgres")
    assert temporal["POSTGRES_SEEDS"] == "postgres"
    assert temporal["POSTGRES_USER"] == postgres["POSTGRES_USER"]
    assert temporal["POSTGRES_PWD"] == postgres["POSTGRES_PASSWORD"]


def test_ports_match_the_settings() -> None:
    api = environment("api", SECRETS)

    assert f"{api['API_PORT']}:{api['API_PORT']}" in SERVICES["api"]["ports"]
    assert api["API_HOST"] == "0.0.0.0"
    # Neither Temporal nor its Web UI authenticates, so both stay on loopback.
    assert SERVICES["temporal"]["ports"] == ["127.0.0.1:7233:7233"]
    (ui,) = SERVICES["temporal-ui"]["ports"]
    assert ui.startswith("127.0.0.1:")
    assert ui.endswith(":8080")
    assert SERVICES["temporal-ui"]["environment"]["TEMPORAL_ADDRESS"] == "temporal:7233"


def test_workers_poll_every_queue_apart() -> None:
    polled: list[str] = []
    for service in NURTURE_SERVICES[1:]:
        command = SERVICES[service]["command"]
        assert command[:2] == ["python", "worker.py"]
        queues = command[command.index("--queues") + 1].split(",")
        assert set(queues) <= set(QUEUES)
        polled += queues

    assert sorted(polled) == sorted(QUEUES)


@pytest.mark.parametrize("service", NURTURE_SERVICES)
def test_environment_names_are_settings(service: str) -> None:
    # LOG_LEVEL and LOG_FORMAT are read by nurture.logs, before the settings.
    logging_names = {"LOG_LEVEL", "LOG_FORMAT"}
    unknown = set(environment(service, SECRETS)) - setting_names() - logging_names

    assert unknown == set()


@pytest.mark.parametrize("service", NURTURE_SERVICES)
def test_production_settings_validate(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in setting_names():
        monkeypatch.delenv(name, raising=False)
    env = environment(service, SECRETS)
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    settings = Settings(_env_file=None)  # type: ignore[call-arg]

    assert settings.environment == "production"
    database = urlsplit(settings.database_url)
    postgres = SERVICES["postgres"]["environment"]
    assert database.hostname == "postgres"
    assert database.username == postgres["POSTGRES_USER"]
    assert database.password == postgres["POSTGRES_PASSWORD"]
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert settings.temporal_address == "temporal:7233"


def test_missing_secret_stops_compose() -> None:
    with pytest.raises(KeyError, match="NURTURE_API_KEY"):
        environment("api", {})


def test_image_contains_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = set(re.findall(r"^COPY (\S+)", dockerfile, flags=re.MULTILINE))
    copied |= {
        part
        for line in re.findall(r"^COPY (.+) \./$", dockerfile, flags=re.MULTILINE)
        for part in line.split()
    }

    for package in packages:
        assert package.rstrip("*") in copied
    for needed in ("worker.py", "alembic.ini", "migrations", "templates"):
        assert needed in copied
