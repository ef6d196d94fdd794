"""Does time dilation give back the latencies of a faster machine? A scale-model check.

One small topology (bench/time-dilation-30.yaml: 30 peers, 20 ms links), run four times:

    a    undilated, the whole machine
    a'   the same again: how much two runs of one setup differ (the noise)
    b    time dilation N, the peers confined to 1/N of the machine's CPU (network.cpu_limit):
         a machine N times slower, which dilation should make look like the whole machine again
    c    no dilation, confined like b: what the fidelity guard must call inconclusive

Every latency median of b must lie within max(10%, 2 x |a' - a| / a) of a's; c's latency
verdicts must be inconclusive, b's conclusive. Writes bench/results/time-dilation.{json,md}
with the machine and commit:

    .venv/bin/python bench/time_dilation.py             # N = 4 (~10 minutes)
    .venv/bin/python bench/time_dilation.py --factor 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from lab.analysis.figures import analyze
from lab.analysis.records import load
from lab.output import provenance

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "bench" / "time-dilation-30.yaml"
OPERATIONS = ("connect", "bootstrap", "publish", "get", "dht_find_providers", "fetch", "gossip_delivery")
MIN_TOLERANCE = 0.10


def run(label: str, network: dict[str, Any], work: Path) -> dict[str, Any]:
    """One `lab run` of the topology with `network` settings; its medians, verdicts and guard."""
    data = yaml.safe_load(TOPOLOGY.read_text())
    data["network"] = {**data["network"], **network}
    topology, out = work / f"{label}.yaml", work / label
    topology.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "lab", "run", str(topology), "--out", str(out), "--no-report"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1, 4):
        raise SystemExit(f"run {label} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    analysis = analyze(load(out))
    return {
        "label": label, "network": network, "exit_code": done.returncode,
        "p50_ms": {op: analysis.summary[op].p50 for op in OPERATIONS if op in analysis.summary},
        "verdicts": {v.metric: v.status for v in analysis.verdicts if not v.builtin},
        "lag_p99_ms": {f"{p.number} {p.phase}": p.lag.p99_ms for p in analysis.fidelity},
        "cpu_busy": {f"{p.number} {p.phase}": p.cpu_busy for p in analysis.fidelity},
    }


def compare(runs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    a, again, b = runs["a"]["p50_ms"], runs["a'"]["p50_ms"], runs["b"]["p50_ms"]
    for op in OPERATIONS:
        if op not in a or op not in again or op not in b:
            continue
        noise = abs(again[op] - a[op]) / a[op]
        tolerance = max(MIN_TOLERANCE, 2 * noise)
        off = (b[op] - a[op]) / a[op]
        rows.append({"operation": op, "a": a[op], "a_again": again[op], "b": b[op], "c": runs["c"]["p50_ms"].get(op),
                     "noise": noise, "tolerance": tolerance, "b_off": off, "within": abs(off) <= tolerance})
    return rows


def markdown(result: dict[str, Any]) -> str:
    machine, factor = result["machine"], result["factor"]
    lines = [
        f"CPU {machine['cpu_model']} ({machine['cpus']} cores), kernel {machine['kernel']}, Python probe "
        f"{machine['python_speed']['best_ms']:.1f} ms · commit {result['commit']} · N = {factor:g}, b and c confined to "
        f"{result['cores']:g} cores",
        "",
        "| operation | a p50 (ms) | a' p50 | b p50 (N, 1/N of the CPU) | c p50 (1/N of the CPU) | a vs a' | allowed "
        "| b vs a | within |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        c = f"{row['c']:.1f}" if row["c"] is not None else "-"
        lines.append(f"| {row['operation']} | {row['a']:.1f} | {row['a_again']:.1f} | {row['b']:.1f} | {c} | "
                     f"{row['noise']:.1%} | ±{row['tolerance']:.1%} | {row['b_off']:+.1%} | {'yes' if row['within'] else 'NO'} |")
    lines += ["", "| run | exit | verdicts | loop lag p99 per phase (ms) | machine busy per phase |", "|---|---|---|---|---|"]
    for run in result["runs"].values():
        verdicts = ", ".join(f"{m} {s}" for m, s in run["verdicts"].items())
        lags = ", ".join(f"{p}: {v:g}" for p, v in run["lag_p99_ms"].items() if v is not None)
        busy = ", ".join(f"{p}: {v:.0%}" for p, v in run["cpu_busy"].items() if v is not None)
        lines.append(f"| {run['label']} | {run['exit_code']} | {verdicts} | {lags} | {busy} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    cores = (os.cpu_count() or 1) / args.factor
    confined = {"cpu_limit": cores}
    plan = {"a": {}, "a'": {}, "b": {**confined, "time_dilation": args.factor}, "c": confined}
    with tempfile.TemporaryDirectory(prefix="time-dilation-") as work:
        runs = {label: run(label.replace("'", "-again"), network, Path(work)) | {"label": label}
                for label, network in plan.items()}
    rows = compare(runs)
    result = {"factor": args.factor, "cores": cores, "machine": provenance.machine().model_dump(mode="json"),
              "commit": provenance.git_commit().commit, "runs": runs, "rows": rows,
              "all_within": all(r["within"] for r in rows),
              "guard": {"b_conclusive": "inconclusive" not in runs["b"]["verdicts"].values(),
                        "c_inconclusive": "inconclusive" in runs["c"]["verdicts"].values()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "time-dilation.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "time-dilation.md").write_text(markdown(result))
    print(markdown(result))
    return 0 if result["all_within"] and all(result["guard"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
