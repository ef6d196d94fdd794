"""The agent's wire: length-prefixed pickled messages over a byte stream.

Both ends are the lab's own code of one version (the coordinator and the agent it started, or
Ray's actor relaying for it), so pickle carries the typed records (Event, Sample, PeerInfo, ...)
as they are; a frame longer than MAX_FRAME or cut short is a broken agent, not data.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024


class BrokenFrame(ConnectionError):
    """The stream ended inside a frame, or carried one that is not the lab's."""


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body


def decode(frame: bytes) -> Any:
    try:
        return pickle.loads(frame[HEADER.size:])
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raises, the frame is not ours
        raise BrokenFrame(f"undecodable frame: {exc}") from None


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """One whole frame (header included), or None at a clean end of the stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise BrokenFrame("the stream ended inside a frame header") from None
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise BrokenFrame(f"a frame of {size} bytes (at most {MAX_FRAME})")
    try:
        return header + await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise BrokenFrame("the stream ended inside a frame") from None
