"""Non-reversible names for secrets: a full digest to compare them, a short fingerprint to show them.

Compare with ``digest``: it is the whole SHA-256, so two different keys never compare equal. Display with
``fingerprint`` (or ``short`` of a digest): 48 bits tell keys apart at a glance in logs, XCom and Vault
metadata, but are too few to prove that a consumer holds a particular key.
"""

from __future__ import annotations

import hashlib
import re

from kosli_rotation.scrub import hold_secret

__all__ = ["digest", "fingerprint", "hold_secret", "short"]

PREFIX = "sha256:"
#: Hex digits of the display form.
SHORT_HEX = 12
_HEX = re.compile(r"^[0-9a-f]+$")


def digest(secret: str) -> str:
    """Return ``sha256:`` and the full hex SHA-256 of the secret: the form to COMPARE secrets by.

    Use it whenever what a consumer holds is checked against the expected key; never show it where a short
    fingerprint does (it is as non-reversible, just long).
    """
    return PREFIX + hashlib.sha256(secret.encode()).hexdigest()


def short(digest_or_fingerprint: str) -> str:
    """The display form (``sha256:`` and 12 hex digits) of a digest, or of a fingerprint (returned as it is).

    For logs and details only: two short forms being equal does not prove two secrets are.
    """
    hex_digits = digest_or_fingerprint.removeprefix(PREFIX)
    if len(hex_digits) < SHORT_HEX or not _HEX.match(hex_digits):
        raise ValueError(f"{digest_or_fingerprint!r} is not a sha256 digest or fingerprint")
    return PREFIX + hex_digits[:SHORT_HEX]


def fingerprint(secret: str) -> str:
    """Return ``sha256:`` and the first 12 hex digits of the secret's SHA-256: the form to DISPLAY it by.

    Kosli keys carry 256 bits of randomness, so a 48-bit prefix of their hash reveals nothing useful about
    them while still telling two keys apart at a glance. It is ``short(digest(secret))``. Do not compare
    secrets by it: compare ``digest`` values.
    """
    return short(digest(secret))
