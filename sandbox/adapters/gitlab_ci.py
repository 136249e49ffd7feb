"""GitLab CI/CD: a masked, raw variable of project ``{org}/platform/{target}`` in the GitLab sandbox.

Quirks: ``masked`` and ``raw`` (the variable's flags, both on by default). The rotator's token is a maintainer of
the org's group.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sandbox.adapters.base import ROTATOR, VARIABLE, SeededConsumer
from sandbox.adapters.served import ServedAdapter, invalid_token
from sandbox.gitlab import GitLabSandbox

CONN_ID = "gitlab_default"


class GitLabCiAdapter(ServedAdapter):
    kind = "gitlab_ci"
    service = "GitLab"
    write_path = r"/variables(/[^/]+)?$"
    write_methods = frozenset({"POST", "PUT"})

    server: GitLabSandbox

    def start(self, stack: contextlib.ExitStack) -> None:
        self.server = stack.enter_context(GitLabSandbox())
        self.server.add_group(self.settings.org)
        token = self.server.add_token({self.settings.org: "maintainer"}, name=ROTATOR)
        self.url = self.server.url
        self.connections[CONN_ID] = {"conn_type": "http", "host": self.url, "password": token}

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        return {CONN_ID: {**self.connections[CONN_ID], "password": invalid_token("glpat-", 20)}}

    def seed(
        self, name: str, value: str | None, target: str, *, masked: bool = True, raw: bool = True
    ) -> SeededConsumer:
        """``value`` None: the project exists, the variable not yet."""
        gitlab, project = self.server, f"{self.settings.org}/platform/{target}"
        gitlab.add_project(project)
        if value is not None:
            gitlab.set_variable(VARIABLE, value, project=project, masked=masked, raw=raw)
        return SeededConsumer(
            {"name": name, "kind": self.kind, "project": project},
            f"GitLab {project}, variable {VARIABLE}",
            project,
            read=lambda: gitlab.stored_value(VARIABLE, project=project),
            write_mark=lambda: gitlab.stats()["variable_writes"],
        )


ADAPTER = GitLabCiAdapter
