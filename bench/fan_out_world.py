"""The world benchmarks 1 and 2 run in, and the two procedures they time in it.

Ours: the product's own steps, ``Rotation.fan_out`` then ``Rotation.verify_consumers`` on each batch of
``KeyEntry.consumer_batches``, batches running side by side in ``WORKER_SLOTS`` threads the way the mapped task
group's instances run in as many worker slots (Airflow's per-task start-up is not included here: benchmarks 3 and 6
measure it through a real ``airflow standalone``). They read the new key from a real OpenBao record, write every
consumer (reading back first where the store allows), verify it and record the status in Vault. GitHub's writes
take the token's pace lease in that OpenBao, as they would across worker processes.

Baseline: the seeds' manual procedure as a shell loop would do it, one consumer after the other, with plain HTTP
calls (``requests``): GitHub's public key then the sealed secret, GitLab's variable, CircleCI's context variable, the
Kubernetes Secret. Writes only: no read-back, no verification, no record, no pacing.

The consumers are a mix of the kinds a CI-heavy org has most of, all in the local sandboxes with 50 ms latency per
request, and the GitHub sandbox enforcing the limits GitHub documents, in real time (``GITHUB_LIMITS``). Jenkins,
AWS (moto has no latency setting), Vault KV and CLI config files are left out of this mix so that every request pays
the same latency on both sides.
"""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests
import yaml

LATENCY = 0.05
WORKER_SLOTS = 8
#: Of every 10 consumers: kind, count.
MIX = (("github_actions", 3), ("gitlab_ci", 3), ("kubernetes_secret", 2), ("circleci_env", 2))
#: What GitHub documents for one token's content-creating requests (POST, PATCH, PUT, DELETE): at most 80 a minute
#: and 500 an hour, answered with 403 and retry-after beyond (``../shared/reference/field_notes_2026-12.md`` §5).
GITHUB_LIMITS = {
    "secondary_limit": 80,
    "secondary_window": 60.0,
    "secondary_hourly_limit": 500,
    "secondary_status": 403,
}
ORG, VARIABLE, RUN_ID = "acme", "KOSLI_API_TOKEN", "manual__bench"


def kinds(n: int) -> list[str]:
    """``n`` consumer kinds in the proportions of MIX, interleaved."""
    pattern = [kind for kind, count in MIX for _ in range(count)]
    return [pattern[i % len(pattern)] for i in range(n)]


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@dataclass
class World:
    """OpenBao, the consumer sandboxes and N seeded consumers holding the old key."""

    fleet: Any
    vault: Any  # tests.support.services.OpenBao
    mount: str
    entries: list[dict[str, Any]]

    @property
    def sandboxes(self) -> dict[str, Any]:
        return {kind: self.fleet.sandbox(kind) for kind, _ in MIX}

    @property
    def github(self) -> Any:  # sandbox.github.GitHubSandbox
        return self.fleet.sandbox("github_actions")

    def github_secrets(self) -> int:
        return sum(entry["kind"] == "github_actions" for entry in self.entries)

    def holding(self, key: str) -> int:
        """How many seeded consumers hold ``key``, as each service's own store shows it."""
        return sum(value == key for value in self.fleet.held_values().values())

    def requests_served(self) -> int:
        return sum(sandbox.stats()["total_requests"] for sandbox in self.sandboxes.values())

    def reset_stats(self) -> None:
        for sandbox in self.sandboxes.values():
            sandbox.reset_stats()
        self.github.request_log.clear()


@contextlib.contextmanager
def world(n: int, old_key: str, github_limits: dict[str, Any] | None = None) -> Iterator[World]:
    """``n`` consumers holding ``old_key``; GitHub's sandbox under ``github_limits`` (default: GitHub's own)."""
    from sandbox.fleet import ConsumerFleet
    from tests.support.services import OpenBao

    with tempfile.TemporaryDirectory(prefix="bench-fan-out-") as scratch:
        bao = OpenBao.start(Path(scratch) / "bao.log")
        try:
            mount = bao.new_kv_mount()
            fleet = ConsumerFleet(
                kosli_url="http://127.0.0.1:9",
                org=ORG,
                kubernetes_namespaces=("apps",),
                kinds=[kind for kind, _ in MIX],
            ).start()
            try:
                entries = [seed(fleet, kind, i, old_key) for i, kind in enumerate(kinds(n))]
                connections = {**fleet.airflow_env(), "AIRFLOW_CONN_VAULT_DEFAULT": bao.airflow_connection(mount)}
                with _environment(connections):
                    bench_world = World(fleet, bao, mount, entries)
                    for sandbox in bench_world.sandboxes.values():
                        sandbox.apply_settings({"latency": LATENCY})
                    bench_world.github.apply_settings(github_limits or GITHUB_LIMITS)
                    yield bench_world
            finally:
                fleet.stop()
        finally:
            bao.stop()


def seed(fleet: Any, kind: str, i: int, value: str) -> dict[str, Any]:
    """Consumer ``i``: a plain target of ``kind`` (no canary, no restart), through the kind's fixture adapter."""
    from sandbox.fleet import consumer_name

    return fleet.add(kind, consumer_name(kind, f"c{i:04d}"), value, f"app-{i}")


# -- ours: the product's steps, batch by batch ----------------------------------------------------------------------


def _entry(bench_world: World) -> Any:
    from kosli_rotation.inventory import KeyEntry

    return KeyEntry.model_validate(
        {
            "name": "bench",
            "org": ORG,
            "service_account": "ci-bot",
            "vault_path": "kosli/acme/bench",
            "consumers": bench_world.entries,
        }
    )


def _store_rotation_in_flight(bench_world: World, entry: Any, old_key: str, new_key: str) -> None:
    """The Vault record as rotate_and_store leaves it: the new key stored, the old one kept, this run owning it."""
    record = {
        "key": new_key,
        "key_id": "new-key-id",
        "previous_key": old_key,
        "previous_key_id": "old-key-id",
        "state": "stored",
        "strategy": "replace",
        "run_id": RUN_ID,
        "rotated_at": time.time(),
        "lock_owner": f"{entry.dag_id}/{RUN_ID}",
        "lock_expires_at": time.time() + 3600,
    }
    kv = bench_world.vault.client().secrets.kv.v2
    kv.create_or_update_secret(path=entry.vault_path, secret=record, mount_point=bench_world.mount)


def ours(bench_world: World, old_key: str, new_key: str) -> Callable[[], None]:
    """Set up a stored rotation; the returned action is what the mapped consumer tasks do, timed by the caller."""
    from kosli_rotation.rotation import Rotation, RunRequest

    entry = _entry(bench_world)
    _store_rotation_in_flight(bench_world, entry, old_key, new_key)
    run = RunRequest(run_id=RUN_ID, manual=True, reason="bench", strategy="replace", grace_hours=24)

    def one_task_instance(batch: list[str]) -> BatchTime:
        started = time.perf_counter()
        rotation = Rotation(entry)  # a task instance is a process of its own: nothing shared but Vault
        rotation.fan_out(batch, run)
        written = time.perf_counter()
        rotation.verify_consumers(batch, run)
        done = time.perf_counter()
        return BatchTime(entry.consumer(batch[0]).kind, len(batch), written - started, done - written)

    def fan_out_and_verify() -> list[BatchTime]:
        with ThreadPoolExecutor(max_workers=WORKER_SLOTS) as slots:
            return list(slots.map(one_task_instance, entry.consumer_batches))

    return fan_out_and_verify


@dataclass(frozen=True)
class BatchTime:
    """Where one mapped task instance's time went: writing its batch, then verifying it."""

    kind: str
    consumers: int
    write_seconds: float
    verify_seconds: float


# -- baseline: a shell loop of plain HTTP writes ---------------------------------------------------------------------


def baseline(bench_world: World, new_key: str) -> Callable[[], int]:
    """One consumer after the other, each with the service's own HTTP API (what `gh secret set` etc. do)."""
    from nacl import encoding, public

    connections = bench_world.fleet.connections
    kube = connections["kubernetes_default"]["extra"]["kube_config"]
    kube = yaml.safe_load(kube) if isinstance(kube, str) else kube
    kube_server = kube["clusters"][0]["cluster"]["server"]
    kube_token = kube["users"][0]["user"]["token"]
    session = requests.Session()

    def github(entry: dict[str, Any]) -> None:
        url = f"{connections['github_default']['host']}/repos/{entry['repository']}/actions/secrets"
        headers = {"Authorization": f"Bearer {connections['github_default']['password']}"}
        response = session.get(f"{url}/public-key", headers=headers, timeout=30)
        response.raise_for_status()
        key = response.json()
        box = public.SealedBox(public.PublicKey(key["key"].encode(), encoding.Base64Encoder()))
        sealed = base64.b64encode(box.encrypt(new_key.encode())).decode()
        body = {"encrypted_value": sealed, "key_id": key["key_id"]}
        session.put(f"{url}/{VARIABLE}", json=body, headers=headers, timeout=30).raise_for_status()

    def gitlab(entry: dict[str, Any]) -> None:
        conn = connections["gitlab_default"]
        url = f"{conn['host']}/api/v4/projects/{quote(entry['project'], safe='')}/variables/{VARIABLE}"
        response = session.put(url, data={"value": new_key}, headers={"PRIVATE-TOKEN": conn["password"]}, timeout=30)
        response.raise_for_status()

    def kubernetes(entry: dict[str, Any]) -> None:
        url = f"{kube_server}/api/v1/namespaces/{entry['namespace']}/secrets/{entry['secret_name']}"
        patch = {"data": {entry["data_key"]: base64.b64encode(new_key.encode()).decode()}}
        headers = {"Authorization": f"Bearer {kube_token}", "Content-Type": "application/merge-patch+json"}
        session.patch(url, json=patch, headers=headers, timeout=30, verify=False).raise_for_status()

    def circleci(entry: dict[str, Any]) -> None:
        conn = connections["circleci_default"]
        url = f"{conn['host']}/api/v2/context/{entry['context_id']}/environment-variable/{VARIABLE}"
        response = session.put(url, json={"value": new_key}, headers={"Circle-Token": conn["password"]}, timeout=30)
        response.raise_for_status()

    writers = {"github_actions": github, "gitlab_ci": gitlab, "kubernetes_secret": kubernetes, "circleci_env": circleci}

    def shell_loop() -> int:
        """Like ``for c in ...; do gh secret set ...; done`` without ``set -e``: a failed write is reported and the
        loop goes on. Returns how many writes failed."""
        failed = 0
        for entry in bench_world.entries:
            try:
                writers[entry["kind"]](entry)
            except requests.RequestException:
                failed += 1
        return failed

    return shell_loop


def new_key() -> str:
    """A fresh stand-in for a Kosli key (43 URL-safe characters, like the sandbox's)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("=")
