"""The retry budget's rules, on records as the steps leave them: what counts, when the budget is spent, what a
scheduled or manual run is told, and when the dying-key rule keeps runs trying (end to end:
tests/e2e/test_retry_budget.py)."""

from __future__ import annotations

import time

import pytest

from kosli_rotation.attention import (
    AttentionRequired,
    admit,
    dying_key,
    refused_by_budget,
    watched_key_expiry,
    with_failed_run,
)
from kosli_rotation.errors import RunNotNeeded
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.kosli_hook import ApiKey
from kosli_rotation.notifications import attention_summary
from kosli_rotation.record import KeyRecord, Phase
from kosli_rotation.run_request import RunRequest

DAY = 86400.0
NOW = time.time()


def entry(**fields) -> KeyEntry:
    return KeyEntry.model_validate(
        {"name": "acme-ci-bot", "org": "acme", "service_account": "ci-bot", "key_id": "k1", "vault_path": "kosli/x"}
        | fields
    )


def stored(strategy: str = "replace", **fields) -> KeyRecord:
    """A rotation that stored its new key k2; the outgoing k1 is kept until it is dead."""
    dies = NOW + 10 * 3600 if strategy == "rotate" else None
    values = {"key": "new", "key_id": "k2", "outgoing_key": "old", "outgoing_key_id": "k1", "state": Phase.STORED}
    return KeyRecord(**values, strategy=strategy, outgoing_dies_by=dies, grace_ends_at=dies, **fields)


def failed_three_times(record: KeyRecord, budget: int = 3) -> KeyRecord:
    for n in range(1, 4):
        record = (
            with_failed_run(
                record,
                run_id=f"run{n}",
                step="all_consumers_verified",
                reason=f"why {n}",
                at=NOW,
                budget=budget,
                watched_key_expires_at=None,
            )
            or record
        )
    return record


def run(*, manual: bool = False, resume: bool = False, dry_run: bool = False) -> RunRequest:
    return RunRequest(
        run_id="run4",
        manual=manual,
        reason="r",
        strategy="replace",
        grace_hours=24,
        dry_run=dry_run,
        resume_after_attention=resume,
    )


def test_each_failed_run_counts_once_and_the_third_spends_the_budget():
    record = stored()
    first = with_failed_run(
        record, run_id="run1", step="fan_out", reason="x", at=NOW, budget=3, watched_key_expires_at=None
    )
    assert first and first.needs_attention_since is None and len(first.failed_runs) == 1
    again = with_failed_run(
        first, run_id="run1", step="revoke_old", reason="y", at=NOW, budget=3, watched_key_expires_at=None
    )
    assert again is None, "a second failed task of the same run is the same failed run"

    spent = failed_three_times(record)

    assert spent.needs_attention_since == NOW
    assert spent.state == Phase.STORED, "the phase is kept: a resume continues from it"
    assert [(r["run_id"], r["step"], r["reason"]) for r in spent.failed_runs] == [
        (f"run{n}", "all_consumers_verified", f"why {n}") for n in (1, 2, 3)
    ]


def test_a_reason_is_kept_on_one_scrubbed_line():
    record = with_failed_run(
        stored(),
        run_id="r",
        step="s",
        reason="line one\nline two with ghp_" + "a" * 36,
        at=NOW,
        budget=3,
        watched_key_expires_at=None,
    )
    assert record
    assert "\n" not in record.failed_runs[0]["reason"] and "ghp_" + "a" * 36 not in record.failed_runs[0]["reason"]


def test_a_finished_rotation_forgets_its_failed_runs():
    spent = failed_three_times(stored())
    finished = spent.model_copy(update={"state": Phase.OLD_KEY_DEAD}).finished("run9", rotated_at=NOW)
    assert finished.failed_runs == [] and finished.needs_attention_since is None


def test_a_scheduled_run_is_skipped_saying_why_and_how_to_resume():
    with pytest.raises(RunNotNeeded) as refused:
        admit(entry(), None, failed_three_times(stored()), run(), dag_id="rotate_x")  # type: ignore[arg-type]
    said = str(refused.value)
    assert "needs attention since" in said and "after 3 failed runs" in said and "why 3" in said
    assert "scheduled runs do not try again" in said and "resume_after_attention set to true" in said


def test_a_manual_run_without_the_parameter_is_refused_and_a_dry_run_does_not_resume():
    spent = failed_three_times(stored())
    with pytest.raises(AttentionRequired, match="This run changed nothing: fix the cause, then trigger rotate_x"):
        admit(entry(), None, spent, run(manual=True), dag_id="rotate_x")  # type: ignore[arg-type]
    kept = admit(entry(), None, spent, run(manual=True, resume=True, dry_run=True), dag_id="x")  # type: ignore[arg-type]
    assert kept.needs_attention_since == spent.needs_attention_since


def test_the_budget_is_not_spent_below_max_failed_attempts():
    record = failed_three_times(stored(), budget=4)
    assert record.needs_attention_since is None
    assert admit(entry(max_failed_attempts=4), None, record, run(), dag_id="x") is record  # type: ignore[arg-type]


def test_a_rotate_whose_consumers_are_not_all_on_the_new_key_is_never_blocked():
    spent = failed_three_times(stored("rotate"))
    reason = dying_key(entry(), spent, NOW)
    assert reason and "the outgoing key k1 dies by itself" in reason
    assert admit(entry(), None, spent, run(), dag_id="x") is spent  # type: ignore[arg-type]
    assert "died by itself" in (dying_key(entry(), spent, NOW + DAY) or ""), "past the grace end: all the more"


def test_once_every_consumer_holds_the_new_key_a_rotate_may_wait():
    spent = failed_three_times(stored("rotate", consumers_verified_at=NOW))
    assert dying_key(entry(), spent, NOW) is None, "no consumer is left on the outgoing key"
    with pytest.raises(RunNotNeeded):
        admit(entry(), None, spent, run(), dag_id="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(("days_left", "dying"), [(5, True), (14, True), (15, False), (60, False)])
def test_a_key_kosli_expires_within_expiry_lead_days_is_never_blocked(days_left, dying):
    spent = failed_three_times(stored()).model_copy(update={"watched_key_expires_at": NOW + days_left * DAY})
    reason = dying_key(entry(expiry_lead_days=14), spent, NOW)
    assert bool(reason) is dying
    if dying:
        assert "Kosli expires the key consumers may still use (k1)" in (reason or "")


def test_the_watched_key_is_the_one_consumers_may_be_on():
    keys = [ApiKey("k1", "old", 0.0, expires_at=int(NOW + DAY)), ApiKey("k2", "new", 0.0, expires_at=0)]
    assert watched_key_expiry(keys, stored(), None) == int(NOW + DAY), "the outgoing key while not all hold k2"
    assert watched_key_expiry(keys, stored(consumers_verified_at=NOW), None) is None
    assert watched_key_expiry(keys, KeyRecord(key="old"), "k1") == int(NOW + DAY), "idle: the key in use"
    assert watched_key_expiry(keys, KeyRecord(key="new", key_id="k2"), None) is None, "k2 never expires"


def test_the_notice_lists_every_failed_run_and_what_to_do():
    spent = failed_three_times(stored())
    facts = {
        "key": "acme/ci-bot",
        "dag_id": "rotate_x",
        "phase": "stored",
        "todo": "The new key k2 is in Vault; the old key k1 still works and is NOT revoked.",
        "needs_attention_since": "2026-12-01T10:00:00+00:00",
        "max_failed_attempts": 3,
        "failed_runs": [*spent.failed_runs[:2], {**spent.failed_runs[2], "reason": "{{ conn.x.password }}"}],
        "keeps_trying": None,
        "resume": "fix the cause, then trigger rotate_x by hand with resume_after_attention set to true",
    }
    subject, body = attention_summary(facts)
    assert subject == "Kosli key rotation needs attention: acme/ci-bot after 3 failed runs"
    assert body.count("at all_consumers_verified:") == 3
    assert "{{ conn.x.password }}" in body, "remote text stays literal"
    assert "Scheduled runs stop trying" in body and "What to do: fix the cause" in body


def test_the_gate_skips_in_a_refused_run_but_never_in_a_rollback():
    spent = failed_three_times(stored())
    with pytest.raises(RunNotNeeded, match="did not resume it"):
        refused_by_budget(entry(), spent, NOW)
    refused_by_budget(entry(), spent.model_copy(update={"operation": "rollback"}), NOW)  # a person's run goes on
    refused_by_budget(entry(), stored(), NOW)
