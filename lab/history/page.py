"""history.html: one self-contained page (works offline) with a small chart per metric: nights on
x, run medians with their 95% intervals, change points as bands (red worse, green better; hatched
while tentative), testbed changes as dotted lines, SLA thresholds, failed and inconclusive nights
marked. Each night's point shows its commit (and a change's p-value) on hover and links to that
night's report.html. The charts are matplotlib SVG, given their tooltips as in matplotlib's own
SVG tooltip example (an id per artist, a <title> per point)."""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt

from lab.history.text import HEADER, change_row
from lab.history.trends import Flagged, History, Series
from lab.output.results import write_text
from lab.quantities import shown

SVG = "http://www.w3.org/2000/svg"
OUTCOME_COLOUR = {"pass": "#1f77b4", "inconclusive": "#ff7f0e", "fail": "#d62728"}
TEMPLATES = Path(__file__).resolve().parent.parent / "output" / "templates"


def _tooltip(series: Series, index: int, flagged: list[Flagged]) -> str:
    night = series.nights[index]
    point = night.metrics[series.metric]
    lines = [f"{night.run_id} · {night.started:%Y-%m-%d %H:%M} UTC", f"commit {(night.commit or '?')[:10]}",
             f"median {shown(point.value, series.unit)} [{shown(point.low, series.unit)}, {shown(point.high, series.unit)}]",
             f"outcome {night.outcome}"]
    lines += [f"change {f.change.change:+.1%} ({f.state}, p {f.change.p_value:.2g}, {f.commits})"
              for f in flagged if f.series is series and f.change.index == index]
    return "\n".join(lines)


def _chart(topology: str, metric: str, history: History, out: Path) -> str:
    """The metric's chart for one topology (every testbed's series on one axis), as SVG markup."""
    nights = [n for n in history.nights if n.topology == topology]
    position = {n.path: i for i, n in enumerate(nights)}
    figure, axes = plt.subplots(figsize=(6.4, 2.3), layout="constrained")
    series_of = [s for s in history.series if s.topology == topology and s.metric == metric]
    unit = series_of[0].unit
    points: list[tuple[Series, int]] = []
    for series in series_of:
        xs = [position[n.path] for n in series.nights]
        values = series.values
        bounds = [(n.metrics[metric].low, n.metrics[metric].high) for n in series.nights]
        lows = [v - low if low is not None else 0.0 for v, (low, _) in zip(values, bounds, strict=True)]
        highs = [high - v if high is not None else 0.0 for v, (_, high) in zip(values, bounds, strict=True)]
        axes.errorbar(xs, values, yerr=[lows, highs], fmt="none", ecolor="#999999", elinewidth=0.8, capsize=1.5)
        axes.plot(xs, values, color="#1f77b4", linewidth=0.8, alpha=0.5)
        points += [(series, i) for i in range(len(series.nights))]
    flagged = [f for f in history.changes if f.series.topology == topology and f.series.metric == metric]
    for f in flagged:
        x = position[f.night.path]
        axes.axvspan(x - 1 + 0.15, x - 0.15, color="#d62728" if f.change.worse else "#2ca02c", alpha=0.25,
                     hatch="//" if not f.change.confirmed else None, linewidth=0)
    for marker in history.markers:
        if marker.topology == topology and position[marker.path] > 0:
            axes.axvline(position[marker.path] - 0.5, color="#555555", linestyle=":", linewidth=1)
            axes.annotate("testbed", (position[marker.path] - 0.5, 1), xycoords=("data", "axes fraction"), fontsize=7,
                          color="#555555", ha="left", va="top")
    slas = {(s.stat, s.op, s.threshold) for n in nights for s in n.slas if s.metric == metric and s.stat != "success_ratio"}
    for stat, op, threshold in sorted(slas):
        axes.axhline(threshold, color="#d62728", linestyle="--", linewidth=0.8)
        axes.annotate(f"SLA {stat} {op} {shown(threshold, unit)}", (0, threshold), xycoords=("axes fraction", "data"),
                      fontsize=7, color="#d62728", va="bottom")
    xs = [position[s.nights[i].path] for s, i in points]
    ys = [s.values[i] for s, i in points]
    colours = [OUTCOME_COLOUR.get(s.nights[i].outcome, "#1f77b4") for s, i in points]
    dots = axes.scatter(xs, ys, c=colours, s=18, zorder=3)
    dots.set_gid("nights")
    dots.set_urls([_link(s.nights[i].report, out) for s, i in points])
    axes.set_title(f"{metric} ({unit}), run medians", fontsize=9, loc="left")
    axes.set_xticks(range(len(nights)), [f"{n.started:%m-%d %H:%M}" for n in nights], fontsize=6, rotation=90)
    axes.tick_params(axis="y", labelsize=7)
    axes.set_xlim(-0.7, len(nights) - 0.3)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg")
    plt.close(figure)
    return _with_tooltips(buffer.getvalue(), [_tooltip(s, i, flagged) for s, i in points])


def _link(report: Path | None, out: Path) -> str | None:
    return os.path.relpath(report, out) if report is not None else None


def _with_tooltips(svg: str, tips: list[str]) -> str:
    ET.register_namespace("", SVG)
    ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    root = ET.fromstring(svg)
    group = next(g for g in root.iter(f"{{{SVG}}}g") if g.get("id") == "nights")
    shapes = [e for e in group.iter() if e.tag in (f"{{{SVG}}}use", f"{{{SVG}}}path")]
    for shape, tip in zip(shapes, tips, strict=False):
        ET.SubElement(shape, f"{{{SVG}}}title").text = tip
    return ET.tostring(root, encoding="unicode")


def write_page(history: History, out: Path) -> Path:
    charts = {topology: {metric: _chart(topology, metric, history, out)
                         for metric in sorted({s.metric for s in history.series if s.topology == topology})}
              for topology in sorted({s.topology for s in history.series})}
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    page = environment.get_template("history.html").render(
        history=history, failing=history.failing, header=HEADER,
        rows=[(f, change_row(f)) for _, group in history.by_night() for f in group], charts=charts,
        reports={n.run_id: _link(n.report, out) for n in history.nights})
    path = out / "history.html"
    write_text(path, page)
    return path
