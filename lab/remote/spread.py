"""One run over several machines: placement of whole host processes, and the `Machine` that
drives each machine's part (an agent's, lab/remote/machine.py) as one.

Every call goes where it belongs: a peer's call to the machine that holds the peer, a change of
the whole network (impairment, a cut, a switch of dilation, a sample) to every machine at
once. What the machines report is put back together: the live peers, the links' figures, the
records at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from lab.machine import LinksApplied, LinkWatch, Machine, MachineRecord, Paused, PeerInfo, PeerLost
from lab.manifest import CollectorRecord, LabErrorRecord
from lab.network.fabric import Crossing, peer_ip
from lab.remote.machine import AgentMachine, ClockWatch
from lab.shaping.crossing import ROUND_TRIPS, TIMEOUT_S, crossing_report
from lab.shaping.links import ELSEWHERE, peer_plans
from lab.shaping.live import NetemServer
from lab.shaping.verify import worst
from lab.topology import Link, Topology
from nodes.protocol import Call, Dilation, NetemRequest, Segment

T = TypeVar("T")
ECHO_S = ROUND_TRIPS * TIMEOUT_S  # an echo outlasts every probe sent to it


def capacity(cpus: list[float], memory: list[float]) -> list[float]:
    """Each machine's share of the peers: the smaller of its shares of the CPUs and of the memory,
    so no machine runs out of either first (the worst machine's load over its share is least)."""
    total_cpus, total_memory = sum(cpus), sum(memory)
    if total_cpus <= 0:
        raise ValueError("no machine has CPUs")
    shares = [min(c / total_cpus, m / total_memory if total_memory > 0 else 1.0) for c, m in zip(cpus, memory, strict=True)]
    return [share / sum(shares) for share in shares]


def place(hosts: list[list[int]], shares: list[float], pinned: dict[int, int] | None = None) -> list[list[int]]:
    """The host processes each machine holds. `pinned` hosts (host -> machine) go where they are
    pinned; the others go in order, consecutive (a group's peers are consecutive, so a group
    stays on one machine where it can), so that each machine's peers come as near its `shares`
    of all as the pins allow. A host goes to the machine whose share its middle falls in."""
    pinned = pinned or {}
    total_peers, total_share = sum(map(len, hosts)), sum(shares)
    if total_share <= 0:
        raise ValueError("no machine has capacity")
    placed: list[list[int]] = [[] for _ in shares]
    held = [0.0] * len(shares)
    for host, machine in pinned.items():
        held[machine] += len(hosts[host])
    room = [max(0.0, total_peers * share / total_share - have) for share, have in zip(shares, held, strict=True)]
    room = room if sum(room) > 0 else list(shares)
    free = [host for host in range(len(hosts)) if host not in pinned]
    free_peers = sum(len(hosts[host]) for host in free)
    bounds, running = [], 0.0
    for share in room:
        running += share
        bounds.append(free_peers * running / sum(room))
    before = 0
    for host in free:
        middle = before + len(hosts[host]) / 2
        placed[next((k for k, bound in enumerate(bounds) if middle < bound), len(room) - 1)].append(host)
        before += len(hosts[host])
    for host, machine in pinned.items():
        placed[machine].append(host)
    return [sorted(held_hosts) for held_hosts in placed]


async def _each(calls: Iterable[Awaitable[T]]) -> list[T]:
    return list(await asyncio.gather(*calls))


class Machines(Machine):
    """The parts of one run, each a machine holding whole host processes."""

    def __init__(self, parts: list[AgentMachine], peers: list[list[int]], underlays: list[str], topology: Topology,
                 dilation: Dilation, impairment: Path, clocks: ClockWatch | None = None) -> None:
        """`peers[k]`, `underlays[k]`: the peers part k holds and its address on the machines' network;
        `impairment`: the run's `lab netem` socket, answered here for every machine; `clocks`: the
        machines' clocks, read once already, read again during the run and after it."""
        self.parts, self.peers, self.underlays = parts, peers, underlays
        self.topology, self.dilation, self.impairment = topology, dilation, impairment
        self.home: dict[int, AgentMachine] = {peer: part for part, held in zip(parts, peers, strict=True) for peer in held}
        self.clocks = clocks
        self.undo = AsyncExitStack()

    async def __aenter__(self) -> Machines:
        for part in self.parts:
            await self.undo.enter_async_context(part)
        if self.clocks is not None:
            watching = asyncio.create_task(self.clocks.watch())
            self.undo.push_async_callback(self._last_reading, watching)
        return self

    async def _last_reading(self, watching: asyncio.Task[None]) -> None:
        """After the run, before its machines are undone: the clocks read once more."""
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        if self.clocks is not None and not any(part.gone for part in self.parts):
            with contextlib.suppress(PeerLost):
                await self.clocks.read()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.undo.__aexit__(kind, error, trace)

    def _by_part(self, peers: list[int]) -> list[tuple[AgentMachine, list[int]]]:
        return [(part, held) for part in self.parts if (held := [p for p in peers if self.home[p] is part])]

    async def build(self) -> int:
        slots = sum(await _each(part.build() for part in self.parts))
        await _each(part.join([Crossing(other, self.underlays[other], tuple(map(peer_ip, self.peers[other])))
                               for other in range(len(self.parts)) if other != number])
                    for number, part in enumerate(self.parts))
        return slots

    async def shape(self, verify: bool) -> LinksApplied | None:
        """Each machine shapes (and verifies) its own peers' links; with `verify`, a pair across
        the first two machines is measured by round trips before and after (crossing.py)."""
        source, dest = self.peers[0][0], self.peers[1][0]
        before = await self._round_trips(source, dest) if verify else []
        server = await NetemServer.start(self.netem, self.impairment)  # `lab netem` on the run: every machine's links
        self.undo.callback(server.close)
        applied = [a for a in await _each(part.shape(verify) for part in self.parts) if a is not None]
        if not applied:
            return None
        reports = [r for a in applied for r in a.reports]
        failures, unverified = [f for a in applied for f in a.failures], [u for a in applied for u in a.unverified]
        if verify:
            factor, plans, regions = self.dilation.factor, peer_plans(self.topology), self.topology.peer_regions()
            crossed = crossing_report(source, dest, plans[source].dilated(factor), plans[dest].dilated(factor),
                                      regions[dest], regions[source], before, await self._round_trips(source, dest))
            reports.append(crossed.as_dict())
            failures += crossed.lines("failed")
            unverified += crossed.lines("unverified")
        statuses = [a.status for a in applied if a.status is not None] + [r["status"] for r in reports[-1:] if verify]
        return LinksApplied(applied[0].groups, worst(statuses) if statuses else None, reports, failures, unverified)

    async def _round_trips(self, source: int, dest: int) -> list[float]:
        port = await self.home[dest].echo(dest, ECHO_S)
        return await self.home[source].round_trips(source, peer_ip(dest), port)

    async def echo(self, peer: int, seconds: float) -> int:
        return await self.home[peer].echo(peer, seconds)

    async def round_trips(self, peer: int, ip: str, port: int) -> list[float]:
        return await self.home[peer].round_trips(peer, ip, port)

    async def start_peers(self) -> list[LabErrorRecord]:
        return [e for failed in await _each(part.start_peers() for part in self.parts) for e in failed]

    def alive(self) -> list[PeerInfo]:
        """Every part's live peers; none once a machine is gone: the run ends (its peers were
        part of every other peer's network, and the figures would no longer be the topology's)."""
        if any(part.gone for part in self.parts):
            return []
        return sorted((p for part in self.parts for p in part.alive()), key=lambda p: p.index)

    async def call(self, peer: int, op: Call, args: dict[str, Any], timeout_s: float) -> Any:
        return await self.home[peer].call(peer, op, args, timeout_s)

    async def impair(self, groups: list[str], link: Link, source: str, duration_s: float | None) -> str:
        return (await _each(part.impair(groups, link, source, duration_s) for part in self.parts))[0]

    async def netem(self, request: NetemRequest) -> dict[str, Any]:
        """The request to every machine's links, their replies as one: each changes and shows its
        own peers' links and measures pairs of its own peers."""
        replies = await _each(part.netem(request) for part in self.parts)
        reply = dict(replies[0])
        if "links" in reply:
            shown = {entry["peer"]: entry for r in replies for entry in r["links"] if entry["kernel"] != [ELSEWHERE]}
            reply["links"] = [shown[entry["peer"]] for entry in reply["links"]]
        if "verification" in reply:
            reply["verification"] = [report for r in replies for report in r["verification"]]
            reply["status"] = worst(r["status"] for r in replies)
            reply["passed"] = reply["status"] == "passed"
        return reply

    async def cut(self, side: list[int], both_ways: bool) -> None:
        await _each(part.cut(side, both_ways) for part in self.parts)

    async def heal(self) -> None:
        await _each(part.heal() for part in self.parts)

    async def crash(self, peers: list[int], why: str) -> None:
        await _each(part.crash(held, why) for part, held in self._by_part(peers))

    async def leave(self, peer: int, why: str) -> None:
        await self.home[peer].leave(peer, why)

    async def pause(self, peers: list[int]) -> Paused:
        """Each machine pauses its own peers; a silenced peer is silent at its own hub, which every
        packet from or to it crosses."""
        paused = await _each(part.pause(held) for part, held in self._by_part(peers))
        return Paused(tuple(sorted(i for p in paused for i in p.frozen)), tuple(sorted(i for p in paused for i in p.silenced)))

    async def resume(self) -> None:
        await _each(part.resume() for part in self.parts)

    async def restart(self, peer: int, new_identity: bool = False) -> str | None:
        return await self.home[peer].restart(peer, new_identity)

    async def sample(self) -> None:
        await _each(part.sample() for part in self.parts)

    async def watch(self) -> LinkWatch:
        """The machines' links together: counts added, lateness the worst machine's."""
        watched = await _each(part.watch() for part in self.parts)

        def most(values: Iterable[float | None]) -> float | None:
            return max((v for v in values if v is not None), default=None)

        drops: dict[str, int] = {}
        for w in watched:
            for cause, count in w.drops.items():
                drops[cause] = drops.get(cause, 0) + count
        syns = [w.syn_retransmits for w in watched if w.syn_retransmits is not None]
        tolerances = [w.tolerance_s for w in watched if w.tolerance_s is not None]
        return LinkWatch(sum(w.released for w in watched), most(w.late_p50_s for w in watched),
                         most(w.late_p99_s for w in watched), most(w.late_max_s for w in watched),
                         min(tolerances) if tolerances else None, drops, sum(syns) if syns else None)

    async def retime(self, segment: Segment) -> list[LabErrorRecord]:
        return [e for errors in await _each(part.retime(segment) for part in self.parts) for e in errors]

    def record(self) -> MachineRecord:
        records = [part.record() for part in self.parts]
        collectors = [r.collector for r in records if r.collector is not None]
        collector = CollectorRecord(sweeps=min(c.sweeps for c in collectors),
                                    seconds=max(c.seconds for c in collectors)) if collectors else None
        return MachineRecord(sorted((p for r in records for p in r.peers), key=lambda p: p.index),
                             [e for r in records for e in r.lost], collector,
                             {index: table for r in records for index, table in r.routing.items()})
