"""Settings for the API, the worker and the dev launcher, read from the environment."""

import json
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Literal

import limits
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from nurture.codec import parse_encryption_keys
from nurture.consent import ConsentPolicy, parse_country_list

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / ".data"

_PLACEHOLDER_SECRETS = {"", "changeme", "change-me", "secret", "dev", "test"}


class Settings(BaseSettings):
    """Every address, port, secret and tuning knob of nurture.

    Each field reads the environment variable of the same name in upper case.
    """

    # Errors leave out the input, so a bad setting never prints a secret.
    # The .env of the checkout, wherever the process starts: `nurture keys`
    # run from another directory must find the database the API uses.
    model_config = SettingsConfigDict(
        env_file=PROJECT_ROOT / ".env",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
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
    payload_encryption_keys: str = Field(
        "",
        description=(
            "AES-256 keys that encrypt Temporal payloads, as comma-separated "
            "ID:BASE64KEY pairs of 32-byte keys. The first encrypts; all decrypt. "
            "Empty: payloads are stored in plain text. Required in production."
        ),
    )
    temporal_ui_codec_token: str = Field(
        "",
        description=(
            "Secret path segment of the codec endpoint for the Temporal Web UI, "
            "which cannot send our API key: /api/v1/codec/ui/<token>. Empty: off."
        ),
    )
    temporal_ui_origins: str = Field(
        "",
        description=(
            "Comma-separated origins of the Temporal Web UI allowed to call the "
            "codec endpoint; default http://localhost and http://127.0.0.1 on "
            "TEMPORAL_UI_PORT."
        ),
    )

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
    crm_provider: Literal["webhook", "hubspot"] = Field(
        "webhook",
        description=(
            "Where lead syncs and sales tasks go: webhook posts them to "
            "CRM_WEBHOOK_URL (nowhere when empty), hubspot uses HubSpot's API."
        ),
    )
    hubspot_access_token: str = ""
    hubspot_base_url: str = "https://api.hubapi.com"
    hubspot_field_mapping: str = Field(
        "",
        description=(
            "JSON object of HubSpot property to lead field, merged over the "
            'default mapping, e.g. {"lifecyclestage": "stage"}.'
        ),
    )
    enrichment_provider: Literal["offline", "http"] = Field(
        "offline",
        description=(
            "offline derives facts from the lead's own fields; http also asks "
            "the company lookup service at ENRICHMENT_URL."
        ),
    )
    enrichment_url: str = ""
    enrichment_api_key: str = ""
    enrichment_timeout_seconds: float = Field(5.0, gt=0)
    enrichment_retries: int = Field(2, ge=0, le=10)
    enrichment_cache_hours: float = Field(
        24.0 * 30, ge=0, description="How long a company lookup is reused."
    )
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
        10.0,
        gt=0,
        description="CRM task calls per second across all send workers.",
    )
    email_rate_per_second: float = Field(
        10.0,
        gt=0,
        description="Email provider calls per second across all send workers.",
    )
    sms_rate_per_second: float = Field(
        1.0,
        gt=0,
        description=(
            "SMS provider calls per second across all send workers; Twilio "
            "sends 1 per second from a long code."
        ),
    )
    provider_lookup_grace_seconds: float = Field(
        300.0,
        ge=0,
        description=(
            "How long after an interrupted email send the provider's activity "
            "log is asked before the message is sent again."
        ),
    )

    sendgrid_webhook_public_key: str = Field(
        "",
        description=(
            "The Event Webhook's verification key as SendGrid shows it (base64 "
            "DER). Empty: events are accepted unsigned, with a warning at start."
        ),
    )
    webhook_max_age_seconds: int = Field(
        600, gt=0, description="Oldest signed webhook timestamp accepted."
    )
    twilio_status_webhook_url: str = Field(
        "",
        description=(
            "The URL Twilio calls for status callbacks, when a proxy serves "
            "it at another path; default PUBLIC_BASE_URL plus the route."
        ),
    )
    twilio_inbound_webhook_url: str = Field(
        "",
        description=(
            "The URL Twilio calls for inbound SMS, when a proxy serves it at "
            "another path; default PUBLIC_BASE_URL plus the route."
        ),
    )
    sms_help_reply: str = Field(
        "Nurture updates: reply STOP to unsubscribe, START to resubscribe. "
        "Msg&data rates may apply.",
        max_length=320,
        description="The reply to HELP and INFO.",
    )
    unsubscribe_secret: str = Field(
        "",
        description=(
            "Signs unsubscribe links; every API and worker process needs the "
            "same value. Required in production."
        ),
    )
    dashboard_session_hours: float = Field(
        12.0,
        gt=0,
        le=24 * 30,
        description=(
            "Hours a dashboard sign-in lasts before the key must be pasted again."
        ),
    )
    email_opt_in_countries: str = Field(
        "AT,BE,BG,CY,CZ,DE,DK,EE,ES,FI,FR,GR,HR,HU,IE,IS,IT,LI,LT,LU,LV,MT,NL,"
        "NO,PL,PT,RO,SE,SI,SK,GB,CH,CA,AU,NZ",
        description=(
            "Countries (ISO codes, or *) whose leads get marketing email only "
            "after an opt-in is on record."
        ),
    )
    sms_opt_in_countries: str = Field(
        "",
        description=(
            "Countries (ISO codes, or *) whose leads get marketing SMS only "
            "after an opt-in is on record."
        ),
    )
    worker_metrics_address: str = Field(
        "",
        description=(
            "HOST:PORT where each worker process serves the Temporal SDK's "
            "Prometheus metrics (temporal_*) at /metrics. Empty: off."
        ),
    )
    worker_app_metrics_address: str = Field(
        "",
        description=(
            "HOST:PORT where each worker process serves nurture's own Prometheus "
            "metrics (nurture_*, e.g. messages sent) at /metrics. Empty: off."
        ),
    )
    worker_max_concurrent_workflow_tasks: int = Field(
        100,
        ge=2,
        description=(
            "Workflow tasks a worker process runs at once (the Temporal SDK's "
            "default is 100)."
        ),
    )
    worker_max_concurrent_workflow_task_polls: int = Field(
        5,
        ge=2,
        description=(
            "Workflow task polls a worker process keeps open at once (the "
            "Temporal SDK's default is 5)."
        ),
    )
    worker_nonsticky_to_sticky_poll_ratio: float = Field(
        0.2,
        gt=0,
        le=1,
        description=(
            "Share of those polls that ask the shared task queue, where new "
            "workflows and evicted ones arrive; the rest ask the worker's "
            "sticky queue. At least one poll each (the SDK's default is 0.2)."
        ),
    )
    worker_max_concurrent_activities: int = Field(
        20,
        ge=1,
        description=(
            "Threads of a worker process's activity pool, and the most "
            "activities each of its task queues takes at once (the score "
            "queue takes 2)."
        ),
    )
    worker_max_cached_workflows: int = Field(
        1000,
        ge=0,
        description=(
            "Sticky cache: workflows a worker process keeps in memory between "
            "tasks, so the next task needs no replay of the history. 0 turns "
            "it off (the Temporal SDK's default is 1000)."
        ),
    )
    database_pool_size: int = Field(
        5,
        ge=1,
        description=(
            "Connections a worker process keeps open to the database "
            "(SQLAlchemy's default is 5)."
        ),
    )
    database_max_overflow: int = Field(
        10,
        ge=0,
        description=(
            "Connections a worker process may open beyond DATABASE_POOL_SIZE "
            "under load, closed again when returned (SQLAlchemy's default is 10)."
        ),
    )

    rate_limit_capture: str = Field(
        "120/minute",
        description=(
            "Requests per client IP address to lead capture and events with an "
            "integration key (web forms), e.g. 120/minute. Empty: no limit."
        ),
    )
    rate_limit_webhooks: str = Field(
        "1200/minute",
        description=(
            "Requests per client IP address to the provider webhooks. Empty: no limit."
        ),
    )
    rate_limit_unsubscribe: str = Field(
        "30/minute",
        description=(
            "Requests per client IP address to unsubscribe links. Empty: no limit."
        ),
    )
    rate_limit_storage_uri: str = Field(
        "memory://",
        description=(
            "Where rate-limit counters live. memory:// counts in each API "
            "process; redis://HOST:6379 (with the redis package) shares them."
        ),
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description=(
            "Proxies whose X-Forwarded-For the API trusts as the client's "
            "address, comma-separated, or * for any (uvicorn's setting)."
        ),
    )
    webhook_signal_concurrency: int = Field(
        8,
        ge=1,
        le=100,
        description=(
            "Leads whose workflows one webhook batch signals at once; each "
            "lead's events still go one after another."
        ),
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body of most routes."
    )
    max_form_body_bytes: int = Field(
        65_536,
        ge=1024,
        description=(
            "Largest request body of lead capture, events and unsubscribe links."
        ),
    )
    max_import_bytes: int = Field(
        536_870_912, ge=1024, description="Largest CSV file a lead import takes."
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
        if len(self.unsubscribe_secret) < 24:
            raise ValueError(
                "UNSUBSCRIBE_SECRET must be a random secret of at least 24 "
                "characters when NURTURE_ENV=production"
            )
        if not self.payload_encryption_keys.strip():
            raise ValueError(
                "PAYLOAD_ENCRYPTION_KEYS is required when NURTURE_ENV=production: "
                "set it to ID:BASE64KEY, e.g. 1:<output of `openssl rand -base64 32`>"
            )
        if self.temporal_ui_codec_token and len(self.temporal_ui_codec_token) < 24:
            raise ValueError(
                "TEMPORAL_UI_CODEC_TOKEN must be a random secret of at least 24 "
                "characters when NURTURE_ENV=production, or empty"
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

    @field_validator("payload_encryption_keys")
    @classmethod
    def _check_payload_keys(cls, value: str) -> str:
        parse_encryption_keys(value)
        return value

    @field_validator(
        "rate_limit_capture", "rate_limit_webhooks", "rate_limit_unsubscribe"
    )
    @classmethod
    def _check_rate_limit(cls, value: str) -> str:
        if value.strip():
            try:
                limits.parse(value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is not a rate limit: write COUNT/PERIOD, e.g. "
                    "120/minute or 10/second, or leave it empty for no limit"
                ) from None
        return value

    @field_validator("frequency_caps")
    @classmethod
    def _check_caps(cls, value: str) -> str:
        parse_frequency_caps(value)
        return value

    @model_validator(mode="after")
    def _check_integrations(self) -> "Settings":
        if self.crm_provider == "hubspot" and not self.hubspot_access_token:
            raise ValueError(
                "HUBSPOT_ACCESS_TOKEN is required when CRM_PROVIDER=hubspot: "
                "create a private app token in HubSpot with the contacts scopes"
            )
        if self.enrichment_provider == "http" and not self.enrichment_url:
            raise ValueError("ENRICHMENT_URL is required when ENRICHMENT_PROVIDER=http")
        if self.hubspot_field_mapping.strip():
            try:
                mapping = json.loads(self.hubspot_field_mapping)
            except ValueError as error:
                raise ValueError(
                    f"HUBSPOT_FIELD_MAPPING is not valid JSON: {error}"
                ) from None
            if not isinstance(mapping, dict) or not all(
                isinstance(v, str | None) for v in mapping.values()
            ):
                raise ValueError(
                    "HUBSPOT_FIELD_MAPPING must be a JSON object of HubSpot "
                    'property to lead field or null, e.g. {"jobtitle": "job_title"}'
                )
        return self

    @field_validator("email_opt_in_countries", "sms_opt_in_countries")
    @classmethod
    def _check_countries(cls, value: str) -> str:
        if value.strip() != "*":
            parse_country_list(value)
        return value

    @property
    def consent_policy(self) -> ConsentPolicy:
        return ConsentPolicy(
            email_opt_in_countries=_countries(self.email_opt_in_countries),
            sms_opt_in_countries=_countries(self.sms_opt_in_countries),
        )

    @property
    def signing_secret(self) -> bytes:
        """The key of unsubscribe links; in development, derived from the API key."""
        secret = self.unsubscribe_secret or f"nurture-dev-links:{self.api_key}"
        return secret.encode()

    def send_queue_for(self, channel: str) -> str:
        """Task queue of one channel's provider calls, rate limited on its own."""
        if channel in ("email", "sms"):
            return f"{self.task_queue}-send-{channel}"
        return self.send_task_queue

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


def _countries(text: str) -> frozenset[str]:
    return frozenset({"*"}) if text.strip() == "*" else parse_country_list(text)


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
