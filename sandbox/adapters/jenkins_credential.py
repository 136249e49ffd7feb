"""Jenkins: a Secret-text credential ``kosli-api-token-{target}`` in the system store of the Jenkins sandbox,
optionally with a canary job ``canaries/kosli-check-{target}`` that binds it and checks it against Kosli.

Quirks: ``canary`` (add the canary job). The rotator is a Jenkins user with every permission, by API token; the
sandbox serves plain HTTP, so the connection says ``use_https: false`` (Jenkins connections default to HTTPS).
"""

from __future__ import annotations

import contextlib
from typing import Any

from sandbox.adapters.base import LOOPBACK, ROTATOR, RUNNING, SeededConsumer
from sandbox.adapters.served import ServedAdapter, invalid_token
from sandbox.jenkins import JenkinsSandbox

CONN_ID = "jenkins_default"


class JenkinsCredentialAdapter(ServedAdapter):
    kind = "jenkins_credential"
    service = "Jenkins"
    write_path = r"/(config\.xml|createCredentials)$"
    write_methods = frozenset({"POST"})

    server: JenkinsSandbox

    def start(self, stack: contextlib.ExitStack) -> None:
        settings = self.settings
        self.server = stack.enter_context(
            JenkinsSandbox(
                kosli_url=settings.kosli_url,
                kosli_org=settings.org,
                canary_seconds=settings.canary_seconds,
                quiet_period=min(0.05, settings.canary_seconds),
            )
        )
        stack.callback(self.server.wait_for_builds)
        token = self.server.add_user(ROTATOR)
        self.url = self.server.url
        self.connections[CONN_ID] = {
            "conn_type": "jenkins",
            "host": LOOPBACK,
            "port": int(self.url.rsplit(":", 1)[1]),
            "login": ROTATOR,
            "password": token,
            "extra": {"use_https": False},
        }

    def wrong_credentials(self) -> dict[str, dict[str, Any]]:
        return {CONN_ID: {**self.connections[CONN_ID], "password": "11" + invalid_token("", 32)}}

    def seed(self, name: str, value: str | None, target: str, *, canary: bool = False) -> SeededConsumer:
        """``value`` None: no credential of that id exists yet."""
        jenkins, credential_id = self.server, f"kosli-api-token-{target}"
        if value is not None:
            jenkins.put_credential(credential_id, value, description=f"Kosli API key ({name})")
        entry: dict[str, Any] = {"name": name, "kind": self.kind, "credential_id": credential_id}
        job = f"canaries/kosli-check-{target}"
        canary_runs = None
        if canary:
            jenkins.add_job(job, credential_id=credential_id)
            entry["canary"] = {"job": job}

            def canary_runs() -> list[str]:
                return [
                    RUNNING if build["building"] or build["result"] is None else build["result"].lower()
                    for build in jenkins.builds(job)
                ]

        def read() -> str | None:
            try:
                return jenkins.stored_credential(credential_id)["secret"]
            except LookupError:
                return None

        return SeededConsumer(
            entry,
            f"Jenkins credential {credential_id}",
            credential_id,
            read=read,
            write_mark=lambda: self.requests_to("create_credentials", "update_credential_config"),
            canary_runs=canary_runs,
            canary=f"job {job}" if canary else "",
        )


ADAPTER = JenkinsCredentialAdapter
