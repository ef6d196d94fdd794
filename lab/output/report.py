"""`lab report`: one self-contained report.html per run (figures embedded), the figures also
as PNG and SVG files in the run's plots/ directory."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import jinja2
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from lab.analysis.compare import DEFAULT_ALPHA, DEFAULT_NOISE, compare_samples, run_samples
from lab.analysis.metrics import Metric, all_metrics
from lab.output import plots, results

REPORT = "report.html"
PLOTS = "plots"
REPORT_NEEDS = (results.MANIFEST, results.EVENTS, results.RESOURCES, results.SUMMARY, results.VERDICTS)


def _save(figure: Figure, directory: Path, name: str) -> str:
    """Writes NAME.png and NAME.svg; returns the PNG as a data URI for the page."""
    directory.mkdir(exist_ok=True)
    figure.savefig(directory / f"{name}.svg")
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=110)
    (directory / f"{name}.png").write_bytes(png.getvalue())
    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


def _latency(metrics: dict[str, Metric]) -> dict[str, Metric]:
    return {name: m for name, m in metrics.items() if m.unit == "millisecond"}


def _figures(run_dir: Path, manifest: dict[str, Any], metrics: dict[str, Metric], events: list[dict[str, Any]],
             samples: list[dict[str, Any]], baseline: tuple[Path, dict[str, Metric]] | None) -> list[dict[str, str]]:
    latency = _latency(metrics)
    wanted: list[tuple[str, str, Figure]] = [
        ("latency_cdf", "Latency per operation (empirical CDF)", plots.latency_cdfs(latency)),
        ("latency_violin", "Latency distributions", plots.latency_violins(latency)),
    ]
    if any(e["op"] == "gossip_delivery" for e in events):
        wanted.append(("gossip_delivery", "Gossip delivery: share of peers reached over time",
                       plots.delivery_curve(events, manifest.get("peers_ready") or 0)))
    wanted += [
        ("memory_over_time", "Memory per peer over time (RSS)", plots.memory_over_time(samples)),
        ("memory_per_peer", "Peak memory per peer", plots.memory_per_peer(metrics)),
    ]
    if baseline is not None:
        base_dir, base_metrics = baseline
        wanted.append(("compare_cdf", f"This run (solid) against {base_dir.name} (dashed)",
                       plots.latency_cdfs(latency, _latency(base_metrics), ("", "(baseline)"))))
    return [{"name": name, "title": title, "src": _save(figure, run_dir / PLOTS, name)} for name, title, figure in wanted]


def write_report(run_dir: Path, baseline: Path | None = None) -> Path:
    """Renders RUN_DIR/report.html from the run's own files, each read once; with a baseline,
    adds the comparison table and overlaid distributions."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("lab.output", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    manifest = results.read_json(run_dir / results.MANIFEST)
    events = results.read_jsonl(run_dir / results.EVENTS)
    samples = results.read_jsonl(run_dir / results.RESOURCES)
    metrics = all_metrics(events, samples, manifest.get("peers_ready") or 0)
    base = (baseline, run_samples(baseline)) if baseline is not None else None
    context: dict[str, Any] = {
        "manifest": manifest,
        "manifest_text": json.dumps(manifest, indent=2),
        "summary": results.read_json(run_dir / results.SUMMARY),
        "verdicts": results.read_json(run_dir / results.VERDICTS),
        "figures": _figures(run_dir, manifest, metrics, events, samples, base),
        "baseline": baseline,
        "comparisons": compare_samples(base[1], metrics, DEFAULT_NOISE, DEFAULT_ALPHA) if base else None,
    }
    path = run_dir / REPORT
    path.write_text(environment.get_template("report.html").render(**context))
    return path
