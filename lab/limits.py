"""The process limits a run of N peers needs: raised where this process may, refused in one
line naming the limit and the fix where it may not, before anything is built.

The orchestrator holds per peer a control connection, a child-process handle and pipes
(about 4 descriptors; 6 are reserved), plus a base for the collector, results files and
netlink sockets. Each peer needs its own network namespace, counted against the user
namespace's max_net_namespaces. The kernel's neighbour table needs nothing: every entry the
fabric makes is static (docs/design.md). Root in a container may lack CAP_SYS_RESOURCE and so
be unable to raise a hard limit: then the message says to raise it before starting the lab.
"""

from __future__ import annotations

import resource
from pathlib import Path

FDS_PER_PEER = 6
BASE_FDS = 256
MAX_NET_NAMESPACES = Path("/proc/sys/user/max_net_namespaces")


class LimitError(RuntimeError):
    """A limit the run needs cannot be had; the message names it and the fix."""


def needed_open_files(peers: int) -> int:
    return BASE_FDS + FDS_PER_PEER * peers


def raise_open_files(peers: int) -> str | None:
    """Raises RLIMIT_NOFILE to what `peers` need; returns what it did, None if nothing was needed."""
    need = needed_open_files(peers)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return None
    try:  # above the hard limit only with CAP_SYS_RESOURCE (root in a container may lack it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, OSError):
        raise LimitError(f"open files: {peers} peers need {need}, the hard limit is {hard} and this process may not "
                         f"raise it; start the lab from a shell with `ulimit -n {need}`") from None
    return f"open-file limit raised from {soft} to {need}"


def check_namespaces(peers: int) -> None:
    if not MAX_NET_NAMESPACES.exists():
        return
    allowed = int(MAX_NET_NAMESPACES.read_text())
    if allowed < peers + 2:  # peers, the hub, a probe
        raise LimitError(f"network namespaces: {peers} peers need {peers + 2}, user.max_net_namespaces is {allowed}; "
                         f"raise it with `sysctl user.max_net_namespaces={peers + 2}`")
