"""`lab run --cluster`: a run placed over the machines of a local multi-node Ray cluster
(ray.cluster_utils.Cluster: one raylet per node on this machine). Each node stands for a
machine (lab/remote/standin.py): its agent builds its part of the network under its own
prefix, its end of the VXLAN between hubs in a namespace of its own on a bridge namespace
standing in for the machines' LAN. Then machines lost mid-run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from ray.cluster_utils import Cluster

from conftest import ROOT, lab_command, leftovers, needs_root, write_topology
from lab import runid
from lab.cli import main
from lab.errors import TopologyError
from lab.manifest import Manifest, read_manifest
from lab.remote.spread import capacity, place
from lab.remote.standin import stand_in_machines
from lab.topology import load_topology

pytestmark = [needs_root, pytest.mark.netns, pytest.mark.slow]

SLAS = [{"metric": "get", "stat": "success_ratio", "op": ">=", "threshold": "50%"}]  # peers_lost == 0 is built in
MACHINES = 4  # the head, two nodes, and one a test adds to lose it
S = 1_000_000_000


@pytest.fixture(scope="module")
def lan() -> Iterator[list[dict[str, str]]]:
    with stand_in_machines(MACHINES) as machines:
        yield machines


@pytest.fixture(scope="module")
def cluster(lan: list[dict[str, str]]) -> Iterator[Cluster]:
    """A head with one CPU and two nodes with two and one: 6 one-peer hosts go 1, 3, 2 or as
    the node ids order them."""
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": lan[0]})
    try:
        made.add_node(num_cpus=2, env_vars=lan[1])
        made.add_node(num_cpus=1, env_vars=lan[2])
        made.wait_for_nodes()
        yield made
    finally:
        made.shutdown()


def _gone(manifest: Manifest, within_s: float = 60) -> list[str]:
    """What is left of the run on every machine once its agents have had `within_s` to undo."""
    assert manifest.cluster is not None
    runs = [n.run_id for n in manifest.cluster.nodes if n.run_id] or [manifest.run_id]
    deadline = time.monotonic() + within_s
    while (left := [x for run in runs for x in leftovers(run)]) and time.monotonic() < deadline:
        time.sleep(1)
    return left


def _machine_of(manifest: Manifest) -> dict[int, int]:
    """Peer index -> the machine (node number in the manifest) it ran on."""
    assert manifest.cluster is not None and manifest.topology is not None
    hosts = [n.hosts for n in manifest.cluster.nodes]
    per_host = manifest.topology["network"]["peers_per_host"]
    return {peer: k for k, held in enumerate(hosts) for host in held for peer in range(host * per_host, (host + 1) * per_host)}


def test_place_gives_consecutive_hosts_in_proportion_to_capacity_and_pins_first() -> None:
    assert place([[0], [1], [2], [3], [4], [5]], [1, 2, 1]) == [[0], [1, 2, 3], [4, 5]]
    assert place([[0, 1], [2, 3], [4, 5]], [1, 1]) == [[0], [1, 2]]  # a host is never split
    assert place([[0], [1]], [0, 3]) == [[], [0, 1]]
    hosts = [[0], [1], [2], [3], [4], [5]]
    assert place(hosts, [1, 1, 1], {4: 0, 5: 0}) == [[4, 5], [0, 1], [2, 3]]  # the pinned fill machine 0's share
    assert place(hosts, [1, 1, 1], {0: 2, 1: 2, 2: 2, 3: 2}) == [[4], [5], [0, 1, 2, 3]]  # beyond it: the rest spread
    assert capacity([4, 4], [8, 32]) == pytest.approx([0.2 / 0.7, 0.5 / 0.7])  # memory binds the first machine
    assert capacity([1, 3], [0, 0]) == pytest.approx([0.25, 0.75])  # no memory known: CPUs alone


def test_a_run_over_three_machines_joins_them_by_vxlan(cluster: Cluster, tmp_path: Path) -> None:
    """Two regions 25 ms apart, each peer's own link 10 or 20 ms, group b pinned to machine m0:
    each machine shapes and verifies its own peers' links, a pair across machines is verified by
    round trips, and the machines' clocks are read against each other before and after."""
    topology = write_topology(tmp_path / "cluster.yaml", slas=SLAS, placement={"b": "m0"},
                              regions={"latency": {"near": {"near": "1ms", "far": "25ms"},
                                                   "far": {"near": "25ms", "far": "1ms"}}},
                              groups=[{"name": "a", "count": 3, "region": "near", "link": {"delay": "10ms"}},
                                      {"name": "b", "count": 3, "region": "far", "link": {"delay": "20ms"}}])
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(topology), "--cluster", cluster.address, "--out", str(out),
                                       "--no-report"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.status == "complete" and manifest.peers_ready == 6 and manifest.cluster is not None
    nodes = manifest.cluster.nodes
    assert len(nodes) == 3 and all(n.hosts for n in nodes)
    assert sorted(h for n in nodes for h in n.hosts) == list(range(6))
    m0 = next(k for k, n in enumerate(nodes) if n.machine == "m0")
    assert nodes[m0].hosts == [3, 4, 5]  # pinned
    shares = capacity([n.cpus for n in nodes], [n.memory_bytes for n in nodes])
    assert [n.hosts for n in nodes] == place([[i] for i in range(6)], shares, {3: m0, 4: m0, 5: m0})
    assert len({n.run_id for n in nodes}) == 3 and {n.underlay for n in nodes} <= {f"198.19.253.{k}" for k in (1, 2, 3)}
    machine = _machine_of(manifest)
    ids = {p.peer_id: p.index for p in manifest.peers}
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert any(e["op"] == "connect" and e["ok"] and machine[e["peer"]] != machine[ids[e["to"]]] for e in events), \
        "no connection crossed machines"
    assert sum(1 for e in events if e["op"] == "get" and e["ok"]) >= 6
    assert "joined over VXLAN to 2 machines" in result.output
    crossing = [r for r in manifest.impairment.verification if r["checks"][0]["name"] == "round trip across machines"]
    assert len(crossing) == 1 and crossing[0]["status"] in ("passed", "unverified"), crossing  # failed: exit 2
    assert machine[crossing[0]["source"]] != machine[crossing[0]["dest"]]
    for node in nodes:  # one kernel, one CLOCK_MONOTONIC: the true offset is 0, and must lie within the error bar
        assert 0 < node.clock_error_ns < 50_000_000 and abs(node.clock_offset_ns) <= node.clock_error_ns
    readers = [n for n in nodes if n.clock_readings]  # every machine but the first, read against it by UDP probes
    assert len(readers) == 2 and all(len(n.clock_readings) >= 2 for n in readers)  # before the run and after it
    assert all(abs(r.offset_ns) <= r.error_ns < 5_000_000 for n in readers for r in n.clock_readings)
    assert manifest.cluster.clock_error_ns is not None and 0 < manifest.cluster.clock_error_ns < 10_000_000
    assert manifest.lab_processes["driver"].cpu_seconds > 0  # the agents' own are "orchestrator", summed
    assert _gone(manifest) == []


def test_faults_across_machines(cluster: Cluster, tmp_path: Path) -> None:
    """A partition between peers on different machines (each hub drops what crosses it), a crash
    and restart of a peer wherever it runs, and a pause of one peer of a shared host: silent at
    its own hub to peers on every machine, while its neighbour runs on."""
    load = {"gets_per_s": 4, "announce_every": "2s", "timeout": "4s", "window": "2s"}  # a message sent in the cut's
    # first 6 s is not delivered within the timeout: GossipSub repairs the rest after the heal
    topology = write_topology(tmp_path / "faults.yaml", base=ROOT / "tests" / "topologies" / "faults.yaml",
                              groups=[{"name": "a", "count": 4, "link": {"delay": "10ms"}},
                                      {"name": "b", "count": 4, "link": {"delay": "10ms"}}],
                              workload=[{"phase": "bootstrap"}, {"phase": "publish", "packages": 8, "settle": "3s"},
                                        {"phase": "partition", "groups": ["a"], "before": "3s", "duration": "10s",
                                         "after": "12s", "load": load},
                                        {"phase": "crash", "groups": ["b"], "peers": 1, "before": "2s", "duration": "4s",
                                         "after": "8s", "load": load},
                                        {"phase": "pause", "peers": [0], "before": "2s", "duration": "8s", "after": "6s",
                                         "load": load}])  # a, not b: a restarted peer runs alone in a process
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(topology), "--cluster", cluster.address, "--out", str(out),
                                       "--no-report"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    machine = _machine_of(manifest)
    assert any(machine[a] != machine[b] for a in range(4) for b in range(4, 8))  # the cut crosses machines
    summary = json.loads((out / "summary.json").read_text())
    faults = {f["phase"]: f for f in summary["faults"]}
    partition = faults["partition"]["stretches"]
    assert partition["during"]["delivery_ratio"] < partition["after"]["delivery_ratio"]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    (crashed,) = [e for e in events if e["op"] == "peer_down" and e["fault"] == "crash"]
    assert crashed["back"] and crashed["returned_as"] == crashed["peer_id"]
    (paused,) = [e for e in events if e["op"] == "peer_down" and e["fault"] == "pause"]
    assert paused["by"] == "network"
    neighbour = paused["peer"] ^ 1  # hosts of two: 0-1, 2-3, ...
    during = [e for e in events if paused["start_ns"] + S < e["start_ns"] and e["end_ns"] < paused["end_ns"] - S]
    assert not [e for e in during if e["peer"] == paused["peer"] and e["op"] != "loop_lag"]  # nothing reached it
    assert [e for e in during if e["peer"] == neighbour]
    assert {e["peer"] for e in during if e["op"] == "gossip_delivery"} - {paused["peer"]}  # gossip went on meanwhile
    assert _gone(manifest) == []


def _start_idling_run(cluster: Cluster, tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """A run whose peers idle for a minute after publishing; returns once they idle."""
    topology = write_topology(tmp_path / "idle.yaml", slas=SLAS,
                              workload=[{"phase": "bootstrap"}, {"phase": "publish", "packages": 6},
                                        {"phase": "idle", "duration": "60s"}, {"phase": "lookup", "per_peer": 1}])
    out = tmp_path / "run"
    process = subprocess.Popen(lab_command("run", str(topology), "--cluster", cluster.address, "--out", str(out),
                                           "--no-report"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum('"op":"phase"' in line for line in _lines(out / "events.jsonl")) < 2:
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.5)
    return process, out


def test_a_machine_lost_mid_run_ends_the_run_with_its_peers_lost(cluster: Cluster, lan: list[dict[str, str]],
                                                                 tmp_path: Path) -> None:
    """A fourth node joins and is killed (no graceful stop) while the peers idle: its peers are
    lost, named, the run ends (exit 1), and every agent, that one's too (its stdin ended with its
    worker), removes what it built."""
    doomed = cluster.add_node(num_cpus=4, env_vars=lan[3])
    cluster.wait_for_nodes()
    process, out = _start_idling_run(cluster, tmp_path)
    try:
        manifest = read_manifest(out)
        assert manifest.cluster is not None
        there = next(k for k, n in enumerate(manifest.cluster.nodes) if n.node_id == doomed.node_id)
        assert manifest.cluster.nodes[there].hosts, "the largest node holds peers"
        cluster.remove_node(doomed, allow_graceful=False)
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 1, output
    lost = sorted(p for p, k in _machine_of(manifest).items() if k == there)
    ended = read_manifest(out)
    assert sorted(e.peer for e in ended.lab_errors if e.phase == "run") == lost, ended.lab_errors
    assert ended.peers_lost == len(lost) and "FAIL  peers_lost" in output
    assert "lookup" not in {p.phase for p in ended.phases}  # the run ended: no live peer left to ask
    assert _gone(manifest) == []


def test_an_agent_killed_mid_run_leaves_what_the_next_agent_removes(cluster: Cluster, tmp_path: Path) -> None:
    """`lab netem` on the run reaches every machine's links; then SIGKILL of one agent: nothing of
    it can undo its machine; its peers are lost, the others' machines are undone, and the next
    agent to open a run there removes the rest first."""
    process, out = _start_idling_run(cluster, tmp_path)
    try:
        manifest = read_manifest(out)
        assert manifest.cluster is not None
        killed = max(manifest.cluster.nodes, key=lambda n: len(n.hosts))
        changed = subprocess.run(lab_command("netem", "--delay", "30ms", "--run", str(out)), cwd=ROOT,
                                 capture_output=True, text=True)
        shown = subprocess.run(lab_command("netem", "--show", "--run", str(out)), cwd=ROOT, capture_output=True, text=True)
        os.kill(killed.agent_pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 1, output
    assert changed.returncode == 0 and "applied to 6 peers" in changed.stdout, changed.stdout + changed.stderr
    assert shown.returncode == 0 and shown.stdout.count(": delay 30ms") == 6, shown.stdout + shown.stderr  # every machine's
    assert "on another machine" not in shown.stdout
    assert read_manifest(out).peers_lost == len(killed.hosts), output
    assert killed.run_id and leftovers(killed.run_id), "a SIGKILLed agent cannot have undone its machine"
    again = CliRunner().invoke(main, ["run", str(write_topology(tmp_path / "next.yaml", slas=SLAS)), "--cluster",
                                      cluster.address, "--out", str(tmp_path / "next"), "--no-report"])
    assert again.exit_code == 0, again.output
    assert "leftovers of killed runs on this machine" in again.output
    assert _gone(manifest, within_s=0) == []


def test_doctor_and_clean_answer_for_every_machine(cluster: Cluster) -> None:
    """`lab doctor --cluster`: each machine's checks, its clock's sync and offset; `lab clean
    --cluster`: each machine removes what killed runs left (here a namespace of a run that no
    longer exists, seen by every stand-in machine: one kernel; the first removes it)."""
    doctor = CliRunner().invoke(main, ["doctor", "--cluster", cluster.address])
    assert doctor.exit_code == 0, doctor.output
    sections: dict[str, list[str]] = {}
    for line in doctor.output.splitlines():
        if line.startswith("[m"):  # a machine's name (lab/remote/standin.py), then its lines
            sections[line] = []
        elif sections and line.startswith("  "):
            sections[list(sections)[-1]].append(line)
    assert len(sections) == 3, doctor.output
    for lines in sections.values():
        assert any("clock (chrony)" in line for line in lines) and "  lab run will use: netns" in "\n".join(lines), lines
        assert any(line.startswith("  clock offset to the driver:") for line in lines), lines
    dead = runid.RunId.new().hub_netns
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        clean = CliRunner().invoke(main, ["clean", "--cluster", cluster.address])
        assert clean.exit_code == 0, clean.output
        assert clean.output.count(f"removed namespace {dead}") == 1, clean.output
        assert len([line for line in clean.output.splitlines() if line.startswith("[m")]) == 3
        assert dead not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", dead], capture_output=True)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_pin_to_no_machine_is_refused_before_anything_is_built(cluster: Cluster, tmp_path: Path) -> None:
    pinned = write_topology(tmp_path / "pinned.yaml", placement={"peers": "nowhere"})
    result = CliRunner().invoke(main, ["run", str(pinned), "--cluster", cluster.address, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "placement: peers is pinned to nowhere, which names no machine of the cluster (its machines: m" in result.output
    assert not (tmp_path / "run").exists()
    with pytest.raises(TopologyError, match="placement: unknown groups"):
        load_topology(write_topology(tmp_path / "unknown.yaml", placement={"nobody": "m0"}))


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-port"])
def test_a_cluster_that_is_not_there_is_refused_in_one_line(address: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(ROOT / "tests" / "topologies" / "tiny.yaml"), "--cluster", address,
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"--cluster {address}" in result.output and not (tmp_path / "run").exists()
