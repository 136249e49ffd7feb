"""A forwarding HTTP proxy on the sandbox framework, so that fault rules (``hold`` included) apply to a real
service the tests run, such as OpenBao.

Point the client at :attr:`ForwardProxy.url` instead of the service: every request is forwarded to the upstream
with its method, path, query, headers and body, and the upstream's status, headers and body come back. Fault
rules, latency and stats work as in every sandbox; ``/_sandbox/`` stays the proxy's own admin API.

    with ForwardProxy(openbao.url) as proxy:
        rule = proxy.faults.add(r"/v1/secret/data/", method="POST", action="hold")
"""

from __future__ import annotations

from typing import Any, Self
from urllib.parse import urlencode

import requests

from sandbox.server import Request, Response, SandboxServer, json_response, route

#: Every path but the proxy's own admin API.
FORWARDED = r"(?!/_sandbox/).*"
#: Headers that describe one connection, not the message (RFC 9110 7.6.1), or that the proxy recomputes.
NOT_FORWARDED = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",  # requests decodes the upstream's body, so it is sent on as it is now: plain
    }
)


class ForwardProxy(SandboxServer):
    """Forwards every request to ``upstream`` (``http://host:port``) and its answer back."""

    def __init__(self, upstream: str, *, timeout: float = 60.0, **options: Any) -> None:
        super().__init__(**options)
        self.upstream = upstream.rstrip("/")
        self.timeout = timeout

    def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        super().start(host, port)
        # Vault's LIST is not a method the sandbox framework dispatches; forward it like the others.
        handler = self._httpd.RequestHandlerClass  # type: ignore[union-attr]
        handler.do_LIST = handler._dispatch  # type: ignore[attr-defined]
        return self

    @route("GET", FORWARDED)
    @route("POST", FORWARDED)
    @route("PUT", FORWARDED)
    @route("PATCH", FORWARDED)
    @route("DELETE", FORWARDED)
    @route("LIST", FORWARDED)
    def forward(self, request: Request) -> Response:
        headers = {name: value for name, value in request.headers.items() if name.lower() not in NOT_FORWARDED}
        query = urlencode(request.query, doseq=True)
        url = f"{self.upstream}{request.path}" + (f"?{query}" if query else "")
        try:
            answer = requests.request(
                request.method,
                url,
                headers=headers,
                data=request.body or None,
                timeout=self.timeout,
                allow_redirects=False,
            )
        except requests.RequestException as error:
            return json_response(502, {"errors": [f"proxy: upstream {self.upstream} unreachable: {error}"]})
        kept = {name: value for name, value in answer.headers.items() if name.lower() not in NOT_FORWARDED}
        return Response(answer.status_code, answer.content, kept)
