"""pyroute2, configured once for use inside the orchestrator's asyncio process.

pyroute2 creates a namespace in a forked helper process and stops it with SIGTERM. A forked
helper inherits asyncio's signal wakeup fd, so without this setting its SIGTERM reaches the
orchestrator's event loop as if the orchestrator itself had been terminated. (Sockets in a
namespace need no helper: `in_namespace`.)

It waits 2 s for such a helper's answer. On a starved CPU that is too short: confined to 0.001
cores, the namespace probe (doctor.py) failed after 6 s with "no response from the child" and
the run would have fallen back to loopback; with a longer wait it succeeded after 45 s. Under
qemu's emulation beside a busy host, an impaired run once fell back to loopback too, for a
reason its error did not name (it now does). A slow helper is not a missing feature.
"""

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pyroute2.config

from lab.errors import NetworkError, SetupError

pyroute2.config.disable_mp_signal = True
pyroute2.config.default_communicate_timeout = 60

from pyroute2 import IPRoute, NetlinkError, netns  # noqa: E402  (after the setting above)

__all__ = ["IPRoute", "NetlinkError", "in_namespace", "inside", "netns", "run_in"]


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


@contextmanager
def in_namespace(namespace: str) -> Iterator[IPRoute]:
    """A netlink socket in `namespace`, opened by this thread from inside it. pyroute2's NetNS
    forks a helper for each socket instead: 8 ms from a small process, 74 ms from one of 2 GiB,
    and far more beside busy peers; a switch of dilation opens one for every host. No fork also
    suits a Ray worker, which a fork can kill."""
    with inside(namespace):
        route = IPRoute()
    try:
        yield route
    finally:
        route.close()


def run_in(namespace: str, command: list[str], stdin: str | None = None,
           error: type[SetupError] = NetworkError) -> str:
    """A command's output, run in `namespace` (iptables and its kin have no netlink API)."""
    done = subprocess.run(["ip", "netns", "exec", namespace, *command], input=stdin, capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        raise error(f"{command[0]} in {namespace} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout
