"""`lab report`: one self-contained report.html per run (figures embedded), the figures also
as PNG and SVG files in the run's plots/ directory."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, NamedTuple

import jinja2
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from lab.analysis.compare import DEFAULT_ALPHA, DEFAULT_NOISE, compare_dirs, run_samples
from lab.analysis.figures import Analysis, analyze
from lab.analysis.metrics import Metric
from lab.analysis.records import RunRecords, load
from lab.manifest import PLOTS, REPORT
from lab.output import plots
from lab.output.results import write_text
from lab.quantities import shown
from nodes.protocol import Op


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


def _figures(records: RunRecords, analysis: Analysis, baseline: tuple[Path, dict[str, Metric]] | None) -> list[dict[str, str]]:
    latency = _latency(analysis.metrics)
    wanted: list[tuple[str, str, Figure]] = [
        ("latency_cdf", "Latency per operation (empirical CDF)", plots.latency_cdfs(latency)),
        ("latency_violin", "Latency distributions", plots.latency_violins(latency)),
    ]
    if any(e.op == Op.GOSSIP_DELIVERY for e in records.events):
        wanted.append(("gossip_delivery", "Gossip delivery: share of peers reached over time",
                       plots.delivery_curve(records.events, records.manifest.peers_ready)))
    wanted += [(f"fault_{f.number}_{f.phase}", f"Phase {f.number}, {f.phase}: availability and get latency, the fault shaded",
                plots.fault_timeline(f)) for f in analysis.faults]
    wanted += [
        ("memory_over_time", "Memory per peer over time (RSS)", plots.memory_over_time(records.samples)),
        ("memory_per_peer", "Peak memory per peer", plots.memory_per_peer(analysis.metrics)),
    ]
    if baseline is not None:
        base_dir, base_metrics = baseline
        wanted.append(("compare_cdf", f"This run (solid) against {base_dir.name} (dashed)",
                       plots.latency_cdfs(latency, _latency(base_metrics), ("", "(baseline)"))))
    plots_dir = records.path / PLOTS
    return [{"name": name, "title": title, "src": _save(figure, plots_dir, name)} for name, title, figure in wanted]


class Written(NamedTuple):
    path: Path
    analysis: Analysis  # what the report shows, for the terminal's closing tables


def write_report(run_dir: Path, baseline: Path | None = None) -> Written:
    """Renders RUN_DIR/report.html from the run's records, by the analysis `lab run` used
    (lab/analysis/figures.py); with a baseline, adds the comparison table and overlaid
    distributions."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("lab.output", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
    environment.filters["shown"] = shown
    records = load(run_dir)
    analysis = analyze(records)
    base = (baseline, run_samples(baseline)) if baseline is not None else None
    context: dict[str, Any] = {
        "manifest": records.manifest,
        "manifest_text": json.dumps(records.manifest.record(), indent=2),
        "summary": analysis.summary_record(),
        "verdicts": analysis.verdicts_record(),
        "notes": analysis.notes,
        "figures": _figures(records, analysis, base),
        "baseline": baseline,
        "comparison": compare_dirs(baseline, run_dir, DEFAULT_NOISE, DEFAULT_ALPHA) if baseline is not None else None,
    }
    path = run_dir / REPORT
    write_text(path, environment.get_template("report.html").render(**context))
    return Written(path, analysis)
