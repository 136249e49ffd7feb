"""A per-DAG auth manager for the demo's restricted UI (``python -m demo --restricted-port``): not product code.

Airflow's simple auth manager gives each user a role over every DAG; the page must be shown working for a viewer
who may read only some. ``PerDagAuthManager`` is the simple auth manager plus one rule: a user named in
``[kosli_rotation_demo] dag_access`` (JSON: user -> DAG ids) may use only those DAGs, within their role.
``airflow standalone`` always runs the plain simple auth manager, so the demo serves this one from a second
``airflow api-server`` on the same database.
"""

from __future__ import annotations

import json
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
from airflow.configuration import conf

CLASSPATH = "demo.auth.PerDagAuthManager"


def dag_access() -> dict[str, set[str]]:
    mapping = json.loads(conf.get("kosli_rotation_demo", "dag_access", fallback="{}") or "{}")
    return {user: set(dag_ids) for user, dag_ids in mapping.items()}


class PerDagAuthManager(SimpleAuthManager):
    def is_authorized_dag(self, *, method: Any, user: Any, access_entity: Any = None, details: Any = None) -> bool:
        allowed = dag_access().get(user.username)
        if allowed is not None:
            if details is None:  # every DAG at once
                return False
            if details.id is not None and details.id not in allowed:
                return False
            # details.id None: a listing, which Airflow then filters DAG by DAG through this method
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)
