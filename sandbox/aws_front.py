"""A local front for moto that answers scripted AWS JSON-protocol errors, then proxies, and counts what it saw.

moto has no fault injection for throttling or 5xx, checks no credentials unless told to, and returns its
credential errors in the query-protocol shape; this front answers exactly what Secrets Manager sends (status,
``x-amzn-ErrorType``, a JSON body with ``__type`` and ``message``) so the real botocore parsing and retry logic runs
against it. It records every operation (and the secret it names) so tests can count writes, and it can refuse
access keys as AWS does an unknown one (``UnrecognizedClientException``).

Demo and test infrastructure (the ``aws_secrets_manager`` fixture adapter routes its connection through it).
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import deque
from dataclasses import dataclass, field
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
#: The access key id in a SigV4 ``Authorization`` header.
CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/")


@dataclass
class FrontRule:
    """Answer ``error`` (with extra ``headers``) to the next ``times`` requests (0: every one) whose operation is
    in ``operations`` (None: any); ``fired`` counts the answers given."""

    error: AwsError
    times: int = 0
    operations: frozenset[str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    fired: int = 0
    active: bool = True

    def takes(self, operation: str) -> bool:
        if not self.active or (self.times and self.fired >= self.times):
            return False
        return self.operations is None or operation in self.operations


class AwsErrorFront:
    """Answers queued errors first (or one error always), forwards everything else to ``upstream``."""

    def __init__(self, upstream: str | None = None) -> None:
        self.upstream = upstream
        self.operations: list[str] = []  # every request seen, e.g. "secretsmanager.PutSecretValue"
        self.calls: list[tuple[str, str | None]] = []  # (operation, the SecretId or Name it named)
        self.rejected = 0
        #: Access key ids answered with ``UnrecognizedClientException``, as AWS answers a key it does not know.
        self.refused_access_keys: set[str] = set()
        self._queued: deque[AwsError] = deque()
        self._always: AwsError | None = None
        self._rules: list[FrontRule] = []
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

    def add_rule(
        self,
        error: AwsError,
        *,
        times: int = 0,
        operations: frozenset[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> FrontRule:
        """A rule answering ``error`` to matching operations; ``rule.active = False`` retires it."""
        rule = FrontRule(error, times, operations, dict(headers or {}))
        with self._lock:
            self._rules.append(rule)
        return rule

    def __enter__(self) -> AwsErrorFront:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next_error(
        self, operation: str, secret_id: str | None, access_key: str | None
    ) -> tuple[AwsError | None, dict[str, str]]:
        with self._lock:
            self.operations.append(operation)
            self.calls.append((operation, secret_id))
            if access_key in self.refused_access_keys:
                self.rejected += 1
                return UNRECOGNIZED_CLIENT, {}
            if self._queued:
                self.rejected += 1
                return self._queued.popleft(), {}
            rule = next((rule for rule in self._rules if rule.takes(operation)), None)
            if rule is not None:
                rule.fired += 1
                self.rejected += 1
                return rule.error, rule.headers
            self.rejected += self._always is not None
            return self._always, {}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                signed = CREDENTIAL.search(self.headers.get("Authorization") or "")
                error, extra = front._next_error(
                    _operation(self.headers.get("X-Amz-Target"), body),
                    _secret_id(body),
                    signed.group(1) if signed else None,
                )
                if error is not None:
                    headers = {**_error_headers(error), **extra}
                    self._answer(error.status, headers, json.dumps(_error_body(error)).encode())
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


def _secret_id(body: bytes) -> str | None:
    """The secret a JSON-protocol request names (``SecretId``, or ``Name`` for CreateSecret); None otherwise."""
    try:
        parsed = json.loads(body or b"{}")
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    named = parsed.get("SecretId") or parsed.get("Name")
    return str(named) if named else None


def _error_headers(error: AwsError) -> dict[str, str]:
    return {
        "Content-Type": "application/x-amz-json-1.1",
        "x-amzn-ErrorType": f"{error.code}:",
        "x-amzn-RequestId": str(uuid.uuid4()),
    }


def _error_body(error: AwsError) -> dict[str, str]:
    return {"__type": error.code, "message": error.message}
