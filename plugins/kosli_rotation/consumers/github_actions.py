"""A GitHub Actions secret (repository, environment or organization) that workflows read the key from.

Written through the Airflow GitHub provider's ``GithubHook`` (connection type ``github``: ``password`` is the
token, ``host`` the API base URL for GitHub Enterprise Server, e.g. ``https://ghe.example.com/api/v3``; GitHub
App auth through the connection's extras works too) and PyGithub, which seals the value with the target's
public key. GitHub never returns a secret's value, so this consumer is write-only: ``verify`` checks the
secret's ``updated_at`` and, when configured, dispatches a canary workflow that uses the secret and waits for
it to succeed.

PyGithub's own retries (``GithubRetry``: up to 10 attempts, unbounded waits for a primary limit reset) are
switched off on the client built from the hook's settings; ``call_with_retries`` applies this project's
policy instead: no retry on a refusal; bounded retries (5 attempts, 3 minutes) honouring ``retry-after`` /
``x-ratelimit-reset`` for rate limits, and backoff for 5xx and network errors. A rate limit that resets more
than a minute away fails at once as retryable, for Airflow's own task retry. PyGithub's request spacing
(0.25 s between requests, 1 s between writes) is kept.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers.base import Consumer, ConsumerConfig, Verification
from kosli_rotation.errors import ConsumerError
from kosli_rotation.retrying import backoff_delay, call_with_retries, retry_after_seconds

if TYPE_CHECKING:
    from github import Github
    from github.Environment import Environment
    from github.GithubException import GithubException
    from github.Organization import Organization
    from github.OrganizationSecret import OrganizationSecret
    from github.Repository import Repository
    from github.Secret import Secret
    from github.Workflow import Workflow
    from github.WorkflowRun import WorkflowRun

log = logging.getLogger(__name__)
T = TypeVar("T")

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ACCOUNT = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})"  # GitHub user and organization logins
REPOSITORY = re.compile(rf"^{ACCOUNT}/[A-Za-z0-9._-]{{1,100}}$")
ORGANIZATION = re.compile(rf"^{ACCOUNT}$")
WORKFLOW = re.compile(r"^(?:\d+|[^/]+\.ya?ml)$")

CLOCK_SKEW_SECONDS = 2.0  # GitHub's updated_at has whole seconds and its own clock
MAX_ATTEMPTS = 5
RETRY_BUDGET_SECONDS = 180.0
MAX_SINGLE_WAIT_SECONDS = 60.0
SECONDARY_LIMIT_WAIT_SECONDS = 60.0  # GitHub: without retry-after, wait at least a minute
CANARY_POLL_CAP_SECONDS = 10.0
# PyGithub's defaults, made explicit: GitHub asks integrations to space requests and writes out.
SECONDS_BETWEEN_REQUESTS = 0.25
SECONDS_BETWEEN_WRITES = 1.0


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


def _rate_limit_wait(error: GithubException) -> float | None:
    """Seconds GitHub asks us to wait when ``error`` is a rate limit (primary or secondary), else None."""
    from github.GithubException import RateLimitExceededException

    if error.status not in (403, 429):
        return None
    headers = error.headers or {}
    retry_after = retry_after_seconds(headers.get("retry-after"))
    if retry_after is not None:
        return retry_after
    if headers.get("x-ratelimit-remaining") == "0" and headers.get("x-ratelimit-reset"):
        try:
            return max(0.0, float(headers["x-ratelimit-reset"]) - time.time()) + 1.0
        except ValueError:
            return SECONDARY_LIMIT_WAIT_SECONDS
    if isinstance(error, RateLimitExceededException):
        return SECONDARY_LIMIT_WAIT_SECONDS
    return None


def _retry_delay(error: Exception, attempt: int) -> float | None:
    """Retry rate limits (when the wait fits in a minute), 5xx, one 422 and network errors; never a refusal."""
    import requests
    from github.GithubException import GithubException

    if isinstance(error, requests.ConnectionError | requests.Timeout):
        return backoff_delay(attempt)
    if not isinstance(error, GithubException):
        return None
    wait = _rate_limit_wait(error)
    if wait is not None:
        return wait if wait <= MAX_SINGLE_WAIT_SECONDS else None
    if error.status == 429 or error.status >= 500:  # a bare 429 still means "slow down"
        return backoff_delay(attempt)
    if error.status == 422 and attempt == 0:
        return backoff_delay(0)  # the public key may have been rotated between our GET and PUT: fetch it again
    return None


class GithubActionsConsumer(Consumer[GithubActionsConfig]):
    """Creates or updates the secret; organization secrets keep their visibility and selected repositories."""

    kind = "github_actions"
    readable = False
    #: GitHub asks integrations to send one token's requests serially; its secondary limits punish bursts.
    max_concurrency = 1

    def __init__(self, config: GithubActionsConfig) -> None:
        super().__init__(config)
        self._client: Github | None = None
        self._scope: Repository | Environment | Organization | None = None
        self._repositories: dict[str, Repository] = {}

    # -- naming ------------------------------------------------------------------------------------------

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

    # -- the client and the calls --------------------------------------------------------------------------

    def _github(self) -> Github:
        """PyGithub as the connection configures it (token or App, GHES host), minus PyGithub's own retries."""
        if self._client is None:
            from airflow.providers.github.hooks.github import GithubHook
            from github import Github

            from kosli_rotation.held_credentials import held_github_auth

            conn_id = self.config.conn_id
            try:
                configured = GithubHook(github_conn_id=conn_id).get_conn()
            except Exception as error:
                if type(error).__name__ == "AirflowNotFoundException":
                    message = (
                        f"Airflow connection {conn_id!r} is not defined: create a 'github' connection with the token "
                        f"as password (e.g. AIRFLOW_CONN_{conn_id.upper()}="
                        '\'{"conn_type": "github", "password": "<token>"}\')'
                    )
                    raise ConsumerError(self.name, message, retryable=False) from None
                if isinstance(error, ValueError):
                    message = f"Airflow connection {conn_id!r} cannot authenticate to GitHub: {error}"
                    raise ConsumerError(self.name, message, retryable=False) from None
                raise
            pin_client_loggers()  # importing PyGithub set its logger to INFO; at DEBUG it logs token answers
            self._client = Github(
                **{
                    **configured.requester.kwargs,
                    "auth": held_github_auth(configured.requester.auth),  # installation tokens held when minted
                    "retry": None,
                    "seconds_between_requests": SECONDS_BETWEEN_REQUESTS,
                    "seconds_between_writes": SECONDS_BETWEEN_WRITES,
                }
            )
        return self._client

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run one GitHub interaction under the retry policy; turn what is left into a ``ConsumerError``."""
        import requests
        from github.GithubException import GithubException

        try:
            return call_with_retries(
                action,
                delay_for=_retry_delay,
                what=f"GitHub: {what}",
                max_attempts=MAX_ATTEMPTS,
                deadline=time.monotonic() + RETRY_BUDGET_SECONDS,
            )
        except GithubException as error:
            raise self._refusal(what, error) from None
        except (requests.ConnectionError, requests.Timeout) as error:
            base_url = self._github().requester.base_url
            message = f"GitHub at {base_url} unreachable while {what}: {type(error).__name__}"
            raise ConsumerError(self.name, message, retryable=True) from None

    def _refusal(self, what: str, error: GithubException) -> ConsumerError:
        """A message that says who refused what, and what to fix."""
        conn_id = self.config.conn_id
        said = (error.data or {}).get("message") if isinstance(error.data, dict) else None
        answer = f"HTTP {error.status}" + (f" {said!r}" if said else "")
        wait = _rate_limit_wait(error)
        if wait is not None:
            return ConsumerError(
                self.name, f"GitHub rate limit while {what} ({answer}; retry in {wait:.0f}s)", retryable=True
            )
        if error.status == 401:
            fix = f"the token of Airflow connection {conn_id!r} is wrong or expired: replace it"
            message = f"GitHub refused the credentials while {what} ({answer}); {fix}"
            return ConsumerError(self.name, message, retryable=False)
        if error.status == 403:
            fix = (
                f"give the token of connection {conn_id!r} write access to Actions secrets of {self.target} "
                "(classic PAT: repo, plus admin:org for organization secrets; fine-grained/App: Secrets write"
                + (", Environments read" if self.config.environment else "")
                + (", Actions write for the canary" if self.config.canary else "")
                + ")"
            )
            return ConsumerError(self.name, f"GitHub forbade {what} ({answer}); {fix}", retryable=False)
        if error.status == 404:
            fix = (
                f"check the name, and that the token of connection {conn_id!r} can see it "
                "(GitHub answers 404 for private repositories a token may not access)"
            )
            return ConsumerError(self.name, f"not found while {what} ({answer}); {fix}", retryable=False)
        retryable = error.status == 429 or error.status >= 500
        return ConsumerError(self.name, f"GitHub answered {answer} while {what}", retryable=retryable)

    def _repository(self, full_name: str) -> Repository:
        if full_name.lower() not in self._repositories:
            github = self._github()
            self._repositories[full_name.lower()] = self._call(
                f"reading repository {full_name}", lambda: github.get_repo(full_name)
            )
        return self._repositories[full_name.lower()]

    def _secrets_scope(self) -> Repository | Environment | Organization:
        """The repository, environment or organization object that owns the secret (one GET, cached)."""
        if self._scope is None:
            config = self.config
            if config.organization is not None:
                github, login = self._github(), config.organization
                self._scope = self._call(f"reading organization {login}", lambda: github.get_organization(login))
            else:
                assert config.repository is not None
                repository = self._repository(config.repository)
                environment = config.environment
                self._scope = (
                    repository
                    if environment is None
                    else self._call(f"reading {self.target}", lambda: repository.get_environment(environment))
                )
        return self._scope

    def _current_secret(self) -> Secret | OrganizationSecret | None:
        """The secret's metadata now, or None when it does not exist."""
        from github.GithubException import UnknownObjectException

        scope, name = self._secrets_scope(), self.config.secret_name

        def fetch() -> Secret | OrganizationSecret | None:
            try:
                return scope.get_secret(name)
            except UnknownObjectException:
                return None

        return self._call(f"reading secret {name} of {self.target}", fetch)

    # -- the Consumer interface ------------------------------------------------------------------------------

    def check_access(self) -> None:
        """The target exists and the token may manage its secrets (the public key needs the same right)."""
        scope = self._secrets_scope()
        self._call(f"reading the Actions public key of {self.target}", lambda: scope.get_public_key())
        if self.config.canary is not None:
            self._canary_workflow()

    def write(self, key: str) -> None:
        scope, name = self._secrets_scope(), self.config.secret_name
        options: dict[str, Any] = self._organization_options() if self.config.organization else {}
        self._call(f"writing secret {name} of {self.target}", lambda: scope.create_secret(name, key, **options))
        log.info("Set %s%s", self.describe(), f" (visibility {options['visibility']})" if options else "")

    def verify(self, key: str, written_at: float) -> Verification:
        secret = self._current_secret()
        if secret is None:
            return Verification(False, "metadata", f"there is no secret {self.config.secret_name} in {self.target}")
        updated_at = secret.updated_at.timestamp()
        detail = f"updated_at {_iso(updated_at)}"
        if updated_at < written_at - CLOCK_SKEW_SECONDS:
            return Verification(
                False, "metadata", f"{detail} is before the key was stored ({_iso(written_at)}): our write did not land"
            )
        if self.config.canary is None:
            return Verification(True, "metadata", detail)
        succeeded, canary_detail = self._run_canary()
        return Verification(succeeded, "metadata + canary", f"{detail}; {canary_detail}")

    # -- organization secrets ----------------------------------------------------------------------------------

    def _organization_options(self) -> dict[str, Any]:
        """``create_secret`` options: an existing secret's visibility and repositories, else the configured ones."""
        existing = self._current_secret()
        if existing is not None:
            visibility = existing.visibility  # type: ignore[union-attr]
            if self.config.visibility and self.config.visibility != visibility:
                log.warning(
                    "%s keeps its visibility %r; the inventory's %r only applies when creating it",
                    self.describe(),
                    visibility,
                    self.config.visibility,
                )
            if visibility != "selected":
                return {"visibility": visibility}
            selected = self._call(
                f"listing the repositories selected for secret {self.config.secret_name} of {self.target}",
                lambda: list(existing.selected_repositories),  # type: ignore[union-attr]
            )
            return {"visibility": visibility, "selected_repositories": selected}
        configured = self.config.selected_repositories
        visibility = self.config.visibility or ("selected" if configured is not None else "private")
        if visibility != "selected":
            return {"visibility": visibility}
        org = self.config.organization
        selected = [self._repository(name if "/" in name else f"{org}/{name}") for name in configured or ()]
        return {"visibility": visibility, "selected_repositories": selected}

    # -- the canary --------------------------------------------------------------------------------------------

    def _canary_repository(self) -> Repository:
        assert self.config.canary is not None
        full_name = self.config.canary.repository or self.config.repository
        assert full_name is not None  # guaranteed by the config validator
        return self._repository(full_name)

    def _canary_workflow(self) -> Workflow:
        assert self.config.canary is not None
        repository, workflow = self._canary_repository(), self.config.canary.workflow
        return self._call(
            f"reading workflow {workflow} of repository {repository.full_name}",
            lambda: repository.get_workflow(workflow),
        )

    def _run_canary(self) -> tuple[bool, str]:
        """Dispatch the canary and wait (bounded) for that run to finish: (succeeded, what happened)."""
        from github.WorkflowRun import WorkflowRun

        canary = self.config.canary
        assert canary is not None
        repository, workflow = self._canary_repository(), self._canary_workflow()
        where = f"{workflow.path} of {repository.full_name}"
        dispatched_at = time.time()
        dispatched = self._call(
            f"dispatching {where} on {canary.ref}",
            lambda: workflow.create_dispatch(canary.ref, throw=True, return_run_details=True),
        )
        run_id = dispatched.id if isinstance(dispatched, WorkflowRun) else None
        deadline = time.monotonic() + self.config.canary_timeout_seconds
        run: WorkflowRun | None = None
        for poll in itertools.count():
            run = self._canary_run(repository, workflow, run_id, dispatched_at)
            if run is not None and run.status == "completed":
                succeeded = run.conclusion == "success"
                outcome = "succeeded" if succeeded else f"concluded {run.conclusion}"
                log.info("Canary run #%s of %s %s: %s", run.run_number, where, outcome, run.html_url)
                return succeeded, f"canary run #{run.run_number} of {where} {outcome} ({run.html_url})"
            run_id = run.id if run is not None else None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(backoff_delay(poll, base=0.5, cap=CANARY_POLL_CAP_SECONDS), remaining))
        state = f"run #{run.run_number} still {run.status}" if run else "no run appeared"
        return False, f"canary {where}: {state} after {self.config.canary_timeout_seconds:g}s"

    def _canary_run(
        self, repository: Repository, workflow: Workflow, run_id: int | None, dispatched_at: float
    ) -> WorkflowRun | None:
        """The dispatched run as it is now: by id when GitHub told us, else the first one created since."""
        if run_id is not None:
            where = f"{workflow.path} of {repository.full_name}"
            return self._call(f"reading run {run_id} of {where}", lambda: repository.get_workflow_run(run_id))
        return self._dispatched_run(workflow, dispatched_at)

    def _dispatched_run(self, workflow: Workflow, dispatched_at: float) -> WorkflowRun | None:
        """The first ``workflow_dispatch`` run created after our dispatch (servers that return no run id)."""
        since = dispatched_at - CLOCK_SKEW_SECONDS
        runs = self._call(
            f"listing runs of workflow {workflow.path}",
            lambda: workflow.get_runs(event="workflow_dispatch", created=f">={_iso(since)}").get_page(0),
        )
        fresh = [run for run in runs if run.created_at.timestamp() >= since]
        return min(fresh, key=lambda run: run.id, default=None)
