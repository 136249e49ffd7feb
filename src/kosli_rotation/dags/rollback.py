"""
# Roll back a Kosli key rotation while the old key still lives

When a rotation went wrong after the new key was stored but **before the old key was revoked** (a
consumer cannot take the new key, the rotation failed at `revoke_old`, ...), this DAG **puts the old
key back in Vault**, **writes it back to every consumer** and **proves** each holds it, then **revokes
the new key**, makes sure it is **dead** (HTTP 401) while the old key still works, and writes an
**audit entry** saying that a rollback happened, why and by whom.

* Manual runs only, and a **reason** is required (it goes into the audit entry).
* It refuses, saying why, when there is nothing to roll back (no rotation in flight, or no new key
  stored yet), when it is too late (the old key is already revoked, or no longer gets HTTP 200), and
  for a `rotate`: Kosli kills the old secret by itself at the end of the grace period whatever we do,
  and when the new key shares the old key's id, revoking it would kill the old one too. For a bad new
  key, trigger the rotation DAG with strategy `replace` instead.
* It holds the key's rotation lock in Vault: a rollback and a rotation of the same key never interleave.
* The new key is revoked only on live evidence: the old key answers HTTP 200, and every consumer was
  proven by this run to hold it again (readable ones are read back once more right before revoking).
* Every step can be retried or cleared safely; a later run resumes an unfinished rollback.
* After a rollback the key is as old as it was: if it is past due, the next scheduled rotation rotates
  it again (pause the rotation DAG while you fix what made you roll back).

No task returns or logs a key: only Vault paths, key ids and fingerprints (`sha256:…`).
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, chain

from kosli_rotation.inventory import Inventory, KeyEntry
from kosli_rotation.rollback import Rollback, on_rollback_step_failure, rollback_dag_id
from kosli_rotation.taskflow import (
    FIRST_DAY,
    fail_the_run_if_any_step_failed,
    for_each_consumer_batch,
    gate,
    retry_with_backoff,
    step,
)


def rollback_form(entry: KeyEntry) -> dict[str, Param]:
    """The trigger form: a reason (required) and dry run. The rotation's other parameters are fixed (hidden):
    a rollback revokes the new key as soon as every consumer holds the old one again, like a 'replace'."""
    return {
        "reason": Param(
            type="string",
            minLength=1,
            maxLength=500,
            pattern=r"\S",
            title="Reason",
            description="Why roll back (which consumer broke, ...). Required; recorded in the audit entry.",
        ),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Check and print the plan only."),
        "strategy": Param("replace", const="replace"),
        "grace_hours": Param(entry.grace_hours, const=entry.grace_hours),
        "force": Param(False, const=False),
        "revoke_despite_recent_use": Param(False, const=False),
    }


def rollback_dag(entry: KeyEntry) -> DAG:
    """The DAG shell for one key's rollback: manual only, one run at a time, retries with backoff."""
    return DAG(
        dag_id=rollback_dag_id(entry),
        dag_display_name=f"Roll back Kosli key {entry.org}/{entry.service_account}",
        description=f"Put the old Kosli key of {entry.org}/{entry.service_account} back before it is revoked",
        doc_md=f"{__doc__}\n\nRotation DAG of this key: `{entry.dag_id}`; Vault record `{entry.vault_path}`.\n",
        schedule=None,
        start_date=FIRST_DAY,
        catchup=False,
        max_active_runs=1,
        default_args={
            "owner": entry.owner,
            "on_failure_callback": on_rollback_step_failure(entry),
            **retry_with_backoff(entry),
        },
        params=rollback_form(entry),
        tags={"kosli", "key-rotation", "rollback", f"org:{entry.org}"},
    )


def rollback_dags(inventory: Inventory) -> list[DAG]:
    """One manual rollback DAG per valid key of the inventory."""
    dags = []
    for entry in inventory.entries:
        rollback = Rollback(entry)
        with rollback_dag(entry) as dag:
            chain(
                step(rollback.check_rollback_possible),
                step(rollback.restore_old_key_in_vault),
                *for_each_consumer_batch(rollback.fan_out_old_key, rollback.verify_consumers),
                gate(rollback.all_consumers_verified),
                step(rollback.revoke_new_key),
                step(rollback.confirm_new_key_dead),
                step(rollback.finalize_rollback),
            )
            fail_the_run_if_any_step_failed(dag)
        dags.append(dag)
    return dags
