"""What `lab compare` can detect: the smallest slowdown each design finds with 80% power.

A design is a level with its size and spread, and how many metrics are compared beside the
shifted one (the Benjamini-Hochberg family): samples (n per side, log-normal latencies of a
given log-sd), or runs (runs per side, run medians varying by a given coefficient of
variation). For each design the slowdown is found by bisection between 0.5% and 200%, each
point the share of seeded trials in which the shifted metric was called regressed, at the
default noise band (3%) and alpha (0.05). Writes bench/results/compare-power.{json,md}:

    .venv/bin/python bench/compare_power.py            # every design (~10 minutes)
    .venv/bin/python bench/compare_power.py --trials 40 # a quicker, rougher table
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from lab.analysis.compare import DEFAULT_ALPHA, DEFAULT_NOISE, MetricData, compare_sides
from lab.output import provenance

ROOT = Path(__file__).resolve().parent.parent
DESIGNS: list[dict[str, Any]] = [
    {"level": "samples", "size": 50, "spread": 0.25, "metrics": 1},
    {"level": "samples", "size": 200, "spread": 0.25, "metrics": 1},
    {"level": "samples", "size": 200, "spread": 0.25, "metrics": 20},
    {"level": "samples", "size": 1000, "spread": 0.25, "metrics": 1},
    {"level": "samples", "size": 200, "spread": 0.6, "metrics": 1},
    {"level": "samples", "size": 1000, "spread": 0.6, "metrics": 1},
    {"level": "runs", "size": 4, "spread": 0.05, "metrics": 1},
    {"level": "runs", "size": 6, "spread": 0.05, "metrics": 1},
    {"level": "runs", "size": 6, "spread": 0.05, "metrics": 20},
    {"level": "runs", "size": 10, "spread": 0.05, "metrics": 1},
    {"level": "runs", "size": 6, "spread": 0.10, "metrics": 1},
    {"level": "runs", "size": 10, "spread": 0.10, "metrics": 20},
]
POWER = 0.8


def side(values: np.ndarray, level: str) -> MetricData:
    tails = list(values * 1.5) if level == "runs" else None  # run level: each run's p95 beside its median
    return MetricData("millisecond", list(values), len(values), 0, tails)


def power(design: dict[str, Any], shift: float, trials: int) -> float:
    """Share of trials calling the shifted metric (`get`, primary) regressed."""
    others = [f"concurrent_search_{i}" for i in range(1, design["metrics"])]
    hits = 0
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        size, spread, level = design["size"], design["spread"], design["level"]
        base = {"get": side(rng.lognormal(3, spread, size), level)}
        cand = {"get": side(rng.lognormal(3, spread, size) * (1 + shift), level)}
        for name in others:
            base[name], cand[name] = side(rng.lognormal(3, spread, size), level), side(rng.lognormal(3, spread, size), level)
        results = compare_sides(base, cand, DEFAULT_NOISE, DEFAULT_ALPHA, level, frozenset({"get"}), seed=trial)
        hits += next(c for c in results if c.metric == "get").verdict == "regressed"
    return hits / trials


def smallest_detected(design: dict[str, Any], trials: int) -> tuple[float, float]:
    """(smallest slowdown found with POWER, the power measured there), by bisection on the log scale."""
    low, high = 0.005, 2.0
    measured = power(design, high, trials)
    if measured < POWER:
        return float("inf"), measured
    while high / low > 1.1:
        middle = float(np.sqrt(low * high))
        found = power(design, middle, trials)
        if found >= POWER:
            high, measured = middle, found
        else:
            low = middle
    return high, measured


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [
        f"`lab compare` at noise ±{DEFAULT_NOISE:.0%}, alpha {DEFAULT_ALPHA}; {result['trials']} seeded trials per point; "
        f"commit {result['commit']}, CPU {machine['cpu_model']}",
        "",
        "| level | per side | spread | metrics compared | smallest slowdown found with 80% power | power there |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        spread = f"log-sd {row['spread']:g}" if row["level"] == "samples" else f"CV {row['spread']:.0%}"
        size = f"{row['size']} samples" if row["level"] == "samples" else f"{row['size']} runs"
        found = f"+{row['smallest']:.1%}" if np.isfinite(row["smallest"]) else "> +200%"
        lines.append(f"| {row['level']} | {size} | {spread} | {row['metrics']} | {found} | {row['power']:.0%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rows = []
    for design in DESIGNS:
        smallest, measured = smallest_detected(design, args.trials)
        rows.append({**design, "smallest": smallest, "power": measured})
        print(json.dumps(rows[-1]), flush=True)
    result = {"trials": args.trials, "rows": rows, "machine": provenance.machine().model_dump(mode="json"),
              "commit": provenance.git_commit().commit}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare-power.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "compare-power.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
