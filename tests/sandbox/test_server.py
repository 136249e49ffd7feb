"""Tests of the reusable sandbox framework, through a tiny item-store sandbox over real HTTP."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.forward_proxy import ForwardProxy
from sandbox.server import (
    Abort,
    InvalidJSONBody,
    RateLimiter,
    Request,
    Response,
    SandboxClock,
    SandboxServer,
    json_response,
    route,
    text_response,
)


class ItemSandbox(SandboxServer):
    """Minimal service: items under /items, a rate-limited /limited and a crashing /boom."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.items: list[Any] = []
        self.limiter = self.add_rate_limiter(limit=2, window_seconds=60)

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        return json_response(400, {"error": "bad json"})

    @route("GET", r"/items")
    def list_items(self, request: Request) -> Response:
        with self.lock:
            items = list(self.items)
        return json_response(200, {"items": items, "query": request.query, "ua": request.headers.get("user-agent")})

    @route("POST", r"/items")
    def create_item(self, request: Request) -> Response:
        item = request.json()
        with self.lock:
            self.items.append(item)
            return json_response(201, {"index": len(self.items) - 1})

    @route("GET", r"/items/(?P<index>\d+)")
    def get_item(self, request: Request, index: str) -> Response:
        with self.lock:
            if int(index) >= len(self.items):
                raise Abort(json_response(404, {"error": "no such item"}))
            return json_response(200, self.items[int(index)])

    @route("GET", r"/names/(?P<name>[^/]+)")
    def echo_name(self, request: Request, name: str) -> Response:
        return text_response(200, name)

    @route("GET", r"/limited")
    def limited(self, request: Request) -> Response:
        wait = self.limiter.hit(request.headers.get("X-Client", "anonymous"))
        if wait:
            return json_response(429, {"error": "slow down"}, {"Retry-After": str(round(wait))})
        return text_response(200, "ok")

    @route("GET", r"/boom")
    def boom(self, request: Request) -> Response:
        raise RuntimeError("handler bug")


@pytest.fixture
def sandbox() -> Iterator[ItemSandbox]:
    with ItemSandbox() as server:
        yield server


def test_routes_params_query_and_case_insensitive_headers(sandbox: ItemSandbox) -> None:
    created = requests.post(f"{sandbox.url}/items", json={"n": 1}, timeout=5)
    assert created.status_code == 201 and created.json() == {"index": 0}
    listed = requests.get(f"{sandbox.url}/items?a=1&a=2&b=", headers={"USER-AGENT": "probe"}, timeout=5)
    assert listed.json() == {"items": [{"n": 1}], "query": {"a": ["1", "2"], "b": [""]}, "ua": "probe"}
    assert requests.get(f"{sandbox.url}/items/0", timeout=5).json() == {"n": 1}
    assert requests.get(f"{sandbox.url}/names/a%20b", timeout=5).text == "a b"


def test_abort_unknown_route_wrong_method_bad_json_and_crash(sandbox: ItemSandbox) -> None:
    assert requests.get(f"{sandbox.url}/items/7", timeout=5).json() == {"error": "no such item"}
    missing = requests.get(f"{sandbox.url}/nope", timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"message": "Not Found"})
    assert requests.delete(f"{sandbox.url}/items", timeout=5).status_code == 405
    bad = requests.post(f"{sandbox.url}/items", data=b"{not json", timeout=5)
    assert (bad.status_code, bad.json()) == (400, {"error": "bad json"})
    assert requests.get(f"{sandbox.url}/boom", timeout=5).status_code == 500
    assert requests.get(f"{sandbox.url}/items", timeout=5).status_code == 200  # still serving


def test_keep_alive_reuses_one_connection_with_correct_content_length(sandbox: ItemSandbox) -> None:
    connection = http.client.HTTPConnection(sandbox.url.removeprefix("http://"), timeout=5)
    sockets = []
    try:
        for expected in ("a", "bb"):
            connection.request("GET", f"/names/{expected}")
            response = connection.getresponse()
            assert response.version == 11
            assert response.getheader("Content-Length") == str(len(expected))
            assert response.read() == expected.encode()
            sockets.append(connection.sock)
        assert sockets[0] is sockets[1]  # http.client would have reconnected after a close
    finally:
        connection.close()


def test_stop_closes_pooled_connections_and_context_manager(sandbox: ItemSandbox) -> None:
    session = requests.Session()
    assert session.get(f"{sandbox.url}/items", timeout=5).ok
    url = sandbox.url
    sandbox.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(f"{url}/items", timeout=5)
    with pytest.raises(RuntimeError):
        _ = sandbox.url
    sandbox.stop()  # idempotent


def test_status_fault_with_retry_after_then_normal(sandbox: ItemSandbox) -> None:
    rule = sandbox.faults.add(r"^/items$", method="GET", status=503, headers={"Retry-After": "1"})
    faulted = requests.get(f"{sandbox.url}/items", timeout=5)
    assert faulted.status_code == 503
    assert faulted.headers["Retry-After"] == "1"
    assert faulted.json() == {"message": "Service Unavailable"}
    assert requests.get(f"{sandbox.url}/items", timeout=5).status_code == 200
    assert rule.fired == 1


def test_fault_times_method_filter_and_forever(sandbox: ItemSandbox) -> None:
    twice = sandbox.faults.add("/items", method="POST", times=2, status=409, body={"message": "lock"})
    statuses = [requests.post(f"{sandbox.url}/items", json=i, timeout=5).status_code for i in range(3)]
    assert statuses == [409, 409, 201]
    assert twice.fired == 2 and sandbox.items == [2]
    assert requests.get(f"{sandbox.url}/items", timeout=5).status_code == 200  # GET not matched
    forever = sandbox.faults.add("/names/", times=None, status=500, body="plain")
    for _ in range(3):
        assert requests.get(f"{sandbox.url}/names/x", timeout=5).text == "plain"
    assert forever.fired == 3


def test_delay_fault_and_latency_slow_requests_down(sandbox: ItemSandbox) -> None:
    sandbox.faults.add("/items", delay=0.3)
    started = time.monotonic()
    assert requests.get(f"{sandbox.url}/items", timeout=5).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    requests.get(f"{sandbox.url}/items", timeout=5)
    assert time.monotonic() - started < 0.25  # the rule fired once only
    sandbox.latency = 0.2
    started = time.monotonic()
    requests.get(f"{sandbox.url}/items", timeout=5)
    assert time.monotonic() - started >= 0.2


def test_drop_before_does_not_run_the_handler(sandbox: ItemSandbox) -> None:
    rule = sandbox.faults.add("/items", method="POST", action="drop_before")
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{sandbox.url}/items", json="lost", timeout=5)
    assert sandbox.items == []
    assert rule.fired == 1


def test_drop_after_commit_runs_the_handler_but_never_answers(sandbox: ItemSandbox) -> None:
    sandbox.faults.add("/items", method="POST", action="drop_after_commit")
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{sandbox.url}/items", json="committed", timeout=5)
    assert sandbox.items == ["committed"]


def test_invalid_fault_rules_are_rejected(sandbox: ItemSandbox) -> None:
    with pytest.raises(ValueError):
        sandbox.faults.add("/items")  # no action
    with pytest.raises(ValueError):
        sandbox.faults.add("(", status=500)  # bad regex
    with pytest.raises(ValueError):
        sandbox.faults.add("/items", action="explode")


def test_admin_faults_settings_and_stats_over_http(sandbox: ItemSandbox) -> None:
    admin = f"{sandbox.url}/_sandbox"
    added = requests.post(f"{admin}/faults", json={"path": "", "status": 429, "times": 0}, timeout=5)
    assert added.status_code == 201 and added.json()["action"] == "status"
    assert requests.get(f"{sandbox.url}/items", timeout=5).status_code == 429
    assert requests.get(f"{admin}/stats", timeout=5).status_code == 200  # admin paths are never faulted
    assert requests.get(f"{admin}/faults", timeout=5).json()["rules"][0]["fired"] == 1
    assert requests.get(f"{admin}/stats", timeout=5).json()["faults_fired"] == 1
    assert requests.delete(f"{admin}/faults", timeout=5).json() == {"cleared": 1}
    assert requests.get(f"{sandbox.url}/items", timeout=5).status_code == 200
    assert requests.post(f"{admin}/faults", json={"path": "/x", "bogus": 1}, timeout=5).status_code == 400
    assert requests.post(f"{admin}/faults", data=b"{", timeout=5).status_code == 400

    assert requests.post(f"{admin}/settings", json={"latency": 0.05}, timeout=5).json()["latency"] == 0.05
    assert sandbox.latency == 0.05
    assert requests.post(f"{admin}/settings", json={"latency": -1}, timeout=5).status_code == 400
    assert requests.post(f"{admin}/settings", json={"nope": 1}, timeout=5).status_code == 400
    assert requests.get(f"{admin}/settings", timeout=5).json() == {"latency": 0.05, "hour_seconds": 3600.0}

    requests.get(f"{sandbox.url}/nope", timeout=5)
    stats = requests.get(f"{admin}/stats", timeout=5).json()
    assert stats["requests"] == {"list_items": 2, "not_found": 1}
    assert stats["total_requests"] == 3
    assert requests.delete(f"{admin}/stats", timeout=5).json()["total_requests"] == 0
    assert requests.post(f"{admin}/seed", json={}, timeout=5).status_code == 501


def test_rate_limiter_helper_drives_service_specific_429_and_stats(sandbox: ItemSandbox) -> None:
    responses = [requests.get(f"{sandbox.url}/limited", headers={"X-Client": "a"}, timeout=5) for _ in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 429]
    assert int(responses[2].headers["Retry-After"]) in range(59, 61)
    assert requests.get(f"{sandbox.url}/limited", headers={"X-Client": "b"}, timeout=5).ok  # per credential
    assert sandbox.stats()["rate_limited"] == 1


def test_rate_limiter_fixed_window() -> None:
    now = [100.0]
    limiter = RateLimiter(limit=2, window_seconds=10, now=lambda: now[0])
    assert (limiter.hit("k"), limiter.hit("k")) == (0.0, 0.0)
    assert limiter.remaining("k") == 0
    now[0] = 104.0
    assert limiter.hit("k") == pytest.approx(6.0)
    assert limiter.rejected == 1
    now[0] = 110.0
    assert limiter.remaining("k") == 2
    assert limiter.hit("k") == 0.0


def test_clock_scales_hours_but_reports_wall_time() -> None:
    clock = SandboxClock(hour_seconds=0.5)
    assert clock.hours(24) == 12.0
    assert abs(clock.now() - time.time()) < 1
    assert SandboxClock().hours(1) == 3600


def test_access_log_is_off_by_default_and_goes_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    with ItemSandbox() as quiet:
        requests.get(f"{quiet.url}/items", timeout=5)
    with ItemSandbox(access_log=True) as loud:
        requests.get(f"{loud.url}/items", timeout=5)
    logged = capsys.readouterr().err
    assert logged.count("GET /items") == 1 and "[ItemSandbox]" in logged


# -- hold: keep a request inside the server until the test lets it go ----------------------------------


def _post_in_background(url: str, **kwargs: Any) -> tuple[threading.Thread, list[Any]]:
    """POST from a thread; the outcome (a response or the exception) lands in the returned list."""
    outcome: list[Any] = []

    def post() -> None:
        try:
            outcome.append(requests.post(url, timeout=10, **kwargs))
        except requests.RequestException as error:
            outcome.append(error)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread, outcome


def test_hold_keeps_the_request_until_released_then_drops_it_unhandled(sandbox: ItemSandbox) -> None:
    rule = sandbox.faults.add("/items", method="POST", action="hold")
    thread, outcome = _post_in_background(f"{sandbox.url}/items", json="held")

    assert rule.wait_held(5)
    time.sleep(0.2)
    assert thread.is_alive() and outcome == [], "the client is still waiting"
    assert rule.fired == 1 and [request.json() for request in rule.held] == ["held"]
    assert requests.get(f"{sandbox.url}/items", timeout=5).status_code == 200, "other requests are served"

    rule.release()
    thread.join(5)
    assert isinstance(outcome[0], requests.ConnectionError)
    assert sandbox.items == [], "the held request never happened"
    assert requests.post(f"{sandbox.url}/items", json="next", timeout=5).status_code == 201, "times=1: spent"


def test_hold_released_with_run_handler_commits_but_never_answers(sandbox: ItemSandbox) -> None:
    rule = sandbox.faults.add("/items", method="POST", action="hold")
    thread, outcome = _post_in_background(f"{sandbox.url}/items", json="committed")
    assert rule.wait_held(5)

    rule.release(run_handler=True)
    rule.release()  # the first release decides
    thread.join(5)
    assert isinstance(outcome[0], requests.ConnectionError)
    assert sandbox.items == ["committed"]


def test_hold_matches_only_requests_its_predicate_accepts(sandbox: ItemSandbox) -> None:
    rule = sandbox.faults.add(
        "/items",
        method="POST",
        action="hold",
        when=lambda request: request.headers.get("Authorization") == "Bearer old" and b'"stored"' in request.body,
    )
    assert requests.post(f"{sandbox.url}/items", json={"state": "stored"}, timeout=5).status_code == 201
    headers = {"Authorization": "Bearer old"}
    assert requests.post(f"{sandbox.url}/items", json={"state": "rotating"}, headers=headers, timeout=5).ok
    assert rule.fired == 0
    thread, outcome = _post_in_background(f"{sandbox.url}/items", json={"state": "stored"}, headers=headers)
    assert rule.wait_held(5)
    rule.release()
    thread.join(5)
    assert isinstance(outcome[0], requests.ConnectionError)
    assert len(sandbox.items) == 2


def test_a_predicate_that_raises_does_not_match(sandbox: ItemSandbox, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox.faults.add("/items", status=500, when=lambda request: 1 / 0)
    assert requests.get(f"{sandbox.url}/items", timeout=5).status_code == 200
    assert "ZeroDivisionError" in capsys.readouterr().err


def test_a_forgotten_hold_times_out_and_clear_or_stop_let_held_requests_go(sandbox: ItemSandbox) -> None:
    timed = sandbox.faults.add("/items", method="POST", action="hold", hold_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{sandbox.url}/items", json=1, timeout=5)
    assert 0.3 <= time.monotonic() - started < 3 and timed.fired == 1 and sandbox.items == []

    sandbox.faults.add("/items", method="POST", action="hold")
    thread, outcome = _post_in_background(f"{sandbox.url}/items", json=2)
    time.sleep(0.2)
    assert sandbox.faults.clear() == 2
    thread.join(5)
    assert isinstance(outcome[0], requests.ConnectionError)

    rule = sandbox.faults.add("/items", method="POST", action="hold")
    thread, outcome = _post_in_background(f"{sandbox.url}/items", json=3)
    assert rule.wait_held(5)
    sandbox.stop()
    thread.join(5)
    assert not thread.is_alive() and isinstance(outcome[0], requests.ConnectionError)
    assert sandbox.items == []


def test_invalid_hold_rules_and_predicates_over_http_are_rejected(sandbox: ItemSandbox) -> None:
    with pytest.raises(ValueError):
        sandbox.faults.add("/items", action="hold", when="Bearer old")
    with pytest.raises(ValueError):
        sandbox.faults.add("/items", action="hold", hold_timeout=0)
    admin = f"{sandbox.url}/_sandbox/faults"
    assert requests.post(admin, json={"path": "/items", "action": "hold", "when": "x"}, timeout=5).status_code == 400
    sandbox.faults.add("/items", action="hold", when=lambda request: False)
    listed = requests.get(admin, timeout=5).json()["rules"]
    assert listed[0]["action"] == "hold" and listed[0]["when"] is True and listed[0]["held"] == 0


# -- ForwardProxy: the same faults in front of a real service ------------------------------------------


@pytest.fixture
def proxy(sandbox: ItemSandbox) -> Iterator[ForwardProxy]:
    with ForwardProxy(sandbox.url) as server:
        yield server


def test_proxy_forwards_method_path_query_headers_and_body_and_the_answer(
    sandbox: ItemSandbox, proxy: ForwardProxy
) -> None:
    created = requests.post(f"{proxy.url}/items", json={"n": 1}, timeout=5)
    assert (created.status_code, created.json()) == (201, {"index": 0})
    assert sandbox.items == [{"n": 1}]
    listed = requests.get(f"{proxy.url}/items?a=1&a=2&b=", headers={"User-Agent": "probe"}, timeout=5)
    assert listed.json() == {"items": [{"n": 1}], "query": {"a": ["1", "2"], "b": [""]}, "ua": "probe"}
    assert listed.headers["Content-Type"] == "application/json"
    assert requests.get(f"{proxy.url}/names/a%20b", timeout=5).text == "a b", "the path is forwarded as sent"
    missing = requests.get(f"{proxy.url}/items/9", timeout=5)
    assert (missing.status_code, missing.json()) == (404, {"error": "no such item"})
    limited = [requests.get(f"{proxy.url}/limited", headers={"X-Client": "p"}, timeout=5) for _ in range(3)]
    assert limited[2].status_code == 429 and "Retry-After" in limited[2].headers
    # Vault's LIST is forwarded too (this upstream answers it with http.server's 501, without counting it).
    assert requests.request("LIST", f"{proxy.url}/items", timeout=5).status_code == 501
    assert proxy.stats()["requests"] == {"forward": 8} and sandbox.stats()["total_requests"] == 7


def test_proxy_faults_apply_to_the_upstream_calls_and_its_admin_api_is_its_own(
    sandbox: ItemSandbox, proxy: ForwardProxy
) -> None:
    rule = proxy.faults.add("/items", method="POST", action="hold", when=lambda request: b"lost" in request.body)
    assert requests.post(f"{proxy.url}/items", json="kept", timeout=5).status_code == 201
    thread, outcome = _post_in_background(f"{proxy.url}/items", json="lost")
    assert rule.wait_held(5)
    rule.release()
    thread.join(5)
    assert isinstance(outcome[0], requests.ConnectionError)
    assert sandbox.items == ["kept"], "the held request never reached the upstream"
    assert requests.get(f"{proxy.url}/_sandbox/faults", timeout=5).json()["rules"][0]["held"] == 1


def test_proxy_answers_502_when_the_upstream_is_down(sandbox: ItemSandbox, proxy: ForwardProxy) -> None:
    sandbox.stop()
    answer = requests.get(f"{proxy.url}/items", timeout=5)
    assert answer.status_code == 502 and "unreachable" in answer.json()["errors"][0]
