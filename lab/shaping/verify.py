"""Measured, not assumed: what the links really do between sample peers, and how sure we are.

One-way delays are kernel receive stamps minus kernel send stamps (one clock for every
namespace), beside probes from the network's reference host through a link of known delay,
whose lateness is this machine's timer noise at that moment. Each check (delay, jitter, loss,
rate) ends passed, failed or unverified by a 99% interval of its noise-corrected value against
the band the configuration allows. The estimators, the bands, why each rule is what it is and
the measurements behind them: docs/impairment.md, "Verified, not assumed".
"""

from __future__ import annotations

import itertools
import math
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from lab.network.fabric import PeerSlot
from lab.network.netlink import inside
from lab.shaping.plan import LinkPlan, delay_tolerance

SO_TIMESTAMPNS = 35  # Linux; the receive time the kernel stamped, in CLOCK_REALTIME
# Linux uapi (net_tstamp.h, errqueue.h): send timestamps, answered on the socket's error queue.
SO_TIMESTAMPING = 37  # also the answer's control message type, SCM_TIMESTAMPING
SO_SNDBUFFORCE = 32  # root may pass net.core.wmem_max
SO_RCVBUFFORCE = 33  # root may pass net.core.rmem_max
SEND_STAMP_QUEUE = 64 << 20  # bytes; a stamp costs ~1 KiB of it, a benchmark sends up to 40,000 probes
# A receiver starved of the CPU (qemu) must not drop what arrived: a stream's datagrams cost ~2 KiB
# each in the buffer, and net.core.rmem_max (208 KiB by default) would hold ~100 of them.
RECEIVE_QUEUE = 32 << 20
# A sender whose buffer fills waits for the link (its queued datagrams count against the buffer, 208
# KiB by default: ~90 of a stream's): its pace would be the link's, and a link too fast for its
# offer could not be told from a right one. This holds a whole stream.
SEND_QUEUE = 32 << 20
STREAM_OFFER = 2.0  # the rate stream's pace, in multiples of the configured rate
RATE_BAND = (0.9, 1.1)  # what a rate may measure, in multiples of the configured rate (the low end also times 1 - loss)
# A link held the stream back when it was offered this much more than the band's top and delivered
# this much less than it was offered: more than late timers or the jitter move a stream's span.
HELD_BACK = 1.1
TX_STAMPS = (1 << 8) | (1 << 4) | (1 << 7) | (1 << 11)  # TX_SCHED, SOFTWARE, OPT_ID (= send number), OPT_TSONLY
IP_RECVERR = 11
EXTENDED_ERR = struct.Struct("=IBBBBII")  # sock_extended_err: errno, origin, type, code, pad, info, data (= send number)
PROBE = struct.Struct("!IQ")  # sequence number, send time (ns, CLOCK_REALTIME)
PROBE_INTERVAL_S = 0.005
STREAM_SECONDS = 1.0
STREAM_PAYLOAD = 1200
MAX_STREAM = 5_000  # datagrams: a Python sender offers well under a gigabit, so faster links end unverified
WIRE_OVERHEAD = 14 + 20 + 8  # Ethernet, IPv4 and UDP headers: what HTB counts besides payload
CONFIDENCE = 0.99  # of each check's interval
LOSS_CONFIDENCE = 0.999  # for all loss checks of one verification together: a correct link fails 1 run in 1000
MIN_WINDOWS = 12  # rate windows per stream
BOOTSTRAP_RESAMPLES = 1000
MIN_WINDOW = 8  # arrivals per rate window
MAX_PAIRS = 32
MAX_LOSS_PROBES = 4000  # 20 s of probes: a loss too small to check within them is said to be unverified
REFERENCE_PLAN = LinkPlan(delay_s=0.010)  # the reference host's link: a known delay, nothing else

Status = Literal["passed", "failed", "unverified"]


@dataclass
class Check:
    name: str
    configured: float
    measured: float  # noise removed, where the check knows the noise
    low: float  # the band the configuration allows
    high: float
    interval: tuple[float, float] | None = None  # of `measured`, at CONFIDENCE
    status: Status = "passed"
    reason: str = ""
    offered: float | None = None  # rate: what the sender offered over the stream, bit/s

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def line(self, pair: str) -> str:
        within = f" ({self.reason})" if self.reason else ""
        return (f"peer {pair} {self.name}: configured {self.configured:g}, measured {self.measured:.4g} "
                f"(allowed {self.low:.4g}..{self.high:.4g}){within}")


@dataclass
class PairReport:
    source: int
    dest: int
    sent: int
    received: int
    kernel_stamped: int = 0  # arrivals whose send time is the kernel's (the rest carry Python's)
    reference_received: int = 0  # reference probes that arrived, and of them kernel-stamped
    reference_kernel_stamped: int = 0
    noise: dict[str, float] | None = None  # the reference's excess over its known delay, ms: p50, p90, sd
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def status(self) -> Status:
        return worst(c.status for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "status": self.status,
                "checks": [{**asdict(c), "passed": c.passed} for c in self.checks]}

    def lines(self, status: Status) -> list[str]:
        return [c.line(f"{self.source}->{self.dest}") for c in self.checks if c.status == status]

    def failures(self) -> list[str]:
        return self.lines("failed")


def worst(statuses: Any) -> Status:
    """failed over unverified over passed."""
    found = set(statuses)
    return "failed" if "failed" in found else "unverified" if "unverified" in found else "passed"


# -- judging: pure functions of numbers --------------------------------------------------------

def judge(interval: tuple[float, float], low: float, high: float) -> Status:
    """The three outcomes, from where the interval lies against the allowed band."""
    bottom, top = interval
    if top < low or bottom > high:
        return "failed"
    if top - bottom > high - low:
        return "unverified"
    return "passed"


def _bootstrap(samples: tuple[np.ndarray, ...], statistic: Callable[..., np.ndarray], seed: int) -> tuple[float, float]:
    interval = stats.bootstrap(samples, statistic, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
                               confidence_level=CONFIDENCE, method="percentile", random_state=seed).confidence_interval
    return float(interval.low), float(interval.high)


def _noise_reason(check: Check, noise: np.ndarray) -> None:
    if check.status == "unverified":
        check.reason = (f"could not verify within {check.low:.4g}..{check.high:.4g}: the probe path's own noise was "
                        f"p50 {np.median(noise) * 1e3:.3g} ms, p90 {np.percentile(noise, 90) * 1e3:.3g} ms")


def _late_spread(noise: np.ndarray) -> float:
    """How much later than its median the noise's p90 is: the reference's lateness stands for the
    link's as a distribution only, and on a loaded emulated machine a link's share of late
    packets has exceeded the reference's (a right 12 ms link measured 13.9 ms with the
    reference's median removed)."""
    return float(np.percentile(noise, 90) - np.median(noise))


def delay_checks(plan: LinkPlan, region: str | None, delays: list[float], noise: list[float], seed: int = 0) -> list[Check]:
    """`delays`: one-way delays of the link's probes (s); `noise`: the reference probes' excess over
    their known delay, at the same moment (empty where the link has no delay: no timer holds its
    packets)."""
    expected = plan.delay_to(region)
    measured = np.asarray(delays)
    excess = np.asarray(noise) if len(noise) > 1 and (expected or plan.jitter_s) else np.zeros(2)
    z = stats.norm.ppf(0.5 + CONFIDENCE / 2)
    # The configured jitter alone spreads the median of n draws (1 / (2 f sqrt(n)), f the density
    # at the median): allowed on top of the error.
    scale = plan.jitter_s if plan.distribution == "uniform" else plan.jitter_s * math.sqrt(math.pi / 2)
    sampling = z * scale / math.sqrt(measured.size)
    tolerance = delay_tolerance(expected) + sampling
    interval = _bootstrap((measured, excess), lambda d, r, axis: np.median(d, axis=axis) - np.median(r, axis=axis), seed)
    delay = Check("delay_s", expected, float(np.median(measured) - np.median(excess)), expected - tolerance,
                  expected + tolerance, interval)
    delay.status = judge(interval, delay.low, delay.high)
    if delay.status == "failed" and interval[0] > delay.high and interval[0] <= delay.high + _late_spread(excess):
        delay.status = "unverified"  # more delay than allowed, but no more than late timers may add
    if delay.status == "failed" and interval[1] < delay.low:
        raw = _bootstrap((measured,), lambda d, axis: np.median(d, axis=axis), seed)
        if raw[1] >= delay.low:
            delay.status = "unverified"  # too little only once the reference's lateness is taken off
    _noise_reason(delay, excess)
    checks = [delay]
    if plan.jitter_s and not plan.reorder and measured.size > 2:
        sd = plan.jitter_s / 3**0.5 if plan.distribution == "uniform" else plan.jitter_s
        kurtosis = 1.8 if plan.distribution == "uniform" else 3.0  # the sample sd's spread depends on it
        slack = max(0.001, 0.25 * sd) + z * sd * math.sqrt((kurtosis - 1) / (4 * measured.size))

        def spread(d: np.ndarray, r: np.ndarray, axis: int) -> np.ndarray:
            return np.var(d, axis=axis, ddof=1) - (np.var(r, axis=axis, ddof=1) if r.shape[axis] > 1 else 0.0)

        low, high = _bootstrap((measured, excess), spread, seed)
        jitter = Check("jitter_sd_s", sd, math.sqrt(max(0.0, float(spread(measured, excess, 0)))), sd - slack, sd + slack,
                       (math.sqrt(max(0.0, low)), math.sqrt(max(0.0, high))))
        assert jitter.interval is not None
        jitter.status = judge(jitter.interval, jitter.low, jitter.high)
        _noise_reason(jitter, excess)
        checks.append(jitter)
    return checks


def loss_check(plan: LinkPlan, sent: int, received: int, pairs: int = 1, reference_lost: float = 0.0) -> Check:
    """`reference_lost`: the share of the reference's probes, sent beside, that did not arrive:
    a machine stalled long enough overflows the kernel's queues (netdev_max_backlog) and loses
    packets of every path; a loss that the reference's explains is unverified, not failed."""
    expected = plan.lost
    confidence = 1 - (1 - LOSS_CONFIDENCE) / pairs
    low, high = stats.binom.interval(confidence, sent, expected)
    lost = (sent - received) / sent
    check = Check("loss", expected, lost, float(low) / sent, float(high) / sent, (lost, lost))
    check.status = "passed" if check.low <= lost <= check.high else "failed"
    if check.status == "passed" and expected and not lost and not low:
        check.status = "unverified"  # a link that loses nothing would have passed too
        check.reason = (f"could not verify: {sent} probes cannot tell {expected:.2%} loss from none; "
                        f"{loss_probes(plan, pairs)} would")
    explained = stats.binom.ppf(confidence, sent, 1 - (1 - expected) * (1 - reference_lost)) / sent
    if check.status == "failed" and lost > check.high and reference_lost and lost <= explained:
        check.status = "unverified"
        check.reason = f"could not verify: the probe path itself lost {reference_lost:.1%} (the reference's probes)"
    return check


def loss_probes(plan: LinkPlan, pairs: int = 1) -> int:
    """Probes enough for the loss check to fail a link that loses nothing: the chance that all of
    them arrive on a right link is below the check's error rate."""
    if not plan.lost:
        return 0
    if plan.lost >= 1:
        return 1
    return math.ceil(math.log((1 - LOSS_CONFIDENCE) / pairs / 2) / math.log(1 - plan.lost))  # the interval is two-sided


def window_rates(times_ns: list[int], bits: float, window: int) -> np.ndarray:
    """Bits per second over consecutive, non-overlapping windows of `window` packets."""
    ordered = np.sort(np.asarray(times_ns, dtype=np.int64))
    starts = np.arange(0, ordered.size - window, window)
    spans = (ordered[starts + window] - ordered[starts]) / 1e9
    return window * bits / spans[spans > 0]


def rate_window(plan: LinkPlan, bits: float) -> int:
    """Arrivals per rate window: at least MIN_WINDOW, and spanning 8 jitters, so the jitter of a
    window's first and last arrival moves its rate by a few percent at most."""
    assert plan.rate_bps
    return max(MIN_WINDOW, math.ceil(8 * 2 * plan.jitter_s * plan.rate_bps / bits))


def stream_rate(times_ns: list[int], bits: float) -> float:
    """Bits per second from a stream's first datagram to its last (0 for fewer than two)."""
    span = (max(times_ns) - min(times_ns)) / 1e9 if len(times_ns) > 1 else 0.0
    return (len(times_ns) - 1) * bits / span if span > 0 else 0.0


def rate_check(plan: LinkPlan, received_ns: list[int], sent_ns: list[int], bits: float, noise: list[float]) -> Check:
    """`received_ns`: kernel receive times of the stream's arrivals; `sent_ns`: kernel send
    times of all its datagrams; `bits`: one datagram on the wire; `noise`: the reference's
    excess over its delay beside the stream (s)."""
    assert plan.rate_bps
    spacing, window = bits / plan.rate_bps, rate_window(plan, bits)
    low, high = RATE_BAND[0] * plan.rate_bps * (1 - plan.loss), RATE_BAND[1] * plan.rate_bps
    link, offered = window_rates(received_ns, bits, window), stream_rate(sent_ns, bits)
    if link.size < 3:
        return Check("rate_bps", plan.rate_bps, 0.0, low, high, (0.0, 0.0), "failed",
                     f"{len(received_ns)} of {len(sent_ns)} stream datagrams arrived", offered)
    median = float(np.median(link))
    bounds = stats.quantile_test(link, q=median).confidence_interval(CONFIDENCE)
    interval = (float(np.nan_to_num(bounds.low, nan=link.min())), float(np.nan_to_num(bounds.high, nan=link.max())))
    check = Check("rate_bps", plan.rate_bps, median, low, high, interval, judge(interval, low, high), offered=offered)
    if check.status == "failed" and interval[0] > high:
        return check
    if check.status != "failed":
        delivered = stream_rate(received_ns, bits)
        if offered < HELD_BACK * high:
            check.status = "unverified"
            check.reason = (f"could not verify: the sender offered only {offered:.4g} bit/s (a busy CPU), not clearly "
                            f"more than {high:.4g}: a faster link would have carried it all")
        elif offered * (1 - plan.lost) < HELD_BACK * delivered:
            check.status = "unverified"
            check.reason = (f"could not verify: the link delivered {delivered:.4g} of the {offered:.4g} bit/s offered, "
                            f"so it did not hold the stream back: a faster link would have carried it all")
        return check
    lateness = float(np.mean(np.clip(noise, 0, None))) if noise else 0.0
    explained = low * spacing / (spacing + lateness)  # a shaper waiting for a late timer per datagram
    if offered < low:
        check.status = "unverified"
        check.reason = f"could not verify: the sender offered only {offered:.4g} bit/s (a busy CPU), below {low:.4g}"
    elif interval[1] >= explained:
        check.status = "unverified"
        check.reason = (f"could not verify: timers ran {lateness * 1e3:.3g} ms late on average (the probe path's own noise), "
                        f"against {spacing * 1e3:.3g} ms per datagram at this rate; late timers explain down to "
                        f"{explained:.4g} bit/s")
    else:
        check.reason = f"timers ran {lateness * 1e3:.3g} ms late on average, which explains down to {explained:.4g} bit/s"
    return check


# -- measuring: sockets in namespaces ----------------------------------------------------------

@dataclass(frozen=True)
class Probe:
    sent_ns: int  # the kernel's TX_SCHED stamp; the time the datagram carries if the kernel gave none
    received_ns: int
    kernel_stamped: bool


@dataclass
class Stream:
    """What one sender (and the reference beside it) got through to one receiver."""

    link: list[Probe]
    reference: list[Probe]
    sent_ns: list[int]  # kernel send stamps of every datagram the link sender sent


def _socket_in(slot: PeerSlot, receiver: bool) -> socket.socket:
    """A probe socket in the slot's namespace: the receiver asks for receive stamps, a sender
    for send stamps."""
    assert slot.netns is not None
    with inside(slot.netns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if receiver:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_QUEUE)
    else:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_STAMPS)
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, SEND_STAMP_QUEUE)
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, SEND_QUEUE)
    sock.bind((slot.ip, 0))
    return sock


def _send_stamps(sock: socket.socket) -> dict[int, int]:
    """{send number: kernel ns} from the sender's error queue: read once, after the sends, so
    reading the stamps does not slow the sending."""
    stamps: dict[int, int] = {}
    while True:
        try:
            _, ancillary, _, _ = sock.recvmsg(0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return stamps
        stamp = number = None
        for level, kind, data in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                seconds, nanoseconds = struct.unpack_from("qq", data)
                stamp = seconds * 1_000_000_000 + nanoseconds
            elif level == socket.IPPROTO_IP and kind == IP_RECVERR:
                number = EXTENDED_ERR.unpack_from(data)[6]
        if stamp and number is not None:
            stamps[number] = stamp


def _receive(sock: socket.socket, until: list[float], arrivals: list[tuple[bytes, int, str]], expected: int) -> None:
    """Collects (datagram, kernel receive ns, source address) until `until[0]` (moved by the
    sender when done), or until `expected` distinct datagrams arrived (a link may duplicate)."""
    distinct: set[tuple[bytes, str]] = set()
    while len(distinct) < expected:
        sock.settimeout(min(0.5, max(0.01, until[0] - time.monotonic())))
        try:
            data, ancillary, _, address = sock.recvmsg(2048, socket.CMSG_SPACE(16))
        except TimeoutError:
            if time.monotonic() >= until[0]:
                return
            continue
        stamp = next((struct.unpack("qq", d[:16]) for level, kind, d in ancillary if kind == SO_TIMESTAMPNS), None)
        received_ns = stamp[0] * 1_000_000_000 + stamp[1] if stamp else time.time_ns()
        arrivals.append((data, received_ns, address[0]))
        distinct.add((data[:PROBE.size], address[0]))


def send_and_collect(source: PeerSlot, dest: PeerSlot, payloads: int, interval: float, size: int, drain_s: float,
                     reference: PeerSlot | None = None) -> Stream:
    """Sends `payloads` datagrams `interval` apart (and as many from `reference`, each right
    after its twin); returns those that arrived, in arrival order."""
    receiver = _socket_in(dest, receiver=True)
    senders = [_socket_in(source, receiver=False)] + ([_socket_in(reference, receiver=False)] if reference else [])
    arrivals: list[tuple[bytes, int, str]] = []
    until = [float("inf")]
    thread = threading.Thread(target=_receive, args=(receiver, until, arrivals, payloads * len(senders)), daemon=True)
    thread.start()
    try:
        target = (dest.ip, receiver.getsockname()[1])
        start = time.monotonic()
        for seq in range(payloads):
            for sender in senders:
                sender.sendto(PROBE.pack(seq, time.time_ns()).ljust(size, b"\0"), target)
            pause = start + (seq + 1) * interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        until[0] = time.monotonic() + drain_s
        thread.join()
        stamps = [_send_stamps(sender) for sender in senders]
    finally:
        for sock in (receiver, *senders):
            sock.close()
    probes: tuple[list[Probe], list[Probe]] = ([], [])
    for data, received_ns, address in arrivals:
        number, carried_ns = PROBE.unpack_from(data)
        which = int(reference is not None and address == reference.ip)
        probes[which].append(Probe(stamps[which].get(number, carried_ns), received_ns, number in stamps[which]))
    return Stream(probes[0], probes[1], sorted(stamps[0].values()))


def measure_rate(plan: LinkPlan, source: PeerSlot, dest: PeerSlot, reference: PeerSlot | None = None) -> Check:
    """The rate check of `source`'s link, by a stream to `dest`; with `reference`, the noise beside it."""
    assert plan.rate_bps
    bits = (STREAM_PAYLOAD + WIRE_OVERHEAD) * 8
    interval = bits / (STREAM_OFFER * plan.rate_bps)
    count = min(MAX_STREAM, max(int(STREAM_SECONDS / interval), MIN_WINDOWS * (rate_window(plan, bits) + 1)))
    # The sender is done when the link, at the band's low end, still holds the rest of the stream.
    backlog = count * (bits / (RATE_BAND[0] * plan.rate_bps) - interval)
    drain = 1.0 + backlog + 2 * max(plan.delay_s + plan.jitter_s, REFERENCE_PLAN.delay_s)
    stream = send_and_collect(source, dest, count, interval, STREAM_PAYLOAD, drain, reference)
    return rate_check(plan, [p.received_ns for p in stream.link], stream.sent_ns, bits, _excess(stream.reference))


def _excess(reference: list[Probe]) -> list[float]:
    """The reference probes' delay beyond the reference link's own: the noise, in seconds."""
    return [(p.received_ns - p.sent_ns) / 1e9 - REFERENCE_PLAN.delay_s for p in reference]


def measure_pair(source: PeerSlot, dest: PeerSlot, plan: LinkPlan, dest_region: str | None, probes: int, pairs: int,
                 reference: PeerSlot | None = None) -> PairReport:
    """Delay, jitter and loss of one pair; with `reference`, the noise beside them."""
    delayed = bool(plan.delay_to(dest_region) or plan.jitter_s)
    drain = 1.0 + 2 * (max(plan.delay_to(dest_region), REFERENCE_PLAN.delay_s) + plan.jitter_s)
    stream = send_and_collect(source, dest, probes, PROBE_INTERVAL_S, PROBE.size, drain, reference if delayed else None)
    delays = [(p.received_ns - p.sent_ns) / 1e9 for p in stream.link]
    noise = _excess(stream.reference)
    report = PairReport(source.index, dest.index, probes, len(stream.link), sum(p.kernel_stamped for p in stream.link),
                        len(stream.reference), sum(p.kernel_stamped for p in stream.reference))
    if noise:
        report.noise = {"p50_ms": statistics.median(noise) * 1e3, "p90_ms": float(np.percentile(noise, 90)) * 1e3,
                        "sd_ms": statistics.pstdev(noise) * 1e3}
    if delays:
        report.checks.extend(delay_checks(plan, dest_region, delays, noise, seed=source.index * 100_003 + dest.index))
    reference_lost = 1 - len(stream.reference) / probes if stream.reference else 0.0
    report.checks.append(loss_check(plan, probes, len(stream.link), pairs, reference_lost))
    return report


def sample_pairs(groups: list[str], hosts: list[int] | None = None) -> list[tuple[int, int]]:
    """One (source, destination) pair per ordered pair of groups: the group's first peer sends
    to the other group's last peer (its second-last within one group); and where peers share a
    host (`hosts`: each peer's), one pair of two peers of one host, whose packets leave through
    their shared eth0 and come back through the hub."""
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    pairs = []
    for sources in members.values():
        for dests in members.values():
            candidates = [d for d in reversed(dests) if d != sources[0]]
            if candidates:
                pairs.append((sources[0], candidates[0]))
    on_one_host = [(a, b) for a, b in itertools.pairwise(range(len(groups))) if hosts and hosts[a] == hosts[b]]
    if on_one_host and not any(hosts and hosts[s] == hosts[d] for s, d in pairs):
        pairs.insert(0, on_one_host[0])
    return pairs[:MAX_PAIRS]


def verify(slots: list[PeerSlot], plans: list[LinkPlan], regions: list[str | None], groups: list[str], probes: int,
           reference: PeerSlot | None = None) -> list[PairReport]:
    """Delay and loss of every sample pair at once (each pair has its own sockets and threads),
    with the reference beside each; then the rate of each rate-limited source, one stream per
    source link at a time."""
    pairs = sample_pairs(groups, [slot.host for slot in slots])
    if not pairs:  # one peer on this machine of a run over several: its links are measured across machines
        return []
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        futures = [pool.submit(measure_pair, slots[s], slots[d], plans[s], regions[d],
                               min(MAX_LOSS_PROBES, max(probes, loss_probes(plans[s], len(pairs)))), len(pairs), reference)
                   for s, d in pairs]
        reports = [future.result() for future in futures]
        # positions in `slots`, which are the run's peer indexes only when this machine holds them all
        first_of_source = {s: (d, r) for (s, d), r in reversed(list(zip(pairs, reports, strict=True))) if plans[s].rate_bps}
        rates = {s: pool.submit(measure_rate, plans[s], slots[s], slots[d], reference) for s, (d, _) in first_of_source.items()}
        for source, future in rates.items():
            first_of_source[source][1].checks.append(future.result())
    return reports
