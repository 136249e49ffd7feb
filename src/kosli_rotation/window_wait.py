"""The deferrable wait for a key's rotation window: a due scheduled run outside it waits in the triggerer, holding
no worker slot, until the window opens (and no blackout covers the day), then checks the present again.

Only DAGs of keys with a ``rotation_window`` or a ``blackout`` have this task (``taskflow.wait_for_rotation_window``),
right after ``preflight`` found the key due and before anything changes.

* A manual run never waits: an incident does not wait for Tuesday. The log says the window was ignored.
* A rotation already in flight (a resumed run) does not wait either: it began inside a window; waiting would only
  keep the consumers on two keys longer.
* While a scheduled run waits, a manual run of the same DAG is queued behind it (``max_active_runs=1``). The
  trigger notices the queued run and the waiting scheduled run steps aside (skipped, nothing changed), so the manual
  run starts within ``CHECK_EVERY`` seconds. The next scheduled check comes back on the DAG's schedule.
* At the opening the run re-checks before going on: still inside the window (a late trigger after the window closed
  waits again), key still due (something may have rotated it meanwhile), and whether a rotation is now in flight.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from kosli_rotation.inventory import KeyEntry
from kosli_rotation.run_request import is_manual
from kosli_rotation.triggers import WindowOpenTrigger
from kosli_rotation.windows import NoOpeningError, describe, describe_moment, next_opening

#: How often the waiting trigger looks for a run queued behind it (a manual rotation).
CHECK_EVERY = 15.0


class WaitForRotationWindow(BaseSensorOperator):
    """Wait, deferred (no worker slot), for the key's rotation window to open; manual runs go straight on."""

    ui_color = "#fdf0d5"

    def __init__(self, *, entry: KeyEntry, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", timedelta(days=401))
        super().__init__(**kwargs)
        self.entry = entry

    def execute(self, context: Any) -> None:
        if is_manual(context["dag_run"]):
            self.log.info(
                "manual run: rotation_window %s ignored (a manual rotation does not wait for its window)",
                describe(self.entry),
            )
            return
        if self._resuming():
            return
        self._go_on_or_wait(context)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        if event and event.get("queued_runs"):
            reason = (
                f"{event['queued_runs']} run(s) of this DAG were triggered while this scheduled run waited for the "
                "rotation window: they go first (a manual rotation does not wait); nothing was changed, the next "
                "scheduled check comes back on the schedule"
            )
            self.log.info(reason)  # the skip's own message is not in the task log
            raise AirflowSkipException(reason)
        self.log.info("The rotation window opened: checking again that the key is due")
        self._go_on_or_wait(context)

    def poke(self, context: Any) -> bool:
        return next_opening(self.entry, datetime.now(UTC)) <= datetime.now(UTC)

    def _go_on_or_wait(self, context: Any) -> None:
        now = datetime.now(UTC)
        try:
            opening = next_opening(self.entry, now)
        except NoOpeningError as error:
            raise AirflowFailException(f"{self.entry.name}: {error}") from None
        if opening > now:
            self.log.info(
                "Outside the rotation window (%s): deferring until it opens at %s (%.0f s from now); no worker slot "
                "is held",
                describe(self.entry),
                describe_moment(opening, self.entry),
                (opening - now).total_seconds(),
            )
            self.defer(
                trigger=WindowOpenTrigger(
                    opens_at=opening.timestamp(),
                    key=self.entry.name,
                    dag_id=context["dag_run"].dag_id,
                    check_every=CHECK_EVERY,
                ),
                method_name="execute_complete",
                timeout=(opening - now) + timedelta(days=1),
            )
        self.log.info("Inside the rotation window (%s)", describe(self.entry))
        self._still_due(context)

    def _resuming(self) -> bool:
        """A rotation in flight began inside a window: finishing it does not wait for the next one."""
        from kosli_rotation.rotation import Rotation
        from kosli_rotation.taskflow import airflow_outcome

        with airflow_outcome():
            record = Rotation(self.entry).store.load().record
        if record.in_flight:
            self.log.info(
                "A %s is in flight (run %s, phase %r): finishing it does not wait for the rotation window (%s)",
                record.operation,
                record.run_id,
                record.state.value,
                describe(self.entry),
            )
        return record.in_flight

    def _still_due(self, context: Any) -> None:
        """The present, not what preflight saw before the wait: the record in Vault and the key's age."""
        from kosli_rotation.preflight_checks import check_due
        from kosli_rotation.rotation import Rotation
        from kosli_rotation.taskflow import airflow_outcome, run_request

        if self._resuming():
            return
        with airflow_outcome():
            rotation = Rotation(self.entry)
            check_due(self.entry, rotation.identity, run_request(self.entry, context), rotation.store.load().record)
