"""The "Key rotation" page of the Airflow UI: every key of the inventory the viewer may see, never a secret.

Each row joins three sources: the inventory (what should happen), the non-secret summary the rotation mirrors into
its Vault record's ``custom_metadata`` plus the consumer status notes beside it (what happened to the key), read
through the page's own metadata-only Vault connection, and the Airflow REST API called with the viewer's own token
(what the DAG's runs did). A row is shown only to a viewer who may read the key's rotation DAG
(kosli_rotation/dashboard_access.py). A failure to read one source shows in that row; it never breaks the page.
Every string that came from Vault or the API passes through ``scrub`` and is HTML-escaped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from kosli_rotation.consumers import build_consumer
from kosli_rotation.dashboard_access import DagFilter, PageVault, PageVaultMissing
from kosli_rotation.inventory import BrokenEntry, KeyEntry, load_inventory
from kosli_rotation.lifecycle import LifecycleSettings
from kosli_rotation.scrub import describe_error, scrub
from kosli_rotation.windows import window_summary

#: Task ids that only summarise other failures: a link to them would not say what broke.
WATCHER_TASKS = frozenset({"any_step_failed"})


@dataclass(frozen=True)
class LatestRun:
    """The newest run of a key's DAG, as the Airflow API reports it."""

    run_id: str
    state: str
    failed_task: str | None = None
    failed_map_index: int | None = None


#: Reads a DAG's latest run through the Airflow API (None: the DAG never ran).
RunReader = Callable[[str], LatestRun | None]


@dataclass
class ConsumerState:
    name: str
    kind: str
    #: How the rotation proves it holds the key (``Consumer.proof``): "read back", "write-confirmed + canary"
    #: or "write-confirmed only" (write-only, no canary: nothing proves the value itself).
    proof: str = ""
    verified_at: str | None = None
    written_at: str | None = None


@dataclass
class KeyRow:
    """One line of the page. Only ids, fingerprints, times and states: nothing here may hold a key."""

    name: str
    dag_id: str
    org: str = ""
    service_account: str = ""
    strategy: str = ""
    last_strategy: str | None = None
    max_age_days: int | None = None
    expiry_lead_days: int | None = None
    key_expires_at: float | None = None  # Kosli's expiry of the key, as it answered the mint
    due: str | None = None  # why the last scheduled rotation was due
    phase: str | None = None
    key_id: str | None = None
    fingerprint: str | None = None  # display only
    digest: str | None = None  # the full digest, if the metadata summary carries one
    rotated_at: float | None = None
    grace_ends_at: float | None = None
    failed_step: str | None = None
    failure: str | None = None
    todo: str | None = None
    needs_attention_since: float | None = None  # the retry budget is spent (attention.py)
    failed_runs: int = 0
    run: LatestRun | None = None
    consumers: list[ConsumerState] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: The key's rotation window and blackouts (from the inventory), for when its next rotation can start.
    lifecycle: LifecycleSettings | None = None

    @property
    def next_due(self) -> float | None:
        return self.next_due_by[0]

    @property
    def next_due_by(self) -> tuple[float | None, str]:
        """When the next scheduled rotation is due, and by which rule: the age, or the expiry within the lead."""
        by_age = (
            None
            if self.rotated_at is None or self.max_age_days is None
            else self.rotated_at + self.max_age_days * 86400
        )
        if self.key_expires_at and self.expiry_lead_days:
            by_expiry = self.key_expires_at - self.expiry_lead_days * 86400
            if by_age is None or by_expiry < by_age:
                return by_expiry, "expiry_lead_days"
        return by_age, "max_age_days"

    @property
    def state(self) -> str:
        """What a person should read first: a failure, a rotation in flight, or the last run's outcome."""
        if self.problems and not self.phase:
            return "error"
        if self.needs_attention_since:
            return "needs attention"
        if self.failed_step:
            return "failed"
        if self.run and self.run.state in ("running", "queued"):
            return "running"
        if self.phase and self.phase != "idle":
            return "in flight"
        if self.run and self.run.state == "failed":
            return "failed"
        return "ok" if self.run else "never run"


def _epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


def _text(value: Any) -> str | None:
    """A value read from Vault or the API, as the page may show it."""
    return None if value is None else scrub(value)


def _problem(source: str, error: BaseException) -> str:
    return f"{source}: {type(error).__name__}: {describe_error(error)}"


def key_row(entry: KeyEntry, read_run: RunReader, vault: PageVault) -> KeyRow:
    """Everything the page shows about one key, each source read on its own (Vault through ``vault`` only)."""
    row = KeyRow(
        name=entry.name,
        dag_id=entry.dag_id,
        org=entry.org,
        service_account=entry.service_account,
        strategy=entry.strategy,
        max_age_days=entry.max_age_days,
        expiry_lead_days=entry.expiry_lead_days,
        consumers=[ConsumerState(config.name, config.kind, _proof(config)) for config in entry.consumers],
        lifecycle=entry,
    )
    try:
        summary = {name: _text(value) for name, value in vault.summary(entry).items()}
        row.phase = summary.get("state")
        row.last_strategy = summary.get("strategy")
        row.key_id = summary.get("key_id")
        row.fingerprint = summary.get("fingerprint")
        row.digest = summary.get("digest")
        row.rotated_at = _epoch(summary.get("rotated_at"))
        row.grace_ends_at = _epoch(summary.get("grace_ends_at"))
        row.key_expires_at, row.due = _epoch(summary.get("key_expires_at")), summary.get("due")
        row.failed_step, row.failure, row.todo = summary.get("failed_step"), summary.get("failure"), summary.get("todo")
        row.needs_attention_since = _epoch(summary.get("needs_attention_since"))
        row.failed_runs = int(summary.get("failed_runs") or 0)
        for consumer in row.consumers:
            status = vault.consumer_note(entry, consumer.name)
            if _verified_with_current_key(status, row):
                consumer.verified_at = _text(status.get("verified_at"))
            consumer.written_at = _text(status.get("written_at"))
    except PageVaultMissing as error:
        row.problems.append(str(error))
    except Exception as error:  # one unreadable record must not hide the other keys
        row.problems.append(_problem(f"Vault {vault.location(entry)}", error))
    try:
        run = read_run(entry.dag_id)
        row.run = run and LatestRun(scrub(run.run_id), scrub(run.state), _text(run.failed_task), run.failed_map_index)
    except Exception as error:
        row.problems.append(_problem("Airflow API", error))
    return row


def _proof(config: Any) -> str:
    try:
        return build_consumer(config).proof
    except Exception:  # a consumer kind that cannot say must not break the page
        return "unknown"


def _verified_with_current_key(status: dict[str, Any], row: KeyRow) -> bool:
    """Whether the consumer's status note says it was verified with the key the record names now.

    Display only: the rotation's own gate compares full digests. The record's metadata summary carries only the
    short fingerprint of the key (it never reads the key itself), so unless it also carries a ``digest`` this can
    only compare 48-bit fingerprints, which is enough to show a state, not to prove one.
    """
    if row.digest and status.get("verified_digest"):
        return bool(status["verified_digest"] == row.digest)
    return row.fingerprint is not None and status.get("verified_fingerprint") == row.fingerprint


def broken_row(broken: BrokenEntry) -> KeyRow:
    name = scrub(broken.name) if isinstance(broken.name, str) and broken.name else f"entry {broken.index}"
    return KeyRow(name=name, dag_id=broken.dag_id, problems=[scrub(problem) for problem in broken.problems])


def collect_rows(read_run: RunReader, *, may_read: DagFilter, vault: PageVault | None = None) -> list[KeyRow]:
    """The rows of the keys whose rotation DAG the viewer may read (``may_read``), broken entries included.

    An inventory that cannot be read at all names no DAG: its row goes only to a viewer who may read every DAG.
    """
    try:
        inventory = load_inventory()
    except Exception as error:
        if not may_read(None):
            return []
        return [KeyRow(name="inventory", dag_id="", problems=[_problem("inventory", error)])]
    vault = vault or PageVault()
    rows = [key_row(entry, read_run, vault) for entry in inventory.entries if may_read(entry.dag_id)]
    return rows + [broken_row(broken) for broken in inventory.broken if may_read(broken.dag_id)]


# -- the Airflow API, with the viewer's token -------------------------------------------------------------------


def api_run_reader(base_url: str, token: str, *, timeout: float = 10.0) -> RunReader:
    """Read runs through the public REST API as the viewer, so the page shows only what they may see."""
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"

    def get(path: str, **params: Any) -> Any:
        response = session.get(f"{base_url.rstrip('/')}/api/v2{path}", params=params, timeout=timeout)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def read_run(dag_id: str) -> LatestRun | None:
        runs = get(f"/dags/{quote(dag_id)}/dagRuns", order_by="-run_after", limit=1)
        if not runs or not runs["dag_runs"]:
            return None
        run = runs["dag_runs"][0]
        latest = LatestRun(run_id=run["dag_run_id"], state=run["state"])
        if latest.state != "failed":
            return latest
        instances = get(f"/dags/{quote(dag_id)}/dagRuns/{quote(latest.run_id, safe='')}/taskInstances", limit=1000)
        failed = [
            ti
            for ti in (instances or {}).get("task_instances", [])
            if ti["state"] == "failed" and ti["task_id"] not in WATCHER_TASKS
        ]
        if not failed:
            return latest
        first = min(failed, key=lambda ti: ti.get("end_date") or "")
        map_index = first.get("map_index", -1)
        return LatestRun(latest.run_id, latest.state, first["task_id"], map_index if map_index >= 0 else None)

    return read_run


# -- HTML ----------------------------------------------------------------------------------------------------------

STATE_COLOURS = {
    "ok": "#1a7f37",
    "running": "#0969da",
    "in flight": "#0969da",
    "failed": "#cf222e",
    "needs attention": "#bf3989",
    "error": "#cf222e",
    "never run": "#6e7781",
}


def _when(epoch: float | None) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M UTC") if epoch else "-"


def _duration(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds >= 86400:
        return f"{seconds / 86400:.0f} d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def _link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}" target="_top">{escape(text)}</a>'


def _run_cell(row: KeyRow) -> str:
    if row.run is None:
        return "no run yet"
    run_href = f"/dags/{quote(row.dag_id)}/runs/{quote(row.run.run_id, safe='')}"
    cell = f"{escape(row.run.state)}: {_link(run_href, row.run.run_id)}"
    if row.run.failed_task:
        task_href = f"{run_href}/tasks/{quote(row.run.failed_task)}"
        if row.run.failed_map_index is not None:
            task_href += f"/mapped/{row.run.failed_map_index}"
        cell += f"<br>failed task: {_link(task_href, row.run.failed_task)}"
    return cell


def _proof_marker(proof: str) -> str:
    """How the consumer is proven, said plainly; the weakest proof ("write-confirmed only") stands out."""
    if not proof:
        return ""
    weak = " weak" if proof != "read back" and "canary" not in proof else ""
    return f' <small class="proof{weak}" data-proof="{escape(proof)}">[{escape(proof)}]</small>'


def _consumers_cell(row: KeyRow) -> str:
    items = []
    for consumer in row.consumers:
        verified = _epoch(consumer.verified_at)
        when = f"verified {_when(verified)}" if verified else "not verified with this key"
        mark = "ok" if consumer.verified_at else "pending"
        label = f"{escape(consumer.name)} <small>({escape(consumer.kind)})</small>"
        items.append(f'<li class="{mark}">{label}: {when}{_proof_marker(consumer.proof)}</li>')
    return f"<ul>{''.join(items)}</ul>" if items else "none"


def render_row(row: KeyRow, now: float) -> str:
    state = row.state
    colour = STATE_COLOURS.get(state, "#6e7781")
    age = _duration(now - row.rotated_at) if row.rotated_at else "-"
    due, rule = row.next_due_by
    due_text = "-" if due is None else _when(due) + (" (overdue)" if due < now else f" (in {_duration(due - now)})")
    if due is not None:
        due_text += f"<br><small>by {escape(rule)}</small>"
    if row.key_expires_at:
        due_text += f"<br><small>Kosli expires the key {_when(row.key_expires_at)}</small>"
    window = row.lifecycle and window_summary(
        row.lifecycle, datetime.fromtimestamp(now, UTC), datetime.fromtimestamp(due, UTC) if due else None
    )
    if window:
        due_text += f'<br><small class="window">{escape(window)}</small>'
    grace = "-"
    if row.grace_ends_at and row.phase == "stored" and row.strategy:
        left = row.grace_ends_at - now
        grace = f"{_duration(left)} left" if left > 0 else "ended"
    details = []
    if row.phase:
        details.append(f"phase {escape(row.phase)}")
    if row.needs_attention_since:
        details.append(
            f"<b>needs attention since {_when(row.needs_attention_since)} after {row.failed_runs} failed runs</b>: "
            "scheduled runs wait unless a consumer would be left on a dying key; resume with a manual run setting "
            "resume_after_attention"
        )
    if row.failed_step:
        details.append(f"<b>failed at {escape(row.failed_step)}</b>: {escape(row.failure or '')}")
    if row.todo:
        details.append(f"to do: {escape(row.todo)}")
    if row.due:
        details.append(f"last due: {escape(row.due)}")
    details += [f'<span class="problem">{escape(problem)}</span>' for problem in row.problems]
    key = f"{escape(row.key_id or '-')}<br><small>{escape(row.fingerprint or '')}</small>"
    return (
        f'<tr data-key="{escape(row.name)}" data-state="{escape(state)}">'
        f"<td>{_link('/dags/' + quote(row.dag_id), row.name) if row.dag_id else escape(row.name)}</td>"
        f"<td>{escape(row.org)}</td><td>{escape(row.service_account)}</td><td>{key}</td>"
        f"<td>{age}</td><td>{due_text}</td><td>{escape(row.strategy)} <small>(scheduled)</small>"
        f"{'<br>last run: ' + escape(row.last_strategy) if row.last_strategy else ''}</td>"
        f'<td><span class="state" style="background:{colour}">{escape(state)}</span><br>{_run_cell(row)}'
        f"<br><small>{'<br>'.join(details)}</small></td>"
        f"<td>{grace}</td><td>{_consumers_cell(row)}</td></tr>"
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Key rotation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #1f2328; }}
h1 {{ font-size: 1.4rem; margin: 0 0 .3rem; }} p.lead {{ color: #59636e; margin: 0 0 1rem; }}
table {{ border-collapse: collapse; width: 100%; font-size: .9rem; }}
th, td {{ border-bottom: 1px solid #d1d9e0; padding: .45rem .6rem; text-align: left; vertical-align: top; }}
th {{ background: #f6f8fa; }} ul {{ margin: 0; padding-left: 1rem; }} li.pending {{ color: #9a6700; }}
.state {{ color: white; border-radius: 1rem; padding: .1rem .6rem; font-weight: 600; white-space: nowrap; }}
.problem {{ color: #cf222e; }} small {{ color: #59636e; }} a {{ color: #0969da; }}
small.weak {{ color: #9a6700; font-weight: 600; }}
</style></head><body>
<h1>Key rotation</h1>
<p class="lead">Every Kosli key in the inventory whose rotation DAG you may read: where its rotation stands and which
consumers are verified with the current key, and how (read back: the value itself was compared; write-confirmed +
canary: the store confirmed the write and a canary job succeeded with it;
write-confirmed only: the store confirmed the write, nothing proves the value).
Read from Vault metadata and the Airflow API at {now}; no key is ever shown.</p>
<table><thead><tr><th>key</th><th>org</th><th>service account</th><th>key id</th><th>key age</th><th>next due</th>
<th>strategy</th><th>state</th><th>grace left</th><th>consumers</th></tr></thead>
<tbody>{rows}</tbody></table></body></html>
"""

#: The one row of a page with no key the viewer may see; it names none.
NO_ROWS = (
    '<tr class="empty"><td colspan="10">There is no key whose rotation DAG you may read. Ask an Airflow admin for '
    "read access to a key's <code>rotate_kosli_key_…</code> DAG to see it here.</td></tr>"
)


def render_page(rows: list[KeyRow], now: float | None = None) -> str:
    now = time.time() if now is None else now
    return PAGE.format(now=_when(now), rows="".join(render_row(row, now) for row in rows) or NO_ROWS)
