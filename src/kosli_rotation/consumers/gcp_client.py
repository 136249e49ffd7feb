"""What the ``gcp_secret_manager`` consumer needs around google-cloud-secret-manager: the client built from an
Airflow ``google_cloud_platform`` connection (a service account key or application default credentials), the
mapping of Google's exceptions for ``Transport``, CRC32C, and the per-secret pacing of AddSecretVersion.

Over REST, google-api-core picks the exception class by HTTP status, not by GCP's status: 403 is ``Forbidden``
(never ``PermissionDenied``), 409 ``Conflict`` (never ``AlreadyExists``), and FAILED_PRECONDITION, sent as 400, is
a ``BadRequest`` (``failed_precondition`` tells).

The connection mirrors the Google provider's: extras ``keyfile_dict`` (the key file's JSON, as text or an object)
or ``key_path``, and ``project``, each also under the provider's old ``extra__google_cloud_platform__`` prefix;
``api_endpoint`` is ours (Private Service Connect, or a sandbox: an ``http://`` endpoint is used as given).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kosli_rotation.client_logging import pin_client_loggers
from kosli_rotation.consumers.transport import Fixes, RemoteFailure, Transport, connection_or_explain
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import hold_secret

T = TypeVar("T")
SERVICE = "GCP Secret Manager"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_ENDPOINT = "secretmanager.googleapis.com"
#: Seconds between two AddSecretVersion calls to one secret from this process (GCP allows 2 a second per secret).
WRITE_SPACING_SECONDS = 0.6
CALL_TIMEOUT_SECONDS = 30.0
#: Passed to every client call: no library retries (they cover reads only and ignore server waits).
NO_RETRY: dict[str, Any] = {"retry": None, "timeout": CALL_TIMEOUT_SECONDS}
UNSUPPORTED_EXTRAS = ("key_secret_name", "credential_config_file", "impersonation_chain")
#: The predefined role that grants each permission this consumer uses.
ROLE_FOR = {
    "secretmanager.versions.add": "roles/secretmanager.secretVersionAdder",
    "secretmanager.versions.access": "roles/secretmanager.secretAccessor",
    "secretmanager.secrets.get": "roles/secretmanager.viewer",
    "secretmanager.secrets.list": "roles/secretmanager.viewer",
    "secretmanager.versions.list": "roles/secretmanager.viewer",
    "secretmanager.versions.disable": "roles/secretmanager.secretVersionManager",
    "secretmanager.versions.destroy": "roles/secretmanager.secretVersionManager",
    "secretmanager.secrets.create": "roles/secretmanager.admin (or a custom role with secretmanager.secrets.create)",
}
CREATE_CONNECTION = (
    'a google_cloud_platform connection, e.g. AIRFLOW_CONN_{ID}=\'{{"conn_type": "google_cloud_platform", '
    '"extra": {{"keyfile_dict": "<service account key JSON>", "project": "<project id>"}}}}\' '
    "(no key: the worker's application default credentials)"
)
_STATE = re.compile(r"versions/(\d+)\] is in (ENABLED|DISABLED|DESTROYED) state")
_PACE_LOCK = threading.Lock()
_NEXT_WRITE: dict[str, float] = {}


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum Secret Manager checks payloads against (google-crc32c is not installed)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def pace(secret: str) -> None:
    """Reserve the next AddSecretVersion slot of ``secret`` in this process and wait for it."""
    with _PACE_LOCK:
        now = time.monotonic()
        slot = max(now, _NEXT_WRITE.get(secret, now))
        _NEXT_WRITE[secret] = slot + WRITE_SPACING_SECONDS
    if slot > now:
        time.sleep(slot - now)


def remote_message(error: Any) -> str:
    """GCP's ``error.status`` and ``error.message`` (not the library's text, which repeats the whole URL)."""
    try:
        body = error.response.json()["error"]
        return f"{body.get('status') or 'error'}: {body.get('message') or ''}"
    except Exception:
        return str(getattr(error, "message", "") or type(error).__name__)


def failed_precondition(error: Exception) -> bool:
    """Whether GCP answered FAILED_PRECONDITION (over REST an HTTP 400, so google-api-core raises BadRequest)."""
    from google.api_core import exceptions as api

    return isinstance(error, api.FailedPrecondition) or (
        isinstance(error, api.BadRequest) and remote_message(error).startswith("FAILED_PRECONDITION:")
    )


def version_number(name: str) -> int:
    """``projects/p/secrets/s/versions/3`` -> 3."""
    return int(name.rsplit("/", 1)[-1])


def unreadable_latest(error: Any, consumer: str, where: str, path: str) -> ConsumerError:
    """The error for a FAILED_PRECONDITION on ``latest``: which version, its state, and how to recover."""
    match = _STATE.search(str(getattr(error, "message", "")))
    number, state = match.groups() if match else ("?", "not enabled")
    project, secret = path.split("/")[1], path.split("/")[3]
    remedy = (
        f"enable it (gcloud secrets versions enable {number} --secret={secret} --project={project}) or add a "
        "version holding the current key"
        if state == "DISABLED"
        else "add a version holding the current key (a destroyed version cannot come back)"
    )
    return ConsumerError(
        consumer,
        f"the latest version ({number}) of {where} is {state}, so every reader of 'latest' fails "
        f"(FAILED_PRECONDITION): {remedy}, then run again (roll back by adding a version, never by disabling one)",
        retryable=False,
    )


def classify(error: Exception) -> RemoteFailure | None:
    """google-api-core's exceptions (``.code`` is the HTTP status over REST), google-auth's and requests' failures."""
    import requests
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(error, api.GoogleAPICallError):
        status = error.code if isinstance(error.code, int) else None
        headers = dict(getattr(getattr(error, "response", None), "headers", None) or {})
        for detail in error.details or ():  # google.rpc.RetryInfo: the wait GCP asks for, when it says one
            delay = detail.get("retryDelay") if isinstance(detail, dict) else None
            if isinstance(delay, str) and re.fullmatch(r"\d+(\.\d+)?s", delay):
                headers.setdefault("Retry-After", delay[:-1])
        return RemoteFailure(status, remote_message(error), headers)
    if isinstance(error, auth.RefreshError):
        said = f"the token endpoint refused the key: {error.args[0] if error.args else ''}"
        return RemoteFailure(503 if getattr(error, "retryable", False) else 401, said)
    if isinstance(error, auth.TransportError | requests.ConnectionError | requests.Timeout):
        return RemoteFailure(None, f"no answer ({type(error).__name__})")
    return None


@dataclass
class GcpSession:
    """A client for one connection, its credentials, and what they tell: the account and a default project."""

    client: Any
    credentials: Any
    account: str | None
    project: str | None
    conn_id: str
    held_token: str | None = None

    def call(self, action: Callable[[], T], what: str, *, consumer: str, grant: str, project: str) -> T:
        """``action`` through ``Transport`` (a 403 says what to ``grant``); the bearer token it used is held."""
        fixes = Fixes(
            unauthorized="the service account key is deleted, disabled or of another account: create a key and put "
            "it in the connection",
            forbidden=f"grant {grant}, or enable the Secret Manager API in project {project} if the message says "
            "it is disabled",
            not_found=f"check the project ({project}) and the secret id",
        )
        transport = Transport(consumer=consumer, service=SERVICE, conn_id=self.conn_id, classify=classify, fixes=fixes)
        try:
            return transport.call(action, what)
        finally:
            token = getattr(self.credentials, "token", None)
            if isinstance(token, str) and token != self.held_token:
                self.held_token = hold_secret(token)


def connect(conn_id: str, consumer: str) -> GcpSession:
    """The REST client for Airflow connection ``conn_id``; errors name the connection and the field to fix."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import secretmanager

    pin_client_loggers()
    connection = connection_or_explain(conn_id, consumer, CREATE_CONNECTION.format(ID=conn_id.upper()))
    extra = dict(connection.extra_dejson or {})

    def field(name: str) -> Any:
        return extra.get(name) or extra.get(f"extra__google_cloud_platform__{name}") or None

    def refuse(what: str) -> ConsumerError:
        return ConsumerError(consumer, f"connection {conn_id!r}: {what}", retryable=False)

    credentials, account, key_project = _credentials(field, refuse)
    client = secretmanager.SecretManagerServiceClient(
        transport="rest",
        credentials=credentials,
        client_options=ClientOptions(api_endpoint=field("api_endpoint") or DEFAULT_ENDPOINT),
    )
    # google-auth resends a request refused with 401 twice, with fresh credentials: one resend covers a token that
    # expired early, more only repeat the refusal of a deleted key (the session takes no such option).
    session = getattr(getattr(client, "_transport", None), "_session", None)
    if hasattr(session, "_max_refresh_attempts"):
        session._max_refresh_attempts = 1
    return GcpSession(client, credentials, account, field("project") or key_project, conn_id)


def _credentials(
    field: Callable[[str], Any], refuse: Callable[[str], ConsumerError]
) -> tuple[Any, str | None, str | None]:
    """The connection's service account key, else application default credentials: (credentials, account, project)."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.oauth2 import service_account

    unsupported = [name for name in UNSUPPORTED_EXTRAS if field(name)]
    if unsupported:
        raise refuse(f"extra {', '.join(unsupported)} is not supported here: use keyfile_dict or key_path")
    keyfile, key_path = field("keyfile_dict"), field("key_path")
    if keyfile and key_path:
        raise refuse("extras keyfile_dict and key_path are mutually exclusive: keep one")
    if keyfile or key_path:
        info = _key_info(keyfile, key_path, refuse)
        try:
            credentials = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])
        except (ValueError, KeyError):
            raise refuse("its service account key cannot be loaded (a JSON key file is needed)") from None
        return credentials, info["client_email"], info.get("project_id")
    try:
        credentials, project = google.auth.default(scopes=[CLOUD_PLATFORM])
    except DefaultCredentialsError:
        raise refuse(
            "has no key (extra keyfile_dict or key_path) and the worker has no application default credentials: add "
            "a key, or set GOOGLE_APPLICATION_CREDENTIALS, or run the worker as a service account"
        ) from None
    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    with contextlib.suppress(OSError, ValueError, AttributeError):  # held when it is a key we can read; else no key
        _hold_private_key(json.loads(Path(key_file).read_text()).get("private_key") if key_file else None)
    return credentials, getattr(credentials, "service_account_email", None), project


def _hold_private_key(private_key: Any) -> None:
    """The private key, as text and as JSON escapes it (a logged key file shows it so)."""
    if isinstance(private_key, str) and private_key:
        hold_secret(private_key)
        hold_secret(json.dumps(private_key)[1:-1])


def _key_info(keyfile: Any, key_path: Any, refuse: Callable[[str], ConsumerError]) -> dict[str, Any]:
    """The key file as a dict, its private key held before anything else."""
    source = "keyfile_dict" if keyfile else "key_path"
    if key_path:
        try:
            keyfile = Path(str(key_path)).read_text()
        except OSError as error:
            raise refuse(f"cannot read key_path {key_path}: {error.strerror}") from None
    try:
        info = keyfile if isinstance(keyfile, dict) else json.loads(keyfile)
    except ValueError:
        raise refuse(f"{source} is not JSON (give the service account key file's content)") from None
    private_key = info.get("private_key") if isinstance(info, dict) else None
    _hold_private_key(private_key)
    if not private_key or info.get("type") != "service_account" or not info.get("client_email"):
        raise refuse(f"{source} is not a service account key (type service_account, client_email, private_key)")
    return dict(info)
