"""Email and SMS providers behind one small interface each.

`sendgrid` and `twilio` call the providers through their official SDKs.
`console` writes each message to a file under the outbox folder instead, so
the product runs without provider accounts.
"""

import email.policy
import email.utils
import http.client
import json
import logging
import socket
import urllib.error
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

import httpx
import requests
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import Category, CustomArg, Header, Mail
from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client as TwilioClient

from nurture.retry_after import retry_after_seconds

logger = logging.getLogger(__name__)

PROVIDER_TIMEOUT_SECONDS = 30
# Twilio error codes that no retry can fix: the recipient opted out (21610),
# the number is invalid (21211), not SMS-capable (21614) or unreachable
# (21612), or the account may not send to that region (21408).
TWILIO_PERMANENT_CODES = frozenset({21211, 21408, 21610, 21612, 21614})
# The suppression reason each code gives the number. 21408 and 21612 concern
# the account or the route, not the person, so they suppress nothing.
TWILIO_NUMBER_VERDICTS = {
    21610: "unsubscribed_at_provider",
    21211: "invalid_number",
    21614: "invalid_number",
}
_EML_POLICY = email.policy.default.clone(max_line_length=998)
# Twilio lists the newest messages first; an interrupted send is among these.
TWILIO_LOOKUP_PAGE = 50
# Clocks differ: a message created this long before our attempt still counts.
LOOKUP_CLOCK_SKEW = timedelta(minutes=2)


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
    # Extra mail headers, such as List-Unsubscribe.
    headers: dict[str, str] = field(default_factory=dict)


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
        maybe_accepted: bool = False,
        verdict: str | None = None,
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status
        self.code = code
        self.retry_after_seconds = retry_after_seconds
        # True when the request may have reached the provider before the
        # connection failed, so only the provider can tell whether it was taken.
        self.maybe_accepted = maybe_accepted
        # The suppression reason a permanent error gives the address
        # (invalid_address, invalid_number, unsubscribed_at_provider), or None.
        self.verdict = verdict


class LookupUnavailable(Exception):
    """The provider cannot tell whether it took a message (no access, no API)."""


class Sender(Protocol):
    name: str
    # Seconds after a send until the provider's own record of it is complete;
    # before that, "not found" by find_sent proves nothing.
    lookup_delay_seconds: float

    def send(self, message: Outgoing) -> str:
        """Send the message and return the provider's message id."""
        ...

    def find_sent(self, message: Outgoing, since: datetime) -> str | None:
        """Return the provider's id of this message if it took it after `since`.

        Raises LookupUnavailable when the provider cannot look the message up.
        """
        ...


EmailSender = Sender
SmsSender = Sender


def _is_permanent_status(status: int) -> bool:
    return 400 <= status < 500 and status not in (408, 409, 429)


def _sendgrid_verdict(status: int, body: str) -> str | None:
    """Return invalid_address when a 400 names the recipient's address."""
    if status != 400:
        return None
    try:
        errors = json.loads(body).get("errors", [])
    except (ValueError, AttributeError):
        return None
    for error in errors if isinstance(errors, list) else []:
        where = str(error.get("field") or "") if isinstance(error, dict) else ""
        if where.startswith("personalizations") and ".to" in where:
            return "invalid_address"
    return None


def _interrupted(error: BaseException) -> bool:
    """True when a network error may have come after the request was sent."""
    if isinstance(error, urllib.error.URLError):
        # urllib wraps the errors of opening the connection: nothing was sent.
        return isinstance(error.reason, (TimeoutError, socket.timeout))
    if isinstance(error, requests.exceptions.ConnectionError):
        return not isinstance(
            error, requests.exceptions.ConnectTimeout
        ) and "NewConnectionError" not in str(error)
    return isinstance(
        error,
        (
            TimeoutError,
            socket.timeout,
            http.client.RemoteDisconnected,
            ConnectionResetError,
            requests.exceptions.ReadTimeout,
        ),
    )


class SendGridEmailSender:
    name = "sendgrid"

    def __init__(
        self,
        api_key: str,
        host: str,
        from_email: str,
        lookup_delay_seconds: float = 300.0,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.from_email = from_email
        # SendGrid's Email Activity feed shows a message some minutes after
        # it was accepted.
        self.lookup_delay_seconds = lookup_delay_seconds

    def _client(self) -> SendGridAPIClient:
        client = SendGridAPIClient(self.api_key, host=self.host)
        client.client.timeout = PROVIDER_TIMEOUT_SECONDS
        return client

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
        for name, value in message.headers.items():
            mail.header = Header(name, value)
        try:
            response = self._client().send(mail)
        except HTTPError as error:
            body = error.body.decode("utf-8", "replace") if error.body else ""
            raise ProviderError(
                f"SendGrid returned HTTP {error.status_code}: {body[:300]}",
                permanent=_is_permanent_status(error.status_code),
                status=error.status_code,
                retry_after_seconds=retry_after_seconds(error.headers),
                verdict=_sendgrid_verdict(error.status_code, body),
            ) from None
        except OSError as error:
            raise ProviderError(
                f"SendGrid unreachable: {error}",
                permanent=False,
                maybe_accepted=_interrupted(error),
            ) from None
        provider_id = response.headers.get("X-Message-Id")
        return str(provider_id or "")

    def find_sent(self, message: Outgoing, since: datetime) -> str | None:
        """Ask SendGrid's Email Activity feed for the message by our message id.

        The feed needs SendGrid's Email Activity add-on. Without it SendGrid
        returns 403 or 404, and this raises LookupUnavailable.
        """
        query = f"unique_args['message_id']=\"{message.message_id}\""
        try:
            response = self._client().client.messages.get(
                query_params={"query": query, "limit": 10}
            )
        except HTTPError as error:
            if error.status_code in (401, 403, 404):
                raise LookupUnavailable(
                    f"SendGrid's Email Activity feed returned HTTP "
                    f"{error.status_code}: the API key needs Email Activity access"
                ) from None
            raise ProviderError(
                f"SendGrid's Email Activity feed returned HTTP {error.status_code}",
                permanent=False,
                status=error.status_code,
                retry_after_seconds=retry_after_seconds(error.headers),
            ) from None
        except OSError as error:
            raise ProviderError(
                f"SendGrid unreachable: {error}", permanent=False
            ) from None
        found = json.loads(response.body or b"{}").get("messages") or []
        for entry in found:
            msg_id = str(entry.get("msg_id") or "")
            if msg_id:
                # The feed's msg_id is "<X-Message-Id>.<filter suffix>".
                return msg_id.split(".", 1)[0]
        return None


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
        # Twilio lists a message as soon as it accepts it.
        self.lookup_delay_seconds = 0.0

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
                retry_after_seconds=retry_after_seconds(
                    getattr(error, "headers", None)
                ),
                verdict=TWILIO_NUMBER_VERDICTS.get(error.code or 0),
            ) from None
        except OSError as error:
            raise ProviderError(
                f"Twilio unreachable: {error}",
                permanent=False,
                maybe_accepted=_interrupted(error),
            ) from None
        return str(created.sid)

    def find_sent(self, message: Outgoing, since: datetime) -> str | None:
        """Find the message among the latest ones sent to the same number.

        Twilio keeps no id of ours, so a message matches by sender, recipient
        and body, created no earlier than the interrupted attempt.
        """
        try:
            recent = self.client.messages.list(
                to=message.to, from_=self.from_number, limit=TWILIO_LOOKUP_PAGE
            )
        except TwilioRestException as error:
            raise ProviderError(
                f"Twilio returned HTTP {error.status} listing messages: {error.msg}",
                permanent=False,
                status=error.status,
            ) from None
        except OSError as error:
            raise ProviderError(
                f"Twilio unreachable: {error}", permanent=False
            ) from None
        earliest = since - LOOKUP_CLOCK_SKEW
        for sent in recent:
            created = sent.date_created
            if sent.body == message.text and (created is None or created >= earliest):
                return str(sent.sid)
        return None


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
                retry_after_seconds=retry_after_seconds(response.headers),
            )
        return f"task-{message.message_id}"


class ConsoleEmailSender:
    """Writes each email as an .eml file instead of sending it."""

    name = "console"
    lookup_delay_seconds = 0.0

    def __init__(self, outbox: Path, from_email: str) -> None:
        self.outbox = outbox
        self.from_email = from_email

    def find_sent(self, message: Outgoing, since: datetime) -> str | None:
        path = self.outbox / f"{message.message_id}.eml"
        return f"console-{message.message_id}" if path.exists() else None

    def send(self, message: Outgoing) -> str:
        mail = EmailMessage()
        mail["From"] = self.from_email
        mail["To"] = message.to
        mail["Subject"] = message.subject or ""
        mail["Date"] = email.utils.formatdate(localtime=False)
        mail["X-Nurture-Message-Id"] = message.message_id
        for name, value in message.headers.items():
            mail[name] = value
        mail.set_content(message.text)
        if message.html:
            mail.add_alternative(message.html, subtype="html")
        self.outbox.mkdir(parents=True, exist_ok=True)
        path = self.outbox / f"{message.message_id}.eml"
        # Long header lines (List-Unsubscribe) stay whole up to RFC 5322's
        # 998 characters; the default 78 would encode them unreadably.
        path.write_bytes(mail.as_bytes(policy=_EML_POLICY))
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
    lookup_delay_seconds = 0.0

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    def find_sent(self, message: Outgoing, since: datetime) -> str | None:
        path = self.outbox / f"{message.message_id}.sms.json"
        return f"console-{message.message_id}" if path.exists() else None

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
