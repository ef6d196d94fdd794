"""The report's figures, each a function from a run's records to a matplotlib Figure.

Agg backend: no display is needed and nothing opens a window.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from lab.analysis.faults import FaultFigures  # noqa: E402
from lab.analysis.metrics import Metric  # noqa: E402
from lab.events import MIB, Sample  # noqa: E402
from lab.metric_names import FAMILIES, MEMORY_FIELDS, family_of  # noqa: E402
from nodes.protocol import Event, Op  # noqa: E402

BAND = (5, 50, 95)


def _figure(width: float = 8, height: float = 4.5) -> tuple[Figure, Any]:
    figure, axes = plt.subplots(figsize=(width, height), layout="constrained")
    return figure, axes


def latency_cdfs(
    metrics: dict[str, Metric], other: dict[str, Metric] | None = None, labels: tuple[str, str] = ("", "")
) -> Figure:
    """Empirical CDF per operation on a log time axis, one small chart per family (joining, DHT,
    search, gossip); with `other`, both runs overlaid (dashed)."""
    families = sorted({family_of(name) for name in metrics}, key=lambda f: [*FAMILIES, "other"].index(f))
    columns = min(2, max(1, len(families)))
    rows = math.ceil(len(families) / columns) or 1
    figure, grid = plt.subplots(rows, columns, figsize=(5 * columns, 3.2 * rows), layout="constrained", squeeze=False)
    colours = plt.colormaps["tab10"]
    for axes, family in zip(grid.flat, families, strict=False):
        members = sorted(name for name in metrics if family_of(name) == family)
        for number, name in enumerate(members):
            others = (other or {}).get(name, Metric(name, "")).values
            for values, style, label in ((metrics[name].values, "-", labels[0]), (others, "--", labels[1])):
                if values:
                    ordered = np.sort(values)
                    axes.step(ordered, np.arange(1, ordered.size + 1) / ordered.size, style, where="post",
                              color=colours(number % 10), label=f"{name} {label}".strip())
        axes.set_title(family, fontsize=10, loc="left")
        axes.set_xscale("log")
        axes.set_xlabel("latency (ms, log scale)", fontsize=8)
        axes.set_ylabel("share of operations", fontsize=8)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=7)
    for axes in list(grid.flat)[len(families):]:
        axes.set_visible(False)
    return figure


def latency_violins(metrics: dict[str, Metric]) -> Figure:
    names = [name for name, metric in sorted(metrics.items()) if len(metric.values) > 1]
    figure, axes = _figure(9, 0.9 + 0.45 * max(len(names), 1))
    if names:
        axes.violinplot([np.log10(metrics[name].values) for name in names], orientation="horizontal", showmedians=True)
        axes.set_yticks(range(1, len(names) + 1), names)
        ticks = np.arange(np.floor(min(min(np.log10(metrics[n].values)) for n in names)),
                          np.ceil(max(max(np.log10(metrics[n].values)) for n in names)) + 1)
        axes.set_xticks(ticks, [f"{10 ** t:g}" for t in ticks])
    axes.set_xlabel("latency (ms, log scale)")
    axes.grid(True, axis="x", alpha=0.3)
    return figure


def delivery_curve(events: list[Event], ready_peers: int) -> Figure:
    """Per announced message: share of the other ready peers that had it, against time since it was sent."""
    figure, axes = _figure()
    delays: dict[str, list[float]] = defaultdict(list)
    for event in events:
        if event.op == Op.GOSSIP_DELIVERY and event.ok and event.message is not None:
            delays[event.message].append(event.ms)
    expected = max(ready_peers - 1, 1)
    for message, values in sorted(delays.items()):
        ordered = np.sort(values)
        axes.step(np.concatenate([[0], ordered]), np.arange(ordered.size + 1) / expected, where="post", alpha=0.6, label=message)
    axes.set_xlabel("time since the message was sent (ms)")
    axes.set_ylabel("share of peers reached")
    axes.set_ylim(0, 1.05)
    axes.grid(True, alpha=0.3)
    if len(delays) <= 12:
        axes.legend(fontsize=7)
    return figure


def fault_timeline(figures: FaultFigures) -> Figure:
    """A fault phase's availability (share of gets that succeeded), gossip delivery and median
    get latency per window, the fault's window shaded."""
    figure, axes = _figure(8, 5)
    windows = figures.windows
    width = windows[1].start_s - windows[0].start_s if len(windows) > 1 else 1.0
    measured = [w for w in windows if w.availability is not None]
    axes.step([w.start_s + width for w in measured], [100 * (w.availability or 0) for w in measured], where="pre",
              label="gets that succeeded (%)")
    delivered = [w for w in windows if w.delivery_ratio is not None]
    axes.plot([w.start_s + width / 2 for w in delivered], [100 * (w.delivery_ratio or 0) for w in delivered], "s:",
              color="tab:green", label="peers up a message reached (%)")
    axes.set_ylim(-5, 105)
    axes.set_xlabel("time since the phase started (s, the run's time)")
    axes.set_ylabel("availability (%)")
    if figures.fault_start_ns is not None and figures.fault_end_ns is not None:
        axes.axvspan((figures.fault_start_ns - figures.start_ns) / 1e9, (figures.fault_end_ns - figures.start_ns) / 1e9,
                     alpha=0.2, color="tab:red", label=f"{figures.phase}")
    latency = axes.twinx()
    timed = [w for w in windows if w.get_p50_ms is not None]
    latency.plot([w.start_s + width / 2 for w in timed], [w.get_p50_ms for w in timed], "o--", color="tab:orange",
                 label="get median (ms)")
    latency.set_ylabel("get median (ms)")
    handles = axes.get_legend_handles_labels()
    more = latency.get_legend_handles_labels()
    axes.legend(handles[0] + more[0], handles[1] + more[1], loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)
    axes.grid(True, alpha=0.3)
    return figure


def memory_over_time(samples: list[Sample]) -> Figure:
    """RSS across peers per collector sweep: median and the 5-95 percentile band."""
    figure, axes = _figure()
    peers = [s for s in samples if s.role == "peer"]
    if peers:
        start = min(s.t_ns for s in peers)
        sweeps: dict[int, list[float]] = defaultdict(list)
        for sample in peers:
            sweeps[round((sample.t_ns - start) / 1e9)].append(sample.per_peer(sample.rss) / MIB)
        seconds = sorted(sweeps)
        low, mid, high = (np.array([np.percentile(sweeps[t], q) for t in seconds]) for q in BAND)
        axes.fill_between(seconds, low, high, alpha=0.3, label="p5-p95 of peers")
        axes.plot(seconds, mid, label="median peer")
        axes.legend()
    axes.set_xlabel("time since the first sample (s)")
    axes.set_ylabel("RSS per peer (MiB)")
    axes.grid(True, alpha=0.3)
    return figure


def memory_per_peer(metrics: dict[str, Metric]) -> Figure:
    """Each peer's peak RSS, USS and PSS."""
    figure, axes = _figure()
    names = [name for name in MEMORY_FIELDS if metrics.get(name) and metrics[name].values]
    if names:
        axes.hist([metrics[name].values for name in names], bins=20, label=[MEMORY_FIELDS[name].upper() for name in names])
        axes.legend()
    axes.set_xlabel("peak memory per peer (MiB)")
    axes.set_ylabel("peers")
    axes.grid(True, alpha=0.3)
    return figure


def _interval_arms(figures: dict[str, Any]) -> tuple[float, float]:
    """Distances from the median down and up to its 95% interval (0 where there is none)."""
    low, high = figures["p50_ci95"] or (None, None)
    return (figures["p50"] - low if low is not None else 0.0, high - figures["p50"] if high is not None else 0.0)


def scaling_curve(points: list[dict[str, Any]], x_name: str, metric: str) -> Figure:
    """p50 (with its 95% interval) and p95 of one metric against the first swept setting; one
    line per combination of the other settings. A setting that is not a number throughout
    (`bootstrap.mode=cold,warm`) is drawn as categories, in the order swept."""
    figure, axes = _figure()
    categories = list(dict.fromkeys(p["settings"][x_name] for p in points))
    categorical = any(p["x"] is None for p in points)
    lines: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for point in points:
        figures = point["metrics"].get(metric)
        x = categories.index(point["settings"][x_name]) if categorical else point["x"]
        if figures is None or figures["p50"] is None:
            continue
        rest = ", ".join(f"{k}={v}" for k, v in point["settings"].items() if k != x_name)
        lines[rest].append((x, figures))
    unit = ""
    for label, series in sorted(lines.items()):
        series.sort(key=lambda item: item[0])
        xs = [x for x, _ in series]
        p50 = [f["p50"] for _, f in series]
        errors = np.array([_interval_arms(f) for _, f in series]).T
        bars = axes.errorbar(xs, p50, yerr=errors, marker="o", capsize=3, label=f"p50 {label}".strip())
        axes.plot(xs, [f["p95"] for _, f in series], "--", marker="x", color=bars[0].get_color(), label=f"p95 {label}".strip())
        unit = series[0][1]["unit"]
    if categorical:
        axes.set_xticks(range(len(categories)), categories)
    axes.set_xlabel(x_name)
    axes.set_ylabel(f"{metric} ({unit})")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    return figure
