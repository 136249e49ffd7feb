"""What one DAG run asks for, after validation (see ``taskflow.run_request``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class RunRequest:
    """What one DAG run asks for, after validation. Holds no secret."""

    run_id: str
    manual: bool
    reason: str
    strategy: str
    grace_hours: int
    force: bool = False  # lifts the one-hour minimum interval between manual rotations, nothing else
    dry_run: bool = False
    triggered_by: str = "scheduler"
    #: The consumers this run may write to (a manual choice); None: all of them.
    consumers: frozenset[str] | None = None
    #: Revoke a 'replace''s old key although Kosli saw it used after every consumer had the new one.
    revoke_despite_recent_use: bool = False
    #: A person resumes a rotation that spent its retry budget (``attention.py``); manual runs only.
    resume_after_attention: bool = False

    def updates(self, consumer: str) -> bool:
        return self.consumers is None or consumer in self.consumers


def is_manual(dag_run: Any) -> bool:
    """Anything but the scheduler's own runs counts as manual: someone asked for this rotation now."""
    return str(getattr(dag_run.run_type, "value", dag_run.run_type)) != "scheduled"
