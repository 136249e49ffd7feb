"""Kosli key rotation: the Airflow DAGs of every key in the inventory (KOSLI_ROTATION_INVENTORY).

For each key a DAG that rotates it and one that rolls a rotation back, and the daily staleness check. The steps
are in the installed provider (airflow-provider-kosli-rotation, ``kosli_rotation.dags``); this file only builds them.
"""

from kosli_rotation.dags import build_dags

globals().update(build_dags())
