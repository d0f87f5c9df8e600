"""Fake SendGrid, Twilio and CRM HTTP servers on 127.0.0.1 for the official SDKs.

Each records the requests it gets and responds like the real API: SendGrid's
v3 mail send with 202 and an X-Message-Id header, Twilio's Messages resource
with 201 and a message SID. Tests queue error answers to see retries.
"""

import email.utils
import json
import re
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    # time.monotonic() when the request arrived.
    received_at: float = field(default_factory=time.monotonic)

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    # Seconds to wait before responding, after the request was read.
    delay: float = 0.0


class FakeServer:
    """A threaded HTTP server whose responses tests can script."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.scripted: deque[Answer] = deque()
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                recorded = Recorded(
                    self.command, self.path, dict(self.headers.items()), body
                )
                with fake.lock:
                    fake.requests.append(recorded)
                    answer = fake.scripted.popleft() if fake.scripted else None
                if answer is None:
                    answer = fake.answer(recorded)
                if answer.delay:
                    time.sleep(answer.delay)
                payload = (
                    b"" if answer.body is None else json.dumps(answer.body).encode()
                )
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.scripted.clear()

    def script(self, *answers: Answer) -> None:
        with self.lock:
            self.scripted.extend(answers)

    def answer(self, request: Recorded) -> Answer:
        return Answer(200, {})


class FakeSendGrid(FakeServer):
    """SendGrid's mail send, and its Email Activity feed queried by custom args."""

    def __init__(self) -> None:
        super().__init__()
        # X-Message-Id values given out, in order.
        self.issued_ids: list[str] = []
        # The mails SendGrid accepted (responded 202 or not), by X-Message-Id.
        self.accepted: dict[str, dict[str, Any]] = {}
        # Seconds to delay the response to each accepted send.
        self.hold_seconds = 0.0
        # False: the account lacks the Email Activity add-on (answers 403).
        self.activity_feed = True
        # Recipients SendGrid refuses with 400, as it does an invalid address.
        self.reject_addresses: set[str] = set()

    def answer(self, request: Recorded) -> Answer:
        if request.method == "POST" and request.path == "/v3/mail/send":
            to = request.json()["personalizations"][0]["to"][0]["email"]
            if to in self.reject_addresses:
                return Answer(
                    400,
                    {
                        "errors": [
                            {
                                "message": "Does not contain a valid address.",
                                "field": "personalizations.0.to.0.email",
                                "help": None,
                            }
                        ]
                    },
                )
            message_id = uuid.uuid4().hex[:22]
            with self.lock:
                self.issued_ids.append(message_id)
                self.accepted[message_id] = request.json()
            return Answer(
                202, None, {"X-Message-Id": message_id}, delay=self.hold_seconds
            )
        if request.method == "GET" and urlsplit(request.path).path == "/v3/messages":
            return self._activity(request)
        return Answer(404, {"errors": [{"message": "not found"}]})

    def _activity(self, request: Recorded) -> Answer:
        if not self.activity_feed:
            return Answer(403, {"errors": [{"message": "access forbidden"}]})
        query = parse_qs(urlsplit(request.path).query).get("query", [""])[0]
        match = re.fullmatch(r"unique_args\['(\w+)'\]=\"([^\"]*)\"", query)
        if match is None:
            return Answer(400, {"errors": [{"message": f"bad query {query!r}"}]})
        key, value = match.groups()
        with self.lock:
            found = [
                {"msg_id": f"{x_id}.filterdrecv-fake-1.0", "status": "processed"}
                for x_id, mail in self.accepted.items()
                if mail.get("custom_args", {}).get(key) == value
            ]
        return Answer(200, {"messages": found})

    def mails(self) -> list[dict[str, Any]]:
        """The JSON bodies of the mail sends, in order."""
        return [r.json() for r in self.requests if r.path == "/v3/mail/send"]

    def accepted_for(self, message_id: str) -> list[dict[str, Any]]:
        """The mails SendGrid took for one of our message ids."""
        with self.lock:
            return [
                mail
                for mail in self.accepted.values()
                if mail.get("custom_args", {}).get("message_id") == message_id
            ]

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.issued_ids.clear()
            self.accepted.clear()
        self.hold_seconds = 0.0
        self.activity_feed = True
        self.reject_addresses.clear()


class FakeTwilio(FakeServer):
    """Twilio's Messages resource: create, and list newest first."""

    def __init__(self) -> None:
        super().__init__()
        # The messages Twilio took, oldest first, as its API shows them.
        self.accepted: list[dict[str, Any]] = []

    def answer(self, request: Recorded) -> Answer:
        path = urlsplit(request.path).path
        if request.method == "POST" and path.endswith("/Messages.json"):
            form = request.form()
            created = {
                "sid": "SM" + uuid.uuid4().hex,
                "status": "queued",
                "to": form.get("To"),
                "from": form.get("From"),
                "body": form.get("Body"),
                "date_created": email.utils.format_datetime(datetime.now(UTC)),
            }
            with self.lock:
                self.accepted.append(created)
            return Answer(201, created)
        if request.method == "GET" and path.endswith("/Messages.json"):
            query = {
                k: v[-1] for k, v in parse_qs(urlsplit(request.path).query).items()
            }
            with self.lock:
                found = [
                    m
                    for m in reversed(self.accepted)
                    if m["to"] == query.get("To", m["to"])
                    and m["from"] == query.get("From", m["from"])
                ]
            size = int(query.get("PageSize", "50"))
            return Answer(
                200,
                {
                    "messages": found[:size],
                    "page": 0,
                    "page_size": size,
                    "next_page_uri": None,
                    "uri": request.path,
                },
            )
        return Answer(404, {"code": 20404, "message": "not found", "status": 404})

    def messages(self) -> list[dict[str, str]]:
        return [
            r.form()
            for r in self.requests
            if r.method == "POST" and r.path.endswith("/Messages.json")
        ]

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.accepted.clear()


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class FakeEnrichment(FakeServer):
    """A company lookup API in Clearbit's shape: GET /v2/companies/find?domain=.

    Returns the JSON in `companies` for a known domain, 404 for others, and
    401 without the bearer key. `delays` contains seconds to wait before the
    next unscripted responses, one per request, to make the client time out.
    """

    PATH = "/v2/companies/find"

    def __init__(self, api_key: str = "enrichment-test-key") -> None:
        super().__init__()
        self.api_key = api_key
        self.companies: dict[str, dict[str, Any]] = {}
        self.delays: deque[float] = deque()

    @property
    def lookup_url(self) -> str:
        return f"{self.url}{self.PATH}"

    def answer(self, request: Recorded) -> Answer:
        with self.lock:
            delay = self.delays.popleft() if self.delays else 0.0
        if delay:
            time.sleep(delay)
        url = urlsplit(request.path)
        if request.method != "GET" or url.path != self.PATH:
            return Answer(404, {"error": {"type": "not_found", "message": "no route"}})
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return Answer(
                401, {"error": {"type": "auth_required", "message": "invalid key"}}
            )
        domain = parse_qs(url.query).get("domain", [""])[-1]
        if not domain:
            return Answer(
                422,
                {"error": {"type": "invalid_request", "message": "domain required"}},
            )
        company = self.companies.get(domain)
        if company is None:
            return Answer(
                404, {"error": {"type": "unknown_record", "message": "Unknown domain"}}
            )
        return Answer(200, company)

    def lookups(self) -> list[str]:
        """The domains requested, in order, scripted responses included."""
        return [
            parse_qs(urlsplit(r.path).query).get("domain", [""])[-1]
            for r in self.requests
        ]

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.companies.clear()
            self.delays.clear()


class FakeHubSpot(FakeServer):
    """HubSpot's CRM v3/v4 endpoints that nurture calls, with HubSpot's checks.

    Contacts: batch upsert by email, update by id. Tasks: create with
    associations, batch read. Associations: v4 list of a contact's tasks.
    Requests need `Authorization: Bearer <token>`. Unknown properties, bad
    enumeration values and bad association types get HubSpot's 400 responses.
    `fail_after_commit` makes the next upserts and task creations take
    effect and then answer 500, as when HubSpot's response is lost.
    """

    CONTACT_PROPERTIES = frozenset(
        {
            "email",
            "firstname",
            "lastname",
            "phone",
            "mobilephone",
            "company",
            "jobtitle",
            "industry",
            "country",
            "city",
            "state",
            "website",
            "lifecyclestage",
            "hs_lead_status",
            "hubspot_owner_id",
            "annualrevenue",
            "numemployees",
            # The custom score property, as an admin of this account created it.
            "nurture_score",
        }
    )
    LIFECYCLE_STAGES = frozenset(
        {
            "subscriber",
            "lead",
            "marketingqualifiedlead",
            "salesqualifiedlead",
            "opportunity",
            "customer",
            "evangelist",
            "other",
        }
    )
    TASK_PROPERTIES = frozenset(
        {
            "hs_timestamp",
            "hs_task_body",
            "hs_task_subject",
            "hs_task_status",
            "hs_task_priority",
            "hs_task_type",
            "hs_task_reminders",
            "hubspot_owner_id",
        }
    )
    TASK_ENUMS = {
        "hs_task_status": frozenset(
            {"NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"}
        ),
        "hs_task_priority": frozenset({"NONE", "LOW", "MEDIUM", "HIGH"}),
        "hs_task_type": frozenset({"EMAIL", "CALL", "TODO"}),
    }
    TASK_TO_CONTACT = 204
    CONTACT_TO_TASK = 203

    def __init__(self, token: str = "pat-test-token") -> None:
        super().__init__()
        self.token = token
        self.contacts: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        # Contact id -> ids of its tasks, oldest first.
        self.contact_tasks: dict[str, list[str]] = {}
        self.fail_after_commit = 0
        self._next_id = 1001

    def reset(self) -> None:
        super().reset()
        with self.lock:
            self.contacts.clear()
            self.tasks.clear()
            self.contact_tasks.clear()
            self.fail_after_commit = 0

    # --- what tests read ----------------------------------------------------

    def contact_by_email(self, email: str) -> dict[str, Any] | None:
        with self.lock:
            for contact in self.contacts.values():
                if contact["properties"].get("email") == email.lower():
                    return contact
        return None

    def tasks_of(self, contact_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [self.tasks[i] for i in self.contact_tasks.get(contact_id, [])]

    def calls(self, method: str, path: str) -> list[Recorded]:
        """The requests to `path`, or under it when it ends with "/"."""
        return [
            r
            for r in self.requests
            if r.method == method
            and (
                urlsplit(r.path).path.startswith(path)
                if path.endswith("/")
                else urlsplit(r.path).path == path
            )
        ]

    # --- the API ------------------------------------------------------------

    def answer(self, request: Recorded) -> Answer:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(
                401,
                "Authentication credentials not found. This API supports OAuth 2.0 "
                "authentication.",
                "INVALID_AUTHENTICATION",
            )
        url = urlsplit(request.path)
        path = url.path
        try:
            body = request.json() if request.body else {}
        except ValueError:
            return self._error(400, "Invalid input JSON", "VALIDATION_ERROR")
        with self.lock:
            if (
                request.method == "POST"
                and path == "/crm/v3/objects/contacts/batch/upsert"
            ):
                return self._upsert_contacts(body)
            if request.method == "PATCH" and path.startswith(
                "/crm/v3/objects/contacts/"
            ):
                return self._update_contact(path.rsplit("/", 1)[-1], body)
            if request.method == "POST" and path == "/crm/v3/objects/tasks":
                return self._create_task(body)
            if request.method == "POST" and path == "/crm/v3/objects/tasks/batch/read":
                return self._read_tasks(body)
            parts = path.strip("/").split("/")
            if (
                request.method == "GET"
                and parts[:4] == ["crm", "v4", "objects", "contacts"]
                and parts[5:] == ["associations", "tasks"]
            ):
                return self._contact_task_page(parts[4], parse_qs(url.query))
        return self._error(404, f"No route for {request.method} {path}", "NOT_FOUND")

    def _error(self, status: int, message: str, category: str, **extra: Any) -> Answer:
        body = {
            "status": "error",
            "message": message,
            "correlationId": str(uuid.uuid4()),
            "category": category,
            **extra,
        }
        return Answer(status, body)

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def _invalid_properties(
        self, properties: Any, known: frozenset[str]
    ) -> Answer | None:
        if not isinstance(properties, dict):
            return self._error(400, "properties must be an object", "VALIDATION_ERROR")
        problems = []
        for name, value in properties.items():
            if name not in known:
                problems.append(
                    {
                        "isValid": False,
                        "message": f'Property "{name}" does not exist',
                        "error": "PROPERTY_DOESNT_EXIST",
                        "name": name,
                    }
                )
            elif not isinstance(value, str):
                problems.append(
                    {
                        "isValid": False,
                        "message": f"{value!r} is not a valid value",
                        "error": "INVALID_VALUE",
                        "name": name,
                    }
                )
            elif name == "lifecyclestage" and value not in self.LIFECYCLE_STAGES:
                problems.append(
                    {
                        "isValid": False,
                        "message": f"{value} was not one of the allowed options",
                        "error": "INVALID_OPTION",
                        "name": name,
                    }
                )
            elif value not in self.TASK_ENUMS.get(name, {value}):
                problems.append(
                    {
                        "isValid": False,
                        "message": f"{value} was not one of the allowed options",
                        "error": "INVALID_OPTION",
                        "name": name,
                    }
                )
        if not problems:
            return None
        return self._error(
            400,
            f"Property values were not valid: {json.dumps(problems)}",
            "VALIDATION_ERROR",
        )

    def _upsert_contacts(self, body: Any) -> Answer:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= 100:
            return self._error(
                400, "inputs must hold 1 to 100 items", "VALIDATION_ERROR"
            )
        started = _iso_now()
        results = []
        for item in inputs:
            if item.get("idProperty") != "email":
                return self._error(
                    400,
                    f"{item.get('idProperty')!r} is not a unique value property",
                    "VALIDATION_ERROR",
                )
            email = item.get("id")
            if not isinstance(email, str) or "@" not in email:
                return self._error(400, f"Invalid email: {email!r}", "VALIDATION_ERROR")
            properties = item.get("properties", {})
            invalid = self._invalid_properties(properties, self.CONTACT_PROPERTIES)
            if invalid is not None:
                return invalid
            existing = next(
                (
                    c
                    for c in self.contacts.values()
                    if c["properties"]["email"] == email.lower()
                ),
                None,
            )
            now = _iso_now()
            if existing is None:
                contact_id = self._new_id()
                existing = {
                    "id": contact_id,
                    "properties": {
                        "hs_object_id": contact_id,
                        "createdate": now,
                    },
                    "createdAt": now,
                    "updatedAt": now,
                    "archived": False,
                }
                self.contacts[contact_id] = existing
                is_new = True
            else:
                is_new = False
            existing["properties"].update(properties)
            existing["properties"]["email"] = email.lower()
            existing["properties"]["lastmodifieddate"] = now
            existing["updatedAt"] = now
            results.append({**existing, "new": is_new})
        if self.fail_after_commit:
            self.fail_after_commit -= 1
            return self._error(500, "internal error", "INTERNAL_ERROR")
        return Answer(
            200,
            {
                "status": "COMPLETE",
                "results": results,
                "startedAt": started,
                "completedAt": _iso_now(),
            },
        )

    def _update_contact(self, contact_id: str, body: Any) -> Answer:
        contact = self.contacts.get(contact_id)
        if contact is None:
            return self._error(404, "resource not found", "OBJECT_NOT_FOUND")
        properties = body.get("properties") if isinstance(body, dict) else None
        invalid = self._invalid_properties(properties, self.CONTACT_PROPERTIES)
        if invalid is not None:
            return invalid
        assert isinstance(properties, dict)
        email = properties.get("email")
        if email is not None:
            email = email.lower()
            for other in self.contacts.values():
                if other is not contact and other["properties"]["email"] == email:
                    return self._error(
                        409,
                        f"Contact already exists. Existing ID: {other['id']}",
                        "CONFLICT",
                    )
            properties = {**properties, "email": email}
        now = _iso_now()
        contact["properties"].update(properties)
        contact["properties"]["lastmodifieddate"] = now
        contact["updatedAt"] = now
        return Answer(200, contact)

    def _create_task(self, body: Any) -> Answer:
        properties = body.get("properties") if isinstance(body, dict) else None
        invalid = self._invalid_properties(properties, self.TASK_PROPERTIES)
        if invalid is not None:
            return invalid
        assert isinstance(properties, dict)
        if not properties.get("hs_timestamp"):
            return self._error(
                400,
                'Property values were not valid: [{"isValid":false,'
                '"message":"hs_timestamp is required","error":"REQUIRED_FIELD",'
                '"name":"hs_timestamp"}]',
                "VALIDATION_ERROR",
            )

        contact_ids = []
        for association in body.get("associations") or []:
            target = str((association.get("to") or {}).get("id", ""))
            if target not in self.contacts:
                return self._error(
                    400,
                    f"No contact with id {target!r} to associate",
                    "VALIDATION_ERROR",
                )
            for kind in association.get("types") or []:
                if kind != {
                    "associationCategory": "HUBSPOT_DEFINED",
                    "associationTypeId": self.TASK_TO_CONTACT,
                }:
                    return self._error(
                        400,
                        f"{kind} is not a valid association type from task to contact",
                        "VALIDATION_ERROR",
                    )
            contact_ids.append(target)

        task_id = self._new_id()
        now = _iso_now()
        task = {
            "id": task_id,
            "properties": {
                **properties,
                "hs_object_id": task_id,
                "hs_createdate": now,
            },
            "createdAt": now,
            "updatedAt": now,
            "archived": False,
        }
        self.tasks[task_id] = task
        for contact_id in contact_ids:
            self.contact_tasks.setdefault(contact_id, []).append(task_id)
        if self.fail_after_commit:
            self.fail_after_commit -= 1
            return self._error(500, "internal error", "INTERNAL_ERROR")
        return Answer(201, task)

    def _read_tasks(self, body: Any) -> Answer:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not 1 <= len(inputs) <= 100:
            return self._error(
                400, "inputs must hold 1 to 100 items", "VALIDATION_ERROR"
            )
        if "properties" not in body or "propertiesWithHistory" not in body:
            return self._error(
                400,
                "properties and propertiesWithHistory are required",
                "VALIDATION_ERROR",
            )
        requested = set(body["properties"] or []) | {"hs_object_id", "hs_createdate"}

        started = _iso_now()
        results, missing = [], []
        for item in inputs:
            task = self.tasks.get(str(item.get("id")))
            if task is None:
                missing.append(str(item.get("id")))
                continue
            properties = {
                name: value
                for name, value in task["properties"].items()
                if name in requested
            }
            results.append({**task, "properties": properties})

        payload: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _iso_now(),
        }
        if not missing:
            return Answer(200, payload)
        payload["numErrors"] = 1
        payload["errors"] = [
            {
                "status": "error",
                "category": "OBJECT_NOT_FOUND",
                "message": "Could not get some TASK objects, they may be deleted or "
                "not exist. Check that ids are valid.",
                "context": {"ids": missing},
            }
        ]
        return Answer(207, payload)

    def _contact_task_page(
        self, contact_id: str, query: dict[str, list[str]]
    ) -> Answer:
        if contact_id not in self.contacts:
            return self._error(404, "resource not found", "OBJECT_NOT_FOUND")
        limit = min(int(query.get("limit", ["500"])[-1]), 500)
        start = int(query.get("after", ["0"])[-1])
        ids = self.contact_tasks.get(contact_id, [])
        page = ids[start : start + limit]
        payload: dict[str, Any] = {
            "results": [
                {
                    "toObjectId": int(task_id),
                    "associationTypes": [
                        {
                            "category": "HUBSPOT_DEFINED",
                            "typeId": self.CONTACT_TO_TASK,
                            "label": None,
                        }
                    ],
                }
                for task_id in page
            ]
        }
        if start + limit < len(ids):
            payload["paging"] = {"next": {"after": str(start + limit)}}
        return Answer(200, payload)
