"""The network builder: one namespace per peer, veth pairs into bridges in a hub namespace.

    peer ns  plab-<run>-p0007          hub ns  plab-<run>-hub
    eth0 198.18.0.9/23  <--veth-->  p0007 -- br0 (198.18.0.1/23) --+
    eth0 198.18.2.2/23  <--veth-->  p0512 -- br1 (198.18.2.1/23) --+-- routed (ip_forward)

Each bridge holds at most `ports_per_bridge` peers (a Linux bridge takes ~1024 ports) and
has its own /23 out of 198.18.0.0/15 (reserved for benchmarking); the hub routes between
bridges. The host's own namespace is never touched. In loopback mode (no root or no netns)
peers share the host namespace on distinct 127.0.0.0/8 addresses.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from lab.runid import RunId

from lab.netlink import NetlinkError, NetNS, netns

FABRIC = ipaddress.ip_network("198.18.0.0/15")
BRIDGE_PREFIXLEN = 23
LOOPBACK = ipaddress.ip_network("127.18.0.0/16")
PEER_PORT = 4001

Progress = Callable[[int, int], None]


class NetworkError(RuntimeError):
    """The kernel refused part of the network; the message says what and why."""


@dataclass(frozen=True)
class PeerSlot:
    """Where one peer lives: its namespace (None on loopback), address and listen multiaddr."""

    index: int
    ip: str
    netns: str | None

    @property
    def listen(self) -> str:
        port = PEER_PORT if self.netns else 0
        return f"/ip4/{self.ip}/tcp/{port}"


def bridge_subnet(bridge: int) -> ipaddress.IPv4Network:
    size = 1 << (32 - BRIDGE_PREFIXLEN)
    subnet = ipaddress.ip_network((int(FABRIC.network_address) + bridge * size, BRIDGE_PREFIXLEN))
    if not subnet.subnet_of(FABRIC):
        raise NetworkError(f"198.18.0.0/15 has no room for bridge {bridge}")
    return subnet


def _write_sysctl_in(netns_name: str, key: str, value: str) -> None:
    """Sysctls are per namespace: write it from a child that entered the namespace."""
    pid = os.fork()
    if pid == 0:
        try:
            netns.setns(netns_name, flags=0)
            with open(f"/proc/sys/{key.replace('.', '/')}", "w") as handle:
                handle.write(value)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise NetworkError(f"cannot set {key}={value} in namespace {netns_name}")


class NamespaceNetwork:
    """Builds and removes the namespaced fabric of one run."""

    def __init__(self, run: RunId, peers: int, ports_per_bridge: int) -> None:
        self.run = run
        self.peers = peers
        self.ports_per_bridge = ports_per_bridge
        self.created: list[str] = []

    @property
    def bridges(self) -> int:
        return -(-self.peers // self.ports_per_bridge)

    def slot(self, index: int) -> PeerSlot:
        bridge, port = divmod(index, self.ports_per_bridge)
        ip = bridge_subnet(bridge).network_address + 2 + port
        return PeerSlot(index, str(ip), self.run.peer_netns(index))

    def build(self, progress: Progress | None = None) -> list[PeerSlot]:
        try:
            netns.create(self.run.hub_netns)
            self.created.append(self.run.hub_netns)
            with NetNS(self.run.hub_netns) as hub:
                hub.link("set", index=hub.link_lookup(ifname="lo")[0], state="up")
                bridge_index = [self._add_bridge(hub, b) for b in range(self.bridges)]
                if self.bridges > 1:
                    _write_sysctl_in(self.run.hub_netns, "net.ipv4.ip_forward", "1")
                slots = []
                for index in range(self.peers):
                    slot = self.slot(index)
                    self._add_peer(hub, slot, bridge_index[index // self.ports_per_bridge])
                    slots.append(slot)
                    if progress:
                        progress(index + 1, self.peers)
                return slots
        except NetlinkError as exc:
            raise NetworkError(f"netlink refused building the network: {exc}") from exc

    def _add_bridge(self, hub: NetNS, bridge: int) -> int:
        name = f"br{bridge}"
        hub.link("add", ifname=name, kind="bridge")
        index = hub.link_lookup(ifname=name)[0]
        subnet = bridge_subnet(bridge)
        hub.addr("add", index=index, address=str(subnet.network_address + 1), prefixlen=subnet.prefixlen)
        hub.link("set", index=index, state="up")
        return index

    def _add_peer(self, hub: NetNS, slot: PeerSlot, bridge_index: int) -> None:
        assert slot.netns is not None
        netns.create(slot.netns)
        self.created.append(slot.netns)
        port = f"p{slot.index:04d}"
        hub.link("add", ifname=port, kind="veth", peer={"ifname": "eth0", "net_ns_fd": slot.netns})
        hub.link("set", index=hub.link_lookup(ifname=port)[0], master=bridge_index, state="up")
        subnet = bridge_subnet(slot.index // self.ports_per_bridge)
        with NetNS(slot.netns) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            eth0 = ns.link_lookup(ifname="eth0")[0]
            ns.addr("add", index=eth0, address=slot.ip, prefixlen=subnet.prefixlen)
            ns.link("set", index=eth0, state="up")
            ns.route("add", dst="0.0.0.0/0", gateway=str(subnet.network_address + 1))

    def teardown(self) -> list[str]:
        """Removes every namespace this run made (veths and bridges go with them)."""
        removed, failed = [], []
        for name in reversed(self.created):
            try:
                netns.remove(name)
                removed.append(name)
            except OSError as exc:
                failed.append(f"{name} ({exc.strerror})")
        self.created.clear()
        if failed:
            raise NetworkError(f"could not remove namespaces: {', '.join(failed)}; run `lab clean`")
        return removed


class LoopbackNetwork:
    """No namespaces: every peer on its own 127.18.x.y address in the host namespace."""

    def __init__(self, peers: int) -> None:
        self.peers = peers

    def build(self, progress: Progress | None = None) -> list[PeerSlot]:
        hosts = LOOPBACK.hosts()
        slots = [PeerSlot(index, str(next(hosts)), None) for index in range(self.peers)]
        if progress:
            progress(self.peers, self.peers)
        return slots

    def teardown(self) -> list[str]:
        return []
