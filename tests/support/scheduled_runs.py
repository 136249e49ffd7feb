"""Run a DAG through ``dag.test()`` as a *scheduled* run: a DagRun of ``run_type=scheduled``, triggered by the
timetable, the way the scheduler creates one.

``dag.test()`` always creates a manual run (Airflow's ``get_or_create_dagrun``, a helper that exists only for
``dag.test()``). While ``scheduled_run`` runs, that helper creates the run as the scheduler would instead: same
DAG, same logical date and data interval, ``run_type=SCHEDULED``, a scheduled run id, no triggering user. The
product reads the run type from the DagRun Airflow gives the task; nothing of the product is replaced.
"""

from __future__ import annotations

from typing import Any
from unittest import mock


def _create_scheduled_run(
    *,
    dag: Any,
    run_id: str,
    logical_date: Any,
    data_interval: Any,
    run_after: Any,
    conf: Any,
    triggered_by: Any,
    triggering_user_name: Any,
    start_date: Any,
    session: Any,
) -> Any:
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType
    from sqlalchemy import select

    del run_id, triggered_by, triggering_user_name  # a manual run's: the scheduler's run has its own
    existing = session.scalar(select(DagRun).where(DagRun.dag_id == dag.dag_id, DagRun.logical_date == logical_date))
    if existing:
        session.delete(existing)
        session.commit()
    return dag.create_dagrun(
        run_id=DagRun.generate_run_id(run_type=DagRunType.SCHEDULED, logical_date=logical_date, run_after=run_after),
        logical_date=logical_date,
        data_interval=data_interval,
        run_after=run_after,
        conf=conf,
        run_type=DagRunType.SCHEDULED,
        state=DagRunState.RUNNING,
        triggered_by=DagRunTriggeredByType.TIMETABLE,
        triggering_user_name=None,
        start_date=start_date or logical_date,
        session=session,
    )


def scheduled_run(dag: Any) -> Any:
    """One scheduled run of ``dag`` (the real DAG, as ``Scenario.dag()`` loads it) through ``dag.test()``."""
    with mock.patch("airflow.models.dagrun.get_or_create_dagrun", _create_scheduled_run):
        run = dag.test()
    assert str(getattr(run.run_type, "value", run.run_type)) == "scheduled", run.run_type
    return run
