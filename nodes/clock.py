"""A host process's virtual clock: the run's time dilation, inside py-libp2p and trio.

With `network.time_dilation: N`, every clock a peer reads runs N times slower than the
machine's (the technique of "To Infinity and Beyond: Time-Warped Network Emulation", NSDI
2006, and DieCast, NSDI 2008): to the peers the machine looks N times faster, while the lab
stretches link delays by N and divides rates by N, so the network looks as configured. All
processes of a run share one epoch (nodes/protocol.py `Dilation`, which the first START call of a
host process brings), so their timestamps compare.

What is dilated here:
- trio's clock (`trio.run(clock=...)`): sleeps, timeouts, `move_on_after`, and through them
  py-libp2p's heartbeats, backoffs, request timeouts and its anyio-based services;
- `time.monotonic`, `time.time`, `time.perf_counter` and their `_ns` forms, which py-libp2p reads
  at use (seen cache, failed-dial cache, record expiry), and the lab's own event timestamps;
- `datetime.now` in py-libp2p's DHT records (timeReceived), which it compares with `time.time()`.

What is not (docs/design.md lists the effect of each): kernel timers (TCP's delayed ACK and
initial SYN timeout; the minimum RTO is dilated per route by the lab), threads that block in
real time (the pubsub seen-cache sweeper: it only sweeps more often in virtual time), and CPU
work, which takes the same real time at any N: that is the point.
"""

from __future__ import annotations

import time
from datetime import datetime, tzinfo

import trio

from nodes.protocol import Dilation, Segment

_real_monotonic_ns = time.monotonic_ns
_real_time_ns = time.time_ns


class DilatedClock(trio.abc.Clock):
    """trio's clock in virtual seconds: a deadline d away sleeps d x factor real seconds. The
    machine's clock until the run's timeline arrives (`adopt`)."""

    def __init__(self) -> None:
        self.dilation = Dilation()
        self.adopted = False

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return self.dilation.virtual_ns(_real_monotonic_ns()) / 1e9

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return self.dilation.sleep_s(deadline, _real_monotonic_ns())

    @property
    def factor(self) -> float:
        """The factor in force now (Python's own clocks are virtual once adopted)."""
        return self.dilation.factor_at(_real_monotonic_ns())

    def switched_ns(self) -> int:
        """The run's (virtual) nanoseconds at which the factor in force now took effect."""
        return self.dilation.segment_at(_real_monotonic_ns()).virtual_ns


CLOCK = DilatedClock()  # the host process's trio clock: trio.run(..., clock=CLOCK)


def adopt(dilation: Dilation) -> None:
    """The run's timeline, from the first START call this host process answers, before its
    peers exist (later peers of the host share it; changes arrive by `retime`). trio's clock
    steps back once, from the machine's time to the run's, while nothing waits on it. Python's
    clocks are replaced only when the run is dilated at some time."""
    if CLOCK.adopted:
        return
    CLOCK.dilation, CLOCK.adopted = dilation, True
    if not dilation.dilated:
        return

    def monotonic_ns() -> int:
        return dilation.virtual_ns(_real_monotonic_ns())

    def time_ns() -> int:
        return dilation.virtual_wall_ns(_real_time_ns())

    time.monotonic_ns = time.perf_counter_ns = monotonic_ns  # CLOCK_MONOTONIC both, on Linux
    time.monotonic = time.perf_counter = lambda: monotonic_ns() / 1e9
    time.time_ns = time_ns
    time.time = lambda: time_ns() / 1e9

    class VirtualDatetime(datetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> VirtualDatetime:
            return cls.fromtimestamp(time.time(), tz)

    from libp2p.kad_dht import common  # its timeReceived stamps, compared with time.time()

    common.datetime = VirtualDatetime  # type: ignore[misc]


def retime(factor: float, real_ns: int, real_wall_ns: int) -> None:
    """The orchestrator's announced change of factor (once per process: the same instant twice
    is one change)."""
    if not CLOCK.dilation.dilated:
        raise RuntimeError("this host's clocks are not dilated (network.time_dilation 1 and no phase of its own)")
    dilation = CLOCK.dilation
    dilation.follow(Segment(real_ns, real_wall_ns, dilation.virtual_ns(real_ns), dilation.virtual_wall_ns(real_wall_ns), factor))
