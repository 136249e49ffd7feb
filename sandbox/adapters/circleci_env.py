"""CircleCI: a variable of context ``kosli-{target}`` of the org ``gh/{org}`` in the CircleCI sandbox, optionally
with a project ``gh/{org}/{target}`` whose canary pipeline reads it and checks it against Kosli.

Quirks: ``canary`` (add that project, which runs the canary), ``by_name`` (the entry names the context by owner
and name instead of its id). The rotator is an admin of the org, by personal API token.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sandbox.adapters.base import FAILURE, ROTATOR, RUNNING, SUCCESS, VARIABLE, SeededConsumer
from sandbox.adapters.served import ServedAdapter, invalid_token
from sandbox.circleci import CircleCiSandbox

CONN_ID = "circleci_default"


class CircleCiEnvAdapter(ServedAdapter):
    kind = "circleci_env"
    service = "CircleCI"
    write_path = r"/environment-variable/[^/]+$|/envvar$"
    write_methods = frozenset({"PUT", "POST"})

    server: CircleCiSandbox

    @property
    def owner(self) -> str:
        """The org's slug, as CircleCI names a GitHub organization."""
        return f"gh/{self.settings.org}"

    def start(self, stack: contextlib.ExitStack) -> None:
        settings = self.settings
        self.server = stack.enter_context(
            CircleCiSandbox(
                kosli_url=settings.kosli_url,
                kosli_org=settings.org,
                canary_seconds=settings.canary_seconds,
                setup_seconds=min(0.05, settings.canary_seconds),
            )
        )
        stack.callback(self.server.wait_for_workflows)
        self.server.add_org(self.owner)
        token = self.server.add_user(ROTATOR, {self.owner: "admin"})
        self.url = self.server.url
        self.connections[CONN_ID] = {"conn_type": "http", "host": self.url, "password": token}

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        return {CONN_ID: {**self.connections[CONN_ID], "password": invalid_token("CCIPAT_", 40)}}

    def seed(
        self, name: str, value: str | None, target: str, *, canary: bool = False, by_name: bool = False
    ) -> SeededConsumer:
        """``value`` None: the context exists, the variable not yet."""
        circleci, context = self.server, f"kosli-{target}"
        context_id = circleci.add_context(self.owner, context)
        if value is not None:
            circleci.set_context_variable(context_id, VARIABLE, value)
        where: dict[str, Any] = (
            {"context": {"owner_slug": self.owner, "name": context}} if by_name else {"context_id": context_id}
        )
        entry: dict[str, Any] = {"name": name, "kind": self.kind, **where}
        project = f"{self.owner}/{target}"
        canary_runs = None
        if canary:
            circleci.add_project(project, contexts=[context])
            entry["canary"] = {"project_slug": project}

            def canary_runs() -> list[str]:
                return [
                    {"success": SUCCESS, "failed": FAILURE}.get(workflow["status"], RUNNING)
                    for pipeline in circleci.pipelines(project)
                    for workflow in pipeline["workflows"]
                ]

        def read() -> str | None:
            held = circleci.context_variable(context_id, VARIABLE)
            return held["value"] if held else None

        return SeededConsumer(
            entry,
            f"CircleCI context {self.owner}/{context}, variable {VARIABLE}",
            context_id,
            read=read,
            write_mark=lambda: self.requests_to("put_context_variable"),
            canary_runs=canary_runs,
            canary=f"pipeline of {project}" if canary else "",
        )


ADAPTER = CircleCiEnvAdapter
