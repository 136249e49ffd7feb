"""One scrubber for every string that leaves a task: notices, the Vault record and its notes, custom_metadata,
XCom, the page and exception messages.

Airflow's masker only sees log lines. Everything else a task writes may carry text a remote sent us (an error
body, a proxy's HTML page, a parser's quote of a file), and that text may hold a secret. ``scrub`` removes:

* every secret this process registered with ``hold_secret`` (keys, the admin key, the Vault token, each
  consumer's credentials), raw and base64-encoded, and whatever Airflow's masker knows;
* known token shapes (GitHub, GitLab, CircleCI, Vault, AWS, JWTs, PEM private keys, ``Bearer`` values and
  ``token: ...`` style assignments), so a secret the process never held is still caught;
* control characters (a remote cannot forge lines in a notice), and length beyond ``limit``.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from typing import Any

REDACTED = "***"
#: Secrets shorter than this are not scrubbed by value (they would blank ordinary words); shapes still apply.
MIN_SECRET_LENGTH = 8
#: The longest text any sink takes from a remote, after scrubbing.
DEFAULT_LIMIT = 2000

_held: set[str] = set()
_held_lock = threading.Lock()
_pattern: re.Pattern[str] | None = None

_TOKEN_SHAPES = re.compile(
    "|".join(
        [
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            r"\b(?:gh[pousr]_[A-Za-z0-9_]{20,}|github_pat_[A-Za-z0-9_]{20,})",
            r"\bgl(?:pat|oas|dt|rt|cbt|ptt|ft|imt|agent|soat)-[A-Za-z0-9_\-]{16,}",
            r"\bCCIPAT_[A-Za-z0-9_]{16,}",
            r"\b(?:hv[sbr]\.[A-Za-z0-9_\-]{20,}|s\.[A-Za-z0-9]{24})\b",
            r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
            r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*",
            r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",
        ]
    )
)
#: ``Bearer x``, ``Authorization: x``, ``api-token: x``, ``"password": "x"``, ``secret=x`` ...: keep the name,
#: drop the value.
_ASSIGNMENTS = re.compile(
    r"(?i)(\b(?:bearer|basic)\s+|\b(?:token|api[-_]?token|api[-_]?key|access[-_]?token|private[-_]?token"
    r"|session[-_]?token|secret|secret[-_]?access[-_]?key|client[-_]?secret|password|passwd|authorization"
    r"|x-vault-token)[\"']?\s*[:=]\s*[\"']?)(?!\*\*\*)((?:(?:bearer|basic)\s+)?[^\s\"',;&<>]{4,})"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")


def hold_secret(secret: str) -> str:
    """Register ``secret`` with Airflow's log masker and with ``scrub`` the moment it exists; return it."""
    from airflow.sdk.log import mask_secret

    mask_secret(secret)
    remember(secret)
    return secret


def remember(secret: str) -> None:
    """Make ``scrub`` remove ``secret`` (raw and base64) from now on, in this process."""
    global _pattern
    if not isinstance(secret, str) or len(secret) < MIN_SECRET_LENGTH:
        return
    with _held_lock:
        if secret in _held:
            return
        _held.add(secret)
        _pattern = None


def _forms(secret: str) -> list[str]:
    raw = secret.encode()
    forms = [secret]
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode()
        inner = encoded[4 if offset else 0 : -4]
        if len(inner) >= MIN_SECRET_LENGTH:
            forms.append(inner)
    return forms


def _held_pattern() -> re.Pattern[str] | None:
    global _pattern
    with _held_lock:
        if _pattern is None and _held:
            forms = sorted({form for secret in _held for form in _forms(secret)}, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(form) for form in forms))
        return _pattern


def _airflow_redact(text: str) -> str:
    try:
        from airflow.sdk.log import redact
    except ImportError:  # pragma: no cover - Airflow always ships it
        return text
    redacted = redact(text)
    return redacted if isinstance(redacted, str) else text


def scrub(text: Any, *, limit: int = DEFAULT_LIMIT) -> str:
    """``text`` as a string every sink may take: no known secret, no token shape, no control character, at most
    ``limit`` characters (cut with a marker)."""
    value = text if isinstance(text, str) else str(text)
    held = _held_pattern()
    if held is not None:
        value = held.sub(REDACTED, value)
    value = _airflow_redact(value)
    value = _TOKEN_SHAPES.sub(REDACTED, value)
    value = _ASSIGNMENTS.sub(lambda match: match.group(1) + REDACTED, value)
    value = _CONTROL.sub(" ", value)
    if len(value) > limit:
        value = value[: max(limit - 12, 0)] + " [truncated]"
    return value


def scrub_data(value: Any, *, limit: int = DEFAULT_LIMIT) -> Any:
    """``value`` (JSON-like: dicts, lists, strings, numbers) with every string, keys included, scrubbed."""
    if isinstance(value, str):
        return scrub(value, limit=limit)
    if isinstance(value, dict):
        return {scrub(key, limit=limit): scrub_data(item, limit=limit) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(item, limit=limit) for item in value]
    return value


def one_line(text: Any, *, limit: int = DEFAULT_LIMIT) -> str:
    """``scrub(text)`` on one line: a remote's newlines cannot forge lines of a notice or a log."""
    return " ".join(scrub(text, limit=limit).split())


def describe_error(error: BaseException | None, *, limit: int = 1500) -> str:
    """What an exception says, on one line, fit for any sink. Long enough for a gate's error, which names every
    consumer it blames and what to fix for each."""
    return one_line(str(error) if error is not None else "unknown error", limit=limit)


def scrub_exception(error: BaseException) -> BaseException:
    """Scrub what ``error`` and every exception chained to it say, in place: Airflow prints the whole chain (the
    ``During handling of the above exception`` part too) into the task log. Returns ``error``."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        # An exception type whose args cannot be set is left as it is: the masker still applies to it.
        with contextlib.suppress(Exception):
            current.args = (describe_error(current),)
        current = current.__cause__ or current.__context__
    return error
