"""Provider webhook signatures: SendGrid's ECDSA and Twilio's X-Twilio-Signature.

The example files are posted byte for byte with the signatures that came
with them. Each check also runs with one byte changed, which must fail.
"""

import base64
import json
import logging
import time
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twilio.request_validator import RequestValidator

from api.app import create_app
from nurture.config import Settings
from nurture.twilio_events import INBOUND_PATH, STATUS_PATH, status_callback_url
from nurture.webhook_signatures import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    SendGridVerifier,
    SignatureError,
    parse_twilio_form,
    twilio_webhook_url,
    verify_twilio,
)
from tests.conftest import API_KEY, EXAMPLES, Stack, StackFactory, example

NO_KEY = {"Authorization": ""}
SENDGRID_ROUTE = "/api/v1/webhooks/sendgrid"
TWILIO_STATUS_ROUTE = "/api/v1/webhooks/twilio/status"
TWILIO_INBOUND_ROUTE = "/api/v1/webhooks/twilio/inbound"
TWILIO_FILES = (
    "inbound_sms.txt",
    "inbound_stop.txt",
    "inbound_start.txt",
    "inbound_help.txt",
    "status_delivered.txt",
    "status_failed_21610.txt",
)
# Far enough back to accept the examples' fixed timestamps (2020 and 2024).
EXAMPLE_MAX_AGE = 100 * 365 * 86400


def raw_example(name: str) -> bytes:
    """Return an example file's exact bytes, final line break included."""
    path = EXAMPLES / name
    if not path.is_file():
        pytest.fail(f"example input {path} is missing")
    return path.read_bytes()


def flip_byte(body: bytes, index: int) -> bytes:
    changed = bytearray(body)
    changed[index] ^= 0x01
    return bytes(changed)


def sendgrid_cases() -> list[tuple[str, str, bytes, dict[str, str]]]:
    """Return (name, public key, body, headers) of each signed SendGrid example."""
    signed = example("sendgrid/events.signature.json")
    vector = example("sendgrid/signed_vector_sendgrid_python_tests.json")
    return [
        (
            "events.json",
            signed["public_key_b64_der"],
            raw_example("sendgrid/events.json"),
            signed["headers"],
        ),
        (
            "signed_vector",
            vector["public_key"],
            vector["raw_body"].encode(),
            vector["headers"],
        ),
    ]


def sendgrid_settings(
    public_key: str, max_age: int = EXAMPLE_MAX_AGE
) -> dict[str, Any]:
    return {
        "sendgrid_webhook_public_key": public_key,
        "webhook_max_age_seconds": max_age,
    }


def twilio_settings() -> dict[str, Any]:
    """Settings under which the Twilio examples' signatures are valid."""
    signatures = example("twilio/signatures.json")
    files = signatures["files"]
    return {
        "twilio_auth_token": signatures["auth_token"],
        "twilio_inbound_webhook_url": files["inbound_sms.txt"]["url"],
        "twilio_status_webhook_url": files["status_delivered.txt"]["url"],
    }


async def post_sendgrid(
    stack: Stack, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    return await stack.api.post(
        SENDGRID_ROUTE,
        content=body,
        headers={**NO_KEY, "Content-Type": "application/json", **headers},
    )


async def post_twilio(
    stack: Stack,
    name: str,
    body: bytes | None = None,
    signature: str | None = None,
) -> httpx.Response:
    """Post a Twilio example file with its signature, or with the given ones."""
    meta = example("twilio/signatures.json")["files"][name]
    route = TWILIO_INBOUND_ROUTE if name.startswith("inbound") else TWILIO_STATUS_ROUTE
    return await stack.api.post(
        route,
        content=raw_example(f"twilio/{name}") if body is None else body,
        headers={
            **NO_KEY,
            "Content-Type": meta["content_type"],
            "X-Twilio-Signature": (
                meta["X-Twilio-Signature"] if signature is None else signature
            ),
        },
    )


def new_signing_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """Return a P-256 key and its public half as SendGrid shows it: base64 DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return key, base64.b64encode(der).decode()


def sign_sendgrid(
    key: ec.EllipticCurvePrivateKey, timestamp: int, body: bytes
) -> dict[str, str]:
    """Sign as SendGrid does: ECDSA SHA-256 over the timestamp and the body."""
    signature = key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        SENDGRID_SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        SENDGRID_TIMESTAMP_HEADER: str(timestamp),
    }


def assert_rejected(response: httpx.Response, header: str) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "invalid_signature"
    assert header in body["message"]
    assert [e["path"] for e in body["errors"]] == [header]


# The verifiers on their own: every byte of every example matters.


@pytest.mark.parametrize("case", sendgrid_cases(), ids=lambda case: case[0])
def test_sendgrid_example_fails_with_any_byte_changed(
    case: tuple[str, str, bytes, dict[str, str]],
) -> None:
    _name, public_key, body, headers = case
    verifier = SendGridVerifier(public_key, EXAMPLE_MAX_AGE)
    signature = headers[SENDGRID_SIGNATURE_HEADER]
    timestamp = headers[SENDGRID_TIMESTAMP_HEADER]

    verifier.verify(body, signature, timestamp, time.time())
    accepted = []
    for index in range(len(body)):
        try:
            verifier.verify(flip_byte(body, index), signature, timestamp, time.time())
        except SignatureError:
            continue
        accepted.append(index)

    assert accepted == []


def test_sendgrid_vector_needs_trailing_crlf() -> None:
    _name, public_key, body, headers = sendgrid_cases()[1]
    verifier = SendGridVerifier(public_key, EXAMPLE_MAX_AGE)
    signature = headers[SENDGRID_SIGNATURE_HEADER]
    timestamp = headers[SENDGRID_TIMESTAMP_HEADER]
    assert body.endswith(b"\r\n")

    with pytest.raises(SignatureError):
        verifier.verify(body.removesuffix(b"\r\n"), signature, timestamp, time.time())
    with pytest.raises(SignatureError):
        verifier.verify(body, signature, str(int(timestamp) + 1), time.time())


@pytest.mark.parametrize("name", TWILIO_FILES)
def test_twilio_example_fails_with_any_byte_changed(name: str) -> None:
    signatures = example("twilio/signatures.json")
    meta = signatures["files"][name]
    body = raw_example(f"twilio/{name}")
    token = signatures["auth_token"]
    signature = meta["X-Twilio-Signature"]

    verify_twilio(token, meta["url"], parse_twilio_form(body), signature, None)
    accepted = []
    for index in range(len(body)):
        fields = parse_twilio_form(flip_byte(body, index))
        try:
            verify_twilio(token, meta["url"], fields, signature, None)
        except SignatureError:
            continue
        accepted.append(index)

    assert accepted == []


def test_twilio_signature_covers_the_url() -> None:
    signatures = example("twilio/signatures.json")
    meta = signatures["files"]["inbound_sms.txt"]
    fields = parse_twilio_form(raw_example("twilio/inbound_sms.txt"))
    other_url = meta["url"].replace("/sms", "/status")

    with pytest.raises(SignatureError, match=other_url):
        verify_twilio(
            signatures["auth_token"],
            other_url,
            fields,
            meta["X-Twilio-Signature"],
            None,
        )


@pytest.mark.parametrize("ending", [b"", b"\n", b"\r\n"], ids=["none", "lf", "crlf"])
def test_twilio_form_line_ending_ignored(ending: bytes) -> None:
    signatures = example("twilio/signatures.json")
    meta = signatures["files"]["inbound_stop.txt"]
    body = raw_example("twilio/inbound_stop.txt")
    assert body.endswith(b"\n")

    fields = parse_twilio_form(body.removesuffix(b"\n") + ending)

    verify_twilio(
        signatures["auth_token"], meta["url"], fields, meta["X-Twilio-Signature"], None
    )
    assert ("ToCity", "") in fields
    assert ("Body", "STOP") in fields
    assert ("ApiVersion", "2010-04-01") in fields


def test_twilio_url_ignores_request_host() -> None:
    configured = "https://hooks.example.com/twilio/status?x=1"

    assert twilio_webhook_url(configured, "https://a.example", "/p") == configured
    assert (
        twilio_webhook_url("", "https://a.example/", "/api/v1/webhooks/twilio/status")
        == "https://a.example/api/v1/webhooks/twilio/status"
    )
    assert twilio_webhook_url("", "https://a.example", "/p", "b=2") == (
        "https://a.example/p?b=2"
    )


def test_twilio_paths_match_routes(engine: sa.Engine, database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        api_key=API_KEY,
        public_base_url="https://nurture.example.org/",
    )
    app = create_app(settings, engine=engine, run_migrations=False, reconcile=False)

    assert app.url_path_for("receive_twilio_status") == STATUS_PATH
    assert app.url_path_for("receive_twilio_inbound") == INBOUND_PATH
    assert status_callback_url(settings) == (
        "https://nurture.example.org/api/v1/webhooks/twilio/status"
    )
    configured = settings.model_copy(
        update={"twilio_status_webhook_url": "https://proxy.example/t/status"}
    )
    assert status_callback_url(configured) == "https://proxy.example/t/status"


# Keys that cannot work must stop the API from starting.


def _der_base64(public_key: Any) -> str:
    der = public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param("not base64 at all!", id="not-base64"),
        pytest.param(base64.b64encode(b"random bytes").decode(), id="not-a-key"),
        pytest.param(
            _der_base64(rsa.generate_private_key(65537, 2048).public_key()), id="rsa"
        ),
        pytest.param(
            _der_base64(ec.generate_private_key(ec.SECP384R1()).public_key()),
            id="p384",
        ),
    ],
)
def test_invalid_sendgrid_key_fails_app_creation(
    bad_key: str, engine: sa.Engine, database_url: str
) -> None:
    settings = Settings(
        database_url=database_url,
        api_key=API_KEY,
        sendgrid_webhook_public_key=bad_key,
    )

    with pytest.raises(ValueError, match="SENDGRID_WEBHOOK_PUBLIC_KEY"):
        create_app(settings, engine=engine, run_migrations=False, reconcile=False)


def test_sendgrid_key_in_pem_armour_loads() -> None:
    _key, public_b64 = new_signing_key()
    pem = f"-----BEGIN PUBLIC KEY-----\n{public_b64}\n-----END PUBLIC KEY-----\n"

    SendGridVerifier(pem, 600)


def test_missing_sendgrid_key_warns_at_start(
    engine: sa.Engine, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(database_url=database_url, api_key=API_KEY)

    with caplog.at_level(logging.WARNING, logger="api.app"):
        create_app(settings, engine=engine, run_migrations=False, reconcile=False)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("SENDGRID_WEBHOOK_PUBLIC_KEY" in w for w in warnings) == 1


# Through the API: 200 with the example's signature, 403 otherwise.


async def test_sendgrid_examples_accepted_and_tampering_rejected(
    stack_factory: StackFactory,
) -> None:
    cases = sendgrid_cases()
    for index, (name, public_key, body, headers) in enumerate(cases):
        # The other example's signature: valid base64 DER, wrong for this body.
        other = cases[1 - index][3][SENDGRID_SIGNATURE_HEADER]
        async with stack_factory(**sendgrid_settings(public_key)) as stack:
            good = await post_sendgrid(stack, body, headers)
            again = await post_sendgrid(stack, body, headers)
            changed_body = await post_sendgrid(
                stack, flip_byte(body, len(body) // 2), headers
            )
            changed_signature = await post_sendgrid(
                stack, body, {**headers, SENDGRID_SIGNATURE_HEADER: other}
            )

        assert good.status_code == 200, (name, good.text)
        assert good.json()["stored"] == len(json.loads(body))
        assert again.json()["duplicates"] == good.json()["stored"]
        assert_rejected(changed_body, SENDGRID_SIGNATURE_HEADER)
        assert_rejected(changed_signature, SENDGRID_SIGNATURE_HEADER)


async def test_sendgrid_header_problems_are_named(stack_factory: StackFactory) -> None:
    _name, public_key, body, headers = sendgrid_cases()[0]
    signature = headers[SENDGRID_SIGNATURE_HEADER]
    timestamp = headers[SENDGRID_TIMESTAMP_HEADER]

    async with stack_factory(**sendgrid_settings(public_key)) as stack:
        unsigned = await post_sendgrid(stack, body, {})
        no_timestamp = await post_sendgrid(
            stack, body, {SENDGRID_SIGNATURE_HEADER: signature}
        )
        not_base64 = await post_sendgrid(
            stack,
            body,
            {SENDGRID_SIGNATURE_HEADER: "%%%", SENDGRID_TIMESTAMP_HEADER: timestamp},
        )
        not_a_number = await post_sendgrid(
            stack,
            body,
            {SENDGRID_SIGNATURE_HEADER: signature, SENDGRID_TIMESTAMP_HEADER: "soon"},
        )

    assert_rejected(unsigned, SENDGRID_SIGNATURE_HEADER)
    assert "missing header" in unsigned.json()["message"]
    assert_rejected(no_timestamp, SENDGRID_TIMESTAMP_HEADER)
    assert_rejected(not_base64, SENDGRID_SIGNATURE_HEADER)
    assert "base64" in not_base64.json()["message"]
    assert_rejected(not_a_number, SENDGRID_TIMESTAMP_HEADER)
    assert "Unix seconds" in not_a_number.json()["message"]


async def test_sendgrid_stale_timestamp_rejected(stack_factory: StackFactory) -> None:
    _name, public_key, body, headers = sendgrid_cases()[0]

    async with stack_factory(**sendgrid_settings(public_key, max_age=600)) as stack:
        response = await post_sendgrid(stack, body, headers)

    assert_rejected(response, SENDGRID_TIMESTAMP_HEADER)
    assert "seconds old" in response.json()["message"]
    assert "WEBHOOK_MAX_AGE_SECONDS=600" in response.json()["message"]


async def test_sendgrid_fresh_and_future_timestamps(
    stack_factory: StackFactory,
) -> None:
    key, public_b64 = new_signing_key()
    body = raw_example("sendgrid/events.json")
    now = int(time.time())

    async with stack_factory(**sendgrid_settings(public_b64, max_age=600)) as stack:
        fresh = await post_sendgrid(stack, body, sign_sendgrid(key, now - 30, body))
        future = await post_sendgrid(stack, body, sign_sendgrid(key, now + 3600, body))
        stale = await post_sendgrid(stack, body, sign_sendgrid(key, now - 3600, body))

    assert fresh.status_code == 200, fresh.text
    assert_rejected(future, SENDGRID_TIMESTAMP_HEADER)
    assert "in the future" in future.json()["message"]
    assert_rejected(stale, SENDGRID_TIMESTAMP_HEADER)


async def test_sendgrid_without_key_accepts_unsigned(stack: Stack) -> None:
    assert stack.settings.sendgrid_webhook_public_key == ""

    response = await post_sendgrid(stack, raw_example("sendgrid/events.json"), {})

    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 7


async def test_twilio_examples_accepted_and_tampering_rejected(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        for name in TWILIO_FILES:
            body = raw_example(f"twilio/{name}")
            good = await post_twilio(stack, name)
            changed_body = await post_twilio(
                stack, name, body=flip_byte(body, len(body) // 2)
            )
            other = (
                "inbound_sms.txt" if name != "inbound_sms.txt" else "inbound_stop.txt"
            )
            changed_signature = await post_twilio(
                stack,
                name,
                signature=example("twilio/signatures.json")["files"][other][
                    "X-Twilio-Signature"
                ],
            )
            unsigned = await post_twilio(stack, name, signature="")

            expected = 200 if name.startswith("inbound") else 204
            assert good.status_code == expected, (name, good.text)
            assert_rejected(changed_body, "X-Twilio-Signature")
            assert_rejected(changed_signature, "X-Twilio-Signature")
            assert_rejected(unsigned, "X-Twilio-Signature")
            assert "missing header" in unsigned.json()["message"]


async def test_twilio_without_token_rejects(stack_factory: StackFactory) -> None:
    async with stack_factory(**{**twilio_settings(), "twilio_auth_token": ""}) as stack:
        response = await post_twilio(stack, "inbound_sms.txt")

    assert_rejected(response, "X-Twilio-Signature")
    assert "TWILIO_AUTH_TOKEN" in response.json()["message"]


async def test_twilio_shared_key_signature_rejected(
    stack_factory: StackFactory,
) -> None:
    async with stack_factory(**twilio_settings()) as stack:
        meta = example("twilio/signatures.json")["files"]["inbound_sms.txt"]
        response = await stack.api.post(
            TWILIO_INBOUND_ROUTE,
            content=raw_example("twilio/inbound_sms.txt"),
            headers={
                **NO_KEY,
                "Content-Type": meta["content_type"],
                "X-Twilio-Signature": meta["X-Twilio-Signature"],
                "X-Twilio-Webhooks-Signature-Settings": "key=KS1,algorithm=HMAC_SHA256",
            },
        )

    assert_rejected(response, "X-Twilio-Webhooks-Signature-Settings")


async def test_twilio_default_url_is_public_base_url(
    stack_factory: StackFactory,
) -> None:
    token = "default-url-token-0123456789"
    base = "https://nurture.example.org/"
    body = raw_example("twilio/status_delivered.txt")
    fields = dict(parse_twilio_form(body))
    validator = RequestValidator(token)
    expected_url = "https://nurture.example.org/api/v1/webhooks/twilio/status?tag=a%20b"
    signature = validator.compute_signature(expected_url, fields)
    path_only = validator.compute_signature(
        "https://nurture.example.org/api/v1/webhooks/twilio/status", fields
    )

    async with stack_factory(twilio_auth_token=token, public_base_url=base) as stack:

        async def post(signature: str, host: str) -> httpx.Response:
            return await stack.api.post(
                f"{TWILIO_STATUS_ROUTE}?tag=a%20b",
                content=body,
                headers={
                    **NO_KEY,
                    "Host": host,
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": signature,
                },
            )

        good = await post(signature, "nurture.test")
        spoofed_host = await post(
            validator.compute_signature(
                "http://evil.test/api/v1/webhooks/twilio/status?tag=a%20b", fields
            ),
            "evil.test",
        )
        without_query = await post(path_only, "nurture.test")

    assert good.status_code == 204, good.text
    assert_rejected(spoofed_host, "X-Twilio-Signature")
    assert expected_url in spoofed_host.json()["message"]
    assert_rejected(without_query, "X-Twilio-Signature")
