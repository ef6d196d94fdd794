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
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from lab.blocking import in_thread_to_completion
from lab.shaping.backend import ShapingError
from lab.shaping.links import Change, Links
from lab.shaping.verify import worst
from lab.topology import Link

Record = Callable[[dict[str, Any]], None]
REQUEST_TIMEOUT_S = 600.0


class LiveLinks:
    def __init__(self, links: Links, record: Record, probes: int) -> None:
        self.links = links
        self.record = record
        self.probes = probes
        self.lock = asyncio.Lock()
        self.restores: set[asyncio.Task[None]] = set()
        self.server: asyncio.AbstractServer | None = None

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

    async def _restore_after(self, peers: list[int], seconds: float, source: str) -> None:
        await asyncio.sleep(seconds)
        await self._change(lambda: self.links.restore(peers, f"{source} (end of duration)"))

    async def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """One `lab netem` request: set, clear, show or verify."""
        peers = self.links.peers_of(request.get("groups"), request.get("peers"))
        op = request["op"]
        if op == "set":
            try:
                link = Link.model_validate(request["link"])
            except ValidationError as exc:
                error = exc.errors()[0]
                raise ShapingError(f"--{error['loc'][0] if error['loc'] else 'link'}: {error['msg']}") from None
            await self.set_link(peers, link, "lab netem")
        elif op == "clear":
            await self._change(lambda: self.links.clear(peers, "lab netem --clear"))
        reply: dict[str, Any] = {"ok": True, "backend": self.links.backend.name, "peers": len(peers)}
        if op == "show":
            reply["links"] = await in_thread_to_completion(lambda: self.links.show(peers))
        if op == "verify" or request.get("verify"):
            async with self.lock:
                reports = await in_thread_to_completion(lambda: self.links.verify(self.probes))
            reply["verification"] = [r.as_dict() for r in reports]
            reply["status"] = worst(r.status for r in reports)
            reply["passed"] = reply["status"] == "passed"
            errors = {"failed": "links measured not doing what is configured", "unverified": "too noisy to verify links"}
            self.record({"op": "impairment_verification", "ok": reply["passed"], "reports": reply["verification"],
                         "status": reply["status"], **({"error": errors[reply["status"]]} if not reply["passed"] else {})})
        return reply

    async def serve(self, path: Path) -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                request = json.loads(await reader.readline())
                try:
                    reply = await self.handle(request)
                except ShapingError as exc:
                    reply = {"ok": False, "error": str(exc)}
                except asyncio.CancelledError:  # the run is ending; the request's kernel work has finished
                    reply = {"ok": False, "error": "the run ended before the request finished"}
                except Exception as exc:  # a lab bug: the run goes on, the caller and the log see it
                    traceback.print_exc()
                    reply = {"ok": False, "error": f"lab error ({type(exc).__name__}: {exc}); the run goes on, see its output"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
            finally:
                writer.close()

        self.server = await asyncio.start_unix_server(answer, path=str(path))
        self.path = path

    async def close(self) -> None:
        """Stops timed restores and the socket, waits for a change or measurement in flight,
        then stops the backend's helpers (the delay line)."""
        for task in list(self.restores):
            task.cancel()
        if self.server is not None:
            self.server.close()
            self.path.unlink(missing_ok=True)
        async with self.lock:
            await in_thread_to_completion(self.links.close)


def send(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The `lab netem` side: one request to a running orchestrator, its reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(REQUEST_TIMEOUT_S)
        sock.connect(str(path))
        sock.sendall(json.dumps(request).encode() + b"\n")
        line = sock.makefile("r").readline()
    if not line:
        raise ShapingError("the run closed the connection without answering; see the run's output")
    reply: dict[str, Any] = json.loads(line)
    return reply
