"""One pace per GitHub token, across threads, task processes, workers, executors and deployments sharing a Vault.

GitHub asks integrations to send one token's mutating requests (POST, PATCH, PUT, DELETE) one at a time and at
least a second apart, and its secondary limits punish bursts (about 80 content-creating requests a minute). The
batches of one token run in different task processes, so a pace kept in one process is not enough.

Every mutating request of a token goes through ``TokenPace.mutate``: within a process a lock per token; across
processes a lease in Vault (KV v2 at ``<mount>/kosli-rotation/github-pace/<token digest>``, the key's own Vault and
mount; never the token, only a SHA-256 of the API host and the token's identity). The lease is taken by a
check-and-set write and held for one request, then released by another write; the next holder waits until
``spacing`` seconds after that release. Times are the versions' ``created_time``, Vault's own clock, so workers'
clocks do not matter. A holder that dies leaves a lease that expires by itself ``LEASE_SECONDS`` after it was taken.
When GitHub answers a write with its rate limit and a wait, the release carries that wait (``hold``): every process
of the token holds off as long, so one rejection stops them all instead of each batch earning its own.

A Vault lease rather than an Airflow pool: it needs nothing created per connection, and it holds for whatever runs
the tasks (any executor, several DAGs, several deployments sharing a Vault), on the lock primitives the tool
already keeps its records with.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from kosli_rotation.errors import ConcurrentWriteError, ConsumerError, InvalidRequestError
from kosli_rotation.fingerprints import digest
from kosli_rotation.key_store import vault_delay
from kosli_rotation.retrying import call_with_retries

if TYPE_CHECKING:
    from kosli_rotation.key_store import KeyStore

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Where the leases live in the key's KV mount (the generated Vault policy grants it to entries with GitHub).
PACE_PATH = "kosli-rotation/github-pace"
#: A lease is held for one request (PyGithub's timeout is 15 s); a dead holder's lease expires after this.
LEASE_SECONDS = 30.0
#: How often a waiting process looks whether the lease was released (jittered, so waiters do not march in step).
POLL_SECONDS = 0.2
#: The longest hold-off a lease may ask for (GitHub's secondary limits reset within the hour).
MAX_HOLD_SECONDS = 3600.0
#: How long one request waits for the lease before it fails retryable (Airflow's task retry comes back).
ACQUIRE_TIMEOUT_SECONDS = 600.0


def token_digest(base_url: str, identity: str) -> str:
    """The hex SHA-256 naming one token's pace: ``identity`` is the token itself, or an App installation's id."""
    return digest(f"{base_url.rstrip('/')}\n{identity}").removeprefix("sha256:")


@dataclass
class _Local:
    """One token's pace inside this process."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    last_ended: float = float("-inf")  # time.monotonic() when its last mutating request ended
    hold: float = 0.0  # seconds GitHub asked this token to wait after that request (its rate limit)


_LOCAL: dict[str, _Local] = {}
_LOCAL_GUARD = threading.Lock()


def _local(token: str) -> _Local:
    with _LOCAL_GUARD:
        return _LOCAL.setdefault(token, _Local())


def _epoch(created_time: str) -> float:
    """Vault's RFC 3339 ``created_time`` (nanoseconds) as epoch seconds."""
    whole, _, fraction = created_time.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float(f"0.{fraction or 0}")


@dataclass(frozen=True)
class _Held:
    holder: str
    version: int


def _hold_seconds(value: Any) -> float:
    """A lease's ``hold``, bounded: a record that says something odd holds nobody off for more than an hour."""
    try:
        seconds = float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return min(seconds, MAX_HOLD_SECONDS) if seconds > 0 else 0.0


class TokenPace:
    """The pace of one GitHub token: ``mutate`` runs one mutating request when it is this caller's turn.

    Without ``vault`` (a consumer used outside a rotation task: tests, the dry run) the pace holds in this process.
    """

    def __init__(
        self,
        token: str,
        *,
        spacing: Callable[[], float],
        vault: KeyStore | None,
        consumer: str,
        where: str,
        hold_off: Callable[[Exception], float | None] = lambda error: None,
    ) -> None:
        self.token = token
        self.spacing = spacing
        self.hold_off = hold_off  # how long a failed request asks the whole token to wait (GitHub's rate limit)
        self.vault = vault
        self.consumer = consumer
        self.where = where  # what the token is, for messages: "connection 'github_default'"
        self.path = f"{PACE_PATH}/{token}"

    def mutate(self, action: Callable[[], T]) -> T:
        """``action()`` (one POST/PATCH/PUT/DELETE) once no other request of this token runs and at least
        ``spacing`` seconds (or the hold-off GitHub asked for) have passed since the last one ended, in this process
        or, with Vault, anywhere."""
        local = _local(self.token)
        with local.lock:
            held = self._acquire() if self.vault is not None else None
            wait = local.last_ended + max(self.spacing(), local.hold) - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            hold = 0.0
            try:
                return action()
            except Exception as error:
                with contextlib.suppress(Exception):  # reading the answer's wait must never hide the error
                    hold = _hold_seconds(self.hold_off(error))
                raise
            finally:
                local.last_ended, local.hold = time.monotonic(), hold
                if held is not None:
                    self._release(held, hold)

    # -- the lease in Vault ---------------------------------------------------------------------------------

    def _kv(self) -> Any:
        assert self.vault is not None
        return self.vault.client.secrets.kv.v2

    def _vault(self, action: Callable[[], T], doing: str) -> T:
        import hvac.exceptions

        try:
            return call_with_retries(action, delay_for=vault_delay, what=f"{doing} {self.path}", max_attempts=5)
        except hvac.exceptions.Forbidden:
            raise InvalidRequestError(
                f"Vault denied {doing} {self.path} (the pace of GitHub {self.where}): the Vault token needs the "
                "policy printed by `python -m kosli_rotation.vault_policy`"
            ) from None

    def _read(self) -> tuple[str, int, float, float]:
        """(holder, version, Vault time of that version, hold-off asked at its release): ("", 0, 0, 0) when no
        lease was ever taken."""
        import hvac.exceptions

        assert self.vault is not None
        mount = self.vault.mount

        def read() -> Any:
            return self._kv().read_secret_version(self.path, mount_point=mount, raise_on_deleted_version=False)

        try:
            response = self._vault(read, "reading")["data"]
        except hvac.exceptions.InvalidPath:
            return "", 0, 0.0, 0.0
        metadata, data = response["metadata"], response.get("data") or {}
        holder = str(data.get("holder") or "")
        return holder, int(metadata["version"]), _epoch(metadata["created_time"]), _hold_seconds(data.get("hold"))

    def _write(self, holder: str, version: int, hold: float = 0.0) -> tuple[int, float]:
        """Write the lease if it is still at ``version``: (new version, its Vault time); ``ConcurrentWriteError``
        when another process wrote first."""
        import hvac.exceptions

        assert self.vault is not None
        mount = self.vault.mount

        def write() -> Any:
            lease = {"holder": holder, "hold": hold} if hold else {"holder": holder}
            return self._kv().create_or_update_secret(self.path, lease, cas=version, mount_point=mount)

        try:
            data = self._vault(write, "writing")["data"]
        except hvac.exceptions.InvalidRequest as error:
            if "check-and-set" in str(error):
                raise ConcurrentWriteError(f"{self.path} changed since version {version}") from None
            raise
        return int(data["version"]), _epoch(data["created_time"])

    def _acquire(self) -> _Held:
        """Take the lease (waiting while another live holder has it, or a hold-off runs), then wait out the
        spacing after the previous holder's release, both on Vault's clock."""
        assert self.vault is not None
        me = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        deadline = time.monotonic() + ACQUIRE_TIMEOUT_SECONDS
        while True:
            holder, version, since, hold = self._read()
            if not holder and hold > self.spacing():
                left = since + hold - self.vault.vault_now() - 1.0  # Vault's time is in whole seconds
                if left > self.spacing():  # a long hold-off is waited out without holding the lease
                    # One that outlasts this request's wait fails it now, not after ACQUIRE_TIMEOUT_SECONDS asleep.
                    self._give_up_after(deadline - left, f"GitHub asked it to wait {hold:g} s (its rate limit)")
                    time.sleep(min(left - self.spacing(), LEASE_SECONDS / 2))
                    continue
            if holder:
                expires = since + LEASE_SECONDS
                left = expires - self.vault.vault_now()
                if left > 0:
                    self._give_up_after(deadline, f"held by {holder}")
                    time.sleep(min(left, POLL_SECONDS * (0.5 + random.random())))
                    continue
                log.warning("The pace lease of GitHub %s held by %s expired: taken over", self.where, holder)
                since, hold = expires, 0.0  # its holder died; a request it sent ended before the lease expired
            try:
                new_version, taken_at = self._write(me, version)
            except ConcurrentWriteError:
                continue
            wait = since + max(self.spacing(), hold) - taken_at
            if wait > 0:
                time.sleep(wait)
            return _Held(me, new_version)

    def _give_up_after(self, deadline: float, why: str) -> None:
        """Fail retryable once the token keeps this request waiting past ``ACQUIRE_TIMEOUT_SECONDS``."""
        if time.monotonic() > deadline:
            raise ConsumerError(
                self.consumer,
                f"the GitHub token of {self.where} keeps this request waiting past {ACQUIRE_TIMEOUT_SECONDS:g} s "
                f"({why}); try again later",
            )

    def _release(self, held: _Held, hold: float) -> None:
        """Best effort: a release that fails leaves a lease that expires by itself."""
        try:
            self._write("", held.version, hold)
        except ConcurrentWriteError:
            log.warning("The pace lease of GitHub %s was taken over while this request ran", self.where)
        except Exception as error:
            log.warning("could not release the pace lease of GitHub %s: %s", self.where, type(error).__name__)
