"""The deferrable sensor that waits out Kosli's grace period without holding a worker slot."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseSensorOperator

from kosli_rotation.key_store import KeyStore
from kosli_rotation.triggers import GraceEndTrigger

#: Wait this much past Kosli's reported grace end, so the old key is certainly expired.
MARGIN_SECONDS = 2.0
#: Kosli allows grace periods of up to 720 hours; the sensor must outlast the longest one.
LONGEST_WAIT = timedelta(hours=721)


class WaitForGraceEnd(BaseSensorOperator):
    """Wait until the grace end recorded in the key's Vault record (set from Kosli's rotate answer), or for
    ``replace``, until the observation window after the last consumer was verified has passed (``revoke_old``
    then refuses if Kosli saw the old key used meanwhile).

    The target comes from Vault, not from this task's start or the run's date, so retries and
    resumed runs never restart the clock.
    """

    template_fields = ("vault_path",)
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        vault_path: str,
        vault_conn_id: str = "vault_default",
        vault_mount: str | None = None,
        observation_seconds: float = 0,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("timeout", LONGEST_WAIT)
        kwargs.setdefault("poke_interval", 60)
        super().__init__(**kwargs)
        self.vault_path = vault_path
        self.vault_conn_id = vault_conn_id
        self.vault_mount = vault_mount
        self.observation_seconds = observation_seconds
        self.deferrable = deferrable

    def _store(self) -> KeyStore:
        return KeyStore(self.vault_path, conn_id=self.vault_conn_id, mount=self.vault_mount)

    def _journal(self, context: Any, *, running: bool) -> None:
        if context and "dag_run" in context:
            owner = f"{context['dag_run'].dag_id}/{context['dag_run'].run_id}"
            self._store().mark_step(owner, self.task_id, running=running)

    def _wait_until(self) -> float | None:
        ends_at = self._store().load().record.wait_ends_at(self.observation_seconds)
        return ends_at + MARGIN_SECONDS if ends_at else None

    def execute(self, context: Any) -> None:
        until = self._wait_until()
        if until is None:
            self.log.info("Nothing to wait for (no grace period or observation window, or already past this step)")
            return
        self._journal(context, running=True)  # cleared in execute_complete: a kill while waiting is noticed
        remaining = until - time.time()
        if remaining <= 0:
            self.log.info("Grace period ended at %s", datetime.fromtimestamp(until, UTC).isoformat())
            self._journal(context, running=False)
            return
        if not self.deferrable:
            super().execute(context)
            self._journal(context, running=False)
            return
        self.log.info(
            "Deferring until the grace period ends at %s (%.0f s from now); no worker slot is held",
            datetime.fromtimestamp(until, UTC).isoformat(),
            remaining,
        )
        self.defer(
            trigger=GraceEndTrigger(ends_at=until, key=self.vault_path),
            method_name="execute_complete",
            timeout=timedelta(seconds=remaining) + timedelta(hours=1),
        )

    def poke(self, context: Any) -> bool:
        until = self._wait_until()
        return until is None or time.time() >= until

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        self.log.info("Grace period over: %s", event)
        self._journal(context, running=False)
