"""The Airflow DAGs of the Kosli key rotation, built from an inventory: what a deployment's one DAG file calls.

    from kosli_rotation.dags import build_dags

    globals().update(build_dags())  # or build_dags("/path/to/inventory.yaml", include=["rotation"])

For each key: ``rotate_kosli_key_<name>`` (scheduled and manual rotation) and ``rollback_kosli_key_<name>`` (manual);
for the whole inventory: ``kosli_key_staleness`` (the daily check). Building reads the inventory and nothing else (no
hooks, no network, no Variables): the dag-processor runs it at every parse.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection

from airflow.sdk import DAG

from kosli_rotation.dags.rollback import rollback_dags
from kosli_rotation.dags.rotation import rotation_dags
from kosli_rotation.dags.staleness import staleness_dag
from kosli_rotation.inventory import Inventory, load_inventory

__all__ = ["FAMILIES", "build_dags"]

#: The DAGs of an inventory, by family. A deployment with hundreds of keys can build them in two files (say
#: ``include=["rotation", "staleness"]`` and ``include=["rollback"]``): each file then parses in about half the time
#: and stays under ``[core] dagbag_import_timeout``.
FAMILIES: dict[str, Callable[[Inventory], list[DAG]]] = {
    "rotation": rotation_dags,
    "rollback": rollback_dags,
    "staleness": lambda inventory: [staleness_dag(inventory)],
}


def build_dags(
    inventory: str | os.PathLike[str] | None = None, include: Collection[str] = tuple(FAMILIES)
) -> dict[str, DAG]:
    """Every DAG of the inventory at ``inventory`` (default: ``$KOSLI_ROTATION_INVENTORY``), keyed by DAG id.

    An unreadable inventory raises ``InventoryError`` naming the file and line: Airflow shows it as the DAG file's
    import error. An invalid entry does not stop the others: it gets a DAG that fails saying what is wrong.
    """
    unknown = sorted(set(include) - set(FAMILIES))
    if unknown:
        raise ValueError(f"build_dags(include=...): unknown {unknown}; choose from {sorted(FAMILIES)}")
    loaded = load_inventory(inventory)
    return {dag.dag_id: dag for family in include for dag in FAMILIES[family](loaded)}
