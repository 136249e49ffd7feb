"""A GitLab CI/CD variable (of a project or a group) that pipelines read the key from, set with python-gitlab.

GitLab returns variable values, so the key is read back and compared by full digest, except for hidden
variables (``masked_and_hidden``, GitLab 17.4+), whose value GitLab never returns: those are verified by
the acknowledgement of an idempotent re-write instead.

Retries: python-gitlab's own loop (``obey_rate_limit``, ``retry_transient_errors``, ``max_retries`` in
``gitlab/utils.py`` ``Retry``) sleeps whatever ``Retry-After`` or ``RateLimit-Reset`` says with no cap and no
overall deadline, crashes on a non-integer ``Retry-After``, and backs off 5xx for only 0.1 * 2^n s. So it is
switched off on every call (``obey_rate_limit=False``; ``retry_transient_errors`` stays False) and
``call_with_retries`` does the retrying instead, reading the rate-limit headers of the last response.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers.base import WRITE_CONFIRMED_ONLY, Consumer, ConsumerConfig, Proof, Verification
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint, hold_secret, short
from kosli_rotation.retrying import backoff_delay, call_with_retries, retry_after_seconds

if TYPE_CHECKING:
    import gitlab.exceptions

log = logging.getLogger(__name__)
T = TypeVar("T")

VARIABLE_KEY = re.compile(r"[A-Za-z0-9_]{1,255}")
ENVIRONMENT_SCOPE = re.compile(r"[A-Za-z0-9_/${}. *-]{1,255}")
PATH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: Retry budget for 429, 5xx and network errors: at most this many attempts, within this many seconds.
MAX_ATTEMPTS = 5
RETRY_BUDGET_SECONDS = 180.0
#: Longest single wait, whatever Retry-After / RateLimit-Reset ask for.
MAX_WAIT_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 30.0
#: Passed to every python-gitlab call: it must not run its own (unbounded) 429 loop underneath ours.
NO_LIBRARY_RETRIES: dict[str, Any] = {"obey_rate_limit": False, "retry_transient_errors": False}
DESCRIPTION = "Kosli API key, rotated by kosli-key-rotation"


def _target_reference(value: Any, what: str, *, needs_namespace: bool) -> int | str:
    """A numeric id, or a full path such as ``group/subgroup/project``, as GitLab's API accepts them."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} must be a numeric id or a full path, got {value!r}")
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        if int(value) < 1:
            raise ValueError(f"{what} id must be a positive number")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a numeric id or a full path, got {value!r}")
    if "://" in value:
        raise ValueError(f"{what} {value!r} is a URL: give the full path after the host, e.g. 'group/{what}'")
    segments = value.split("/")
    bad = [
        segment for segment in segments if not PATH_SEGMENT.fullmatch(segment) or segment.endswith((".git", ".atom"))
    ]
    if bad:
        raise ValueError(
            f"{what} path {value!r} is not a GitLab full path: each part must start with a letter, digit or '_' "
            "and contain only letters, digits, '_', '-' and '.' (no leading/trailing '/', no '.git')"
        )
    if needs_namespace and len(segments) < 2:
        raise ValueError(f"project path {value!r} needs its namespace, e.g. 'my-group/{value}'")
    return value


class GitLabCiConfig(ConsumerConfig):
    kind: Literal["gitlab_ci"]
    conn_id: str = Field(default="gitlab_default", description="HTTP connection: host = GitLab URL, password = token.")
    project: int | str | None = Field(default=None, description="Project id or full path (group/sub/project).")
    group: int | str | None = Field(default=None, description="Group id or full path, for a group-level variable.")
    variable: str = Field(default="KOSLI_API_TOKEN", description="The variable's key.")
    environment_scope: str = Field(default="*", description="Which variable of that key: '*' or an environment.")
    # Only used when the variable is created; an existing variable keeps its own flags.
    masked: bool = Field(default=True, description="Hide the value in job logs.")
    protected: bool = Field(default=False, description="Only expose it to protected branches and tags.")
    raw: bool = Field(default=True, description="Do not expand '$' references inside the value.")
    hidden: bool = Field(
        default=False, description="Masked and hidden (GitLab 17.4+): never shown again, even by the API."
    )

    @field_validator("project", mode="before")
    @classmethod
    def _project_reference(cls, value: Any) -> int | str | None:
        return None if value is None else _target_reference(value, "project", needs_namespace=True)

    @field_validator("group", mode="before")
    @classmethod
    def _group_reference(cls, value: Any) -> int | str | None:
        return None if value is None else _target_reference(value, "group", needs_namespace=False)

    @field_validator("variable")
    @classmethod
    def _variable_key(cls, value: str) -> str:
        if not VARIABLE_KEY.fullmatch(value):
            raise ValueError(
                f"variable {value!r} is not a valid GitLab variable key: use 1 to 255 letters, digits and '_'"
            )
        return value

    @field_validator("environment_scope")
    @classmethod
    def _scope(cls, value: str) -> str:
        if not ENVIRONMENT_SCOPE.fullmatch(value):
            raise ValueError(
                f"environment_scope {value!r} is invalid: use '*' or an environment name/pattern of up to 255 "
                "letters, digits, spaces and - _ / $ { } . *"
            )
        return value

    @model_validator(mode="after")
    def _one_target(self) -> GitLabCiConfig:
        if (self.project is None) == (self.group is None):
            raise ValueError("set exactly one of 'project' or 'group' (an id or a full path)")
        if self.hidden and not self.masked:
            raise ValueError("a hidden variable is always masked: drop 'masked: false' or 'hidden: true'")
        return self


def _base_url(connection: Any, conn_id: str) -> str:
    """The GitLab URL from an HTTP connection: ``host`` with or without scheme, ``schema``, ``port``."""
    host = (connection.host or "").strip().rstrip("/")
    if not host:
        raise ValueError(
            f"Airflow connection {conn_id!r} has no host: set it to the GitLab URL, e.g. https://gitlab.com"
        )
    if "://" not in host:
        scheme = connection.schema if connection.schema in ("http", "https") else "https"
        host = f"{scheme}://{host}"
    parts = urlsplit(host)
    if connection.port and parts.port is None:
        parts = parts._replace(netloc=f"{parts.netloc}:{connection.port}")
    path = parts.path.rstrip("/").removesuffix("/api/v4")
    return urlunsplit(parts._replace(path=path, query="", fragment=""))


def _server_wait(headers: Mapping[str, str]) -> float | None:
    """What GitLab asks us to wait: ``Retry-After`` seconds, else until ``RateLimit-Reset`` (epoch seconds)."""
    wait = retry_after_seconds(headers.get("Retry-After"))
    reset = headers.get("RateLimit-Reset")
    if wait is None and reset:
        try:
            value = float(reset)
        except ValueError:
            return None
        wait = max(0.0, value - time.time()) if value > 1e9 else value  # epoch, or delta seconds from a proxy
    return wait


def _message(error: gitlab.exceptions.GitlabError) -> str:
    """GitLab's error text: ``{"message": "..."}``, ``{"message": {"field": [...]}}`` or ``{"error": "..."}``."""
    message = error.error_message
    if isinstance(message, dict):
        return "; ".join(f"{field} {' '.join(map(str, texts))}" for field, texts in message.items())
    return str(message).strip()[:300] or "no message"


def _variable_missing(error: gitlab.exceptions.GitlabError) -> bool:
    """404 for the variable itself, not for its project or group (``404 Project Not Found``)."""
    return error.response_code == 404 and "Variable" in _message(error)


def _already_taken(error: gitlab.exceptions.GitlabError) -> bool:
    return error.response_code == 400 and "has already been taken" in _message(error)


class GitLabCiConsumer(Consumer[GitLabCiConfig]):
    """Updates the variable's value in place (PUT) or creates it (POST), never touching its other settings."""

    kind = "gitlab_ci"
    readable = True  # except hidden variables, handled in read_digest() and verify()

    def __init__(self, config: GitLabCiConfig) -> None:
        super().__init__(config)
        self._client: Any = None
        self._url: str | None = None
        self._last_status = 0
        self._last_headers: Mapping[str, str] = {}

    # -- naming ----------------------------------------------------------------------------------

    @property
    def target(self) -> str:
        config = self.config
        return f"project {config.project}" if config.project is not None else f"group {config.group}"

    @property
    def variable_ref(self) -> str:
        return f"variable {self.config.variable} (environment scope {self.config.environment_scope!r}) of {self.target}"

    def describe(self) -> str:
        return f"GitLab CI/CD {self.variable_ref} (connection {self.config.conn_id})"

    # -- plumbing --------------------------------------------------------------------------------

    def _gitlab(self) -> Any:
        """A python-gitlab client for the connection, created on first use (never at DAG parse time)."""
        if self._client is None:
            import gitlab
            import requests
            from airflow.sdk import BaseHook

            conn_id = self.config.conn_id
            try:
                connection = BaseHook.get_connection(conn_id)
            except Exception as error:
                if type(error).__name__ != "AirflowNotFoundException":
                    raise
                raise ConsumerError(
                    self.name,
                    f"Airflow connection {conn_id!r} is not defined: create an HTTP connection whose host is the "
                    "GitLab URL and whose password is an access token with the api scope",
                    retryable=False,
                ) from None
            if not connection.password:
                raise ConsumerError(
                    self.name,
                    f"Airflow connection {conn_id!r} has no password: set it to a GitLab access token with the api "
                    f"scope and the {self._required_role} role on {self.target}",
                    retryable=False,
                )
            try:
                self._url = _base_url(connection, conn_id)
            except ValueError as error:
                raise ConsumerError(self.name, str(error), retryable=False) from None
            session = requests.Session()
            session.hooks["response"].append(self._remember_response)
            pin_client_loggers()
            self._client = gitlab.Gitlab(
                self._url,
                private_token=hold_secret(connection.password),
                timeout=REQUEST_TIMEOUT_SECONDS,
                ssl_verify=connection.extra_dejson.get("verify", True),
                user_agent=f"kosli-key-rotation python-gitlab/{gitlab.__version__}",
                session=session,
            )
        return self._client

    def _remember_response(self, response: Any, *args: Any, **kwargs: Any) -> None:
        """python-gitlab's errors carry no headers; keep the last ones to honour Retry-After."""
        self._last_status = response.status_code
        self._last_headers = response.headers

    @property
    def _required_role(self) -> str:
        return "Maintainer" if self.config.project is not None else "Owner"

    def _variables(self) -> Any:
        """The project's or group's variable manager (lazy: no request)."""
        config = self.config
        if config.project is not None:
            return self._gitlab().projects.get(config.project, lazy=True).variables
        return self._gitlab().groups.get(config.group, lazy=True).variables

    @property
    def _scope_filter(self) -> dict[str, str]:
        return {"environment_scope": self.config.environment_scope}  # sent as filter[environment_scope]

    def _retry_delay(self, error: Exception, attempt: int) -> float | None:
        """Retry 429, 5xx (not 501) and network errors, waiting what GitLab asks (capped); never refusals."""
        import gitlab.exceptions
        import requests

        if isinstance(error, requests.ConnectionError | requests.Timeout | requests.exceptions.ChunkedEncodingError):
            return backoff_delay(attempt)
        status = error.response_code if isinstance(error, gitlab.exceptions.GitlabError) else None
        if status is None or not (status == 429 or (status >= 500 and status != 501)):
            return None
        hinted = _server_wait(self._last_headers)
        return min(MAX_WAIT_SECONDS, hinted if hinted is not None else backoff_delay(attempt))

    def _call(
        self,
        what: str,
        action: Callable[[], T],
        *,
        tolerate: Callable[[gitlab.exceptions.GitlabError], bool] | None = None,
        secret: str | None = None,
    ) -> T | None:
        """Run one API call with bounded retries; None when ``tolerate`` accepts the error it ended with."""
        import gitlab.exceptions
        import requests

        try:
            return call_with_retries(
                action,
                delay_for=self._retry_delay,
                what=f"GitLab: {what}",
                max_attempts=MAX_ATTEMPTS,
                deadline=time.monotonic() + RETRY_BUDGET_SECONDS,
            )
        except gitlab.exceptions.GitlabError as error:
            if tolerate is not None and tolerate(error):
                return None
            raise self._refusal(error, what, secret) from None
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as error:
            raise ConsumerError(
                self.name,
                f"cannot reach GitLab at {self._url} to {what} ({type(error).__name__}); gave up after retrying",
                retryable=True,
            ) from None

    def _refusal(self, error: gitlab.exceptions.GitlabError, what: str, secret: str | None) -> ConsumerError:
        """A ConsumerError that says what GitLab refused and what to fix; only 429/5xx may be retried later."""
        status = error.response_code
        message = _message(error)
        if secret:
            message = message.replace(secret, "[the key]")
        conn_id = self.config.conn_id
        if status == 401:
            text = (
                f"GitLab at {self._url} rejected the token of connection {conn_id!r} (401: {message}) while trying "
                f"to {what}: it is wrong, expired or revoked; put a valid access token with the api scope in the "
                "connection's password"
            )
        elif status == 403:
            text = (
                f"the token of connection {conn_id!r} may not {what} (403: {message}): it needs the api scope and "
                f"the {self._required_role} role on {self.target}"
            )
        elif status == 404:
            text = (
                f"{self.target} was not found at {self._url} (404: {message}), or the token of connection "
                f"{conn_id!r} cannot see it: check the id or full path and the token user's membership"
            )
        elif status == 409:
            text = f"GitLab could not tell which variable to {what} (409: {message})"
        elif status == 400 and "value" in message:
            text = (
                f"GitLab refused the value when trying to {what} (400: {message}): a masked variable needs at least "
                "8 characters without spaces (and, unless it is raw, only letters, digits and _+=/@:.~-)"
            )
        elif status is None:
            text = (
                f"GitLab at {self._url} gave an unexpected answer to {what} ({type(error).__name__}: {message}): "
                f"check that the host of connection {conn_id!r} is the GitLab base URL"
            )
        elif status == 429 or status >= 500:
            text = f"GitLab kept answering {status} ({message}) to {what}; gave up after {MAX_ATTEMPTS} attempts"
        else:
            text = f"GitLab refused to {what} ({status}: {message})"
        retryable = status is not None and (status == 429 or (status >= 500 and status != 501))
        return ConsumerError(self.name, text, retryable=retryable)

    # -- reading ---------------------------------------------------------------------------------

    def _read_variable(self) -> dict[str, Any] | None:
        """The variable's attributes (value None when hidden), or None when it does not exist."""
        variables = self._variables()
        found = self._call(
            f"read {self.variable_ref}",
            lambda: variables.get(self.config.variable, filter=self._scope_filter, **NO_LIBRARY_RETRIES),
            tolerate=_variable_missing,
        )
        return dict(found.attributes) if found is not None else None

    def check_access(self) -> None:
        variables = self._variables()
        self._call(
            f"list the CI/CD variables of {self.target}",
            lambda: variables.list(per_page=1, get_all=False, **NO_LIBRARY_RETRIES),
        )
        scopes = self._token_scopes()
        if scopes is not None and "api" not in scopes:
            raise ConsumerError(
                self.name,
                f"the token of connection {self.config.conn_id!r} has scopes {sorted(scopes)}: writing variables "
                f"of {self.target} needs the api scope",
                retryable=False,
            )
        existing = self._read_variable()
        if existing and existing.get("hidden"):
            log.info(
                "%s is hidden: it cannot be read back, so it is verified by write acknowledgement", self.describe()
            )
        if existing and existing.get("variable_type") == "file":
            log.warning(
                "%s is a file variable: jobs get a file path in $%s, not the key", self.describe(), self.config.variable
            )

    def _token_scopes(self) -> list[str] | None:
        """The access token's scopes, or None when GitLab cannot tell (OAuth token, GitLab before 15.5)."""
        tokens = self._gitlab().personal_access_tokens
        found = self._call(
            f"read the scopes of the token of connection {self.config.conn_id!r}",
            lambda: tokens.get("self", **NO_LIBRARY_RETRIES),
            tolerate=lambda error: error.response_code in (401, 403, 404),
        )
        return list(found.attributes.get("scopes") or []) if found is not None else None

    def read_digest(self) -> str | None:
        variable = self._read_variable()
        if variable is None or variable.get("hidden"):
            return None  # a hidden variable's value never comes back: treat it as unknown and write it
        value = variable.get("value")
        return digest(value) if value else None

    # -- writing ---------------------------------------------------------------------------------

    def _update(self, key: str) -> dict[str, Any] | None:
        """PUT only the value (the variable keeps its flags); None when the variable does not exist."""
        variables = self._variables()
        return self._call(
            f"update {self.variable_ref}",
            lambda: variables.update(
                self.config.variable, {"value": key}, filter=self._scope_filter, **NO_LIBRARY_RETRIES
            ),
            tolerate=_variable_missing,
            secret=key,
        )

    def _create(self, key: str) -> dict[str, Any] | None:
        """POST a new env_var variable with the configured flags; None when someone created it meanwhile."""
        config = self.config
        attributes: dict[str, Any] = {
            "key": config.variable,
            "value": key,
            "variable_type": "env_var",
            "environment_scope": config.environment_scope,
            "masked": config.masked or config.hidden,
            "protected": config.protected,
            "raw": config.raw,
            "description": DESCRIPTION,
        }
        if config.hidden:
            attributes["masked_and_hidden"] = True
        variables = self._variables()
        created = self._call(
            f"create {self.variable_ref}",
            lambda: variables.create(attributes, **NO_LIBRARY_RETRIES),
            tolerate=_already_taken,
            secret=key,
        )
        return dict(created.attributes) if created is not None else None

    def write(self, key: str) -> None:
        """PUT, and on 404 POST; a POST that lost a creation race ("already taken") becomes a PUT again."""
        written, action = self._update(key), "updated"
        if written is None:
            written, action = self._create(key), "created"
        if written is None:
            written, action = self._update(key), "updated"
        if written is None:
            raise ConsumerError(self.name, f"{self.variable_ref} appeared and vanished while being written; retry")
        self._check_acknowledged(written)
        log.info("%s %s with %s", action.capitalize(), self.describe(), fingerprint(key))

    def _acknowledgement_problem(self, written: Mapping[str, Any]) -> str | None:
        """Why GitLab's answer does not name our variable, or None when it does."""
        key, scope = written.get("key"), written.get("environment_scope", self.config.environment_scope)
        if (key, scope) == (self.config.variable, self.config.environment_scope):
            return None
        return (
            f"GitLab answered the write of {self.variable_ref} with variable {key} in scope {scope!r}: this GitLab "
            "ignores filter[environment_scope] (older versions do for group variables); give each key one scope"
        )

    def _check_acknowledged(self, written: Mapping[str, Any]) -> None:
        problem = self._acknowledgement_problem(written)
        if problem:
            raise ConsumerError(self.name, problem, retryable=False)

    # -- verifying -------------------------------------------------------------------------------

    @property
    def proof(self) -> Proof:
        """A variable configured hidden is never read back: only its re-write is acknowledged."""
        return WRITE_CONFIRMED_ONLY if self.config.hidden else super().proof

    def verification_plan(self) -> str:
        hidden = (
            "a hidden variable's value never comes back, so an idempotent re-write must be acknowledged "
            "(HTTP 200 naming the variable and its scope); nothing proves the value itself"
        )
        if self.config.hidden:
            return f"{self.proof}: {hidden}"
        return super().verification_plan() + f"; if the variable turns out hidden, {WRITE_CONFIRMED_ONLY}: {hidden}"

    def verify(self, key: str, written_at: float) -> Verification:
        """Compare full digests; a hidden variable cannot be read, so its re-write must be acknowledged."""
        expected = digest(key)
        variable = self._read_variable()
        if variable is None:
            return Verification(False, "read back", f"{self.variable_ref} does not exist")
        if variable.get("hidden"):
            return self._verify_hidden(key)
        value = variable.get("value")
        held = digest(value) if value else None
        if held == expected:
            return Verification(True, "read back", f"{self.variable_ref} holds {short(expected)}")
        shown = short(held) if held else "nothing"
        return Verification(False, "read back", f"{self.variable_ref} holds {shown}, expected {short(expected)}")

    def _verify_hidden(self, key: str) -> Verification:
        """GitLab never returns a hidden value: re-write it (idempotent) and require a 200 naming our variable."""
        method = "write acknowledged"
        acknowledged = self._update(key)
        if acknowledged is None:
            return Verification(False, method, f"{self.variable_ref} is hidden and the PUT answered 404")
        problem = self._acknowledgement_problem(acknowledged)
        if problem or self._last_status != 200:
            return Verification(False, method, problem or f"the PUT answered HTTP {self._last_status}, not 200")
        when = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return Verification(
            True,
            method,
            f"{self.variable_ref} is hidden, so its value cannot be read back; a PUT of {fingerprint(key)} was "
            f"acknowledged with HTTP 200 for key {acknowledged.get('key')} and scope "
            f"{acknowledged.get('environment_scope')!r} at {when}",
        )
