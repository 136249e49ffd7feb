"""Kosli's service-account API-key endpoints, on top of the HTTP provider's ``HttpHook``.

The Airflow connection (default ``kosli_default``) has the Kosli base URL as host
(``https://app.kosli.com``, ``https://app.us.kosli.com`` or a single-tenant host) and the admin API
key that manages service-account keys as password. Reads and revocations are retried with backoff, by the
consumers' rules (``consumers.transport``: which statuses are transient, the waits a server asks for, the
attempts, budget and longest single wait of ``DEFAULT_POLICY``); a POST that mints a key is never retried after
it may have reached Kosli, because a second POST could mint a second key and lose the first.

Auth cannot be swapped: every request carries exactly one ``Bearer`` key, set as the request's own auth, so
neither a login on the connection (``HttpHook`` would set basic auth) nor a ``~/.netrc`` entry for the host
(requests applies it when no auth is set, and again on every redirect) can replace it; redirects are not
followed. ``probe`` needs the key under test and never falls back to the admin key. Org, service-account and
key ids are refused when they hold ``/``, ``..`` or control characters, and URL-quoted.
"""

from __future__ import annotations

import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
from airflow.providers.http.hooks.http import HttpHook

from kosli_rotation.consumers.transport import DEFAULT_POLICY, is_transient_status, server_wait
from kosli_rotation.errors import InvalidRequestError, KosliApiError, KosliOutcomeUnknown, RotationError
from kosli_rotation.fingerprints import hold_secret
from kosli_rotation.retrying import backoff_delay, call_with_retries
from kosli_rotation.scrub import describe_error

USER_AGENT = "kosli-key-rotation/0.1"


@dataclass(frozen=True)
class ApiKey:
    """Key metadata as Kosli lists it: never the secret."""

    id: str
    description: str
    created_at: float
    expires_at: int = 0
    last_used_at: float | None = None

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> ApiKey:
        return cls(
            id=str(body["id"]),
            description=str(body.get("description") or ""),
            created_at=float(body.get("created_at") or 0),
            expires_at=int(body.get("expires_at") or 0),
            last_used_at=float(body["last_used_at"]) if body.get("last_used_at") else None,
        )


@dataclass(frozen=True)
class MintedKey:
    """A key Kosli has just created or rotated. ``secret`` exists nowhere else: store it now."""

    id: str
    secret: str = field(repr=False)
    description: str
    created_at: float
    grace_period_expires_at: float | None
    expires_at: float | None = None  # when Kosli kills the new key (None: never)

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> MintedKey:
        # The API reference and real servers return the secret in "key"; the tutorial says "api_key".
        secret = body.get("key") or body.get("api_key")
        if not secret or "id" not in body:
            raise KosliOutcomeUnknown(
                f"Kosli answered without a key id or value (fields: {sorted(body)}); "
                "the rerun will reconcile from the key list"
            )
        grace = body.get("grace_period_expires_at")
        return cls(
            id=str(body["id"]),
            secret=hold_secret(str(secret)),
            description=str(body.get("description") or ""),
            created_at=float(body.get("created_at") or 0),
            grace_period_expires_at=float(grace) if grace else None,
            expires_at=float(body["expires_at"]) if body.get("expires_at") else None,
        )


def error_message(response: requests.Response) -> str:
    """Kosli's error text from ``{"message", "errors"}``, a bare JSON string, or a non-JSON body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason or "no message"
    if isinstance(body, dict):
        message = str(body.get("message") or body.get("error") or response.reason or "no message")
        errors = body.get("errors")
        if isinstance(errors, dict) and errors:
            message += ": " + "; ".join(f"{name}: {text}" for name, text in errors.items())
        elif errors:
            message += f": {errors}"
        return message
    return str(body)[:300]


class _Bearer(requests.auth.AuthBase):
    """The one Authorization header a request carries; requests applies it after every other source."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(***)"


def checked_id(what: str, value: object) -> str:
    """``value`` as one path segment, or ``InvalidRequestError`` naming ``what`` (org, service account, key id)."""
    if not isinstance(value, str) or not value:
        raise InvalidRequestError(f"Kosli {what} must be a non-empty string, got {value!r}")
    if "/" in value or ".." in value or value == ".":
        raise InvalidRequestError(f"Kosli {what} {value!r} may not contain '/' or '..'")
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in value):
        raise InvalidRequestError(f"Kosli {what} {value!r} may not contain control characters")
    return value


def _expiry(expires_at: int | None) -> dict[str, int]:
    """The body field of a key's expiry: absent for a key that never expires (Kosli's 0, its default)."""
    return {"expires_at": int(expires_at)} if expires_at else {}


def _is_transient(error: Exception) -> bool:
    if isinstance(error, KosliApiError):
        return is_transient_status(error.status)
    return isinstance(error, requests.ConnectionError | requests.Timeout)


class KosliHook(HttpHook):
    """Manage one org's service-account API keys, and probe whether a given key works."""

    conn_name_attr = "kosli_conn_id"
    default_conn_name = "kosli_default"
    conn_type = "kosli"  # the provider's connection type; `http` connections made before it still work
    hook_name = "Kosli"

    def __init__(
        self,
        kosli_conn_id: str = default_conn_name,
        *,
        timeout: float = 30.0,
        max_attempts: int = DEFAULT_POLICY.max_attempts,
    ) -> None:
        super().__init__(method="GET", http_conn_id=kosli_conn_id)
        self.timeout = timeout
        self.max_attempts = max_attempts
        self._admin_key: str | None = None

    # -- plumbing -------------------------------------------------------------------------------

    def _extract_auth(self, connection: Any) -> None:
        """Never the connection's login: each request sets its own bearer (see ``_send_once``)."""
        return None

    def _connection(self) -> Any:
        """The hook's Airflow connection: "not defined" (create it) told apart from a lookup that failed (retry)."""
        from airflow.sdk.exceptions import AirflowNotFoundException

        try:
            return self.get_connection(self.http_conn_id)
        except AirflowNotFoundException as error:
            raise InvalidRequestError(
                f"Airflow connection {self.http_conn_id!r} is not defined: create a Kosli (or HTTP) connection "
                "whose host is the Kosli URL (https://app.kosli.com) and whose password is an admin "
                "API key"
            ) from error
        except Exception as error:
            raise RotationError(
                f"cannot read Airflow connection {self.http_conn_id!r}: {describe_error(error)}"
            ) from None

    def admin_key(self) -> str:
        if self._admin_key is None:
            connection = self._connection()
            if not connection.password:
                raise InvalidRequestError(
                    f"Airflow connection {self.http_conn_id!r} has no password: set it to the Kosli admin "
                    "API key that manages service-account keys"
                )
            self._admin_key = hold_secret(connection.password)
        return self._admin_key

    def _endpoint(self, *segments: str | tuple[str, str]) -> str:
        """``api/v2/`` and the segments, URL-quoted: fixed words, and ``(field, id)`` pairs checked first."""
        if not self._base_url_initialized:
            self._set_base_url(self._connection())
        prefix = "" if self.base_url.rstrip("/").endswith("/api/v2") else "api/v2/"
        words = [checked_id(*segment) if isinstance(segment, tuple) else segment for segment in segments]
        return prefix + "/".join(quote(word, safe="") for word in words)

    def _keys_endpoint(self, org: str, service_account: str, *rest: str | tuple[str, str]) -> str:
        account = ("org", org), ("service account", service_account)
        return self._endpoint("service-accounts", *account, "api-keys", *rest)

    def _send_once(
        self, method: str, endpoint: str, *, json: dict[str, Any] | None, token: str, files: Any = None
    ) -> requests.Response:
        self.method = method
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        return self.run(
            endpoint=endpoint,
            json=json,
            **({"files": files} if files is not None else {}),
            headers=headers,
            auth=_Bearer(token),
            extra_options={"check_response": False, "timeout": self.timeout, "allow_redirects": False},
        )

    def _call(
        self,
        method: str,
        endpoint: str,
        *,
        json: dict[str, Any] | None = None,
        token: str | None = None,
        accept: tuple[int, ...] = (200, 201),
        mints_a_key: bool = False,
        files: Any = None,
        repeatable: bool = True,
    ) -> requests.Response:
        """One logical call. Transient failures are retried, except where a retry could mint twice (or, with
        ``repeatable=False``, post twice): those repeat only a 429, and the caller checks the present instead.
        ``files`` makes it a multipart form (Kosli's flows, trails and attestations)."""

        bearer = self.admin_key() if token is None else token

        def attempt() -> requests.Response:
            response = self._send_once(method, endpoint, json=json, token=bearer, files=files)
            if response.status_code in accept:
                return response
            error = KosliApiError(response.status_code, error_message(response), method, "/" + endpoint)
            error.server_wait = server_wait(response.headers)  # type: ignore[attr-defined]
            raise error

        def delay_for(error: Exception, attempt_number: int) -> float | None:
            if mints_a_key or not repeatable:
                # A 429 is a refusal before any work was done, so it alone is safe to repeat.
                if not (isinstance(error, KosliApiError) and error.status == 429):
                    return None
            elif not _is_transient(error):
                return None
            asked = getattr(error, "server_wait", None)
            if asked is None:
                return backoff_delay(attempt_number)
            # A longer wait than one task waits is not waited for: the error stays retryable for Airflow's retry.
            return asked if asked <= DEFAULT_POLICY.max_single_wait else None

        try:
            return call_with_retries(
                attempt,
                delay_for=delay_for,
                what=f"Kosli {method} /{endpoint}",
                max_attempts=self.max_attempts,
                deadline=time.monotonic() + DEFAULT_POLICY.budget_seconds,
            )
        except KosliApiError as error:
            if mints_a_key and error.status >= 500:
                raise KosliOutcomeUnknown(
                    f"Kosli {method} /{endpoint} answered HTTP {error.status} ({error.message}); "
                    "the key may have been minted anyway"
                ) from None
            raise
        except (requests.ConnectionError, requests.Timeout) as error:
            if mints_a_key:
                raise KosliOutcomeUnknown(
                    f"Kosli {method} /{endpoint}: the connection failed after sending ({type(error).__name__}); "
                    "the key may have been minted anyway"
                ) from None
            raise RotationError(f"cannot reach Kosli for {method} /{endpoint}: {type(error).__name__}") from None

    # -- the API --------------------------------------------------------------------------------

    def list_keys(self, org: str, service_account: str) -> list[ApiKey]:
        """Every active key of the service account (metadata only)."""
        endpoint = self._keys_endpoint(org, service_account)
        response = self._call("GET", endpoint)
        return [ApiKey.from_json(item) for item in response.json()]

    def get_key(self, org: str, service_account: str, key_id: str) -> ApiKey:
        endpoint = self._keys_endpoint(org, service_account, ("key id", key_id))
        return ApiKey.from_json(self._call("GET", endpoint).json())

    def create_key(
        self, org: str, service_account: str, *, description: str, expires_at: int | None = None
    ) -> MintedKey:
        """POST a new key, which Kosli kills at ``expires_at`` (epoch seconds; None: never). Not retried once it
        may have reached Kosli (see ``KosliOutcomeUnknown``)."""
        endpoint = self._keys_endpoint(org, service_account)
        body: dict[str, Any] = {"description": description, **_expiry(expires_at)}
        response = self._call("POST", endpoint, json=body, mints_a_key=True)
        return MintedKey.from_json(response.json())

    def rotate_key(
        self, org: str, service_account: str, key_id: str, *, grace_period_hours: int, expires_at: int | None = None
    ) -> MintedKey:
        """POST rotate: a new secret now (which Kosli kills at ``expires_at``; None: never), the old one valid for
        the grace period. Never retried blindly."""
        endpoint = self._keys_endpoint(org, service_account, ("key id", key_id), "rotate")
        body: dict[str, Any] = {"grace_period_hours": grace_period_hours, **_expiry(expires_at)}
        response = self._call("POST", endpoint, json=body, mints_a_key=True)
        return MintedKey.from_json(response.json())

    def revoke_key(self, org: str, service_account: str, key_id: str) -> bool:
        """DELETE a key id. Returns False when Kosli says it is already gone (404), which is fine."""
        endpoint = self._keys_endpoint(org, service_account, ("key id", key_id))
        response = self._call("DELETE", endpoint, accept=(200, 204, 404))
        return response.status_code != 404

    def probe(self, org: str, key: str) -> int:
        """HTTP status Kosli gives ``key`` on ``GET /api/v2/environments/{org}``: 200, 401 or 403.

        Only ever with ``key`` as the bearer: without it the probe is refused, never sent with the admin key.
        """
        if not isinstance(key, str) or not key:
            raise InvalidRequestError("a probe needs the key to probe; it never falls back to the admin key")
        response = self._call("GET", self._endpoint("environments", ("org", org)), token=key, accept=(200, 401, 403))
        return response.status_code
