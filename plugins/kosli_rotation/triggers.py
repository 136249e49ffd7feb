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
