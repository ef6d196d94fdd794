"""Fault phases (docs/faults.md): a steady load from the live peers, a fault, the recovery.

Every fault runs the same way: the load starts (lab/workload/load.py); after `before` the fault
takes effect; after `duration` it is undone (the cut healed, the frozen thawed, the crashed
restarted and joined again); the load runs `after` more and stops. The fault's window is a
FAULT event and each peer it took down or froze a PEER_DOWN event (from down to back), so the
analysis (lab/analysis/faults.py) tells what users felt before, during and after it. Who is hit
and when is drawn from the seed, one stream per phase.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from lab.events import FAULT, PEER_DOWN
from lab.machine import PeerInfo
from lab.manifest import LabErrorRecord, PhaseRecord
from lab.topology import ChurnPhase, CrashPhase, FaultPhase, PartitionPhase, PausePhase, PublishPhase
from lab.workload.load import Load, Workload
from nodes.protocol import Call, Event


def targets(work: Workload, phase: FaultPhase, rng: random.Random) -> list[PeerInfo]:
    """The live peers the fault may hit: those listed, or of its groups (all if none), never the
    deployed peer (its memory is the run's per-peer figure), `peers` or a `share` of them drawn
    from the seed."""
    groups = work.topology.peer_groups()
    allowed = set(phase.groups) or {g.name for g in groups}
    pool = [p for p in work.peers() if groups[p.index].name in allowed and p.index != work.topology.deployed_peer]
    if isinstance(phase.peers, list):
        return [p for p in pool if p.index in set(phase.peers)]
    if phase.peers is not None:
        count = phase.peers
    elif phase.share is not None:
        count = max(1, round(phase.share * len(pool)))
    else:
        return pool
    chosen = {p.index for p in rng.sample(pool, min(count, len(pool)))}
    return [p for p in pool if p.index in chosen]


class Fault:
    """One fault phase's run: its load, its fault, its events."""

    def __init__(self, work: Workload, phase: FaultPhase, report: PhaseRecord) -> None:
        self.work = work
        self.phase = phase
        self.report = report
        self.rng = work.topology.rng(f"{report.phase} fault {work.faults}")
        self.stores: dict[int, list[str]] = {}  # peer -> the packages it published, while it is down
        work.faults += 1

    def now(self) -> int:
        return self.work.dilation.now_ns()

    async def wait(self, seconds: float) -> None:
        """`seconds` of the run's time."""
        await self.work.sleep(max(0.0, seconds))

    def event(self, op: str, peer: int | None, start_ns: int, **details: object) -> None:
        self.work.event(Event(op, peer, start_ns, self.now(), True, details={"fault": self.phase.phase, **details}))

    async def run(self) -> None:
        phase = self.phase
        hit = targets(self.work, phase, self.rng)
        if not hit:
            self.work.errors.append(LabErrorRecord(phase=self.report.phase, error="no live peer to hit: the fault was not run"))
            return
        load = Load(self.work, phase.load, self.report, self.rng.random())
        async with asyncio.TaskGroup() as tasks:
            loading = tasks.create_task(load.run())
            await self.wait(phase.before)
            await RUNNERS[type(phase)](self, hit)
            await self.wait(phase.after)
            load.stop()
            await loading
        self.work.echo(f"  load: {load.describe()}")

    # -- the faults ----------------------------------------------------------------------------

    async def partition(self, side: list[PeerInfo]) -> None:
        assert isinstance(self.phase, PartitionPhase)
        indices = [p.index for p in side]
        both = self.phase.direction == "both"
        start = self.now()
        await self.work.machine.cut(indices, both)
        way = "both ways" if both else "what they send"
        self.work.echo(f"[partition] {len(side)} peers cut off from the rest ({way}) for {self.phase.duration:g}s")
        try:
            await self.wait(self.phase.duration)
        finally:
            await self.work.machine.heal()
            self.event(FAULT, None, start, peers=indices, direction=self.phase.direction)
        self.work.echo("[partition] healed")

    async def crash(self, hit: list[PeerInfo]) -> None:
        assert isinstance(self.phase, CrashPhase)
        start = self.now()
        self._stash(hit)
        await self.work.machine.crash([p.index for p in hit], "crashed by a crash phase")
        self.work.echo(f"[crash] {len(hit)} peers killed" + (f", back in {self.phase.duration:g}s" if self.phase.restart else ""))
        await self.wait(self.phase.duration)
        if self.phase.restart:
            await asyncio.gather(*(self._back(p, start, "crash") for p in hit))
        else:
            for peer in hit:
                self.event(PEER_DOWN, peer.index, start, how="crash", back=False)
        self.event(FAULT, None, start, peers=[p.index for p in hit], restart=self.phase.restart)

    async def pause(self, hit: list[PeerInfo]) -> None:
        start = self.now()
        paused = await self.work.machine.pause([p.index for p in hit])
        self.work.echo(f"[pause] {len(paused.frozen)} peers frozen (whole host processes), {len(paused.silenced)} "
                       f"silenced in the network (their neighbours running on), for {self.phase.duration:g}s")
        try:
            await self.wait(self.phase.duration)
        finally:
            await self.work.machine.resume()
        for index, by in [*((i, "process") for i in paused.frozen), *((i, "network") for i in paused.silenced)]:
            self.event(PEER_DOWN, index, start, how="pause", back=True, by=by)
        self.event(FAULT, None, start, peers=sorted([*paused.frozen, *paused.silenced]))

    async def churn(self, pool: list[PeerInfo]) -> None:
        """Departures one at a time, `rate` of the live peers per minute spread evenly over
        `duration`; each returns `downtime` after it left."""
        assert isinstance(self.phase, ChurnPhase)
        phase = self.phase
        start = self.now()
        every = 60.0 / (phase.rate * len(self.work.peers()))
        eligible = {p.index for p in pool}
        departures = 0
        async with asyncio.TaskGroup() as returns:
            while (due := every * (departures + 0.5)) < phase.duration:
                await self.wait(due - (self.now() - start) / 1e9)
                candidates = [p for p in self.work.peers() if p.index in eligible]
                if not candidates:
                    break
                departures += 1
                leaving = self.rng.choice(candidates)
                returns.create_task(self._churn_one(leaving, self.rng.random() < phase.new))
            self.work.echo(f"[churn] {departures} peers left ({phase.how}) in {phase.duration:g}s; waiting for their return")
        self.event(FAULT, None, start, departures=departures, how=phase.how, rate=phase.rate)

    async def _churn_one(self, peer: PeerInfo, new: bool) -> None:
        """One departure and its return: the same peer, or (`new`) a new one in its slot."""
        assert isinstance(self.phase, ChurnPhase)
        how = self.phase.how
        left = self.now()
        machine = self.work.machine
        self._stash([peer])
        if how == "graceful":
            await machine.leave(peer.index, "left by a churn phase")
        else:
            await machine.crash([peer.index], "crashed by a churn phase")
        await self.wait(self.phase.downtime)
        await self._back(peer, left, how, new)

    def _stash(self, peers: list[PeerInfo]) -> None:
        """Before peers go down: what they fetched lived in their memory and is gone; what they
        published is their store, kept to be read again when they return."""
        for peer in peers:
            self.stores[peer.index] = self.work.published.pop(peer.index, [])
            self.work.holdings.pop(peer.index, None)

    async def _back(self, peer: PeerInfo, down_ns: int, how: str, new: bool = False) -> None:
        """Restarts a peer and joins it through the bootstrap path: `bootstrap.dials` live peers.
        `new`: a peer never seen before takes its slot; the old one's store is gone with it."""
        if new:
            self.stores.pop(peer.index, None)
        why = await self.work.machine.restart(peer.index, new)
        if why is not None:
            self.work.errors.append(LabErrorRecord(phase=self.report.phase, peer=peer.index, error=f"restart: {why}"))
            self.event(PEER_DOWN, peer.index, down_ns, how=how, back=False)
            return
        live = self.work.peers()
        back = next(p for p in live if p.index == peer.index)
        self.event(PEER_DOWN, peer.index, down_ns, how=how, back=True, peer_id=peer.peer_id, returned_as=back.peer_id)
        others = [p for p in live if p.index != peer.index]
        settings = self.work.topology.bootstrap
        dial = self.rng.sample(others, min(settings.dials, len(others)))
        args = {**self.work.join_args(dial, min(settings.min_routing_table, len(others))), "rejoin": True}
        await self.work.call(self.report, self.work.join_timeout, back, Call.BOOTSTRAP, args)
        await self._reload(back)

    async def _reload(self, peer: PeerInfo) -> None:
        """The returning peer's store, read again: its packages published anew (DHT records and
        provider entries), without an announcement, as a peer restarted from its disk would."""
        ids = self.stores.pop(peer.index, [])
        publish = next((p for p in self.work.topology.workload if isinstance(p, PublishPhase)), None)
        if not ids or publish is None:
            return
        packages = [p for p in self.work.catalogue if p["id"] in ids]
        args = {"packages": packages, "size": publish.body_size, "announce": False}
        if await self.work.call(self.report, publish.timeout, peer, Call.PUBLISH, args) is not None:
            self.work.published[peer.index] = ids
            self.work.holdings[peer.index] = set(ids)


RUNNERS: dict[type[FaultPhase], Callable[[Fault, list[PeerInfo]], Awaitable[None]]] = {
    PartitionPhase: Fault.partition, CrashPhase: Fault.crash, PausePhase: Fault.pause, ChurnPhase: Fault.churn,
}
