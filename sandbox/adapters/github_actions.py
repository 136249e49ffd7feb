"""GitHub Actions: a repository secret of the org (``{org}/{target}``) in the GitHub sandbox, optionally with a
``workflow_dispatch`` canary workflow that sends the secret to the Kosli sandbox.

Quirks: ``canary`` (add the canary workflow, ``workflow`` its file name). The rotator's token is an org admin's.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sandbox.adapters.base import ROTATOR, RUNNING, VARIABLE, SeededConsumer
from sandbox.adapters.served import ServedAdapter, invalid_token
from sandbox.github import GitHubSandbox

CONN_ID = "github_default"


class GithubActionsAdapter(ServedAdapter):
    kind = "github_actions"
    service = "GitHub"
    write_path = r"/actions/secrets/[^/]+$"
    write_methods = frozenset({"PUT"})

    server: GitHubSandbox

    def start(self, stack: contextlib.ExitStack) -> None:
        settings = self.settings
        self.server = stack.enter_context(
            GitHubSandbox(kosli_url=settings.kosli_url, kosli_org=settings.org, run_seconds=settings.canary_seconds)
        )
        stack.callback(self.server.wait_for_runs)
        self.server.add_org(settings.org)
        token = self.server.add_token(invalid_token("ghp_"), login=ROTATOR, orgs={settings.org: "admin"})
        self.url = self.server.url
        self.connections[CONN_ID] = {"conn_type": "github", "host": self.url, "password": token}

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        return {CONN_ID: {**self.connections[CONN_ID], "password": invalid_token("ghp_")}}

    def seed(
        self,
        name: str,
        value: str | None,
        target: str,
        *,
        canary: bool = False,
        workflow: str = "kosli-canary.yml",
    ) -> SeededConsumer:
        """``value`` None: the repository exists, the secret not yet."""
        github, repository = self.server, f"{self.settings.org}/{target}"
        github.add_repo(repository)
        if value is not None:
            github.set_secret(repository, VARIABLE, value)
        entry: dict[str, Any] = {"name": name, "kind": self.kind, "repository": repository}
        canary_runs = None
        if canary:
            github.add_workflow(repository, workflow, secret=VARIABLE)
            entry["canary"] = {"workflow": workflow}

            def canary_runs() -> list[str]:
                runs = [run for run in github.runs(repository) if run["workflow"] == workflow]
                return [run["conclusion"] if run["status"] == "completed" else RUNNING for run in runs]

        return SeededConsumer(
            entry,
            f"GitHub {repository}, secret {VARIABLE}",
            repository,
            read=lambda: github.secret_value(repository, VARIABLE),
            write_mark=lambda: self.requests_to("put_secret"),
            canary_runs=canary_runs,
            canary=f"workflow {workflow}" if canary else "",
        )


ADAPTER = GithubActionsAdapter
