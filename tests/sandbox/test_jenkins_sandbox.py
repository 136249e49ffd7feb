"""Tests of the Jenkins sandbox's contract over real HTTP: plain ``requests`` and the real python-jenkins client."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any
from xml.sax.saxutils import escape

import jenkins
import pytest
import requests

from sandbox.jenkins import NO_VALID_CRUMB, SECRET_TEXT, JenkinsSandbox, add_cli_arguments, from_cli_args
from sandbox.kosli import KosliSandbox

ORG = "acme"
SYSTEM_DOMAIN = "/manage/credentials/store/system/domain/_"


def secret_text_xml(credential_id: str, secret: str, description: str = "") -> str:
    return (
        f"<{SECRET_TEXT}><scope>GLOBAL</scope><id>{credential_id}</id><description>{description}</description>"
        f"<secret>{escape(secret)}</secret></{SECRET_TEXT}>"
    )


class Jenkins:
    """A started sandbox with user ``admin`` (every permission) and a session that carries a crumb."""

    def __init__(self, server: JenkinsSandbox, kosli_key: str = "") -> None:
        self.server = server
        self.kosli_key = kosli_key
        self.token = server.add_user("admin")
        self.session = self.new_session("admin", self.token)

    def new_session(self, user: str, token: str, *, crumb: bool = True) -> requests.Session:
        session = requests.Session()
        session.auth = (user, token)
        if crumb:
            issued = session.get(f"{self.server.url}/crumbIssuer/api/json", timeout=5).json()
            session.headers[issued["crumbRequestField"]] = issued["crumb"]
        return session

    def call(self, method: str, path: str, session: requests.Session | None = None, **kwargs: Any) -> Any:
        return (session or self.session).request(method, self.server.url + path, timeout=5, **kwargs)

    def post_xml(self, path: str, xml: str, session: requests.Session | None = None) -> requests.Response:
        return self.call("POST", path, session, data=xml, headers={"Content-Type": "application/xml"})

    def wait_for_build(self, job: str, queue_id: int, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.call("GET", f"/queue/item/{queue_id}/api/json").json()
            if item.get("executable"):
                path = "".join(f"/job/{part}" for part in job.split("/"))
                build = self.call("GET", f"{path}/{item['executable']['number']}/api/json").json()
                if not build["building"]:
                    return build
            time.sleep(0.05)
        raise AssertionError(f"build of {job} did not finish")


@pytest.fixture
def kosli() -> Iterator[tuple[KosliSandbox, str]]:
    with KosliSandbox() as server:
        minted = server.seed(ORG, service_accounts={"ci-bot": {"privilege": "member", "keys": [{}]}})
        yield server, minted["ci-bot"][0]["key"]


@pytest.fixture
def jenkins_sandbox(kosli: tuple[KosliSandbox, str]) -> Iterator[Jenkins]:
    kosli_server, key = kosli
    server = JenkinsSandbox(kosli_url=kosli_server.url, kosli_org=ORG, canary_seconds=0.1, quiet_period=0.05)
    with server:
        yield Jenkins(server, key)
        server.wait_for_builds()


# -- auth and crumbs -------------------------------------------------------------------------------------


def test_wrong_token_is_401_with_jenkins_error_page(jenkins_sandbox: Jenkins) -> None:
    response = requests.get(f"{jenkins_sandbox.server.url}/api/json", auth=("admin", "wrong"), timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="Jenkins"'
    assert response.headers["X-Jenkins"] == "2.479.3"
    assert "<title>Error 401 Invalid password/token for user: admin</title>" in response.text
    unknown_user = requests.get(f"{jenkins_sandbox.server.url}/api/json", auth=("ghost", "x"), timeout=5)
    assert unknown_user.status_code == 401


def test_anonymous_is_403_authentication_required(jenkins_sandbox: Jenkins) -> None:
    response = requests.get(f"{jenkins_sandbox.server.url}/api/json", timeout=5)
    assert response.status_code == 403
    assert response.headers["X-You-Are-Authenticated-As"] == "anonymous"
    assert "Authentication required" in response.text


def test_password_works_as_well_as_the_api_token(jenkins_sandbox: Jenkins) -> None:
    token = jenkins_sandbox.server.add_user("human", password="s3cret")
    for secret in (token, "s3cret"):
        response = requests.get(f"{jenkins_sandbox.server.url}/api/json", auth=("human", secret), timeout=5)
        assert (response.status_code, response.json()["_class"]) == (200, "hudson.model.Hudson")


def test_posts_need_the_crumb_of_the_same_user_and_session(jenkins_sandbox: Jenkins) -> None:
    xml = secret_text_xml("a", "value")
    no_crumb = jenkins_sandbox.new_session("admin", jenkins_sandbox.token, crumb=False)
    refused = jenkins_sandbox.post_xml(f"{SYSTEM_DOMAIN}/createCredentials", xml, no_crumb)
    assert refused.status_code == 403
    assert NO_VALID_CRUMB in refused.text

    stolen = jenkins_sandbox.new_session("admin", jenkins_sandbox.token, crumb=False)
    stolen.headers["Jenkins-Crumb"] = jenkins_sandbox.session.headers["Jenkins-Crumb"]  # no session cookie
    assert jenkins_sandbox.post_xml(f"{SYSTEM_DOMAIN}/createCredentials", xml, stolen).status_code == 403

    assert jenkins_sandbox.post_xml(f"{SYSTEM_DOMAIN}/createCredentials", xml).status_code == 200
    settings = requests.post(
        f"{jenkins_sandbox.server.url}/_sandbox/settings", json={"require_crumb": False}, timeout=5
    )
    assert settings.json()["require_crumb"] is False
    assert jenkins_sandbox.post_xml(f"{SYSTEM_DOMAIN}/createCredentials", secret_text_xml("b", "v"), no_crumb).ok


def test_python_jenkins_handles_auth_crumb_version_and_folder_helpers(jenkins_sandbox: Jenkins) -> None:
    jenkins_sandbox.server.add_folder("team")
    client = jenkins.Jenkins(jenkins_sandbox.server.url, "admin", jenkins_sandbox.token)
    assert client.get_info()["useCrumbs"] is True
    assert client.get_version() == "2.479.3"
    client.create_credential("team", secret_text_xml("kosli", "first", "team key"))
    assert client.list_credentials("team") == [{"id": "kosli"}]
    assert client.credential_exists("kosli", "team")
    client.reconfig_credential("team", secret_text_xml("kosli", "second", "team key"))
    assert jenkins_sandbox.server.stored_credential("kosli", folder="team")["secret"] == "second"
    assert "{AQAAAB" in client.get_credential_config("kosli", "team")
    bad = jenkins.Jenkins(jenkins_sandbox.server.url, "admin", "wrong")
    with pytest.raises(jenkins.JenkinsException, match=r"\[401\]"):
        bad.get_info()


# -- credentials -----------------------------------------------------------------------------------------


def test_create_get_update_and_delete_a_secret_text(jenkins_sandbox: Jenkins) -> None:
    credential = f"{SYSTEM_DOMAIN}/credential/kosli"
    assert jenkins_sandbox.call("GET", f"{credential}/config.xml").status_code == 404
    created = jenkins_sandbox.post_xml(f"{SYSTEM_DOMAIN}/createCredentials", secret_text_xml("kosli", "v1", "d"))
    assert (created.status_code, created.text) == (200, "")
    duplicate = jenkins_sandbox.post_xml(f"{SYSTEM_DOMAIN}/createCredentials", secret_text_xml("kosli", "v2"))
    assert duplicate.status_code == 409

    shown = jenkins_sandbox.call("GET", f"{credential}/config.xml")
    assert shown.headers["Content-Type"] == "application/xml"
    assert "<id>kosli</id>" in shown.text and "<description>d</description>" in shown.text
    assert "<secret>{AQAAABAAAAAQ" in shown.text  # a short value: one 16-byte block
    assert "v1" not in shown.text

    updated = jenkins_sandbox.post_xml(f"{credential}/config.xml", secret_text_xml("kosli", "second-value <&>", "d2"))
    assert updated.status_code == 200
    stored = jenkins_sandbox.server.stored_credential("kosli")
    assert (stored["secret"], stored["description"]) == ("second-value <&>", "d2")
    assert "second-value" not in stored["stored_xml"], "stored encrypted"

    listed = jenkins_sandbox.call("GET", f"{SYSTEM_DOMAIN}/api/json", params={"tree": "credentials[id]"}).json()
    assert listed["credentials"] == [{"id": "kosli"}]
    info = jenkins_sandbox.call("GET", "/credentials/store/system/domain/_/credentials/kosli/api/json").json()
    assert (info["id"], info["typeName"], info["description"]) == ("kosli", "Secret text", "d2")

    assert jenkins_sandbox.call("DELETE", f"{credential}/config.xml").status_code == 200
    assert jenkins_sandbox.call("GET", f"{credential}/config.xml").status_code == 404


def test_posting_back_the_encrypted_value_keeps_the_secret(jenkins_sandbox: Jenkins) -> None:
    jenkins_sandbox.server.put_credential("kosli", "original", description="before")
    path = f"{SYSTEM_DOMAIN}/credential/kosli/config.xml"
    shown = jenkins_sandbox.call("GET", path).text
    assert jenkins_sandbox.post_xml(path, shown.replace("before", "after")).status_code == 200
    assert jenkins_sandbox.server.stored_credential("kosli") | {"stored_xml": ""} == {
        "class": SECRET_TEXT,
        "id": "kosli",
        "scope": "GLOBAL",
        "description": "after",
        "secret": "original",
        "stored_xml": "",
    }


def test_redacted_mode_shows_secret_redacted_and_refuses_it_back(jenkins_sandbox: Jenkins) -> None:
    jenkins_sandbox.server.put_credential("kosli", "original")
    jenkins_sandbox.server.apply_settings({"redact_secrets": True})
    path = f"{SYSTEM_DOMAIN}/credential/kosli/config.xml"
    shown = jenkins_sandbox.call("GET", path).text
    assert "<secret><secret-redacted /></secret>" in shown and "AQAA" not in shown
    refused = jenkins_sandbox.post_xml(path, shown)
    assert refused.status_code == 400
    assert jenkins_sandbox.server.stored_credential("kosli")["secret"] == "original"


@pytest.mark.parametrize(
    "path",
    [
        "/manage/credentials/store/system/domain/nope/createCredentials",
        "/credentials/store/folder/domain/_/createCredentials",
        "/job/nofolder/credentials/store/folder/domain/_/createCredentials",
        "/job/team/credentials/store/system/domain/_/createCredentials",
        f"{SYSTEM_DOMAIN}/credential/ghost/config.xml",
    ],
)
def test_unknown_store_domain_folder_or_id_is_404(jenkins_sandbox: Jenkins, path: str) -> None:
    jenkins_sandbox.server.add_folder("team")
    response = jenkins_sandbox.post_xml(path, secret_text_xml("x", "y"))
    assert response.status_code == 404
    assert "HTTP ERROR 404" in response.text


def test_bad_bodies(jenkins_sandbox: Jenkins) -> None:
    create = f"{SYSTEM_DOMAIN}/createCredentials"
    no_type = jenkins_sandbox.call("POST", create, data=b"<x/>")
    assert (no_type.status_code, "No Content-Type header set" in no_type.text) == (400, True)
    broken = jenkins_sandbox.post_xml(create, "<not-closed>")
    assert (broken.status_code, "Failed to parse credential" in broken.text) == (500, True)
    generated = jenkins_sandbox.post_xml(create, f"<{SECRET_TEXT}><secret>v</secret></{SECRET_TEXT}>")
    assert generated.status_code == 200
    assert len(jenkins_sandbox.call("GET", f"{SYSTEM_DOMAIN}/api/json").json()["credentials"][0]["id"]) == 36


def test_permissions_are_checked_per_action(jenkins_sandbox: Jenkins) -> None:
    jenkins_sandbox.server.put_credential("kosli", "original")
    token = jenkins_sandbox.server.add_user("viewer", permissions=["Overall/Read", "Credentials/View"])
    viewer = jenkins_sandbox.new_session("viewer", token)
    path = f"{SYSTEM_DOMAIN}/credential/kosli/config.xml"
    assert jenkins_sandbox.call("GET", path, viewer).status_code == 200
    refused = jenkins_sandbox.post_xml(path, secret_text_xml("kosli", "new"), viewer)
    assert refused.status_code == 403
    assert "viewer is missing the Credentials/Update permission" in refused.text
    assert refused.headers["X-Required-Permission"] == "com.cloudbees.plugins.credentials.CredentialsProvider.Update"
    assert jenkins_sandbox.post_xml(f"{SYSTEM_DOMAIN}/createCredentials", "<x/>", viewer).status_code == 403
    assert jenkins_sandbox.server.stored_credential("kosli")["secret"] == "original"
    reader = jenkins_sandbox.new_session(
        "nobody", jenkins_sandbox.server.add_user("nobody", permissions=[]), crumb=False
    )
    assert "missing the Overall/Read permission" in jenkins_sandbox.call("GET", "/api/json", reader).text


# -- rate limit (a proxy in front of Jenkins) ------------------------------------------------------------


def test_switchable_proxy_rate_limit_gives_503_with_retry_after(jenkins_sandbox: Jenkins) -> None:
    server = jenkins_sandbox.server
    settings = requests.post(
        f"{server.url}/_sandbox/settings", json={"rate_limit": 2, "rate_limit_window": 30}, timeout=5
    )
    assert (settings.json()["rate_limit"], settings.json()["rate_limit_window"]) == (2, 30.0)
    statuses = [jenkins_sandbox.call("GET", "/api/json").status_code for _ in range(3)]
    assert statuses == [200, 200, 503]
    limited = jenkins_sandbox.call("GET", "/api/json")
    assert int(limited.headers["Retry-After"]) in range(29, 31)
    assert "503 Service Temporarily Unavailable" in limited.text
    other_user = jenkins_sandbox.new_session("other", server.add_user("other"), crumb=False)
    assert jenkins_sandbox.call("GET", "/api/json", other_user).status_code == 200  # limits are per user
    assert requests.get(f"{server.url}/_sandbox/stats", timeout=5).json()["rate_limited"] == 2
    server.apply_settings({"rate_limit": None})
    assert jenkins_sandbox.call("GET", "/api/json").status_code == 200


# -- jobs, queue, builds ---------------------------------------------------------------------------------


def test_canary_build_uses_the_stored_secret(jenkins_sandbox: Jenkins) -> None:
    server = jenkins_sandbox.server
    server.add_job("canaries/kosli", credential_id="kosli")
    server.put_credential("kosli", jenkins_sandbox.kosli_key)

    triggered = jenkins_sandbox.call("POST", "/job/canaries/job/kosli/build")
    assert triggered.status_code == 201
    location = triggered.headers["Location"]
    assert location == f"{server.url}/queue/item/1/"
    waiting = jenkins_sandbox.call("GET", "/queue/item/1/api/json").json()
    assert waiting["_class"] == "hudson.model.Queue$WaitingItem" and "executable" not in waiting

    build = jenkins_sandbox.wait_for_build("canaries/kosli", 1)
    assert (build["number"], build["result"], build["building"], build["queueId"]) == (1, "SUCCESS", False, 1)
    console = jenkins_sandbox.call("GET", "/job/canaries/job/kosli/1/consoleText").text
    assert "HTTP 200" in console and jenkins_sandbox.kosli_key not in console

    server.put_credential("kosli", "wrong-key")
    second = jenkins_sandbox.call("POST", "/job/canaries/job/kosli/build").headers["Location"]
    assert jenkins_sandbox.wait_for_build("canaries/kosli", int(second.rstrip("/").rsplit("/", 1)[1]))["result"] == (
        "FAILURE"
    )
    job = jenkins_sandbox.call("GET", "/job/canaries/job/kosli/api/json").json()
    assert (job["nextBuildNumber"], job["lastBuild"]["number"]) == (3, 2)


def test_canary_fails_without_the_credential_and_prefers_the_folder_store(jenkins_sandbox: Jenkins) -> None:
    server = jenkins_sandbox.server
    server.add_job("team/canary", credential_id="kosli")
    queue_id = int(jenkins_sandbox.call("POST", "/job/team/job/canary/build").headers["Location"].split("/")[-2])
    failed = jenkins_sandbox.wait_for_build("team/canary", queue_id)
    assert failed["result"] == "FAILURE"
    assert "Could not find credentials entry with ID 'kosli'" in server.builds("team/canary")[0]["console"][1]

    server.put_credential("kosli", "wrong-system-value")
    server.put_credential("kosli", jenkins_sandbox.kosli_key, folder="team")
    queue_id = int(jenkins_sandbox.call("POST", "/job/team/job/canary/build").headers["Location"].split("/")[-2])
    assert jenkins_sandbox.wait_for_build("team/canary", queue_id)["result"] == "SUCCESS"


def test_build_parameters_and_python_jenkins_build_flow(jenkins_sandbox: Jenkins) -> None:
    server = jenkins_sandbox.server
    server.put_credential("kosli", jenkins_sandbox.kosli_key)
    server.add_job("plain", credential_id="kosli")
    server.add_job("param", credential_id="kosli", parameters={"A": "default-a", "B": "default-b"})
    assert jenkins_sandbox.call("POST", "/job/plain/buildWithParameters", params={"A": "1"}).status_code == 400
    assert jenkins_sandbox.call("GET", "/job/plain/build").status_code == 405

    client = jenkins.Jenkins(server.url, "admin", jenkins_sandbox.token)
    queue_id = client.build_job("param", {"A": "given"})
    build = jenkins_sandbox.wait_for_build("param", queue_id)
    parameters = build["actions"][0]["parameters"]
    assert parameters == [{"name": "A", "value": "given"}, {"name": "B", "value": "default-b"}]
    assert client.get_queue_item(queue_id)["executable"]["number"] == 1
    assert client.get_build_info("param", 1)["result"] == "SUCCESS"
    assert jenkins_sandbox.call("POST", "/job/ghost/build").status_code == 404


def test_build_needs_job_build_permission(jenkins_sandbox: Jenkins) -> None:
    jenkins_sandbox.server.add_job("plain")
    token = jenkins_sandbox.server.add_user("reader", permissions=["Overall/Read", "Job/Read"])
    refused = jenkins_sandbox.call("POST", "/job/plain/build", jenkins_sandbox.new_session("reader", token))
    assert refused.status_code == 403 and "missing the Job/Build permission" in refused.text


# -- seeding, admin API, CLI -----------------------------------------------------------------------------


def test_seed_document_and_admin_endpoints(jenkins_sandbox: Jenkins) -> None:
    url = jenkins_sandbox.server.url
    seeded = requests.post(
        f"{url}/_sandbox/seed",
        json={
            "users": {"bot": {"permissions": ["Overall/Read", "Credentials/View"]}},
            "folders": ["team/app"],
            "domains": {"system": ["prod"], "team/app": ["staging"]},
            "credentials": [{"id": "k", "secret": "v", "folder": "team/app", "domain": "staging"}],
            "jobs": {"team/app/canary": {"credential_id": "k", "org": ORG}},
        },
        timeout=5,
    )
    assert seeded.status_code == 201
    token = seeded.json()["users"]["bot"]["api_token"]
    bot = jenkins_sandbox.new_session("bot", token, crumb=False)
    path = "/job/team/job/app/credentials/store/folder/domain/staging/credential/k/config.xml"
    assert jenkins_sandbox.call("GET", path, bot).status_code == 200
    assert jenkins_sandbox.call("GET", f"{SYSTEM_DOMAIN.replace('/_', '/prod')}/api/json").status_code == 200
    stored = requests.get(
        f"{url}/_sandbox/credential", params={"id": "k", "folder": "team/app", "domain": "staging"}, timeout=5
    )
    assert stored.json()["secret"] == "v"
    assert requests.get(f"{url}/_sandbox/credential", params={"id": "nope"}, timeout=5).status_code == 404
    assert requests.get(f"{url}/_sandbox/builds", params={"job": "team/app/canary"}, timeout=5).json() == []
    bad = requests.post(f"{url}/_sandbox/seed", json={"users": {"x": {"permissions": ["God"]}}}, timeout=5)
    assert bad.status_code == 400


def test_cli_arguments_build_a_configured_sandbox() -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("--hour-seconds", 3600.0), ("--latency", 0.0)):
        parser.add_argument(name, type=float, default=default)
    parser.add_argument("--access-log", action="store_true")
    add_cli_arguments(parser)
    args = parser.parse_args(
        ["--kosli-url", "http://kosli:1/", "--kosli-org", ORG, "--no-crumb", "--redact-secrets", "--rate-limit", "5"]
    )
    server = from_cli_args(args)
    assert (server.kosli_url, server.kosli_org, server.require_crumb, server.redact_secrets) == (
        "http://kosli:1",
        ORG,
        False,
        True,
    )
    assert (server.rate_limit, server.rate_limit_window, server.canary_seconds) == (5, 60.0, 0.5)
