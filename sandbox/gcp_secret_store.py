"""The state of the GCP Secret Manager sandbox (``sandbox.gcp_secret_manager``): projects, secrets, versions, how
the API shows them, and the in-process setup and views tests and adapters use (never over the API).

Enums are integers when the request asks for ``enum-encoding=int`` in ``$alt`` (google-cloud-secret-manager always
does), names otherwise. Resource names use the project number, as GCP's answers do.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.gcp_iam import GcpIam
from sandbox.server import Abort, Request, SandboxClock, json_response

SECRET_ID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
STATES = {1: "ENABLED", 2: "DISABLED", 3: "DESTROYED"}
ENABLED, DISABLED, DESTROYED = 1, 2, 3
MAX_PAYLOAD = 64 * 1024
SERVICE_AUDIENCE = "https://secretmanager.googleapis.com/"
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid "
    "authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project."
)
STATUS_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}
STATUS_CODES |= {409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}


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
    """CRC-32C (Castagnoli), the checksum Secret Manager keeps for each payload."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def error_body(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": code or STATUS_CODES.get(status, "UNKNOWN")}}


def fail(status: int, message: str, code: str | None = None) -> Abort:
    headers = {"WWW-Authenticate": 'Bearer realm="https://accounts.google.com/"'} if status == 401 else None
    return Abort(json_response(status, error_body(status, message, code), headers))


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Version:
    number: int
    data: bytes | None
    created: float
    checksum_given: bool
    state: int = ENABLED
    destroyed: float | None = None


@dataclass
class Secret:
    secret_id: str
    replication: dict[str, Any]
    labels: dict[str, str]
    created: float
    aliases: dict[str, int] = field(default_factory=dict)
    versions: list[Version] = field(default_factory=list)
    adds: int = 0

    def latest(self) -> Version | None:
        return self.versions[-1] if self.versions else None


@dataclass
class Project:
    project_id: str
    number: int
    secrets: dict[str, Secret] = field(default_factory=dict)


class SecretStore:
    """Projects of secrets and their versions (mixed into the sandbox, which provides the lock, clock and IAM)."""

    lock: threading.RLock
    clock: SandboxClock
    iam: GcpIam
    page_size: int
    _projects: dict[str, Project]
    _numbers: Any

    def add_project(self, project_id: str) -> int:
        """A project (by id) with Secret Manager enabled; returns its number."""
        with self.lock:
            project = self._projects.setdefault(project_id, Project(project_id, next(self._numbers)))
            return project.number

    def add_service_account(self, email: str, roles: Any = ()) -> dict[str, Any]:
        """See ``GcpIam.add_service_account``: the key file (its ``token_uri`` is this sandbox's)."""
        return self.iam.add_service_account(email, roles)

    def put_secret(
        self, project: str, secret_id: str, value: str | bytes | None = None, *, replication: Any = None, **extra: Any
    ) -> None:
        """Create a secret (automatic replication unless given), holding ``value`` as version 1 if given."""
        with self.lock:
            owner = self._project(project)
            if secret_id in owner.secrets:
                raise ValueError(f"secret {project}/{secret_id} exists already")
            owner.secrets[secret_id] = Secret(
                secret_id, replication or {"automatic": {}}, dict(extra.get("labels") or {}), self.clock.now()
            )
            if value is not None:
                self.add_version(project, secret_id, value)

    def add_version(self, project: str, secret_id: str, value: str | bytes) -> int:
        """A new enabled version (the new ``latest``), bypassing auth and quotas; returns its number."""
        data = value.encode() if isinstance(value, str) else value
        with self.lock:
            secret = self._secret(project, secret_id)
            version = Version(len(secret.versions) + 1, data, self.clock.now(), checksum_given=False)
            secret.versions.append(version)
            return version.number

    def set_state(self, project: str, secret_id: str, number: int, state: int) -> None:
        """Set a version ENABLED (1), DISABLED (2) or DESTROYED (3, which wipes its payload)."""
        with self.lock:
            self._set_state(self._secret(project, secret_id).versions[number - 1], state)

    def set_alias(self, project: str, secret_id: str, alias: str, number: int | None) -> None:
        """Point ``alias`` at version ``number`` (None removes it), as ``versionAliases`` does."""
        with self.lock:
            aliases = self._secret(project, secret_id).aliases
            aliases.pop(alias, None) if number is None else aliases.__setitem__(alias, number)

    def payload(self, project: str, secret_id: str, version: str | int = "latest") -> bytes | None:
        """What a version holds (``latest``: the highest number, whatever its state); None if absent or wiped."""
        with self.lock:
            secret = self._project(project).secrets.get(secret_id)
            if secret is None or not secret.versions:
                return None
            chosen = secret.latest() if version == "latest" else secret.versions[int(version) - 1]
            return chosen.data if chosen else None

    def versions(self, project: str, secret_id: str) -> list[dict[str, Any]]:
        """Each version, oldest first: ``number``, ``state`` (a name), ``checksum_given``."""
        with self.lock:
            secret = self._project(project).secrets.get(secret_id)
            return [
                {"number": v.number, "state": STATES[v.state], "checksum_given": v.checksum_given}
                for v in (secret.versions if secret else [])
            ]

    def secret(self, project: str, secret_id: str) -> dict[str, Any] | None:
        """The secret as the API shows it (names by project number, enums as integers), or None."""
        with self.lock:
            owner = self._project(project)
            secret = owner.secrets.get(secret_id)
            return self._secret_json(owner, secret) if secret else None

    def version_adds(self, project: str, secret_id: str) -> int:
        """AddSecretVersion calls this secret accepted over the API."""
        with self.lock:
            secret = self._project(project).secrets.get(secret_id)
            return secret.adds if secret else 0

    def _project(self, project: str) -> Project:
        found = self._projects.get(project) or next(
            (p for p in self._projects.values() if str(p.number) == project), None
        )
        if found is None:
            raise LookupError(f"no project {project}")
        return found

    def _secret(self, project: str, secret_id: str) -> Secret:
        secret = self._project(project).secrets.get(secret_id)
        if secret is None:
            raise LookupError(f"no secret {project}/{secret_id}")
        return secret

    def _set_state(self, version: Version, state: int) -> None:
        version.state = state
        if state == DESTROYED:
            version.data, version.destroyed = None, self.clock.now()

    @staticmethod
    def _enum(request: Request, state: int) -> int | str:
        return state if "enum-encoding=int" in (request.query_value("$alt") or "") else STATES[state]

    def _secret_json(self, project: Project, secret: Secret) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "name": f"projects/{project.number}/secrets/{secret.secret_id}",
            "replication": secret.replication,
            "createTime": _time(secret.created),
            "etag": f'"{secret.created:.6f}"',
        }
        if secret.labels:
            shown["labels"] = secret.labels
        if secret.aliases:
            shown["versionAliases"] = {alias: str(number) for alias, number in secret.aliases.items()}
        return shown

    def _version_json(self, request: Request, project: Project, secret: Secret, v: Version) -> dict[str, Any]:
        status = (
            {"automatic": {}}
            if "automatic" in secret.replication
            else {
                "userManaged": {
                    "replicas": [
                        {"location": r.get("location")}
                        for r in secret.replication.get("userManaged", {}).get("replicas", [])
                    ]
                }
            }
        )
        shown = {
            "name": f"projects/{project.number}/secrets/{secret.secret_id}/versions/{v.number}",
            "createTime": _time(v.created),
            "state": self._enum(request, v.state),
            "replicationStatus": status,
            "etag": f'"{v.created:.6f}-{v.state}"',
            "clientSpecifiedPayloadChecksum": v.checksum_given,
        }
        if v.destroyed is not None:
            shown["destroyTime"] = _time(v.destroyed)
        return shown

    def _page(self, request: Request, items: list[Any]) -> tuple[list[Any], str | None]:
        try:
            size = int(request.query_value("pageSize") or 0) or self.page_size
            start = int(base64.urlsafe_b64decode(request.query_value("pageToken") or "MA==").decode() or 0)
        except (ValueError, binascii.Error):
            raise fail(400, "Invalid page token or page size.") from None
        size = min(max(size, 1), 25000)
        token = base64.urlsafe_b64encode(str(start + size).encode()).decode() if start + size < len(items) else None
        return items[start : start + size], token
