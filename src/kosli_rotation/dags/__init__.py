"""The Airflow DAGs of the Kosli key rotation, built from an inventory: what a deployment's one DAG file calls.

    from kosli_rotation.dags import build_dags

    globals().update(build_dags())  # or build_dags("/path/to/inventory.yaml")

For each key: ``rotate_kosli_key_<name>`` (scheduled and manual rotation) and ``rollback_kosli_key_<name>`` (manual);
for the whole inventory: ``kosli_key_staleness`` (the daily check). Building reads the inventory and nothing else (no
hooks, no network, no Variables): the dag-processor runs it at every parse.
"""

from __future__ import annotations

import os

from airflow.sdk import DAG

from kosli_rotation.dags.rollback import rollback_dags
from kosli_rotation.dags.rotation import rotation_dags
from kosli_rotation.dags.staleness import staleness_dag
from kosli_rotation.inventory import load_inventory

__all__ = ["build_dags"]


def build_dags(inventory: str | os.PathLike[str] | None = None) -> dict[str, DAG]:
    """Every DAG of the inventory at ``inventory`` (default: ``$KOSLI_ROTATION_INVENTORY``), keyed by DAG id.

    An unreadable inventory raises ``InventoryError`` naming the file and line: Airflow shows it as the DAG file's
    import error. An invalid entry does not stop the others: it gets a DAG that fails saying what is wrong.
    """
    loaded = load_inventory(inventory)
    dags = [*rotation_dags(loaded), *rollback_dags(loaded), staleness_dag(loaded)]
    return {dag.dag_id: dag for dag in dags}
