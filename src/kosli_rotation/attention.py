"""The retry budget: after ``max_failed_attempts`` failed runs of one rotation, scheduled runs stop trying.

A *failed run* is a DAG run whose step failed for good (after Airflow's own task retries) while a rotation was in
flight, counted once per run from when the rotation began (its intent) or was last resumed until it finishes. A run
that fails before the intent changed nothing and records nothing (it is announced, and tried again next day).
When the budget is spent the record gets ``needs_attention_since`` **beside** its phase: the phase machine is
untouched, so a resumed rotation continues where it stopped. Then:

* a scheduled run ends skipped at preflight, before any call to Kosli, and its log says why and how to resume;
* a manual run fails at preflight saying what to do, unless it sets ``resume_after_attention``: that clears the
  flag and the count, and the run resumes from the phase.

The dying-key rule: the budget never blocks a run when stopping would leave a consumer on a key that dies by
itself (``dying_key``), decided from the record alone so a blocked run calls nobody:

* a 'rotate' in flight whose consumers are not all proven to hold the new key: Kosli kills the outgoing key at its
  grace end (``outgoing_dies_by``) whatever we do;
* the key consumers are on expires in Kosli (``expires_at``, last seen when a run failed) within
  ``expiry_lead_days``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kosli_rotation.errors import InvalidRequestError, RunNotNeeded
from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import KeyStore
from kosli_rotation.kosli_hook import ApiKey
from kosli_rotation.record import AFTER_STORE, KeyRecord, Phase, iso
from kosli_rotation.run_request import RunRequest
from kosli_rotation.scrub import one_line

log = logging.getLogger(__name__)

#: Failed runs kept in the record beyond the budget (the notice and the page list them).
KEPT_FAILED_RUNS = 10
RESUME_PARAM = "resume_after_attention"


class AttentionRequired(InvalidRequestError):
    """A manual run found the rotation waiting for a person and was not told to resume it. Not a failed run."""


def watched_key_id(record: KeyRecord, current_key_id: str | None = None) -> str | None:
    """The key consumers may still be on: the key in use (``current_key_id`` if the record does not name it yet),
    then the outgoing key until every consumer is proven to hold the new one."""
    if record.state in AFTER_STORE:
        return record.outgoing_key_id if record.state == Phase.STORED and not record.consumers_verified_at else None
    return record.key_id or current_key_id


def watched_key_expiry(keys: list[ApiKey], record: KeyRecord, current_key_id: str | None) -> float | None:
    """Kosli's expires_at of ``watched_key_id`` in ``keys`` (preflight's listing); None: never, or not listed."""
    key_id = watched_key_id(record, current_key_id)
    expires = next((key.expires_at for key in keys if key.id == key_id), 0) if key_id else 0
    return float(expires) if expires else None


def with_failed_run(
    record: KeyRecord,
    *,
    run_id: str,
    step: str,
    reason: str,
    at: float,
    budget: int,
    watched_key_expires_at: float | None,
) -> KeyRecord | None:
    """The record with this run's failure counted (a run counts once); None if it was counted already."""
    if any(run.get("run_id") == run_id for run in record.failed_runs):
        return None
    failed = {"run_id": run_id, "at": iso(at) or "", "step": step, "reason": one_line(reason, limit=1000)}
    runs = [*record.failed_runs, failed][-max(budget, KEPT_FAILED_RUNS) :]
    update: dict[str, Any] = {
        "failed_runs": runs,
        "watched_key_expires_at": watched_key_expires_at or record.watched_key_expires_at,
    }
    if record.needs_attention_since is None and len(runs) >= budget:
        update["needs_attention_since"] = at
    spent = " (the retry budget is spent: needs attention)" if "needs_attention_since" in update else ""
    return record.noted(f"failed run #{len(runs)} of {budget}: {run_id} at {step}{spent}").model_copy(update=update)


def dying_key(entry: KeyEntry, record: KeyRecord, now: float) -> str | None:
    """Why the budget must not block this run (a consumer would be left on a dying key), or None."""
    dies = record.outgoing_key_dies_at
    if dies and not record.consumers_verified_at:
        return (
            f"the outgoing key {record.outgoing_key_id or record.key_id} {'died' if dies <= now else 'dies'} by "
            f"itself at {iso(dies)} (the grace end of the 'rotate') and not every consumer is proven to hold the "
            "new key"
        )
    expires, key_id = record.watched_key_expires_at, watched_key_id(record, "in use")
    if key_id and expires and expires - entry.expiry_lead_days * 86400 <= now:
        return (
            f"Kosli expires the key consumers may still use ({key_id}) at {iso(expires)}, within expiry_lead_days "
            f"({entry.expiry_lead_days})"
        )
    return None


def spent_line(where: str, record: KeyRecord) -> str:
    last = record.failed_runs[-1] if record.failed_runs else {}
    return (
        f"the rotation of {where} needs attention since {iso(record.needs_attention_since)} after "
        f"{len(record.failed_runs)} failed runs (last: run {last.get('run_id')} at {last.get('step')}: "
        f"{last.get('reason')})"
    )


def how_to_resume(dag_id: str, record: KeyRecord) -> str:
    return (
        f"fix the cause, then trigger {dag_id} by hand with a reason and the parameter {RESUME_PARAM} set to true: "
        f"it resumes the rotation from phase {record.state.value!r} and starts the budget again"
    )


def admit(entry: KeyEntry, store: KeyStore, record: KeyRecord, run: RunRequest, *, dag_id: str) -> KeyRecord:
    """Preflight's first check, before any call to Kosli: may this run try? Returns the record to go on with (the
    budget reset when a person resumes). Raises ``RunNotNeeded`` (a scheduled run: skipped) or ``AttentionRequired``
    (a manual run) when the budget blocks it; neither counts as a failed run."""
    where = f"{entry.org}/{entry.service_account}"
    if record.needs_attention_since is None:
        if run.resume_after_attention:
            log.info("%s: the rotation of %s does not need attention; this run goes on as usual", RESUME_PARAM, where)
        return record
    spent = spent_line(where, record)
    if run.manual and run.resume_after_attention and run.dry_run:
        log.warning("%s; a dry run does not resume it: without dry_run, this run would", spent)
        return record
    if run.manual and run.resume_after_attention:
        log.warning("%s; resumed by %s with %s: the budget starts again", spent, run.triggered_by, RESUME_PARAM)
        return store.update(lambda r: resumed(r, run.triggered_by, run.run_id)).record
    dying = dying_key(entry, record, time.time())
    if dying:
        log.warning("%s, but %s: the retry budget never blocks that, so this run tries anyway", spent, dying)
        return record
    if run.manual:
        raise AttentionRequired(f"{spent}. This run changed nothing: {how_to_resume(dag_id, record)}")
    raise RunNotNeeded(
        f"{spent}: scheduled runs do not try again until a person resumes it, so this one calls nobody. "
        + how_to_resume(dag_id, record)
    )


def refused_by_budget(entry: KeyEntry, record: KeyRecord, now: float) -> None:
    """The gate after the consumer tasks runs even when preflight failed: a run refused for the budget (the flag is
    still set, no dying key) skips it rather than fail again on proofs it never tried to make. A rollback (a
    person's run) is never refused."""
    if record.needs_attention_since is not None and not record.is_rollback and not dying_key(entry, record, now):
        raise RunNotNeeded("the rotation needs attention and this run did not resume it (see preflight)")


def resumed(record: KeyRecord, by: str, run_id: str) -> KeyRecord:
    """The record with the budget reset by a person's manual run; the phase is kept, so the rotation resumes."""
    return record.noted(
        f"{by} resumed the rotation (run {run_id}, {RESUME_PARAM}) after {len(record.failed_runs)} failed runs"
    ).model_copy(update={"needs_attention_since": None, "failed_runs": []})


def notice_facts(record: KeyRecord, facts: dict[str, Any], entry: KeyEntry, now: float) -> dict[str, Any]:
    """The facts of the one notice sent when the budget is spent: every failed run, and what to do."""
    return {
        **facts,
        "event": "kosli-key-rotation-needs-attention",
        "needs_attention_since": iso(record.needs_attention_since),
        "max_failed_attempts": entry.max_failed_attempts,
        "failed_runs": record.failed_runs,
        "keeps_trying": dying_key(entry, record, now),
        "resume": how_to_resume(facts["dag_id"], record),
    }


def attention_findings(entry: KeyEntry, store: KeyStore, now: float) -> list[tuple[str, bool]]:
    """What the daily staleness check says about the retry budget: (message, is a problem)."""
    record = store.load().record
    if record.needs_attention_since is None:
        return [(f"{len(record.failed_runs)} failed run(s) of {entry.max_failed_attempts} allowed", False)]
    dying = dying_key(entry, record, now)
    tail = f"scheduled runs keep trying: {dying}" if dying else "scheduled runs do not try"
    return [
        (
            f"{spent_line(entry.org + '/' + entry.service_account, record)}; {tail}. To do: "
            f"{how_to_resume(entry.dag_id, record)}",
            True,
        )
    ]


def count_failed_run(
    store: KeyStore, entry: KeyEntry, run_id: str, step: str, facts: dict[str, Any], expires: float | None
) -> dict[str, Any]:
    """Count this failed run in the record, with the watched key's expiry as this run's preflight saw it (None:
    keep what the record knew). Returns ``{"needs_attention": notice facts}`` when it spent the budget (the caller
    sends that one notice instead of the failure notice), else {}."""
    before = store.load().record
    now = time.time()
    after = store.update(
        lambda r: with_failed_run(
            r,
            run_id=run_id,
            step=step,
            reason=facts["error"],
            at=now,
            budget=entry.max_failed_attempts,
            watched_key_expires_at=expires,
        )
    ).record
    budget = entry.max_failed_attempts
    log.warning("Failed run %d of the %d allowed (max_failed_attempts)", len(after.failed_runs), budget)
    if before.needs_attention_since is None and after.needs_attention_since is not None:
        return {"needs_attention": notice_facts(after, facts, entry, now)}
    return {}
