"""Triggers run by Airflow's triggerer. They live in the library, never in ``dags/``: the
triggerer imports them by class path and does not load DAG bundles."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class GraceEndTrigger(BaseTrigger):
    """Fires once the wall clock passes ``ends_at`` (epoch seconds). No I/O, no secret, no side
    effect, so running it twice (triggerer failover) is harmless."""

    def __init__(self, ends_at: float, key: str, check_every: float = 60.0) -> None:
        super().__init__()
        self.ends_at = float(ends_at)
        self.key = key
        self.check_every = check_every

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"ends_at": self.ends_at, "key": self.key, "check_every": self.check_every},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # Sleep in bounded chunks so a suspended machine or a changed clock is noticed.
        while (remaining := self.ends_at - time.time()) > 0:
            await asyncio.sleep(min(self.check_every, remaining))
        yield TriggerEvent({"key": self.key, "grace_ended_at": self.ends_at})


class WindowOpenTrigger(BaseTrigger):
    """Fires once the wall clock passes ``opens_at`` (epoch seconds), the next opening of a key's rotation window;
    or earlier, when ``dag_id`` is given and a run of that DAG is queued behind the waiting one (a manual run after
    an incident must not wait for the scheduled one's window: ``max_active_runs`` is 1). Reads the DAG run count
    through the triggerer's API client, writes nothing, holds no secret: running it twice is harmless."""

    def __init__(self, opens_at: float, key: str, dag_id: str | None = None, check_every: float = 30.0) -> None:
        super().__init__()
        self.opens_at = float(opens_at)
        self.key = key
        self.dag_id = dag_id
        self.check_every = check_every

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"opens_at": self.opens_at, "key": self.key, "dag_id": self.dag_id, "check_every": self.check_every},
        )

    async def _queued_runs(self) -> int:
        if self.dag_id is None:
            return 0
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
        from asgiref.sync import sync_to_async

        return await sync_to_async(RuntimeTaskInstance.get_dr_count)(dag_id=self.dag_id, states=["queued"])

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while (remaining := self.opens_at - time.time()) > 0:
            if queued := await self._queued_runs():
                yield TriggerEvent({"key": self.key, "queued_runs": queued})
                return
            await asyncio.sleep(min(self.check_every, remaining))
        yield TriggerEvent({"key": self.key, "window_opened_at": self.opens_at})
