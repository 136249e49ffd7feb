"""The Key rotation page's rows, from a real Vault record after real runs (``dag.test()``), and its HTML.

The Airflow API side is read by the browser test against ``airflow standalone`` (tests/browser); here the latest run
is handed in from the test's own metadata database, the way the API would report it.
"""

from __future__ import annotations

from typing import Any

import pytest

from kosli_rotation.dashboard import ConsumerState, KeyRow, LatestRun, collect_rows, key_row, render_page
from kosli_rotation.fingerprints import digest, fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyStore

pytestmark = pytest.mark.e2e


def reporting(scenario: Any, dag_run: Any):
    """A run reader that reports ``dag_run`` as the DAG's latest run, with its first failed step."""
    states = scenario.task_states(dag_run)
    failed = [task for task, state in states.items() if state == "failed" and task != "any_step_failed"]
    latest = LatestRun(dag_run.run_id, str(dag_run.state), failed[0] if failed else None)
    return lambda dag_id: latest if dag_id == scenario.dag_id else None


def row_of(rows: list[KeyRow], name: str) -> KeyRow:
    return next(row for row in rows if row.name == name)


def test_a_finished_rotation_shows_the_new_key_id_its_age_and_every_consumer_verified(scenario):
    run = scenario.run(strategy="replace")
    assert run.state == "success"

    row = row_of(collect_rows(reporting(scenario, run)), scenario.name)

    record = scenario.vault_record()
    assert row.state == "ok" and row.phase == "idle" and not row.problems
    assert row.key_id == record["key_id"] != scenario.old_key_id
    assert row.rotated_at and row.next_due == row.rotated_at + 90 * 86400
    assert {c.name: bool(c.verified_at) for c in row.consumers} == {"reporter-vault": True, "release-cli": True}
    page = render_page([row])
    assert f'href="/dags/{scenario.dag_id}"' in page
    assert record["key"] not in page and scenario.old_key not in page, "the page never shows a key"


def test_a_failed_rotation_shows_its_failed_step_what_is_left_and_a_link_to_the_failed_task(scenario):
    scenario.kosli.faults.add(r"/api-keys/[^/]+$", method="DELETE", status=500, times=0)
    run = scenario.run(strategy="replace")
    assert run.state == "failed"

    row = row_of(collect_rows(reporting(scenario, run)), scenario.name)

    assert row.state == "failed" and row.phase == "stored" and row.failed_step == "revoke_old"
    assert row.todo and "old key" in row.todo
    page = render_page([row])
    assert 'data-state="failed"' in page and "failed at revoke_old" in page
    assert f'href="/dags/{scenario.dag_id}/runs/{run.run_id.replace("+", "%2B").replace(":", "%3A")}' in page
    assert "/tasks/revoke_old" in page
    new_key = scenario.vault_record()["key"]
    assert new_key not in page and scenario.old_key not in page


def test_an_unreadable_record_is_an_error_in_its_row_not_a_broken_page(scenario):
    scenario.write_inventory(vault_path="kosli/acme/nobody-stored-this")

    row = row_of(collect_rows(lambda dag_id: None), scenario.name)

    assert row.state == "error" and "nobody-stored-this" in " ".join(row.problems)
    assert 'data-state="error"' in render_page([row])


def test_a_broken_inventory_entry_gets_a_row_naming_the_problem(scenario):
    scenario.write_inventory(grace_hours=9000)

    rows = collect_rows(lambda dag_id: None)

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


def test_key_rows_carry_each_consumers_proof_and_prefer_a_verified_digest(openbao, vault_mount, tmp_path, monkeypatch):
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
    store = KeyStore(path)
    verified = {"verified_at": "2026-01-01T00:00:00+00:00", "verified_fingerprint": fingerprint(secret)}
    store.write_note("consumers/vault", verified)
    store.write_note("consumers/actions", {**verified, "verified_digest": digest(other)})  # the digest decides
    store.write_note("consumers/canaried", {**verified, "verified_digest": digest(secret)})

    def summary(**fields):
        metadata = {"managed_by": "kosli-key-rotation", "state": "idle", "fingerprint": fingerprint(secret), **fields}
        kv.update_metadata(path=path, custom_metadata=metadata, mount_point=vault_mount)
        return key_row(entry, lambda dag_id: None)

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
