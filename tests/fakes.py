"""Fake SendGrid, Twilio and CRM HTTP servers on 127.0.0.1 for the official SDKs.

Each records the requests it gets and responds like the real API: SendGrid's
v3 mail send with 202 and an X-Message-Id header, Twilio's Messages resource
with 201 and a message SID. Tests queue error answers to see retries.
"""

import json
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(self.body.decode()).items()}


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


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
    def __init__(self) -> None:
        super().__init__()
        # X-Message-Id values given out, in order.
        self.issued_ids: list[str] = []

    def answer(self, request: Recorded) -> Answer:
        if request.method == "POST" and request.path == "/v3/mail/send":
            message_id = uuid.uuid4().hex[:22]
            self.issued_ids.append(message_id)
            return Answer(202, None, {"X-Message-Id": message_id})
        return Answer(404, {"errors": [{"message": "not found"}]})

    def mails(self) -> list[dict[str, Any]]:
        """The JSON bodies of the mail sends, in order."""
        return [r.json() for r in self.requests if r.path == "/v3/mail/send"]

    def reset(self) -> None:
        super().reset()
        self.issued_ids.clear()


class FakeTwilio(FakeServer):
    def answer(self, request: Recorded) -> Answer:
        if request.method == "POST" and request.path.endswith("/Messages.json"):
            form = request.form()
            sid = "SM" + uuid.uuid4().hex
            return Answer(
                201,
                {
                    "sid": sid,
                    "status": "queued",
                    "to": form.get("To"),
                    "from": form.get("From"),
                    "body": form.get("Body"),
                },
            )
        return Answer(404, {"code": 20404, "message": "not found", "status": 404})

    def messages(self) -> list[dict[str, str]]:
        return [r.form() for r in self.requests if r.path.endswith("/Messages.json")]
