"""The consumers' shared transport: which answers are transient, the waits a server asks for, the retrying call and
its refusals, polling with a deadline, and the Airflow connection lookup.

Pure logic, so no sandbox: calls are plain functions raising what a kind's client raises (``HttpStatusError``,
``requests`` errors), waits are recorded instead of slept, and connections come from real Airflow lookups (an
``AIRFLOW_CONN_*`` variable, or a configured secrets backend that refuses or cannot be loaded).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Callable, Iterator

import pytest
import requests
from airflow.sdk.exceptions import AirflowSecretsBackendAccessDenied
from airflow.secrets.base_secrets import BaseSecretsBackend

from kosli_rotation.consumers.transport import (
    DEFAULT_POLICY,
    Fixes,
    HttpStatusError,
    RetryPolicy,
    Transport,
    classify_requests,
    connection_or_explain,
    is_transient_status,
    poll_until,
    server_wait,
)
from kosli_rotation.errors import ConsumerError
from kosli_rotation.scrub import hold_secret

NOW = 1_900_000_000.0  # a fixed "now" (2030) for the header arithmetic
FIXES = Fixes(unauthorized="set a valid token", forbidden="grant write access", not_found="check the target")


# -- is_transient_status -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_transient_statuses(status: int) -> None:
    assert is_transient_status(status)


@pytest.mark.parametrize("status", [200, 301, 400, 401, 403, 404, 409, 422, 501, 600])
def test_statuses_that_the_same_request_will_not_cure(status: int) -> None:
    """501 is a server error, but the server will not learn the method by the next attempt."""
    assert not is_transient_status(status)


def test_the_policy_defaults() -> None:
    assert (DEFAULT_POLICY.max_attempts, DEFAULT_POLICY.budget_seconds, DEFAULT_POLICY.max_single_wait) == (5, 180, 60)


# -- server_wait -------------------------------------------------------------------------------------------


def http_date(at: float) -> str:
    return email.utils.formatdate(at, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-3"}, 0.0),
        ({"Retry-After": http_date(NOW + 30)}, 30.0),
        ({"Retry-After": http_date(NOW - 300)}, 0.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"Retry-After": "4", "retry-after-ms": "9000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "99"}, 4.0),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "12"}, 12.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW + 20))}, 20.0),
        ({"RateLimit-Remaining": "0", "RateLimit-Reset": str(int(NOW + 45))}, 45.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW - 20))}, 0.0),
    ],
)
def test_waits_the_server_asks_for(headers: dict[str, str], wait: float) -> None:
    assert server_wait(headers, now=NOW) == pytest.approx(wait)


@pytest.mark.parametrize(
    "headers",
    [
        None,
        {},
        {"Retry-After": ""},
        {"X-RateLimit-Remaining": "3", "X-RateLimit-Reset": str(int(NOW + 20))},
        {"RateLimit-Remaining": "1", "RateLimit-Reset": "12"},
        {"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "59"},
    ],
)
def test_no_wait_when_the_server_asks_for_none(headers: dict[str, str] | None) -> None:
    """A reset time only counts once the quota is spent: with requests remaining, it is no reason to wait."""
    assert server_wait(headers, now=NOW) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Retry-After": "soon"},
        {"Retry-After": "Mon, 99 Foo 2030 25:61:00 GMT"},
        {"Retry-After": "Mon, 01 Jan 2030 00:00:00"},  # no zone: not a time we can place
        {"retry-after-ms": "a while"},
        {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "later"},
        {"RateLimit-Remaining": "0", "RateLimit-Reset": ""},
    ],
)
def test_garbage_values_are_no_wait(headers: dict[str, str]) -> None:
    assert server_wait(headers, now=NOW) is None


def test_garbage_retry_after_falls_back_to_the_other_headers() -> None:
    assert server_wait({"Retry-After": "soon", "retry-after-ms": "250"}, now=NOW) == 0.25
    assert server_wait({"Retry-After": "soon", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "3"}, now=NOW) == 3


def test_header_names_are_case_insensitive_as_requests_gives_them() -> None:
    response = requests.Response()
    response.headers["RETRY-AFTER"] = "5"
    assert server_wait(response.headers, now=NOW) == 5.0


# -- Transport.call ----------------------------------------------------------------------------------------


class Script:
    """An action that raises ``errors`` in turn, then ``forever()`` on every call if given, else returns
    ``"done"``; counts its calls."""

    def __init__(self, *errors: Exception, forever: Callable[[], Exception] | None = None) -> None:
        self.errors = list(errors)
        self.forever = forever
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        if self.forever is not None:
            raise self.forever()
        return "done"


def always(make: Callable[[], Exception]) -> Script:
    return Script(forever=make)


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def transport(slept: list[float]) -> Transport:
    return Transport(
        consumer="ci",
        service="Example",
        conn_id="example_default",
        classify=classify_requests,
        fixes=FIXES,
        policy=RetryPolicy(max_attempts=3, budget_seconds=30, max_single_wait=10),
        sleep=slept.append,
    )


def test_a_transient_failure_is_retried_after_the_wait_the_server_asked_for(
    transport: Transport, slept: list[float]
) -> None:
    action = Script(HttpStatusError(503, "busy", {"Retry-After": "2"}), HttpStatusError(429, "slow down"))
    assert transport.call(action, "set X") == "done"
    assert action.calls == 3
    assert slept[0] == 2.0  # as asked
    assert 0.9 * 2 <= slept[1] <= 1.1 * 2  # nothing asked: our own backoff (attempt 1: 2 s, 10% jitter)


def test_no_answer_is_retried_then_reported_with_the_connection(transport: Transport, slept: list[float]) -> None:
    action = always(lambda: requests.ConnectionError("refused"))
    with pytest.raises(ConsumerError) as raised:
        transport.call(action, "set X")
    assert action.calls == 3 and len(slept) == 2
    assert "cannot set X: Example did not answer (no answer (ConnectionError)) via connection 'example_default'" in (
        str(raised.value)
    )
    assert raised.value.retryable is True


@pytest.mark.parametrize(
    ("status", "said"),
    [
        (401, "Example rejected the credentials of connection 'example_default' (HTTP 401: nope); set a valid token"),
        (403, "Example refused to set X for connection 'example_default' (HTTP 403: nope); grant write access"),
        (404, "cannot set X (HTTP 404: nope); check the target"),
    ],
)
def test_a_refusal_stops_at_once_with_what_to_fix(
    transport: Transport, slept: list[float], status: int, said: str
) -> None:
    action = always(lambda: HttpStatusError(status, "nope"))
    with pytest.raises(ConsumerError) as raised:
        transport.call(action, "set X")
    assert action.calls == 1 and slept == []
    assert said in str(raised.value)
    assert raised.value.retryable is False


def test_501_is_not_retried_and_not_retryable(transport: Transport, slept: list[float]) -> None:
    action = always(lambda: HttpStatusError(501, "no such method"))
    with pytest.raises(ConsumerError, match=r"cannot set X \(HTTP 501: no such method\)") as raised:
        transport.call(action, "set X")
    assert (action.calls, slept, raised.value.retryable) == (1, [], False)


def test_persistent_server_errors_end_retryable_after_the_attempts(transport: Transport, slept: list[float]) -> None:
    action = always(lambda: HttpStatusError(502, "bad gateway", {"Retry-After": "0"}))
    with pytest.raises(ConsumerError, match=r"HTTP 502: bad gateway") as raised:
        transport.call(action, "set X")
    assert (action.calls, slept, raised.value.retryable) == (3, [0.0, 0.0], True)


def test_a_wait_longer_than_one_task_waits_gives_up_at_once_retryable(transport: Transport, slept: list[float]) -> None:
    """The policy waits at most 10 s here: asked for an hour, the call fails now and Airflow's retry comes later."""
    action = always(lambda: HttpStatusError(429, "quota spent", {"Retry-After": "3600"}))
    with pytest.raises(ConsumerError) as raised:
        transport.call(action, "set X")
    assert action.calls == 1 and slept == []
    assert "HTTP 429: quota spent; it asks to wait 3600 s, longer than one task waits" in str(raised.value)
    assert raised.value.retryable is True


def test_the_budget_bounds_the_waits(slept: list[float]) -> None:
    """A 5 s wait (within the longest single wait) that would end past the 1 s budget is not waited."""
    policy = RetryPolicy(max_attempts=5, budget_seconds=1, max_single_wait=60)
    options: dict = {"classify": classify_requests, "fixes": FIXES, "policy": policy, "sleep": slept.append}
    transport = Transport(consumer="ci", service="Example", conn_id="c", **options)
    action = always(lambda: HttpStatusError(503, "busy", {"Retry-After": "5"}))
    with pytest.raises(ConsumerError, match="HTTP 503") as raised:
        transport.call(action, "set X")
    assert (action.calls, slept, raised.value.retryable) == (1, [], True)


def test_an_unclassified_error_is_raised_as_it_is(transport: Transport, slept: list[float]) -> None:
    action = always(lambda: KeyError("items"))
    with pytest.raises(KeyError, match="items"):
        transport.call(action, "set X")
    assert action.calls == 1 and slept == []


def test_remote_text_is_scrubbed_in_the_error(transport: Transport) -> None:
    secret = hold_secret("transport-test-secret-" + "q" * 24)
    action = always(lambda: HttpStatusError(400, f"invalid value {secret}\nsecond line"))
    with pytest.raises(ConsumerError) as raised:
        transport.call(action, "set X")
    assert secret not in str(raised.value) and "\n" not in str(raised.value)


# -- poll_until --------------------------------------------------------------------------------------------


def test_poll_until_returns_the_first_value_with_growing_pauses() -> None:
    pauses: list[float] = []
    answers = iter([None, None, None, "finished"])
    value = poll_until(lambda: next(answers), time.monotonic() + 10, first_pause=1, max_pause=3, sleep=pauses.append)
    assert (value, pauses) == ("finished", [1, 2, 3])


def test_poll_until_gives_up_before_the_deadline_would_pass() -> None:
    """No pause is begun that would end past the deadline; the pauses grow to ``max_pause`` and stay there."""
    pauses: list[tuple[float, float]] = []
    probes = 0

    def probe() -> None:
        nonlocal probes
        probes += 1

    def pause(seconds: float) -> None:
        pauses.append((time.monotonic(), seconds))
        time.sleep(seconds)

    deadline = time.monotonic() + 1.0
    assert poll_until(probe, deadline, first_pause=0.05, max_pause=0.1, sleep=pause) is None
    assert probes == len(pauses) + 1 >= 3
    assert [seconds for _, seconds in pauses[:3]] == [0.05, 0.1, 0.1]
    assert all(began + seconds <= deadline + 0.01 for began, seconds in pauses)


# -- connection_or_explain ---------------------------------------------------------------------------------

CREATE = "an 'http' connection with the service's URL as host"


class DenyingBackend(BaseSecretsBackend):
    """A secrets backend whose policy refuses this worker (Airflow passes that on instead of trying the next)."""

    def get_conn_value(self, conn_id: str) -> str | None:
        raise AirflowSecretsBackendAccessDenied(f"policy denies reading {conn_id}")


@pytest.fixture
def secrets_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Configure Airflow's custom secrets backend (workers' and core's), rebuilt on the next lookup."""
    from airflow.sdk.configuration import clear_secrets_backends_cache

    def configure(path: str) -> None:
        for section in ("SECRETS__BACKEND", "WORKERS__SECRETS_BACKEND"):
            monkeypatch.setenv(f"AIRFLOW__{section}", path)
        clear_secrets_backends_cache()

    yield configure
    clear_secrets_backends_cache()


def test_a_defined_connection_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    connection = {"conn_type": "http", "host": "https://example.test", "password": "p"}
    monkeypatch.setenv("AIRFLOW_CONN_TRANSPORT_DEFINED", json.dumps(connection))
    assert connection_or_explain("transport_defined", "ci", CREATE).host == "https://example.test"


def test_a_missing_connection_says_how_to_create_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_TRANSPORT_MISSING", raising=False)
    with pytest.raises(ConsumerError) as raised:
        connection_or_explain("transport_missing", "ci", CREATE)
    assert f"Airflow connection 'transport_missing' is not defined: create {CREATE}" in str(raised.value)
    assert raised.value.retryable is False


def test_a_backend_that_refuses_is_named_and_retryable(secrets_backend: Callable[[str], None]) -> None:
    secrets_backend(f"{__name__}.DenyingBackend")
    with pytest.raises(ConsumerError) as raised:
        connection_or_explain("transport_denied", "ci", CREATE)
    said = str(raised.value)
    assert "cannot read Airflow connection 'transport_denied': policy denies reading transport_denied" in said
    assert "not defined" not in said and raised.value.retryable is True


def test_a_backend_that_cannot_be_loaded_is_named_and_retryable(secrets_backend: Callable[[str], None]) -> None:
    secrets_backend("nowhere.MissingBackend")
    with pytest.raises(ConsumerError) as raised:
        connection_or_explain("transport_any", "ci", CREATE)
    said = str(raised.value)
    assert "cannot read Airflow connection 'transport_any'" in said and "nowhere.MissingBackend" in said
    assert "not defined" not in said and raised.value.retryable is True


def test_an_unparsable_connection_variable_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """Airflow 3's lookup swallows a backend's errors (it logs them at DEBUG and tries the next backend), so an
    ``AIRFLOW_CONN_*`` holding broken JSON reaches us as "not found": the error must say the variable is set but
    unreadable, not send the user to create a connection that exists."""
    monkeypatch.setenv("AIRFLOW_CONN_TRANSPORT_BROKEN", '{"conn_type": "http", "host": ')
    with pytest.raises(ConsumerError, match="'transport_broken' is set in AIRFLOW_CONN_TRANSPORT_BROKEN") as raised:
        connection_or_explain("transport_broken", "ci", CREATE)
    assert "not defined" not in str(raised.value) and "valid JSON" in str(raised.value)
    assert raised.value.retryable is False


def test_the_refusal_helper_is_what_call_uses(transport: Transport) -> None:
    """``refusal`` can be used on its own by a kind whose client gives a failure without an exception."""
    failure = HttpStatusError(403, "read-only token").failure
    error = transport.refusal(failure, "update X")
    expected = "Example refused to update X for connection 'example_default' (HTTP 403: read-only token)"
    assert str(error).endswith(f"{expected}; grant write access")
    assert error.retryable is False


def test_classify_requests_leaves_other_errors_alone() -> None:
    assert classify_requests(ValueError("x")) is None
    assert classify_requests(requests.Timeout()).status is None  # type: ignore[union-attr]
    failure = classify_requests(HttpStatusError(503, "busy", {"Retry-After": "1"}))
    assert failure is not None and (failure.status, failure.transient, dict(failure.headers)) == (
        503,
        True,
        {"Retry-After": "1"},
    )


def test_kosli_errors_follow_the_same_transient_rule() -> None:
    """The Kosli hook's errors and the consumers' answer alike: 501 is final, 408 and 429 worth another try."""
    from kosli_rotation.errors import KosliApiError

    retryable = {status: KosliApiError(status, "x", "GET", "/api/v2/x").retryable for status in (408, 429, 501, 503)}
    assert retryable == {408: True, 429: True, 501: False, 503: True}
