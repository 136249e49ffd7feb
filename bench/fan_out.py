"""Benchmarks 1 and 2: fan-out + verify to N consumers, against the shell-loop procedure, in the same run.

Ours: the product's own steps, ``Rotation.fan_out`` then ``Rotation.verify_consumers`` on each batch of
``KeyEntry.consumer_batches``, batches running side by side in ``WORKER_SLOTS`` threads the way the mapped task
group's instances run in as many worker slots (Airflow's per-task start-up is not included here: benchmarks 3 and 6
measure it through a real ``airflow standalone``). They read the new key from a real OpenBao record, write every
consumer (reading back first where the store allows), verify it and record the status in Vault.

Baseline: the seeds' manual procedure as a shell loop would do it, one consumer after the other, with plain HTTP
calls (``requests``): GitHub's public key then the sealed secret, GitLab's variable, CircleCI's context variable, the
Kubernetes Secret. Writes only: no read-back, no verification, no record.

The consumers are a mix of the kinds a CI-heavy org has most of, all in the local sandboxes with 50 ms latency per
request. Jenkins, AWS (moto has no latency setting), Vault KV and CLI config files are left out of this mix so that
every request pays the same latency on both sides.
"""

from __future__ import annotations

import base64
import contextlib
import os
import statistics
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

from bench.report import Sample, Section

LATENCY = 0.05
WORKER_SLOTS = 8
#: Repeats per size: the larger sizes take a minute or two per run, so they run twice (make bench fits 15 minutes).
REPEATS = {10: 3, 50: 2, 200: 2, 1000: 2}
SIZES = tuple(REPEATS)
QUICK_SIZES = (4,)
#: Of every 10 consumers: kind, count.
MIX = (("github_actions", 3), ("gitlab_ci", 3), ("kubernetes_secret", 2), ("circleci_env", 2))
#: GitHub's secondary limit on content-creating requests, scaled down 10x in time so the run stays short: GitHub
#: documents about 80 per minute; here 80 per 6 s per token.
GITHUB_SECONDARY = {"secondary_limit": 80, "secondary_window": 6.0, "secondary_status": 403}
#: The limits benchmark 2 runs under: GitHub's documented pace, and a token with a quarter of its budget left.
SECONDARY_LIMITS = (("GitHub's pace", 80), ("a quarter left", 20))
#: At the quick size (3 GitHub writes) only one write per window makes the limit bite.
QUICK_SECONDARY_LIMITS = (("GitHub's pace", 80), ("one write per window", 1))
RATE_LIMITED_SIZE, QUICK_RATE_LIMITED_SIZE = 100, 4
ORG, VARIABLE, RUN_ID = "acme", "KOSLI_API_TOKEN", "manual__bench"


def _kinds(n: int) -> list[str]:
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

    def requests_served(self) -> int:
        return sum(sandbox.stats()["total_requests"] for sandbox in self.sandboxes.values())

    def reset_stats(self) -> None:
        for sandbox in self.sandboxes.values():
            sandbox.reset_stats()


@contextlib.contextmanager
def world(n: int, old_key: str) -> Iterator[World]:
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
                entries = [_seed(fleet, kind, i, old_key) for i, kind in enumerate(_kinds(n))]
                connections = {**fleet.airflow_env(), "AIRFLOW_CONN_VAULT_DEFAULT": bao.airflow_connection(mount)}
                with _environment(connections):
                    bench_world = World(fleet, bao, mount, entries)
                    for sandbox in bench_world.sandboxes.values():
                        sandbox.apply_settings({"latency": LATENCY})
                    yield bench_world
            finally:
                fleet.stop()
        finally:
            bao.stop()


def _seed(fleet: Any, kind: str, i: int, value: str) -> dict[str, Any]:
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


def batch_split(batches: list[BatchTime]) -> Section:
    """Per kind: how long a batch takes to write and to verify, per consumer: the split that explains the wall time."""
    section = Section(
        "1a. Where ours spends its time, by consumer kind (largest N, last run)",
        ["kind", "batches", "write a batch", "verify a batch", "per consumer", "consumers at once in a batch"],
    )
    from kosli_rotation.consumers import KINDS

    for kind, _ in MIX:
        mine = [batch for batch in batches if batch.kind == kind]
        if not mine:
            continue
        write = statistics.median(batch.write_seconds for batch in mine)
        verify = statistics.median(batch.verify_seconds for batch in mine)
        per_consumer = statistics.median((b.write_seconds + b.verify_seconds) / b.consumers for b in mine)
        at_once = min(10, KINDS[kind][1].max_concurrency)
        section.add_row(kind, len(mine), f"{write:.2f} s", f"{verify:.2f} s", f"{per_consumer:.2f} s", at_once)
    section.notes.append(
        "Medians over the batches of each kind. A batch is one mapped task instance (up to 10 consumers of one kind "
        "and connection); 8 run at once, GitHub's first since they come first in the inventory's batch order."
    )
    return section


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


# -- the benchmarks --------------------------------------------------------------------------------------------------


def _key() -> str:
    """A fresh stand-in for a Kosli key (43 URL-safe characters, like the sandbox's)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes * 2).decode().rstrip("=")


def _keys() -> tuple[str, str]:
    return _key(), _key()


def _held_by_all(bench_world: World, key: str) -> int:
    """How many seeded consumers hold ``key``, as each service's own store shows it."""
    return sum(value == key for value in bench_world.fleet.held_values().values())


def fan_out_section(quick: bool) -> tuple[Section, Section]:
    sizes = QUICK_SIZES if quick else SIZES
    section = Section(
        "1. Fan-out + verify to N consumers, against a sequential shell loop",
        ["N", "ours (fan-out + verify)", "shell loop (writes only)", "speed-up", "requests ours / loop", "bound"],
        settings={
            "sandbox latency": f"{LATENCY * 1000:.0f} ms per request",
            "rate limits": "off",
            "mix per 10": ", ".join(f"{count} {kind}" for kind, count in MIX),
            "worker slots": str(WORKER_SLOTS),
            "batch size": "10 (default fan_out_batch_size)",
            "repeats": "1" if quick else ", ".join(f"{repeats} at N={n}" for n, repeats in REPEATS.items()),
        },
    )
    batches: list[BatchTime] = []
    for n in sizes:
        repeats = 1 if quick else REPEATS[n]
        ours_times, loop_times, ours_requests, loop_requests, concurrency = [], [], 0, 0, 1.0
        for _ in range(repeats):
            old_key, new_key = _keys()
            with world(n, old_key) as bench_world:
                action = ours(bench_world, old_key, new_key)
                bench_world.reset_stats()
                started = time.perf_counter()
                batches = action()
                ours_times.append(time.perf_counter() - started)
                ours_requests = bench_world.requests_served()
                if _held_by_all(bench_world, new_key) != n:
                    raise RuntimeError(f"ours: not every one of {n} consumers holds the new key")
                concurrency = _effective_concurrency(bench_world)
            old_key, new_key = _keys()
            with world(n, old_key) as bench_world:
                action = baseline(bench_world, new_key)
                bench_world.reset_stats()
                started = time.perf_counter()
                action()
                loop_times.append(time.perf_counter() - started)
                loop_requests = bench_world.requests_served()
                if _held_by_all(bench_world, new_key) != n:
                    raise RuntimeError(f"shell loop: not every one of {n} consumers holds the new key")
        ours_sample, loop_sample = Sample.of(ours_times), Sample.of(loop_times)
        print(f"  N={n}: ours {ours_sample.show()}, shell loop {loop_sample.show()}", flush=True)
        bound = ours_requests * LATENCY / concurrency
        section.add_row(
            n,
            ours_sample.show(),
            loop_sample.show(),
            f"{loop_sample.median / ours_sample.median:.1f}x",
            f"{ours_requests} / {loop_requests}",
            f"{bound:.2f} s",
        )
        section.headlines[f"fan_out_ratio_{n}"] = (
            f"{loop_sample.median / ours_sample.median:.1f}x ({ours_sample.median:.1f} s against "
            f"{loop_sample.median:.1f} s)"
        )
        section.headlines[f"fan_out_ours_{n}"] = f"{ours_sample.median:.1f} s"
        section.headlines[f"fan_out_loop_{n}"] = f"{loop_sample.median:.1f} s"
    section.notes.append(
        "The bound is every request ours made times the sandbox latency, divided by the concurrency the product "
        "allows: "
        f"{WORKER_SLOTS} batches at once, each writing up to 8 consumers at a time (GitHub: 1, for its secondary "
        "limits). Ours makes more requests than the loop because it proves its work: it reads a value back before "
        "writing where the store allows (and skips consumers that already hold the key), verifies every consumer "
        "after writing, and records each consumer's status in Vault (not counted above: OpenBao adds no latency). "
        "Where the time goes above the bound: GitHub (split below). The GitHub consumer follows GitHub's "
        "integration guidance for its secondary limits: one request at a time per batch, and PyGithub's spacing of "
        "0.25 s between requests. A GitHub secret costs about 1 s (repository, public key, sealed PUT, then the "
        "secret's updated_at), of which 50 ms per request is latency, so a batch of 10 GitHub secrets takes about "
        "10 s and the GitHub batches decide the wall time. So for a few dozen consumers the shell loop, which "
        "neither paces GitHub nor verifies anything, is faster; from a couple of hundred on, batches running side by "
        "side win, and the gap grows with N. The other kinds finish well inside the GitHub batches (1a). Where many "
        "repositories hold the same key, one GitHub organization secret shared with them is one write instead of "
        "hundreds. The sandboxes, OpenBao and the rotator also share the machine's 2 cores."
    )
    return section, batch_split(batches)


def _effective_concurrency(bench_world: World) -> float:
    """Concurrent requests the product allows on this mix: worker slots x consumers at once per batch (by kind)."""
    from kosli_rotation.consumers import KINDS

    per_batch = {kind: min(10, KINDS[kind][1].max_concurrency) for kind, _ in MIX}
    mix_total = sum(count for _, count in MIX)
    average = sum(per_batch[kind] * count for kind, count in MIX) / mix_total
    return max(1.0, min(len(bench_world.entries), WORKER_SLOTS * average))


def rate_limited_section(quick: bool) -> Section:
    n, repeats = (QUICK_RATE_LIMITED_SIZE, 1) if quick else (RATE_LIMITED_SIZE, 2)
    section = Section(
        "2. The same with GitHub's secondary rate limit on",
        [
            "N",
            "GitHub writes",
            "limit",
            "ours",
            "lower bound from the limit",
            "rejected requests",
            "failed writes",
            "shell loop: failed writes",
        ],
        settings={
            "sandbox latency": f"{LATENCY * 1000:.0f} ms",
            "GitHub secondary limit": "content-creating requests per token, answered with "
            f"{GITHUB_SECONDARY['secondary_status']} and retry-after (GitHub documents about 80 per minute; scaled "
            "10x in time here so the run stays short)",
            "repeats": str(repeats),
        },
    )
    github_writes = sum(kind == "github_actions" for kind in _kinds(n))  # one content-creating PUT per secret
    failed_total, rejected_total = 0, 0
    for label, limit in QUICK_SECONDARY_LIMITS if quick else SECONDARY_LIMITS:
        settings = {**GITHUB_SECONDARY, "secondary_limit": limit}
        times, rejected, failed = [], 0, 0
        for _ in range(repeats):
            old_key, new_key = _keys()
            with world(n, old_key) as bench_world:
                bench_world.fleet.sandbox("github_actions").apply_settings(settings)
                action = ours(bench_world, old_key, new_key)
                bench_world.reset_stats()
                started = time.perf_counter()
                try:
                    action()
                except Exception as error:  # a failed write is what this benchmark exists to catch: report it
                    section.notes.append(f"**A run failed**: {type(error).__name__}: {str(error)[:300]}")
                times.append(time.perf_counter() - started)
                rejected += bench_world.fleet.sandbox("github_actions").stats()["rate_limited"]
                failed += n - _held_by_all(bench_world, new_key)
        loop_failed = _shell_loop_under(settings, n, repeats) if limit < GITHUB_SECONDARY["secondary_limit"] else "—"
        window = settings["secondary_window"]
        bound = (github_writes - 1) // limit * window
        section.add_row(
            n, github_writes, f"{limit} per {window:.0f} s ({label})", Sample.of(times).show(), f"{bound:.1f} s",
            rejected, failed, loop_failed,
        )  # fmt: skip
        failed_total, rejected_total = failed_total + failed, rejected_total + rejected
        if loop_failed != "—":
            section.headlines["rate_limited_loop_failed_writes"] = f"{loop_failed} of {github_writes}"
    section.headlines["rate_limited_failed_writes"] = str(failed_total)
    section.headlines["rate_limited_rejected"] = str(rejected_total)
    section.notes.append(
        "The lower bound is the number of full limit windows the GitHub writes need. At GitHub's documented pace "
        "the limit is not reached: a GitHub batch writes one secret at a time, about 0.7 s each (1a), so 8 batches "
        "side by side stay near 11 writes a second, and the shell loop near 5. The second row is a token that "
        "other automation has mostly used up: there the sandbox rejects writes (rejected requests, summed over the "
        "repeats), the product waits for retry-after and writes again, and its failed writes (consumers not holding "
        "the new key at the end) must stay 0. The shell loop, run against the same limit, moves on after an error "
        "as a loop without `set -e` does: the consumers it failed keep the old key and break when it is revoked."
    )
    return section


def _shell_loop_under(settings: dict[str, Any], n: int, repeats: int) -> str:
    """Failed writes of the shell loop under a GitHub secondary limit (median over the repeats)."""
    failures = []
    for _ in range(repeats):
        old_key, new_key = _keys()
        with world(n, old_key) as bench_world:
            bench_world.fleet.sandbox("github_actions").apply_settings(settings)
            baseline(bench_world, new_key)()
            failures.append(n - _held_by_all(bench_world, new_key))
    return Sample.of(failures).show("", 0)


def run(quick: bool) -> list[Section]:
    return [*fan_out_section(quick), rate_limited_section(quick)]
