"""
# Rotate a Kosli service-account API key with zero downtime

For each key in the inventory, this DAG **rotates the key in Kosli**, **stores the new key in
Vault** in the same task, **fans it out to every consumer**, **verifies** that the new key works
everywhere, **waits out the grace period** without holding a worker slot, then makes sure the
**old key is dead** (HTTP 401) and writes an audit entry.

* Scheduled runs check every day whether the key has reached its maximum age, and rotate it then
  (strategy `rotate`: the old key dies when Kosli's grace period ends).
* Keys with a `rotation_window` or a `blackout`: a due scheduled run outside the window waits for it in
  `wait_window`, deferred (no worker slot held), then checks again that the key is due. Manual runs never wait.
* Manual runs (after an incident or an offboarding) rotate now. They ask for a reason and default
  to strategy `replace`: a new key, and the old key revoked as soon as every consumer has the new one.
* Every step can be retried or cleared safely: the rotation's state lives in the key's Vault record,
  and a later run resumes an unfinished rotation instead of starting another one.

No task returns or logs a key: only Vault paths, key ids and fingerprints (`sha256:…`).
"""

from __future__ import annotations

from airflow.sdk import DAG, chain

from kosli_rotation.inventory import Inventory
from kosli_rotation.rotation import Rotation
from kosli_rotation.taskflow import (
    attest_step,
    broken_entry_dag,
    fail_the_run_if_any_step_failed,
    for_each_consumer_batch,
    gate,
    rotation_dag,
    step,
    wait_for_grace_end,
    wait_for_rotation_window,
)


def rotation_dags(inventory: Inventory) -> list[DAG]:
    """One rotation DAG per valid key; one DAG per invalid entry that fails saying what is wrong with it."""
    dags = []
    for entry in inventory.entries:
        rotation = Rotation(entry)
        with rotation_dag(entry, doc_md=__doc__) as dag:
            chain(
                step(rotation.preflight),
                *wait_for_rotation_window(entry),
                step(rotation.rotate_and_store),
                step(rotation.verify_new_key),
                *for_each_consumer_batch(rotation.fan_out, rotation.verify_consumers),
                gate(rotation.all_consumers_verified),
                wait_for_grace_end(entry),
                step(rotation.revoke_old),
                step(rotation.confirm_old_key_dead),
                step(rotation.finalize),
                *attest_step(entry),
            )
            fail_the_run_if_any_step_failed(dag)
        dags.append(dag)
    return dags + [broken_entry_dag(broken) for broken in inventory.broken]
