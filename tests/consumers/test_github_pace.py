"""GitHub's pace per token, across task processes, and the requests each secret costs, against the GitHub sandbox
(its request log: each request's token digest and when it arrived and was answered) and a real OpenBao.

Two batches of one token run as two processes, as two Airflow task processes would, through the engine's own
batch code (``ConsumerEngine.consumers`` and ``for_each_consumer``): their writes never overlap and are at least
a second apart; a third batch with another token runs beside them unhindered. A worker that died holding the lease
delays the next one until the lease expires, never longer. One rate-limit answer holds off every batch of the token.
The generated Vault policy is enough for the lease.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest

from kosli_rotation.consumer_engine import ConsumerEngine, for_each_consumer
from kosli_rotation.consumers import github_pace
from kosli_rotation.consumers.github_pace import PACE_PATH, token_digest
from kosli_rotation.errors import ConsumerError
from kosli_rotation.inventory import Inventory, KeyEntry
from kosli_rotation.key_store import KeyStore
from kosli_rotation.vault_policy import vault_policy
from sandbox.github import GitHubSandbox
from sandbox.request_log import Served

TOKEN_A = "ghp_pace_token_a_" + "x" * 20
TOKEN_B = "ghp_pace_token_b_" + "y" * 20
RECORD = "kosli/acme/ci-bot"
SPACING = 1.0  # GitHub: at least a second between mutating requests
LATENCY = 0.2  # each request takes this long at the sandbox, so overlapping requests would show


def _entry(consumers: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "ci-bot", "org": "acme", "service_account": "ci-bot", "vault_path": RECORD, "consumers": consumers}


def _secret(name: str, conn_id: str, repository: str, secret_name: str = "KOSLI_API_TOKEN") -> dict[str, Any]:
    return {
        "name": name,
        "kind": "github_actions",
        "conn_id": conn_id,
        "repository": repository,
        "secret_name": secret_name,
    }


def _fan_out(entry: dict[str, Any], batch: list[str], key: str, barrier: Any) -> None:
    """One task process's fan-out of one batch (spawned: nothing shared with the test's process but Vault)."""
    parsed = KeyEntry.model_validate(entry)
    engine = ConsumerEngine(parsed, KeyStore(parsed.vault_path, conn_id=parsed.vault_conn_id))
    consumers = engine.consumers(batch)
    for consumer in consumers:
        consumer.check_access()  # reads only: the client, the public keys
    barrier.wait(timeout=120)
    for_each_consumer(consumers, lambda consumer: consumer.write(key) or "written")


@pytest.fixture
def github(monkeypatch: pytest.MonkeyPatch) -> Iterator[GitHubSandbox]:
    with GitHubSandbox(latency=LATENCY) as sandbox:
        repos = {f"acme/r{number}": {"environments": ["production"]} for number in range(1, 10)}
        sandbox.seed_document(
            {
                "orgs": {"acme": {}},
                "repos": repos,
                "tokens": {TOKEN_A: {"orgs": {"acme": "admin"}}, TOKEN_B: {"orgs": {"acme": "admin"}}},
            }
        )
        for conn_id, token in (("github_a", TOKEN_A), ("github_b", TOKEN_B)):
            connection = {"conn_type": "github", "password": token, "host": sandbox.url}
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(connection))
        yield sandbox


def _mutations(github: GitHubSandbox, token: str) -> list[Served]:
    return github.request_log.entries(credential=token, mutating=True)


def _run_batches(entry: dict[str, Any], batches: dict[str, list[dict[str, Any]]], key: str) -> None:
    """Each batch in a spawned process of its own, as Airflow's task processes; all must succeed."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(batches))
    workers = [
        context.Process(target=_fan_out, args=(entry, [c["name"] for c in batch], key, barrier), name=name)
        for name, batch in batches.items()
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert [worker.exitcode for worker in workers] == [0] * len(batches)


def test_two_batches_of_one_token_in_two_processes_write_one_at_a_time_a_second_apart(
    github: GitHubSandbox, vault_mount: str
) -> None:
    batches = {
        "a1": [_secret(f"a1-{n}", "github_a", f"acme/r{n}") for n in (1, 2, 3)],
        "a2": [_secret(f"a2-{n}", "github_a", f"acme/r{n}") for n in (4, 5, 6)],
        "b": [_secret(f"b-{n}", "github_b", f"acme/r{n}") for n in (7, 8, 9)],
    }
    entry = _entry([consumer for batch in batches.values() for consumer in batch])
    key = secrets.token_urlsafe(32)

    _run_batches(entry, batches, key)

    for number in range(1, 10):
        assert github.secret_value(f"acme/r{number}", "KOSLI_API_TOKEN") == key
    one_token = _mutations(github, TOKEN_A)
    assert len(one_token) == 6
    gaps = [later.started - earlier.ended for earlier, later in itertools.pairwise(one_token)]
    assert min(gaps) >= SPACING - 0.01, f"writes of one token {gaps} s apart: they must never overlap, ≥1 s apart"
    other_token = _mutations(github, TOKEN_B)
    assert len(other_token) == 3
    # Another token keeps its own pace: its writes ran while token A's did, and closer to them than a second (one
    # pace for both would keep every write of B a second from A's on both sides).
    assert other_token[0].started < one_token[-1].ended and one_token[0].started < other_token[-1].ended
    inside = [b for b in other_token if one_token[0].ended < b.started and b.ended < one_token[-1].started]
    assert inside, "token B's writes all ran before or after token A's: not in parallel"
    nearest = [
        min(
            b.started - max(a.ended for a in one_token if a.started < b.started),
            min(a.started for a in one_token if a.started > b.started) - b.ended,
        )
        for b in inside
    ]
    assert min(nearest) < SPACING - 0.1, f"token B's writes were {nearest} s from token A's: one pace for both?"


def test_one_rate_limit_answer_holds_off_every_batch_of_the_token(github: GitHubSandbox, vault_mount: str) -> None:
    """GitHub: keep sending while limited and the integration may be banned. Its 403 with retry-after, answered
    to one batch, stops the other batch's writes too until the wait is over: with one write allowed per window,
    each window sees one write and at most one rejected attempt, never one per batch."""
    github.apply_settings({"secondary_limit": 1, "secondary_window": 5.0})
    batches = {
        "a1": [_secret(f"a1-{n}", "github_a", f"acme/r{n}") for n in (1, 2)],
        "a2": [_secret(f"a2-{n}", "github_a", f"acme/r{n}") for n in (3, 4)],
    }
    key = secrets.token_urlsafe(32)

    _run_batches(_entry([consumer for batch in batches.values() for consumer in batch]), batches, key)

    assert all(github.secret_value(f"acme/r{n}", "KOSLI_API_TOKEN") == key for n in range(1, 5))
    attempts = _mutations(github, TOKEN_A)
    rejected = github.stats()["rate_limited"]
    assert len(attempts) == 4 + rejected
    assert rejected == 3, f"{rejected} writes rejected: a batch wrote while GitHub had asked the token to wait"
    gaps = [later.started - earlier.ended for earlier, later in itertools.pairwise(attempts)]
    assert min(gaps) >= SPACING - 0.01, f"attempts {gaps} s apart"


def test_a_worker_that_died_holding_the_lease_delays_the_next_only_until_it_expires(
    github: GitHubSandbox, vault_mount: str, openbao: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(github_pace, "LEASE_SECONDS", 3.0)
    entry = KeyEntry.model_validate(_entry([_secret("a1", "github_a", "acme/r1")]))
    consumers = ConsumerEngine(entry, KeyStore(RECORD)).consumers()
    consumers[0].check_access()  # the client and the public key: only the write is left to time
    key = secrets.token_urlsafe(32)
    dead = f"{PACE_PATH}/{token_digest(github.url, f'token {TOKEN_A}')}"
    openbao.client().secrets.kv.v2.create_or_update_secret(  # what a worker killed while holding the lease leaves
        path=dead, secret={"holder": "worker-7/4242/died"}, mount_point=vault_mount
    )

    started = time.monotonic()
    for_each_consumer(consumers, lambda consumer: consumer.write(key) or "written")
    took = time.monotonic() - started

    assert github.secret_value("acme/r1", "KOSLI_API_TOKEN") == key
    assert 2.0 <= took < 6.0, f"took {took:.1f} s: it must wait for the dead holder's lease to expire, no longer"
    lease = openbao.client().secrets.kv.v2.read_secret_version(path=dead, mount_point=vault_mount)
    assert lease["data"]["data"] == {"holder": ""}  # released after the write


def test_a_long_hold_off_fails_the_write_retryable_once_the_wait_runs_out(
    github: GitHubSandbox, vault_mount: str, openbao: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GitHub's hourly limit can ask a token to wait most of an hour: a write does not sleep through that inside
    its task: a wait that outlasts the pace's own timeout fails the write at once, retryable (Airflow's retry comes
    back), writing nothing."""
    monkeypatch.setattr(github_pace, "ACQUIRE_TIMEOUT_SECONDS", 120.0)
    entry = KeyEntry.model_validate(_entry([_secret("a1", "github_a", "acme/r1")]))
    consumers = ConsumerEngine(entry, KeyStore(RECORD)).consumers()
    consumers[0].check_access()
    lease = f"{PACE_PATH}/{token_digest(github.url, f'token {TOKEN_A}')}"
    openbao.client().secrets.kv.v2.create_or_update_secret(  # what a release after GitHub's hourly 403 leaves
        path=lease, secret={"holder": "", "hold": 3000.0}, mount_point=vault_mount
    )
    github.reset_stats()

    started = time.monotonic()
    with pytest.raises(ConsumerError) as raised:
        consumers[0].write(secrets.token_urlsafe(32))

    assert time.monotonic() - started < 30, "it waited for a hold-off it could never outlast"
    assert raised.value.retryable and "asked it to wait 3000 s" in str(raised.value)
    assert github.stats()["requests"].get("put_secret", 0) == 0, "it wrote while GitHub asked the token to wait"


def test_about_two_requests_per_secret_for_a_batch(
    github: GitHubSandbox, vault_mount: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three repositories with two secrets each: one public key per repository, one PUT per secret (fan-out
    task); one list call per repository (verify task). 12 requests for 6 secrets, down from 24."""
    monkeypatch.setattr(github_pace, "LEASE_SECONDS", 30.0)
    consumers = [
        _secret(f"s{n}-{name.lower()}", "github_a", f"acme/r{n}", name)
        for n in (1, 2, 3)
        for name in ("KOSLI_API_TOKEN", "KOSLI_TOKEN")
    ]
    entry = KeyEntry.model_validate(_entry(consumers))
    key = secrets.token_urlsafe(32)
    github.apply_settings({"latency": 0.0})
    github.reset_stats()

    written_at = time.time()
    for_each_consumer(ConsumerEngine(entry, KeyStore(RECORD)).consumers(), lambda c: c.write(key) or "written")
    verified = for_each_consumer(  # the verify task: a new process, so nothing cached from the fan-out
        ConsumerEngine(entry, KeyStore(RECORD)).consumers(),
        lambda c: "ok" if c.verify(key, written_at).ok else "not verified",
    )

    assert set(verified.values()) == {"ok"}
    requests = github.stats()["requests"]
    assert requests == {"get_public_key": 3, "put_secret": 6, "list_secrets": 3}
    assert sum(requests.values()) / len(consumers) <= 2.0


def test_the_generated_vault_policy_is_enough_for_the_lease(
    github: GitHubSandbox, vault_mount: str, openbao: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    entry = KeyEntry.model_validate(_entry([_secret("a1", "github_a", "acme/r1")]))
    root = openbao.client()
    policy = vault_policy(Inventory(tmp_path / "inventory.yaml", [entry]), vault_mount)
    assert f'"{vault_mount}/data/{PACE_PATH}/*"' in policy
    root.sys.create_or_update_policy(name="pace-only-policy", policy=policy)
    token = root.auth.token.create(policies=["pace-only-policy"], ttl="10m")["auth"]["client_token"]
    monkeypatch.setenv("AIRFLOW_CONN_VAULT_DEFAULT", openbao.airflow_connection(vault_mount, token=token))
    key = secrets.token_urlsafe(32)

    for_each_consumer(ConsumerEngine(entry, KeyStore(RECORD)).consumers(), lambda c: c.write(key) or "written")

    assert github.secret_value("acme/r1", "KOSLI_API_TOKEN") == key
    leases = root.secrets.kv.v2.list_secrets(path=PACE_PATH, mount_point=vault_mount)["data"]["keys"]
    assert leases == [token_digest(github.url, f"token {TOKEN_A}")]


def test_building_a_batch_reads_no_connection_until_a_consumer_talks_to_github() -> None:
    """The gate and the evidence notes build the consumers too: a missing connection fails where GitHub is used."""
    entry = KeyEntry.model_validate(_entry([_secret("a1", "github_nowhere", "acme/r1")]))
    consumers = ConsumerEngine(entry, KeyStore(RECORD)).consumers()
    with pytest.raises(ConsumerError) as raised:
        consumers[0].check_access()
    assert "'github_nowhere' is not defined" in str(raised.value) and not raised.value.retryable
