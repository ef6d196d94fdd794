"""Changing links while a run goes on: from the workload's `impair` phases and from
`lab netem` in another terminal, through one lock, each change recorded in the run's events.

`lab netem` talks to the running orchestrator over a Unix socket (one JSON request, one JSON
reply); the reply comes once the change is in force in the kernel and delay line.
"""

from __future__ import annotations

import asyncio
import json
import socket
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lab.blocking import in_thread_to_completion
from lab.errors import ShapingError
from lab.events import VERIFICATION
from lab.machine import LinkWatch
from lab.shaping.links import Change, Links
from lab.shaping.verify import worst
from lab.sockets import owner_only_server
from lab.topology import Link
from nodes.protocol import Event, NetemRequest

Record = Callable[[Event], None]
REQUEST_TIMEOUT_S = 600.0
REQUEST_LIMIT = 64 * 1024  # bytes of one request line; `lab netem`'s are a few hundred


class LiveLinks:
    def __init__(self, links: Links, record: Record, probes: int) -> None:
        self.links = links
        self.record = record
        self.probes = probes
        self.lock = asyncio.Lock()
        self.restores: set[asyncio.Task[None]] = set()
        self.server: NetemServer | None = None

    async def _change(self, work: Callable[[], Change]) -> Change:
        async with self.lock:
            change = await in_thread_to_completion(work)
        self.record(change.event())
        return change

    async def set_link(self, peers: list[int], link: Link, source: str, duration: float | None = None) -> Change:
        change = await self._change(lambda: self.links.set_link(peers, link, source))
        if duration is not None:
            task = asyncio.create_task(self._restore_after(peers, duration, source))
            self.restores.add(task)
            task.add_done_callback(self.restores.discard)
        return change

    async def impair_groups(self, groups: list[str], link: Link, source: str, duration: float | None) -> str:
        """A workload phase's change of its groups' links; returns what they do now."""
        peers = self.links.peers_of(groups=groups)
        change = await self.set_link(peers, link, source, duration)
        return f"{len(change.peers)} peers of {groups}: {self.links.current[peers[0]].describe()}"

    async def retime(self) -> None:
        """Every link again, at the dilation now in force."""
        await self._change(self.links.retime)

    async def watch(self) -> LinkWatch:
        """What the links did since the last call (under the lock: the delay line answers one request at a time)."""
        async with self.lock:
            return await in_thread_to_completion(self.links.watch)

    def helper_pids(self) -> dict[str, int]:
        """The backend's helper processes, for the collector."""
        return self.links.backend.helper_pids()

    async def _restore_after(self, peers: list[int], seconds: float, source: str) -> None:
        await asyncio.sleep(seconds)
        await self._change(lambda: self.links.restore(peers, f"{source} (end of duration)"))

    async def handle(self, request: NetemRequest) -> dict[str, Any]:
        """One `lab netem` request: set, clear, show or verify."""
        peers = self.links.peers_of(request.groups, request.peers)
        op = request.op
        if op == "set":
            try:
                link = Link.model_validate(request.link)
            except ValidationError as exc:
                error = exc.errors()[0]
                raise ShapingError(f"--{error['loc'][0] if error['loc'] else 'link'}: {error['msg']}") from None
            await self.set_link(peers, link, "lab netem")
        elif op == "clear":
            await self._change(lambda: self.links.clear(peers, "lab netem --clear"))
        reply: dict[str, Any] = {"ok": True, "backend": self.links.backend.name, "peers": len(peers)}
        if op == "show":
            reply["links"] = await in_thread_to_completion(lambda: self.links.show(peers))
        if op == "verify" or request.verify:
            async with self.lock:
                reports = await in_thread_to_completion(lambda: self.links.verify(self.probes))
            reply["verification"] = [r.as_dict() for r in reports]
            reply["status"] = worst(r.status for r in reports)
            reply["passed"] = reply["status"] == "passed"
            errors = {"failed": "links measured not doing what is configured", "unverified": "too noisy to verify links"}
            now = self.links.dilation.now_ns()
            self.record(Event(VERIFICATION, None, now, now, reply["passed"], errors.get(reply["status"]),
                              {"reports": reply["verification"], "status": reply["status"]}))
        return reply

    async def serve(self, path: Path) -> None:
        self.server = await NetemServer.start(self.handle, path)

    async def close(self) -> None:
        """Stops timed restores and the socket, waits for a change or measurement in flight,
        then stops the backend's helpers (the delay line)."""
        for task in list(self.restores):
            task.cancel()
        if self.server is not None:
            self.server.close()
        async with self.lock:
            await in_thread_to_completion(self.links.close)


class NetemServer:
    """`lab netem`'s socket: one JSON request line, one JSON reply, answered by `handle` (a
    machine's live links, or a run over several machines, which asks each of them)."""

    def __init__(self, handle: Callable[[NetemRequest], Awaitable[dict[str, Any]]], path: Path) -> None:
        self.handle, self.path = handle, path
        self.server: asyncio.AbstractServer | None = None

    @classmethod
    async def start(cls, handle: Callable[[NetemRequest], Awaitable[dict[str, Any]]], path: Path) -> NetemServer:
        made = cls(handle, path)
        made.server = await owner_only_server(made._serve, path, REQUEST_LIMIT)
        return made

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readline()
            except ValueError:  # no end of line within the limit
                reply = {"ok": False, "error": f"request longer than {REQUEST_LIMIT} bytes; send what `lab netem` sends"}
            else:
                reply = await self._answer(line)
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass  # the caller left before its answer: nothing to tell it
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line; whatever goes wrong, a one-line error and the run goes on."""
        try:
            request = NetemRequest.of(json.loads(line))
        except (ValueError, TypeError) as exc:  # not JSON, or not a request
            return {"ok": False, "error": f"bad request ({exc}); send what `lab netem` sends"}
        try:
            return await self.handle(request)
        except ShapingError as exc:
            return {"ok": False, "error": str(exc)}
        except asyncio.CancelledError:  # the run is ending; the request's kernel work has finished
            return {"ok": False, "error": "the run ended before the request finished"}
        except Exception as exc:  # a lab bug: the run goes on, the caller and the log see it
            traceback.print_exc()
            return {"ok": False, "error": f"lab error ({type(exc).__name__}: {exc}); the run goes on, see its output"}

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.path.unlink(missing_ok=True)


def send(path: Path, request: NetemRequest) -> dict[str, Any]:
    """The `lab netem` side: one request to a running orchestrator, its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REQUEST_TIMEOUT_S)
        sock.connect(str(path))
        sock.sendall(json.dumps(request.record()).encode() + b"\n")
        line = sock.makefile("r").readline()
    if not line:
        raise ShapingError("the run closed the connection without answering; see the run's output")
    reply: dict[str, Any] = json.loads(line)
    return reply
