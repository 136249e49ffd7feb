"""Tests of the Kosli sandbox against the contract in kosli_api.md, over real HTTP."""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.kosli import KosliSandbox

HOUR = 0.05  # real seconds per service-hour in these tests
KEY_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{8}$")
FORBIDDEN = {"message": "You don't have permission to access this resource"}
REPO_ROOT = Path(__file__).resolve().parents[2]


class Kosli:
    """A started sandbox seeded with org acme (admin-bot, ci-bot) and org globex (boss), plus HTTP helpers."""

    def __init__(self, server: KosliSandbox) -> None:
        self.server = server
        seeded = server.seed_document(
            {
                "orgs": {
                    "acme": {
                        "service_accounts": {
                            "admin-bot": {"privilege": "admin", "keys": [{"description": "admin"}]},
                            "ci-bot": {"privilege": "member", "keys": [{"description": "ci"}]},
                        }
                    },
                    "globex": {"service_accounts": {"boss": {"privilege": "admin", "keys": [{}]}}},
                }
            }
        )
        self.admin = seeded["acme"]["admin-bot"][0]["key"]
        self.ci_id = seeded["acme"]["ci-bot"][0]["id"]
        self.ci = seeded["acme"]["ci-bot"][0]["key"]
        self.other_org_admin = seeded["globex"]["boss"][0]["key"]

    def call(self, method: str, path: str, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return requests.request(method, f"{self.server.url}/api/v2{path}", headers=headers, timeout=5, **kwargs)

    def keys_path(self, key_id: str = "", sa: str = "ci-bot") -> str:
        return f"/service-accounts/acme/{sa}/api-keys" + (f"/{key_id}" if key_id else "")

    def rotate(self, key_id: str, **body: Any) -> requests.Response:
        return self.call("POST", self.keys_path(key_id) + "/rotate", self.admin, json=body)

    def works(self, key: str) -> bool:
        status = self.call("GET", "/environments/acme", key).status_code
        assert status in (200, 401)
        return status == 200


@pytest.fixture
def kosli() -> Iterator[Kosli]:
    with KosliSandbox(hour_seconds=HOUR) as server:
        yield Kosli(server)


# -- auth, probe, readiness ------------------------------------------------------------------------------


def test_ready_is_plain_ok(kosli: Kosli) -> None:
    response = requests.get(f"{kosli.server.url}/ready", timeout=5)
    assert (response.status_code, response.text) == (200, "OK")


def test_bearer_and_basic_auth(kosli: Kosli) -> None:
    assert kosli.call("GET", "/environments/acme", kosli.ci).json() == []
    basic = requests.get(f"{kosli.server.url}/api/v2/environments/acme", auth=(kosli.ci, ""), timeout=5)
    assert basic.status_code == 200
    basic_with_password = requests.get(
        f"{kosli.server.url}/api/v2/environments/acme", auth=(kosli.ci, "ignored"), timeout=5
    )
    assert basic_with_password.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Bearer not-a-key"}, {"Authorization": "Basic !!"}],
)
def test_missing_or_unknown_key_is_401(kosli: Kosli, headers: dict[str, str]) -> None:
    response = requests.get(f"{kosli.server.url}/api/v2/environments/acme", headers=headers, timeout=5)
    assert response.status_code == 401
    assert isinstance(response.json()["message"], str)


def test_other_org_and_non_admin_are_403(kosli: Kosli) -> None:
    other_org = kosli.call("GET", "/environments/acme", kosli.other_org_admin)
    assert (other_org.status_code, other_org.json()) == (403, FORBIDDEN)
    assert kosli.call("GET", "/service-accounts/acme", kosli.ci).status_code == 403
    assert kosli.call("POST", kosli.keys_path(), kosli.ci, json={"description": "x"}).status_code == 403
    assert kosli.call("POST", kosli.keys_path(kosli.ci_id) + "/rotate", kosli.ci, json={}).status_code == 403
    assert kosli.call("DELETE", kosli.keys_path(kosli.ci_id), kosli.ci).status_code == 403


def test_last_used_at_is_omitted_until_used_then_updated(kosli: Kosli) -> None:
    def ci_metadata() -> dict[str, Any]:
        return kosli.call("GET", kosli.keys_path(kosli.ci_id), kosli.admin).json()

    assert "last_used_at" not in ci_metadata()
    before = time.time()
    kosli.works(kosli.ci)
    first_use = ci_metadata()["last_used_at"]
    assert before <= first_use <= time.time()
    kosli.call("GET", "/service-accounts/acme", kosli.ci)  # a 403 still authenticated the key
    assert ci_metadata()["last_used_at"] > first_use


# -- environments ----------------------------------------------------------------------------------------


def test_environments_plain_array_vs_paginated_object(kosli: Kosli) -> None:
    kosli.server.seed("acme", environments=["prod", {"name": "staging", "type": "ECS", "tags": {"tier": "2"}}, "dev"])
    plain = kosli.call("GET", "/environments/acme", kosli.ci).json()
    assert [env["name"] for env in plain] == ["prod", "staging", "dev"]
    assert plain[0]["org"] == "acme" and plain[0]["type"] == "K8S" and "last_modified_at" in plain[0]

    paged = kosli.call("GET", "/environments/acme", kosli.ci, params={"page": 2, "per_page": 2}).json()
    assert {key: paged[key] for key in ("page", "per_page", "total_pages", "total_count")} == {
        "page": 2,
        "per_page": 2,
        "total_pages": 2,
        "total_count": 3,
    }
    assert [env["name"] for env in paged["environments"]] == ["dev"]
    assert paged["_links"]["self"]["href"].endswith("?page=2&per_page=2")
    assert kosli.call("GET", "/environments/acme", kosli.ci, params={"page": 1}).json()["per_page"] == 15

    filtered = kosli.call("GET", "/environments/acme", kosli.ci, params={"type": "ECS", "tag": "tier:2"}).json()
    assert [env["name"] for env in filtered] == ["staging"]
    by_name = kosli.call("GET", "/environments/acme", kosli.ci, params={"sort": "name", "sort_direction": "desc"})
    assert [env["name"] for env in by_name.json()] == ["staging", "prod", "dev"]


def test_environment_query_validation(kosli: Kosli) -> None:
    response = kosli.call("GET", "/environments/acme", kosli.ci, params={"per_page": "x", "sort": "size"})
    assert response.status_code == 400
    body = response.json()
    assert body["message"] == "Input payload validation failed"
    assert set(body["errors"]) == {"query.per_page", "query.sort"}
    assert body["errors"]["query.per_page"].startswith("Input should be a valid integer")


# -- service accounts ------------------------------------------------------------------------------------


def test_service_account_lifecycle(kosli: Kosli) -> None:
    listed = kosli.call("GET", "/service-accounts/acme", kosli.admin).json()
    assert {sa["name"] for sa in listed} == {"admin-bot", "ci-bot"}
    assert all("for_webhook" not in sa for sa in listed)

    created = kosli.call("POST", "/service-accounts/acme", kosli.admin, json={"name": "deployer"})
    assert created.status_code == 201
    assert created.json() | {"created_at": 0, "creating_user_id": ""} == {
        "name": "deployer",
        "display_name": "deployer",
        "privilege": "reader",
        "description": None,
        "creating_user_id": "",
        "created_at": 0,
        "for_webhook": False,
    }
    assert kosli.call("POST", "/service-accounts/acme", kosli.admin, json={"name": "deployer"}).status_code == 409

    path = "/service-accounts/acme/deployer"
    patched = kosli.call("PATCH", path, kosli.admin, json={"description": "ships", "privilege": "member"})
    assert (patched.json()["description"], patched.json()["privilege"]) == ("ships", "member")
    assert kosli.call("PATCH", path, kosli.admin, json={"privilege": "admin"}).json()["description"] == "ships"
    assert kosli.call("PATCH", path, kosli.admin, json={"description": None}).json()["description"] is None
    assert kosli.call("GET", path, kosli.admin).json()["privilege"] == "admin"

    assert kosli.call("DELETE", "/service-accounts/acme/ci-bot", kosli.admin).json() == "OK"
    missing = kosli.call("GET", "/service-accounts/acme/ci-bot", kosli.admin)
    assert (missing.status_code, missing.json()) == (404, {"message": "Service account not found"})
    assert not kosli.works(kosli.ci)  # its keys went with it


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "bad name"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({}, "name"),
        ({"name": "ok", "privilege": "owner"}, "privilege"),
        ({"name": "ok", "description": "d" * 513}, "description"),
    ],
)
def test_service_account_validation(kosli: Kosli, body: dict[str, Any], field: str) -> None:
    response = kosli.call("POST", "/service-accounts/acme", kosli.admin, json=body)
    assert response.status_code == 400
    assert response.json()["message"] == "Input payload validation failed"
    assert list(response.json()["errors"]) == [field]


# -- API keys --------------------------------------------------------------------------------------------


def test_create_list_get_and_revoke_key(kosli: Kosli) -> None:
    created = kosli.call("POST", kosli.keys_path(), kosli.admin, json={"description": "deploy"})
    assert created.status_code == 201
    body = created.json()
    assert set(body) == {"id", "key", "description", "created_at", "expires_at"}
    assert KEY_ID.match(body["id"]) and len(body["key"]) == 43
    assert (body["description"], body["expires_at"]) == ("deploy", 0)
    assert kosli.works(body["key"])
    assert body["key"] not in repr(kosli.server._orgs)  # only hashes are kept with the keys

    listed = kosli.call("GET", kosli.keys_path(), kosli.admin).json()
    assert {key["id"] for key in listed} == {kosli.ci_id, body["id"]}
    assert all("key" not in key for key in listed)
    fetched = kosli.call("GET", kosli.keys_path(body["id"]), kosli.admin).json()
    assert set(fetched) == {"id", "description", "created_at", "expires_at", "last_used_at"}

    revoked = kosli.call("DELETE", kosli.keys_path(body["id"]), kosli.admin)
    assert (revoked.status_code, revoked.json()) == (200, "revoked")
    assert not kosli.works(body["key"])
    not_found = {"message": "API key not found"}
    again = kosli.call("DELETE", kosli.keys_path(body["id"]), kosli.admin)
    assert (again.status_code, again.json()) == (404, not_found)
    assert kosli.call("GET", kosli.keys_path(body["id"]), kosli.admin).json() == not_found
    assert kosli.rotate("ffffffff-ffff-ffff-ffff-ffffffff").status_code == 404
    unknown_sa = kosli.call("GET", kosli.keys_path(sa="ghost"), kosli.admin)
    assert (unknown_sa.status_code, unknown_sa.json()) == (404, {"message": "Service account not found"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "description"),
        ({"description": ""}, "description"),
        ({"description": "d" * 257}, "description"),
        ({"description": "x", "expires_at": 1000}, "expires_at"),
        ({"description": "x", "expires_at": 4102444801}, "expires_at"),
        ({"description": "x", "expires_at": "soon"}, "expires_at"),
    ],
)
def test_create_key_validation(kosli: Kosli, body: dict[str, Any], field: str) -> None:
    response = kosli.call("POST", kosli.keys_path(), kosli.admin, json=body)
    assert response.status_code == 400
    assert response.json()["message"] == "Input payload validation failed"
    assert list(response.json()["errors"]) == [field]


def test_invalid_json_body_uses_the_validation_envelope(kosli: Kosli) -> None:
    response = kosli.call("POST", kosli.keys_path(), kosli.admin, data=b"{oops")
    assert response.status_code == 400
    assert response.json() == {"message": "Input payload validation failed", "errors": {"body": "JSON decode error"}}


def test_key_with_expiry_stops_working_after_it(kosli: Kosli) -> None:
    expires_at = math.ceil(time.time()) + 1
    created = kosli.call("POST", kosli.keys_path(), kosli.admin, json={"description": "t", "expires_at": expires_at})
    assert created.json()["expires_at"] == expires_at
    assert kosli.works(created.json()["key"])
    time.sleep(max(0.0, expires_at - time.time()) + 0.05)
    assert not kosli.works(created.json()["key"])
    assert created.json()["id"] not in {key["id"] for key in kosli.call("GET", kosli.keys_path(), kosli.admin).json()}


# -- rotation --------------------------------------------------------------------------------------------


def test_rotate_keeps_id_and_old_secret_works_until_grace_end(kosli: Kosli) -> None:
    before = time.time()
    response = kosli.rotate(kosli.ci_id, grace_period_hours=2)
    assert response.status_code == 201
    rotated = response.json()
    assert set(rotated) == {"id", "key", "description", "created_at", "expires_at", "grace_period_expires_at"}
    assert (rotated["id"], rotated["description"], rotated["expires_at"]) == (kosli.ci_id, "ci", 0)
    assert isinstance(rotated["grace_period_expires_at"], int)
    assert before + 2 * HOUR <= rotated["grace_period_expires_at"] <= math.ceil(time.time() + 2 * HOUR)

    assert kosli.works(rotated["key"]) and kosli.works(kosli.ci)
    assert [key["id"] for key in kosli.call("GET", kosli.keys_path(), kosli.admin).json()] == [kosli.ci_id]
    live = {entry["role"]: entry for entry in kosli.server.live_secrets("acme", "ci-bot")}
    assert live["current"]["secret"] == rotated["key"] and live["current"]["valid_until"] is None
    assert live["previous"]["secret"] == kosli.ci
    assert live["previous"]["valid_until"] == rotated["grace_period_expires_at"]

    time.sleep(max(0.0, rotated["grace_period_expires_at"] - time.time()) + 0.05)
    assert not kosli.works(kosli.ci)
    assert kosli.works(rotated["key"])
    assert [entry["role"] for entry in kosli.server.live_secrets("acme", "ci-bot")] == ["current"]


def test_rotate_defaults_to_24_hours_with_empty_or_missing_body(kosli: Kosli) -> None:
    for body in ({"json": {}}, {"data": b""}):
        before = time.time()
        response = kosli.call("POST", kosli.keys_path(kosli.ci_id) + "/rotate", kosli.admin, **body)
        assert response.status_code == 201
        assert before + 24 * HOUR <= response.json()["grace_period_expires_at"] <= time.time() + 24 * HOUR + 1


def test_rotate_during_grace_revokes_the_older_previous_secret(kosli: Kosli) -> None:
    second = kosli.rotate(kosli.ci_id, grace_period_hours=720).json()["key"]
    third = kosli.rotate(kosli.ci_id, grace_period_hours=720).json()["key"]
    assert not kosli.works(kosli.ci)
    assert kosli.works(second) and kosli.works(third)
    assert {entry["secret"] for entry in kosli.server.live_secrets("acme", "ci-bot")} == {second, third}


def test_rotate_sets_the_new_expiry_and_revoke_kills_both_secrets(kosli: Kosli) -> None:
    expires_at = int(time.time()) + 3600
    rotated = kosli.rotate(kosli.ci_id, expires_at=expires_at).json()
    assert rotated["expires_at"] == expires_at
    assert kosli.call("GET", kosli.keys_path(kosli.ci_id), kosli.admin).json()["expires_at"] == expires_at
    assert kosli.call("DELETE", kosli.keys_path(kosli.ci_id), kosli.admin).json() == "revoked"
    assert not kosli.works(kosli.ci) and not kosli.works(rotated["key"])


def test_a_rotated_secret_stops_working_at_its_expiry_with_401(kosli: Kosli) -> None:
    expires_at = math.ceil(time.time()) + 1
    rotated = kosli.rotate(kosli.ci_id, expires_at=expires_at, grace_period_hours=720).json()
    assert kosli.works(rotated["key"]) and kosli.works(kosli.ci), "the old secret is in its grace period"
    time.sleep(max(0.0, expires_at - time.time()) + 0.05)
    status = kosli.call("GET", "/environments/acme", rotated["key"]).status_code
    assert status == 401, "Kosli's expiry kills the rotated secret"
    assert kosli.works(kosli.ci), "the old secret lives on until its own grace end"


@pytest.mark.parametrize("hours", [0, 721, "many", None, 1.5])
def test_rotate_grace_period_validation(kosli: Kosli, hours: Any) -> None:
    response = kosli.rotate(kosli.ci_id, grace_period_hours=hours)
    assert response.status_code == 400
    assert response.json()["message"] == "Input payload validation failed"
    assert list(response.json()["errors"]) == ["grace_period_hours"]
    assert kosli.works(kosli.ci)  # nothing rotated


def test_rotate_new_id_mode(kosli: Kosli) -> None:
    settings = requests.post(f"{kosli.server.url}/_sandbox/settings", json={"rotate_new_id": True}, timeout=5)
    assert settings.json()["rotate_new_id"] is True
    rotated = kosli.rotate(kosli.ci_id, grace_period_hours=2).json()
    assert rotated["id"] != kosli.ci_id and KEY_ID.match(rotated["id"])
    assert rotated["description"] == "ci"
    assert {key["id"] for key in kosli.call("GET", kosli.keys_path(), kosli.admin).json()} == {
        kosli.ci_id,
        rotated["id"],
    }
    assert kosli.works(kosli.ci) and kosli.works(rotated["key"])
    assert [entry["role"] for entry in kosli.server.live_secrets("acme", "ci-bot", kosli.ci_id)] == ["previous"]
    assert kosli.rotate(kosli.ci_id).status_code == 400  # only its successor can be rotated

    time.sleep(max(0.0, rotated["grace_period_expires_at"] - time.time()) + 0.05)
    assert not kosli.works(kosli.ci)
    assert [key["id"] for key in kosli.call("GET", kosli.keys_path(), kosli.admin).json()] == [rotated["id"]]


def test_rotate_new_id_constructor_switch() -> None:
    with KosliSandbox(rotate_new_id=True) as server:
        kosli = Kosli(server)
        assert kosli.rotate(kosli.ci_id).json()["id"] != kosli.ci_id


# -- faults, rate limits and the test API ----------------------------------------------------------------


def test_status_fault_with_retry_after_on_the_probe(kosli: Kosli) -> None:
    kosli.server.faults.add("/environments/", status=429, headers={"Retry-After": "1"})
    throttled = kosli.call("GET", "/environments/acme", kosli.ci)
    assert (throttled.status_code, throttled.headers["Retry-After"]) == (429, "1")
    assert kosli.works(kosli.ci)


def test_drop_after_commit_on_rotate_commits_the_rotation(kosli: Kosli) -> None:
    rule = kosli.server.faults.add(r"/rotate$", method="POST", action="drop_after_commit")
    with pytest.raises(requests.ConnectionError):
        kosli.rotate(kosli.ci_id)
    assert rule.fired == 1
    live = kosli.server.live_secrets("acme", "ci-bot")
    assert sorted(entry["role"] for entry in live) == ["current", "previous"]
    new_secret = next(entry["secret"] for entry in live if entry["role"] == "current")
    assert kosli.works(new_secret)


def test_drop_before_on_create_changes_nothing(kosli: Kosli) -> None:
    kosli.server.faults.add(r"/api-keys$", method="POST", action="drop_before")
    with pytest.raises(requests.ConnectionError):
        kosli.call("POST", kosli.keys_path(), kosli.admin, json={"description": "lost"})
    assert len(kosli.call("GET", kosli.keys_path(), kosli.admin).json()) == 1


def test_optional_rate_limit_gives_429_with_retry_after() -> None:
    with KosliSandbox(rate_limit=2, rate_limit_window=30) as server:
        kosli = Kosli(server)
        statuses = [kosli.call("GET", "/environments/acme", kosli.ci).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = kosli.call("GET", "/environments/acme", kosli.ci)
        assert int(limited.headers["Retry-After"]) in range(29, 31)
        assert kosli.works(kosli.admin)  # limits are per key
        assert requests.get(f"{server.url}/_sandbox/stats", timeout=5).json()["rate_limited"] == 2


def test_admin_seed_and_live_secrets_over_http(kosli: Kosli) -> None:
    admin = f"{kosli.server.url}/_sandbox"
    seeded = requests.post(
        f"{admin}/seed",
        json={
            "orgs": {"initech": {"service_accounts": {"bot": {"privilege": "admin", "keys": [{"description": "a"}]}}}}
        },
        timeout=5,
    )
    assert seeded.status_code == 201
    key = seeded.json()["initech"]["bot"][0]
    assert kosli.call("GET", "/service-accounts/initech", key["key"]).status_code == 200
    live = requests.get(f"{admin}/live-secrets", params={"org": "initech", "sa": "bot"}, timeout=5).json()
    assert live == [{"key_id": key["id"], "secret": key["key"], "role": "current", "valid_until": None}]
    assert requests.get(f"{admin}/live-secrets", params={"org": "initech", "sa": "x"}, timeout=5).status_code == 404
    bad = requests.post(
        f"{admin}/seed", json={"orgs": {"o": {"service_accounts": {"b": {"privilege": "god"}}}}}, timeout=5
    )
    assert bad.status_code == 400


def test_in_process_create_key(kosli: Kosli) -> None:
    key_id, secret = kosli.server.create_key("acme", "ci-bot", description="direct")
    assert kosli.works(secret)
    assert kosli.call("GET", kosli.keys_path(key_id), kosli.admin).json()["description"] == "direct"
    with pytest.raises(LookupError):
        kosli.server.create_key("acme", "ghost")


# -- CLI -------------------------------------------------------------------------------------------------


def test_cli_serves_seeded_sandbox_until_sigterm(tmp_path: Path) -> None:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps({"orgs": {"acme": {"service_accounts": {"bot": {"keys": [{"description": "b"}]}}}}}))
    ready_file = tmp_path / "ready.json"
    command = [sys.executable, "-m", "sandbox", "kosli", "--port", "0", "--hour-seconds", "1", "--rotate-new-id"]
    command += ["--seed", str(seed), "--ready-file", str(ready_file)]
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        assert json.loads(ready_file.read_text()) == ready
        assert requests.get(f"{ready['url']}/ready", timeout=5).text == "OK"
        secret = ready["seeded"]["acme"]["bot"][0]["key"]
        probe = requests.get(f"{ready['url']}/api/v2/environments/acme", auth=(secret, ""), timeout=5)
        assert probe.json() == []
        settings = requests.get(f"{ready['url']}/_sandbox/settings", timeout=5).json()
        assert (settings["hour_seconds"], settings["rotate_new_id"]) == (1.0, True)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
