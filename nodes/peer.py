"""Entry point of one host process: enter the namespace, start its peers, obey the orchestrator.

Started by the orchestrator as `python -m nodes.peer --index N [N ...] --control SOCK [--netns NAME]`:
one peer per index, all in one trio loop (`network.peers_per_host`), each with its own control
connection, so the orchestrator drives and loses peers one by one. Everything else (listen
address, keys, library settings) arrives in each peer's first control call, so the command
line stays short and the topology stays the one source of settings.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import ctypes
import hashlib
import logging
import math
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import multiaddr
import psutil
import trio
from libp2p import new_host
from libp2p.abc import IHost
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.kad_dht import kad_dht
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.peer.peerstore import PERMANENT_ADDR_TTL
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.rcmgr import ResourceManager, new_resource_manager
from libp2p.rcmgr.connection_limits import new_connection_limits_with_defaults
from libp2p.stream_muxer.yamux import yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.tcp.tcp import TCP

from nodes import clock
from nodes.control import ControlChannel
from nodes.lag import Speakers, watch_lag
from nodes.market import ANNOUNCE_TOPIC, Market
from nodes.packages import DHT_NAMESPACE, PackageRecordValidator
from nodes.protocol import ROUTING_PEERS, Call, Op, PeerSettings, concurrent_search_op
from nodes.recorder import OpFailed, Recorder, install_work_handler

PR_SET_PDEATHSIG = 1
# A warning py-libp2p 0.8.1 logs for every clean end of a DHT stream: noise, not a failure.
_DHT_STREAM_NOISE = "Failed to read DHT message from stream"
# The peer a log line comes from: trio tasks inherit it from the peer's task that started them.
_peer_index: contextvars.ContextVar[int | None] = contextvars.ContextVar("peer", default=None)


def die_with_parent() -> None:
    """If the orchestrator is killed outright, the kernel kills this peer too."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def tune_library(settings: PeerSettings) -> None:
    """Settings py-libp2p keeps as module constants, read where they are used: set per process
    (all peers of a host share the topology's settings). The library annotates these intervals,
    and the heartbeat below, as int seconds; it only sleeps on them, so fractions work."""
    yamux.RTT_MEASURE_INTERVAL = settings.yamux.rtt_interval_s  # type: ignore[assignment]
    kad_dht.ROUTING_TABLE_REFRESH_INTERVAL = settings.dht.maintenance_interval_s  # type: ignore[assignment]
    os.environ["PY_YAMUX_RELEASE_ON_READ"] = "1" if settings.yamux.release_on_read else "0"  # read per call


def connection_config(settings: PeerSettings) -> ConnectionConfig:
    connections = settings.connections
    return ConnectionConfig(
        max_connections_per_peer=connections.max_per_peer,
        max_connections=connections.max_connections,
        dial_timeout=connections.dial_timeout_s,
    )


def resource_manager(settings: PeerSettings) -> ResourceManager:
    """The library's resource manager with its defaults, but the established-inbound limit the
    topology states: a bootstrap peer of a large network is dialled by more than its 256."""
    limits = new_connection_limits_with_defaults().with_max_established_inbound(settings.connections.max_inbound)
    return new_resource_manager(connection_limits=limits)


def dial_from(host: IHost, ip: str) -> None:
    """py-libp2p dials from whatever address the route prefers, which for every peer of a shared
    host is the host's first address. Each peer dials from its own, as a real peer would, so the
    dialled peer, its per-address limits and the link shaping (by source address) see who it is."""
    network = host.get_network()
    assert isinstance(network, Swarm)
    for transport in network.transport_manager.get_transports():
        if isinstance(transport, TCP):
            transport.dial = partial(transport.dial_with_source, source=(ip, 0))  # type: ignore[method-assign]


def gossipsub_router(settings: PeerSettings) -> GossipSub:
    gs = settings.gossipsub
    router = GossipSub(
        [PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=gs.degree,
        degree_low=gs.degree_low,
        degree_high=gs.degree_high,
        heartbeat_interval=gs.heartbeat_s,  # type: ignore[arg-type]
        gossip_window=gs.gossip_window,
        adaptive_gossip_enabled=gs.adaptive_gossip,
        spam_protection_enabled=gs.spam_protection,
        eclipse_protection_enabled=gs.eclipse_protection,
    )
    if not gs.scorer:
        router.scorer = None
    return router


def sever(ip: str) -> int:
    """Shuts down, at once and behind the library's back, every TCP connection of this process
    on `ip`: what the kernel does to the sockets of a process that crashed, for one peer of a
    shared host. Its neighbours' sockets, on their own addresses, are left, and so is its
    listener, which the peer's end closes next (a listener shut under trio's accept fails the
    host process's system task: every neighbour would die with it). Returns how many were shut."""
    count = 0
    for connection in psutil.Process().net_connections(kind="tcp4"):
        if (connection.laddr and connection.laddr.ip == ip and connection.fd >= 0
                and connection.status != psutil.CONN_LISTEN):
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(connection.fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
                count += 1
    return count


class Peer:
    """One libp2p host with Kademlia, GossipSub and the marketplace, answering control calls."""

    def __init__(self, index: int, channel: ControlChannel, settings: PeerSettings, speakers: Speakers) -> None:
        """`speakers`: the host process's live peers' recorders, which carry its loop-lag events
        (nodes/lag.py); this peer is one of them while it runs."""
        self.index = index
        self.speakers = speakers
        self.channel = channel
        self.settings = settings
        tune_library(settings)
        seed = settings.seed
        again = f":{settings.incarnation}" if settings.incarnation else ""  # a new peer in the same slot
        key_seed = hashlib.sha256(f"{seed}:key:{index}{again}".encode()).digest()
        self.host = new_host(
            key_pair=create_new_key_pair(key_seed),
            connection_config=connection_config(settings),
            resource_manager=resource_manager(settings),
        )
        dial_from(self.host, multiaddr.Multiaddr(settings.listen).value_for_protocol("ip4"))
        mode = DHTMode.SERVER if settings.dht.mode == "server" else DHTMode.CLIENT
        self.dht = KadDHT(
            self.host,
            mode,
            enable_random_walk=settings.dht.random_walk,
            max_peers_per_subnet=settings.dht.max_peers_per_subnet,
        )
        self.dht.register_validator(DHT_NAMESPACE, PackageRecordValidator())
        self.router = gossipsub_router(settings)
        self.pubsub = Pubsub(self.host, self.router, strict_signing=settings.gossipsub.strict_signing)
        self.recorder = Recorder(channel.send, index)
        self.market = Market(self.host, self.dht, self.pubsub, self.recorder, seed, settings.dht.get_quorum)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.host.run([multiaddr.Multiaddr(self.settings.listen)]))
            if not self.settings.connections.auto_connect:
                # Its first pass found an empty peer store; stopped, it never tops up to ~150
                # connections behind the topology's back.
                network = self.host.get_network()
                assert isinstance(network, Swarm)
                await network.auto_connector.stop()
            await stack.enter_async_context(background_trio_service(self.dht))
            await stack.enter_async_context(background_trio_service(self.pubsub))
            # The router is a service of its own: its run() is GossipSub's heartbeat (mesh upkeep,
            # IHAVE gossip, the message cache's shift). Pubsub alone leaves it unstarted.
            await stack.enter_async_context(background_trio_service(self.router))
            await self.pubsub.wait_until_ready()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.market.receive_announcements)
                self.speakers.join(self.recorder)
                try:
                    yield
                finally:
                    self.speakers.leave(self.recorder)
                nursery.cancel_scope.cancel()

    def identity(self) -> dict[str, Any]:
        return {"peer_id": self.host.get_id().to_base58(), "addrs": [str(a) for a in self.host.get_addrs()]}

    async def serve(self) -> None:
        """Runs calls concurrently until the orchestrator says shutdown or goes away."""
        async with trio.open_nursery() as nursery:
            while (call := await self.channel.receive()) is not None:
                if call.get("op") == Call.SHUTDOWN:
                    routing = [str(peer_id) for peer_id in self.dht.routing_table.get_peer_ids()]
                    await self.channel.reply(call, {**self.stats(), ROUTING_PEERS: routing})
                    break
                if call.get("op") == Call.CRASH:
                    await self.channel.reply(call, sever(multiaddr.Multiaddr(self.settings.listen).value_for_protocol("ip4")))
                    break
                nursery.start_soon(self.answer, call)
            nursery.cancel_scope.cancel()

    async def answer(self, call: dict[str, Any]) -> None:
        handler = getattr(self, f"op_{call.get('op')}", None)
        if handler is None:
            await self.channel.reply(call, error=f"unknown op {call.get('op')!r}")
            return
        try:
            value = await handler(**call.get("args", {}))
        except Exception as exc:
            logging.getLogger("nodes.peer").exception("call %s failed", call.get("op"))
            await self.channel.reply(call, error=f"{type(exc).__name__}: {exc}")
            return
        await self.channel.reply(call, value)

    # -- operations the orchestrator calls -------------------------------------------------

    async def op_bootstrap(self, dial: list[str], min_routing_table: int, rejoin: bool = False) -> dict[str, Any]:
        async with self.recorder.operation(Op.REJOIN if rejoin else Op.BOOTSTRAP, dials=len(dial)) as details:
            for address in dial:
                async with self.recorder.operation(Op.CONNECT, to=address.rsplit("/", 1)[-1]):
                    await self.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(address)))
            await self.join_dht()
            size = self.dht.get_routing_table_size()
            details["routing_table"] = size
            details["connections"] = len(self.host.get_connected_peers())
            if size < min_routing_table:
                raise OpFailed(f"routing table holds {size} peers, fewer than {min_routing_table}")
        return self.stats()

    async def op_warm(self, table: list[str], dial: list[str]) -> dict[str, Any]:
        """A warm start: the routing table a converged network would have given this peer (the
        peers' /p2p/ multiaddrs), then connections to a few of them."""
        async with self.recorder.operation(Op.WARM, table=len(table), dials=len(dial)) as details:
            peerstore = self.host.get_peerstore()
            for address in table:
                info = info_from_p2p_addr(multiaddr.Multiaddr(address))
                peerstore.add_addrs(info.peer_id, info.addrs, PERMANENT_ADDR_TTL)
                await self.dht.routing_table.add_peer(info, skip_server_mode_check=True)
            for address in dial:
                await self.host.connect(info_from_p2p_addr(multiaddr.Multiaddr(address)))
            details["routing_table"] = self.dht.get_routing_table_size()
        return self.stats()

    async def op_leave(self) -> dict[str, Any]:
        """Leaves the network without stopping: every connection closed, the routing table
        emptied, so that a bootstrap call joins it again as a newcomer would (keys, store and
        packages kept)."""
        await self._disconnect()
        for peer_id in self.dht.routing_table.get_peer_ids():
            self.dht.routing_table.remove_peer(peer_id)
        return self.stats()

    async def op_forget(self, packages: list[str], queries: list[str], disconnect: bool = False) -> None:
        """Drops packages this peer fetched and search results it cached, so that the same get or
        search goes to the network again (the 2N check measures the same operations again); with
        `disconnect`, its connections too (routing table and addresses kept), so that the get dials
        what it needs, as a get in a large network does."""
        self.market.forget(packages, queries)
        if disconnect:
            await self._disconnect()

    async def _disconnect(self) -> None:
        async with trio.open_nursery() as nursery:  # at once: py-libp2p pauses 0.2 s in closing each connection
            for peer_id in list(self.host.get_connected_peers()):
                nursery.start_soon(self.host.disconnect, peer_id)

    async def op_retime(self, real_ns: int, real_wall_ns: int, factor: float) -> None:
        """The host process's clocks change factor from a real instant on (nodes/clock.py)."""
        clock.retime(factor, real_ns, real_wall_ns)

    async def join_dht(self) -> None:
        """Fills the routing table after the bootstrap dials, as `dht.join` says."""
        if self.settings.dht.join == "refresh":
            await self.dht.refresh_routing_table()
            return
        # The first half of the library's refresh: look itself up, keep the closest peers found.
        closest = await self.dht.peer_routing.find_closest_peers_network(self.host.get_id().to_bytes())
        peerstore = self.host.get_peerstore()
        dialable = set(peerstore.peers_with_addrs())
        for peer_id in closest:
            if peer_id in dialable:
                await self.dht.routing_table.add_peer(PeerInfo(peer_id, peerstore.addrs(peer_id)))

    async def op_publish(self, packages: list[dict[str, Any]], size: int, announce: bool) -> int:
        return await self._each(packages, lambda p: self.market.publish(p, size, announce))

    async def op_get(self, ids: list[str], timeout_s: float | None = None) -> int:
        """`timeout_s` (the run's time): a get that takes longer fails, as its user gives up."""
        async def bounded(package_id: str) -> None:
            with trio.fail_after(timeout_s if timeout_s is not None else math.inf):
                await self.market.get(package_id)

        return await self._each(ids, bounded)

    async def op_search(self, queries: list[str], fanout: int) -> int:
        return await self._each(queries, lambda q: self.market.search(q, fanout))

    async def op_announce(self, message_id: str, package_id: str) -> None:
        async with self.recorder.operation(Op.GOSSIP_PUBLISH, msg=message_id):
            await self.market.announce(message_id, self.market.packages[package_id])

    async def op_concurrent_search(self, queries: list[str], fanout: int) -> int:
        """All queries at once, each forced to the network; per-search latency under load."""
        op = concurrent_search_op(len(queries))
        failures = 0

        async def one(query: str) -> None:
            nonlocal failures
            try:
                await self.market.search(query, fanout, op=op)
            except Exception:
                failures += 1

        async with trio.open_nursery() as nursery:
            for query in queries:
                nursery.start_soon(one, query)
        return len(queries) - failures

    async def op_stats(self) -> dict[str, Any]:
        return self.stats()

    async def _each(self, items: list[Any], action: Any) -> int:
        """Sequential items; a failed one is already recorded as an event, so carry on."""
        done = 0
        for item in items:
            try:
                await action(item)
                done += 1
            except Exception:
                continue
        return done

    def stats(self) -> dict[str, Any]:
        return {
            "routing_table": self.dht.get_routing_table_size(),
            "connections": len(self.host.get_connected_peers()),
            "gossip_mesh": len(self.router.mesh.get(ANNOUNCE_TOPIC, ())),
            "gossip_topic_peers": len(self.pubsub.peer_topics.get(ANNOUNCE_TOPIC, ())),
            "values": self.dht.get_value_store_size(),
            "packages": len(self.market.packages),
            "reputation_peers": len(self.market.reputation.snapshot()),
        }


async def run_peer(index: int, control: str, speakers: Speakers) -> None:
    """One peer from hello to shutdown. A crash is logged with its traceback and ends only this
    peer: its control connection closes, and the orchestrator reports it lost with that cause."""
    _peer_index.set(index)
    try:
        channel = await ControlChannel.connect(control)
        await channel.send({"type": "hello", "index": index})
        start = await channel.receive()
        if start is None or start.get("op") != Call.START:
            raise RuntimeError(f"expected a start call, got {start!r}")
        settings = PeerSettings.of(start["args"])
        clock.adopt(settings.dilation)
        peer = Peer(index, channel, settings, speakers)
        async with peer.running():
            await channel.reply(start, peer.identity())
            await peer.serve()
    except Exception:
        logging.getLogger("nodes.peer").exception("peer %d crashed", index)


async def run(indices: list[int], control: str) -> None:
    """The host process: its peers, and its loop-lag watch for as long as any of them runs."""
    speakers = Speakers()
    async with trio.open_nursery() as host:
        host.start_soon(watch_lag, speakers)
        async with trio.open_nursery() as peers:
            for index in indices:
                peers.start_soon(run_peer, index, control, speakers)
        host.cancel_scope.cancel()


class _DropNoise(logging.Filter):
    """Drops the library's noise and stamps each line with the peer it comes from."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.peer = _peer_index.get()
        return not record.getMessage().startswith(_DHT_STREAM_NOISE)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nodes.peer")
    parser.add_argument("--index", type=int, nargs="+", required=True, help="the peers this process hosts")
    parser.add_argument("--control", required=True, help="Unix socket of the orchestrator")
    parser.add_argument("--netns", help="network namespace to enter before any socket is made")
    args = parser.parse_args(argv)
    die_with_parent()
    if args.netns:
        from pyroute2 import netns

        netns.setns(args.netns, flags=0)
    log_format = "%(asctime)s peer %(peer)s %(name)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=log_format)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)  # some py-libp2p modules set their own loggers to INFO
        handler.addFilter(_DropNoise())
    # py-libp2p detaches its logger from the root at import; reattach it so its warnings
    # reach the peer's stderr log with time stamps and pass the noise filter.
    library_logger = logging.getLogger("libp2p")
    library_logger.propagate = True
    library_logger.setLevel(logging.WARNING)
    install_work_handler()
    trio.run(run, args.index, args.control, clock=clock.CLOCK)


if __name__ == "__main__":
    main()
