"""How the cost of a run grows with the network: one workload at 10, 50, 100, 500 and 1000 peers.

Runs `lab sweep TOPOLOGY --set peers=N` for each size N (each a full run: fresh namespaces,
fresh peer processes) into results/; a size below the topology's `bootstrap.peers` runs with
every peer a bootstrap peer (`--set bootstrap.peers=N`, the table's seeds column). Then it
reads every point's manifest.json and summary.json and writes, with the machine and the
commit they came from:

    OUT/scaling.json   per size: time to ready, run wall time, peak memory of the run, memory
                       and CPU per peer, connections per peer, lookup and gossip latency, the
                       lab's own CPU share during the workload
    OUT/scaling.md     the same as a table
    OUT/scaling.png|svg  the figures against network size, with a linear reference line

    .venv/bin/python bench/scaling.py                                  # the whole benchmark (~45 min here)
    .venv/bin/python bench/scaling.py --sizes 10,50 --out /tmp/s       # a short look
    .venv/bin/python bench/scaling.py --from results/scaling-sweep     # tables from finished runs under it
    .venv/bin/python bench/scaling.py --set bootstrap.mode=cold --set network.time_dilation=1  # cold, undilated

"Linear" means the per-peer figure stays flat; where it rises with size, the cost grows faster
than linearly, which docs/scaling.md explains.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lab import exits  # noqa: E402
from lab.analysis.figures import analyze  # noqa: E402
from lab.analysis.records import load  # noqa: E402
from lab.analysis.stats import Summary  # noqa: E402
from lab.manifest import SUMMARY  # noqa: E402
from lab.output import provenance  # noqa: E402
from lab.topology import load_topology  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZES = "10,50,100,500,1000"
WORKLOAD_PHASES = ("publish", "lookup", "search", "gossip", "concurrent_search")
MIB = 1024 * 1024


def figure(summary: dict[str, Summary], metric: str, stat: str) -> float | None:
    value = getattr(summary[metric], stat) if metric in summary else None
    return float(value) if value is not None else None


def point_row(directory: Path) -> dict[str, Any]:
    """One network size's figures, from its records by the analysis `lab run` used."""
    records = load(directory)
    analysis = analyze(records)
    manifest, summary = records.manifest, analysis.summary
    machine, topology = manifest.machine, manifest.topology
    if machine is None or topology is None:
        raise SystemExit(f"{directory}: its manifest has no machine or topology; not a run of the lab")
    factors = sorted({s.factor for s in manifest.time_dilation.segments})
    phases = {p.phase: p for p in manifest.phases}
    workload = [phases[name] for name in WORKLOAD_PHASES if name in phases]  # the phases it finished
    workload_s = sum(p.seconds for p in workload)
    finals = [p.final for p in manifest.peers if p.final]
    peers = manifest.peers_ready
    return {
        "peers": len(manifest.peers),
        "hosts": len({p.pid for p in manifest.peers}),
        "seeds": topology["bootstrap"]["peers"],
        "peers_ready": peers,
        "peers_lost": manifest.peers_lost,
        "status": manifest.status,
        "phases": " ".join(p.phase for p in manifest.phases),
        "peers_listening_s": manifest.peers_ready_s,
        "time_to_ready_s": figure(summary, "time_to_ready", "max"),
        "workload_s": workload_s,
        "run_s": manifest.duration_s,
        "run_pss_peak_mib": figure(summary, "memory_run_pss_mib", "max"),
        "pss_per_peer_p50_mib": figure(summary, "memory_pss_mib", "p50"),
        "uss_per_peer_p50_mib": figure(summary, "memory_uss_mib", "p50"),
        "rss_per_peer_p50_mib": figure(summary, "memory_rss_mib", "p50"),
        "cpu_s_per_peer_p50": figure(summary, "cpu_seconds", "p50"),
        "cpu_s_total": cpu_mean * peers if (cpu_mean := figure(summary, "cpu_seconds", "mean")) is not None else None,
        "connections_per_peer_p50": statistics.median(f["connections"] for f in finals) if finals else None,
        "routing_table_p50": statistics.median(f["routing_table"] for f in finals) if finals else None,
        "bootstrap_p50_ms": figure(summary, "bootstrap", "p50"),
        "dht_lookup_p50_ms": figure(summary, "dht_lookup", "p50"),
        "dht_lookup_p95_ms": figure(summary, "dht_lookup", "p95"),
        "dht_lookups": figure(summary, "dht_lookup", "n"),
        "dht_lookup_success": figure(summary, "dht_lookup", "success_ratio"),
        "get_success": figure(summary, "get", "success_ratio"),
        "gossip_delivery_p95_ms": figure(summary, "gossip_delivery", "p95"),
        "gossip_delivery_ratio_min": figure(summary, "gossip_delivery_ratio", "min"),
        "cpu_s_per_join": figure(summary, "cpu_s_per_join", "p50"),
        "cpu_s_per_lookup": figure(summary, "cpu_s_per_lookup", "p50"),
        "cpu_s_per_publish": figure(summary, "cpu_s_per_publish", "p50"),
        "cpu_s_per_delivery": figure(summary, "cpu_s_per_delivery", "p50"),
        "time_dilation": "/".join(f"{f:g}" for f in factors),
        "verdicts_inconclusive": sum(v.status == "inconclusive" for v in analysis.verdicts),
        "machine_cpu_busy_workload": sum(p.cpu_busy * p.seconds for p in workload) / workload_s if workload_s else None,
        "lab_cpu_share_workload": sum(p.lab_cpu * p.seconds for p in workload) / workload_s if workload_s else None,
        "python_probe_ms": machine.python_speed.best_ms,
        "command": machine.argv,
        "commit": manifest.source.model_dump(mode="json"),
        "commit_short": (manifest.source.commit or "")[:7] + ("+" if manifest.source.dirty else ""),
    }


COLUMNS = [
    ("peers", "peers", "{:.0f}"),
    ("hosts", "host processes", "{:.0f}"),
    ("seeds", "bootstrap peers", "{:.0f}"),
    ("status", "run", "{}"),
    ("phases", "phases done", "{}"),
    ("peers_lost", "lost", "{:.0f}"),
    ("time_to_ready_s", "time to ready (s)", "{:.1f}"),
    ("workload_s", "workload (s)", "{:.0f}"),
    ("run_pss_peak_mib", "run PSS peak (MiB)", "{:.0f}"),
    ("pss_per_peer_p50_mib", "PSS/peer p50 (MiB)", "{:.1f}"),
    ("uss_per_peer_p50_mib", "USS/peer p50 (MiB)", "{:.1f}"),
    ("rss_per_peer_p50_mib", "RSS/peer p50 (MiB)", "{:.1f}"),
    ("cpu_s_per_peer_p50", "CPU-s/peer p50", "{:.2f}"),
    ("connections_per_peer_p50", "connections/peer p50", "{:.0f}"),
    ("dht_lookup_p50_ms", "lookup p50 (ms)", "{:.0f}"),
    ("dht_lookup_p95_ms", "lookup p95 (ms)", "{:.0f}"),
    ("dht_lookups", "lookups", "{:.0f}"),
    ("dht_lookup_success", "lookup success", "{:.3f}"),
    ("gossip_delivery_p95_ms", "gossip p95 (ms)", "{:.0f}"),
    ("gossip_delivery_ratio_min", "gossip ratio min", "{:.3f}"),
    ("cpu_s_per_join", "CPU-s per join", "{:.2f}"),
    ("cpu_s_per_lookup", "CPU-s per lookup", "{:.2f}"),
    ("cpu_s_per_publish", "CPU-s per publish", "{:.2f}"),
    ("cpu_s_per_delivery", "CPU-s per delivery", "{:.3f}"),
    ("time_dilation", "dilation", "{}"),
    ("verdicts_inconclusive", "inconclusive verdicts", "{:.0f}"),
    ("machine_cpu_busy_workload", "machine CPU busy", "{:.0%}"),
    ("lab_cpu_share_workload", "lab's own CPU", "{:.2%}"),
    ("python_probe_ms", "machine's Python probe (ms)", "{:.1f}"),
    ("commit_short", "commit", "{}"),
]


def markdown(rows: list[dict[str, Any]], origin: dict[str, Any]) -> str:
    machine = origin["machine"]
    lines = [
        f"Measured {origin['measured_utc']} on {machine['cpus']} CPUs ({machine['cpu_model']}), "
        f"{machine['memory_total_bytes'] / 2**30:.0f} GiB, kernel {machine['kernel']}; "
        f"topology {origin['topology']} scaled by `--set peers=` (first row: `{' '.join(origin['command'])}`; "
        "each row's own command is in scaling.json); "
        "each row's commit is in the last column (+: uncommitted changes). Rows may come from different "
        "machines of this name, which differ in speed: the probe column is the same Python loop "
        f"(`{provenance.SPEED_PROBE}`, best of 5) timed by each row's run on its machine (lower is faster; "
        "\"-\" where the run predates the probe).",
        "",
        "| " + " | ".join(title for _, title, _ in COLUMNS) + " |",
        "|" + "---:|" * len(COLUMNS),
    ]
    for row in rows:
        cells = ["-" if row.get(key) is None else form.format(row[key]) for key, _, form in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PANELS = [
    ("time to a ready network (s)", [("time_to_ready_s", "time to ready")], False),
    ("memory (MiB)", [("run_pss_peak_mib", "whole run, PSS peak")], False),
    ("per peer: memory (MiB)", [("pss_per_peer_p50_mib", "PSS p50"), ("uss_per_peer_p50_mib", "USS p50")], True),
    ("per peer: CPU seconds, connections",
     [("cpu_s_per_peer_p50", "CPU-s p50"), ("connections_per_peer_p50", "connections p50")], True),
    ("DHT lookup (ms)", [("dht_lookup_p50_ms", "p50"), ("dht_lookup_p95_ms", "p95")], True),
    ("gossip delivery p95 (ms)", [("gossip_delivery_p95_ms", "p95")], True),
]


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Each figure against network size (log-log). Whole-run panels get a line proportional to
    size through the smallest point: above it, the cost grows faster than linearly."""
    fig, axes = plt.subplots(2, 3, figsize=(14, 8), constrained_layout=True)
    sizes = [row["peers"] for row in rows]
    for axis, (title, series, per_peer) in zip(axes.flat, PANELS, strict=True):
        for key, label in series:
            points = [(row["peers"], row[key]) for row in rows if row.get(key) is not None]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=label)
        if not per_peer and rows and rows[0].get(series[0][0]):
            first = rows[0][series[0][0]]
            axis.plot(sizes, [first * size / sizes[0] for size in sizes], linestyle=":", color="grey", label="linear")
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("peers")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    fig.savefig(out / "scaling.png", dpi=100)
    fig.savefig(out / "scaling.svg")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topology", default="topologies/1000-peers.yaml")
    parser.add_argument("--sizes", default=SIZES, help="comma-separated peer counts")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "scaling")
    parser.add_argument("--from", dest="sweep", type=Path, help="a directory of finished runs (searched recursively)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
                        help="passed to every point's `lab sweep` (e.g. bootstrap.mode=cold)")
    args = parser.parse_args()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    sweep = args.sweep or ROOT / "results" / f"scaling-sweep-{stamp}"
    if args.sweep is None:
        seeds = load_topology(ROOT / args.topology).bootstrap.peers
        for size in map(int, args.sizes.split(",")):
            command = [sys.executable, "-m", "lab", "sweep", args.topology, "--set", f"peers={size}",
                       "--out", str(sweep / f"peers={size}")]
            if size < seeds:
                command += ["--set", f"bootstrap.peers={size}"]
            for setting in args.settings:
                command += ["--set", setting]
            done = subprocess.run(command, cwd=ROOT)
            if done.returncode not in (exits.PASS, exits.FAILED, exits.INCONCLUSIVE):  # verdicts are measurements
                raise SystemExit(f"lab sweep exited {done.returncode}")
    # Every point's directory, finished or not: an interrupted run (status in the table) still
    # wrote its summary of what it measured, but sweep.json lists only finished points.
    runs = sorted(path.parent for path in sweep.glob(f"**/{SUMMARY}"))
    rows = sorted((point_row(run) for run in runs), key=lambda row: row["peers"])
    first = load(runs[0]).manifest
    assert first.machine is not None and first.started_utc is not None  # point_row checked every run
    origin = {"measured_utc": first.started_utc[:16].replace("T", " ") + " UTC", "machine": first.machine.model_dump(mode="json"),
              "commit": first.source.model_dump(mode="json"), "topology": first.topology_name, "command": first.machine.argv,
              "written_utc": datetime.now(UTC).isoformat(), "by": provenance.git_commit().model_dump(mode="json")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps({"origin": origin, "rows": rows}, indent=2) + "\n")
    (args.out / "scaling.md").write_text(markdown(rows, origin))
    plot(rows, args.out)
    print((args.out / "scaling.md").read_text())


if __name__ == "__main__":
    main()
