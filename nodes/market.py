"""The marketplace registry the seed documents describe, on a real py-libp2p host.

publish: local store + DHT record + provider record + gossip announcement.
search:  result cache -> local index -> fan-out to a few peers (chosen by reputation), merged.
get:     local store -> DHT record -> providers -> body fetched over a stream, checksum verified.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import trio
from libp2p.abc import IHost, INetStream
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import KadDHT
from libp2p.peer.id import ID
from libp2p.pubsub.pubsub import Pubsub
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes

from nodes.packages import Package, checksum, dht_key, make_body, query_terms
from nodes.protocol import Op
from nodes.recorder import OpFailed, Recorder
from nodes.reputation import Reputation

SEARCH_PROTOCOL = TProtocol("/p2p-lab/market/search/1.0.0")
FETCH_PROTOCOL = TProtocol("/p2p-lab/market/fetch/1.0.0")
ANNOUNCE_TOPIC = "/p2p-lab/market/announce/1.0.0"
REQUEST_TIMEOUT_S = 10.0


async def _request(host: IHost, peer: ID, protocol: TProtocol, payload: dict[str, Any]) -> bytes:
    """One request/response exchange: varint-prefixed request, varint-prefixed answer."""
    stream = await host.new_stream(peer, [protocol])
    try:
        await stream.write(encode_varint_prefixed(json.dumps(payload).encode()))
        return await read_varint_prefixed_bytes(stream)
    finally:
        await stream.close()


class Market:
    def __init__(
        self,
        host: IHost,
        dht: KadDHT,
        pubsub: Pubsub,
        recorder: Recorder,
        seed: int,
        get_quorum: int,
    ) -> None:
        self.host = host
        self.dht = dht
        self.pubsub = pubsub
        self.recorder = recorder
        self.seed = seed
        self.get_quorum = get_quorum
        self.packages: dict[str, Package] = {}
        self.bodies: dict[str, bytes] = {}
        self.search_cache: dict[str, list[Package]] = {}
        self.looked_up: set[bytes] = set()  # DHT keys this peer's own lookups put into its store (py-libp2p keeps what it gets)
        self.reputation = Reputation(random.Random(f"{seed}:reputation:{host.get_id()}"))
        host.set_stream_handler(SEARCH_PROTOCOL, self._serve_search)
        host.set_stream_handler(FETCH_PROTOCOL, self._serve_fetch)

    # -- publish -------------------------------------------------------------------------

    async def publish(self, metadata: dict[str, Any], size: int, announce: bool) -> None:
        """`announce`: gossip the package too; the event then names the message (`msg`) whose
        deliveries are owed."""
        async with self.recorder.operation(Op.PUBLISH, package=metadata["id"]) as details:
            body = make_body(self.seed, metadata["id"], size)
            package = Package.from_dict(
                {**metadata, "size": size, "sha256": checksum(body), "publisher": str(self.host.get_id())}
            )
            self.packages[package.id] = package
            self.bodies[package.id] = body
            key = dht_key(package.id)
            started = time.monotonic_ns()
            await self.dht.put_value(key, package.to_json())
            details["dht_put_ms"] = (time.monotonic_ns() - started) / 1e6
            started = time.monotonic_ns()
            if not await self.dht.provide(key):
                raise OpFailed("provider record was not stored")
            details["provide_ms"] = (time.monotonic_ns() - started) / 1e6
            if announce:
                details["msg"] = f"publish:{package.id}"
                await self.announce(details["msg"], package)

    async def announce(self, message_id: str, package: Package) -> None:
        """Gossip an announcement; the send time travels in the payload (one clock per machine)."""
        payload = {"msg": message_id, "package": json.loads(package.to_json()), "sent_ns": time.monotonic_ns()}
        await self.pubsub.publish(ANNOUNCE_TOPIC, json.dumps(payload).encode())

    async def receive_announcements(self) -> None:
        """First deliveries are timed; a message delivered again (GossipSub forgets seen
        messages after its seen-TTL) is recorded as `gossip_duplicate`, not as a latency."""
        subscription = await self.pubsub.subscribe(ANNOUNCE_TOPIC)
        me = self.host.get_id().to_bytes()
        delivered: set[str] = set()
        while True:
            message = await subscription.get()
            received = time.monotonic_ns()
            if message.from_id == me:
                continue
            payload = json.loads(message.data)
            op = Op.GOSSIP_DUPLICATE if payload["msg"] in delivered else Op.GOSSIP_DELIVERY
            delivered.add(payload["msg"])
            await self.recorder.event(
                op, payload["sent_ns"], received, None, {"msg": payload["msg"], "from": ID(message.from_id).to_base58()}
            )

    # -- get -----------------------------------------------------------------------------

    async def get(self, package_id: str) -> Package:
        async with self.recorder.operation(Op.GET, package=package_id) as details:
            if package_id in self.bodies:
                details["source"] = "local"
                return self.packages[package_id]
            package = await self._lookup(package_id)
            providers = await self._find_providers(package_id)
            body = await self._fetch(package, providers)
            self.packages[package_id] = package
            self.bodies[package_id] = body
            details["source"] = "network"
            return package

    async def _lookup(self, package_id: str) -> Package:
        """A record the DHT already replicated to this peer needs no network: that is a
        different operation (`dht_lookup_local`), kept apart so it cannot flatter `dht_lookup`."""
        key = dht_key(package_id)
        op = Op.DHT_LOOKUP_LOCAL if self.dht.value_store.get(key.encode()) else Op.DHT_LOOKUP
        async with self.recorder.operation(op, package=package_id):
            raw = await self.dht.get_value(key, quorum=self.get_quorum)
            if raw is None:
                raise OpFailed("no DHT record")
            if op == Op.DHT_LOOKUP:
                self.looked_up.add(key.encode())
            return Package.from_json(raw)

    async def _find_providers(self, package_id: str) -> list[ID]:
        async with self.recorder.operation(Op.DHT_FIND_PROVIDERS, package=package_id) as details:
            found = await self.dht.find_providers(dht_key(package_id))
            providers = [info.peer_id for info in found if info.peer_id != self.host.get_id()]
            for info in found:
                self.host.get_peerstore().add_addrs(info.peer_id, info.addrs, 3600)
            details["providers"] = len(providers)
            if not providers:
                raise OpFailed("no providers")
            return providers

    async def _fetch(self, package: Package, providers: list[ID]) -> bytes:
        """Ask providers in reputation order until one returns a body with the right checksum."""
        by_name = {p.to_base58(): p for p in providers}
        errors: list[str] = []
        for name in self.reputation.best(list(by_name), len(by_name)):
            started = time.monotonic()
            try:
                async with self.recorder.operation(Op.FETCH, package=package.id, provider=name) as details:
                    with trio.fail_after(REQUEST_TIMEOUT_S):
                        body = await _request(self.host, by_name[name], FETCH_PROTOCOL, {"id": package.id})
                    if checksum(body) != package.sha256:
                        raise OpFailed("checksum mismatch")
                    details["bytes"] = len(body)
            except Exception as exc:
                self.reputation.record(name, False, 0.0)
                errors.append(f"{name[-8:]}: {exc}")
                continue
            self.reputation.record(name, True, time.monotonic() - started)
            return body
        raise OpFailed(f"no provider delivered the body ({', '.join(errors)})")

    async def _serve_fetch(self, stream: INetStream) -> None:
        try:
            request = json.loads(await read_varint_prefixed_bytes(stream))
            await stream.write(encode_varint_prefixed(self.bodies.get(request["id"], b"")))
        finally:
            await stream.close()

    # -- search --------------------------------------------------------------------------

    def local_matches(self, query: str) -> list[Package]:
        terms = query_terms(query)
        return [p for p in self.packages.values() if p.matches(terms)]

    def forget(self, packages: list[str], queries: list[str]) -> None:
        """Drops fetched packages, the DHT records its own lookups stored, and cached search
        results (never one this peer published, nor a record the DHT replicated to it)."""
        for package_id in packages:
            package = self.packages.get(package_id)
            if package is not None and package.publisher != str(self.host.get_id()):
                self.packages.pop(package_id, None)
                self.bodies.pop(package_id, None)
            key = dht_key(package_id).encode()
            if key in self.looked_up:
                self.dht.value_store.remove(key)
                self.looked_up.discard(key)
        for query in queries:
            self.search_cache.pop(query, None)

    async def search(self, query: str, fanout: int, op: str | None = None) -> list[Package]:
        """`op` names a forced remote search (concurrency runs); otherwise cache, local, remote."""
        if op is None:
            if query in self.search_cache:
                async with self.recorder.operation(Op.SEARCH_CACHE_HIT, query=query) as details:
                    details["results"] = len(self.search_cache[query])
                    return self.search_cache[query]
            local = self.local_matches(query)
            if local:
                async with self.recorder.operation(Op.SEARCH_LOCAL, query=query) as details:
                    details["results"] = len(local)
                    self.search_cache[query] = local
                    return local
        async with self.recorder.operation(op or Op.SEARCH_REMOTE, query=query) as details:
            results = await self._search_remote(query, fanout, details)
            self.search_cache[query] = results
            return results

    async def _search_remote(self, query: str, fanout: int, details: dict[str, Any]) -> list[Package]:
        candidates = [p.to_base58() for p in self.host.get_connected_peers()]
        asked = self.reputation.best(candidates, fanout)
        by_name = {p.to_base58(): p for p in self.host.get_connected_peers()}
        merged: dict[str, Package] = {}
        answered = 0

        async def ask(name: str) -> None:
            nonlocal answered
            started = time.monotonic()
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    raw = await _request(self.host, by_name[name], SEARCH_PROTOCOL, {"query": query})
                found = [Package.from_dict(item) for item in json.loads(raw)]
            except Exception:
                self.reputation.record(name, False, 0.0)
                return
            self.reputation.record(name, True, time.monotonic() - started)
            answered += 1
            for package in found:
                merged.setdefault(package.id, package)

        async with trio.open_nursery() as nursery:
            for name in asked:
                nursery.start_soon(ask, name)
        details.update(peers_asked=len(asked), peers_answered=answered, results=len(merged))
        if asked and not answered:
            raise OpFailed(f"none of {len(asked)} peers answered")
        return sorted(merged.values(), key=lambda p: p.id)

    async def _serve_search(self, stream: INetStream) -> None:
        try:
            request = json.loads(await read_varint_prefixed_bytes(stream))
            found = [json.loads(p.to_json()) for p in self.local_matches(str(request["query"]))]
            await stream.write(encode_varint_prefixed(json.dumps(found).encode()))
        finally:
            await stream.close()
