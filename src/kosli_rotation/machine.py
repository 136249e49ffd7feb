"""The rotation's state machine in one table: which step runs in which phase, and where it leaves the record.

Like the single gate of AWS's rotation template, every step starts with ``enter(step, record)``: it says whether
the step's work is to be done, already done (a retry or a resumed run: the step returns at once), or cannot be
done in this phase (an error naming both). A rollback runs the same table: only its first two steps differ.

    step                     runs in                    leaves the record at      already done in
    preflight                any                        (reads only)              -
    rotate_and_store         idle, rotating             stored                    stored, revoked, dead
    restore_old_key          stored (a 'replace')       stored (operation rollback)
    verify_new_key           stored, revoked, dead      (reads only)              -
    fan_out                  stored                     stored                    revoked, dead
    verify_consumers         stored                     stored                    revoked, dead
    all_consumers_verified   stored                     stored (verified_at)      revoked, dead
    wait_grace               stored                     stored                    revoked, dead
    revoke_old               stored                     old_key_revoked           revoked, dead
    confirm_old_key_dead     old_key_revoked            old_key_dead              dead
    finalize                 old_key_dead               idle                      idle (finished by this run)
"""

from __future__ import annotations

from dataclasses import dataclass

from kosli_rotation.errors import KeyStoreError
from kosli_rotation.record import AFTER_STORE, KeyRecord, Phase

REVOKED = frozenset({Phase.OLD_KEY_REVOKED, Phase.OLD_KEY_DEAD})


@dataclass(frozen=True)
class Step:
    name: str
    runs_in: frozenset[Phase]
    leaves: Phase | None  # None: the step changes no phase
    done_in: frozenset[Phase] = frozenset()


STEPS: dict[str, Step] = {
    step.name: step
    for step in (
        Step("rotate_and_store", frozenset({Phase.IDLE, Phase.ROTATING}), Phase.STORED, AFTER_STORE),
        Step("restore_old_key", frozenset({Phase.STORED}), Phase.STORED),
        Step("verify_new_key", AFTER_STORE, None),
        Step("fan_out", frozenset({Phase.STORED}), None, REVOKED),
        Step("verify_consumers", frozenset({Phase.STORED}), None, REVOKED),
        Step("all_consumers_verified", frozenset({Phase.STORED}), None, REVOKED),
        Step("revoke_old", frozenset({Phase.STORED}), Phase.OLD_KEY_REVOKED, REVOKED),
        Step(
            "confirm_old_key_dead",
            frozenset({Phase.OLD_KEY_REVOKED}),
            Phase.OLD_KEY_DEAD,
            frozenset({Phase.OLD_KEY_DEAD}),
        ),
        Step("finalize", frozenset({Phase.OLD_KEY_DEAD}), Phase.IDLE),
    )
}


class OutOfOrder(KeyStoreError):
    """A step was asked to run in a phase the table does not allow (an earlier step has not done its work)."""

    retryable = False


def enter(step_name: str, record: KeyRecord, location: str) -> bool:
    """True: do the step's work. False: it is already done. Raises ``OutOfOrder`` when the phase forbids it."""
    step = STEPS[step_name]
    if record.state in step.done_in:
        return False
    if record.state in step.runs_in:
        return True
    allowed = ", ".join(sorted(phase.value for phase in step.runs_in))
    raise OutOfOrder(
        f"{step_name} cannot run at phase {record.state.value!r} of Vault record {location} (it runs at: {allowed}); "
        "an earlier step has not done its work: see the failed task before it"
    )
