"""A CircleCI environment variable: in a context (shared by projects) or in one project.

There is no well-kept Python client for CircleCI's API v2 (the ``circleci`` package on PyPI dates from 2019 and
speaks API v1.1), so this talks to the documented REST endpoints through the HTTP provider's ``HttpHook``:
Airflow connection type ``http`` (default ``circleci_default``), host ``https://circleci.com`` (or a CircleCI
server's URL), password = a personal API token, sent as ``Circle-Token`` (project tokens do not work on v2).
Leave login empty: ``HttpHook`` would add basic auth for it.

Writes: ``PUT /context/{id}/environment-variable/{name}`` (an upsert) or ``POST /project/{slug}/envvar`` (replaces
a variable of the same name). CircleCI never returns values, so verification is by metadata: a context
variable's ``updated_at`` (it moves on every write), or a project variable's masked value ``xxxx`` + last 4
characters (a weak check); plus, when configured, a canary pipeline whose workflows must all succeed.

Retries: ``HttpHook`` does not retry by itself (``run`` sends once); the shared ``Transport`` retries transient
answers (honouring ``Retry-After``, else ``X-RateLimit-Reset`` when ``X-RateLimit-Remaining`` is 0), timeouts and
connection errors; 401/403/404 stop at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

from kosli_rotation.consumers.base import Consumer, ConsumerConfig, Verification
from kosli_rotation.consumers.transport import (
    Fixes,
    Transport,
    check_status,
    classify_requests,
    connection_or_explain,
    poll_until,
)
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import hold_secret

log = logging.getLogger(__name__)

USER_AGENT = "kosli-key-rotation/0.1"
REQUEST_TIMEOUT = 30.0
MAX_PAGES = 100
CLOCK_SKEW = 2.0
UUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
ORG_SLUG = r"^(gh|github|bb|bitbucket)/[^/\s]+$"
PROJECT_SLUG = r"^((gh|github|bb|bitbucket)/[^/\s]+/[^/\s]+|circleci/[0-9a-fA-F-]{36}/[0-9a-fA-F-]{36})$"
ENV_VAR_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
WORKFLOW_FAILED = frozenset({"failed", "error", "canceled", "unauthorized", "not_run"})
#: What to change when CircleCI refuses; ``{conn_id}`` is filled per consumer.
FIXES = Fixes(
    unauthorized="set its password to a valid personal API token (project API tokens do not work on API v2)",
    forbidden="its user must be an admin of the organization (contexts) or have write access to the project",
    not_found="check the target in the inventory, and that the user of connection {conn_id!r} belongs to its "
    "organization",
)
CREATE_CONNECTION = "an 'http' connection with host https://circleci.com and a personal API token as password"


def _slug_path(slug: str) -> str:
    """Each slug segment escaped, the '/' separators kept literal (as CircleCI requires)."""
    return "/".join(quote(part, safe="") for part in slug.split("/"))


class ContextByName(BaseModel):
    """A context named within its owning organization, resolved to its id at run time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    owner_slug: str | None = Field(default=None, pattern=ORG_SLUG, description="e.g. gh/acme or bb/acme")
    owner_id: str | None = Field(default=None, pattern=UUID, description="the organization id (any VCS)")

    @model_validator(mode="after")
    def _one_owner(self) -> ContextByName:
        if (self.owner_slug is None) == (self.owner_id is None):
            raise ValueError("give exactly one of owner_slug (gh/acme, bb/acme) or owner_id (organization uuid)")
        return self

    def owner(self) -> str:
        return self.owner_slug or f"organization {self.owner_id}"


class CircleCiCanary(BaseModel):
    """A project whose pipeline uses the variable; every workflow of the triggered pipeline must succeed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project_slug: str = Field(pattern=PROJECT_SLUG)
    branch: str = Field(default="main", min_length=1)
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)


class CircleCiEnvConfig(ConsumerConfig):
    kind: Literal["circleci_env"]
    conn_id: str = "circleci_default"
    context_id: str | None = Field(default=None, pattern=UUID)
    context: ContextByName | None = None
    project_slug: str | None = Field(
        default=None, pattern=PROJECT_SLUG, description="gh/org/repo, bb/org/repo or circleci/<org-id>/<project-id>"
    )
    variable: str = Field(default="KOSLI_API_TOKEN", pattern=ENV_VAR_NAME)
    canary: CircleCiCanary | None = None
    canary_timeout_seconds: float = Field(default=600, gt=0)

    @model_validator(mode="after")
    def _one_target(self) -> CircleCiEnvConfig:
        given = [name for name in ("context_id", "context", "project_slug") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of context_id, context or project_slug (got {given or 'none'})")
        return self


def _parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class CircleCiEnvConsumer(Consumer[CircleCiEnvConfig]):
    """Sets one context or project environment variable; verified by metadata and an optional canary pipeline."""

    kind = "circleci_env"
    readable = False

    def __init__(self, config: CircleCiEnvConfig) -> None:
        super().__init__(config)
        self._hook: Any = None
        self._token: str | None = None
        self._api_prefix = "api/v2/"
        self._context_id = config.context_id
        self._transport = Transport.for_consumer(config, "CircleCI", classify_requests, FIXES)

    # -- plumbing -------------------------------------------------------------------------------

    def _http(self) -> Any:
        if self._hook is None:
            from airflow.providers.http.hooks.http import HttpHook

            conn_id = self.config.conn_id
            connection = connection_or_explain(conn_id, self.name, CREATE_CONNECTION)
            if not connection.password or connection.login:
                raise ConsumerError(
                    self.name,
                    f"Airflow connection {conn_id!r} must have a personal API token as password and no login "
                    "(the token is sent as Circle-Token; a login would add basic auth)",
                    retryable=False,
                )
            self._token = hold_secret(connection.password)
            hook = HttpHook(method="GET", http_conn_id=conn_id)
            if hook.url_from_endpoint("").rstrip("/").endswith("/api/v2"):
                self._api_prefix = ""
            self._hook = hook
        return self._hook

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
        accept: tuple[int, ...] = (200, 201),
    ) -> Any:
        """One API call with bounded retries; returns the response (its status is in ``accept``)."""
        hook = self._http()
        headers = {"Circle-Token": self._token, "Accept": "application/json", "User-Agent": USER_AGENT}

        def attempt() -> Any:
            hook.method = method
            response = hook.run(
                endpoint=self._api_prefix + path,
                data=params,
                json=json,
                headers=headers,
                extra_options={"check_response": False, "timeout": REQUEST_TIMEOUT},
            )
            return check_status(response, accept)

        return self._transport.call(attempt, what)

    def _items(self, path: str, what: str, params: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a listing, following ``next_page_token`` (stopping if CircleCI repeats a token)."""
        seen: set[str] = set()
        query = dict(params or {})
        for _ in range(MAX_PAGES):
            page = self._call("GET", path, what, params=query, accept=(200,)).json()
            yield from page.get("items") or []
            token = page.get("next_page_token")
            if not token or token in seen:
                return
            seen.add(token)
            query["page-token"] = token

    def _resolved_context_id(self) -> str:
        if self._context_id is None:
            context = self.config.context
            assert context is not None
            params = {"owner-slug": context.owner_slug} if context.owner_slug else {"owner-id": context.owner_id or ""}
            what = f"list the contexts of {context.owner()}"
            found = next(
                (item for item in self._items("context", what, params) if item.get("name") == context.name), None
            )
            if found is None:
                raise ConsumerError(
                    self.name,
                    f"{context.owner()} has no context named {context.name!r} visible to connection "
                    f"{self.config.conn_id!r}: create it, or fix the name or owner",
                    retryable=False,
                )
            self._context_id = str(found["id"])
        return self._context_id

    def _target(self) -> str:
        if self.config.project_slug:
            return f"project {self.config.project_slug}"
        if self.config.context:
            return f"context {self.config.context.name!r} of {self.config.context.owner()}"
        return f"context {self.config.context_id}"

    # -- the interface --------------------------------------------------------------------------

    def describe(self) -> str:
        canary = self.config.canary
        suffix = f"; canary pipeline of {canary.project_slug} on {canary.branch}" if canary else ""
        return f"CircleCI {self._target()}, variable {self.config.variable} (connection {self.config.conn_id}){suffix}"

    def check_access(self) -> None:
        """The target (and the canary project) are visible to the token.

        CircleCI has no API to ask for a permission without using it: a user who may read but not change the
        variables shows up at the write, as a non-retryable 403.
        """
        if self.config.project_slug:
            self._call("GET", f"project/{_slug_path(self.config.project_slug)}", f"see {self._target()}")
        else:
            context_id = self._resolved_context_id()
            self._call("GET", f"context/{quote(context_id, safe='')}", f"see {self._target()}")
        if self.config.canary:
            slug = self.config.canary.project_slug
            self._call("GET", f"project/{_slug_path(slug)}", f"see canary project {slug}")

    def write(self, key: str) -> None:
        variable = self.config.variable
        what = f"set {variable} in {self._target()}"
        if self.config.project_slug:
            body = {"name": variable, "value": key}
            self._call("POST", f"project/{_slug_path(self.config.project_slug)}/envvar", what, json=body)
        else:
            path = f"context/{quote(self._resolved_context_id(), safe='')}/environment-variable/{variable}"
            self._call("PUT", path, what, json={"value": key})
        log.info("Set CircleCI variable %s in %s", variable, self._target())

    def verify(self, key: str, written_at: float) -> Verification:
        if self.config.project_slug:
            method, (ok, detail) = "write-only: masked last 4 characters", self._check_masked_value(key)
        else:
            method, (ok, detail) = "write-only: updated_at", self._check_updated_at(written_at)
        if self.config.canary is None or not ok:
            return Verification(ok, method, detail)
        canary_ok, outcome = self._run_canary(self.config.canary)
        return Verification(canary_ok, method + " + canary pipeline", f"{detail}; {outcome}")

    # -- verification ---------------------------------------------------------------------------

    def _check_updated_at(self, written_at: float) -> tuple[bool, str]:
        variable = self.config.variable
        context_id = quote(self._resolved_context_id(), safe="")
        what = f"list the variables of {self._target()}"
        found = next(
            (
                item
                for item in self._items(f"context/{context_id}/environment-variable", what)
                if item.get("variable") == variable
            ),
            None,
        )
        if found is None:
            return False, f"{variable} is not set in {self._target()}"
        updated_at = str(found.get("updated_at") or found.get("created_at") or "")
        try:
            fresh = _parse_time(updated_at) >= written_at - CLOCK_SKEW
        except ValueError:
            return False, f"{variable} has an unreadable updated_at {updated_at!r}"
        stored = datetime.fromtimestamp(written_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        relation = "not before" if fresh else "before"
        return fresh, f"{variable} updated_at {updated_at}, {relation} the key was stored ({stored}, 2 s skew allowed)"

    def _check_masked_value(self, key: str) -> tuple[bool, str]:
        variable = self.config.variable
        path = f"project/{_slug_path(str(self.config.project_slug))}/envvar/{variable}"
        response = self._call("GET", path, f"read {variable} of {self._target()}", accept=(200, 404))
        if response.status_code == 404:
            return False, f"{variable} is not set in {self._target()}"
        masked = str(response.json().get("value") or "")
        matches = len(key) >= 4 and masked.endswith(key[-4:])
        verdict = "ends with" if matches else "does not end with"
        return matches, (
            f"the masked value of {variable} {verdict} the key's last 4 characters "
            "(a weak check: CircleCI shows nothing else of a project variable)"
        )

    # -- canary ---------------------------------------------------------------------------------

    def _run_canary(self, canary: CircleCiCanary) -> tuple[bool, str]:
        """Trigger a pipeline and wait (bounded) until every workflow has finished; all must succeed."""
        deadline = time.monotonic() + self.config.canary_timeout_seconds
        body: dict[str, Any] = {"branch": canary.branch}
        if canary.parameters:
            body["parameters"] = dict(canary.parameters)
        path = f"project/{_slug_path(canary.project_slug)}/pipeline"
        pipeline = self._call("POST", path, f"trigger a canary pipeline of {canary.project_slug}", json=body).json()
        label = f"canary pipeline {canary.project_slug} #{pipeline.get('number')}"
        what = f"read the workflows of {label}"

        def finished() -> list[dict[str, Any]] | None:
            workflows = list(self._items(f"pipeline/{quote(str(pipeline['id']), safe='')}/workflow", what))
            statuses = {str(workflow.get("status")) for workflow in workflows}
            if workflows and (statuses & WORKFLOW_FAILED or statuses == {"success"}):
                return workflows
            return None

        workflows = poll_until(finished, deadline)
        if workflows is None:
            return False, f"{label} did not finish within {self.config.canary_timeout_seconds:g} s"
        summary = ", ".join(f"{workflow.get('name')} {workflow.get('status')}" for workflow in workflows)
        ok = all(workflow.get("status") == "success" for workflow in workflows)
        log.info("%s finished: %s", label, summary)
        return ok, f"{label}: {summary}"
