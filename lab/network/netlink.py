"""pyroute2, configured once for use inside the orchestrator's asyncio process.

pyroute2 runs some namespace work in forked helper processes and stops them with SIGTERM.
A forked helper inherits asyncio's signal wakeup fd, so without this setting its SIGTERM
reaches the orchestrator's event loop as if the orchestrator itself had been terminated.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pyroute2.config

pyroute2.config.disable_mp_signal = True

from pyroute2 import NetlinkError, NetNS, netns  # noqa: E402  (after the setting above)

__all__ = ["NetNS", "NetlinkError", "inside", "netns"]


@contextmanager
def inside(namespace: str) -> Iterator[None]:
    """Runs the block with the calling thread in `namespace` (setns is per thread). Sockets
    opened in the block stay in that namespace after the thread returns home."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        netns.setns(namespace, flags=0)
        yield
    finally:
        netns.setns(home, flags=0)
        os.close(home)
