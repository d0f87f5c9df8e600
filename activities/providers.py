"""Email and SMS providers behind one small interface each.

`sendgrid` and `twilio` call the providers through their official SDKs.
`console` writes each message to a file under the outbox folder instead, so
the product runs without provider accounts.
"""

import email.utils
import json
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import httpx
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Category, CustomArg, Mail
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

logger = logging.getLogger(__name__)

PROVIDER_TIMEOUT_SECONDS = 30
# Twilio error codes that no retry can fix: the recipient opted out (21610),
# or the number is invalid (21211), not SMS-capable (21614) or blocked (21612).
TWILIO_PERMANENT_CODES = frozenset({21211, 21408, 21610, 21612, 21614})


@dataclass(frozen=True)
class Outgoing:
    """A rendered message ready for a provider."""

    message_id: str
    lead_id: str
    campaign_id: str | None
    template: str
    to: str
    subject: str | None
    text: str
    html: str | None


class ProviderError(Exception):
    """A provider rejected a message.

    `permanent` errors fail on every retry (an invalid address, an opted-out
    number). The others (429, 5xx, network) may pass later, after
    `retry_after_seconds` when the provider sent a Retry-After header.
    """

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        status: int | None = None,
        code: int | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status
        self.code = code
        self.retry_after_seconds = retry_after_seconds


class EmailSender(Protocol):
    name: str

    def send(self, message: Outgoing) -> str:
        """Send an email and return the provider's message id."""
        ...


class SmsSender(Protocol):
    name: str

    def send(self, message: Outgoing) -> str:
        """Send an SMS and return the provider's message id."""
        ...


def _retry_after(headers: object) -> float | None:
    value = None
    if headers is not None and hasattr(headers, "get"):
        value = headers.get("Retry-After") or headers.get("X-RateLimit-Reset")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _is_permanent_status(status: int) -> bool:
    return 400 <= status < 500 and status not in (408, 409, 429)


class SendGridEmailSender:
    name = "sendgrid"

    def __init__(self, api_key: str, host: str, from_email: str) -> None:
        self.api_key = api_key
        self.host = host
        self.from_email = from_email

    def send(self, message: Outgoing) -> str:
        mail = Mail(
            from_email=self.from_email,
            to_emails=message.to,
            subject=message.subject,
            plain_text_content=message.text,
            html_content=message.html,
        )
        # SendGrid echoes custom args in every webhook event of this message;
        # that is how events find their message and lead.
        custom_args = {"message_id": message.message_id, "lead_id": message.lead_id}
        categories = ["nurture", message.template]
        if message.campaign_id:
            custom_args["campaign_id"] = message.campaign_id
            categories.append(message.campaign_id)
        mail.custom_arg = [CustomArg(key, value) for key, value in custom_args.items()]
        mail.category = [Category(name) for name in categories]
        client = SendGridAPIClient(self.api_key, host=self.host)
        client.client.timeout = PROVIDER_TIMEOUT_SECONDS
        try:
            response = client.send(mail)
        except HTTPError as error:
            body = error.body.decode("utf-8", "replace") if error.body else ""
            raise ProviderError(
                f"SendGrid returned HTTP {error.status_code}: {body[:300]}",
                permanent=_is_permanent_status(error.status_code),
                status=error.status_code,
                retry_after_seconds=_retry_after(error.headers),
            ) from None
        except OSError as error:
            raise ProviderError(
                f"SendGrid unreachable: {error}", permanent=False
            ) from None
        provider_id = response.headers.get("X-Message-Id")
        return str(provider_id or "")


class TwilioSmsSender:
    name = "twilio"

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str,
        status_callback_url: str | None,
    ) -> None:
        self.client = TwilioClient(
            account_sid,
            auth_token,
            http_client=TwilioHttpClient(timeout=PROVIDER_TIMEOUT_SECONDS),
        )
        self.client.api.base_url = base_url
        self.from_number = from_number
        self.status_callback_url = status_callback_url

    def send(self, message: Outgoing) -> str:
        try:
            created = self.client.messages.create(
                to=message.to,
                from_=self.from_number,
                body=message.text,
                status_callback=self.status_callback_url,
            )
        except TwilioRestException as error:
            permanent = error.code in TWILIO_PERMANENT_CODES or _is_permanent_status(
                error.status
            )
            raise ProviderError(
                f"Twilio returned HTTP {error.status} (code {error.code}): {error.msg}",
                permanent=permanent,
                status=error.status,
                code=error.code,
            ) from None
        except OSError as error:
            raise ProviderError(
                f"Twilio unreachable: {error}", permanent=False
            ) from None
        return str(created.sid)


class TaskSender(Protocol):
    name: str

    def send(self, message: Outgoing) -> str:
        """Hand a sales task over and return its id."""
        ...


class CrmTaskSender:
    """Creates sales tasks in the CRM by a POST to CRM_WEBHOOK_URL.

    Without a URL the task only lives in nurture, where the journey view
    shows it to sales reps.
    """

    def __init__(self, crm_url: str) -> None:
        self.name = "crm" if crm_url else "internal"
        self.crm_url = crm_url

    def send(self, message: Outgoing) -> str:
        if not self.crm_url:
            return f"task-{message.message_id}"
        payload = {
            "type": "task",
            "taskId": message.message_id,
            "leadId": message.lead_id,
            "campaignId": message.campaign_id,
            "title": message.subject,
            "description": message.text,
        }
        try:
            response = httpx.post(
                self.crm_url, json=payload, timeout=PROVIDER_TIMEOUT_SECONDS
            )
        except httpx.HTTPError as error:
            raise ProviderError(f"CRM unreachable: {error}", permanent=False) from None
        if response.status_code >= 400:
            raise ProviderError(
                f"CRM returned HTTP {response.status_code}: {response.text[:300]}",
                permanent=_is_permanent_status(response.status_code),
                status=response.status_code,
                retry_after_seconds=_retry_after(response.headers),
            )
        return f"task-{message.message_id}"


class ConsoleEmailSender:
    """Writes each email as an .eml file instead of sending it."""

    name = "console"

    def __init__(self, outbox: Path, from_email: str) -> None:
        self.outbox = outbox
        self.from_email = from_email

    def send(self, message: Outgoing) -> str:
        mail = EmailMessage()
        mail["From"] = self.from_email
        mail["To"] = message.to
        mail["Subject"] = message.subject or ""
        mail["Date"] = email.utils.formatdate(localtime=False)
        mail["X-Nurture-Message-Id"] = message.message_id
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.outbox / f"{message.message_id}.eml"
        path.write_bytes(bytes(mail))
        logger.info(
            "console email %s for lead %s written to %s",
            message.message_id,
            message.lead_id,
            path,
        )
        return f"console-{message.message_id}"


class ConsoleSmsSender:
    """Writes each SMS as a JSON file instead of sending it."""

    name = "console"

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    def send(self, message: Outgoing) -> str:
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.outbox / f"{message.message_id}.sms.json"
        path.write_text(json.dumps({"to": message.to, "body": message.text}))
        logger.info(
            "console SMS %s for lead %s written to %s",
            message.message_id,
            message.lead_id,
            path,
        )
        return f"console-{message.message_id}"
