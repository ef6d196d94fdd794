"""`lab run --cluster`: a run whose peers live on an agent placed by Ray on another node of a
local multi-node cluster (ray.cluster_utils.Cluster: one raylet per node on this machine), and
a node lost in the middle of a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from ray.cluster_utils import Cluster

from conftest import ROOT, lab_command, leftovers, needs_root, write_topology
from lab.cli import main
from lab.manifest import read_manifest
from lab.remote.cluster import choose_node

pytestmark = [needs_root, pytest.mark.netns, pytest.mark.slow]

SLAS = [{"metric": "get", "stat": "success_ratio", "op": ">=", "threshold": "50%"}]  # peers_lost == 0 is built in


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head with one CPU and two nodes, the larger with two: placement has one right answer."""
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        LARGEST.append(made.add_node(num_cpus=2))
        made.add_node(num_cpus=1)
        made.wait_for_nodes()
        yield made
    finally:
        made.shutdown()
        LARGEST.clear()


LARGEST: list[Any] = []  # the module cluster's two-CPU node


def _gone(run: str, within_s: float = 60) -> list[str]:
    """What is left of the run once its agent has had `within_s` to undo its machine."""
    deadline = time.monotonic() + within_s
    while (left := leftovers(run)) and time.monotonic() < deadline:
        time.sleep(1)
    return left


def test_choose_node_takes_the_most_cpus_then_memory_and_skips_dead_nodes() -> None:
    def node(name: str, cpus: float, memory: float, alive: bool = True) -> dict[str, object]:
        return {"NodeID": name, "Alive": alive, "Resources": {"CPU": cpus, "memory": memory}}

    nodes = [node("a", 2, 10), node("b", 4, 1, alive=False), node("c", 2, 20), node("d", 2, 20)]
    assert choose_node(nodes)["NodeID"] == "c"


def test_a_run_on_a_ray_cluster_places_its_peers_on_the_largest_node(cluster: Cluster, tmp_path: Path) -> None:
    topology = write_topology(tmp_path / "cluster.yaml", slas=SLAS)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(topology), "--cluster", cluster.address, "--out", str(out),
                                       "--no-report"])
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.status == "complete" and manifest.peers_ready == 6
    assert manifest.cluster is not None and len(manifest.cluster.nodes) == 1
    placed = manifest.cluster.nodes[0]
    assert placed.node_id == LARGEST[0].node_id and placed.cpus == 2 and placed.hosts == list(range(6))
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert sum(1 for e in events if e["op"] == "get" and e["ok"]) >= 6  # the peers answered through the agent
    assert {"bootstrap", "publish", "lookup"} <= {e.get("phase") for e in events if e["op"] == "phase"}
    assert _gone(manifest.run_id) == []


def test_a_node_lost_mid_run_loses_its_peers_and_its_agent_undoes_its_machine(cluster: Cluster, tmp_path: Path) -> None:
    """The node holding the agent is killed (no graceful stop) while its peers idle: the run ends
    with those peers lost, named, exit 1, and the agent, whose stdin ended with its worker,
    removes what it built."""
    doomed = cluster.add_node(num_cpus=4)  # now the largest: the agent goes there
    topology = write_topology(tmp_path / "lost.yaml", slas=SLAS,
                              workload=[{"phase": "bootstrap"}, {"phase": "publish", "packages": 6},
                                        {"phase": "idle", "duration": "60s"}, {"phase": "lookup", "per_peer": 1}])
    out = tmp_path / "run"
    process = subprocess.Popen(lab_command("run", str(topology), "--cluster", cluster.address, "--out", str(out),
                                           "--no-report"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        _wait_for_idle(process, out)
        manifest = read_manifest(out)
        assert manifest.peers_ready == 6 and manifest.cluster is not None
        assert manifest.cluster.nodes[0].node_id == doomed.node_id
        cluster.remove_node(doomed, allow_graceful=False)
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 1, output
    manifest = read_manifest(out)
    assert manifest.peers_lost == 6, output
    assert all("agent" in e.error for e in manifest.lab_errors if e.phase == "run"), manifest.lab_errors
    assert "FAIL  peers_lost" in output
    assert _gone(manifest.run_id) == []


def test_an_agent_killed_mid_run_leaves_what_the_next_agent_removes(cluster: Cluster, tmp_path: Path) -> None:
    """SIGKILL of the agent itself: nothing of it can undo its machine; the next agent to start
    on that machine removes the killed run's leftovers before it builds."""
    topology = write_topology(tmp_path / "killed.yaml", slas=SLAS,
                              workload=[{"phase": "bootstrap"}, {"phase": "publish", "packages": 6},
                                        {"phase": "idle", "duration": "60s"}, {"phase": "lookup", "per_peer": 1}])
    out = tmp_path / "run"
    process = subprocess.Popen(lab_command("run", str(topology), "--cluster", cluster.address, "--out", str(out),
                                           "--no-report"), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        _wait_for_idle(process, out)
        manifest = read_manifest(out)
        assert manifest.cluster is not None
        os.kill(manifest.cluster.nodes[0].agent_pid, signal.SIGKILL)
        output, _ = process.communicate(timeout=180)
    finally:
        process.kill()
    assert process.returncode == 1, output
    assert read_manifest(out).peers_lost == 6, output
    assert leftovers(manifest.run_id), "a SIGKILLed agent cannot have undone its machine"
    again = CliRunner().invoke(main, ["run", str(write_topology(tmp_path / "next.yaml", slas=SLAS)), "--cluster",
                                      cluster.address, "--out", str(tmp_path / "next"), "--no-report"])
    assert again.exit_code == 0, again.output
    assert "leftovers of killed runs on this machine" in again.output
    assert leftovers(manifest.run_id) == []


def _wait_for_idle(process: subprocess.Popen[str], out: Path) -> None:
    """Until the run's second phase has ended: its peers idle for a minute then."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and sum('"op":"phase"' in line for line in _lines(out / "events.jsonl")) < 2:
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.5)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-port"])
def test_a_cluster_that_is_not_there_is_refused_in_one_line(address: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(ROOT / "tests" / "topologies" / "tiny.yaml"), "--cluster", address,
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert f"--cluster {address}" in result.output and not (tmp_path / "run").exists()
