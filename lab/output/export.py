"""Results for other tools: every metric sample as CSV, the summary and a history as OpenMetrics text.

`samples.csv` holds exactly the values the statistics were computed from (successful samples,
in the metric's unit). `summary.prom` is an OpenMetrics exposition (written by
prometheus_client) that a Prometheus textfile collector or a dashboard can read: one gauge
family per unit, labelled by metric and statistic. `history.prom` (`lab history`) is the same families over the
nights, each sample stamped with its night's start, for `promtool tsdb create-blocks-from
openmetrics`; its change points are `p2p_lab_change_point` samples (the relative change, stamped
at the change's first night), which a dashboard can show as annotations, and
`p2p_lab_history_failing` the confirmed, unacknowledged regressions as of the newest night.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import CollectorRegistry, GaugeMetricFamily
from prometheus_client.openmetrics.exposition import generate_latest

from lab.analysis.metrics import Metric
from lab.analysis.stats import Summary
from lab.history.trends import History

EXPORTED_STATS = ("n", "success_ratio", "mean", "min", "p50", "p95", "p99", "max")
FAMILY_SUFFIX = {"millisecond": "milliseconds", "mebibyte": "mebibytes", "second": "seconds", "dimensionless": "ratio"}


def write_samples_csv(path: Path, metrics: dict[str, Metric]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", "unit", "value"])
        for name, metric in metrics.items():
            writer.writerows([name, metric.unit, value] for value in metric.values)


def _family(families: dict[str, GaugeMetricFamily], unit: str, labels: list[str], what: str) -> GaugeMetricFamily:
    suffix = FAMILY_SUFFIX[unit]
    if suffix not in families:
        families[suffix] = GaugeMetricFamily(f"p2p_lab_{suffix}", f"p2p-lab {what} of metrics measured in {suffix}",
                                             labels=labels)
    return families[suffix]


class _SummaryCollector:
    def __init__(self, summary: dict[str, Summary], run: dict[str, str]) -> None:
        self.summary = summary
        self.run = run

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        labels = ["metric", "stat", *self.run]
        for name, figures in self.summary.items():
            family = _family(families, figures.unit, labels, "summary statistics")
            for stat in EXPORTED_STATS:
                if (value := getattr(figures, stat)) is not None:
                    family.add_metric([name, stat, *self.run.values()], float(value))
        yield from families.values()


def write_openmetrics(path: Path, summary: dict[str, Summary], run: dict[str, str]) -> None:
    registry = CollectorRegistry()
    registry.register(_SummaryCollector(summary, run))
    path.write_bytes(generate_latest(registry))


class _HistoryCollector:
    def __init__(self, history: History) -> None:
        self.history = history

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        labels = ["topology", "testbed", "metric", "stat"]
        for series in self.history.series:
            family = _family(families, series.unit, labels, "nightly run medians and p95s")
            for stat in ("p50", "p95"):
                for night in series.nights:
                    point = night.metrics[series.metric]
                    value = point.value if stat == "p50" else point.p95
                    if value is not None:
                        family.add_metric([series.topology, series.testbed, series.metric, stat], value,
                                          timestamp=night.started.timestamp())
        yield from families.values()
        changes = GaugeMetricFamily("p2p_lab_change_point", "p2p-lab change points: the relative change at its first night",
                                    labels=["topology", "testbed", "metric", "direction", "state"])
        points = sorted(([f.series.topology, f.series.testbed, f.series.metric, "worse" if f.change.worse else "better",
                          f.state], f.change.change, f.night.started.timestamp()) for f in self.history.changes)
        for labels_of, change, stamp in points:  # a series' samples together, in time order (OpenMetrics)
            changes.add_metric(labels_of, change, timestamp=stamp)
        yield changes
        if self.history.nights:
            failing = GaugeMetricFamily("p2p_lab_history_failing", "p2p-lab confirmed, unacknowledged regressions as of the "
                                        "newest night", labels=["topology"])
            newest = self.history.nights[-1]
            for topology in sorted({n.topology for n in self.history.nights}):
                count = sum(f.series.topology == topology for f in self.history.failing)
                failing.add_metric([topology], count, timestamp=newest.started.timestamp())
            yield failing


def write_history_openmetrics(path: Path, history: History) -> None:
    registry = CollectorRegistry()
    registry.register(_HistoryCollector(history))
    path.write_bytes(generate_latest(registry))
