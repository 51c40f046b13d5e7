"""What a run measured: the rows of the report, as a plain-text table and as JSON."""

from __future__ import annotations

import json
import statistics
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Measurement:
    """One row of the report: what was measured, the figures, the target and whether it was met.

    A row whose target is `None` is information only: it is printed, never missed.
    """

    key: str
    title: str
    summary: list[str]
    target: str | None
    met: bool
    figures: dict[str, Any]


@dataclass(frozen=True)
class Spread:
    """The same thing timed several times: the best (fastest) run and how far the others strayed.

    Ratios compare best with best; the median and the slowest show the noise.
    """

    seconds: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def worst(self) -> float:
        return max(self.seconds)

    def best_rate(self, users: int) -> float:
        return users / max(self.best, 1e-9)

    def describe(self, users: int) -> str:
        """`86,580 users/s (2.31 / 2.40 / 2.55 s min/median/max of 3)`."""
        return (
            f"{self.best_rate(users):,.0f} users/s ({self.best:.3f} / {self.median:.3f} / "
            f"{self.worst:.3f} s min/median/max of {len(self.seconds)})"
        )

    def as_json(self, users: int) -> dict[str, Any]:
        return {
            "seconds": list(self.seconds),
            "min_seconds": self.best,
            "median_seconds": self.median,
            "max_seconds": self.worst,
            "best_users_per_second": self.best_rate(users),
        }


@dataclass
class Report:
    """Everything one run measured, with enough context to compare runs."""

    engine: str
    quick: bool
    context: dict[str, Any]
    measurements: list[Measurement] = field(default_factory=list)

    @property
    def missed(self) -> list[str]:
        return [m.key for m in self.measurements if not m.met]

    def as_json(self) -> dict[str, Any]:
        """The report as plain JSON data."""
        return {
            "engine": self.engine,
            "quick": self.quick,
            "targets_enforced": not self.quick,
            **self.context,
            "measurements": {
                m.key: {k: v for k, v in asdict(m).items() if k != "key"} for m in self.measurements
            },
            "missed": self.missed,
        }


def megabytes(kib: int) -> float:
    return kib * 1024 / 1_000_000


def percentile(sorted_values: list[float], percent: float) -> float:
    """The nearest-rank percentile of already sorted values."""
    rank = max(1, -(-len(sorted_values) * percent // 100))
    return sorted_values[int(rank) - 1]


def machine_line(report: Report) -> str:
    """The first line of the table: what ran where."""
    context = report.context
    return (
        f"Generator benchmark: {report.engine} {context['engine_version']}, "
        f"{context['cpus']} CPUs ({context['cpu_model']}), {context['memory_gb']:.0f} GB RAM, "
        f"Python {context['python']}, Django {context['django']}, "
        f"chunk {context['chunk_size']:,}, one run per figure best of {context['repeats']} "
        f"(1M-size figures best of {context['big_repeats']})"
        + (" (--quick: tiny sizes, targets not enforced)" if report.quick else "")
    )


def format_table(report: Report) -> str:
    """The report as a plain-text table, with a MISSED line when a target was missed."""
    lines = [machine_line(report), ""]
    widths = (38, 70, 26)
    header = ("measurement", "figures (end to end unless said)", "target", "met")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, (*widths, 0), strict=True)))
    lines.append("  ".join("-" * w for w in widths) + "  ---")
    for number, m in enumerate(report.measurements, start=1):
        figures = [
            line
            for part in m.summary
            for line in textwrap.wrap(part, widths[1], subsequent_indent="  ")
        ]
        title = textwrap.wrap(f"{number}. {m.title}", widths[0])
        target = textwrap.wrap(m.target or "(information)", widths[2])
        met = "-" if m.target is None else "yes" if m.met else "no  MISSED"
        for row in range(max(len(figures), len(title), len(target))):
            cells = (
                title[row] if row < len(title) else "",
                figures[row] if row < len(figures) else "",
                target[row] if row < len(target) else "",
            )
            text = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            lines.append((text + ("  " + met if row == 0 else "")).rstrip())
    lines.append("")
    if report.missed:
        note = " (not enforced in --quick)" if report.quick else ""
        lines.append(f"MISSED: {', '.join(report.missed)}{note}")
    else:
        lines.append("All targets met.")
    return "\n".join(lines)


def write_json(report: Report, path: Path) -> None:
    """The same figures as the table, as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_json(), indent=2) + "\n")
