"""Exports parse back to what was written: CSV rows and OpenMetrics families."""

import csv
from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families

from lab.analysis.metrics import Metric
from lab.analysis.stats import summarize
from lab.output.export import write_openmetrics, write_samples_csv


def test_csv_holds_every_sample(tmp_path: Path) -> None:
    metrics = {
        "get": Metric("get", "millisecond", [1.5, 2.5], 3),
        "memory_rss_mib": Metric("memory_rss_mib", "mebibyte", [90.0], 1),
    }
    write_samples_csv(tmp_path / "s.csv", metrics)
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [(r["metric"], r["unit"], float(r["value"])) for r in rows] == [
        ("get", "millisecond", 1.5),
        ("get", "millisecond", 2.5),
        ("memory_rss_mib", "mebibyte", 90.0),
    ]


def test_openmetrics_parses_with_labels_and_values(tmp_path: Path) -> None:
    summary = {
        "get": summarize([10.0, 20.0, 30.0], unit="millisecond"),
        "gossip_delivery_ratio": summarize([1.0, 0.5], unit="dimensionless"),
        "never": summarize([], attempts=2, unit="millisecond"),
    }
    write_openmetrics(tmp_path / "s.prom", summary, {"topology": "t", "run_id": "abc123", "status": "complete"})
    families = {f.name: f for f in text_string_to_metric_families((tmp_path / "s.prom").read_text())}
    assert set(families) == {"p2p_lab_milliseconds", "p2p_lab_ratio"}
    values = {(s.labels["metric"], s.labels["stat"]): s.value for f in families.values() for s in f.samples}
    assert values[("get", "p50")] == 20.0
    assert values[("gossip_delivery_ratio", "min")] == 0.5
    assert values[("never", "success_ratio")] == 0.0 and ("never", "p50") not in values
    assert all(s.labels["run_id"] == "abc123" for f in families.values() for s in f.samples)
