"""Benchmarks 1 and 2: fan-out + verify to N consumers under GitHub's documented limits, against the bound those
limits and the latency set, and against the shell-loop procedure under the same limits, in the same run.

The world and the two procedures are in ``bench.fan_out_world``; the bound and the pace check in
``bench.github_limits``. The GitHub sandbox enforces GitHub's limits in real time, so N is what is kept small.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from bench.fan_out_world import (
    GITHUB_LIMITS,
    LATENCY,
    MIX,
    WORKER_SLOTS,
    BatchTime,
    World,
    baseline,
    kinds,
    new_key,
    ours,
    world,
)
from bench.github_limits import github_bound, pace_breaks
from bench.report import Sample, Section

#: Repeats per size (make bench stays under 20 minutes; the largest size varies by well under 1%). 300 consumers hold
#: 90 GitHub secrets: more than GitHub allows one token in a minute.
REPEATS = {10: 3, 50: 2, 300: 1}
QUICK_SIZES = (4,)
#: Benchmark 2: a token other automation has mostly used, 20 writes left in the minute.
TIGHT_LIMITS = {**GITHUB_LIMITS, "secondary_limit": 20}
#: At the quick size (3 GitHub writes) one write per short window makes the limit bite within seconds.
QUICK_TIGHT_LIMITS = {**GITHUB_LIMITS, "secondary_limit": 1, "secondary_window": 3.0}
TIGHT_SIZE, QUICK_TIGHT_SIZE, TIGHT_REPEATS = 100, 4, 1


@dataclass
class Runs:
    """What the repeats of one procedure at one size measured."""

    seconds: list[float] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)  # consumers not holding the new key at the end
    pace_breaks: list[int] = field(default_factory=list)
    rejected: list[int] = field(default_factory=list)
    github_requests: list[int] = field(default_factory=list)
    other_requests: int = 0
    batches: list[BatchTime] = field(default_factory=list)

    def record(self, bench_world: World, seconds: float, key: str) -> None:
        github = bench_world.github.stats()
        self.seconds.append(seconds)
        self.lost.append(len(bench_world.entries) - bench_world.holding(key))
        self.pace_breaks.append(pace_breaks(bench_world.github))
        self.rejected.append(github["rate_limited"])
        self.github_requests.append(github["total_requests"])
        self.other_requests = bench_world.requests_served() - github["total_requests"]


def measure(n: int, repeats: int, limits: dict[str, Any]) -> tuple[Runs, Runs]:
    """Ours and the shell loop, each ``repeats`` times on a fresh world of ``n`` consumers."""
    mine, loop = Runs(), Runs()
    for _ in range(repeats):
        old_key, key = new_key(), new_key()
        with world(n, old_key, limits) as bench_world:
            action = ours(bench_world, old_key, key)
            bench_world.reset_stats()
            started = time.perf_counter()
            try:
                mine.batches = action()
            except Exception as error:  # lost writes are what this benchmark exists to catch: count them
                print(f"  ours failed at N={n}: {type(error).__name__}: {str(error)[:300]}", flush=True)
            mine.record(bench_world, time.perf_counter() - started, key)
        old_key, key = new_key(), new_key()
        with world(n, old_key, limits) as bench_world:
            shell_loop = baseline(bench_world, key)
            bench_world.reset_stats()
            started = time.perf_counter()
            shell_loop()
            loop.record(bench_world, time.perf_counter() - started, key)
    return mine, loop


def bound(n: int, mine: Runs, limits: dict[str, Any]) -> float:
    """The least time GitHub's limits and the latency allow: GitHub's writes of one token, or, if longer, every
    other request at the concurrency the product allows (8 batches, 8 consumers at once in each)."""
    from kosli_rotation.consumers.base import Consumer

    writes = sum(kind == "github_actions" for kind in kinds(n))
    per_minute, window = limits["secondary_limit"], limits["secondary_window"]
    github = github_bound(writes, LATENCY, per_minute=per_minute, per_hour=limits["secondary_hourly_limit"],
                          window=window)  # fmt: skip
    others = n - writes
    at_once = min(others, WORKER_SLOTS * Consumer.max_concurrency) or 1
    return max(github, mine.other_requests * LATENCY / at_once)


def _limits_text(limits: dict[str, Any]) -> str:
    return (
        f"{limits['secondary_limit']} content-creating requests per {limits['secondary_window']:.0f} s and "
        f"{limits['secondary_hourly_limit']} an hour per token, beyond that {limits['secondary_status']} with "
        "retry-after, in real time; GitHub also asks for one mutating request at a time, a second apart"
    )


def fan_out_section(quick: bool) -> tuple[Section, Section]:
    sizes = QUICK_SIZES if quick else tuple(REPEATS)
    section = Section(
        "1. Fan-out + verify to N consumers under GitHub's limits: against the bound, and a shell loop",
        ["N", "GitHub secrets", "ours (fan-out + verify)", "bound", "ours / bound", "ours: lost writes",
         "requests per GitHub secret", "shell loop (writes only)", "shell loop: lost writes",
         "shell loop: writes under 1 s apart"],
        settings={
            "sandbox latency": f"{LATENCY * 1000:.0f} ms per request",
            "GitHub's limits": _limits_text(GITHUB_LIMITS),
            "mix per 10": ", ".join(f"{count} {kind}" for kind, count in MIX),
            "worker slots": str(WORKER_SLOTS),
            "batch size": "10 (default fan_out_batch_size)",
            "repeats": "1" if quick else ", ".join(f"{repeats} at N={n}" for n, repeats in REPEATS.items()),
        },
    )  # fmt: skip
    batches: list[BatchTime] = []
    lost = 0
    for n in sizes:
        mine, loop = measure(n, 1 if quick else REPEATS[n], GITHUB_LIMITS)
        batches = mine.batches or batches
        writes = sum(kind == "github_actions" for kind in kinds(n))
        least = bound(n, mine, GITHUB_LIMITS)
        ours_sample, loop_sample = Sample.of(mine.seconds), Sample.of(loop.seconds)
        ratio = ours_sample.median / least
        per_secret = statistics.median(mine.github_requests) / writes
        print(f"  N={n}: ours {ours_sample.show()} ({ratio:.2f}x the bound), loop {loop_sample.show()}", flush=True)
        section.add_row(
            n, writes, ours_sample.show(), f"{least:.1f} s", f"{ratio:.2f}x", Sample.of(mine.lost).show("", 0),
            f"{per_secret:.1f}", loop_sample.show(), Sample.of(loop.lost).show("", 0),
            Sample.of(loop.pace_breaks).show("", 0),
        )  # fmt: skip
        section.headlines[f"fan_out_bound_{n}"] = (
            f"{ratio:.2f}x ({ours_sample.median:.1f} s against a bound of {least:.1f} s), "
            f"{max(mine.lost)} writes lost, {max(mine.pace_breaks)} writes under 1 s apart"
        )
        section.headlines[f"fan_out_loop_{n}"] = (
            f"{loop_sample.median:.1f} s, {Sample.of(loop.lost).median:.0f} of {writes} GitHub writes lost, "
            f"{Sample.of(loop.pace_breaks).median:.0f} writes under 1 s apart"
        )
        section.headlines["github_requests_per_secret"] = f"{per_secret:.1f}"
        lost += max(mine.lost)
    section.headlines["fan_out_lost"] = str(lost)
    section.notes.append(
        "The bound is the least time GitHub's rules leave for the GitHub secrets of one token: a public-key read, "
        "then every write one at a time and a second after the previous one ended (and no more than the window "
        "limits allow), then a listing that verifies the last one; or, if longer, every other request ours made at "
        "the concurrency the product allows (8 batches, 8 consumers at once in each), times the latency. "
        "Lost writes: consumers not holding the new key at the end (they would break when the old key is revoked). "
        "Ours reads back before writing where the store allows, verifies every consumer after writing and records "
        "each status in Vault (OpenBao adds no latency); the shell loop only writes, and keeps going after an error "
        "as a loop without `set -e` does. Requests per GitHub secret: everything ours asked GitHub (public key, "
        "PUT, verifying list) over the secrets; here every repository holds one secret, the case with the most "
        "requests per secret (see the README for repositories holding several, and organization secrets)."
    )
    return section, batch_split(batches)


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
        "and connection); 8 run at once. GitHub's batches of one token take turns on the token's pace (one write a "
        "second between them all), so each of them lasts about as long as all of them together."
    )
    return section


def rate_limited_section(quick: bool) -> Section:
    quick_run = (QUICK_TIGHT_SIZE, 1, QUICK_TIGHT_LIMITS)
    n, repeats, limits = quick_run if quick else (TIGHT_SIZE, TIGHT_REPEATS, TIGHT_LIMITS)
    section = Section(
        "2. A token other automation has mostly used",
        ["N", "GitHub secrets", "ours", "bound", "ours / bound", "rejected requests", "ours: lost writes",
         "shell loop: lost writes"],
        settings={
            "sandbox latency": f"{LATENCY * 1000:.0f} ms",
            "GitHub's limits": _limits_text(limits),
            "repeats": str(repeats),
        },
    )  # fmt: skip
    mine, loop = measure(n, repeats, limits)
    writes = sum(kind == "github_actions" for kind in kinds(n))
    least = bound(n, mine, limits)
    ours_sample = Sample.of(mine.seconds)
    section.add_row(
        n, writes, ours_sample.show(), f"{least:.1f} s", f"{ours_sample.median / least:.2f}x",
        Sample.of(mine.rejected).show("", 0), Sample.of(mine.lost).show("", 0), Sample.of(loop.lost).show("", 0),
    )  # fmt: skip
    section.headlines["rate_limited_failed_writes"] = str(max(mine.lost))
    section.headlines["rate_limited_loop_failed_writes"] = f"{Sample.of(loop.lost).median:.0f} of {writes}"
    section.notes.append(
        "The token has only this many writes left a minute. Ours gets one rejection when the minute's budget is "
        "spent: GitHub's 403 carries retry-after, and the token's pace holds every batch of the token off until "
        "then (one rejection, not one per batch); the write is then sent again, so no write is lost. The shell "
        "loop moves on after the error: the consumers it failed keep the old key."
    )
    return section


def run(quick: bool) -> list[Section]:
    return [*fan_out_section(quick), rate_limited_section(quick)]
