"""Tests of the GCP Secret Manager sandbox's contract over real HTTP: requests with tokens from google-auth (the
token endpoint and self-signed JWTs), and google-cloud-secret-manager's REST client."""

from __future__ import annotations

import argparse
import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox import gcp_secret_manager
from sandbox.gcp_iam import CLOUD_PLATFORM, GcpIam
from sandbox.gcp_secret_manager import GcpSecretManagerSandbox, crc32c
from sandbox.gcp_secret_store import DISABLED

PROJECT = "acme-prod"
ADMIN = f"admin@{PROJECT}.iam.gserviceaccount.com"
READER = f"reader@{PROJECT}.iam.gserviceaccount.com"
ENUMS = {"$alt": "json;enum-encoding=int"}


def minted_token(key: dict[str, Any]) -> str:
    """An access token from the sandbox's token endpoint (the JWT-bearer grant google-auth makes)."""
    import google.auth.transport.requests
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_info(key, scopes=[CLOUD_PLATFORM])
    credentials.refresh(google.auth.transport.requests.Request())
    return str(credentials.token)


def self_signed(key: dict[str, Any], **claims: Any) -> str:
    """A self-signed JWT, as gapic clients send for a service account key."""
    from google.auth import crypt, jwt

    now = int(time.time())
    payload = {"iss": key["client_email"], "sub": key["client_email"], "iat": now, "exp": now + 3600}
    payload |= {"scope": CLOUD_PLATFORM, **claims}
    signer = crypt.RSASigner.from_service_account_info(key)
    return jwt.encode(signer, payload).decode()


class Gcp:
    def __init__(self, server: GcpSecretManagerSandbox) -> None:
        self.server = server
        self.number = server.add_project(PROJECT)
        self.admin_key = server.add_service_account(ADMIN, ["roles/secretmanager.admin"])
        self.reader_key = server.add_service_account(READER, ["roles/secretmanager.secretAccessor"])
        self.admin = minted_token(self.admin_key)
        self.reader = self_signed(self.reader_key)

    def call(self, method: str, path: str, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        params = {**ENUMS, **kwargs.pop("params", {})}
        url = f"{self.server.url}/v1/projects/{PROJECT}/{path}"
        return requests.request(method, url, headers=headers, params=params, timeout=5, **kwargs)

    def add(self, secret: str, value: bytes, token: str | None = None, **payload: Any) -> requests.Response:
        body = {"payload": {"data": base64.b64encode(value).decode(), **payload}}
        return self.call("POST", f"secrets/{secret}:addVersion", token or self.admin, json=body)


@pytest.fixture
def gcp() -> Iterator[Gcp]:
    with GcpSecretManagerSandbox() as server:
        yield Gcp(server)


def error(response: requests.Response) -> tuple[int, str, str]:
    body = response.json()["error"]
    assert body["code"] == response.status_code
    return response.status_code, body["status"], body["message"]


def test_crc32c_is_castagnoli() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_create_get_and_conflict_name_secrets_by_project_number(gcp: Gcp) -> None:
    body = {"replication": {"userManaged": {"replicas": [{"location": "europe-west1"}]}}, "labels": {"a": "b"}}
    created = gcp.call("POST", "secrets", gcp.admin, params={"secretId": "k"}, json=body)
    assert created.status_code == 200
    assert created.json()["name"] == f"projects/{gcp.number}/secrets/k"
    assert created.json()["replication"] == body["replication"]

    again = gcp.call("POST", "secrets", gcp.admin, params={"secretId": "k"}, json=body)
    assert error(again) == (409, "ALREADY_EXISTS", f"Secret [projects/{gcp.number}/secrets/k] already exists.")
    assert error(gcp.call("POST", "secrets", gcp.admin, params={"secretId": "a/b"}, json=body))[:2] == (
        400,
        "INVALID_ARGUMENT",
    )
    assert error(gcp.call("POST", "secrets", gcp.admin, params={"secretId": "x"}, json={}))[:2] == (
        400,
        "INVALID_ARGUMENT",
    )
    gcp.server.set_alias(PROJECT, "k", "prod", 1)
    assert gcp.call("GET", "secrets/k", gcp.admin).json()["versionAliases"] == {"prod": "1"}


def test_add_version_checks_the_crc32c_it_is_given(gcp: Gcp) -> None:
    gcp.server.put_secret(PROJECT, "k")
    added = gcp.add("k", b"hello", dataCrc32c=str(crc32c(b"hello")))
    assert added.status_code == 200
    assert added.json()["state"] == 1 and added.json()["clientSpecifiedPayloadChecksum"] is True

    status, code, _ = error(gcp.add("k", b"hello", dataCrc32c="5"))
    assert (status, code) == (400, "INVALID_ARGUMENT")
    assert gcp.add("k", b"no checksum").json()["clientSpecifiedPayloadChecksum"] is False
    assert len(gcp.server.versions(PROJECT, "k")) == 2


def test_latest_is_the_highest_number_whatever_its_state(gcp: Gcp) -> None:
    gcp.server.put_secret(PROJECT, "k", "one")
    gcp.server.add_version(PROJECT, "k", "two")
    access = gcp.call("GET", "secrets/k/versions/latest:access", gcp.reader).json()
    assert access["name"] == f"projects/{gcp.number}/secrets/k/versions/2"
    assert base64.b64decode(access["payload"]["data"]) == b"two"
    assert access["payload"]["dataCrc32c"] == str(crc32c(b"two"))

    disabled = gcp.call("POST", "secrets/k/versions/2:disable", gcp.admin, json={})
    assert disabled.json()["state"] == DISABLED
    status, code, message = error(gcp.call("GET", "secrets/k/versions/latest:access", gcp.reader))
    assert (status, code) == (400, "FAILED_PRECONDITION")
    assert message == f"Secret Version [projects/{gcp.number}/secrets/k/versions/2] is in DISABLED state."
    assert gcp.call("GET", "secrets/k/versions/1:access", gcp.reader).status_code == 200
    gcp.server.set_alias(PROJECT, "k", "prod", 1)
    assert gcp.call("GET", "secrets/k/versions/prod:access", gcp.reader).status_code == 200

    destroyed = gcp.call("POST", "secrets/k/versions/1:destroy", gcp.admin, json={}).json()
    assert destroyed["state"] == 3 and "destroyTime" in destroyed
    assert gcp.server.payload(PROJECT, "k", 1) is None
    assert error(gcp.call("POST", "secrets/k/versions/1:enable", gcp.admin, json={}))[1] == "FAILED_PRECONDITION"
    assert gcp.call("POST", "secrets/k/versions/2:enable", gcp.admin, json={}).json()["state"] == 1


def test_states_are_names_unless_integers_are_asked_for(gcp: Gcp) -> None:
    gcp.server.put_secret(PROJECT, "k", "one")
    url = f"{gcp.server.url}/v1/projects/{PROJECT}/secrets/k/versions/1"
    plain = requests.get(url, headers={"Authorization": f"Bearer {gcp.admin}"}, timeout=5)
    assert plain.json()["state"] == "ENABLED"
    assert gcp.call("GET", "secrets/k/versions/1", gcp.admin).json()["state"] == 1


def test_versions_are_listed_newest_first_in_pages(gcp: Gcp) -> None:
    gcp.server.put_secret(PROJECT, "k", "v1")
    for value in ("v2", "v3"):
        gcp.server.add_version(PROJECT, "k", value)
    first = gcp.call("GET", "secrets/k/versions", gcp.admin, params={"pageSize": 2}).json()
    assert [v["name"].rsplit("/", 1)[1] for v in first["versions"]] == ["3", "2"] and first["totalSize"] == 3
    rest = gcp.call("GET", "secrets/k/versions", gcp.admin, params={"pageToken": first["nextPageToken"]}).json()
    assert [v["name"].rsplit("/", 1)[1] for v in rest["versions"]] == ["1"] and "nextPageToken" not in rest


def test_missing_things_are_404_for_callers_allowed_to_see_them_and_403_otherwise(gcp: Gcp) -> None:
    status, code, message = error(gcp.call("GET", "secrets/absent/versions/latest:access", gcp.reader))
    assert (status, code) == (404, "NOT_FOUND") and "not found or has no versions" in message
    status, code, message = error(gcp.add("absent", b"x", gcp.reader))
    assert (status, code) == (403, "PERMISSION_DENIED")
    assert message == (
        f"Permission 'secretmanager.versions.add' denied for resource 'projects/{PROJECT}/secrets/absent' "
        "(or it may not exist)."
    )
    gcp.server.put_secret(PROJECT, "k")
    assert error(gcp.call("GET", "secrets/k/versions/latest:access", gcp.reader))[0] == 404, "no versions yet"
    gcp.server.iam.grant(READER, "roles/secretmanager.secretVersionAdder", f"projects/{PROJECT}/secrets/k")
    assert gcp.add("k", b"x", gcp.reader).status_code == 200, "a binding on the secret itself counts"
    tested = gcp.call(
        "POST",
        "secrets/k:testIamPermissions",
        gcp.reader,
        json={
            "permissions": [
                "secretmanager.versions.add",
                "secretmanager.versions.access",
                "secretmanager.versions.destroy",
            ]
        },
    ).json()
    assert tested == {"permissions": ["secretmanager.versions.add", "secretmanager.versions.access"]}


def test_add_version_is_limited_per_secret(gcp: Gcp) -> None:
    for secret in ("a", "b"):
        gcp.server.put_secret(PROJECT, secret)
    statuses = [gcp.add("a", b"x").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert error(gcp.add("a", b"x"))[1] == "RESOURCE_EXHAUSTED"
    assert gcp.add("b", b"x").status_code == 200, "another secret has its own quota"
    time.sleep(1.05)
    assert gcp.add("a", b"x").status_code == 200
    assert gcp.server.stats()["rate_limited"] == 2 and gcp.server.version_adds(PROJECT, "a") == 3


def test_callers_need_a_valid_bearer_token(gcp: Gcp) -> None:
    gcp.server.put_secret(PROJECT, "k", "v")
    path = "secrets/k/versions/latest:access"
    for token in (
        None,
        "ya29.never-issued",
        self_signed(gcp.reader_key, scope="https://www.googleapis.com/auth/drive"),
    ):
        refused = gcp.call("GET", path, token)
        assert error(refused)[:2] == (401, "UNAUTHENTICATED")
        assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    stranger = GcpIam(lambda: "http://127.0.0.1:9/token").add_service_account(f"x@{PROJECT}.iam.gserviceaccount.com")
    assert gcp.call("GET", path, self_signed(stranger)).status_code == 401, "a key the sandbox never issued"
    expired = self_signed(gcp.reader_key, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    assert gcp.call("GET", path, expired).status_code == 401
    assert gcp.call("GET", path, gcp.reader).status_code == 200

    gcp.server.iam.delete_key(READER, gcp.reader_key["private_key_id"])
    assert gcp.call("GET", path, self_signed(gcp.reader_key)).status_code == 401, "a deleted key"
    gcp.server.iam.set_disabled(ADMIN)
    assert gcp.call("GET", path, gcp.admin).status_code == 401, "a disabled account's minted token"


def test_the_token_endpoint_refuses_what_it_did_not_issue(gcp: Gcp) -> None:
    import google.auth.exceptions

    token_uri = gcp.server.iam.token_uri
    assert gcp.admin_key["token_uri"] == token_uri
    stranger = GcpIam(lambda: token_uri).add_service_account(f"x@{PROJECT}.iam.gserviceaccount.com")
    with pytest.raises(google.auth.exceptions.RefreshError, match="invalid_grant"):
        minted_token(stranger)
    wrong_grant = requests.post(token_uri, data={"grant_type": "password", "assertion": "x"}, timeout=5)
    assert wrong_grant.status_code == 400 and wrong_grant.json()["error"] == "unsupported_grant_type"
    assert gcp.server.stats()["tokens_minted"] == 1


def test_the_client_library_works_against_it(gcp: Gcp) -> None:
    from google.api_core.client_options import ClientOptions
    from google.cloud import secretmanager
    from google.oauth2 import service_account

    credentials = service_account.Credentials.from_service_account_info(gcp.admin_key, scopes=[CLOUD_PLATFORM])
    client = secretmanager.SecretManagerServiceClient(
        transport="rest", credentials=credentials, client_options=ClientOptions(api_endpoint=gcp.server.url)
    )
    parent = f"projects/{PROJECT}"
    client.create_secret(request={"parent": parent, "secret_id": "k", "secret": {"replication": {"automatic": {}}}})
    client.add_secret_version(
        request={"parent": f"{parent}/secrets/k", "payload": {"data": b"v", "data_crc32c": crc32c(b"v")}}
    )
    client.disable_secret_version(name=f"{parent}/secrets/k/versions/1")
    versions = list(client.list_secret_versions(request={"parent": f"{parent}/secrets/k"}))
    assert [(v.name, v.state) for v in versions] == [(f"projects/{gcp.number}/secrets/k/versions/1", DISABLED)]
    assert [s.name for s in client.list_secrets(request={"parent": parent, "page_size": 1})] == [
        f"projects/{gcp.number}/secrets/k"
    ]


def test_cli_arguments_and_seed_document() -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("--hour-seconds", 3600.0), ("--latency", 0.0)):
        parser.add_argument(name, type=float, default=default)
    parser.add_argument("--access-log", action="store_true")
    gcp_secret_manager.add_cli_arguments(parser)
    server = gcp_secret_manager.from_cli_args(parser.parse_args(["--add-version-qps", "5", "--page-size", "3"]))
    assert server.add_limiter.limit == 5 and server.page_size == 3
    with server:
        seeded = server.seed_document(
            {
                "projects": [PROJECT],
                "service_accounts": [{"email": ADMIN, "roles": ["roles/secretmanager.admin"]}],
                "secrets": [{"project": PROJECT, "secret_id": "k", "value": "v"}],
            }
        )
        assert seeded["keys"][ADMIN]["token_uri"] == f"{server.url}/token"
        assert server.payload(PROJECT, "k") == b"v"
