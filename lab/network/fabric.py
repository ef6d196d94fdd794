"""The network builder: one namespace per host, each joined to a router in a hub namespace.

    host ns plab-<run>-h0007                     hub ns plab-<run>-hub  (ip_forward=1)
    eth0 198.18.0.9/32 (one /32 per peer)  <-- veth -->  h0007  route 198.18.0.9/32 dev h0007
    default via 198.18.0.1 (onlink)

A host is one peer process and its namespace; with `network.peers_per_host` > 1 several peers
share it, each on its own address of the host's eth0, so they share one link (and reach each
other inside the namespace, not through the hub).

Point-to-point links into a routed hub, not a shared bridge: with a bridge, every peer keeps
an ARP entry per peer it talks to, and the kernel's neighbour table is one table for all
namespaces (gc_thresh3 = 1024 entries by default, settable only in the host namespace). At 100
bridged peers it overflowed ("neighbor table overflow!" in dmesg) and connects timed out. Here
every neighbour entry is static (NUD_PERMANENT, exempt from gc_thresh): one per host for its
gateway, one per peer in the hub. No ARP, no broadcast, no bridge port limit, and the host's
own namespace is never touched. Addresses come from 198.18.0.0/15, reserved for benchmarking.
In loopback mode (no root or no namespaces) peers share the host namespace on distinct
127.18.0.0/16 addresses.

One more host, the reference (REFERENCE_IP, index REFERENCE), runs no peer: link verification
sends probes from it through a link of known delay, to learn how late this machine's timers
release packets at that moment (lab/shaping/verify.py).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from lab.network.netlink import NetlinkError, NetNS, netns
from lab.runid import RunId

FABRIC = ipaddress.ip_network("198.18.0.0/15")
GATEWAY = str(FABRIC.network_address + 1)
LOOPBACK = ipaddress.ip_network("127.18.0.0/16")
PEER_PORT = 4001
NUD_PERMANENT = 0x80
REFERENCE_IP = str(FABRIC.broadcast_address - 1)
REFERENCE = -1  # the reference host's slot index: not a peer
MAX_PEERS = FABRIC.num_addresses - 4  # network address, gateway, reference, broadcast

Progress = Callable[[int, int], None]


class NetworkError(RuntimeError):
    """The kernel refused part of the network; the message says what and why."""


@dataclass(frozen=True)
class PeerSlot:
    """Where one peer lives: its host (process and namespace; None on loopback), address and
    listen multiaddr."""

    index: int
    ip: str
    netns: str | None
    host: int

    @property
    def hub_port(self) -> str:
        """The hub's end of this peer's host's veth pair: what the peer sends arrives here."""
        return f"h{self.host:04d}"

    @property
    def listen(self) -> str:
        port = PEER_PORT if self.netns else 0
        return f"/ip4/{self.ip}/tcp/{port}"


def _mac(side: int, index: int) -> str:
    """Locally administered MACs that encode the side (0 hub, 1 peer) and the peer index."""
    return ":".join(f"{byte:02x}" for byte in (2, side, *index.to_bytes(4, "big")))


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

    def __init__(self, run: RunId, hosts: list[list[int]]) -> None:
        peers = sum(map(len, hosts))
        if peers > MAX_PEERS:
            raise NetworkError(f"198.18.0.0/15 holds at most {MAX_PEERS} peers, not {peers}")
        self.run = run
        self.hosts = hosts
        self.created: list[str] = []
        self.reference: PeerSlot | None = None

    def build(self, progress: Progress | None = None) -> list[PeerSlot]:
        try:
            netns.create(self.run.hub_netns)
            self.created.append(self.run.hub_netns)
            _write_sysctl_in(self.run.hub_netns, "net.ipv4.ip_forward", "1")
            slots = []
            with NetNS(self.run.hub_netns) as hub:
                hub.link("set", index=hub.link_lookup(ifname="lo")[0], state="up")
                for host, peers in enumerate(self.hosts):
                    name = self.run.host_netns(host)
                    host_slots = [PeerSlot(i, str(FABRIC.network_address + 2 + i), name, host) for i in peers]
                    self._add_host(hub, host, name, host_slots)
                    slots += host_slots
                    if progress:
                        progress(host + 1, len(self.hosts))
                host, name = len(self.hosts), self.run.host_netns(len(self.hosts))
                self._add_host(hub, host, name, [reference := PeerSlot(REFERENCE, REFERENCE_IP, name, host)])
                self.reference = reference
            return slots
        except NetlinkError as exc:
            raise NetworkError(f"netlink refused building the network: {exc}") from exc

    def _add_host(self, hub: NetNS, host: int, name: str, slots: list[PeerSlot]) -> None:
        netns.create(name)
        self.created.append(name)
        port, hub_mac, host_mac = slots[0].hub_port, _mac(0, host), _mac(1, host)
        hub.link(
            "add",
            ifname=port,
            kind="veth",
            address=hub_mac,
            peer={"ifname": "eth0", "address": host_mac, "net_ns_fd": name},
        )
        hub_port = hub.link_lookup(ifname=port)[0]
        hub.link("set", index=hub_port, state="up")
        for slot in slots:
            hub.route("add", dst=f"{slot.ip}/32", oif=hub_port, scope="link")
            hub.neigh("add", dst=slot.ip, lladdr=host_mac, ifindex=hub_port, state=NUD_PERMANENT)
        with NetNS(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            eth0 = ns.link_lookup(ifname="eth0")[0]
            for slot in slots:
                ns.addr("add", index=eth0, address=slot.ip, prefixlen=32)
            ns.link("set", index=eth0, state="up")
            ns.route("add", dst=f"{GATEWAY}/32", oif=eth0, scope="link")
            ns.route("add", dst="0.0.0.0/0", gateway=GATEWAY, oif=eth0, prefsrc=slots[0].ip)
            ns.neigh("add", dst=GATEWAY, lladdr=hub_mac, ifindex=eth0, state=NUD_PERMANENT)

    def teardown(self) -> list[str]:
        """Removes every namespace this run made (veth pairs go with them)."""
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

    def __init__(self, hosts: list[list[int]]) -> None:
        self.hosts = hosts
        self.reference: PeerSlot | None = None  # no links to verify

    def build(self, progress: Progress | None = None) -> list[PeerSlot]:
        addresses = LOOPBACK.hosts()
        slots = [PeerSlot(i, str(next(addresses)), None, host) for host, peers in enumerate(self.hosts) for i in peers]
        if progress:
            progress(len(self.hosts), len(self.hosts))
        return slots

    def teardown(self) -> list[str]:
        return []
