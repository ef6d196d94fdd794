"""The process limits a run of N peers needs: raised where this process may, refused in one
line naming the limit and the fix where it may not, before anything is built.

The orchestrator holds per peer a control connection, a child-process handle and pipes
(about 4 descriptors; 6 are reserved), plus a base for the collector, results files and
netlink sockets. A host process inherits the limit and holds a socket per connection of each
of its peers: at most one to every other peer (`connections.max_per_peer: 1`), and no more
than `connections.max_connections`, which py-libp2p enforces both ways (it never trims a
connection with an open stream, and every GossipSub peer has one, so the cap, not pruning,
bounds them). Each host needs its own network namespace, counted against the user
namespace's max_net_namespaces.

Two limits the field's tools hit at this size do not apply: the kernel's neighbour table
(gc_thresh) counts no entry the fabric makes, all being static, and there is no bridge, so
no port limit (docs/design.md). Root in a container may lack CAP_SYS_RESOURCE and so be
unable to raise a hard limit: then the message says to raise it before starting the lab.
"""

from __future__ import annotations

import resource
from pathlib import Path

from lab.errors import LimitError

FDS_PER_PEER = 6
BASE_FDS = 256
MAX_NET_NAMESPACES = Path("/proc/sys/user/max_net_namespaces")



def needed_open_files(peers: int, host_connections: int = 0) -> int:
    """The larger of the orchestrator's need and a host's whose peers hold `host_connections`."""
    return BASE_FDS + max(FDS_PER_PEER * peers, host_connections)


def raise_open_files(peers: int, host_connections: int = 0) -> str | None:
    """Raises RLIMIT_NOFILE to what `peers` need; returns what it did, None if nothing was needed."""
    need = needed_open_files(peers, host_connections)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return None
    try:  # above the hard limit only with CAP_SYS_RESOURCE (root in a container may lack it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, max(hard, need)))
    except (ValueError, OSError):
        raise LimitError(f"open files: {peers} peers need {need}, the hard limit is {hard} and this process may not "
                         f"raise it; start the lab from a shell with `ulimit -n {need}`") from None
    return f"open-file limit raised from {soft} to {need}"


def check_namespaces(hosts: int) -> None:
    if not MAX_NET_NAMESPACES.exists():
        return
    allowed = int(MAX_NET_NAMESPACES.read_text())
    need = hosts + 3  # hosts, the hub, the reference host (lab/network/fabric.py), a probe
    if allowed < need:
        raise LimitError(f"network namespaces: {hosts} hosts need {need}, user.max_net_namespaces is {allowed}; "
                         f"raise it with `sysctl user.max_net_namespaces={need}`")
