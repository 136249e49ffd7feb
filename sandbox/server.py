"""A small HTTP sandbox framework built on the standard library.

Service emulators subclass :class:`SandboxServer`, declare handlers with :func:`route` and keep their state
behind ``self.lock``. The framework adds what tests and demos need and no real service offers: fault
injection, artificial latency, a rate-limit helper, request statistics and a scalable clock. All of these
are reachable in-process and over HTTP under ``/_sandbox/`` (no auth, never faulted, slowed or counted).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import socket
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from email.message import Message
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

ADMIN_PREFIX = "/_sandbox/"
FAULT_ACTIONS = ("status", "delay", "drop_before", "drop_after_commit", "status_after_commit", "hold")
#: Seconds a ``hold`` keeps a request when nobody releases it; then the request is dropped, so a forgotten
#: hold never wedges a server thread.
HOLD_TIMEOUT = 300.0


class InvalidJSONBody(ValueError):
    """The request body is not JSON; :meth:`SandboxServer.invalid_json` turns it into the service's 400."""


@dataclass
class Request:
    """One parsed HTTP request as handlers see it."""

    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: Message = field(default_factory=Message)  # case-insensitive .get()
    body: bytes = b""

    def json(self) -> Any:
        """Decode the body, raising :class:`InvalidJSONBody` so each service can shape its own 400."""
        try:
            return json.loads(self.body)
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
            raise InvalidJSONBody(str(exc)) from exc

    def query_value(self, name: str, default: str | None = None) -> str | None:
        """First value of a query parameter, for the common single-valued case."""
        return self.query.get(name, [default])[0]


@dataclass
class Response:
    """What a handler returns; the framework adds Content-Length."""

    status: int
    body: bytes | str = b""
    headers: dict[str, str] = field(default_factory=dict)

    def encoded_body(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


class Abort(Exception):
    """Raise from anywhere inside a handler to answer with ``response`` at once (e.g. a 404 from a lookup)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def json_response(status: int, obj: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(obj), {"Content-Type": "application/json", **(headers or {})})


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> Response:
    return Response(status, text, {"Content-Type": "text/plain; charset=utf-8", **(headers or {})})


def route(method: str, pattern: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """Mark a method as the handler of ``method`` requests whose path fully matches the regex ``pattern``.

    Named groups become keyword arguments (percent-decoded). Decorators can be stacked.
    """

    def register(handler: Callable[..., Response]) -> Callable[..., Response]:
        handler.__dict__.setdefault("_sandbox_routes", []).append((method.upper(), pattern))
        return handler

    return register


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Injected fault"


@dataclass
class FaultRule:
    """Replace the normal handling of matching requests with one ``action`` for ``times`` requests.

    Actions: ``status`` (answer ``status``/``body``/``headers`` instead of the handler), ``delay`` (sleep
    ``delay`` seconds, then handle normally), ``drop_before`` (close the connection, handler not run) and
    ``drop_after_commit`` (run the handler so its state change sticks, then close without answering),
    ``status_after_commit`` (run the handler, then answer ``status``/``body``/``headers`` instead: a 5xx
    after the work was done) and
    ``hold`` (keep the request waiting inside the server until :meth:`release`, or ``hold_timeout`` seconds;
    then close without answering, the handler not run unless released with ``run_handler=True``). A hold lets
    a test act at the exact moment a client is blocked on that request, e.g. SIGKILL the client.
    ``action`` may be omitted when ``status`` or ``delay`` is given.

    ``when`` (in-process only, not over HTTP) is a predicate on the :class:`Request` that must also hold for the
    rule to match, e.g. on a header or the body. It runs under the fault set's lock: keep it quick.
    """

    path: str = ""  # regex searched in the request path; "" matches every path
    method: str | None = None
    times: int | None = 1  # None or 0 = forever
    action: str | None = None
    status: int | None = None
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float | None = None
    when: Callable[[Request], bool] | None = None
    hold_timeout: float = HOLD_TIMEOUT
    fired: int = field(default=0, init=False)
    held: list[Request] = field(default_factory=list, init=False, repr=False)  # requests a hold caught
    _arrived: threading.Event = field(default_factory=threading.Event, init=False, repr=False, compare=False)
    _released: threading.Event = field(default_factory=threading.Event, init=False, repr=False, compare=False)
    _run_handler: bool = field(default=False, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.action is None:
            self.action = "status" if self.status is not None else "delay" if self.delay is not None else None
        if self.action not in FAULT_ACTIONS:
            raise ValueError(f"fault action must be one of {FAULT_ACTIONS}, or give 'status' or 'delay'")
        if self.action in ("status", "status_after_commit") and not isinstance(self.status, int):
            raise ValueError("a 'status' fault needs an integer 'status'")
        if self.action == "delay" and not isinstance(self.delay, int | float):
            raise ValueError("a 'delay' fault needs 'delay' seconds")
        if self.times is not None and (not isinstance(self.times, int) or self.times < 0):
            raise ValueError("'times' must be a non-negative integer or null")
        if self.when is not None and not callable(self.when):
            raise ValueError("'when' must be a predicate on the request (in-process only)")
        timeout = self.hold_timeout
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError("'hold_timeout' must be a number of seconds > 0")
        self.method = self.method.upper() if self.method else None
        try:
            self._path_regex = re.compile(self.path)
        except re.error as error:
            raise ValueError(f"bad path regex {self.path!r}: {error}") from error

    @property
    def exhausted(self) -> bool:
        return bool(self.times) and self.fired >= self.times

    def matches(self, request: Request) -> bool:
        return (
            not self.exhausted
            and self.method in (None, request.method)
            and self._path_regex.search(request.path) is not None
            and self._when(request)
        )

    def _when(self, request: Request) -> bool:
        if self.when is None:
            return True
        try:
            return bool(self.when(request))
        except Exception:
            traceback.print_exc()  # a broken predicate is a test bug: make it loud, and do not match
            return False

    # -- hold ------------------------------------------------------------------------------------------

    def hold(self, request: Request) -> bool:
        """Keep ``request`` until released or timed out (called by the server); True: run the handler."""
        self.held.append(request)
        self._arrived.set()
        self._released.wait(self.hold_timeout)
        return self._run_handler

    def wait_held(self, timeout: float) -> bool:
        """Wait until this rule holds (or has held) a request; False if none arrived within ``timeout``."""
        return self._arrived.wait(timeout)

    def release(self, *, run_handler: bool = False) -> None:
        """Let every request this rule holds (and any it catches later) go: dropped without running the
        handler (the request never happened), or, with ``run_handler``, handled and then dropped (it happened,
        but its client never hears about it). The first release decides; later ones change nothing."""
        if not self._released.is_set():
            self._run_handler = run_handler
            self._released.set()

    def response(self) -> Response:
        """The injected answer of a ``status`` rule; a dict/list body is sent as JSON."""
        assert self.status is not None
        if isinstance(self.body, str):
            return text_response(self.status, self.body, self.headers)
        body = {"message": _reason(self.status)} if self.body is None else self.body
        return json_response(self.status, body, self.headers)

    def to_dict(self) -> dict[str, Any]:
        """The rule as JSON for the admin API (``when`` is shown as whether there is one)."""
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.repr and f.name != "when"}
        data["when"] = self.when is not None
        data["held"] = len(self.held)
        return data


class FaultSet:
    """The ordered fault rules of one server; the first matching, not exhausted rule fires."""

    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()

    def add(self, path: str = "", **options: Any) -> FaultRule:
        """Add a rule; see :class:`FaultRule` for the options. Raises ValueError/TypeError if invalid."""
        rule = FaultRule(path=path, **options)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear(self) -> int:
        """Remove every rule; requests held by a ``hold`` rule are dropped."""
        with self._lock:
            count, rules, self._rules = len(self._rules), self._rules, []
        for rule in rules:
            rule.release()
        return count

    def release_holds(self) -> None:
        """Drop every request a ``hold`` rule is keeping (the rules stay)."""
        for rule in self.rules:
            if rule.action == "hold":
                rule.release()

    @property
    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def take(self, request: Request) -> FaultRule | None:
        """Find the rule for ``request`` and count it as fired (atomically, so ``times`` is exact)."""
        with self._lock:
            rule = next((rule for rule in self._rules if rule.matches(request)), None)
            if rule is not None:
                rule.fired += 1
            return rule


class RateLimiter:
    """Fixed-window counter per credential, for subclasses that emulate a service's 429/403 limits."""

    def __init__(self, limit: int, window_seconds: float, now: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window_seconds = window_seconds
        self.rejected = 0
        self._now = now
        self._windows: dict[str, tuple[float, int]] = {}  # key -> (window start, requests in window)
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Count one request for ``key``: 0.0 if allowed, else the seconds until its window resets."""
        with self._lock:
            now = self._now()
            start, count = self._windows.get(key, (now, 0))
            if now - start >= self.window_seconds:
                start, count = now, 0
            if count >= self.limit:
                self.rejected += 1
                return start + self.window_seconds - now
            self._windows[key] = (start, count + 1)
            return 0.0

    def remaining(self, key: str) -> int:
        """Requests ``key`` may still make in its current window (for X-RateLimit-Remaining style headers)."""
        with self._lock:
            start, count = self._windows.get(key, (0.0, 0))
            return self.limit if self._now() - start >= self.window_seconds else self.limit - count


@dataclass
class SandboxClock:
    """Real wall-clock time, with service-hours scaled so that long grace periods pass quickly in tests."""

    hour_seconds: float = 3600.0

    def now(self) -> float:
        return time.time()

    def hours(self, n: float) -> float:
        """How many real seconds ``n`` service-hours last."""
        return n * self.hour_seconds


def non_negative_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"expected a number >= 0, got {value!r}")
    return float(value)


def positive_float(value: Any) -> float:
    if non_negative_float(value) == 0:
        raise ValueError("expected a number > 0")
    return float(value)


def strict_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class _Target:
    """A resolved route: the name used in stats and the handler bound to its path parameters."""

    name: str
    call: Callable[[Request], Response]


class SandboxServer:
    """Base class of every sandbox: routing, lifecycle, faults, latency, stats, settings and a clock.

    ``SETTINGS`` maps each attribute that ``POST /_sandbox/settings`` may change to its value parser;
    subclasses extend it.
    """

    SETTINGS: dict[str, Callable[[Any], Any]] = {
        "latency": non_negative_float,
        "hour_seconds": positive_float,
    }

    def __init__(self, *, hour_seconds: float = 3600.0, latency: float = 0.0, access_log: bool = False) -> None:
        self.lock = threading.RLock()
        self.clock = SandboxClock(hour_seconds)
        self.faults = FaultSet()
        self.latency = latency  # seconds slept before every non-admin request
        self.access_log = access_log
        self.rate_limiters: list[RateLimiter] = []
        self._request_counts: Counter[str] = Counter()
        self._stats_lock = threading.Lock()
        self._routes = self._collect_routes()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        """Serve in a daemon thread; ``port=0`` picks a free port (see :attr:`url`)."""
        if self._httpd is not None:
            raise RuntimeError("sandbox already started")
        handler = type(f"{type(self).__name__}Handler", (_RequestHandler,), {"sandbox": self})
        self._httpd = _HTTPServer((host, port), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=type(self).__name__,
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and cut open keep-alive connections, so pooled clients cannot reach a dead server."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self.faults.release_holds()  # a held request must not outlive its server
        httpd.shutdown()
        httpd.server_close()
        httpd.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("sandbox not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> Self:
        return self if self._httpd is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- hooks for subclasses ----------------------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        return json_response(404, {"message": "Not Found"})

    def method_not_allowed(self, request: Request) -> Response:
        return json_response(405, {"message": "Method Not Allowed"})

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        return json_response(400, {"message": f"Invalid JSON body: {error}"})

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """Create the state described by ``document`` and return what clients need (e.g. minted secrets)."""
        raise NotImplementedError(f"{type(self).__name__} does not support seeding")

    # -- settings and stats -----------------------------------------------------------------------------

    @property
    def hour_seconds(self) -> float:
        return self.clock.hour_seconds

    @hour_seconds.setter
    def hour_seconds(self, value: float) -> None:
        self.clock.hour_seconds = value

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.SETTINGS}

    def apply_settings(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Validate every change first, then apply them all; raises ValueError on an unknown or bad value."""
        unknown = sorted(set(changes) - set(self.SETTINGS))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; known: {sorted(self.SETTINGS)}")
        parsed = {name: self.SETTINGS[name](value) for name, value in changes.items()}
        for name, value in parsed.items():
            setattr(self, name, value)
        return self.settings()

    def add_rate_limiter(self, limit: int, window_seconds: float) -> RateLimiter:
        """Create a limiter whose rejections are reported by :meth:`stats`."""
        limiter = RateLimiter(limit, window_seconds)
        self.rate_limiters.append(limiter)
        return limiter

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            requests = dict(self._request_counts)
        return {
            "requests": requests,
            "total_requests": sum(requests.values()),
            "rate_limited": sum(limiter.rejected for limiter in self.rate_limiters),
            "faults_fired": sum(rule.fired for rule in self.faults.rules),
        }

    def reset_stats(self) -> None:
        with self._stats_lock:
            self._request_counts.clear()
        for limiter in self.rate_limiters:
            limiter.rejected = 0

    # -- request processing ------------------------------------------------------------------------------

    def process(self, request: Request) -> Response | None:
        """Answer one request; ``None`` means close the connection without answering (an injected drop)."""
        target = self._resolve(request)
        if request.path.startswith(ADMIN_PREFIX):
            return self._invoke(target, request)
        with self._stats_lock:
            self._request_counts[target.name] += 1
        if self.latency > 0:
            time.sleep(self.latency)
        rule = self.faults.take(request)
        if rule is None:
            return self._invoke(target, request)
        if rule.action == "status":
            return rule.response()
        if rule.action == "drop_before":
            return None
        if rule.action == "hold":
            if rule.hold(request):
                self._invoke(target, request)  # it happens, but its client never hears about it
            return None
        if rule.action == "delay":
            time.sleep(rule.delay or 0)
        response = self._invoke(target, request)
        if rule.action == "status_after_commit":
            return rule.response()
        return None if rule.action == "drop_after_commit" else response

    def _collect_routes(self) -> list[tuple[str, re.Pattern[str], str]]:
        routes = []
        for name in dir(type(self)):
            for method, pattern in getattr(getattr(type(self), name), "_sandbox_routes", ()):
                routes.append((method, re.compile(pattern), name))
        return routes

    def _resolve(self, request: Request) -> _Target:
        path_matched = False
        for method, regex, name in self._routes:
            match = regex.fullmatch(request.path)
            if match is None:
                continue
            path_matched = True
            if method == request.method:
                params = {key: unquote(value) for key, value in match.groupdict().items()}
                return _Target(name, partial(getattr(self, name), **params))
        if path_matched:
            return _Target("method_not_allowed", self.method_not_allowed)
        return _Target("not_found", self.not_found)

    def _invoke(self, target: _Target, request: Request) -> Response:
        try:
            return target.call(request)
        except Abort as abort:
            return abort.response
        except InvalidJSONBody as error:
            return self.invalid_json(request, error)
        except Exception:
            traceback.print_exc()  # a sandbox bug: make it loud, but keep serving
            return json_response(500, {"message": "Sandbox handler crashed; see its stderr"})

    # -- admin endpoints ---------------------------------------------------------------------------------

    @staticmethod
    def _admin_json(request: Request) -> Any:
        try:
            return request.json() if request.body.strip() else {}
        except InvalidJSONBody as error:
            raise Abort(json_response(400, {"message": f"Invalid JSON body: {error}"})) from error

    @route("GET", r"/_sandbox/faults")
    def _admin_list_faults(self, request: Request) -> Response:
        return json_response(200, {"rules": [rule.to_dict() for rule in self.faults.rules]})

    @route("POST", r"/_sandbox/faults")
    def _admin_add_fault(self, request: Request) -> Response:
        document = self._admin_json(request)
        try:
            rule = self.faults.add(**document)
        except (TypeError, ValueError) as error:
            return json_response(400, {"message": f"Invalid fault rule: {error}"})
        return json_response(201, rule.to_dict())

    @route("DELETE", r"/_sandbox/faults")
    def _admin_clear_faults(self, request: Request) -> Response:
        return json_response(200, {"cleared": self.faults.clear()})

    @route("GET", r"/_sandbox/settings")
    def _admin_get_settings(self, request: Request) -> Response:
        return json_response(200, self.settings())

    @route("POST", r"/_sandbox/settings")
    def _admin_update_settings(self, request: Request) -> Response:
        document = self._admin_json(request)
        try:
            return json_response(200, self.apply_settings(document))
        except (TypeError, ValueError) as error:
            return json_response(400, {"message": f"Invalid settings: {error}"})

    @route("GET", r"/_sandbox/stats")
    def _admin_get_stats(self, request: Request) -> Response:
        return json_response(200, self.stats())

    @route("DELETE", r"/_sandbox/stats")
    def _admin_reset_stats(self, request: Request) -> Response:
        self.reset_stats()
        return json_response(200, self.stats())

    @route("POST", r"/_sandbox/seed")
    def _admin_seed(self, request: Request) -> Response:
        document = self._admin_json(request)
        if not isinstance(document, dict):
            return json_response(400, {"message": "The seed document must be a JSON object"})
        try:
            return json_response(201, self.seed_document(document))
        except NotImplementedError as error:
            return json_response(501, {"message": str(error)})
        except (TypeError, ValueError, LookupError) as error:
            return json_response(400, {"message": f"Invalid seed document: {error}"})


class _HTTPServer(ThreadingHTTPServer):
    """Threaded server that remembers its open connections so that ``stop()`` can cut them."""

    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def track(self, connection: socket.socket, open_: bool) -> None:
        with self._connections_lock:
            (self._connections.add if open_ else self._connections.discard)(connection)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the peer
                connection.shutdown(socket.SHUT_RDWR)


class _RequestHandler(BaseHTTPRequestHandler):
    """Translates HTTP/1.1 keep-alive traffic to :meth:`SandboxServer.process` calls."""

    protocol_version = "HTTP/1.1"
    #: Headers and body go out in two writes; with Nagle's algorithm on, the body waits for the client's delayed
    #: ACK of the headers: about 20-40 ms per request that no real service adds (and that latency settings skew).
    disable_nagle_algorithm = True
    sandbox: SandboxServer  # set on the per-server subclass created by start()
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, open_=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, open_=False)

    def _dispatch(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.send_error(411, "Send a Content-Length; chunked bodies are not supported")
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.send_error(400, "Bad Content-Length")
            return
        split = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=split.path,
            query=parse_qs(split.query, keep_blank_values=True),
            headers=self.headers,
            body=self.rfile.read(length) if length > 0 else b"",
        )
        response = self.sandbox.process(request)
        if response is None:
            self.close_connection = True  # nothing written: the client sees the connection drop
            return
        body = response.encoded_body()
        self.send_response(response.status)
        for name, value in response.headers.items():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        if self.sandbox.access_log:
            sys.stderr.write(f"[{type(self.sandbox).__name__}] {self.address_string()} {format % args}\n")
