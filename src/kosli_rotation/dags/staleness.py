"""
# Check every day that each Kosli key is fresh, its rotation healthy, and its consumers up to date

One task per key in the inventory (labelled with the key's name in the grid) checks that key and,
if anything is wrong, **sends a notice** through the key's `notify` targets and **fails**, so the grid
shows which key needs attention:

* **age**: the key is more than a day past its `max_age_days` (counted from its last rotation recorded
  in Vault, or from Kosli's `created_at` for a key the tool never rotated) and its rotation DAG has not
  rotated it: the DAG is paused, or its runs fail;
* **state**: the key's Vault record says a rotation failed (`failed_step`), or a rotation is in flight
  whose lock expired long ago (its run died and nothing resumed it);
* **expiry**: Kosli expires the key within `expiry_warning_days` (30): the check fails every day until it is
  rotated, and notifies at 30, 7 and 1 day(s) before (remembered in `<vault_path>/notices/expiry`);
* **consumers**: a consumer that can be read back holds a value that is not the current key (or nothing).
  Write-only consumers (GitHub, Jenkins, ...) cannot be read: the check says so, and what the tool last
  wrote there.

A check that cannot run (Vault or Kosli unreachable, a consumer refusing our credentials) is a problem
too: this DAG exists to prove that every key is healthy. So is an invalid inventory entry (its task is labelled
with the entry's name, or `keys[N]`). An unreadable inventory builds no DAG at all: the DAG file's import error
names the file and the line.

It reads the record's non-secret summary in Vault's `custom_metadata` (the key itself only when that
summary is missing or out of date, to compute its fingerprint), never returns or logs a key, and
changes nothing: to act, trigger the key's rotation DAG (or its rollback DAG).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import DAG, CronTriggerTimetable, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from kosli_rotation.inventory import BrokenEntry, Inventory, KeyEntry
from kosli_rotation.notifications import notify_staleness
from kosli_rotation.staleness import check_key
from kosli_rotation.staleness_expiry import remember_notices
from kosli_rotation.taskflow import FIRST_DAY

#: After the rotation DAGs' default due check (06:00 UTC), so a key due today is rotated before it is judged.
SCHEDULE = "0 7 * * *"
DAG_ID = "kosli_key_staleness"

log = logging.getLogger("kosli_rotation.staleness")


def _label(broken: BrokenEntry) -> str:
    return broken.name if isinstance(broken.name, str) else f"keys[{broken.index}]"


def staleness_dag(inventory: Inventory) -> DAG:
    """The daily check: one mapped task instance per key (and per invalid entry, which fails saying why)."""
    keys: dict[str, KeyEntry] = {entry.name: entry for entry in inventory.entries}
    invalid = {_label(broken): broken.problems for broken in inventory.broken}

    @task(map_index_template="{{ key_name }}", retries=0)
    def check_that_the_key_is_fresh(name: str) -> dict[str, Any]:
        """Check one key; if anything is wrong, notify its `notify` targets and fail."""
        context = get_current_context()
        context["key_name"] = name  # type: ignore[typeddict-unknown-key]
        if name in invalid:
            raise AirflowFailException("the inventory is invalid:\n" + "\n".join(invalid[name]))
        entry = keys[name]
        health = check_key(entry)
        facts = health.facts(dag_id=context["dag"].dag_id, run_id=context["dag_run"].run_id)
        for finding in health.findings:
            log.log(logging.ERROR if finding.problem else logging.INFO, "[%s] %s", finding.check, finding.message)
        if health.problems:
            if any(finding.notify for finding in health.problems):  # not an expiry warning announced already
                notify_staleness(entry.notify, facts, context)
                remember_notices(health)
            raise AirflowFailException(health.summary())
        return facts

    with DAG(
        dag_id=DAG_ID,
        dag_display_name="Kosli keys: daily staleness check",
        description=(
            "Alerts when a Kosli key is past its max age, its rotation failed, or a consumer holds a stale value"
        ),
        doc_md=__doc__,
        schedule=CronTriggerTimetable(SCHEDULE, timezone="UTC"),
        start_date=FIRST_DAY,
        catchup=False,
        max_active_runs=1,
        tags={"kosli", "key-rotation", "staleness"},
    ) as dag:
        check_that_the_key_is_fresh.expand(name=[*keys, *invalid])
    return dag
