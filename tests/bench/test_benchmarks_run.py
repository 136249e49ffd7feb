"""Every benchmark runs once at a tiny size (``python -m bench --quick``), so none of them can rot. No timing is
asserted: only that each one measured something, and the outcomes a benchmark exists to check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.demo.test_demo import REPO, demo_environment

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

SECTIONS = (
    "## 1. Fan-out",
    "## 2. A token other automation",
    "## 3. Exposure window",
    "## 4. What waiting out",
    "## 5. DAG parse time",
    "## 6. One rotation end to end",
)
SECONDS = r"\d+\.\d+ s"


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The data rows of the table under ``heading``."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_every_benchmark_runs_at_a_tiny_size_and_writes_its_table(tmp_path: Path) -> None:
    results = tmp_path / "results.md"
    env = {**demo_environment(), "PYTHONPATH": str(REPO)}
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--output", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1100,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    text = results.read_text()

    assert f"| cores | {os.cpu_count()} |" in text and "| airflow | 3.3" in text, "the machine is described"
    for heading in SECTIONS:
        assert heading in text, f"missing section {heading}"
    (fan_out,) = table_rows(text, SECTIONS[0])
    _n, _writes, ours, _bound, ratio, ours_lost, per_secret, loop, _loop_lost, loop_breaks = fan_out
    assert re.fullmatch(SECONDS, ours) and re.fullmatch(SECONDS, loop) and ratio.endswith("x"), fan_out
    assert ours_lost == "0", "under GitHub's documented limits ours loses no write"
    assert 0 < float(per_secret) <= 3.0, "a GitHub secret costs a public key, a PUT and a listing at most"
    assert int(loop_breaks) > 0, "the shell loop ignores GitHub's second between writes: the log must show it"
    split = {row[0] for row in table_rows(text, "## 1a. Where ours spends")}
    assert "github_actions" in split, "the split by kind explains the fan-out time"
    (exhausted,) = table_rows(text, SECTIONS[1])
    assert int(exhausted[-3]) > 0, "the tight limit must reject writes, or the benchmark measures nothing"
    assert exhausted[-2] == "0", "no write of ours may fail under GitHub's rate limit"
    assert int(exhausted[-1]) > 0, "the shell loop, which does not wait, loses writes under the tight limit"
    (exposure,) = table_rows(text, SECTIONS[2])
    assert re.fullmatch(SECONDS, exposure[1]), exposure
    ours_share, airflows_share = (float(cell.split()[0]) for cell in exposure[2:4])
    assert ours_share > 0 and airflows_share > 0, f"the window is split into ours and Airflow's: {exposure}"
    _idle, waiting = table_rows(text, SECTIONS[3])
    assert waiting[1].split()[0] == "0", "a grace wait holds no worker slot"
    parsed = table_rows(text, SECTIONS[4])
    assert len(parsed) == 2 and all(int(row[-1].split()[0]) > 0 for row in parsed), "parsing takes some memory"
    assert all(re.fullmatch(SECONDS, row[3]) and re.fullmatch(r"\d+\.\d+x", row[4]) for row in parsed), (
        "our parse time is set against bare TaskFlow DAGs of the same shape"
    )
    per_task = {row[0]: row[1] for row in table_rows(text, SECTIONS[5])}
    assert re.fullmatch(SECONDS, per_task["`(whole run)`"].split(" ±")[0])
