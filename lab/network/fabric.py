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
from dataclasses import dataclass, replace

from lab.errors import NetworkError
from lab.network import partition
from lab.network.netlink import IPRoute, NetlinkError, in_namespace, inside, netns, run_in
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
CROSSING = ipaddress.ip_network("198.19.254.0/24")  # the hubs' own addresses on the VXLAN between machines
MAX_PEERS = FABRIC.num_addresses - 4 - 2 * 256  # network address, gateway, reference, broadcast; below CROSSING
VXLAN_ID, VXLAN_PORT, VXLAN_MTU = 4242, 4789, 1450  # 50 bytes of VXLAN over a 1500-byte machines' network
HUB_VXLAN = "vx0"

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


def peer_ip(index: int) -> str:
    """Peer `index`'s address, on whichever machine it runs."""
    return str(FABRIC.network_address + 2 + index)


@dataclass(frozen=True)
class Underlay:
    """Where a machine's end of the VXLAN between hubs lives: a namespace (None: the machine's
    own) and its address on the machines' network."""

    netns: str | None
    ip: str


@dataclass(frozen=True)
class Crossing:
    """Another machine's hub, as this one reaches its peers over VXLAN."""

    machine: int
    underlay: str  # its address on the machines' network
    peers: tuple[str, ...]  # its peers' addresses

    @property
    def hub_ip(self) -> str:
        return hub_ip(self.machine)


def hub_ip(machine: int) -> str:
    """Machine `machine`'s hub's own address on the VXLAN between hubs."""
    return str(CROSSING.network_address + 1 + machine)


def _mac(side: int, index: int) -> str:
    """Locally administered MACs that encode the side (0 hub, 1 peer, 2 a machine's hub on the
    VXLAN) and the peer index (or machine number)."""
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

    def __init__(self, run: RunId, hosts: list[list[int]], dilation: Dilation | None = None,
                 owned: frozenset[int] | None = None, mtu: int | None = None) -> None:
        """`dilation`: the run's virtual time; TCP's minimum retransmission timeout on every
        host route is stretched by the factor in force (Linux's 200 ms would look that many times
        shorter to peers on a dilated clock). `owned`: the hosts this machine builds (None: all);
        `mtu`: the peers' links' (VXLAN_MTU when hubs are joined across machines)."""
        peers = sum(map(len, hosts))
        if peers > MAX_PEERS:
            raise NetworkError(f"198.18.0.0/15 holds at most {MAX_PEERS} peers, not {peers}")
        self.run = run
        self.hosts = hosts
        self.owned = owned
        self.mtu = mtu
        self.dilation = dilation or Dilation()
        self.metrics = _rto_metrics(self.dilation.factor)
        self.created: list[str] = []
        self.hosts_built: dict[str, list[PeerSlot]] = {}  # namespace -> its peer slots
        self.reference: PeerSlot | None = None
        self.drops = partition.Drops()  # what the hub's raw table drops now

    def build(self, progress: Progress | None = None) -> list[PeerSlot]:
        try:
            netns.create(self.run.hub_netns)
            self.created.append(self.run.hub_netns)
            _write_sysctls_in(self.run.hub_netns, HUB_SYSCTLS)
            slots = []
            with in_namespace(self.run.hub_netns) as hub:
                hub.link("set", index=hub.link_lookup(ifname="lo")[0], state="up")
                built = [(host, peers) for host, peers in enumerate(self.hosts) if self.owned is None or host in self.owned]
                for done, (host, peers) in enumerate(built, 1):
                    name = self.run.host_netns(host)
                    host_slots = [PeerSlot(i, peer_ip(i), name, host) for i in peers]
                    self._add_host(hub, host, name, host_slots)
                    slots += host_slots
                    if progress:
                        progress(done, len(built))
                host, name = len(self.hosts), self.run.host_netns(len(self.hosts))
                self._add_host(hub, host, name, [reference := PeerSlot(REFERENCE, REFERENCE_IP, name, host)])
                self.reference = reference
            return slots
        except NetlinkError as exc:
            raise NetworkError(f"netlink refused building the network: {exc}") from exc

    def _add_host(self, hub: IPRoute, host: int, name: str, slots: list[PeerSlot]) -> None:
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
        hub.link("set", index=hub_port, state="up", **({"mtu": self.mtu} if self.mtu else {}))
        for slot in slots:
            hub.route("add", dst=f"{slot.ip}/32", oif=hub_port, scope="link")
            hub.neigh("add", dst=slot.ip, lladdr=host_mac, ifindex=hub_port, state=NUD_PERMANENT)
        with in_namespace(name) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            eth0 = ns.link_lookup(ifname="eth0")[0]
            for slot in slots:
                ns.addr("add", index=eth0, address=slot.ip, prefixlen=32)
            ns.link("set", index=eth0, state="up", **({"mtu": self.mtu} if self.mtu else {}))
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

    def join(self, machine: int, underlay: Underlay, crossings: list[Crossing]) -> None:
        """Joins this machine's hub to the other machines' hubs by one VXLAN device: made where
        the underlay is (its UDP socket stays there), moved into the hub, with static forwarding
        entries, neighbours and routes for every peer over there; nothing is learnt."""
        outside = f"{self.run.prefix}-vx"
        try:
            with in_namespace(underlay.netns) if underlay.netns else IPRoute() as where:
                where.link("add", ifname=outside, kind="vxlan", vxlan_id=VXLAN_ID, vxlan_local=underlay.ip,
                           vxlan_port=VXLAN_PORT, vxlan_learning=0, address=_mac(2, machine))
                try:
                    where.link("set", index=where.link_lookup(ifname=outside)[0], net_ns_fd=self.run.hub_netns)
                except NetlinkError:
                    where.link("del", ifname=outside)
                    raise
            with in_namespace(self.run.hub_netns) as hub:
                vx = hub.link_lookup(ifname=outside)[0]
                hub.link("set", index=vx, ifname=HUB_VXLAN, mtu=VXLAN_MTU, state="up")
                hub.addr("add", index=vx, address=hub_ip(machine), prefixlen=32)
                for other in crossings:
                    mac = _mac(2, other.machine)
                    hub.fdb("append", ifindex=vx, lladdr=mac, dst=other.underlay, state=NUD_PERMANENT)
                    hub.neigh("add", dst=other.hub_ip, lladdr=mac, ifindex=vx, state=NUD_PERMANENT)
                    hub.route("add", dst=f"{other.hub_ip}/32", oif=vx, scope="link")
                    for ip in other.peers:
                        hub.route("add", dst=f"{ip}/32", gateway=other.hub_ip, oif=vx)
        except NetlinkError as exc:
            raise NetworkError(f"netlink refused joining the hubs over VXLAN (underlay {underlay.ip}"
                               f"{f' in {underlay.netns}' if underlay.netns else ''}): {exc}") from exc

    def _routes(self, ns: IPRoute, eth0: int, slots: list[PeerSlot], command: str) -> None:
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
            with in_namespace(name) as ns:
                self._routes(ns, ns.link_lookup(ifname="eth0")[0], slots, "replace")

    def cut(self, side: list[str], rest: list[str], both_ways: bool) -> None:
        """Drops packets between two sets of peer addresses in the hub (lab/network/partition.py)."""
        self._drop(replace(self.drops, side=tuple(side), rest=tuple(rest), both_ways=both_ways))

    def heal(self) -> None:
        """Ends any cut (silenced peers stay silent)."""
        self._drop(replace(self.drops, side=(), rest=()))

    def silence(self, peers: list[str]) -> None:
        """Drops every packet from or to these peer addresses in the hub (none: ends the silence)."""
        self._drop(replace(self.drops, silent=tuple(peers)))

    def _drop(self, drops: partition.Drops) -> None:
        run_in(self.run.hub_netns, ["iptables-restore"], partition.raw_table(drops))
        self.drops = drops

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

    def silence(self, peers: list[str]) -> None:
        if peers:
            raise NetworkError("pausing one peer of a shared host needs network namespaces (this run is in loopback "
                               "mode); see `lab doctor`, or set network.peers_per_host: 1")

    def heal(self) -> None:
        """Nothing was cut."""

    def teardown(self) -> list[str]:
        return []
