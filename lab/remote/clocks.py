"""The machines' clocks against each other, by four-timestamp UDP probes between their VXLAN ends.

A latency stamped on two machines (a gossip message sent on one, delivered on another) is only
as good as the agreement of their clocks. Ray's calls bound an agent's offset to ~+-1 ms (the
quickest of 20 round trips of 0.6-0.8 ms, lab/remote/machine.py `measure_offset`); a UDP
exchange between the machines' own addresses bounds it to a few tens of microseconds:

    reference  t1 --probe-->  t2  other
               t4 <--answer-- t3                offset = ((t2 - t1) + (t3 - t4)) / 2
                                               error  = ((t4 - t1) - (t3 - t2)) / 2

the quickest of `PROBES` exchanges kept (NTP's rule: the least delay, the least asymmetry it can
hide). Each machine of a run is read against the run's first machine before the run (the
timeline each is given: the first machine's Ray offset plus its own), every `EVERY_S` during it
and after it; the readings give each machine's drift and a bound on how far two machines'
timelines drifted apart over the run (`timeline_error_ns`), which verdicts of latencies stamped
on two machines are judged against (lab/analysis/figures.py).
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass

from lab.network.netlink import inside

ASK = struct.Struct("!I")  # the probe's number
ANSWER = struct.Struct("!Iqq")  # its number, when it arrived (t2) and when the answer left (t3)
PROBES = 20
EVERY_S = 30.0  # during a run
TIMEOUT_S = 1.0  # per exchange: the machines' own network, not the peers' impaired links


@dataclass(frozen=True)
class Exchange:
    """One probe: sent (t1) and answer received (t4) on the reference's clock, arrived (t2) and
    answered (t3) on the other machine's, all CLOCK_MONOTONIC nanoseconds."""

    t1: int
    t2: int
    t3: int
    t4: int

    @property
    def delay_ns(self) -> int:
        return (self.t4 - self.t1) - (self.t3 - self.t2)


@dataclass(frozen=True)
class Reading:
    """The other machine's clock minus the reference's, within +-error_ns, read at `at_ns` of the
    reference's clock."""

    at_ns: int
    offset_ns: int
    error_ns: int

    @classmethod
    def of(cls, exchanges: list[Exchange]) -> Reading | None:
        """The quickest exchange's reading; None when no probe came back."""
        if not exchanges:
            return None
        best = min(exchanges, key=lambda e: e.delay_ns)
        return cls((best.t1 + best.t4) // 2, ((best.t2 - best.t1) + (best.t3 - best.t4)) // 2, (best.delay_ns + 1) // 2)


def drift_ppm(readings: list[Reading]) -> float | None:
    """The other clock's rate against the reference's (parts per million), by least squares over
    the readings; None with fewer than two, or all at one instant."""
    if len(readings) < 2:
        return None
    mean_at = sum(r.at_ns for r in readings) / len(readings)
    mean_offset = sum(r.offset_ns for r in readings) / len(readings)
    spread = sum((r.at_ns - mean_at) ** 2 for r in readings)
    if spread == 0:
        return None
    slope = sum((r.at_ns - mean_at) * (r.offset_ns - mean_offset) for r in readings) / spread
    return slope * 1e6


def wander_ns(readings: list[Reading]) -> int:
    """How far a machine's timeline strayed from the reference's over a run: it was given the
    first reading's offset, so each later reading's departure from it, plus both error bars;
    the first reading's error alone with one reading."""
    if not readings:
        return 0
    first = readings[0]
    return max(abs(r.offset_ns - first.offset_ns) + r.error_ns + first.error_ns if r is not first else first.error_ns
               for r in readings)


def timeline_error_ns(wanders: list[int]) -> int:
    """The bound on the error of a latency stamped on two machines: the two largest wanders added
    (the reference's own is 0)."""
    largest = sorted([0, 0, *wanders], reverse=True)
    return largest[0] + largest[1]


def _socket(ip: str, netns: str | None) -> socket.socket:
    with inside(netns) if netns else nullcontext():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    return sock


def serve(ip: str, netns: str | None) -> int:
    """Answers clock probes to `ip` (in `netns`) for as long as this process lives; returns the port."""
    sock = _socket(ip, netns)

    def answer() -> None:
        while True:
            data, sender = sock.recvfrom(64)
            arrived = time.monotonic_ns()
            if len(data) == ASK.size:
                sock.sendto(ANSWER.pack(ASK.unpack(data)[0], arrived, time.monotonic_ns()), sender)

    threading.Thread(target=answer, daemon=True, name="clock").start()
    return int(sock.getsockname()[1])


def probe(ip: str, netns: str | None, to: tuple[str, int], count: int = PROBES) -> list[Exchange]:
    """`count` exchanges, one at a time, from `ip` (in `netns`) with the clock answering at `to`;
    a probe lost (or answered after the next was sent) is left out."""
    exchanges = []
    with _socket(ip, netns) as sock:
        sock.settimeout(TIMEOUT_S)
        for number in range(count):
            sent = time.monotonic_ns()
            sock.sendto(ASK.pack(number), to)
            try:
                while True:
                    answered, arrived, left = ANSWER.unpack(sock.recv(64))
                    back = time.monotonic_ns()
                    if answered == number:
                        break
            except (TimeoutError, struct.error):
                continue
            exchanges.append(Exchange(sent, arrived, left, back))
    return exchanges
