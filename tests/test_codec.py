"""Payload encryption: the AES-GCM codec, its settings, workflow histories on a
real Temporal server, and the codec endpoint that the Temporal Web UI calls."""

import base64
import json
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import ValidationError
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.client import Client, WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from api.app import create_app
from nurture.codec import (
    ENCODING,
    KEY_ID_METADATA,
    EncryptionCodec,
    EncryptionKey,
    PayloadDecryptionError,
    data_converter,
    generate_key_entry,
    parse_encryption_keys,
)
from nurture.config import Settings
from nurture.devstack import ui_codec_endpoint
from nurture.temporal import lead_workflow_id, nurture_workflow_id
from tests.conftest import API_KEY, PAYLOAD_ENCRYPTION_KEYS, Stack
from tests.test_end_to_end import create_campaign, create_lead
from workflows.lead import LeadWorkflow
from workflows.nurture import NurtureWorkflow

OLD_KEY = EncryptionKey("2025-01", bytes(range(32)))
NEW_KEY = EncryptionKey("2026-01", bytes(range(100, 132)))
# Values from tests/examples/lead.json that must not be readable in Temporal.
LEAD_DATA = [b"john.smith@company.com", b"John", b"Smith", b"5551234567"]
# Workflows carry ids, but a tracked link can carry the lead's own data, and the
# lead workflow receives its URL in a signal.
TRACKED_URL = (
    "https://example.com/pricing?email=john.smith@company.com"
    "&name=John+Smith&phone=5551234567"
)
UI_ORIGIN = "http://localhost:8233"
UI_TOKEN = "ui-token-" + "y" * 24


def entry(key: EncryptionKey) -> str:
    return f"{key.id}:{base64.b64encode(key.secret).decode()}"


def plain_payloads(*values: Any) -> list[Payload]:
    return pydantic_data_converter.payload_converter.to_payloads(list(values))


# --- the codec ---------------------------------------------------------------


async def test_codec_round_trip() -> None:
    codec = EncryptionCodec([NEW_KEY])
    originals = plain_payloads({"email": "john.smith@company.com"}, "John", None)

    encoded = await codec.encode(originals)
    decoded = await codec.decode(encoded)

    assert decoded == originals
    assert len(encoded) == 3
    for payload in encoded:
        assert payload.metadata["encoding"] == ENCODING
        assert payload.metadata[KEY_ID_METADATA] == b"2026-01"
        assert b"john.smith" not in payload.data
    assert b"John" not in encoded[1].data


async def test_codec_uses_fresh_nonce() -> None:
    codec = EncryptionCodec([NEW_KEY])
    (payload,) = plain_payloads("same value")

    first, second = await codec.encode([payload, payload])

    assert first.data[:12] != second.data[:12]
    assert first.data != second.data


async def test_codec_rejects_tampered_ciphertext() -> None:
    codec = EncryptionCodec([NEW_KEY])
    (encrypted,) = await codec.encode(plain_payloads({"email": "a@example.com"}))
    tampered = Payload()
    tampered.CopyFrom(encrypted)
    tampered.data = encrypted.data[:-1] + bytes([encrypted.data[-1] ^ 1])

    with pytest.raises(PayloadDecryptionError) as raised:
        await codec.decode([tampered])

    assert "'2026-01'" in str(raised.value)
    assert "failed authentication" in str(raised.value)


async def test_codec_decodes_after_rotation() -> None:
    before = EncryptionCodec([OLD_KEY])
    after = EncryptionCodec([NEW_KEY, OLD_KEY])
    originals = plain_payloads({"email": "john.smith@company.com"})
    old_ciphertext = await before.encode(originals)

    decoded = await after.decode(old_ciphertext)
    (new_ciphertext,) = await after.encode(originals)

    assert decoded == originals
    assert new_ciphertext.metadata[KEY_ID_METADATA] == b"2026-01"
    assert await after.decode([new_ciphertext]) == originals


async def test_codec_unknown_key_id() -> None:
    (encrypted,) = await EncryptionCodec([OLD_KEY]).encode(plain_payloads(1))
    codec = EncryptionCodec([NEW_KEY])

    with pytest.raises(PayloadDecryptionError) as raised:
        await codec.decode([encrypted])

    assert "unknown key id '2025-01'" in str(raised.value)
    assert "PAYLOAD_ENCRYPTION_KEYS" in str(raised.value)


async def test_codec_passes_unencrypted_through() -> None:
    codec = EncryptionCodec([NEW_KEY])
    originals = plain_payloads({"email": "a@example.com"}, "text")
    binary = Payload(metadata={"encoding": b"binary/plain"}, data=b"\x00\x01")

    decoded = await codec.decode([*originals, binary])

    assert decoded == [*originals, binary]


def test_data_converter_without_keys_is_plain() -> None:
    assert data_converter("") is pydantic_data_converter
    assert isinstance(data_converter(entry(NEW_KEY)).payload_codec, EncryptionCodec)


# --- settings ----------------------------------------------------------------


def test_keys_parse_in_order() -> None:
    keys = parse_encryption_keys(f" {entry(NEW_KEY)} , {entry(OLD_KEY)},")

    assert keys == [NEW_KEY, OLD_KEY]
    assert EncryptionCodec(keys).active_key_id == "2026-01"


def test_keys_accept_urlsafe_base64() -> None:
    secret = bytes([0xFB, 0xFF] * 16)
    encoded = base64.urlsafe_b64encode(secret).decode()

    assert "-" in encoded or "_" in encoded
    assert parse_encryption_keys(f"k:{encoded}") == [EncryptionKey("k", secret)]


def test_key_repr_hides_secret() -> None:
    assert repr(NEW_KEY.secret) not in repr(NEW_KEY)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("no-separator", "entry 1 is not ID:BASE64KEY"),
        ("k1:", "entry 1 is not ID:BASE64KEY"),
        ("bad id:" + base64.b64encode(bytes(32)).decode(), "invalid key id 'bad id'"),
        ("k1:not base64!", "the key of 'k1' is not valid base64"),
        ("k1:" + base64.b64encode(bytes(16)).decode(), "'k1' is 16 bytes"),
        (
            f"{entry(NEW_KEY)},{NEW_KEY.id}:{base64.b64encode(bytes(32)).decode()}",
            "key id '2026-01' is listed twice",
        ),
    ],
    ids=["no-separator", "no-key", "bad-id", "bad-base64", "short-key", "duplicate"],
)
def test_invalid_keys_rejected(value: str, expected: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Settings(payload_encryption_keys=value)

    assert "PAYLOAD_ENCRYPTION_KEYS" in str(raised.value)
    assert expected in str(raised.value)


def test_invalid_key_error_hides_key() -> None:
    short = base64.b64encode(b"s3cret-material-0123").decode()

    with pytest.raises(ValidationError) as raised:
        Settings(payload_encryption_keys=f"k1:{short}")

    assert short not in str(raised.value)


def production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "production",
        "api_key": "a" * 32,
        "unsubscribe_secret": "u" * 32,
        "payload_encryption_keys": entry(NEW_KEY),
    }
    values.update(overrides)
    return Settings(**values)


def test_production_requires_keys() -> None:
    assert production().payload_encryption_keys == entry(NEW_KEY)
    with pytest.raises(ValidationError) as raised:
        production(payload_encryption_keys="")

    assert "PAYLOAD_ENCRYPTION_KEYS is required" in str(raised.value)


def test_production_rejects_short_ui_token() -> None:
    assert production(temporal_ui_codec_token="t" * 24).temporal_ui_codec_token
    with pytest.raises(ValidationError) as raised:
        production(temporal_ui_codec_token="short")

    assert "TEMPORAL_UI_CODEC_TOKEN" in str(raised.value)


def test_dev_ui_codec_endpoint() -> None:
    settings = Settings(api_host="0.0.0.0", api_port=8123, temporal_ui_codec_token="t")

    assert ui_codec_endpoint(settings) == "http://127.0.0.1:8123/api/v1/codec/ui/t"


# --- workflow histories on a real server --------------------------------------


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Yield every Payload inside a protobuf message, with its field path."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        where = f"{path}.{field.name}"
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            items = list(value.values()) if value_field.message_type else []
        elif field.is_repeated:
            items = list(value)
        else:
            items = [value]
        for item in items:
            if isinstance(item, Payload):
                yield where, item
            else:
                yield from payloads_in(item, where)


def stored_in_plain_text(path: str, payload: Payload) -> bool:
    """Return whether Temporal keeps this payload unencrypted by design.

    Search attributes are indexed for queries, and ours contain ids, stages
    and scores. The SDK's core writes the markers of `workflow.patched()`
    itself, without the codec, and they contain only the patch id.
    """
    if ".search_attributes." in path:
        return True
    if path != ".marker_recorded_event_attributes.details.payloads":
        return False
    if payload.metadata.get("encoding") != b"json/plain":
        return False
    return set(json.loads(payload.data)) == {"id", "deprecated"}


def history_payloads(history: WorkflowHistory) -> list[tuple[str, Payload]]:
    return [found for event in history.events for found in payloads_in(event)]


async def finished_journey(stack: Stack) -> tuple[str, str]:
    """Run the example lead, with a tracked page view, through the example campaign."""
    campaign_id = await create_campaign(stack)
    lead_id = await create_lead(stack)
    await stack.eventually(stack.sendgrid.mails, message="welcome email sent")
    event = await stack.api.post(
        "/api/v1/events",
        json={"leadId": lead_id, "type": "page_view", "url": TRACKED_URL},
    )
    assert event.status_code == 202, event.text

    async def event_seen() -> bool:
        state = await stack.client.get_workflow_handle_for(
            LeadWorkflow.run, lead_workflow_id(lead_id)
        ).query(LeadWorkflow.state)
        return state.events_seen > 0

    await stack.eventually(event_seen, message="page view signalled to the lead")
    handle = stack.client.get_workflow_handle_for(
        NurtureWorkflow.run, nurture_workflow_id(campaign_id, lead_id)
    )
    await stack.env.fast_forward(handle, timedelta(hours=24))
    await handle.result()
    return campaign_id, lead_id


async def test_history_hides_lead_data(stack: Stack) -> None:
    campaign_id, lead_id = await finished_journey(stack)
    # A client without the codec reads the payloads as the Temporal server stores them.
    plain = Client(
        stack.client.service_client,
        namespace=stack.client.namespace,
        data_converter=pydantic_data_converter,
    )
    codec = stack.client.data_converter.payload_codec
    assert codec is not None

    readable = b""
    for workflow_id in (
        lead_workflow_id(lead_id),
        nurture_workflow_id(campaign_id, lead_id),
    ):
        history = await plain.get_workflow_handle(workflow_id).fetch_history()
        stored = b"".join(event.SerializeToString() for event in history.events)
        found = history_payloads(history)
        decoded = await codec.decode([payload for _path, payload in found])
        readable += b"".join(payload.data for payload in decoded)

        for value in LEAD_DATA:
            assert value not in stored, f"{value!r} in {workflow_id}"
        for path, payload in found:
            if not stored_in_plain_text(path, payload):
                assert payload.metadata["encoding"] == ENCODING, path
    # The codec restores what the server cannot read.
    for value in LEAD_DATA:
        assert value in readable, value


async def test_only_codec_client_reads_workflow(stack: Stack) -> None:
    _campaign_id, lead_id = await finished_journey(stack)
    plain = Client(
        stack.client.service_client,
        namespace=stack.client.namespace,
        data_converter=pydantic_data_converter,
    )

    state = await stack.client.get_workflow_handle_for(
        LeadWorkflow.run, lead_workflow_id(lead_id)
    ).query(LeadWorkflow.state)

    assert state.lead_id == lead_id
    with pytest.raises(Exception, match="binary/encrypted"):
        await plain.get_workflow_handle_for(
            LeadWorkflow.run, lead_workflow_id(lead_id)
        ).query(LeadWorkflow.state)


async def test_encrypted_history_replays(stack: Stack) -> None:
    campaign_id, lead_id = await finished_journey(stack)
    history = await stack.client.get_workflow_handle(
        nurture_workflow_id(campaign_id, lead_id)
    ).fetch_history()
    workflows = [LeadWorkflow, NurtureWorkflow]

    with_codec = Replayer(
        workflows=workflows, data_converter=data_converter(PAYLOAD_ENCRYPTION_KEYS)
    )
    without_codec = Replayer(
        workflows=workflows, data_converter=pydantic_data_converter
    )

    await with_codec.replay_workflow(history)
    result = await without_codec.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None


# --- the codec endpoint --------------------------------------------------------


def as_json(payloads: list[Payload]) -> dict[str, Any]:
    return json_format.MessageToDict(Payloads(payloads=payloads))


def from_json(body: dict[str, Any]) -> list[Payload]:
    return list(json_format.ParseDict(body, Payloads()).payloads)


@pytest.fixture
async def anonymous(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """Return a client of an app like the stack's, with a UI token, and no API key."""
    settings = stack.settings.model_copy(update={"temporal_ui_codec_token": UI_TOKEN})
    app = create_app(
        settings, stack.client, stack.engine, run_migrations=False, reconcile=False
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://nurture.test"
    ) as client:
        yield client


async def test_endpoint_round_trip(stack: Stack) -> None:
    originals = plain_payloads({"email": "john.smith@company.com"}, "John")

    encoded = await stack.api.post("/api/v1/codec/encode", json=as_json(originals))
    assert encoded.status_code == 200, encoded.text
    encrypted = from_json(encoded.json())
    decoded = await stack.api.post("/api/v1/codec/decode", json=encoded.json())
    assert decoded.status_code == 200, decoded.text

    assert [p.metadata["encoding"] for p in encrypted] == [ENCODING, ENCODING]
    assert b"john.smith" not in encrypted[0].data
    assert from_json(decoded.json()) == originals
    assert decoded.headers["content-type"] == "application/json"


async def test_endpoint_decodes_worker_payloads(stack: Stack) -> None:
    _campaign_id, lead_id = await finished_journey(stack)
    history = await stack.client.get_workflow_handle(
        lead_workflow_id(lead_id)
    ).fetch_history()
    stored = [payload for _path, payload in history_payloads(history)]

    response = await stack.api.post("/api/v1/codec/decode", json=as_json(stored))

    assert response.status_code == 200, response.text
    readable = b"".join(p.data for p in from_json(response.json()))
    assert b"john.smith@company.com" in readable


async def test_endpoint_metadata_is_base64(stack: Stack) -> None:
    (payload,) = plain_payloads("text")

    response = await stack.api.post("/api/v1/codec/encode", json=as_json([payload]))

    metadata = response.json()["payloads"][0]["metadata"]
    assert base64.b64decode(metadata["encoding"]) == ENCODING
    assert base64.b64decode(metadata[KEY_ID_METADATA]) == b"test-1"


async def test_endpoint_requires_api_key(anonymous: httpx.AsyncClient) -> None:
    body = as_json(plain_payloads("text"))

    for path in ("/api/v1/codec/decode", "/api/v1/codec/encode"):
        response = await anonymous.post(path, json=body)
        assert response.status_code == 401, path
        assert response.json()["error"] == "unauthorized"
    wrong = await anonymous.post(
        "/api/v1/codec/decode", json=body, headers={"Authorization": "Bearer wrong"}
    )
    assert wrong.status_code == 401


async def test_endpoint_ui_token(anonymous: httpx.AsyncClient) -> None:
    originals = plain_payloads({"email": "john.smith@company.com"})

    encoded = await anonymous.post(
        f"/api/v1/codec/ui/{UI_TOKEN}/encode", json=as_json(originals)
    )
    decoded = await anonymous.post(
        f"/api/v1/codec/ui/{UI_TOKEN}/decode", json=encoded.json()
    )
    wrong = await anonymous.post(
        "/api/v1/codec/ui/wrong-token/decode", json=encoded.json()
    )

    assert encoded.status_code == 200, encoded.text
    assert decoded.status_code == 200, decoded.text
    assert from_json(decoded.json()) == originals
    assert wrong.status_code == 401
    assert "invalid codec token" in wrong.json()["message"]


async def test_endpoint_ui_token_off(stack: Stack) -> None:
    response = await stack.api.post(
        "/api/v1/codec/ui/anything/decode", json={"payloads": []}
    )

    assert stack.settings.temporal_ui_codec_token == ""
    assert response.status_code == 401
    assert "TEMPORAL_UI_CODEC_TOKEN" in response.json()["message"]


@pytest.mark.parametrize(
    "path", ["/api/v1/codec/decode", f"/api/v1/codec/ui/{UI_TOKEN}/decode"]
)
async def test_endpoint_responds_to_preflight(
    anonymous: httpx.AsyncClient, path: str
) -> None:
    response = await anonymous.options(
        path,
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
        },
    )

    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "x-namespace" in allowed
    assert "authorization" in allowed
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_endpoint_cors_on_response(anonymous: httpx.AsyncClient) -> None:
    originals = plain_payloads("text")

    response = await anonymous.post(
        f"/api/v1/codec/ui/{UI_TOKEN}/decode",
        json=as_json(originals),
        headers={"Origin": UI_ORIGIN, "X-Namespace": "default"},
    )
    denied = await anonymous.post(
        "/api/v1/codec/decode", json=as_json(originals), headers={"Origin": UI_ORIGIN}
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == UI_ORIGIN
    # The UI can read why the request was rejected.
    assert denied.status_code == 401
    assert denied.headers["access-control-allow-origin"] == UI_ORIGIN


async def test_endpoint_preflight_other_origin(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.options(
        "/api/v1/codec/decode",
        headers={
            "Origin": "http://evil.test",
            "Access-Control-Request-Method": "POST",
        },
    )

    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers


async def test_cors_only_on_codec_routes(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.options(
        "/api/v1/leads",
        headers={"Origin": UI_ORIGIN, "Access-Control-Request-Method": "POST"},
    )

    assert response.status_code == 401
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"payloads": [1]}', b'{"payloads": [{"data": 5}]}'],
    ids=["not-json", "array", "number-payload", "number-data"],
)
async def test_endpoint_rejects_invalid_body(stack: Stack, body: bytes) -> None:
    response = await stack.api.post(
        "/api/v1/codec/decode",
        content=body,
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_payloads"


async def test_endpoint_unknown_key_id(stack: Stack) -> None:
    encrypted = await EncryptionCodec([OLD_KEY]).encode(plain_payloads("text"))

    response = await stack.api.post("/api/v1/codec/decode", json=as_json(encrypted))

    assert response.status_code == 400
    assert response.json()["error"] == "decode_failed"
    assert "'2025-01'" in response.json()["message"]
    assert "PAYLOAD_ENCRYPTION_KEYS" in response.json()["message"]


async def test_endpoint_without_keys(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"payload_encryption_keys": ""})
    app = create_app(
        settings, stack.client, stack.engine, run_migrations=False, reconcile=False
    )
    plain = as_json(plain_payloads("text"))
    encrypted = as_json(await EncryptionCodec([NEW_KEY]).encode(plain_payloads(1)))

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://nurture.test",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as client:
        encoded = await client.post("/api/v1/codec/encode", json=plain)
        decoded = await client.post("/api/v1/codec/decode", json=encrypted)

    assert encoded.json() == plain
    assert decoded.status_code == 400
    assert "PAYLOAD_ENCRYPTION_KEYS is empty" in decoded.json()["message"]


def test_generated_key_entry_parses() -> None:
    (key,) = parse_encryption_keys(generate_key_entry("dev-1"))
    (other,) = parse_encryption_keys(generate_key_entry("dev-2"))

    assert key.id == "dev-1"
    assert len(key.secret) == 32
    assert key.secret != other.secret
