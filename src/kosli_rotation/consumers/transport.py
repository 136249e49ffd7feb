"""What every consumer kind shares when it talks to its service: one retry policy, one rule for which answers are
transient, the waits a server asks for, polling with a deadline, the Airflow connection lookup, and the mapping
of a refusal (401, 403, 404) to a ``ConsumerError`` that says what to fix.

A kind's module keeps what is really its own (its client, its endpoints, its verification) and hands this module
two things: ``classify`` (its client's exceptions, seen as a ``RemoteFailure``) and its ``Fixes`` (what a user must
change when the service refuses). Then::

    transport = Transport(consumer=self.name, service="CircleCI", conn_id=..., classify=..., fixes=FIXES)
    response = transport.call(lambda: hook.run(...), "set KOSLI_API_TOKEN in context x")
"""

from __future__ import annotations

import email.utils
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import astuple, dataclass, field
from typing import Any, TypeVar

from kosli_rotation.errors import ConsumerError
from kosli_rotation.retrying import backoff_delay, call_with_retries, is_transient_status
from kosli_rotation.scrub import describe_error, one_line

T = TypeVar("T")

#: A value of a reset header above this is a Unix time, below it a delay in seconds (2001-09-09 in epoch seconds:
#: no delay is that long, no reset time that early).
EPOCH_THRESHOLD = 1_000_000_000


@dataclass(frozen=True)
class RetryPolicy:
    """How long one call may keep trying: attempts, a total budget, and the longest single wait we accept.

    A server that asks for a longer wait than ``max_single_wait`` is not waited for inside the task: the call fails
    retryable, and Airflow's own task retry comes back later.
    """

    max_attempts: int = 5
    budget_seconds: float = 180.0
    max_single_wait: float = 60.0


DEFAULT_POLICY = RetryPolicy()


def _lowered(headers: Mapping[str, Any] | None) -> dict[str, str]:
    return {str(name).lower(): str(value) for name, value in (headers or {}).items()}


def _seconds_until(value: str, now: float) -> float | None:
    """A reset header's value (delay seconds or Unix time, ``EPOCH_THRESHOLD`` tells) as seconds from ``now``."""
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return max(0.0, number - now) if number > EPOCH_THRESHOLD else max(0.0, number)


def server_wait(headers: Mapping[str, Any] | None, *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait, or None if it did not say.

    ``Retry-After`` (delay seconds or an HTTP date, RFC 9110 10.2.3) wins; ``retry-after-ms`` (Azure) next; then,
    when the quota is spent (``*-Remaining: 0``, or no remaining count sent beside the reset),
    ``RateLimit-Reset`` or ``X-RateLimit-Reset`` (delay seconds or a Unix time: GitHub and GitLab send Unix
    times, the IETF draft a delay).
    """
    lowered = _lowered(headers)
    now = time.time() if now is None else now
    retry_after = lowered.get("retry-after", "").strip()
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            when = None
        if when is not None and when.tzinfo is not None:
            return max(0.0, when.timestamp() - now)
    if lowered.get("retry-after-ms", "").strip():
        try:
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    for prefix in ("ratelimit", "x-ratelimit"):
        reset = lowered.get(f"{prefix}-reset")
        if reset is not None and lowered.get(f"{prefix}-remaining", "0").strip() == "0":
            return _seconds_until(reset, now)
    return None


@dataclass(frozen=True)
class RemoteFailure:
    """A failed call as the transport sees it: the status (None: no answer at all), the service's message
    (untrusted text, scrubbed when shown) and the answer's headers (for the waits it asks for)."""

    status: int | None
    message: str
    headers: Mapping[str, Any] = field(default_factory=dict)

    @property
    def transient(self) -> bool:
        return self.status is None or is_transient_status(self.status)

    @property
    def said(self) -> str:
        shown = one_line(self.message, limit=200) or "no message"
        return f"HTTP {self.status}: {shown}" if self.status is not None else shown


class HttpStatusError(Exception):
    """An HTTP answer outside the statuses a call expects (for kinds that call through ``requests`` or
    ``HttpHook``). Carries no request body, so never the key."""

    def __init__(self, status: int, message: str, headers: Mapping[str, Any] | None = None) -> None:
        super().__init__(f"HTTP {status}: {one_line(message, limit=200)}")
        self.failure = RemoteFailure(status, message, dict(headers or {}))


def response_message(response: Any) -> str:
    """The message of an error answer: its JSON ``message`` (or ``error.message``), else its text."""
    try:
        body = response.json()
    except ValueError:
        return " ".join((response.text or "").split())[:200] or str(response.reason or "no message")
    if isinstance(body, dict):
        error = body.get("error")
        message = body.get("message") or (error.get("message") if isinstance(error, dict) else error)
        return str(message or body)[:200]
    return str(body)[:200]


def check_status(response: Any, accept: tuple[int, ...] = (200, 201)) -> Any:
    """``response`` if its status is in ``accept``, else ``HttpStatusError`` with its message and headers."""
    if response.status_code in accept:
        return response
    raise HttpStatusError(response.status_code, response_message(response), response.headers)


def classify_requests(error: Exception) -> RemoteFailure | None:
    """``HttpStatusError`` and ``requests``' connection errors and timeouts; None for anything else."""
    import requests

    if isinstance(error, HttpStatusError):
        return error.failure
    if isinstance(error, requests.ConnectionError | requests.Timeout):
        return RemoteFailure(None, f"no answer ({type(error).__name__})")
    return None


@dataclass(frozen=True)
class Fixes:
    """What the user must change when the service refuses, per refusal (each completes "...; <fix>")."""

    unauthorized: str
    forbidden: str
    not_found: str

    def filled(self, **fields: str) -> Fixes:
        """These fixes with ``{placeholders}`` filled in (a module's templates, for one consumer)."""
        return Fixes(*(text.format(**fields) for text in astuple(self)))


class Transport:
    """Calls to one consumer's service: retried by one policy, refusals turned into errors that say what to fix.

    ``classify`` maps the client's exceptions to a ``RemoteFailure`` (None: not a remote failure, re-raised as it
    is). ``conn_id`` names the Airflow connection whose credentials the messages refer to.
    """

    def __init__(
        self,
        *,
        consumer: str,
        service: str,
        conn_id: str,
        classify: Callable[[Exception], RemoteFailure | None],
        fixes: Fixes,
        policy: RetryPolicy = DEFAULT_POLICY,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.consumer = consumer
        self.service = service
        self.conn_id = conn_id
        self.classify = classify
        self.fixes = fixes
        self.policy = policy
        self.sleep = sleep

    @classmethod
    def for_consumer(
        cls, config: Any, service: str, classify: Callable[[Exception], RemoteFailure | None], fixes: Fixes
    ) -> Transport:
        """The transport of one consumer entry (its ``name`` and ``conn_id``), ``{conn_id}`` filled in ``fixes``."""
        filled = fixes.filled(conn_id=config.conn_id)
        return cls(consumer=config.name, service=service, conn_id=config.conn_id, classify=classify, fixes=filled)

    def delay_for(self, error: Exception, attempt: int) -> float | None:
        """How long to wait before retrying after ``error`` (None: do not retry)."""
        failure = self.classify(error)
        if failure is None or not failure.transient:
            return None
        asked = server_wait(failure.headers)
        if asked is None:
            return backoff_delay(attempt)
        return asked if asked <= self.policy.max_single_wait else None

    def describe(self, error: Exception) -> str:
        """An error as the retry warning shows it: the failure's status and message only (never a client's dump
        of headers and body), else the error's own scrubbed text."""
        failure = self.classify(error)
        return failure.said if failure is not None else describe_error(error)

    def call(self, action: Callable[[], T], what: str) -> T:
        """``action()`` with retries; a remote failure that remains becomes a ``ConsumerError`` about ``what``."""
        try:
            return call_with_retries(
                action,
                delay_for=self.delay_for,
                what=f"{self.service}: {what}",
                max_attempts=self.policy.max_attempts,
                deadline=time.monotonic() + self.policy.budget_seconds,
                sleep=self.sleep,
                describe=self.describe,
            )
        except Exception as error:
            failure = self.classify(error)
            if failure is None:
                raise
            raise self.refusal(failure, what) from None

    def refusal(self, failure: RemoteFailure, what: str) -> ConsumerError:
        """The error for a failure that retrying did not cure, saying what to fix where we know it."""
        said, conn = failure.said, f"connection {self.conn_id!r}"
        if failure.status is None:
            return ConsumerError(self.consumer, f"cannot {what}: {self.service} did not answer ({said}) via {conn}")
        if failure.status == 401:
            text = f"{self.service} rejected the credentials of {conn} ({said}); {self.fixes.unauthorized}"
            return ConsumerError(self.consumer, text, retryable=False)
        if failure.status == 403:
            text = f"{self.service} refused to {what} for {conn} ({said}); {self.fixes.forbidden}"
            return ConsumerError(self.consumer, text, retryable=False)
        if failure.status == 404:
            return ConsumerError(self.consumer, f"cannot {what} ({said}); {self.fixes.not_found}", retryable=False)
        asked = server_wait(failure.headers)
        if failure.transient and asked is not None and asked > self.policy.max_single_wait:
            said += f"; it asks to wait {asked:.0f} s, longer than one task waits"
        return ConsumerError(self.consumer, f"cannot {what} ({said})", retryable=failure.transient)


def poll_until(
    probe: Callable[[], T | None],
    deadline: float,
    *,
    first_pause: float = 0.25,
    max_pause: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T | None:
    """Call ``probe`` with growing pauses until it returns a value, or None once the ``time.monotonic()``
    ``deadline`` would pass."""
    pause = first_pause
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() + pause > deadline:
            return None
        sleep(pause)
        pause = min(pause * 2, max_pause)


def connection_or_explain(conn_id: str, consumer: str, create: str) -> Any:
    """The Airflow connection ``conn_id``; a non-retryable error saying how to ``create`` it when it is not
    defined, a retryable one naming the failure when it could not be read (a secrets backend away, ...)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        variable = f"AIRFLOW_CONN_{conn_id.upper()}"
        if os.environ.get(variable, "").strip():
            # Airflow reports a connection it could not parse as not found: say which it really is.
            problem = f"is set in {variable}, but Airflow cannot read it: make it valid JSON or a connection URI"
            raise ConsumerError(consumer, f"Airflow connection {conn_id!r} {problem}", retryable=False) from None
        raise ConsumerError(
            consumer, f"Airflow connection {conn_id!r} is not defined: create {create}", retryable=False
        ) from None
    except Exception as error:
        raise ConsumerError(
            consumer, f"cannot read Airflow connection {conn_id!r}: {describe_error(error)}", retryable=True
        ) from None
