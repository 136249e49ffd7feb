"""A local front for moto that answers scripted AWS JSON-protocol errors, then proxies, and counts what it saw.

moto has no fault injection for throttling or 5xx, and returns its credential errors in the query-protocol
shape; this front answers exactly what Secrets Manager sends (status, ``x-amzn-ErrorType``, a JSON body with
``__type`` and ``message``) so the real botocore parsing and retry logic runs against it.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import requests


@dataclass(frozen=True)
class AwsError:
    status: int
    code: str
    message: str


THROTTLING = AwsError(400, "ThrottlingException", "Rate exceeded")
INTERNAL_ERROR = AwsError(500, "InternalServiceError", "An error occurred on the server side.")
UNRECOGNIZED_CLIENT = AwsError(
    400, "UnrecognizedClientException", "The security token included in the request is invalid."
)
INVALID_SIGNATURE = AwsError(
    400,
    "InvalidSignatureException",
    "The request signature we calculated does not match the signature you provided.",
)
EXPIRED_TOKEN = AwsError(400, "ExpiredTokenException", "The security token included in the request is expired")
ACCESS_DENIED = AwsError(
    400,
    "AccessDeniedException",
    "User: arn:aws:iam::123456789012:user/ci is not authorized to perform: secretsmanager:GetSecretValue",
)


class AwsErrorFront:
    """Answers queued errors first (or one error always), forwards everything else to ``upstream``."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.operations: list[str] = []  # every request seen, e.g. "secretsmanager.PutSecretValue"
        self.rejected = 0
        self._queued: deque[AwsError] = deque()
        self._always: AwsError | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail_next(self, error: AwsError, times: int = 1) -> None:
        self._queued.extend([error] * times)

    def fail_always(self, error: AwsError) -> None:
        self._always = error

    def __enter__(self) -> AwsErrorFront:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_error(self, operation: str) -> AwsError | None:
        with self._lock:
            self.operations.append(operation)
            error = self._queued.popleft() if self._queued else self._always
            self.rejected += error is not None
            return error

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                error = front._next_error(_operation(self.headers.get("X-Amz-Target"), body))
                if error is not None:
                    self._answer(error.status, _error_headers(error), json.dumps(_error_body(error)).encode())
                    return
                if front.upstream is None:
                    self._answer(500, _error_headers(INTERNAL_ERROR), json.dumps(_error_body(INTERNAL_ERROR)).encode())
                    return
                forwarded = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                response = requests.post(front.upstream + self.path, data=body, headers=forwarded, timeout=10)
                skip = ("content-length", "transfer-encoding", "connection", "content-encoding")
                headers = {k: v for k, v in response.headers.items() if k.lower() not in skip}
                self._answer(response.status_code, headers, response.content)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler


def _operation(target: str | None, body: bytes) -> str:
    """``secretsmanager.GetSecretValue`` from the JSON protocol's target header, ``AssumeRole`` from a query body."""
    if target:
        return target
    action = parse_qs(body.decode(errors="replace")).get("Action", ["?"])
    return action[0]


def _error_headers(error: AwsError) -> dict[str, str]:
    return {
        "Content-Type": "application/x-amz-json-1.1",
        "x-amzn-ErrorType": f"{error.code}:",
        "x-amzn-RequestId": str(uuid.uuid4()),
    }


def _error_body(error: AwsError) -> dict[str, str]:
    return {"__type": error.code, "message": error.message}
