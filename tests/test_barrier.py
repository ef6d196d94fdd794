"""The announcement barrier: which deliveries a phase still waits for, and when it stops waiting."""

import asyncio

from conftest import event
from lab.workload.barrier import Deliveries


def test_missing_counts_only_the_phases_own_messages_and_live_receivers() -> None:
    deliveries = Deliveries()
    deliveries.record(event("publish", 1, peer=0, package="pkg-1", msg="publish:pkg-1"))
    deliveries.record(event("gossip_delivery", 5, peer=1, msg="publish:pkg-1"))
    first = deliveries.mark()
    assert first == 1
    deliveries.record(event("gossip_publish", 1, peer=2, msg="gossip:0"))
    deliveries.record(event("gossip_publish", 1, peer=3, msg="gossip:1", ok=False))  # never sent: owes nothing
    deliveries.record(event("gossip_delivery", 5, peer=0, msg="gossip:0"))
    peers = {0, 1, 2, 3}
    assert deliveries.missing(0, peers) == 2 + 2  # pkg-1 owes peers 2, 3; gossip:0 (sent by 2) owes 1, 3
    assert deliveries.missing(first, peers) == 2
    assert deliveries.missing(first, peers - {3}) == 1  # a lost peer is owed nothing


def test_a_delivery_that_arrives_before_its_senders_event_still_counts() -> None:
    deliveries = Deliveries()
    deliveries.record(event("gossip_delivery", 5, peer=1, msg="publish:pkg-1"))  # the publish op ends after announcing
    deliveries.record(event("publish", 9, peer=0, package="pkg-1", msg="publish:pkg-1"))
    assert deliveries.missing(0, {0, 1}) == 0


def test_settle_ends_when_the_last_delivery_arrives() -> None:
    deliveries = Deliveries()
    deliveries.record(event("gossip_publish", 1, peer=0, msg="gossip:0"))
    lines: list[str] = []

    async def deliver_later() -> int:
        waiting = asyncio.create_task(deliveries.settle(0, lambda: {0, 1, 2}, 600, lines.append))
        for receiver in (1, 2):
            await asyncio.sleep(0.1)
            assert not waiting.done()
            deliveries.record(event("gossip_delivery", 5, peer=receiver, msg="gossip:0"))
        return await waiting

    assert asyncio.run(deliver_later()) == 0
    assert lines[-1].startswith("  barrier: 1 announcements reached every live peer")


def test_settle_gives_up_after_its_limit_and_says_what_is_missing() -> None:
    deliveries = Deliveries()
    deliveries.record(event("gossip_publish", 1, peer=0, msg="gossip:0"))
    deliveries.record(event("gossip_delivery", 5, peer=1, msg="gossip:0"))
    lines: list[str] = []
    assert asyncio.run(deliveries.settle(0, lambda: {0, 1, 2, 3}, 0.2, lines.append)) == 2
    assert lines[-1].startswith("  barrier: 1 announcements still miss 2 deliveries")


def test_settle_without_sent_messages_returns_at_once_and_says_nothing() -> None:
    deliveries = Deliveries()
    deliveries.record(event("gossip_publish", 1, peer=0, msg="gossip:0", ok=False))
    lines: list[str] = []
    assert asyncio.run(deliveries.settle(0, lambda: {0, 1}, 600, lines.append)) == 0
    assert lines == []
