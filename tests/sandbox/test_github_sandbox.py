"""Tests of the GitHub sandbox against the contract in ci_secret_apis.md section 1, over real HTTP.

Driven with plain ``requests`` (sealing values with PyNaCl as GitHub's docs show) and, where that is the
point, with PyGithub, the client real users run.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from github import Auth, Github
from nacl import encoding, public

from sandbox.github import GitHubSandbox
from sandbox.kosli import KosliSandbox

ADMIN = "ghp_acme_owner"
WRITER = "ghp_acme_app_writer"
READER = "ghp_acme_app_reader"
OUTSIDER = "ghp_nobody"
REPO_ROOT = Path(__file__).resolve().parents[2]


def seal(public_key: dict[str, str], value: str) -> str:
    """GitHub's documented recipe: a libsodium sealed box for the scope's public key, base64-encoded."""
    key = public.PublicKey(public_key["key"].encode(), encoding.Base64Encoder())
    return base64.b64encode(public.SealedBox(key).encrypt(value.encode())).decode()


class GitHub:
    """A started sandbox with org acme, repos acme/app (environment production, canary workflows),
    acme/tools and the public acme/site, plus HTTP helpers."""

    def __init__(self, server: GitHubSandbox) -> None:
        self.server = server
        self.ids = server.seed_document(
            {
                "orgs": {"acme": {}},
                "repos": {
                    "acme/app": {
                        "environments": ["production"],
                        "branches": ["main", "release"],
                        "workflows": [{"file": "canary.yml"}, {"file": "prod.yml", "environment": "production"}],
                    },
                    "acme/tools": {},
                    "acme/site": {"private": False, "workflows": [{"file": "canary.yml"}]},
                },
                "tokens": {
                    ADMIN: {"login": "owner", "orgs": {"acme": "admin"}},
                    WRITER: {"repos": {"acme/app": "write"}},
                    READER: {"repos": {"acme/app": "read"}},
                    OUTSIDER: {},
                },
            }
        )

    def call(self, method: str, path: str, token: str | None = ADMIN, **kwargs: Any) -> requests.Response:
        headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(method, self.server.url + path, headers=headers, timeout=5, **kwargs)

    def put_secret(self, scope: str, name: str, value: str, token: str = ADMIN, **extra: Any) -> requests.Response:
        key = self.call("GET", f"{scope}/secrets/public-key", token).json()
        body = {"encrypted_value": seal(key, value), "key_id": key["key_id"], **extra}
        return self.call("PUT", f"{scope}/secrets/{name}", token, json=body)

    def dispatch(self, workflow: str = "canary.yml", repo: str = "acme/app", **body: Any) -> requests.Response:
        return self.call("POST", f"/repos/{repo}/actions/workflows/{workflow}/dispatches", json={"ref": "main", **body})

    def wait_for_run(self, run_id: int, repo: str = "acme/app") -> dict[str, Any]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            run = self.call("GET", f"/repos/{repo}/actions/runs/{run_id}").json()
            if run["status"] == "completed":
                return run
            time.sleep(0.05)
        raise AssertionError(f"run {run_id} did not complete")


REPO_SCOPE = "/repos/acme/app/actions"
ENV_SCOPE = "/repos/acme/app/environments/production"
ORG_SCOPE = "/orgs/acme/actions"


@pytest.fixture
def kosli() -> Iterator[tuple[KosliSandbox, str]]:
    with KosliSandbox() as server:
        key = server.seed("acme", service_accounts={"ci": {"keys": [{}]}})["ci"][0]["key"]
        yield server, key


@pytest.fixture
def github(kosli: tuple[KosliSandbox, str]) -> Iterator[GitHub]:
    with GitHubSandbox(kosli_url=kosli[0].url, kosli_org="acme", run_seconds=0.15) as server:
        yield GitHub(server)
        server.wait_for_runs()


# -- auth, visibility, errors, headers -------------------------------------------------------------------


def test_token_and_bearer_schemes_both_authenticate(github: GitHub) -> None:
    for scheme in ("token", "Bearer", "bearer"):
        response = requests.get(
            f"{github.server.url}/repos/acme/app", headers={"Authorization": f"{scheme} {ADMIN}"}, timeout=5
        )
        assert response.status_code == 200, scheme
    body = response.json()
    assert body["full_name"] == "acme/app" and body["private"] is True
    assert body["url"] == f"{github.server.url}/repos/acme/app"
    assert body["owner"]["type"] == "Organization" and body["permissions"]["admin"] is True


def test_missing_and_unknown_tokens_are_401(github: GitHub) -> None:
    missing = github.call("GET", "/repos/acme/app", token=None)
    assert missing.status_code == 401 and missing.json()["message"] == "Requires authentication"
    unknown = github.call("GET", "/repos/acme/app", token="ghp_revoked")
    assert unknown.status_code == 401
    assert unknown.json()["message"] == "Bad credentials" and unknown.json()["documentation_url"].startswith("https")
    assert unknown.headers["x-ratelimit-limit"] == "60"


def test_private_repository_is_hidden_from_tokens_without_access(github: GitHub) -> None:
    for path in ("/repos/acme/app", f"{REPO_SCOPE}/secrets/public-key", "/repos/acme/app/environments/production"):
        response = github.call("GET", path, OUTSIDER)
        assert (response.status_code, response.json()["message"]) == (404, "Not Found"), path
    assert github.call("GET", "/repos/acme/site", OUTSIDER).status_code == 200  # public repositories are visible
    assert github.call("GET", "/repos/acme/site/actions/secrets/public-key", OUTSIDER).status_code == 403


def test_secrets_need_admin_rights_on_the_repository(github: GitHub) -> None:
    assert github.call("GET", "/repos/acme/app", READER).json()["permissions"]["admin"] is False
    for token in (READER, WRITER):
        response = github.call("GET", f"{REPO_SCOPE}/secrets/public-key", token)
        assert (response.status_code, response.json()["message"]) == (403, "Must have admin rights to Repository.")


def test_organization_secrets_need_an_org_admin(github: GitHub) -> None:
    github.server.add_token("ghp_member", orgs={"acme": "member"})
    assert github.call("GET", "/orgs/acme", "ghp_member").json()["login"] == "acme"
    for token in ("ghp_member", WRITER):
        assert github.call("GET", f"{ORG_SCOPE}/secrets/public-key", token).status_code == 403
    assert github.call("GET", "/orgs/nope").status_code == 404


def test_every_response_carries_primary_rate_limit_headers(github: GitHub) -> None:
    first = github.call("GET", "/repos/acme/app")
    second = github.call("GET", "/repos/acme/nope")
    assert second.status_code == 404
    for response, used in ((first, 1), (second, 2)):
        assert response.headers["x-ratelimit-limit"] == "5000"
        assert response.headers["x-ratelimit-used"] == str(used)
        assert response.headers["x-ratelimit-remaining"] == str(5000 - used)
        assert response.headers["x-ratelimit-resource"] == "core"
        assert int(response.headers["x-ratelimit-reset"]) > time.time()


def test_primary_rate_limit_is_a_403_until_the_reset(github: GitHub) -> None:
    github.server.apply_settings({"primary_limit": 2, "primary_window": 1.0})
    assert [github.call("GET", "/repos/acme/app").status_code for _ in range(2)] == [200, 200]
    limited = github.call("GET", "/repos/acme/app")
    assert limited.status_code == 403 and limited.json()["message"].startswith("API rate limit exceeded")
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert 0 <= int(limited.headers["x-ratelimit-reset"]) - time.time() <= 2
    assert github.call("GET", "/repos/acme/app", WRITER).status_code == 200  # budgets are per token
    time.sleep(1.05)
    assert github.call("GET", "/repos/acme/app").status_code == 200
    assert github.server.stats()["rate_limited"] == 1


@pytest.mark.parametrize("status", [403, 429])
def test_secondary_rate_limit_counts_writes_only(github: GitHub, status: int) -> None:
    github.server.apply_settings({"secondary_limit": 1, "secondary_window": 1.0, "secondary_status": status})
    assert github.put_secret(REPO_SCOPE, "ONE", "1").status_code == 201
    assert github.call("GET", "/repos/acme/app").status_code == 200  # reads are not content-creating
    limited = github.put_secret(REPO_SCOPE, "TWO", "2")
    assert limited.status_code == status
    assert limited.json()["message"].startswith("You have exceeded a secondary rate limit")
    assert limited.headers["retry-after"] == "1"
    time.sleep(1.05)
    assert github.put_secret(REPO_SCOPE, "TWO", "2").status_code == 201
    assert github.server.stats()["rate_limited"] == 1


def test_the_hourly_content_creation_limit_holds_when_the_minute_limit_does_not(github: GitHub) -> None:
    """GitHub documents 80 content-creating requests a minute and 500 an hour: both are enforced."""
    github.server.apply_settings({"secondary_limit": 80, "secondary_window": 60.0, "secondary_hourly_limit": 2})
    assert [github.put_secret(REPO_SCOPE, f"S{i}", "1").status_code for i in range(2)] == [201, 201]
    limited = github.put_secret(REPO_SCOPE, "S2", "1")
    assert limited.status_code == 403 and limited.json()["message"].startswith("You have exceeded a secondary")
    assert 3590 <= int(limited.headers["retry-after"]) <= 3600, "the wait is until the hour's window ends"


def test_rate_limit_settings_over_http(github: GitHub) -> None:
    settings = requests.post(
        f"{github.server.url}/_sandbox/settings",
        json={"secondary_limit": 1, "secondary_window": 30, "secondary_retry_after": False},
        timeout=5,
    ).json()
    assert (settings["secondary_limit"], settings["secondary_window"], settings["secondary_status"]) == (1, 30.0, 403)
    github.put_secret(REPO_SCOPE, "ONE", "1")
    limited = github.put_secret(REPO_SCOPE, "ONE", "2")
    assert limited.status_code == 403 and "retry-after" not in limited.headers
    off = requests.post(f"{github.server.url}/_sandbox/settings", json={"secondary_limit": None}, timeout=5)
    assert off.json()["secondary_limit"] is None
    assert github.put_secret(REPO_SCOPE, "ONE", "2").status_code == 204
    bad = requests.post(f"{github.server.url}/_sandbox/settings", json={"secondary_status": 500}, timeout=5)
    assert bad.status_code == 400


def test_injected_faults_and_unknown_paths(github: GitHub) -> None:
    github.server.faults.add(r"/public-key$", status=502, times=1)
    failed = github.call("GET", f"{REPO_SCOPE}/secrets/public-key")
    assert failed.status_code == 502 and "x-ratelimit-remaining" in failed.headers
    assert github.call("GET", f"{REPO_SCOPE}/secrets/public-key").status_code == 200
    assert github.call("GET", "/repos/acme/app/nothing-here").json()["message"] == "Not Found"


# -- secrets -------------------------------------------------------------------------------------------------


def test_put_creates_201_then_updates_204_and_the_sandbox_decrypts(github: GitHub) -> None:
    key = github.call("GET", f"{REPO_SCOPE}/secrets/public-key").json()
    assert set(key) == {"key_id", "key"} and len(base64.b64decode(key["key"])) == 32

    created = github.put_secret(REPO_SCOPE, "kosli_api_token", "first")
    assert (created.status_code, created.json()) == (201, {})
    first = github.call("GET", f"{REPO_SCOPE}/secrets/KOSLI_API_TOKEN").json()
    assert set(first) == {"name", "created_at", "updated_at"} and first["name"] == "KOSLI_API_TOKEN"
    time.sleep(1.0)  # updated_at has whole seconds
    updated = github.put_secret(REPO_SCOPE, "KOSLI_API_TOKEN", "second")
    assert (updated.status_code, updated.content) == (204, b"")

    second = github.call("GET", f"{REPO_SCOPE}/secrets/kosli_api_token").json()
    assert second["created_at"] == first["created_at"] and second["updated_at"] > first["updated_at"]
    assert github.server.secret_value("acme/app", "KOSLI_API_TOKEN") == "second"
    assert github.server.secret_value("acme/tools", "KOSLI_API_TOKEN") is None
    assert "second" not in json.dumps(github.call("GET", f"{REPO_SCOPE}/secrets").json())


def test_put_is_validated(github: GitHub) -> None:
    key = github.call("GET", f"{REPO_SCOPE}/secrets/public-key").json()
    other_key = github.call("GET", "/repos/acme/tools/actions/secrets/public-key").json()
    cases = {
        "GITHUB_TOKEN": {"encrypted_value": seal(key, "x"), "key_id": key["key_id"]},
        "1ST": {"encrypted_value": seal(key, "x"), "key_id": key["key_id"]},
        "NO_KEY_ID": {"encrypted_value": seal(key, "x")},
        "WRONG_KEY_ID": {"encrypted_value": seal(key, "x"), "key_id": other_key["key_id"]},
        "SEALED_FOR_ANOTHER_REPO": {"encrypted_value": seal(other_key, "x"), "key_id": key["key_id"]},
        "NOT_BASE64": {"encrypted_value": "%%%", "key_id": key["key_id"]},
        "TOO_BIG": {"encrypted_value": seal(key, "x" * (48 * 1024 + 1)), "key_id": key["key_id"]},
    }
    for name, body in cases.items():
        response = github.call("PUT", f"{REPO_SCOPE}/secrets/{name}", json=body)
        assert response.status_code == 422, name
        assert github.server.secret_value("acme/app", name) is None
    assert github.call("PUT", f"{REPO_SCOPE}/secrets/X", data="{").json()["message"] == "Problems parsing JSON"


def test_rotated_public_key_rejects_the_old_key_id_but_old_secrets_stay_readable(github: GitHub) -> None:
    github.put_secret(REPO_SCOPE, "KEEP", "kept")
    stale = github.call("GET", f"{REPO_SCOPE}/secrets/public-key").json()
    new_key_id = github.server.rotate_public_key("acme/app")
    assert new_key_id != stale["key_id"]
    body = {"encrypted_value": seal(stale, "v"), "key_id": stale["key_id"]}
    assert github.call("PUT", f"{REPO_SCOPE}/secrets/NEW", json=body).status_code == 422
    assert github.put_secret(REPO_SCOPE, "NEW", "v").status_code == 201
    assert github.server.secret_value("acme/app", "KEEP") == "kept"


def test_environment_secrets_are_separate_from_repository_secrets(github: GitHub) -> None:
    environment = github.call("GET", "/repos/acme/app/environments/production").json()
    assert environment["name"] == "production"
    assert environment["url"] == f"{github.server.url}/repos/acme/app/environments/production"
    env_key = github.call("GET", f"{ENV_SCOPE}/secrets/public-key").json()
    assert env_key["key_id"] != github.call("GET", f"{REPO_SCOPE}/secrets/public-key").json()["key_id"]
    assert github.put_secret(ENV_SCOPE, "TOKEN", "env-value").status_code == 201
    assert github.server.secret_value("acme/app", "TOKEN", environment="production") == "env-value"
    assert github.server.secret_value("acme/app", "TOKEN") is None
    assert github.call("GET", "/repos/acme/app/environments/staging").status_code == 404


def test_secret_get_list_and_delete(github: GitHub) -> None:
    for name in ("A", "B", "C"):
        github.put_secret(REPO_SCOPE, name, name.lower())
    page = github.call("GET", f"{REPO_SCOPE}/secrets", params={"per_page": 2})
    assert page.json()["total_count"] == 3 and [s["name"] for s in page.json()["secrets"]] == ["A", "B"]
    assert 'rel="next"' in page.headers["Link"] and "page=2" in page.headers["Link"]
    assert github.call("DELETE", f"{REPO_SCOPE}/secrets/B").status_code == 204
    assert github.call("GET", f"{REPO_SCOPE}/secrets/B").status_code == 404
    assert github.call("DELETE", f"{REPO_SCOPE}/secrets/B").status_code == 404


def test_organization_secret_requires_visibility_and_keeps_selection_when_omitted(github: GitHub) -> None:
    app, tools = github.ids["repos"]["acme/app"], github.ids["repos"]["acme/tools"]
    assert github.put_secret(ORG_SCOPE, "ORG_TOKEN", "v1").status_code == 422  # visibility is required
    assert (
        github.put_secret(ORG_SCOPE, "ORG_TOKEN", "v1", visibility="all", selected_repository_ids=[app]).status_code
        == 422
    )
    created = github.put_secret(ORG_SCOPE, "ORG_TOKEN", "v1", visibility="selected", selected_repository_ids=[app])
    assert created.status_code == 201

    secret = github.call("GET", f"{ORG_SCOPE}/secrets/ORG_TOKEN").json()
    assert secret["visibility"] == "selected"
    assert (
        secret["selected_repositories_url"] == f"{github.server.url}/orgs/acme/actions/secrets/ORG_TOKEN/repositories"
    )
    assert github.put_secret(ORG_SCOPE, "ORG_TOKEN", "v2", visibility="selected").status_code == 204
    assert github.server.secret_metadata("acme", "ORG_TOKEN")["selected_repositories"] == ["acme/app"]

    listed = github.call("GET", f"{ORG_SCOPE}/secrets/ORG_TOKEN/repositories").json()
    assert listed["total_count"] == 1 and listed["repositories"][0]["full_name"] == "acme/app"
    body = {"selected_repository_ids": [app, tools]}
    assert github.call("PUT", f"{ORG_SCOPE}/secrets/ORG_TOKEN/repositories", json=body).status_code == 204
    assert github.call("DELETE", f"{ORG_SCOPE}/secrets/ORG_TOKEN/repositories/{app}").status_code == 204
    assert github.call("PUT", f"{ORG_SCOPE}/secrets/ORG_TOKEN/repositories/999").status_code == 422
    assert github.server.secret_metadata("acme", "ORG_TOKEN")["selected_repositories"] == ["acme/tools"]
    assert github.server.secret_value("acme", "ORG_TOKEN") == "v2"

    github.put_secret(ORG_SCOPE, "ORG_TOKEN", "v3", visibility="private")
    assert "selected_repositories_url" not in github.call("GET", f"{ORG_SCOPE}/secrets/ORG_TOKEN").json()
    assert github.call("PUT", f"{ORG_SCOPE}/secrets/ORG_TOKEN/repositories/{app}").status_code == 409


def test_pygithub_drives_every_scope(github: GitHub) -> None:
    unspaced = {"seconds_between_requests": None, "seconds_between_writes": None}
    client = Github(auth=Auth.Token(ADMIN), base_url=github.server.url, retry=None, **unspaced)
    repo = client.get_repo("acme/app")
    repo.create_secret("REPO_TOKEN", "r")
    repo.get_environment("production").create_secret("ENV_TOKEN", "e")
    org = client.get_organization("acme")
    org.create_secret("ORG_TOKEN", "o", visibility="selected", selected_repositories=[client.get_repo("acme/tools")])

    assert github.server.secret_value("acme/app", "REPO_TOKEN") == "r"
    assert github.server.secret_value("acme/app", "ENV_TOKEN", environment="production") == "e"
    assert github.server.secret_value("acme", "ORG_TOKEN") == "o"
    assert repo.get_secret("REPO_TOKEN").updated_at.timestamp() <= time.time()
    org_secret = org.get_secret("ORG_TOKEN")
    assert org_secret.visibility == "selected"
    assert [r.full_name for r in org_secret.selected_repositories] == ["acme/tools"]


# -- workflows and canary runs -------------------------------------------------------------------------------


def test_dispatch_answers_204_or_the_run_details(github: GitHub) -> None:
    plain = github.dispatch()
    assert (plain.status_code, plain.content) == (204, b"")
    detailed = github.dispatch(return_run_details=True)
    assert detailed.status_code == 200
    run_id = detailed.json()["workflow_run_id"]
    assert detailed.json()["run_url"] == f"{github.server.url}/repos/acme/app/actions/runs/{run_id}"
    github.server.apply_settings({"return_run_details": False})
    assert github.dispatch(return_run_details=True).status_code == 204


def test_dispatch_errors(github: GitHub) -> None:
    assert github.dispatch("nope.yml").status_code == 404
    assert github.dispatch(ref="feature").json()["message"] == "No ref found for: feature"
    assert github.call("POST", "/repos/acme/app/actions/workflows/canary.yml/dispatches", json={}).status_code == 422
    read_only = github.call(
        "POST", "/repos/acme/app/actions/workflows/canary.yml/dispatches", READER, json={"ref": "main"}
    )
    assert read_only.status_code == 403
    writer = github.call(
        "POST", "/repos/acme/app/actions/workflows/canary.yml/dispatches", WRITER, json={"ref": "refs/heads/release"}
    )
    assert writer.status_code == 204


def test_run_goes_queued_in_progress_completed_and_succeeds_with_a_working_key(
    github: GitHub, kosli: tuple[KosliSandbox, str]
) -> None:
    github.put_secret(REPO_SCOPE, "KOSLI_API_TOKEN", kosli[1])
    run_id = github.dispatch(return_run_details=True).json()["workflow_run_id"]
    first = github.call("GET", f"/repos/acme/app/actions/runs/{run_id}").json()
    assert (first["status"], first["conclusion"], first["event"]) == ("queued", None, "workflow_dispatch")
    seen = {first["status"]}
    while (run := github.call("GET", f"/repos/acme/app/actions/runs/{run_id}").json())["status"] != "completed":
        seen.add(run["status"])
        time.sleep(0.02)
    assert seen == {"queued", "in_progress"}
    assert (run["conclusion"], run["run_number"], run["head_branch"]) == ("success", 1, "main")
    assert github.server.runs("acme/app")[0]["log"] == ["Kosli answered HTTP 200"]


@pytest.mark.parametrize(
    ("stored", "log_line"),
    [("a-key-kosli-never-issued", "Kosli answered HTTP 401"), (None, "secret KOSLI_API_TOKEN is not set")],
)
def test_run_fails_with_a_wrong_or_missing_secret(github: GitHub, stored: str | None, log_line: str) -> None:
    if stored:
        github.put_secret(REPO_SCOPE, "KOSLI_API_TOKEN", stored)
    run = github.wait_for_run(github.dispatch(return_run_details=True).json()["workflow_run_id"])
    assert run["conclusion"] == "failure"
    assert github.server.runs("acme/app")[0]["log"][0].startswith(log_line)


def test_run_reads_environment_then_repository_then_organization_secret(
    github: GitHub, kosli: tuple[KosliSandbox, str]
) -> None:
    good = kosli[1]
    github.put_secret(ORG_SCOPE, "KOSLI_API_TOKEN", good, visibility="private")
    assert github.wait_for_run(github.dispatch(return_run_details=True).json()["workflow_run_id"])["conclusion"] == (
        "success"
    )
    github.put_secret(REPO_SCOPE, "KOSLI_API_TOKEN", "repository-level-wrong-key")
    assert github.wait_for_run(github.dispatch(return_run_details=True).json()["workflow_run_id"])["conclusion"] == (
        "failure"
    )
    github.put_secret(ENV_SCOPE, "KOSLI_API_TOKEN", good)
    prod = github.dispatch("prod.yml", return_run_details=True).json()["workflow_run_id"]
    assert github.wait_for_run(prod)["conclusion"] == "success"
    # A private-visibility organization secret does not reach a public repository.
    site = github.dispatch(repo="acme/site", return_run_details=True).json()["workflow_run_id"]
    assert github.wait_for_run(site, repo="acme/site")["conclusion"] == "failure"


def test_workflow_and_runs_listing(github: GitHub) -> None:
    workflow = github.call("GET", "/repos/acme/app/actions/workflows/canary.yml").json()
    assert (workflow["path"], workflow["state"]) == (".github/workflows/canary.yml", "active")
    by_id = github.call("GET", f"/repos/acme/app/actions/workflows/{workflow['id']}").json()
    assert by_id["path"] == workflow["path"]
    before = time.time()
    ids = [github.dispatch(return_run_details=True).json()["workflow_run_id"] for _ in range(3)]
    github.dispatch("prod.yml")
    runs_path = "/repos/acme/app/actions/workflows/canary.yml/runs"
    listed = github.call("GET", runs_path, params={"per_page": 2, "event": "workflow_dispatch"})
    assert listed.json()["total_count"] == 3
    assert [run["id"] for run in listed.json()["workflow_runs"]] == ids[::-1][:2]  # newest first
    assert 'rel="next"' in listed.headers["Link"]
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before + 3600))
    assert github.call("GET", runs_path, params={"created": f">={stamp}"}).json()["total_count"] == 0
    assert github.call("GET", runs_path, params={"event": "push"}).json()["total_count"] == 0


# -- seeding, test API and CLI -------------------------------------------------------------------------------


def test_seed_document_over_http_and_secret_admin_endpoint(github: GitHub) -> None:
    seeded = requests.post(
        f"{github.server.url}/_sandbox/seed",
        json={
            "repos": {"acme/svc": {"secrets": {"OLD_TOKEN": "old"}, "environments": {"qa": {"secrets": {"T": "q"}}}}},
            "orgs": {
                "acme": {
                    "secrets": {"ORG_T": {"value": "o", "visibility": "selected", "selected_repositories": ["svc"]}}
                }
            },
        },
        timeout=5,
    )
    assert seeded.status_code == 201 and "acme/svc" in seeded.json()["repos"]
    read = requests.get(
        f"{github.server.url}/_sandbox/secret", params={"target": "acme/svc", "name": "OLD_TOKEN"}, timeout=5
    )
    assert read.json() == {"value": "old"}
    assert github.server.secret_value("acme/svc", "T", environment="qa") == "q"
    assert github.server.secret_metadata("acme", "ORG_T")["selected_repositories"] == ["acme/svc"]
    bad = requests.post(
        f"{github.server.url}/_sandbox/seed", json={"tokens": {"t": {"repos": {"a/b": "owner"}}}}, timeout=5
    )
    assert bad.status_code == 400


def test_cli_serves_a_seeded_sandbox(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"repos": {"acme/app": {}}, "tokens": {"ghp_cli": {"repos": {"acme/app": "admin"}}}}))
    ready = tmp_path / "ready.json"
    # Registers the module the way sandbox/__main__.py's SANDBOXES will, then runs the real CLI.
    program = (
        "import sys, sandbox.__main__ as cli; cli.SANDBOXES['github'] = 'sandbox.github'; "
        "sys.exit(cli.main(sys.argv[1:]))"
    )
    command = [sys.executable, "-c", program, "github", "--seed", str(seed), "--ready-file", str(ready)]
    command += ["--secondary-limit", "5", "--run-seconds", "0.1"]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 15
        while not ready.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), process.stderr.read() if process.poll() is not None else "no ready file"
        url = json.loads(ready.read_text())["url"]
        response = requests.get(f"{url}/repos/acme/app", headers={"Authorization": "token ghp_cli"}, timeout=5)
        assert response.status_code == 200
        settings = requests.get(f"{url}/_sandbox/settings", timeout=5).json()
        assert (settings["secondary_limit"], settings["run_seconds"]) == (5, 0.1)
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0


# -- the request log --------------------------------------------------------------------------------------------


def test_the_request_log_has_each_request_with_its_token_digest_and_times(github: GitHub) -> None:
    github.server.apply_settings({"latency": 0.05})
    github.put_secret("/repos/acme/app/actions", "ONE", "v", token=ADMIN)
    github.call("GET", "/repos/acme/app/actions/secrets", READER)

    served = github.server.request_log.entries()
    assert [(entry.method, entry.route) for entry in served] == [
        ("GET", "get_public_key"),
        ("PUT", "put_secret"),
        ("GET", "list_secrets"),
    ]
    assert all(entry.ended - entry.started >= 0.05 for entry in served)
    writes = github.server.request_log.entries(credential=ADMIN, mutating=True)
    assert [entry.route for entry in writes] == ["put_secret"]
    assert github.server.request_log.entries(credential=READER)[0].route == "list_secrets"
    over_http = requests.get(f"{github.server.url}/_sandbox/requests", timeout=5).text
    assert ADMIN not in over_http and READER not in over_http and '"put_secret"' in over_http
    github.server.reset_stats()
    assert github.server.request_log.entries() == []


def test_repository_environments_are_listed_and_paged(github: GitHub) -> None:
    github.server.add_environment("acme/app", "staging")
    listed = github.call("GET", "/repos/acme/app/environments", params={"per_page": 1})
    assert listed.status_code == 200
    body = listed.json()
    assert body["total_count"] == 2 and [environment["name"] for environment in body["environments"]] == ["production"]
    assert 'rel="next"' in listed.headers["Link"] and "page=2" in listed.headers["Link"]
    second = github.call("GET", "/repos/acme/app/environments", params={"per_page": 1, "page": 2}).json()
    assert [environment["name"] for environment in second["environments"]] == ["staging"]
    assert github.call("GET", "/repos/acme/tools/environments").json() == {"total_count": 0, "environments": []}
    assert github.call("GET", "/repos/acme/app/environments", OUTSIDER).status_code == 404


def test_organization_repositories_are_a_plain_array_filtered_by_type_and_paged(github: GitHub) -> None:
    newest_first = github.call("GET", "/orgs/acme/repos").json()
    assert [repository["full_name"] for repository in newest_first] == ["acme/site", "acme/tools", "acme/app"]
    by_name = {"sort": "full_name"}
    listed = github.call("GET", "/orgs/acme/repos", params={**by_name, "per_page": 2})
    assert listed.status_code == 200 and isinstance(listed.json(), list)
    assert [repository["full_name"] for repository in listed.json()] == ["acme/app", "acme/site"]
    assert 'rel="next"' in listed.headers["Link"] and "page=2" in listed.headers["Link"]
    rest = github.call("GET", "/orgs/acme/repos", params={**by_name, "per_page": 2, "page": 2}).json()
    assert [repository["full_name"] for repository in rest] == ["acme/tools"]
    private = github.call("GET", "/orgs/acme/repos", params={**by_name, "type": "private"}).json()
    assert [repository["full_name"] for repository in private] == ["acme/app", "acme/tools"]
    public_only = github.call("GET", "/orgs/acme/repos", params={"type": "public"}).json()
    assert [repository["full_name"] for repository in public_only] == ["acme/site"]
    # A token sees the public repositories and those it has access to, as on GitHub.
    seen = github.call("GET", "/orgs/acme/repos", READER, params=by_name).json()
    assert [repository["full_name"] for repository in seen] == ["acme/app", "acme/site"]
    assert github.call("GET", "/orgs/nobody/repos").status_code == 404
