"""Crash matrix (issue 4, §1): SIGKILL the running task at every step boundary, and inside ``rotate_and_store``
between Kosli's answer and the Vault write, for both strategies; then rerun. Every case must end with exactly one
live secret, held in Vault and by every consumer, the old secret dead, no orphaned key in Kosli, and an audit entry
that says what happened.

How a case runs (see ``tests/support/crash.py``): ``airflow dags test`` in a subprocess, a request of the step
under test *held* in the Kosli sandbox or in a proxy in front of OpenBao, SIGKILL of the process group once it is
held, the held request dropped unhandled; then the same run again (same run id: what an Airflow retry or a *Clear*
of the killed run amounts to). Outcomes are read from the sandboxes and Vault, never from the tool's bookkeeping.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sandbox.server import Request
from tests.support.crash import CrashLab, DagProcess, bearer
from tests.support.scenario import ORG, RECORD_PATH, SERVICE_ACCOUNT, Scenario

pytestmark = pytest.mark.e2e

#: Kosli hour (real seconds; rotations ask for a 1 h grace) when the killed task comes after Kosli's rotate and
#: before the grace wait: the old secret must outlive the crash and the rerun's fan-out, then the rerun waits.
OUTLIVES_THE_CRASH = 15.0
#: Kosli hour when no rotate is in flight at the kill (before it, or after the grace wait): the grace only has to
#: outlast one run's fan-out, and passes quickly.
SHORT = 5.0
#: Words of an audit history that tell the rotation was interrupted and how it recovered.
INTERRUPTION_WORDS = ("reconciled", "took over", "interrupted", "resumed", "failed in", "retried")


class AuditSaysNothing(AssertionError):
    """The rotation recovered, but its audit entry does not say it was interrupted."""


Moment = Callable[[DagProcess], bool]


@dataclass(frozen=True)
class KillPoint:
    """Where the task is killed. ``arm`` sets the trap before the run and returns the moment to kill."""

    name: str
    arm: Callable[[CrashLab], Moment]
    kosli_hour: float = OUTLIVES_THE_CRASH  # for 'rotate' ('replace' has no grace period)
    leaves_a_trace: bool = True  # the killed task changed something, so the audit can tell
    #: Killed after the write-once audit entry was sealed: the entry stays as written, a supplement tells the rest.
    after_the_audit: bool = False


def _held(rule) -> Moment:
    return lambda process: rule.fired > 0


def _bearer_is(accept: Callable[[str], bool]) -> Callable[[Request], bool]:
    return lambda request: accept(bearer(request))


def _before_intent(lab: CrashLab) -> Moment:
    return _held(lab.hold_record_write('"state": "rotating"'))


def _before_kosli(lab: CrashLab) -> Moment:
    return _held(lab.hold_kosli(r"/api-keys(/[^/]+/rotate)?$", "POST"))


def _between_kosli_and_vault(lab: CrashLab) -> Moment:
    return _held(lab.hold_record_write('"state": "stored"'))


def _verify_new_key(lab: CrashLab) -> Moment:
    scenario = lab.scenario
    new_key = _bearer_is(lambda key: key not in (scenario.old_key, scenario.admin_key))
    return _held(lab.hold_kosli(rf"/environments/{ORG}$", "GET", when=new_key))


def _fan_out(lab: CrashLab) -> Moment:
    return _held(lab.hold_consumer_write())


def _verify_consumers(lab: CrashLab) -> Moment:
    return _held(lab.hold_vault_write(lab.vault_path("/consumers/reporter-vault"), '"verified_fingerprint"'))


def _gate(lab: CrashLab) -> Moment:
    return _held(lab.hold_record_write('"consumers_verified_at"'))


def _wait_grace(lab: CrashLab) -> Moment:
    """The grace wait does no I/O: kill once the run has deferred to the (inline) trigger and sleeps."""
    since: list[float] = []

    def sleeping(process: DagProcess) -> bool:
        if not since and process.says("running trigger in line"):
            since.append(time.monotonic())
        return bool(since) and time.monotonic() - since[0] > 1.0

    return sleeping


def _before_revocation(lab: CrashLab) -> Moment:
    return _held(lab.hold_kosli(rf"/api-keys/{lab.scenario.old_key_id}$", "DELETE"))


def _revoked_before_vault(lab: CrashLab) -> Moment:
    return _held(lab.hold_record_write('"state": "old_key_revoked"'))


def _confirm_old_key_dead(lab: CrashLab) -> Moment:
    revoked = lab.tap(lab.vault_proxy, lab.vault_path(), "POST", lambda r: b'"state": "old_key_revoked"' in r.body)
    old_key = _bearer_is(lambda key: key == lab.scenario.old_key and revoked.is_set())
    return _held(lab.hold_kosli(rf"/environments/{ORG}$", "GET", when=old_key))


def _before_audit(lab: CrashLab) -> Moment:
    return _held(lab.hold_vault_write(lab.vault_path("/audit/[^/]+"), '"kosli-key-rotated"'))


def _audit_written_before_vault(lab: CrashLab) -> Moment:
    return _held(lab.hold_record_write('"state": "idle"', '"last_finished_run_id"'))


KILL_POINTS = {
    point.name: point
    for point in [
        KillPoint("rotate_and_store: before the intent", _before_intent, SHORT, leaves_a_trace=False),
        KillPoint("rotate_and_store: after the intent, before Kosli", _before_kosli, SHORT),
        KillPoint("rotate_and_store: Kosli answered, before Vault", _between_kosli_and_vault),
        KillPoint("verify_new_key", _verify_new_key),
        KillPoint("consumers.fan_out", _fan_out),
        KillPoint("consumers.verify_consumers", _verify_consumers),
        KillPoint("all_consumers_verified", _gate),
        KillPoint("wait_grace", _wait_grace),
        KillPoint("revoke_old: before the revocation", _before_revocation, SHORT),
        KillPoint("revoke_old: revoked, before Vault", _revoked_before_vault, SHORT),
        KillPoint("confirm_old_key_dead", _confirm_old_key_dead, SHORT),
        KillPoint("finalize: before the audit entry", _before_audit, SHORT),
        KillPoint("finalize: audit written, before Vault", _audit_written_before_vault, SHORT, after_the_audit=True),
    ]
}
#: With rotate, Kosli keeps the key id: nothing is DELETEd (the grace expiry kills the old secret).
ROTATE_ONLY = {"wait_grace"}
REPLACE_ONLY = {"revoke_old: before the revocation"}
CASES = [
    pytest.param(strategy, name, id=f"{strategy}-{name}")
    for strategy in ("rotate", "replace")
    for name in KILL_POINTS
    if name not in (REPLACE_ONLY if strategy == "rotate" else ROTATE_ONLY)
]


@pytest.fixture
def lab(scenario: Scenario, tmp_path, monkeypatch) -> Iterator[CrashLab]:
    crash_lab = CrashLab(scenario, tmp_path)
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", crash_lab.vault_connection)  # the rerun, in this process
    yield crash_lab
    crash_lab.stop()


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def assert_recovered(lab: CrashLab, run) -> dict:
    """The end state every case must reach, seen in Kosli, Vault and the consumers; returns the audit entry."""
    scenario = lab.scenario
    assert run.state == "success", scenario.task_states(run)
    record = scenario.vault_record()
    key = record["key"]
    assert key != scenario.old_key
    assert scenario.live_secrets() == [key], "exactly one live secret, the one in Vault"
    live_ids = {secret["key_id"] for secret in scenario.kosli.live_secrets(ORG, SERVICE_ACCOUNT)}
    assert lab.kosli_key_ids() == sorted(live_ids), "Kosli lists no key without a live secret"
    assert len(live_ids) == 1, "no orphaned key in Kosli"
    assert scenario.consumer_values() == {"reporter-vault": key, "release-cli": key}
    assert scenario.probe(key) == 200
    assert scenario.probe(scenario.old_key) == 401, "the old secret is dead"
    assert "previous_key" not in record, "Vault forgot the dead key"
    audits = scenario.audit_entries()
    sealed = [audit for audit in audits if "supplements" not in audit]
    assert len(sealed) == 1, "one rotation, one audit entry (and at most a supplement from a resumed finalize)"
    assert len(audits) - len(sealed) <= 1
    for audit in audits:
        assert audit["new_key"]["fingerprint"] == fingerprint(key)
        assert audit["old_key"]["fingerprint"] == fingerprint(scenario.old_key)
    return audits[-1]


def assert_audit_tells_the_interruption(audit: dict) -> None:
    if not any(word in event for event in audit["history"] for word in INTERRUPTION_WORDS):
        raise AuditSaysNothing(f"the audit history does not mention the crash: {audit['history']}")


@pytest.mark.parametrize(("strategy", "point_name"), CASES)
def test_a_killed_task_is_recovered_by_rerunning_the_run(lab: CrashLab, scenario: Scenario, strategy, point_name):
    point = KILL_POINTS[point_name]
    scenario.kosli.hour_seconds = point.kosli_hour if strategy == "rotate" else 3600.0
    moment = point.arm(lab)

    killed = lab.run_and_kill(moment, strategy=strategy, grace_hours=1)
    rerun = lab.rerun(killed)

    audit = assert_recovered(lab, rerun)
    if point.after_the_audit:
        sealed, supplement = scenario.audit_entries()
        assert "supplements" not in sealed, "the entry sealed before the kill is kept as it was written"
        assert supplement["supplements"], "the resumed finalize adds a supplement instead of overwriting it"
    if point.leaves_a_trace:
        assert_audit_tells_the_interruption(audit)


def test_a_lost_rotate_that_got_a_new_key_id_is_revoked_on_the_rerun(lab: CrashLab, scenario: Scenario):
    """The other plausible Kosli: the rotated secret gets a new key id, which the killed task never stored."""
    scenario.kosli.rotate_new_id = True
    scenario.kosli.hour_seconds = OUTLIVES_THE_CRASH

    killed = lab.run_and_kill(_between_kosli_and_vault(lab), strategy="rotate", grace_hours=1)
    assert len(lab.kosli_key_ids()) == 2, "Kosli holds a key id nobody has"
    rerun = lab.rerun(killed)

    assert_audit_tells_the_interruption(assert_recovered(lab, rerun))


def expire_the_lock(scenario: Scenario) -> None:
    """What an hour of wall time does to the killed run's lock (LOCK_TTL is a constant of rotation.py)."""
    kv = scenario.vault().secrets.kv.v2
    read = kv.read_secret_version(path=RECORD_PATH, mount_point=scenario.mount, raise_on_deleted_version=True)
    record = {**read["data"]["data"], "lock_expires_at": time.time() - 1}
    kv.create_or_update_secret(
        path=RECORD_PATH, secret=record, cas=read["data"]["metadata"]["version"], mount_point=scenario.mount
    )


@pytest.mark.parametrize(
    ("strategy", "point_name", "secrets_at_the_kill"),
    [
        ("rotate", "rotate_and_store: Kosli answered, before Vault", 2),  # the old one, and one nobody holds
        ("replace", "consumers.fan_out", 2),  # the old one, and the new one in Vault
    ],
)
def test_a_new_run_is_refused_while_the_killed_run_holds_the_lock_and_takes_over_once_it_expires(
    lab: CrashLab, scenario: Scenario, strategy, point_name, secrets_at_the_kill
):
    """The recovery that is not a rerun of the killed run: a new run (``airflow dags test`` again, the next
    scheduled run, a manual trigger). A SIGKILL runs no failure callback, so the lock stays until it expires."""
    scenario.kosli.hour_seconds = 120.0  # the old secret outlives the whole test
    killed = lab.run_and_kill(KILL_POINTS[point_name].arm(lab), strategy=strategy, grace_hours=1)
    at_the_kill = (scenario.vault_record(), scenario.consumer_values(), scenario.live_secrets())
    assert len(at_the_kill[2]) == secrets_at_the_kill

    refused, _ = lab.start(strategy=strategy, grace_hours=1)
    assert refused.wait(180) != 0
    assert refused.says("belongs to") and refused.says("expires by itself"), refused.tail()
    assert (scenario.vault_record(), scenario.consumer_values(), scenario.live_secrets()) == at_the_kill, (
        "the refused run changed nothing"
    )
    held = [key for key in scenario.consumer_values().values() if key]
    assert [scenario.probe(key) for key in [scenario.old_key, *held]] == [200] * (1 + len(held)), (
        "and nothing broke: the old secret and whatever the consumers hold still work"
    )

    expire_the_lock(scenario)
    taken_over = scenario.run(strategy=strategy, grace_hours=1)

    audit = assert_recovered(lab, taken_over)
    # At phase 'rotating' the new run takes over by writing its own intent, and the history tells it through the
    # reconciliation of the killed run's attempt; later, Rotation._own notes the takeover.
    history = "\n".join(audit["history"])
    assert f"by {killed.run_id} stored no key; reconciled" in history or "took over at phase stored" in history
    assert audit["finished_by_run"] == taken_over.run_id != killed.run_id


def test_a_lost_rotate_is_recovered_after_its_grace_period_ended(lab: CrashLab, scenario: Scenario):
    """Kosli rotated, the task died before the Vault write, and nobody reran it within the grace period."""
    scenario.kosli.hour_seconds = 3.0
    killed = lab.run_and_kill(_between_kosli_and_vault(lab), strategy="rotate", grace_hours=1)
    deadline = time.monotonic() + 30
    while scenario.probe(scenario.old_key) != 401:
        assert time.monotonic() < deadline, "the grace period did not end"
        time.sleep(0.5)

    rerun = lab.rerun(killed)

    assert_audit_tells_the_interruption(assert_recovered(lab, rerun))
