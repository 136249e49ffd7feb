"""The two guarantees, attacked the way a bad day would, on the real DAGs (``dag.test()`` or ``airflow dags test``)
against a real OpenBao and the Kosli sandbox:

1. no key Kosli mints is ever lost: it is held by Vault's current record, or parked at
   ``<vault_path>/unclaimed/<attempt>`` until it is revoked;
2. no old key is revoked while a listed consumer still needs it (nor a new key, by a rollback).

Every outcome is read from Vault (hvac), the Kosli sandbox and the consumers directly, never from the tool's
bookkeeping; the run's own account of a failure is read from the record's ``failure`` and the task logs.
Findings named H1-H3, M4, M8, L1 and L4 are those of the adversarial review of commit f4e76f8.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime

import pytest

from kosli_rotation.inventory import load_inventory
from sandbox.forward_proxy import ForwardProxy
from tests.support.attacks import (
    REPORTER_CONN_ID,
    ConsumerVaultToken,
    Prober,
    expire_the_lock,
    failure_text,
    other_deployment,
    parked_keys,
    raw_record,
    reporter_through,
    rollback,
    set_reporter_value,
    tap,
    vault_connection,
    wait_for,
    with_clock_ahead,
)
from tests.support.crash import DagProcess
from tests.support.scenario import CONSUMER_VAULT_PATH, ORG, RECORD_PATH, SERVICE_ACCOUNT

pytestmark = pytest.mark.e2e

DELETE_KEY = r"/api-keys/[^/]+$"


def assert_rotated(scenario, run) -> str:
    """The end state of a finished rotation; returns the key in Vault."""
    assert run.state == "success", scenario.task_states(run)
    key = scenario.vault_record()["key"]
    assert key != scenario.old_key
    assert scenario.probe(key) == 200
    assert scenario.probe(scenario.old_key) == 401
    assert scenario.consumer_values() == {"reporter-vault": key, "release-cli": key}
    return key


@pytest.fixture
def reporter_token(scenario, monkeypatch) -> ConsumerVaultToken:
    """``reporter-vault`` written with its own token (policy on its path only), which its owners can tighten."""
    token = ConsumerVaultToken(scenario)
    monkeypatch.setenv(token.env_var, token.connection())
    reporter_through(scenario, REPORTER_CONN_ID)
    return token


@pytest.fixture
def tool_vault_proxy(scenario, monkeypatch):
    """The tool reaches Vault through a proxy the test can watch (its requests are not changed)."""
    with ForwardProxy(scenario.bao.url) as proxy:
        monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", vault_connection(scenario, url=proxy.url))
        yield proxy


# -- 1. H1: evidence from an earlier run -----------------------------------------------------------------


def test_stale_verification_from_an_earlier_run_does_not_revoke_the_old_key(scenario, reporter_token, caplog):
    """Run 1 verified every consumer, then Kosli refused the revocation. Before run 2 the reporter went back to
    the old key (restored from a backup) and its owners took the tool's write away: run 2 cannot put the new key
    back there, so the old key must live, and the failure must say who needs it."""
    scenario.kosli.hour_seconds = 60.0
    scenario.kosli.faults.add(DELETE_KEY, method="DELETE", status=403, times=0)
    first = scenario.run(strategy="replace")
    assert first.state == "failed" and scenario.task_states(first)["revoke_old"] == "failed"
    new_key = scenario.vault_record()["key"]
    assert scenario.consumer_values() == {"reporter-vault": new_key, "release-cli": new_key}
    scenario.kosli.faults.clear()

    set_reporter_value(scenario, scenario.old_key)
    reporter_token.read_only()
    caplog.clear()

    second = scenario.run(strategy="replace")

    assert second.state == "failed", scenario.task_states(second)
    assert scenario.probe(scenario.old_key) == 200, "the old key was revoked while reporter-vault holds it"
    assert scenario.consumer_values()["reporter-vault"] == scenario.old_key
    assert scenario.probe(new_key) == 200
    assert "reporter-vault" in failure_text(scenario, caplog.text), "the failure names who needs the old key"


# -- 2. H2: the rollback twin ----------------------------------------------------------------------------


def test_a_rollback_that_cannot_restore_a_consumer_does_not_revoke_the_new_key_it_holds(
    scenario, reporter_token, caplog
):
    """Rotation 1 finished: every consumer was verified with K1 (notes say so). Rotation 2 (K2) was left to the
    reporter's team for reporter-vault, so it stopped at the gate; that team then copied K2 in by hand. The
    rollback to K1 cannot write reporter-vault (its owners took the write away): the note from rotation 1 says
    'verified with K1', but reporter-vault holds K2, so K2 must not be revoked."""
    scenario.kosli.hour_seconds = 60.0
    k1 = assert_rotated(scenario, scenario.run(strategy="replace"))
    stopped = scenario.run(strategy="replace", force=True, consumers=["release-cli"])
    assert stopped.state == "failed"
    assert scenario.task_states(stopped)["all_consumers_verified"] == "failed"
    k2 = scenario.vault_record()["key"]
    assert k2 != k1
    assert scenario.consumer_values() == {"reporter-vault": k1, "release-cli": k2}

    set_reporter_value(scenario, k2)  # the reporter's team did what the gate asked
    reporter_token.read_only()
    caplog.clear()

    run = rollback(scenario)

    assert run.state == "failed", scenario.task_states(run)
    assert scenario.consumer_values()["reporter-vault"] == k2
    assert scenario.probe(k2) == 200, "the new key was revoked while reporter-vault holds it"
    assert scenario.probe(k1) == 200
    assert "reporter-vault" in failure_text(scenario, caplog.text)


# -- 3. a consumer drifts back between its verification and the revocation -------------------------------


def test_a_consumer_that_drifts_back_to_the_old_key_after_it_was_verified_keeps_the_old_key_alive(
    scenario, tool_vault_proxy, caplog
):
    """Right after the last consumer is proven to hold the new key, a deploy job puts the old key back into
    reporter-vault (a stale template). revoke_old must read readable consumers live before revoking."""
    scenario.kosli.hour_seconds = 60.0
    verified: set[str] = set()

    def newly_verified(request) -> bool:
        if b"verified" not in request.body or request.path in verified:
            return False
        verified.add(request.path)
        return True

    def drift(_: int) -> None:
        if len(verified) == 2:  # the last consumer's verification is being recorded: it was read a moment ago
            set_reporter_value(scenario, scenario.old_key)

    consumer_notes = rf"^/v1/{scenario.mount}/data/{RECORD_PATH}/consumers/(reporter-vault|release-cli)$"
    tap(tool_vault_proxy, consumer_notes, "POST", when=newly_verified, then=drift)

    run = scenario.run(strategy="replace")

    assert len(verified) == 2, "both consumers were verified with the new key first"
    assert scenario.consumer_values()["reporter-vault"] == scenario.old_key, "the drift happened"
    assert run.state == "failed", scenario.task_states(run)
    assert scenario.probe(scenario.old_key) == 200, "the old key was revoked while reporter-vault holds it again"
    assert "reporter-vault" in failure_text(scenario, caplog.text)


# -- 4. M4: force and recent use ------------------------------------------------------------------------


def test_force_does_not_revoke_an_old_key_something_unlisted_still_uses(scenario, caplog):
    """A job nobody listed keeps using the old key. ``force`` only lifts the 1-hour minimum interval; only
    ``revoke_despite_recent_use`` revokes an old key used after every consumer was verified."""
    scenario.kosli.hour_seconds = 60.0
    scenario.write_inventory(usage_observation_seconds=3)

    with Prober(scenario, scenario.old_key) as unlisted_job:
        refused = scenario.run(strategy="replace", force=True)

        assert refused.state == "failed", scenario.task_states(refused)
        assert unlisted_job.uses > 0
        assert scenario.probe(scenario.old_key) == 200, "force revoked an old key in use"
        told = failure_text(scenario, caplog.text)
        assert "revoke_despite_recent_use" in told, told[-2000:]

        accepted = scenario.run(strategy="replace", revoke_despite_recent_use=True)

        first_key = assert_rotated(scenario, accepted)

    # force on its own still rotates again within the hour (and nothing uses the old key now).
    forced = scenario.run(strategy="replace", force=True)
    assert assert_rotated(scenario, forced) != first_key
    assert scenario.live_secrets() == [scenario.vault_record()["key"]]


# -- 5. M8: a lost rotate and its deadline ---------------------------------------------------------------


def test_a_lost_rotate_records_and_announces_when_the_old_key_dies(scenario, webhook):
    """Kosli committed the rotate (the old secret now dies at the grace end), the answer was lost: the record and
    the notice must say when the old key dies, no later than the intent time plus the grace period."""
    scenario.kosli.hour_seconds = 3600.0  # a real hour
    scenario.write_inventory(notify=[{"kind": "webhook", "conn_id": "rotation_webhook", "endpoint": "/hooks/kosli"}])
    scenario.kosli.faults.add(r"/api-keys/[^/]+/rotate$", method="POST", action="drop_after_commit")
    before = time.time()

    run = scenario.run(strategy="rotate", grace_hours=1)

    assert run.state == "failed"
    assert scenario.task_states(run)["rotate_and_store"] == "failed"
    assert scenario.probe(scenario.old_key) == 200, "the old key still works, for now"
    (previous,) = [s for s in scenario.kosli.live_secrets(ORG, SERVICE_ACCOUNT) if s["role"] == "previous"]
    record = scenario.vault_record()
    metadata = scenario.vault_metadata()
    assert "old_key_dies_at" in metadata, metadata
    dies_at = datetime.fromisoformat(metadata["old_key_dies_at"]).timestamp()
    assert before < dies_at <= record["started_at"] + 3600 + 1, "no later than the intent time + grace_hours"
    assert dies_at <= previous["valid_until"], "never later than Kosli really kills it"
    (event,) = webhook.received
    assert event["failed_step"] == "rotate_and_store"
    assert event["old_key_dies_at"], event
    assert event["hours_left"] is not None and 0 < event["hours_left"] <= 1, event


# -- 6. L1: reconciliation beside a human's key with the same label --------------------------------------


def test_reconciliation_revokes_the_lost_key_but_not_a_humans_key_with_the_same_label(scenario):
    scenario.kosli.hour_seconds = 60.0
    scenario.kosli.faults.add(r"/api-keys$", method="POST", action="drop_after_commit")
    failed = scenario.run(strategy="replace")
    assert failed.state == "failed" and scenario.task_states(failed)["rotate_and_store"] == "failed"
    (orphan,) = [secret for secret in scenario.live_secrets() if secret != scenario.old_key]

    # Meanwhile someone makes a key by hand on the same service account, labelled like the old one, and uses it.
    _, human_key = scenario.kosli.create_key(ORG, SERVICE_ACCOUNT, description="ci")
    assert scenario.probe(human_key) == 200

    resumed = scenario.run(strategy="replace")

    new_key = assert_rotated(scenario, resumed)
    assert scenario.probe(human_key) == 200, "the reconciliation revoked a key it did not mint"
    assert scenario.probe(orphan) == 401, "the key the lost attempt minted is revoked"
    assert scenario.live_secrets() == sorted([new_key, human_key])


# -- 7. H3: two live attempts ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lock_ttl_seconds", "vault_retry_seconds"),
    [(60, 3600), (720, 600), (125, 5)],
    ids=["review-example", "default-retry", "at-the-limit"],
)
def test_the_inventory_refuses_a_lock_that_can_expire_while_a_minted_key_is_being_stored(
    scenario, lock_ttl_seconds, vault_retry_seconds
):
    """lock_ttl_seconds must be > vault_retry_seconds + 120: else a live attempt holding a just-minted key can lose
    its lock to another run while it still retries Vault."""
    path = scenario.write_inventory(lock_ttl_seconds=lock_ttl_seconds, vault_retry_seconds=vault_retry_seconds)
    scenario.kosli.reset_stats()

    inventory = load_inventory(path)

    assert not inventory.entries
    (broken,) = inventory.broken
    problems = " ".join(broken.problems)
    assert "lock_ttl_seconds" in problems and "vault_retry_seconds" in problems, problems
    run = scenario.run(strategy="replace")
    assert run.state == "failed"
    assert scenario.kosli.stats()["total_requests"] == 0, "nothing is asked of Kosli"

    scenario.write_inventory(lock_ttl_seconds=vault_retry_seconds + 121)
    assert [entry.name for entry in load_inventory(path).entries] == [scenario.name]


def test_an_attempt_that_stored_its_key_after_losing_the_lock_never_overwrites_the_live_key(scenario, tmp_path):
    """Attempt A (another deployment) minted K_A and keeps retrying Vault, which it cannot reach. Its process
    stalls past its lock's life; B takes over and finishes the rotation with K_B. Then A's write gets through.
    Vault must still hold K_B, and K_A must be parked at unclaimed/<A's attempt> or revoked: no live Kosli secret
    outside Vault."""
    scenario.kosli.hour_seconds = 60.0
    scenario.write_inventory(lock_ttl_seconds=900, vault_retry_seconds=600)
    with ForwardProxy(scenario.bao.url) as a_vault:
        minted = tap(scenario.kosli, r"/api-keys$", "POST")
        cut_off = a_vault.faults.add(
            rf"^/v1/{scenario.mount}/data/{RECORD_PATH}$", status=503, times=0, when=lambda _: minted.seen.is_set()
        )
        env = other_deployment(
            tmp_path / "deployment-a", AIRFLOW_CONN_VAULT_DEFAULT=vault_connection(scenario, url=a_vault.url)
        )
        a = DagProcess(scenario.dag_id, {"reason": "attempt A", "strategy": "replace"}, env, tmp_path / "a.log")
        try:
            wait_for(lambda: cut_off.fired > 0 or not a.alive, 180, "A to mint its key and retry Vault")
            assert a.alive, a.tail()
            intent, _ = raw_record(scenario)
            assert intent["state"] == "rotating", intent
            a_attempt = intent["attempt"]
            (a_key,) = [secret for secret in scenario.live_secrets() if secret != scenario.old_key]

            expire_the_lock(scenario)  # A is stalled (a frozen VM): its lock runs out
            b = scenario.run(strategy="replace", reason="attempt B")
            assert b.state == "success", scenario.task_states(b)
            b_key = scenario.vault_record()["key"]
            assert b_key not in (scenario.old_key, a_key)

            a_vault.faults.clear()  # A wakes up: its Vault write gets through
            a.wait(240)
        finally:
            if a.alive:
                a.kill()

    record, _ = raw_record(scenario)
    assert record["key"] == b_key, "A's key replaced the live key in Vault's current record"
    assert scenario.probe(b_key) == 200
    assert scenario.consumer_values() == {"reporter-vault": b_key, "release-cli": b_key}
    parked = parked_keys(scenario)
    held = {b_key} | {entry["key"] for entry in parked.values()}
    assert set(scenario.live_secrets()) <= held, "a live Kosli secret nobody holds"
    assert scenario.probe(a_key) == 401 or parked.get(a_attempt, {}).get("key") == a_key, (
        "A's key is neither revoked nor parked at unclaimed/<A's attempt>"
    )


# -- 8. L4: a lock must outlive a long step --------------------------------------------------------------


@pytest.fixture
def slow_reporter_for_a(scenario, monkeypatch):
    """Attempt A writes reporter-vault through a proxy that holds the write (a slow, overloaded Vault), with a
    client timeout long enough to wait for it; this process writes it directly."""
    monkeypatch.setenv(f"AIRFLOW_CONN_{REPORTER_CONN_ID.upper()}", vault_connection(scenario))
    reporter_through(scenario, REPORTER_CONN_ID)
    with ForwardProxy(scenario.bao.url, timeout=600) as proxy:
        write = proxy.faults.add(
            rf"^/v1/{scenario.mount}/data/{CONSUMER_VAULT_PATH}$", method="POST", action="hold", hold_timeout=500
        )
        yield vault_connection(scenario, url=proxy.url, timeout=600), write


def _a_run_held_in_fan_out(scenario, tmp_path, a_connection, held_write):
    """Start attempt A (another deployment) and wait until its write of reporter-vault is held, mid fan-out;
    returns A, its lock owner name and the record at that moment."""
    env = other_deployment(tmp_path / "deployment-a", **{f"AIRFLOW_CONN_{REPORTER_CONN_ID.upper()}": a_connection})
    a = DagProcess(scenario.dag_id, {"reason": "attempt A", "strategy": "replace"}, env, tmp_path / "a.log")
    assert held_write.wait_held(timeout=180), a.tail()
    record, _ = raw_record(scenario)
    assert record["state"] == "stored", record
    return a, f"{scenario.dag_id}/{record['run_id']}", record


def _a_finishes_alone(scenario, a, held_write) -> None:
    """Once its held write goes through, A (the lock's owner all along) finishes the rotation by itself: one live key,
    held by Vault and both consumers."""
    held_write.release(run_handler=True)
    assert a.wait(240) == 0, a.tail()
    key = scenario.vault_record()["key"]
    assert scenario.live_secrets() == [key]
    assert scenario.consumer_values() == {"reporter-vault": key, "release-cli": key}


def test_a_step_longer_than_the_lock_keeps_its_lock(scenario, slow_reporter_for_a, tmp_path, caplog, capfd):
    """A's fan-out takes longer than lock_ttl_seconds; a run started meanwhile must be refused, naming A, rather
    than take over a rotation whose owner is alive and writing."""
    scenario.kosli.hour_seconds = 60.0
    # A's held write is answered by a dropped connection (it happened; A never hears): one retry reads it back.
    scenario.write_inventory(lock_ttl_seconds=130, vault_retry_seconds=5, retries=1, retry_delay_seconds=1)
    a_connection, held_write = slow_reporter_for_a
    a, a_owner, record = _a_run_held_in_fan_out(scenario, tmp_path, a_connection, held_write)
    try:
        first_expiry = record["lock_expires_at"]
        wait_for(lambda: time.time() > first_expiry + 3, 200, "the lock to outlive its first TTL", poll=1)
        assert a.alive, a.tail()
        before = (scenario.vault_record()["key"], scenario.live_secrets())
        caplog.clear()
        capfd.readouterr()

        b = scenario.run(strategy="replace", reason="run B, while A writes")

        states = scenario.task_states(b)
        assert states["preflight"] in ("failed", "skipped"), f"B took over a rotation A owns: {states}"
        said = caplog.text + capfd.readouterr().out  # Airflow's logging may go to either, depending on test order
        assert a_owner in said, "B's refusal names the owner of the rotation"
        assert (scenario.vault_record()["key"], scenario.live_secrets()) == before, "B changed nothing"
        _a_finishes_alone(scenario, a, held_write)
    finally:
        held_write.release(run_handler=True)
        if a.alive:
            a.kill()
    assert scenario.probe(scenario.old_key) == 401


# -- 9. clock skew between workers -----------------------------------------------------------------------


def test_a_worker_whose_clock_is_ahead_does_not_take_over_a_live_lock(scenario, slow_reporter_for_a, tmp_path):
    """A holds the lock (default TTL, 1 h) and is writing a consumer. B runs on a worker whose clock is 2 h ahead:
    by its clock A's lock expired long ago. Lock expiry is judged on Vault's clock: B is refused, naming A."""
    scenario.kosli.hour_seconds = 60.0
    scenario.write_inventory(retries=1, retry_delay_seconds=1)  # A's held write is answered by a dropped connection
    a_connection, held_write = slow_reporter_for_a
    b_env = with_clock_ahead(other_deployment(tmp_path / "deployment-b"), "+2h")
    ahead = subprocess.run(
        [sys.executable, "-c", "import time; print(time.time())"], env=b_env, capture_output=True, text=True, check=True
    )
    assert 7100 < float(ahead.stdout) - time.time() < 7300, "libfaketime does not move B's clock"
    a, a_owner, _ = _a_run_held_in_fan_out(scenario, tmp_path, a_connection, held_write)
    try:
        before = (scenario.vault_record()["key"], scenario.live_secrets())
        consumers_before = scenario.consumer_values()
        conf = {"reason": "run B, clock ahead", "strategy": "replace"}
        b = DagProcess(scenario.dag_id, conf, b_env, tmp_path / "b.log")
        b_exit = b.wait(240)

        assert b_exit != 0, f"B finished a rotation A owns:\n{b.tail()}"
        assert b.says(a_owner), f"B's refusal names the owner of the rotation:\n{b.tail()}"
        assert (scenario.vault_record()["key"], scenario.live_secrets()) == before, "B changed nothing"
        assert scenario.consumer_values() == consumers_before, "B wrote nothing"
        _a_finishes_alone(scenario, a, held_write)
    finally:
        held_write.release(run_handler=True)
        if a.alive:
            a.kill()
