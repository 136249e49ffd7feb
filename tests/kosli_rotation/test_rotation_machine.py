"""A stateful property test of the rotation: hypothesis drives runs of the real steps through kills, failures and
a hostile world, and after every move checks what must always hold (see the invariants at the end).

The machine calls the steps of ``Rotation`` as Airflow's tasks would, one run (``RunRequest``) per DAG run, in the
DAG's order (``step_plan``). What Airflow adds is modelled here: a step that fails for good gets the failure
callback (``record_failure``) unless its worker was killed; a consumer batch fails alone, without a callback, and the
gate after the batches still runs; a skipped step (``RunNotNeeded``) skips the rest of the run; *Clear* reruns a
failed task and what follows it under the same run id; a hung worker whose heartbeats stop is failed by the scheduler
while its process, still alive, carries on later.

Each example gets a fresh world (``tests.support.machine_world``): a KV mount on the session's OpenBao reached through
a proxy, a Kosli sandbox, a vault_kv consumer and a Kosli CLI config file. ``make test`` runs a bounded number of
examples; ``KOSLI_MACHINE_EXAMPLES`` (``make machine-soak``: 1000) and ``KOSLI_MACHINE_STEPS`` raise it.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Verbosity, event, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.support.machine_world import (
    CONSUMERS,
    GRACE_HOURS,
    HOUR_SECONDS,
    Snapshot,
    Step,
    World,
    step_name,
    step_plan,
)

EXAMPLES = int(os.environ.get("KOSLI_MACHINE_EXAMPLES", "25"))
STEPS = int(os.environ.get("KOSLI_MACHINE_STEPS", "15"))
#: KOSLI_MACHINE_VERBOSE=1 (with pytest -s) prints every example's rules as they run.
VERBOSITY = Verbosity.verbose if os.environ.get("KOSLI_MACHINE_VERBOSE") else Verbosity.normal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(max(600, EXAMPLES * 60))]

#: Which of the runs still going a rule acts on (modulo their number): small, so hypothesis shrinks it to 0.
PICK = st.integers(0, 3)
#: How many steps a rule first runs without faults: a whole rotation is a dozen steps.
STEPS_BEFORE = st.integers(0, 10)


def _fp(secret: str | None) -> str:
    from kosli_rotation.fingerprints import fingerprint

    return fingerprint(secret) if secret else "nothing"


@dataclass
class Attempt:
    """One DAG run, as far as Airflow is concerned."""

    request: Any
    position: int = 0  # the next task to run, an index into the plan
    state: str = "running"  # running | failed | killed | skipped | done
    failed_at: int | None = None  # the first task that failed in this pass: where a Clear starts again

    @property
    def run_id(self) -> str:
        return self.request.run_id

    def failed(self, position: int) -> None:
        self.failed_at = position if self.failed_at is None else min(self.failed_at, position)


@dataclass
class Hung:
    """A worker stuck in the write that stores its just-minted key (the proxy holds the request)."""

    attempt: Attempt
    thread: threading.Thread
    rule: Any
    switch: Any
    outcome: dict[str, Any] = field(default_factory=dict)


def run_request(run_id: str, strategy: str, force: bool) -> Any:
    from kosli_rotation.rotation import RunRequest

    values: dict[str, Any] = {
        "run_id": run_id,
        "manual": True,
        "reason": "property test of the rotation state machine",
        "strategy": strategy,
        "grace_hours": GRACE_HOURS,
        "force": force,
        "dry_run": False,
    }
    if "revoke_despite_recent_use" in {f.name for f in dataclasses.fields(RunRequest)}:
        values["revoke_despite_recent_use"] = False
    return RunRequest(**values)


class RotationMachine(RuleBasedStateMachine):
    def __init__(self, bao: Any, root: Path) -> None:
        super().__init__()
        from kosli_rotation.inventory import KeyEntry

        self.world = World(bao, Path(tempfile.mkdtemp(dir=root))).start()
        try:
            self.entry = KeyEntry.model_validate(self.world.entry_document(set(KeyEntry.model_fields)))
        except Exception:
            self.world.stop()
            raise
        self.plan: list[Step] = step_plan(self.entry.consumer_batches)
        self.attempts: list[Attempt] = []
        self.broken: set[str] = set()
        self.hung: Hung | None = None
        # A step that sent a mint POST and did not complete (failed, killed): the key Kosli may have minted is held
        # by nobody until a later rotate_and_store (or finalize) completes, which must have reconciled it.
        self.mint_unsettled = False
        self.seen: dict[str, dict[str, Any]] = {}  # every secret ever seen live -> its last live_secrets() item
        self.death: dict[str, str] = {}  # secret -> "expired" (Kosli's grace end) or "revoked" (by a call)
        self.held_before: dict[str, list[str]] = {name: [] for name in CONSUMERS}  # earlier values, oldest first
        self._start("replace", force=False)

    def teardown(self) -> None:
        furthest = max((a.position for a in self.attempts), default=0)
        event(f"furthest task reached: {step_name(self.plan[min(furthest, len(self.plan) - 1)])}")
        try:
            if self.hung is not None:
                self.hung.rule.release()
                self.hung.thread.join(60)
        finally:
            self.world.stop()

    # -- running steps like Airflow ---------------------------------------------------------------

    def _start(self, strategy: str, force: bool) -> Attempt:
        attempt = Attempt(run_request(f"manual__{len(self.attempts) + 1}", strategy, force))
        self.attempts.append(attempt)
        note(f"{attempt.run_id}: triggered ({strategy}, force={force})")
        return attempt

    def _running(self, before: str | None = None) -> list[Attempt]:
        limit = [name for name, _ in self.plan].index(before) if before else len(self.plan)
        return [a for a in self.attempts if a.state == "running" and a.position <= limit]

    def _pick(self, pick: int, before: str | None = None) -> Attempt:
        running = self._running(before)
        return running[pick % len(running)]

    def _call(self, attempt: Attempt, step: Step) -> Any:
        from kosli_rotation.rotation import Rotation

        name, batch = step
        if name == "wait_grace":
            return self._wait_grace()
        method = getattr(Rotation(self.entry), name)  # a new Rotation per task: hooks read the environment anew
        return method(list(batch), attempt.request) if batch is not None else method(attempt.request)

    def _wait_grace(self) -> None:
        """The sensor WaitForGraceEnd: until the grace end in the record, for a 'rotate' whose new key is stored."""
        record = self.world.record()
        ends_at = record.get("grace_ends_at")
        if record.get("state") == "stored" and record.get("strategy") == "rotate" and ends_at:
            time.sleep(min(max(0.0, float(ends_at) - time.time() + 0.05), GRACE_HOURS * HOUR_SECONDS + 2))

    def _execute(self, attempt: Attempt) -> BaseException | None:
        try:
            self._call(attempt, self.plan[attempt.position])
        except Exception as error:
            return error
        return None

    def _settle(
        self, attempt: Attempt, error: BaseException | None, *, killed: bool = False, mint_sent: bool = False
    ) -> None:
        """What Airflow makes of a task's outcome."""
        from kosli_rotation.rotation import RunNotNeeded

        position = attempt.position
        name, batch = self.plan[position]
        label = f"{attempt.run_id} {step_name(self.plan[position])}"
        if name == "rotate_and_store" and mint_sent and (killed or error is not None):
            self.mint_unsettled = True
        if killed:
            note(f"{label}: worker killed ({type(error).__name__ if error else 'after the step did its work'})")
            attempt.state = "killed"  # no failure callback: the process is gone
            attempt.failed(position)
            return
        if error is None:
            note(f"{label}: ok")
            if name in ("rotate_and_store", "finalize"):
                self.mint_unsettled = False
            self._advance(attempt, 1)
            return
        note(f"{label}: {type(error).__name__}: {str(error)[:300]}")
        if isinstance(error, RunNotNeeded):
            attempt.state = "skipped"  # the rest of the run is skipped
            return
        if batch is not None:  # a consumer batch fails alone and has no callback; the gate still runs
            attempt.failed(position)
            self._advance(attempt, 2 if name == "fan_out" else 1)
            return
        self._record_failure(attempt, name, error)
        attempt.state = "failed"
        attempt.failed(position)

    def _advance(self, attempt: Attempt, steps: int) -> None:
        attempt.position += steps
        if attempt.position >= len(self.plan):
            attempt.state = "done"

    def _record_failure(self, attempt: Attempt, task_id: str, error: BaseException) -> None:
        """The DAG's on_failure_callback."""
        from kosli_rotation.rotation import Rotation

        try:
            Rotation(self.entry).record_failure(attempt.run_id, task_id, error)
        except Exception as failure:  # Airflow logs a failing callback and goes on
            note(f"{attempt.run_id} failure callback of {task_id} failed: {type(failure).__name__}: {failure}")

    def _run_plainly(self, attempt: Attempt, steps: int, *, until: str | None = None) -> None:
        """Run up to ``steps`` tasks of the attempt without faults (or until its next task is ``until``)."""
        for _ in range(steps):
            if attempt.state != "running" or (until and self.plan[attempt.position][0] == until):
                return
            mints = self.world.mints
            self._settle(attempt, self._execute(attempt), mint_sent=self.world.mints > mints)

    # -- rules --------------------------------------------------------------------------------------

    @precondition(lambda self: self._running())
    @rule(pick=PICK, steps=st.integers(1, 12))
    def run_steps(self, pick: int, steps: int) -> None:
        self._run_plainly(self._pick(pick), steps)

    @precondition(lambda self: self._running())
    @rule(pick=PICK, steps_before=STEPS_BEFORE, at=st.integers(0, 12), after_commit=st.booleans())
    def kill_the_worker(self, pick: int, steps_before: int, at: int, after_commit: bool) -> None:
        """The worker dies at the ``at``-th request of a step: e.g. right after Kosli minted (drop after commit)."""
        attempt = self._pick(pick)
        self._run_plainly(attempt, steps_before)
        if attempt.state != "running":
            return
        kill, mints = self.world.install_kill(at, after_commit), self.world.mints
        try:
            error = self._execute(attempt)
        finally:
            kill.on = False
        self._settle(attempt, error, killed=kill.fired, mint_sent=self.world.mints > mints)

    @precondition(lambda self: self._running(before="rotate_and_store"))
    @rule(pick=PICK)
    def kosli_answers_502_after_minting(self, pick: int) -> None:
        attempt = self._pick(pick, before="rotate_and_store")
        self._run_plainly(attempt, len(self.plan), until="rotate_and_store")
        if attempt.state != "running":
            return
        switch, mints = self.world.install_mint_502(), self.world.mints
        try:
            error = self._execute(attempt)
        finally:
            switch.on = False
        self._settle(attempt, error, mint_sent=self.world.mints > mints)

    @precondition(lambda self: self._running())
    @rule(
        pick=PICK,
        steps_before=STEPS_BEFORE,
        requests_failed=st.sampled_from([3, 8, 10_000]),
        writes_only=st.booleans(),
        callback_sees_it=st.booleans(),
    )
    def vault_away_for_a_step(
        self, pick: int, steps_before: int, requests_failed: int, writes_only: bool, callback_sees_it: bool
    ) -> None:
        """Vault (record and vault_kv consumer) drops the next ``requests_failed`` requests of a step (10 000: the
        whole step), or only its writes; the failure callback after it may still find Vault away."""
        attempt = self._pick(pick)
        self._run_plainly(attempt, steps_before)
        if attempt.state != "running":
            return
        outage, mints = self.world.install_vault_outage(requests_failed, writes_only), self.world.mints
        try:
            error = self._execute(attempt)
            outage.on = callback_sees_it
            self._settle(attempt, error, mint_sent=self.world.mints > mints)
        finally:
            outage.on = False

    @precondition(lambda self: self.hung is None and self._running(before="rotate_and_store"))
    @rule(pick=PICK, callback_runs=st.booleans())
    def worker_hangs_storing_the_new_key(self, pick: int, callback_runs: bool) -> None:
        """Vault holds the write that stores the new key; the scheduler, missing heartbeats, fails the task (and runs
        its failure callback, unless ``callback_runs`` is False), while the worker lives on, waiting for Vault."""
        attempt = self._pick(pick, before="rotate_and_store")
        self._run_plainly(attempt, len(self.plan), until="rotate_and_store")
        if attempt.state != "running":
            return
        hold, switch = self.world.install_hung_store()
        mints = self.world.mints
        hung = Hung(attempt, threading.Thread(daemon=True), hold, switch)

        def work() -> None:
            try:
                hung.outcome["result"] = self._call(attempt, self.plan[attempt.position])
            except Exception as error:
                hung.outcome["error"] = error

        hung.thread = threading.Thread(target=work, name=f"hung-{attempt.run_id}", daemon=True)
        hung.thread.start()
        deadline = time.monotonic() + 60
        while hung.thread.is_alive() and not hold.held and time.monotonic() < deadline:
            time.sleep(0.01)
        if not hold.held:  # it never stored a key (refused, failed before): an ordinary task
            switch.on = False
            hung.thread.join(60)
            self._settle(attempt, hung.outcome.get("error"), mint_sent=self.world.mints > mints)
            return
        note(f"{attempt.run_id} rotate_and_store: worker hangs writing the new key to Vault; the task is failed")
        self.hung = hung
        attempt.state = "failed"
        attempt.failed(attempt.position)
        if callback_runs:
            self._record_failure(attempt, "rotate_and_store", RuntimeError("the worker stopped heartbeating"))

    @precondition(lambda self: self.hung is not None)
    @rule(write_arrived=st.booleans())
    def hung_worker_wakes_up(self, write_arrived: bool) -> None:
        """Vault answers the held write at last: it never arrived (the worker retries it) or arrived unanswered."""
        hung = self.hung
        assert hung is not None
        hung.rule.release(run_handler=write_arrived)
        hung.thread.join(120)
        assert not hung.thread.is_alive(), "the hung worker did not finish within 120 s of Vault answering"
        hung.switch.on = False
        self.hung = None
        error = hung.outcome.get("error")
        note(f"{hung.attempt.run_id} hung rotate_and_store woke up: {repr(error)[:300] if error else 'ok'}")
        # Its key is stored now, or lost: like any rotate_and_store that completed, or failed after minting.
        self.mint_unsettled = error is not None

    @precondition(lambda self: len(self.attempts) < 6)
    @rule(strategy=st.sampled_from(["replace", "rotate"]), force=st.booleans(), steps=st.integers(0, 6))
    def trigger_another_run(self, strategy: str, force: bool, steps: int) -> None:
        """A new DAG run (a new run id) starts at preflight, perhaps while another is mid-way."""
        self._run_plainly(self._start(strategy, force), steps)

    @precondition(lambda self: any(a.state in ("failed", "killed") for a in self.attempts))
    @rule(pick=PICK, steps=st.integers(0, 12))
    def clear_the_failed_task(self, pick: int, steps: int) -> None:
        """*Clear* in the UI (or an Airflow retry): the failed task and everything after it run again, same run id."""
        stopped = [a for a in self.attempts if a.state in ("failed", "killed")]
        attempt = stopped[pick % len(stopped)]
        assert attempt.failed_at is not None
        attempt.position, attempt.failed_at, attempt.state = attempt.failed_at, None, "running"
        note(f"{attempt.run_id}: cleared from {step_name(self.plan[attempt.position])}")
        self._run_plainly(attempt, steps)

    @rule(consumer=st.sampled_from(CONSUMERS), pick=PICK, steps=st.integers(0, 8))
    def consumer_broken_for_a_while(self, consumer: str, pick: int, steps: int) -> None:
        """A consumer cannot be reached or written (its token refused, its directory gone) while a run goes on for
        ``steps`` tasks; then it is repaired."""
        self.world.break_consumer(consumer)
        self.broken.add(consumer)
        note(f"{consumer}: broken")
        try:
            if self._running():
                self._run_plainly(self._pick(pick), steps)
        finally:
            self.world.restore_consumer(consumer)
            self.broken.discard(consumer)
            note(f"{consumer}: repaired")

    @rule(consumer=st.sampled_from(CONSUMERS), used=st.booleans())
    def drift_a_consumer_back_to_an_old_key(self, consumer: str, used: bool) -> None:
        """Someone (a config tool, a human) writes back an older key that still works, and perhaps a job uses it.
        Only a key that works and has no deadline: a key Kosli expires by itself at a grace end could be written
        back live or dead depending on the machine's speed."""
        world = self._look()
        held = world.consumers[consumer]
        older = [world.record.get("previous_key"), *reversed(self.held_before[consumer])]
        candidates = [
            key for key in older if key and key != held and key in world.live and world.live[key]["valid_until"] is None
        ]
        if not candidates:
            return
        self.world.write_consumer(consumer, candidates[0])
        status = self.world.use_key(candidates[0]) if used else None
        note(f"{consumer}: drifted back to {_fp(candidates[0])}" + (f", then used (HTTP {status})" if used else ""))

    # -- invariants ---------------------------------------------------------------------------------

    def _look(self) -> Snapshot:
        """The world now; remembers every secret seen live, and how each one died when it is first seen dead."""
        world, now = self.world.snapshot(), time.time()
        self.seen.update(world.live)
        for secret, item in self.seen.items():
            if secret in world.live or secret in self.death:
                continue
            # Died since the last look. Kosli's own expiry at a grace end (the id lives on with its new secret, or
            # the deadline seen has passed), or revoked: DELETE of its id, or a rotate superseding it early.
            until = item["valid_until"]
            expired = item["key_id"] in world.live_ids or (until is not None and until <= now)
            self.death[secret] = "expired" if expired else "revoked"
        for name, value in world.consumers.items():
            history = self.held_before[name]
            if value and (not history or history[-1] != value):
                history.append(value)
        return world

    def _revoked(self, secret: str, world: Snapshot) -> bool:
        """Dead, and not by Kosli's own grace expiry. A secret never seen live counts as revoked."""
        return secret not in world.live and self.death.get(secret, "revoked") == "revoked"

    @invariant()
    def vault_holds_a_working_key(self) -> None:
        """(c) The key in the current version of Vault's record is live.

        Excused: a key Kosli expired by itself at a grace end. The sandbox's hour lasts HOUR_SECONDS, so a
        'rotate' whose answer was lost (killed worker, 502 after commit) lets the old key in Vault expire before any
        rerun can reconcile; with real grace periods (hours) the rerun has that time. The product never makes a key
        expire; it can only revoke one, and a revoked key in Vault is always a failure.
        """
        world = self._look()
        key = world.record.get("key")
        assert key, f"Vault's record has no key: {sorted(world.record)}"
        assert not self._revoked(key, world), (
            f"Vault's record (state {world.record.get('state')!r}, key id {world.record.get('key_id')}) holds "
            f"{_fp(key)}, which Kosli no longer accepts: it was revoked"
        )

    @invariant()
    def no_consumer_holds_a_revoked_key(self) -> None:
        """(b) No listed consumer holds a key that was revoked.

        A consumer the product cannot reach or write (a rule broke it) still holds what it held, the old key: the
        gate must then keep that key alive and fail the run naming the consumer, so no exception is made for broken
        consumers. The one death excused is Kosli's own expiry at a grace end ('rotate': see vault_holds_a_working_key
        on the scaled clock; the run's gate says which consumers that breaks). A drift writes back only live keys
        without a deadline, so every revoked key a consumer holds was live when it got there and revoked after.
        """
        world = self._look()
        for name, value in world.consumers.items():
            if value:
                assert not self._revoked(value, world), (
                    f"consumer {name} holds {_fp(value)}, which was revoked (Vault's record: state "
                    f"{world.record.get('state')!r}, key {_fp(world.record.get('key'))}, previous "
                    f"{_fp(world.record.get('previous_key'))}); broken consumers: {sorted(self.broken) or 'none'}"
                )

    @invariant()
    def no_working_key_is_lost(self) -> None:
        """(a) Every live key of the service account is held by Vault (the record's key or previous key, or a copy
        parked under <vault_path>/unclaimed/), except:

        - a secret sharing its key id with the record's previous key: a lost 'rotate' leaves its secret under the old
          key id, where nobody can reach it but the revocation of that id at the end of this rotation;
        - at most one, and only while a mint's outcome is unsettled: after a step that sent a mint POST failed or was
          killed, or while a worker hangs storing its key, until a rotate_and_store (which reconciles first) or a
          finalize completes.
        """
        world = self._look()
        record = world.record
        held = {record.get("key"), record.get("previous_key"), *world.parked}
        previous_id = record.get("previous_key_id")
        lost = [
            secret
            for secret, item in world.live.items()
            if secret not in held and not (previous_id and item["key_id"] == previous_id)
        ]
        allowed = 1 if self.mint_unsettled or self.hung is not None else 0
        described = ", ".join(f"{_fp(secret)} id {world.live[secret]['key_id']}" for secret in lost)
        assert len(lost) <= allowed, (
            f"{len(lost)} live key(s) held by nobody ({described}), {allowed} allowed now; Vault's record: state "
            f"{record.get('state')!r}, key {_fp(record.get('key'))} id {record.get('key_id')}, previous "
            f"{_fp(record.get('previous_key'))} id {previous_id}"
        )


def test_the_rotation_keeps_its_invariants_whatever_happens(openbao, tmp_path):
    run_state_machine_as_test(
        lambda: RotationMachine(openbao, tmp_path),
        settings=settings(
            max_examples=EXAMPLES,
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            database=None,
            print_blob=True,
            verbosity=VERBOSITY,
        ),
    )
