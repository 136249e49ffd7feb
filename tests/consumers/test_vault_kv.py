"""The vault_kv consumer's quirks against a real OpenBao, with the forwarding proxy in front where a fault is needed:
the other fields kept, a deleted latest version, check-and-set conflicts, policies that deny, a 400 that is final.

The behaviours every kind shares (create, update, rerun, verify, wrong credentials, 429 then recovery, a
persistent 503, nothing leaked at DEBUG) are in ``tests/consumers/test_contract.py``.

Its write goes through ``KeyStore``'s check-and-set loop: another writer between our read and our write costs a
re-read (never their fields), and Vault away for a moment costs a retry, not the consumer.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from kosli_rotation import key_store
from kosli_rotation.consumers.vault_kv import VaultKvConfig, VaultKvConsumer
from kosli_rotation.errors import ConsumerError
from kosli_rotation.fingerprints import digest
from sandbox.forward_proxy import ForwardProxy
from sandbox.server import Request
from tests.support.services import OpenBao

PATH = "apps/ci"
FIELD = "KOSLI_API_TOKEN"
KEY = "kosli_new_" + "N" * 40
OLD_KEY = "kosli_old_" + "O" * 40


def connection(url: str, mount: str, token: str) -> str:
    """An ``AIRFLOW_CONN_*`` value for the Vault (or the proxy) at ``url``."""
    host, port = url.removeprefix("http://").split(":")
    extra = {"auth_type": "token", "kv_engine_version": 2}
    return json.dumps(
        {"conn_type": "vault", "host": host, "port": int(port), "schema": mount, "password": token, "extra": extra}
    )


def consumer(**config: Any) -> VaultKvConsumer:
    return VaultKvConsumer(VaultKvConfig(**{"name": "apps", "kind": "vault_kv", "path": PATH, **config}))


@pytest.fixture
def kv(openbao: OpenBao, vault_mount: str) -> Any:
    return openbao.client().secrets.kv.v2


@pytest.fixture
def stored(kv: Any, vault_mount: str) -> Any:
    """The secret's fields as Vault holds them now."""
    return lambda: kv.read_secret_version(path=PATH, mount_point=vault_mount, raise_on_deleted_version=True)["data"][
        "data"
    ]


@pytest.fixture
def proxy(openbao: OpenBao, vault_mount: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    """OpenBao behind the forwarding proxy, as connection ``vault_proxied``; retries wait 10 ms, not seconds."""
    monkeypatch.setattr(key_store, "backoff_delay", lambda attempt, **_: 0.01)
    with ForwardProxy(openbao.url) as server:
        monkeypatch.setenv("AIRFLOW_CONN_VAULT_PROXIED", connection(server.url, vault_mount, openbao.token))
        yield server


def test_sets_its_field_and_keeps_the_others(kv: Any, vault_mount: str, stored: Any) -> None:
    kv.create_or_update_secret(path=PATH, secret={FIELD: OLD_KEY, "url": "https://x"}, mount_point=vault_mount)
    apps = consumer(mount=vault_mount)
    assert apps.read_digest() == digest(OLD_KEY)
    apps.write(KEY)
    assert stored() == {FIELD: KEY, "url": "https://x"}
    version = kv.read_secret_metadata(path=PATH, mount_point=vault_mount)["data"]["current_version"]
    apps.write(KEY)  # holds it already: nothing is written
    assert kv.read_secret_metadata(path=PATH, mount_point=vault_mount)["data"]["current_version"] == version


def test_a_deleted_latest_version_is_written_again(kv: Any, vault_mount: str, stored: Any) -> None:
    """A soft-deleted secret still has versions: the check-and-set must name the latest, not 0."""
    kv.create_or_update_secret(path=PATH, secret={FIELD: OLD_KEY}, mount_point=vault_mount)
    kv.delete_latest_version_of_secret(path=PATH, mount_point=vault_mount)
    apps = consumer()
    assert apps.read_digest() is None
    apps.write(KEY)
    assert stored() == {FIELD: KEY}


def test_another_writer_between_read_and_write_is_kept(
    proxy: ForwardProxy, kv: Any, vault_mount: str, stored: Any
) -> None:
    """Another writer changes the secret after our read, just before our write reaches Vault: our write is
    refused by check-and-set, read again, and applied on top of theirs."""
    kv.create_or_update_secret(path=PATH, secret={FIELD: OLD_KEY, "owner": "a"}, mount_point=vault_mount)

    def other_writer(request: Request) -> bool:
        kv.create_or_update_secret(path=PATH, secret={FIELD: OLD_KEY, "owner": "b"}, mount_point=vault_mount)
        return True

    rule = proxy.faults.add(rf"/v1/{vault_mount}/data/{PATH}$", method="POST", delay=0, when=other_writer, times=1)
    consumer(conn_id="vault_proxied").write(KEY)
    assert rule.fired == 1
    assert stored() == {FIELD: KEY, "owner": "b"}
    assert kv.read_secret_metadata(path=PATH, mount_point=vault_mount)["data"]["current_version"] == 3


def test_vault_unavailable_once_is_retried(proxy: ForwardProxy, vault_mount: str, stored: Any) -> None:
    rule = proxy.faults.add(rf"/v1/{vault_mount}/data/{PATH}$", method="POST", status=503, times=1)
    consumer(conn_id="vault_proxied").write(KEY)
    assert rule.fired == 1
    assert stored() == {FIELD: KEY}


def test_a_denied_write_is_not_retried_and_names_the_path(
    openbao: OpenBao, kv: Any, vault_mount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    kv.create_or_update_secret(path=PATH, secret={FIELD: OLD_KEY}, mount_point=vault_mount)
    client = openbao.client()
    client.sys.create_or_update_policy(
        name=f"read-{vault_mount}", policy=f'path "{vault_mount}/data/{PATH}" {{ capabilities = ["read"] }}'
    )
    token = client.auth.token.create(policies=[f"read-{vault_mount}"], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_READER", connection(openbao.url, vault_mount, token))
    reader = consumer(conn_id="vault_reader")
    assert reader.read_digest() == digest(OLD_KEY)
    with pytest.raises(ConsumerError) as denied:
        reader.check_access()
    assert not denied.value.retryable and "may not read and write" in str(denied.value)
    with pytest.raises(ConsumerError) as error:
        reader.write(KEY)
    assert not error.value.retryable
    assert f"denied writing {vault_mount}/{PATH}" in str(error.value) and "'vault_reader'" in str(error.value)
    assert KEY not in str(error.value)


def test_a_missing_connection_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_VAULT_NOWHERE", raising=False)
    with pytest.raises(ConsumerError) as error:
        consumer(conn_id="vault_nowhere").write(KEY)
    assert not error.value.retryable and "connection 'vault_nowhere' is not defined" in str(error.value)


def test_a_write_vault_refuses_is_not_retried(proxy: ForwardProxy, vault_mount: str) -> None:
    """A 400 that is not a check-and-set conflict: the same write would be refused again."""
    refusal = {"errors": ["invalid request"]}
    rule = proxy.faults.add(rf"/v1/{vault_mount}/data/{PATH}$", method="POST", status=400, body=refusal, times=None)
    with pytest.raises(ConsumerError) as error:
        consumer(conn_id="vault_proxied").write(KEY)
    assert not error.value.retryable and "refused the write" in str(error.value) and rule.fired == 1
