"""The Key rotation page in a real browser: headless Chromium against the demo's running ``airflow standalone``.

The demo rotates both keys (one per strategy); the test then makes one key's latest run fail (a manual run without a
reason stops in preflight), logs in through Airflow's login form, opens the page from the UI's navigation and checks
the rows and states it set up. A screenshot goes to test-output/browser/ for the test report. A viewer who may read
only one key's DAGs (the demo's ``--restricted-port`` API server, with its per-DAG auth manager) sees only that key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from demo.airflow_api import AirflowApi
from demo.services import ADMIN_USER, RESTRICTED_KEY, RESTRICTED_USER
from tests.demo.test_demo import DAG_IDS, REPO, demo_environment
from tests.support.browser import Chromium, chromium_available
from tests.support.services import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

SCREENSHOT = REPO / "test-output" / "browser" / "key-rotation-page.png"
READY_LINE = "Everything keeps running"
FAILING_KEY, ROTATED_KEY = "acme-ci-bot", "acme-reporter-bot"
#: What a Kosli key looks like in the sandbox (URL-safe base64 of 32 bytes): never on the page.
KEY_LOOKING = re.compile(r"[A-Za-z0-9_-]{40,}")
ROWS = "[...frame().querySelectorAll('tr[data-key]')]"
FRAME = "const frame = () => document.querySelector('iframe').contentDocument;"


@dataclass
class RunningDemo:
    url: str
    password: str
    output: list[str]
    restricted_url: str
    restricted_password: str


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDemo]:
    if not chromium_available():
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing: `make chromium` installs Debian's package")
        pytest.skip("Chromium is not installed (`make chromium` installs it)")
    state, port, restricted_port = tmp_path_factory.mktemp("demo-state"), free_port(), free_port()
    command = [sys.executable, "-m", "demo", "--state-dir", str(state), "--port", str(port), "--timeout", "600"]
    command += ["--restricted-port", str(restricted_port)]
    process = subprocess.Popen(
        command, cwd=REPO, env=demo_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout:  # type: ignore[union-attr]
            output.append(line)
            if READY_LINE in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + 900
        while not ready.wait(2):
            assert process.poll() is None and time.monotonic() < deadline, "the demo did not get ready:\n" + "".join(
                output[-60:]
            )
        passwords = json.loads((state / "airflow" / "passwords.json").read_text())
        yield RunningDemo(
            f"http://127.0.0.1:{port}",
            passwords[ADMIN_USER],
            output,
            f"http://127.0.0.1:{restricted_port}",
            passwords[RESTRICTED_USER],
        )
    finally:
        process.terminate()  # the demo stops what it started on SIGTERM
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()


def fail_the_latest_run(demo: RunningDemo, dag_id: str) -> str:
    """A manual run without a reason: preflight refuses it, so the key's latest run is failed at preflight."""
    api = AirflowApi(demo.url, ADMIN_USER, demo.password)
    api.log_in()
    run_id = api.trigger(dag_id, {"reason": None})
    deadline = time.monotonic() + 300
    while api.dag_run(dag_id, run_id)["state"] not in ("success", "failed"):
        assert time.monotonic() < deadline, f"{dag_id} run {run_id} did not finish"
        time.sleep(2)
    assert api.dag_run(dag_id, run_id)["state"] == "failed"
    return run_id


def test_the_page_refuses_a_visitor_who_is_not_logged_in(demo: RunningDemo) -> None:
    response = requests.get(f"{demo.url}/kosli-rotation/", timeout=30)

    assert response.status_code == 401
    assert "data-key" not in response.text


def test_after_login_the_page_shows_every_key_its_state_and_a_link_to_the_failed_task(demo: RunningDemo) -> None:
    assert f"rotate_kosli_key_{FAILING_KEY}" in DAG_IDS
    failed_run = fail_the_latest_run(demo, f"rotate_kosli_key_{FAILING_KEY}")

    with Chromium() as browser:
        browser.log_in_to_airflow(demo.url, ADMIN_USER, demo.password)
        browser.open(f"{demo.url}/plugin/key-rotation")
        rows = browser.wait_for(
            f"(() => {{ {FRAME} const rows = {ROWS}; return rows.length >= 2 && "
            "Object.fromEntries(rows.map(r => [r.dataset.key, r.dataset.state])) })()",
            what="the Key rotation page's rows",
        )
        failed_links = browser.evaluate(
            f"(() => {{ {FRAME} return [...frame().querySelectorAll('tr[data-key={FAILING_KEY}] a')]"
            ".map(a => a.getAttribute('href')) })()"
        )
        text = browser.evaluate(f"(() => {{ {FRAME} return frame().body.innerText }})()")
        nav = browser.evaluate("document.body.innerText")
        time.sleep(1)  # let the page settle for the picture
        browser.screenshot(SCREENSHOT)

    assert rows == {FAILING_KEY: "failed", ROTATED_KEY: "ok"}
    task_link = f"/dags/rotate_kosli_key_{FAILING_KEY}/runs/{requests.utils.quote(failed_run, safe='')}/tasks/preflight"
    assert task_link in failed_links, failed_links
    assert f"/dags/rotate_kosli_key_{ROTATED_KEY}" in text or ROTATED_KEY in text
    assert "Key rotation" in nav, "the page is in the UI's navigation"
    assert "sha256:" in text, "keys are shown by fingerprint"
    assert not KEY_LOOKING.findall(text), "something that looks like a key is on the page"
    assert SCREENSHOT.stat().st_size > 10_000


def test_a_viewer_who_may_read_one_keys_dags_sees_only_that_key(demo: RunningDemo) -> None:
    assert RESTRICTED_KEY == ROTATED_KEY
    token = requests.post(
        f"{demo.restricted_url}/auth/token",
        json={"username": RESTRICTED_USER, "password": demo.restricted_password},
        timeout=30,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    for key, status in ((FAILING_KEY, 403), (ROTATED_KEY, 200)):
        url = f"{demo.restricted_url}/api/v2/dags/rotate_kosli_key_{key}"
        response = requests.get(url, headers=headers, timeout=30)
        assert response.status_code == status, f"the auth manager is per DAG: {key} {response.status_code}"

    with Chromium() as browser:
        browser.log_in_to_airflow(demo.restricted_url, RESTRICTED_USER, demo.restricted_password)
        browser.open(f"{demo.restricted_url}/plugin/key-rotation")
        rows = browser.wait_for(
            f"(() => {{ {FRAME} const rows = {ROWS}; return rows.length >= 1 && "
            "Object.fromEntries(rows.map(r => [r.dataset.key, r.dataset.state])) })()",
            what="the restricted viewer's rows",
        )
        time.sleep(2)  # nothing more arrives: the page is rendered on the server, whole
        rows = browser.evaluate(
            f"(() => {{ {FRAME} return Object.fromEntries({ROWS}.map(r => [r.dataset.key, r.dataset.state])) }})()"
        )
        html = browser.evaluate(f"(() => {{ {FRAME} return frame().documentElement.outerHTML }})()")
        text = browser.evaluate(f"(() => {{ {FRAME} return frame().body.innerText }})()")

    assert rows == {ROTATED_KEY: "ok"}
    assert FAILING_KEY not in html and "ci-bot" not in html, "nothing of a key whose DAGs the viewer may not read"
    assert "sha256:" in text, "the row was read through the page's own Vault connection"
    assert not KEY_LOOKING.findall(text)
