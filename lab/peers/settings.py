"""What each peer is told when it starts: the topology's library settings, typed for the wire
(nodes/protocol.py), where the peer listens and the run's virtual time."""

from __future__ import annotations

from lab.topology import Topology
from nodes.protocol import Connections, Dht, Dilation, Gossipsub, PeerSettings, Yamux


def peer_settings(topology: Topology, listen: str, dilation: Dilation, incarnation: int = 0) -> PeerSettings:
    libp2p = topology.libp2p
    connections, dht, yamux, gossipsub = libp2p.connections, libp2p.dht, libp2p.yamux, libp2p.gossipsub
    return PeerSettings(
        seed=topology.seed,
        listen=listen,
        dilation=dilation,
        connections=Connections(connections.max_per_peer, connections.max_connections, connections.max_inbound,
                                connections.auto_connect, connections.dial_timeout),
        dht=Dht(dht.mode, dht.join, dht.get_quorum, dht.maintenance_interval, dht.random_walk, dht.max_peers_per_subnet),
        yamux=Yamux(yamux.rtt_interval, yamux.release_on_read),
        gossipsub=Gossipsub(gossipsub.degree, gossipsub.degree_low, gossipsub.degree_high, gossipsub.heartbeat,
                            gossipsub.gossip_window, gossipsub.scorer, gossipsub.adaptive_gossip, gossipsub.spam_protection,
                            gossipsub.eclipse_protection, gossipsub.strict_signing),
        incarnation=incarnation,
    )
