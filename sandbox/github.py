"""GitHub sandbox: the REST contract for GitHub Actions secrets and workflow_dispatch canaries, served locally.

Contract: /work/shared/reference/ci_secret_apis.md section 1, checked against what PyGithub 2.10 calls
(``get_repo``, ``get_organization``, ``Repository/Environment/Organization.create_secret`` and ``get_secret``,
``get_workflow``, ``Workflow.create_dispatch``, ``get_workflow_run``). Secrets are libsodium sealed boxes: each
repository, environment and organization has its own NaCl key pair, every PUT is decrypted to validate it, and
tests read the plaintext back in-process (``secret_value``) although the API never returns it.

Workflows dispatched through the API run for real in a background thread: the run takes the secret its
workflow reads (environment, then repository, then organization secret, as GitHub resolves names) and calls the
Kosli sandbox with it; the run concludes ``success`` iff Kosli answers 200. Where the public material is silent
the behaviour chosen here is marked ``# Assumption:``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import itertools
import math
import re
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from nacl.exceptions import CryptoError
from nacl.public import PrivateKey, SealedBox

from sandbox.request_log import RequestLog, Served, credential_label
from sandbox.server import (
    ADMIN_PREFIX,
    Abort,
    InvalidJSONBody,
    RateLimiter,
    Request,
    Response,
    SandboxServer,
    json_response,
    non_negative_float,
    positive_float,
    route,
    strict_bool,
)

DOCS = "https://docs.github.com/rest"
SEGMENT = r"[^/]+"
REPO = rf"/repos/(?P<owner>{SEGMENT})/(?P<repo>{SEGMENT})"
ENVIRONMENT = rf"{REPO}/environments/(?P<environment>{SEGMENT})"
ORG = rf"/orgs/(?P<org>{SEGMENT})"
SECRET = r"(?P<name>(?!public-key$)[^/]+)"
WORKFLOW = rf"{REPO}/actions/workflows/(?P<workflow>{SEGMENT})"

SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_SECRET_BYTES = 48 * 1024
VISIBILITIES = ("all", "private", "selected")
LEVELS = {"read": 1, "write": 2, "admin": 3}
DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 100
ANONYMOUS = "anonymous"
NOT_FOUND = 404, "Not Found"
SECONDARY_LIMIT_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID {request_id}."
)


def _iso(epoch: float) -> str:
    """GitHub's timestamps: UTC, whole seconds, ``Z``."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    """GitHub's error envelope (``status`` is a string in current responses)."""
    body = {"message": message, "documentation_url": DOCS, "status": str(status), **extra}
    return json_response(status, body, headers)


def _abort(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> Abort:
    return Abort(_error(status, message, headers, **extra))


def _presented_token(request: Request) -> str | None:
    """The token of ``Authorization: token <t>`` or ``Bearer <t>``."""
    scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
    if scheme.lower() in ("token", "bearer") and credentials.strip():
        return credentials.strip()
    return None


def _valid_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.match(name)) and not name.upper().startswith("GITHUB_")


@dataclass
class _KeyPair:
    """One scope's NaCl key pair; ``key_id`` identifies it in PUT bodies."""

    key_id: str = field(default_factory=lambda: str(secrets.randbelow(10**18)).zfill(18))
    private_key: PrivateKey = field(default_factory=PrivateKey.generate)

    def public_json(self) -> dict[str, str]:
        return {"key_id": self.key_id, "key": base64.b64encode(bytes(self.private_key.public_key)).decode()}

    def encrypt(self, value: str) -> str:
        return base64.b64encode(SealedBox(self.private_key.public_key).encrypt(value.encode())).decode()

    def decrypt(self, encrypted_value: str) -> str:
        """Raises ValueError when the value is not a sealed box for this key."""
        try:
            return SealedBox(self.private_key).decrypt(base64.b64decode(encrypted_value, validate=True)).decode()
        except (binascii.Error, CryptoError, UnicodeDecodeError) as error:
            raise ValueError(str(error)) from error


@dataclass
class _Secret:
    name: str
    encrypted_value: str
    key: _KeyPair  # the key it was sealed for, so it stays readable after a key rotation
    created_at: float
    updated_at: float
    visibility: str | None = None  # organization secrets only
    selected_repository_ids: list[int] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": _iso(self.created_at), "updated_at": _iso(self.updated_at)}


@dataclass
class _SecretStore:
    """The secrets of one repository, environment or organization, and the key they are sealed with."""

    key: _KeyPair = field(default_factory=_KeyPair)
    secrets: dict[str, _Secret] = field(default_factory=dict)  # upper-case name -> secret


@dataclass
class _Environment:
    id: int
    name: str
    created_at: float
    store: _SecretStore = field(default_factory=_SecretStore)


@dataclass
class _Workflow:
    id: int
    name: str
    path: str  # .github/workflows/<file>
    secret_name: str  # the secret its job reads and sends to Kosli
    environment: str | None  # the job's environment, whose secrets take precedence
    created_at: float

    @property
    def file_name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclass
class _Run:
    id: int
    run_number: int
    workflow: _Workflow
    head_branch: str
    created_at: float
    updated_at: float
    status: str = "queued"
    conclusion: str | None = None
    run_started_at: float | None = None
    log: list[str] = field(default_factory=list)  # test-only: what the job did, never a secret


@dataclass
class _Repo:
    id: int
    owner: str
    name: str
    private: bool
    branches: list[str]
    created_at: float
    store: _SecretStore = field(default_factory=_SecretStore)
    environments: dict[str, _Environment] = field(default_factory=dict)  # lower-case name -> environment
    workflows: dict[int, _Workflow] = field(default_factory=dict)
    runs: dict[int, _Run] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass
class _Org:
    id: int
    login: str
    store: _SecretStore = field(default_factory=_SecretStore)


@dataclass
class _Token:
    login: str
    user_id: int
    repos: dict[str, str]  # lower-case owner/name -> read | write | admin
    orgs: dict[str, str]  # lower-case org -> member | admin


@dataclass
class _App:
    """A GitHub App: its public key checks the JWTs it signs; each installation carries a token's grants."""

    id: int
    public_key: Any
    installations: dict[int, _Token] = field(default_factory=dict)


class _Budget(RateLimiter):
    """A fixed window that also reports its state the way GitHub's ``x-ratelimit-*`` headers do."""

    def headers(self, key: str, resource: str = "core") -> dict[str, str]:
        with self._lock:
            now = self._now()
            start, used = self._windows.get(key, (now, 0))
            if now - start >= self.window_seconds:
                start, used = now, 0
        reset = time.time() + (start + self.window_seconds - now)
        return {
            "x-ratelimit-limit": str(self.limit),
            "x-ratelimit-remaining": str(max(0, self.limit - used)),
            "x-ratelimit-used": str(used),
            "x-ratelimit-reset": str(math.ceil(reset)),
            "x-ratelimit-resource": resource,
        }


def _optional_positive_int(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected an integer >= 1 or null, got {value!r}")
    return value


def _positive_int(value: Any) -> int:
    if _optional_positive_int(value) is None:
        raise ValueError("expected an integer >= 1")
    return value


def _rate_limit_status(value: Any) -> int:
    if value not in (403, 429):
        raise ValueError(f"expected 403 or 429, got {value!r}")
    return value


def _optional_url(value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and value.startswith(("http://", "https://"))):
        raise ValueError(f"expected an http(s) URL or null, got {value!r}")
    return value


def _non_empty_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


class GitHubSandbox(SandboxServer):
    """GitHub's REST API for Actions secrets (repository, environment, organization) and workflow runs.

    Tokens are seeded with per-repository (read/write/admin) and per-organization (member/admin) grants. A token
    that cannot see a repository gets 404, one that may see but not administer it 403, as GitHub answers.
    Every response carries ``x-ratelimit-*`` headers for ``primary_limit`` requests per ``primary_window``
    seconds per token (exhausted: 403 ``API rate limit exceeded``). ``secondary_limit`` writes per
    ``secondary_window`` seconds per token (off when None), and ``secondary_hourly_limit`` writes an hour (GitHub
    documents 80 a minute and 500 an hour), give ``secondary_status`` (403 or 429) with ``retry-after`` (unless
    ``secondary_retry_after`` is false) and GitHub's secondary-limit message.
    A dispatch with ``return_run_details`` gets 200 and the run's id (github.com since 2026-02); with
    ``return_run_details=False`` the sandbox answers 204 like servers that predate it.
    """

    SETTINGS = {
        **SandboxServer.SETTINGS,
        "primary_limit": _positive_int,
        "primary_window": positive_float,
        "secondary_limit": _optional_positive_int,
        "secondary_window": positive_float,
        "secondary_hourly_limit": _optional_positive_int,
        "secondary_status": _rate_limit_status,
        "secondary_retry_after": strict_bool,
        "run_seconds": non_negative_float,
        "kosli_url": _optional_url,
        "kosli_org": _non_empty_str,
        "return_run_details": strict_bool,
    }

    def __init__(
        self,
        *,
        kosli_url: str | None = None,
        kosli_org: str = "acme",
        run_seconds: float = 0.5,
        primary_limit: int = 5000,
        primary_window: float = 3600.0,
        secondary_limit: int | None = None,
        secondary_window: float = 60.0,
        secondary_hourly_limit: int | None = None,
        secondary_status: int = 403,
        secondary_retry_after: bool = True,
        return_run_details: bool = True,
        hour_seconds: float = 3600.0,
        latency: float = 0.0,
        access_log: bool = False,
    ) -> None:
        super().__init__(hour_seconds=hour_seconds, latency=latency, access_log=access_log)
        self.kosli_url = kosli_url
        self.kosli_org = kosli_org
        self.run_seconds = run_seconds
        self.secondary_status = secondary_status
        self.secondary_retry_after = secondary_retry_after
        self.return_run_details = return_run_details
        self._primary = _Budget(primary_limit, primary_window)
        # Assumption: GitHub's unauthenticated budget (60 an hour) also answers requests with bad credentials.
        self._anonymous = _Budget(60, 3600.0)
        self._secondary = RateLimiter(secondary_limit or 1, secondary_window)
        self._secondary_on = secondary_limit is not None
        self._hourly = RateLimiter(secondary_hourly_limit or 1, 3600.0)
        self._hourly_on = secondary_hourly_limit is not None
        self.rate_limiters.extend([self._primary, self._anonymous, self._secondary, self._hourly])
        self._ids = itertools.count(1_000_001)
        self._tokens: dict[str, _Token] = {}
        self._apps: dict[str, _App] = {}  # str(app id) -> app
        self._installation_tokens: list[str] = []
        #: Every API request served (test-only view; tokens appear as digests).
        self.request_log = RequestLog()
        self._orgs: dict[str, _Org] = {}  # lower-case login -> org
        self._repos: dict[str, _Repo] = {}  # lower-case owner/name -> repo
        self._run_threads: list[threading.Thread] = []

    # -- settings backed by the limiters -----------------------------------------------------------------

    @property
    def primary_limit(self) -> int:
        return self._primary.limit

    @primary_limit.setter
    def primary_limit(self, value: int) -> None:
        self._primary.limit = value

    @property
    def primary_window(self) -> float:
        return self._primary.window_seconds

    @primary_window.setter
    def primary_window(self, value: float) -> None:
        self._primary.window_seconds = value

    @property
    def secondary_limit(self) -> int | None:
        return self._secondary.limit if self._secondary_on else None

    @secondary_limit.setter
    def secondary_limit(self, value: int | None) -> None:
        self._secondary_on = value is not None
        if value is not None:
            self._secondary.limit = value

    @property
    def secondary_hourly_limit(self) -> int | None:
        return self._hourly.limit if self._hourly_on else None

    @secondary_hourly_limit.setter
    def secondary_hourly_limit(self, value: int | None) -> None:
        self._hourly_on = value is not None
        if value is not None:
            self._hourly.limit = value

    @property
    def secondary_window(self) -> float:
        return self._secondary.window_seconds

    @secondary_window.setter
    def secondary_window(self, value: float) -> None:
        self._secondary.window_seconds = value

    # -- test / demo API ---------------------------------------------------------------------------------

    def add_token(
        self,
        token: str | None = None,
        *,
        login: str = "octocat",
        repos: dict[str, str] | None = None,
        orgs: dict[str, str] | None = None,
    ) -> str:
        """Register a token with repository grants (read/write/admin) and organization roles (member/admin)."""
        token = token or "ghp_" + secrets.token_urlsafe(27)
        for level in (repos or {}).values():
            if level not in LEVELS:
                raise ValueError(f"repository grant must be one of {sorted(LEVELS)}, got {level!r}")
        for role in (orgs or {}).values():
            if role not in ("member", "admin"):
                raise ValueError(f"organization role must be member or admin, got {role!r}")
        with self.lock:
            self._tokens[token] = _Token(
                login,
                next(self._ids),
                {name.lower(): level for name, level in (repos or {}).items()},
                {name.lower(): role for name, role in (orgs or {}).items()},
            )
        return token

    def add_app(
        self,
        *,
        login: str = "kosli-rotation[bot]",
        repos: dict[str, str] | None = None,
        orgs: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Register a GitHub App with one installation whose tokens get these grants (as ``add_token``'s).

        Returns ``{"app_id", "installation_id", "private_key"}`` (PEM), what a ``github`` connection's extras take.
        """
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        grants = self._tokens.get(self.add_token(login=login, repos=repos, orgs=orgs))
        with self.lock:
            app = _App(next(self._ids), private_key.public_key())
            installation_id = next(self._ids)
            assert grants is not None
            app.installations[installation_id] = grants
            self._apps[str(app.id)] = app
        pem = private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return {"app_id": app.id, "installation_id": installation_id, "private_key": pem}

    def installation_tokens(self) -> list[str]:
        """Every installation access token minted so far (for leak scans)."""
        with self.lock:
            return list(self._installation_tokens)

    def add_org(self, login: str) -> int:
        with self.lock:
            org = self._orgs.setdefault(login.lower(), _Org(next(self._ids), login))
            return org.id

    def add_repo(
        self,
        full_name: str,
        *,
        private: bool = True,
        branches: list[str] | tuple[str, ...] = ("main",),
        environments: list[str] | tuple[str, ...] = (),
    ) -> int:
        owner, _, name = full_name.partition("/")
        if not owner or not name or "/" in name:
            raise ValueError(f"repository must be owner/name, got {full_name!r}")
        with self.lock:
            repo = self._repos.get(full_name.lower())
            if repo is None:
                repo = _Repo(next(self._ids), owner, name, private, list(branches), self.clock.now())
                self._repos[full_name.lower()] = repo
            for environment in environments:
                self.add_environment(full_name, environment)
            return repo.id

    def add_environment(self, full_name: str, name: str) -> int:
        with self.lock:
            repo = self._lookup_repo(full_name)
            environment = repo.environments.setdefault(
                name.lower(), _Environment(next(self._ids), name, self.clock.now())
            )
            return environment.id

    def add_workflow(
        self,
        full_name: str,
        file_name: str = "canary.yml",
        *,
        secret: str = "KOSLI_API_TOKEN",
        environment: str | None = None,
        name: str = "Kosli canary",
    ) -> int:
        """A workflow with a ``workflow_dispatch`` trigger whose job sends ``secret`` to Kosli."""
        with self.lock:
            repo = self._lookup_repo(full_name)
            if environment is not None and environment.lower() not in repo.environments:
                raise LookupError(f"no environment {environment!r} in {full_name}")
            workflow = _Workflow(
                next(self._ids), name, f".github/workflows/{file_name}", secret.upper(), environment, self.clock.now()
            )
            repo.workflows[workflow.id] = workflow
            return workflow.id

    def set_secret(
        self,
        target: str,
        name: str,
        value: str,
        *,
        environment: str | None = None,
        visibility: str = "private",
        selected_repositories: list[str] | None = None,
        updated_at: float | None = None,
    ) -> None:
        """Store a secret as if written through the API (``target`` is ``owner/repo`` or an organization)."""
        if not _valid_secret_name(name):
            raise ValueError(f"invalid secret name {name!r}")
        with self.lock:
            store, org = self._lookup_store(target, environment)
            now = self.clock.now() if updated_at is None else updated_at
            secret = _Secret(name.upper(), store.key.encrypt(value), store.key, now, now)
            if org is not None:
                if visibility not in VISIBILITIES:
                    raise ValueError(f"visibility must be one of {VISIBILITIES}")
                secret.visibility = visibility
                secret.selected_repository_ids = [
                    self._lookup_repo(repo if "/" in repo else f"{org.login}/{repo}").id
                    for repo in selected_repositories or []
                ]
            store.secrets[secret.name] = secret

    def secret_value(self, target: str, name: str, environment: str | None = None) -> str | None:
        """Decrypt the stored secret (``target`` is ``owner/repo`` or an organization); None if there is none."""
        with self.lock:
            store, _ = self._lookup_store(target, environment)
            secret = store.secrets.get(name.upper())
            return secret.key.decrypt(secret.encrypted_value) if secret else None

    def secret_metadata(self, target: str, name: str, environment: str | None = None) -> dict[str, Any] | None:
        """What GitHub knows about a secret, with the selected repositories as full names."""
        with self.lock:
            store, org = self._lookup_store(target, environment)
            secret = store.secrets.get(name.upper())
            if secret is None:
                return None
            metadata: dict[str, Any] = {**secret.metadata(), "updated_at_epoch": secret.updated_at}
            if org is not None:
                metadata["visibility"] = secret.visibility
                metadata["selected_repositories"] = sorted(
                    repo.full_name for repo in self._repos.values() if repo.id in secret.selected_repository_ids
                )
            return metadata

    def rotate_public_key(self, target: str, environment: str | None = None) -> str:
        """Give a scope a new key pair (stored secrets stay readable); returns the new key_id."""
        with self.lock:
            store, _ = self._lookup_store(target, environment)
            store.key = _KeyPair()
            return store.key.key_id

    def runs(self, full_name: str) -> list[dict[str, Any]]:
        """Every run of a repository, oldest first, with the job's log lines."""
        with self.lock:
            repo = self._lookup_repo(full_name)
            return [
                {
                    "id": run.id,
                    "run_number": run.run_number,
                    "workflow": run.workflow.file_name,
                    "head_branch": run.head_branch,
                    "status": run.status,
                    "conclusion": run.conclusion,
                    "log": list(run.log),
                }
                for run in sorted(repo.runs.values(), key=lambda run: run.id)
            ]

    def wait_for_runs(self, timeout: float = 10.0) -> None:
        """Block until every started run has completed (tests call it before stopping other sandboxes)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._run_threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def seed_document(self, document: dict[str, Any]) -> dict[str, Any]:
        """Create tokens, organizations, repositories, environments, workflows and secrets.

        ``{"tokens": {token: {"login", "repos": {full_name: level}, "orgs": {org: role}}},
        "orgs": {login: {"secrets": {name: value | {"value", "visibility", "selected_repositories"}}}},
        "repos": {full_name: {"private", "branches", "environments": {name: {"secrets": {...}}} | [names],
        "workflows": [{"file", "secret", "environment", "name"}], "secrets": {name: value}}}}``.
        Returns the ids: ``{"orgs": {login: id}, "repos": {full_name: id}, "workflows": {full_name: {file: id}}}``.
        """
        seeded: dict[str, Any] = {"orgs": {}, "repos": {}, "workflows": {}}
        for login in document.get("orgs", {}):
            seeded["orgs"][login] = self.add_org(login)
        for full_name, spec in document.get("repos", {}).items():
            environments = spec.get("environments", {})
            environments = {name: {} for name in environments} if isinstance(environments, list) else environments
            seeded["repos"][full_name] = self.add_repo(
                full_name,
                private=spec.get("private", True),
                branches=spec.get("branches", ["main"]),
                environments=list(environments),
            )
            for environment, environment_spec in environments.items():
                for name, value in (environment_spec or {}).get("secrets", {}).items():
                    self.set_secret(full_name, name, value, environment=environment)
            for name, value in spec.get("secrets", {}).items():
                self.set_secret(full_name, name, value)
            seeded["workflows"][full_name] = {
                workflow["file"]: self.add_workflow(
                    full_name,
                    workflow["file"],
                    secret=workflow.get("secret", "KOSLI_API_TOKEN"),
                    environment=workflow.get("environment"),
                    name=workflow.get("name", "Kosli canary"),
                )
                for workflow in spec.get("workflows", [])
            }
        for login, spec in document.get("orgs", {}).items():  # after the repos they may select
            for name, value in (spec or {}).get("secrets", {}).items():
                options = value if isinstance(value, dict) else {"value": value}
                self.set_secret(login, name, **options)
        for token, spec in document.get("tokens", {}).items():
            self.add_token(token, **spec)
        return seeded

    # -- framework hooks ---------------------------------------------------------------------------------

    def not_found(self, request: Request) -> Response:
        return _error(*NOT_FOUND)

    def method_not_allowed(self, request: Request) -> Response:
        return _error(404, "Not Found")  # GitHub answers an unsupported method on a known path with 404

    def invalid_json(self, request: Request, error: InvalidJSONBody) -> Response:
        return _error(400, "Problems parsing JSON")

    def process(self, request: Request) -> Response | None:
        """Every API answer, errors and injected faults included, carries the caller's rate-limit headers; every
        request is in ``request_log`` with its token's digest and when it arrived and was answered."""
        started = time.monotonic()
        response = super().process(request)
        if not request.path.startswith(ADMIN_PREFIX):
            route = self._resolve(request).name
            label = credential_label(_presented_token(request))
            self.request_log.add(Served(label, request.method, route, started, time.monotonic()))
        if response is not None and not request.path.startswith(ADMIN_PREFIX):
            token = _presented_token(request)
            with self.lock:
                known = token is not None and token in self._tokens
            budget, key = (self._primary, token) if known else (self._anonymous, ANONYMOUS)
            response.headers.update(budget.headers(key or ANONYMOUS))
            response.headers.setdefault("X-GitHub-Request-Id", secrets.token_hex(8).upper())
        return response

    @route("GET", r"/_sandbox/secret")
    def _admin_secret_value(self, request: Request) -> Response:
        """Test-only: the plaintext of a stored secret (``?target=owner/repo|org&name=...&environment=...``)."""
        try:
            target, name = request.query_value("target") or "", request.query_value("name") or ""
            value = self.secret_value(target, name, request.query_value("environment"))
        except LookupError as error:
            return json_response(404, {"message": str(error)})
        return json_response(200, {"value": value})

    def reset_stats(self) -> None:
        super().reset_stats()
        self.request_log.clear()

    @route("GET", r"/_sandbox/requests")
    def _admin_request_log(self, request: Request) -> Response:
        """Test-only: every API request served, with its token's digest and when it started and ended."""
        return json_response(200, {"requests": self.request_log.as_json()})

    @route("GET", r"/_sandbox/runs")
    def _admin_runs(self, request: Request) -> Response:
        try:
            return json_response(200, self.runs(request.query_value("repo") or ""))
        except LookupError as error:
            return json_response(404, {"message": str(error)})

    # -- public API: GitHub App installation tokens ------------------------------------------------------

    @route("POST", r"/app/installations/(?P<installation_id>\d+)/access_tokens")
    def create_installation_token(self, request: Request, installation_id: str) -> Response:
        """A one-hour token with the installation's grants, for a JWT (RS256) the App signed, ``iss`` its id."""
        import jwt

        token = _presented_token(request) or ""
        with self.lock:
            try:
                app = self._apps.get(str(jwt.decode(token, options={"verify_signature": False}).get("iss")))
                if app is None:
                    raise jwt.InvalidTokenError("unknown app")
                jwt.decode(token, app.public_key, algorithms=["RS256"], leeway=60)
            except jwt.InvalidTokenError:
                raise _abort(401, "A JSON web token could not be decoded") from None
            grants = app.installations.get(int(installation_id))
            if grants is None:
                raise _abort(*NOT_FOUND)
            minted = "ghs_" + secrets.token_urlsafe(27)
            self._tokens[minted] = grants
            self._installation_tokens.append(minted)
            expires_at = _iso(time.time() + 3600)
        return json_response(
            201,
            {
                "token": minted,
                "expires_at": expires_at,
                "permissions": {"secrets": "write"},
                "repository_selection": "selected",
            },
        )

    # -- public API: repositories, organizations, environments -----------------------------------------

    @route("GET", REPO)
    def get_repo(self, request: Request, owner: str, repo: str) -> Response:
        with self.lock:
            caller = self._caller(request)
            target = self._repo(caller, owner, repo, "read")
            return json_response(200, self._repo_json(request, target, caller))

    @route("GET", ORG)
    def get_org(self, request: Request, org: str) -> Response:
        with self.lock:
            self._caller(request)
            target = self._orgs.get(org.lower())
            if target is None:
                raise _abort(*NOT_FOUND)
            base = _base(request)
            return json_response(
                200,
                {
                    "login": target.login,
                    "id": target.id,
                    "node_id": f"O_{target.id}",
                    "url": f"{base}/orgs/{target.login}",
                    "repos_url": f"{base}/orgs/{target.login}/repos",
                    "description": None,
                    "type": "Organization",
                },
            )

    @route("GET", ENVIRONMENT)
    def get_environment(self, request: Request, owner: str, repo: str, environment: str) -> Response:
        with self.lock:
            caller = self._caller(request)
            target_repo = self._repo(caller, owner, repo, "read")
            target = self._environment(target_repo, environment)
            return json_response(200, self._environment_json(request, target_repo, target))

    @route("GET", rf"{REPO}/environments")
    def list_environments(self, request: Request, owner: str, repo: str) -> Response:
        with self.lock:
            caller = self._caller(request)
            target = self._repo(caller, owner, repo, "read")
            environments = sorted(target.environments.values(), key=lambda environment: environment.id)
            items = [self._environment_json(request, target, environment) for environment in environments]
            return self._paged(request, items, "environments")

    @route("GET", rf"{ORG}/repos")
    def list_org_repos(self, request: Request, org: str) -> Response:
        """A plain JSON array (no ``total_count``) of the repositories the caller can see, as GitHub answers;
        ``type`` all/public/private (others as all), ``sort`` created (default, newest first) or full_name."""
        with self.lock:
            caller = self._caller(request)
            target = self._orgs.get(org.lower())
            if target is None:
                raise _abort(*NOT_FOUND)
            kind = request.query_value("type") or "all"
            owned = [repo for repo in self._repos.values() if repo.owner.lower() == target.login.lower()]
            seen = [repo for repo in owned if self._level(caller, repo) is not None]
            wanted = [repo for repo in seen if kind not in ("public", "private") or repo.private == (kind == "private")]
            by_name = request.query_value("sort") == "full_name"
            ascending = (request.query_value("direction") or ("asc" if by_name else "desc")) == "asc"
            order = (lambda repo: repo.full_name.lower()) if by_name else (lambda repo: (repo.created_at, repo.id))
            repos = sorted(wanted, key=order, reverse=not ascending)
            return self._paged(request, [self._repo_json(request, repo, caller) for repo in repos], None)

    # -- public API: secrets -----------------------------------------------------------------------------

    @route("GET", rf"{REPO}/actions/secrets/public-key")
    @route("GET", rf"{ENVIRONMENT}/secrets/public-key")
    @route("GET", rf"{ORG}/actions/secrets/public-key")
    def get_public_key(self, request: Request, **scope: str) -> Response:
        with self.lock:
            store, _ = self._store(request, scope)
            return json_response(200, store.key.public_json())

    @route("GET", rf"{REPO}/actions/secrets")
    @route("GET", rf"{ENVIRONMENT}/secrets")
    @route("GET", rf"{ORG}/actions/secrets")
    def list_secrets(self, request: Request, **scope: str) -> Response:
        with self.lock:
            store, org = self._store(request, scope)
            items = [self._secret_json(request, org, secret) for secret in sorted(store.secrets.values(), key=_name)]
            return self._paged(request, items, "secrets")

    @route("GET", rf"{REPO}/actions/secrets/{SECRET}")
    @route("GET", rf"{ENVIRONMENT}/secrets/{SECRET}")
    @route("GET", rf"{ORG}/actions/secrets/{SECRET}")
    def get_secret(self, request: Request, name: str, **scope: str) -> Response:
        with self.lock:
            store, org = self._store(request, scope)
            return json_response(200, self._secret_json(request, org, self._secret(store, name)))

    @route("PUT", rf"{REPO}/actions/secrets/{SECRET}")
    @route("PUT", rf"{ENVIRONMENT}/secrets/{SECRET}")
    @route("PUT", rf"{ORG}/actions/secrets/{SECRET}")
    def put_secret(self, request: Request, name: str, **scope: str) -> Response:
        with self.lock:
            store, org = self._store(request, scope)
            body = request.json() if request.body.strip() else {}
            if not isinstance(body, dict):
                raise _abort(400, "Problems parsing JSON")
            if not _valid_secret_name(name):
                # Assumption: the text of GitHub's UI hint; the API's exact wording is not published.
                raise _abort(
                    422,
                    "Secret names can only contain alphanumeric characters ([a-z], [A-Z], [0-9]) or underscores (_), "
                    "must not start with a number or with GITHUB_.",
                )
            for required in ("encrypted_value", "key_id"):
                if not isinstance(body.get(required), str):
                    raise _abort(422, f'Invalid request.\n\n"{required}" wasn\'t supplied.')
            if body["key_id"] != store.key.key_id:
                raise _abort(422, "Bad request - key_id does not match the current public key.")  # Assumption
            try:
                plaintext = store.key.decrypt(body["encrypted_value"])
            except ValueError:
                raise _abort(422, "Bad request - encrypted_value could not be decrypted.") from None  # Assumption
            if len(plaintext.encode()) > MAX_SECRET_BYTES:
                raise _abort(422, "Secret value exceeds the maximum size of 48 KB.")  # Assumption: wording
            existing = store.secrets.get(name.upper())
            visibility, selected = (None, []) if org is None else self._org_secret_scope(org, body, existing)
            now = self.clock.now()
            store.secrets[name.upper()] = _Secret(
                name.upper(),
                body["encrypted_value"],
                store.key,
                existing.created_at if existing else now,
                now,
                visibility,
                selected,
            )
            return json_response(201, {}) if existing is None else Response(204)

    @route("DELETE", rf"{REPO}/actions/secrets/{SECRET}")
    @route("DELETE", rf"{ENVIRONMENT}/secrets/{SECRET}")
    @route("DELETE", rf"{ORG}/actions/secrets/{SECRET}")
    def delete_secret(self, request: Request, name: str, **scope: str) -> Response:
        with self.lock:
            store, _ = self._store(request, scope)
            del store.secrets[self._secret(store, name).name]
            return Response(204)

    # -- public API: an organization secret's selected repositories --------------------------------------

    @route("GET", rf"{ORG}/actions/secrets/{SECRET}/repositories")
    def list_selected_repositories(self, request: Request, org: str, name: str) -> Response:
        with self.lock:
            store, _ = self._store(request, {"org": org})
            secret = self._secret(store, name)
            # Assumption: listing a secret that is not visible to "selected" repositories gives an empty list.
            repos = [repo for repo in self._repos.values() if repo.id in secret.selected_repository_ids]
            items = [self._repo_json(request, repo) for repo in sorted(repos, key=lambda repo: repo.id)]
            return self._paged(request, items, "repositories")

    @route("PUT", rf"{ORG}/actions/secrets/{SECRET}/repositories")
    def set_selected_repositories(self, request: Request, org: str, name: str) -> Response:
        with self.lock:
            store, target = self._store(request, {"org": org})
            secret = self._selected_only(self._secret(store, name))
            body = request.json() if request.body.strip() else {}
            if not isinstance(body, dict) or not isinstance(body.get("selected_repository_ids"), list):
                raise _abort(422, 'Invalid request.\n\n"selected_repository_ids" wasn\'t supplied.')
            secret.selected_repository_ids = self._org_repo_ids(target, body["selected_repository_ids"])
            return Response(204)

    @route("PUT", rf"{ORG}/actions/secrets/{SECRET}/repositories/(?P<repository_id>\d+)")
    @route("DELETE", rf"{ORG}/actions/secrets/{SECRET}/repositories/(?P<repository_id>\d+)")
    def change_selected_repository(self, request: Request, org: str, name: str, repository_id: str) -> Response:
        with self.lock:
            store, target = self._store(request, {"org": org})
            secret = self._selected_only(self._secret(store, name))
            (repo_id,) = self._org_repo_ids(target, [int(repository_id)])
            if request.method == "PUT" and repo_id not in secret.selected_repository_ids:
                secret.selected_repository_ids.append(repo_id)
            if request.method == "DELETE" and repo_id in secret.selected_repository_ids:
                secret.selected_repository_ids.remove(repo_id)
            return Response(204)

    # -- public API: workflows and runs ------------------------------------------------------------------

    @route("GET", WORKFLOW)
    def get_workflow(self, request: Request, owner: str, repo: str, workflow: str) -> Response:
        with self.lock:
            caller = self._caller(request)
            target_repo = self._repo(caller, owner, repo, "read")
            target = self._workflow(target_repo, workflow)
            return json_response(200, self._workflow_json(request, target_repo, target))

    @route("POST", rf"{WORKFLOW}/dispatches")
    def dispatch_workflow(self, request: Request, owner: str, repo: str, workflow: str) -> Response:
        with self.lock:
            caller = self._caller(request)
            target_repo = self._repo(caller, owner, repo, "write")
            target = self._workflow(target_repo, workflow)
            body = request.json() if request.body.strip() else {}
            if not isinstance(body, dict) or not isinstance(body.get("ref"), str):
                raise _abort(422, 'Invalid request.\n\n"ref" wasn\'t supplied.')
            branch = body["ref"].removeprefix("refs/heads/")
            if branch not in target_repo.branches:
                raise _abort(422, f"No ref found for: {body['ref']}")
            now = self.clock.now()
            number = 1 + sum(1 for run in target_repo.runs.values() if run.workflow is target)
            run = _Run(next(self._ids), number, target, branch, now, now)
            target_repo.runs[run.id] = run
            thread = threading.Thread(target=self._execute, args=(target_repo, run), name=f"run-{run.id}", daemon=True)
            self._run_threads.append(thread)
            thread.start()
            if body.get("return_run_details") is True and self.return_run_details:
                base = _base(request)
                return json_response(
                    200,
                    {
                        "workflow_run_id": run.id,
                        "run_url": f"{base}/repos/{target_repo.full_name}/actions/runs/{run.id}",
                        "html_url": f"https://github.com/{target_repo.full_name}/actions/runs/{run.id}",
                    },
                )
            return Response(204)

    @route("GET", rf"{WORKFLOW}/runs")
    def list_workflow_runs(self, request: Request, owner: str, repo: str, workflow: str) -> Response:
        with self.lock:
            caller = self._caller(request)
            target_repo = self._repo(caller, owner, repo, "read")
            target = self._workflow(target_repo, workflow)
            runs = [run for run in target_repo.runs.values() if run.workflow is target and _run_matches(run, request)]
            items = [self._run_json(request, target_repo, run) for run in sorted(runs, key=lambda run: -run.id)]
            return self._paged(request, items, "workflow_runs")

    @route("GET", rf"{REPO}/actions/runs/(?P<run_id>\d+)")
    def get_workflow_run(self, request: Request, owner: str, repo: str, run_id: str) -> Response:
        with self.lock:
            caller = self._caller(request)
            target_repo = self._repo(caller, owner, repo, "read")
            run = target_repo.runs.get(int(run_id))
            if run is None:
                raise _abort(*NOT_FOUND)
            return json_response(200, self._run_json(request, target_repo, run))

    # -- auth, access and lookups (call with self.lock held) ---------------------------------------------

    def _caller(self, request: Request) -> _Token:
        """Authenticate (401), then apply the primary and, for writes, the secondary rate limit."""
        token = _presented_token(request)
        caller = self._tokens.get(token) if token else None
        if caller is None:
            if self._anonymous.hit(ANONYMOUS):
                raise _abort(403, "API rate limit exceeded for 127.0.0.1.")
            raise _abort(401, "Requires authentication" if token is None else "Bad credentials")
        assert token is not None
        if self._primary.hit(token):
            raise _abort(
                403,
                f"API rate limit exceeded for user ID {caller.user_id}. If you reach out to GitHub Support for help, "
                "please include the request ID.",
            )
        if request.method != "GET" and (wait := self._content_creation_wait(token)):
            headers = {"retry-after": str(math.ceil(wait))} if self.secondary_retry_after else {}
            message = SECONDARY_LIMIT_MESSAGE.format(request_id=secrets.token_hex(8).upper())
            raise _abort(self.secondary_status, message, headers)
        return caller

    def _content_creation_wait(self, token: str) -> float:
        """Seconds until ``token`` may write again under the secondary limits (0.0: now; the write is counted)."""
        wait = self._secondary.hit(token) if self._secondary_on else 0.0
        if not wait and self._hourly_on:
            wait = self._hourly.hit(token)
        return wait

    def _level(self, caller: _Token, repo: _Repo) -> str | None:
        """The caller's permission on a repository: its grant, admin as an owner of the org, read if public."""
        if caller.orgs.get(repo.owner.lower()) == "admin":
            return "admin"
        granted = caller.repos.get(repo.full_name.lower())
        return granted or (None if repo.private else "read")

    def _repo(self, caller: _Token, owner: str, name: str, need: str) -> _Repo:
        repo = self._repos.get(f"{owner}/{name}".lower())
        level = self._level(caller, repo) if repo else None
        if repo is None or level is None:
            raise _abort(*NOT_FOUND)  # GitHub hides private repositories a token cannot see
        if LEVELS[level] < LEVELS[need]:
            message = "Must have admin rights to Repository." if need == "admin" else "Resource not accessible"
            raise _abort(403, message)
        return repo

    def _store(self, request: Request, scope: dict[str, str]) -> tuple[_SecretStore, _Org | None]:
        """The secret store a secrets route addresses, after checking the caller may manage its secrets."""
        caller = self._caller(request)
        if "org" in scope:
            org = self._orgs.get(scope["org"].lower())
            if org is None:
                raise _abort(*NOT_FOUND)
            if caller.orgs.get(org.login.lower()) != "admin":
                raise _abort(403, "Must have admin rights to Organization.")
            return org.store, org
        repo = self._repo(caller, scope["owner"], scope["repo"], "admin")
        if "environment" in scope:
            return self._environment(repo, scope["environment"]).store, None
        return repo.store, None

    @staticmethod
    def _environment(repo: _Repo, name: str) -> _Environment:
        environment = repo.environments.get(name.lower())
        if environment is None:
            raise _abort(*NOT_FOUND)
        return environment

    @staticmethod
    def _secret(store: _SecretStore, name: str) -> _Secret:
        secret = store.secrets.get(name.upper())
        if secret is None:
            raise _abort(*NOT_FOUND)
        return secret

    @staticmethod
    def _workflow(repo: _Repo, id_or_file: str) -> _Workflow:
        for workflow in repo.workflows.values():
            if id_or_file in (str(workflow.id), workflow.file_name, workflow.path):
                return workflow
        raise _abort(*NOT_FOUND)

    @staticmethod
    def _selected_only(secret: _Secret) -> _Secret:
        if secret.visibility != "selected":
            raise _abort(409, "The visibility of the secret is not set to selected.")  # Assumption: wording
        return secret

    def _org_repo_ids(self, org: _Org, ids: list[Any]) -> list[int]:
        owned = {repo.id for repo in self._repos.values() if repo.owner.lower() == org.login.lower()}
        if not all(isinstance(repo_id, int) and repo_id in owned for repo_id in ids):
            raise _abort(422, "Invalid repository ids for this organization.")  # Assumption: wording
        return list(dict.fromkeys(ids))

    def _org_secret_scope(self, org: _Org, body: dict[str, Any], existing: _Secret | None) -> tuple[str, list[int]]:
        """Validate an organization PUT's visibility and repository list; ``visibility`` is required."""
        visibility = body.get("visibility")
        if visibility is None:
            raise _abort(422, 'Invalid request.\n\n"visibility" wasn\'t supplied.')
        if visibility not in VISIBILITIES:
            raise _abort(422, f"Invalid request.\n\n{visibility!r} is not a member of {list(VISIBILITIES)}.")
        ids = body.get("selected_repository_ids")
        if ids is not None and visibility != "selected":
            raise _abort(422, "selected_repository_ids can only be used with visibility 'selected'.")  # Assumption
        if visibility != "selected":
            return visibility, []
        if ids is None:
            # Assumption: an update that omits the list keeps the repositories selected before.
            return visibility, list(existing.selected_repository_ids) if existing else []
        if not isinstance(ids, list):
            raise _abort(422, "Invalid request.\n\nselected_repository_ids must be an array.")
        return visibility, self._org_repo_ids(org, ids)

    def _lookup_repo(self, full_name: str) -> _Repo:
        repo = self._repos.get(full_name.lower())
        if repo is None:
            raise LookupError(f"no repository {full_name!r}")
        return repo

    def _lookup_store(self, target: str, environment: str | None) -> tuple[_SecretStore, _Org | None]:
        """In-process lookup for the test API; raises LookupError instead of answering 404."""
        if "/" in target:
            repo = self._lookup_repo(target)
            if environment is None:
                return repo.store, None
            if environment.lower() not in repo.environments:
                raise LookupError(f"no environment {environment!r} in {target}")
            return repo.environments[environment.lower()].store, None
        org = self._orgs.get(target.lower())
        if org is None or environment is not None:
            raise LookupError(f"no organization {target!r}" if org is None else "organizations have no environments")
        return org.store, org

    # -- the canary job ----------------------------------------------------------------------------------

    def _execute(self, repo: _Repo, run: _Run) -> None:
        """Queued, then in progress: send the workflow's secret to Kosli; success iff Kosli answers 200."""
        time.sleep(self.run_seconds / 3)
        with self.lock:
            run.status, run.run_started_at = "in_progress", self.clock.now()
            run.updated_at = run.run_started_at
            value = self._secret_for(repo, run.workflow)
            kosli_url, kosli_org = self.kosli_url, self.kosli_org
        succeeded, outcome = _call_kosli(kosli_url, kosli_org, value, run.workflow.secret_name)
        time.sleep(self.run_seconds * 2 / 3)
        with self.lock:
            run.log.append(outcome)
            run.status, run.conclusion = "completed", "success" if succeeded else "failure"
            run.updated_at = self.clock.now()

    def _secret_for(self, repo: _Repo, workflow: _Workflow) -> str | None:
        """GitHub's precedence: the job's environment secret, then the repository's, then the organization's."""
        stores = []
        if workflow.environment is not None:
            stores.append(repo.environments[workflow.environment.lower()].store)
        stores.append(repo.store)
        for store in stores:
            if (secret := store.secrets.get(workflow.secret_name)) is not None:
                return secret.key.decrypt(secret.encrypted_value)
        org = self._orgs.get(repo.owner.lower())
        secret = org.store.secrets.get(workflow.secret_name) if org else None
        if secret is None:
            return None
        available = {
            "all": True,
            "private": repo.private,  # private (and internal) repositories only
            "selected": repo.id in secret.selected_repository_ids,
        }[secret.visibility or "private"]
        return secret.key.decrypt(secret.encrypted_value) if available else None

    # -- JSON shapes -------------------------------------------------------------------------------------

    def _repo_json(self, request: Request, repo: _Repo, caller: _Token | None = None) -> dict[str, Any]:
        base = _base(request)
        owner = self._orgs.get(repo.owner.lower())
        data: dict[str, Any] = {
            "id": repo.id,
            "node_id": f"R_{repo.id}",
            "name": repo.name,
            "full_name": repo.full_name,
            "private": repo.private,
            "visibility": "private" if repo.private else "public",
            "owner": {
                "login": repo.owner,
                "id": owner.id if owner else 0,
                "type": "Organization" if owner else "User",
                "url": f"{base}/{'orgs' if owner else 'users'}/{repo.owner}",
            },
            "url": f"{base}/repos/{repo.full_name}",
            "html_url": f"https://github.com/{repo.full_name}",
            "default_branch": repo.branches[0] if repo.branches else "main",
            "created_at": _iso(repo.created_at),
        }
        if caller is not None:
            level = LEVELS[self._level(caller, repo) or "read"]
            data["permissions"] = {
                "admin": level >= 3,
                "maintain": level >= 3,
                "push": level >= 2,
                "triage": level >= 2,
                "pull": True,
            }
        return data

    @staticmethod
    def _environment_json(request: Request, repo: _Repo, environment: _Environment) -> dict[str, Any]:
        quoted = urllib.parse.quote(environment.name, safe="")
        return {
            "id": environment.id,
            "node_id": f"EN_{environment.id}",
            "name": environment.name,
            "url": f"{_base(request)}/repos/{repo.full_name}/environments/{quoted}",
            "html_url": f"https://github.com/{repo.full_name}/deployments/activity_log?environments_filter={quoted}",
            "created_at": _iso(environment.created_at),
            "updated_at": _iso(environment.created_at),
            "protection_rules": [],
            "deployment_branch_policy": None,
        }

    def _secret_json(self, request: Request, org: _Org | None, secret: _Secret) -> dict[str, Any]:
        data = secret.metadata()
        if org is not None:
            data["visibility"] = secret.visibility
            if secret.visibility == "selected":
                quoted = urllib.parse.quote(secret.name, safe="")
                data["selected_repositories_url"] = (
                    f"{_base(request)}/orgs/{org.login}/actions/secrets/{quoted}/repositories"
                )
        return data

    @staticmethod
    def _workflow_json(request: Request, repo: _Repo, workflow: _Workflow) -> dict[str, Any]:
        return {
            "id": workflow.id,
            "node_id": f"W_{workflow.id}",
            "name": workflow.name,
            "path": workflow.path,
            "state": "active",
            "created_at": _iso(workflow.created_at),
            "updated_at": _iso(workflow.created_at),
            "url": f"{_base(request)}/repos/{repo.full_name}/actions/workflows/{workflow.id}",
            "html_url": f"https://github.com/{repo.full_name}/blob/main/{workflow.path}",
            "badge_url": f"https://github.com/{repo.full_name}/workflows/{urllib.parse.quote(workflow.name)}/badge.svg",
        }

    @staticmethod
    def _run_json(request: Request, repo: _Repo, run: _Run) -> dict[str, Any]:
        base = _base(request)
        url = f"{base}/repos/{repo.full_name}/actions/runs/{run.id}"
        return {
            "id": run.id,
            "node_id": f"WFR_{run.id}",
            "name": run.workflow.name,
            "path": run.workflow.path,
            "head_branch": run.head_branch,
            "head_sha": "0" * 40,
            "run_number": run.run_number,
            "run_attempt": 1,
            "event": "workflow_dispatch",
            "status": run.status,
            "conclusion": run.conclusion,
            "workflow_id": run.workflow.id,
            "url": url,
            "html_url": f"https://github.com/{repo.full_name}/actions/runs/{run.id}",
            "jobs_url": f"{url}/jobs",
            "logs_url": f"{url}/logs",
            "workflow_url": f"{base}/repos/{repo.full_name}/actions/workflows/{run.workflow.id}",
            "created_at": _iso(run.created_at),
            "updated_at": _iso(run.updated_at),
            "run_started_at": _iso(run.run_started_at or run.created_at),
        }

    @staticmethod
    def _paged(request: Request, items: list[dict[str, Any]], list_key: str | None) -> Response:
        """``{"total_count", list_key: [...]}`` (a plain array when ``list_key`` is None) with ``page``/``per_page``
        and a ``Link`` header, as GitHub pages."""
        try:
            per_page = min(MAX_PER_PAGE, max(1, int(request.query_value("per_page") or DEFAULT_PER_PAGE)))
            page = max(1, int(request.query_value("page") or 1))
        except ValueError:
            raise _abort(422, "Invalid request.\n\npage and per_page must be integers.") from None
        last = max(1, math.ceil(len(items) / per_page))
        start = (page - 1) * per_page
        links = []
        query = {name: values[0] for name, values in request.query.items()}

        def link(number: int, rel: str) -> str:
            return f'<{_base(request)}{request.path}?{urllib.parse.urlencode({**query, "page": number})}>; rel="{rel}"'

        if page < last:
            links += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            links += [link(1, "first"), link(page - 1, "prev")]
        headers = {"Link": ", ".join(links)} if links else {}
        shown = items[start : start + per_page]
        return json_response(200, shown if list_key is None else {"total_count": len(items), list_key: shown}, headers)


def _call_kosli(kosli_url: str | None, kosli_org: str, value: str | None, secret_name: str) -> tuple[bool, str]:
    """What the canary job does with its secret: list the Kosli org's environments. Returns (ok, log line)."""
    if value is None:
        return False, f"secret {secret_name} is not set for this job"
    if kosli_url is None:
        return False, "no Kosli URL configured for the sandbox"
    try:
        response = requests.get(
            f"{kosli_url.rstrip('/')}/api/v2/environments/{urllib.parse.quote(kosli_org)}",
            headers={"Authorization": f"Bearer {value}"},
            timeout=10,
        )
    except requests.RequestException as error:
        return False, f"Kosli unreachable: {type(error).__name__}"
    return response.status_code == 200, f"Kosli answered HTTP {response.status_code}"


def _base(request: Request) -> str:
    """The API root as the client addressed it, so the URLs in bodies pass PyGithub's same-host check."""
    return f"http://{request.headers.get('Host', '127.0.0.1')}"


def _name(secret: _Secret) -> str:
    return secret.name


def _run_matches(run: _Run, request: Request) -> bool:
    """The list-runs filters the canary may use: ``event``, ``branch``, ``status`` and ``created`` (>=, >, <=, <)."""
    event, branch, status = (request.query_value(name) for name in ("event", "branch", "status"))
    if event not in (None, "workflow_dispatch") or branch not in (None, run.head_branch):
        return False
    if status is not None and status not in (run.status, run.conclusion):
        return False
    created = request.query_value("created")
    if created:
        operator, moment = re.match(r"^(>=|<=|>|<)?(.*)$", created).groups("")  # type: ignore[union-attr]
        operator = operator or ">="  # Assumption: a bare date means "on or after" here
        try:
            bound = _parse_iso(moment)
        except ValueError:
            raise _abort(422, f"Invalid request.\n\n{created!r} is not a valid created filter.") from None
        checks = {">=": run.created_at >= bound, ">": run.created_at > bound}
        checks |= {"<=": run.created_at <= bound, "<": run.created_at < bound}
        return checks[operator]
    return True


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kosli-url", help="Kosli (sandbox) URL that canary runs call with the secret")
    parser.add_argument("--kosli-org", default="acme", help="Kosli org whose environments canary runs list")
    parser.add_argument("--run-seconds", type=float, default=0.5, help="how long a canary run lasts")
    parser.add_argument("--secondary-limit", type=int, help="writes per window before the secondary rate limit")
    parser.add_argument("--secondary-window", type=float, default=60.0, help="secondary rate-limit window (s)")


def from_cli_args(args: argparse.Namespace) -> GitHubSandbox:
    return GitHubSandbox(
        kosli_url=args.kosli_url,
        kosli_org=args.kosli_org,
        run_seconds=args.run_seconds,
        secondary_limit=args.secondary_limit,
        secondary_window=args.secondary_window,
        hour_seconds=args.hour_seconds,
        latency=args.latency,
        access_log=args.access_log,
    )
