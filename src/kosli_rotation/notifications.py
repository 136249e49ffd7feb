"""Notices through Airflow's notifier mechanism: e-mail (SMTP provider) and webhooks (HTTP).

Configured per inventory entry (``notify:``). Two kinds of notice share one way of sending
(``send_notice``):

* a **failure notice**, when a step of a rotation (or a rollback) fails for good, with what a person on
  call needs: which key, which step, why, which consumers are not verified, and how long the old key has left;
* a **needs-attention notice**, once, when a rotation spends its retry budget (``attention.py``): every failed
  run and what to do;
* a **staleness notice**, when the daily staleness check finds something wrong with a key: past its maximum
  age, a failed or abandoned rotation, a consumer holding a value that is not the current key.
"""

from __future__ import annotations

import html
import json
import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kosli_rotation.scrub import one_line, scrub, scrub_data

log = logging.getLogger(__name__)


class EmailTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["email"]
    to: list[str] = Field(min_length=1)
    conn_id: str = Field(default="smtp_default", description="An SMTP connection (the SMTP provider's).")
    from_email: str | None = None


class WebhookTarget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["webhook"]
    conn_id: str = Field(description="An HTTP connection whose host is the webhook's base URL.")
    endpoint: str = ""


NotifyTarget = Annotated[EmailTarget | WebhookTarget, Field(discriminator="kind")]


def failure_summary(facts: dict[str, Any]) -> tuple[str, str]:
    """Subject and body of a failure notice. ``facts`` come from ``Rotation.record_failure`` (or
    ``Rollback.record_failure``, which sets ``operation`` to ``rollback``)."""
    subject = f"Kosli key {facts.get('operation', 'rotation')} failed: {facts['key']} at {facts['failed_step']}"
    lines = [
        f"Key: {facts['key']} (DAG {facts['dag_id']}, run {facts['run_id']})",
        f"Failed step: {facts['failed_step']}",
        f"Error: {facts['error']}",
        f"Phase: {facts['phase']}",
    ]
    if facts.get("unverified_consumers"):
        lines.append(
            f"Consumers not verified with {facts.get('key_to_verify', 'the new key')}: "
            + ", ".join(facts["unverified_consumers"])
        )
    if facts.get("old_key_dies_at"):
        lines.append(
            f"Kosli revokes the old key by itself at {facts['old_key_dies_at']} ({facts['hours_left']} hours left):"
            " consumers still using it break then."
        )
    lines.append(f"What to do: {facts['todo']}")
    return subject, "\n".join(lines)


def attention_summary(facts: dict[str, Any]) -> tuple[str, str]:
    """Subject and body of the one notice sent when a rotation spends its retry budget (``attention.notice_facts``):
    every failed run, with when, where and why, then what to do. It replaces that run's failure notice."""
    runs = facts["failed_runs"]
    subject = f"Kosli key rotation needs attention: {facts['key']} after {len(runs)} failed runs"
    keeps_trying = facts.get("keeps_trying")
    lines = [
        f"Key: {facts['key']} (DAG {facts['dag_id']})",
        f"Needs attention since {facts['needs_attention_since']}: {len(runs)} runs of this rotation failed "
        f"(max_failed_attempts: {facts['max_failed_attempts']}).",
        f"Scheduled runs keep trying anyway, because {keeps_trying}."
        if keeps_trying
        else "Scheduled runs stop trying until a person resumes the rotation.",
        "",
        "Failed runs:",
        *(f"- {run.get('at')} run {run.get('run_id')} at {run.get('step')}: {run.get('reason')}" for run in runs),
        "",
        f"Phase: {facts['phase']}",
    ]
    if facts.get("unverified_consumers"):
        lines.append("Consumers not verified: " + ", ".join(facts["unverified_consumers"]))
    if facts.get("old_key_dies_at"):
        lines.append(f"Kosli revokes the old key by itself at {facts['old_key_dies_at']}: consumers on it break then.")
    lines += ["", f"What to do: {facts['resume']}.", f"Where the rotation stands: {facts['todo']}"]
    return subject, "\n".join(lines)


def staleness_summary(facts: dict[str, Any]) -> tuple[str, str]:
    """Subject and body of a staleness notice. ``facts`` come from ``staleness.KeyHealth.facts``: the key,
    and its findings, each ``{"check", "problem", "message"}``; problems first, then what is fine."""
    problems = [finding for finding in facts["findings"] if finding["problem"]]
    notes = [finding for finding in facts["findings"] if not finding["problem"]]
    checks = ", ".join(dict.fromkeys(finding["check"] for finding in problems))
    subject = f"Kosli key needs attention: {facts['key']} ({checks})"
    lines = [
        f"Key: {facts['key']} (inventory entry {facts['name']}, rotated by DAG {facts['rotation_dag_id']})",
        f"Checked by: DAG {facts['dag_id']}, run {facts['run_id']}",
    ]
    lines += ["", "Problems:"] + [f"- [{finding['check']}] {finding['message']}" for finding in problems]
    if notes:
        lines += ["", "Also checked:"] + [f"- [{finding['check']}] {finding['message']}" for finding in notes]
    return subject, "\n".join(lines)


def _literal(notifier_class: type) -> type:
    """``notifier_class`` with no templated field: what a notice carries is data, never a template (a remote's
    ``{{ conn.x.password }}`` must arrive as those characters, not as the password)."""
    return type(f"Literal{notifier_class.__name__}", (notifier_class,), {"template_fields": ()})


def _notifier(target: EmailTarget | WebhookTarget, subject: str, body: str, payload: dict[str, Any]) -> Any:
    if isinstance(target, EmailTarget):
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        return _literal(SmtpNotifier)(
            to=target.to,
            from_email=target.from_email,
            subject=subject,
            html_content=f"<pre>{html.escape(body, quote=False)}</pre>",  # element text: &, < and > are enough
            smtp_conn_id=target.conn_id,
        )
    from airflow.providers.http.notifications.http import HttpNotifier

    return _literal(HttpNotifier)(
        http_conn_id=target.conn_id,
        endpoint=target.endpoint,
        data=json.dumps({"summary": subject, **payload}),
        headers={"Content-Type": "application/json"},
    )


def send_notice(
    targets: list[EmailTarget | WebhookTarget],
    *,
    subject: str,
    body: str,
    payload: dict[str, Any],
    context: Any,
    what: str = "notice",
) -> None:
    """Send one notice to every target: an e-mail with ``subject`` and ``body``, a webhook with ``payload``
    (JSON, plus ``summary``: the subject). One failing target never stops the others, and never raises: a
    notice must not mask what it announces. Everything sent passes the scrubber first."""
    subject, body, payload = one_line(subject, limit=300), scrub(body, limit=8000), scrub_data(payload)
    for target in targets:
        try:
            _notifier(target, subject, body, payload)(context)
            log.info("%s sent by %s through connection %s", what.capitalize(), target.kind, target.conn_id)
        except Exception:
            log.exception("Could not send the %s by %s through connection %s", what, target.kind, target.conn_id)


def notify_failure(targets: list[EmailTarget | WebhookTarget], facts: dict[str, Any], context: Any) -> None:
    """Send a failure notice to every target."""
    subject, body = failure_summary(facts)
    event = f"kosli-key-{facts.get('operation', 'rotation')}-failed"
    send_notice(
        targets, subject=subject, body=body, payload={"event": event, **facts}, context=context, what="failure notice"
    )


def notify_attention(targets: list[EmailTarget | WebhookTarget], facts: dict[str, Any], context: Any) -> None:
    """Send the needs-attention notice to every target (``facts``: see ``attention_summary``)."""
    subject, body = attention_summary(facts)
    send_notice(targets, subject=subject, body=body, payload=facts, context=context, what="needs-attention notice")


def notify_staleness(targets: list[EmailTarget | WebhookTarget], facts: dict[str, Any], context: Any) -> None:
    """Send a staleness notice to every target (``facts``: see ``staleness_summary``)."""
    subject, body = staleness_summary(facts)
    send_notice(
        targets,
        subject=subject,
        body=body,
        payload={"event": "kosli-key-stale", **facts},
        context=context,
        what="staleness notice",
    )
