"""The generated least-privilege Vault policies, proven against a real OpenBao: the worker's policy is enough for a
whole rotation and no more; the page's policy reads the non-secret summary and the consumer notes, never a key; an
audit entry is written once; a hostile mount or path cannot change either policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
import yaml

from kosli_rotation.inventory import Inventory, load_inventory
from kosli_rotation.vault_policy import hcl_string, page_policy, vault_policy

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RECORD = "kosli/acme/ci-bot"
INJECTION = 'x" {\n  capabilities = ["read"]\n}\npath "sys/*" {\n  capabilities = ["sudo", "create", "update"]\n}\n#'


def restricted_token(scenario) -> str:
    client = scenario.vault()
    policy = vault_policy(load_inventory(os.environ["KOSLI_ROTATION_INVENTORY"]), scenario.mount)
    client.sys.create_or_update_policy(name="kosli-key-rotation", policy=policy)
    return client.auth.token.create(policies=["kosli-key-rotation"], ttl="1h")["auth"]["client_token"]


def test_a_rotation_succeeds_with_only_the_generated_policy(scenario, monkeypatch):
    token = restricted_token(scenario)
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", scenario.bao.airflow_connection(scenario.mount, token=token))

    run = scenario.run(strategy="replace")

    assert run.state == "success", scenario.task_states(run)
    assert scenario.live_secrets() == [scenario.vault_record()["key"]]
    assert scenario.audit_entries(), "the audit entry was written with the worker's create-only grant"


def test_the_policy_grants_nothing_outside_its_paths(scenario):
    client = scenario.vault()
    token = restricted_token(scenario)
    mount = scenario.mount
    capabilities = client.sys.get_capabilities(
        paths=[f"{mount}/data/kosli/acme/other-key", f"{mount}/data/apps/other", f"{mount}/metadata/"],
        token=token,
    )
    assert set(capabilities[f"{mount}/data/kosli/acme/other-key"]) == {"deny"}
    assert set(capabilities[f"{mount}/data/apps/other"]) == {"deny"}
    assert set(capabilities[f"{mount}/metadata/"]) == {"deny"}


# -- the same policies, each denied operation tried with a token that carries them -------------------------------


@pytest.fixture
def inventory(tmp_path) -> Inventory:
    entry = {
        "name": "acme-ci-bot",
        "org": "acme",
        "service_account": "ci-bot",
        "key_label": "ci",
        "vault_path": RECORD,
        "consumers": [{"name": "reporter-vault", "kind": "vault_kv", "path": "apps/reporter"}],
    }
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump({"keys": [entry]}))
    return load_inventory(str(path))


@pytest.fixture
def root(openbao, vault_mount) -> hvac.Client:
    """Root's view of a mount holding the record, its summary and one consumer's status note."""
    client = openbao.client()
    kv = client.secrets.kv.v2
    kv.create_or_update_secret(path=RECORD, secret={"key": "the-kosli-key"}, mount_point=vault_mount)
    client.adapter.post(f"/v1/{vault_mount}/metadata/{RECORD}", json={"custom_metadata": {"state": "idle"}})
    note = {"verified_fingerprint": "sha256:abc"}
    kv.create_or_update_secret(path=f"{RECORD}/consumers/reporter-vault", secret=note, mount_point=vault_mount)
    return client


def token_with(openbao, root: hvac.Client, name: str, policy: str) -> hvac.Client:
    root.sys.create_or_update_policy(name=name, policy=policy)
    token = root.auth.token.create(policies=[name], ttl="10m")["auth"]["client_token"]
    return hvac.Client(url=openbao.url, token=token)


@pytest.fixture
def worker(openbao, root, vault_mount, inventory) -> hvac.Client:
    return token_with(openbao, root, f"worker-{vault_mount}", vault_policy(inventory, vault_mount))


@pytest.fixture
def page(openbao, root, vault_mount, inventory) -> hvac.Client:
    return token_with(openbao, root, f"page-{vault_mount}", page_policy(inventory, vault_mount))


def test_the_worker_may_set_the_summary_but_not_raise_max_versions_nor_expire_versions(worker, root, vault_mount):
    metadata = f"/v1/{vault_mount}/metadata/{RECORD}"
    worker.adapter.post(metadata, json={"custom_metadata": {"state": "stored"}})  # what _mirror_metadata sends
    for change in (
        {"max_versions": 1},
        {"max_versions": 1000},
        {"delete_version_after": "1s"},
        {"cas_required": False},
        {"custom_metadata": {"state": "idle"}, "max_versions": 1},
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            worker.adapter.post(metadata, json=change)
    for destructive in (
        lambda: worker.secrets.kv.v2.delete_metadata_and_all_versions(path=RECORD, mount_point=vault_mount),
        lambda: worker.secrets.kv.v2.destroy_secret_versions(path=RECORD, versions=[1], mount_point=vault_mount),
        lambda: worker.secrets.kv.v2.delete_latest_version_of_secret(path=RECORD, mount_point=vault_mount),
        lambda: worker.secrets.kv.v2.configure(max_versions=1, mount_point=vault_mount),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            destructive()
    after = root.secrets.kv.v2.read_secret_metadata(path=RECORD, mount_point=vault_mount)["data"]
    assert after["custom_metadata"] == {"state": "stored"}
    assert (after["max_versions"], after["delete_version_after"], after["cas_required"]) == (0, "0s", False)


def test_an_audit_entry_is_written_once_and_never_overwritten(worker, root, vault_mount):
    kv = worker.secrets.kv.v2
    entry = f"{RECORD}/audit/20260101T000000Z-1"
    kv.create_or_update_secret(path=entry, secret={"finished_by": "alice"}, cas=0, mount_point=vault_mount)
    mallory = {"finished_by": "mallory"}
    for overwrite in (
        lambda: kv.create_or_update_secret(path=entry, secret=mallory, mount_point=vault_mount),
        lambda: kv.create_or_update_secret(path=entry, secret=mallory, cas=1, mount_point=vault_mount),
        lambda: kv.create_or_update_secret(path=entry, secret=mallory, cas=0, mount_point=vault_mount),
        lambda: kv.patch(path=entry, secret=mallory, mount_point=vault_mount),
        lambda: kv.delete_latest_version_of_secret(path=entry, mount_point=vault_mount),
        lambda: kv.delete_metadata_and_all_versions(path=entry, mount_point=vault_mount),
        lambda: worker.adapter.post(f"/v1/{vault_mount}/metadata/{entry}", json={"max_versions": 1}),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            overwrite()
    assert kv.read_secret_version(path=entry, mount_point=vault_mount)["data"]["data"] == {"finished_by": "alice"}
    versions = root.secrets.kv.v2.read_secret_metadata(path=entry, mount_point=vault_mount)["data"]["versions"]
    assert list(versions) == ["1"]
    kv.create_or_update_secret(
        path=f"{RECORD}/audit/later", secret={"finished_by": "bob"}, cas=0, mount_point=vault_mount
    )


def test_the_page_reads_the_summary_and_the_consumer_notes_but_never_the_key(page, vault_mount):
    kv = page.secrets.kv.v2
    assert kv.read_secret_metadata(path=RECORD, mount_point=vault_mount)["data"]["custom_metadata"] == {"state": "idle"}
    assert kv.list_secrets(path=f"{RECORD}/consumers", mount_point=vault_mount)["data"]["keys"] == ["reporter-vault"]
    note = kv.read_secret_version(path=f"{RECORD}/consumers/reporter-vault", mount_point=vault_mount)
    assert note["data"]["data"] == {"verified_fingerprint": "sha256:abc"}
    for denied in (
        lambda: kv.read_secret_version(path=RECORD, mount_point=vault_mount),
        lambda: kv.read_secret_version(path=RECORD, version=1, mount_point=vault_mount),
        lambda: kv.read_secret_version(path="apps/reporter", mount_point=vault_mount),
        lambda: kv.create_or_update_secret(path=RECORD, secret={"key": "x"}, mount_point=vault_mount),
        lambda: page.adapter.post(f"/v1/{vault_mount}/metadata/{RECORD}", json={"custom_metadata": {"state": "x"}}),
        lambda: kv.create_or_update_secret(path=f"{RECORD}/consumers/x", secret={"a": "b"}, mount_point=vault_mount),
        lambda: kv.list_secrets(path=f"{RECORD}/audit", mount_point=vault_mount),
        lambda: kv.list_secrets(path=f"{RECORD}/unclaimed", mount_point=vault_mount),
    ):
        with pytest.raises(hvac.exceptions.Forbidden):
            denied()


def test_the_page_policy_is_printed_by_the_command_line(inventory):
    printed = subprocess.run(
        [sys.executable, "-m", "kosli_rotation.vault_policy", "--page", "--inventory", str(inventory.path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed == page_policy(inventory, "secret")
    assert '"secret/data/kosli/acme/ci-bot"' not in printed


# -- a hostile mount or path cannot change the policy ------------------------------------------------------------


def _with(inventory: Inventory, **changes) -> Inventory:
    entry = inventory.entries[0]
    if "consumer_path" in changes or "consumer_mount" in changes:
        consumer = entry.consumers[0].model_copy(
            update={key.removeprefix("consumer_"): value for key, value in changes.items()}
        )
        changes = {"consumers": [consumer]}
    return Inventory(inventory.path, [entry.model_copy(update=changes)])


@pytest.mark.parametrize("hostile", [INJECTION, "secret\n", 'sec"ret', "secret/*", "secret/+/x", "sec ret", "s\u2028x"])
@pytest.mark.parametrize("where", ["vault_mount", "vault_path", "consumer_path", "consumer_mount"])
def test_a_hostile_mount_or_path_is_refused_naming_the_entry(inventory, where, hostile):
    hostile_inventory = _with(inventory, **{where: hostile})
    for generate in (vault_policy, page_policy):
        if generate is page_policy and where.startswith("consumer"):
            continue  # the page's policy names no consumer path
        with pytest.raises(ValueError, match=rf"acme-ci-bot.*{where.replace('consumer_', '')}"):
            generate(hostile_inventory, "secret")


@pytest.mark.parametrize("hostile", [INJECTION, "secret\n", 'sec"ret', "*", "sec ret"])
def test_a_hostile_default_mount_is_refused(inventory, hostile):
    for generate in (vault_policy, page_policy):
        with pytest.raises(ValueError, match="mount"):
            generate(inventory, hostile)


def test_a_hostile_name_in_a_comment_cannot_add_a_rule(openbao, root, vault_mount, inventory):
    entry = inventory.entries[0]
    consumer = entry.consumers[0].model_copy(update={"name": 'x\npath "sys/*" { capabilities = ["sudo"] }\n#'})
    hostile = Inventory(inventory.path, [entry.model_copy(update={"consumers": [consumer]})])
    client = token_with(openbao, root, f"names-{vault_mount}", vault_policy(hostile, vault_mount))
    assert set(root.sys.get_capabilities(paths=["sys/policy/x"], token=client.token)["sys/policy/x"]) == {"deny"}


@pytest.mark.parametrize("hostile", [INJECTION, 'a${"}"}\npath "sys/*" { capabilities = ["sudo"] }', "%{ x }\\\u00e9"])
def test_the_path_serialisation_alone_keeps_a_hostile_path_one_literal_path(openbao, root, vault_mount, hostile):
    """Second line of defence: even a path the pattern would refuse stays one literal path in the HCL."""
    policy = f'path {hcl_string(hostile)} {{\n  capabilities = ["read"]\n}}\n'
    client = token_with(openbao, root, f"escaped-{vault_mount}", policy)
    capabilities = root.sys.get_capabilities(paths=["sys/policy/x", hostile], token=client.token)
    assert set(capabilities["sys/policy/x"]) == {"deny"}
    assert set(capabilities[hostile]) == {"read"}
    assert root.sys.read_policy(name=f"escaped-{vault_mount}")["data"]["rules"] == policy


def test_a_retried_audit_write_under_the_worker_policy_keeps_the_first_entry(openbao, worker, vault_mount, monkeypatch):
    """Under the create-only grant, Vault answers a second write with 403: the store reads the entry and goes on."""
    from kosli_rotation.key_store import KeyStore

    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", openbao.airflow_connection(vault_mount, token=worker.token))
    store = KeyStore(RECORD)
    store.write_note("audit/20260101T000000Z-2", {"finished_by": "first try"}, once=True)
    store.write_note("audit/20260101T000000Z-2", {"finished_by": "retry"}, once=True)

    assert store.read_note("audit/20260101T000000Z-2") == {"finished_by": "first try"}
