"""The demo's and benchmarks' Airflow API client on a server too loaded to answer in time (what failed a CI run)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from demo.airflow_api import AirflowApi
from demo.processes import DemoError


class SlowAirflow(ThreadingHTTPServer):
    """Answers each request after ``delays`` seconds (one entry per request, then at once); counts requests."""

    def __init__(self, delays: list[float]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delays = delays
        self.requests: list[str] = []


class _Handler(BaseHTTPRequestHandler):
    server: SlowAirflow

    def _answer(self, body: dict) -> None:
        self.server.requests.append(f"{self.command} {self.path}")
        index = len(self.server.requests) - 1
        # Not time.sleep: the tests replace the client's pause between tries, which is the same function.
        threading.Event().wait(self.server.delays[index] if index < len(self.server.delays) else 0)
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._answer({"dag_run_id": "r1", "state": "running"})

    def do_POST(self) -> None:
        self._answer({"dag_run_id": "r1", "state": "queued"})

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def airflow(request) -> Iterator[SlowAirflow]:
    server = SlowAirflow(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _api(server: SlowAirflow) -> AirflowApi:
    return AirflowApi(f"http://127.0.0.1:{server.server_address[1]}", "admin", "unused")


@pytest.mark.parametrize("airflow", [[1.5]], indirect=True)
def test_a_read_that_times_out_is_asked_again_and_answers(airflow, monkeypatch):
    monkeypatch.setattr("demo.airflow_api.time.sleep", lambda _: None)
    run = _api(airflow)._call("GET", "/dags/d/dagRuns/r1", timeout=0.5)
    assert run["state"] == "running"
    assert airflow.requests == ["GET /api/v2/dags/d/dagRuns/r1"] * 2


@pytest.mark.parametrize("airflow", [[1.5] * 10], indirect=True)
def test_a_read_that_never_answers_ends_with_a_clear_error_naming_the_call(airflow, monkeypatch):
    monkeypatch.setattr("demo.airflow_api.time.sleep", lambda _: None)
    with pytest.raises(DemoError, match=r"GET /dags/d/dagRuns/r1 did not answer in 4 tries"):
        _api(airflow)._call("GET", "/dags/d/dagRuns/r1", timeout=0.5)


@pytest.mark.parametrize("airflow", [[1.5]], indirect=True)
def test_a_trigger_that_times_out_is_not_sent_again(airflow):
    """The first POST may have started a run: sending it again would start a second rotation."""
    with pytest.raises(DemoError, match="POST /dags/d/dagRuns did not answer in 1 tries"):
        _api(airflow)._call("POST", "/dags/d/dagRuns", json={}, timeout=0.5)
    time.sleep(1.2)
    assert airflow.requests == ["POST /api/v2/dags/d/dagRuns"]
