"""Results for other tools: every metric sample as CSV, the summary as OpenMetrics text.

`samples.csv` holds exactly the values the statistics were computed from (successful samples,
in the metric's unit). `summary.prom` is an OpenMetrics exposition (written by
prometheus_client) that a Prometheus textfile collector or a dashboard can read: one gauge
family per unit, labelled by metric and statistic.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest

from lab.analysis.metrics import Metric
from lab.analysis.stats import Summary

EXPORTED_STATS = ("n", "success_ratio", "mean", "min", "p50", "p95", "p99", "max")
FAMILY_SUFFIX = {"millisecond": "milliseconds", "mebibyte": "mebibytes", "second": "seconds", "dimensionless": "ratio"}


def write_samples_csv(path: Path, metrics: dict[str, Metric]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "unit", "value"])
        for name, metric in metrics.items():
            writer.writerows([name, metric.unit, value] for value in metric.values)


class _SummaryCollector:
    def __init__(self, summary: dict[str, Summary], run: dict[str, str]) -> None:
        self.summary = summary
        self.run = run

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        labels = ["metric", "stat", *self.run]
        for name, figures in self.summary.items():
            unit = FAMILY_SUFFIX[figures.unit]
            family = families.get(unit)
            if family is None:
                family = families[unit] = GaugeMetricFamily(
                    f"p2p_lab_{unit}", f"p2p-lab summary statistics of metrics measured in {unit}", labels=labels
                )
            for stat in EXPORTED_STATS:
                if (value := getattr(figures, stat)) is not None:
                    family.add_metric([name, stat, *self.run.values()], float(value))
        yield from families.values()


def write_openmetrics(path: Path, summary: dict[str, Summary], run: dict[str, str]) -> None:
    registry = CollectorRegistry()
    registry.register(_SummaryCollector(summary, run))
    path.write_bytes(generate_latest(registry))
