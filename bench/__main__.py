"""``python -m bench`` (what ``make bench`` runs): every benchmark, one table, and bench/results.md."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

from bench.report import Section

REPO = Path(__file__).resolve().parents[1]
#: Module name -> what it measures, in the order of the issue.
BENCHMARKS = {
    "fan_out": "1-2: fan-out to N consumers under GitHub's limits, and with a token's budget mostly used",
    "airflow_runs": "3, 4, 6: exposure window, grace wait cost, end-to-end per task (airflow standalone)",
    "parse_time": "5: DAG parse time and memory by inventory size",
}
HEADLINES = {
    "fan_out_bound_300": "fan-out + verify to 300 consumers (90 GitHub secrets, one token): ours against the bound",
    "fan_out_loop_300": "the same, the shell loop under the same limits",
    "fan_out_bound_50": "fan-out + verify to 50 consumers (15 GitHub secrets): ours against the bound",
    "fan_out_bound_10": "fan-out + verify to 10 consumers (3 GitHub secrets): ours against the bound",
    "fan_out_lost": "writes lost by ours under GitHub's limits, every size and run",
    "github_requests_per_secret": "requests per GitHub secret, one secret per repository",
    "rate_limited_failed_writes": "writes lost by ours, a token with 20 writes left a minute",
    "rate_limited_loop_failed_writes": "the same, the shell loop",
    "exposure_window_10": "exposure window, replace, 10 consumers",
    "exposure_window_200": "exposure window, replace, 200 consumers",
    "grace_running_task_instances": "task instances running while a grace period is waited out",
    "end_to_end_10": "one rotation end to end, 10 consumers",
    "parse_1000": "parse time of an inventory of 1000 keys",
    "parse_ratio_1000": "the same, against bare TaskFlow DAGs of the same shape",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each: proves the benchmarks work")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these benchmarks")
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the results (default bench/results.md; --quick writes nothing unless given)",
    )
    return parser.parse_args(argv)


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    with_model = Path("/proc/cpuinfo")
    if with_model.exists():
        for line in with_model.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import airflow

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": str(os.cpu_count()),
        "memory": f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "cpu": cpu,
        "python": platform.python_version(),
        "airflow": airflow.__version__,
    }


def document(sections: list[Section], header: dict[str, str], quick: bool, seconds: float) -> str:
    lines = ["# Benchmark results", ""]
    lines += [
        f"Produced by `make bench` ({'--quick, tiny sizes' if quick else 'full sizes'}) in {seconds / 60:.1f} "
        "minutes. Medians of repeated runs; ± is half the range.",
        "",
    ]
    lines += ["| machine | |", "|---|---|", *[f"| {name} | {value} |" for name, value in header.items()], ""]
    headlines = {name: value for section in sections for name, value in section.headlines.items()}
    shown = [(text, headlines[name]) for name, text in HEADLINES.items() if name in headlines]
    if shown:
        lines += ["## Headline figures", "", "| figure | value |", "|---|---|"]
        lines += [f"| {text} | {value} |" for text, value in shown]
        lines.append("")
    lines += [section.markdown() for section in sections]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.disable(logging.INFO)  # the product logs every consumer; the tables are what matter here
    started, sections = time.monotonic(), []
    for name in args.only or BENCHMARKS:
        print(f"running {name}: {BENCHMARKS[name]} ...", flush=True)
        module, begun = importlib.import_module(f"bench.{name}"), time.monotonic()
        sections += module.run(args.quick)
        print(f"  {name} took {(time.monotonic() - begun) / 60:.1f} minutes", flush=True)
    text = document(sections, machine(), args.quick, time.monotonic() - started)
    print("\n" + text)
    output = args.output or (None if args.quick else REPO / "bench" / "results.md")
    if output is not None:
        output.write_text(text)
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
