"""How exactly a backend adds delay, and up to which packet rate it keeps time.

Two peers in namespaces; peer 0's link gets a fixed delay; UDP probes at a given packet rate
measure one-way delay (kernel receive minus kernel send timestamp, one clock) and loss. The
error is measured minus configured. Writes JSON and a markdown table with the machine and
commit:

    .venv/bin/python bench/impairment_accuracy.py                       # backend this kernel has
    .venv/bin/python tests/vm/netem_vm.py --share bench/results -- \\
        .venv/bin/python bench/impairment_accuracy.py --backend netem     # netem, emulated kernel

"Keeps time" means the p99 of the error's size within the delay check's tolerance (max(1 ms,
5%)) and loss under 1%; the ceiling is the first rate that does not. 10 ms is a short link
undilated; 30 ms, 240 ms and 2 s are the 1000-peer file's 5 ms and 40 ms at dilation 6 and its
5 ms at 400, as the delay line holds them in that run. The sender is one Python thread: the
achieved rate is reported beside the asked one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from shaped import arguments, origin, shaped, write

from lab.shaping.links import Links
from lab.shaping.plan import delay_tolerance
from lab.shaping.userspace import UserspaceBackend
from lab.shaping.verify import PROBE, send_and_collect
from lab.topology import Link

TOPOLOGY = "{name: bench, seed: 1, groups: [{name: a, count: 1}, {name: b, count: 1}], workload: [{phase: bootstrap}]}"
DELAYS_MS = (10, 30, 240, 2000)
RATES_PPS = (100, 1000, 5000, 10000, 20000, 40000, 80000)
SECONDS_PER_POINT = 3.0
MAX_PROBES = 40_000
LOSS_LIMIT = 0.01
HELD_LIMIT = 100_000  # packets a link may hold: high, so the ceiling found is timekeeping, not the queue limit


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(links: Links, delay_ms: int, rate: int) -> dict[str, Any]:
    slots = links.slots
    before = delay_line_cpu_s(links)
    links.set_link([0], Link(delay=f"{delay_ms}ms", limit=HELD_LIMIT), "bench")
    count = min(MAX_PROBES, int(rate * SECONDS_PER_POINT))
    arrivals = send_and_collect(slots[0], slots[1], count, 1 / rate, PROBE.size, 1.0 + 2 * delay_ms / 1000).link
    errors = [(p.received_ns - p.sent_ns) / 1e9 - delay_ms / 1000 for p in arrivals]
    sends = sorted(p.sent_ns for p in arrivals)
    achieved = (len(sends) - 1) / ((sends[-1] - sends[0]) / 1e9) if len(sends) > 1 and sends[-1] > sends[0] else 0.0
    loss = 1 - len(arrivals) / count
    point: dict[str, Any] = {
        "delay_ms": delay_ms, "rate_pps": rate, "achieved_pps": round(achieved), "sent": count, "received": len(arrivals),
        "kernel_stamped": sum(p.kernel_stamped for p in arrivals), "loss": loss,
        "error_p1_ms": quantile(errors, 0.01) * 1e3 if errors else None,
        "error_p50_ms": statistics.median(errors) * 1e3 if errors else None,
        "error_p99_ms": quantile(errors, 0.99) * 1e3 if errors else None,
        "error_max_ms": max(errors) * 1e3 if errors else None,
    }
    tolerance = delay_tolerance(delay_ms / 1000)
    point["tolerance_ms"] = tolerance * 1e3
    sizes = [abs(error) for error in errors]
    point["keeps_time"] = bool(errors) and quantile(sizes, 0.99) < tolerance and loss < LOSS_LIMIT
    if before is not None:
        point["delay_line_cpu_us_per_packet"] = (delay_line_cpu_s(links) - before) / max(1, count) * 1e6
    return point


def delay_line_cpu_s(links: Links) -> float | None:
    """The userspace delay line's CPU-seconds so far (None with kernel netem: its cost is the kernel's)."""
    if not isinstance(links.backend, UserspaceBackend):
        return None
    stats = links.backend.delay_line_stats()
    return float(stats["cpu_s"]) if stats else 0.0  # not started yet


def markdown(result: dict[str, Any]) -> str:
    lines = [
        origin(result),
        "",
        "| delay | asked pps | achieved pps | loss | error p1 | error p50 | error p99 | error max | tolerance | keeps time "
        "| delay line CPU a packet |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        cpu = p.get("delay_line_cpu_us_per_packet")
        lines.append(
            f"| {p['delay_ms']} ms | {p['rate_pps']} | {p['achieved_pps']} | {p['loss']:.2%} | {p['error_p1_ms']:.3f} ms "
            f"| {p['error_p50_ms']:.3f} ms | {p['error_p99_ms']:.3f} ms | {p['error_max_ms']:.3f} ms "
            f"| {p['tolerance_ms']:.3g} ms | {'yes' if p['keeps_time'] else 'no'} "
            f"| {'kernel' if cpu is None else f'{cpu:.1f} µs'} |"
        )
    kept, fails = result["kept_time_up_to_pps"], result["first_failure_pps"]
    lines += ["", f"keeps time up to {kept} packets/s" + (f"; fails at {fails} packets/s" if fails else " (every rate tried)")]
    return "\n".join(lines) + "\n"


def main() -> int:
    args = arguments(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    points = []
    with shaped(TOPOLOGY, args.backend) as links:
        for delay_ms in DELAYS_MS:
            for rate in RATES_PPS:
                points.append(measure(links, delay_ms, rate))
                print(json.dumps(points[-1]), flush=True)
    failing = [p["achieved_pps"] for p in points if not p["keeps_time"]]
    first_failure = min(failing) if failing else None
    below = [p for p in points if first_failure is None or p["achieved_pps"] < first_failure]
    kept = max((p["achieved_pps"] for p in below if p["keeps_time"]), default=0)
    result = {"backend": args.backend, "kept_time_up_to_pps": kept, "first_failure_pps": first_failure, "points": points}
    write(args.out, f"impairment-{args.backend}", result, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
