"""The Key Vault sandbox's contract over real HTTPS, driven with plain ``requests`` trusting the test CA: TLS, the
bearer challenge, Entra's token endpoints, error shapes, versions and paging, soft delete, RBAC and throttling.
Then its fixture adapter, as the contract test will drive it."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.adapters import FleetSettings, adapter_class
from sandbox.azure_identity import OFFICER, READER, SECRETS_USER
from sandbox.azure_key_vault import AzureKeyVaultSandbox, add_cli_arguments, from_cli_args
from sandbox.tls import CA_BUNDLE_VARIABLE, CertificateAuthority, make_authority

API = {"api-version": "2026-04-01"}
OLD_VALUE, NEW_VALUE = "old-value-" + "o" * 20, "new-value-" + "n" * 20
CHALLENGE = re.compile(
    r'^Bearer authorization="(?P<authority>https://[^"]+)/(?P<tenant>[^"/]+)", resource="(?P<r>[^"]+)"$'
)


@pytest.fixture(scope="module")
def authority() -> Iterator[CertificateAuthority]:
    with tempfile.TemporaryDirectory() as directory:
        yield make_authority(Path(directory))


class Vault:
    """A started sandbox, an Officer app's token, and calls made like the SDK's (JSON, api-version)."""

    def __init__(self, server: AzureKeyVaultSandbox, ca_file: Path) -> None:
        self.server, self.ca = server, str(ca_file)
        self.client_id, self.secret = server.add_app(OFFICER)
        self.token = self.token_for(self.client_id, self.secret)

    def token_for(self, client_id: str, secret: str, scope: str = "https://vault.azure.net/.default") -> str:
        response = self.token_request(client_id, secret, scope)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    def token_request(self, client_id: str, secret: str, scope: str, tenant: str | None = None) -> requests.Response:
        form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": scope}
        url = f"{self.server.url}/{tenant or self.server.tenant}/oauth2/v2.0/token"
        return requests.post(url, data=form, verify=self.ca, timeout=5)

    def call(self, method: str, path: str, token: str | None = "", params: Any = API, **kwargs: Any) -> Any:
        token = self.token if token == "" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers |= kwargs.pop("headers", {})
        url = path if path.startswith("https://") else self.server.url + path
        return requests.request(method, url, headers=headers, params=params, verify=self.ca, timeout=5, **kwargs)

    def put(self, name: str, value: str, token: str | None = "", **body: Any) -> requests.Response:
        return self.call("PUT", f"/secrets/{name}", token, json={"value": value, **body})


@pytest.fixture
def vault(authority: CertificateAuthority) -> Iterator[Vault]:
    with AzureKeyVaultSandbox(authority=authority, recover_seconds=0.3) as server:
        yield Vault(server, authority.ca_file)


def error_of(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) <= {"code", "message", "innererror"} and error["message"]
    return dict(error)


# -- TLS, the challenge, tokens ------------------------------------------------------------------------------


def test_it_serves_https_only_with_a_certificate_of_the_test_ca(vault: Vault) -> None:
    assert vault.server.url.startswith("https://127.0.0.1:")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(vault.server.url + "/secrets/x", timeout=5)  # the default trust store does not know it
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(vault.server.url.replace("https://", "http://") + "/secrets/x", timeout=5)
    localhost = vault.server.url.replace("127.0.0.1", "localhost")
    assert requests.get(localhost + "/secrets/x", verify=vault.ca, timeout=5).status_code == 401


@pytest.mark.parametrize("token", [None, "sbx.unknown", "Basic"])
def test_a_request_without_a_valid_token_gets_the_bearer_challenge(vault: Vault, token: str | None) -> None:
    response = vault.call("GET", "/secrets/kosli", token=token)
    assert error_of(response, 401)["code"] == "Unauthorized"
    challenge = CHALLENGE.match(response.headers["WWW-Authenticate"])
    assert challenge is not None, response.headers["WWW-Authenticate"]
    assert (challenge["authority"], challenge["tenant"], challenge["r"]) == (
        vault.server.url,
        vault.server.tenant,
        "https://vault.azure.net",
    )


def test_tokens_are_bound_to_their_audience_and_expire(authority: CertificateAuthority) -> None:
    with AzureKeyVaultSandbox(authority=authority, token_seconds=0.5) as server:
        world = Vault(server, authority.ca_file)
        other = world.token_for(world.client_id, world.secret, "https://management.azure.com/.default")
        assert "Invalid audience" in error_of(world.call("GET", "/secrets/kosli", other), 401)["message"]
        assert world.call("GET", "/secrets/kosli").status_code == 404
        time.sleep(0.6)
        assert "expired" in error_of(world.call("GET", "/secrets/kosli"), 401)["message"]


def test_openid_discovery_and_token_errors_have_entra_shapes(vault: Vault) -> None:
    tenant, url = vault.server.tenant, vault.server.url
    config = requests.get(f"{url}/{tenant}/v2.0/.well-known/openid-configuration", verify=vault.ca, timeout=5).json()
    assert config["token_endpoint"] == f"{url}/{tenant}/oauth2/v2.0/token"
    assert config["authorization_endpoint"].startswith(f"{url}/{tenant}/")
    unknown = requests.get(f"{url}/nobody/v2.0/.well-known/openid-configuration", verify=vault.ca, timeout=5)
    assert (unknown.status_code, unknown.json()["error"]) == (400, "invalid_tenant")
    scope = "https://vault.azure.net/.default"
    cases = [
        (vault.token_request(vault.client_id, "wrong", scope), 401, "invalid_client", 7000215),
        (vault.token_request("no-such-app", "x", scope), 400, "unauthorized_client", 700016),
        (vault.token_request(vault.client_id, vault.secret, scope, tenant="other"), 400, "invalid_request", 90002),
        (vault.token_request(vault.client_id, vault.secret, "https://vault.azure.net"), 400, "invalid_scope", 1002012),
    ]
    for response, status, error, code in cases:
        body = response.json()
        assert (response.status_code, body["error"], body["error_codes"]) == (status, error, [code])
        assert body["error_description"].startswith(f"AADSTS{code}: ")
        assert vault.secret not in response.text


def test_the_managed_identity_endpoint_checks_its_header(vault: Vault) -> None:
    system = vault.server.add_managed_identity(SECRETS_USER, system=True)
    environment = vault.server.identity_environment()
    endpoint, header = environment["IDENTITY_ENDPOINT"], environment["IDENTITY_HEADER"]
    params = {"api-version": "2019-08-01", "resource": "https://vault.azure.net"}

    def ask(header_value: str, **extra: str) -> requests.Response:
        headers = {"X-IDENTITY-HEADER": header_value}
        return requests.get(endpoint, params={**params, **extra}, headers=headers, verify=vault.ca, timeout=5)

    assert ask("wrong").status_code == 401
    assert ask(header, client_id="not-attached").status_code == 400
    answer = ask(header).json()
    assert answer["client_id"] == system and int(answer["expires_on"]) > time.time()
    vault.server.put_secret("kosli", "value")
    assert vault.call("GET", "/secrets/kosli", answer["access_token"]).json()["value"] == "value"


# -- the API ----------------------------------------------------------------------------------------------


def test_api_version_is_required_and_unknown_routes_are_errors(vault: Vault) -> None:
    assert error_of(vault.call("GET", "/secrets/kosli", params={}), 400)["code"] == "BadParameter"
    assert error_of(vault.call("GET", "/keys/kosli"), 404)["code"] == "NotFound"
    assert error_of(vault.call("POST", "/secrets/kosli/versions"), 405)["code"] == "MethodNotAllowed"
    bad_json = vault.call("PUT", "/secrets/kosli", data="{", headers={"Content-Type": "application/json"})
    assert error_of(bad_json, 400)["code"] == "BadParameter"
    assert error_of(vault.put("kosli_key", "v"), 400)["code"] == "BadParameter"
    assert error_of(vault.call("PUT", "/secrets/kosli", json={"value": 1}), 400)["code"] == "BadParameter"


def test_each_put_is_a_new_version_and_disabled_versions_cannot_be_read(vault: Vault) -> None:
    first = vault.put("kosli", "one", contentType="text/plain", tags={"team": "platform"}).json()
    second = vault.put("kosli", "two").json()
    assert first["id"] != second["id"] and first["id"].startswith(f"{vault.server.url}/secrets/kosli/")
    assert (first["value"], first["contentType"], first["tags"]) == ("one", "text/plain", {"team": "platform"})
    assert first["attributes"]["enabled"] is True and first["attributes"]["recoveryLevel"] == "Recoverable+Purgeable"
    old = first["id"].rsplit("/", 1)[1]
    assert vault.call("GET", "/secrets/kosli/").json()["value"] == "two"
    assert vault.call("GET", f"/secrets/kosli/{old}").json()["value"] == "one"
    patched = vault.call("PATCH", f"/secrets/kosli/{old}", json={"attributes": {"enabled": False}}).json()
    assert patched["attributes"]["enabled"] is False and "value" not in patched
    refused = error_of(vault.call("GET", f"/secrets/kosli/{old}"), 403)
    assert refused == {
        "code": "Forbidden",
        "message": "Operation get is not allowed on a disabled secret.",
        "innererror": {"code": "SecretDisabled"},
    }
    assert error_of(vault.call("GET", "/secrets/kosli/" + "f" * 32), 404)["code"] == "SecretNotFound"
    assert vault.server.value("kosli") == "two" and vault.server.value("kosli", old) == "one"
    assert [v["enabled"] for v in vault.server.versions("kosli")] == [False, True]
    assert vault.server.stats()["writes"] == {"set": 2, "update": 1, "delete": 0, "recover": 0, "purge": 0}


def test_versions_are_paged_by_next_link(vault: Vault) -> None:
    ids = [vault.put("kosli", f"v{n}").json()["id"] for n in range(5)]
    seen, link, pages = [], "/secrets/kosli/versions", 0
    params: dict[str, Any] = {**API, "maxresults": 2}
    while link:
        page = vault.call("GET", link, params=params).json()
        assert len(page["value"]) <= 2 and all("value" not in item for item in page["value"])
        seen += [item["id"] for item in page["value"]]
        link, params, pages = page["nextLink"], API, pages + 1  # nextLink carries maxresults and $skiptoken
    assert (seen, pages) == (ids, 3)
    assert error_of(vault.call("GET", "/secrets/kosli/versions", params={**API, "maxresults": 26}), 400)
    assert error_of(vault.call("GET", "/secrets/none/versions"), 404)["code"] == "SecretNotFound"


def test_soft_delete_recover_and_purge(vault: Vault) -> None:
    vault.put("kosli", "one")
    deleted = vault.call("DELETE", "/secrets/kosli").json()
    assert deleted["recoveryId"] == f"{vault.server.url}/deletedsecrets/kosli" and deleted["scheduledPurgeDate"]
    assert error_of(vault.call("GET", "/secrets/kosli"), 404)["code"] == "SecretNotFound"
    assert vault.call("GET", "/deletedsecrets/kosli").json()["recoveryId"] == deleted["recoveryId"]
    conflict = error_of(vault.put("kosli", "two"), 409)
    assert (conflict["code"], conflict["innererror"]) == ("Conflict", {"code": "ObjectIsDeletedButRecoverable"})
    assert vault.call("POST", "/deletedsecrets/kosli/recover").status_code == 200
    assert vault.call("GET", "/secrets/kosli").status_code == 404, "a recovery takes a while to show"
    time.sleep(0.35)
    assert vault.call("GET", "/secrets/kosli").json()["value"] == "one"
    assert error_of(vault.call("POST", "/deletedsecrets/kosli/recover"), 404)["code"] == "SecretNotFound"
    vault.call("DELETE", "/secrets/kosli")
    assert vault.call("DELETE", "/deletedsecrets/kosli").status_code == 204
    assert vault.put("kosli", "fresh").status_code == 200 and len(vault.server.versions("kosli")) == 1


def test_roles_decide_per_operation_with_the_real_error_code(vault: Vault) -> None:
    vault.server.put_secret("kosli", "one")
    user = vault.token_for(*vault.server.add_app(SECRETS_USER))
    reader = vault.token_for(*vault.server.add_app(READER))
    nobody = vault.token_for(*vault.server.add_app(None))
    assert vault.call("GET", "/secrets/kosli", user).json()["value"] == "one"
    denied = error_of(vault.put("kosli", "two", user), 403)
    assert (denied["code"], denied["innererror"]) == ("Forbidden", {"code": "ForbiddenByRbac"})
    assert "Microsoft.KeyVault/vaults/secrets/setSecret/action" in denied["message"]
    assert "getSecret/action" in error_of(vault.call("GET", "/secrets/kosli", reader), 403)["message"]
    assert vault.call("GET", "/secrets/kosli/versions", reader).status_code == 200
    assert (
        error_of(vault.call("GET", "/secrets/kosli/versions", nobody), 403)["innererror"]["code"] == "ForbiddenByRbac"
    )
    assert vault.server.value("kosli") == "one"


def test_throttling_is_per_vault_with_retry_after(authority: CertificateAuthority) -> None:
    with AzureKeyVaultSandbox(authority=authority, rate_limit=2, rate_limit_window=30) as server:
        world = Vault(server, authority.ca_file)
        other = world.token_for(*server.add_app(OFFICER))
        assert world.call("GET", "/secrets/a").status_code == 404
        assert world.call("GET", "/secrets/a", other).status_code == 404
        throttled = world.call("GET", "/secrets/a")
        assert error_of(throttled, 429)["code"] == "Throttled" and 1 <= int(throttled.headers["Retry-After"]) <= 30
        assert server.stats()["rate_limited"] == 1
        server.apply_settings({"rate_limit": None})
        assert world.call("GET", "/secrets/a").status_code == 404


def test_the_cli_serves_https_with_its_ca_in_the_given_directory(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    for name, default in (("--hour-seconds", 3600.0), ("--latency", 0.0)):
        parser.add_argument(name, type=float, default=default)
    parser.add_argument("--access-log", action="store_true")
    add_cli_arguments(parser)
    args = parser.parse_args(["--tls-dir", str(tmp_path), "--rate-limit", "5", "--page-size", "3"])
    with from_cli_args(args) as server:
        seeded = server.seed_document({"apps": [{"role": SECRETS_USER}], "secrets": {"kosli": "v"}})
        assert seeded["ca_file"] == str(tmp_path / "ca.pem") and seeded["authority_host"] == server.url
        assert (server.rate_limit, server.page_size) == (5, 3)
        world = Vault(server, Path(seeded["ca_file"]))
        token = world.token_for(seeded["apps"][0]["client_id"], seeded["apps"][0]["secret"])
        assert world.call("GET", "/secrets/kosli", token).json()["value"] == "v"


# -- the fixture adapter --------------------------------------------------------------------------------


def test_the_adapter_seeds_reaches_and_faults_the_vault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kosli_rotation.consumers import KINDS
    from kosli_rotation.errors import ConsumerError

    monkeypatch.delenv(CA_BUNDLE_VARIABLE, raising=False)
    adapter = adapter_class("azure_key_vault")(FleetSettings(kosli_url="http://127.0.0.1:9", org="acme"))
    with contextlib.ExitStack() as stack:
        adapter.start(stack)
        assert Path(adapter.environment[CA_BUNDLE_VARIABLE]).is_file()
        seeded = adapter.seed("kv", OLD_VALUE, "team_a", retire="disable")
        assert (seeded.entry["secret_name"], seeded.read(), seeded.write_mark()) == ("team-a-kosli", OLD_VALUE, 1)
        assert seeded.fragment in seeded.where and seeded.entry["vault_url"] == adapter.url
        config_class, consumer_class = KINDS["azure_key_vault"]

        def consumer() -> Any:
            return consumer_class(config_class.model_validate(seeded.entry))

        for conn_id, connection in adapter.connections.items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
        fault = adapter.fail_writes(503, times=1, headers={"Retry-After": "0"})
        consumer().write(NEW_VALUE)
        assert (fault.fired, seeded.read(), seeded.write_mark()) == (1, NEW_VALUE, 2)
        fault.remove()
        assert consumer().retire_superseded(NEW_VALUE) is not None
        for conn_id, connection in adapter.wrong_credentials().items():
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
        with pytest.raises(ConsumerError, match="AADSTS7000215") as raised:
            consumer().check_access()
        assert raised.value.retryable is False
    assert CA_BUNDLE_VARIABLE not in os.environ, "the stack restores the environment"
