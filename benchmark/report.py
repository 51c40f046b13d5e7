"""What a run measured: the rows of the report, as a plain-text table and as JSON."""

from __future__ import annotations

import json
import textwrap
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Measurement:
    """One row of the report: what was measured, the figures, the target and whether it was met."""

    key: str
    title: str
    summary: list[str]
    target: str
    met: bool
    figures: dict[str, Any]


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


def format_table(report: Report) -> str:
    """The report as a plain-text table, with a MISSED line when a target was missed."""
    context = report.context
    lines = [
        f"Generator benchmark: {report.engine}, {context['cpus']} CPUs, Python "
        f"{context['python']}, Django {context['django']}, chunk {context['chunk_size']:,}"
        + (" (--quick: tiny sizes, targets not enforced)" if report.quick else ""),
        "",
    ]
    widths = (40, 62, 26)
    header = ("measurement", "figures", "target", "met")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + header[3])
    lines.append("  ".join("-" * w for w in widths) + "  ---")
    for number, m in enumerate(report.measurements, start=1):
        figures = [line for part in m.summary for line in textwrap.wrap(part, widths[1])]
        title = textwrap.wrap(f"{number}. {m.title}", widths[0])
        met = "yes" if m.met else "no  MISSED"
        for row in range(max(len(figures), len(title))):
            cells = (
                title[row] if row < len(title) else "",
                figures[row] if row < len(figures) else "",
                m.target if row == 0 else "",
            )
            text = "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))
            lines.append((text + (met if row == 0 else "")).rstrip())
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
