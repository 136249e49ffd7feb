"""Bounded retry with exponential backoff, shared by every client that talks to a remote service."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from kosli_rotation.scrub import describe_error

T = TypeVar("T")
log = logging.getLogger(__name__)


#: Statuses that say "the same request may work later": request timeout, too early, too many requests, and every
#: server error but 501 (Not Implemented: the server will not learn the method by the next attempt).
TRANSIENT_4XX = frozenset({408, 425, 429})
NOT_TRANSIENT_5XX = frozenset({501})


def is_transient_status(status: int) -> bool:
    """Whether an answer with this HTTP status is worth the same request again, later (every client's rule)."""
    return status in TRANSIENT_4XX or (500 <= status <= 599 and status not in NOT_TRANSIENT_5XX)


def backoff_delay(attempt: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Delay before retry number ``attempt`` (0-based): 1, 2, 4, ... seconds, capped, with 10% jitter."""
    delay = min(cap, base * (2**attempt))
    return delay * random.uniform(0.9, 1.1)


def retry_after_seconds(value: str | None) -> float | None:
    """Parse a ``Retry-After`` header given in seconds; HTTP dates fall back to our own backoff."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def call_with_retries(
    action: Callable[[], T],
    *,
    delay_for: Callable[[Exception, int], float | None],
    what: str,
    max_attempts: int | None = 5,
    deadline: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
    describe: Callable[[Exception], str] = describe_error,
) -> T:
    """Run ``action`` until it succeeds, ``delay_for`` says stop (returns None), or the budget is spent.

    ``delay_for(error, attempt)`` decides per error whether to retry and how long to wait, so a
    429 can honour ``Retry-After`` while a 401 stops at once. The last error is re-raised. ``describe`` says
    an error in the retry warning (scrubbed, one line).
    """
    attempt = 0
    while True:
        try:
            return action()
        except Exception as error:
            delay = delay_for(error, attempt)
            attempt += 1
            out_of_attempts = max_attempts is not None and attempt >= max_attempts
            past_deadline = deadline is not None and time.monotonic() + (delay or 0) > deadline
            if delay is None or out_of_attempts or past_deadline:
                raise
            said = describe(error)
        # Logged outside the handler: a log record made inside it carries the raw error as its context, which a
        # failing log handler prints in full.
        log.warning("%s failed (%s); retry %d in %.1fs", what, said, attempt, delay)
        sleep(delay)
