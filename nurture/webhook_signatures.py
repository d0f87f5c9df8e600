"""Checking that a webhook request really comes from SendGrid or Twilio.

Both checks use the providers' own SDK helpers: SendGrid's `EventWebhook`
verifies the ECDSA signature of the Event Webhook, and Twilio's
`RequestValidator` the HMAC of `X-Twilio-Signature`. A failed check raises
`SignatureError`, which names the header and says what to check.
"""

import base64
import binascii
import math
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from twilio.request_validator import (
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
)

SENDGRID_SIGNATURE_HEADER: str = EventWebhookHeader.SIGNATURE
SENDGRID_TIMESTAMP_HEADER: str = EventWebhookHeader.TIMESTAMP
TWILIO_SIGNATURE_HEADER: str = SIGNATURE_HEADER
TWILIO_SIGNATURE_SETTINGS_HEADER: str = SIGNATURE_SETTINGS_HEADER


class SignatureError(Exception):
    """A webhook request whose signature is missing, malformed, stale or wrong."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(message)
        self.header = header
        self.message = message


def _strip_pem_armour(key: str) -> str:
    lines = [line.strip() for line in key.strip().splitlines()]
    return "".join(line for line in lines if line and not line.startswith("-----"))


class SendGridVerifier:
    """Verifier of signed Event Webhook batches, with SendGrid's public key.

    SendGrid signs the timestamp header followed by the raw body bytes, so
    the body must reach `verify` exactly as it arrived: a trailing CRLF is
    part of what was signed.
    """

    def __init__(self, public_key: str, max_age_seconds: int) -> None:
        """Load the key, raising ValueError that names the setting if it is invalid."""
        key = _strip_pem_armour(public_key)
        try:
            base64.b64decode(key, validate=True)
        except binascii.Error as error:
            raise ValueError(
                f"SENDGRID_WEBHOOK_PUBLIC_KEY is not valid base64 ({error}): paste "
                "the verification key exactly as SendGrid's Mail Settings show it"
            ) from None
        try:
            helper = EventWebhook(key)
        except ValueError as error:
            raise ValueError(
                f"SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key ({error}): paste "
                "the verification key exactly as SendGrid's Mail Settings show it"
            ) from None
        loaded = helper.public_key
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
            loaded.curve, ec.SECP256R1
        ):
            raise ValueError(
                "SENDGRID_WEBHOOK_PUBLIC_KEY is not an ECDSA P-256 public key, the "
                "kind SendGrid signs with: paste the Event Webhook's verification key"
            )
        self._helper = helper
        self.max_age_seconds = max_age_seconds

    def verify(
        self,
        body: bytes,
        signature: str | None,
        timestamp: str | None,
        now: float,
    ) -> None:
        """Raise SignatureError unless the headers sign this body and are recent."""
        if not signature:
            raise SignatureError(
                SENDGRID_SIGNATURE_HEADER,
                f"missing header {SENDGRID_SIGNATURE_HEADER}: enable the Signed "
                "Event Webhook in SendGrid, or unset SENDGRID_WEBHOOK_PUBLIC_KEY to "
                "accept unsigned events",
            )
        if not timestamp:
            raise SignatureError(
                SENDGRID_TIMESTAMP_HEADER,
                f"missing header {SENDGRID_TIMESTAMP_HEADER}: SendGrid sends it "
                "with every signed batch, so check that no proxy removes it",
            )
        try:
            base64.b64decode(signature, validate=True)
        except binascii.Error:
            raise SignatureError(
                SENDGRID_SIGNATURE_HEADER,
                f"{SENDGRID_SIGNATURE_HEADER} is not valid base64: check that no "
                "proxy rewrites the header",
            ) from None
        self._check_age(timestamp, now)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError(
                SENDGRID_SIGNATURE_HEADER,
                "the body is not valid UTF-8, so it is not what SendGrid signed: "
                "check that no proxy re-encodes the body",
            ) from None
        try:
            valid = self._helper.verify_signature(text, signature, timestamp)
        except ValueError:
            # cryptography raises this for a signature that is not DER.
            valid = False
        if not valid:
            raise SignatureError(
                SENDGRID_SIGNATURE_HEADER,
                f"{SENDGRID_SIGNATURE_HEADER} does not match the body and timestamp: "
                "check that SENDGRID_WEBHOOK_PUBLIC_KEY is this SendGrid account's "
                "verification key and that no proxy changes the body",
            )

    def _check_age(self, timestamp: str, now: float) -> None:
        try:
            sent_at = int(timestamp.strip())
        except ValueError:
            raise SignatureError(
                SENDGRID_TIMESTAMP_HEADER,
                f"{SENDGRID_TIMESTAMP_HEADER} must be Unix seconds, got {timestamp!r}",
            ) from None
        age = now - sent_at
        # Clocks drift both ways, so the same window applies to the future.
        if age > self.max_age_seconds:
            raise SignatureError(
                SENDGRID_TIMESTAMP_HEADER,
                f"{SENDGRID_TIMESTAMP_HEADER} is {math.floor(age)} seconds old, more "
                f"than WEBHOOK_MAX_AGE_SECONDS={self.max_age_seconds}: the batch is a "
                "replay or this server's clock is wrong",
            )
        if -age > self.max_age_seconds:
            raise SignatureError(
                SENDGRID_TIMESTAMP_HEADER,
                f"{SENDGRID_TIMESTAMP_HEADER} is {math.floor(-age)} seconds in the "
                f"future, more than WEBHOOK_MAX_AGE_SECONDS={self.max_age_seconds}: "
                "check this server's clock",
            )


def sendgrid_verifier(public_key: str, max_age_seconds: int) -> SendGridVerifier | None:
    """Build the verifier, or return None when no key is configured."""
    if not public_key.strip():
        return None
    return SendGridVerifier(public_key, max_age_seconds)


def twilio_webhook_url(
    configured_url: str, public_base_url: str, path: str, query: str = ""
) -> str:
    """Return the URL Twilio called: the configured one, else our public URL.

    The Host header is never used, because a proxy in front may change it,
    and a client may set it to anything.
    """
    if configured_url:
        return configured_url
    url = public_base_url.rstrip("/") + path
    return f"{url}?{query}" if query else url


def parse_twilio_form(body: bytes) -> list[tuple[str, str]]:
    """Parse a form-encoded Twilio body into its fields, blank values kept.

    Twilio signs every field, blank ones too. A form-encoded body contains no
    raw line breaks (Twilio sends them as %0A), so a final line break is a
    line ending that a tool or a file added, and is not part of the last value.
    A body that is not UTF-8 raises SignatureError: Twilio sends UTF-8.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise SignatureError(
            TWILIO_SIGNATURE_HEADER,
            "the body is not valid UTF-8, so it is not what Twilio signed: check "
            "that no proxy re-encodes the body",
        ) from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return parse_qsl(text, keep_blank_values=True)


@dataclass(frozen=True)
class _Fields:
    """Form fields as the SDK validator reads repeated ones: by `getlist`."""

    pairs: tuple[tuple[str, str], ...]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self.pairs))

    def getlist(self, name: str) -> list[str]:
        return [value for key, value in self.pairs if key == name]


def verify_twilio(
    auth_token: str,
    url: str,
    fields: list[tuple[str, str]],
    signature: str | None,
    settings_header: str | None,
) -> None:
    """Raise SignatureError unless X-Twilio-Signature signs this URL and form."""
    if not auth_token:
        raise SignatureError(
            TWILIO_SIGNATURE_HEADER,
            f"{TWILIO_SIGNATURE_HEADER} cannot be checked because "
            "TWILIO_AUTH_TOKEN is not set: set it to the account's Auth Token",
        )
    if not signature:
        raise SignatureError(
            TWILIO_SIGNATURE_HEADER,
            f"missing header {TWILIO_SIGNATURE_HEADER}: Twilio signs every "
            "webhook request, so check that no proxy removes it",
        )
    if settings_header:
        raise SignatureError(
            TWILIO_SIGNATURE_SETTINGS_HEADER,
            f"the request is signed with a Twilio webhook shared key "
            f"({TWILIO_SIGNATURE_SETTINGS_HEADER}: {settings_header}), but only "
            "Auth Token signatures are checked: remove the Webhook Rule that "
            "matches this URL",
        )
    validator = RequestValidator(auth_token)
    if not validator.validate(url, _Fields(tuple(fields)), signature):
        raise SignatureError(
            TWILIO_SIGNATURE_HEADER,
            f"{TWILIO_SIGNATURE_HEADER} does not match this request for {url}: "
            "check TWILIO_AUTH_TOKEN, and that the URL set in Twilio is this one "
            "(set TWILIO_STATUS_WEBHOOK_URL, TWILIO_INBOUND_WEBHOOK_URL or "
            "PUBLIC_BASE_URL to match)",
        )
