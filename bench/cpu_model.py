"""How far the `scaled` CPU model sits from peers that each have one core (`core`).

`network.cpu: scaled` (what topologies/1000-peers.yaml uses) dilates time by N: the peers' waits
are emulated, and their computation runs N times faster against the links. `core` gives every
host process its peers / N cores, so that in the run's time each peer has one core of this
machine: with one peer per process it is the ground truth of "every peer on a core of its own"
(docs/scaling.md, The CPU model). This bench runs the 1000-peer file's settings, scaled down to
each size, both ways:

    truth    network.cpu: core, one peer per process, N = peers / cores (the least that fits)
    scaled   network.cpu: scaled, as the file hosts and dilates them (20 per host, N = 6, gossip 400)

and gives per latency metric the ratio of the medians (scaled / truth) with a 95% bootstrap
interval. Writes bench/results/cpu-model.{json,md} with the machine and commit:

    .venv/bin/python bench/cpu_model.py                  # 30 and 100 peers: ~52 minutes on an idle 2-core machine
    .venv/bin/python bench/cpu_model.py --sizes 30       # ~15 minutes on an idle 2-core machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import stats

from lab.analysis.figures import analyze
from lab.analysis.records import load
from lab.output import provenance
from lab.quantities import digits

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = ROOT / "topologies" / "1000-peers.yaml"
METRICS = ("bootstrap", "dht_lookup", "get", "search_remote", "gossip_delivery")
SMALLER = {"lookup": {"peers": 60}, "search": {"peers": 60}}  # the truth is slow: fewer operations than the file's
LEFT_OUT = ("concurrent_search",)


def topology(size: int, model: str) -> dict[str, Any]:
    """The 1000-peer file at `size` peers, hosted and dilated as `model` asks."""
    data = yaml.safe_load(TOPOLOGY.read_text())
    data["total"] = size
    data["bootstrap"] = {**data["bootstrap"], "peers": max(2, size // 25), "sample": min(20, size // 3)}
    data["fidelity"] = {"rerun": 0}  # the bench compares the models, not each run's stability at 2N
    data["slas"] = []
    data["workload"] = [{**phase, **SMALLER.get(phase["phase"], {})} for phase in data["workload"]
                        if phase["phase"] not in LEFT_OUT]
    if model == "truth":
        factor = float(math.ceil(size / (os.cpu_count() or 1)))
        data["network"] = {**data["network"], "cpu": "core", "peers_per_host": 1, "time_dilation": factor}
        for phase in data["workload"]:  # one core per peer in every phase: no phase needs more than the least that fits
            phase.pop("time_dilation", None)
    data["name"] = f"cpu-model-{size}-{model}"
    return data


def run(data: dict[str, Any], work: Path) -> dict[str, Any]:
    path, out = work / f"{data['name']}.yaml", work / data["name"]
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([sys.executable, "-m", "lab", "run", str(path), "--out", str(out), "--no-report"], cwd=ROOT,
                          capture_output=True, text=True)
    if done.returncode not in (0, 1, 4):
        raise SystemExit(f"{data['name']} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    records = load(out)
    analysis = analyze(records)
    return {"name": data["name"], "time_dilation": data["network"]["time_dilation"], "seconds": records.manifest.duration_s,
            "values": {m: analysis.metrics[m].values for m in METRICS if m in analysis.metrics},
            "cpu_s": {m: s.p50 for m, s in analysis.summary.items() if m.startswith("cpu_s_per_")}}


def ratio(scaled: list[float], truth: list[float]) -> dict[str, Any]:
    """The ratio of medians, scaled / truth, with its 95% bootstrap interval."""
    def of(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(a, axis=axis) / np.median(b, axis=axis)

    a, b = np.asarray(scaled), np.asarray(truth)
    interval = stats.bootstrap((a, b), of, n_resamples=2000, method="percentile",
                               random_state=np.random.default_rng(0)).confidence_interval
    return {"scaled_p50": float(np.median(a)), "truth_p50": float(np.median(b)), "n": [len(a), len(b)],
            "ratio": float(of(a, b)), "ci95": [float(interval.low), float(interval.high)]}


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    lines = [f"CPU {machine['cpu_model']} ({machine['cpus']} cores), kernel {machine['kernel']}, Python probe "
             f"{machine['python_speed']['best_ms']:.1f} ms · commit {result['commit']}", "",
             "| peers | metric | truth p50 (one core per peer) | scaled p50 | scaled / truth | 95% interval | n |",
             "|---|---|---|---|---|---|---|"]
    for size, point in result["sizes"].items():
        for metric, row in point["metrics"].items():
            lines.append(f"| {size} | {metric} | {digits(row['truth_p50'])} ms | {digits(row['scaled_p50'])} ms | "
                         f"{row['ratio']:.2f} | {row['ci95'][0]:.2f}-{row['ci95'][1]:.2f} | {row['n'][1]} / {row['n'][0]} |")
    lines += ["", "| peers | run | dilation | wall time | CPU-s per operation |", "|---|---|---|---|---|"]
    for size, point in result["sizes"].items():
        for label in ("truth", "scaled"):
            r = point[label]
            cpu = ", ".join(f"{k.removeprefix('cpu_s_per_')} {digits(v)}" for k, v in r["cpu_s"].items() if v is not None)
            lines.append(f"| {size} | {label} | {r['time_dilation']:g} | {r['seconds']:.0f} s | {cpu} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="30,100")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": provenance.machine().model_dump(mode="json"), "commit": provenance.git_commit().commit,
                              "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="cpu-model-") as work:
        for size in (int(s) for s in args.sizes.split(",")):
            truth, scaled = (run(topology(size, model), Path(work)) for model in ("truth", "scaled"))
            metrics = {m: ratio(scaled["values"][m], truth["values"][m]) for m in METRICS
                       if len(scaled["values"].get(m, [])) > 2 and len(truth["values"].get(m, [])) > 2}
            result["sizes"][str(size)] = {"truth": {k: v for k, v in truth.items() if k != "values"},
                                          "scaled": {k: v for k, v in scaled.items() if k != "values"}, "metrics": metrics}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu-model.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "cpu-model.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
