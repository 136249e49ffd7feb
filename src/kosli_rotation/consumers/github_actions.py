"""A GitHub Actions secret (repository, environment or organization) that workflows read the key from.

Written through the Airflow GitHub provider's ``GithubHook`` connection (connection type ``github``: ``password``
is the token, ``host`` the API base URL for GitHub Enterprise Server, e.g. ``https://ghe.example.com/api/v3``;
GitHub App auth through the connection's extras works too) and PyGithub's requester. The value is sealed with the
scope's public key. GitHub never returns a secret's value, so this consumer is write-only: ``verify`` checks the
secret's ``updated_at`` (for an organization secret, also that no repository or environment secret of the same
name shadows it: ``github_shadowing``) and, when configured, dispatches a canary workflow that uses the secret and
waits for it to succeed.

The consumers of one connection in one task share a client (``_github_client``: a public key and a listing per
scope, about two requests per secret), and every mutating request waits its turn in the token's pace
(``github_pace``: one at a time and a second apart, across every process that shares the key's Vault).
PyGithub's own retries (unbounded waits) are off: the shared ``Transport`` retries, with GitHub's own rules
(``_classify``: a rate limit sent as 403; ``write``: a 422 after the public key changed).
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kosli_rotation.consumers import github_shadowing, transport
from kosli_rotation.consumers._github_client import GithubSession, SecretMetadata, SharedSession
from kosli_rotation.consumers.base import Consumer, ConsumerConfig, Verification
from kosli_rotation.consumers.transport import Fixes, RemoteFailure, Transport

if TYPE_CHECKING:
    from github.Repository import Repository
    from github.Workflow import Workflow
    from github.WorkflowRun import WorkflowRun

    from kosli_rotation.key_store import KeyStore

log = logging.getLogger(__name__)
T = TypeVar("T")

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ACCOUNT = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"  # GitHub user and organization logins
REPOSITORY = re.compile(rf"^{ACCOUNT}/[A-Za-z0-9._-]{{1,100}}$")
ORGANIZATION = re.compile(rf"^{ACCOUNT}$")
WORKFLOW = re.compile(r"^(?:\d+|[^/]+\.ya?ml)$")

CLOCK_SKEW_SECONDS = 2.0  # GitHub's updated_at has whole seconds and its own clock
SECONDARY_LIMIT_WAIT_SECONDS = 60.0  # GitHub: without retry-after, wait at least a minute
CANARY_POLL_CAP_SECONDS = 10.0
# PyGithub's defaults, made explicit: GitHub asks integrations to space requests and writes out.
SECONDS_BETWEEN_REQUESTS = 0.25
SECONDS_BETWEEN_WRITES = 1.0
#: What to fix when GitHub refuses (``{conn_id}``, ``{target}`` and ``{needs}`` filled in per consumer).
FIXES = Fixes(
    unauthorized="the token is wrong or expired: replace it with one that may manage the Actions secrets of {target}",
    forbidden=(
        "give its token write access to Actions secrets of {target} (classic PAT: repo, plus admin:org for "
        "organization secrets; fine-grained/App: Secrets write{needs})"
    ),
    not_found=(
        "check the name, and that the token of connection {conn_id!r} can see it "
        "(GitHub answers 404 for private repositories a token may not access)"
    ),
)


def _check_repository(value: str | None) -> str | None:
    if value is not None and not REPOSITORY.match(value):
        raise ValueError(f"{value!r} is not a GitHub repository: write it as owner/name")
    return value


class CanaryConfig(BaseModel):
    """A ``workflow_dispatch`` workflow whose run uses the secret and fails if the key does not work."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    workflow: str = Field(description="Workflow file name (canary.yml) or numeric id.")
    ref: str = Field(default="main", min_length=1, description="Branch or tag to run the workflow on.")
    repository: str | None = Field(default=None, description="owner/name; defaults to the target repository.")

    @field_validator("workflow", mode="before")
    @classmethod
    def _workflow(cls, value: Any) -> Any:
        value = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if isinstance(value, str) and not WORKFLOW.match(value):
            raise ValueError(f"{value!r} must be a workflow file name like canary.yml (no directory) or a numeric id")
        return value

    _repository = field_validator("repository")(_check_repository)


class GithubActionsConfig(ConsumerConfig):
    """One Actions secret: set exactly one target, ``repository`` (optionally with ``environment``) or
    ``organization``. ``visibility`` and ``selected_repositories`` apply when an organization secret is
    created; an existing one keeps its own."""

    kind: Literal["github_actions"]
    conn_id: str = "github_default"
    secret_name: str = "KOSLI_API_TOKEN"
    repository: str | None = None
    environment: str | None = Field(default=None, min_length=1, max_length=255)
    organization: str | None = None
    visibility: Literal["all", "private", "selected"] | None = None
    selected_repositories: tuple[str, ...] | None = Field(
        default=None, description="Repository names (or owner/name) in the organization, for visibility 'selected'."
    )
    canary: CanaryConfig | None = None
    canary_timeout_seconds: float = Field(default=600.0, gt=0, le=6 * 3600)

    @field_validator("secret_name")
    @classmethod
    def _secret_name(cls, name: str) -> str:
        if not SECRET_NAME.match(name):
            raise ValueError(
                f"secret name {name!r} may only contain letters, digits and underscores and must not start with a digit"
            )
        if name.upper().startswith("GITHUB_"):
            raise ValueError(f"secret name {name!r} must not start with GITHUB_ (reserved by GitHub)")
        return name.upper()  # GitHub stores secret names upper-case

    _repository = field_validator("repository")(_check_repository)

    @field_validator("organization")
    @classmethod
    def _organization(cls, value: str | None) -> str | None:
        if value is not None and not ORGANIZATION.match(value):
            raise ValueError(f"{value!r} is not a GitHub organization login")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.repository is None) == (self.organization is None):
            raise ValueError("set exactly one target: repository (owner/name) or organization")
        if self.environment is not None and self.repository is None:
            raise ValueError("environment needs the repository it belongs to")
        if self.organization is None and (self.visibility or self.selected_repositories is not None):
            raise ValueError("visibility and selected_repositories only apply to organization secrets")
        if self.selected_repositories is not None and self.visibility not in (None, "selected"):
            raise ValueError(f"selected_repositories needs visibility 'selected', not {self.visibility!r}")
        for name in self.selected_repositories or ():
            if "/" in name and not name.lower().startswith(f"{(self.organization or '').lower()}/"):
                raise ValueError(f"selected repository {name!r} is not in organization {self.organization}")
        if self.canary is not None and self.canary.repository is None and self.repository is None:
            raise ValueError("a canary for an organization secret needs canary.repository (owner/name)")
        return self


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _classify(error: Exception) -> RemoteFailure | None:
    """PyGithub's errors (a rate limit sent as 403 becomes the 429 it is) and requests' connection errors."""
    from github.GithubException import GithubException, RateLimitExceededException

    if not isinstance(error, GithubException):
        return transport.classify_requests(error)
    data, headers = error.data, dict(error.headers or {})
    message = str(data.get("message") or data) if isinstance(data, dict) else str(data or error.message or "")
    asked = transport.server_wait(headers)
    limited = isinstance(error, RateLimitExceededException) or (error.status == 403 and asked is not None)
    if limited and asked is None:
        headers["retry-after"] = str(SECONDARY_LIMIT_WAIT_SECONDS)
    if limited and error.status == 403:
        return RemoteFailure(429, f"{message} (a rate limit, sent as HTTP 403)", headers)
    return RemoteFailure(error.status, message, headers)


def _rate_limit_wait(error: Exception) -> float | None:
    """How long GitHub asked the token to wait when it answered with its rate limit (for the token's pace)."""
    failure = _classify(error)
    return transport.server_wait(failure.headers) if failure is not None and failure.status == 429 else None


class GithubActionsConsumer(Consumer[GithubActionsConfig]):
    """Creates or updates the secret; organization secrets keep their visibility and selected repositories."""

    kind = "github_actions"
    readable = False
    #: GitHub asks integrations to send one token's requests serially; its secondary limits punish bursts.
    max_concurrency = 1

    def __init__(self, config: GithubActionsConfig) -> None:
        super().__init__(config)
        self._shared = SharedSession(lambda: self._new_session(None))
        needs = ", Environments read" if config.environment else ""
        needs += ", Actions write for the canary" if config.canary else ""
        needs += "; Secrets and Environments read on the repositories that see it" if config.organization else ""
        fill = {"conn_id": config.conn_id, "target": self.target, "needs": needs}
        fixes = FIXES.filled(**fill)
        self._transport = Transport(
            consumer=self.name, service="GitHub", conn_id=config.conn_id, classify=_classify, fixes=fixes
        )

    @property
    def target(self) -> str:
        config = self.config
        if config.organization:
            return f"organization {config.organization}"
        if config.environment:
            return f"environment {config.environment!r} of repository {config.repository}"
        return f"repository {config.repository}"

    def describe(self) -> str:
        return f"GitHub Actions secret {self.config.secret_name} of {self.target} (connection {self.config.conn_id})"

    @classmethod
    def share(cls, consumers: list[Consumer], vault: KeyStore | None) -> None:
        """The consumers of one connection in one task share one client, one public key per scope, one listing
        per scope, and the token's pace (a lease in ``vault``, the key's Vault, when given)."""
        sessions: dict[str, SharedSession] = {}
        for consumer in consumers:
            assert isinstance(consumer, GithubActionsConsumer)
            conn_id = consumer.config.conn_id
            if conn_id not in sessions:
                sessions[conn_id] = SharedSession(functools.partial(consumer._new_session, vault))
            consumer._shared = sessions[conn_id]

    def _new_session(self, vault: KeyStore | None) -> GithubSession:
        return GithubSession(
            self.config.conn_id,
            self.name,
            vault=vault,
            spacing=lambda: SECONDS_BETWEEN_WRITES,
            requests_apart=SECONDS_BETWEEN_REQUESTS,
            hold_off=_rate_limit_wait,
        )

    def _session(self) -> GithubSession:
        return self._shared.get()

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """One GitHub interaction under the shared retry policy; ``what`` completes "cannot ..."."""
        return self._transport.call(action, what)

    def _scoped(self, what: str, action: Callable[[], T]) -> T:
        return self._call(f"{what} of {self.target}", action)

    @property
    def _scope(self) -> str:
        """The API path of the secrets of the target (repository, environment or organization)."""
        config = self.config
        if config.organization is not None:
            return f"/orgs/{config.organization}/actions/secrets"
        if config.environment is not None:
            return f"/repos/{config.repository}/environments/{quote(config.environment, safe='')}/secrets"
        return f"/repos/{config.repository}/actions/secrets"

    def _current_secret(self) -> SecretMetadata | None:
        """The secret's metadata now (from the scope's listing), or None when it does not exist."""
        return self._session().secret(self._scope, self.config.secret_name, self._scoped)

    # -- the Consumer interface ------------------------------------------------------------------------------

    def check_access(self) -> None:
        """The target exists and the token may manage its secrets (the public key needs the same right)."""
        self._session().public_key(self._scope, self._scoped)
        if self.config.canary is not None:
            self._canary()

    def write(self, key: str) -> None:
        """Seal with the scope's public key (fetched once per task) and PUT: one request per secret, paced."""
        from github.GithubException import GithubException

        session, scope, name = self._session(), self._scope, self.config.secret_name
        options: dict[str, Any] = self._organization_options() if self.config.organization else {}

        def unretried(what: str, action: Callable[[], T]) -> T:  # inside put: the transport retries put whole
            return action()

        def put_sealed(fresh: bool) -> None:
            public = session.public_key(scope, unretried, fresh=fresh)
            session.put_secret(scope, name, {"encrypted_value": public.seal(key), "key_id": public.key_id, **options})

        def put() -> None:
            try:
                put_sealed(fresh=False)
            except GithubException as error:
                if error.status != 422:
                    raise
                put_sealed(fresh=True)  # 422: the key may have changed since we fetched it: once more

        self._call(f"write secret {name} of {self.target}", put)
        shown = {key: value for key, value in options.items() if key == "visibility"}
        log.info("Set %s%s", self.describe(), f" (visibility {shown['visibility']})" if shown else "")

    def verify(self, key: str, written_at: float) -> Verification:
        secret = self._current_secret()
        if secret is None:
            return Verification(False, "metadata", f"there is no secret {self.config.secret_name} in {self.target}")
        updated_at = secret.updated_at
        detail = f"updated_at {_iso(updated_at)}"
        if updated_at < written_at - CLOCK_SKEW_SECONDS:
            return Verification(
                False, "metadata", f"{detail} is before the key was stored ({_iso(written_at)}): our write did not land"
            )
        if self.config.organization is not None:
            org, visibility = self.config.organization, secret.visibility or "private"
            detail += github_shadowing.unshadowed(
                self._session(), self.name, org, self.config.secret_name, visibility, self._call
            )
        if self.config.canary is None:
            return Verification(True, "metadata", detail)
        succeeded, canary_detail = self._run_canary()
        return Verification(succeeded, "metadata + canary", f"{detail}; {canary_detail}")

    def _organization_options(self) -> dict[str, Any]:
        """The PUT's ``visibility`` (GitHub wants it every time) and repository ids: an existing secret's own,
        else the configured ones."""
        existing = self._current_secret()
        config, configured = self.config, self.config.selected_repositories
        visibility = config.visibility or ("selected" if configured is not None else "private")
        if existing is not None and existing.visibility:
            if config.visibility and config.visibility != existing.visibility:
                ignored = f"keeps its visibility {existing.visibility!r}; the inventory's {config.visibility!r}"
                log.warning("%s %s only applies when creating it", self.describe(), ignored)
            visibility = existing.visibility
        if visibility != "selected":
            return {"visibility": visibility}
        session = self._session()
        if existing is not None:
            ids = session.selected_repository_ids(self._scope, config.secret_name, self._scoped)
        else:
            org = config.organization
            named = [name if "/" in name else f"{org}/{name}" for name in configured or ()]
            ids = [session.repository(name, self._call).id for name in named]
        return {"visibility": visibility, "selected_repository_ids": ids}

    # -- the canary --------------------------------------------------------------------------------------------

    def _canary(self) -> tuple[Repository, Workflow]:
        """The canary's repository (the target's unless named: the config validator sees to it) and workflow."""
        assert self.config.canary is not None
        named = str(self.config.canary.repository or self.config.repository)
        repository = self._session().repository(named, self._call)
        workflow = self.config.canary.workflow
        what = f"read workflow {workflow} of repository {repository.full_name}"
        return repository, self._call(what, lambda: repository.get_workflow(workflow))

    def _run_canary(self) -> tuple[bool, str]:
        """Dispatch the canary and wait (bounded) for that run to finish: (succeeded, what happened)."""
        from github.WorkflowRun import WorkflowRun

        canary = self.config.canary
        assert canary is not None
        repository, workflow = self._canary()
        where = f"{workflow.path} of {repository.full_name}"
        dispatched_at = time.time()
        dispatched = self._call(
            f"dispatch {where} on {canary.ref}",
            lambda: self._session().pace.mutate(
                lambda: workflow.create_dispatch(canary.ref, throw=True, return_run_details=True)
            ),
        )
        seen: list[WorkflowRun | None] = [dispatched if isinstance(dispatched, WorkflowRun) else None]

        def finished() -> WorkflowRun | None:
            run = seen[0] = self._canary_run(repository, workflow, seen[0], dispatched_at)
            return run if run is not None and run.status == "completed" else None

        deadline = time.monotonic() + self.config.canary_timeout_seconds
        run = transport.poll_until(finished, deadline, first_pause=0.5, max_pause=CANARY_POLL_CAP_SECONDS)
        if run is not None:
            succeeded = run.conclusion == "success"
            outcome = "succeeded" if succeeded else f"concluded {run.conclusion}"
            log.info("Canary run #%s of %s %s: %s", run.run_number, where, outcome, run.html_url)
            return succeeded, f"canary run #{run.run_number} of {where} {outcome} ({run.html_url})"
        last = seen[0]
        state = f"run #{last.run_number} still {last.status}" if last else "no run appeared"
        return False, f"canary {where}: {state} after {self.config.canary_timeout_seconds:g}s"

    def _canary_run(
        self, repository: Repository, workflow: Workflow, known: WorkflowRun | None, dispatched_at: float
    ) -> WorkflowRun | None:
        """The dispatched run as it is now: by id once known, else the first ``workflow_dispatch`` run created
        since our dispatch (servers that return no run id)."""
        if known is not None:
            where, run_id = f"{workflow.path} of {repository.full_name}", known.id
            return self._call(f"read run {run_id} of {where}", lambda: repository.get_workflow_run(run_id))
        since = dispatched_at - CLOCK_SKEW_SECONDS
        runs = self._call(
            f"list runs of workflow {workflow.path}",
            lambda: workflow.get_runs(event="workflow_dispatch", created=f">={_iso(since)}").get_page(0),
        )
        fresh = [run for run in runs if run.created_at.timestamp() >= since]
        return min(fresh, key=lambda run: run.id, default=None)
