"""The Vault record against a real OpenBao: check-and-set, clear errors, the non-secret summary."""

from __future__ import annotations

import pytest

from kosli_rotation.errors import ConcurrentWriteError, InvalidRequestError, KeyStoreError
from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.key_store import KeyStore, Phase


@pytest.fixture
def store(vault_mount) -> KeyStore:
    return KeyStore("kosli/acme/ci-bot")


@pytest.fixture
def kv(openbao, vault_mount):
    return openbao.client().secrets.kv.v2


def test_a_missing_record_says_where_and_how_to_create_it(store, vault_mount):
    with pytest.raises(KeyStoreError) as error:
        store.load()
    assert f"{vault_mount}/kosli/acme/ci-bot does not exist" in str(error.value)
    assert f"bao kv put -mount={vault_mount} kosli/acme/ci-bot key=" in str(error.value)


def test_a_record_without_a_key_is_malformed(store, kv, vault_mount):
    kv.create_or_update_secret(path="kosli/acme/ci-bot", secret={"token": "x"}, mount_point=vault_mount)
    with pytest.raises(KeyStoreError, match="malformed \\(key\\); it needs at least a 'key' field"):
        store.load()


def test_writes_are_check_and_set(store, kv, vault_mount):
    kv.create_or_update_secret(path="kosli/acme/ci-bot", secret={"key": "a" * 43}, mount_point=vault_mount)
    snapshot = store.load()
    store.save(snapshot.record.model_copy(update={"state": Phase.ROTATING}), snapshot.version)

    with pytest.raises(ConcurrentWriteError, match="changed since version 1"):
        store.save(snapshot.record.model_copy(update={"state": Phase.STORED}), snapshot.version)
    assert store.load().record.state == Phase.ROTATING


def test_update_reapplies_its_change_after_losing_a_race(store, kv, vault_mount):
    kv.create_or_update_secret(path="kosli/acme/ci-bot", secret={"key": "a" * 43}, mount_point=vault_mount)
    calls = []

    def change(record):
        calls.append(record.model_copy())
        if len(calls) == 1:  # another writer gets in between our read and our write
            kv.create_or_update_secret(
                path="kosli/acme/ci-bot", secret={"key": "a" * 43, "note": "other writer"}, mount_point=vault_mount
            )
        return record.model_copy(update={"key_id": "k1"})

    snapshot = store.update(change)
    assert len(calls) == 2 and calls[1].note == "other writer"
    assert snapshot.record.key_id == "k1" and snapshot.record.note == "other writer"


def test_the_metadata_summary_never_holds_the_key(store, kv, vault_mount):
    key = "b" * 43
    kv.create_or_update_secret(path="kosli/acme/ci-bot", secret={"key": key}, mount_point=vault_mount)
    snapshot = store.load()
    store.save(snapshot.record.model_copy(update={"key_id": "k9", "outgoing_key": "c" * 43}), snapshot.version)

    summary = store.read_metadata()
    assert summary["key_id"] == "k9"
    assert summary["fingerprint"] == fingerprint(key)
    assert summary["previous_fingerprint"] == fingerprint("c" * 43)
    assert summary["managed_by"] == "kosli-key-rotation"
    assert not any(key in value or "c" * 43 in value for value in summary.values())


def test_a_token_without_the_policy_is_told_which_policy_it_needs(openbao, vault_mount, monkeypatch):
    client = openbao.client()
    token = client.auth.token.create(policies=["default"], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", openbao.airflow_connection(vault_mount, token=token))

    with pytest.raises(InvalidRequestError, match=r"kosli_rotation\.vault_policy"):
        KeyStore("kosli/acme/ci-bot").load()


def test_a_missing_connection_is_named(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_VAULT_OTHER", raising=False)
    with pytest.raises(InvalidRequestError, match="connection 'vault_other' is not defined"):
        KeyStore("x", conn_id="vault_other").load()


def an_audit_entry(consumers: int) -> dict:
    """An audit entry as finalize writes it, for a key with this many consumers."""
    status = {"state": "verified", "fingerprint": "3f2a9c1e", "verified_at": "2026-12-01T03:25:02Z", "detail": "ok"}
    return {
        "event": "kosli-key-rotated",
        "triggered_by": "admin",
        "reason": "offboarding",
        "consumers": {f"consumer-{i:04d}": dict(status) for i in range(consumers)},
        "history": [f"2026-12-01T03:2{i % 10}:00Z step {i}" for i in range(50)],
    }


def test_an_audit_entry_for_hundreds_of_consumers_is_written_and_read_back_whole(store, kv, vault_mount):
    import hvac.exceptions

    entry = an_audit_entry(300)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="high complexity"):  # OpenBao's JSON limits are real
        kv.create_or_update_secret(path="kosli/acme/ci-bot/audit/raw", secret=entry, mount_point=vault_mount)

    store.write_note("audit/big", entry)

    assert store.read_note("audit/big") == entry
    raw = kv.read_secret_version(path="kosli/acme/ci-bot/audit/big", mount_point=vault_mount)["data"]["data"]
    assert raw["triggered_by"] == "admin" and raw["reason"] == "offboarding", "who and why stay readable in Vault"


def test_a_small_note_is_written_as_it_is(store, kv, vault_mount):
    entry = an_audit_entry(3)
    store.write_note("audit/small", entry)
    raw = kv.read_secret_version(path="kosli/acme/ci-bot/audit/small", mount_point=vault_mount)["data"]["data"]
    assert raw == entry == store.read_note("audit/small")


def test_a_write_once_note_that_exists_is_kept_as_it_is(store, kv, vault_mount):
    """A retried finalize writes its audit entry again: the first one stays, the retry does not fail, and is told
    the entry was sealed before (None) so it can add a supplement instead."""
    first = store.write_note("audit/20261201T000000Z-a1", {"event": "kosli-key-rotated", "try": 1}, once=True)
    again = store.write_note("audit/20261201T000000Z-a1", {"event": "kosli-key-rotated", "try": 2}, once=True)

    assert first == f"{vault_mount}/kosli/acme/ci-bot/audit/20261201T000000Z-a1"
    assert again is None
    assert store.read_note("audit/20261201T000000Z-a1")["try"] == 1


def test_text_bound_for_vault_is_scrubbed_but_the_keys_are_kept(store, kv, vault_mount):
    from kosli_rotation.fingerprints import hold_secret

    secret = hold_secret("s3cret-" + "k" * 40)
    kv.create_or_update_secret(path="kosli/acme/ci-bot", secret={"key": secret}, mount_point=vault_mount)
    snapshot = store.load()
    store.save(snapshot.record.noted(f"remote said: Bearer ghp_{'x' * 36} and {secret}"), snapshot.version)
    store.write_note("consumers/app", {"error": f"echo {secret}"})

    stored = kv.read_secret_version(path="kosli/acme/ci-bot", mount_point=vault_mount)["data"]["data"]
    assert stored["key"] == secret, "the key itself is stored as it is"
    assert secret not in str(stored["history"]) and "ghp_" not in str(stored["history"])
    assert secret not in str(store.read_note("consumers/app"))
