"""The large-run path, reduced for CI: topologies/1000-peers.yaml's settings at 200 peers.

Twenty peers per forked host process, each on its own address and its own shaped link (the
file's two regions 40 ms apart, 1% loss, verified before the workload), a warm start with a
sample joining cold, time dilated (the file's factor, and a phase of its own); the test checks
the structure a 1000-peer run relies on (hosts, addresses, links, clocks, per-process sampling,
the guard, limits, cleanup), not how fast it went: timings are bench/scaling.py's.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from conftest import ROOT, leftovers, needs_root, run_lab, write_topology
from lab.analysis.records import read_jsonl
from lab.topology import load_topology, parse_topology

pytestmark = [pytest.mark.slow, pytest.mark.netns]

LARGE = ROOT / "topologies" / "1000-peers.yaml"
PEERS, PER_HOST, SAMPLE = 200, 20, 20
# Lookups are left out: at this size each costs ~4 CPU-s, the benchmark's to measure, not CI's.
WORKLOAD = [
    {"phase": "bootstrap", "concurrency": 8, "timeout": "300s"},
    {"phase": "publish", "packages": 2, "concurrency": 2, "settle": "20s", "time_dilation": 12},
    {"phase": "gossip", "announcements": 1, "settle": "10s"},
]


@needs_root
def test_200_peers_in_forked_hosts_run_to_the_end_and_leave_nothing(tmp_path: Path) -> None:
    bootstrap = {**load_topology(LARGE).bootstrap.model_dump(), "sample": SAMPLE}
    path = write_topology(tmp_path / "200.yaml", LARGE, total=PEERS, workload=WORKLOAD, bootstrap=bootstrap)
    topology = load_topology(path)
    out = tmp_path / "results"
    done = run_lab("run", str(path), "--out", str(out), "--no-report", timeout=1500)
    manifest = json.loads((out / "manifest.json").read_text())
    assert done.returncode in (0, 1, 4) and manifest["status"] == "complete", done.stdout[-3000:] + done.stderr[-3000:]
    assert manifest["peers_ready"] == PEERS and manifest["peers_lost"] == 0
    recorded = parse_topology(manifest["topology"])  # the topology as parsed, as the manifest keeps it
    assert recorded == topology and recorded.libp2p.yamux.rtt_interval == 300.0
    assert manifest["topology_source"] == path.read_text()  # and as written

    # Hosts: processes and namespaces of twenty peers, every peer on its own address, and the
    # deployed peer alone in a process of its own (taken from the last host).
    peers = manifest["peers"]
    by_pid, by_netns = Counter(p["pid"] for p in peers), Counter(p["netns"] for p in peers)
    hosts = [1, PER_HOST - 1] + [PER_HOST] * (PEERS // PER_HOST - 1)
    assert sorted(by_pid.values()) == sorted(by_netns.values()) == hosts
    assert len({p["ip"] for p in peers}) == len({p["peer_id"] for p in peers}) == PEERS
    assert len(list((out / "logs").glob("host-*.stderr"))) == len(hosts)
    assert all(p["final"]["connections"] >= 1 and p["final"]["routing_table"] >= 1 for p in peers)
    assert all(p["final"]["gossip_mesh"] >= 1 and p["final"]["gossip_topic_peers"] >= 1 for p in peers)

    # Links: shaped per peer inside shared hosts, measured before the workload.
    impairment = manifest["impairment"]
    assert impairment["applied"] and impairment["verification_status"] in ("passed", "unverified"), impairment
    assert not [c for r in impairment["verification"] for c in r["checks"] if c["status"] == "failed"]
    pairs = [(r["source"], r["dest"]) for r in impairment["verification"]]
    host = {p["index"]: p["netns"] for p in peers}
    assert len(pairs) == 5 and sum(host[s] == host[d] for s, d in pairs) == 1  # each pair of groups, and one within a host

    # Warm start: all but the sample from converged tables, the sample joined cold; gossip
    # reached peers of every host.
    everything = read_jsonl(out / "events.jsonl")  # the 2N check's operations come after the workload's
    events = [e for e in everything if e["start_ns"] < next(e["start_ns"] for e in everything if e["op"] == "rerun")]
    warm = [e for e in events if e["op"] == "warm"]
    joins = [e for e in events if e["op"] == "bootstrap"]
    assert len(warm) == PEERS - SAMPLE and all(e["ok"] and e["routing_table"] >= 20 for e in warm)
    assert len(joins) == SAMPLE and all(e["ok"] for e in joins)
    assert not {e["peer"] for e in warm} & {e["peer"] for e in joins}
    floor = topology.bootstrap.min_routing_table
    assert all(e["routing_table"] >= floor for e in joins)
    receivers = {e["peer"] for e in events if e["op"] == "gossip_delivery"}
    assert {p["pid"] for p in peers if p["index"] in receivers} == set(by_pid)

    # Virtual time: the file's dilation, the publish phase's own, and back, then the 2N check of
    # the gossip SLA (at the gossip phase's dilation, then at twice it); every phase's loop lag.
    dilation = manifest["time_dilation"]
    network = dilation["network"]
    assert network == topology.network.time_dilation
    assert [s["factor"] for s in dilation["segments"]] == [network, 12.0, network, 2 * network, network]
    phases = [e for e in events if e["op"] == "phase"]
    assert [(e["phase"], e["time_dilation"]) for e in phases] == [
        ("bootstrap", dilation["network"]), ("publish", 12.0), ("gossip", dilation["network"])]
    summary = json.loads((out / "summary.json").read_text())
    assert [p["phase"] for p in summary["fidelity"]["phases"]] == ["bootstrap", "publish", "gossip"]
    assert all(p["lag"]["windows"] > 0 for p in summary["fidelity"]["phases"])

    # The collector sampled processes, each sample naming the peers it hosts; metrics per peer.
    samples = [s for s in read_jsonl(out / "resources.jsonl") if s["role"] == "peer"]
    hosted: dict[int, set[int]] = defaultdict(set)
    for sample in samples:
        hosted[sample["pid"]].update(sample["peers"])
    assert {pid: sorted(indices) for pid, indices in hosted.items()} == {
        pid: sorted(p["index"] for p in peers if p["pid"] == pid) for pid in by_pid
    }
    metrics = summary["metrics"]
    assert metrics["cpu_seconds"]["n"] == PEERS
    run_pss = metrics["memory_run_pss_mib"]["max"]
    assert run_pss > metrics["memory_pss_mib"]["p50"] * PEERS / 2  # the run's sum, not one host's
    assert metrics["memory_pss_mib"]["n"] == PEERS - 1  # the deployed peer has figures of its own
    assert metrics["memory_deployed_rss_mib"]["n"] == 1 and metrics["memory_marginal_rss_mib"]["n"] == len(hosts) - 1
    assert metrics["memory_deployed_rss_mib"]["max"] > 5 * metrics["memory_rss_mib"]["p50"]  # a whole interpreter
    assert "time_to_ready" not in metrics  # a warm start: most peers never joined
    verdicts = {v["metric"]: v for v in json.loads((out / "verdicts.json").read_text())["verdicts"]}
    assert verdicts["time_to_ready"]["status"] == "unjudged" and "warm start" in verdicts["time_to_ready"]["reason"]
    assert "judged on the deployed peer" in verdicts["memory_pss_mib"]["reason"]
    assert verdicts["gossip_delivery"]["rerun"]["n"][1] >= 20 or verdicts["gossip_delivery"]["status"] == "inconclusive"
    assert metrics["cpu_s_per_join"]["n"] == metrics["cpu_s_per_publish"]["n"] == 1
    assert [p["phase"] for p in manifest["phases"]] == [p["phase"] for p in WORKLOAD] + ["gossip (2N)"] * 5
    assert all(0 <= p["lab_cpu"] < 1 for p in manifest["phases"])
    assert leftovers(manifest["run_id"]) == []
