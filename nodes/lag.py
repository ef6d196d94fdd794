"""The fidelity guard's probe: how late this host process's event loop runs a timer.

Mininet-HiFi's idea: an emulator overloaded past what it can emulate breaks an invariant one
can watch; here, a timer due at t fires at t + lag. A task sleeps LAG_INTERVAL_S at a time and
counts, per LAG_WINDOW_S, how late each wake-up was (virtual time, so a dilated run's lag is
measured on the clock its latencies are). The lag covers both waits a latency measured in this
process includes: for the event loop (other peers' work) and for a CPU (other processes').
"""

from __future__ import annotations

import bisect
import time

import trio

from nodes.clock import CLOCK
from nodes.protocol import LAG_BINS_MS, LAG_WINDOW_S, LOOP_LAG
from nodes.recorder import Recorder

LAG_INTERVAL_S = 0.05


class Speakers:
    """The host process's live peers' recorders, in the order they started: its loop lag goes out
    through the first, so that the report, which also tells the lab the process is alive,
    outlives any one peer (a fault phase crashes single peers)."""

    def __init__(self) -> None:
        self.recorders: list[Recorder] = []
        self.first = trio.Event()  # a peer runs: the run's clock is adopted (nodes/clock.py), windows may start

    def join(self, recorder: Recorder) -> None:
        self.recorders.append(recorder)
        self.first.set()

    def leave(self, recorder: Recorder) -> None:
        self.recorders.remove(recorder)


async def watch_lag(speakers: Speakers) -> None:
    """One `loop_lag` event per window: counts of wake-ups by lateness (LAG_BINS_MS), from the
    first peer's start on (nothing may wait on trio's clock before the run's clock is adopted,
    and a process's start-up is no phase's lag). A window also ends where the clock's factor
    changes (its end is the switch's instant: the next wake-up may come long after it, at 400 up
    to 20 s of the machine's time into the next factor's operations), so that no window spans
    two factors: at a high factor one lasts minutes of the machine's time, and the burst of work
    that follows a switch back to a low one would be pooled with the operations measured before
    it."""
    await speakers.first.wait()
    while True:
        counts = [0] * (len(LAG_BINS_MS) + 1)
        factor = CLOCK.factor
        started_ns, window_end = time.monotonic_ns(), trio.current_time() + LAG_WINDOW_S
        ended_ns = None
        while trio.current_time() < window_end:
            due = trio.current_time() + LAG_INTERVAL_S
            await trio.sleep_until(due)
            if CLOCK.factor != factor:  # a wake-up across the switch is counted in neither window,
                ended_ns = CLOCK.switched_ns()  # and this one ends at the switch, not at that wake-up
                break
            counts[bisect.bisect_left(LAG_BINS_MS, (trio.current_time() - due) * 1e3)] += 1
        if speakers.recorders:
            await speakers.recorders[0].event(LOOP_LAG, started_ns, ended_ns or time.monotonic_ns(), None,
                                              {"counts": counts})
