"""`lab sweep`: one topology over a grid of settings, a run per point, scaling tables and curves.

A setting is `peers` (every group scaled to the new total), a link field (`delay`, `loss`,
`rate`, ... on every group's link), or any dotted path into the topology file
(`libp2p.gossipsub.heartbeat`, `bootstrap.min_routing_table`); a path through a list applies
to every element. Each point is validated as a whole topology before any run starts.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import yaml

from lab.analysis.stats import Summary
from lab.errors import TopologyError
from lab.machine import Place
from lab.manifest import PLOTS, SWEEP, SWEEP_TABLE
from lab.metric_names import BOUND_RATIO
from lab.orchestrator import RunOutcome, run_topology
from lab.output import plots
from lab.output.results import write_json, write_text
from lab.topology import Topology, parse_topology, set_field

CURVE_METRICS = ("bootstrap", "dht_lookup", "get", "gossip_delivery", "search_remote", "memory_uss_mib", "cpu_seconds")


@dataclass(frozen=True)
class Setting:
    name: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Setting:
        name, equals, values = text.partition("=")
        if not equals or not name or not values:
            raise TopologyError(f"--set {text!r}: expected NAME=V1,V2,... (e.g. peers=10,50 or loss=0,1%)")
        return cls(name.strip(), tuple(v.strip() for v in values.split(",")))


def grid(base: dict[str, Any], settings: list[Setting], source: str) -> list[tuple[dict[str, str], Topology]]:
    """Every point of the grid as a validated topology, before anything runs."""
    points = []
    for values in itertools.product(*(s.values for s in settings)):
        chosen = dict(zip((s.name for s in settings), values, strict=True))
        data = yaml.safe_load(yaml.safe_dump(base))
        for name, value in chosen.items():
            set_field(data, name, value)
        label = ", ".join(f"{n}={v}" for n, v in chosen.items())
        points.append((chosen, parse_topology(data, f"{source} with {label}")))
    return points


def point_dir(out: Path, chosen: dict[str, str]) -> Path:
    return out / "_".join(f"{name}={re.sub(r'[^A-Za-z0-9.%-]', '-', value)}" for name, value in chosen.items())


def numeric(value: str) -> float | None:
    """A setting's value as a number for a curve's x axis ("5%" -> 5, "1s" -> 1), else None."""
    match = re.match(r"^\s*(-?\d+(?:\.\d+)?)", value)
    return float(match.group(1)) if match else None


def point_figures(summary: dict[str, Summary]) -> dict[str, dict[str, Any]]:
    """The figures a sweep keeps per point: median with its interval, p95, n."""
    return {
        name: {"unit": m.unit, "n": m.n, "p50": m.p50, "p95": m.p95,
               "p50_ci95": list(m.median_ci) if m.median_ci else None, "success_ratio": m.success_ratio}
        for name, m in summary.items()
    }


def markdown_table(points: list[dict[str, Any]]) -> str:
    metrics = [m for m in CURVE_METRICS if any(m in p["metrics"] for p in points)]
    header = ["point", "exit", "wall / CPU bound", *(f"{m} p50 / p95" for m in metrics)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point in points:
        ratio = (point["metrics"].get(BOUND_RATIO) or {}).get("p50")
        cells = [", ".join(f"{k}={v}" for k, v in point["settings"].items()), str(point["exit_code"]),
                 "-" if ratio is None else f"{ratio:.2f}x"]
        for metric in metrics:
            figures = point["metrics"].get(metric)
            shown = figures and figures["p50"] is not None
            cells.append(f"{figures['p50']:.4g} / {figures['p95']:.4g} {figures['unit']}" if shown else "-")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


async def run_sweep(points: list[tuple[dict[str, str], Topology]], settings: list[Setting], source: str, out: Path,
                    echo: Callable[[str], None], place: Place | None = None) -> list[RunOutcome]:
    """Runs the points one after another (each a fresh network), writing sweep.json after each
    so an interrupted sweep keeps what it measured; then the table and the curves."""
    done: list[dict[str, Any]] = []
    outcomes = []
    for number, (chosen, topology) in enumerate(points, 1):
        echo(f"=== sweep point {number}/{len(points)}: {', '.join(f'{k}={v}' for k, v in chosen.items())}")
        outcome = await run_topology(topology, source, point_dir(out, chosen), echo, place)
        outcomes.append(outcome)
        done.append({
            "settings": chosen, "x": numeric(chosen[settings[0].name]), "dir": outcome.path.name, "peers": topology.peer_count,
            "status": outcome.status, "exit_code": outcome.exit_code, "metrics": point_figures(outcome.analysis.summary),
        })
        write_json(out / SWEEP, {"settings": [asdict(s) for s in settings], "points": done})
    write_text(out / SWEEP_TABLE, markdown_table(done))
    plots_dir = out / PLOTS
    plots_dir.mkdir(exist_ok=True)
    for metric in CURVE_METRICS:
        if any(metric in p["metrics"] for p in done):
            figure = plots.scaling_curve(done, settings[0].name, metric)
            figure.savefig(plots_dir / f"{metric}.png", dpi=110)
            figure.savefig(plots_dir / f"{metric}.svg")
            plt.close(figure)
    return outcomes
