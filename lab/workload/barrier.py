"""Which peers each announcement has reached so far, so that a phase which sends announcements
(publish, gossip) ends when they have spread, not after a guessed sleep and not while they are
still spreading: at 1000 peers a message keeps both cores busy for tens of seconds, and the
next phase would measure queueing behind it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from lab.events import announced_message
from lab.workload.ticker import Ticker
from nodes.protocol import Event, Op

POLL_S = 0.5


class Deliveries:
    """Fed every event of the run (`record`); counted per message, so a wait costs the
    orchestrator a set difference per message every POLL_S, not a scan of all events."""

    def __init__(self) -> None:
        self.senders: dict[str, int] = {}  # message -> the peer that sent it, in sending order
        self.reached: dict[str, set[int]] = {}

    def record(self, event: Event) -> None:
        if (message := announced_message(event)) and event.peer is not None:
            self.senders[message] = event.peer
        elif event.op == Op.GOSSIP_DELIVERY and event.message is not None and event.peer is not None:
            self.reached.setdefault(event.message, set()).add(event.peer)

    def mark(self) -> int:
        """How many messages were sent so far: `settle(mark)` waits for the ones sent after it."""
        return len(self.senders)

    def missing(self, since: int, peers: set[int]) -> int:
        """Deliveries still owed for the messages sent after `since`: live peers other than
        the sender that have not received them."""
        owed = 0
        for message, sender in list(self.senders.items())[since:]:
            owed += len(peers - self.reached.get(message, set()) - {sender})
        return owed

    async def settle(self, since: int, peers: Callable[[], set[int]], limit_s: float, echo: Callable[[str], None],
                     clock: Callable[[], float] = time.monotonic) -> int:
        """Waits until every live peer has every message sent after `since`, at most `limit_s` on
        `clock` (the run's seconds, whatever the dilation does meanwhile); says how long it took
        or what is still missing, and returns the deliveries missing."""
        started = clock()
        messages = len(self.senders) - since
        if not messages:  # every send failed: the phase's errors say so, nothing to wait for
            return 0
        expected = self.missing(since, peers())
        async with Ticker(echo, "announcement deliveries", expected) as ticker:
            while (owed := self.missing(since, peers())) and clock() - started < limit_s:
                ticker.done = expected - owed
                await asyncio.sleep(POLL_S)
        waited = clock() - started
        if owed:
            echo(f"  barrier: {messages} announcements still miss {owed} deliveries after {waited:.3g}s (settle {limit_s:g}s)")
        else:  # in the run's seconds: at a dilation of 400, 40 s of the machine's are 0.1 s of them
            echo(f"  barrier: {messages} announcements reached every live peer {waited:.3g}s after the last was sent")
        return owed
