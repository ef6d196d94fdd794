"""Workload phases, run in the topology's order with a barrier between them.

The plan (who publishes what, who fetches what, who searches for what) is drawn from the
topology seed, one random stream per purpose, so the same seed gives the same schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import psutil

from lab.machine import CallFailed, Machine, PeerInfo, PeerLost
from lab.manifest import LabErrorRecord, PhaseRecord
from lab.metric_names import RERUN_PHASE
from lab.peers.collector import busy_between
from lab.topology import (
    BootstrapPhase,
    ConcurrentSearchPhase,
    FaultPhase,
    GossipPhase,
    IdlePhase,
    ImpairPhase,
    LookupPhase,
    Phase,
    PublishPhase,
    SearchPhase,
    Topology,
)
from lab.workload.barrier import POLL_S, Deliveries
from lab.workload.catalogue import make_catalogue, query_for
from lab.workload.faults import Fault
from lab.workload.kademlia import converged_tables
from lab.workload.ticker import Ticker
from nodes.protocol import RETIME_NOTICE_NS, Call, Dilation, Event, Segment


def cpu_busy_since(before: Any) -> float:
    """Busy share of all CPUs since `before` (a psutil.cpu_times()): near 100% means the
    phase's latencies include waiting for a CPU, not only the protocol."""
    return busy_between(before, psutil.cpu_times())


def _own_cpu_seconds() -> float:
    """CPU time of this process, all threads: the orchestrator and its collector thread."""
    times = psutil.Process().cpu_times()
    return times.user + times.system


RERUN_ORDER = ("gossip", "lookup", "search", "bootstrap")  # joins last: a peer that joins again changes the network
# The 2N check's stretches of each kind, at the phase's dilation (False) or twice it (True): a
# warm-up at the phase's (None: not counted), then ABBA, so that what the network learns from the
# same operations done again (caches, reputations) is learnt before anything counts, and what it
# still learns falls on both sides alike.
STRETCHES = (None, False, True, True, False)
REST_MARGIN_S = 1.0  # the least a switch's own work is expected to take (the machine's seconds after its instant)
REST_FIT = 1.5  # a rest's factor leaves the switch down's work and the switch back's notice this share of it
REST_QUIET_CORES = 0.2  # a rest starts once the peers spend less CPU over a second: a switch's work is quick then


def rerun_phases(topology: Topology) -> list[tuple[int, Phase]]:
    """The 2N check's phases: for each kind of phase a latency SLA's metric is measured in (the
    last such phase, by number), in RERUN_ORDER; none with `fidelity.rerun: 0`."""
    if not topology.fidelity.rerun:
        return []
    kinds = {RERUN_PHASE[sla.metric] for sla in topology.slas if sla.metric in RERUN_PHASE and sla.stat != "success_ratio"}
    last = {phase.phase: (number, phase) for number, phase in enumerate(topology.workload, 1)}
    return [last[kind] for kind in RERUN_ORDER if kind in kinds and kind in last]


@dataclass
class Workload:
    """The phases of one run, driven through the machine that holds its peers. Every wait a phase
    states (timeouts, settle bounds, intervals, durations) is in the run's virtual time and is
    turned into the machine's time by the run's `Dilation` when it starts."""

    topology: Topology
    machine: Machine
    echo: Callable[[str], None]
    deliveries: Deliveries  # fed every event of the run by the orchestrator
    dilation: Dilation
    event: Callable[[Event], None]  # the orchestrator's record of an event (a fault's window, a peer down)
    errors: list[LabErrorRecord] = field(default_factory=list)  # failed calls and what a phase could not do
    catalogue: list[dict[str, Any]] = field(default_factory=list)
    published: dict[int, list[str]] = field(default_factory=dict)  # peer index -> its own packages
    holdings: dict[int, set[str]] = field(default_factory=dict)  # published and planned to fetch
    fetched: list[tuple[int, str]] = field(default_factory=list)  # (peer, package) of the lookup phases' gets
    searched: list[tuple[int, str]] = field(default_factory=list)  # (peer, query) of the search phases' remote queries
    announced: Iterator[int] = field(default_factory=itertools.count)  # numbers messages: one id is one message
    faults: int = 0  # fault phases run so far: each draws from a stream of its own
    retimed: asyncio.Event = field(default_factory=asyncio.Event)  # set when the factor changes within a phase
    switch: Callable[[float, str], Awaitable[Segment]] | None = None  # changes the factor within a phase (fixed factors)
    switch_cost_s: float = REST_MARGIN_S  # the longest a rest's switch took after its instant (the machine's seconds)
    peers_cpu_s: Callable[[], Awaitable[float]] | None = None  # the peers' CPU-seconds so far, sampled when called

    @cached_property
    def _join_position(self) -> dict[int, int]:
        """Each peer index's place in the topology's join order, which a run never changes."""
        return {index: i for i, index in enumerate(self.topology.join_order())}

    def peers(self) -> list[PeerInfo]:
        """The live peers in the topology's join order: one peer from each host process in turn,
        so a phase's concurrent calls land in different processes, not on one event loop."""
        return sorted(self.machine.alive(), key=lambda p: self._join_position[p.index])

    async def run(self, phase: Phase) -> PhaseRecord:
        if isinstance(phase, FaultPhase):
            return await self._measured(phase.phase, lambda p, report: Fault(self, p, report).run(), phase)
        return await self._measured(phase.phase, getattr(self, f"_{phase.phase}"), phase)

    async def sleep(self, seconds: float) -> None:
        """`seconds` of the run's time, however often the factor changes meanwhile."""
        await self.sleep_until(self._now_s() + seconds)

    def _now_s(self) -> float:
        return self.dilation.now_ns() / 1e9

    async def sleep_until(self, deadline: float) -> None:
        """Until the run's clock reads `deadline` seconds, however often the factor changes meanwhile."""
        while True:
            self.retimed.clear()  # before reading the segments: a switch announced after it wakes us
            left = self.dilation.sleep_s(deadline, time.monotonic_ns())
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.retimed.wait(), left)

    @property
    def join_timeout(self) -> float:
        """A join's timeout: the bootstrap phase's (always the first)."""
        first = self.topology.workload[0]
        assert isinstance(first, BootstrapPhase), "the topology checks that the first phase is bootstrap"
        return first.timeout

    async def rerun(self, phase: Phase, count: int) -> PhaseRecord:
        """The 2N check's operations: about `count` more of the phase's kind (joins, the same gets
        and remote searches again, announcements), on the same network, at whatever dilation is in
        force; the same ones at every call."""
        return await self._measured(f"{phase.phase} (2N)", getattr(self, f"_again_{phase.phase}"), phase, count)

    async def _measured(self, name: str, runner: Callable[..., Awaitable[None]], phase: Phase, *args: Any) -> PhaseRecord:
        report = PhaseRecord(phase=name)
        started, cpu_before, lab_before = time.monotonic(), psutil.cpu_times(), _own_cpu_seconds()
        await runner(phase, report, *args)
        report.seconds = time.monotonic() - started
        report.cpu_busy = cpu_busy_since(cpu_before)
        report.lab_cpu = (_own_cpu_seconds() - lab_before) / (report.seconds * (psutil.cpu_count() or 1))
        return report

    async def call(self, report: PhaseRecord, timeout: float, peer: PeerInfo, op: Call, args: dict[str, Any]) -> Any:
        """One call; its timeout (virtual seconds) starts when it is sent. A failure is kept in the
        report with the peer and its cause, and the call's result is None."""
        report.calls += 1
        try:
            return await self.machine.call(peer.index, op, args, self.dilation.real_bound_s(timeout))
        except (PeerLost, CallFailed) as exc:
            report.failed += 1
            self.errors.append(LabErrorRecord(phase=report.phase, peer=peer.index, op=op, error=str(exc)))
            return None

    async def _calls(
        self,
        report: PhaseRecord,
        timeout: float,
        calls: list[tuple[PeerInfo, Call, dict[str, Any]]],
        concurrency: int | None = None,
    ) -> list[Any]:
        """Calls, at most `concurrency` at once (all if None), with a progress line while pending."""
        limit = asyncio.Semaphore(concurrency or max(len(calls), 1))

        async def one(peer: PeerInfo, op: Call, args: dict[str, Any], ticker: Ticker) -> Any:
            async with limit:
                try:
                    return await self.call(report, timeout, peer, op, args)
                finally:
                    ticker.done += 1

        async with Ticker(self.echo, f"{report.phase} calls", len(calls)) as ticker:
            return await asyncio.gather(*(one(peer, op, args, ticker) for peer, op, args in calls))

    # -- phases ------------------------------------------------------------------------------

    async def _bootstrap(self, phase: BootstrapPhase, report: PhaseRecord) -> None:
        """Cold: bootstrap peers join each other first, then the others join. Warm: every peer but
        a sample starts from a converged routing table and a few connections, then the sample
        joins cold into that network. Joins run `concurrency` at a time.

        A joining peer can only know the peers that finished joining before it started, so its
        routing-table floor is min(min_routing_table, peers already joined).
        """
        settings = self.topology.bootstrap
        peers = self.peers()
        rng = self.topology.rng("bootstrap")
        if settings.mode == "warm":
            sample = rng.sample(peers, settings.sample)
            warm = [p for p in peers if p not in sample]
            await self._warm(phase, report, warm, rng)
            await self._joins(phase, report, sample, warm, rng)
            return
        seeds, joiners = peers[: settings.peers], peers[settings.peers :]
        dial_plans = {peer.index: rng.sample(seeds, min(settings.dials, len(seeds))) for peer in joiners}
        for i, peer in enumerate(seeds):
            floor = min(settings.min_routing_table, i)
            await self.call(report, phase.timeout, peer, Call.BOOTSTRAP, self.join_args(seeds[:i], floor))
        await self._joins(phase, report, joiners, seeds, rng, dial_plans)

    async def _warm(self, phase: BootstrapPhase, report: PhaseRecord, warm: list[PeerInfo], rng: random.Random) -> None:
        """Each warm peer gets its converged routing table (lab/workload/kademlia.py) and dials a
        few random warm peers, so GossipSub has connections to build its meshes on."""
        tables = converged_tables({p.index: p.peer_id for p in warm}, rng)
        by_index = {p.index: p for p in warm}
        dials = min(self.topology.bootstrap.warm_dials, len(warm) - 1)
        calls: list[tuple[PeerInfo, Call, dict[str, Any]]] = []
        for peer in warm:
            others = rng.sample(warm, dials + 1)
            dial = [p for p in others if p is not peer][:dials]
            table = [by_index[i].dial_address for i in tables[peer.index]]
            calls.append((peer, Call.WARM, {"table": table, "dial": [p.dial_address for p in dial]}))
        await self._calls(report, phase.timeout, calls, self.topology.bootstrap.warm_concurrency)
        sizes = sorted(len(tables[p.index]) for p in warm)
        self.echo(f"  warm start: {len(warm)} peers from converged routing tables (median {sizes[len(sizes) // 2]} peers), "
                  f"{dials} dials each")

    async def _joins(self, phase: BootstrapPhase, report: PhaseRecord, joiners: list[PeerInfo],
                     seeds: list[PeerInfo], rng: random.Random,
                     dial_plans: dict[int, list[PeerInfo]] | None = None) -> None:
        """Cold joins into the network `seeds` already form, `concurrency` at a time."""
        settings = self.topology.bootstrap
        timeout = phase.timeout
        if dial_plans is None:
            dial_plans = {peer.index: rng.sample(seeds, min(settings.dials, len(seeds))) for peer in joiners}
        joined = len(seeds)
        limit = asyncio.Semaphore(phase.concurrency)

        async def join(peer: PeerInfo, ticker: Ticker) -> None:
            nonlocal joined
            async with limit:
                floor = min(settings.min_routing_table, joined)
                await self.call(report, timeout, peer, Call.BOOTSTRAP, self.join_args(dial_plans[peer.index], floor))
                joined += 1
                ticker.done += 1

        async with Ticker(self.echo, "peers joined", len(joiners)) as ticker:
            await asyncio.gather(*(join(peer, ticker) for peer in joiners))

    @staticmethod
    def join_args(dial: list[PeerInfo], floor: int) -> dict[str, Any]:
        return {"dial": [p.dial_address for p in dial], "min_routing_table": floor}

    async def _publish(self, phase: PublishPhase, report: PhaseRecord) -> None:
        rng = self.topology.rng("publish")
        self.catalogue = make_catalogue(self.topology.rng("catalogue"), phase.packages)
        peers = self.peers()
        order = list(peers)
        rng.shuffle(order)
        plan: dict[int, list[dict[str, Any]]] = {}
        for number, package in enumerate(self.catalogue):
            publisher = order[number % len(order)]
            plan.setdefault(publisher.index, []).append(package)
            self.published.setdefault(publisher.index, []).append(package["id"])
            self.holdings.setdefault(publisher.index, set()).add(package["id"])
        by_index = {p.index: p for p in peers}
        first = self.deliveries.mark()
        await self._calls(
            report,
            phase.timeout,
            [(by_index[i], Call.PUBLISH, {"packages": packages, "size": phase.body_size, "announce": phase.announce})
             for i, packages in sorted(plan.items())],
            phase.concurrency,
        )
        await self._settle(first, phase.settle)

    async def _settle(self, first: int, settle: float) -> None:
        """The phase's barrier: its announcements reach every live peer (or `settle` seconds run out)."""
        await self.deliveries.settle(first, self._alive, settle, self.echo, lambda: self.dilation.now_ns() / 1e9)

    def _alive(self) -> set[int]:
        """Re-read on every poll of a wait: peers may be lost meanwhile."""
        return {p.index for p in self.machine.alive()}

    def _not_held(self, peer: PeerInfo) -> list[dict[str, Any]]:
        held = self.holdings.get(peer.index, set())
        return [p for p in self.catalogue if p["id"] not in held]

    def _taking_part(self, peers: int | None, purpose: str) -> list[PeerInfo]:
        """A phase's `peers` of the live peers, drawn from the seed (its own stream), in join order."""
        live = self.peers()
        if peers is None or peers >= len(live):
            return live
        chosen = {p.index for p in self.topology.rng(f"{purpose} peers").sample(live, peers)}
        return [p for p in live if p.index in chosen]

    async def _lookup(self, phase: LookupPhase, report: PhaseRecord) -> None:
        rng = self.topology.rng("lookup")
        calls = []
        for peer in self._taking_part(phase.peers, "lookup"):
            candidates = self._not_held(peer)
            chosen = [p["id"] for p in rng.sample(candidates, min(phase.per_peer, len(candidates)))]
            self.holdings.setdefault(peer.index, set()).update(chosen)
            self.fetched += [(peer.index, package) for package in chosen]
            calls.append((peer, Call.GET, {"ids": chosen}))
        await self._calls(report, phase.timeout, calls, phase.concurrency)

    async def _search(self, phase: SearchPhase, report: PhaseRecord) -> None:
        """Each query runs twice: the first goes local or remote, the repeat hits the cache."""
        rng = self.topology.rng("search")
        calls = []
        for peer in self._taking_part(phase.peers, "search"):
            held = [p for p in self.catalogue if p["id"] in self.holdings.get(peer.index, set())]
            remote = self._not_held(peer)
            queries = []
            for number in range(phase.queries_per_peer):
                # Alternate: a package held elsewhere (remote search), then one held here (local index).
                pool = (remote, held)[number % 2] or held or remote
                if pool:
                    queries.append(query_for(rng.choice(pool)))
                    self.searched += [(peer.index, queries[-1])] if pool is remote else []
            calls.append((peer, Call.SEARCH, {"queries": queries + queries, "fanout": phase.fanout}))
        await self._calls(report, phase.timeout, calls, phase.concurrency)

    async def _gossip(self, phase: GossipPhase, report: PhaseRecord, purpose: str = "gossip") -> None:
        rng = self.topology.rng(purpose)
        publishers = [p for p in self.peers() if self.published.get(p.index)]
        first = last = self.deliveries.mark()
        next_s = 0.0
        for sent in range(phase.announcements):
            number = next(self.announced)
            if not publishers:
                self.errors.append(LabErrorRecord(phase=report.phase, error="no peer holds a package to announce"))
                break
            peer = rng.choice(publishers)
            package = self.published[peer.index][0]
            announcement = {"message_id": f"{purpose}:{number}", "package_id": package}
            if sent:  # the interval lies between announcements, not after the last
                await self._between(phase, last, next_s)
            last = self.deliveries.mark()
            await self.call(report, phase.timeout, peer, Call.ANNOUNCE, announcement)
            next_s = self._now_s() + phase.interval
        await self._settle(first, phase.settle)

    async def _between(self, phase: GossipPhase, last: int, until_s: float) -> None:
        """The wait until the next announcement. A phase with its own, higher factor (a message's
        spread needs it) rests: once the last message has reached every live peer and the machine
        has quieted, the rest of the interval passes at the network's factor, or at the lowest one
        under which the switch down's work (as long as the longest so far) and the switch back's
        notice (RETIME_NOTICE_NS) fit; the phase's factor is back twice that work's time before
        the send. At 1000 peers a 0.5 s interval at 400 is otherwise 200 s of a machine with
        nothing to do."""
        high = self.dilation.segments[-1].factor
        if phase.rest and self.switch is not None and self.peers_cpu_s is not None and high > self.dilation.network:
            while self.deliveries.missing(last, self._alive()) and self._now_s() < until_s:
                await asyncio.sleep(POLL_S)
            await self._quiet(until_s)
            notice_s, cost_s = RETIME_NOTICE_NS / 1e9, self.switch_cost_s
            margin_s = 2 * cost_s / high  # the switch back's work, at the phase's factor, before the send
            rest_s = until_s - margin_s - self._now_s() - notice_s / high  # from the switch down's instant
            low = max(self.dilation.network, REST_FIT * (cost_s + notice_s) / rest_s) if rest_s > 0 else math.inf
            if low <= high / 2:  # else two switches would save little
                await self._switch(low, "rest between announcements")
                await self.sleep_until(until_s - margin_s - notice_s / low)
                await self._switch(high, "the next announcement")
        await self.sleep_until(until_s)

    async def _quiet(self, until_s: float) -> None:
        """Until the peers spend under REST_QUIET_CORES over a second of the machine's time, or the
        run's clock reads `until_s`: a message's spread leaves work behind its last delivery
        (duplicates, IDONTWANT), beside which a switch's own work takes seconds, not tenths of one.
        The peers' CPU, not the machine's: what else the machine runs does not stop a rest."""
        assert self.peers_cpu_s is not None
        spent, at = await self.peers_cpu_s(), time.monotonic()
        while self._now_s() < until_s:
            await asyncio.sleep(1)
            before, started = spent, at  # one sample ends a second and starts the next
            spent, at = await self.peers_cpu_s(), time.monotonic()
            if (spent - before) / (at - started) < REST_QUIET_CORES:
                return

    async def _switch(self, factor: float, why: str) -> None:
        """A rest's switch, and how long its work took after its instant (the next rest plans for it)."""
        assert self.switch is not None
        segment = await self.switch(factor, why)
        self.switch_cost_s = max(self.switch_cost_s, (time.monotonic_ns() - segment.real_ns) / 1e9)

    # -- the 2N check's operations: the same calls again, drawn from streams of their own ------

    async def _again_bootstrap(self, phase: BootstrapPhase, report: PhaseRecord, count: int) -> None:
        """Joins again: peers (not the bootstrap peers) leave the network, then join it cold,
        `concurrency` at a time, in rounds of distinct peers until `count` joins were made."""
        settings = self.topology.bootstrap
        rng = self.topology.rng("rerun bootstrap")
        live = self.peers()
        seeds = live[: settings.peers] if settings.mode == "cold" else []
        movers = [p for p in live if p not in seeds]
        limit = asyncio.Semaphore(phase.concurrency)

        async def rejoin(peer: PeerInfo, stayed: list[PeerInfo], ticker: Ticker) -> None:
            async with limit:
                await self.call(report, phase.timeout, peer, Call.LEAVE, {})
                dial = rng.sample(stayed, min(settings.dials, len(stayed)))
                await self.call(report, phase.timeout, peer, Call.BOOTSTRAP,
                                 self.join_args(dial, min(settings.min_routing_table, len(stayed))))
                ticker.done += 1

        async with Ticker(self.echo, "peers joined again", count) as ticker:
            while ticker.done < count and movers:
                batch = rng.sample(movers, min(len(movers), count - ticker.done, max(1, len(live) // 2)))
                stayed = [p for p in live if p not in batch]
                await asyncio.gather(*(rejoin(peer, stayed, ticker) for peer in batch))

    async def _again_lookup(self, phase: LookupPhase, report: PhaseRecord, count: int) -> None:
        """The same gets again: a sample of the lookup phases' (peer, package) pairs, each peer
        forgetting the packages and closing its connections first, so that every get goes to the
        network and dials what it needs, as a get in a large network does."""
        await self._again(phase, report, count, self.fetched, Call.GET,
                          lambda ids: ({"packages": ids, "queries": [], "disconnect": True}, {"ids": ids}))

    async def _again_search(self, phase: SearchPhase, report: PhaseRecord, count: int) -> None:
        """The same remote searches again, each peer forgetting its cached results first."""
        await self._again(phase, report, count, self.searched, Call.SEARCH,
                          lambda queries: ({"packages": [], "queries": queries}, {"queries": queries, "fanout": phase.fanout}))

    async def _again(self, phase: LookupPhase | SearchPhase, report: PhaseRecord, count: int, done: list[tuple[int, str]],
                     op: Call, args: Callable[[list[str]], tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """A sample (the same for every stretch) of the (peer, item) pairs a phase did, again:
        each peer forgets its items, then asks for them, `concurrency` peers at a time."""
        live = {p.index: p for p in self.peers()}
        sample = self.topology.rng(f"rerun {phase.phase}").sample(done, min(count, len(done)))
        by_peer: dict[int, list[str]] = {}
        for peer, item in sample:
            if peer in live:
                by_peer.setdefault(peer, []).append(item)
        limit = asyncio.Semaphore(phase.concurrency)

        async def again(peer: PeerInfo, items: list[str]) -> None:
            forget, ask = args(items)
            async with limit:
                await self.call(report, phase.timeout, peer, Call.FORGET, forget)
                await self.call(report, phase.timeout, peer, op, ask)

        await asyncio.gather(*(again(live[peer], items) for peer, items in by_peer.items()))

    async def _again_gossip(self, phase: GossipPhase, report: PhaseRecord, count: int) -> None:
        """Announcements one at a time, each once it reached every peer (or its settle bound ran
        out), about `count` deliveries and at least `fidelity.messages` messages: a message's
        deliveries share its path through the mesh, so the 2N check counts messages (recheck.py)."""
        receivers = max(1, len(self.peers()) - 1)
        one = phase.model_copy(update={"announcements": 1})
        for number in range(max(self.topology.fidelity.messages, math.ceil(count / receivers))):
            await self._gossip(one, report, f"rerun gossip {number}")

    async def _concurrent_search(self, phase: ConcurrentSearchPhase, report: PhaseRecord) -> None:
        rng = self.topology.rng("concurrent_search")
        searchers = rng.sample(self.peers(), min(phase.peers, len(self.peers())))
        for level in phase.levels:
            calls = []
            for peer in searchers:
                pool = self._not_held(peer) or self.catalogue
                queries = [query_for(rng.choice(pool)) for _ in range(level)]
                calls.append((peer, Call.CONCURRENT_SEARCH, {"queries": queries, "fanout": phase.fanout}))
            await self._calls(report, phase.timeout, calls)

    async def _idle(self, phase: IdlePhase, report: PhaseRecord) -> None:
        """The network at rest: only the collector and the peers' own timers run."""
        await self.sleep(phase.duration)

    async def _impair(self, phase: ImpairPhase, report: PhaseRecord) -> None:
        """Changes the groups' links now; with a duration, restores them later while the next
        phases run. Both moments are events with timestamps."""
        duration = self.dilation.real_s(phase.duration) if phase.duration is not None else None
        now = await self.machine.impair(phase.groups, phase.link, f"workload phase impair {phase.groups}", duration)
        report.calls += 1
        for_how_long = f" for {phase.duration:g}s" if phase.duration is not None else ""
        self.echo(f"[impair] {now}{for_how_long}")
