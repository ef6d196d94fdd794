"""A run over several machines against the same run on one: what placing a topology over a Ray
cluster changes in its figures and costs.

Runs a topology (default topologies/100-peers.yaml) on this machine, then with `--cluster` on a
local Ray cluster of three nodes (`ray.cluster_utils.Cluster`, one raylet per node on this
machine, each a stand-in machine with its VXLAN end on a bridge namespace as the LAN:
lab/remote/standin.py; CPUs 1, 1 and 1 by default, so the hosts are placed in thirds). Both
runs use the same cores, so what differs is the lab's cluster path: Ray, the agents' relay,
VXLAN between hubs. Compares them with `lab compare` (docs/compare.md) and reports each run's
wall time, the peers' and the lab's CPU and memory, Ray's own memory, the placement, the
clock offsets and the crossing pair's baseline round trip. Writes
bench/results/cluster-<name>.{json,md} with the machine and commit:

    .venv/bin/python bench/cluster.py                                  # 100 peers (~50 minutes)
    .venv/bin/python bench/cluster.py --quick                          # 100 peers, smaller workload
    .venv/bin/python bench/cluster.py --topology bench/cluster-100.yaml # 100 peers, a region a machine (~30 minutes)
    .venv/bin/python bench/cluster.py --topology topologies/10-peers.yaml --cpus 1,1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from ray.cluster_utils import Cluster

from lab import exits
from lab.analysis.records import load
from lab.manifest import read_manifest
from lab.output import provenance
from lab.remote.standin import stand_in_machines

ROOT = Path(__file__).resolve().parent.parent
RAY_PROCESSES = ("raylet", "gcs_server", "ray::", "dashboard", "log_monitor", "runtime_env", "default_worker")


def ray_memory_mib() -> float:
    """RSS of the Ray cluster's own processes (raylets, GCS, workers, agents of Ray) now."""
    total = 0
    for process in psutil.process_iter(["name", "cmdline", "memory_info"]):
        text = " ".join(process.info["cmdline"] or [process.info["name"] or ""])
        if any(marker in text for marker in RAY_PROCESSES) and "lab.remote.agent" not in text:
            total += process.info["memory_info"].rss if process.info["memory_info"] else 0
    return total / 2**20


def run(label: str, topology: Path, out: Path, cluster: str | None, quick: bool) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lab", "run", str(topology), "--out", str(out), "--no-report",
                           *(["--cluster", cluster] if cluster else []), *(["--quick"] if quick else [])],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - started
    if done.returncode not in (0, 1, 4):
        raise SystemExit(f"run {label} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return figures(label, out, done.returncode, wall)


def figures(label: str, out: Path, exit_code: int, wall: float) -> dict[str, Any]:
    """What the table shows of one run's directory."""
    records, manifest = load(out), read_manifest(out)
    per_pid: dict[int, float] = {}
    for sample in records.samples:
        if sample.role == "peer":
            per_pid[sample.pid] = max(per_pid.get(sample.pid, 0.0), sample.cpu_seconds)
    peaks: dict[int, int] = {}
    for sample in records.samples:
        if sample.role == "peer" and sample.pss is not None:
            peaks[sample.pid] = max(peaks.get(sample.pid, 0), sample.pss)
    crossing = [r for r in manifest.impairment.verification if r["checks"][0]["name"] == "round trip across machines"]
    verdicts = json.loads((out / "verdicts.json").read_text())["verdicts"]
    return {
        "label": label, "exit_code": exit_code, "wall_s": wall, "path": str(out), "status": manifest.status,
        "peers_ready": manifest.peers_ready, "peers_lost": manifest.peers_lost,
        "peer_cpu_s": sum(per_pid.values()), "peer_pss_mib": sum(peaks.values()) / 2**20,
        "lab_cpu_s": {role: cost.cpu_seconds for role, cost in manifest.lab_processes.items()},
        "verdicts": {f"{v['metric']} {v['stat']}": v["status"] for v in verdicts},
        "why": {f"{v['metric']} {v['stat']}": v["reason"] for v in verdicts if v["status"] in ("fail", "inconclusive")},
        "cluster": manifest.cluster.model_dump(mode="json", exclude={"nodes": {"__all__": {"testbed"}}})
        if manifest.cluster else None,
        "crossing": crossing[0]["checks"][0] if crossing else None,
    }


def exits_of(run_dir: Path) -> int:
    """The exit code a run's verdicts give (lab/exits.py), for a run not made here."""
    statuses = {v["status"] for v in json.loads((run_dir / "verdicts.json").read_text())["verdicts"]}
    return exits.FAILED if "fail" in statuses else exits.INCONCLUSIVE if "inconclusive" in statuses else exits.PASS


def compare(baseline: Path, candidate: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "lab", "compare", str(baseline), str(candidate), "--format", "json"],
                          cwd=ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"lab compare exited {done.returncode}: {done.stdout[-2000:]} {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def markdown(result: dict[str, Any]) -> str:
    machine = result["machine"]
    one, spread = result["runs"]["one machine"], result["runs"]["cluster"]
    lines = [
        f"CPU {machine['cpu_model']} ({machine['cpus']} cores), kernel {machine['kernel']} · commit {result['commit']} · "
        f"{result['topology']}{' (lab run --quick)' if result['quick'] else ''} · local Ray cluster of "
        f"{len(result['cpus'])} nodes (CPUs {result['cpus']}) on this machine",
        "",
        "| run | exit | wall (s) | peers' CPU-s | peers' PSS peak (MiB) | lab CPU-s | verdicts |",
        "|---|---|---|---|---|---|---|",
    ]
    for run_ in (one, spread):
        lab = ", ".join(f"{role} {seconds:.1f}" for role, seconds in sorted(run_["lab_cpu_s"].items()))
        verdicts = ", ".join(f"{name} {status}" for name, status in run_["verdicts"].items())
        lines.append(f"| {run_['label']} | {run_['exit_code']} | {run_['wall_s']:.0f} | {run_['peer_cpu_s']:.0f} | "
                     f"{run_['peer_pss_mib']:.0f} | {lab} | {verdicts} |")
    whys = [f"- {run_['label']}, {name} {run_['verdicts'][name]}: {why}"
            for run_ in (one, spread) for name, why in run_.get("why", {}).items()]
    lines += ["", "Why a verdict failed or could not be judged:", "", *whys] if whys else []
    lines += ["", f"Ray's own processes (raylets, GCS, workers): {result['ray_idle_rss_mib']:.0f} MiB RSS before the "
              f"cluster run, {result['ray_after_rss_mib']:.0f} MiB after it (the agents' relays still up).", ""]
    if spread["cluster"]:
        lines += ["| node | CPUs | hosts | clock offset (ms) | +- (ms) | readings | drift (ppm) | wander (µs) |",
                  "|---|---|---|---|---|---|---|---|"]
        for node in spread["cluster"]["nodes"]:
            drift, wander = node.get("clock_drift_ppm"), node.get("clock_wander_ns")
            lines.append(f"| {node['node_id'][:8]} | {node['cpus']:g} | {len(node['hosts'])} | "
                         f"{node['clock_offset_ns'] / 1e6:.3f} | {node['clock_error_ns'] / 1e6:.3f} | "
                         f"{len(node.get('clock_readings') or [])} | {'-' if drift is None else f'{drift:.2f}'} | "
                         f"{'-' if wander is None else f'{wander / 1e3:.1f}'} |")
        bound = spread["cluster"].get("clock_error_ns")
        if bound is not None:
            lines += ["", f"Bound on a latency stamped on two machines (the two largest wanders added): "
                      f"{bound / 1e3:.1f} µs."]
    if spread["crossing"]:
        check = spread["crossing"]
        lines += ["", f"Crossing pair: the links added {check['measured'] * 1e3:.2f} ms to the round trip "
                  f"(configured {check['configured'] * 1e3:.2f} ms, {check['status']}; {check['reason']})."]
    lines += ["", "`lab compare` of the cluster run (candidate) against the one-machine run (baseline), noise ±3%, "
              "alpha 0.05 (docs/compare.md):", "",
              "| metric | unit | baseline n, p50 | candidate n, p50 | change | verdict |", "|---|---|---|---|---|---|"]
    for row in result["compare"]["comparisons"]:
        sides = [f"{side['n']}, {side['p50']:.4g}" if side and side.get("p50") is not None else "-"
                 for side in (row["baseline"], row["candidate"])]
        change = f"{row['change']:+.1%}" if row["change"] is not None else "-"
        lines.append(f"| {row['metric']} | {row['unit'] or ''} | {sides[0]} | {sides[1]} | {change} | {row['verdict']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", type=Path, default=ROOT / "topologies" / "100-peers.yaml")
    parser.add_argument("--cpus", default="1,1,1", help="CPUs of each node of the local cluster")
    parser.add_argument("--baseline", type=Path, help="a one-machine run of the topology already made (its directory): "
                        "not run again (docs/scaling/1000 for topologies/1000-peers.yaml)")
    parser.add_argument("--quick", action="store_true", help="both runs with `lab run --quick` (a smaller workload)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    cpus = [float(c) for c in args.cpus.split(",")]
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as work:
        base, cand = args.baseline or Path(work) / "one", Path(work) / "cluster"
        if args.baseline:
            baseline = read_manifest(base)
            runs = {"one machine": figures(f"one machine (committed, {baseline.source.commit and baseline.source.commit[:10]})",
                                           base, exits_of(base), baseline.duration_s or 0.0)}
        else:
            runs = {"one machine": run("one machine", args.topology, base, None, args.quick)}
        with stand_in_machines(len(cpus)) as machines:
            made = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus[0], "env_vars": machines[0]})
            try:
                for count, env in zip(cpus[1:], machines[1:], strict=True):
                    made.add_node(num_cpus=count, env_vars=env)
                made.wait_for_nodes()
                idle = ray_memory_mib()
                runs["cluster"] = run("cluster", args.topology, cand, made.address, args.quick)
                after = ray_memory_mib()
            finally:
                made.shutdown()
        compared = compare(base, cand)
    result = {"topology": str(args.topology.resolve().relative_to(ROOT)), "quick": args.quick, "cpus": cpus,
              "machine": provenance.machine().model_dump(mode="json"), "commit": provenance.git_commit().commit,
              "runs": runs, "ray_idle_rss_mib": idle, "ray_after_rss_mib": after,
              "compare": compared}
    name = args.topology.stem + ("-quick" if args.quick else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"cluster-{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"cluster-{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
