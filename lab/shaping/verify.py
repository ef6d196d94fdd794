"""Measured, not assumed: what the links really do between sample peers.

Probes are UDP datagrams from a socket inside the source peer's namespace to one inside the
destination's. All namespaces share one kernel clock, so each datagram's one-way delay is
its kernel receive timestamp (SO_TIMESTAMPNS) minus the kernel's send timestamp, taken as it
reaches the sender's first qdisc (SO_TIMESTAMPING's TX_SCHED, before any impairment): no round
trip to halve, no clock sync (Testground's factor-of-two error came from reading one-way delay
off a round trip), and no Python scheduling in the figure (under qemu's CPU emulation the
sender's own time stamp ran ~1 ms before its datagram left). Rules, stated in docs/impairment.md:

- delay: median one-way delay within max(1 ms, 5%) of the configured delay to that destination;
- jitter: standard deviation within max(1 ms, 25%) of the configured distribution's;
- loss: the lost count inside the binomial interval of the configured loss (and corruption,
  which the receiver's checksum turns into loss); 99% for the whole verification, so each of
  k pairs gets 1 - 0.01/k (Bonferroni): a correct link fails a run by chance at most 1% of runs;
- rate: a 1 s UDP stream at 1.25x the rate arrives at between 90% of min(rate, offered) x
  (1 - loss) and 110% of rate (offered: what the sender managed to send).
"""

from __future__ import annotations

import socket
import statistics
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy.stats import binom

from lab.netlink import inside
from lab.network import PeerSlot
from lab.shaping.plan import LinkPlan

SO_TIMESTAMPNS = 35  # Linux; the receive time the kernel stamped, in CLOCK_REALTIME
# Linux uapi (net_tstamp.h, errqueue.h): send timestamps, answered on the socket's error queue.
SO_TIMESTAMPING = 37  # also the answer's control message type, SCM_TIMESTAMPING
SO_RCVBUFFORCE = 33  # root may pass net.core.rmem_max: the stamps wait in the error queue until the sends end
SEND_STAMP_QUEUE = 64 << 20  # bytes; a stamp costs ~1 KiB of it, a benchmark sends up to 40,000 probes
TX_STAMPS = (1 << 8) | (1 << 4) | (1 << 7) | (1 << 11)  # TX_SCHED, SOFTWARE, OPT_ID (= send number), OPT_TSONLY
IP_RECVERR = 11
EXTENDED_ERR = struct.Struct("=IBBBBII")  # sock_extended_err: errno, origin, type, code, pad, info, data (= send number)
PROBE = struct.Struct("!IQ")  # sequence number, send time (ns, CLOCK_REALTIME)
PROBE_INTERVAL_S = 0.005
STREAM_SECONDS = 1.0
STREAM_PAYLOAD = 1200
WIRE_OVERHEAD = 14 + 20 + 8  # Ethernet, IPv4 and UDP headers: what TBF/HTB count besides payload
LOSS_CONFIDENCE = 0.99
MAX_PAIRS = 32


@dataclass
class Check:
    name: str
    configured: float
    measured: float
    low: float
    high: float

    @property
    def passed(self) -> bool:
        return bool(self.low <= self.measured <= self.high)


@dataclass
class PairReport:
    source: int
    dest: int
    sent: int
    received: int
    kernel_stamped: int = 0  # arrivals whose send time is the kernel's (the rest carry Python's)
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "checks": [{**asdict(c), "passed": c.passed} for c in self.checks]}

    def failures(self) -> list[str]:
        return [
            f"peer {self.source}->{self.dest} {c.name}: configured {c.configured:g}, measured {c.measured:.4g} "
            f"(allowed {c.low:.4g}..{c.high:.4g})"
            for c in self.checks
            if not c.passed
        ]


@dataclass(frozen=True)
class Probe:
    sent_ns: int  # the kernel's TX_SCHED stamp; the time the datagram carries if the kernel gave none
    received_ns: int
    kernel_stamped: bool


def _socket_in(slot: PeerSlot, receiver: bool) -> socket.socket:
    """A probe socket in the slot's namespace: the receiver asks for receive stamps, the sender
    for send stamps."""
    assert slot.netns is not None
    with inside(slot.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if receiver:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    else:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_STAMPS)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SEND_STAMP_QUEUE)
    sock.bind((slot.ip, 0))
    return sock


def _send_stamps(sock: socket.socket, stamps: dict[int, int]) -> None:
    """Moves what the sender's error queue holds into {send number: kernel ns}: once, after the
    sends, so reading the stamps does not slow the sending."""
    while True:
        try:
            _, ancillary, _, _ = sock.recvmsg(0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        stamp = number = None
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                seconds, nanoseconds = struct.unpack_from("qq", data)
                stamp = seconds * 1_000_000_000 + nanoseconds
            elif level == socket.IPPROTO_IP and kind == IP_RECVERR:
                number = EXTENDED_ERR.unpack_from(data)[6]
        if stamp and number is not None:
            stamps[number] = stamp


def _receive(sock: socket.socket, until: list[float], arrivals: list[tuple[bytes, int]]) -> None:
    """Collects (datagram, kernel receive ns) until `until[0]` (moved by the sender when done)."""
    while True:
        sock.settimeout(min(0.5, max(0.01, until[0] - time.monotonic())))
        try:
            data, ancillary, _, _ = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        except TimeoutError:
            if time.monotonic() >= until[0]:
                return
            continue
        stamp = next((struct.unpack("qq", d[:16]) for level, kind, d in ancillary if kind == SO_TIMESTAMPNS), None)
        received_ns = stamp[0] * 1_000_000_000 + stamp[1] if stamp else time.time_ns()
        arrivals.append((data, received_ns))


def _send_and_collect(source: PeerSlot, dest: PeerSlot, payloads: int, interval: float, size: int, drain_s: float
                      ) -> list[Probe]:
    """Sends `payloads` datagrams `interval` apart; returns those that arrived, in arrival order."""
    receiver, sender = _socket_in(dest, receiver=True), _socket_in(source, receiver=False)
    arrivals: list[tuple[bytes, int]] = []
    stamps: dict[int, int] = {}
    until = [float("inf")]
    thread = threading.Thread(target=_receive, args=(receiver, until, arrivals), daemon=True)
    thread.start()
    try:
        target = (dest.ip, receiver.getsockname()[1])
        start = time.monotonic()
        for seq in range(payloads):
            sender.sendto(PROBE.pack(seq, time.time_ns()).ljust(size, b"\0"), target)
            pause = start + (seq + 1) * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        until[0] = time.monotonic() + drain_s
        thread.join()
        _send_stamps(sender, stamps)
    finally:
        sender.close()
        receiver.close()
    probes = []
    for data, received_ns in arrivals:
        number, carried_ns = PROBE.unpack_from(data)
        probes.append(Probe(stamps.get(number, carried_ns), received_ns, number in stamps))
    return probes


def _delay_checks(plan: LinkPlan, region: str | None, delays: list[float]) -> list[Check]:
    expected = plan.delay_to(region)
    tolerance = max(0.001, 0.05 * expected)
    median = statistics.median(delays)
    checks = [Check("delay_s", expected, median, expected - tolerance, expected + tolerance)]
    if plan.jitter_s and not plan.reorder and len(delays) > 2:
        sd = plan.jitter_s / 3**0.5 if plan.distribution == "uniform" else plan.jitter_s
        slack = max(0.001, 0.25 * sd)
        checks.append(Check("jitter_sd_s", sd, statistics.stdev(delays), sd - slack, sd + slack))
    return checks


def _loss_check(plan: LinkPlan, sent: int, received: int, pairs: int = 1) -> Check:
    expected = 1 - (1 - plan.loss) * (1 - plan.corrupt)
    low, high = binom.interval(1 - (1 - LOSS_CONFIDENCE) / pairs, sent, expected)
    return Check("loss", expected, (sent - received) / sent, float(low) / sent, float(high) / sent)


def _rate_check(plan: LinkPlan, source: PeerSlot, dest: PeerSlot) -> Check:
    assert plan.rate_bps
    wire_bits = (STREAM_PAYLOAD + WIRE_OVERHEAD) * 8
    interval = wire_bits / (1.25 * plan.rate_bps)
    count = max(20, int(STREAM_SECONDS / interval))
    arrivals = _send_and_collect(source, dest, count, interval, STREAM_PAYLOAD, drain_s=1.0 + 2 * plan.delay_s)
    measured = offered = 0.0
    if len(arrivals) >= 2:
        span_s = (arrivals[-1].received_ns - arrivals[0].received_ns) / 1e9
        measured = (len(arrivals) - 1) * wire_bits / span_s if span_s > 0 else 0.0
        sends = sorted(probe.sent_ns for probe in arrivals)
        send_span_s = (sends[-1] - sends[0]) / 1e9
        offered = (count - 1) * wire_bits / send_span_s if send_span_s > 0 else 0.0
    # A sender slower than the rate (a busy or emulated CPU) cannot fill the link: then the
    # link must pass what was offered, not more than the rate.
    low = 0.9 * min(plan.rate_bps, offered or plan.rate_bps) * (1 - plan.loss)
    return Check("rate_bps", plan.rate_bps, measured, low, 1.1 * plan.rate_bps)


def measure_pair(source: PeerSlot, dest: PeerSlot, plan: LinkPlan, dest_region: str | None, probes: int, pairs: int
                 ) -> PairReport:
    drain = 1.0 + 2 * (plan.delay_to(dest_region) + plan.jitter_s)
    arrivals = _send_and_collect(source, dest, probes, PROBE_INTERVAL_S, PROBE.size, drain)
    delays = [(probe.received_ns - probe.sent_ns) / 1e9 for probe in arrivals]
    report = PairReport(source.index, dest.index, probes, len(arrivals), sum(p.kernel_stamped for p in arrivals))
    if delays:
        report.checks.extend(_delay_checks(plan, dest_region, delays))
    report.checks.append(_loss_check(plan, probes, len(arrivals), pairs))
    return report


def sample_pairs(groups: list[str]) -> list[tuple[int, int]]:
    """One (source, destination) pair per ordered pair of groups: the group's first peer sends
    to the other group's last peer (its second-last within one group)."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    pairs = []
    for sources in members.values():
        for dests in members.values():
            candidates = [d for d in reversed(dests) if d != sources[0]]
            if candidates:
                pairs.append((sources[0], candidates[0]))
    return pairs[:MAX_PAIRS]


def verify(slots: list[PeerSlot], plans: list[LinkPlan], regions: list[str | None], groups: list[str], probes: int
           ) -> list[PairReport]:
    """Delay and loss of every sample pair at once (each pair has its own sockets and threads);
    then the rate of each rate-limited source, one stream per source link at a time."""
    pairs = sample_pairs(groups)
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        futures = [pool.submit(measure_pair, slots[s], slots[d], plans[s], regions[d], probes, len(pairs)) for s, d in pairs]
        reports = [future.result() for future in futures]
        first_of_source = {r.source: r for r in reversed(reports) if plans[r.source].rate_bps}
        rates = {src: pool.submit(_rate_check, plans[src], slots[src], slots[r.dest]) for src, r in first_of_source.items()}
        for source, future in rates.items():
            first_of_source[source].checks.append(future.result())
    return reports
