"""The hook works with a connection of the provider's `kosli` type and with the `http` ones made before it."""

from __future__ import annotations

import json

import pytest

from kosli_rotation.kosli_hook import KosliHook
from tests.support.scenario import ORG, SERVICE_ACCOUNT, start_kosli


@pytest.fixture
def kosli():
    sandbox, admin_key, ci_key = start_kosli(hour_seconds=60)
    yield sandbox, admin_key, ci_key
    sandbox.stop()


@pytest.mark.parametrize("conn_type", ["kosli", "http"])
def test_the_hook_reads_host_and_admin_key_from_either_connection_type(kosli, monkeypatch, conn_type):
    sandbox, admin_key, (key_id, _) = kosli
    monkeypatch.setenv(
        "AIRFLOW_CONN_KOSLI_EITHER",
        json.dumps({"conn_type": conn_type, "host": sandbox.url, "password": admin_key}),
    )
    hook = KosliHook("kosli_either", max_attempts=1)
    assert [key.id for key in hook.list_keys(ORG, SERVICE_ACCOUNT)] == [key_id]
