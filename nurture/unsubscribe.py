"""Signed one-click unsubscribe links (RFC 8058) for marketing email.

A link names the lead and the message it came in, and carries an HMAC of
both under the server's secret: it works without signing in, and a link for
another lead cannot be made without the secret.
"""

import base64
import hashlib
import hmac
import html
from dataclasses import dataclass

UNSUBSCRIBE_PATH = "/api/v1/unsubscribe"


class InvalidLink(ValueError):
    """The token was not made by this server, or was changed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class UnsubscribeLinks:
    secret: bytes
    public_base_url: str

    def _signature(self, lead_id: str, message_id: str) -> str:
        mac = hmac.new(
            self.secret, f"unsubscribe:{lead_id}:{message_id}".encode(), hashlib.sha256
        )
        return _b64(mac.digest()[:20])

    def token(self, lead_id: str, message_id: str) -> str:
        return f"{lead_id}.{message_id}.{self._signature(lead_id, message_id)}"

    def url(self, lead_id: str, message_id: str) -> str:
        base = self.public_base_url.rstrip("/")
        return f"{base}{UNSUBSCRIBE_PATH}/{self.token(lead_id, message_id)}"

    def headers(self, lead_id: str, message_id: str) -> dict[str, str]:
        """Return the List-Unsubscribe headers for one-click unsubscribing."""
        return {
            "List-Unsubscribe": f"<{self.url(lead_id, message_id)}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }

    def verify(self, token: str) -> tuple[str, str]:
        """Return the lead id and message id of a token, or raise InvalidLink."""
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise InvalidLink("the link is incomplete")
        lead_id, message_id, signature = parts
        expected = self._signature(lead_id, message_id)
        if not hmac.compare_digest(expected, signature):
            raise InvalidLink("the link's signature does not match")
        return lead_id, message_id


def add_footer(text: str, html_body: str | None, url: str) -> tuple[str, str | None]:
    """Add the unsubscribe link to a body that does not show it already."""
    if url not in text:
        text = f"{text.rstrip()}\n\n--\nTo stop receiving these emails: {url}\n"
    if html_body is not None and url not in html_body:
        link = (
            '<p style="font-size: 12px; color: #666">'
            f'<a href="{html.escape(url)}">Unsubscribe</a> from these emails.</p>'
        )
        closing = html_body.lower().rfind("</body>")
        if closing == -1:
            html_body = html_body + link
        else:
            html_body = html_body[:closing] + link + html_body[closing:]
    return text, html_body
