"""The peer's end of the control plane: a Unix socket that no link impairment touches."""

from __future__ import annotations

import trio

from nodes import wire


class ControlChannel:
    """Newline-delimited JSON over a trio stream; sends are serialised by a lock."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    @classmethod
    async def connect(cls, path: str) -> ControlChannel:
        return cls(await trio.open_unix_socket(path))

    async def send(self, message: wire.Message) -> None:
        async with self._send_lock:
            await self._stream.send_all(wire.encode(message))

    async def receive(self) -> wire.Message | None:
        """The next message, or None when the orchestrator closed the socket."""
        while b"\n" not in self._buffer:
            if len(self._buffer) > wire.MAX_LINE:
                raise ValueError("control message too long")
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return wire.decode(line)

    async def reply(self, call: wire.Message, value: object = None, error: str | None = None) -> None:
        await self.send({"type": "result", "id": call["id"], "ok": error is None, "value": value, "error": error})
