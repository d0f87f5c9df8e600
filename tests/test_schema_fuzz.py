"""Schemathesis over every operation of the API's OpenAPI schema.

The schema comes from the running app (`GET /openapi.json`), and every request
goes through the ASGI client of a stack: a real Temporal dev server, a real
database, fake SendGrid and Twilio. Each operation gets schemathesis's
examples, coverage and fuzzing phases, with positive and negative data and the
admin key. The checks: no 5xx and no exception out of the app, and every
status code, content type and body as the schema documents it.

Webhook and unsubscribe routes check signatures, so fuzzed requests get 4xx
there, and the same checks apply to those responses.
"""

import asyncio
import copy
import json
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation.hypothesis.builder import (
    HypothesisTestConfig,
    HypothesisTestMode,
    create_test,
)
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from nurture.db import session_scope
from nurture.models import Suppression
from nurture.unsubscribe import UnsubscribeLinks
from tests.conftest import API_KEY, Stack, StackFactory, example

BASE_URL = "http://nurture.test"
AUTHORIZATION = {"Authorization": f"Bearer {API_KEY}"}
CODEC_TOKEN = "codec-token-" + "y" * 24
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
# Fuzzed cases per operation, on top of the coverage phase's fixed ones. With
# 67 operations the file ran in 64 to 100 s on SQLite and PostgreSQL (four
# runs, pytest's timing on a shared 2-core machine).
MAX_EXAMPLES = 50
REQUEST_TIMEOUT_SECONDS = 60
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}

Send = Callable[[Any], schemathesis.Response]


class AppError(Exception):
    """An exception the app raised instead of sending a response."""


class Findings:
    """Distinct failures, one example each, keyed by operation, check and status."""

    def __init__(self) -> None:
        self.found: dict[tuple[str, str, int], str] = {}

    def add(self, case: Any, check: str, status: int, details: str) -> None:
        key = (case.operation.label, check, status)
        if key not in self.found:
            curl = case.as_curl_command(headers={"Authorization": "Bearer $KEY"})
            self.found[key] = f"{key[0]}: {check} [{status}]\n{details}\n{curl}"

    def report(self) -> str:
        return f"{len(self.found)} distinct failures:\n\n" + "\n\n".join(
            self.found.values()
        )


async def seed_resources(stack: Stack, schema: Any) -> dict[str, list[Any]]:
    """Create one resource of each kind, so fuzzed paths also reach real ones.

    Each response is checked against the schema too: most fuzzed bodies fail
    rules that JSON Schema cannot state (an email or a phone, a valid
    campaign), so these are the success responses of those routes.
    Returns, per path parameter, the values that name a real resource.
    """

    async def call(method: str, path: str, status: int, **kwargs: Any) -> Any:
        response = await stack.api.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        # A multipart body is a stream, and schemathesis reads the request too.
        await response.request.aread()
        schema[path][method].validate_response(response)
        return response.json()

    lead = await call("POST", "/api/v1/leads", 201, json=example("lead.json"))
    lead_id = lead["id"]
    campaign = await call(
        "POST", "/api/v1/nurturing/campaigns", 201, json=example("campaign.json")
    )
    criteria = await call("GET", "/api/v1/scoring/criteria", 200)
    calculation = example("scoring_calculate.json")
    await call("POST", "/api/v1/scoring/calculate", 200, json=calculation)
    event = {"leadId": lead_id, "type": "page_view", "url": "https://example.com/"}
    await call("POST", "/api/v1/events", 202, json=event)
    imported = await call(
        "POST",
        "/api/v1/leads/import",
        202,
        files={"file": ("leads.csv", b"email\nada@example.org\n", "text/csv")},
        data={"mapping": json.dumps({"columns": {"email": "contact.email"}})},
    )
    key = await call(
        "POST", "/api/v1/keys", 201, json={"role": "sales_rep", "name": "fuzz"}
    )
    with session_scope(stack.engine) as session:
        suppression = Suppression(
            channel="email",
            address="bounced@example.org",
            reason="bounce",
            source="test",
        )
        session.add(suppression)
        session.flush()
        suppression_id = suppression.id
    settings = stack.settings
    links = UnsubscribeLinks(settings.signing_secret, settings.public_base_url)
    return {
        "lead_id": [lead_id],
        "campaign_id": [campaign["id"]],
        "import_id": [imported["id"]],
        # Criteria versions and model versions share the parameter name.
        "version": [criteria["version"], 1],
        "key_id": [key["details"]["id"]],
        "suppression_id": [suppression_id],
        # Unsubscribe links and the Web UI codec share the parameter name.
        "token": [links.token(lead_id, "message-1"), CODEC_TOKEN],
    }


def fuzz_config(resources: dict[str, list[Any]]) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "generation": {
                "mode": "all",
                "max-examples": MAX_EXAMPLES,
                # Derandomized, so every run generates the same cases.
                "deterministic": True,
                "database": "none",
                # A failure is recorded and the run goes on (see
                # `fuzz_operation`), so there is nothing to shrink.
                "no-shrink": True,
                # Every request carries the admin key (see `make_sender`).
                "with-security-parameters": False,
            },
            "dictionaries": {
                name: {"values": values} for name, values in resources.items()
            },
            # About half the fuzzed requests name a resource that exists.
            "parameters": {
                f"path.{name}": {"dictionary": name, "probability": 0.5}
                for name in resources
            },
            # Hypothesis's health checks for slow generation and large data
            # misfire on a shared 2-core machine. Schemathesis's settings
            # already turn deadlines off.
            "suppress-health-check": ["all"],
        }
    )


def operation_count(raw_schema: dict[str, Any]) -> int:
    return sum(
        1
        for item in raw_schema["paths"].values()
        for method in item
        if method in HTTP_METHODS
    )


def make_sender(stack: Stack, loop: asyncio.AbstractEventLoop) -> Send:
    """Return a function that sends a case through the stack's ASGI client.

    The app, its Temporal client and the workers run on the test's event loop,
    so the fuzzing thread hands each request to that loop. The case is
    serialized the way schemathesis's own transport does it, with requests.
    """

    def send(case: Any) -> schemathesis.Response:
        kwargs = case.as_transport_kwargs(base_url=BASE_URL, headers=AUTHORIZATION)
        prepared = requests.Request(
            method=kwargs["method"],
            url=kwargs["url"],
            headers=kwargs.get("headers"),
            params=kwargs.get("params"),
            cookies=kwargs.get("cookies"),
            data=kwargs.get("data"),
            json=kwargs.get("json"),
            files=kwargs.get("files"),
        ).prepare()
        headers = {
            name: value
            for name, value in prepared.headers.items()
            if name.lower() != "content-length"
        }
        body = prepared.body
        request = stack.api.request(
            prepared.method or "GET",
            prepared.url or "",
            headers=headers,
            content=body.encode() if isinstance(body, str) else body,
        )
        future = asyncio.run_coroutine_threadsafe(request, loop)
        try:
            response: httpx.Response = future.result(timeout=REQUEST_TIMEOUT_SECONDS)
        except Exception as error:
            # httpx's ASGI transport re-raises what the app did not handle,
            # after the app sent its 500.
            frames = "".join(traceback.format_exception(error, limit=-6))
            raise AppError(f"the app raised {error!r}\n{frames}") from error
        return schemathesis.Response(
            status_code=response.status_code,
            headers={
                name: response.headers.get_list(name) for name in response.headers
            },
            content=response.content,
            request=prepared,
            elapsed=response.elapsed.total_seconds(),
            verify=True,
            message=response.reason_phrase,
            encoding=response.encoding,
        )

    return send


def fuzz_operation(operation: Any, send: Send, findings: Findings) -> None:
    """Run the examples, coverage and fuzzing phases on one operation.

    `create_test` is the builder behind `schema.parametrize()` in schemathesis
    4.32.5. It is called directly because the cases must be sent from a
    thread. Each failure is recorded and the run goes on, so one run lists
    them all.
    """

    def check_case(case: Any) -> None:
        try:
            response = send(case)
        except AppError as error:
            findings.add(case, "unhandled exception", 500, str(error))
            return
        try:
            case.validate_response(response, checks=CHECKS)
        except FailureGroup as group:
            body = response.content[:600].decode(errors="replace")
            for failure in group.exceptions:
                findings.add(
                    case,
                    failure.kind_title,
                    response.status_code,
                    f"{failure.title}\n{failure.message}\nresponse body: {body}",
                )

    config = operation.schema.config
    test = create_test(
        operation=operation,
        test_func=check_case,
        config=HypothesisTestConfig(
            project=config,
            modes=[
                HypothesisTestMode.EXAMPLES,
                HypothesisTestMode.COVERAGE,
                HypothesisTestMode.FUZZING,
            ],
            settings=config.get_hypothesis_settings(operation=operation),
        ),
    )
    test()


def fuzz_all(schema: Any, send: Send) -> tuple[list[str], Findings]:
    """Fuzz every operation, and return the labels of those tested and the findings."""
    tested: list[str] = []
    findings = Findings()
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deletes last, so the other operations still find the seeded resources.
    operations.sort(key=lambda operation: operation.method.upper() == "DELETE")
    for operation in operations:
        fuzz_operation(operation, send, findings)
        tested.append(operation.label)
    return tested, findings


async def load_schema(stack: Stack) -> dict[str, Any]:
    response = await stack.api.get("/openapi.json")
    assert response.status_code == 200, response.text
    raw_schema: dict[str, Any] = response.json()
    return raw_schema


async def test_every_operation_matches_schema(stack_factory: StackFactory) -> None:
    # With a codec token, the Web UI codec routes can succeed, not only reject.
    # SENDGRID_WEBHOOK_PUBLIC_KEY stays empty, so fuzzed SendGrid events reach
    # the event handling, while Twilio's webhooks reject them unsigned.
    async with stack_factory(temporal_ui_codec_token=CODEC_TOKEN) as stack:
        raw_schema = await load_schema(stack)
        resources = await seed_resources(
            stack, schemathesis.openapi.from_dict(raw_schema)
        )
        schema = schemathesis.openapi.from_dict(
            raw_schema, config=fuzz_config(resources)
        )
        send = make_sender(stack, asyncio.get_running_loop())

        tested, findings = await asyncio.to_thread(fuzz_all, schema, send)

    assert len(tested) == operation_count(raw_schema), tested
    assert len(set(tested)) == len(tested), tested
    assert not findings.found, findings.report()


async def test_fuzzing_reports_undocumented_responses(stack: Stack) -> None:
    """The harness reports a status and a body that the schema does not declare."""
    raw_schema = copy.deepcopy(await load_schema(stack))
    list_leads = raw_schema["paths"]["/api/v1/leads"]["get"]
    del list_leads["responses"]["422"]
    page = raw_schema["components"]["schemas"]["LeadPage"]
    page["required"] = [*page["required"], "nextCursor"]
    schema = schemathesis.openapi.from_dict(raw_schema, config=fuzz_config({}))
    send = make_sender(stack, asyncio.get_running_loop())
    findings = Findings()

    await asyncio.to_thread(
        fuzz_operation, schema["/api/v1/leads"]["GET"], send, findings
    )

    reported = {(check, status) for _label, check, status in findings.found}
    assert ("Undocumented status code", 422) in reported, findings.report()
    assert ("Response violates schema", 200) in reported, findings.report()
