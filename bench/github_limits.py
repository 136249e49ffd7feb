"""What GitHub's documented limits allow one token, and how closely a run kept to GitHub's pace.

GitHub asks integrations to send one token's mutating requests one at a time and at least a second apart, and it
rejects content-creating requests beyond about 80 a minute and 500 an hour (``../shared/reference/
field_notes_2026-12.md`` §5). The bound a benchmark compares against is the least time those rules and the
sandbox's latency leave for a number of writes; how closely a run kept to them is read from the GitHub sandbox's
request log (each request's token digest and when it arrived and was answered).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

#: GitHub: at least a second between one token's mutating requests (from one's end to the next one's start).
SPACING = 1.0
#: Clock resolution allowed when reading gaps from the log.
TOLERANCE = 0.01


def least_write_time(
    writes: int, latency: float, *, per_minute: int = 80, per_hour: int = 500, window: float = 60.0
) -> float:
    """The least time from the first write's start to the last one's end: one at a time, ``SPACING`` apart, at
    most ``per_minute`` per ``window`` and ``per_hour`` an hour (windows start at their first write, as the sandbox
    counts them)."""
    start, end = 0.0, 0.0
    windows = {"minute": [0.0, 0, window, per_minute], "hour": [0.0, 0, 3600.0, per_hour]}
    for _ in range(writes):
        for name in ("hour", "minute"):  # an hour's wait restarts the minute's window too
            opened, used, length, limit = windows[name]
            if start - opened >= length:
                windows[name][:2] = [start, 0]
            elif used >= limit:
                start = opened + length
                windows[name][:2] = [start, 0]
        for counts in windows.values():
            counts[1] += 1
        end = start + latency
        start = end + SPACING
    return end


def github_bound(writes: int, latency: float, **limits: Any) -> float:
    """The least time for ``writes`` GitHub secrets of one token: a public-key read before the first write, the
    paced writes, and a listing that verifies the last one."""
    return latency + least_write_time(writes, latency, **limits) + latency if writes else 0.0


def pace_breaks(github: Any) -> int:
    """Mutating requests that started while the token's previous one ran or less than ``SPACING`` after it ended
    (``github``: the GitHub sandbox, whose request log names each token by a digest)."""
    by_token: dict[str, list[Any]] = defaultdict(list)
    for served in github.request_log.entries(mutating=True):
        by_token[served.credential].append(served)
    return sum(
        later.started - earlier.ended < SPACING - TOLERANCE
        for served in by_token.values()
        for earlier, later in itertools.pairwise(served)
    )
