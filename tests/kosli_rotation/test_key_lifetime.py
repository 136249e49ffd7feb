"""A key's whole life, piece by piece: the TTL the inventory allows, when a scheduled run is due, and when the daily
staleness check warns before Kosli expires the key (against a real OpenBao and the Kosli sandbox; the check's clock
is its ``now`` input)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import yaml

from kosli_rotation.errors import RunNotNeeded
from kosli_rotation.inventory import KeyEntry, load_inventory
from kosli_rotation.kosli_hook import ApiKey
from kosli_rotation.minting import expiry_for
from kosli_rotation.preflight_checks import due_rule
from kosli_rotation.record import KeyRecord
from kosli_rotation.staleness import DAY, check_key
from kosli_rotation.staleness_expiry import EXPIRY_NOTE, notice_due, remember_notices, warning_thresholds

RECORD = "kosli/acme/ci-bot"
ENTRY = {"name": "ci-bot", "org": "acme", "service_account": "ci-bot", "key_label": "ci", "vault_path": RECORD}


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


# -- key_ttl_days in the inventory --------------------------------------------------------------------------------


def problems(tmp_path, document) -> list[str]:
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump(document))
    inventory = load_inventory(str(path))
    return [problem for broken in inventory.broken for problem in broken.problems]


@pytest.mark.parametrize(
    ("document", "said"),
    [
        ({"keys": [{**ENTRY, "key_ttl_days": 30}]}, "key_ttl_days (30) would kill the key before its next rotation"),
        ({"defaults": {"key_ttl_days": 92}, "keys": [ENTRY]}, "so more than 92 days"),
        ({"keys": [{**ENTRY, "key_ttl_days": 60, "max_age_days": 60}]}, "max_age_days (60)"),
        (
            {"keys": [{**ENTRY, "key_ttl_days": 120, "expiry_lead_days": 120}]},
            "expiry_lead_days (120) must be less than key_ttl_days (120)",
        ),
    ],
    ids=["entry", "defaults", "own-max-age", "lead"],
)
def test_a_ttl_that_kills_the_key_before_its_next_rotation_is_refused_naming_entry_and_field(tmp_path, document, said):
    (problem,) = problems(tmp_path, document)
    assert problem.startswith(f"{tmp_path / 'inventory.yaml'}: keys[0] (ci-bot)")
    assert said in problem


def test_a_ttl_from_the_defaults_is_inherited_and_none_is_the_default(tmp_path):
    path = tmp_path / "inventory.yaml"
    other = {**ENTRY, "name": "other", "service_account": "other", "vault_path": "kosli/acme/other"}
    path.write_text(yaml.safe_dump({"defaults": {"key_ttl_days": 120}, "keys": [ENTRY, other]}))
    assert [entry.key_ttl_days for entry in load_inventory(str(path)).entries] == [120, 120]
    assert KeyEntry.model_validate(ENTRY).key_ttl_days is None
    assert expiry_for(KeyEntry.model_validate(ENTRY)) is None
    assert expiry_for(KeyEntry.model_validate({**ENTRY, "key_ttl_days": 120}), now=1000.0) == 1000 + 120 * 86400


# -- due by age or by expiry ------------------------------------------------------------------------------------


NOW = 1_800_000_000.0


def kosli_says(*, created_days_ago: float = 200, expires_in_days: float | None = None) -> ApiKey:
    expires_at = int(NOW + expires_in_days * DAY) if expires_in_days is not None else 0
    return ApiKey(id="k1", description="ci", created_at=NOW - created_days_ago * DAY, expires_at=expires_at)


def rotated(days_ago: float) -> KeyRecord:
    return KeyRecord(key="x" * 43, key_id="k1", rotated_at=NOW - days_ago * DAY)


def test_a_young_key_whose_expiry_is_within_the_lead_is_due_and_says_so():
    entry = KeyEntry.model_validate(ENTRY)
    key = kosli_says(expires_in_days=10)
    said = due_rule(entry, rotated(days_ago=1), key, NOW)
    assert said == f"Kosli expires the key on {iso(key.expires_at)}, within expiry_lead_days (14)"


def test_an_old_key_is_due_by_its_age():
    entry = KeyEntry.model_validate(ENTRY)
    said = due_rule(entry, rotated(days_ago=91), kosli_says(expires_in_days=100), NOW)
    assert said == "the key is 91.0 days old, past max_age_days (90)"


@pytest.mark.parametrize("expires_in_days", [None, 60, 14.5])
def test_a_young_key_far_from_its_expiry_is_not_due(expires_in_days):
    entry = KeyEntry.model_validate(ENTRY)
    with pytest.raises(RunNotNeeded) as not_due:
        due_rule(entry, rotated(days_ago=1), kosli_says(expires_in_days=expires_in_days), NOW)
    assert "due after 90 days (max_age_days)" in str(not_due.value)
    assert ("before Kosli expires it on" in str(not_due.value)) == (expires_in_days is not None)


def test_a_key_never_rotated_by_the_tool_counts_its_age_from_kosli():
    entry = KeyEntry.model_validate(ENTRY)
    record = KeyRecord(key="x" * 43)
    assert due_rule(entry, record, kosli_says(created_days_ago=95), NOW).startswith("the key is 95.0 days old")
    with pytest.raises(RunNotNeeded):
        due_rule(entry, record, kosli_says(created_days_ago=5), NOW)


# -- the warning thresholds --------------------------------------------------------------------------------------


def test_the_thresholds_are_the_first_warning_then_a_week_then_a_day():
    assert warning_thresholds(30) == (30, 7, 1)
    assert warning_thresholds(5) == (5, 1)
    assert warning_thresholds(1) == (1,)


@pytest.mark.parametrize(
    "note",
    [None, {}, {"key_id": "other", "expires_at": 5, "threshold_days": 1}, {"key_id": "k1", "expires_at": 6}, "junk"],
    ids=["missing", "empty", "another-key", "another-expiry", "not-a-note"],
)
def test_a_missing_or_stale_note_means_announce(note):
    assert notice_due(note, "k1", 5, 30)


def test_a_note_of_this_threshold_or_a_nearer_one_means_quiet():
    note = {"key_id": "k1", "expires_at": 5, "threshold_days": 7}
    assert not notice_due(note, "k1", 5, 7)
    assert not notice_due(note, "k1", 5, 30)
    assert notice_due(note, "k1", 5, 1)
    assert notice_due({**note, "threshold_days": "7"}, "k1", 5, 7), "a note whose threshold is not a number"


@pytest.fixture
def expiring_key(kosli, vault_mount, openbao, monkeypatch):
    """A ci-bot key Kosli expires in 40 days, rotated by the tool just now, in Vault; and its entry."""
    sandbox, admin_key, _ = kosli
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_DEFAULT", json.dumps({"conn_type": "http", "host": sandbox.url, "password": admin_key})
    )
    expires_at = int(time.time() + 40 * DAY)
    key_id, secret = sandbox.create_key("acme", "ci-bot", description="ci", expires_at=expires_at)
    record = {"key": secret, "key_id": key_id, "rotated_at": time.time()}
    openbao.client().secrets.kv.v2.create_or_update_secret(path=RECORD, secret=record, mount_point=vault_mount)
    return KeyEntry.model_validate({**ENTRY, "key_label": None, "vault_mount": vault_mount}), expires_at


def daily_checks(entry: KeyEntry, days: list[float], expires_at: int) -> list[tuple[float, bool, bool]]:
    """The staleness check on each day (days before expiry), as its DAG acts on it: notify when a problem asks
    to, then remember. Returns (days before expiry, failed, notified) per day."""
    outcomes = []
    for days_left in days:
        health = check_key(entry, now=expires_at - days_left * DAY)
        (expiry,) = [finding for finding in health.findings if finding.check == "expiry"]
        notified = any(finding.notify for finding in health.problems)
        if notified:
            remember_notices(health)
        outcomes.append((days_left, expiry.problem, notified))
    return outcomes


def test_the_check_fails_within_the_warning_days_and_notifies_at_30_7_and_1_day_only(expiring_key):
    entry, expires_at = expiring_key
    days = [35, 31, 30, 29.5, 20, 8, 7, 6, 2, 1, 0.5, 0.1]

    outcomes = daily_checks(entry, days, expires_at)

    assert [days_left for days_left, failed, _ in outcomes if failed] == days[2:], "fails every day from 30 days"
    assert [days_left for days_left, _, notified in outcomes if notified] == [30, 7, 1]


def test_a_lost_note_repeats_a_notice_rather_than_silencing_the_next(expiring_key, openbao, vault_mount):
    entry, expires_at = expiring_key
    assert [notified for *_, notified in daily_checks(entry, [20, 19], expires_at)] == [True, False]

    openbao.client().secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"{RECORD}/{EXPIRY_NOTE}", mount_point=vault_mount
    )

    assert [notified for *_, notified in daily_checks(entry, [18, 17, 6], expires_at)] == [True, False, True]


def test_the_warning_names_the_expiry_and_the_rotation_scheduled_before_it(expiring_key):
    entry, expires_at = expiring_key
    health = check_key(entry, now=expires_at - 20 * DAY)
    (expiry,) = [finding for finding in health.findings if finding.check == "expiry"]
    assert f"on {iso(expires_at)} (in 20.0 days" in expiry.message
    due = iso(expires_at - 14 * DAY)
    assert f"A rotation is scheduled before it: {entry.dag_id} is due to rotate the key on {due}" in expiry.message
    assert "(expiry_lead_days)" in expiry.message


def test_while_a_rotate_waits_at_the_gate_the_check_says_the_old_keys_hours_and_the_unproven_consumers(
    kosli, vault_mount, openbao, monkeypatch, tmp_path
):
    from kosli_rotation.fingerprints import digest

    sandbox, admin_key, (key_id, secret) = kosli
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_DEFAULT", json.dumps({"conn_type": "http", "host": sandbox.url, "password": admin_key})
    )
    now = time.time()
    kv = openbao.client().secrets.kv.v2
    record = {
        "key": secret,
        "key_id": key_id,
        "previous_key": "o" * 43,
        "state": "stored",
        "strategy": "rotate",
        "run_id": "manual__1",
        "rotated_at": now,
        "grace_ends_at": now + 5 * 3600,
        "lock_owner": "manual__1",
        "lock_expires_at": now + 3600,
    }
    kv.create_or_update_secret(path=RECORD, secret=record, mount_point=vault_mount)
    proof = {
        "consumer": "reporter-vault",
        "kind": "vault_kv",
        "target": "apps/reporter",
        "verified_digest": digest(secret),
    }
    kv.create_or_update_secret(path=f"{RECORD}/consumers/reporter-vault", secret=proof, mount_point=vault_mount)
    consumers = [
        {"name": "reporter-vault", "kind": "vault_kv", "path": "apps/reporter"},
        {"name": "release-cli", "kind": "kosli_cli_config", "path": str(tmp_path / "config.yml")},
    ]
    entry = KeyEntry.model_validate({**ENTRY, "key_label": None, "vault_mount": vault_mount, "consumers": consumers})

    (grace,) = [finding for finding in check_key(entry, now=now).findings if finding.check == "grace"]
    assert "the old key" in grace.message and "has 5.0 hours left" in grace.message
    assert grace.message.endswith(": release-cli"), "only the consumer without a proof of the new key is named"
    assert not grace.problem

    (ended,) = [finding for finding in check_key(entry, now=now + 6 * 3600).findings if finding.check == "grace"]
    assert "was revoked by Kosli at" in ended.message and ended.problem
