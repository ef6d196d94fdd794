"""A `Machine` whose part of the run is served by an agent (agent.py) in another process,
reached through a `Channel`: a child process of this one (`ChildChannel`), or an agent placed
on a machine of a Ray cluster (cluster.py).

Calls go out as asks and come back as answers, each awaited by its own future; the machine's
stream comes back on the same channel, in order, with the live peers pushed whenever they
change (`alive` is asked synchronously by the workload, so it is kept here). When the channel
ends before the machine was closed, the agent is gone: every call waiting fails with PeerLost
naming it, no peer is alive any more, and the run ends as it does when its peers are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Protocol

from lab.errors import SetupError
from lab.machine import LinksApplied, LinkWatch, Machine, MachineRecord, Paused, PeerInfo, PeerLost, Stream
from lab.manifest import LabErrorRecord
from lab.network.fabric import Crossing, Underlay
from lab.remote import clocks
from lab.remote.frames import BrokenFrame, decode, encode, read_frame
from lab.remote.messages import Answer, Ask, Said, Setup
from lab.topology import Link
from nodes.protocol import Call, NetemRequest, Segment


class Channel(Protocol):
    """Frames to an agent and from it."""

    name: str  # the agent, as an error names it

    async def send(self, frame: bytes) -> None: ...

    def frames(self) -> AsyncIterator[bytes]: ...

    async def close(self) -> None:
        """Ends the agent: it undoes what it still holds before it exits."""


class ChildChannel:
    """An agent exec'd as a child process of this one."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process, self.name = process, name

    @classmethod
    async def start(cls, name: str = "the agent") -> ChildChannel:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lab.remote.agent", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            limit=2**20, start_new_session=True)  # its own session: a signal to its caller's group is not its end
        return cls(process, name)

    async def send(self, frame: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(frame)
        await self.process.stdin.drain()

    async def frames(self) -> AsyncIterator[bytes]:
        assert self.process.stdout is not None
        while (frame := await read_frame(self.process.stdout)) is not None:
            yield frame

    async def close(self) -> None:
        """Ends its stdin and waits for it to exit (it undoes its machine first)."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        await self.process.wait()


class Agent:
    """The coordinator's end of one agent: asks answered by futures, the stream dispatched."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.ids = itertools.count()
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.stream: Stream | None = None  # where the open machine's records go
        self.alive: list[PeerInfo] = []
        self.last_alive: list[PeerInfo] = []  # the peers alive when the agent went
        self.gone: str | None = None  # why the agent is gone, once it is
        self.reading = asyncio.create_task(self._read())

    async def ask(self, name: str, *args: Any) -> Any:
        if self.gone is not None:
            raise PeerLost(self.gone)
        ask = Ask(next(self.ids), name, args)
        future = self.waiting[ask.id] = asyncio.get_running_loop().create_future()
        try:
            await self.channel.send(encode(ask))
            return await future
        except (ConnectionError, OSError) as exc:
            raise PeerLost(self.gone or f"{self.channel.name}: {exc}") from None
        finally:
            self.waiting.pop(ask.id, None)

    async def _read(self) -> None:
        why = f"{self.channel.name} ended"
        try:
            async for frame in self.channel.frames():
                self._dispatch(decode(frame))
        except BrokenFrame as exc:
            why = f"{self.channel.name}: {exc}"
        except Exception as exc:  # noqa: BLE001 - the channel's own failure (Ray: the actor or its node died)
            why = f"{self.channel.name} lost: {type(exc).__name__}: {exc}".splitlines()[0]
        self.gone, self.last_alive, self.alive = why, self.alive, []
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(PeerLost(why))

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, Answer):
            future = self.waiting.get(message.id)
            if future is not None and not future.done():
                if message.ok:
                    future.set_result(message.value)
                else:
                    future.set_exception(message.value)
        elif isinstance(message, Said):
            stream = self.stream
            if message.kind == "alive":
                self.alive = message.record
            elif stream is not None and message.kind == "event":
                stream.event(message.record)
            elif stream is not None and message.kind == "sample":
                stream.sample(message.record)
            elif stream is not None and message.kind == "echo":
                stream.echo(message.record)

    async def close(self) -> None:
        await self.channel.close()
        self.reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.reading


@dataclass(frozen=True)
class ClockOffset:
    """The agent machine's monotonic clock minus the coordinator's, within +-error_ns."""

    offset_ns: int
    error_ns: int


async def measure_offset(agent: Agent, asks: int = 20) -> ClockOffset:
    """Asks the agent's clock `asks` times and keeps the quickest answer: its reading was taken
    within half that round trip of the midpoint (Cristian's algorithm)."""
    best: ClockOffset | None = None
    for _ in range(asks):
        sent = time.monotonic_ns()
        theirs = int(await agent.ask("clock"))
        back = time.monotonic_ns()
        estimate = ClockOffset(theirs - (sent + back) // 2, (back - sent + 1) // 2)
        if best is None or estimate.error_ns < best.error_ns:
            best = estimate
    assert best is not None
    return best


class ClockWatch:
    """Reads other machines' clocks against a reference machine's by four-timestamp probes
    between their VXLAN ends (lab/remote/clocks.py): once before a run (the offsets their
    timelines are given), every `clocks.EVERY_S` during it (`watch`), and after it."""

    def __init__(self, reference: Agent, end: Underlay, others: list[tuple[str, Agent, Underlay]]) -> None:
        """`others`: each machine's name, agent and VXLAN end."""
        self.reference, self.end, self.others = reference, end, others
        self.ports: list[int] = []
        self.readings: list[list[clocks.Reading]] = [[] for _ in others]

    async def start(self) -> None:
        """Each other machine's clock answering, and the first reading of each (SetupError if none)."""
        self.ports = [await agent.ask("clock_echo", end) for _, agent, end in self.others]
        await self.read()
        for (name, _, end), port, readings in zip(self.others, self.ports, self.readings, strict=True):
            if not readings:
                raise SetupError(f"no clock probe from {self.end.ip} to {name} ({end.ip}, UDP {port}) came back: "
                                 "the machines must reach each other over UDP (docs/cluster.md)")

    async def read(self) -> None:
        for (_, _, end), port, readings in zip(self.others, self.ports, self.readings, strict=True):
            exchanges: list[clocks.Exchange] = await self.reference.ask("clock_probes", self.end, (end.ip, port))
            if (reading := clocks.Reading.of(exchanges)) is not None:
                readings.append(reading)

    async def watch(self) -> None:
        """Reads every `clocks.EVERY_S` until cancelled; a machine gone ends the readings, not the run."""
        with contextlib.suppress(PeerLost):
            while True:
                await asyncio.sleep(clocks.EVERY_S)
                await self.read()


def _shifted(segment: Segment, offset_ns: int) -> Segment:
    return replace(segment, real_ns=segment.real_ns + offset_ns)


class AgentMachine(Machine):
    """One run's machine on an agent: opened on entry, closed (its record kept) on exit. The
    run's instants (the dilation's segments, a switch's instant) are the coordinator's monotonic
    clock; they go out in the agent machine's, shifted by the measured offset, so the run's
    virtual time is one timeline on every machine (within the offset's error)."""

    def __init__(self, agent: Agent, setup: Setup, stream: Stream, offset_ns: int = 0) -> None:
        shifted = replace(setup.dilation, segments=[_shifted(s, offset_ns) for s in setup.dilation.segments])
        self.agent, self.setup, self.stream = agent, replace(setup, dilation=shifted), stream
        self.offset_ns = offset_ns
        self.kept: MachineRecord | None = None

    @property
    def gone(self) -> str | None:
        """Why the agent is gone (its peers with it), once it is."""
        return self.agent.gone

    async def __aenter__(self) -> AgentMachine:
        self.agent.stream = self.stream
        try:
            await self.agent.ask("open", self.setup)
        except PeerLost as exc:
            raise SetupError(f"cannot open the run's machine: {exc}") from None
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        try:
            self.kept = await asyncio.shield(self.agent.ask("close"))
        except PeerLost as exc:
            self.stream.echo(f"[cleanup] {exc}: what the run built there is removed by the next agent to start there, "
                             "or `lab clean` on that machine")
        finally:
            self.agent.stream = None

    async def build(self) -> int:
        return int(await self.agent.ask("build"))

    async def join(self, crossings: list[Crossing]) -> None:
        await self.agent.ask("join", crossings)

    async def shape(self, verify: bool) -> LinksApplied | None:
        applied: LinksApplied | None = await self.agent.ask("shape", verify)
        return applied

    async def echo(self, peer: int, seconds: float) -> int:
        return int(await self.agent.ask("echo", peer, seconds))

    async def round_trips(self, peer: int, ip: str, port: int) -> list[float]:
        times: list[float] = await self.agent.ask("round_trips", peer, ip, port)
        return times

    async def start_peers(self) -> list[LabErrorRecord]:
        failed: list[LabErrorRecord] = await self.agent.ask("start_peers")
        return failed

    def alive(self) -> list[PeerInfo]:
        return self.agent.alive

    async def call(self, peer: int, op: Call, args: dict[str, Any], timeout_s: float) -> Any:
        return await self.agent.ask("call", peer, op, args, timeout_s)

    async def impair(self, groups: list[str], link: Link, source: str, duration_s: float | None) -> str:
        return str(await self.agent.ask("impair", groups, link, source, duration_s))

    async def netem(self, request: NetemRequest) -> dict[str, Any]:
        reply: dict[str, Any] = await self.agent.ask("netem", request)
        return reply

    async def cut(self, side: list[int], both_ways: bool) -> None:
        await self.agent.ask("cut", side, both_ways)

    async def heal(self) -> None:
        await self._unless_gone(None, "heal")

    async def crash(self, peers: list[int], why: str) -> None:
        await self.agent.ask("crash", peers, why)

    async def leave(self, peer: int, why: str) -> None:
        await self.agent.ask("leave", peer, why)

    async def pause(self, peers: list[int]) -> Paused:
        paused: Paused = await self.agent.ask("pause", peers)
        return paused

    async def resume(self) -> None:
        await self._unless_gone(None, "resume")

    async def restart(self, peer: int, new_identity: bool = False) -> str | None:
        why: str | None = await self.agent.ask("restart", peer, new_identity)
        return why

    async def sample(self) -> None:
        await self._unless_gone(None, "sample")

    async def watch(self) -> LinkWatch:
        watched: LinkWatch = await self._unless_gone(LinkWatch(), "watch")
        return watched

    async def retime(self, segment: Segment) -> list[LabErrorRecord]:
        errors: list[LabErrorRecord] = await self._unless_gone([], "retime", _shifted(segment, self.offset_ns))
        return errors

    async def _unless_gone(self, default: Any, name: str, *args: Any) -> Any:
        """A call of the whole machine: once the agent is gone its peers are lost (the run sees
        none alive and ends), and what the machine did is `default` (nothing)."""
        try:
            return await self.agent.ask(name, *args)
        except PeerLost:
            if self.agent.gone is None:
                raise
            return default

    def record(self) -> MachineRecord:
        if self.kept is not None:
            return self.kept
        why = self.agent.gone or "the agent did not report its peers"
        lost = [LabErrorRecord(phase="run", peer=p.index, error=why) for p in self.agent.last_alive]
        return MachineRecord([], lost or [LabErrorRecord(phase="run", error=why)], None)
