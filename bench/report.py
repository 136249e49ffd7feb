"""What every benchmark returns, and how repeated timings become a median with its spread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sample:
    """Repeated measurements of one figure (seconds, bytes, counts...)."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Sample:
        if not values:
            raise ValueError("a sample needs at least one measurement")
        return cls(tuple(values))

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def spread(self) -> float:
        """Half the range: the median is within ± this of every run."""
        return (max(self.values) - min(self.values)) / 2

    def show(self, unit: str = "s", digits: int = 2) -> str:
        """``1.23 s ± 0.04 (n=5)``; a single run shows no spread."""
        text = f"{self.median:.{digits}f}{' ' + unit if unit else ''}"
        if len(self.values) > 1:
            text += f" ± {self.spread:.{digits}f} (n={len(self.values)})"
        return text


def timed(action: Callable[[], object], repeats: int, *, before: Callable[[], object] | None = None) -> Sample:
    """Wall time of ``action`` over ``repeats`` runs; ``before`` (untimed) resets the world between runs."""
    seconds = []
    for _ in range(repeats):
        if before is not None:
            before()
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return Sample.of(seconds)


@dataclass
class Section:
    """One benchmark's part of the results: a heading, a markdown table, and what explains the numbers."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    #: The settings this benchmark ran with (latency, limits, sizes, repeats), shown under the heading.
    settings: dict[str, str] = field(default_factory=dict)
    #: Where the time goes, caveats: plain markdown paragraphs shown under the table.
    notes: list[str] = field(default_factory=list)
    #: Headline figures for the summary table and the README (name -> shown value).
    headlines: dict[str, str] = field(default_factory=dict)

    def add_row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: a row needs {len(self.columns)} cells, got {len(cells)}")
        self.rows.append([str(cell) for cell in cells])

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        if self.settings:
            lines += [", ".join(f"{name}: {value}" for name, value in self.settings.items()), ""]
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        for note in self.notes:
            lines += ["", note]
        return "\n".join(lines) + "\n"
