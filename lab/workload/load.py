"""The load a fault phase runs while its fault comes and goes: what users feel.

Gets at `gets_per_s` and announcements every `announce_every` (the run's time), each from a
live peer drawn from the phase's stream: a get asks for a package the peer did not publish,
forgotten first so that it goes to the network; an announcement comes from a live peer that
published. Calls run concurrently; a get that takes longer than `load.timeout` fails (the peer
ends it, as its user gives up). A call to a peer the fault took down meanwhile is the fault's
doing, not the lab's, and is not an error of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
from collections.abc import Callable
from typing import Any, Protocol

from lab.machine import CallFailed, Machine, PeerInfo, PeerLost
from lab.manifest import LabErrorRecord, PhaseRecord
from lab.topology import FaultLoad, Topology
from nodes.protocol import Call, Dilation, Event


class Workload(Protocol):
    """What the fault phases use of the workload that runs them (lab/workload/phases.py)."""

    topology: Topology
    machine: Machine
    dilation: Dilation
    errors: list[LabErrorRecord]
    catalogue: list[dict[str, Any]]
    published: dict[int, list[str]]
    holdings: dict[int, set[str]]
    faults: int

    @property
    def echo(self) -> Callable[[str], None]: ...

    @property
    def event(self) -> Callable[[Event], None]: ...

    def peers(self) -> list[PeerInfo]: ...

    async def sleep(self, seconds: float) -> None: ...

    def join_args(self, dial: list[PeerInfo], floor: int) -> dict[str, Any]: ...

    @property
    def join_timeout(self) -> float: ...

    async def call(self, report: PhaseRecord, timeout: float, peer: PeerInfo, op: Call, args: dict[str, Any]) -> Any: ...


ANSWER_MARGIN = 2  # a peer ends its own get at load.timeout (a failed get); the call waits twice that for the answer


class Load:
    def __init__(self, work: Workload, load: FaultLoad, report: PhaseRecord, seed: float) -> None:
        self.work = work
        self.load = load
        self.report = report
        self.rng = random.Random(seed)
        self._stop = asyncio.Event()
        self.gets = 0
        self.announcements = 0
        self.unplaced = 0  # moments no live peer could take the call

    def stop(self) -> None:
        self._stop.set()

    def describe(self) -> str:
        skipped = f", {self.unplaced} skipped (no live peer could take them)" if self.unplaced else ""
        return f"{self.gets} gets and {self.announcements} announcements started{skipped}"

    async def run(self) -> None:
        """Starts calls on schedule until stopped, then waits for those still running."""
        load = self.load
        start = self.work.dilation.now_ns()
        every = {"get": 1 / load.gets_per_s if load.gets_per_s else math.inf, "announce": load.announce_every or math.inf}
        due = {kind: 0.0 for kind in every}
        messages = itertools.count()
        async with asyncio.TaskGroup() as calls:
            while not self._stop.is_set():
                kind = min(due, key=lambda k: due[k])
                if math.isinf(due[kind]):
                    await self._stop.wait()
                    break
                ahead = due[kind] - (self.work.dilation.now_ns() - start) / 1e9
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.work.dilation.real_s(max(0.0, ahead)))
                    break
                due[kind] += every[kind]
                started = self._get() if kind == "get" else self._announce(next(messages))
                if started is None:
                    self.unplaced += 1
                else:
                    calls.create_task(started)

    def _get(self) -> Any:
        live = self.work.peers()
        if not live or not self.work.catalogue:
            return None
        peer = self.rng.choice(live)
        own = set(self.work.published.get(peer.index, []))
        pool = [p["id"] for p in self.work.catalogue if p["id"] not in own]
        if not pool:
            return None
        package = self.rng.choice(pool)
        self.gets += 1
        return self._ask(peer, [(Call.FORGET, {"packages": [package], "queries": []}),
                                (Call.GET, {"ids": [package], "timeout_s": self.load.timeout})])

    def _announce(self, number: int) -> Any:
        publishers = [p for p in self.work.peers() if self.work.published.get(p.index)]
        if not publishers:
            return None
        peer = self.rng.choice(publishers)
        self.announcements += 1
        message = {"message_id": f"{self.report.phase} load:{self.work.faults}:{number}",
                   "package_id": self.work.published[peer.index][0]}
        return self._ask(peer, [(Call.ANNOUNCE, message)])

    async def _ask(self, peer: PeerInfo, calls: list[tuple[Call, dict[str, Any]]]) -> None:
        self.report.calls += 1
        try:
            for op, args in calls:
                await self.work.machine.call(peer.index, op, args, self.work.dilation.real_s(ANSWER_MARGIN * self.load.timeout))
        except (PeerLost, CallFailed) as exc:
            if peer.index in {p.index for p in self.work.machine.alive()}:  # not taken down by the fault
                self.report.failed += 1
                self.work.errors.append(LabErrorRecord(phase=self.report.phase, peer=peer.index, op=op, error=str(exc)))
