"""The codec endpoint: decrypts payloads for the Temporal Web UI and CLI.

It follows Temporal's codec server protocol. `POST .../decode` and
`POST .../encode` take and return `{"payloads": [...]}`, the protobuf JSON of
Temporal's `Payloads` message, in which `data` and every metadata value are
base64. Invalid JSON and payloads that fail to decrypt get 400.

There are two ways in, because the Web UI sends an Authorization header only
with an OIDC access token and only to an HTTPS endpoint (temporalio/ui,
src/lib/services/data-encoder.ts):
- `/api/v1/codec/decode` and `/encode` take an admin API key as a Bearer
  token, because decoding reveals the lead data in every workflow history. The
  CLI sends it with `--codec-auth "Bearer KEY"`.
- `/api/v1/codec/ui/<TEMPORAL_UI_CODEC_TOKEN>/decode` and `/encode` take a
  secret in the path instead, for the UI's `--ui-codec-endpoint`. Anyone who
  can load the UI can read that URL from its settings.

Browsers call both from the UI's origin, so the codec routes respond to CORS
requests from TEMPORAL_UI_ORIGINS, preflights included. Preflights carry no
credentials, which is why the CORS middleware runs before the API key check.

NOTE: the API's access log records request paths, and so the UI token too.
"""

import hmac
import json
import logging
from collections.abc import Sequence
from typing import Literal

from fastapi import APIRouter, Request, Response
from google.protobuf import json_format
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.api.common.v1 import Payload, Payloads

from api.deps import AdminDep, SettingsDep
from api.errors import ApiError, error_responses
from nurture.codec import ENCODING, PayloadDecryptionError, payload_codec
from nurture.config import Settings

CODEC_PATH = "/api/v1/codec"
UI_CODEC_PATH = f"{CODEC_PATH}/ui"

router = APIRouter(prefix=CODEC_PATH, tags=["codec"])
logger = logging.getLogger(__name__)

Operation = Literal["decode", "encode"]

_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "Temporal Payloads as protobuf JSON.",
                    "properties": {
                        "payloads": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "metadata": {
                                        "type": "object",
                                        "additionalProperties": {
                                            "type": "string",
                                            "format": "byte",
                                        },
                                    },
                                    "data": {"type": "string", "format": "byte"},
                                },
                            },
                        }
                    },
                }
            }
        },
    }
}


def ui_origins(settings: Settings) -> list[str]:
    """Return the origins of the Temporal Web UI that may call the codec routes."""
    configured = [
        origin.strip()
        for origin in settings.temporal_ui_origins.split(",")
        if origin.strip()
    ]
    if configured:
        return configured
    port = settings.temporal_ui_port
    return [f"http://localhost:{port}", f"http://127.0.0.1:{port}"]


class CodecCorsMiddleware:
    """Starlette's CORS middleware, applied to the codec routes only.

    Other routes get no CORS headers, so the UI's origin gains nothing else.
    """

    def __init__(self, app: ASGIApp, origins: Sequence[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(
            app,
            allow_origins=origins,
            allow_methods=["POST"],
            allow_headers=["Authorization", "Content-Type", "X-Namespace"],
            # The UI's "include cross-origin credentials" option needs this.
            allow_credentials=True,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(f"{CODEC_PATH}/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def _convert(
    request: Request, settings: Settings, operation: Operation
) -> Response:
    try:
        body = json.loads(await request.body())
        if not isinstance(body, dict):
            raise ValueError(f"expected a JSON object, got {type(body).__name__}")
        message = json_format.ParseDict(body, Payloads(), ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError) as error:
        raise ApiError(
            400,
            "invalid_payloads",
            'the body must be Temporal Payloads as protobuf JSON, {"payloads": '
            f'[{{"metadata": {{...}}, "data": "<base64>"}}]}}: {error}',
        ) from None
    payloads = list(message.payloads)
    codec = payload_codec(settings.payload_encryption_keys)
    try:
        if codec is None:
            converted = _without_encryption(payloads, operation)
        elif operation == "decode":
            converted = await codec.decode(payloads)
        else:
            converted = await codec.encode(payloads)
    except PayloadDecryptionError as error:
        logger.warning("codec endpoint: %s", error)
        raise ApiError(400, "decode_failed", str(error)) from None
    return Response(
        json_format.MessageToJson(Payloads(payloads=converted)),
        media_type="application/json",
    )


def _without_encryption(payloads: list[Payload], operation: Operation) -> list[Payload]:
    """Return the payloads as they are, which is what the workers do without keys."""
    if operation == "decode" and any(
        p.metadata.get("encoding") == ENCODING for p in payloads
    ):
        raise PayloadDecryptionError(
            "payload is encrypted, but PAYLOAD_ENCRYPTION_KEYS is empty: set it "
            "to the keys the workers use"
        )
    return payloads


def _check_ui_token(token: str, settings: Settings) -> None:
    expected = settings.temporal_ui_codec_token
    if not expected:
        raise ApiError(
            401,
            "unauthorized",
            "the Web UI codec endpoint is off: set TEMPORAL_UI_CODEC_TOKEN",
        )
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise ApiError(
            401,
            "unauthorized",
            "invalid codec token: use the endpoint "
            f"{UI_CODEC_PATH}/<TEMPORAL_UI_CODEC_TOKEN>",
        )


@router.post(
    "/decode", responses=error_responses(400, 401, 403), openapi_extra=_BODY_DOC
)
async def decode(request: Request, settings: SettingsDep, _actor: AdminDep) -> Response:
    """Decrypt payloads for the Temporal CLI or another holder of an admin key."""
    return await _convert(request, settings, "decode")


@router.post(
    "/encode", responses=error_responses(400, 401, 403), openapi_extra=_BODY_DOC
)
async def encode(request: Request, settings: SettingsDep, _actor: AdminDep) -> Response:
    """Encrypt payloads with the active key, for input typed into the UI or CLI."""
    return await _convert(request, settings, "encode")


@router.post(
    "/ui/{token}/decode",
    responses=error_responses(400, 401),
    openapi_extra=_BODY_DOC,
)
async def decode_for_ui(
    token: str, request: Request, settings: SettingsDep
) -> Response:
    """Decrypt payloads for the Temporal Web UI, which proves access by the token."""
    _check_ui_token(token, settings)
    return await _convert(request, settings, "decode")


@router.post(
    "/ui/{token}/encode",
    responses=error_responses(400, 401),
    openapi_extra=_BODY_DOC,
)
async def encode_for_ui(
    token: str, request: Request, settings: SettingsDep
) -> Response:
    """Encrypt payloads for the Temporal Web UI, which proves access by the token."""
    _check_ui_token(token, settings)
    return await _convert(request, settings, "encode")
