"""Link impairment for real: a namespaced network, the backend this kernel has (or the one
LAB_TEST_BACKEND names: the qemu harness sets netem), packets measured between peers."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import replace

import psutil
import pytest
import yaml

from conftest import needs_root
from lab.errors import ShapingError
from lab.network.fabric import NamespaceNetwork
from lab.network.netlink import inside
from lab.runid import ENV_VAR, RunId
from lab.shaping import plan as plans
from lab.shaping.backend import choose_backend
from lab.shaping.links import Links, make_backend
from lab.shaping.verify import PROBE, measure_pair, send_and_collect
from lab.topology import Link, Topology, parse_topology
from nodes.protocol import Dilation

pytestmark = [pytest.mark.impairment, needs_root]

REGIONS = """
name: shaped
seed: 3
regions:
  latency:
    near: {near: 2ms, far: 25ms}
    far: {near: 25ms, far: 2ms}
groups:
  - {name: a, count: 2, region: near, link: {delay: 10ms, loss: 5%}}
  - {name: b, count: 2, region: far, link: {delay: 30ms, jitter: 20ms, rate: 2mbit}}
workload: [{phase: bootstrap}]
"""


def backend_name() -> str:
    return os.environ.get("LAB_TEST_BACKEND") or choose_backend("auto")[0]


# Two hosts of two peers: each group shares one host's eth0, and the pairs within a group
# (0->1, 2->3) are sent out through the hub and back.
SHARED = """
name: shared
seed: 5
network: {peers_per_host: 2, deployed_peer: false}
groups:
  - {name: a, count: 2, link: {delay: 10ms, loss: 5%}}
  - {name: b, count: 2, link: {delay: 30ms, rate: 2mbit}}
workload: [{phase: bootstrap}]
"""


# One lossy, delayed link on a clock that will switch its factor.
SWITCHED = """
name: switched
seed: 7
groups: [{name: a, count: 2, link: {delay: 10ms, loss: 30%}}]
workload: [{phase: bootstrap}]
"""


@pytest.fixture
def shaped() -> Iterator[tuple[Links, Topology, RunId]]:
    yield from _links(REGIONS)


@pytest.fixture
def switched() -> Iterator[tuple[Links, Topology, RunId]]:
    yield from _links(SWITCHED, Dilation())


@pytest.fixture
def shared() -> Iterator[tuple[Links, Topology, RunId]]:
    yield from _links(SHARED)


def _links(text: str, dilation: Dilation | None = None) -> Iterator[tuple[Links, Topology, RunId]]:
    topology = parse_topology(yaml.safe_load(text))
    run = RunId.new()
    network = NamespaceNetwork(run, topology.hosts(), dilation)
    slots = network.build()
    prefixes = plans.prefixes_by_region([s.ip for s in slots], topology.peer_regions())
    links = Links(make_backend(backend_name(), prefixes, run, topology.seed), slots, topology, network.reference,
                  dilation)
    try:
        yield links, topology, run
    finally:
        links.close()
        network.teardown()
        assert not [p for p in psutil.process_iter(["pid"]) if _run_of(p) == run.value], "delay line left running"


def _run_of(process: psutil.Process) -> str | None:
    try:
        return process.environ().get(ENV_VAR)
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def _measured(links: Links, source: int, dest: int, name: str) -> float:
    report = next(r for r in links.verify(400) if (r.source, r.dest) == (source, dest))
    return next(c.measured for c in report.checks if c.name == name)


def test_delay_jitter_loss_rate_and_region_matrix_measure_as_configured(shaped: tuple) -> None:
    links, _, _ = shaped
    links.apply_initial()
    reports = links.verify(400)
    assert reports and all(r.passed for r in reports), [r.lines("failed") + r.lines("unverified") for r in reports]
    assert all(r.kernel_stamped == r.received > 0 for r in reports), reports  # send times are the kernel's
    assert all(r.reference_kernel_stamped == r.reference_received > 300 and r.noise for r in reports), reports
    checked = {(r.source, r.dest): {c.name for c in r.checks} for r in reports}
    assert checked[(0, 3)] == {"delay_s", "loss"}  # group a -> region far
    assert {"delay_s", "jitter_sd_s", "loss"} <= checked[(2, 1)] and {"delay_s", "jitter_sd_s", "loss"} <= checked[(2, 3)]
    assert "rate_bps" in checked[(2, 1)] or "rate_bps" in checked[(2, 3)]
    delays = {(r.source, r.dest): next(c.measured for c in r.checks if c.name == "delay_s") for r in reports}
    assert delays[(0, 3)] - delays[(0, 1)] == pytest.approx(0.023, abs=0.002)  # 25 ms vs 2 ms region latency


def test_verification_fails_when_the_kernel_does_something_else(shaped: tuple) -> None:
    """The configuration says one thing, the kernel is given another: half the delay and no
    loss for group a, no jitter and twice the rate for group b. Delay and loss fail on an idle
    machine or a busy one: noise never takes delay away. The missing jitter fails unless the
    probe path's own noise had a standard deviation above half the configured jitter's (noise
    on the link's timers can pose as jitter); the doubled rate fails whenever the sender kept up
    its pace (twice the configured rate). Neither is ever passed."""
    links, _, _ = shaped
    links.apply_initial()
    a, b = links.current[0], links.current[2]
    links.backend.apply([[(links.slots[0], replace(a, delay_s=a.delay_s / 2, loss=0.0))],
                         [(links.slots[2], replace(b, jitter_s=0.0, rate_bps=2 * (b.rate_bps or 0)))]])
    reports = links.verify(400)
    failed = {(r.source, c.name) for r in reports for c in r.checks if c.status == "failed"}
    assert {(0, "delay_s"), (0, "loss")} <= failed, [r.as_dict() for r in reports]
    jitters = [(r, c) for r in reports if r.source == 2 for c in r.checks if c.name == "jitter_sd_s"]
    assert jitters and all(c.status != "passed" for _, c in jitters), jitters
    assert (2, "jitter_sd_s") in failed or all(r.noise and r.noise["sd_ms"] / 1e3 > c.configured / 2 for r, c in jitters), jitters
    [rate] = [c for r in reports if r.source == 2 for c in r.checks if c.name == "rate_bps"]
    assert rate.status != "passed" and rate.offered, rate
    assert rate.status == "failed" or rate.offered < 1.5 * rate.high, rate


def test_live_change_then_clear_leaves_nothing_in_the_kernel(shaped: tuple) -> None:
    links, _, _ = shaped
    links.apply_initial()
    change = links.set_link([2, 3], Link(delay="30ms", loss="10%"), "test")
    assert change.peers == [2, 3] and change.event().op == "impairment"
    assert _measured(links, 2, 3, "delay_s") == pytest.approx(0.032, abs=0.0016)
    links.clear(links.peers_of(), "test")
    assert all(not row["kernel"] for row in links.show(links.peers_of()))
    assert _measured(links, 0, 3, "delay_s") < 0.001


def _switch(links: Links, factor: float) -> None:
    """The run's clock runs `factor` times slower from now on, and the links follow."""
    links.dilation.switch(factor, time.monotonic_ns(), time.time_ns())
    change = links.retime()
    assert change.link == {"time_dilation": factor, "held_packets_retimed": 0}, change


def test_a_switch_of_dilation_stretches_the_links_delay_by_it(switched: tuple) -> None:
    links, _, _ = switched
    links.dilation.start()
    links.apply_initial()
    _switch(links, 3.0)
    assert _measured(links, 0, 1, "delay_s") == pytest.approx(0.030, abs=0.0016)
    _switch(links, 1.0)
    assert _measured(links, 0, 1, "delay_s") == pytest.approx(0.010, abs=0.0016)


@pytest.mark.skipif(backend_name() != "userspace", reason="netem's loss is counted in the qdisc each switch rebuilds")
def test_the_loss_before_a_switch_of_dilation_stays_counted(switched: tuple) -> None:
    """The switch changes no loss rule, so it restores none and the hub's counters go on (a
    restore would restart them and the watch would miss what they counted before it)."""
    links, _, _ = switched
    links.dilation.start()
    links.apply_initial()
    send_and_collect(links.slots[0], links.slots[1], 400, 0.001, PROBE.size, 0.5)
    _switch(links, 3.0)
    assert 60 <= links.watch().drops["loss"] <= 180  # 400 at 30%: 120, sd 9.2


def test_peer_and_group_selection_errors_name_the_option(shaped: tuple) -> None:
    links, _, _ = shaped
    assert links.peers_of(groups=["b"]) == [2, 3]
    with pytest.raises(ShapingError, match="--group: no group 'z'"):
        links.peers_of(groups=["z"])
    with pytest.raises(ShapingError, match="--peers: no peer 9"):
        links.peers_of(peers=[9])


def test_peers_sharing_a_host_each_get_their_own_link(shared: tuple) -> None:
    """Per-peer shaping on one eth0 (classified by source address), pairs within a host
    included; changing one peer leaves its host neighbour's link as it was."""
    links, _, _ = shared
    links.apply_initial()
    reports = links.verify(400)
    assert [(r.source, r.dest) for r in reports] == [(0, 1), (0, 3), (2, 1), (2, 3)]
    # Right links are never called wrong; on a machine too noisy to tell (qemu beside other guests) unverified.
    assert not any(r.failures() for r in reports), [r.lines("failed") for r in reports]
    assert {c.name for r in reports if r.source == 2 for c in r.checks} >= {"delay_s", "loss", "rate_bps"}
    links.set_link([0], Link(delay="40ms"), "test")
    assert _measured(links, 0, 1, "delay_s") == pytest.approx(0.040, abs=0.002)  # within the host, through the hub
    neighbour = measure_pair(links.slots[1], links.slots[3], links.current[1], None, 400, 1, links.reference_link())
    assert neighbour.status != "failed" and neighbour.checks[0].measured == pytest.approx(0.010, abs=0.002), neighbour


@pytest.mark.skipif(backend_name() != "userspace", reason="what only the userspace backend refuses")
def test_userspace_backend_refuses_duplication_by_name(shaped: tuple) -> None:
    links, _, _ = shaped
    with pytest.raises(ShapingError, match="link.duplicate: the userspace backend cannot duplicate"):
        links.set_link([0], Link(delay="5ms", duplicate="1%"), "test")


@pytest.mark.skipif(backend_name() != "userspace", reason="the delay line's arrival stamps")
def test_tcp_through_the_delay_line_is_stamped_by_the_kernel_and_delayed(shaped: tuple) -> None:
    """The delay line reads a packet when it must, not when it comes, because the kernel stamps
    its arrival: so TCP's packets, whose send time veth carries through, must bear one too."""
    links, _, _ = shaped
    links.apply_initial()
    source, dest = links.slots[0], links.slots[1]  # group a, both in region near: 10 + 2 ms each way
    with inside(dest.netns):
        server = socket.create_server((dest.ip, 0))
    port = server.getsockname()[1]
    with inside(source.netns):
        client = socket.socket()
    client.settimeout(30)
    server.settimeout(30)
    before = links.backend.delay_line_stats()
    with client, server:
        started = time.monotonic()
        client.connect((dest.ip, port))
        connection, _ = server.accept()
        with connection:
            for _ in range(20):  # a round trip each: the echo waits for the request
                client.sendall(b"x" * 1000)
                connection.recv(1000, socket.MSG_WAITALL)
                connection.sendall(b"y" * 1000)
                client.recv(1000, socket.MSG_WAITALL)
        elapsed = time.monotonic() - started
    stats = links.backend.delay_line_stats()
    assert stats["released"] > 40 and stats["unstamped"] == before["unstamped"] == 0, stats
    assert elapsed >= 21 * 2 * 0.012, "a handshake and 20 round trips of 24 ms at least"
