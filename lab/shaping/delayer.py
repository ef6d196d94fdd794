"""The userspace backend's delay line: holds each queued packet and releases it on schedule.

It serves one netfilter queue in the run's hub namespace (opened from inside it: setns, then
nfq_open; the netlink socket stays bound to the namespace it was made in), fed by the hub's
FORWARD rules for the peers whose links delay. Packets are held in the network, not in the
sender: a packet held in the sender's own OUTPUT path stays charged to its socket buffer, which
capped a 20 Mbit/s link with 30 ms delay at 17 Mbit/s. The sender is known by the source
address. A packet's release time is its arrival plus the sender's delay, plus the region latency
to its destination, plus jitter; reordered packets go at once. Verdicts are given after the
callback returns, which libnetfilter_queue allows.

Control: one JSON request per line on a Unix socket (`configure`, `retime`, `stats`), answered
once the change is in force. `retime` stretches what every held packet has left to wait by a
ratio: the run's time dilation changed, and a packet held across the change keeps its delay in
the run's time, not in the machine's.

Wake-ups cost ~20 µs of CPU each here, more than a packet's own handling at a few thousand
packets a second or less, so it keeps time no closer than the links need: from a tick before
the next release is due it wakes once a tick, half the delay check's tolerance for the shortest
delay it holds (max(1 ms, 5%); lab/shaping/plan.py) and at most 10 ms. Each such wake-up takes
the packets that arrived since the last (stamped at the middle of that time: at most half a
tick off) and releases every packet due within half a tick (at most half a tick early or
late), so a delay is off by less than a tick either way, however many packets come; further
from a release, it waits for packets as they come and stamps each on arrival. At a dilation of
6 a 5 ms link holds packets 30 ms and the tick is 0.75 ms; at 400 it holds them 2 s and the
tick is 10 ms.

Run as `python -m lab.shaping.delayer --control SOCKET --seed N`.
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import itertools
import json
import os
import random
import selectors
import signal
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from netfilterqueue import NetfilterQueue, Packet

from lab.network.netlink import inside
from lab.shaping.plan import LinkPlan, delay_tolerance, shortest_delay

QUEUE_NUM = 0
KERNEL_QUEUE_MAX = 65536  # the kernel's own cap on unverdicted packets; `limit` is enforced here
LATENESS_KEPT = 200_000  # a uniform sample of a stretch's releases (reservoir), for its lateness quantiles
TICK_SHARE = 0.5  # of the tolerance for the shortest delay held
TICK_MAX_S = 0.010  # what arrives in one tick waits in the netlink socket's buffer
EPOLL_S = 0.001  # epoll waits whole milliseconds, rounded up
PR_SET_PDEATHSIG = 1


@dataclass
class Sender:
    """One peer's outgoing link as the delay line sees it."""

    index: int
    plan: LinkPlan
    rng: random.Random
    held: int = 0
    packets: int = 0
    dropped_limit: int = 0


@dataclass(order=True)
class Held:
    due: float
    seq: int
    packet: Packet = field(compare=False)
    sender: Sender = field(compare=False)


class Delayer:
    def __init__(self, control: str, seed: int) -> None:
        self.seed = seed
        self.selector = selectors.DefaultSelector()
        self.senders: dict[bytes, Sender] = {}  # by source address
        self.region_of: dict[bytes, str] = {}
        self.nfq: NetfilterQueue | None = None
        self.heap: list[Held] = []
        self.seq = itertools.count()
        self.released = 0  # since the last `stats`
        self.lateness: list[float] = []  # a uniform sample of those releases' lateness
        self.sample = random.Random(f"{seed}:lateness")
        self.unplanned = 0
        self.tick = tick_for(None)
        self.read_at = 0.0  # when the queue was last read
        self.arrived: float | None = None  # the instant that stands for the packets of a read on a tick
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(control)
        self.server.listen(4)
        self.selector.register(self.server, selectors.EVENT_READ, self._accept)

    # -- packets -----------------------------------------------------------------------------

    def _on_packet(self, packet: Packet) -> None:
        now = self.arrived or time.monotonic()
        payload = packet.get_payload()
        sender = self.senders.get(payload[12:16])
        if sender is None:  # a rule without a plan would be a lab bug: let the packet through, counted
            self.unplanned += 1
            packet.accept()
            return
        plan, rng = sender.plan, sender.rng
        sender.packets += 1
        if plan.corrupt and len(payload) > 20 and rng.random() < plan.corrupt:
            bit = rng.randrange(20 * 8, len(payload) * 8)  # past the IP header, as the packet must still route
            corrupted = bytearray(payload)
            corrupted[bit // 8] ^= 1 << (bit % 8)
            packet.set_payload(bytes(corrupted))
        delay = plan.delay_to(self.region_of.get(payload[16:20]))
        if plan.jitter_s:
            spread = rng.uniform(-1, 1) if plan.distribution == "uniform" else rng.gauss(0, 1)
            delay = max(0.0, delay + spread * plan.jitter_s)
        if plan.reorder and rng.random() < plan.reorder:
            delay = 0.0
        if sender.held >= plan.limit:
            sender.dropped_limit += 1
            packet.drop()
            return
        sender.held += 1
        heapq.heappush(self.heap, Held(now + delay, next(self.seq), packet, sender))

    def _release_due(self) -> None:
        """Every packet due within half a tick goes out on this wake-up: at most half a tick early
        or, waiting for the next, late."""
        now = time.monotonic()
        while self.heap and self.heap[0].due <= now + self.tick / 2:
            held = heapq.heappop(self.heap)
            held.packet.accept()
            held.sender.held -= 1
            self._keep_lateness(now - held.due)
            now = time.monotonic()

    def _keep_lateness(self, late: float) -> None:
        """Algorithm R: every release of a stretch is equally likely to be in the sample, so a
        stretch's quantiles are not those of its first LATENESS_KEPT packets."""
        self.released += 1
        if len(self.lateness) < LATENESS_KEPT:
            self.lateness.append(late)
        elif (slot := self.sample.randrange(self.released)) < LATENESS_KEPT:
            self.lateness[slot] = late

    # -- control -----------------------------------------------------------------------------

    def _bind(self, namespace: str) -> None:
        with inside(namespace):
            nfq = NetfilterQueue()
            nfq.bind(QUEUE_NUM, self._on_packet, max_len=KERNEL_QUEUE_MAX)
        self.nfq = nfq
        self.selector.register(nfq.get_fd(), selectors.EVENT_READ, lambda: nfq.run(block=False))

    def _configure(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.nfq is None:
            self._bind(request["netns"])
        for ip, region in request.get("regions", {}).items():
            self.region_of[socket.inet_aton(ip)] = region
        for peer in request["peers"]:
            address, plan = socket.inet_aton(peer["ip"]), LinkPlan(**peer["plan"])
            if address in self.senders:
                self.senders[address].plan = plan
            else:
                self.senders[address] = Sender(peer["index"], plan, random.Random(f"{self.seed}:delay:{peer['index']}"))
        self.tick = tick_for(shortest_delay(s.plan for s in self.senders.values()))
        return {"ok": True, "senders": len(self.senders), "tick_s": self.tick}

    def _retime(self, request: dict[str, Any]) -> dict[str, Any]:
        now, ratio = time.monotonic(), float(request["ratio"])
        self.tick = min(TICK_MAX_S, self.tick * ratio)  # until the plans at the new dilation come
        for held in self.heap:
            held.due = now + max(0.0, held.due - now) * ratio
        heapq.heapify(self.heap)
        return {"ok": True, "retimed": len(self.heap)}

    def _stats(self) -> dict[str, Any]:
        late, released = sorted(self.lateness), self.released
        self.lateness.clear()
        self.released = 0

        def quantile(q: float) -> float | None:
            return late[min(len(late) - 1, int(q * len(late)))] if late else None

        return {
            "ok": True,
            "released": released,
            "lateness_s": {"p50": quantile(0.5), "p99": quantile(0.99), "max": late[-1] if late else None},
            "held": len(self.heap),
            "cpu_s": sum(os.times()[:2]),  # its own CPU so far (bench/impairment_accuracy.py: per packet)
            "unplanned": self.unplanned,
            "peers": {s.index: {"packets": s.packets, "dropped_limit": s.dropped_limit} for s in self.senders.values()},
        }

    def _accept(self) -> None:
        connection, _ = self.server.accept()
        reader = connection.makefile("r")
        self.selector.register(connection, selectors.EVENT_READ, lambda: self._answer(connection, reader))

    def _answer(self, connection: socket.socket, reader: Any) -> None:
        line = reader.readline()
        if not line:
            self.selector.unregister(connection)
            connection.close()
            return
        request = json.loads(line)
        try:
            answers = {"configure": self._configure, "retime": self._retime, "stats": lambda _: self._stats()}
            reply = answers[request["op"]](request)
        except Exception as exc:  # the reply carries it to the orchestrator, which reports it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        connection.sendall(json.dumps(reply).encode() + b"\n")

    def run(self) -> None:
        """Until a tick before the next release, a wait for packets and requests; from then, a
        wake-up per tick (requests and arrivals read without waiting, releases given, then a
        sleep to the next tick: a sleep is exact where epoll waits whole milliseconds)."""
        while True:
            woke = time.monotonic()
            wait = self.heap[0].due - woke - self.tick - EPOLL_S if self.heap else None
            ticking = wait is not None and wait <= 0
            self.arrived = (self.read_at + woke) / 2 if ticking else None  # they came since the last read
            for key, _ in self.selector.select(0 if ticking else wait):
                key.data()
            self.read_at = woke if ticking else time.monotonic()
            if ticking:
                self._release_due()
                time.sleep(max(0.0, woke + self.tick - time.monotonic()))


def tick_for(shortest_delay_s: float | None) -> float:
    """The time between wake-ups while packets are held, for the shortest delay held."""
    return min(TICK_MAX_S, TICK_SHARE * delay_tolerance(shortest_delay_s or 0.0))


def _realtime_priority() -> str:
    """Keeping time matters more than anything else this process does: ask for SCHED_FIFO so a
    CPU-saturated machine of peers delays our releases as little as possible."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        return "SCHED_FIFO 10"
    except OSError:
        return "SCHED_OTHER (no realtime priority allowed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--control", required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    delayer = Delayer(args.control, args.seed)
    print(json.dumps({"ready": True, "priority": _realtime_priority()}), flush=True)
    delayer.run()


if __name__ == "__main__":
    main()
