"""The staleness checks against a real OpenBao and the Kosli sandbox: each problem found and named, a healthy
key left alone, and the record's metadata summary read instead of the key whenever it is current."""

from __future__ import annotations

import json
import time

import pytest

from kosli_rotation.fingerprints import digest, fingerprint
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyStore, Phase
from kosli_rotation.staleness import DAY, LOCK_TTL, check_key, read_record

RECORD = "kosli/acme/ci-bot"
CONSUMER_PATH = "apps/reporter"


@pytest.fixture
def key(kosli, vault_mount, openbao, monkeypatch):
    """The ci-bot key of the Kosli sandbox, in Vault as a user seeds it (``bao kv put … key=…``)."""
    sandbox, admin_key, (key_id, secret) = kosli
    connection = {"conn_type": "http", "host": sandbox.url, "password": admin_key}
    monkeypatch.setenv("AIRFLOW_CONN_KOSLI_DEFAULT", json.dumps(connection))
    kv = openbao.client().secrets.kv.v2
    kv.create_or_update_secret(path=RECORD, secret={"key": secret}, mount_point=vault_mount)
    return key_id, secret


@pytest.fixture
def kv(openbao, vault_mount):
    return openbao.client().secrets.kv.v2


def entry_for(tmp_path, **fields) -> KeyEntry:
    return KeyEntry.model_validate(
        {
            "name": "acme-ci-bot",
            "org": "acme",
            "service_account": "ci-bot",
            "key_label": "ci",
            "vault_path": RECORD,
            "consumers": [
                {"name": "reporter-vault", "kind": "vault_kv", "path": CONSUMER_PATH},
                {"name": "release-cli", "kind": "kosli_cli_config", "path": str(tmp_path / "config.yml")},
            ],
            **fields,
        }
    )


def consumers_hold(tmp_path, kv, vault_mount, *, vault: str | None, cli: str | None) -> None:
    if vault is not None:
        kv.create_or_update_secret(path=CONSUMER_PATH, secret={"KOSLI_API_TOKEN": vault}, mount_point=vault_mount)
    (tmp_path / "config.yml").write_text(f"org: acme\napi-token: {cli}\n" if cli else "org: acme\n")


def record_says(**fields) -> None:
    """Change the record the way the tool does: a check-and-set write, then the mirrored summary. Fields are named
    as stored in Vault (``previous_key``), so they are validated rather than copied onto the model."""
    KeyStore(RECORD).update(lambda record: type(record).model_validate({**record.model_dump(by_alias=True), **fields}))


def problems(health) -> dict[str, str]:
    return {finding.check: finding.message for finding in health.problems}


def notes(health) -> dict[str, str]:
    return {finding.check: finding.message for finding in health.findings if not finding.problem}


def test_a_healthy_key_has_no_problem_and_each_check_says_what_is_fine(key, kv, vault_mount, tmp_path):
    _key_id, secret = key
    consumers_hold(tmp_path, kv, vault_mount, vault=secret, cli=secret)

    health = check_key(entry_for(tmp_path))

    assert health.problems == []
    found = notes(health)
    assert "never rotated by this tool" in found["age"] and "due after 90 days" in found["age"]
    assert found["state"] == "no rotation in flight, none failed"
    assert found["consumer reporter-vault"] == f"holds the current key {fingerprint(secret)}"
    assert found["consumer release-cli"] == f"holds the current key {fingerprint(secret)}"
    assert health.facts()["healthy"] is True
    assert secret not in str(health.facts())


def test_a_key_past_its_max_age_is_a_problem_once_its_rotation_dag_had_its_chance(key, kv, vault_mount, tmp_path):
    key_id, secret = key
    consumers_hold(tmp_path, kv, vault_mount, vault=secret, cli=secret)
    entry = entry_for(tmp_path, max_age_days=30)

    record_says(key_id=key_id, rotated_at=time.time() - 30.5 * DAY)
    assert "rotates it at its next daily due check" in notes(check_key(entry))["age"]

    record_says(rotated_at=time.time() - 45 * DAY)
    found = problems(check_key(entry))
    assert list(found) == ["age"]
    assert "45.0 days old" in found["age"] and "past its maximum age of 30 days" in found["age"]
    assert "rotate_kosli_key_acme-ci-bot has not rotated it" in found["age"]


def test_the_age_of_a_never_rotated_key_comes_from_kosli(key, kv, vault_mount, tmp_path):
    _key_id, secret = key
    consumers_hold(tmp_path, kv, vault_mount, vault=secret, cli=secret)

    found = notes(check_key(entry_for(tmp_path)))
    assert "0.0 days old since its creation in Kosli" in found["age"]

    record_says(key_id="0000-not-a-key-of-ci-bot")
    found = problems(check_key(entry_for(tmp_path)))
    assert "Kosli does not list key 0000-not-a-key-of-ci-bot for acme/ci-bot" in found["age"]

    kv.create_or_update_secret(path=RECORD, secret={"key": secret}, mount_point=vault_mount)
    health = check_key(entry_for(tmp_path, key_label=None))
    assert "neither the record nor the inventory names the key" in notes(health)["age"]
    assert health.problems == []


def test_a_failed_rotation_is_a_problem_saying_what_to_do(key, kv, vault_mount, tmp_path):
    key_id, secret = key
    consumers_hold(tmp_path, kv, vault_mount, vault=secret, cli=secret)
    record_says(
        key_id=key_id,
        state=Phase.ROTATING,
        run_id="manual__1",
        rotated_at=time.time(),
        failed_step="rotate_and_store",
        failure="Kosli POST failed with HTTP 500",
        todo="Trigger a new run: it reconciles.",
    )

    found = problems(check_key(entry_for(tmp_path)))

    assert list(found) == ["state"]
    assert found["state"] == (
        "the rotation started by run manual__1 failed at rotate_and_store (phase 'rotating'): Kosli POST failed "
        "with HTTP 500. What to do: Trigger a new run: it reconciles."
    )


def test_a_rotation_whose_lock_expired_long_ago_is_a_problem_but_one_in_progress_is_not(key, kv, vault_mount, tmp_path):
    key_id, secret = key
    consumers_hold(tmp_path, kv, vault_mount, vault=secret, cli=secret)
    entry = entry_for(tmp_path)
    busy = {"key_id": key_id, "state": Phase.ROTATING, "run_id": "manual__2", "rotated_at": time.time()}

    record_says(**busy, lock_owner="rotate_kosli_key_acme-ci-bot/manual__2", lock_expires_at=time.time() + 600)
    health = check_key(entry)
    assert health.problems == []
    assert "a rotation is in flight (run manual__2, phase 'rotating'" in notes(health)["state"]

    record_says(lock_expires_at=time.time() - LOCK_TTL - 60)
    found = problems(check_key(entry))
    assert list(found) == ["state"]
    assert "the run that held it died and nothing resumed it" in found["state"]


def test_a_consumer_holding_another_value_or_nothing_is_a_problem_naming_it(key, kv, vault_mount, tmp_path):
    _key_id, secret = key
    consumers_hold(tmp_path, kv, vault_mount, vault="an-old-key-" + "x" * 32, cli=None)

    found = problems(check_key(entry_for(tmp_path)))

    assert set(found) == {"consumer reporter-vault", "consumer release-cli"}
    assert found["consumer reporter-vault"].startswith(f"holds {fingerprint('an-old-key-' + 'x' * 32)} at Vault KV")
    assert f"not the current key {fingerprint(secret)}" in found["consumer reporter-vault"]
    assert found["consumer release-cli"].startswith("holds no key at")


def test_during_a_rotation_a_consumer_still_on_the_previous_key_is_fine(key, kv, vault_mount, tmp_path):
    key_id, secret = key
    new = "n" * 43
    consumers_hold(tmp_path, kv, vault_mount, vault=new, cli=secret)
    record_says(
        key=new,
        key_id="new-id",
        previous_key=secret,
        previous_key_id=key_id,
        state=Phase.STORED,
        run_id="manual__3",
        rotated_at=time.time(),
        lock_owner="rotate_kosli_key_acme-ci-bot/manual__3",
        lock_expires_at=time.time() + 600,
    )

    health = check_key(entry_for(tmp_path))

    assert health.problems == []
    assert "still holds the previous key" in notes(health)["consumer release-cli"]


def test_write_only_consumers_cannot_be_checked_and_unreadable_ones_are_a_problem(key, kv, vault_mount, tmp_path):
    _key_id, secret = key
    consumers_hold(tmp_path, kv, vault_mount, vault=secret, cli=secret)
    entry = entry_for(
        tmp_path,
        consumers=[
            {"name": "app-actions", "kind": "github_actions", "repository": "acme/app"},
            {"name": "elsewhere", "kind": "vault_kv", "path": CONSUMER_PATH, "conn_id": "vault_nowhere"},
        ],
    )
    KeyStore(RECORD).write_note(
        "consumers/app-actions", {"written_fingerprint": fingerprint(secret), "written_at": "2026-01-01T00:00:00+00:00"}
    )

    health = check_key(entry)

    assert notes(health)["consumer app-actions"] == (
        "write-only (github_actions, proof: write-confirmed only): what it holds cannot be read back, so it cannot "
        f"be checked; the tool last wrote {fingerprint(secret)} there at 2026-01-01T00:00:00+00:00 (the current key)"
    )
    assert "could not be read" in problems(health)["consumer elsewhere"]
    assert "vault_nowhere" in problems(health)["consumer elsewhere"]


def test_a_write_only_consumer_note_is_compared_by_its_digest_when_it_has_one(key, kv, vault_mount, tmp_path):
    """Notes carry ``written_digest`` (compared) beside ``written_fingerprint`` (shown); older notes only the latter."""
    _key_id, secret = key
    old = "an-old-key-" + "x" * 32
    entry = entry_for(tmp_path, consumers=[{"name": "app-actions", "kind": "github_actions", "repository": "acme/app"}])
    store = KeyStore(RECORD)
    wrote = "the tool last wrote {} there at 2026-01-01T00:00:00+00:00 ({})"

    def note_says(**fields) -> str:
        store.write_note("consumers/app-actions", {**fields, "written_at": "2026-01-01T00:00:00+00:00"})
        return notes(check_key(entry))["consumer app-actions"]

    assert note_says(written_digest=digest(secret), written_fingerprint=fingerprint(secret)).endswith(
        wrote.format(fingerprint(secret), "the current key")
    )
    assert note_says(written_digest=digest(old), written_fingerprint=fingerprint(old)).endswith(
        wrote.format(fingerprint(old), "NOT the current key")
    )
    # The digest decides, whatever the (display only) fingerprint beside it says.
    assert note_says(written_digest=digest(old), written_fingerprint=fingerprint(secret)).endswith(
        wrote.format(fingerprint(old), "NOT the current key")
    )
    older_version = note_says(written_fingerprint=fingerprint(old))
    assert older_version.endswith(wrote.format(fingerprint(old), "NOT the current key"))
    assert note_says().endswith("the tool has no record of writing it")


def test_a_missing_record_is_a_problem_saying_how_to_create_it(vault_mount, tmp_path):
    found = problems(check_key(entry_for(tmp_path)))

    assert list(found) == ["record"]
    assert f"{vault_mount}/{RECORD} does not exist" in found["record"]


def test_the_summary_in_metadata_is_read_instead_of_the_key_while_it_is_current(
    key, kv, vault_mount, tmp_path, monkeypatch
):
    key_id, secret = key
    store = KeyStore(RECORD)
    assert read_record(store).source == "record", "a record seeded by hand has no summary yet"

    record_says(key_id=key_id, rotated_at=time.time())
    monkeypatch.setattr(KeyStore, "load", lambda self, **_: pytest.fail("the key was read"))
    view = read_record(store)
    assert (view.source, view.key_id, view.fingerprint, view.state) == ("metadata", key_id, fingerprint(secret), "idle")
    monkeypatch.undo()

    # The record changes but its summary is not mirrored (Vault refused the metadata write): the record is read.
    data = kv.read_secret_version(path=RECORD, mount_point=vault_mount)["data"]["data"]
    kv.create_or_update_secret(path=RECORD, secret={**data, "key": "k" * 43}, mount_point=vault_mount)
    view = read_record(store)
    assert (view.source, view.fingerprint) == ("record", fingerprint("k" * 43))


def test_a_rotation_that_spent_its_retry_budget_is_a_problem_saying_how_to_resume(key, kv, vault_mount, tmp_path):
    key_id, secret = key
    consumers_hold(tmp_path, kv, vault_mount, vault=secret, cli=secret)
    assert "0 failed run(s) of 3 allowed" in notes(check_key(entry_for(tmp_path)))["attention"]
    failed = [
        {"run_id": f"scheduled__{n}", "at": "2026-12-01T02:00:00+00:00", "step": "preflight", "reason": "HTTP 503"}
        for n in range(3)
    ]
    record_says(key_id=key_id, failed_runs=failed, needs_attention_since=time.time() - DAY)

    found = problems(check_key(entry_for(tmp_path)))

    assert "needs attention since" in found["attention"] and "after 3 failed runs" in found["attention"]
    assert "scheduled runs do not try" in found["attention"]
    assert "resume_after_attention set to true" in found["attention"]
