"""A GitLab CI/CD variable (of a project or a group) that pipelines read the key from, set with python-gitlab.

GitLab returns variable values, so the key is read back and compared by full digest, except for hidden
variables (``masked_and_hidden``, GitLab 17.4+), whose value GitLab never returns: those are verified by
the acknowledgement of an idempotent re-write instead.

python-gitlab's own retry loop (no cap, no deadline) is off on every call (``NO_LIBRARY_RETRIES``): the shared
``Transport`` retries, reading the headers of the last response (python-gitlab's errors carry none).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationInfo, field_validator, model_validator

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers import transport
from kosli_rotation.consumers.base import WRITE_CONFIRMED_ONLY, Consumer, ConsumerConfig, Proof, Verification
from kosli_rotation.consumers.transport import Fixes, RemoteFailure, Transport
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest, fingerprint, hold_secret, short
from kosli_rotation.scrub import one_line

if TYPE_CHECKING:
    import gitlab.exceptions

log = logging.getLogger(__name__)
T = TypeVar("T")
Tolerate = Callable[["gitlab.exceptions.GitlabError"], bool] | None

VARIABLE_KEY = re.compile(r"[A-Za-z0-9_]{1,255}")
ENVIRONMENT_SCOPE = re.compile(r"[A-Za-z0-9_/${}. *-]{1,255}")
SPELLINGS = {  # field: (pattern, what is wrong otherwise)
    "variable": (VARIABLE_KEY, "is not a valid GitLab variable key: use 1 to 255 letters, digits and '_'"),
    "environment_scope": (
        ENVIRONMENT_SCOPE,
        "is invalid: use '*' or an environment name/pattern of up to 255 letters, digits, spaces and - _ / $ { } . *",
    ),
}
PATH_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
REQUEST_TIMEOUT_SECONDS = 30.0
#: Passed to every python-gitlab call: it must not run its own (unbounded) 429 loop underneath ours.
NO_LIBRARY_RETRIES: dict[str, Any] = {"obey_rate_limit": False, "retry_transient_errors": False}
DESCRIPTION = "Kosli API key, rotated by kosli-key-rotation"
#: What to fix when GitLab refuses (``{conn_id}``, ``{url}``, ``{target}`` and ``{role}`` filled in per consumer).
FIXES = Fixes(
    unauthorized="the token is wrong, expired or revoked: put a valid one with the api scope in its password",
    forbidden="the token needs the api scope and the {role} role on {target}",
    not_found=(
        "{target} was not found at {url}, or the token of connection {conn_id!r} cannot see it: check the id or "
        "full path and the token user's membership"
    ),
)
UNMASKABLE = (
    "a masked variable needs at least 8 characters without spaces (and, unless it is raw, only letters, digits and "
    "_+=/@:.~-)"
)
CREATE_CONNECTION = (
    "an HTTP connection whose host is the GitLab URL and whose password is an access token with the api scope"
)


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
    if any(not PATH_SEGMENT.fullmatch(part) or part.endswith((".git", ".atom")) for part in segments):
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
    hidden: bool = Field(default=False, description="Masked and hidden (GitLab 17.4+): not even the API shows it.")

    @field_validator("project", "group", mode="before")
    @classmethod
    def _target(cls, value: Any, info: ValidationInfo) -> int | str | None:
        what = str(info.field_name)
        return None if value is None else _target_reference(value, what, needs_namespace=what == "project")

    @field_validator("variable", "environment_scope")
    @classmethod
    def _spelling(cls, value: str, info: ValidationInfo) -> str:
        pattern, problem = SPELLINGS[str(info.field_name)]
        if not pattern.fullmatch(value):
            raise ValueError(f"{info.field_name} {value!r} {problem}")
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


def _message(error: gitlab.exceptions.GitlabError) -> str:
    """GitLab's error text, scrubbed: ``{"message": "..."}``, ``{"message": {"field": [...]}}``, ``{"error": ...}``."""
    message = error.error_message
    if isinstance(message, dict):
        message = "; ".join(f"{field} {' '.join(map(str, texts))}" for field, texts in message.items())
    return one_line(message, limit=300) or "no message"


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
        self._transport: Transport | None = None

    @property
    def target(self) -> str:
        config = self.config
        return f"project {config.project}" if config.project is not None else f"group {config.group}"

    @property
    def variable_ref(self) -> str:
        return f"variable {self.config.variable} (environment scope {self.config.environment_scope!r}) of {self.target}"

    def describe(self) -> str:
        return f"GitLab CI/CD {self.variable_ref} (connection {self.config.conn_id})"

    def _gitlab(self) -> Any:
        """A python-gitlab client for the connection, created on first use (never at DAG parse time)."""
        if self._client is None:
            import gitlab
            import requests

            conn_id = self.config.conn_id
            connection = transport.connection_or_explain(conn_id, self.name, CREATE_CONNECTION)
            if not connection.password:
                token = f"a GitLab access token with the api scope and the {self._required_role} role on {self.target}"
                message = f"Airflow connection {conn_id!r} has no password: set it to {token}"
                raise ConsumerError(self.name, message, retryable=False)
            try:
                self._url = _base_url(connection, conn_id)
            except ValueError as error:
                raise ConsumerError(self.name, str(error), retryable=False) from None
            fill = {"conn_id": conn_id, "url": self._url, "target": self.target, "role": self._required_role}
            fixes, service = FIXES.filled(**fill), f"GitLab at {self._url}"
            self._transport = Transport(
                consumer=self.name, service=service, conn_id=conn_id, classify=self._classify, fixes=fixes
            )
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
        config, client = self.config, self._gitlab()
        owner, ref = (client.projects, config.project) if config.project is not None else (client.groups, config.group)
        return owner.get(ref, lazy=True).variables

    @property
    def _scope_filter(self) -> dict[str, str]:
        return {"environment_scope": self.config.environment_scope}  # sent as filter[environment_scope]

    def _classify(self, error: Exception) -> RemoteFailure | None:
        """GitLab's answers (with the last response's headers, for Retry-After) and connection failures."""
        import gitlab.exceptions
        import requests

        if isinstance(error, gitlab.exceptions.GitlabError) and error.response_code is not None:
            return RemoteFailure(error.response_code, _message(error), dict(self._last_headers))
        if isinstance(error, requests.exceptions.ChunkedEncodingError):
            return RemoteFailure(None, f"no answer ({type(error).__name__})")
        return transport.classify_requests(error)

    def _call(self, what: str, fn: Callable[..., T], *args: Any, tolerate: Tolerate = None, **kwargs: Any) -> T | None:
        """``fn(*args, **kwargs)`` through the shared transport, without python-gitlab's own retries; None when
        ``tolerate`` accepts the error GitLab answered. Refusals only GitLab gives are said here."""
        import gitlab.exceptions

        def attempt() -> T | None:
            try:
                return fn(*args, **kwargs, **NO_LIBRARY_RETRIES)
            except gitlab.exceptions.GitlabError as error:
                if tolerate is not None and tolerate(error):
                    return None
                status, said = error.response_code, _message(error)
                if status == 400 and "value" in said:  # GitLab's masking rules
                    text = f"GitLab refused the value when trying to {what} (400: {said}): {UNMASKABLE}"
                    raise ConsumerError(self.name, text, retryable=False) from None
                if status is None:  # not an HTTP error: an answer python-gitlab could not take as GitLab's
                    text = f"GitLab at {self._url} gave an unexpected answer to {what} ({type(error).__name__}: {said})"
                    host = f"check that the host of connection {self.config.conn_id!r} is the GitLab base URL"
                    raise ConsumerError(self.name, f"{text}: {host}", retryable=False) from None
                raise

        self._gitlab()
        assert self._transport is not None
        return self._transport.call(attempt, what)

    def _read_variable(self) -> dict[str, Any] | None:
        """The variable's attributes (value None when hidden), or None when it does not exist."""
        get, what = self._variables().get, f"read {self.variable_ref}"
        found = self._call(what, get, self.config.variable, filter=self._scope_filter, tolerate=_variable_missing)
        return dict(found.attributes) if found is not None else None

    def check_access(self) -> None:
        self._call(f"list the CI/CD variables of {self.target}", self._variables().list, per_page=1, get_all=False)
        scopes = self._token_scopes()
        if scopes is not None and "api" not in scopes:
            has = f"the token of connection {self.config.conn_id!r} has scopes {sorted(scopes)}: writing variables"
            raise ConsumerError(self.name, f"{has} of {self.target} needs the api scope", retryable=False)
        existing, described = self._read_variable() or {}, self.describe()
        if existing.get("hidden"):
            log.info("%s is hidden: it cannot be read back, so it is verified by write acknowledgement", described)
        if existing.get("variable_type") == "file":
            log.warning("%s is a file variable: jobs get a file path in $%s, not the key", described, existing["key"])

    def _token_scopes(self) -> list[str] | None:
        """The access token's scopes, or None when GitLab cannot tell (OAuth token, GitLab before 15.5)."""
        tokens = self._gitlab().personal_access_tokens
        what = f"read the scopes of the token of connection {self.config.conn_id!r}"
        found = self._call(what, tokens.get, "self", tolerate=lambda error: error.response_code in (401, 403, 404))
        return list(found.attributes.get("scopes") or []) if found is not None else None

    def read_digest(self) -> str | None:
        variable = self._read_variable()
        if variable is None or variable.get("hidden"):
            return None  # a hidden variable's value never comes back: treat it as unknown and write it
        value = variable.get("value")
        return digest(value) if value else None

    def _update(self, key: str) -> dict[str, Any] | None:
        """PUT only the value (the variable keeps its flags); None when the variable does not exist."""
        hold_secret(key)  # an answer that echoes it is scrubbed
        update, what, name = self._variables().update, f"update {self.variable_ref}", self.config.variable
        return self._call(what, update, name, {"value": key}, filter=self._scope_filter, tolerate=_variable_missing)

    def _create(self, key: str) -> dict[str, Any] | None:
        """POST a new env_var variable with the configured flags; None when someone created it meanwhile."""
        config = self.config
        hold_secret(key)  # an answer that echoes it is scrubbed
        attributes: dict[str, Any] = {"key": config.variable, "value": key, "variable_type": "env_var"}
        attributes |= {"environment_scope": config.environment_scope, "description": DESCRIPTION, "raw": config.raw}
        attributes |= {"masked": config.masked or config.hidden, "protected": config.protected}
        if config.hidden:
            attributes["masked_and_hidden"] = True
        what = f"create {self.variable_ref}"
        created = self._call(what, self._variables().create, attributes, tolerate=_already_taken)
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
        problem = self._acknowledgement_problem(written)
        if problem:
            raise ConsumerError(self.name, problem, retryable=False)
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
        named = f"key {acknowledged.get('key')} and scope {acknowledged.get('environment_scope')!r}"
        detail = f"{self.variable_ref} is hidden, so its value cannot be read back; a PUT of {fingerprint(key)} was"
        return Verification(True, method, f"{detail} acknowledged with HTTP 200 for {named} at {when}")
