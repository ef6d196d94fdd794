"""Stand-in machines on one kernel: a bridge namespace as the LAN, one namespace per machine on
it, and each machine's environment for its agent (lab/remote/agent.py P2P_LAB_UNDERLAY*), so a
local multi-node Ray cluster (`ray.cluster_utils.Cluster`, one raylet per node) behaves as
machines joined by a network: each agent's VXLAN end in its own namespace with its own address.
The tests and bench/cluster.py use it; real machines need none of it.

The namespaces are named lan-<hex>, outside the lab's plab- prefix: an agent removes every
killed run's leftovers under that prefix when it opens a run.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from lab.network.netlink import in_namespace, netns
from lab.remote.agent import MACHINE_ENV, UNDERLAY_ENV, UNDERLAY_NETNS_ENV

LAN_PREFIX = "198.19.253."  # inside 198.18.0.0/15, apart from the peers' and the hubs' addresses


@contextmanager
def stand_in_machines(count: int) -> Iterator[list[dict[str, str]]]:
    """`count` stand-in machines on a LAN; yields each one's environment for its Ray node (the
    k-th is named m<k> for placement pins)."""
    name = f"lan-{secrets.token_hex(3)}"
    made = [name]
    netns.create(name)
    try:
        with in_namespace(name) as lan:
            lan.link("add", ifname="br0", kind="bridge")
            bridge = lan.link_lookup(ifname="br0")[0]
            lan.link("set", index=bridge, state="up")
            machines = []
            for k in range(count):
                machine, ip = f"{name}-m{k}", f"{LAN_PREFIX}{k + 1}"
                netns.create(machine)
                made.append(machine)
                lan.link("add", ifname=f"m{k}", kind="veth", peer={"ifname": "eth0", "net_ns_fd": machine})
                lan.link("set", index=lan.link_lookup(ifname=f"m{k}")[0], master=bridge, state="up")
                with in_namespace(machine) as ns:
                    eth0 = ns.link_lookup(ifname="eth0")[0]
                    ns.addr("add", index=eth0, address=ip, prefixlen=24)
                    ns.link("set", index=eth0, state="up")
                    ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                machines.append({UNDERLAY_ENV: ip, UNDERLAY_NETNS_ENV: machine, MACHINE_ENV: f"m{k}"})
        yield machines
    finally:
        for namespace in reversed(made):
            netns.remove(namespace)
