"""Tests of the CircleCI sandbox's API v2 contract over real HTTP, driven with plain ``requests``."""

from __future__ import annotations

import argparse
import base64
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.circleci import CircleCiSandbox, add_cli_arguments, from_cli_args
from sandbox.kosli import KosliSandbox

ORG = "acme"
OWNER = "gh/acme"
APP = "gh/acme/app"
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
NOT_LOGGED_IN = {"message": "You must log in first."}


class CircleCi:
    """A started sandbox: org gh/acme with an admin and a member, context ``kosli`` and project ``app``."""

    def __init__(self, server: CircleCiSandbox, kosli_key: str) -> None:
        self.server = server
        self.kosli_key = kosli_key
        self.org_id = server.add_org(OWNER)
        self.admin = server.add_user("boss", {OWNER: "admin"})
        self.member = server.add_user("dev", {OWNER: "member"})
        self.context_id = server.add_context(OWNER, "kosli")
        server.add_project(APP, contexts=["kosli"])

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Circle-Token": token} if token else {}
        return requests.request(method, f"{self.server.url}/api/v2{path}", headers=headers, timeout=5, **kwargs)

    def put_var(self, value: str, name: str = "KOSLI_API_TOKEN", token: str | None = None) -> requests.Response:
        return self.call(
            "PUT", f"/context/{self.context_id}/environment-variable/{name}", token or self.admin, json={"value": value}
        )

    def trigger(self, slug: str = APP, **body: Any) -> dict[str, Any]:
        response = self.call("POST", f"/project/{slug}/pipeline", self.admin, json=body)
        assert response.status_code == 201, response.text
        return response.json()

    def finished_workflows(self, pipeline_id: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = self.call("GET", f"/pipeline/{pipeline_id}/workflow", self.admin).json()["items"]
            if items and all(item["status"] != "running" for item in items):
                return items
            time.sleep(0.05)
        raise AssertionError("workflows did not finish")


@pytest.fixture
def circleci() -> Iterator[CircleCi]:
    with KosliSandbox() as kosli:
        key = kosli.seed(ORG, service_accounts={"ci-bot": {"privilege": "member", "keys": [{}]}})["ci-bot"][0]["key"]
        server = CircleCiSandbox(kosli_url=kosli.url, kosli_org=ORG, canary_seconds=0.1, setup_seconds=0.05)
        with server:
            yield CircleCi(server, key)
            server.wait_for_workflows()


# -- auth ------------------------------------------------------------------------------------------------


def test_circle_token_basic_and_bearer_auth(circleci: CircleCi) -> None:
    url = f"{circleci.server.url}/api/v2/me"
    assert circleci.call("GET", "/me", circleci.admin).json()["login"] == "boss"
    assert requests.get(url, auth=(circleci.admin, ""), timeout=5).json()["login"] == "boss"
    bearer = requests.get(url, headers={"Authorization": f"Bearer {circleci.admin}"}, timeout=5)
    assert bearer.json()["login"] == "boss"


@pytest.mark.parametrize("headers", [{}, {"Circle-Token": "nope"}, {"Authorization": "Basic !!"}])
def test_missing_or_unknown_token_is_401(circleci: CircleCi, headers: dict[str, str]) -> None:
    response = requests.get(f"{circleci.server.url}/api/v2/me", headers=headers, timeout=5)
    assert (response.status_code, response.json()) == (401, NOT_LOGGED_IN)


# -- contexts --------------------------------------------------------------------------------------------


def test_list_contexts_by_owner_with_pagination(circleci: CircleCi) -> None:
    circleci.server.add_context(OWNER, "second")
    circleci.server.apply_settings({"page_size": 1})
    first = circleci.call("GET", "/context", circleci.member, params={"owner-slug": OWNER}).json()
    assert [item["name"] for item in first["items"]] == ["kosli"]
    assert ISO_MS.match(first["items"][0]["created_at"])
    second = circleci.call(
        "GET", "/context", circleci.member, params={"owner-slug": OWNER, "page-token": first["next_page_token"]}
    ).json()
    assert ([item["name"] for item in second["items"]], second["next_page_token"]) == (["second"], None)
    by_id = circleci.call("GET", "/context", circleci.member, params={"owner-id": circleci.org_id}).json()
    assert by_id["items"][0]["id"] == circleci.context_id
    github_alias = circleci.call("GET", "/context", circleci.member, params={"owner-slug": "github/acme"}).json()
    assert github_alias["items"][0]["id"] == circleci.context_id


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"owner-slug": OWNER, "owner-id": "x"},
        {"owner-slug": OWNER, "page-token": "???"},
        {"owner-slug": OWNER, "owner-type": "team"},
    ],
)
def test_list_contexts_validation(circleci: CircleCi, params: dict[str, str]) -> None:
    response = circleci.call("GET", "/context", circleci.admin, params=params)
    assert response.status_code == 400
    assert set(response.json()) == {"message"}


def test_context_variable_upsert_moves_updated_at_every_time(circleci: CircleCi) -> None:
    created = circleci.put_var("first-value")
    assert created.status_code == 200
    body = created.json()
    assert set(body) == {"variable", "context_id", "created_at", "updated_at"}
    assert (body["variable"], body["context_id"]) == ("KOSLI_API_TOKEN", circleci.context_id)
    assert "first-value" not in created.text

    time.sleep(0.01)
    again = circleci.put_var("first-value").json()  # byte-identical
    assert again["created_at"] == body["created_at"] and again["updated_at"] > body["updated_at"]
    listed = circleci.call("GET", f"/context/{circleci.context_id}/environment-variable", circleci.member).json()
    assert listed == {"items": [again], "next_page_token": None}
    assert circleci.server.context_variable(circleci.context_id, "KOSLI_API_TOKEN")["value"] == "first-value"

    deleted = circleci.call(
        "DELETE", f"/context/{circleci.context_id}/environment-variable/KOSLI_API_TOKEN", circleci.admin
    )
    assert deleted.json() == {"message": "Environment variable deleted."}
    assert circleci.server.context_variable(circleci.context_id, "KOSLI_API_TOKEN") is None


def test_context_variable_validation_and_permissions(circleci: CircleCi) -> None:
    assert circleci.put_var("v", name="1-bad").status_code == 400
    path = f"/context/{circleci.context_id}/environment-variable/OK"
    assert (
        circleci.call("PUT", path, circleci.admin, json={"nope": 1}).json()["message"].startswith("value is required")
    )
    assert circleci.call("PUT", path, circleci.admin, data=b"{oops").json() == {"message": "Invalid JSON body"}
    member = circleci.put_var("v", token=circleci.member)
    assert (member.status_code, member.json()) == (403, {"message": "Permission denied"})

    globex_token = circleci.server.add_user("outsider", {circleci.server.add_org("gh/globex"): "admin"})
    for response in (
        circleci.put_var("v", token=globex_token),
        circleci.call("GET", f"/context/{circleci.context_id}", globex_token),
        circleci.call("GET", "/context/00000000-0000-0000-0000-000000000000", circleci.admin),
    ):
        assert (response.status_code, response.json()) == (404, {"message": "Context not found"})
    outsider_listing = circleci.call("GET", "/context", globex_token, params={"owner-slug": OWNER}).json()
    assert outsider_listing["items"] == []
    assert circleci.server.context_variable(circleci.context_id, "KOSLI_API_TOKEN") is None


# -- project variables -----------------------------------------------------------------------------------


def test_project_variables_are_masked_and_replaced_by_post(circleci: CircleCi) -> None:
    created = circleci.call(
        "POST", f"/project/{APP}/envvar", circleci.admin, json={"name": "K", "value": "secret-1234"}
    )
    assert created.status_code == 201
    assert created.json()["value"] == "xxxx1234" and ISO_MS.match(created.json()["created_at"])
    replaced = circleci.call(
        "POST", f"/project/{APP}/envvar", circleci.admin, json={"name": "K", "value": "other-9876"}
    )
    assert replaced.status_code == 201
    assert circleci.call("GET", f"/project/{APP}/envvar/K", circleci.member).json()["value"] == "xxxx9876"
    assert circleci.call("GET", "/project/github/acme/app/envvar", circleci.member).json()["items"] == [
        {"name": "K", "value": "xxxx9876", "created_at": created.json()["created_at"]}
    ]
    assert circleci.server.project_variable(APP, "K")["value"] == "other-9876"

    missing = circleci.call("GET", f"/project/{APP}/envvar/NOPE", circleci.admin)
    assert (missing.status_code, missing.json()) == (404, {"message": "Environment variable not found."})
    member = circleci.call("POST", f"/project/{APP}/envvar", circleci.member, json={"name": "K", "value": "x"})
    assert member.status_code == 403
    bad_name = circleci.call("POST", f"/project/{APP}/envvar", circleci.admin, json={"name": "a b", "value": "x"})
    assert bad_name.status_code == 400
    assert circleci.call("DELETE", f"/project/{APP}/envvar/K", circleci.admin).status_code == 200


def test_unknown_or_foreign_project_is_404_project_not_found(circleci: CircleCi) -> None:
    circleci.server.add_project("bb/globex/app")
    for path in ("/project/gh/acme/ghost", "/project/bb/globex/app/envvar", "/project/bb/globex/app"):
        response = circleci.call("GET", path, circleci.admin)
        assert (response.status_code, response.json()) == (404, {"message": "Project not found"})


def test_circleci_slug_projects(circleci: CircleCi) -> None:
    org_id = circleci.server.add_org(name="gitlab-org")
    project_id = "6f1d1d1e-8d38-4b1c-9f3e-2b7d6a1c0e55"
    slug = circleci.server.add_project(f"circleci/{org_id}/{project_id}")
    token = circleci.server.add_user("gl", {org_id: "admin"})
    info = circleci.call("GET", f"/project/{slug}", token).json()
    assert (info["id"], info["organization_slug"]) == (project_id, f"circleci/{org_id}")
    assert circleci.call("GET", "/context", token, params={"owner-id": org_id}).json()["items"] == []


# -- pipelines -------------------------------------------------------------------------------------------


def test_canary_pipeline_reads_the_context_before_the_project(circleci: CircleCi) -> None:
    circleci.server.set_project_variable(APP, "KOSLI_API_TOKEN", "wrong-project-value")
    circleci.put_var(circleci.kosli_key)

    pipeline = circleci.trigger(branch="main", parameters={"flag": True})
    assert set(pipeline) == {"id", "state", "number", "created_at"}
    assert (pipeline["state"], pipeline["number"]) == ("pending", 1)
    early = circleci.call("GET", f"/pipeline/{pipeline['id']}/workflow", circleci.admin).json()
    assert early == {"items": [], "next_page_token": None}  # workflows appear after setup

    (workflow,) = circleci.finished_workflows(pipeline["id"])
    assert (workflow["name"], workflow["status"], workflow["pipeline_number"]) == ("kosli-canary", "success", 1)
    assert ISO_MS.match(workflow["stopped_at"])
    assert circleci.call("GET", f"/workflow/{workflow['id']}", circleci.member).json()["status"] == "success"
    info = circleci.call("GET", f"/pipeline/{pipeline['id']}", circleci.member).json()
    assert (info["project_slug"], info["vcs"]["branch"]) == (APP, "main")

    circleci.call("DELETE", f"/context/{circleci.context_id}/environment-variable/KOSLI_API_TOKEN", circleci.admin)
    (fallback,) = circleci.finished_workflows(circleci.trigger()["id"])
    assert fallback["status"] == "failed"  # now the project's (wrong) value is used
    assert "HTTP 401" in circleci.server.pipelines(APP)[1]["workflows"][0]["log"][0]


def test_canary_without_the_variable_fails(circleci: CircleCi) -> None:
    (workflow,) = circleci.finished_workflows(circleci.trigger()["id"])
    assert workflow["status"] == "failed"
    assert circleci.server.pipelines(APP)[0]["workflows"][0]["log"] == ["$KOSLI_API_TOKEN is not set"]


def test_pipeline_errors(circleci: CircleCi) -> None:
    both = circleci.call("POST", f"/project/{APP}/pipeline", circleci.admin, json={"branch": "a", "tag": "b"})
    assert both.status_code == 400
    bad_parameters = circleci.call("POST", f"/project/{APP}/pipeline", circleci.admin, json={"parameters": {"x": []}})
    assert bad_parameters.status_code == 400
    missing = circleci.call("GET", "/pipeline/00000000-0000-0000-0000-000000000000/workflow", circleci.admin)
    assert (missing.status_code, missing.json()) == (404, {"message": "Pipeline not found"})
    assert circleci.call("POST", "/project/gh/acme/ghost/pipeline", circleci.admin, json={}).status_code == 404


# -- rate limit and faults -------------------------------------------------------------------------------


def test_switchable_rate_limit_gives_429_with_retry_after_and_rate_limit_headers(circleci: CircleCi) -> None:
    url = circleci.server.url
    settings = requests.post(f"{url}/_sandbox/settings", json={"rate_limit": 2, "rate_limit_window": 30}, timeout=5)
    assert settings.json()["rate_limit"] == 2
    first = circleci.call("GET", "/me", circleci.admin)
    assert (first.headers["X-RateLimit-Limit"], first.headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert circleci.call("GET", "/me", circleci.admin).status_code == 200
    limited = circleci.call("GET", "/me", circleci.admin)
    assert (limited.status_code, limited.json()) == (429, {"message": "Rate limit exceeded"})
    assert int(limited.headers["Retry-After"]) in range(29, 31)
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert int(limited.headers["X-RateLimit-Reset"]) - time.time() == pytest.approx(30, abs=2)
    assert circleci.call("GET", "/me", circleci.member).status_code == 200  # per token
    assert requests.get(f"{url}/_sandbox/stats", timeout=5).json()["rate_limited"] == 1
    circleci.server.apply_settings({"rate_limit": None})
    ok = circleci.call("GET", "/me", circleci.admin)
    assert ok.status_code == 200 and "X-RateLimit-Limit" not in ok.headers


def test_faults_use_the_error_shape(circleci: CircleCi) -> None:
    circleci.server.faults.add("/environment-variable/", method="PUT", status=503, body={"message": "Unavailable"})
    assert circleci.put_var("v").json() == {"message": "Unavailable"}
    assert circleci.put_var("v").status_code == 200


# -- seeding, admin API, CLI -----------------------------------------------------------------------------


def test_seed_document_and_admin_endpoints(circleci: CircleCi) -> None:
    url = circleci.server.url
    seeded = requests.post(
        f"{url}/_sandbox/seed",
        json={
            "orgs": ["bb/initech"],
            "users": {"peter": {"roles": {"bb/initech": "admin"}, "token": "CCIPAT_peter"}},
            "contexts": [{"org": "bb/initech", "name": "prod", "variables": {"KOSLI_API_TOKEN": "ctx-value"}}],
            "projects": {"bb/initech/tps": {"contexts": ["prod"], "variables": {"OTHER": "p"}}},
        },
        timeout=5,
    )
    assert seeded.status_code == 201
    assert seeded.json()["tokens"] == {"peter": "CCIPAT_peter"}
    context_id = seeded.json()["contexts"]["prod"]
    held = requests.get(
        f"{url}/_sandbox/context-variable", params={"context_id": context_id, "name": "KOSLI_API_TOKEN"}, timeout=5
    )
    assert held.json()["value"] == "ctx-value"
    project = requests.get(
        f"{url}/_sandbox/project-variable", params={"slug": "bb/initech/tps", "name": "OTHER"}, timeout=5
    )
    assert project.json()["value"] == "p"
    assert (
        circleci.call("GET", "/project/bitbucket/initech/tps/envvar/OTHER", "CCIPAT_peter").json()["value"] == "xxxxp"
    )
    bad = requests.post(f"{url}/_sandbox/seed", json={"users": {"x": {"roles": {"gh/none": "admin"}}}}, timeout=5)
    assert bad.status_code == 400


def test_page_tokens_are_opaque_offsets(circleci: CircleCi) -> None:
    circleci.server.apply_settings({"page_size": 1})
    for name in ("A", "B"):
        circleci.put_var("v", name=name)
    token = circleci.call("GET", f"/context/{circleci.context_id}/environment-variable", circleci.admin).json()
    assert base64.urlsafe_b64decode(token["next_page_token"]).decode() == "offset:1"


def test_cli_arguments_build_a_configured_sandbox() -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("--hour-seconds", 3600.0), ("--latency", 0.0)):
        parser.add_argument(name, type=float, default=default)
    parser.add_argument("--access-log", action="store_true")
    add_cli_arguments(parser)
    args = parser.parse_args(
        ["--kosli-url", "http://kosli:1/", "--kosli-org", ORG, "--rate-limit", "7", "--page-size", "3"]
    )
    server = from_cli_args(args)
    assert (server.kosli_url, server.kosli_org, server.rate_limit, server.page_size, server.canary_seconds) == (
        "http://kosli:1",
        ORG,
        7,
        3,
        0.5,
    )
