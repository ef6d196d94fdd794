"""The large-run path, reduced for CI: topologies/1000-peers.yaml's settings at 200 peers.

Twenty peers per forked host process, each on its own address in its host's namespace; the
test checks the structure a 1000-peer run relies on (hosts, addresses, per-process sampling,
every peer bootstrapped, limits, cleanup), not how fast it went: timings are bench/scaling.py's.
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
PEERS, PER_HOST = 200, 20
# Lookups are left out: at this size each takes tens of seconds of saturated CPU
# (docs/scaling.md), which is the benchmark's to measure, not CI's.
WORKLOAD = [
    {"phase": "bootstrap", "concurrency": 8, "timeout": "300s"},
    {"phase": "publish", "packages": 5},
    {"phase": "gossip", "announcements": 1, "settle": "10s"},
]


@needs_root
def test_200_peers_in_forked_hosts_run_to_the_end_and_leave_nothing(tmp_path: Path) -> None:
    path = write_topology(tmp_path / "200.yaml", LARGE, total=PEERS, workload=WORKLOAD)
    topology = load_topology(path)
    out = tmp_path / "results"
    done = run_lab("run", str(path), "--out", str(out), "--no-report", timeout=1200)
    manifest = json.loads((out / "manifest.json").read_text())
    assert done.returncode in (0, 1) and manifest["status"] == "complete", done.stdout[-3000:] + done.stderr[-3000:]
    assert manifest["peers_ready"] == PEERS and manifest["peers_lost"] == 0
    recorded = parse_topology(manifest["topology"])  # the topology as parsed, as the manifest keeps it
    assert recorded == topology and recorded.libp2p.yamux.rtt_interval == 300.0
    assert manifest["topology_source"] == path.read_text()  # and as written

    # Hosts: ten processes and ten namespaces of twenty peers, every peer on its own address.
    peers = manifest["peers"]
    by_pid, by_netns = Counter(p["pid"] for p in peers), Counter(p["netns"] for p in peers)
    assert sorted(by_pid.values()) == sorted(by_netns.values()) == [PER_HOST] * (PEERS // PER_HOST)
    assert len({p["ip"] for p in peers}) == len({p["peer_id"] for p in peers}) == PEERS
    assert len(list((out / "logs").glob("host-*.stderr"))) == PEERS // PER_HOST
    assert all(p["final"]["connections"] >= 1 and p["final"]["routing_table"] >= 1 for p in peers)
    assert all(p["final"]["gossip_mesh"] >= 1 and p["final"]["gossip_topic_peers"] >= 1 for p in peers)

    # Every peer joined, meeting the stated routing-table floor, and gossip reached peers of every host.
    events = read_jsonl(out / "events.jsonl")
    joins = [e for e in events if e["op"] == "bootstrap"]
    assert len(joins) == PEERS and all(e["ok"] for e in joins)
    seeds = set(topology.join_order()[: topology.bootstrap.peers])
    floor = topology.bootstrap.min_routing_table
    assert all(e["routing_table"] >= floor for e in joins if e["peer"] not in seeds)
    seeds_per_host = Counter(p["pid"] for p in peers if p["index"] in seeds)
    assert len(seeds_per_host) == PEERS // PER_HOST and max(seeds_per_host.values()) - min(seeds_per_host.values()) <= 1
    receivers = {e["peer"] for e in events if e["op"] == "gossip_delivery"}
    assert {p["pid"] for p in peers if p["index"] in receivers} == set(by_pid)

    # The collector sampled processes, each sample naming the peers it hosts; metrics per peer.
    samples = [s for s in read_jsonl(out / "resources.jsonl") if s["role"] == "peer"]
    hosted: dict[int, set[int]] = defaultdict(set)
    for sample in samples:
        hosted[sample["pid"]].update(sample["peers"])
    assert {pid: sorted(indices) for pid, indices in hosted.items()} == {
        pid: sorted(p["index"] for p in peers if p["pid"] == pid) for pid in by_pid
    }
    summary = json.loads((out / "summary.json").read_text())["metrics"]
    assert summary["memory_pss_mib"]["n"] == summary["cpu_seconds"]["n"] == PEERS
    run_pss = summary["memory_run_pss_mib"]["max"]
    assert run_pss > summary["memory_pss_mib"]["p50"] * PEERS / 2  # the run's sum, not one host's
    assert summary["time_to_ready"]["n"] == 1 and summary["time_to_ready"]["max"] > 0
    assert [p["phase"] for p in manifest["phases"]] == [p["phase"] for p in WORKLOAD]
    assert all(0 <= p["lab_cpu"] < 1 for p in manifest["phases"])
    assert leftovers(manifest["run_id"]) == []
