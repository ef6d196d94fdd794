"""The machine the coordinator runs on, as a `Machine` (lab/machine.py): its namespaces, links,
host processes and collector, built and undone in one exit stack of its own.

`probe` checks, before anything is built, what this machine gives a topology: network
namespaces or loopback, an impairment backend, the open-file and namespace limits, a cgroup
for `network.cpu_limit`. Every refusal is a SetupError naming the fix.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from dataclasses import replace
from types import TracebackType
from typing import Any

from lab import checkup
from lab.blocking import in_thread_to_completion
from lab.errors import CgroupError, LimitError, SetupError, ShapingError
from lab.machine import Job, LinksApplied, LinkWatch, Machine, MachineRecord, Paths, Paused, PeerInfo, Place, Probe, Share, Stream
from lab.manifest import CollectorRecord, LabErrorRecord, PeerRecord
from lab.network import doctor, limits
from lab.network.fabric import VXLAN_MTU, Crossing, LoopbackNetwork, NamespaceNetwork, PeerSlot, peer_ip
from lab.output import provenance
from lab.peers.cgroup import PeerCgroups, cpu_root
from lab.peers.collector import Collector
from lab.peers.fleet import Fleet, PeerProcess
from lab.peers.settings import peer_settings
from lab.runid import RunId
from lab.shaping import crossing
from lab.shaping import plan as plans
from lab.shaping.backend import choose_backend
from lab.shaping.links import Links, group_plans, make_backend, topology_problem
from lab.shaping.live import LiveLinks
from lab.shaping.verify import worst
from lab.topology import Link, Topology
from lab.workload.ticker import Ticker
from nodes.protocol import ROUTING_PEERS, Call, Dilation, NetemRequest, Segment


def choose_impairment(topology: Topology, mode: str, mode_reason: str) -> tuple[str | None, str]:
    """(backend or None, why), given choose_mode's mode and its reason. Refuses, before anything
    is built, impairment the machine or the backend cannot give; without impairment in the
    topology a missing backend only means `lab netem` will not work on this run."""
    if mode != "netns":
        if topology.is_impaired:
            raise SetupError(f"the topology impairs links, which needs network namespaces, but this run is in loopback mode "
                             f"({mode_reason}); see `lab doctor`")
        return None, "loopback mode has no links to impair"
    try:
        name, why = choose_backend(topology.impairment.backend)
    except ShapingError as exc:
        if topology.is_impaired or topology.impairment.backend != "auto":
            raise SetupError(str(exc)) from None
        return None, str(exc)
    if problem := topology_problem(name, topology):
        raise SetupError(f"{problem}; set impairment.backend or change the link")
    return name, why


def probe(topology: Topology) -> Probe:
    """Checks the machine for `topology` before anything is created (blocking: run it in a thread)."""
    mode, mode_reason = doctor.choose_mode(topology.network.mode)
    if mode != "netns" and any(phase.phase == "partition" for phase in topology.workload):
        raise SetupError(f"a partition phase cuts the network, which needs network namespaces, but this run is in "
                         f"loopback mode ({mode_reason}); see `lab doctor`")
    backend, backend_reason = choose_impairment(topology, mode, mode_reason)
    try:
        connections = min(topology.peer_count - 1, topology.libp2p.connections.max_connections)
        raised = limits.raise_open_files(topology.peer_count, topology.network.peers_per_host * connections)
        if mode == "netns":
            limits.check_namespaces(len(topology.hosts()))
        if topology.network.cpu_limit or topology.network.cpu == "core":
            cpu_root()
    except (LimitError, CgroupError) as exc:
        raise SetupError(str(exc)) from None
    return Probe(mode, mode_reason, backend, backend_reason, provenance.machine(), raised)


class LocalMachine(Machine):
    def __init__(self, run_id: RunId, topology: Topology, dilation: Dilation, probe: Probe, paths: Paths,
                 stream: Stream, share: Share | None = None) -> None:
        """`share`: this machine's part when the run is placed over several (None: the whole run)."""
        self.run_id = run_id
        self.share = share
        self.topology = topology
        self.hosts = topology.hosts()
        self.dilation = dilation
        self.probe = probe
        self.paths = paths
        self.stream = stream
        self.network: NamespaceNetwork | LoopbackNetwork | None = None
        self.slots: list[PeerSlot] = []
        self.live: LiveLinks | None = None
        self.fleet: Fleet | None = None
        self.collector: Collector | None = None
        self.lost: list[LabErrorRecord] = []
        self.syns_counted = 0  # SYN retransmissions at the last watch
        self.cgroups: PeerCgroups | None = None
        self.silenced: set[int] = set()  # peers a pause silenced in the network
        self.incarnations: dict[int, int] = {}  # peer -> times it came back as a new peer (its key's suffix)
        self._undo = AsyncExitStack()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self._undo.__aexit__(kind, error, trace)

    # -- the network ------------------------------------------------------------------------

    async def build(self) -> int:
        started = time.monotonic()
        network: NamespaceNetwork | LoopbackNetwork
        if self.probe.mode == "netns":
            share = self.share
            network = NamespaceNetwork(self.run_id, self.hosts, self.dilation, share.hosts if share else None,
                                       VXLAN_MTU if share else None)
        else:
            network = LoopbackNetwork(self.hosts)
        self.network = network

        async def teardown() -> None:
            removed = await in_thread_to_completion(network.teardown)
            self.stream.echo(f"[cleanup] removed {len(removed)} namespaces")

        self._undo.push_async_callback(teardown)
        self.slots = await in_thread_to_completion(network.build)
        self.stream.echo(f"[network] {len(self.slots)} peer slots in {len({s.host for s in self.slots})} hosts built in "
                         f"{time.monotonic() - started:.1f}s")
        return len(self.slots)

    async def join(self, crossings: list[Crossing]) -> None:
        network, share = self.network, self.share
        if not isinstance(network, NamespaceNetwork) or share is None:
            raise SetupError("a run over several machines needs network namespaces on each")
        await in_thread_to_completion(lambda: network.join(share.machine, share.underlay, crossings))
        self.stream.echo(f"[network] joined over VXLAN to {len(crossings)} machines "
                         f"({sum(len(c.peers) for c in crossings)} peers there)")

    # -- the links ----------------------------------------------------------------------------

    async def shape(self, verify: bool) -> LinksApplied | None:
        """Opens the socket `lab netem` uses, applies the topology's impairment and measures it."""
        if self.probe.backend is None or self.network is None:
            return None
        prefixes = plans.prefixes_by_region(map(peer_ip, range(self.topology.peer_count)), self.topology.peer_regions())
        backend = make_backend(self.probe.backend, prefixes, self.run_id, self.topology.seed)
        links = Links(backend, self.slots, self.topology, self.network.reference, self.dilation)
        self.live = live = LiveLinks(links, self.stream.event, self.topology.impairment.probes)
        self._undo.push_async_callback(live.close)
        await live.serve(self.paths.impairment)
        self.stream.echo(f"[links] backend {self.probe.backend} ({self.probe.backend_reason})")
        change = await in_thread_to_completion(links.apply_initial)
        if change is None:
            return None
        self.stream.event(change.event())
        groups = {name: plan.describe() for name, plan in group_plans(self.topology).items()}
        for name, text in groups.items():
            self.stream.echo(f"[links] {name}: {text}")
        if not verify:
            return LinksApplied(groups)
        reports = await in_thread_to_completion(lambda: links.verify(self.topology.impairment.probes))
        return LinksApplied(groups, worst(r.status for r in reports), [r.as_dict() for r in reports],
                            [line for r in reports for line in r.lines("failed")],
                            [line for r in reports for line in r.lines("unverified")])

    async def echo(self, peer: int, seconds: float) -> int:
        slot = self._slot(peer)
        return await in_thread_to_completion(lambda: crossing.serve_echo(slot, seconds))

    async def round_trips(self, peer: int, ip: str, port: int) -> list[float]:
        slot = self._slot(peer)
        return await in_thread_to_completion(lambda: crossing.round_trips(slot, ip, port))

    def _slot(self, peer: int) -> PeerSlot:
        return next(slot for slot in self.slots if slot.index == peer)

    async def sample(self) -> None:
        if self.collector is not None:
            await self.collector.sample_once(detailed=False)

    async def watch(self) -> LinkWatch:
        network, live = self.network, self.live
        watched = await live.watch() if live is not None else LinkWatch()
        if not isinstance(network, NamespaceNetwork):
            return watched
        total = await in_thread_to_completion(network.syn_retransmits)
        syns, self.syns_counted = total - self.syns_counted, total
        return replace(watched, syn_retransmits=syns)

    async def impair(self, groups: list[str], link: Link, source: str, duration_s: float | None) -> str:
        if self.live is None:
            raise ShapingError("impairment needs network namespaces and a backend (checked before the run)")
        return await self.live.impair_groups(groups, link, source, duration_s)

    async def netem(self, request: NetemRequest) -> dict[str, Any]:
        if self.live is None:
            raise ShapingError("this run's links have no backend: `lab netem` cannot change them")
        return await self.live.handle(request)

    # -- the peers ----------------------------------------------------------------------------

    async def start_peers(self) -> list[LabErrorRecord]:
        fleet = await self._fleet()
        self._collect(fleet)
        limit = asyncio.Semaphore(self.topology.network.spawn_concurrency)
        timeout = self.topology.network.start_timeout
        started = time.monotonic()
        hosts: dict[int, list[PeerSlot]] = {}
        for slot in self.slots:
            hosts.setdefault(slot.host, []).append(slot)
        failed: list[LabErrorRecord] = []

        async def start(host: list[PeerSlot], ticker: Ticker) -> None:
            settings = [peer_settings(self.topology, slot.listen, self.dilation) for slot in host]
            deployed = [slot.index for slot in host] == [self.topology.deployed_peer]
            async with limit:
                failures = await fleet.start_host(host, settings, timeout, fresh=deployed)
            failed.extend(LabErrorRecord(phase="start", peer=index, error=why) for index, why in failures.items())
            ticker.done += len(host)

        async with Ticker(self.stream.echo, "peers started", len(self.slots)) as ticker:
            await asyncio.gather(*(start(host, ticker) for host in hosts.values()))
        self.stream.echo(f"[peers] {len(self.slots) - len(failed)}/{len(self.slots)} ready in {len(hosts)} host processes "
                         f"in {time.monotonic() - started:.1f}s")
        return failed

    async def _fleet(self) -> Fleet:
        network = self.topology.network
        cores = network.cpu_limit
        per_host = {host: len(peers) for host, peers in enumerate(self.hosts)
                    if self.share is None or host in self.share.hosts} if network.cpu == "core" else None
        if cores or per_host:
            self.cgroups = cgroups = PeerCgroups(self.run_id, cores, per_host, self.dilation.factor)
            cgroups.create()
            self._undo.callback(cgroups.remove)  # after the fleet has stopped (exit stack order)
            confined = f"{cores:g} cores in all" if cores else "the machine"
            core = f"; each host 1/{self.dilation.factor:g} core per peer (network.cpu: core)" if per_host else ""
            self.stream.echo(f"[peers] confined to {confined}{core} ({cgroups.version} {cgroups.path})")
        self.fleet = fleet = Fleet(self.run_id.value, self.paths.control, self.paths.logs, self.stream.event,
                                   network.peer_hosting, self.cgroups, self.dilation)
        self._undo.push_async_callback(self._stop, fleet)
        await fleet.open()
        return fleet

    def _collect(self, fleet: Fleet) -> None:
        settings = self.topology.collector
        self.collector = collector = Collector(settings.interval, settings.detail_every, fleet.processes, self.stream.sample,
                                               self.live.helper_pids if self.live else dict, self.dilation)
        collecting = asyncio.create_task(collector.run())

        async def last_sample() -> None:
            await collector.sample_once()
            collecting.cancel()

        self._undo.push_async_callback(last_sample)

    async def _stop(self, fleet: Fleet) -> None:
        """Peers lost during the run are reported before the fleet stops (stopping is not losing)."""
        self.lost = [LabErrorRecord(phase="run", peer=p.index, error=p.lost or "", stderr_tail=p.stderr_tail())
                     for p in self._lost(fleet)]
        await fleet.stop()
        self.stream.echo(f"[cleanup] stopped {len(fleet.peers)} peers")
        finals = [p.final for p in fleet.peers if p.final]
        if finals:
            held = {key: sorted(f[key] for f in finals) for key in ("connections", "routing_table", "gossip_mesh")}
            self.stream.echo("[peers] at the end, per peer: " + ", ".join(
                f"{key} median {values[len(values) // 2]} max {values[-1]}" for key, values in held.items()))

    @staticmethod
    def _lost(fleet: Fleet) -> list[PeerProcess]:
        """Peers that became ready (have a peer id) and then died, not taken down by a fault phase;
        those that never started are reported when they fail to start."""
        return [p for p in fleet.peers if p.lost is not None and p.peer_id and p.down is None]

    def alive(self) -> list[PeerInfo]:
        if self.fleet is None:
            return []
        return [PeerInfo(p.index, p.peer_id, tuple(p.addrs), p.slot.host) for p in self.fleet.alive
                if p.peer_id and p.pid not in self.fleet.paused and p.index not in self.silenced]

    # -- faults -------------------------------------------------------------------------------

    async def cut(self, side: list[int], both_ways: bool) -> None:
        assert self.network is not None, "the network is built first"
        chosen = set(side)  # peers on every machine of the run: each hub drops what crosses it
        everyone = range(self.topology.peer_count)
        ips = ([peer_ip(i) for i in everyone if i in chosen], [peer_ip(i) for i in everyone if i not in chosen])
        network = self.network
        await in_thread_to_completion(lambda: network.cut(*ips, both_ways))

    async def heal(self) -> None:
        if self.network is not None:
            await in_thread_to_completion(self.network.heal)

    async def crash(self, peers: list[int], why: str) -> None:
        assert self.fleet is not None, "peers are crashed after start_peers"
        await self.fleet.crash([self.fleet.peer(i) for i in peers], why, self.topology.network.start_timeout)

    async def leave(self, peer: int, why: str) -> None:
        assert self.fleet is not None, "peers leave after start_peers"
        await self.fleet.leave(self.fleet.peer(peer), why, self.topology.network.start_timeout)

    async def pause(self, peers: list[int]) -> Paused:
        assert self.fleet is not None and self.network is not None, "peers are paused after start_peers"
        fleet, network = self.fleet, self.network
        chosen = {i for i in peers if fleet.peer(i).lost is None and fleet.peer(i).pid is not None}
        whole = {p.pid for p in fleet.alive if p.index in chosen} - {p.pid for p in fleet.alive if p.index not in chosen}
        silent = sorted(i for i in chosen if fleet.peer(i).pid not in whole)
        if silent:
            await in_thread_to_completion(lambda: network.silence([peer_ip(i) for i in silent]))
            self.silenced = set(silent)
        fleet.pause({pid for pid in whole if pid is not None})
        return Paused(tuple(p.index for p in fleet.alive if p.pid in whole), tuple(silent))

    async def resume(self) -> None:
        if self.fleet is not None:
            self.fleet.resume()
        network = self.network
        if self.silenced and network is not None:
            self.silenced = set()
            await in_thread_to_completion(lambda: network.silence([]))

    async def restart(self, peer: int, new_identity: bool = False) -> str | None:
        assert self.fleet is not None, "peers are restarted after start_peers"
        slot = self.fleet.peer(peer).slot
        if new_identity:
            self.incarnations[peer] = self.incarnations.get(peer, 0) + 1
        settings = peer_settings(self.topology, slot.listen, self.dilation, self.incarnations.get(peer, 0))
        return await self.fleet.restart(self.fleet.peer(peer), settings, self.topology.network.start_timeout)

    async def call(self, peer: int, op: Call, args: dict[str, Any], timeout_s: float) -> Any:
        assert self.fleet is not None, "peers are called after start_peers"
        return await self.fleet.call(self.fleet.peer(peer), op, args, timeout_s)

    # -- time ---------------------------------------------------------------------------------

    async def retime(self, segment: Segment) -> list[LabErrorRecord]:
        """Tells one live peer per host process the new segment, waits for its instant, then the
        links and TCP's minimum RTO follow."""
        self.dilation.follow(segment)
        errors: list[LabErrorRecord] = []
        if self.fleet is not None:
            hosts = {p.pid: p for p in self.fleet.alive}  # one live peer per host process
            notice = max(0.0, (segment.real_ns - time.monotonic_ns()) / 1e9)
            args = {"real_ns": segment.real_ns, "real_wall_ns": segment.real_wall_ns, "factor": segment.factor}
            answers = await asyncio.gather(*(self.fleet.call(p, Call.RETIME, args, notice) for p in hosts.values()),
                                           return_exceptions=True)
            errors = [LabErrorRecord(phase="retime", peer=p.index, error=str(answer))
                      for p, answer in zip(hosts.values(), answers, strict=True) if isinstance(answer, Exception)]
        await asyncio.sleep(max(0.0, (segment.real_ns - time.monotonic_ns()) / 1e9))
        if self.cgroups is not None:
            self.cgroups.retime(segment.factor)
        if self.live is not None:
            await self.live.retime()
        network = self.network
        if isinstance(network, NamespaceNetwork):
            await in_thread_to_completion(network.retime)
        return errors

    def record(self) -> MachineRecord:
        """The peers' records; their routing tables' peer ids apart (a thousand peers' are ~8 MB)."""
        groups, fleet = self.topology.peer_groups(), self.fleet.peers if self.fleet else []
        peers = [
            PeerRecord(index=p.index, group=groups[p.index].name, peer_id=p.peer_id, ip=p.slot.ip, netns=p.slot.netns,
                       pid=p.pid, lost=p.lost,
                       final={k: v for k, v in p.final.items() if k != ROUTING_PEERS} if p.final else None)
            for p in fleet
        ]
        routing = {p.index: list(p.final[ROUTING_PEERS]) for p in fleet if p.final and ROUTING_PEERS in p.final}
        collector = self.collector
        sweeps = CollectorRecord(sweeps=collector.sweeps, seconds=collector.sweep_seconds) if collector else None
        return MachineRecord(peers, self.lost, sweeps, routing)


class LocalPlace(Place):
    """Runs on the machine the coordinator runs on, in its process."""

    async def probe(self, topology: Topology) -> Probe:
        return await asyncio.to_thread(probe, topology)

    def machine(self, run_id: RunId, topology: Topology, dilation: Dilation, probe: Probe, paths: Paths,
                stream: Stream) -> Machine:
        return LocalMachine(run_id, topology, dilation, probe, paths, stream)

    async def each_machine(self, job: Job) -> list[tuple[str, list[str]]]:
        lines = await asyncio.to_thread(checkup.doctor_lines if job == "doctor" else checkup.clean_lines)
        return [("this machine", lines)]
