"""The run's Unix sockets, reachable by their owner only.

The peers' control socket and `lab netem`'s socket take commands that change a run (a peer's
hello, a link change). They live in the results directory, which other users may be able to
read, so each is created with mode 0600: the kernel refuses every other user's connect.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def owner_only_server(handler: Handler, path: Path, limit: int) -> asyncio.AbstractServer:
    """A Unix stream server at `path`, mode 0600 from the moment it exists (bound under a
    umask, not chmod-ed after: no instant in which another user could connect)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    return await asyncio.start_unix_server(handler, sock=sock, limit=limit)
