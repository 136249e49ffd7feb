"""A log of the requests a sandbox served, with when each started and ended, for tests that check pacing.

Each entry names the credential by a short digest (never the credential), the method, the route and the
``time.monotonic()`` times the request arrived and was answered. ``mutating`` picks the POST, PATCH, PUT and
DELETE requests GitHub asks integrations to send one at a time and a second apart.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass

MUTATING = frozenset({"POST", "PATCH", "PUT", "DELETE"})


@dataclass(frozen=True)
class Served:
    credential: str  # sha256 prefix of the credential presented ("" for none)
    method: str
    route: str
    started: float
    ended: float


def credential_label(credential: str | None) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()[:12] if credential else ""


class RequestLog:
    """Thread-safe: the sandbox serves each request on its own thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[Served] = []

    def add(self, entry: Served) -> None:
        with self._lock:
            self._entries.append(entry)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def entries(self, *, credential: str | None = None, mutating: bool = False) -> list[Served]:
        """What was served, by start time; only that ``credential``'s (the credential itself), only writes."""
        label = credential_label(credential) if credential is not None else None
        with self._lock:
            chosen = [
                entry
                for entry in self._entries
                if (label is None or entry.credential == label) and (not mutating or entry.method in MUTATING)
            ]
        return sorted(chosen, key=lambda entry: entry.started)

    def as_json(self) -> list[dict[str, object]]:
        return [entry.__dict__ for entry in self.entries()]
