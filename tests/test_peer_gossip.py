"""The lab's peers run GossipSub as py-libp2p means it to run: with its heartbeat.

Until commit 4023efc the peers started Pubsub but not the GossipSub router's own service, so no
heartbeat ever ran: meshes were never pruned, no IHAVE gossip went out, and the message cache
never shifted, so every message ever sent was replayed to every new connection. Three real
peers (the lab's `Peer`, real hosts on loopback) in one trio loop show the heartbeat at work.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from libp2p.peer.peerinfo import PeerInfo

from conftest import ROOT
from lab.peers.settings import peer_settings
from lab.topology import load_topology
from nodes.lag import Speakers
from nodes.market import ANNOUNCE_TOPIC
from nodes.peer import Peer
from nodes.protocol import Dilation

pytestmark = [pytest.mark.slow]


class EventSink:
    """The orchestrator's end of a peer's control channel, as far as `Recorder` uses it."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.events.append(message)


async def _serve(peer: Peer, ready: trio.Event) -> None:
    async with peer.running():
        ready.set()
        await trio.sleep_forever()


async def _announce_and_watch_the_cache() -> tuple[list[str], list[int]]:
    settings = peer_settings(load_topology(ROOT / "topologies" / "10-peers.yaml"), "/ip4/127.0.0.1/tcp/0", Dilation())
    sinks = [EventSink() for _ in range(3)]
    peers = [Peer(index, sink, settings, Speakers()) for index, sink in enumerate(sinks)]  # type: ignore[arg-type]
    windows: list[int] = []
    async with trio.open_nursery() as nursery:
        for peer in peers:
            ready = trio.Event()
            nursery.start_soon(_serve, peer, ready)
            await ready.wait()
        first = peers[0]
        for peer in peers[1:]:
            await peer.host.connect(PeerInfo(first.host.get_id(), first.host.get_addrs()))
        with trio.fail_after(30):
            while len(first.pubsub.peer_topics.get(ANNOUNCE_TOPIC, ())) < 2:
                await trio.sleep(0.1)
            await first.pubsub.publish(ANNOUNCE_TOPIC, json.dumps({"msg": "m", "sent_ns": 0}).encode())
            windows.append(len(first.router.mcache.window(ANNOUNCE_TOPIC)))
            while windows[-1]:  # each heartbeat shifts the cache; the window holds the last 3 shifts
                await trio.sleep(0.2)
                windows.append(len(first.router.mcache.window(ANNOUNCE_TOPIC)))
            while not all(s.events for s in sinks[1:]):
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    return [e["op"] for s in sinks[1:] for e in s.events], windows


def test_an_announcement_leaves_the_message_cache_window_after_some_heartbeats() -> None:
    received, windows = trio.run(_announce_and_watch_the_cache)
    assert received == ["gossip_delivery", "gossip_delivery"]
    assert windows[0] == 1 and windows[-1] == 0
