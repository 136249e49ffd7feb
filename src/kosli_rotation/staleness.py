"""The daily staleness check: is each key fresh, its record healthy, and every consumer on the current key?

Three checks per key, each returning findings (a problem to announce, or a note saying what is fine):

1. ``check_age``: the key is past its maximum age. Its age counts from the last rotation recorded in Vault
   (``rotated_at``); for a key the tool never rotated, from Kosli's ``created_at`` of the key (found like the
   rotation finds it: the record's key id, else the inventory's ``key_id`` or ``key_label``), which is what
   the rotation DAG's own due check uses, so both agree on when a key is due. A key is announced once it is
   more than a day past due: until then its rotation DAG's daily due check has not had its chance yet.
2. ``check_state``: the last rotation failed (``failed_step`` is set), or a rotation is in flight but its
   lock expired long ago (the run that held it died and nothing resumed it).
3. ``check_consumers``: a consumer that can be read back holds a value whose full SHA-256 digest is not the
   current key's (or nothing). Write-only consumers cannot be read: the check says so, how the rotation proves
   them (``Consumer.proof``), and what the tool last wrote there.

Beside them: ``staleness_expiry`` (Kosli's ``expires_at`` within ``expiry_warning_days``, announced at 30, 7 and 1
day(s); a ``rotate``'s hours left at the gate) and ``attention`` (a rotation that spent its retry budget). What
they read and say (the record's view, findings, a key's health) is ``staleness_findings``.

What is read: the record's non-secret summary in Vault's ``custom_metadata`` when it is current (it is
mirrored after every write, best effort); the record itself, only to compute the key's fingerprint and digest,
when the summary is missing (a record seeded by hand) or older than the record, or when the consumers must be
compared with the key and the summary carries only its short fingerprint (48 bits: shown, never compared).
Nothing returned or logged holds a key: findings show short fingerprints.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kosli_rotation.attention import attention_findings
from kosli_rotation.consumers import Consumer, build_consumer
from kosli_rotation.errors import RotationError
from kosli_rotation.fingerprints import short
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyStore, Phase
from kosli_rotation.kosli_hook import KosliHook
from kosli_rotation.rotation import LOCK_TTL
from kosli_rotation.staleness_expiry import check_expiry, check_grace
from kosli_rotation.staleness_findings import (
    DAY,
    AgeUnknown,
    Finding,
    KeyHealth,
    RecordView,
    _days,
    _iso,
    kosli_key,
    read_record,
    view_of_record,
)

log = logging.getLogger(__name__)

#: A due key is announced only once its rotation DAG's daily due check has had its chance to rotate it.
OVERDUE_AFTER = DAY
#: A rotation in flight whose lock expired longer ago than this was abandoned: its run died.
ABANDONED_AFTER = LOCK_TTL


# -- the checks -----------------------------------------------------------------------------------


def check_age(entry: KeyEntry, view: RecordView, *, now: float, kosli: KosliHook) -> list[Finding]:
    """Is the key past its maximum age? From ``rotated_at``, else from Kosli's ``created_at`` of the key."""
    born, since = view.rotated_at, "its last rotation"
    if born is None:
        try:
            born = kosli_key(entry, view, kosli).created_at
        except AgeUnknown as unknown:
            return [Finding("age", f"unknown: the key was never rotated by this tool, and {unknown}", unknown.problem)]
        except RotationError as error:
            return [Finding("age", f"unknown: the key was never rotated by this tool, and Kosli cannot say: {error}")]
        since = "its creation in Kosli (never rotated by this tool)"
    age, max_age = now - born, entry.max_age_days * DAY
    due = born + max_age
    if age <= max_age:
        text = f"{_days(age)} old since {since}; due after {entry.max_age_days} days, on {_iso(due)}"
        return [Finding("age", text, problem=False)]
    if view.state != Phase.IDLE and not view.failed_step and not _abandoned(view, now):
        text = (
            f"{_days(age)} old, past its maximum age of {entry.max_age_days} days; a rotation is in flight "
            f"(phase {view.state.value!r})"
        )
        return [Finding("age", text, problem=False)]
    if age <= max_age + OVERDUE_AFTER:
        text = (
            f"{_days(age)} old, due since {_iso(due)}; its rotation DAG {entry.dag_id} rotates it at its next "
            "daily due check"
        )
        return [Finding("age", text, problem=False)]
    return [
        Finding(
            "age",
            f"the key is {_days(age)} old (counted from {since}), past its maximum age of {entry.max_age_days} "
            f"days since {_iso(due)}, and its rotation DAG {entry.dag_id} has not rotated it: is the DAG paused, or "
            "are its runs failing? Trigger it to rotate now.",
        )
    ]


def check_state(entry: KeyEntry, view: RecordView, *, now: float) -> list[Finding]:
    """Did the last rotation fail, or was a rotation in flight abandoned?"""
    if view.failed_step:
        text = (
            f"the rotation started by run {view.run_id} failed at {view.failed_step} (phase {view.state.value!r}): "
            f"{view.failure}."
        )
        if view.grace_ends_at and view.state == Phase.STORED and view.strategy == "rotate":
            text += f" Kosli revokes the old key by itself at {_iso(view.grace_ends_at)}."
        return [Finding("state", text + (f" What to do: {view.todo}" if view.todo else ""))]
    if view.state == Phase.IDLE:
        return [Finding("state", "no rotation in flight, none failed", problem=False)]
    if _abandoned(view, now):
        expired = f"expired at {_iso(view.lock_expires_at)}" if view.lock_expires_at else "is not held by anyone"
        return [
            Finding(
                "state",
                f"a rotation (run {view.run_id}, phase {view.state.value!r}) is in flight, but its lock {expired}: "
                f"the run that held it died and nothing resumed it. Trigger {entry.dag_id} (or clear its failed "
                "task): it resumes the rotation.",
            )
        ]
    return [
        Finding(
            "state",
            f"a rotation is in flight (run {view.run_id}, phase {view.state.value!r}, held by {view.lock_owner} "
            f"until {_iso(view.lock_expires_at)})",
            problem=False,
        )
    ]


def _abandoned(view: RecordView, now: float) -> bool:
    return view.state != Phase.IDLE and (view.lock_expires_at or 0) + ABANDONED_AFTER < now


def check_consumers(entry: KeyEntry, view: RecordView, store: KeyStore) -> list[Finding]:
    """Does every consumer that can be read back hold the current key? (Read with the consumer's own
    credentials, concurrently within each kind's limits, like the rotation's fan-out.)"""
    if not entry.consumers:
        return []
    if view.digest is None:
        # The summary shows only the key's 48-bit fingerprint: compare with the full digest, from the record.
        view = view_of_record(store)
    findings: dict[str, Finding] = {}

    def check(consumer: Consumer) -> None:
        try:
            finding = _check_consumer(consumer, view, store)
        except Exception as error:  # one consumer failing to answer must not hide the others
            finding = Finding(f"consumer {consumer.name}", f"could not be read: {type(error).__name__}: {error}")
        findings[consumer.name] = finding

    for batch in entry.consumer_batches:
        consumers = [build_consumer(entry.consumer(name)) for name in batch]
        workers = max(1, min(len(consumers), min(type(consumer).max_concurrency for consumer in consumers)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="staleness") as pool:
            list(pool.map(check, consumers))
    return [findings[name] for name in entry.consumer_names]


def _check_consumer(consumer: Consumer, view: RecordView, store: KeyStore) -> Finding:
    label = f"consumer {consumer.name}"
    current = f"the current key {view.fingerprint}" + (f" (key id {view.key_id})" if view.key_id else "")
    if not consumer.readable:
        status = store.read_note(f"consumers/{consumer.name}") or {}
        text = (
            f"write-only ({consumer.kind}, proof: {consumer.proof}): what it holds cannot be read back, so it cannot "
            f"be checked; {_last_written(status, view)}"
        )
        return Finding(label, text, problem=False)
    held = consumer.read_digest()
    if held is not None and held == view.digest:
        return Finding(label, f"holds {current}", problem=False)
    if held is not None and held == view.previous_digest and view.state == Phase.STORED:
        return Finding(
            label,
            f"still holds the previous key ({short(held)}): the rotation in flight has not given it {current} yet",
            problem=False,
        )
    if held is None:
        return Finding(label, f"holds no key at {consumer.describe()}: it should hold {current}")
    return Finding(
        label,
        f"holds {short(held)} at {consumer.describe()}, not {current}: it fails once that value is revoked (or "
        "already does). Give it the current key: a rotation writes it, or fix it by hand.",
    )


def _last_written(status: dict[str, Any], view: RecordView) -> str:
    """What the consumer's status note says the tool last wrote: by full digest, or by the fingerprint of a note
    written by an older version (which has no ``written_digest``)."""
    written_digest, written_fingerprint = status.get("written_digest"), status.get("written_fingerprint")
    if written_digest:
        shown, current = short(written_digest), written_digest == view.digest
    elif written_fingerprint:
        shown, current = written_fingerprint, written_fingerprint == view.fingerprint
    else:
        return "the tool has no record of writing it"
    return f"the tool last wrote {shown} there at {status.get('written_at')}" + (
        " (the current key)" if current else " (NOT the current key)"
    )


def check_key(entry: KeyEntry, *, now: float | None = None) -> KeyHealth:
    """Run every check on one key. A check that cannot run is itself a problem: the point is to prove health."""
    now = time.time() if now is None else now
    health = KeyHealth(entry)
    store = KeyStore(entry.vault_path, conn_id=entry.vault_conn_id, mount=entry.vault_mount)
    try:
        view = read_record(store)
    except Exception as error:
        health.findings.append(Finding("record", f"cannot read the key's Vault record: {error}"))
        return health
    source = "its metadata summary" if view.source == "metadata" else "the record itself (no current summary)"
    log.info("Record of %s read from %s: phase %r, key %s", health.key, source, view.state.value, view.key_id)
    checks = (
        ("age", lambda: check_age(entry, view, now=now, kosli=KosliHook(entry.kosli_conn_id))),
        ("expiry", lambda: check_expiry(health, view, now=now, kosli=KosliHook(entry.kosli_conn_id))),
        ("grace", lambda: check_grace(entry, view, now=now, store=store)),
        ("state", lambda: check_state(entry, view, now=now)),
        ("consumers", lambda: check_consumers(entry, view, store)),
        ("attention", lambda: [Finding("attention", *said) for said in attention_findings(entry, store, now)]),
    )
    for name, run in checks:
        try:
            health.findings.extend(run())
        except Exception as error:
            health.findings.append(Finding(name, f"could not be checked: {type(error).__name__}: {error}"))
    return health


__all__ = [
    "ABANDONED_AFTER",
    "OVERDUE_AFTER",
    "Finding",
    "KeyHealth",
    "RecordView",
    "check_age",
    "check_consumers",
    "check_key",
    "check_state",
    "read_record",
]
