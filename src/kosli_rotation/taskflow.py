"""Airflow glue: turns the steps of ``rotation.py`` into tasks, and builds the trigger form.

Kept apart from the steps so that they stay plain Python, testable without a scheduler, while
the DAG file stays a readable list of steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from airflow.sdk import DAG, CronTriggerTimetable, TriggerRule, chain, get_current_context, task, task_group
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from kosli_rotation.attention import AttentionRequired, count_failed_run
from kosli_rotation.errors import InvalidRequestError, RotationError
from kosli_rotation.inventory import BrokenEntry, KeyEntry
from kosli_rotation.notifications import notify_attention, notify_failure
from kosli_rotation.rotation import Rotation, RunNotNeeded, RunRequest
from kosli_rotation.run_request import is_manual
from kosli_rotation.scrub import describe_error, scrub, scrub_data, scrub_exception
from kosli_rotation.sensors import WaitForGraceEnd
from kosli_rotation.trigger_form import trigger_form
from kosli_rotation.window_wait import WaitForRotationWindow
from kosli_rotation.windows import describe, restricted

log = logging.getLogger(__name__)
#: The task log's line saying how long a step's own work took (``bench.airflow_runs`` reads it).
STEP_TIMING = "step %s: its own work took %.3f s"


def on_step_failure(entry: KeyEntry) -> Callable[[Any], None]:
    """When a step fails for good: record in Vault what broke and what is left, release the lock, and
    send the failure notices configured for the key."""

    def record(context: Any) -> None:
        task_id = context["task_instance"].task_id
        if isinstance(context.get("exception"), AttentionRefusal):
            log.error("Nothing was tried, so this run is not counted as a failed run of the rotation")
            return
        rotation, run_id = Rotation(entry), context["dag_run"].run_id
        facts = rotation.record_failure(run_id, task_id, context.get("exception"))
        log.error("Rotation of %s failed at %s. %s", facts["key"], task_id, facts["todo"])
        if facts.pop("counts_against_budget", False):
            facts.update(count_failed_run(rotation.store, entry, run_id, task_id, facts, preflight_saw_expiry(context)))
        if facts.get("needs_attention"):
            log.error("The retry budget is spent: %s", facts["needs_attention"]["resume"])
            notify_attention(entry.notify, facts["needs_attention"], context)
        else:
            notify_failure(entry.notify, facts, context)

    return record


def preflight_saw_expiry(context: Any) -> float | None:
    """Kosli's expires_at of the key consumers are on, as this run's preflight listed it (None: unknown)."""
    try:
        plan = context["ti"].xcom_pull(task_ids="preflight")
    except Exception as error:  # a failure callback must not fail: the record keeps what it knew
        log.warning("Could not read preflight's plan for the retry budget: %s", type(error).__name__)
        return None
    expires = plan.get("watched_key_expires_at") if isinstance(plan, dict) else None
    return float(expires) if isinstance(expires, int | float) else None


def retry_with_backoff(entry: KeyEntry) -> dict[str, Any]:
    """Every step retries with exponential backoff. The Kosli POST inside rotate_and_store is never
    repeated blindly: a retry of that task reconciles from the intent record in Vault instead."""
    return {
        "retries": entry.retries,
        "retry_delay": timedelta(seconds=entry.retry_delay_seconds),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=10),
    }


FIRST_DAY = datetime(2026, 1, 1, tzinfo=UTC)

StepMethod = Callable[[RunRequest], dict[str, Any]]
ConsumerStepMethod = Callable[[list[str], RunRequest], dict[str, Any]]


def run_request(entry: KeyEntry, context: Any) -> RunRequest:
    """Validate what this run asks for, before any call to Kosli. Bad input fails without retry."""
    dag_run = context["dag_run"]
    params = context["params"]
    manual = is_manual(dag_run)
    reason = str(params.get("reason") or "").strip()
    if manual and not reason:
        raise InvalidRequestError("parameter 'reason' is required for a manual rotation: say why you rotate now")
    strategy = params.get("strategy") if manual else entry.strategy
    if strategy not in ("rotate", "replace"):
        raise InvalidRequestError(f"parameter 'strategy' must be 'replace' or 'rotate', not {strategy!r}")
    grace = params.get("grace_hours") if manual else entry.grace_hours
    if isinstance(grace, bool) or not isinstance(grace, int) or not 1 <= grace <= 720:
        raise InvalidRequestError(f"parameter 'grace_hours' must be a whole number from 1 to 720, not {grace!r}")
    for flag in ("force", "dry_run", "revoke_despite_recent_use", "resume_after_attention"):
        if not isinstance(params.get(flag, False), bool):
            raise InvalidRequestError(f"parameter {flag!r} must be true or false, not {params.get(flag)!r}")
    return RunRequest(
        run_id=dag_run.run_id,
        manual=manual,
        reason=reason or f"scheduled: keys are rotated after {entry.max_age_days} days",
        strategy=strategy,
        grace_hours=grace,
        force=bool(params.get("force")),
        dry_run=bool(params.get("dry_run")),
        revoke_despite_recent_use=bool(params.get("revoke_despite_recent_use")) if manual else False,
        resume_after_attention=bool(params.get("resume_after_attention")) if manual else False,
        triggered_by=getattr(dag_run, "triggering_user_name", None) or ("scheduler" if not manual else "unknown"),
        consumers=chosen_consumers(entry, params.get("consumers")) if manual else None,
    )


def chosen_consumers(entry: KeyEntry, chosen: Any) -> frozenset[str] | None:
    """The consumers a manual run may write to; None means all of them."""
    if chosen is None or (entry.consumers and sorted(chosen) == sorted(entry.consumer_names)):
        return None
    if not isinstance(chosen, list) or not chosen or not all(isinstance(name, str) for name in chosen):
        raise InvalidRequestError(f"parameter 'consumers' must be a non-empty list of consumer names, not {chosen!r}")
    unknown = sorted(set(chosen) - set(entry.consumer_names))
    if unknown:
        raise InvalidRequestError(
            f"parameter 'consumers' names {', '.join(unknown)}, not consumers of {entry.name} in the inventory "
            f"(its consumers: {', '.join(entry.consumer_names) or 'none'})"
        )
    return frozenset(chosen)


class AttentionRefusal(AirflowFailException):
    """A manual run refused because the rotation needs attention: the failure callback does not count it."""


@contextmanager
def airflow_outcome() -> Iterator[None]:
    """Map the library's signals to Airflow's: skip, fail without retry, or fail and retry. What an error says
    passes the scrubber first: Airflow stores and shows it (the log, the failure callback, the notices)."""
    try:
        yield
    except RunNotNeeded as reason:
        raise AirflowSkipException(scrub(str(reason))) from None
    except AttentionRequired as refusal:
        raise AttentionRefusal(describe_error(refusal)) from None
    except RotationError as error:
        if not error.retryable:
            raise AirflowFailException(describe_error(error)) from None
        scrub_exception(error)
        raise
    except (AirflowSkipException, AirflowFailException):
        raise
    except Exception as error:
        unexpected = RotationError(f"{type(error).__name__}: {describe_error(error)}")
        raise unexpected.with_traceback(error.__traceback__) from None


class StepOwner(Protocol):
    """What a step's method belongs to (``Rotation`` or ``Rollback``): the key's entry, and the journal that marks
    the step running in the record and keeps the lock alive while it runs."""

    entry: KeyEntry

    def journal(self, run_id: str, step_name: str) -> AbstractContextManager[None]: ...


@contextmanager
def journal(method: Callable[..., Any], context: Any, step_name: str) -> Iterator[None]:
    """The step's journal entry in the Vault record (see ``KeyStore.mark_step``), and how long the step's own
    work took, in the task's log: the rest of the task's duration is Airflow's (process start-up, parsing)."""
    owner: StepOwner = method.__self__  # type: ignore[attr-defined]
    started = time.monotonic()
    try:
        with owner.journal(context["dag_run"].run_id, step_name):
            yield
    finally:
        log.info(STEP_TIMING, step_name, time.monotonic() - started)


def step(method: StepMethod, **task_kwargs: Any) -> Any:
    """One task running one step of ``Rotation`` for this DAG's key.

    Our tasks say ``multiple_outputs`` outright: it is what Airflow infers from the return annotation, but inferring
    evaluates the annotation for every task of every key at each parse (a few percent of the parse time)."""
    entry: KeyEntry = method.__self__.entry  # type: ignore[attr-defined]

    @task(task_id=method.__name__, doc_md=method.__doc__, multiple_outputs=True, **task_kwargs)
    def run_step() -> dict[str, Any]:
        context = get_current_context()
        with airflow_outcome(), journal(method, context, method.__name__):
            return scrub_data(method(run_request(entry, context)))

    return run_step()


def for_each_consumer_batch(*methods: ConsumerStepMethod, **task_kwargs: Any) -> list[Any]:
    """A mapped task group per batch of consumers, running ``methods`` in order on that batch only, so
    a failing batch never blocks the others. Tasks are labelled with the consumers' names in the grid.
    No consumers, no tasks."""
    entry: KeyEntry = methods[0].__self__.entry  # type: ignore[attr-defined]
    if not entry.consumers:
        return []

    def consumer_task(method: ConsumerStepMethod) -> Any:
        @task(
            task_id=method.__name__,
            doc_md=method.__doc__,
            map_index_template="{{ consumer_batch }}",
            multiple_outputs=True,
            on_failure_callback=None,  # the gate after them records and announces every consumer failure at once
            **task_kwargs,
        )
        def run_step(batch: list[str]) -> dict[str, Any]:
            context = get_current_context()
            context["consumer_batch"] = ", ".join(batch)  # type: ignore[typeddict-unknown-key]
            with airflow_outcome(), journal(method, context, f"{method.__name__}[{', '.join(batch)}]"):
                return scrub_data(method(batch, run_request(entry, context)))

        return run_step

    @task_group(group_id="consumers", tooltip="one instance per batch of consumers of one kind and account")
    def consumers(batch: list[str]) -> None:
        chain(*(consumer_task(method)(batch) for method in methods))

    return [consumers.expand(batch=entry.consumer_batches)]


def gate(method: StepMethod) -> Any:
    """A step that runs even when some upstream consumer task failed, to say which and what it means."""
    return step(method, trigger_rule=TriggerRule.NONE_SKIPPED)


def fail_the_run_if_any_step_failed(dag: DAG) -> None:
    """Airflow judges a run by its last tasks; the gate may skip after an earlier failure, so a watcher
    downstream of every task makes sure a failed step always fails the run."""

    @task(
        task_id="any_step_failed",
        trigger_rule=TriggerRule.ONE_FAILED,
        retries=0,
        on_failure_callback=None,
        multiple_outputs=False,
    )
    def any_step_failed() -> None:
        raise AirflowFailException("a step of this rotation failed: see the failed task for what and why")

    watcher = any_step_failed()
    for step_task in dag.tasks:
        if step_task.task_id != "any_step_failed":
            step_task >> watcher


def attest_step(entry: KeyEntry) -> list[Any]:
    """After ``finalize``, for entries with ``attest``: the rotation as a Kosli attestation. Its failure is
    reported as such (the rotation stands), never through the rotation's own failure handling."""
    if entry.attest is None:
        return []
    from kosli_rotation.attestation import Attestation, report_attestation_failure

    attestation = Attestation(entry)

    @task(
        task_id="attest",
        doc_md=Attestation.attest.__doc__,
        multiple_outputs=True,
        on_failure_callback=lambda context: report_attestation_failure(entry, context),
    )
    def attest() -> dict[str, Any]:
        context = get_current_context()
        with airflow_outcome():
            return scrub_data(attestation.attest(run_request(entry, context)))

    return [attest()]


def wait_for_grace_end(entry: KeyEntry) -> WaitForGraceEnd:
    return WaitForGraceEnd(
        task_id="wait_grace",
        vault_path=entry.vault_path,
        vault_conn_id=entry.vault_conn_id,
        vault_mount=entry.vault_mount,
        observation_seconds=entry.usage_observation_seconds,
        doc_md=WaitForGraceEnd.__doc__,
    )


def wait_for_rotation_window(entry: KeyEntry) -> list[WaitForRotationWindow]:
    """The window wait, only for keys with a rotation_window or a blackout: other keys' DAGs are unchanged."""
    if not restricted(entry):
        return []
    return [WaitForRotationWindow(task_id="wait_window", entry=entry, doc_md=WaitForRotationWindow.__doc__)]


def rotation_dag(entry: KeyEntry, *, doc_md: str) -> DAG:
    """The DAG shell for one key: a daily due check, one run at a time, retries with backoff."""
    consumers = "\n".join(f"| {c.name} | {c.kind} |" for c in entry.consumers) or "| (none) | |"
    return DAG(
        dag_id=entry.dag_id,
        dag_display_name=f"Rotate Kosli key {entry.org}/{entry.service_account}",
        description=entry.description or f"Rotate the Kosli API key of {entry.org}/{entry.service_account}",
        doc_md=(
            f"{doc_md}\n\n## This key\n\n| setting | value |\n|---|---|\n"
            f"| org / service account | {entry.org} / {entry.service_account} |\n"
            f"| Vault record | {entry.vault_mount or '(connection mount)'}/{entry.vault_path} "
            f"({entry.vault_conn_id}) |\n| Kosli connection | {entry.kosli_conn_id} |\n"
            f"| scheduled strategy | {entry.strategy} (grace {entry.grace_hours} h) |\n"
            f"| due after | {entry.max_age_days} days, or {entry.expiry_lead_days} days before Kosli expires the key "
            f"(checked on `{entry.schedule}` UTC) |\n| keys minted expire after | "
            f"{f'{entry.key_ttl_days} days' if entry.key_ttl_days else 'never'} |\n"
            f"| scheduled rotations start | {describe(entry)} |\n\n"
            f"| consumer | kind |\n|---|---|\n{consumers}\n"
        ),
        schedule=CronTriggerTimetable(entry.schedule, timezone="UTC"),
        start_date=FIRST_DAY,
        catchup=False,
        max_active_runs=1,
        default_args={
            "owner": entry.owner,
            "on_failure_callback": on_step_failure(entry),
            **retry_with_backoff(entry),
            **({"pool": entry.pool} if entry.pool else {}),
        },
        params=trigger_form(entry),
        tags={"kosli", "key-rotation", f"org:{entry.org}"},
    )


def broken_entry_dag(broken: BrokenEntry) -> DAG:
    """A broken inventory entry still shows up, as a DAG that explains what to fix and cannot rotate."""
    problems = "\n".join(f"- {problem}" for problem in broken.problems)
    for problem in broken.problems:
        log.warning("inventory: %s", problem)
    with DAG(
        dag_id=broken.dag_id,
        description="Inventory entry is invalid: " + "; ".join(broken.problems)[:200],
        doc_md=f"# Invalid inventory entry\n\nFix the inventory; this DAG then rotates the key.\n\n{problems}\n",
        schedule=None,
        start_date=FIRST_DAY,
        catchup=False,
        tags={"kosli", "key-rotation", "inventory-error"},
    ) as dag:

        @task(task_id="inventory_error", multiple_outputs=False)
        def inventory_error() -> None:
            raise AirflowFailException("the inventory entry is invalid:\n" + problems)

        inventory_error()
    return dag
