"""A link between peers on two machines, verified without a shared clock.

Link verification (verify.py) times one-way probes with the sender's and the receiver's stamps
on one machine. Across machines the two clocks differ by more than a short delay, so a crossing
pair is measured by round trips instead: an echo in the destination's namespace on its machine,
probes from the source's on the other, before the topology's impairment is applied (the
machine-to-machine baseline: veths, hubs, VXLAN) and after. What the links added is the
difference of the medians, which must be the source's delay towards the destination's region
plus the destination's back, each within the delay check's tolerance.
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time

from lab.network.fabric import PeerSlot
from lab.network.netlink import inside
from lab.shaping.plan import LinkPlan, delay_tolerance
from lab.shaping.verify import Check, PairReport, Status

ECHO = struct.Struct("!I")  # the probe's number
ROUND_TRIPS = 40
TIMEOUT_S = 5.0  # per round trip: a dilated delay of a few hundred ms each way fits


def _socket_in(slot: PeerSlot) -> socket.socket:
    assert slot.netns is not None, "round trips need namespaces"
    with inside(slot.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((slot.ip, 0))
    return sock


def serve_echo(slot: PeerSlot, seconds: float) -> int:
    """Echoes every datagram to `slot`'s address back to its sender for `seconds`; returns the port."""
    sock = _socket_in(slot)
    sock.settimeout(0.2)
    until = time.monotonic() + seconds

    def echo() -> None:
        with sock:
            while time.monotonic() < until:
                try:
                    data, sender = sock.recvfrom(64)
                except TimeoutError:
                    continue
                sock.sendto(data, sender)

    threading.Thread(target=echo, daemon=True, name="echo").start()
    return int(sock.getsockname()[1])


def round_trips(source: PeerSlot, ip: str, port: int, count: int = ROUND_TRIPS) -> list[float]:
    """Round trips (s) of `count` probes from `source` to an echo at ip:port, one at a time;
    a probe lost (or answered after the next was sent) is not counted."""
    times = []
    with _socket_in(source) as sock:
        sock.settimeout(TIMEOUT_S)
        for number in range(count):
            sent = time.monotonic_ns()
            sock.sendto(ECHO.pack(number), (ip, port))
            try:
                while ECHO.unpack_from(sock.recv(64))[0] != number:
                    pass
            except TimeoutError:
                continue
            times.append((time.monotonic_ns() - sent) / 1e9)
    return times


def _median_error(*samples: list[float]) -> float:
    """The standard error of a difference of medians, each from its interquartile range (a
    normal's sd is IQR/1.349; a median's error 1.253 sd/sqrt(n)): robust to the few slow trips
    a busy machine adds."""
    variance = 0.0
    for sample in samples:
        if len(sample) < 4:
            return float("inf")
        quartiles = statistics.quantiles(sample, n=4)
        variance += (1.253 * (quartiles[2] - quartiles[0]) / 1.349) ** 2 / len(sample)
    return float(variance ** 0.5)


def crossing_report(source: int, dest: int, there: LinkPlan, back: LinkPlan, there_region: str | None,
                    back_region: str | None, before: list[float], after: list[float]) -> PairReport:
    """The round-trip check of a crossing pair: `there`, `back` the two peers' plans as applied
    (dilated), each towards the other's region; `before`, `after` the round trips (s) before
    and after they were applied."""
    report = PairReport(source, dest, ROUND_TRIPS, len(after))
    if not before or not after:
        report.checks.append(Check("round trip across machines", 0.0, 0.0, 0.0, 0.0, status="failed",
                                   reason="no probe came back" + (" before the links were shaped" if not before else "")))
        return report
    expected = there.delay_to(there_region) + back.delay_to(back_region)
    baseline = statistics.median(before)
    added = statistics.median(after) - baseline
    tolerance = delay_tolerance(expected)
    margin = 3 * _median_error(before, after)
    status: Status
    if abs(added - expected) <= tolerance:
        status, reason = "passed", ""
    elif abs(added - expected) <= tolerance + margin:  # the medians are not known well enough to tell
        status, reason = "unverified", f"the medians' difference is known to +-{margin * 1e3:.2g} ms only"
    else:
        status, reason = "failed", f"the links added {added * 1e3:.3g} ms to the round trip, not {expected * 1e3:.3g} ms"
    report.checks.append(Check("round trip across machines", expected, added, expected - tolerance, expected + tolerance,
                               status=status, reason=f"baseline {baseline * 1e3:.3g} ms; {reason}".rstrip("; ")))
    return report
