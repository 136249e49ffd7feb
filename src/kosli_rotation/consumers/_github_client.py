"""The GitHub client one task shares among its GitHub consumers of one connection: one PyGithub client, one pace
for the token (``github_pace``), and what the secrets API answers that several consumers use.

Each Actions secret would cost four requests done naively (the repository, the public key, the sealed PUT, a read
of ``updated_at``). Here the public key of a repository, environment or organization is fetched once per task and
reused for every secret sealed with it (fetched again once if GitHub answers 422: the key changed); nothing is
looked up that the PUT does not need; and ``updated_at`` comes from one list call per repository, environment or
organization (paginated), not a GET per secret.
"""

from __future__ import annotations

import threading
from base64 import b64encode
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers import transport
from kosli_rotation.consumers.github_pace import TokenPace, token_digest
from kosli_rotation.errors import ConsumerError

if TYPE_CHECKING:
    from github import Github
    from github.Repository import Repository

    from kosli_rotation.key_store import KeyStore

T = TypeVar("T")
Call = Callable[[str, Callable[[], T]], T]  # a consumer's ``_call``: its transport, its messages
PAGE = 100  # GitHub's largest per_page


@dataclass(frozen=True)
class PublicKey:
    key_id: str
    key: str

    def seal(self, value: str) -> str:
        """``value`` in a libsodium sealed box for this key, as GitHub's own example does."""
        from nacl import encoding, public

        box = public.SealedBox(public.PublicKey(self.key.encode(), encoding.Base64Encoder()))
        return b64encode(box.encrypt(value.encode())).decode()


@dataclass(frozen=True)
class SecretMetadata:
    name: str
    updated_at: float
    visibility: str | None = None


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def open_github(conn_id: str, consumer: str, requests_apart: float) -> Github:
    """PyGithub as the connection configures it (token or App, GHES host), minus PyGithub's own retries (the
    shared transport retries) and its write spacing (``TokenPace`` paces writes across processes)."""
    from airflow.providers.github.hooks.github import GithubHook
    from airflow.sdk.exceptions import AirflowNotFoundException
    from github import Github

    from kosli_rotation.held_credentials import held_github_auth

    try:
        configured = GithubHook(github_conn_id=conn_id).get_conn()
    except AirflowNotFoundException:  # or set but unreadable: the shared lookup tells which, and raises
        example = f'AIRFLOW_CONN_{conn_id.upper()}=\'{{"conn_type": "github", "password": "<token>"}}\''
        create = f"a 'github' connection with the token as password (e.g. {example})"
        transport.connection_or_explain(conn_id, consumer, create)
        raise
    except ValueError as error:
        message = f"Airflow connection {conn_id!r} cannot authenticate to GitHub: {error}"
        raise ConsumerError(consumer, message, retryable=False) from None
    pin_client_loggers()  # importing PyGithub set its logger to INFO; at DEBUG it logs token answers
    auth = held_github_auth(configured.requester.auth)  # installation tokens held when minted
    pace = {"seconds_between_requests": requests_apart, "seconds_between_writes": 0.0}
    return Github(**{**configured.requester.kwargs, "auth": auth, "retry": None, **pace})


def token_identity(github: Github) -> str:
    """What GitHub counts one rate limit against: the token, or the App installation (its tokens change)."""
    from github import Auth

    auth = github.requester.auth
    if isinstance(auth, Auth.AppInstallationAuth):
        return f"app {auth.app_id} installation {auth.installation_id}"
    if isinstance(auth, Auth.Token):
        return f"token {auth.token}"
    return f"auth {type(auth).__name__}"


class GithubSession:
    """One connection's client, pace and caches, for the consumers of one task (thread-safe)."""

    def __init__(
        self,
        conn_id: str,
        consumer: str,
        *,
        vault: KeyStore | None,
        spacing: Callable[[], float],
        requests_apart: float,
        hold_off: Callable[[Exception], float | None],
    ) -> None:
        self.conn_id = conn_id
        self.github = open_github(conn_id, consumer, requests_apart)
        token = token_digest(self.github.requester.base_url, token_identity(self.github))
        where = f"connection {conn_id!r}"
        self.pace = TokenPace(token, spacing=spacing, vault=vault, consumer=consumer, where=where, hold_off=hold_off)
        self._lock = threading.Lock()
        self._keys: dict[str, PublicKey] = {}
        self._listings: dict[str, dict[str, SecretMetadata]] = {}
        self._served: set[tuple[str, str]] = set()  # (scope, name) answered from its scope's current listing
        self._repositories: dict[str, Repository] = {}

    def _get(self, url: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.github.requester.requestJsonAndCheck("GET", url, parameters=parameters)[1]

    def public_key(self, scope: str, call: Call, *, fresh: bool = False) -> PublicKey:
        """The scope's public key, fetched once per task (again when ``fresh``: GitHub refused the one we had)."""
        with self._lock:
            known = None if fresh else self._keys.get(scope)
        if known is None:
            data = call("read the Actions public key", lambda: self._get(f"{scope}/public-key"))
            known = PublicKey(str(data["key_id"]), str(data["key"]))
            with self._lock:
                self._keys[scope] = known
        return known

    def put_secret(self, scope: str, name: str, body: dict[str, Any]) -> None:
        """One paced PUT (sealed value and key id in ``body``); GitHub answers 201 created or 204 updated."""
        url = f"{scope}/{name}"
        self.pace.mutate(lambda: self.github.requester.requestJsonAndCheck("PUT", url, input=body))

    def secret(self, scope: str, name: str, call: Call) -> SecretMetadata | None:
        """A secret's metadata, or None when the scope holds no such secret: one listing of the scope answers
        each of its secrets once (a second question about the same secret lists the scope again, so a secret
        read before its write, or verified twice, is never answered from an old listing)."""
        asked = (scope, name)
        with self._lock:
            listing = self._listings.get(scope)
            if listing is not None and asked not in self._served:
                self._served.add(asked)
                return listing.get(name)
        listing = call("list the Actions secrets", lambda: self._list(scope))
        with self._lock:
            self._listings[scope] = listing
            self._served = {served for served in self._served if served[0] != scope} | {asked}
        return listing.get(name)

    def _list(self, scope: str) -> dict[str, SecretMetadata]:
        found: dict[str, SecretMetadata] = {}
        page = 1
        while True:
            data = self._get(scope, {"per_page": PAGE, "page": page})
            secrets = list(data.get("secrets") or [])
            for item in secrets:
                name = str(item["name"]).upper()
                found[name] = SecretMetadata(name, _epoch(str(item["updated_at"])), item.get("visibility"))
            if len(secrets) < PAGE or len(found) >= int(data.get("total_count") or 0):
                return found
            page += 1

    def selected_repository_ids(self, scope: str, name: str, call: Call) -> list[int]:
        """The repositories an organization secret is shared with (one call per page, for its update)."""

        def fetch() -> list[int]:
            return [int(repository["id"]) for repository in self.pages(f"{scope}/{name}/repositories", "repositories")]

        return call("list the repositories selected for the secret", fetch)

    def pages(self, url: str, list_key: str | None, parameters: dict[str, Any] | None = None) -> list[Any]:
        """Every item of a paged listing: ``{"total_count", list_key: [...]}``, or a plain array (``None``)."""
        items: list[Any] = []
        page = 1
        while True:
            data = self._get(url, {**(parameters or {}), "per_page": PAGE, "page": page})
            found = list(data if list_key is None else data.get(list_key) or [])
            items += found
            total = None if list_key is None else int(data.get("total_count") or 0)
            if len(found) < PAGE or (total is not None and len(items) >= total):
                return items
            page += 1

    def repository(self, full_name: str, call: Call) -> Repository:
        """A repository object (its id for organization secrets, its workflows for canaries), once per task."""
        known = full_name.lower()
        with self._lock:
            if known in self._repositories:
                return self._repositories[known]
        repository = call(f"read repository {full_name}", lambda: self.github.get_repo(full_name))
        with self._lock:
            return self._repositories.setdefault(known, repository)


class SharedSession:
    """A session made on first use (building consumers must not read connections: the gate builds them too)."""

    def __init__(self, make: Callable[[], GithubSession]) -> None:
        self._make = make
        self._lock = threading.Lock()
        self._session: GithubSession | None = None

    def get(self) -> GithubSession:
        with self._lock:
            if self._session is None:
                self._session = self._make()
            return self._session
