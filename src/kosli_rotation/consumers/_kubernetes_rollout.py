"""Restarting the workloads that read a Kubernetes Secret, and waiting for their rollouts, as kubectl does.

A module of its own, apart from ``kubernetes_secret`` (which writes the Secret and owns the client, its retries and
its errors), because it is a subject of its own: ``kubectl rollout restart`` (stamp the pod template so the
controller replaces every pod), ``kubectl rollout status`` (when a Deployment or StatefulSet counts as rolled out),
and which workloads a restart cannot finish. Its API calls go through the consumer's ``request``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kosli_rotation.consumers.transport import poll_until
from kosli_rotation.errors import ConsumerError

if TYPE_CHECKING:
    from kosli_rotation.consumers.kubernetes_secret import RestartTarget

log = logging.getLogger(__name__)

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class ExpectedStatus(Exception):
    """An answer the caller of a request handles itself (a 404 on a read, a 409 on a create): not retried, and
    not made a ``ConsumerError``. Carries the status only, never a body."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


def now() -> datetime:
    return datetime.now(UTC)


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 / ISO time as kubectl or we wrote it; None if absent or unreadable."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True)
class RolloutState:
    """One restart target as it stands: restarted for the current value? rolled out?"""

    target: RestartTarget
    restarted_at: datetime | None
    done: bool
    progress: str  # kubectl rollout status's wording of where it is
    failure: str | None = None  # a rollout that will not finish by waiting

    def restarted_since(self, moment: datetime | None) -> bool:
        return moment is not None and self.restarted_at is not None and self.restarted_at >= moment

    def describe(self) -> str:
        restarted = self.restarted_at.isoformat() if self.restarted_at else "never"
        return f"{self.target.ref}: {self.failure or self.progress} (restartedAt {restarted})"


def rollout_status(kind: str, workload: Any) -> tuple[bool, str, str | None]:
    """``(done, progress, failure)`` decided as ``kubectl rollout status`` does for ``workload`` (a client model)."""
    generation = workload.metadata.generation or 0
    status = workload.status
    observed = (status.observed_generation if status else None) or 0
    desired = 1 if workload.spec.replicas is None else workload.spec.replicas
    name = workload.metadata.name
    if kind == "Deployment":
        if observed < generation:
            return False, "waiting for the deployment spec update to be observed", None
        conditions = (status.conditions if status else None) or []
        progressing = next((condition for condition in conditions if condition.type == "Progressing"), None)
        if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
            return False, "stalled", f"deployment {name!r} exceeded its progress deadline"
        updated = status.updated_replicas or 0
        replicas = status.replicas or 0
        available = status.available_replicas or 0
        if updated < desired:
            return False, f"{updated} out of {desired} new replicas have been updated", None
        if replicas > updated:
            return False, f"{replicas - updated} old replicas are pending termination", None
        if available < updated:
            return False, f"{available} of {updated} updated replicas are available", None
        return True, f"successfully rolled out ({updated}/{desired} replicas updated and available)", None
    if not observed or generation > observed:
        return False, "waiting for the statefulset spec update to be observed", None
    ready = status.ready_replicas or 0
    if ready < desired:
        return False, f"waiting for {desired - ready} pods to be ready", None
    if status.update_revision != status.current_revision:
        updated = status.updated_replicas or 0
        return False, f"waiting for the rolling update to complete: {updated} pods at {status.update_revision}", None
    return True, f"rolling update complete: {desired} pods at revision {status.current_revision}", None


def restart_problem(target: RestartTarget, workload: Any) -> str | None:
    """Why ``kubectl rollout restart`` could not finish: a paused, OnDelete or partitioned workload."""
    if target.kind == "Deployment":
        return "is paused (run kubectl rollout resume first)" if workload.spec.paused else None
    strategy = workload.spec.update_strategy
    if strategy is not None and strategy.type == "OnDelete":
        return "uses updateStrategy OnDelete, so a restart replaces no pods"
    if strategy is not None and strategy.rolling_update and (strategy.rolling_update.partition or 0) > 0:
        return f"has a rollout partition of {strategy.rolling_update.partition}: pods below it would keep the old key"
    return None


class Rollouts:
    """One consumer's restart targets, read, checked, restarted and waited for through its API calls.

    ``request(doing, action, expect=())`` is the consumer's call: retried, failures made ``ConsumerError``s, and
    statuses in ``expect`` raised as ``ExpectedStatus``.
    """

    def __init__(
        self, consumer: str, namespace: str, conn_id: str, apps: Callable[[], Any], request: Callable[..., Any]
    ) -> None:
        self.consumer = consumer
        self.namespace = namespace
        self.conn_id = conn_id
        self.apps = apps
        self.request = request

    def read(self, target: RestartTarget) -> Any:
        """The workload; a non-retryable error when it does not exist."""
        apps = self.apps()
        read = apps.read_namespaced_deployment if target.kind == "Deployment" else apps.read_namespaced_stateful_set
        try:
            return self.request(
                f"get {target.ref} in namespace {self.namespace}",
                lambda: read(target.name, self.namespace),
                expect=(404,),
            )
        except ExpectedStatus:
            raise ConsumerError(
                self.consumer,
                f"{target.ref} does not exist in namespace {self.namespace} (connection {self.conn_id!r}): fix the "
                "consumer's restart list",
                retryable=False,
            ) from None

    def state(self, target: RestartTarget, workload: Any | None = None) -> RolloutState:
        """Where ``target`` stands (``workload``: as just read, else read now)."""
        workload = workload if workload is not None else self.read(target)
        template_metadata = workload.spec.template.metadata
        template_annotations = (template_metadata.annotations if template_metadata else None) or {}
        done, progress, failure = rollout_status(target.kind, workload)
        return RolloutState(target, parse_time(template_annotations.get(RESTARTED_AT)), done, progress, failure)

    def check_restartable(self, target: RestartTarget, workload: Any) -> None:
        problem = restart_problem(target, workload)
        if problem:
            raise ConsumerError(self.consumer, f"{target.ref} in namespace {self.namespace} {problem}", retryable=False)

    def restart(self, target: RestartTarget) -> None:
        """``kubectl rollout restart``: stamp the pod template, so the controller replaces every pod."""
        apps = self.apps()
        restarted_at = now().isoformat()
        patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: restarted_at}}}}}
        patch_workload = (
            apps.patch_namespaced_deployment if target.kind == "Deployment" else apps.patch_namespaced_stateful_set
        )
        self.request(
            f"patch {target.ref} in namespace {self.namespace}",
            lambda: patch_workload(target.name, self.namespace, patch),
        )
        log.info("Restarted %s in namespace %s (restartedAt %s)", target.ref, self.namespace, restarted_at)

    def wait(
        self,
        targets: tuple[RestartTarget, ...],
        *,
        written_at: datetime,
        deadline: float,
        timeout_seconds: float,
        poll_seconds: float,
    ) -> None:
        """Until every target's rollout is complete (as ``kubectl rollout status``), polling every ``poll_seconds``;
        a rollout that will not finish fails at once, one still going at ``deadline`` fails retryable."""
        pending = list(targets)
        last: list[RolloutState] = []

        def complete() -> bool | None:
            nonlocal pending, last
            last = [self.state(target) for target in pending]
            for state in last:
                if state.failure:
                    raise ConsumerError(
                        self.consumer,
                        f"{state.failure} in namespace {self.namespace}; the Secret holds the new key but its pods "
                        "do not run with it: fix the workload, then rerun",
                        retryable=False,
                    )
                if state.done:
                    log.info("Rollout of %s complete: %s", state.target.ref, state.progress)
            pending = [state.target for state in last if not state.done]
            return True if not pending else None

        if poll_until(complete, deadline, first_pause=poll_seconds, max_pause=poll_seconds) is None:
            waiting = "; ".join(state.describe() for state in last if not state.done)
            raise ConsumerError(
                self.consumer,
                f"rollouts not complete after {timeout_seconds:g} s ({waiting}); the Secret holds the new key since "
                f"{written_at.isoformat()}: a retry waits again without restarting",
                retryable=True,
            )
