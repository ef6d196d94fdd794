"""The agent: one machine's part of a run (lab/local_machine.py) served in a process of its own.

`python -m lab.remote.agent` reads asks from stdin and writes answers and the machine's stream
(events, samples, progress lines, the live peers) to stdout, in frames (frames.py). It is
exec'd, never forked from its caller: under Ray a fork inside the worker kills actors, and the
machine's code forks (namespaces, the peers' fork server). Its life is its stdin: when the
coordinator (or the Ray actor relaying for it) goes, stdin ends, and the agent undoes what its
machine built, as a machine's exit does, before it exits. SIGTERM does the same.

One agent serves a sequence of runs (a calibration pilot, repeats): `probe`, then `open` a
machine, the `Machine` calls, `close` (its record), and `open` again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
import traceback
from contextlib import AsyncExitStack
from typing import Any

from lab import checkup, cleanup
from lab.local_machine import LocalMachine, probe
from lab.machine import Machine, MachineRecord, PeerInfo, Probe, Stream
from lab.network.fabric import Underlay
from lab.remote import clocks
from lab.remote.frames import BrokenFrame, decode, encode, read_frame
from lab.remote.messages import Answer, Ask, Said, Setup
from lab.topology import Topology

ALIVE_EVERY_S = 0.25  # how often the live peers are compared with what the coordinator was last told
# The Machine calls an agent serves: every abstract method but `alive` (pushed) and `record` (close's answer).
CALLS = frozenset(Machine.__abstractmethods__ - {"alive", "record", "__aexit__"} | {"join"})
# On a machine whose VXLAN end is not its own address in its own namespace (a test's stand-in
# machines on one kernel): the address, and the namespace it is in.
UNDERLAY_ENV, UNDERLAY_NETNS_ENV = "P2P_LAB_UNDERLAY", "P2P_LAB_UNDERLAY_NETNS"
MACHINE_ENV = "P2P_LAB_MACHINE"  # a machine's name for placement pins, where its host name will not do


class Agent:
    def __init__(self, send: Any) -> None:
        self.send = send
        self.machine: LocalMachine | None = None
        self.undo = AsyncExitStack()
        self.told: list[PeerInfo] = []
        self.clock_port: int | None = None  # where this machine's clock answers (clocks.serve)

    async def probe(self, topology: Topology) -> Probe:
        return await asyncio.to_thread(probe, topology)

    async def clock(self) -> int:
        """This machine's monotonic clock now: the coordinator's estimate of the offset to its own."""
        return time.monotonic_ns()

    async def name(self) -> str:
        """This machine's name, as a topology's placement pins it: P2P_LAB_MACHINE, else its host name."""
        return os.environ.get(MACHINE_ENV) or socket.gethostname()

    async def underlay(self, address: str) -> Underlay:
        """Where this machine's VXLAN end goes: `address` (the machine's, as the cluster knows it),
        unless the machine's environment says otherwise."""
        return Underlay(os.environ.get(UNDERLAY_NETNS_ENV) or None, os.environ.get(UNDERLAY_ENV) or address)

    async def clock_echo(self, end: Underlay) -> int:
        """This machine's clock, answering probes at its VXLAN end from now on (once per agent)."""
        if self.clock_port is None:
            self.clock_port = await asyncio.to_thread(clocks.serve, end.ip, end.netns)
        return self.clock_port

    async def clock_probes(self, end: Underlay, to: tuple[str, int]) -> list[clocks.Exchange]:
        return await asyncio.to_thread(clocks.probe, end.ip, end.netns, to)

    async def doctor(self) -> list[str]:
        return await asyncio.to_thread(checkup.doctor_lines, True)

    async def clean(self) -> list[str]:
        """Leftovers of killed runs removed; a run open here is left alone (its state file names this agent)."""
        return await asyncio.to_thread(checkup.clean_lines)

    async def open(self, setup: Setup) -> None:
        if self.machine is not None:
            raise RuntimeError("a machine is open already: close it first")
        stream = Stream(lambda e: self.send(Said("event", e)), lambda s: self.send(Said("sample", s)),
                        lambda line: self.send(Said("echo", line)))
        if removed := await asyncio.to_thread(cleanup.clean, lambda line: None):
            stream.echo(f"[cleanup] removed {removed} leftovers of killed runs on this machine")
        self._register(setup)
        setup.paths.logs.mkdir(parents=True, exist_ok=True)
        machine = LocalMachine(setup.run_id, setup.topology, setup.dilation, setup.probe, setup.paths, stream, setup.share)
        await self.undo.enter_async_context(machine)
        self.machine = machine
        watching = asyncio.create_task(self._watch_alive())
        self.undo.callback(watching.cancel)

    def _register(self, setup: Setup) -> None:
        """The run's state file on this machine, naming this agent, unless the coordinator runs
        here and wrote it: `lab clean` (and the next agent) leave a live run alone and remove a
        killed one's leftovers."""
        state = setup.run_id.state_file
        if state.exists():
            return
        paths = setup.paths
        setup.run_id.register(os.getpid(), paths.results, paths.control, paths.impairment if setup.probe.backend else None,
                              setup.probe.backend_reason, setup.share.machine if setup.share else None)
        self.undo.callback(state.unlink, missing_ok=True)

    async def close(self) -> MachineRecord | None:
        machine, self.machine = self.machine, None
        await self.undo.aclose()
        self.told = []
        return machine.record() if machine else None

    async def handle(self, ask: Ask) -> None:
        try:
            if ask.name in ("probe", "clock", "name", "underlay", "clock_echo", "clock_probes", "doctor", "clean", "open",
                            "close"):
                value = await getattr(self, ask.name)(*ask.args)
            elif ask.name in CALLS and self.machine is not None:
                value = await getattr(self.machine, ask.name)(*ask.args)
            else:
                raise RuntimeError(f"the agent has no call {ask.name!r} now")
            answer = Answer(ask.id, True, value)
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller, as a call's would
            traceback.print_exc(file=sys.stderr)
            answer = Answer(ask.id, False, exc)
        self._tell_alive()  # before the answer: what the call changed is known when it returns
        self.send(answer)

    def _tell_alive(self) -> None:
        alive = self.machine.alive() if self.machine else []
        if alive != self.told:
            self.told = alive
            self.send(Said("alive", alive))

    async def _watch_alive(self) -> None:
        while True:
            self._tell_alive()
            await asyncio.sleep(ALIVE_EVERY_S)


async def serve() -> None:
    """Asks from stdin until it ends; the answers and the stream on the frames' descriptor."""
    loop = asyncio.get_running_loop()
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not break the frames
    transport, protocol = await loop.connect_write_pipe(asyncio.Protocol, out)
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def send(message: Any) -> None:
        if transport.is_closing():
            return
        try:
            transport.write(encode(message))
        except Exception as exc:  # noqa: BLE001 - an answer that will not pickle still answers
            if isinstance(message, Answer):
                transport.write(encode(Answer(message.id, False, RuntimeError(f"{type(message.value).__name__}: {exc}"))))

    agent = Agent(send)
    main = asyncio.current_task()
    assert main is not None
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    calls: set[asyncio.Task[None]] = set()
    try:
        while (frame := await read_frame(reader)) is not None:
            ask = decode(frame)
            if not isinstance(ask, Ask):  # not the coordinator's: said, and left unanswered
                print(f"agent: ignored a frame that is not an ask ({type(ask).__name__})", file=sys.stderr)
                continue
            task = asyncio.create_task(agent.handle(ask))
            calls.add(task)
            task.add_done_callback(calls.discard)
    except (BrokenFrame, asyncio.CancelledError):
        pass
    finally:
        for task in calls:
            task.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        await agent.close()
        transport.close()


if __name__ == "__main__":
    asyncio.run(serve())
