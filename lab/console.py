"""What `lab run` prints at the end: one line per metric, then the verdicts."""

from __future__ import annotations

from typing import Any

SHOWN = ("n", "success_ratio", "p50", "p95", "p99", "max")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def metrics_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    header = ["metric", "unit", *SHOWN]
    rows = [header] + [[name, metric["unit"], *(_cell(metric.get(col)) for col in SHOWN)] for name, metric in summary.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]


def verdict_lines(verdicts: list[dict[str, Any]]) -> list[str]:
    return [
        f"{'PASS' if v['passed'] else 'FAIL'}  {v['metric']} {v['stat']} {v['op']} {v['threshold']}: {v['reason']}"
        for v in verdicts
    ]
