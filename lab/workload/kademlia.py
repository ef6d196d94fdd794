"""The routing tables a converged Kademlia network would hold, computed from the peers' ids
(the warm start of `bootstrap.mode: warm`).

A peer's key is the SHA-256 of its peer id's bytes (as py-libp2p's routing table keys it);
the distance between two peers is the XOR of their keys, and the bucket of another peer is
the length of the prefix the two keys share. A converged table holds, for every bucket, up to
k = 20 of the peers that fall in it (Kademlia's k-buckets): all of the nearest, a sample of the
farther, about k x log2(n / k) + k peers in a network of n. Which k of a crowded bucket a peer
knows is drawn from the run's seed, as which peers a real one met first is chance.
"""

from __future__ import annotations

import hashlib
import random

import base58

K = 20
KEY_BITS = 256


def key(peer_id: str) -> int:
    """The routing key of a base58 peer id."""
    return int.from_bytes(hashlib.sha256(base58.b58decode(peer_id)).digest(), "big")


def bucket(own: int, other: int) -> int:
    """The length of the key prefix the two share (0: they differ in the first bit)."""
    return KEY_BITS - (own ^ other).bit_length()


def converged_tables(peer_ids: dict[int, str], rng: random.Random, k: int = K) -> dict[int, list[int]]:
    """{peer index: the indexes of the peers in its converged routing table}."""
    keys = {index: key(peer_id) for index, peer_id in peer_ids.items()}
    tables = {}
    for index, own in keys.items():
        buckets: dict[int, list[int]] = {}
        for other, other_key in keys.items():
            if other != index:
                buckets.setdefault(bucket(own, other_key), []).append(other)
        tables[index] = sorted(peer for members in buckets.values()
                               for peer in (members if len(members) <= k else rng.sample(members, k)))
    return tables
