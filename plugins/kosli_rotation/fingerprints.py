"""Short, non-reversible names for secrets, so logs, XCom and Vault metadata can tell keys apart."""

from __future__ import annotations

import hashlib


def fingerprint(secret: str) -> str:
    """Return ``sha256:`` and the first 12 hex digits of the secret's SHA-256.

    Kosli keys carry 256 bits of randomness, so a 48-bit prefix of their hash reveals
    nothing useful about them while still telling two keys apart at a glance.
    """
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def hold_secret(secret: str) -> str:
    """Register ``secret`` with Airflow's log masker the moment it exists, and return it."""
    from airflow.sdk.log import mask_secret

    mask_secret(secret)
    return secret
