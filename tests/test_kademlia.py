"""The converged routing tables of a warm start, against Kademlia's rules computed by hand."""

from __future__ import annotations

import hashlib
import random

import base58

from lab.workload.kademlia import K, bucket, converged_tables, key


def peer_ids(n: int) -> dict[int, str]:
    """Deterministic stand-ins for base58 peer ids (identity multihashes of 36 bytes)."""
    return {i: base58.b58encode(b"\x00\x24" + hashlib.sha256(str(i).encode()).digest()[:4] + bytes(30)).decode()
            for i in range(n)}


def test_bucket_is_the_shared_prefix_length_of_the_keys() -> None:
    assert bucket(0b1000 << 252, 0) == 0  # differ in the first bit
    assert bucket(1, 0) == 255 and bucket(0b11 << 200, 0b10 << 200) == 55


def test_tables_hold_every_peer_of_a_small_network_and_k_per_bucket_of_a_large_one() -> None:
    small = converged_tables(peer_ids(15), random.Random(1))
    assert all(sorted(table) == sorted(set(range(15)) - {i}) for i, table in small.items())
    ids = peer_ids(400)
    tables = converged_tables(ids, random.Random(1))
    keys = {i: key(p) for i, p in ids.items()}
    for index, table in list(tables.items())[:20]:
        per_bucket: dict[int, int] = {}
        for other in table:
            per_bucket[bucket(keys[index], keys[other])] = per_bucket.get(bucket(keys[index], keys[other]), 0) + 1
        assert max(per_bucket.values()) <= K and index not in table
        nearest = sorted((keys[index] ^ keys[o], o) for o in ids if o != index)[:5]
        assert all(o in table for _, o in nearest)  # the closest buckets are never full: always known
        assert 60 <= len(table) <= 200  # about k log2(n / k) + k
    assert converged_tables(ids, random.Random(1)) == tables  # same seed, same tables
