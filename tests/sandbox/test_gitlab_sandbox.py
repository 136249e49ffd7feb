"""Tests of the GitLab sandbox's REST v4 variables contract, over real HTTP (requests, and python-gitlab)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import gitlab
import pytest
import requests

from sandbox.gitlab import GitLabSandbox

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECT = "acme/platform/app"
ENCODED = quote(PROJECT, safe="")
BAD_TYPE = "variable_type does not have a valid value"


class GitLab:
    """A started sandbox: group acme, projects acme/platform/app (private) and acme/docs (public), and tokens."""

    def __init__(self, server: GitLabSandbox) -> None:
        self.server = server
        self.project_id = server.add_project(PROJECT)
        server.add_project("acme/docs", visibility="public")
        self.maintainer = server.add_token({PROJECT: "maintainer"}, name="maintainer")
        self.developer = server.add_token({PROJECT: "developer"}, name="developer")
        self.owner = server.add_token({"acme": "owner"}, name="owner")
        self.group_maintainer = server.add_token({"acme": 40}, name="group-maintainer")
        self.outsider = server.add_token({}, name="outsider")
        self.reader = server.add_token({PROJECT: "maintainer"}, name="reader", scopes=["read_api"])

    def call(
        self, method: str, path: str, token: str | None = None, *, bearer: bool = False, **kwargs: Any
    ) -> requests.Response:
        headers = {}
        if token:
            headers = {"Authorization": f"Bearer {token}"} if bearer else {"PRIVATE-TOKEN": token}
        return requests.request(method, f"{self.server.url}/api/v4{path}", headers=headers, timeout=5, **kwargs)

    def variables(self, suffix: str = "", owner: str = f"projects/{ENCODED}") -> str:
        return f"/{owner}/variables{suffix}"

    def create(self, token: str | None = None, **body: Any) -> requests.Response:
        return self.call("POST", self.variables(), token or self.maintainer, json={"key": "K", "value": "v", **body})


@pytest.fixture
def gl() -> Iterator[GitLab]:
    with GitLabSandbox() as server:
        yield GitLab(server)


# -- auth, visibility, roles -----------------------------------------------------------------------------


def test_private_token_and_bearer_both_authenticate(gl: GitLab) -> None:
    assert gl.call("GET", gl.variables(), gl.maintainer).json() == []
    assert gl.call("GET", gl.variables(), gl.maintainer, bearer=True).status_code == 200
    user = gl.call("GET", "/user", gl.maintainer).json()
    assert (user["username"], user["state"]) == ("maintainer", "active")
    assert gl.call("GET", "/personal_access_tokens/self", gl.reader).json()["scopes"] == ["read_api"]


@pytest.mark.parametrize("token", [None, "glpat-unknown"])
def test_missing_or_unknown_token_is_401(gl: GitLab, token: str | None) -> None:
    for path in (gl.variables(), "/user"):
        response = gl.call("GET", path, token)
        assert (response.status_code, response.json()) == (401, {"message": "401 Unauthorized"})


def test_revoked_token_is_401(gl: GitLab) -> None:
    gl.server.revoke_token(gl.maintainer)
    assert gl.call("GET", gl.variables(), gl.maintainer).status_code == 401


def test_project_and_group_by_id_or_encoded_path(gl: GitLab) -> None:
    by_path = gl.call("GET", f"/projects/{ENCODED}", gl.maintainer).json()
    by_id = gl.call("GET", f"/projects/{gl.project_id}", gl.maintainer).json()
    assert by_path == by_id
    assert (by_path["path_with_namespace"], by_path["namespace"]["full_path"]) == (PROJECT, "acme/platform")
    assert by_path["permissions"]["project_access"]["access_level"] == 40
    upper = gl.call("GET", f"/projects/{quote(PROJECT.upper(), safe='')}", gl.maintainer)
    assert upper.json()["id"] == gl.project_id  # GitLab paths are case-insensitive

    group = gl.call("GET", "/groups/acme%2Fplatform", gl.owner).json()
    assert (group["full_path"], group["parent_id"]) == ("acme/platform", 1)
    owner_view = gl.call("GET", f"/projects/{ENCODED}", gl.owner).json()["permissions"]
    assert owner_view == {"project_access": None, "group_access": {"access_level": 50, "notification_level": 3}}


def test_what_you_cannot_see_is_404(gl: GitLab) -> None:
    for token in (gl.outsider, None):
        response = gl.call("GET", f"/projects/{ENCODED}", token)
        assert (response.status_code, response.json()) == (404, {"message": "404 Project Not Found"})
    missing_group = gl.call("GET", "/groups/nope", gl.owner)
    assert (missing_group.status_code, missing_group.json()) == (404, {"message": "404 Group Not Found"})
    assert gl.call("GET", gl.variables(), gl.outsider).json() == {"message": "404 Project Not Found"}
    assert gl.call("GET", "/projects/acme%2Fdocs", None).status_code == 200  # public


def test_only_maintainers_manage_project_variables_and_owners_group_variables(gl: GitLab) -> None:
    forbidden = {"message": "403 Forbidden"}
    for method in ("GET", "POST"):
        response = gl.call(method, gl.variables(), gl.developer, json={"key": "K", "value": "v"})
        assert (response.status_code, response.json()) == (403, forbidden)
    public = gl.call("GET", gl.variables(owner="projects/acme%2Fdocs"), gl.outsider)
    assert (public.status_code, public.json()) == (403, forbidden)  # visible, but not theirs to manage
    assert gl.call("GET", gl.variables(), gl.owner).status_code == 200  # the group role is inherited

    assert gl.call("GET", gl.variables(owner="groups/acme"), gl.group_maintainer).json() == forbidden
    created = gl.call("POST", gl.variables(owner="groups/acme"), gl.owner, json={"key": "G", "value": "g"})
    assert created.status_code == 201
    assert gl.server.stored_value("G", group="acme") == "g"


def test_read_api_scope_reads_but_cannot_write(gl: GitLab) -> None:
    assert gl.call("GET", gl.variables(), gl.reader).status_code == 200
    refused = gl.create(gl.reader)
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"


# -- variables CRUD --------------------------------------------------------------------------------------


def test_create_get_update_delete(gl: GitLab) -> None:
    created = gl.create(value="first", protected=True, description="d")
    assert created.status_code == 201
    assert created.json() == {
        "variable_type": "env_var",
        "key": "K",
        "value": "first",
        "hidden": False,
        "protected": True,
        "masked": False,
        "raw": False,
        "environment_scope": "*",
        "description": "d",
    }
    assert gl.call("GET", gl.variables("/K"), gl.maintainer).json()["value"] == "first"

    updated = gl.call("PUT", gl.variables("/K"), gl.maintainer, json={"value": "second"})
    assert updated.status_code == 200
    assert (updated.json()["value"], updated.json()["protected"], updated.json()["description"]) == (
        "second",
        True,
        "d",
    )
    assert gl.server.stored_value("K", project=PROJECT) == "second"

    deleted = gl.call("DELETE", gl.variables("/K"), gl.maintainer)
    assert (deleted.status_code, deleted.content) == (204, b"")
    assert gl.server.variable("K", project=PROJECT) is None


def test_missing_variable_is_404_and_put_never_creates(gl: GitLab) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = gl.call(method, gl.variables("/NOPE"), gl.maintainer, json={"value": "x"})
        assert (response.status_code, response.json()) == (404, {"message": "404 Variable Not Found"})
    assert gl.server.variable("NOPE", project=PROJECT) is None


def test_duplicates_are_per_key_and_environment_scope(gl: GitLab) -> None:
    assert gl.create(value="all").status_code == 201
    duplicate = gl.create(value="again")
    assert (duplicate.status_code, duplicate.json()) == (400, {"message": {"key": ["(K) has already been taken"]}})
    assert gl.create(value="prod", environment_scope="production").status_code == 201

    ambiguous = gl.call("GET", gl.variables("/K"), gl.maintainer)
    assert ambiguous.status_code == 409
    assert "filter[environment_scope]" in ambiguous.json()["message"]
    params = {"filter[environment_scope]": "production"}
    assert gl.call("GET", gl.variables("/K"), gl.maintainer, params=params).json()["value"] == "prod"
    put = gl.call("PUT", gl.variables("/K"), gl.maintainer, params=params, json={"value": "prod2"})
    assert put.json()["environment_scope"] == "production"
    assert gl.server.stored_value("K", project=PROJECT, environment_scope="production") == "prod2"
    assert gl.server.stored_value("K", project=PROJECT) == "all"
    moved = gl.call("PUT", gl.variables("/K"), gl.maintainer, params=params, json={"environment_scope": "*"})
    assert moved.json() == {"message": {"key": ["(K) has already been taken"]}}
    body_filter = {"value": "prod3", "filter": {"environment_scope": "production"}}
    assert gl.call("PUT", gl.variables("/K"), gl.maintainer, json=body_filter).json()["value"] == "prod3"


def test_form_encoded_bodies_are_accepted(gl: GitLab) -> None:
    form = {"key": "F", "value": "abcdefgh", "masked": "true", "raw": "false"}
    created = gl.call("POST", gl.variables(), gl.maintainer, data=form)
    assert created.status_code == 201
    assert (created.json()["masked"], created.json()["raw"]) == (True, False)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"value": "v"}, 400, {"error": "key is missing"}),
        ({"key": "K"}, 400, {"error": "value is missing"}),
        ({"key": "BAD-KEY", "value": "v"}, 400, {"message": {"key": ["can contain only letters, digits and '_'."]}}),
        ({"key": "K", "value": "short", "masked": True}, 400, {"message": {"value": ["is invalid"]}}),
        ({"key": "K", "value": "has$dollar", "masked": True}, 400, {"message": {"value": ["is invalid"]}}),
        (
            {"key": "K", "value": "v", "variable_type": "secret"},
            400,
            {"error": "variable_type does not have a valid value"},
        ),
        ({"key": "K", "value": "v", "masked": "maybe"}, 400, {"error": "masked is invalid"}),
        ({"key": "K", "value": "v", "environment_scope": "a;b"}, 400, None),
    ],
)
def test_create_validation(gl: GitLab, body: dict[str, Any], status: int, error: dict[str, Any] | None) -> None:
    response = gl.call("POST", gl.variables(), gl.maintainer, json=body)
    assert response.status_code == status
    if error is not None:
        assert response.json() == error
    assert gl.server.stats()["variable_writes"] == 0


def test_masked_and_raw_allows_any_non_space_characters(gl: GitLab) -> None:
    assert gl.create(value="has$dollar", masked=True, raw=True).status_code == 201
    refused = gl.call("PUT", gl.variables("/K"), gl.maintainer, json={"value": "with space"})
    assert refused.json() == {"message": {"value": ["is invalid"]}}


def test_hidden_variables_never_return_their_value(gl: GitLab) -> None:
    created = gl.create(value="hidden-value-1", masked_and_hidden=True)
    assert created.status_code == 201
    assert (created.json()["value"], created.json()["hidden"], created.json()["masked"]) == (None, True, True)
    assert gl.call("GET", gl.variables("/K"), gl.maintainer).json()["value"] is None
    assert gl.call("GET", gl.variables(), gl.maintainer).json()[0]["value"] is None
    updated = gl.call("PUT", gl.variables("/K"), gl.maintainer, json={"value": "hidden-value-2"})
    assert (updated.status_code, updated.json()["value"]) == (200, None)
    assert gl.server.stored_value("K", project=PROJECT) == "hidden-value-2"
    unmask = gl.call("PUT", gl.variables("/K"), gl.maintainer, json={"masked": False})
    assert unmask.status_code == 400
    admin = requests.get(f"{gl.server.url}/_sandbox/variables", params={"project": PROJECT, "key": "K"}, timeout=5)
    assert admin.json()["value"] == "hidden-value-2"


def test_pagination_headers_and_python_gitlab_get_all(gl: GitLab) -> None:
    for number in range(5):
        gl.server.set_variable(f"V{number}", str(number), project=PROJECT)
    page = gl.call("GET", gl.variables(), gl.maintainer, params={"per_page": 2, "page": 2})
    assert [item["key"] for item in page.json()] == ["V2", "V3"]
    headers = page.headers
    assert (headers["X-Page"], headers["X-Per-Page"], headers["X-Next-Page"], headers["X-Prev-Page"]) == (
        "2",
        "2",
        "3",
        "1",
    )
    assert (headers["X-Total"], headers["X-Total-Pages"]) == ("5", "3")
    assert 'rel="next"' in headers["Link"] and "page=3" in headers["Link"]
    last = gl.call("GET", gl.variables(), gl.maintainer, params={"per_page": 2, "page": 3}).headers
    assert last["X-Next-Page"] == "" and 'rel="next"' not in last["Link"]

    client = gitlab.Gitlab(gl.server.url, private_token=gl.maintainer)
    listed = client.projects.get(PROJECT, lazy=True).variables.list(get_all=True, per_page=2)
    assert [variable.key for variable in listed] == [f"V{number}" for number in range(5)]


def test_python_gitlab_create_update_with_scope_filter(gl: GitLab) -> None:
    client = gitlab.Gitlab(gl.server.url, oauth_token=gl.maintainer)
    variables = client.projects.get(gl.project_id, lazy=True).variables
    with pytest.raises(gitlab.GitlabUpdateError) as missing:
        variables.update("K", {"value": "x"}, filter={"environment_scope": "prod"})
    assert missing.value.response_code == 404
    variables.create({"key": "K", "value": "x", "environment_scope": "prod"})
    variables.update("K", {"value": "y"}, filter={"environment_scope": "prod"})
    assert variables.get("K", filter={"environment_scope": "prod"}).value == "y"
    with pytest.raises(gitlab.GitlabCreateError) as taken:
        variables.create({"key": "K", "value": "z", "environment_scope": "prod"})
    assert taken.value.response_code == 400


# -- rate limits, faults, stats --------------------------------------------------------------------------


def test_rate_limit_429_with_gitlab_headers_switchable_at_run_time(gl: GitLab) -> None:
    settings = requests.post(
        f"{gl.server.url}/_sandbox/settings", json={"rate_limit": 2, "rate_limit_window": 30}, timeout=5
    )
    assert (settings.json()["rate_limit"], settings.json()["rate_limit_window"]) == (2, 30.0)
    statuses = [gl.call("GET", gl.variables(), gl.maintainer).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = gl.call("GET", gl.variables(), gl.maintainer)
    assert (limited.text, limited.headers["Content-Type"]) == ("Retry later\n", "text/plain; charset=utf-8")
    assert 29 <= int(limited.headers["Retry-After"]) <= 30
    assert limited.headers["RateLimit-Remaining"] == "0"
    assert limited.headers["RateLimit-Name"] == "throttle_authenticated_api"
    assert abs(int(limited.headers["RateLimit-Reset"]) - (time.time() + 30)) <= 2
    assert limited.headers["RateLimit-ResetTime"].endswith("GMT")
    assert gl.call("GET", gl.variables(), gl.owner).status_code == 200  # limits are per token
    assert gl.server.stats()["rate_limited"] == 2

    requests.post(f"{gl.server.url}/_sandbox/settings", json={"rate_limit": None}, timeout=5)
    assert gl.call("GET", gl.variables(), gl.maintainer).status_code == 200
    bad = requests.post(f"{gl.server.url}/_sandbox/settings", json={"rate_limit": 0}, timeout=5)
    assert bad.status_code == 400


def test_rate_limit_window_passes(gl: GitLab) -> None:
    with GitLabSandbox(rate_limit=1, rate_limit_window=0.3) as server:
        token = server.add_token({"acme": "owner"})
        server.add_group("acme")
        url = f"{server.url}/api/v4/groups/acme/variables"
        headers = {"PRIVATE-TOKEN": token}
        assert requests.get(url, headers=headers, timeout=5).status_code == 200
        assert requests.get(url, headers=headers, timeout=5).status_code == 429
        time.sleep(0.35)
        assert requests.get(url, headers=headers, timeout=5).status_code == 200


def test_write_counter_counts_successful_writes_only(gl: GitLab) -> None:
    gl.create(value="a")
    gl.create(value="b")  # duplicate: refused
    gl.call("PUT", gl.variables("/K"), gl.maintainer, json={"value": "c"})
    gl.server.faults.add("/variables", method="PUT", status=500)
    assert gl.call("PUT", gl.variables("/K"), gl.maintainer, json={"value": "d"}).status_code == 500
    stats = gl.server.stats()
    assert stats["variable_writes"] == 2
    assert (stats["requests"]["create_variable"], stats["requests"]["update_variable"]) == (2, 2)
    gl.server.reset_stats()
    assert gl.server.stats()["variable_writes"] == 0


def test_unknown_route_uses_gitlab_404(gl: GitLab) -> None:
    response = gl.call("GET", "/nothing/here", gl.maintainer)
    assert (response.status_code, response.json()) == (404, {"error": "404 Not Found"})


# -- seeding and CLI -------------------------------------------------------------------------------------


SEED = {
    "groups": ["initech", {"path": "initech/platform", "visibility": "internal"}],
    "projects": ["initech/platform/api"],
    "tokens": [{"name": "bot", "token": "glpat-seeded", "access": {"initech/platform/api": "maintainer"}}],
    "variables": [{"project": "initech/platform/api", "key": "KOSLI_API_TOKEN", "value": "old", "masked": False}],
}


def test_seed_over_http(gl: GitLab) -> None:
    seeded = requests.post(f"{gl.server.url}/_sandbox/seed", json=SEED, timeout=5)
    assert seeded.status_code == 201
    assert seeded.json()["tokens"] == {"bot": "glpat-seeded"}
    project_id = seeded.json()["projects"]["initech/platform/api"]
    value = gl.call("GET", f"/projects/{project_id}/variables/KOSLI_API_TOKEN", "glpat-seeded").json()["value"]
    assert value == "old"
    bad = requests.post(f"{gl.server.url}/_sandbox/seed", json={"projects": ["no-namespace"]}, timeout=5)
    assert bad.status_code == 400


def test_cli_serves_a_seeded_sandbox(tmp_path: Path) -> None:
    """``python -m sandbox gitlab`` once registered in SANDBOXES; registered here for the test only."""
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps(SEED))
    script = "import sys, sandbox.__main__ as cli; cli.SANDBOXES['gitlab'] = 'sandbox.gitlab'; sys.exit(cli.main())"
    command = [sys.executable, "-c", script, "gitlab", "--rate-limit", "50", "--seed", str(seed)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        response = requests.get(
            f"{ready['url']}/api/v4/projects/initech%2Fplatform%2Fapi/variables",
            headers={"PRIVATE-TOKEN": ready["seeded"]["tokens"]["bot"]},
            timeout=5,
        )
        assert [variable["key"] for variable in response.json()] == ["KOSLI_API_TOKEN"]
        assert requests.get(f"{ready['url']}/_sandbox/settings", timeout=5).json()["rate_limit"] == 50
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
