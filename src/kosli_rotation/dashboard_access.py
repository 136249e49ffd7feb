"""What the Key rotation page may read, and for whom: the viewer's DAGs, its own Vault connection, the API's URL.

- **The viewer's DAGs.** A key's row is shown only to a viewer Airflow's auth manager lets read the key's rotation
  DAG (``is_authorized_dag``, asked exactly as the REST API asks it for ``/dags/{dag_id}``), so the page follows
  whatever the deployment's auth manager grants (roles, per-DAG permissions, teams).
- **Its own Vault connection**, ``[kosli_rotation] page_vault_conn_id`` (default ``kosli_rotation_page_vault``),
  with a token of the page's policy: it reads each record's metadata (the ``custom_metadata`` summary) and the
  consumer notes beside it, nothing else, and never falls back to the workers' connection, which can read keys.
- **The Airflow API** is called at ``[api] base_url`` (or the API server's own ``[api] host``/``port``), never at
  the address a request's ``Host`` header names: the viewer's token goes only to the deployment's API server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kosli_rotation.inventory import KeyEntry
from kosli_rotation.key_store import open_vault, unpack_note

DEFAULT_PAGE_VAULT_CONN_ID = "kosli_rotation_page_vault"
README_SECTION = "README, 'Key rotation page'"

#: Whether the viewer may read a DAG; ``None`` asks for every DAG at once (an unreadable inventory's row).
DagFilter = Callable[[str | None], bool]


def page_vault_conn_id() -> str:
    from airflow.configuration import conf

    return conf.get("kosli_rotation", "page_vault_conn_id", fallback=DEFAULT_PAGE_VAULT_CONN_ID)


class PageVaultMissing(Exception):
    """The page's Vault connection is not defined."""


class PageVault:
    """The page's only reads of Vault: one record's metadata, and its consumers' status notes."""

    def __init__(self, conn_id: str | None = None) -> None:
        self.conn_id = conn_id or page_vault_conn_id()
        self._opened: tuple[Any, str] | None = None

    def _open(self) -> tuple[Any, str]:
        from airflow.sdk.exceptions import AirflowNotFoundException

        if self._opened is None:
            try:
                self._opened = open_vault(self.conn_id)
            except Exception as error:
                if isinstance(error.__cause__, AirflowNotFoundException):  # open_vault's "not defined"
                    raise PageVaultMissing(
                        f"the page's Vault connection {self.conn_id!r} is not defined: create it with a token of "
                        f"the page's metadata-only policy ({README_SECTION}); the page never uses the workers' token"
                    ) from None
                raise
        return self._opened

    def mount(self, entry: KeyEntry) -> str:
        return entry.vault_mount or self._open()[1]

    def location(self, entry: KeyEntry) -> str:
        mount = entry.vault_mount or (self._opened[1] if self._opened else f"<mount of {self.conn_id}>")
        return f"{mount}/{entry.vault_path}"

    def summary(self, entry: KeyEntry) -> dict[str, Any]:
        """``<mount>/metadata/<record>``: the non-secret summary each rotation mirrors into ``custom_metadata``."""
        client, _ = self._open()
        response = client.secrets.kv.v2.read_secret_metadata(path=entry.vault_path, mount_point=self.mount(entry))
        return dict(response["data"].get("custom_metadata") or {})

    def consumer_note(self, entry: KeyEntry, consumer: str) -> dict[str, Any]:
        """``<mount>/data/<record>/consumers/<consumer>``: when it was last written and verified (no key)."""
        import hvac.exceptions

        client, _ = self._open()
        try:
            response = client.secrets.kv.v2.read_secret_version(
                path=f"{entry.vault_path}/consumers/{consumer}",
                mount_point=self.mount(entry),
                raise_on_deleted_version=True,
            )
        except hvac.exceptions.InvalidPath:
            return {}
        return unpack_note(response["data"]["data"])


def viewer_filter(user: Any, auth_manager: Any = None) -> DagFilter:
    """Which DAGs ``user`` may read, as the auth manager says (the API server's own, unless one is given)."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.configuration import conf

    if auth_manager is None:
        from airflow.api_fastapi.app import get_auth_manager

        auth_manager = get_auth_manager()
    multi_team = conf.getboolean("core", "multi_team", fallback=False)
    answers: dict[str | None, bool] = {}

    def may_read(dag_id: str | None) -> bool:
        if dag_id not in answers:
            if dag_id is None:
                answers[dag_id] = bool(auth_manager.is_authorized_dag(method="GET", user=user))
            else:
                team = _team_of(dag_id) if multi_team else None
                details = DagDetails(id=dag_id, team_name=team)
                answers[dag_id] = bool(auth_manager.is_authorized_dag(method="GET", user=user, details=details))
        return answers[dag_id]

    return may_read


def _team_of(dag_id: str) -> str | None:
    from airflow.models.dag import DagModel

    return DagModel.get_team_name(dag_id)


def api_base_url() -> str:
    """The Airflow API server's URL from configuration: ``[api] base_url``, else its own host and port."""
    from airflow.configuration import conf

    base_url = (conf.get("api", "base_url", fallback="") or "").strip()
    if base_url:
        return base_url.rstrip("/")
    host = conf.get("api", "host", fallback="") or "0.0.0.0"
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    tls = conf.get("api", "ssl_cert", fallback="") and conf.get("api", "ssl_key", fallback="")
    return f"{'https' if tls else 'http'}://{host}:{conf.getint('api', 'port', fallback=8080)}"
