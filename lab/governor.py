"""Virtual time that follows the load: the time dilation raised while the peers' timers run late
against what is being measured, lowered while the machine idles (docs/design.md, Virtual time).

A fixed dilation is DieCast's: simple, and it wastes every idle stretch at the rate the busiest
needs. Time Jails and SliceTime let virtual time run as fast as the machine keeps it faithful.
Here the rule is the fidelity guard's own (lab/analysis/guard.py): a latency is trusted while the
loop lag's p99 stays within GUARD_SHARE of the operations' median. So, checked every CHECK_S of
the machine's time while a workload phase runs:

- raise (x2, up to `highest`) when the lag p99 pooled since the last switch exceeds `raise_share`
  of that allowance, the median taken over the phase's last MEDIAN_OF completed operations;
- lower (/2, down to `lowest`, or to the phase's own `time_dilation` where it states one: that
  factor was chosen for the load the phase itself starts, a gossip message's spread, and an
  idle stretch between two announcements must not leave the next one a lower factor) when the
  machine was less than `idle_busy` busy over the last `hold` seconds, no switch happened in
  them, and the lag (if any was measured since the switch) is under `lower_share` of the
  allowance.

The gap between the two shares and the hold are the hysteresis. Each switch goes through the
orchestrator's announced retime, so every clock, link and timer follows together; the lag windows
end at a switch (nodes/lag.py), so each is measured at one factor, and the guard judges each
operation by the lag while it ran, whatever the factor was.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psutil

from lab.analysis.guard import GUARD_SHARE, Lag, LagPool
from lab.metric_names import unit_of
from lab.peers.collector import busy_between
from lab.topology import AdaptiveDilation
from nodes.protocol import ANSWERED_LOCALLY, LOOP_LAG, Event, Segment

CHECK_S = 1.0
MEDIAN_OF = 50
MIN_WINDOWS = 2  # lag windows since the switch before a raise is decided on them


@dataclass(frozen=True)
class Reading:
    """What the governor knows at a check."""

    factor: float
    lag: Lag  # pooled since the last switch
    median_ms: float | None  # of the phase's recent operations
    busy: float  # the machine's busy share over the hold
    held_s: float  # machine seconds since the last switch

    @property
    def allowance_ms(self) -> float | None:
        return GUARD_SHARE * self.median_ms if self.median_ms else None


def next_factor(reading: Reading, policy: AdaptiveDilation, floor: float | None = None) -> tuple[float, str] | None:
    """The factor to switch to and why, or None to stay; never lowered under `floor`."""
    lowest = max(policy.lowest, floor or policy.lowest)
    allowance = reading.allowance_ms
    lag = reading.lag.p99_ms if reading.lag.windows >= MIN_WINDOWS else None
    if lag is not None and allowance is not None and lag > policy.raise_share * allowance and reading.factor < policy.highest:
        return (min(policy.highest, 2 * reading.factor),
                f"loop lag p99 {lag:g} ms > {policy.raise_share:.0%} of the guard's {allowance:.3g} ms")
    calm = lag is None or allowance is None or lag < policy.lower_share * allowance
    if reading.held_s >= policy.hold and reading.busy < policy.idle_busy and calm and reading.factor > lowest:
        return max(lowest, reading.factor / 2), f"machine {reading.busy:.0%} busy over {policy.hold:g}s"
    return None


class Governor:
    """Hears the run's events, and while `govern` runs (a workload phase), switches the factor
    through `retime` (the orchestrator's announced switch) as `next_factor` says."""

    def __init__(self, policy: AdaptiveDilation, factor: Callable[[], float], now_ns: Callable[[], int],
                 retime: Callable[[float, str], Awaitable[Segment]]) -> None:
        self.policy, self.factor, self.now_ns, self.retime = policy, factor, now_ns, retime
        self.pool = LagPool()
        self.latencies: deque[float] = deque(maxlen=MEDIAN_OF)
        self.since_ns = 0  # the run's time of the last switch: lag windows from before it are not pooled
        self.switched_at = time.monotonic()
        self.cpu: deque[tuple[float, Any]] = deque()  # (machine time, psutil.cpu_times())
        self.stopping = asyncio.Event()

    def hear(self, event: Event) -> None:
        if event.op == LOOP_LAG:
            if event.start_ns >= self.since_ns:
                self.pool.add(event)
        elif (event.ok and event.peer is not None and event.op not in ANSWERED_LOCALLY
              and unit_of(event.op) == "millisecond" and event.end_ns > event.start_ns):
            self.latencies.append(event.ms)

    async def govern(self, floor: float | None = None) -> None:
        """A check every CHECK_S until `stop` (the phase's end), never lowering under `floor` (the
        phase's own factor, if it states one)."""
        self.latencies.clear()  # a phase's operations are not the last one's
        self.cpu.clear()
        self.stopping.clear()
        self._restart(self.now_ns(), time.monotonic_ns())
        while not self.stopping.is_set():
            self._sample_cpu()
            if step := next_factor(self.reading(), self.policy, floor):
                segment = await self.retime(*step)
                self._restart(segment.virtual_ns, segment.real_ns)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), CHECK_S)

    async def stop(self, governing: asyncio.Task[None]) -> None:
        """Ends `govern` between checks: a switch under way is completed, never cut in half."""
        self.stopping.set()
        await governing

    def reading(self) -> Reading:
        median = statistics.median(self.latencies) if self.latencies else None
        return Reading(self.factor(), self.pool.lag, median, self._busy(),
                       time.monotonic() - self.switched_at)

    def _restart(self, virtual_ns: int, real_ns: int) -> None:
        """Evidence starts again from a switch's instant (announced ahead: the run's time and the
        machine's): the lag from then on, at the factor then in force."""
        self.pool = LagPool()
        self.since_ns, self.switched_at = virtual_ns, real_ns / 1e9

    def _sample_cpu(self) -> None:
        now = time.monotonic()
        self.cpu.append((now, psutil.cpu_times()))
        while len(self.cpu) > 2 and self.cpu[1][0] <= now - self.policy.hold:
            self.cpu.popleft()

    def _busy(self) -> float:
        """The busy share over the last `hold` seconds (as much of them as was sampled)."""
        return busy_between(self.cpu[0][1], self.cpu[-1][1]) if len(self.cpu) > 1 else 1.0
