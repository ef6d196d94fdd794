"""The orchestrator's end of the peer fork server (nodes/forkserver.py): peers as children of
one process that imported py-libp2p once, each behind an object with the parts of
asyncio.subprocess.Process the fleet uses (pid, returncode, wait, terminate, kill)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import deque
from pathlib import Path
from typing import Any


class ForkedProcess:
    def __init__(self, pid: int, exited: asyncio.Future[int]) -> None:
        self.pid = pid
        self._exited = exited

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def _signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


class ForkServer:
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self._replies: deque[asyncio.Future[int]] = deque()
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodes.forkserver",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=self.env, start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())

    def _exit_future(self, pid: int) -> asyncio.Future[int]:
        return self._exits.setdefault(pid, asyncio.get_running_loop().create_future())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message: dict[str, Any] = json.loads(line)
            if "exit" in message:
                exited = self._exit_future(message["exit"])
                if not exited.done():
                    exited.set_result(message["status"])
            else:
                self._replies.popleft().set_result(message["pid"])
        error = RuntimeError(f"the peer fork server exited (status {await self.process.wait()})")
        for reply in self._replies:
            reply.set_exception(error)
        for exited in self._exits.values():  # its children were killed with it (PDEATHSIG)
            if not exited.done():
                exited.set_result(-signal.SIGKILL)

    async def spawn(self, peers: list[int], control: Path, netns: str | None, log: Path) -> ForkedProcess:
        """Forks a host process for `peers` (nodes/peer.py); returns once it exists."""
        assert self.process is not None and self.process.stdin is not None
        async with self._lock:  # replies come in request order
            reply: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._replies.append(reply)
            request = {"peers": peers, "control": str(control), "netns": netns, "log": str(log)}
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            await self.process.stdin.drain()
        pid = await reply
        return ForkedProcess(pid, self._exit_future(pid))

    async def close(self) -> None:
        """After the peers have stopped: closing stdin ends the server."""
        if self.process is None:
            return
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            async with asyncio.timeout(5):
                await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader
