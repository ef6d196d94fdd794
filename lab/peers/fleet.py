"""The peer processes of one run and the orchestrator's end of the control plane.

Peers live in host processes (`python -m nodes.peer`, one per host, `network.peers_per_host`
peers each) that enter their host's namespace. Each peer dials the run's Unix socket, says
hello, and then answers calls. A peer that exits, closes its socket, or misses a deadline is
marked lost with its exit status and stderr tail; calls to it fail at once, so a dead peer
never makes a run hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.machine import CallFailed, PeerLost
from lab.network.fabric import PeerSlot
from lab.peers.cgroup import PeerCgroups
from lab.peers.forks import ForkedProcess, ForkServer
from lab.runid import ENV_VAR
from lab.sockets import owner_only_server
from nodes import wire
from nodes.protocol import LAG_WINDOW_S, Call, Dilation, Event, PeerSettings

EventSink = Callable[[Event], None]
STDERR_TAIL_LINES = 12


@dataclass
class PeerProcess:
    slot: PeerSlot
    log_path: Path
    process: asyncio.subprocess.Process | ForkedProcess | None = None
    writer: asyncio.StreamWriter | None = None
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    lost: str | None = None
    down: str | None = None  # why the workload took it down (a fault phase): gone on purpose, not lost
    final: dict[str, Any] | None = None  # what it held when asked to shut down (routing table, connections, ...)
    pending: dict[int, asyncio.Future[Any]] = field(default_factory=dict)
    hello: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def index(self) -> int:
        return self.slot.index

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def dial_address(self) -> str:
        """The peer's IPv4 multiaddr with its /p2p/ id, as other peers dial it."""
        return next(a for a in self.addrs if a.startswith("/ip4/"))

    def stderr_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-STDERR_TAIL_LINES:])

    def mark_lost(self, reason: str) -> None:
        if self.lost is None:
            self.lost = self.down or reason
        for future in self.pending.values():
            if not future.done():
                future.set_exception(PeerLost(f"peer {self.index}: {self.lost}"))
        self.pending.clear()


HANG_MIN_S = 30.0  # machine seconds a started host process may stay silent at any dilation
HANG_WINDOWS = 8  # loop-lag windows (LAG_WINDOW_S of the run's time each) a live host process cannot miss


def hang_limit_s(factor: float) -> float:
    """How long a started host process may send nothing before it is declared hung: it reports its
    loop lag every LAG_WINDOW_S of the run's time (LAG_WINDOW_S x factor of the machine's), so
    missing HANG_WINDOWS of them in a row, and at least HANG_MIN_S, means it is stopped or its
    event loop is blocked."""
    return max(HANG_MIN_S, HANG_WINDOWS * LAG_WINDOW_S * factor)


class Fleet:
    """Spawns, drives and stops the peer processes of one run."""

    def __init__(self, run_id: str, control_path: Path, log_dir: Path, on_event: EventSink, hosting: str = "spawn",
                 cgroups: PeerCgroups | None = None, dilation: Dilation | None = None) -> None:
        """`hosting`: "spawn" starts a fresh interpreter per peer; "fork" forks peers from a
        fork server that imported py-libp2p once (docs/design.md, Peers); `cgroups`: where every
        host process is confined (network.cpu_limit, network.cpu: core); `dilation`: the run's,
        which stretches how long a host process may stay silent (hang_limit_s)."""
        self.run_id = run_id
        self.dilation = dilation
        self._heard: dict[int, int] = {}  # host process pid -> when it last sent anything (monotonic ns)
        self.paused: set[int] = set()  # host processes a fault phase froze: silent on purpose
        self._restarts = itertools.count(1)
        self.cgroups = cgroups
        self.forks = ForkServer(self._environment()) if hosting == "fork" else None
        self.control_path = control_path
        self.log_dir = log_dir
        self.on_event = on_event
        self._peers: dict[int, PeerProcess] = {}
        self._stopping = False
        self._server: asyncio.AbstractServer | None = None
        self._call_ids = itertools.count(1)
        self._watchers: list[asyncio.Task[None]] = []

    def _environment(self) -> dict[str, str]:
        return {**os.environ, ENV_VAR: self.run_id, "PYTHONUNBUFFERED": "1"}

    async def open(self) -> None:
        self._server = await owner_only_server(self._serve, self.control_path, wire.MAX_LINE)
        self._watchers.append(asyncio.create_task(self._watch_silence()))
        if self.forks is not None:
            await self.forks.open()
            if self.cgroups is not None and self.forks.process is not None:  # before it forks: hosts are born in it
                self.cgroups.add_server(self.forks.process.pid)

    @property
    def peers(self) -> list[PeerProcess]:
        return [self._peers[index] for index in sorted(self._peers)]

    def peer(self, index: int) -> PeerProcess:
        return self._peers[index]

    @property
    def alive(self) -> list[PeerProcess]:
        return [p for p in self.peers if p.lost is None]

    # -- starting --------------------------------------------------------------------------

    def processes(self) -> dict[int, list[int]]:
        """{pid: indices of its live peers}: what the collector samples."""
        hosted: dict[int, list[int]] = {}
        for peer in self.alive:
            if peer.pid is not None:
                hosted.setdefault(peer.pid, []).append(peer.index)
        return hosted

    async def start_host(self, slots: list[PeerSlot], settings: list[PeerSettings], timeout: float,
                         fresh: bool = False, restart: bool = False) -> dict[int, str]:
        """Starts one host process for `slots` (each peer with its settings) and waits until each
        peer listens; returns {peer index: why} for the peers that did not start (they take no
        part in the run). `fresh`: a new interpreter even where hosts are forked (the deployed peer);
        `restart`: peers a fault phase took down start again, in a process of their own, in their
        host's namespace on their own address."""
        name = f"host-{slots[0].host:04d}" + (f"-restart-{next(self._restarts)}" if restart else "")
        log_path = self.log_dir / f"{name}.stderr"
        peers = [PeerProcess(slot, log_path) for slot in slots]
        for peer in peers:
            self._peers[peer.index] = peer
        indices = [slot.index for slot in slots]
        netns = slots[0].netns
        process: asyncio.subprocess.Process | ForkedProcess
        if self.forks is not None and not fresh:
            process = await self.forks.spawn(indices, self.control_path, netns, log_path)
        else:
            command = [sys.executable, "-m", "nodes.peer", "--index", *map(str, indices), "--control", str(self.control_path)]
            if netns:
                command += ["--netns", netns]
            with log_path.open("wb") as log:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=self._environment(),
                    start_new_session=True,  # a Ctrl-C reaches the orchestrator, which stops peers in order
                )
        if self.cgroups is not None:
            self.cgroups.add_host(slots[0].host, process.pid)
        for peer in peers:
            peer.process = process
        self._watchers.append(asyncio.create_task(self._watch(process, peers)))
        reasons = await asyncio.gather(*(self._start_peer(p, s, timeout) for p, s in zip(peers, settings, strict=True)))
        failures = {peer.index: reason for peer, reason in zip(peers, reasons, strict=True) if reason is not None}
        if len(failures) == len(peers) and process.returncode is None:
            process.kill()
        return failures

    async def _start_peer(self, peer: PeerProcess, settings: PeerSettings, timeout: float) -> str | None:
        try:
            async with asyncio.timeout(timeout):
                await self._wait_hello(peer)
            identity = await self.call(peer, Call.START, settings.record(), timeout)
        except (TimeoutError, PeerLost, CallFailed) as exc:
            reason = f"no hello within {timeout:g}s" if isinstance(exc, TimeoutError) else str(exc)
            peer.mark_lost(f"did not start: {reason}")
            return f"peer {peer.index}: did not start: {reason}"
        peer.peer_id, peer.addrs = identity["peer_id"], identity["addrs"]
        return None

    async def _wait_hello(self, peer: PeerProcess) -> None:
        hello = asyncio.create_task(peer.hello.wait())
        assert peer.process is not None
        exited = asyncio.create_task(peer.process.wait())
        await asyncio.wait({hello, exited}, return_when=asyncio.FIRST_COMPLETED)
        hello.cancel()
        exited.cancel()
        if peer.lost is not None or not peer.hello.is_set():
            raise PeerLost(f"peer {peer.index}: {peer.lost or 'exited before hello'}")

    async def _watch(self, process: asyncio.subprocess.Process | ForkedProcess, peers: list[PeerProcess]) -> None:
        await process.wait()
        for peer in peers:
            await self._lose(peer, "exited")

    async def _watch_silence(self, every_s: float = 1.0) -> None:
        """Declares hung, and kills, a started host process that sent nothing (no event, answer or
        loop-lag window) for longer than hang_limit_s at the highest dilation in force since: a
        stopped process or a blocked event loop. Its peers are lost with that cause; the run goes on."""
        while True:
            await asyncio.sleep(every_s)
            now = time.monotonic_ns()
            for pid, indices in self.processes().items():
                heard = self._heard.get(pid)
                peers = [self._peers[i] for i in indices]  # live: any of them carries the loop lag (nodes/lag.py)
                if heard is None or self._stopping or not all(p.peer_id for p in peers) or pid in self.paused:
                    continue  # not started yet (the start timeout covers it), or frozen
                factor = self.dilation.highest_between(heard, now) if self.dilation is not None else 1.0
                silent, limit = (now - heard) / 1e9, hang_limit_s(factor)
                if silent > limit:
                    for peer in peers:
                        peer.mark_lost(f"hung: its host process sent nothing for {silent:.1f}s (limit {limit:.0f}s at "
                                       f"dilation {factor:g}): stopped, or its event loop blocked; killed")
                    process = peers[0].process
                    if process is not None:
                        with contextlib.suppress(ProcessLookupError):
                            process.kill()

    async def _lose(self, peer: PeerProcess, what: str) -> None:
        """Marks the peer lost with the best cause known: its exit status and last stderr line
        if the process ended (within a second), else what broke."""
        if peer.lost is not None or self._stopping or peer.process is None:
            return
        try:
            async with asyncio.timeout(1.0):
                code = await peer.process.wait()
        except TimeoutError:
            peer.mark_lost(f"{what} (process {peer.pid} still running)")
            return
        tail = peer.stderr_tail().splitlines()
        peer.mark_lost(f"exited with status {code}: {tail[-1] if tail else 'no stderr'}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: a peer's after its hello. A message that is not one (not JSON, too long,
        a field missing or of the wrong kind, a hello for no peer of this run or for one already
        connected) ends the connection: a peer that sent it is lost with that cause, anything
        else is told why in one line; the run goes on."""
        peer: PeerProcess | None = None
        try:
            while line := await reader.readline():
                peer = self._take(wire.decode(line), peer, writer)
                if peer is not None and peer.pid is not None:
                    self._heard[peer.pid] = time.monotonic_ns()
        except ConnectionError as exc:
            if peer is not None:
                await self._lose(peer, f"control connection broke: {exc}")
        except (ValueError, KeyError, TypeError) as exc:
            cause = f"malformed control message ({type(exc).__name__}: {str(exc)[:200]})"
            if peer is not None:
                await self._lose(peer, cause)
            else:
                with contextlib.suppress(ConnectionError):
                    writer.write(wire.encode({"type": "error", "error": cause}))
                    await writer.drain()
        finally:
            if peer is not None:
                await self._lose(peer, "control connection closed")
            writer.close()

    def _take(self, message: wire.Message, peer: PeerProcess | None, writer: asyncio.StreamWriter) -> PeerProcess | None:
        """Acts on one control message; returns the connection's peer (set by its hello)."""
        kind = message["type"]
        if kind == "hello" and peer is None:
            hello = self._peers.get(message["index"]) if isinstance(message["index"], int) else None
            if hello is None or hello.writer is not None:
                raise ValueError(f"hello for peer {message['index']!r}, which is not a peer of this run waiting for "
                                 "its connection")
            hello.writer = writer
            hello.hello.set()
            return hello
        if kind == "event" and peer is not None:
            self.on_event(Event.of(message))
        elif kind == "result" and peer is not None:
            future = peer.pending.pop(message["id"], None)
            if future is not None and not future.done():
                if message["ok"]:
                    future.set_result(message["value"])
                else:
                    future.set_exception(CallFailed(str(message["error"])))
        else:
            raise ValueError(f"unexpected {kind!r} message" + ("" if peer is None else f" from peer {peer.index}"))
        return peer

    # -- calling ---------------------------------------------------------------------------

    async def call(self, peer: PeerProcess, op: Call, args: dict[str, Any], timeout: float) -> Any:
        if peer.lost is not None:
            raise PeerLost(f"peer {peer.index}: {peer.lost}")
        if peer.writer is None:
            raise PeerLost(f"peer {peer.index}: not connected")
        call_id = next(self._call_ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        peer.pending[call_id] = future
        peer.writer.write(wire.encode({"type": "call", "id": call_id, "op": op, "args": args}))
        try:
            await peer.writer.drain()
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            peer.pending.pop(call_id, None)
            raise PeerLost(f"peer {peer.index}: no answer to {op} within {timeout:.0f}s") from None
        except ConnectionError as exc:
            await self._lose(peer, f"control connection broke: {exc}")
            raise PeerLost(f"peer {peer.index}: {peer.lost or exc}") from None

    # -- faults: peers taken down, frozen and restarted on purpose -------------------------

    async def crash(self, peers: list[PeerProcess], why: str, timeout: float) -> None:
        """Ends the peers without a goodbye: a host process whose live peers all go is killed
        (SIGKILL); a peer of a shared host whose neighbours stay has its sockets shut and ends
        (Call.CRASH). They are down, not lost."""
        chosen = {p.index for p in peers}
        by_pid: dict[int, list[PeerProcess]] = {}
        for peer in peers:
            if peer.pid is not None and peer.lost is None:
                by_pid.setdefault(peer.pid, []).append(peer)

        async def one_host(pid: int, going: list[PeerProcess]) -> None:
            staying = [p for p in self.alive if p.pid == pid and p.index not in chosen]
            for peer in going:
                peer.down = why
            if not staying:
                for peer in going:
                    peer.mark_lost(why)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                return
            for peer in going:
                with contextlib.suppress(PeerLost, CallFailed):
                    await self.call(peer, Call.CRASH, {}, timeout)
                peer.mark_lost(why)

        await asyncio.gather(*(one_host(pid, going) for pid, going in by_pid.items()))

    async def leave(self, peer: PeerProcess, why: str, timeout: float) -> None:
        """Ends the peer gracefully (Call.SHUTDOWN: the library closes its connections); down, not lost."""
        peer.down = why
        with contextlib.suppress(PeerLost, CallFailed):
            peer.final = await self.call(peer, Call.SHUTDOWN, {}, timeout)
        peer.mark_lost(why)

    def pause(self, pids: set[int]) -> None:
        """Freezes host processes (SIGSTOP); the hang watch leaves them be until `resume`."""
        self.paused |= pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)

    def resume(self) -> None:
        now = time.monotonic_ns()
        for pid in self.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
            self._heard[pid] = now  # its silence was ours
        self.paused.clear()

    async def restart(self, peer: PeerProcess, settings: PeerSettings, timeout: float) -> str | None:
        """Starts a peer that was taken down again, with its identity (its key comes from the seed
        and its index); returns why it did not start, if it did not."""
        if peer.process is not None and peer.process.returncode is None and not any(
                p.pid == peer.pid and p.lost is None for p in self.peers):
            await peer.process.wait()  # killed: its sockets are released once it is gone
        failures = await self.start_host([peer.slot], [settings], timeout, restart=True)
        return failures.get(peer.index)

    # -- stopping --------------------------------------------------------------------------

    async def stop(self, grace: float = 5.0) -> None:
        """Asks every live peer to shut down, then terminates and finally kills stragglers after
        `grace`. The answers (each peer's final figures) are awaited as long as a live host may
        stay silent: a thousand peers answering at once took more than 5 s from a whole host."""
        self._stopping = True
        async def polite(peer: PeerProcess) -> None:
            try:
                peer.final = await self.call(peer, Call.SHUTDOWN, {}, max(grace, HANG_MIN_S))
            except (PeerLost, CallFailed):
                pass  # escalated below: terminate, then kill

        await asyncio.gather(*(polite(p) for p in self.alive))
        processes = {id(p.process): p.process for p in self.peers if p.process is not None}
        running = [process for process in processes.values() if process.returncode is None]
        for process in running:
            process.terminate()
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(p.wait() for p in running))
        except TimeoutError:
            for process in running:
                if process.returncode is None:
                    process.kill()
            await asyncio.gather(*(p.wait() for p in running))
        for watcher in self._watchers:
            watcher.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.control_path.unlink(missing_ok=True)
        if self.forks is not None:
            await self.forks.close()
