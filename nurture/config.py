"""Settings for the API, the worker and the dev launcher, read from the environment."""

from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / ".data"

_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev", "test"}


class Settings(BaseSettings):
    """Every address, port, secret and tuning knob of nurture.

    Each field reads the environment variable of the same name in upper case.
    """

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True
    )

    environment: Literal["development", "production"] = Field(
        "development", alias="NURTURE_ENV"
    )
    database_url: str = f"sqlite:///{DATA_DIR / 'nurture.db'}"
    api_key: str = Field("", alias="NURTURE_API_KEY")
    api_host: str = "127.0.0.1"
    api_port: int = 8000

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_port: int = 8233
    task_queue: str = Field("nurture", alias="NURTURE_TASK_QUEUE")

    email_provider: Literal["sendgrid", "console"] = "console"
    sms_provider: Literal["twilio", "console"] = "console"
    sendgrid_api_key: str = ""
    sendgrid_host: str = "https://api.sendgrid.com"
    email_from: str = "Nurture <nurture@example.com>"
    twilio_account_sid: str = ""
    twilio_auth_token: str = ""
    twilio_base_url: str = "https://api.twilio.com"
    sms_from: str = ""
    public_base_url: str = "http://127.0.0.1:8000"

    crm_webhook_url: str = ""
    templates_dir: Path = PROJECT_ROOT / "templates"
    default_phone_region: str = "US"
    default_timezone: str = Field(
        "UTC", description="Time zone of leads whose zone cannot be worked out."
    )
    frequency_caps: str = Field(
        "email=1/day,3/week;sms=1/day,3/week",
        description=(
            "Most messages per lead and channel across all campaigns, as "
            "CHANNEL=COUNT/PERIOD,...; PERIOD is hour, day or week; empty: no caps."
        ),
    )
    mql_threshold: int = Field(70, ge=0, le=100)
    send_rate_per_second: float = Field(
        10.0, gt=0, description="Provider calls per second across all send workers."
    )

    @model_validator(mode="after")
    def _reject_placeholders_in_production(self) -> "Settings":
        if self.environment != "production":
            return self
        if self.api_key.lower() in _PLACEHOLDER_SECRETS or len(self.api_key) < 24:
            raise ValueError(
                "NURTURE_API_KEY must be a random secret of at least 24 characters "
                "when NURTURE_ENV=production"
            )
        if self.email_provider == "sendgrid" and not self.sendgrid_api_key:
            raise ValueError(
                "SENDGRID_API_KEY is required when EMAIL_PROVIDER=sendgrid"
            )
        if self.sms_provider == "twilio" and not (
            self.twilio_account_sid and self.twilio_auth_token and self.sms_from
        ):
            raise ValueError(
                "TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN and SMS_FROM are required "
                "when SMS_PROVIDER=twilio"
            )
        return self

    @field_validator("frequency_caps")
    @classmethod
    def _check_caps(cls, value: str) -> str:
        parse_frequency_caps(value)
        return value

    @property
    def caps(self) -> dict[str, list[tuple[int, timedelta]]]:
        return parse_frequency_caps(self.frequency_caps)

    @property
    def send_task_queue(self) -> str:
        """Task queue of the provider calls, rate limited across all its workers."""
        return f"{self.task_queue}-send"

    @property
    def score_task_queue(self) -> str:
        """Task queue of model training and batch rescoring."""
        return f"{self.task_queue}-score"


_PERIODS = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
    "week": timedelta(weeks=1),
}


def parse_frequency_caps(text: str) -> dict[str, list[tuple[int, timedelta]]]:
    """Parse "email=1/day,3/week;sms=1/day" into {"email": [(1, 1 day), ...]}."""
    caps: dict[str, list[tuple[int, timedelta]]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        channel, _, limits = part.partition("=")
        entries = []
        for limit in filter(None, (x.strip() for x in limits.split(","))):
            count, _, period = limit.partition("/")
            if not count.strip().isdigit() or period.strip() not in _PERIODS:
                raise ValueError(
                    f"invalid frequency cap {limit!r} for {channel.strip()!r}: "
                    "write COUNT/PERIOD with PERIOD hour, day or week, e.g. 3/week"
                )
            entries.append((int(count), _PERIODS[period.strip()]))
        if not channel.strip() or not entries:
            raise ValueError(
                f"invalid frequency caps {part!r}: write CHANNEL=COUNT/PERIOD,..."
            )
        caps[channel.strip()] = entries
    return caps


@lru_cache
def get_settings() -> Settings:
    return Settings()
