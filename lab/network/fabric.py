"""The network builder: one namespace per host, each joined to a router in a hub namespace.

    host ns plab-<run>-h0007                     hub ns plab-<run>-hub  (ip_forward=1)
    eth0 198.18.0.9/32 (one /32 per peer)  <-- veth -->  h0007  route 198.18.0.9/32 dev h0007
    default via 198.18.0.1 (onlink)

A host is one peer process and its namespace; with `network.peers_per_host` > 1 several peers
share it, each on its own address of the host's eth0 (and dialling from it). Their packets to
each other are sent through the hub too, so that each sender's link shapes them:

    rule 100: from the host itself (iif lo) to 198.18.0.0/15 -> table 100: default via the hub
    rule 1000: local (moved from rule 0, which would deliver them inside the namespace)
    eth0: accept_local=1, rp_filter=0 (a packet from a local address comes back in on eth0)

and the hub sends no ICMP redirects for what goes back out the port it came in on.

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

from lab.errors import NetworkError
from lab.network import partition
from lab.network.netlink import NetlinkError, NetNS, inside, netns, run_in
from lab.runid import RunId
from nodes.protocol import Dilation

FABRIC = ipaddress.ip_network("198.18.0.0/15")
GATEWAY = str(FABRIC.network_address + 1)
LOOPBACK = ipaddress.ip_network("127.18.0.0/16")
PEER_PORT = 4001
NUD_PERMANENT = 0x80
TCP_RTO_MIN_MS = 200  # Linux's TCP_RTO_MIN
LOCAL_TABLE, MAIN_TABLE, HAIRPIN_TABLE = 255, 254, 100
HAIRPIN_RULE, LOCAL_RULE = 100, 1000
HUB_SYSCTLS = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.send_redirects": "0",
               "net.ipv4.conf.default.send_redirects": "0"}
HAIRPIN_SYSCTLS = {"net.ipv4.conf.eth0.accept_local": "1", "net.ipv4.conf.all.rp_filter": "0",
                   "net.ipv4.conf.eth0.rp_filter": "0"}
REFERENCE_IP = str(FABRIC.broadcast_address - 1)
REFERENCE = -1  # the reference host's slot index: not a peer
MAX_PEERS = FABRIC.num_addresses - 4  # network address, gateway, reference, broadcast

Progress = Callable[[int, int], None]



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


def _rto_metrics(dilation: float) -> dict[str, int]:
    return {"rto_min": round(TCP_RTO_MIN_MS * dilation)} if dilation != 1 else {}


def _write_sysctls_in(netns_name: str, settings: dict[str, str]) -> None:
    """Sysctls are per namespace: write them from a child that entered the namespace."""
    pid = os.fork()
    if pid == 0:
        try:
            netns.setns(netns_name, flags=0)
            for key, value in settings.items():
                with open(f"/proc/sys/{key.replace('.', '/')}", "w") as handle:
                    handle.write(value)
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise NetworkError(f"cannot set {settings} in namespace {netns_name}")


class NamespaceNetwork:
    """Builds and removes the namespaced fabric of one run."""

    def __init__(self, run: RunId, hosts: list[list[int]], dilation: Dilation | None = None) -> None:
        """`dilation`: the run's virtual time; TCP's minimum retransmission timeout on every
        host route is stretched by the factor in force (Linux's 200 ms would look that many times
        shorter to peers on a dilated clock)."""
        peers = sum(map(len, hosts))
        if peers > MAX_PEERS:
            raise NetworkError(f"198.18.0.0/15 holds at most {MAX_PEERS} peers, not {peers}")
        self.run = run
        self.hosts = hosts
        self.dilation = dilation or Dilation()
        self.metrics = _rto_metrics(self.dilation.factor)
        self.created: list[str] = []
        self.hosts_built: dict[str, list[PeerSlot]] = {}  # namespace -> its peer slots
        self.reference: PeerSlot | None = None

    def build(self, progress: Progress | None = None) -> list[PeerSlot]:
        try:
            netns.create(self.run.hub_netns)
            self.created.append(self.run.hub_netns)
            _write_sysctls_in(self.run.hub_netns, HUB_SYSCTLS)
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
            ns.neigh("add", dst=GATEWAY, lladdr=hub_mac, ifindex=eth0, state=NUD_PERMANENT)
            self._routes(ns, eth0, slots, "add")
            if len(slots) > 1:
                ns.rule("add", priority=LOCAL_RULE, table=LOCAL_TABLE)
                ns.rule("del", priority=0, table=LOCAL_TABLE)
                ns.rule("add", priority=HAIRPIN_RULE, iifname="lo", dst=str(FABRIC.network_address),
                        dst_len=FABRIC.prefixlen, table=HAIRPIN_TABLE)
        self.hosts_built[name] = slots
        if len(slots) > 1:
            _write_sysctls_in(name, HAIRPIN_SYSCTLS)

    def _routes(self, ns: NetNS, eth0: int, slots: list[PeerSlot], command: str) -> None:
        """A host's routes to the hub (and, for several peers, the hairpin table's: packets
        between the host's own addresses leave through eth0 and come back), each with TCP's
        minimum RTO for the run's dilation."""
        for table in (MAIN_TABLE, HAIRPIN_TABLE) if len(slots) > 1 else (MAIN_TABLE,):
            ns.route(command, dst=f"{GATEWAY}/32", oif=eth0, scope="link", table=table, metrics=self.metrics)
            ns.route(command, dst="0.0.0.0/0", gateway=GATEWAY, oif=eth0, prefsrc=slots[0].ip, table=table,
                     metrics=self.metrics)

    def retime(self) -> None:
        """TCP's minimum RTO on every host's routes at the factor now in force (a phase changed it)."""
        self.metrics = _rto_metrics(self.dilation.factor)
        for name, slots in self.hosts_built.items():
            with NetNS(name) as ns:
                self._routes(ns, ns.link_lookup(ifname="eth0")[0], slots, "replace")

    def cut(self, side: list[str], rest: list[str], both_ways: bool) -> None:
        """Drops packets between two sets of peer addresses in the hub (lab/network/partition.py)."""
        run_in(self.run.hub_netns, ["iptables-restore"], partition.raw_table(side, rest, both_ways))

    def heal(self) -> None:
        """Ends any cut: the hub's raw table emptied."""
        run_in(self.run.hub_netns, ["iptables-restore"], partition.raw_table([], [], False))

    def syn_retransmits(self) -> int:
        """SYNs the peers' TCP sent again, summed over the hosts (TcpExt TCPSynRetrans of each
        namespace, since it was made): the kernel's initial SYN timeout is 1 s of the machine's
        time, not dilated, so each one cost the peers 1/N of a second where a real network takes 1."""
        total = 0
        for name in self.hosts_built:
            with inside(name), open("/proc/thread-self/net/netstat") as table:
                lines = table.read().splitlines()
            for names, values in zip(lines[::2], lines[1::2], strict=False):
                if names.startswith("TcpExt:"):
                    total += int(dict(zip(names.split(), values.split(), strict=True)).get("TCPSynRetrans", 0))
        return total

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

    def cut(self, side: list[str], rest: list[str], both_ways: bool) -> None:
        raise NetworkError("a partition needs network namespaces (this run is in loopback mode); see `lab doctor`")

    def heal(self) -> None:
        """Nothing was cut."""

    def teardown(self) -> list[str]:
        return []
