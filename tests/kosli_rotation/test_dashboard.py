"""The Key rotation page's rows, from a real Vault record after real runs (``dag.test()``), and its HTML.

The Airflow API side is read by the browser test against ``airflow standalone`` (tests/browser); here the latest run
is handed in from the test's own metadata database, the way the API would report it. The page reads Vault with a
token of its own metadata-only policy (``page_vault``), and shows a viewer only the keys of the DAGs the auth manager
lets them read.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml

from demo.page_vault import page_vault_token
from kosli_rotation.dashboard import ConsumerState, KeyRow, LatestRun, collect_rows, key_row, render_page
from kosli_rotation.dashboard_access import PageVault, viewer_filter
from kosli_rotation.fingerprints import digest, fingerprint
from kosli_rotation.inventory import Inventory, KeyEntry, load_inventory
from kosli_rotation.key_store import KeyStore

pytestmark = pytest.mark.e2e

PAGE_CONN = "AIRFLOW_CONN_KOSLI_ROTATION_PAGE_VAULT"


def everyone(dag_id: str | None) -> bool:
    return True


@pytest.fixture
def page_vault(openbao, vault_mount, monkeypatch):
    """The page's own connection: a token of the page policy for the inventory in force when it is called."""

    def connect(inventory: Inventory | None = None) -> str:
        token = page_vault_token(openbao.client(), inventory or load_inventory(), vault_mount)
        monkeypatch.setenv(PAGE_CONN, openbao.airflow_connection(vault_mount, token=token))
        return token

    return connect


def reporting(scenario: Any, dag_run: Any):
    """A run reader that reports ``dag_run`` as the DAG's latest run, with its first failed step."""
    states = scenario.task_states(dag_run)
    failed = [task for task, state in states.items() if state == "failed" and task != "any_step_failed"]
    latest = LatestRun(dag_run.run_id, str(dag_run.state), failed[0] if failed else None)
    return lambda dag_id: latest if dag_id == scenario.dag_id else None


def row_of(rows: list[KeyRow], name: str) -> KeyRow:
    return next(row for row in rows if row.name == name)


def test_a_finished_rotation_shows_the_new_key_id_its_age_and_every_consumer_verified(scenario, page_vault):
    run = scenario.run(strategy="replace")
    assert run.state == "success"
    page_vault()

    row = row_of(collect_rows(reporting(scenario, run), may_read=everyone), scenario.name)

    record = scenario.vault_record()
    assert row.state == "ok" and row.phase == "idle" and not row.problems
    assert row.key_id == record["key_id"] != scenario.old_key_id
    assert row.rotated_at and row.next_due == row.rotated_at + 90 * 86400
    assert {c.name: bool(c.verified_at) for c in row.consumers} == {"reporter-vault": True, "release-cli": True}
    page = render_page([row])
    assert f'href="/dags/{scenario.dag_id}"' in page
    assert record["key"] not in page and scenario.old_key not in page, "the page never shows a key"


def test_a_failed_rotation_shows_its_failed_step_what_is_left_and_a_link_to_the_failed_task(scenario, page_vault):
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=500, times=0)
    run = scenario.run(strategy="replace")
    assert run.state == "failed"
    page_vault()

    row = row_of(collect_rows(reporting(scenario, run), may_read=everyone), scenario.name)

    assert row.state == "failed" and row.phase == "stored" and row.failed_step == "revoke_old"
    assert row.todo and "old key" in row.todo
    page = render_page([row])
    assert 'data-state="failed"' in page and "failed at revoke_old" in page
    assert f'href="/dags/{scenario.dag_id}/runs/{run.run_id.replace("+", "%2B").replace(":", "%3A")}' in page
    assert "/tasks/revoke_old" in page
    new_key = scenario.vault_record()["key"]
    assert new_key not in page and scenario.old_key not in page


def test_an_unreadable_record_is_an_error_in_its_row_not_a_broken_page(scenario, page_vault):
    scenario.write_inventory(vault_path="kosli/acme/nobody-stored-this")
    page_vault()

    row = row_of(collect_rows(lambda dag_id: None, may_read=everyone), scenario.name)

    assert row.state == "error" and "nobody-stored-this" in " ".join(row.problems)
    assert 'data-state="error"' in render_page([row])


def test_a_broken_inventory_entry_gets_a_row_naming_the_problem(scenario):
    scenario.write_inventory(grace_hours=9000)

    rows = collect_rows(lambda dag_id: None, may_read=everyone)

    (row,) = rows
    assert row.state == "error" and "grace_hours" in " ".join(row.problems)


def test_each_consumer_says_how_it_is_proven_and_write_confirmed_only_stands_out():
    row = KeyRow(
        name="ci-bot",
        dag_id="rotate_kosli_key_ci-bot",
        consumers=[
            ConsumerState("reporter-vault", "vault_kv", "read back", verified_at="2026-01-01T00:00:00+00:00"),
            ConsumerState("app-actions", "github_actions", "write-confirmed + canary"),
            ConsumerState("<b>ci</b>", "circleci_env", "write-confirmed only"),
        ],
    )

    page = render_page([row], now=0)

    assert '<small class="proof" data-proof="read back">[read back]</small>' in page
    assert '<small class="proof" data-proof="write-confirmed + canary">[write-confirmed + canary]</small>' in page
    assert '<small class="proof weak" data-proof="write-confirmed only">[write-confirmed only]</small>' in page
    assert "&lt;b&gt;ci&lt;/b&gt;" in page and "<b>ci</b>" not in page
    assert "write-confirmed only: the store confirmed the write, nothing proves the value" in page


def test_key_rows_carry_each_consumers_proof_and_prefer_a_verified_digest(
    openbao, vault_mount, tmp_path, monkeypatch, page_vault
):
    secret, other = "k" * 43, "o" * 43
    path = "kosli/acme/dash"
    kv = openbao.client().secrets.kv.v2
    kv.create_or_update_secret(path=path, secret={"key": secret}, mount_point=vault_mount)
    canary = {"workflow": "canary.yml"}
    entry = KeyEntry.model_validate(
        {
            "name": "dash",
            "org": "acme",
            "service_account": "ci-bot",
            "key_label": "ci",
            "vault_path": path,
            "consumers": [
                {"name": "vault", "kind": "vault_kv", "path": "apps/dash"},
                {"name": "actions", "kind": "github_actions", "repository": "acme/app"},
                {"name": "canaried", "kind": "github_actions", "repository": "acme/app", "canary": canary},
            ],
        }
    )
    page_vault(Inventory(tmp_path / "inventory.yaml", entries=[entry]))
    store = KeyStore(path)
    verified = {"verified_at": "2026-01-01T00:00:00+00:00", "verified_fingerprint": fingerprint(secret)}
    store.write_note("consumers/vault", verified)
    store.write_note("consumers/actions", {**verified, "verified_digest": digest(other)})  # the digest decides
    store.write_note("consumers/canaried", {**verified, "verified_digest": digest(secret)})

    def summary(**fields):
        metadata = {"managed_by": "kosli-key-rotation", "state": "idle", "fingerprint": fingerprint(secret), **fields}
        kv.update_metadata(path=path, custom_metadata=metadata, mount_point=vault_mount)
        return key_row(entry, lambda dag_id: None, PageVault())

    row = summary()  # today's summary: only the short fingerprint, so the (display only) fingerprints are compared
    assert [(c.name, c.proof) for c in row.consumers] == [
        ("vault", "read back"),
        ("actions", "write-confirmed only"),
        ("canaried", "write-confirmed + canary"),
    ]
    assert [bool(c.verified_at) for c in row.consumers] == [True, True, True]

    row = summary(digest=digest(secret))  # a summary with the full digest: a note's verified_digest decides
    assert [bool(c.verified_at) for c in row.consumers] == [True, False, True]
    page = render_page([row])
    assert "[write-confirmed only]" in page and secret not in page and digest(secret) not in page


def test_a_rotation_that_spent_its_retry_budget_shows_since_when_and_after_how_many_runs(
    openbao, vault_mount, tmp_path, page_vault
):
    path = "kosli/acme/budget"
    openbao.client().secrets.kv.v2.create_or_update_secret(path=path, secret={"key": "k" * 43}, mount_point=vault_mount)
    entry = KeyEntry.model_validate(
        {"name": "budget", "org": "acme", "service_account": "ci-bot", "key_label": "ci", "vault_path": path}
    )
    page_vault(Inventory(tmp_path / "inventory.yaml", entries=[entry]))
    failed = [
        {"run_id": f"scheduled__{n}", "at": "2026-12-01T02:00:00+00:00", "step": "fan_out", "reason": "403"}
        for n in range(3)
    ]
    since = datetime(2026, 12, 1, 2, 5, tzinfo=UTC).timestamp()
    # The product's own write: the record, then its metadata summary (what the page reads).
    KeyStore(path).update(lambda r: r.model_copy(update={"failed_runs": failed, "needs_attention_since": since}))

    row = key_row(entry, lambda dag_id: None, PageVault())

    assert row.state == "needs attention" and row.failed_runs == 3
    page = render_page([row])
    assert 'data-state="needs attention"' in page
    assert "needs attention since 2026-12-01 02:05 UTC after 3 failed runs" in page
    assert "resume_after_attention" in page


# -- what a viewer may see -------------------------------------------------------------------------------------


def two_keys_and_a_broken_one(tmp_path, monkeypatch) -> None:
    """Keys ``alpha`` and ``beta`` (records nobody stored: their rows say so) and a broken entry ``gamma``."""

    def entry(name: str, **extra: Any) -> dict[str, Any]:
        return {"name": name, "org": "acme", "service_account": f"{name}-bot", "key_label": name,
                "vault_path": f"kosli/acme/{name}", **extra}  # fmt: skip

    document = {"keys": [entry("alpha"), entry("beta"), entry("gamma", grace_hours=9000)]}
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(document))
    monkeypatch.setenv("KOSLI_ROTATION_INVENTORY", str(path))


def simple_user(name: str, role: str | None) -> Any:
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return SimpleAuthManagerUser(username=name, role=role)


def per_dag_manager(monkeypatch, **access: list[str]) -> Any:
    from demo.auth import PerDagAuthManager

    monkeypatch.setenv("AIRFLOW__KOSLI_ROTATION_DEMO__DAG_ACCESS", json.dumps(access))
    return PerDagAuthManager()


def test_rows_are_only_those_of_the_dags_the_viewer_may_read(tmp_path, monkeypatch):
    two_keys_and_a_broken_one(tmp_path, monkeypatch)
    manager = per_dag_manager(monkeypatch, carol=["rotate_kosli_key_beta"], dave=["rotate_kosli_key_gamma"])

    carol = collect_rows(lambda dag_id: None, may_read=viewer_filter(simple_user("carol", "viewer"), manager))
    dave = collect_rows(lambda dag_id: None, may_read=viewer_filter(simple_user("dave", "viewer"), manager))
    admin = collect_rows(lambda dag_id: None, may_read=viewer_filter(simple_user("erin", "viewer"), manager))

    assert [row.name for row in carol] == ["beta"]
    assert [row.name for row in dave] == ["gamma"] and dave[0].state == "error", "a broken entry: its DAG decides"
    assert [row.name for row in admin] == ["alpha", "beta", "gamma"], "a user the mapping does not name: the role"
    page = render_page(carol)
    assert "beta" in page and "alpha" not in page and "gamma" not in page


def test_a_viewer_who_may_read_no_rotation_dag_sees_an_empty_page_that_says_so(tmp_path, monkeypatch):
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    two_keys_and_a_broken_one(tmp_path, monkeypatch)
    nobody = viewer_filter(simple_user("nobody", None), SimpleAuthManager())  # no role: no DAG
    someone = viewer_filter(simple_user("frank", "viewer"), per_dag_manager(monkeypatch, frank=["other_dag"]))

    for may_read in (nobody, someone):
        rows = collect_rows(lambda dag_id: None, may_read=may_read)
        page = render_page(rows)
        assert rows == [] and "data-key" not in page
        assert "no key whose rotation DAG you may read" in page
        assert not {"alpha", "beta", "gamma"} & set(re.findall(r"[a-z]+", page))


def test_an_unreadable_inventory_is_shown_only_to_a_viewer_who_may_read_every_dag(tmp_path, monkeypatch):
    (tmp_path / "inventory.yaml").write_text("keys: [")
    monkeypatch.setenv("KOSLI_ROTATION_INVENTORY", str(tmp_path / "inventory.yaml"))
    manager = per_dag_manager(monkeypatch, carol=["rotate_kosli_key_beta"])

    (row,) = collect_rows(lambda dag_id: None, may_read=viewer_filter(simple_user("erin", "viewer"), manager))
    assert row.state == "error" and "not valid YAML" in " ".join(row.problems)
    assert collect_rows(lambda dag_id: None, may_read=viewer_filter(simple_user("carol", "viewer"), manager)) == []


def test_the_page_reads_vault_through_its_own_connection_never_the_workers(scenario, page_vault, monkeypatch):
    run = scenario.run(strategy="replace")
    assert run.state == "success"
    page_vault()  # a token that can read metadata and consumer notes, and no key
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", scenario.bao.airflow_connection(scenario.mount, "not-a-token"))

    row = row_of(collect_rows(reporting(scenario, run), may_read=everyone), scenario.name)

    assert not row.problems and row.state == "ok" and row.key_id == scenario.vault_record()["key_id"]
    assert all(consumer.verified_at for consumer in row.consumers)


def test_a_missing_page_connection_says_so_in_the_row_instead_of_using_the_workers_token(scenario, monkeypatch):
    run = scenario.run(strategy="replace")
    assert run.state == "success"
    monkeypatch.delenv(PAGE_CONN, raising=False)  # the workers' vault_default (a root token here) is still defined

    row = row_of(collect_rows(reporting(scenario, run), may_read=everyone), scenario.name)

    assert row.key_id is None and row.phase is None and row.state == "error"
    (problem,) = row.problems
    assert "kosli_rotation_page_vault" in problem and "Key rotation page" in problem
    assert "kosli_rotation_page_vault" in render_page([row])


def test_text_from_vault_reaches_the_page_scrubbed(scenario, page_vault):
    from kosli_rotation.scrub import remember

    secret = "s3cr3t-" + "x" * 40
    remember(secret)
    scenario.vault().secrets.kv.v2.update_metadata(
        path=scenario.entry["vault_path"],
        mount_point=scenario.mount,
        custom_metadata={
            "state": "stored",
            "failed_step": "revoke_old",
            "failure": f"Kosli said: {secret}",
            "todo": f"ghp_{'a' * 36} is in the way",
            "key_id": secret,
        },
    )
    page_vault()

    row = row_of(collect_rows(lambda dag_id: None, may_read=everyone), scenario.name)
    page = render_page([row])

    assert row.failed_step == "revoke_old" and "Kosli said" in page
    assert secret not in page and "ghp_" + "a" * 36 not in page


# -- the app: the viewer's token goes only to the configured API --------------------------------------------------


class Listener:
    """A local HTTP server that records every request (path and Authorization) and answers 404."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                listener.requests.append((self.path, self.headers.get("Authorization", "")))
                self.send_response(404)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listeners():
    made: list[Listener] = []
    yield lambda: made.append(Listener()) or made[-1]
    for listener in made:
        listener.close()


def test_a_hostile_host_header_does_not_send_the_viewers_token_elsewhere(airflow_db, listeners, tmp_path, monkeypatch):
    from airflow.api_fastapi.app import create_auth_manager
    from fastapi.testclient import TestClient

    from kosli_rotation.dashboard_app import create_app

    two_keys_and_a_broken_one(tmp_path, monkeypatch)
    api, attacker = listeners(), listeners()
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", api.url)
    token = create_auth_manager().generate_jwt(simple_user("admin", "admin"))

    client = TestClient(create_app())
    response = client.get("/", headers={"Authorization": f"Bearer {token}", "Host": attacker.url[7:]})

    assert response.status_code == 200 and 'data-key="alpha"' in response.text
    assert attacker.requests == [], "the viewer's token went where the Host header pointed"
    assert ("/api/v2/dags/rotate_kosli_key_alpha/dagRuns?order_by=-run_after&limit=1", f"Bearer {token}") in (
        api.requests
    )


def test_without_a_base_url_the_api_is_the_servers_own_host_and_port(monkeypatch):
    from kosli_rotation.dashboard_access import api_base_url

    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    monkeypatch.setenv("AIRFLOW__API__HOST", "0.0.0.0")
    monkeypatch.setenv("AIRFLOW__API__PORT", "9123")
    assert api_base_url() == "http://127.0.0.1:9123"
    monkeypatch.setenv("AIRFLOW__API__HOST", "10.1.2.3")
    assert api_base_url() == "http://10.1.2.3:9123"
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/sub/")
    assert api_base_url() == "https://airflow.example.com/sub"


def test_a_key_with_a_rotation_window_shows_when_its_next_rotation_can_start(monkeypatch):
    from datetime import UTC, datetime

    monkeypatch.delenv(PAGE_CONN, raising=False)
    entry = KeyEntry.model_validate(
        {
            "name": "ci-bot",
            "org": "acme",
            "service_account": "ci-bot",
            "key_label": "ci",
            "vault_path": "kosli/acme/ci-bot",
            "rotation_window": {"days": ["tue", "wed"], "hours": "09:00-16:00", "timezone": "Europe/Oslo"},
            "blackout": ["2026-12-20..2027-01-03"],
        }
    )
    row = key_row(entry, lambda dag_id: None, PageVault())
    # Due on Saturday 2026-12-19; the first allowed moment after it is after the blackout: Tue 2027-01-05 09:00 CET.
    row.rotated_at = datetime(2026, 12, 19, 12, tzinfo=UTC).timestamp() - 90 * 86400
    now = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()

    page = render_page([row], now=now)

    assert "window: tue, wed 09:00-16:00 Europe/Oslo; blackout 2026-12-20..2027-01-03 (Europe/Oslo)" in page
    assert "next opening 2027-01-05 09:00 CET (2027-01-05 08:00 UTC)" in page


def test_a_key_without_window_shows_none_and_an_overdue_windowed_key_its_next_opening_from_now():
    from datetime import UTC, datetime

    from kosli_rotation.lifecycle import LifecycleSettings

    now = datetime(2026, 12, 1, 12, tzinfo=UTC).timestamp()  # a Tuesday, 13:00 in Oslo: inside the window
    plain = KeyRow(name="plain", dag_id="rotate_kosli_key_plain", max_age_days=90, rotated_at=now - 100 * 86400)
    windowed = KeyRow(
        name="windowed",
        dag_id="rotate_kosli_key_windowed",
        max_age_days=90,
        rotated_at=now - 100 * 86400,
        lifecycle=LifecycleSettings.model_validate(
            {"rotation_window": {"days": ["tue"], "hours": "09:00-16:00", "timezone": "Europe/Oslo"}}
        ),
    )

    page = render_page([plain, windowed], now=now)

    assert page.count("window:") == 1
    assert "window open now" in page
