"""What the adapters of kinds reached over HTTP through a ``sandbox.server.SandboxServer`` share: their write
requests answered with injected statuses, and the requests the service saw.

A subclass sets ``server`` in ``start`` (the kind's sandbox, or a ``ForwardProxy`` in front of a real service),
and names the requests that write (``write_path``, a regex searched in the path, and ``write_methods``).
"""

from __future__ import annotations

import secrets
from typing import Any, ClassVar

from sandbox.adapters.base import FixtureAdapter, InjectedFault
from sandbox.server import Request, SandboxServer


def _never(_: Request) -> bool:
    return False


def invalid_token(prefix: str, length: int = 36) -> str:
    """A credential of the service's shape that it never issued (a fresh one per call: no fixed string to leak)."""
    return prefix + secrets.token_hex(length)[:length]


class ServedAdapter(FixtureAdapter):
    """A fixture adapter whose service is a ``SandboxServer`` (``server``)."""

    #: The paths (regex, searched) and methods of the requests that write a target.
    write_path: ClassVar[str]
    write_methods: ClassVar[frozenset[str]] = frozenset({"POST", "PUT", "PATCH"})
    server: SandboxServer

    def fail_writes(self, status: int, *, times: int = 0, headers: dict[str, str] | None = None) -> InjectedFault:
        methods = self.write_methods
        rule = self.server.faults.add(
            self.write_path,
            status=status,
            headers=dict(headers or {}),
            times=times or None,
            when=lambda request: request.method in methods,
        )

        def remove() -> None:
            rule.when = _never  # the rule stays listed (its count with it) but matches nothing any more

        return InjectedFault(lambda: rule.fired, remove)

    def requests_served(self) -> int:
        return int(self.server.stats()["total_requests"])

    def requests_to(self, *handlers: str) -> int:
        """Requests the sandbox served with these handlers (it counts every request by handler)."""
        counts: dict[str, Any] = self.server.stats()["requests"]
        return sum(int(counts.get(handler, 0)) for handler in handlers)
