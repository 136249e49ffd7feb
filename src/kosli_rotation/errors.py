"""Errors the rotation raises, each one saying what went wrong, where, and what to do next."""

from __future__ import annotations


class RotationError(Exception):
    """Base class. ``retryable`` tells the task wrapper whether an Airflow retry can help."""

    retryable = True


class InvalidRequestError(RotationError):
    """A trigger parameter or the inventory asks for something that cannot be done."""

    retryable = False


class KosliApiError(RotationError):
    """Kosli answered with an error status. The message never contains a secret."""

    def __init__(self, status: int, message: str, method: str, path: str) -> None:
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        super().__init__(f"Kosli {method} {path} failed with HTTP {status}: {message}")

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        from kosli_rotation.retrying import is_transient_status

        return is_transient_status(self.status)


class KosliOutcomeUnknown(RotationError):
    """A key-minting POST may or may not have taken effect (connection lost, 5xx after commit).

    Never retried blindly: the intent record in Vault makes the next attempt reconcile
    from Kosli's key list instead.
    """


class KeyStoreError(RotationError):
    """The Vault record is missing, unreadable, or holds something this tool did not expect."""


class ConcurrentWriteError(KeyStoreError):
    """Another writer changed the Vault record between our read and our check-and-set write."""


class FenceLost(KeyStoreError):
    """The record no longer belongs to this attempt: another run took the operation over. Never retried."""

    retryable = False


class ConsumerError(RotationError):
    """A consumer could not be written or verified."""

    def __init__(self, consumer: str, message: str, *, retryable: bool = True) -> None:
        self.consumer = consumer
        self.retryable = retryable  # type: ignore[misc]
        super().__init__(f"consumer {consumer!r}: {message}")


class VerificationError(RotationError):
    """A key did not behave as it must (the new key refused, or the old key still accepted)."""


class OldKeyStillInUse(VerificationError):
    """Kosli saw the old key used after every consumer had the new one: something unlisted needs it."""

    retryable = False


class EvidenceMissing(VerificationError):
    """Before a revocation, the live evidence that nothing listed still needs the outgoing key is incomplete."""

    retryable = False


class RotationInProgress(RotationError):
    """Another run, possibly of another Airflow deployment, holds this key's rotation lock."""

    retryable = False


class RunNotNeeded(Exception):
    """This run has nothing to do (key not due, dry run, already done). Downstream steps skip."""
