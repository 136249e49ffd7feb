"""A scheduled run of a real DAG, as the scheduler creates it: ``run_type=scheduled``, triggered by the timetable.

``dag.test()`` always makes a manual run. This makes the DagRun the scheduler would (``create_dagrun`` with
``DagRunType.SCHEDULED``) and then runs its tasks with the loop ``dag.test()`` uses (Airflow's own ``_run_task``,
deferrals run in line), so the product code sees exactly what a scheduled run shows it.
"""

from __future__ import annotations

import contextlib
import time
from datetime import timedelta
from typing import Any


def run_scheduled(dag: Any) -> Any:
    """Run ``dag`` once as a scheduled run (each call a new logical date) and return the finished DagRun."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db
    from airflow.models.dagrun import DagRun
    from airflow.sdk import DagRunState, timezone
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.settings import Session
    from airflow.utils.state import TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    session = Session()
    manager = DagBundlesManager()  # the DAG's serialized version in the metadata DB, as dag.test() writes it
    manager.sync_bundles_to_db(session=session)
    session.commit()
    for bundle in manager.get_all_dag_bundles():
        if not bundle.is_initialized:
            bundle.initialize()
        bag = BundleDagBag(dag_folder=bundle.path, bundle_path=bundle.path, bundle_name=bundle.name)
        sync_bag_to_db(bag, bundle.name, bundle.version)
    now = timezone.utcnow()
    run = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).create_dagrun(
        run_id=DagRun.generate_run_id(run_type=DagRunType.SCHEDULED, logical_date=now, run_after=now),
        logical_date=now,
        data_interval=(now - timedelta(days=1), now),
        run_after=now,
        conf={},
        run_type=DagRunType.SCHEDULED,
        state=DagRunState.RUNNING,
        triggered_by=DagRunTriggeredByType.TIMETABLE,
        start_date=now,
        session=session,
    )
    session.commit()
    deadline = time.monotonic() + 600
    while run.state == DagRunState.RUNNING:
        session.expire_all()
        schedulable, _ = run.update_state(session=session)
        for ti in schedulable:
            ti.try_number += 1
            ti.state = TaskInstanceState.SCHEDULED
        session.commit()
        scheduled = [ti for ti in run.get_task_instances(session=session) if ti.state == TaskInstanceState.SCHEDULED]
        for ti in scheduled:
            with contextlib.suppress(Exception):  # a failed task is part of the run's outcome: see its state
                _run_task(ti=ti, task=dag.task_dict[ti.task_id], run_triggerer=True)
        if not scheduled and run.state == DagRunState.RUNNING:
            assert time.monotonic() < deadline, f"run {run.run_id} is stuck: {run.get_task_instances(session=session)}"
            time.sleep(0.2)
    session.close()
    return run
