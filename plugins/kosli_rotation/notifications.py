"""Failure notifications through Airflow's notifier mechanism: e-mail (SMTP provider) and webhooks (HTTP).

Configured per inventory entry (``notify:``), sent when a step fails for good, with what a person on call
needs: which key, which step, why, which consumers are not verified, and how long the old key has left.
"""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

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
    """Subject and body of a failure notice. ``facts`` come from ``Rotation.record_failure``."""
    subject = f"Kosli key rotation failed: {facts['key']} at {facts['failed_step']}"
    lines = [
        f"Key: {facts['key']} (DAG {facts['dag_id']}, run {facts['run_id']})",
        f"Failed step: {facts['failed_step']}",
        f"Error: {facts['error']}",
        f"Phase: {facts['phase']}",
    ]
    if facts.get("unverified_consumers"):
        lines.append("Consumers not verified with the new key: " + ", ".join(facts["unverified_consumers"]))
    if facts.get("old_key_dies_at"):
        lines.append(
            f"Kosli revokes the old key by itself at {facts['old_key_dies_at']} ({facts['hours_left']} hours left):"
            " consumers still using it break then."
        )
    lines.append(f"What to do: {facts['todo']}")
    return subject, "\n".join(lines)


def _notifier(target: EmailTarget | WebhookTarget, facts: dict[str, Any]) -> Any:
    subject, body = failure_summary(facts)
    # Jinja renders notifier fields: keep the facts literal.
    raw = lambda text: "{% raw %}" + text + "{% endraw %}"  # noqa: E731
    if isinstance(target, EmailTarget):
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        return SmtpNotifier(
            to=target.to,
            from_email=target.from_email,
            subject=raw(subject),
            html_content=raw(f"<pre>{body}</pre>"),
            smtp_conn_id=target.conn_id,
        )
    from airflow.providers.http.notifications.http import HttpNotifier

    return HttpNotifier(
        http_conn_id=target.conn_id,
        endpoint=target.endpoint,
        data=raw(json.dumps({"event": "kosli-key-rotation-failed", "summary": subject, **facts})),
        headers={"Content-Type": "application/json"},
    )


def notify_failure(targets: list[EmailTarget | WebhookTarget], facts: dict[str, Any], context: Any) -> None:
    """Send to every target; one failing target never stops the others (and never masks the failure)."""
    for target in targets:
        try:
            _notifier(target, facts)(context)
            log.info("Failure notice sent by %s through connection %s", target.kind, target.conn_id)
        except Exception:
            log.exception("Could not send the failure notice by %s through connection %s", target.kind, target.conn_id)
