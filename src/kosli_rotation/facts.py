"""What the record tells humans: the audit entry of a finished operation, and the facts of a failure with
what is left to do (for the record, the notices and the runbook). Nothing here holds a key."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from kosli_rotation.fingerprints import fingerprint
from kosli_rotation.record import KeyRecord, Phase, iso
from kosli_rotation.revocation import roles


def key_reference(record: KeyRecord, location: str) -> dict[str, Any]:
    """What downstream steps may know about the stored key: where it is, never what it is."""
    return {
        "vault": location,
        "key_id": record.key_id,
        "fingerprint": fingerprint(record.key),
        "previous_key_id": record.outgoing_key_id,
        "strategy": record.strategy,
        "grace_ends_at": iso(record.grace_ends_at),
    }


def audit_entry(
    record: KeyRecord, *, where: str, dag_id: str, finished_by: str, run_id: str, consumers: dict[str, Any]
) -> dict[str, Any]:
    now = time.time()
    common = {
        "key": where,
        "dag_id": dag_id,
        "run_id": record.run_id,
        "finished_by_run": run_id,
        "triggered_by": record.triggered_by,
        "reason": record.reason,
        "consumers": consumers,
        "started_at": iso(record.started_at),
        "finished_at": iso(now),
        "note": record.note,
    }
    if record.is_rollback:
        return {
            "event": "kosli-key-rolled-back",
            **common,
            "restored_key": {"id": record.key_id, "fingerprint": fingerprint(record.key)},
            "revoked_key": {"id": record.outgoing_key_id, "fingerprint": fingerprint(record.outgoing_key or "")},
            "history": [*record.history, f"{iso(now)} rollback finished by {finished_by}"],
        }
    return {
        "event": "kosli-key-rotated",
        **common,
        "strategy": record.strategy,
        "old_key": {"id": record.outgoing_key_id, "fingerprint": fingerprint(record.outgoing_key or "")},
        "new_key": {"id": record.key_id, "fingerprint": fingerprint(record.key)},
        "stored_at": iso(record.rotated_at),
        "grace_ends_at": iso(record.grace_ends_at),
        "old_key_dead_at": iso(record.outgoing_dead_at),
        "history": [*record.history, f"{iso(now)} finished by {finished_by}"],
    }


def audit_name(record: KeyRecord) -> str:
    stamp = datetime.fromtimestamp(record.started_at or time.time(), UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"audit/{stamp}-{'rollback' if record.is_rollback else record.attempt or 'manual'}"


def failure_facts(
    record: KeyRecord, *, where: str, dag_id: str, run_id: str, step: str, error: str, unverified: list[str]
) -> dict[str, Any]:
    """The facts a failure notice carries; ``todo`` says what is left, in the words of the runbook."""
    dies_at = record.outgoing_key_dies_at
    return {
        "operation": record.operation if record.in_flight else "rotation",
        "key": where,
        "dag_id": dag_id,
        "run_id": run_id,
        "failed_step": step,
        "error": error,
        "phase": record.state.value,
        "key_to_verify": f"the {roles(record)[0] if record.in_flight else 'new key'}",
        "unverified_consumers": unverified,
        "old_key_dies_at": iso(dies_at),
        "hours_left": round((dies_at - time.time()) / 3600, 2) if dies_at else None,
        "changed": record.in_flight,
        "todo": todo(record, unverified, dag_id),
    }


def todo(record: KeyRecord, unverified: list[str], dag_id: str) -> str:
    staying, outgoing = roles(record)
    dies = record.outgoing_key_dies_at
    deadline = (
        f" The {outgoing} dies by itself at {iso(dies)} ({(dies - time.time()) / 3600:.1f} h from now): consumers "
        "still on it break then."
        if dies
        else ""
    )
    if record.state == Phase.IDLE:
        return "Nothing changed: fix the cause and trigger a new run."
    if record.state == Phase.ROTATING:
        return (
            "A key may have been minted and not stored. Trigger a new run (or clear the failed task): it reconciles "
            "from Kosli's key list, revokes what this tool minted and nobody holds, and finishes the rotation."
            + deadline
        )
    if record.state == Phase.STORED:
        waiting = f" Consumers not proven to hold the {staying} yet: {', '.join(unverified)}." if unverified else ""
        return (
            f"The {staying} {record.key_id} is in Vault; the {outgoing} {record.outgoing_key_id} still works and is "
            f"NOT revoked.{waiting}{deadline} Fix the cause, then clear the failed task or trigger {dag_id} again: "
            + ("it resumes the rollback." if record.is_rollback else "it resumes without rotating again.")
        )
    return (
        f"The {outgoing} {record.outgoing_key_id} is revoked; what is left is confirming it is dead and writing the "
        f"audit entry. Clear the failed task or trigger {dag_id} again."
    )
